"""``armcpu advise``'s manifests on the real API server: accepted with the webhooks on, and each
reconciles to the model, the nodes and the guarantee the advisor predicted. ``kubectl armcpu``
(through the real kubectl, with a kubeconfig whose user is an exec credential plugin) proposes from
the cluster what ``armcpu advise`` proposes from the files, and ``why`` and ``vm`` answer from it.

The nodes are the emulated tier's recordings (what real Linux 6.12 and 7.3 kernels reported), two
nodes each, published by the agent's own code, so the nodes carry the agent's labels the manifests
select on. The operator declares the SYSREG-capable QEMU, so the HookSidecar proposals can hold too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from armcpu.profile import from_dict, to_dict
from armcpu_k8s.kube import ApiError, Kube, load_kubeconfig
from armcpu_testing.controlplane import ControlPlane
from node_agent.publish import publish
from tests.helpers import REPO
from tests.operator_harness import add_node, remove_node, running_operator, wait_for

pytestmark = pytest.mark.integration
CPUMODELS = "/apis/armcpu.io/v1alpha1/cpumodels"
EMULATED = REPO / "tests" / "fixtures" / "kvm" / "emulated"
BIN = REPO / ".venv" / "bin"
KINDS = ("cortex-a76-linux-7.3.4", "neoverse-n1-linux-7.3.4", "max-linux-7.3.4", "max-linux-6.12.117", "neoverse-v1-linux-6.12.117")


def _status(admin: Kube, name: str) -> dict[str, Any]:
    return admin.get(f"{CPUMODELS}/{name}").get("status") or {}


def _as_predicted(admin: Kube, proposal: dict[str, Any]) -> bool:
    status = _status(admin, proposal["name"])
    nodes = status.get("nodes") or {}
    promise = status.get("guarantee") or {}
    return (status.get("fingerprint") == proposal["fingerprint"] and nodes.get("selected") == proposal["nodes"]
            and nodes.get("compatible") == proposal["nodes"] and promise.get("safe") is True
            and promise.get("migrateToCount") == proposal["nodes"])


@dataclasses.dataclass(frozen=True)
class Seeded:
    admin: Kube
    files: list[str]
    nodes: list[str]
    tmp: Path


@pytest.fixture(scope="module")
def seeded(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """Two nodes of each kind, published by the agent's code, and an operator that declares a SYSREG-capable QEMU."""
    admin = Kube(load_kubeconfig(control_plane.kubeconfig))
    tmp = tmp_path_factory.mktemp("advise")
    files, names = [], []
    for kind in KINDS:
        recorded = from_dict(json.loads((EMULATED / kind / "profile-kvm.json").read_text()), kind)
        for n in range(2):
            node = f"adv-{kind.split('-linux-')[0]}-{kind.rsplit('-', 1)[1].replace('.', '-')}-{n}"
            profile = dataclasses.replace(recorded, name=node)
            add_node(admin, node, {"advise-test": "yes"}, None)
            publish(admin, node, profile)
            path = tmp / f"{node}.json"
            path.write_text(json.dumps(to_dict(profile)))
            files.append(str(path))
            names.append(node)
    try:
        with running_operator(control_plane, identity="advise", webhook=True, extra=("--vmm-sysreg", "--vmm-impl-cpu")):
            yield Seeded(admin, files, names, tmp)
    finally:
        for node in names:
            remove_node(admin, node)


