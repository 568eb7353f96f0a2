"""One real node for the whole tier: a control plane that serves kubelets and pods, and beside it
containerd, the kubelet, kube-proxy and kube-controller-manager (armcpu_testing.node). Skipped with
the reason where the machine cannot run one (not root, no cgroups, no IPv4 address)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from armcpu_k8s.kube import Kube, load_kubeconfig
from armcpu_testing import controlplane
from armcpu_testing import node as real_node


@dataclass(frozen=True)
class Cluster:
    plane: controlplane.ControlPlane
    node: real_node.RealNode
    images: real_node.Images
    admin: Kube


@pytest.fixture(scope="session")
def prepared() -> real_node.Prepared:
    reason = real_node.unavailable()
    if reason is not None:
        pytest.skip(reason)
    return real_node.prepare()


@pytest.fixture(scope="session")
def cluster(prepared: real_node.Prepared) -> Iterator[Cluster]:
    with (controlplane.running(node_ip=real_node.node_ip(), tools=prepared.tools) as plane,
          real_node.running_node(plane, prepared.images) as real):
        yield Cluster(plane, real, prepared.images, Kube(load_kubeconfig(plane.kubeconfig)))
