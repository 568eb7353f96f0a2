"""The operator's one credential path: a kubeconfig whose user is an ``exec`` credential plugin (as
cloud CLIs and OIDC helpers write them). kopf (which watches CpuModels) and armcpu's own client
(which lists nodes and writes labels) both authenticate through it, as the same user; the plugin's
token is cached until the expiry it reports; no credential file is left behind."""

from __future__ import annotations

import json
import stat
import tempfile
from pathlib import Path

import pytest

from armcpu_k8s.kube import ConfigError, Kube, load_kubeconfig
from armcpu_testing.controlplane import ControlPlane
from tests.operator_harness import add_node, running_operator, wait_for

pytestmark = pytest.mark.integration
NS = "exec-creds"
USER = f"system:serviceaccount:{NS}:operator"
CPUMODELS = "/apis/armcpu.io/v1alpha1/cpumodels"


def _exec_kubeconfig(plane: ControlPlane, directory: Path, token: str) -> tuple[Path, Path]:
    calls = directory / "calls.log"
    plugin = directory / "credential-plugin"
    credential = {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {"token": token, "expirationTimestamp": "2099-01-01T00:00:00Z"}}
    plugin.write_text(f"#!/bin/sh\necho \"$KUBERNETES_EXEC_INFO\" >> {calls}\ncat <<'EOF'\n{json.dumps(credential)}\nEOF\n")
    plugin.chmod(plugin.stat().st_mode | stat.S_IXUSR)
    kubeconfig = directory / "kubeconfig"
    kubeconfig.write_text(
        f"apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {plane.url}\n"
        f"    certificate-authority: {plane.workdir / 'pki' / 'ca.crt'}\n"
        "users:\n- name: u\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n"
        "      command: ./credential-plugin\n      interactiveMode: Never\n"
        "contexts:\n- name: c\n  context: {cluster: c, user: u}\ncurrent-context: c\n")
    return kubeconfig, calls


def test_the_operator_runs_on_an_exec_plugin_kubeconfig(control_plane: ControlPlane, tmp_path: Path) -> None:
    admin = Kube(load_kubeconfig(control_plane.kubeconfig))
    control_plane.kubectl("create", "namespace", NS, check=False)
    control_plane.kubectl("create", "serviceaccount", "operator", "-n", NS, check=False)
    control_plane.kubectl("create", "clusterrolebinding", "exec-creds-operator", "--clusterrole=cluster-admin",
                          f"--serviceaccount={NS}:operator", check=False)
    token = control_plane.kubectl("create", "token", "operator", "-n", NS, "--duration=1h").stdout.strip()
    kubeconfig, calls = _exec_kubeconfig(control_plane, tmp_path, token)
    add_node(admin, "exec-a", {"pool": "exec-creds"}, "kvm-guest/graviton4-neoverse-v2-host6.18.json")
    before = set(Path(tempfile.gettempdir()).glob("armcpu-kube-*"))
    mark = control_plane.audit_mark()
    with running_operator(control_plane, identity="exec-creds", webhook=False, kubeconfig=kubeconfig):
        admin.create(CPUMODELS, {"apiVersion": "armcpu.io/v1alpha1", "kind": "CpuModel", "metadata": {"name": "exec-creds"},
                                 "spec": {"nodeSelector": {"matchLabels": {"pool": "exec-creds"}}}})
        wait_for(lambda: admin.get("/api/v1/nodes/exec-a")["metadata"]["labels"].get("cpumodel.armcpu.io/exec-creds") == "1", 30,
                 "the node labelled by the operator")
    users = {e["user"]["username"] for e in control_plane.requests_since(mark) if e.get("objectRef", {}).get("resource") in ("cpumodels", "nodes")
             and e["verb"] in ("watch", "list", "patch")}
    assert USER in users, users
    label_writers = {e["user"]["username"] for e in control_plane.writes_since(mark) if e.get("objectRef", {}).get("resource") == "nodes"
                     and e.get("objectRef", {}).get("name") == "exec-a"}
    assert label_writers == {USER}
    watchers = {e["user"]["username"] for e in control_plane.requests_since(mark) if e.get("objectRef", {}).get("resource") == "cpumodels"
                and e["verb"] in ("list", "watch")}
    assert watchers == {USER}, "kopf logged in through the same plugin"
    invocations = [json.loads(line) for line in calls.read_text().splitlines()]
    assert invocations and all(i["kind"] == "ExecCredential" and i["spec"]["interactive"] is False for i in invocations)
    assert len(invocations) <= 2, f"the token is cached until it expires, not fetched per request ({len(invocations)} runs)"
    assert set(Path(tempfile.gettempdir()).glob("armcpu-kube-*")) == before, "credential files left on disk"


def test_a_failing_plugin_is_a_clear_error(tmp_path: Path, control_plane: ControlPlane) -> None:
    kubeconfig, _ = _exec_kubeconfig(control_plane, tmp_path, "unused")
    (tmp_path / "credential-plugin").write_text("#!/bin/sh\necho 'token expired: run login' >&2\nexit 3\n")
    kube = Kube(load_kubeconfig(kubeconfig))
    with pytest.raises(ConfigError, match="exited 3: token expired: run login"):
        kube.get("/version")
