"""virt-launcher pods as KubeVirt v1.9 makes them, and Nodes the real kube-scheduler places them on.

Only what scheduling reads is reproduced: the labels KubeVirt puts on every virt-launcher pod
(``kubevirt.io: virt-launcher``, ``kubevirt.io/created-by: <VMI UID>``), the VMI's nodeSelector plus
``kubevirt.io/schedulable``, the compute container's requests (``devices.kubevirt.io/kvm``), and for a
migration target pod the migration's UID label (``kubevirt.io/migrationJobUID``) and the required pod
anti-affinity that keeps it off the source's node. No kubelet runs them: a pod the scheduler binds
has ``spec.nodeName`` and stays Pending, which is all a placement test needs.
"""

from __future__ import annotations

import time
from typing import Any

from armcpu_k8s.kube import ApiError, Kube

KVM_DEVICE = "devices.kubevirt.io/kvm"


def ready_node(kube: Kube, name: str, labels: dict[str, str]) -> None:
    """A Node that reports Ready with room for a few VMs, as a kubelet with KubeVirt's device plugin would."""
    body: dict[str, Any] = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/arch": "arm64",
                                                   "kubevirt.io/schedulable": "true", **labels}}}
    try:
        kube.create("/api/v1/nodes", body)
    except ApiError as exc:
        if exc.status != 409:
            raise
        kube.merge_patch(f"/api/v1/nodes/{name}", {"metadata": {"labels": body["metadata"]["labels"]}})
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    capacity = {"cpu": "64", "memory": "256Gi", "pods": "110", KVM_DEVICE: "1k"}
    kube.merge_patch(f"/api/v1/nodes/{name}/status", {"status": {
        "capacity": capacity, "allocatable": capacity,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "simulated node",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}]}})
    # The API server's TaintNodesByCondition admission taints a new Node not-ready; the node lifecycle
    # controller (kube-controller-manager, not run here) lifts it once the Node reports Ready.
    kube.merge_patch(f"/api/v1/nodes/{name}", {"spec": {"taints": None}})


def launcher_pod(vmi: str, vmi_uid: str, node_selector: dict[str, str], *, migration_uid: str | None = None,
                 namespace: str = "default") -> dict[str, Any]:
    """A virt-launcher pod for VMI ``vmi``: the boot pod, or with ``migration_uid`` a migration's target pod."""
    labels = {"kubevirt.io": "virt-launcher", "kubevirt.io/created-by": vmi_uid, "vm.kubevirt.io/name": vmi}
    spec: dict[str, Any] = {
        "nodeSelector": {**node_selector, "kubevirt.io/schedulable": "true"},
        "containers": [{"name": "compute", "image": "quay.io/kubevirt/virt-launcher:v1.9.0",
                        "resources": {"requests": {"cpu": "100m", "memory": "512Mi", KVM_DEVICE: "1"},
                                      "limits": {KVM_DEVICE: "1"}}}],
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 30,
    }
    if migration_uid is not None:
        labels["kubevirt.io/migrationJobUID"] = migration_uid
        spec["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"kubevirt.io/created-by": vmi_uid}}, "topologyKey": "kubernetes.io/hostname"}]}}
    kind = "target" if migration_uid is not None else "boot"
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"virt-launcher-{vmi}-{kind}-{migration_uid or vmi_uid}", "namespace": namespace,
                         "labels": labels, "annotations": {"kubevirt.io/domain": vmi}},
            "spec": spec}


def placed(kube: Kube, pod: dict[str, Any], timeout: float = 30.0) -> str | None:
    """Create ``pod`` and wait for the scheduler's answer: the node it bound the pod to, or None once
    the scheduler reported it Unschedulable."""
    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    kube.create(f"/api/v1/namespaces/{ns}/pods", pod)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = kube.get(f"/api/v1/namespaces/{ns}/pods/{name}")
        node = (got.get("spec") or {}).get("nodeName")
        if node:
            return str(node)
        for cond in (got.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False" and cond.get("reason") == "Unschedulable":
                return None
        time.sleep(0.2)
    raise TimeoutError(f"pod {ns}/{name} neither placed nor reported unschedulable in {timeout}s")
