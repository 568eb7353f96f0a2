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
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from armcpu import catalog
from armcpu_k8s.kube import Kube, load_kubeconfig
from armcpu_testing import launcher
from armcpu_testing.controlplane import ControlPlane
from armcpu_testing.waiting import wait_for
from node_agent.publish import publish
from tests.operator_harness import OperatorProcess, make_profile, running_operator

CPUMODELS = "/apis/armcpu.io/v1alpha1/cpumodels"
NS = "placement"
G3 = "kvm-guest/graviton3-neoverse-v1-host6.18.json"
G4 = "kvm-guest/graviton4-neoverse-v2-host6.18.json"
_uids = itertools.count(1)


def scheduling_admin(control_plane: ControlPlane) -> Kube:
    """An admin client on a control plane that runs kube-scheduler, with the tests' namespace."""
    control_plane.kubectl("create", "namespace", NS, check=False)
    control_plane.start_scheduler()
    return Kube(load_kubeconfig(control_plane.kubeconfig))


@contextmanager
def placing_operator(control_plane: ControlPlane, admin: Kube, identity: str, extra: tuple[str, ...] = ()) -> Iterator[OperatorProcess]:
    """The operator with its webhooks, once the launcher pod webhook is registered."""
    with running_operator(control_plane, identity=identity, webhook=True, extra=extra) as op:
        wait_for(lambda: any(w["name"].startswith("mutate-launcher-pod") for w in
                             (admin.get_or_none("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/armcpu.io")
                              or {}).get("webhooks") or []), 30, "the launcher pod webhook registered")
        yield op


@pytest.fixture(scope="module")
def admin(control_plane: ControlPlane) -> Kube:
    return scheduling_admin(control_plane)


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane, admin: Kube) -> Iterator[OperatorProcess]:
    with placing_operator(control_plane, admin, "op-placement") as op:
        yield op


def g4_ctr(dic: int) -> dict[str, int]:
    """Graviton4's recorded KVM view with CTR_EL0.DIC set to ``dic`` (a field KVM lets userspace lower)."""
    import json

    from tests.helpers import CPUS
    ctr = int(json.loads((CPUS / G4).read_text())["registers"]["CTR_EL0"], 16)
    return {"CTR_EL0": catalog.field("CTR_EL0", "DIC").insert(ctr, dic)}


def node(admin: Kube, name: str, pool: str, cpu_file: str, overrides: dict[str, int] | None = None, kernel: str = "6.18.30") -> None:
    """A Ready Node with the agent's NodeCpuProfile (replayed KVM, Linux ``kernel``)."""
    launcher.ready_node(admin, name, {"pool": pool})
    publish(admin, name, make_profile(name, cpu_file, overrides=overrides, kernel=kernel))


