"""The core on real CPU data from shared/cpus."""

from __future__ import annotations

from dataclasses import replace

import pytest

from armcpu import catalog, features, hwcaps
from armcpu.model import Model, SettingError, apply, can_run, combine, diff, model_of
from armcpu.pool import assume_kvm as assume_kvm_masks
from armcpu.profile import KvmInfo
from armcpu.render import RENDERERS
from tests.helpers import load_cpu, raw_cpu

kvm_ready = assume_kvm_masks  # a 6.18-era KVM's masks and cap 239, as `armcpu --assume-kvm` gives


G3 = kvm_ready(load_cpu("kvm-guest/graviton3-neoverse-v1-host6.18.json"))
G4 = kvm_ready(load_cpu("kvm-guest/graviton4-neoverse-v2-host6.18.json"))


def test_graviton3_graviton4_model_keeps_what_both_have_and_drops_what_either_lacks() -> None:
    result = combine([G3, G4])
    assert result.feasible
    feats = set(result.model.features)
    g3, g4 = set(features.decode(G3.registers)), set(features.decode(G4.registers))
    # TGRANx_2 are EXACT with safe value 1 ("stage 2 granule reported separately: not supported"),
    # a value neither host has; Arm calls a non-zero TGRANx_2 FEAT_GTG. Nothing else is new.
    assert feats - (g3 & g4) == {"FEAT_GTG"}
    for lost in ("FEAT_SM3", "FEAT_SM4", "FEAT_AA32EL0", "FEAT_SB", "FEAT_SPECRES", "FEAT_FRINTTS", "FEAT_SEL2"):
        assert lost not in feats
    for kept in ("FEAT_LSE", "FEAT_SHA3", "FEAT_DotProd", "FEAT_I8MM", "FEAT_BF16", "FEAT_LRCPC2", "FEAT_FlagM"):
        assert kept in feats
    assert can_run(G3, result.model).ok and can_run(G4, result.model).ok


# Section 1.4 of the facts file: the Graviton3 <-> Graviton4 command line from the QEMU series.
SERIES = {
    "ID_AA64PFR0_EL1_SEL2": 0, "ID_AA64PFR0_EL1_EL0": 1, "ID_AA64ISAR0_EL1_TLB": 0, "ID_AA64ISAR0_EL1_TS": 0,
    "ID_AA64ISAR0_EL1_SM4": 0, "ID_AA64ISAR0_EL1_SM3": 0, "ID_AA64ISAR1_EL1_SPECRES": 0, "ID_AA64ISAR1_EL1_SB": 0,
    "ID_AA64ISAR1_EL1_FRINTTS": 0, "ID_AA64MMFR0_EL1_TGRAN4_2": 1, "ID_AA64MMFR0_EL1_TGRAN16_2": 1,
    "ID_AA64MMFR0_EL1_TGRAN64_2": 1,
}


def test_graviton3_graviton4_rendering_matches_the_qemu_series_except_where_data_differs() -> None:
    model = combine([G3, G4]).model
    rendering = RENDERERS["qemu-sysreg-v9"].render(model, [G3, G4])
    props = dict(p.split("=", 1) for p in rendering.cpu_properties if p.startswith("SYSREG_"))
    ours = {k.removeprefix("SYSREG_"): int(v) for k, v in props.items()}
    for key, value in SERIES.items():
        if key == "ID_AA64ISAR0_EL1_TS":
            # Exception 1: the series wrote TS=0, below the kernel's LOWER_SAFE minimum of both
            # hosts (G3 TS=1, G4 TS=2): FlagM is common, so armcpu keeps TS=1.
            assert ours[key] == 1
            continue
        assert ours[key] == value, key
    extra = set(ours) - set(SERIES)
    # Exception 2: this data (host 6.18) also shows BT, ECBHB, PAN3, E0PD, TTL, ST only on G4.
    aa64_extra = {k for k in extra if k.startswith("ID_AA64")}
    assert aa64_extra == {
        "ID_AA64PFR1_EL1_BT", "ID_AA64MMFR1_EL1_ECBHB", "ID_AA64MMFR1_EL1_PAN",
        "ID_AA64MMFR2_EL1_E0PD", "ID_AA64MMFR2_EL1_TTL", "ID_AA64MMFR2_EL1_ST",
    }
    # Exception 3: Graviton4 has no AArch32 EL0, so its guest reads every AArch32 ID register as 0;
    # armcpu writes them to 0 on Graviton3 too, so that the registers match in the migration stream.
    assert all(not k.startswith("ID_AA64") and not k.startswith("CTR") for k in extra - aa64_extra)
    # pauth=off is in the series because the hosts had pointer auth; this guest data hides it already.
    assert "pauth=off" not in rendering.cpu_properties


def test_two_profiles_that_differ_only_in_ctr_dic_render_one_property() -> None:
    altra = kvm_ready(load_cpu("kvm-guest/graviton2-neoverse-n1-host6.18.json"))
    dic = catalog.field("CTR_EL0", "DIC")
    other = replace(altra, name="altra-max-b", registers=dict(altra.registers, CTR_EL0=dic.insert(altra.value("CTR_EL0"), 1)))
    altra = replace(altra, registers=dict(altra.registers, CTR_EL0=dic.insert(altra.value("CTR_EL0"), 0)))
    model = combine([altra, other]).model
    rendering = RENDERERS["qemu-sysreg-v9"].render(model, [altra, other])
    assert rendering.cpu_arg == "host,SYSREG_CTR_EL0_DIC=0"
    verdict = can_run(other, model)
    assert verdict.ok and any("traps" in w for w in verdict.warnings)


