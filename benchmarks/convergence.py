"""Convergence benchmark: N simulated arm64 nodes with NodeCpuProfiles, M VirtualMachines, K CpuModels.

Measures, on the local control plane (real kube-apiserver + etcd):
- armcpu: time from creating the CpuModel to every node labelled and every VM patched (the status
  says so), with the real operator process;
- floor: the same label and VM patches sent straight to the API server by a minimal concurrent
  client (8 threads), on the same objects after armcpu restored them;
- re-convergence after one node joins and after one leaves;
- API economy: the operator's writes and reads during convergence and over a quiet period (from the
  API server's audit log, per user), the API server's own ``apiserver_request_total`` over the quiet
  period (every client; only the operator talks then), and the operator's RSS and CPU time.

The K CpuModels split the cluster into K pools of nodes and VMs (``pool=p<i mod K>``).

    .venv/bin/python -m benchmarks.convergence --nodes 100 --vms 1000 [--models 20] [--quiet 30]
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
from armcpu_operator.planning import vms
from armcpu_testing.controlplane import REPO, ControlPlane, free_port, running
from armcpu_testing.fixtures import host_618_profile

CPUS = ["kvm-guest/graviton3-neoverse-v1-host6.18.json", "kvm-guest/graviton4-neoverse-v2-host6.18.json"]
NS = "bench"
USER = "armcpu-operator"


def parallel(fn: Any, items: list[Any], threads: int = 8) -> None:
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, items))


def pool_of(i: int, models: int) -> str:
    return f"p{i % models}"


def add_nodes(kube: Kube, names: list[str], models: int) -> None:
    profiles = [host_618_profile(c) for c in CPUS]
    pools = {name: pool_of(i, models) for i, name in enumerate(names)}

    def one(name: str) -> None:
        node = kube.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"pool": pools[name]}}})
        prof = profiles[hash(name) % 2]
        kube.create("/apis/armcpu.io/v1alpha1/nodecpuprofiles", {
            "apiVersion": "armcpu.io/v1alpha1", "kind": "NodeCpuProfile",
            "metadata": {"name": name, "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}]},
            "spec": to_dict(replace(prof, name=name))})

    parallel(one, names)


def add_vms(kube: Kube, count: int, models: int) -> None:
    def one(i: int) -> None:
        kube.create(f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachines", {
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": f"vm-{i:05d}", "labels": {"pool": pool_of(i, models)}},
            "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"cpu": {"model": "host-passthrough"}, "devices": {},
                                                                               "memory": {"guest": "1Gi"}}}}}})

    parallel(one, list(range(count)))


def statuses(kube: Kube) -> dict[str, dict[str, Any]]:
    found = kube.get("/apis/armcpu.io/v1alpha1/cpumodels")["items"]
    return {item["metadata"]["name"]: item.get("status") or {} for item in found}


def converged(kube: Kube, nodes: int, vm_count: int) -> bool:
    """Every node labelled compatible and every VM on its model's current revision, over all models."""
    found = statuses(kube).values()
    compatible = sum(int((s.get("nodes") or {}).get("compatible", 0)) for s in found)
    current = sum(int((s.get("vms") or {}).get("current", 0)) for s in found)
    return compatible == nodes and current == vm_count


def apiserver_requests(kube: Kube) -> Counter[str]:
    """``apiserver_request_total`` by verb and resource, from the API server's own /metrics."""
    counts: Counter[str] = Counter()
    for line in _metrics_text(kube).splitlines():
        if line.startswith("apiserver_request_total{"):
            labels = dict(part.split("=", 1) for part in line[line.index("{") + 1 : line.rindex("}")].split(","))
            key = f"{labels['verb'].strip(chr(34)).lower()} {labels.get('resource', '').strip(chr(34))}"
            counts[key] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def _metrics_text(kube: Kube) -> str:
    import urllib.request

    req = urllib.request.Request(kube.credentials.server + "/metrics")
    with urllib.request.urlopen(req, context=kube.credentials.ssl_context, timeout=30) as resp:
        body: bytes = resp.read()
    return body.decode()


def wait(predicate: Any, timeout: float) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise SystemExit("benchmark: timed out")
        time.sleep(0.1)
    return time.monotonic() - start


def peak_rss(pid: int) -> float:
    """The process's peak RSS so far (VmHWM), MiB."""
    return next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM:")) / 1024


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


