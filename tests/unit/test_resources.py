"""The typed resource handles spell every path the operator and the agent request."""

from __future__ import annotations

import pytest

from armcpu_k8s.resources import CONFIGMAPS, CPUMODELS, LEASES, NODECPUPROFILES, NODES, VMIS, VMS


def test_paths_of_core_and_group_resources() -> None:
    assert NODES.collection() == "/api/v1/nodes" and NODES.item("n1") == "/api/v1/nodes/n1"
    assert CPUMODELS.status("m") == "/apis/armcpu.io/v1alpha1/cpumodels/m/status"
    assert NODECPUPROFILES.item("n1") == "/apis/armcpu.io/v1alpha1/nodecpuprofiles/n1"
    assert VMS.collection() == "/apis/kubevirt.io/v1/virtualmachines"
    assert VMS.item("vm", "ns") == "/apis/kubevirt.io/v1/namespaces/ns/virtualmachines/vm"
    assert VMIS.collection("ns") == "/apis/kubevirt.io/v1/namespaces/ns/virtualmachineinstances"
    assert CONFIGMAPS.item("armcpu-domain-hook", "web") == "/api/v1/namespaces/web/configmaps/armcpu-domain-hook"
    assert LEASES.item("armcpu-operator", "armcpu") == "/apis/coordination.k8s.io/v1/namespaces/armcpu/leases/armcpu-operator"


def test_a_namespaced_item_without_a_namespace_and_a_cluster_item_with_one_are_refused() -> None:
    with pytest.raises(ValueError, match="namespaced"):
        VMS.item("vm")
    with pytest.raises(ValueError, match="cluster-scoped"):
        NODES.collection("ns")
