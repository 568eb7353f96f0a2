"""Kill the operator (SIGKILL) at seeded random points while it converges: after a restart it reaches
the same state, every VM is dressed exactly once, and the safety invariant holds all along (checked
every half second while it converges, is killed and converges again: :class:`InvariantWatch`) —
every node a patched VM's selector admits can run that VM's model revision, no node is labelled for
a revision it cannot run, and nobody else's labels or VM fields change."""

from __future__ import annotations

import os
import random
import signal
import time
from typing import Any

import pytest

from armcpu_k8s.kube import Kube, load_kubeconfig
from armcpu_testing.controlplane import ControlPlane
from tests.operator_harness import InvariantWatch, add_node, assert_safe_and_converged, running_operator, wait_for

pytestmark = pytest.mark.integration
CPUS = ["kvm-guest/graviton3-neoverse-v1-host6.18.json", "kvm-guest/graviton4-neoverse-v2-host6.18.json"]
NS = "faults"


def _vm(name: str) -> dict[str, Any]:
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name, "labels": {"app": "faults"}},
            "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"cpu": {"model": "host-passthrough"}, "devices": {},
                                                                               "memory": {"guest": "1Gi"}}}}}}


# CI runs 3 seeds (about 2 minutes); the long mode (scripts/faults-long.sh) runs 100.
SEEDS = list(range(1, int(os.environ.get("ARMCPU_FAULT_SEEDS", "3")) + 1))


@pytest.mark.parametrize("seed", SEEDS)
def test_killed_mid_convergence_then_restarted_converges_safely(control_plane: ControlPlane, seed: int) -> None:
    rng = random.Random(seed)
    admin = Kube(load_kubeconfig(control_plane.kubeconfig))
    control_plane.kubectl("create", "namespace", NS, check=False)
    pool = f"faults-{seed}"
    nodes = [f"f{seed}-{i:02d}" for i in range(12)]
    for i, name in enumerate(nodes):
        add_node(admin, name, {"pool": pool}, CPUS[i % 2])
    vm_names = [f"f{seed}-vm-{i:02d}" for i in range(40)]
    bodies = {}
    for name in vm_names:
        body = _vm(name)
        body["metadata"]["labels"]["pool"] = pool
        admin.create(f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachines", body)
        bodies[(NS, name)] = body
    with InvariantWatch(admin, {name: {"pool": pool} for name in nodes}, bodies) as watch:
        _kill_and_restart(control_plane, admin, rng, seed, pool, nodes, vm_names)
    assert watch.checks >= 3 and watch.violations == [], watch.violations[:5]


def _kill_and_restart(control_plane: ControlPlane, admin: Kube, rng: random.Random, seed: int, pool: str, nodes: list[str],
                      vm_names: list[str]) -> None:
    with running_operator(control_plane, identity=f"faults-{seed}", webhook=False) as first:
        admin.create("/apis/armcpu.io/v1alpha1/cpumodels", {
            "apiVersion": "armcpu.io/v1alpha1", "kind": "CpuModel", "metadata": {"name": pool},
            "spec": {"nodeSelector": {"matchLabels": {"pool": pool}}, "vmSelector": {"matchLabels": {"pool": pool}},
                     "features": {"FEAT_SVE": "Disabled"}, "identityFrom": nodes[0]}})
        time.sleep(rng.uniform(0.0, 1.5))  # somewhere between "nothing done yet" and "half the VMs patched"
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(timeout=10)
    with running_operator(control_plane, identity=f"faults-{seed}-again", webhook=False):
        wait_for(lambda: (admin.get(f"/apis/armcpu.io/v1alpha1/cpumodels/{pool}").get("status") or {}).get("vms", {}).get("current")
                 == len(vm_names), 60, "convergence after the restart")
        assert_safe_and_converged(admin, pool, nodes, vm_names, NS)
