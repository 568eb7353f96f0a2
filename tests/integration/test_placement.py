"""The real kube-scheduler places virt-launcher pods exactly where each CpuModel's guarantee says.

The chain a cluster runs: the operator dresses the VM (its template's nodeSelector), KubeVirt copies
that into the VMI and the virt-launcher pod (reproduced here: :mod:`armcpu_testing.launcher`), the
operator's pod webhook narrows a boot pod to the nodes a VM may boot on, and kube-scheduler (the same
pinned k8s.io/kubernetes) binds each pod to a Ready Node or reports it Unschedulable. Each pod is
also pinned to one node (a user's own node affinity, which armcpu leaves alone), so every node of a
pool is asked separately: a pod is placed if and only if that node is where the guarantee allows it.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from armcpu import catalog
from armcpu_k8s.kube import Kube, load_kubeconfig
from armcpu_testing import launcher
from armcpu_testing.controlplane import ControlPlane
from node_agent.publish import publish
from tests.operator_harness import OperatorProcess, make_profile, running_operator, wait_for

CPUMODELS = "/apis/armcpu.io/v1alpha1/cpumodels"
NS = "placement"
G3 = "kvm-guest/graviton3-neoverse-v1-host6.18.json"
G4 = "kvm-guest/graviton4-neoverse-v2-host6.18.json"
_uids = itertools.count(1)


@pytest.fixture(scope="module")
def admin(control_plane: ControlPlane) -> Kube:
    control_plane.kubectl("create", "namespace", NS, check=False)
    control_plane.start_scheduler()
    return Kube(load_kubeconfig(control_plane.kubeconfig))


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane, admin: Kube) -> Iterator[OperatorProcess]:
    with running_operator(control_plane, identity="op-placement", webhook=True) as op:
        wait_for(lambda: any(w["name"].startswith("mutate-launcher-pod") for w in
                             (admin.get_or_none("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/armcpu.io")
                              or {}).get("webhooks") or []), 30, "the launcher pod webhook registered")
        yield op


def g4_ctr(dic: int) -> dict[str, int]:
    """Graviton4's recorded KVM view with CTR_EL0.DIC set to ``dic`` (a field KVM lets userspace lower)."""
    import json

    from tests.helpers import CPUS
    ctr = int(json.loads((CPUS / G4).read_text())["registers"]["CTR_EL0"], 16)
    return {"CTR_EL0": catalog.field("CTR_EL0", "DIC").insert(ctr, dic)}


def node(admin: Kube, name: str, pool: str, cpu_file: str, overrides: dict[str, int] | None = None) -> None:
    """A Ready Node with the agent's NodeCpuProfile (replayed KVM, Linux 6.18.30)."""
    launcher.ready_node(admin, name, {"pool": pool})
    publish(admin, name, make_profile(name, cpu_file, overrides=overrides))


def cpumodel(admin: Kube, name: str, pool: str, **spec: Any) -> None:
    admin.create(CPUMODELS, {"apiVersion": "armcpu.io/v1alpha1", "kind": "CpuModel", "metadata": {"name": name},
                             "spec": {"nodeSelector": {"matchLabels": {"pool": pool}}, "vmSelector": {"matchLabels": {"app": name}},
                                      **spec}})


def vm(admin: Kube, name: str, app: str) -> None:
    admin.create(f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachines", {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name, "namespace": NS, "labels": {"app": app}},
        "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"cpu": {"model": "host-passthrough"}, "devices": {},
                                                                          "memory": {"guest": "1Gi"}}}}}})


def status(admin: Kube, name: str) -> dict[str, Any]:
    return dict(admin.get(f"{CPUMODELS}/{name}").get("status") or {})


def condition(admin: Kube, model: str, kind: str) -> dict[str, Any]:
    return next((c for c in status(admin, model).get("conditions") or [] if c["type"] == kind), {})


def vmi_selector(admin: Kube, vm_name: str) -> dict[str, str]:
    """What KubeVirt copies from the VM's template into the VMI, and so into every virt-launcher pod."""
    return dict(admin.get(f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachines/{vm_name}")["spec"]["template"]["spec"]
                .get("nodeSelector") or {})


def pinned(pod: dict[str, Any], node_name: str) -> dict[str, Any]:
    """``pod`` that may only go to ``node_name`` (a user's node affinity: ANDed with the nodeSelector)."""
    pod["spec"].setdefault("affinity", {})["nodeAffinity"] = {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [node_name]}]}]}}
    pod["metadata"]["name"] += f"-{node_name}"
    return pod


