"""One real node for the whole tier: a control plane that serves kubelets and pods, and beside it
containerd, the kubelet, kube-proxy and kube-controller-manager (armcpu_testing.node). Skipped with
the reason where the machine cannot run one (not root, no cgroups, no IPv4 address)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from armcpu_k8s.kube import Kube, load_kubeconfig
from armcpu_testing import controlplane, node


@dataclass(frozen=True)
class Cluster:
    plane: controlplane.ControlPlane
    node: node.RealNode
    images: node.Images
    admin: Kube


@pytest.fixture(scope="session")
def prepared() -> node.Prepared:
    reason = node.unavailable()
    if reason is not None:
        pytest.skip(reason)
    return node.prepare()


@pytest.fixture(scope="session")
def cluster(prepared: node.Prepared) -> Iterator[Cluster]:
    with (controlplane.running(node_ip=node.node_ip(), tools=prepared.tools) as plane,
          node.running_node(plane, prepared.images) as real):
        yield Cluster(plane, real, prepared.images, Kube(load_kubeconfig(plane.kubeconfig)))