def running_count(kube: Kube) -> int:
    return sum(sum(int(n) for n in ((s.get("vms") or {}).get("running") or {}).values()) for s in statuses(kube).values())


def start_and_churn_vmis(admin: Kube, plane: ControlPlane, pid: int, count: int, updates: int) -> dict[str, Any]:
    """Start ``count`` of the patched VMs (their VMIs, as virt-controller creates them: the template's
    annotations), time until the CpuModels count them running, then update every VMI's status
    ``updates`` times, as KubeVirt does while VMs run, and measure what that costs the operator.
    KubeVirt's VMI CRD has no status subresource: virt-handler writes the whole object."""
    vm_items = admin.get(f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachines")["items"][:count]
    mark = plane.audit_mark()
    _, cpu_before = proc_stats(pid)
    t = time.monotonic()
    parallel(lambda vm: admin.create(f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachineinstances", {
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": vm["metadata"]["name"], "annotations": vm["spec"]["template"]["metadata"]["annotations"]},
        "spec": {"domain": {"devices": {}, "memory": {"guest": "1Gi"}}}}), vm_items)
    wait(lambda: running_count(admin) == count, 600)
    started = time.monotonic() - t
    _, cpu_started = proc_stats(pid)
    start_requests = request_counts(plane, mark)
    names = [vm["metadata"]["name"] for vm in vm_items]
    mark = plane.audit_mark()
    t = time.monotonic()
    for round_ in range(updates):
        phase = "Running" if round_ % 2 else "Scheduled"
        parallel(lambda name, phase=phase: admin.merge_patch(f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachineinstances/{name}",
                                                             {"status": {"phase": phase}}), names)
    churn = time.monotonic() - t
    time.sleep(2.0)  # the last events reach the operator
    _, cpu_churned = proc_stats(pid)
    return {"vmis_started": count, "vmis_counted_running_s": round(started, 2), "operator_cpu_s_to_count_vmis": round(cpu_started - cpu_before, 1),
            "operator_requests_starting_vmis": dict(start_requests),
            "vmi_status_updates": count * updates, "vmi_status_updates_s": round(churn, 1),
            "operator_cpu_s_during_vmi_updates": round(cpu_churned - cpu_started, 1),
            "operator_requests_during_vmi_updates": dict(request_counts(plane, mark))}