def _advise_files(files: list[str], *extra: str) -> dict[str, Any]:
    done = subprocess.run([str(BIN / "armcpu"), "advise", *files, "-o", "json", *extra], capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_every_proposed_manifest_is_admitted_and_reconciles_to_the_predicted_model(control_plane: ControlPlane, seeded: Seeded) -> None:
    admin = seeded.admin
    manifests = seeded.tmp / "manifests"
    proposals = _advise_files(seeded.files, "--manifests", str(manifests))["proposals"]
    assert {p["kernelSeries"] for p in proposals} == {"6.12", "7.3"}
    assert any(p["fronts"] == ["sysreg"] for p in proposals), "a pool only a SYSREG-capable QEMU makes safe"
    applied = control_plane.kubectl("apply", "-f", str(manifests))
    assert applied.stdout.count("created") == len(proposals), applied.stdout + applied.stderr
    try:
        for p in proposals:
            wait_for(lambda p=p: _as_predicted(admin, p), 60, f"{p['name']} as predicted: {p['explanation']}")
            assert _status(admin, p["name"])["guarantee"]["enforcement"] == ("Scheduling" if "stock" in p["fronts"] else "HookSidecar")
    finally:
        for p in proposals:
            admin.delete(f"{CPUMODELS}/{p['name']}")
        wait_for(lambda: not any(_exists(admin, p["name"]) for p in proposals), 60, "the proposed CpuModels deleted")


def _exec_kubeconfig(control_plane: ControlPlane, admin: Kube, folder: Path) -> tuple[Path, Path]:
    """A kubeconfig whose user is an ``exec`` credential plugin, as EKS, GKE and AKS give: a script that
    prints an ExecCredential with a service account's token (read-only RBAC), and notes each call."""
    control_plane.kubectl("create", "namespace", "advise-reader", check=False)
    admin.create("/api/v1/namespaces/advise-reader/serviceaccounts", {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}})
    admin.create("/apis/rbac.authorization.k8s.io/v1/clusterroles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "armcpu-advise-reader"},
        "rules": [{"apiGroups": ["armcpu.io"], "resources": ["nodecpuprofiles", "cpumodels"], "verbs": ["get", "list"]},
                  {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]},
                  {"apiGroups": ["kubevirt.io"], "resources": ["virtualmachines", "virtualmachineinstances"], "verbs": ["get"]}]})
    admin.create("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "armcpu-advise-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "armcpu-advise-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "advise-reader"}]})
    review = admin.create("/api/v1/namespaces/advise-reader/serviceaccounts/reader/token",
                          {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}})
    calls = folder / "exec-calls.log"
    plugin = folder / "credential-plugin.sh"
    credential = json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                             "status": {"token": review["status"]["token"]}})
    plugin.write_text(f"#!/bin/sh\necho called >> {calls}\ncat <<'EOF'\n{credential}\nEOF\n")
    plugin.chmod(0o755)
    kubeconfig = folder / "exec-kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "exec",
        "clusters": [{"name": "local", "cluster": {"server": control_plane.url,
                                                   "certificate-authority": str(control_plane.workdir / "pki" / "ca.crt")}}],
        "users": [{"name": "exec-user", "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin),
                                                          "interactiveMode": "Never"}}}],
        "contexts": [{"name": "exec", "context": {"cluster": "local", "user": "exec-user"}}]}))
    return kubeconfig, calls


def _plugin(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "kubectl-armcpu"), *args], capture_output=True, text=True, env=env, timeout=120)


def test_kubectl_armcpu_with_an_exec_credential_plugin_proposes_what_the_files_do(control_plane: ControlPlane, seeded: Seeded) -> None:
    kubeconfig, calls = _exec_kubeconfig_cached(control_plane, seeded)
    from_files = _advise_files(seeded.files)
    # -l: only these nodes (the session's cluster also holds other tests' nodes)
    done = _plugin("--kubeconfig", str(kubeconfig), "advise", "-l", "advise-test=yes", "-o", "json")
    assert done.returncode == 0, done.stderr
    assert calls.read_text().count("called") >= 1, "the kubeconfig's exec plugin gave the credentials"
    assert json.loads(done.stdout) == from_files
    # the real kubectl finds the plugin on PATH and passes its flags through
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "KUBECONFIG": str(kubeconfig)}
    via_kubectl = subprocess.run([control_plane.binary("kubectl"), "armcpu", "matrix", "-l", "advise-test=yes", "-o", "json"],
                                 capture_output=True, text=True, env=env, timeout=120)
    assert via_kubectl.returncode == 0, via_kubectl.stderr
    assert json.loads(via_kubectl.stdout)["matrix"] == from_files["matrix"]
    table = _plugin("--kubeconfig", str(kubeconfig), "advise")
    assert table.returncode == 0 and max(len(line) for line in table.stdout.splitlines()) <= 80


