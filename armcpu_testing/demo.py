"""The demo: the whole product on a laptop, on recorded real CPU data.

A real kube-apiserver, etcd and kube-scheduler; simulated arm64 Nodes whose real ``armcpu-agent``
processes replay recorded KVM views of Graviton3 and Graviton4 hosts (Linux 6.18); the real
``armcpu-operator``; the CpuModels and VirtualMachines in ``examples/``. A Graviton4 node on Linux
6.1 joins after the model is pinned and is reported incompatible with its reasons. The
Graviton3/Graviton4 pool is shown not MigrationSafe on a released QEMU, with its fix; a Graviton4
fleet that differs only in CTR_EL0.DIC is, and the real scheduler places its VM's boot pod and
migration target pod as its guarantee says. Prints what a user would look at, then stops everything
(``--keep`` leaves it running until Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from armcpu import catalog, features
from armcpu.profile import from_dict
from armcpu_k8s.kube import Kube, load_kubeconfig
from armcpu_testing import launcher
from armcpu_testing.controlplane import CPUS, REPO, ControlPlane, free_port, running
from armcpu_testing.fixtures import simulated_host
from armcpu_testing.signals import Stopped, stopping_on_signals, wait_until_stopped
from armcpu_testing.waiting import WaitTimeout, wait_for

NODES = [  # name, recorded CPU, labels, kernel
    ("g3-a", "kvm-guest/graviton3-neoverse-v1-host6.18.json", {"cpu-pool": "graviton", "topology.kubernetes.io/zone": "zone-a"}, "6.18.30"),
    ("g3-b", "kvm-guest/graviton3-neoverse-v1-host6.18.json", {"cpu-pool": "graviton", "topology.kubernetes.io/zone": "zone-b"}, "6.18.30"),
    ("g4-a", "kvm-guest/graviton4-neoverse-v2-host6.18.json", {"cpu-pool": "graviton", "topology.kubernetes.io/zone": "zone-a"}, "6.18.30"),
    ("g4-b", "kvm-guest/graviton4-neoverse-v2-host6.18.json", {"cpu-pool": "graviton", "topology.kubernetes.io/zone": "zone-b"}, "6.18.30"),
]
G4_VIEW = "kvm-guest/graviton4-neoverse-v2-host6.18.json"
FLEET = [  # name, DIC: a Graviton4 fleet whose nodes differ only in CTR_EL0.DIC, a field KVM lets userspace lower
    ("g4-fleet-a", 1), ("g4-fleet-b", 1), ("g4-fleet-c", 0),
]
TIMEOUT = 60.0
LATE_NODE = ("g4-old", "kvm-guest/graviton4-neoverse-v2-host6.1.json", {"cpu-pool": "graviton", "topology.kubernetes.io/zone": "zone-b"}, "6.1.161")


def say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


class Demo:
    def __init__(self, plane: ControlPlane, workdir: Path) -> None:
        self.plane = plane
        self.workdir = workdir
        self.processes: list[subprocess.Popen[bytes]] = []
        self.dressed_at_admission = False
        self.env = {**os.environ, "KUBECONFIG": str(plane.kubeconfig), "PYTHONUNBUFFERED": "1"}
        self.kube = Kube(load_kubeconfig(plane.kubeconfig))

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return self.plane.kubectl(*args, input=input).stdout

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def spawn(self, name: str, args: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "wb")
        self.processes.append(subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO))

    def add_node(self, name: str, cpu_file: str, labels: dict[str, str], kernel: str, dic: int | None = None) -> None:
        launcher.ready_node(self.kube, name, labels)  # a Node as its kubelet registers it, Ready
        cpu = json.loads((CPUS / cpu_file).read_text())
        if dic is not None:
            ctr = catalog.field("CTR_EL0", "DIC").insert(int(cpu["registers"]["CTR_EL0"], 16), dic)
            cpu["registers"]["CTR_EL0"] = f"0x{ctr:016x}"
        # Linux before 6.7 reports no writable ID registers (no KVM_ARM_GET_REG_WRITABLE_MASKS)
        old_kernel = tuple(int(p) for p in kernel.split(".")[:2]) < (6, 7)
        conversation = simulated_host(self.workdir / name, cpu, kernel=kernel, masks=not old_kernel)
        self.spawn(f"agent-{name}", [sys.executable, "-m", "node_agent.main", "--node-name", name, "--machine", "aarch64",
                                     "--host-root", str(self.workdir / name), "--kvm-replay", str(conversation),
                                     "--interval", "3600", "--listen", "", "--log-format", "text"])

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()

    def run(self) -> None:
        say("Simulated arm64 nodes; a real armcpu-agent per node replays its recorded KVM view")
        for node in NODES:
            self.add_node(*node)
        for name, dic in FLEET:
            self.add_node(name, G4_VIEW, {"cpu-pool": "graviton4"}, "6.18.30", dic=dic)
        wait_for(lambda: len(self.get("nodecpuprofiles")["items"]) == len(NODES) + len(FLEET), TIMEOUT, "the agents' NodeCpuProfiles")
        print(self.kubectl("get", "nodecpuprofiles"))

        say("The operator, then the examples: kubectl apply -f examples/cpumodels; kubectl apply -f examples/vms")
        cert, key, ca = self.plane.serving_cert("demo-webhook")
        self.spawn("operator", [sys.executable, "-m", "armcpu_operator", "--no-leader-election", "--listen", f"127.0.0.1:{free_port()}",
                                "--webhook-port", str(free_port()), "--webhook-cert", str(cert), "--webhook-key", str(key),
                                "--webhook-ca", str(ca), "--webhook-config", "demo.armcpu.io", "--log-format", "text",
                                # the simulated nodes replay recorded probes: no kernel here can verify a model
                                "--kernel-verification", "Advisory"])
        def configured() -> bool:
            return all(self.plane.kubectl("get", kind, "demo.armcpu.io", check=False).returncode == 0
                       for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"))

        wait_for(configured, TIMEOUT, "the operator's webhook configurations")
        print(self.kubectl("apply", "-f", str(REPO / "examples/cpumodels")))
        wait_for(lambda: self.get("cpumodel", "graviton").get("status", {}).get("revision"), TIMEOUT, "the graviton model")
        print(self.kubectl("apply", "-f", str(REPO / "examples/vms")))
        admitted = self.get("vm", "web", "-n", "default")["spec"]["template"]["spec"].get("nodeSelector") or {}
        self.dressed_at_admission = "cpumodel.armcpu.io/graviton" in admitted
        wait_for(lambda: self.get("cpumodel", "graviton").get("status", {}).get("vms", {}).get("current") == 1, TIMEOUT,
                 "the VM to carry the model")
        wait_for(lambda: self.get("cpumodel", "graviton4").get("status", {}).get("vms", {}).get("current") == 1, TIMEOUT,
                 "the fleet's VM to carry its model")

        say(f"A Graviton4 node on Linux {LATE_NODE[3]} joins the pool after the model is pinned")
        self.add_node(*LATE_NODE)
        wait_for(lambda: any(n["name"] == LATE_NODE[0] and "NodeCpuProfile" not in n["reasons"][0]
                             for n in self.get("cpumodel", "graviton").get("status", {}).get("incompatibleNodes", [])),
                 TIMEOUT, "the late node to be judged")

        say("kubectl get cpumodels -o wide")
        print(self.kubectl("get", "cpumodels", "-o", "wide"))
        say("kubectl get nodes -l cpu-pool=graviton -L armcpu.io/cpu,armcpu.io/fingerprint,cpumodel.armcpu.io/graviton")
        print(self.kubectl("get", "nodes", "-l", "cpu-pool=graviton", "-L", "armcpu.io/cpu,armcpu.io/fingerprint,cpumodel.armcpu.io/graviton"))
        say("The graviton4 fleet's labels: where a VM may be (cpumodel.armcpu.io/graviton4) and boot (start.cpumodel.armcpu.io/graviton4)")
        for item in self.get("nodes", "-l", "cpu-pool=graviton4")["items"]:
            node_labels = item["metadata"]["labels"]
            print(f"  {item['metadata']['name']:11} cpumodel.armcpu.io/graviton4={node_labels.get('cpumodel.armcpu.io/graviton4', '-')}  "
                  f"start.cpumodel.armcpu.io/graviton4={node_labels.get('start.cpumodel.armcpu.io/graviton4', '-')}")

        status = self.get("cpumodel", "graviton")["status"]
        model_registers = {k: int(v, 16) for k, v in status["model"]["registers"].items()}
        model_feats = set(features.decode(model_registers))
        say(f"Model graviton, revision {status['revision']}: {len(model_feats)} FEATs; what each node has that the model hides")
        for item in [i for i in self.get("nodecpuprofiles")["items"] if i["metadata"]["name"] in {n[0] for n in (*NODES, LATE_NODE)}]:
            node_feats = set(features.decode(from_dict(item["spec"]).registers))
            hidden = sorted(node_feats - model_feats)
            print(f"  {item['metadata']['name']:8} hides {len(hidden):2}: {', '.join(hidden) or '-'}")

        say("Why a node cannot run the model (status.incompatibleNodes)")
        for node in status["incompatibleNodes"]:
            print(f"  {node['name']}:")
            for reason in node["reasons"]:
                print(f"    - {reason}")
        for cond in status["conditions"]:
            print(f"  condition {cond['type']}={cond['status']} ({cond['reason']}): {cond['message']}")

        say("Which migrations are safe on this stack (status.guarantee; a released QEMU: no SYSREG, no impl-cpu)")
        for name in ("graviton", "graviton4"):
            said = self.get("cpumodel", name)["status"]["guarantee"]
            print(f"  {name}: {'safe' if said['safe'] else 'NOT safe'} under {said['enforcement']} ({said['reason']})")
            print(f"    start on:   {', '.join(said['startOn']) or '-'}")
            print(f"    migrate to: {', '.join(said['migrateTo']) or '-'}")
            print(f"    {said['message']}")

        say("The real kube-scheduler places VM default/api's virt-launcher pods (graviton4 fleet)")
        self.plane.start_scheduler()
        selector = self.get("vm", "api", "-n", "default")["spec"]["template"]["spec"].get("nodeSelector") or {}
        boot = launcher.placed(self.kube, launcher.launcher_pod("api", "demo-api-vmi", selector))
        booted = self.get("pod", "virt-launcher-api-boot-demo-api-vmi", "-n", "default")
        added = (booted["metadata"].get("annotations") or {}).get("armcpu.io/placement", "nothing")
        print(f"  boot pod: the webhook added {added}; the scheduler bound it to {boot}")
        target = launcher.placed(self.kube, launcher.launcher_pod("api", "demo-api-vmi", selector, migration_uid="demo-migration-1"))
        print(f"  migration target pod (kubevirt.io/migrationJobUID): left as KubeVirt made it; bound to {target}")

        how = "admitted already dressed by the mutating webhook" if self.dressed_at_admission else "patched by the reconciler after admission"
        say(f"VM default/web, {how}: its template now")
        template = self.get("vm", "web", "-n", "default")["spec"]["template"]
        shown = {"metadata.annotations": template["metadata"].get("annotations"), "spec.nodeSelector": template["spec"].get("nodeSelector"),
                 "spec.domain.cpu": template["spec"]["domain"].get("cpu"), "spec.affinity (the user's, untouched)": template["spec"].get("affinity")}
        for field_name, value in shown.items():
            print(f"  {field_name}: {json.dumps(value)}")
        print(f"\n  With enforcement HookSidecar and a QEMU that has the SYSREG properties (none released), QEMU would start "
              f"this guest with (qemu-sysreg-v9 syntax, {len(status['model']['qemu'])} characters):")
        print(f"  -cpu {status['model']['qemu'][:160]}...")


@contextlib.contextmanager
def demo(keep: bool) -> Iterator[Demo]:
    workdir = Path(tempfile.mkdtemp(prefix="armcpu-demo-"))
    try:
        with running(keep_dir=False) as plane:
            show = Demo(plane, workdir)
            try:
                yield show
            finally:
                show.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m armcpu_testing.demo", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keep", action="store_true", help="leave the cluster running (until Ctrl-C) and print its kubeconfig")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        with stopping_on_signals(), demo(args.keep) as show:
            try:
                show.run()
            except WaitTimeout as exc:
                raise SystemExit(f"armcpu-demo: {exc}") from None
            say(f"Done in {time.monotonic() - start:.0f}s")
            if args.keep:
                wait_until_stopped(f"export KUBECONFIG={show.plane.kubeconfig}\n"
                                   "The cluster, agents and operator run until Ctrl-C or SIGTERM.")
    except Stopped as stopped:  # SIGTERM before the demo was done: everything it started is stopped all the same
        print(f"Stopped ({stopped}) before the end; nothing left running.")
        return 128 + stopped.signum
    print("Stopped; nothing left running.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
