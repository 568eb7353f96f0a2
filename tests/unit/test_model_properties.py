"""Property tests of the algebra (hypothesis): the laws the operator relies on."""

from __future__ import annotations

import json
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from armcpu import catalog, features, kvm
from armcpu.catalog import RegisterKind
from armcpu.model import apply, can_run, combine, combine_values, model_of
from armcpu.profile import KvmInfo, Profile, fingerprint, from_dict, register_width, to_dict
from tests.helpers import load_cpu

REAL = [
    load_cpu("kvm-guest/graviton2-neoverse-n1-host6.18.json"),
    load_cpu("kvm-guest/graviton3-neoverse-v1-host6.18.json"),
    load_cpu("kvm-guest/graviton4-neoverse-v2-host6.18.json"),
]
FEATURE_REGS = [r for r in catalog.registers().values() if r.kind is not RegisterKind.IDENTITY]
ALL_WRITABLE = {r.name: (1 << register_width(r.name)) - 1 for r in catalog.registers().values()}


@st.composite
def profiles(draw: st.DrawFn, writable: bool = True) -> Profile:
    """A real CPU with a few fields changed at random (the shape real pools have)."""
    base = draw(st.sampled_from(REAL))
    regs = dict(base.registers)
    for _ in range(draw(st.integers(0, 6))):
        reg = draw(st.sampled_from(FEATURE_REGS))
        if not reg.fields:
            continue
        fld = draw(st.sampled_from(reg.fields))
        regs[reg.name] = fld.insert(regs.get(reg.name, 0), draw(st.integers(0, fld.max_value)))
    name = draw(st.text(alphabet="abcdefgh", min_size=1, max_size=6))
    return replace(
        base, name=name, registers=regs,
        writable=ALL_WRITABLE if writable else None,
        kvm=KvmInfo(writable_imp_id_regs=True),
    )


def feature_part(regs: dict[str, int] | object) -> dict[str, int]:
    assert isinstance(regs, dict)
    return {k: v for k, v in regs.items() if catalog.register(k).kind is not RegisterKind.IDENTITY}


@settings(max_examples=60, deadline=None)
@given(profiles(), profiles())
def test_combine_is_commutative(a: Profile, b: Profile) -> None:
    assert feature_part(dict(combine([a, b]).model.registers)) == feature_part(dict(combine([b, a]).model.registers))


@settings(max_examples=60, deadline=None)
@given(profiles(), profiles(), profiles())
def test_combine_is_associative(a: Profile, b: Profile, c: Profile) -> None:
    ab = replace(a, registers=combine([a, b]).model.registers)
    bc = replace(b, registers=combine([b, c]).model.registers)
    left = combine([ab, c]).model.registers
    right = combine([a, bc]).model.registers
    assert feature_part(dict(left)) == feature_part(dict(right)) == feature_part(dict(combine([a, b, c]).model.registers))


@settings(max_examples=60, deadline=None)
@given(profiles())
def test_combine_is_idempotent(a: Profile) -> None:
    assert feature_part(dict(combine([a, a]).model.registers)) == feature_part(dict(a.registers))


@settings(max_examples=60, deadline=None)
@given(st.lists(profiles(), min_size=1, max_size=4))
def test_every_node_can_run_the_pool_model_when_differing_fields_are_writable(pool: list[Profile]) -> None:
    result = combine(pool)
    assert result.feasible
    for node in pool:
        verdict = can_run(node, result.model)
        assert verdict.ok, [r.message() for r in verdict.refusals]


@settings(max_examples=60, deadline=None)
@given(profiles(), st.sampled_from(sorted(n for n, f in features.all_features().items() if f.cond is not None)))
def test_switching_a_feature_off_never_raises_a_field(p: Profile, feat: str) -> None:
    model = model_of(p)
    try:
        out = apply(model, feature_settings={feat: "Disabled"})
    except ValueError:
        return  # refused with a reason (e.g. a HIGHER_SAFE field cannot be lowered)
    for reg in FEATURE_REGS:
        for fld in reg.fields:
            before = fld.extract(model.value(reg.name))
            after = fld.extract(out.model.value(reg.name))
            rule, _ = kvm.effective_rule(fld)
            assert fld.ordinal(after) <= fld.ordinal(before) or rule is catalog.Rule.EXACT, fld.qualified
    assert not features.holds(feat, out.model.registers)


@settings(max_examples=60, deadline=None)
@given(profiles(), st.randoms())
def test_fingerprint_ignores_order_and_formatting(p: Profile, rnd: object) -> None:
    doc = to_dict(p)
    items = list(doc["registers"].items())
    rnd.shuffle(items)  # type: ignore[attr-defined]
    doc["registers"] = {
        (k.lower() if i % 2 else k.replace("_EL1", "")): (v.upper().replace("0X", "0x") if i % 3 else hex(int(v, 16)))
        for i, (k, v) in enumerate(items)
    }
    again = from_dict(json.loads(json.dumps(doc)), "reformatted")
    assert again.fingerprint == p.fingerprint == fingerprint(p.registers)


def test_fingerprint_changes_when_a_feature_field_changes() -> None:
    g3 = REAL[1]
    fld = catalog.field("ID_AA64ISAR0_EL1", "SM3")
    changed = dict(g3.registers)
    changed["ID_AA64ISAR0_EL1"] = fld.insert(changed["ID_AA64ISAR0_EL1"], 0)
    assert fingerprint(changed) != g3.fingerprint
    other_rev = dict(g3.registers, REVIDR_EL1=0x1234)
    assert fingerprint(other_rev) == g3.fingerprint  # identity is deliberately not covered


ALL_FIELDS = [f for r in catalog.registers().values() if r.kind is not RegisterKind.IDENTITY for f in r.fields]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ALL_FIELDS), st.lists(st.integers(min_value=0, max_value=15), min_size=1, max_size=12), st.randoms())
def test_folding_a_field_sees_each_value_once_whatever_the_duplicates_and_order(fld: catalog.Field, raw: list[int], rnd: object) -> None:
    """combine folds each distinct value once (a 5,000-node pool has a few kinds of node): that is
    exact only because every safe-value rule is idempotent and order-free, checked here."""
    values = [v & ((1 << fld.width) - 1) for v in raw]
    shuffled = list(values)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert combine_values(fld, values) == combine_values(fld, dict.fromkeys(values)) == combine_values(fld, shuffled)


@settings(max_examples=40, deadline=None)
@given(st.lists(profiles(), min_size=1, max_size=3), st.integers(min_value=1, max_value=5))
def test_a_pool_with_many_copies_of_each_node_gets_the_model_of_one_copy_each(kinds: list[Profile], copies: int) -> None:
    distinct = [replace(p, name=f"k{i}") for i, p in enumerate(kinds)]
    many = [replace(p, name=f"{p.name}-{j}") for j in range(copies) for p in distinct]
    one, all_of_them = combine(distinct), combine(many)
    assert one.model.registers == all_of_them.model.registers and set(one.model.targets) == set(all_of_them.model.targets)
    assert one.feasible == all_of_them.feasible