def test_a_pool_differing_in_breakpoints_is_infeasible_and_names_the_nodes() -> None:
    brps = catalog.field("ID_AA64DFR0_EL1", "BRPs")
    a = replace(G3, name="node-a")
    b = replace(G3, name="node-b", registers=dict(G3.registers, ID_AA64DFR0_EL1=brps.insert(G3.value("ID_AA64DFR0_EL1"), 3)))
    result = combine([a, b])
    assert not result.feasible
    msg = result.blockers[0].message()
    assert "ID_AA64DFR0_EL1.BRPs" in msg and "node-a" in msg and "node-b" in msg and "split the pool" in msg
    refusal = can_run(a, result.model).refusals[0]
    assert (refusal.field, refusal.writable) == ("BRPs", False)


def test_pointer_auth_difference_suggests_switching_it_off() -> None:
    apa = catalog.field("ID_AA64ISAR1_EL1", "APA")
    a = replace(G3, name="with-pauth", registers=dict(G3.registers, ID_AA64ISAR1_EL1=apa.insert(G3.value("ID_AA64ISAR1_EL1"), 1)))
    result = combine([a, G4])
    assert result.feasible  # the combined APA is 0: the guest is started with pointer auth off
    assert "pauth=off" in RENDERERS["qemu-sysreg-v9"].render(result.model, [a, G4]).cpu_properties


def test_can_run_refusals_name_the_rule_on_single_field_changes() -> None:
    base = model_of(G3)
    sm3 = catalog.field("ID_AA64ISAR0_EL1", "SM3")
    weaker = replace(G3, registers=dict(G3.registers, ID_AA64ISAR0_EL1=sm3.insert(G3.value("ID_AA64ISAR0_EL1"), 0)))
    r = can_run(weaker, base).refusals
    assert len(r) == 1 and r[0].features == ("FEAT_SM3",) and "LOWER_SAFE" in r[0].rule
    no_masks = replace(G3, writable=None)
    r = can_run(no_masks, model_of(weaker)).refusals
    assert "only run its own view" in r[0].rule
    asid = catalog.field("ID_AA64MMFR0_EL1", "ASIDBITS")
    other = Model(registers=dict(G3.registers, ID_AA64MMFR0_EL1=asid.insert(G3.value("ID_AA64MMFR0_EL1"), 0)))
    assert "not writable" in can_run(G3, other).refusals[0].rule
    gic = catalog.field("ID_AA64PFR0_EL1", "GIC")
    raised = Model(registers=dict(G3.registers, ID_AA64PFR0_EL1=gic.insert(G3.value("ID_AA64PFR0_EL1"), 3)))
    assert "EXACT" in can_run(G3, raised).refusals[0].rule
    no_cap = replace(G3, kvm=KvmInfo(writable_imp_id_regs=False))
    assert "KVM_CAP_ARM_WRITABLE_IMP_ID_REGS" in can_run(no_cap, model_of(G4)).refusals[-1].rule


@pytest.mark.parametrize("path", ["ampere-altra.json", "graviton3.json"])
def test_hwcaps_of_real_registers_agree_with_real_cpuinfo(path: str) -> None:
    p = load_cpu(path)
    cpuinfo = set(raw_cpu(path)["cpuinfo_features"]) - {"evtstrm", "cpuid"}
    assert set(hwcaps.decode(p.registers)) == cpuinfo


def test_diff_within_one_family_lists_just_the_fields_that_differ() -> None:
    old = load_cpu("kvm-guest/graviton2-neoverse-n1-host5.10.json")
    new = load_cpu("kvm-guest/graviton2-neoverse-n1-host6.18.json")
    changed = {(d.register, d.field) for d in diff(old.registers, new.registers)}
    # The data's note: across host kernels only ID_AA64DFR0_EL1 changes (plus ID_DFR0 and CLIDR).
    assert {r for r, _ in changed} <= {"ID_AA64DFR0_EL1", "ID_DFR0_EL1", "CLIDR_EL1"}
    assert ("ID_AA64DFR0_EL1", "PMSVer") in changed


def test_apply_switches_off_dependants_and_rejects_contradictions() -> None:
    m = model_of(G3)
    out = apply(m, feature_settings={"FEAT_AES": "Disabled"})
    assert {"FEAT_AES", "FEAT_PMULL"} <= set(out.switched_off)
    with pytest.raises(SettingError, match=r"contradicts features\.FEAT_SHA3: Required"):
        apply(m, feature_settings={"FEAT_SHA3": "Required"}, register_settings={"ID_AA64ISAR0_EL1.SHA3": 0})
    with pytest.raises(SettingError, match=r"nodes without it: .*Graviton4"):
        apply(combine([G3, G4]).model, feature_settings={"FEAT_SM3": "Required"}, pool=[G3, G4])
    with pytest.raises(SettingError, match="does not fit in 4 bits"):
        apply(m, register_settings={"CTR_EL0.DminLine": 16})
    with pytest.raises(SettingError, match="more than the pool offers"):
        apply(m, register_settings={"CTR_EL0.DminLine": 5})
    aliased = apply(m, register_settings={"ID_AA64ISAR0_EL1.SM3": 0})
    assert "FEAT_SM3" in aliased.switched_off and any("FEAT_SM3: Disabled" in n for n in aliased.notes)
