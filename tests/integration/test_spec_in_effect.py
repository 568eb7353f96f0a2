"""A spec the operator cannot apply never takes effect in part, and never blocks deletion.

With the webhook down (failurePolicy Ignore: the operator being restarted), a user patches a
CpuModel with a new vmSelector and an unknown FEAT. The revision in effect keeps its own spec: the
VM it selected stays dressed, the VM only the invalid spec selects is not touched, at admission or
by the reconciler. With the webhook back, deleting that CpuModel completes (the finalizer's removal
is not judged as a spec change) and restores its VM."""

from __future__ import annotations

from typing import Any

import pytest

from armcpu_k8s.kube import ApiError, Kube, load_kubeconfig
from armcpu_testing.controlplane import ControlPlane
from tests.operator_harness import add_node, running_operator, wait_for

pytestmark = pytest.mark.integration
CPUMODELS = "/apis/armcpu.io/v1alpha1/cpumodels"
NS = "in-effect"
G4 = "kvm-guest/graviton4-neoverse-v2-host6.18.json"


def _vm(name: str, app: str) -> dict[str, Any]:
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name, "namespace": NS, "labels": {"app": app}},
            "spec": {"runStrategy": "Halted", "template": {"spec": {
                "domain": {"cpu": {"model": "host-passthrough"}, "devices": {}, "memory": {"guest": "1Gi"}}}}}}


def _dressed_by(admin: Kube, name: str) -> str | None:
    vm = admin.get(f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachines/{name}")
    annotations: dict[str, str] = (vm["spec"]["template"].get("metadata") or {}).get("annotations") or {}
    return annotations.get("armcpu.io/cpumodel")


def _condition(admin: Kube, name: str, ctype: str) -> dict[str, Any]:
    conditions = (admin.get(f"{CPUMODELS}/{name}").get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == ctype), {})


def _drop_webhook_configurations(plane: ControlPlane) -> None:
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        plane.kubectl("delete", kind, "armcpu.io", "--ignore-not-found")


def test_an_invalid_spec_is_not_half_applied_and_can_still_be_deleted(control_plane: ControlPlane) -> None:
    admin = Kube(load_kubeconfig(control_plane.kubeconfig))
    control_plane.kubectl("create", "namespace", NS, check=False)
    add_node(admin, "ie-a", {"pool": "in-effect"}, G4)
    for name, app in (("kept", "a"), ("other", "b")):
        admin.create(f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachines", _vm(name, app))
    with running_operator(control_plane, identity="ie-first", webhook=True):
        admin.create(CPUMODELS, {"apiVersion": "armcpu.io/v1alpha1", "kind": "CpuModel", "metadata": {"name": "in-effect"},
                                 "spec": {"nodeSelector": {"matchLabels": {"pool": "in-effect"}}, "vmSelector": {"matchLabels": {"app": "a"}}}})
        wait_for(lambda: _dressed_by(admin, "kept") == "in-effect", 30, "the selected VM dressed")
    # the operator is down; its webhooks are ignored (failurePolicy Ignore), so this is admitted
    admin.merge_patch(f"{CPUMODELS}/in-effect", {"spec": {"vmSelector": {"matchLabels": {"app": "b"}}, "features": {"FEAT_NOPE": "Disabled"}}})
    _drop_webhook_configurations(control_plane)
    with running_operator(control_plane, identity="ie-second", webhook=True) as operator:
        wait_for(lambda: _condition(admin, "in-effect", "Invalid").get("status") == "True", 30, "Invalid reported")
        reconciles = operator.metric("armcpu_operator_reconcile_duration_seconds_count")
        admin.merge_patch(f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachines/kept", {"metadata": {"labels": {"touched": "1"}}})
        wait_for(lambda: operator.metric("armcpu_operator_reconcile_duration_seconds_count") > reconciles, 15, "a reconcile after a VM event")
        assert _dressed_by(admin, "kept") == "in-effect", "the VM of the spec in effect was restored"
        assert _dressed_by(admin, "other") is None, "the VM only the invalid spec selects was dressed"
        assert admin.get(f"{CPUMODELS}/in-effect")["status"]["appliedSpec"]["vmSelector"] == {"matchLabels": {"app": "a"}}

        with pytest.raises(ApiError) as refused:  # the webhook is live: a new invalid spec is refused ...
            admin.merge_patch(f"{CPUMODELS}/in-effect", {"spec": {"features": {"FEAT_NOPE2": "Disabled"}}})
        assert "FEAT_NOPE2" in refused.value.message
        admin.delete(f"{CPUMODELS}/in-effect")  # ... but deleting the invalid one completes
        wait_for(lambda: admin.get_or_none(f"{CPUMODELS}/in-effect") is None, 30, "the invalid CpuModel deleted")
        assert _dressed_by(admin, "kept") is None, "deletion restores the VM it had dressed"