def run(nodes: int, vm_count: int, models: int = 1, quiet_seconds: float = 30.0, running_vms: int = 0, vmi_updates: int = 3) -> dict[str, Any]:
    with running() as plane:
        admin = Kube(load_kubeconfig(plane.kubeconfig))
        plane.kubectl("create", "namespace", NS)
        t = time.monotonic()
        add_nodes(admin, [f"n-{i:05d}" for i in range(nodes)], models)
        add_vms(admin, vm_count, models)
        setup = time.monotonic() - t

        kubeconfig = plane.kubeconfig_for(USER)
        port = free_port()
        log = open(plane.workdir / "operator.log", "wb")
        op = subprocess.Popen([sys.executable, "-m", "armcpu_operator", "--kubeconfig", str(kubeconfig), "--no-leader-election",
                               "--listen", f"127.0.0.1:{port}", "--kernel-verification", "Advisory"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            import urllib.request

            def ready() -> bool:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                        return bool(resp.status == 200)
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
            for j in range(models):
                pool = pool_of(j, models)
                admin.create("/apis/armcpu.io/v1alpha1/cpumodels", {
                    "apiVersion": "armcpu.io/v1alpha1", "kind": "CpuModel", "metadata": {"name": f"bench-{pool}"},
                    "spec": {"nodeSelector": {"matchLabels": {"pool": pool}}, "vmSelector": {"matchLabels": {"pool": pool}}}})
            converge = wait(lambda: converged(admin, nodes, vm_count), 1800)
            converge_requests = request_counts(plane, mark)
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(timeout=30)
            rss_converged, cpu_converged = proc_stats(op.pid)
            rss_peak = peak_rss(op.pid)

            add_nodes(admin, ["n-joiner"], 1)  # pool p0
            rejoin = wait(lambda: converged(admin, nodes + 1, vm_count), 600)
            admin.delete("/api/v1/nodes/n-joiner")
            leave = wait(lambda: converged(admin, nodes, vm_count), 600)

            time.sleep(2.0)
            mark = plane.audit_mark()
            before = apiserver_requests(admin)
            time.sleep(quiet_seconds)
            after = apiserver_requests(admin)
            steady = request_counts(plane, mark)
            all_clients = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) and not k.endswith(" leases")}
            found = statuses(admin)
            vmi_phase = start_and_churn_vmis(admin, plane, op.pid, running_vms, vmi_updates) if running_vms else {}

            # restore every VM and label (delete the models), then the floor: the same patches, sent directly
            for name in found:
                admin.delete(f"/apis/armcpu.io/v1alpha1/cpumodels/{name}")
            wait(lambda: not statuses(admin), 1800)
        finally:
            op.send_signal(signal.SIGTERM)
            op.wait(timeout=30)

        desired = {name.removeprefix("bench-"): vms.Desired(name, int(s["revision"]), str(s["fingerprint"]),
                                                            tuple(s["model"]["libvirtDisabled"])) for name, s in found.items()}
        floor_kube = Kube(load_kubeconfig(plane.kubeconfig))
        vm_items = admin.get(f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachines")["items"]
        node_items = admin.get("/api/v1/nodes")["items"]
        t = time.monotonic()
        parallel(lambda n: floor_kube.merge_patch(f"/api/v1/nodes/{n['metadata']['name']}", {"metadata": {"labels": {
            f"cpumodel.armcpu.io/bench-{n['metadata']['labels']['pool']}": "1"}}}), node_items)
        parallel(lambda vm: floor_kube.json_patch(f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachines/{vm['metadata']['name']}",
                                                  vms.patch(vm, desired[vm["metadata"]["labels"]["pool"]])), vm_items)
        floor = time.monotonic() - t

    return {
        "nodes": nodes, "vms": vm_count, "models": models, "setup_s": round(setup, 1), "armcpu_converge_s": round(converge, 2),
        "floor_s": round(floor, 2), "ratio": round(converge / floor, 2), "node_joins_s": round(rejoin, 2), "node_leaves_s": round(leave, 2),
        "operator_requests_during_convergence": dict(converge_requests),
        f"operator_requests_in_{int(quiet_seconds)}s_quiet": dict(steady),
        f"apiserver_request_total_in_{int(quiet_seconds)}s_quiet": all_clients,
        "operator_rss_mib_idle": round(rss_idle, 1), "operator_rss_mib_converged": round(rss_converged, 1),
        "operator_rss_mib_peak": round(rss_peak, 1),
        "operator_cpu_s_to_converge": round(cpu_converged, 1), **vmi_phase,
    }


def agent_footprint() -> dict[str, Any]:
    """One `armcpu-agent --once` on the recorded Graviton4 host: wall time, CPU time and the process's own max RSS."""
    wrapper = ("import resource, sys\nfrom node_agent.main import main\nrc = main(sys.argv[1:])\n"
               "use = resource.getrusage(resource.RUSAGE_SELF)\n"
               "sys.stderr.write(f'maxrss_kib={use.ru_maxrss} cpu_s={use.ru_utime + use.ru_stime}\\n')\nsys.exit(rc)")
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-c", wrapper, "--once", "--node-name", "g4", "--machine", "aarch64",
                          "--host-root", "tests/fixtures/hosts/graviton4", "--kvm-replay", "tests/fixtures/kvm/graviton4-host6.18.json"],
                         cwd=REPO, check=True, capture_output=True, text=True)
    wall = time.monotonic() - start
    rss_kib = int(run.stderr.rsplit("maxrss_kib=", 1)[1].split()[0])
    cpu = float(run.stderr.rsplit("cpu_s=", 1)[1].split()[0])
    return {"agent_once_wall_s": round(wall, 2), "agent_once_cpu_s": round(cpu, 2), "agent_once_max_rss_mib": round(rss_kib / 1024, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--models", type=int, default=1, help="CpuModels, each over its own pool of nodes and VMs")
    parser.add_argument("--quiet", type=float, default=30.0, help="seconds of steady state to count requests over")
    parser.add_argument("--running", type=int, default=0, help="then start this many of the VMs (create their VMIs) and update their status")
    parser.add_argument("--vmi-updates", type=int, default=3, help="status updates per running VMI")
    args = parser.parse_args(argv)
    agent = agent_footprint()  # first, while this process is small: a child's max RSS counts what it inherited before exec
    result = {**run(args.nodes, args.vms, args.models, args.quiet, args.running, args.vmi_updates), **agent}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
