"""Run ``armcpu-operator`` as a real process against the local control plane, and seed Nodes and
NodeCpuProfiles from ../shared/cpus through the agent's own code path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from armcpu import kvm
from armcpu import model as algebra
from armcpu.profile import Profile, from_dict
from armcpu_k8s import labels as keys
from armcpu_k8s.kube import ApiError, Kube
from armcpu_operator.planning import plan, vms
from armcpu_testing.controlplane import ControlPlane, free_port
from armcpu_testing.waiting import wait_for
from node_agent.collect import Sources, collect
from node_agent.probes import kvm_replay
from node_agent.publish import publish
from tests import agent_fixtures as fx
from tests.helpers import CPUS, REPO

OPERATOR_USER = "armcpu-operator"
NAMESPACE = "armcpu-system"


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


@dataclass
class OperatorProcess:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    webhook_port: int | None = None

    def metric(self, name: str) -> float:
        for line in http_get(self.url + "/metrics")[1].splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{}"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def running_operator(plane: ControlPlane, identity: str = "op-1", webhook: bool = True, wait_ready: bool = True,
                     extra: tuple[str, ...] = (), kubeconfig: Path | None = None, namespace: str = NAMESPACE,
                     kernel_verification: str = "Advisory", webhook_tls: tuple[Path, Path, Path] | None = None) -> Iterator[OperatorProcess]:
    """The operator as a process; by default as user armcpu-operator (system:masters), or with ``kubeconfig``.

    ``kernel_verification`` defaults to Advisory here: the profiles these tests seed come from register
    dumps, not from a kernel, so no verdict can arrive; tests of the verdicts pass Required."""
    plane.kubectl("create", "namespace", namespace, check=False)
    kubeconfig = kubeconfig or plane.kubeconfig_for(OPERATOR_USER)
    port = free_port()
    args = [sys.executable, "-m", "armcpu_operator", "--kubeconfig", str(kubeconfig), "--namespace", namespace,
            "--identity", identity, "--listen", f"127.0.0.1:{port}", "--kernel-verification", kernel_verification, *extra]
    webhook_port = free_port() if webhook else None
    if webhook:
        cert, key, ca = webhook_tls or plane.serving_cert(f"webhook-{identity}")
        args += ["--webhook-port", str(webhook_port), "--webhook-host", "127.0.0.1", "--webhook-cert", str(cert),
                 "--webhook-key", str(key), "--webhook-ca", str(ca), "--webhook-config", "armcpu.io"]
    log = Path(tempfile.mkstemp(prefix=f"operator-{identity}-", suffix=".log")[1])
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    op = OperatorProcess(proc, f"http://127.0.0.1:{port}", log, webhook_port)
    try:
        if wait_ready:
            wait_for(lambda: proc.poll() is not None or http_get(op.url + "/readyz")[0] == 200, 60, "operator ready")
            assert proc.poll() is None, f"operator exited: {op.logs()}"
            if webhook:
                wait_for(lambda: plane.kubectl("get", "validatingwebhookconfiguration", "armcpu.io", check=False).returncode == 0,
                         30, "webhook configuration")
        yield op
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def make_profile(node: str, cpu_file: str, aarch32_el0: bool = True, overrides: dict[str, int] | None = None,
                 kernel: str = "6.18.30") -> Profile:
    """The profile the agent publishes for a host with ``cpu_file``'s registers (``overrides`` replaced)
    running Linux ``kernel``."""
    cpu = json.loads((CPUS / cpu_file).read_text())
    for register, value in (overrides or {}).items():
        cpu["registers"][register] = f"0x{value:016x}"
    root = Path(tempfile.mkdtemp(prefix="host-"))
    fx.write_host_tree(root, cpu, ncpus=2, kernel=kernel)
    replay = kvm_replay.Replay(fx.conversation(fx.registers_of(cpu), kvm.assumed_writable_masks(aarch32_el0)))
    return collect(node, Sources(root=root, kvm=replay))


def add_node(kube: Kube, name: str, labels: dict[str, str], cpu_file: str | None, overrides: dict[str, int] | None = None) -> Profile | None:
    """A Node (as a kubelet would register it) and, if ``cpu_file``, the agent's publication for it."""
    try:
        kube.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})
    except ApiError as exc:
        if exc.status != 409:
            raise
    if cpu_file is None:
        return None
    profile = make_profile(name, cpu_file, overrides=overrides)
    publish(kube, name, profile)
    return profile