def cli_guarantee(admin: Kube, nodes: list[str], mode: str, tmp: Path, *flags: str) -> dict[str, Any]:
    """``armcpu baseline -o json`` on the nodes' NodeCpuProfiles as the API serves them: what a user
    computes before applying anything, for ``mode``."""
    files = []
    for n in nodes:
        spec = admin.get(f"/apis/armcpu.io/v1alpha1/nodecpuprofiles/{n}")["spec"]
        path = tmp / f"{n}.json"
        path.write_text(json.dumps({**spec, "name": n}))
        files.append(str(path))
    done = subprocess.run([sys.executable, "-m", "armcpu_cli.main", "baseline", *files, "-o", "json", *flags],
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode in (0, 1), done.stderr
    said: dict[str, Any] = json.loads(done.stdout)["guarantee"][mode]
    return said


def agrees(admin: Kube, model: str, nodes: list[str], tmp: Path, mode: str = "Scheduling", *vmm_flags: str) -> dict[str, Any]:
    """status.guarantee, the MigrationSafe condition and the CLI (told the same QEMU) say the same;
    returns the status's."""
    said = guarantee_of(admin, model)
    safe = condition(admin, model, "MigrationSafe")
    cli = cli_guarantee(admin, nodes, mode, tmp, *vmm_flags)
    assert (safe["status"] == "True") == said["safe"] == cli["safe"]
    assert safe["reason"] == said["reason"] == cli["reason"]
    assert said["startOn"] == cli["startOn"] and said["migrateTo"] == cli["migrateTo"]
    return said


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


def test_identical_nodes_boot_and_migrate_everywhere(admin: Kube, operator: OperatorProcess, tmp_path: Path) -> None:
    nodes = ["pl-same-a", "pl-same-b", "pl-same-c"]
    for n in nodes:
        node(admin, n, "pl-same", G4)
    cpumodel(admin, "pl-same", "pl-same")
    vm(admin, "pl-same-vm", "pl-same")
    wait_for(lambda: condition(admin, "pl-same", "MigrationSafe").get("status") == "True", 30, "MigrationSafe")
    wait_for(lambda: bool(vmi_selector(admin, "pl-same-vm")), 20, "the VM dressed")
    said = agrees(admin, "pl-same", nodes, tmp_path)
    assert said["startOn"] == said["migrateTo"] == nodes
    assert boots_on(admin, "pl-same-vm", nodes) == set(nodes)
    assert migrates_to(admin, "pl-same-vm", "pl-same-a", nodes) == {"pl-same-b", "pl-same-c"}  # KubeVirt keeps a target off its source


def test_a_directional_pool_boots_only_on_model_nodes_and_migrates_to_all(admin: Kube, operator: OperatorProcess, tmp_path: Path) -> None:
    """Same core, differing only in CTR_EL0.DIC (writable): VMs boot where DIC is 0 (the model) and may
    migrate to the DIC nodes, whose KVM lowers DIC for the guest."""
    high, low = ["pl-dir-dic-a", "pl-dir-dic-b"], ["pl-dir-nodic-a", "pl-dir-nodic-b"]
    for n in high:
        node(admin, n, "pl-dir", G4, g4_ctr(1))
    for n in low:
        node(admin, n, "pl-dir", G4, g4_ctr(0))
    cpumodel(admin, "pl-dir", "pl-dir")
    vm(admin, "pl-dir-vm", "pl-dir")
    wait_for(lambda: condition(admin, "pl-dir", "MigrationSafe").get("reason") == "DirectionalPlacement", 30, "directional guarantee")
    wait_for(lambda: bool(vmi_selector(admin, "pl-dir-vm")), 20, "the VM dressed")
    said = agrees(admin, "pl-dir", high + low, tmp_path)
    assert said["startOn"] == low and said["migrateTo"] == sorted(high + low)
    everyone = high + low
    assert boots_on(admin, "pl-dir-vm", everyone) == set(said["startOn"])
    assert migrates_to(admin, "pl-dir-vm", "pl-dir-nodic-a", everyone) == set(said["migrateTo"]) - {"pl-dir-nodic-a"}
    assert migrates_to(admin, "pl-dir-vm", "pl-dir-dic-a", everyone) == set(said["migrateTo"]) - {"pl-dir-dic-a"}


def test_graviton3_with_graviton4_is_not_safe_under_scheduling(admin: Kube, operator: OperatorProcess, tmp_path: Path) -> None:
    node(admin, "pl-mix-g3", "pl-mix", G3)
    node(admin, "pl-mix-g4", "pl-mix", G4)
    cpumodel(admin, "pl-mix", "pl-mix")
    vm(admin, "pl-mix-vm", "pl-mix")
    wait_for(lambda: condition(admin, "pl-mix", "MigrationSafe").get("status") == "False", 30, "MigrationSafe False")
    safe = condition(admin, "pl-mix", "MigrationSafe")
    assert safe["reason"] == "NoNodePresentsModel" and "{pl-mix-g3} | {pl-mix-g4}" in safe["message"] and "HookSidecar" in safe["message"]
    assert "migrations are not safe" in condition(admin, "pl-mix", "Ready")["message"]
    said = agrees(admin, "pl-mix", ["pl-mix-g3", "pl-mix-g4"], tmp_path)
    assert said["migrateTo"] == [] and said["startOn"] == ["pl-mix-g3", "pl-mix-g4"]
    wait_for(lambda: bool(vmi_selector(admin, "pl-mix-vm")), 20, "the VM dressed")
    assert boots_on(admin, "pl-mix-vm", ["pl-mix-g3", "pl-mix-g4"]) == {"pl-mix-g3", "pl-mix-g4"}  # as before: it starts, and status says the rest
    printed = admin.get(f"{CPUMODELS}/pl-mix")  # the kubectl column reads the condition
    assert next(c for c in printed["status"]["conditions"] if c["type"] == "MigrationSafe")["status"] == "False"


def test_hook_sidecar_without_a_sysreg_qemu_boots_nowhere(admin: Kube, operator: OperatorProcess, tmp_path: Path) -> None:
    node(admin, "pl-hook-g3", "pl-hook", G3)
    node(admin, "pl-hook-g4", "pl-hook", G4)
    cpumodel(admin, "pl-hook", "pl-hook", enforcement="HookSidecar")
    vm(admin, "pl-hook-vm", "pl-hook")
    wait_for(lambda: condition(admin, "pl-hook", "MigrationSafe").get("reason") == "VmmLacksSysreg", 30, "VmmLacksSysreg")
    wait_for(lambda: bool(vmi_selector(admin, "pl-hook-vm")), 20, "the VM dressed")
    assert agrees(admin, "pl-hook", ["pl-hook-g3", "pl-hook-g4"], tmp_path, mode="HookSidecar")["startOn"] == []
    assert boots_on(admin, "pl-hook-vm", ["pl-hook-g3", "pl-hook-g4"]) == set(), "a QEMU without SYSREG would refuse it: it is not started"

    def told() -> list[str]:
        events = admin.get(f"/api/v1/namespaces/{NS}/events?fieldSelector=involvedObject.name=pl-hook-vm")["items"]
        return [e["message"] for e in events if e.get("reason") == "ModelNotStartable"]

    wait_for(lambda: bool(told()), 20, "a ModelNotStartable Event on the VM")
    assert "SYSREG" in told()[0] and "Pending" in told()[0]


def test_after_a_revision_an_older_guest_migrates_only_where_its_registers_are_taken(admin: Kube, operator: OperatorProcess,
                                                                                     tmp_path: Path) -> None:
    """Revision 1 of a Follow model is two DIC nodes' view; a no-DIC node joins and revision 2 lowers
    DIC. The VM still running revision 1 carries DIC=1: its target pods go only to DIC nodes, while a
    new boot of revision 2 goes only to the no-DIC node."""
    for n in ("pl-rev-dic-a", "pl-rev-dic-b"):
        node(admin, n, "pl-rev", G4, g4_ctr(1))
    cpumodel(admin, "pl-rev", "pl-rev", updatePolicy="Follow")
    vm(admin, "pl-rev-vm", "pl-rev")
    wait_for(lambda: vmi_selector(admin, "pl-rev-vm").get("cpumodel.armcpu.io/pl-rev") == "1", 30, "revision 1 on the VM")
    admin.create(f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachineinstances", {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "pl-rev-vm", "namespace": NS, "annotations": {"armcpu.io/cpumodel": "pl-rev", "armcpu.io/revision": "1"}},
        "spec": {"domain": {"devices": {}, "memory": {"guest": "1Gi"}}}})
    wait_for(lambda: status(admin, "pl-rev").get("vms", {}).get("running") == {"1": 1}, 20, "revision 1 running")
    node(admin, "pl-rev-nodic", "pl-rev", G4, g4_ctr(0))
    wait_for(lambda: status(admin, "pl-rev").get("revision") == 2 and bool(status(admin, "pl-rev").get("liveRevisions")), 30, "revision 2")
    wait_for(lambda: vmi_selector(admin, "pl-rev-vm").get("r1.cpumodel.armcpu.io/pl-rev") == "true", 20, "the running VM keeps to revision 1")
    selector = vmi_selector(admin, "pl-rev-vm")  # KubeVirt's LiveUpdate copies it to the running VMI
    assert selector == {"cpumodel.armcpu.io/pl-rev": "2", "r1.cpumodel.armcpu.io/pl-rev": "true"}
    said = agrees(admin, "pl-rev", ["pl-rev-dic-a", "pl-rev-dic-b", "pl-rev-nodic"], tmp_path)
    assert said["startOn"] == ["pl-rev-nodic"] and said["migrateTo"] == ["pl-rev-dic-a", "pl-rev-dic-b", "pl-rev-nodic"]
    everyone = ["pl-rev-dic-a", "pl-rev-dic-b", "pl-rev-nodic"]
    assert migrates_to(admin, "pl-rev-vm", "pl-rev-dic-a", everyone, selector) == {"pl-rev-dic-b"}, \
        "stock QEMU cannot restore DIC=1 on a node without DIC"
    assert boots_on(admin, "pl-rev-vm", everyone, {"cpumodel.armcpu.io/pl-rev": "2"}) == {"pl-rev-nodic"}, "a restart boots revision 2"


