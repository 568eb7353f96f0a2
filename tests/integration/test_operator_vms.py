"""The operator and KubeVirt VirtualMachines (real CRD schema): selected VMs are pinned to compatible
nodes and carry the model, users' settings survive, ambiguity is refused with an Event, nothing is
written to VMs already right, and deleting the CpuModel restores every VM exactly."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import pytest

from armcpu_k8s.kube import Kube, load_kubeconfig
from armcpu_testing.controlplane import ControlPlane
from tests.operator_harness import OPERATOR_USER, OperatorProcess, add_node, running_operator, wait_for

pytestmark = pytest.mark.integration
CPUMODELS = "/apis/armcpu.io/v1alpha1/cpumodels"
NS = "vm-tests"
G3_GUEST = "kvm-guest/graviton3-neoverse-v1-host6.18.json"
G4_GUEST = "kvm-guest/graviton4-neoverse-v2-host6.18.json"


def _with_sve() -> dict[str, int]:
    """The Graviton3 guest view as KVM shows it to a vCPU created with SVE (the recorded dump had SVE
    off): ID_AA64PFR0_EL1.SVE=1 and Graviton3's ID_AA64ZFR0_EL1 (../shared/cpus/graviton3.json)."""
    import json

    from tests.helpers import CPUS

    guest = json.loads((CPUS / G3_GUEST).read_text())["registers"]
    host = json.loads((CPUS / "graviton3.json").read_text())["registers"]
    pfr0 = int(guest["ID_AA64PFR0_EL1"], 16) | (1 << 32)
    return {"ID_AA64PFR0_EL1": pfr0, "ID_AA64ZFR0_EL1": int(host["ID_AA64ZFR0_EL1"], 16)}

VM = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
  namespace: vm-tests
  labels: {{app: {app}}}
spec:
  runStrategy: Halted
  template:
    metadata:
      labels: {{kubevirt.io/domain: {name}}}
    spec:
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
            - matchExpressions: [{{key: zone, operator: In, values: [a]}}]
            - matchExpressions: [{{key: zone, operator: In, values: [b]}}]
      domain:
        cpu: {{model: host-passthrough, cores: 2}}
        devices: {{}}
        memory: {{guest: 1Gi}}
