"""A churn soak on the local control plane: ``python -m tests.soak --minutes 60``.

Nodes join and leave, their profiles change kernel and cache geometry, VMs are created, edited by
"users" and deleted, VMIs start and stop, CpuModels are edited, deleted and created again, and the
operator (a real process) is restarted now and then, SIGTERM or SIGKILL. All the while a checker
reads the cluster every few seconds and counts violations of the safety invariant:

- no VM armcpu dressed admits a node that cannot run the revision it names, and no node is labelled
  for a revision it cannot run (:class:`tests.operator_harness.InvariantWatch`, as in the fault tests);
- no node label armcpu does not own differs from what the "users" last wrote;
- every VM's user fields are what the "users" last wrote (what armcpu added taken out by its own
  record, :func:`armcpu_operator.planning.vms.strip`, gives the user's VM byte for byte).

Every few minutes the churn pauses; the time until every model has converged (labels exactly on the
nodes that can run it, every selected VM dressed, no label of a deleted model left) is measured,
then the operator's API requests per minute at rest. Its RSS is sampled throughout. The report is
printed and written as JSON (``--out``); docs/reliability.md quotes the last run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import signal
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, ClassVar

from armcpu.profile import Profile
from armcpu_k8s import labels as keys
from armcpu_k8s.kube import ApiError, Kube, load_kubeconfig
from armcpu_operator.planning import vms
from armcpu_testing.controlplane import ControlPlane, running
from node_agent.publish import publish
from tests.operator_harness import OPERATOR_USER, InvariantWatch, OperatorProcess, converged, make_profile, running_operator

CPUS = ["kvm-guest/graviton3-neoverse-v1-host6.18.json", "kvm-guest/graviton4-neoverse-v2-host6.18.json"]
KERNELS = ["6.18.30", "6.12.40"]
POOLS = ["p0", "p1", "p2"]
NS = "soak"
CPUMODELS = "/apis/armcpu.io/v1alpha1/cpumodels"
VM_PATH = f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachines"
VMI_PATH = f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachineinstances"


def _vm(name: str, pool: str, zone: str) -> dict[str, Any]:
    return {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": name, "labels": {"pool": pool, "soak.example.com/owner": "user"}},
            "spec": {"runStrategy": "Halted", "template": {"metadata": {"annotations": {"team": "soak"}}, "spec": {
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": [zone]}]}]}}},
                "domain": {"cpu": {"model": "host-passthrough"}, "devices": {}, "memory": {"guest": "1Gi"}}}}}}


def _model(pool: str, sve_off: bool) -> dict[str, Any]:
    return {"apiVersion": "armcpu.io/v1alpha1", "kind": "CpuModel", "metadata": {"name": pool},
            "spec": {"nodeSelector": {"matchLabels": {"pool": pool}}, "vmSelector": {"matchLabels": {"pool": pool}},
                     "updatePolicy": "Follow", **({"features": {"FEAT_SVE": "Disabled"}} if sve_off else {})}}


@dataclasses.dataclass
class Report:
    seed: int
    minutes: float
    actions: dict[str, int] = dataclasses.field(default_factory=dict)
    checks: int = 0
    violations: list[str] = dataclasses.field(default_factory=list)
    operator_restarts: int = 0
    operator_crashes: int = 0
    convergence_seconds: list[float] = dataclasses.field(default_factory=list)
    requests_per_minute_churn: list[float] = dataclasses.field(default_factory=list)
    requests_per_minute_rest: list[float] = dataclasses.field(default_factory=list)
    rss_mib: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # (minute, MiB)


class Soak:
    def __init__(self, plane: ControlPlane, seed: int, report: Report) -> None:
        self.plane, self.rng, self.report = plane, random.Random(seed), report
        self.admin = Kube(load_kubeconfig(plane.kubeconfig))
        self.nodes: dict[str, dict[str, str]] = {}  # node -> the labels the "users" gave it
        self.vms: dict[str, dict[str, Any]] = {}  # VM -> the body the "users" last wrote
        self.models: dict[str, bool] = {}  # CpuModel -> SVE disabled
        self.vmis: set[str] = set()
        self.lock = threading.RLock()  # held by each change and each check: the checker never sees a write half-recorded
        self.profiles: dict[tuple[str, str], Profile] = {}
        self.counter = 0

    # ---------------------------------------------------------------- the "users"

    def _profile(self, name: str, cpu: str, kernel: str) -> Profile:
        if (cpu, kernel) not in self.profiles:
            self.profiles[(cpu, kernel)] = make_profile("template", cpu, kernel=kernel)
        return dataclasses.replace(self.profiles[(cpu, kernel)], name=name)

    def add_node(self) -> None:
        self.counter += 1
        name, pool = f"n{self.counter:04d}", self.rng.choice(POOLS)
        user_labels = {"pool": pool, "zone": self.rng.choice("ab"), "soak.example.com/round": "0"}
        self.admin.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": user_labels}})
        with self.lock:
            self.nodes[name] = user_labels
        publish(self.admin, name, self._profile(name, self.rng.choice(CPUS), self.rng.choice(KERNELS)))

    def remove_node(self) -> None:
        if len(self.nodes) <= 6:
            return self.add_node()
        name = self.rng.choice(sorted(self.nodes))
        with self.lock:
            del self.nodes[name]
        for path in (f"/apis/armcpu.io/v1alpha1/nodecpuprofiles/{name}", f"/api/v1/nodes/{name}"):
            self._gone_ok(lambda p=path: self.admin.delete(p))
        return None

    def change_profile(self) -> None:
        name = self.rng.choice(sorted(self.nodes))
        publish(self.admin, name, self._profile(name, self.rng.choice(CPUS), self.rng.choice(KERNELS)))

    def relabel_node(self) -> None:
        name = self.rng.choice(sorted(self.nodes))
        with self.lock:
            new = {**self.nodes[name], "soak.example.com/round": str(self.counter), "pool": self.rng.choice(POOLS)}
            self.nodes[name] = new
        self.admin.merge_patch(f"/api/v1/nodes/{name}", {"metadata": {"labels": new}})

    def create_vm(self) -> None:
        self.counter += 1
        name = f"vm{self.counter:04d}"
        body = _vm(name, self.rng.choice(POOLS), self.rng.choice("ab"))
        with self.lock:
            self.vms[name] = body
        self.admin.create(VM_PATH, body)

    def edit_vm(self) -> None:
        if not self.vms:
            return self.create_vm()
        name = self.rng.choice(sorted(self.vms))
        with self.lock:
            body = json.loads(json.dumps(self.vms[name]))
            body["metadata"]["labels"]["pool"] = self.rng.choice([*POOLS, "none"])
            body["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
                "nodeSelectorTerms"][0]["matchExpressions"][0]["values"] = [self.rng.choice("ab")]
            self.vms[name] = body
        self.admin.merge_patch(f"{VM_PATH}/{name}", {"metadata": {"labels": body["metadata"]["labels"]},
                                                     "spec": {"template": {"spec": {"affinity": body["spec"]["template"]["spec"]["affinity"]}}}})
        return None

    def delete_vm(self) -> None:
        if len(self.vms) <= 10:
            return self.create_vm()
        name = self.rng.choice(sorted(self.vms))
        with self.lock:
            del self.vms[name]
        self._gone_ok(lambda: self.admin.delete(f"{VM_PATH}/{name}"))
        self.stop_vmi(name)
        return None

    def start_vmi(self) -> None:
        """As virt-controller would: a VMI with the template's model annotations."""
        if not self.vms:
            return None
        name = self.rng.choice(sorted(self.vms))
        if name in self.vmis:
            return self.stop_vmi(name)
        try:
            template = self.admin.get(f"{VM_PATH}/{name}")["spec"]["template"]
        except ApiError:
            return None
        annotations = {k: v for k, v in ((template.get("metadata") or {}).get("annotations") or {}).items() if k.startswith("armcpu.io/")}
        self.admin.create(VMI_PATH, {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                                     "metadata": {"name": name, "annotations": annotations},
                                     "spec": {"nodeSelector": template["spec"].get("nodeSelector") or {},
                                              "domain": {"devices": {}, "memory": {"guest": "1Gi"}}}})
        self.vmis.add(name)
        return None

    def stop_vmi(self, name: str | None = None) -> None:
        if name is None:
            if not self.vmis:
                return None
            name = self.rng.choice(sorted(self.vmis))
        if name in self.vmis:
            self.vmis.discard(name)
            self._gone_ok(lambda: self.admin.delete(f"{VMI_PATH}/{name}"))
        return None

    def edit_model(self) -> None:
        pool = self.rng.choice(POOLS)
        if pool not in self.models:
            return self.create_model(pool)
        self.models[pool] = not self.models[pool]
        self.admin.merge_patch(f"{CPUMODELS}/{pool}", {"spec": {"features": {"FEAT_SVE": "Disabled"} if self.models[pool] else None}})
        return None

    def delete_model(self) -> None:
        pool = self.rng.choice(POOLS)
        if pool not in self.models:
            return self.create_model(pool)
        del self.models[pool]
        self._gone_ok(lambda: self.admin.delete(f"{CPUMODELS}/{pool}"))
        return None

    def create_model(self, pool: str | None = None) -> None:
        pool = pool or self.rng.choice(POOLS)
        if pool in self.models:
            return None
        if self.admin.get_or_none(f"{CPUMODELS}/{pool}") is not None:
            return None  # still being deleted
        self.models[pool] = self.rng.random() < 0.5
        self.admin.create(CPUMODELS, _model(pool, self.models[pool]))
        return None

    @staticmethod
    def _gone_ok(call: Any) -> None:
        try:
            call()
        except ApiError as exc:
            if exc.status != 404:
                raise

    ACTIONS: ClassVar[dict[str, float]] = {"add_node": 3, "remove_node": 2, "change_profile": 3, "relabel_node": 2, "create_vm": 4, "edit_vm": 5,
               "delete_vm": 3, "start_vmi": 4, "stop_vmi": 2, "edit_model": 1, "delete_model": 0.3, "create_model": 0.5}

    def churn_once(self) -> None:
        names = list(self.ACTIONS)
        action = self.rng.choices(names, weights=[self.ACTIONS[n] for n in names])[0]
        try:
            with self.lock:
                getattr(self, action)()
        except ApiError as exc:
            if exc.status not in (404, 409, 422):  # a race with deletion or with the webhook: the users try again
                raise
        self.report.actions[action] = self.report.actions.get(action, 0) + 1

    # ---------------------------------------------------------------- the checker

    def violations(self) -> list[str]:
        with self.lock:
            return self._violations()

    def _violations(self) -> list[str]:
        bodies = {(NS, name): body for name, body in self.vms.items()}
        return InvariantWatch(self.admin, dict(self.nodes), bodies).check()

    def converged_now(self) -> bool:
        existing = {m["metadata"]["name"] for m in self.admin.get(CPUMODELS)["items"]}
        if existing != set(self.models):
            return False
        nodes = self.admin.get("/api/v1/nodes")["items"]
        for node in nodes:
            if any((m := keys.model_of_key(k)) is not None and m not in existing for k in node["metadata"].get("labels") or {}):
                return False  # a label of a deleted model
        all_vms = self.admin.get(VM_PATH)["items"]
        for vm in all_vms:
            if vms.uses(vm) is not None and vms.uses(vm) not in existing:
                return False
        for pool in existing:
            members = [n["metadata"]["name"] for n in nodes if (n["metadata"].get("labels") or {}).get("pool") == pool]
            selected = [v["metadata"]["name"] for v in all_vms if (v["metadata"].get("labels") or {}).get("pool") == pool]
            if members and not converged(self.admin, pool, members, selected, NS):
                return False
        return True

    def stop_every_vmi(self) -> None:
        """At a pause the users restart what runs an older revision: every VMI stops."""
        with self.lock:
            for name in sorted(self.vmis):
                self.stop_vmi(name)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _operator_requests(plane: ControlPlane, mark: int) -> int:
    return sum(1 for e in plane.requests_since(mark, OPERATOR_USER) if (e.get("objectRef") or {}).get("resource") != "leases")