def test_a_node_of_another_midr_revision_takes_no_vm_of_the_model(admin: Kube, operator: OperatorProcess, tmp_path: Path) -> None:
    """Graviton4 views that differ only in MIDR's revision: stock QEMU never enables cap 239, so the
    node whose MIDR is not the model's neither boots nor receives its VMs."""
    import json as json_

    from tests.helpers import CPUS
    midr = int(json_.loads((CPUS / G4).read_text())["registers"]["MIDR_EL1"], 16)
    node(admin, "pl-midr-a", "pl-midr", G4)
    node(admin, "pl-midr-b", "pl-midr", G4)
    node(admin, "pl-midr-z", "pl-midr", G4, {"MIDR_EL1": catalog.field("MIDR_EL1", "Revision").insert(midr, 0)})
    cpumodel(admin, "pl-midr", "pl-midr")
    vm(admin, "pl-midr-vm", "pl-midr")
    wait_for(lambda: bool(status(admin, "pl-midr").get("guarantee")) and bool(vmi_selector(admin, "pl-midr-vm")), 30, "the guarantee")
    everyone = ["pl-midr-a", "pl-midr-b", "pl-midr-z"]
    said = agrees(admin, "pl-midr", everyone, tmp_path)
    assert said["safe"] and "pl-midr-z" not in said["startOn"] and "pl-midr-z" not in said["migrateTo"]
    assert boots_on(admin, "pl-midr-vm", everyone) == set(said["startOn"]) == {"pl-midr-a", "pl-midr-b"}
    assert migrates_to(admin, "pl-midr-vm", "pl-midr-a", everyone) == {"pl-midr-b"}


def test_one_view_on_two_kernel_series_is_not_safe(admin: Kube, operator: OperatorProcess, tmp_path: Path) -> None:
    """Equal registers on Linux 6.12 and 7.3: their vCPU register lists differ (measured), so no
    migration between them is promised."""
    node(admin, "pl-kser-612", "pl-kser", G4, kernel="6.12.117+deb13-arm64")
    node(admin, "pl-kser-73", "pl-kser", G4, kernel="7.3.4+deb13-arm64")
    cpumodel(admin, "pl-kser", "pl-kser")
    wait_for(lambda: condition(admin, "pl-kser", "MigrationSafe").get("status") == "False", 30, "MigrationSafe False")
    said = agrees(admin, "pl-kser", ["pl-kser-612", "pl-kser-73"], tmp_path)
    assert said["reason"] == "StartNodesCannotMove" and said["migrateTo"] == []
