"""The catalog against an independent table (shared/reference, compiled from Linux and Arm sources)."""

from __future__ import annotations

import csv

import pytest

from armcpu import catalog
from armcpu.catalog import CatalogError, RegisterKind, Rule, parse_catalog
from tests.helpers import REFERENCE

POLICY = {
    "LOWER_SAFE": Rule.LOWER, "HIGHER_SAFE": Rule.HIGHER, "HIGHER_OR_ZERO_SAFE": Rule.HIGHER_OR_ZERO,
    "EXACT": Rule.EXACT, "unknown": Rule.NONE,
}
# In the catalog but not in the reference tables: AIDR and CLIDR are registers the reference
# does not list (KVM presents both; their fields take no part in the kernel's sanitising).
EXTRA_REGISTERS = {"AIDR_EL1", "CLIDR_EL1"}


def reference_rows() -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for name in ("fields.csv", "fields_extra.csv"):
        with (REFERENCE / name).open() as fh:
            rows += list(csv.DictReader(fh))
    return rows


def test_every_reference_field_matches_layout_sign_and_rule() -> None:
    mismatches = []
    for row in reference_rows():
        try:
            fld = catalog.field(row["register"], row["field"])
        except KeyError:
            mismatches.append(f"missing {row['register']}.{row['field']}")
            continue
        want = (int(row["lsb"]), int(row["width"]), row["signed"] == "1", POLICY[row["kernel_safe_policy"]])
        got = (fld.lsb, fld.width, fld.signed, fld.rule)
        if want != got:
            mismatches.append(f"{fld.qualified}: catalog {got} reference {want}")
    assert mismatches == []


def test_catalog_has_nothing_the_reference_lacks_except_documented_registers() -> None:
    ref = {(r["register"], r["field"].lower()) for r in reference_rows()}
    extra = {(f.register, f.name.lower()) for f in catalog.all_fields()} - ref
    assert {reg for reg, _ in extra} == EXTRA_REGISTERS


def test_exact_safe_values_match_the_kernel() -> None:
    with (REFERENCE / "fields_detail.csv").open() as fh:
        for row in csv.DictReader(fh):
            fld = catalog.field(row["register"], row["field"])
            if fld.rule is not Rule.EXACT or "safe_val=" not in row["kernel_ftr"]:
                continue
            text = row["kernel_ftr"].split("safe_val=")[1].split()[0]
            expected = 2 if text.startswith("VIPT") else int(text, 0)
            assert fld.safe == expected, fld.qualified


@pytest.mark.parametrize(
    ("name", "one_reg_id"),
    [
        ("MIDR_EL1", 0x603000000013C000), ("REVIDR_EL1", 0x603000000013C006),
        ("ID_AA64PFR0_EL1", 0x603000000013C020), ("ID_AA64ISAR0_EL1", 0x603000000013C030),
        ("ID_AA64MMFR0_EL1", 0x603000000013C038), ("CLIDR_EL1", 0x603000000013C801),
        ("AIDR_EL1", 0x603000000013C807), ("CTR_EL0", 0x603000000013D801), ("DCZID_EL0", 0x603000000013D807),
    ],
)
def test_kvm_one_reg_ids_match_the_uapi_examples(name: str, one_reg_id: int) -> None:
    assert catalog.sysreg_id(*catalog.register(name).encoding) == one_reg_id


@pytest.mark.parametrize(
    ("name", "index"),
    [("ID_AA64ISAR0_EL1", 48), ("ID_AA64MMFR0_EL1", 56), ("CTR_EL0", 129), ("CLIDR_EL1", 65), ("MIDR_EL1", 0)],
)
def test_writable_mask_index_matches_kvm(name: str, index: int) -> None:
    assert catalog.feature_id_range_index(*catalog.register(name).encoding) == index


def test_every_register_a_kvm_guest_sees_is_catalogued() -> None:
    seen = set()
    for path in (REFERENCE.parent / "cpus/kvm-guest").glob("*.json"):
        import json

        seen |= set(json.loads(path.read_text())["registers"])
    assert seen - set(catalog.registers()) == set()


def test_identity_registers_are_marked() -> None:
    kinds = {n for n, r in catalog.registers().items() if r.kind is RegisterKind.IDENTITY}
    assert kinds == {"MIDR_EL1", "REVIDR_EL1", "AIDR_EL1"}


def test_overlapping_fields_are_rejected() -> None:
    with pytest.raises(CatalogError, match="overlaps"):
        parse_catalog("R 3 0 0 0 0 feature\n  A 7:4 LOWER\n  B 5:2 LOWER\n")


def test_signed_fields_compare_in_twos_complement() -> None:
    tgran4 = catalog.field("ID_AA64MMFR0_EL1", "TGRAN4")
    assert tgran4.ordinal(0xF) == -1 and tgran4.ordinal(1) == 1
    with pytest.raises(ValueError, match="does not fit"):
        tgran4.insert(0, 0x10)
