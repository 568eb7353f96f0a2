"""The VM webhook is called only for VMs some CpuModel selects: the operator keeps its matchConditions
(CEL the real API server evaluates) to the models' vmSelectors. Before, every VM create and update in
the cluster went to the webhook, so while the operator hung each waited the webhook's timeout."""

from __future__ import annotations

import itertools
import signal
import time
from typing import Any

import pytest

from armcpu_k8s import selectors
from armcpu_k8s.kube import ApiError, Kube, load_kubeconfig
from armcpu_operator.planning import admission, vms
from armcpu_testing.controlplane import ControlPlane
from tests.operator_harness import add_node, running_operator, wait_for

pytestmark = pytest.mark.integration
G4 = "kvm-guest/graviton4-neoverse-v2-host6.18.json"
SELECTORS: list[dict[str, Any]] = [
    {"matchLabels": {"app": "web"}},
    {"matchLabels": {"app": "web", "tier": "a"}},
    {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db", "web"]}]},
    {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]},
    {"matchExpressions": [{"key": "example.com/pool", "operator": "Exists"}, {"key": "tier", "operator": "DoesNotExist"}]},
]
LABEL_SETS: list[dict[str, str]] = [{}, {"app": "web"}, {"app": "web", "tier": "a"}, {"app": "db", "tier": "b"},
                                    {"example.com/pool": ""}, {"example.com/pool": "x", "tier": "a"}, {"app": "other"}]


def _vm(name: str, vm_labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name, "labels": vm_labels},
            "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"devices": {}, "memory": {"guest": "1Gi"}}}}}}


def test_the_api_server_evaluates_the_condition_as_armcpu_matches_selectors(control_plane: ControlPlane) -> None:
    """For each pair of selectors and each label set, a webhook that always fails (failurePolicy Fail,
    nothing listening) refuses a VM exactly when the API server would call it: that must be exactly
    when armcpu's own selector matching selects the VM."""
    admin = Kube(load_kubeconfig(control_plane.kubeconfig))
    ns = "scope-cel"
    control_plane.kubectl("create", "namespace", ns, check=False)
    name = "armcpu-scope-probe"
    counter = itertools.count()
    for pair in [*([s] for s in SELECTORS), [SELECTORS[0], SELECTORS[4]], []]:
        claims = {f"m{i}": selector for i, selector in enumerate(pair)}
        expression = admission.vm_webhook_condition(claims)
        config = {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration", "metadata": {"name": name},
                  "webhooks": [{"name": admission.VM_WEBHOOK, "admissionReviewVersions": ["v1"], "sideEffects": "None",
                                "failurePolicy": "Fail", "timeoutSeconds": 1,
                                "clientConfig": {"url": "https://127.0.0.1:1/mutate-vm", "caBundle": ""},
                                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                                "rules": [{"apiGroups": ["kubevirt.io"], "apiVersions": ["v1"], "operations": ["CREATE"],
                                           "resources": ["virtualmachines"]}],
                                "matchConditions": [{"name": admission.VM_CONDITION, "expression": expression}]}]}
        admin.create("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations", config)
        try:
            time.sleep(1.5)  # the API server picks up a new configuration within a second
            for vm_labels in LABEL_SETS:
                selected = any(selectors.matches(s, vm_labels) for s in pair)
                try:
                    admin.create(f"/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines", _vm(f"v{next(counter)}", vm_labels))
                    called = False
                except ApiError as exc:
                    assert exc.status == 500 and "failed calling webhook" in str(exc), exc
                    called = True
                assert called == selected, f"{pair} on {vm_labels}: CEL {expression!r} called={called}, armcpu selects={selected}"
        finally:
            admin.delete(f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}")


def test_a_hung_operator_no_longer_holds_up_vms_no_cpumodel_selects(control_plane: ControlPlane) -> None:
    admin = Kube(load_kubeconfig(control_plane.kubeconfig))
    ns = "scope-hang"
    control_plane.kubectl("create", "namespace", ns, check=False)
    add_node(admin, "scope-a", {"pool": "scope"}, G4)
    with running_operator(control_plane, identity="scope") as operator:
        admin.create("/apis/armcpu.io/v1alpha1/cpumodels", {
            "apiVersion": "armcpu.io/v1alpha1", "kind": "CpuModel", "metadata": {"name": "scope"},
            "spec": {"nodeSelector": {"matchLabels": {"pool": "scope"}}, "vmSelector": {"matchLabels": {"app": "scope-web"}}}})
        wait_for(lambda: (admin.get("/apis/armcpu.io/v1alpha1/cpumodels/scope").get("status") or {}).get("revision") == 1, 30, "revision 1")

        def condition() -> str:
            config = admin.get("/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/armcpu.io")
            hook = next(h for h in config["webhooks"] if h["name"] == admission.VM_WEBHOOK)
            return str((hook.get("matchConditions") or [{}])[0].get("expression", ""))

        wait_for(lambda: '"scope-web"' in condition(), 30, "the VM webhook narrowed to the model's vmSelector")
        admin.create(f"/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines", _vm("selected", {"app": "scope-web"}))
        selected = admin.get(f"/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/selected")
        assert vms.uses(selected) == "scope", "a selected VM still goes through the webhook and is admitted dressed"
        operator.proc.send_signal(signal.SIGSTOP)  # hung: accepts connections, never answers
        try:
            start = time.monotonic()
            admin.create(f"/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines", _vm("unselected", {"app": "other"}))
            took = time.monotonic() - start
        finally:
            operator.proc.send_signal(signal.SIGCONT)
        assert took < 2.0, f"a VM no CpuModel selects waited {took:.1f}s for the hung operator's webhook"