def remove_node(kube: Kube, name: str) -> None:
    """Without a controller-manager there is no garbage collector: delete the profile like GC would."""
    for path in (f"/apis/armcpu.io/v1alpha1/nodecpuprofiles/{name}", f"/api/v1/nodes/{name}"):
        try:
            kube.delete(path)
        except ApiError as exc:
            if exc.status != 404:
                raise


def assert_safe_and_converged(admin: Kube, model_name: str, nodes: list[str], vm_names: list[str], namespace: str) -> None:
    """The safety invariant: exactly the nodes that can run the model carry its revision, every VM carries
    exactly its patch, and every node a VM's selector admits can run the VM's model revision."""
    status = admin.get(f"/apis/armcpu.io/v1alpha1/cpumodels/{model_name}").get("status") or {}
    assert status.get("model") and status.get("revision"), f"{model_name} has no computed model yet"
    model = plan.model_from_status(status["model"])
    revision = str(status["revision"])
    key = plan.label_key(model_name)
    profiles = {p["metadata"]["name"]: from_dict({**p["spec"], "name": p["metadata"]["name"]})
                for p in admin.get("/apis/armcpu.io/v1alpha1/nodecpuprofiles")["items"]}
    labelled = {n["metadata"]["name"] for n in admin.get("/api/v1/nodes")["items"] if n["metadata"].get("labels", {}).get(key) == revision}
    able = {n for n in nodes if algebra.can_run(profiles[n], model).ok}
    assert labelled == able, f"not exactly the nodes that can run the model: {sorted(able - labelled)} unlabelled, {sorted(labelled - able)} wrongly"
    for name in vm_names:
        vm = admin.get(f"/apis/kubevirt.io/v1/namespaces/{namespace}/virtualmachines/{name}")
        assert vms.patch(vm, vms.Desired(model_name, int(revision), status["fingerprint"], tuple(status["model"]["libvirtDisabled"]))) == []
        selector = vm["spec"]["template"]["spec"]["nodeSelector"]
        admitted = {n["metadata"]["name"] for n in admin.get("/api/v1/nodes")["items"]
                    if all(n["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())}
        assert admitted and all(algebra.can_run(profiles[n], model).ok for n in admitted), f"{name} could land on a node that cannot run it"


def converged(admin: Kube, model_name: str, nodes: list[str], vm_names: list[str], namespace: str) -> bool:
    """For ``wait_for``: :func:`assert_safe_and_converged` holds now (an API server still coming back,
    answering 429 while its CRD storage re-initialises, counts as not yet)."""
    try:
        assert_safe_and_converged(admin, model_name, nodes, vm_names, namespace)
    except AssertionError:
        return False
    except ApiError as exc:
        if exc.status in (429, 503):
            return False
        raise
    return True


def _profiles(admin: Kube) -> dict[str, Profile]:
    """Every NodeCpuProfile the operator would accept, parsed as it parses them."""
    profiles = {}
    for item in admin.get("/apis/armcpu.io/v1alpha1/nodecpuprofiles")["items"]:
        parsed = plan.parse_profile(item["metadata"]["name"], item.get("spec") or {})
        if isinstance(parsed, Profile):
            profiles[parsed.name] = parsed
    return profiles


def unsafe_vms(admin: Kube) -> list[str]:
    """The safety invariant over the whole cluster: for every VM armcpu patched whose model is computed,
    every node its nodeSelector admits can run the model revision(s) the selector names (the current
    one, and an older one a running VM still uses). Returns the violations."""
    models = {m["metadata"]["name"]: m.get("status") or {} for m in admin.get("/apis/armcpu.io/v1alpha1/cpumodels")["items"]}
    profiles = _profiles(admin)
    nodes = admin.get("/api/v1/nodes")["items"]
    problems = []
    verdicts: dict[tuple[str, str, int], bool] = {}  # (node, model, revision): thousands of VMs share a handful

    def runs(node_name: str, name: str, revision: int, entry: dict[str, Any]) -> bool:
        key = (node_name, name, revision)
        if key not in verdicts:
            verdicts[key] = node_name in profiles and algebra.can_run(profiles[node_name], plan.model_from_status(entry)).ok
        return verdicts[key]

    for vm in admin.get("/apis/kubevirt.io/v1/virtualmachines")["items"]:
        name = vms.uses(vm)
        status = models.get(name or "")
        if name is None or not status or not status.get("model"):
            continue  # not armcpu's, or its model is gone (restoring it is the deletion tests' business)
        revisions = {int(status["revision"]): status["model"], **{int(e["revision"]): e for e in status.get("liveRevisions") or []}}
        selector = ((vm.get("spec") or {}).get("template") or {}).get("spec", {}).get("nodeSelector") or {}
        wanted = [int(v) for k, v in selector.items() if k == plan.label_key(name) and v.isdigit()]
        wanted += [r for k in selector if (r := keys.revision_of_key(k, name)) is not None]
        if not wanted or any(r not in revisions for r in wanted):
            continue  # a revision the status no longer describes: nothing to check it against
        for node in nodes:
            node_labels = node["metadata"].get("labels") or {}
            if not all(node_labels.get(k) == v for k, v in selector.items()):
                continue
            node_name = node["metadata"]["name"]
            for revision in wanted:
                if not runs(node_name, name, revision, revisions[revision]):
                    problems.append(f"{vm['metadata']['namespace']}/{vm['metadata']['name']} admits {node_name}, "
                                    f"which cannot run {name} revision {revision}")
    return problems


def stale_labels(admin: Kube) -> list[str]:
    """Nodes labelled for a model's current revision that cannot run it (by its status)."""
    models = {m["metadata"]["name"]: m.get("status") or {} for m in admin.get("/apis/armcpu.io/v1alpha1/cpumodels")["items"]}
    profiles = _profiles(admin)
    problems = []
    for node in admin.get("/api/v1/nodes")["items"]:
        name = node["metadata"]["name"]
        for key, value in (node["metadata"].get("labels") or {}).items():
            model = keys.model_of_key(key)
            status = models.get(model or "")
            if model is None or key != plan.label_key(model) or not status or not status.get("model") or str(status.get("revision")) != value:
                continue
            if name not in profiles or not algebra.can_run(profiles[name], plan.model_from_status(status["model"])).ok:
                problems.append(f"node {name} carries {key}={value} but cannot run it")
    return problems


class InvariantWatch:
    """The safety invariant, checked every ``interval`` seconds in a thread while a fault test runs
    (not only at its end): no VM admits a node that cannot run its revision, no node is labelled for
    a revision it cannot run, no node label armcpu does not own changed, and every VM's user fields
    are what the test wrote (armcpu's additions taken out by its record give the user's VM)."""

    def __init__(self, admin: Kube, node_labels: dict[str, dict[str, str]], vm_bodies: dict[tuple[str, str], dict[str, Any]],
                 interval: float = 0.5) -> None:
        self.admin, self.node_labels, self.vm_bodies, self.interval = admin, node_labels, vm_bodies, interval
        self.violations: list[str] = []
        self.checks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> InvariantWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.violations += self.check()
                self.checks += 1
            except (ApiError, OSError):
                pass  # the API server is down (a restart test): nothing to read, nothing violated
            self._stop.wait(self.interval)

    def check(self) -> list[str]:
        found = unsafe_vms(self.admin) + stale_labels(self.admin)
        for node in self.admin.get("/api/v1/nodes")["items"]:
            name = node["metadata"]["name"]
            foreign = {k: v for k, v in (node["metadata"].get("labels") or {}).items() if not (keys.is_agent_key(k) or keys.is_model_key(k))}
            if name in self.node_labels and foreign != self.node_labels[name]:
                found.append(f"node {name}: labels armcpu does not own are {foreign}, the test wrote {self.node_labels[name]}")
        listed = {(vm["metadata"]["namespace"], vm["metadata"]["name"]): vm
                  for namespace in sorted({ns for ns, _ in self.vm_bodies})
                  for vm in self.admin.get(f"/apis/kubevirt.io/v1/namespaces/{namespace}/virtualmachines")["items"]}
        for (namespace, name), body in self.vm_bodies.items():
            vm = listed.get((namespace, name))
            if vm is None:
                continue
            users = vms.strip(vm)
            for path in (("metadata", "labels"), ("spec", "template", "spec", "affinity"), *vms.ROOTS):
                got, want = _subtree(users, path), _subtree(body, path)
                if got != want:
                    found.append(f"vm {namespace}/{name}: {'.'.join(path)} is {json.dumps(got)[:160]}, the test wrote {json.dumps(want)[:160]}")
        return found


def _subtree(obj: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj
