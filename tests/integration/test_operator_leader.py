"""Two operator replicas: only the Lease holder works; a clean stop hands over at once."""

from __future__ import annotations

import time

import pytest

from armcpu_k8s.kube import Kube, load_kubeconfig
from armcpu_testing.controlplane import ControlPlane
from tests.operator_harness import NAMESPACE, add_node, http_get, running_operator, wait_for

pytestmark = pytest.mark.integration
G4 = "kvm-guest/graviton4-neoverse-v2-host6.18.json"


def test_only_the_lease_holder_reconciles_and_hands_over_on_stop(control_plane: ControlPlane) -> None:
    admin = Kube(load_kubeconfig(control_plane.kubeconfig))
    add_node(admin, "le-a", {"pool": "lease"}, G4)
    with running_operator(control_plane, identity="op-first", webhook=False) as first:
        with running_operator(control_plane, identity="op-second", webhook=False, wait_ready=False) as second:
            wait_for(lambda: "another replica holds the Lease" in second.logs(), 20, "second replica waiting")
            lease = admin.get(f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/armcpu-operator")
            assert lease["spec"]["holderIdentity"] == "op-first"
            admin.create("/apis/armcpu.io/v1alpha1/cpumodels", {
                "apiVersion": "armcpu.io/v1alpha1", "kind": "CpuModel", "metadata": {"name": "lease"},
                "spec": {"nodeSelector": {"matchLabels": {"pool": "lease"}}},
            })
            wait_for(lambda: (admin.get("/apis/armcpu.io/v1alpha1/cpumodels/lease").get("status") or {}).get("revision") == 1, 30, "reconciled")
            assert http_get(second.url + "/readyz")[0] == 503
            assert second.metric("armcpu_operator_reconcile_duration_seconds_count") == 0.0
            assert first.metric("armcpu_operator_leader") == 1.0 and second.metric("armcpu_operator_leader") == 0.0

            started = time.monotonic()
            first.proc.terminate()
            assert first.proc.wait(timeout=20) == 0
            wait_for(lambda: http_get(second.url + "/readyz")[0] == 200, 20, "second replica takes over")
            handover = time.monotonic() - started
            lease = admin.get(f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/armcpu-operator")
            assert lease["spec"]["holderIdentity"] == "op-second"
            assert handover < 15, f"a released Lease is taken at once, not after expiry ({handover:.1f}s)"
            admin.merge_patch("/api/v1/nodes/le-a", {"metadata": {"labels": {"pool": "other"}}})
            wait_for(lambda: "cpumodel.armcpu.io/lease" not in admin.get("/api/v1/nodes/le-a")["metadata"]["labels"], 20,
                     "the new leader reconciles")
