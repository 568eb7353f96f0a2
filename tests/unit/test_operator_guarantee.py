"""The operator's plan says the guarantee and places by it: the MigrationSafe condition, status.guarantee
and the node labels agree with armcpu.guarantee on real register data (a Linux 6.18 host's KVM view)."""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

from armcpu import catalog, guarantee
from armcpu.profile import Profile, to_dict
from armcpu_k8s import labels
from armcpu_operator.planning import plan
from armcpu_testing.fixtures import host_618_profile

reconcile = functools.partial(plan.reconcile, kernel_verification="Advisory")
NOW, LATER = "2026-12-01T10:00:00Z", "2026-12-01T11:00:00Z"
KERNEL = "6.18.30-61.116.amzn2023.aarch64"
SPEC = {"nodeSelector": {"matchLabels": {"pool": "p"}}}
START, PLACE = labels.start_key("m"), plan.label_key("m")


def g4(name: str, dic: int | None = None) -> Profile:
    p = replace(host_618_profile("kvm-guest/graviton4-neoverse-v2-host6.18.json"), name=name, kernel=KERNEL)
    if dic is not None:
        regs = dict(p.registers)
        regs["CTR_EL0"] = catalog.field("CTR_EL0", "DIC").insert(regs["CTR_EL0"], dic)
        p = replace(p, registers=regs)
    return p


def g3(name: str) -> Profile:
    return replace(host_618_profile("kvm-guest/graviton3-neoverse-v1-host6.18.json"), name=name, kernel=KERNEL)


def world(members: list[Profile]) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, Any]]]:
    return {m.name: {"pool": "p"} for m in members}, {m.name: to_dict(m) for m in members}


def cpumodel(spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "m", "generation": 1}, "spec": spec, "status": status}


def condition(result: plan.Plan, kind: str) -> dict[str, Any]:
    return next(c for c in result.status["conditions"] if c["type"] == kind)


def applied(nodes: dict[str, dict[str, str]], p: plan.Plan) -> dict[str, dict[str, str]]:
    return {name: labels.patched(node_labels, p.label_changes.get(name, {})) for name, node_labels in nodes.items()}


def test_a_directional_pool_boots_only_where_the_view_is_the_model() -> None:
    members = [g4("dic-1", 1), g4("dic-2", 1), g4("nodic", 0)]
    nodes, profiles = world(members)
    result = reconcile(cpumodel(SPEC), nodes, profiles, NOW)
    safe = condition(result, "MigrationSafe")
    assert safe["status"] == "True" and safe["reason"] == "DirectionalPlacement"
    said = result.status["guarantee"]
    assert said["startOn"] == ["nodic"] and said["migrateTo"] == ["dic-1", "dic-2", "nodic"]
    assert said["enforcement"] == "Scheduling" and said["vmm"] == {"sysreg": False, "implCpu": False}
    now = applied(nodes, result)
    assert {n for n, ls in now.items() if START in ls} == {"nodic"}
    assert {n for n, ls in now.items() if PLACE in ls} == {"dic-1", "dic-2", "nodic"}
    # it agrees with the core, computed on the same profiles
    model = plan.model_from_status(result.status["model"])
    core = guarantee.guarantee(members, model, mode="Scheduling")
    assert (core.start_on, core.migrate_to) == (tuple(said["startOn"]), tuple(said["migrateTo"]))
    again = reconcile(cpumodel(SPEC, result.status), now, profiles, LATER)
    assert again.label_changes == {} and again.status == result.status  # quiet


def test_an_unsafe_pool_says_so_and_keeps_placing_as_before() -> None:
    members = [g3("g3"), g4("g4")]
    nodes, profiles = world(members)
    result = reconcile(cpumodel(SPEC), nodes, profiles, NOW)
    safe = condition(result, "MigrationSafe")
    assert safe["status"] == "False" and safe["reason"] == "NoNodePresentsModel" and "{g3} | {g4}" in safe["message"]
    assert "migrations are not safe" in condition(result, "Ready")["message"]
    assert result.status["guarantee"]["migrateTo"] == [] and result.status["guarantee"]["migrateToCount"] == 0
    now = applied(nodes, result)
    assert all(now[n].get(PLACE) == "1" and now[n].get(START) == "1" for n in ("g3", "g4"))
    identity = condition(result, "IdentityMatchesModel")
    assert identity["status"] == "False" and identity["reason"] == "MidrPromisesHiddenFeatures"


def test_hook_sidecar_follows_the_declared_qemu() -> None:
    members = [g3("g3"), g4("g4")]
    nodes, profiles = world(members)
    spec = {**SPEC, "enforcement": "HookSidecar"}
    stock = reconcile(cpumodel(spec), nodes, profiles, NOW)
    assert condition(stock, "MigrationSafe")["reason"] == "VmmLacksSysreg"
    now = applied(nodes, stock)
    assert not any(START in ls for ls in now.values())  # QEMU would refuse the model: no VM boots anywhere
    capable = reconcile(cpumodel(spec), nodes, profiles, NOW, vmm=guarantee.Vmm(sysreg=True, impl_cpu=True))
    assert condition(capable, "MigrationSafe")["status"] == "True"
    after = applied(nodes, capable)
    assert all(after[n].get(START) == "1" and after[n].get(PLACE) == "1" for n in ("g3", "g4"))