def boots_on(admin: Kube, vm_name: str, nodes: list[str], selector: dict[str, str] | None = None) -> set[str]:
    """The nodes of ``nodes`` the real scheduler binds this VM's boot pod to, asked one node at a time."""
    selector = selector if selector is not None else vmi_selector(admin, vm_name)
    got = set()
    for n in nodes:
        uid = f"boot-{next(_uids):04d}-{vm_name}"
        if launcher.placed(admin, pinned(launcher.launcher_pod(vm_name, uid, selector, namespace=NS), n)) == n:
            got.add(n)
    return got


def migrates_to(admin: Kube, vm_name: str, source: str, nodes: list[str], selector: dict[str, str] | None = None) -> set[str]:
    """A VM running on ``source`` (its boot pod bound there, whatever placed it), and the nodes of
    ``nodes`` its migration target pod is bound to, one node at a time."""
    selector = selector if selector is not None else vmi_selector(admin, vm_name)
    uid = f"vmi-{next(_uids):04d}-{vm_name}"
    running = launcher.launcher_pod(vm_name, uid, {}, namespace=NS)
    running["metadata"]["name"] += "-running"
    running["spec"]["nodeName"] = source  # already running there: bound, as the scheduler once did
    admin.create(f"/api/v1/namespaces/{NS}/pods", running)
    got = set()
    for n in nodes:
        target = launcher.launcher_pod(vm_name, uid, selector, migration_uid=f"mig-{next(_uids):04d}", namespace=NS)
        if launcher.placed(admin, pinned(target, n)) == n:
            got.add(n)
    return got


def guarantee_of(admin: Kube, model: str) -> dict[str, Any]:
    said: dict[str, Any] = status(admin, model)["guarantee"]
    return said


def test_identical_nodes_boot_and_migrate_everywhere(admin: Kube, operator: OperatorProcess) -> None:
    nodes = ["same-a", "same-b", "same-c"]
    for n in nodes:
        node(admin, n, "same", G4)
    cpumodel(admin, "same", "same")
    vm(admin, "same-vm", "same")
    wait_for(lambda: condition(admin, "same", "MigrationSafe").get("status") == "True", 30, "MigrationSafe")
    wait_for(lambda: bool(vmi_selector(admin, "same-vm")), 20, "the VM dressed")
    said = guarantee_of(admin, "same")
    assert said["startOn"] == said["migrateTo"] == nodes
    assert boots_on(admin, "same-vm", nodes) == set(nodes)
    assert migrates_to(admin, "same-vm", "same-a", nodes) == {"same-b", "same-c"}  # KubeVirt keeps a target off its source


def test_a_directional_pool_boots_only_on_model_nodes_and_migrates_to_all(admin: Kube, operator: OperatorProcess) -> None:
    """Same core, differing only in CTR_EL0.DIC (writable): VMs boot where DIC is 0 (the model) and may
    migrate to the DIC nodes, whose KVM lowers DIC for the guest."""
    high, low = ["dir-dic-a", "dir-dic-b"], ["dir-nodic-a", "dir-nodic-b"]
    for n in high:
        node(admin, n, "dir", G4, g4_ctr(1))
    for n in low:
        node(admin, n, "dir", G4, g4_ctr(0))
    cpumodel(admin, "dir", "dir")
    vm(admin, "dir-vm", "dir")
    wait_for(lambda: condition(admin, "dir", "MigrationSafe").get("reason") == "DirectionalPlacement", 30, "directional guarantee")
    wait_for(lambda: bool(vmi_selector(admin, "dir-vm")), 20, "the VM dressed")
    said = guarantee_of(admin, "dir")
    assert said["startOn"] == low and said["migrateTo"] == sorted(high + low)
    everyone = high + low
    assert boots_on(admin, "dir-vm", everyone) == set(said["startOn"])
    assert migrates_to(admin, "dir-vm", "dir-nodic-a", everyone) == set(said["migrateTo"]) - {"dir-nodic-a"}
    assert migrates_to(admin, "dir-vm", "dir-dic-a", everyone) == set(said["migrateTo"]) - {"dir-dic-a"}