"""


def vm_path(name: str) -> str:
    return f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachines/{name}"


@pytest.fixture(scope="module")
def admin(control_plane: ControlPlane) -> Kube:
    control_plane.kubectl("create", "namespace", NS, check=False)
    return Kube(load_kubeconfig(control_plane.kubeconfig))


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane) -> Iterator[OperatorProcess]:
    with running_operator(control_plane, identity="op-vms", webhook=True) as op:
        yield op


def _apply_vm(plane: ControlPlane, name: str, app: str) -> None:
    plane.kubectl("apply", "-f", "-", input=VM.format(name=name, app=app))


def _template(admin: Kube, name: str) -> dict[str, Any]:
    template: dict[str, Any] = admin.get(vm_path(name))["spec"]["template"]
    return template


def test_selected_vms_get_the_model_and_keep_their_own_settings(control_plane: ControlPlane, admin: Kube, operator: OperatorProcess) -> None:
    add_node(admin, "vm-g3", {"pool": "vmpool"}, G3_GUEST, overrides=_with_sve())
    add_node(admin, "vm-g4", {"pool": "vmpool"}, G4_GUEST)
    _apply_vm(control_plane, "before", "web")  # exists before its CpuModel
    original = copy.deepcopy(admin.get(vm_path("before")))
    admin.create(CPUMODELS, {"apiVersion": "armcpu.io/v1alpha1", "kind": "CpuModel", "metadata": {"name": "vmpool"},
                             "spec": {"nodeSelector": {"matchLabels": {"pool": "vmpool"}}, "vmSelector": {"matchLabels": {"app": "web"}}}})
    wait_for(lambda: (admin.get(CPUMODELS + "/vmpool").get("status") or {}).get("vms", {}).get("current") == 1, 30, "VM patched")
    status = admin.get(CPUMODELS + "/vmpool")["status"]
    assert status["model"]["libvirtDisabled"] == ["sve"], "one node offers SVE, the other does not: the model switches it off"
    template = _template(admin, "before")
    assert template["spec"]["nodeSelector"] == {"cpumodel.armcpu.io/vmpool": str(status["revision"])}
    assert template["spec"]["affinity"] == original["spec"]["template"]["spec"]["affinity"], "the user's terms are untouched"
    assert template["metadata"]["annotations"] == {"armcpu.io/cpumodel": "vmpool", "armcpu.io/revision": str(status["revision"]),
                                                   "armcpu.io/fingerprint": status["fingerprint"]}
    assert template["metadata"]["labels"] == {"kubevirt.io/domain": "before"}
    assert template["spec"]["domain"]["cpu"] == {"model": "host-passthrough", "cores": 2,
                                                 "features": [{"name": "sve", "policy": "disable"}]}
    # the patched VM is valid under KubeVirt's schema
    patched = admin.get(vm_path("before"))
    check = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=_as_yaml(patched))
    assert check.returncode == 0

    # a VM created later is admitted already dressed by the mutating webhook: no patch needed afterwards
    import json

    dry = json.loads(control_plane.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-",
                                           input=VM.format(name="dry", app="web")).stdout)
    assert dry["spec"]["template"]["spec"]["nodeSelector"] == {"cpumodel.armcpu.io/vmpool": str(status["revision"])}
    mark = control_plane.audit_mark()
    _apply_vm(control_plane, "after", "web")
    assert (_template(admin, "after")["spec"].get("nodeSelector") or {}).get("cpumodel.armcpu.io/vmpool") == str(status["revision"])
    time.sleep(1.5)
    assert [w for w in control_plane.writes_since(mark, OPERATOR_USER) if w["objectRef"]["resource"] == "virtualmachines"] == []

    # nothing is written to VMs that already carry the right patch
    wait_for(lambda: (admin.get(CPUMODELS + "/vmpool").get("status") or {}).get("vms", {}).get("current") == 2, 30, "both current")
    mark = control_plane.audit_mark()
    admin.merge_patch(vm_path("before"), {"metadata": {"labels": {"tier": "1"}}})
    before = operator.metric("armcpu_operator_reconcile_duration_seconds_count")
    wait_for(lambda: operator.metric("armcpu_operator_reconcile_duration_seconds_count") > before, 10, "a reconcile")
    time.sleep(1.0)
    writes = [w for w in control_plane.writes_since(mark, OPERATOR_USER) if w["objectRef"]["resource"] != "leases"]
    assert writes == []

    # deselecting a VM restores it exactly
    admin.merge_patch(vm_path("before"), {"metadata": {"labels": {"tier": None, "app": "other"}}})
    wait_for(lambda: "armcpu.io/applied" not in (admin.get(vm_path("before"))["metadata"].get("annotations") or {}), 30, "restored")
    restored = admin.get(vm_path("before"))
    assert restored["spec"] == original["spec"]
    assert restored["metadata"].get("annotations") == original["metadata"].get("annotations")

    # deleting the CpuModel restores every VM it had patched
    admin.delete(CPUMODELS + "/vmpool")
    wait_for(lambda: admin.get_or_none(CPUMODELS + "/vmpool") is None, 30, "CpuModel gone")
    after = admin.get(vm_path("after"))
    assert "nodeSelector" not in after["spec"]["template"]["spec"] and "features" not in after["spec"]["template"]["spec"]["domain"]["cpu"]
    assert "armcpu.io/applied" not in (after["metadata"].get("annotations") or {})


def test_a_vm_selected_by_two_models_is_left_alone_with_an_event(control_plane: ControlPlane, admin: Kube, operator: OperatorProcess) -> None:
    add_node(admin, "amb-a", {"pool": "amb"}, G4_GUEST)
    _apply_vm(control_plane, "twice", "shared")
    original = copy.deepcopy(admin.get(vm_path("twice")))
    for name in ("amb-one", "amb-two"):
        admin.create(CPUMODELS, {"apiVersion": "armcpu.io/v1alpha1", "kind": "CpuModel", "metadata": {"name": name},
                                 "spec": {"nodeSelector": {"matchLabels": {"pool": "amb"}}, "vmSelector": {"matchLabels": {"app": "shared"}}}})
    wait_for(lambda: (admin.get(CPUMODELS + "/amb-two").get("status") or {}).get("vms", {}).get("ambiguous") == 1, 30, "ambiguous counted")

    def event() -> list[dict[str, Any]]:
        return [e for e in admin.get(f"/api/v1/namespaces/{NS}/events")["items"]
                if e["involvedObject"].get("name") == "twice" and e["reason"] == "AmbiguousCpuModel"]

    found = wait_for(event, 20, "an AmbiguousCpuModel event")
    assert "selected by CpuModels amb-one, amb-two" in found[0]["message"] and found[0]["type"] == "Warning"
    assert admin.get(vm_path("twice"))["spec"] == original["spec"]


def _as_yaml(obj: dict[str, Any]) -> str:
    import yaml

    clean = copy.deepcopy(obj)
    for key in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"):
        clean["metadata"].pop(key, None)
    clean.pop("status", None)
    return yaml.safe_dump(clean)


VMI = """\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: {name}
  namespace: vm-tests
  annotations: {{armcpu.io/cpumodel: {model}, armcpu.io/revision: "{revision}"}}
