"""Faults outside the operator: the API server and etcd restarted mid-reconcile, and another client
editing the same Nodes and VMs at the same time. Each ends with the safety invariant
(tests/operator_harness.py:assert_safe_and_converged)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import ExitStack
from typing import Any

import pytest

from armcpu_k8s.kube import ApiError, Kube, load_kubeconfig
from armcpu_k8s.labels import model_of_key as labels_model
from armcpu_operator import executor
from armcpu_operator.planning import vms
from armcpu_testing.controlplane import ControlPlane, free_port, running
from tests.helpers import REPO
from tests.operator_harness import OPERATOR_USER, InvariantWatch, add_node, assert_safe_and_converged, converged, http_get, running_operator, wait_for

pytestmark = pytest.mark.integration
CPUS = ["kvm-guest/graviton3-neoverse-v1-host6.18.json", "kvm-guest/graviton4-neoverse-v2-host6.18.json"]
CPUMODELS = "/apis/armcpu.io/v1alpha1/cpumodels"


def _vm(name: str, pool: str) -> dict[str, Any]:
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": name, "labels": {"pool": pool}},
            "spec": {"runStrategy": "Halted", "template": {"spec": {
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
                "domain": {"cpu": {"model": "host-passthrough"}, "devices": {}, "memory": {"guest": "1Gi"}}}}}}


def _model(pool: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "armcpu.io/v1alpha1", "kind": "CpuModel", "metadata": {"name": pool},
            "spec": {"nodeSelector": {"matchLabels": {"pool": pool}}, "vmSelector": {"matchLabels": {"pool": pool}}, **spec}}


def _pool(admin: Kube, pool: str, ns: str, prefix: str, nodes: int, vm_count: int) -> tuple[list[str], list[str]]:
    """Nodes of alternating Graviton3/Graviton4 profiles and Halted VMs, all selected by ``pool``."""
    node_names = [f"{prefix}-{i:02d}" for i in range(nodes)]
    for i, name in enumerate(node_names):
        add_node(admin, name, {"pool": pool}, CPUS[i % 2])
    vm_names = [f"{prefix}-vm-{i:02d}" for i in range(vm_count)]
    for name in vm_names:
        admin.create(f"/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines", _vm(name, pool))
    return node_names, vm_names


def _status(admin: Kube, name: str) -> dict[str, Any]:
    status: dict[str, Any] = admin.get(f"{CPUMODELS}/{name}").get("status") or {}
    return status


# CI: one restart; the long mode (scripts/faults-long.sh) restarts them 10 times within one convergence.
RESTARTS = int(os.environ.get("ARMCPU_RESTARTS", "1"))


def test_api_server_and_etcd_restart_mid_reconcile() -> None:
    """Both killed (SIGKILL: a crash, not a drain), ``RESTARTS`` times, while the operator labels nodes and patches VMs:
    the agent recovers without restarting; the operator too, unless the API server stayed away longer than
    its renew deadline, when it must step down (it can no longer know it leads) and is started again.
    Every node and VM ends right, the invariant holds all along, and no VM is patched twice (a write
    whose response was lost is retried with its `test` operations, which refuse it)."""
    pool, ns = "restart", "restart"
    with running() as plane:
        admin = Kube(load_kubeconfig(plane.kubeconfig))
        plane.kubectl("create", "namespace", ns)
        nodes, vm_names = _pool(admin, pool, ns, "r", 8, 30)
        admin.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "r-agent", "labels": {"pool": pool}}})
        port = free_port()
        agent = subprocess.Popen(
            [sys.executable, "-m", "node_agent.main", "--node-name", "r-agent", "--kubeconfig", str(plane.kubeconfig), "--interval", "1",
             "--listen", f"127.0.0.1:{port}", "--host-root", "tests/fixtures/hosts/graviton4",
             "--kvm-replay", "tests/fixtures/kvm/graviton4-host6.18.json"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        nodes.append("r-agent")
        try:
            wait_for(lambda: admin.get_or_none("/apis/armcpu.io/v1alpha1/nodecpuprofiles/r-agent") is not None, 20, "the agent's profile")
            bodies = {(ns, name): _vm(name, pool) for name in vm_names}
            users = {name: {"pool": pool} for name in nodes}
            with ExitStack() as stack:
                operators = [stack.enter_context(running_operator(plane, identity="restart", webhook=False))]
                watch = stack.enter_context(InvariantWatch(admin, users, bodies))
                admin.create(CPUMODELS, _model(pool))
                outage = 0.0
                for _ in range(RESTARTS):  # all within one convergence: the first after 0.4 s, the next as soon as it is back
                    time.sleep(0.4)
                    outage += plane.restart(kill=True, down_seconds=2.0)

                def current() -> bool:
                    """As a Deployment would: an operator that stepped down (it could not renew its Lease for
                    its renew deadline, 10 s, while the API server was away) is started again."""
                    if operators[-1].proc.poll() is not None:
                        assert operators[-1].proc.returncode == 1 and "stopped: lost the leader Lease" in operators[-1].logs(), \
                            operators[-1].logs()[-3000:]
                        operators.append(stack.enter_context(running_operator(plane, identity=f"restart-{len(operators)}", webhook=False)))
                    return bool(_status(admin, pool).get("vms", {}).get("current") == len(vm_names))

                wait_for(current, 180, "convergence after the restarts")
                # a write cut off by the crash is retried a few seconds later: labels and VMs must get there
                wait_for(lambda: converged(admin, pool, nodes, vm_names, ns), 30, "every label and VM patch after the restart")
                assert agent.poll() is None, "the agent rides out every restart"
                assert outage >= 10.0 or len(operators) == 1, f"the operator stepped down after only {outage:.1f}s without the API server"
                assert_safe_and_converged(admin, pool, nodes, vm_names, ns)
                assert watch.checks >= 1 and watch.violations == [], watch.violations[:5]
                probes_before = _agent_probes(port)
                wait_for(lambda: _agent_probes(port) > probes_before, 10, "the agent probing again")
                assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200
            patched = Counter(e["objectRef"]["name"] for e in plane.writes_since(0, OPERATOR_USER)
                              if e["objectRef"].get("resource") == "virtualmachines" and e["responseStatus"]["code"] < 300)
            assert set(patched) <= set(vm_names) and set(patched.values()) <= {1}, f"patched more than once: {patched.most_common(3)}"
            # Only writes in flight at the instant of the SIGKILL can be missing: they committed, but the
            # server died before logging them, and their retry (or the watch) found them already applied.
            # The operator has at most WRITE_CONCURRENCY VM writes in flight.
            missing = set(vm_names) - set(patched)
            assert len(missing) <= RESTARTS * executor.WRITE_CONCURRENCY, f"{len(missing)} VM writes missing from the audit log: {sorted(missing)}"
            print(f"API server and etcd restarted {RESTARTS} times, unavailable for {outage:.1f}s in all; the operator stepped down "
                  f"{len(operators) - 1} times; {watch.checks} invariant checks")
        finally:
            agent.kill()
            agent.wait(timeout=10)


def _agent_probes(port: int) -> float:
    for line in http_get(f"http://127.0.0.1:{port}/metrics")[1].splitlines():
        if line.startswith("armcpu_agent_probe_duration_seconds_count"):
            return float(line.split()[-1])
    return 0.0


def test_concurrent_writers_on_the_same_nodes_and_vms_both_keep_their_changes(control_plane: ControlPlane) -> None:
    """Another client relabels the pool's nodes and rewrites the VMs' affinity and labels while the
    operator converges and then moves to a new revision: both sides' changes survive."""
    pool, ns = "rival", "rival"
    admin = Kube(load_kubeconfig(control_plane.kubeconfig))
    control_plane.kubectl("create", "namespace", ns, check=False)
    nodes, vm_names = _pool(admin, pool, ns, "rv", 4, 10)
    rival = Kube(load_kubeconfig(control_plane.kubeconfig_for("rival")))
    stop = threading.Event()
    last: dict[str, int] = {}
    errors: list[str] = []

    def edit() -> None:
        round_ = 0
        while not stop.is_set():
            round_ += 1
            for name in nodes:
                rival.merge_patch(f"/api/v1/nodes/{name}", {"metadata": {"labels": {"rival.example.com/round": str(round_)}}})
            for name in vm_names:
                terms = [{"matchExpressions": [{"key": "zone", "operator": "In", "values": [f"z{round_}"]}]}]
                try:
                    rival.merge_patch(f"/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}", {
                        "metadata": {"labels": {"rival.example.com/round": str(round_)}},
                        "spec": {"template": {"spec": {"affinity": {"nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}}}})
                except ApiError as exc:  # a merge patch never conflicts; anything else is a finding
                    errors.append(str(exc))
            last["round"] = round_

    with running_operator(control_plane, identity="rival", webhook=True):
        writer = threading.Thread(target=edit)
        writer.start()
        try:
            admin.create(CPUMODELS, _model(pool))
            wait_for(lambda: _status(admin, pool).get("vms", {}).get("current") == len(vm_names), 60, "first revision")
            admin.merge_patch(f"{CPUMODELS}/{pool}", {"spec": {"features": {"FEAT_SHA3": "Disabled"}}})
            wait_for(lambda: _status(admin, pool).get("revision") == 2 and _status(admin, pool)["vms"]["current"] == len(vm_names), 60,
                     "second revision on every VM while the rival writes")
        finally:
            stop.set()
            writer.join(timeout=60)
        assert errors == [] and last["round"] >= 3
        round_ = str(last["round"])
        wait_for(lambda: _status(admin, pool)["vms"]["current"] == len(vm_names), 30, "settled")
        assert_safe_and_converged(admin, pool, nodes, vm_names, ns)
        for name in nodes:
            assert admin.get(f"/api/v1/nodes/{name}")["metadata"]["labels"]["rival.example.com/round"] == round_
        for name in vm_names:
            vm = admin.get(f"/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}")
            assert vm["metadata"]["labels"]["rival.example.com/round"] == round_
            terms = vm["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == [f"z{round_}"]
        # deleting the model takes out exactly armcpu's part: what is left is the rival's last state
        admin.delete(f"{CPUMODELS}/{pool}")
        wait_for(lambda: admin.get_or_none(f"{CPUMODELS}/{pool}") is None, 30, "model deleted")
        for name in vm_names:
            vm = admin.get(f"/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}")
            want = _vm(name, pool)["spec"]
            want["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] = [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": [f"z{round_}"]}]}]
            assert vm["spec"] == want and vms.RECORD not in (vm["metadata"].get("annotations") or {})


def test_a_finalizer_removed_by_hand_leaves_nothing_behind_after_a_restart(control_plane: ControlPlane) -> None:
    """Removing the finalizer of a CpuModel stuck in deletion (a common remedy) skips armcpu's cleanup:
    its node labels and VM dressing stayed for good, even after the operator restarted (issue 19).
    The operator now removes what a CpuModel that no longer exists left, at start and after each deletion."""
    pool, ns = "forced", "forced"
    admin = Kube(load_kubeconfig(control_plane.kubeconfig))
    control_plane.kubectl("create", "namespace", ns, check=False)
    nodes, vm_names = _pool(admin, pool, ns, "fz", 4, 6)
    before = {name: admin.get(f"/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}") for name in vm_names}

    def left_behind() -> list[str]:
        found = [f"node {n['metadata']['name']}" for n in admin.get("/api/v1/nodes")["items"]
                 if any(labels_model(k) == pool for k in n["metadata"].get("labels") or {})]
        for name, original in before.items():
            vm = admin.get(f"/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}")
            if vm["spec"] != original["spec"] or vm["metadata"].get("annotations") != original["metadata"].get("annotations"):
                found.append(f"vm {name}")
        return found

    with running_operator(control_plane, identity="forced", webhook=False):
        admin.create(CPUMODELS, _model(pool))
        wait_for(lambda: converged(admin, pool, nodes, vm_names, ns), 60, "the pool labelled and every VM dressed")
    admin.merge_patch(f"{CPUMODELS}/{pool}", {"metadata": {"finalizers": None}})
    admin.delete(f"{CPUMODELS}/{pool}")
    wait_for(lambda: admin.get_or_none(f"{CPUMODELS}/{pool}") is None, 10, "deleted without armcpu's cleanup")
    assert len(left_behind()) == len(nodes) + len(vm_names), "what the deletion left, before the operator is back"
    with running_operator(control_plane, identity="forced-again", webhook=False):
        wait_for(lambda: left_behind() == [], 60, "labels and dressing of the deleted CpuModel removed")