def test_why_names_the_field_the_feat_and_the_rule_and_vm_says_where_it_may_go(control_plane: ControlPlane, seeded: Seeded) -> None:
    admin = seeded.admin
    kubeconfig, _ = _exec_kubeconfig_cached(control_plane, seeded)
    a76, sve_node = "adv-cortex-a76-7-3-4-0", "adv-max-7-3-4-0"
    # Pinned: the model is computed on the max node alone; the A76 node joins later and cannot run it
    admin.merge_patch(f"/api/v1/nodes/{sve_node}", {"metadata": {"labels": {"advise-why": "yes"}}})
    admin.create(CPUMODELS, {"apiVersion": "armcpu.io/v1alpha1", "kind": "CpuModel", "metadata": {"name": "advise-why"},
                             "spec": {"nodeSelector": {"matchLabels": {"advise-why": "yes"}}, "updatePolicy": "Pinned",
                                      "vmSelector": {"matchLabels": {"cpu-pool": "advise-why"}}}})
    wait_for(lambda: _status(admin, "advise-why").get("fingerprint"), 60, "the model computed on the max node")
    admin.merge_patch(f"/api/v1/nodes/{a76}", {"metadata": {"labels": {"advise-why": "yes"}}})
    control_plane.kubectl("create", "namespace", "advise-vms", check=False)
    vm = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
          "metadata": {"name": "web", "namespace": "advise-vms", "labels": {"cpu-pool": "advise-why"}},
          "spec": {"runStrategy": "Halted", "template": {"spec": {"domain": {"cpu": {"model": "host-passthrough"}, "devices": {},
                                                                             "memory": {"guest": "1Gi"}}}}}}
    admin.create("/apis/kubevirt.io/v1/namespaces/advise-vms/virtualmachines", vm)
    try:
        wait_for(lambda: (_status(admin, "advise-why").get("nodes") or {}).get("incompatible") == 1, 60, "the A76 node incompatible")
        done = _plugin("--kubeconfig", str(kubeconfig), "why", "advise-why", a76, "-o", "json")
        assert done.returncode == 0, done.stderr
        why = json.loads(done.stdout)
        assert why["verdict"] == "incompatible"
        sve = [r for r in why["refusals"] if "FEAT_SVE" in r["features"]]
        assert sve and sve[0]["register"] == "ID_AA64PFR0_EL1" and sve[0]["field"] == "SVE" and sve[0]["rule"], why
        listed = [f"{r['register']}.{r['field']}" for r in why["refusals"]]
        assert all(reason.split(" ", 1)[0].rstrip(":") in listed for reason in why["statusReasons"] if not reason.startswith("and ")), \
            "every field the operator's status names, the plugin names"
        summary = _plugin("--kubeconfig", str(kubeconfig), "why", "advise-why")
        assert summary.returncode == 0 and a76 in summary.stdout, summary.stdout
        assert max(len(line) for line in summary.stdout.splitlines()) <= 80
        assert json.loads(_plugin("--kubeconfig", str(kubeconfig), "why", "advise-why", sve_node, "-o", "json").stdout)["verdict"] == "compatible"
        node_text = _plugin("--kubeconfig", str(kubeconfig), "why", "advise-why", a76).stdout
        assert f"and {len(why['refusals']) - 8} more field(s) (-o wide lists them)" in node_text, node_text
        wide = _plugin("--kubeconfig", str(kubeconfig), "why", "advise-why", a76, "-o", "wide").stdout
        assert "FEAT_SVE" in wide and wide.count("refused: ") == len(why["refusals"])
        assert max(len(line) for text in (node_text, wide) for line in text.splitlines()) <= 80
        placed = wait_for(lambda: _vm_answer(kubeconfig, lambda a: a["startOn"] == [sve_node]), 60, "the VM dressed, its start node labelled")
        assert placed["cpumodel"] == "advise-why" and placed["running"] is False
        vm_text = _plugin("--kubeconfig", str(kubeconfig), "vm", "web", "-n", "advise-vms").stdout
        assert "not running" in vm_text and sve_node in vm_text and max(len(line) for line in vm_text.splitlines()) <= 80
        # A running VMI (no virt-controller here: written as KubeVirt writes one, the template's annotations and
        # nodeSelector copied at start), started with an older revision: it may migrate to the other max node only
        other = "adv-max-7-3-4-1"
        admin.merge_patch(f"/api/v1/nodes/{other}", {"metadata": {"labels": {"advise-why": "yes"}}})
        wait_for(lambda: (_status(admin, "advise-why").get("nodes") or {}).get("compatible") == 2, 60, "the second max node compatible")
        template = admin.get("/apis/kubevirt.io/v1/namespaces/advise-vms/virtualmachines/web")["spec"]["template"]
        older = {**template["metadata"]["annotations"], "armcpu.io/revision": "0"}
        admin.create("/apis/kubevirt.io/v1/namespaces/advise-vms/virtualmachineinstances", {
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "web", "namespace": "advise-vms", "annotations": older},
            "spec": {**template["spec"], "nodeSelector": template["spec"]["nodeSelector"]}, "status": {"nodeName": sve_node}})
        running = wait_for(lambda: _vm_answer(kubeconfig, lambda a: a["migrateTo"] == [other]), 60, "the other max node labelled")
        assert running["running"] and running["node"] == sve_node
        assert running["restartPending"] is True and running["runningRevision"] == "0"
        missing = _plugin("--kubeconfig", str(kubeconfig), "why", "no-such-model")
        assert missing.returncode == 2 and "not found" in missing.stderr
    finally:
        for kind in ("virtualmachineinstances", "virtualmachines"):
            try:
                admin.delete(f"/apis/kubevirt.io/v1/namespaces/advise-vms/{kind}/web")
            except ApiError as exc:
                if exc.status != 404:
                    raise
        admin.delete(f"{CPUMODELS}/advise-why")
        wait_for(lambda: not _exists(admin, "advise-why"), 60, "advise-why deleted")


def _vm_answer(kubeconfig: Path, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    """``kubectl armcpu vm advise-vms/web -o json`` once it answers and ``wanted`` holds (labels and dressing land in turn)."""
    done = _plugin("--kubeconfig", str(kubeconfig), "vm", "advise-vms/web", "-o", "json")
    if done.returncode != 0:
        return None
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer if wanted(answer) else None


_EXEC: dict[str, tuple[Path, Path]] = {}


def _exec_kubeconfig_cached(control_plane: ControlPlane, seeded: Seeded) -> tuple[Path, Path]:
    if "k" not in _EXEC:
        _EXEC["k"] = _exec_kubeconfig(control_plane, seeded.admin, seeded.tmp)
    return _EXEC["k"]


def _exists(admin: Kube, name: str) -> bool:
    try:
        admin.get(f"{CPUMODELS}/{name}")
    except ApiError as exc:
        if exc.status == 404:
            return False
        raise
    return True