def test_an_older_revision_is_received_only_where_stock_qemu_can_restore_it() -> None:
    """Revision 1 was the DIC pool's model; revision 2 adds a node of another identity (r0p0). The VM
    still running revision 1 may move only to nodes that take its registers as stock QEMU writes them:
    never to the node whose MIDR differs (stock QEMU never enables cap 239)."""
    first_members = [g4("dic", 1), g4("nodic", 0)]
    nodes, profiles = world(first_members)
    first = reconcile(cpumodel({**SPEC, "updatePolicy": "Follow"}), nodes, profiles, NOW)
    other = g4("r0p0", 0)
    regs = dict(other.registers)
    regs["MIDR_EL1"] = catalog.field("MIDR_EL1", "Revision").insert(regs["MIDR_EL1"], 0)
    other = replace(other, registers=regs)
    more_nodes, more_profiles = world([*first_members, other])
    second = reconcile(cpumodel({**SPEC, "updatePolicy": "Follow"}, first.status), applied(more_nodes, first), more_profiles, LATER,
                       running={"1": 1})
    assert second.status["revision"] == 2
    now = applied(applied(more_nodes, first), second)
    receivers = {n for n, ls in now.items() if "r1.cpumodel.armcpu.io/m" in ls}
    assert "r0p0" not in receivers and receivers <= {n for n, ls in now.items() if PLACE in ls}
    assert receivers  # somewhere the revision-1 guest can still go


def test_the_guarantee_is_computed_once_per_kind_of_node_at_scale() -> None:
    """5,000 nodes of two kinds: the plan's guarantee names them all (counts) and lists at most 20."""
    members = [g4(f"a{i:04d}", 1) for i in range(2500)] + [g4(f"b{i:04d}", 0) for i in range(2500)]
    nodes, profiles = world(members)
    parsed = {n: plan.parse_profile(n, p) for n, p in profiles.items()}
    result = reconcile(cpumodel(SPEC), nodes, parsed, NOW)
    said = result.status["guarantee"]
    assert said["startOnCount"] == 2500 and said["migrateToCount"] == 5000
    assert len(said["startOn"]) == 20 and len(said["migrateTo"]) == 20


# --- the virt-launcher pod webhook's decision ---

def launcher_pod(selector: dict[str, str], migration: bool = False) -> dict[str, Any]:
    """A virt-launcher pod as KubeVirt v1.9 makes it (the parts the decision reads)."""
    pod_labels = {"kubevirt.io": "virt-launcher", "kubevirt.io/created-by": "0b6c-uid", "vm.kubevirt.io/name": "vm-1"}
    if migration:
        pod_labels["kubevirt.io/migrationJobUID"] = "5f1e-uid"
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "virt-launcher-vm-1-", "namespace": "default", "labels": pod_labels},
            "spec": {"nodeSelector": {"kubevirt.io/schedulable": "true", **selector}, "containers": [{"name": "compute"}]}}


def test_a_boot_pod_must_start_where_the_view_is_the_model() -> None:
    from armcpu_operator.planning import admission

    pod = launcher_pod({PLACE: "3", "r2.cpumodel.armcpu.io/m": "true", "team": "infra"})
    assert admission.boot_pod_requirements(pod) == {START: "3"}
    dressed = admission.constrain_boot_pod(pod)
    assert dressed is not None
    assert dressed["spec"]["nodeSelector"] == {**pod["spec"]["nodeSelector"], START: "3"}
    assert dressed["metadata"]["annotations"][admission.PLACEMENT_ANNOTATION] == START
    assert pod["spec"]["nodeSelector"].get(START) is None  # the input is not changed
    assert admission.constrain_boot_pod(dressed) is None  # applied twice: nothing more


def test_a_migration_target_pod_and_other_pods_are_left_alone() -> None:
    from armcpu_operator.planning import admission

    assert admission.boot_pod_requirements(launcher_pod({PLACE: "3"}, migration=True)) == {}
    other = launcher_pod({PLACE: "3"})
    other["metadata"]["labels"]["kubevirt.io"] = "hotplug-disk"
    assert admission.boot_pod_requirements(other) == {}
    assert admission.boot_pod_requirements(launcher_pod({})) == {}
    assert admission.boot_pod_requirements({"metadata": {}, "spec": None}) == {}


def test_an_unsafe_guarantee_is_announced_once_and_says_why_vms_do_not_start() -> None:
    members = [g3("g3"), g4("g4")]
    nodes, profiles = world(members)
    spec = {**SPEC, "enforcement": "HookSidecar"}
    first = reconcile(cpumodel(spec), nodes, profiles, NOW)
    warned = [e for e in first.events if e.reason == "MigrationUnsafe"]
    assert len(warned) == 1 and warned[0].type == "Warning"
    assert "SYSREG" in warned[0].message and "stay Pending" in warned[0].message
    again = reconcile(cpumodel(spec, first.status), applied(nodes, first), profiles, LATER)
    assert not [e for e in again.events if e.reason == "MigrationUnsafe"], "said once, not every reconcile"
