"""Convergence benchmark: N simulated arm64 nodes with NodeCpuProfiles, M VirtualMachines, one CpuModel.

Measures, on the local control plane (real kube-apiserver + etcd):
- armcpu: time from creating the CpuModel to every node labelled and every VM patched (the status
  says so), with the real operator process;
- floor: the same label and VM patches sent straight to the API server by a minimal concurrent
  client (8 threads), on the same objects after armcpu restored them;
- re-convergence after one node joins;
- API economy: the operator's writes and reads during convergence and over a quiet period (from the
  API server's audit log), and its RSS and CPU time.

    .venv/bin/python -m benchmarks.convergence --nodes 100 --vms 1000
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from armcpu.profile import to_dict
from armcpu_k8s.kube import Kube, load_kubeconfig
from armcpu_operator import vms
from armcpu_testing.controlplane import REPO, ControlPlane, free_port, running
from armcpu_testing.fixtures import host_618_profile

CPUS = ["kvm-guest/graviton3-neoverse-v1-host6.18.json", "kvm-guest/graviton4-neoverse-v2-host6.18.json"]
NS = "bench"
USER = "armcpu-operator"


def parallel(fn: Any, items: list[Any], threads: int = 8) -> None:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, items))


def add_nodes(kube: Kube, names: list[str]) -> None:
    profiles = [host_618_profile(c) for c in CPUS]

    def one(name: str) -> None:
        node = kube.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"pool": "bench"}}})
        prof = profiles[hash(name) % 2]
        kube.create("/apis/armcpu.io/v1alpha1/nodecpuprofiles", {
            "apiVersion": "armcpu.io/v1alpha1", "kind": "NodeCpuProfile",
            "metadata": {"name": name, "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}]},
            "spec": to_dict(replace(prof, name=name))})

    parallel(one, names)


def add_vms(kube: Kube, count: int) -> None:
    def one(i: int) -> None:
        kube.create(f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachines", {
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": {"name": f"vm-{i:05d}", "labels": {"app": "bench"}},
            "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"cpu": {"model": "host-passthrough"}, "devices": {},
                                                                               "memory": {"guest": "1Gi"}}}}}})

    parallel(one, list(range(count)))


def status(kube: Kube) -> dict[str, Any]:
    found = kube.get_or_none("/apis/armcpu.io/v1alpha1/cpumodels/bench")
    return (found or {}).get("status") or {}


def wait(predicate: Any, timeout: float) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise SystemExit("benchmark: timed out")
        time.sleep(0.1)
    return time.monotonic() - start


def proc_stats(pid: int) -> tuple[float, float]:
    """(RSS MiB, CPU seconds) of a process."""
    rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS:"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return rss / 1024, (int(fields[11]) + int(fields[12])) / ticks


def request_counts(plane: ControlPlane, mark: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    for event in plane.requests_since(mark, USER):
        resource = (event.get("objectRef") or {}).get("resource", "-")
        if resource != "leases":
            counts[f"{event['verb']} {resource}"] += 1
    return counts


def run(nodes: int, vm_count: int) -> dict[str, Any]:
    with running() as plane:
        admin = Kube(load_kubeconfig(plane.kubeconfig))
        plane.kubectl("create", "namespace", NS)
        t = time.monotonic()
        add_nodes(admin, [f"n-{i:05d}" for i in range(nodes)])
        add_vms(admin, vm_count)
        setup = time.monotonic() - t

        kubeconfig = plane.kubeconfig_for(USER)
        port = free_port()
        log = open(plane.workdir / "operator.log", "wb")
        op = subprocess.Popen([sys.executable, "-m", "armcpu_operator", "--kubeconfig", str(kubeconfig), "--no-leader-election",
                               "--listen", f"127.0.0.1:{port}"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            import urllib.request

            def ready() -> bool:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                        return resp.status == 200
                except OSError:
                    return False

            wait(ready, 120)
            time.sleep(2.0)  # indexes populated (kopf fills them before any resource handler runs)
            rss_idle, _ = proc_stats(op.pid)
            profiler = None
            if os.environ.get("ARMCPU_BENCH_PROFILE"):  # a py-spy profile of the operator while it converges
                profiler = subprocess.Popen(["py-spy", "record", "--pid", str(op.pid), "-r", "50", "-f", "raw", "--gil", "--duration", "120",
                                             "-o", os.environ["ARMCPU_BENCH_PROFILE"]])
                time.sleep(1.0)
            mark = plane.audit_mark()
            t = time.monotonic()
            admin.create("/apis/armcpu.io/v1alpha1/cpumodels", {
                "apiVersion": "armcpu.io/v1alpha1", "kind": "CpuModel", "metadata": {"name": "bench"},
                "spec": {"nodeSelector": {"matchLabels": {"pool": "bench"}}, "vmSelector": {"matchLabels": {"app": "bench"}}}})
            converge = wait(lambda: (s := status(admin)).get("nodes", {}).get("compatible") == nodes
                            and s.get("vms", {}).get("current") == vm_count, 1800)
            converge_requests = request_counts(plane, mark)
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(timeout=30)
            rss_converged, cpu_converged = proc_stats(op.pid)

            mark = plane.audit_mark()
            add_nodes(admin, ["n-joiner"])
            rejoin = wait(lambda: status(admin).get("nodes", {}).get("compatible") == nodes + 1, 600)

            time.sleep(2.0)
            mark = plane.audit_mark()
            quiet_seconds = 30.0
            time.sleep(quiet_seconds)
            steady = request_counts(plane, mark)
            model = status(admin)

            # restore every VM and label (delete the model), then the floor: the same patches, sent directly
            admin.delete("/apis/armcpu.io/v1alpha1/cpumodels/bench")
            wait(lambda: admin.get_or_none("/apis/armcpu.io/v1alpha1/cpumodels/bench") is None, 1800)
        finally:
            op.send_signal(signal.SIGTERM)
            op.wait(timeout=30)

        desired = vms.Desired("bench", int(model["revision"]), str(model["fingerprint"]), tuple(model["model"]["libvirtDisabled"]))
        floor_kube = Kube(load_kubeconfig(plane.kubeconfig))
        vm_items = admin.get(f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachines")["items"]
        node_names = [n["metadata"]["name"] for n in admin.get("/api/v1/nodes")["items"]]
        t = time.monotonic()
        parallel(lambda n: floor_kube.merge_patch(f"/api/v1/nodes/{n}", {"metadata": {"labels": {"cpumodel.armcpu.io/bench": "1"}}}),
                 node_names)
        parallel(lambda vm: floor_kube.json_patch(f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachines/{vm['metadata']['name']}",
                                                  vms.patch(vm, desired)), vm_items)
        floor = time.monotonic() - t

    return {
        "nodes": nodes, "vms": vm_count, "setup_s": round(setup, 1), "armcpu_converge_s": round(converge, 2), "floor_s": round(floor, 2),
        "ratio": round(converge / floor, 2), "rejoin_s": round(rejoin, 2),
        "operator_requests_during_convergence": dict(converge_requests), f"operator_requests_in_{int(quiet_seconds)}s_quiet": dict(steady),
        "operator_rss_mib_idle": round(rss_idle, 1), "operator_rss_mib_converged": round(rss_converged, 1),
        "operator_cpu_s_to_converge": round(cpu_converged, 1),
    }


def agent_footprint() -> dict[str, Any]:
    """One `armcpu-agent --once` on the recorded Graviton4 host: wall time and the process's own max RSS."""
    wrapper = ("import resource, sys\nfrom node_agent.main import main\nrc = main(sys.argv[1:])\n"
               "sys.stderr.write(f'maxrss_kib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\\n')\nsys.exit(rc)")
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-c", wrapper, "--once", "--node-name", "g4", "--machine", "aarch64",
                          "--host-root", "tests/fixtures/hosts/graviton4", "--kvm-replay", "tests/fixtures/kvm/graviton4-host6.18.json"],
                         cwd=REPO, check=True, capture_output=True, text=True)
    wall = time.monotonic() - start
    rss_kib = int(run.stderr.rsplit("maxrss_kib=", 1)[1].split()[0])
    return {"agent_once_wall_s": round(wall, 2), "agent_once_max_rss_mib": round(rss_kib / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--vms", type=int, default=1000)
    args = parser.parse_args(argv)
    agent = agent_footprint()  # first, while this process is small: a child's max RSS counts what it inherited before exec
    result = {**run(args.nodes, args.vms), **agent}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