def run(minutes: float, seed: int, churn_interval: float, pause_every: float, restart_every: float) -> Report:
    report = Report(seed=seed, minutes=minutes)
    with running() as plane, ExitStack() as stack:
        soak = Soak(plane, seed, report)
        plane.kubectl("create", "namespace", NS)
        for _ in range(12):
            soak.add_node()
        for _ in range(30):
            soak.create_vm()
        operator: OperatorProcess = stack.enter_context(running_operator(plane, identity="soak-0", webhook=True))
        for pool in POOLS:
            soak.create_model(pool)
        start = time.monotonic()
        end = start + minutes * 60
        stop_checking = threading.Event()

        def check() -> None:
            while not stop_checking.is_set():
                try:
                    found = soak.violations()
                except ApiError as exc:  # the API server is fine here; a 404 between list and get is a race of the churn
                    found = [] if exc.status == 404 else [f"check failed: {exc}"]
                report.checks += 1
                for v in found:
                    print(f"VIOLATION {time.monotonic() - start:.0f}s {v}", flush=True)
                report.violations += found
                stop_checking.wait(3.0)

        checker = threading.Thread(target=check, daemon=True)
        checker.start()
        next_pause, next_restart, next_rss = start + pause_every * 60, start + restart_every * 60, start
        window_mark, window_start = plane.audit_mark(), time.monotonic()
        restarts = 0
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_rss:
                report.rss_mib.append((round((now - start) / 60, 1), round(_rss_mib(operator.proc.pid), 1)))
                next_rss = now + 30
            if operator.proc.poll() is not None:
                report.operator_crashes += 1
                print(f"operator exited by itself ({operator.proc.returncode}): {operator.logs()[-2000:]}", flush=True)
                raise SystemExit(1)
            if now >= next_restart:
                restarts += 1
                operator.proc.send_signal(signal.SIGKILL if restarts % 2 else signal.SIGTERM)
                operator.proc.wait(timeout=30)
                operator = stack.enter_context(running_operator(plane, identity=f"soak-{restarts}", webhook=True))
                report.operator_restarts += 1
                next_restart = now + restart_every * 60
            if now >= next_pause:
                minutes_churned = (now - window_start) / 60
                report.requests_per_minute_churn.append(round(_operator_requests(plane, window_mark) / minutes_churned, 1))
                soak.stop_every_vmi()
                paused = time.monotonic()
                deadline = paused + 300
                while not soak.converged_now():
                    if time.monotonic() > deadline:
                        report.violations.append(f"not converged within 300 s of the pause at {(paused - start) / 60:.1f} min")
                        break
                    time.sleep(0.5)
                report.convergence_seconds.append(round(time.monotonic() - paused, 1))
                rest_mark = plane.audit_mark()
                time.sleep(60)
                report.requests_per_minute_rest.append(float(_operator_requests(plane, rest_mark)))
                print(f"{(time.monotonic() - start) / 60:.1f} min: converged in {report.convergence_seconds[-1]} s, "
                      f"{report.requests_per_minute_rest[-1]} requests/min at rest, {report.requests_per_minute_churn[-1]} under churn, "
                      f"RSS {report.rss_mib[-1][1]} MiB, {len(soak.nodes)} nodes, {len(soak.vms)} VMs, {len(soak.vmis)} VMIs, "
                      f"{sum(report.actions.values())} actions, {report.checks} checks, {len(report.violations)} violations", flush=True)
                next_pause = time.monotonic() + pause_every * 60
                window_mark, window_start = plane.audit_mark(), time.monotonic()
                continue
            soak.churn_once()
            time.sleep(soak.rng.uniform(0, 2 * churn_interval))
        stop_checking.set()
        checker.join(timeout=30)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--churn-interval", type=float, default=1.0, help="mean seconds between two changes")
    parser.add_argument("--pause-every", type=float, default=5.0, help="minutes of churn between convergence measurements")
    parser.add_argument("--restart-every", type=float, default=12.0, help="minutes between operator restarts (SIGKILL and SIGTERM in turn)")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    args = parser.parse_args(argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    report = run(args.minutes, args.seed, args.churn_interval, args.pause_every, args.restart_every)
    summary = dataclasses.asdict(report)
    rss = [mib for minute, mib in report.rss_mib if minute >= 10] or [0.0]
    summary["summary"] = {
        "violations": len(report.violations), "checks": report.checks, "actions": sum(report.actions.values()),
        "operator_restarts": report.operator_restarts, "operator_crashes": report.operator_crashes,
        "longest_convergence_seconds": max(report.convergence_seconds, default=None),
        "rss_mib_after_warmup_min_max": [min(rss), max(rss)],
    }
    text = json.dumps(summary, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(json.dumps(summary["summary"]))
    return 0 if not report.violations and not report.operator_crashes else 1


if __name__ == "__main__":
    sys.exit(main())