def test_graviton3_with_graviton4_is_not_safe_under_scheduling(admin: Kube, operator: OperatorProcess) -> None:
    node(admin, "mix-g3", "mix", G3)
    node(admin, "mix-g4", "mix", G4)
    cpumodel(admin, "mix", "mix")
    vm(admin, "mix-vm", "mix")
    wait_for(lambda: condition(admin, "mix", "MigrationSafe").get("status") == "False", 30, "MigrationSafe False")
    safe = condition(admin, "mix", "MigrationSafe")
    assert safe["reason"] == "NoNodePresentsModel" and "{mix-g3} | {mix-g4}" in safe["message"] and "HookSidecar" in safe["message"]
    assert "migrations are not safe" in condition(admin, "mix", "Ready")["message"]
    said = guarantee_of(admin, "mix")
    assert said["migrateTo"] == [] and said["startOn"] == ["mix-g3", "mix-g4"]
    wait_for(lambda: bool(vmi_selector(admin, "mix-vm")), 20, "the VM dressed")
    assert boots_on(admin, "mix-vm", ["mix-g3", "mix-g4"]) == {"mix-g3", "mix-g4"}  # as before: it starts, and status says the rest
    printed = admin.get(f"{CPUMODELS}/mix")  # the kubectl column reads the condition
    assert next(c for c in printed["status"]["conditions"] if c["type"] == "MigrationSafe")["status"] == "False"


def test_hook_sidecar_without_a_sysreg_qemu_boots_nowhere(admin: Kube, operator: OperatorProcess) -> None:
    node(admin, "hook-g3", "hook", G3)
    node(admin, "hook-g4", "hook", G4)
    cpumodel(admin, "hook", "hook", enforcement="HookSidecar")
    vm(admin, "hook-vm", "hook")
    wait_for(lambda: condition(admin, "hook", "MigrationSafe").get("reason") == "VmmLacksSysreg", 30, "VmmLacksSysreg")
    wait_for(lambda: bool(vmi_selector(admin, "hook-vm")), 20, "the VM dressed")
    assert guarantee_of(admin, "hook")["startOn"] == []
    assert boots_on(admin, "hook-vm", ["hook-g3", "hook-g4"]) == set(), "a QEMU without SYSREG would refuse it: it is not started"


def test_after_a_revision_an_older_guest_migrates_only_where_its_registers_are_taken(admin: Kube, operator: OperatorProcess) -> None:
    """Revision 1 of a Follow model is two DIC nodes' view; a no-DIC node joins and revision 2 lowers
    DIC. The VM still running revision 1 carries DIC=1: its target pods go only to DIC nodes, while a
    new boot of revision 2 goes only to the no-DIC node."""
    for n in ("rev-dic-a", "rev-dic-b"):
        node(admin, n, "rev", G4, g4_ctr(1))
    cpumodel(admin, "rev", "rev", updatePolicy="Follow")
    vm(admin, "rev-vm", "rev")
    wait_for(lambda: vmi_selector(admin, "rev-vm").get("cpumodel.armcpu.io/rev") == "1", 30, "revision 1 on the VM")
    admin.create(f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachineinstances", {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "rev-vm", "namespace": NS, "annotations": {"armcpu.io/cpumodel": "rev", "armcpu.io/revision": "1"}},
        "spec": {"domain": {"devices": {}, "memory": {"guest": "1Gi"}}}})
    wait_for(lambda: status(admin, "rev").get("vms", {}).get("running") == {"1": 1}, 20, "revision 1 running")
    node(admin, "rev-nodic", "rev", G4, g4_ctr(0))
    wait_for(lambda: status(admin, "rev").get("revision") == 2 and bool(status(admin, "rev").get("liveRevisions")), 30, "revision 2")
    wait_for(lambda: vmi_selector(admin, "rev-vm").get("r1.cpumodel.armcpu.io/rev") == "true", 20, "the running VM keeps to revision 1")
    selector = vmi_selector(admin, "rev-vm")  # KubeVirt's LiveUpdate copies it to the running VMI
    assert selector == {"cpumodel.armcpu.io/rev": "2", "r1.cpumodel.armcpu.io/rev": "true"}
    said = guarantee_of(admin, "rev")
    assert said["startOn"] == ["rev-nodic"] and said["migrateTo"] == ["rev-dic-a", "rev-dic-b", "rev-nodic"]
    everyone = ["rev-dic-a", "rev-dic-b", "rev-nodic"]
    assert migrates_to(admin, "rev-vm", "rev-dic-a", everyone, selector) == {"rev-dic-b"}, \
        "stock QEMU cannot restore DIC=1 on a node without DIC"
    assert boots_on(admin, "rev-vm", everyone, {"cpumodel.armcpu.io/rev": "2"}) == {"rev-nodic"}, "a restart boots revision 2"