spec:
  domain: {{devices: {{}}, memory: {{guest: 1Gi}}}}
"""


def _status(admin: Kube, name: str) -> dict[str, Any]:
    status: dict[str, Any] = admin.get(f"{CPUMODELS}/{name}").get("status") or {}
    return status


def _condition(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions") or [] if c["type"] == ctype)


def test_hook_sidecar_enforcement_starts_qemu_with_the_model(control_plane: ControlPlane, admin: Kube, operator: OperatorProcess) -> None:
    from armcpu_operator import hookmaps
    from armcpu_operator.planning import hooks, vms

    add_node(admin, "hook-g3", {"pool": "hooked"}, G3_GUEST)
    add_node(admin, "hook-g4", {"pool": "hooked"}, G4_GUEST)
    _apply_vm(control_plane, "hooked-vm", "hooked")
    original = copy.deepcopy(admin.get(vm_path("hooked-vm")))
    admin.create(CPUMODELS, {"apiVersion": "armcpu.io/v1alpha1", "kind": "CpuModel", "metadata": {"name": "hooked"},
                             "spec": {"nodeSelector": {"matchLabels": {"pool": "hooked"}}, "vmSelector": {"matchLabels": {"app": "hooked"}},
                                      "enforcement": "HookSidecar"}})
    wait_for(lambda: _status(admin, "hooked").get("vms", {}).get("domainRewrite") == 1, 30, "VM given the domain hook")
    status = _status(admin, "hooked")
    assert status["model"]["domainRewrite"] == "Needed" and "SYSREG_" in status["model"]["qemu"]
    annotations = _template(admin, "hooked-vm")["metadata"]["annotations"]
    assert annotations["armcpu.io/qemu-cpu"] == status["model"]["qemu"]
    import json

    assert json.loads(annotations[vms.HOOK_SIDECARS]) == [vms.HOOK_ENTRY]
    hook_map = wait_for(lambda: admin.get_or_none(f"/api/v1/namespaces/{NS}/configmaps/{vms.HOOK_CONFIGMAP}"), 20, "hook ConfigMap")
    assert hook_map["data"] == {vms.HOOK_KEY: hookmaps.SCRIPT} and hook_map["metadata"]["labels"] == hooks.LABELS
    check = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=_as_yaml(admin.get(vm_path("hooked-vm"))))
    assert check.returncode == 0, "the hooked VM is valid under KubeVirt's schema"

    # a running VM started with revision 1 keeps it until restart; a new revision makes it restart-pending
    control_plane.kubectl("apply", "-f", "-", input=VMI.format(name="hooked-vm", model="hooked", revision=status["revision"]))
    wait_for(lambda: _status(admin, "hooked").get("vms", {}).get("running") == {str(status["revision"]): 1}, 20, "running counted")
    assert _condition(_status(admin, "hooked"), "RestartPending")["status"] == "False"
    admin.merge_patch(f"{CPUMODELS}/hooked", {"spec": {"features": {"FEAT_SHA3": "Disabled"}}})
    wait_for(lambda: _status(admin, "hooked").get("vms", {}).get("restartPending") == 1, 30, "restart pending")
    pending = _condition(_status(admin, "hooked"), "RestartPending")
    assert pending["status"] == "True" and "vm-tests/hooked-vm" in pending["message"]
    wait_for(lambda: _template(admin, "hooked-vm")["metadata"]["annotations"]["armcpu.io/revision"] == str(status["revision"] + 1),
             10, "the stopped definition moved to the new revision")
    admin.delete(f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachineinstances/hooked-vm")  # stopped: it restarts with the new one
    wait_for(lambda: _condition(_status(admin, "hooked"), "RestartPending")["status"] == "False", 30, "nothing pending")

    # deleting the model restores the VM exactly and removes the ConfigMap with its last user
    admin.delete(f"{CPUMODELS}/hooked")
    wait_for(lambda: admin.get_or_none(f"/api/v1/namespaces/{NS}/configmaps/{vms.HOOK_CONFIGMAP}") is None, 30, "ConfigMap removed")
    assert admin.get(vm_path("hooked-vm"))["spec"] == original["spec"]
    assert admin.get(vm_path("hooked-vm"))["metadata"].get("annotations") == original["metadata"].get("annotations")


def test_a_model_equal_to_every_node_needs_no_domain_rewrite(control_plane: ControlPlane, admin: Kube, operator: OperatorProcess) -> None:
    add_node(admin, "same-1", {"pool": "same"}, G4_GUEST)
    add_node(admin, "same-2", {"pool": "same"}, G4_GUEST)
    _apply_vm(control_plane, "same-vm", "same")
    admin.create(CPUMODELS, {"apiVersion": "armcpu.io/v1alpha1", "kind": "CpuModel", "metadata": {"name": "same"},
                             "spec": {"nodeSelector": {"matchLabels": {"pool": "same"}}, "vmSelector": {"matchLabels": {"app": "same"}},
                                      "enforcement": "HookSidecar"}})
    wait_for(lambda: _status(admin, "same").get("vms", {}).get("current") == 1, 30, "VM patched")
    status = _status(admin, "same")
    assert status["model"]["domainRewrite"] == "NotNeeded" and status["model"]["qemu"] == "host"
    assert status["vms"]["domainRewrite"] == 0
    assert "armcpu.io/qemu-cpu" not in _template(admin, "same-vm")["metadata"]["annotations"]


def test_a_running_vm_keeps_to_nodes_that_can_run_the_revision_it_started_with(control_plane: ControlPlane, admin: Kube,
                                                                                operator: OperatorProcess) -> None:
    from armcpu import model as algebra
    from armcpu.profile import from_dict
    from armcpu_operator.planning import plan

    add_node(admin, "live-g4", {"pool": "live"}, G4_GUEST)
    _apply_vm(control_plane, "live-vm", "live")
    admin.create(CPUMODELS, {"apiVersion": "armcpu.io/v1alpha1", "kind": "CpuModel", "metadata": {"name": "live"},
                             "spec": {"nodeSelector": {"matchLabels": {"pool": "live"}}, "vmSelector": {"matchLabels": {"app": "live"}},
                                      "updatePolicy": "Follow"}})
    wait_for(lambda: _status(admin, "live").get("vms", {}).get("current") == 1, 30, "revision 1 on the VM")
    control_plane.kubectl("apply", "-f", "-", input=VMI.format(name="live-vm", model="live", revision=1))
    wait_for(lambda: _status(admin, "live").get("vms", {}).get("running") == {"1": 1}, 20, "running counted")
    add_node(admin, "live-g3", {"pool": "live"}, G3_GUEST)  # the pool's model drops to what Graviton3 has too
    wait_for(lambda: _status(admin, "live").get("revision") == 2 and _status(admin, "live").get("liveRevisions"), 30, "revision 2")
    wait_for(lambda: (_template(admin, "live-vm")["spec"].get("nodeSelector") or {}).get("cpumodel.armcpu.io/live") == "2", 20, "VM moved")
    status = _status(admin, "live")
    selector = _template(admin, "live-vm")["spec"]["nodeSelector"]
    assert selector == {"cpumodel.armcpu.io/live": "2", "r1.cpumodel.armcpu.io/live": "true"}
    admitted = {n["metadata"]["name"] for n in admin.get("/api/v1/nodes")["items"]
                if all(n["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())}
    assert admitted == {"live-g4"}, "Graviton3 cannot run revision 1, which the guest still runs"
    profiles = {n: from_dict({**admin.get(f"/apis/armcpu.io/v1alpha1/nodecpuprofiles/{n}")["spec"], "name": n}) for n in ("live-g4", "live-g3")}
    revision_1 = plan.model_from_status(status["liveRevisions"][0])
    assert algebra.can_run(profiles["live-g4"], revision_1).ok and not algebra.can_run(profiles["live-g3"], revision_1).ok
    assert status["vms"]["restartPending"] == 1
    admin.delete(f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachineinstances/live-vm")  # restarted: now on revision 2
    wait_for(lambda: "liveRevisions" not in _status(admin, "live"), 30, "revision 1 no longer live")
    wait_for(lambda: _template(admin, "live-vm")["spec"]["nodeSelector"] == {"cpumodel.armcpu.io/live": "2"}, 20, "requirement dropped")
    assert "r1.cpumodel.armcpu.io/live" not in admin.get("/api/v1/nodes/live-g4")["metadata"]["labels"]
