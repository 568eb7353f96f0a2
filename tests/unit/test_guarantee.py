"""The migration guarantee (armcpu.guarantee) on real register data, and against what real kernels and
stock QEMU did with guests that moved (tests/fixtures/kvm/emulated/guest-moves.json)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from armcpu import catalog, guarantee, kvm, model, pool, render
from armcpu.guarantee import HOOK_SIDECAR, SCHEDULING, Vmm
from armcpu.profile import Profile
from tests import truth_checks
from tests.helpers import REPO, load_cpu
from tests.unit.test_truth_recordings import MATRIX, host_profile

FULL = Vmm(sysreg=True, impl_cpu=True)
STOCK = Vmm()
EXAMPLES = REPO / "examples" / "profiles"


def example(name: str, node: str) -> Profile:
    import json

    from armcpu.profile import from_dict
    # the examples are guest views recorded on 6.18 hosts and name no release; a move needs one kernel series
    return replace(pool.assume_kvm(from_dict(json.loads((EXAMPLES / name).read_text()), node)), name=node, kernel="6.18.0")


def g3(node: str = "g3") -> Profile:
    return example("graviton3-kvm-6.18.json", node)


def g4(node: str = "g4") -> Profile:
    return example("graviton4-kvm-6.18.json", node)


def with_field(p: Profile, reg: str, name: str, value: int, node: str) -> Profile:
    regs = dict(p.registers)
    regs[reg] = catalog.field(reg, name).insert(regs[reg], value)
    return replace(p, name=node, registers=regs)


def plan(members: list[Profile], mode: str, vmm: Vmm = STOCK) -> guarantee.Guarantee:
    planned = pool.plan_pool(members)
    assert planned.feasible, [b.message() for b in planned.combined.blockers]
    return guarantee.guarantee(members, planned.model, mode=mode, vmm=vmm, rendered_cpu=planned.qemu.cpu_properties,
                               rendered_machine=planned.qemu.machine_properties)


# --- Scheduling: what host-passthrough plus stock QEMU can promise ---

def test_graviton3_and_graviton4_are_not_safe_under_scheduling_and_the_fix_is_named() -> None:
    members = [g3("g3-a"), g3("g3-b"), g4("g4-a")]
    got = plan(members, SCHEDULING)
    assert not got.safe and got.reason == "NoNodePresentsModel"
    assert got.migrate_to == ()
    assert "{g3-a, g3-b} | {g4-a}" in got.message and "HookSidecar" in got.message


def test_a_pool_differing_only_in_a_writable_field_places_directionally() -> None:
    """Same core (Graviton4's real KVM view), one node without CTR_EL0.DIC: VMs boot only where the
    view is the model (DIC 0) and may migrate to the DIC node, whose KVM lowers DIC for them."""
    low = with_field(g4(), "CTR_EL0", "DIC", 0, "g4-nodic")
    high = g4("g4-dic")
    assert catalog.field("CTR_EL0", "DIC").extract(high.value("CTR_EL0")) == 1
    got = plan([high, low], SCHEDULING)
    assert got.safe and got.reason == "DirectionalPlacement" and got.directional
    assert got.start_on == ("g4-nodic",)
    assert got.migrate_to == ("g4-dic", "g4-nodic")


def test_a_field_kvm_cannot_lower_leaves_the_higher_node_out() -> None:
    """CTR_EL0.CWG is not writable: the node with another CWG can never take a model guest."""
    other = with_field(g4(), "CTR_EL0", "CWG", 3, "g4-cwg")
    base = g4("g4")
    planned = pool.plan_pool([base, other])
    assert not planned.feasible  # combine already refuses the pool; the guarantee never sees it


def test_identical_nodes_are_safe_everywhere() -> None:
    got = plan([g4("a"), g4("b"), g4("c")], SCHEDULING)
    assert got.safe and got.reason == "NodesPresentModel" and not got.directional
    assert got.start_on == got.migrate_to == ("a", "b", "c")


def test_one_view_on_two_kernel_series_cannot_move() -> None:
    a, b = g4("a"), replace(g4("b"), kernel="6.12.117+deb13-arm64")
    a = replace(a, kernel="7.3.4+deb13-arm64")
    got = plan([a, b], SCHEDULING)
    assert not got.safe and got.reason == "StartNodesCannotMove"
    assert "register" in got.message


def test_a_node_whose_identity_differs_only_receives_with_cap_239_never_under_stock_qemu() -> None:
    """cap 239 lets KVM take another MIDR, but stock QEMU never enables it: under Scheduling such a
    node is left out, under HookSidecar with impl-cpu it is a full member."""
    other = replace(with_field(g4(), "MIDR_EL1", "Revision", 0, "g4-r0p0"))
    base = g4("g4-r0p1")
    assert other.midr != base.midr
    sched = plan([base, other], SCHEDULING)
    assert sched.safe and sched.start_on == ("g4-r0p1",)  # identity_from is the first member
    assert "g4-r0p0" not in sched.migrate_to
    hooked = plan([base, other], HOOK_SIDECAR, FULL)
    assert hooked.safe and hooked.migrate_to == ("g4-r0p0", "g4-r0p1")


# --- HookSidecar: only as good as the declared QEMU ---

def test_hook_sidecar_without_a_sysreg_qemu_promises_nothing() -> None:
    members = [g3(), g4()]
    got = plan(members, HOOK_SIDECAR)
    assert not got.safe and got.reason == "VmmLacksSysreg" and got.start_on == () and got.migrate_to == ()


def test_hook_sidecar_with_sysreg_but_no_impl_cpu_cannot_keep_two_identities() -> None:
    got = plan([g3(), g4()], HOOK_SIDECAR, Vmm(sysreg=True))
    assert not got.safe and got.reason == "VmmLacksImplCpu"


def test_hook_sidecar_needs_cap_239_on_every_node_when_identities_differ() -> None:
    lacking = replace(g4(), kvm=replace(g4().kvm, writable_imp_id_regs=False))
    members = [g3(), lacking]
    planned = pool.plan_pool(members)
    usable = [m.name for m in members]  # as if the operator had found both compatible
    got = guarantee.guarantee(members, planned.model, mode=HOOK_SIDECAR, vmm=FULL, usable=usable,
                              rendered_cpu=planned.qemu.cpu_properties, rendered_machine=planned.qemu.machine_properties)
    assert not got.safe and got.reason == "NodesLackCap239" and "g4" in got.message


def test_hook_sidecar_with_a_capable_qemu_is_safe_across_graviton3_and_graviton4() -> None:
    got = plan([g3(), g4()], HOOK_SIDECAR, FULL)
    assert got.safe and got.reason == "ModelSetByVmm"
    assert got.start_on == got.migrate_to == ("g3", "g4")


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="enforcement"):
        guarantee.guarantee([g4()], model.model_of(g4()), mode="Hope")


# --- agreement with what was measured ---

def _hosts() -> dict[str, Profile]:
    hosts = {(c["host"]["cpu"], c["host"]["kernel"]) for c in MATRIX["cells"]}
    return {f"{cpu}@{kernel}": replace(host_profile(cpu, kernel), name=f"{cpu}@{kernel}") for cpu, kernel in hosts}


MOVES = truth_checks.load_moves()


def _recorded(kind: str) -> dict[tuple[str, str], str]:
    return {(f"{m['from']['cpu']}@{m['from']['kernel']}", f"{m['to']['cpu']}@{m['to']['kernel']}"): m["result"]
            for m in MOVES["moves"] if m["kind"] == kind}


@pytest.mark.parametrize("mode,vmm,kind", [(SCHEDULING, Vmm(), "stock-qemu"), (HOOK_SIDECAR, FULL, "armcpu-model")])
def test_every_move_the_guarantee_promises_was_measured_to_work(mode: str, vmm: Vmm, kind: str) -> None:
    """For every pair of emulated hosts (and each host with a rebooted copy of itself): a move the
    guarantee allows (source in start_on, destination in migrate_to) was made on the real kernels by
    the same kind of VMM and worked. Stock QEMU moved nothing between different hosts, so Scheduling
    may promise nothing between them."""
    hosts = _hosts()
    moved = _recorded(kind)
    itself = _recorded("raw-view")  # a host taking back its own guest: the diagonal of every kind
    promised = 0
    for a, b in itertools.product(sorted(hosts), repeat=2):
        members = [hosts[a], hosts[b]] if a != b else [hosts[a], replace(hosts[a], name=a + "'")]
        planned = pool.plan_pool(members)
        if not planned.feasible:
            continue
        got = guarantee.guarantee(members, planned.model, mode=mode, vmm=vmm, rendered_cpu=planned.qemu.cpu_properties,
                                  rendered_machine=planned.qemu.machine_properties)
        if a in got.start_on and members[1].name in got.migrate_to:
            promised += 1
            result = moved.get((a, b)) or (itself.get((a, b)) if a == b else None)
            assert result == "ok", (mode, a, b, result, got.message)
    assert promised > 0


# --- rendering: legacy switches own their fields; the PMU is a vCPU feature group ---

ALL_CPUS = ["ampere-altra.json", "ampereone.json", "graviton2.json", "graviton3.json", "graviton4.json",
            "neoverse-n1_trm.json", "neoverse-n2_trm.json", "neoverse-v1_trm.json", "neoverse-v2_trm.json", "nvidia-grace.json"]
GROUP_FIELDS = {f"SYSREG_{r}_{f}" for pairs in kvm.VCPU_FEATURE_FIELDS.values() for r, f in pairs}


@pytest.mark.parametrize("a,b", list(itertools.combinations(ALL_CPUS, 2)))
def test_no_rendering_sets_a_field_a_composite_option_owns(a: str, b: str) -> None:
    members = [pool.assume_kvm(load_cpu(a)), pool.assume_kvm(load_cpu(b))]
    planned = pool.plan_pool(members)
    props = {p.split("=")[0] for p in planned.qemu.cpu_properties}
    assert not props & GROUP_FIELDS, sorted(props & GROUP_FIELDS)


def test_differing_pointer_auth_algorithms_block_the_pool_with_the_pauth_fix() -> None:
    """Neoverse V1 (QARMA5, APA 3) and V2 (APA 5): KVM cannot write APA, and pointer auth stays on,
    so the pool needs pauth switched off; it used to render SYSREG_ID_AA64ISAR1_EL1_APA=0."""
    members = [pool.assume_kvm(load_cpu("neoverse-v1_trm.json")), pool.assume_kvm(load_cpu("neoverse-v2_trm.json"))]
    blockers = {b.field: b for b in model.combine(members).blockers}
    assert "FEAT_PAuth: Disabled" in blockers["ID_AA64ISAR1_EL1.APA"].hint
    applied = model.apply(model.combine(members).model, feature_settings={"FEAT_PAuth": "Disabled"}, pool=members)
    rendered = render.QemuSysregV9().render(applied.model, members)
    assert "pauth=off" in rendered.cpu_properties
    assert not any(p.startswith("SYSREG_ID_AA64ISAR1_EL1_AP") for p in rendered.cpu_properties)


def test_a_pool_one_of_whose_cpus_has_no_pmu_switches_the_pmu_off() -> None:
    """Graviton3 (PMUv3p5) and a Graviton4 dump whose PMU is hidden (PMUVer 0), neither with writable
    masks: the PMU group off lowers PMUVer, rendered as QEMU's pmu=off, never a SYSREG field, and not
    in libvirt's disables (libvirt has no aarch64 PMU feature)."""
    members = [load_cpu("graviton3.json"), load_cpu("graviton4.json")]
    assert members[0].writable is None and members[1].writable is None
    combined = model.combine(members)
    assert not [b for b in combined.blockers if b.field.endswith((".PMUVer", ".PerfMon"))]
    assert kvm.vcpu_group_is_off(combined.model.value, "pmu")
    rendered = render.QemuSysregV9().render(combined.model, members)
    assert "pmu=off" in rendered.cpu_properties
    assert "pmu" not in render.LibvirtToday().render(combined.model, members).libvirt_disabled


def test_pmu_versions_kvm_cannot_lower_name_the_pmu_fix() -> None:
    """Ampere Altra (PMUv3p1) and Graviton3 (PMUv3p5) as nodes that report no writable masks: PMUVer
    differs, stays on, and cannot be written: switching the PMU off is the fix, and it works."""
    members = [load_cpu("ampere-altra.json"), load_cpu("graviton3.json")]
    blockers = {b.field: b for b in model.combine(members).blockers}
    assert "FEAT_PMUv3: Disabled" in blockers["ID_AA64DFR0_EL1.PMUVer"].hint
    applied = model.apply(model.combine(members).model, feature_settings={"FEAT_PMUv3": "Disabled"}, pool=members)
    assert kvm.vcpu_group_is_off(applied.model.value, "pmu")


# --- the identity tells the truth, or is flagged ---

def test_a_model_that_hides_what_its_midr_core_has_is_flagged_and_an_honest_identity_offered() -> None:
    from armcpu import identity

    members = [g4(), g3()]  # the identity is Graviton4's Neoverse-V2, the model has Graviton3's lows
    told = identity.check(pool.plan_pool(members).model, members)
    assert not told.truthful and {"bti", "flagm2", "frint", "sb"} <= set(told.hidden)
    assert told.settable  # both report cap 239 (assume_kvm), so an identity could be presented
    same = identity.check(pool.plan_pool([g4(), g4("b")]).model, [g4(), g4("b")])
    assert same.truthful and same.hidden == ()
    # Neoverse-N1 (Ampere Altra) with Graviton3: V1's identity hides what V1 has; N1's hides nothing
    altra, v1 = pool.assume_kvm(load_cpu("ampere-altra.json")), pool.assume_kvm(load_cpu("graviton3.json"))
    mixed = [replace(v1, name="v1"), replace(altra, name="altra")]
    found = identity.check(model.combine(mixed).model, mixed)  # the raw dumps' fold: its fields are what matter here
    assert {"sve", "sha3", "paca"} <= set(found.hidden) and found.suggestion == "altra"
    assert "spec.identityFrom: altra" in identity.message(found)
    honest = identity.check(model.combine(mixed, identity_from="altra").model, mixed)
    assert honest.truthful and honest.core.startswith("Arm Neoverse-N1")


def test_scheduling_cannot_switch_the_pmu_off() -> None:
    """A model with the PMU off (one member has none) runs on a PMU node only where the VMM sets
    pmu=off; KubeVirt's host-passthrough cannot, so under Scheduling the PMU node does not present
    it, while libvirt's pauth/sve disables do count."""
    without = g4("nopmu")  # Firecracker's Graviton4 guest view: its vCPU had no PMU (PMUVer 0)
    assert catalog.field("ID_AA64DFR0_EL1", "PMUVer").extract(without.value("ID_AA64DFR0_EL1")) == 0
    regs = dict(without.registers)
    regs["ID_AA64DFR0_EL1"] = catalog.field("ID_AA64DFR0_EL1", "PMUVer").insert(regs["ID_AA64DFR0_EL1"], 6)  # PMUv3p7, as Neoverse-V2 has
    with_pmu = replace(without, name="pmu", registers=regs)
    planned = pool.plan_pool([with_pmu, without])
    assert kvm.vcpu_group_is_off(planned.model.value, "pmu")
    assert guarantee.presents_model(without, planned.model) and not guarantee.presents_model(with_pmu, planned.model)
    got = plan([with_pmu, without], SCHEDULING)
    assert got.start_on == ("nopmu",) and "pmu" not in got.migrate_to
