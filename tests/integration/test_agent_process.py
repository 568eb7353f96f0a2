"""``armcpu-agent`` as a process: it publishes, serves metrics and health, re-probes, stops on SIGTERM;
on a node that is not arm64 it idles without touching the cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from armcpu_k8s.kube import Kube, load_kubeconfig
from armcpu_testing.controlplane import ControlPlane, free_port
from tests.helpers import REPO
from tests.operator_harness import http_get, wait_for

pytestmark = pytest.mark.integration


@contextmanager
def agent(control_plane: ControlPlane, *args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "node_agent.main", "--listen", f"127.0.0.1:{port}", *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def test_agent_process_publishes_serves_health_and_stops_cleanly(control_plane: ControlPlane) -> None:
    admin = Kube(load_kubeconfig(control_plane.kubeconfig))
    if admin.get_or_none("/api/v1/nodes/proc-a") is None:
        admin.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "proc-a"}})
    with agent(control_plane, "--node-name", "proc-a", "--machine", "aarch64", "--interval", "1",
               "--host-root", "tests/fixtures/hosts/graviton4", "--kvm-replay", "tests/fixtures/kvm/graviton4-host6.18.json") as (proc, url):
        wait_for(lambda: http_get(url + "/readyz")[0] == 200)
        assert http_get(url + "/healthz")[0] == 200
        labels = admin.get("/api/v1/nodes/proc-a")["metadata"]["labels"]
        assert labels["armcpu.io/cpu"] == "arm-neoverse-v2"
        wait_for(lambda: "armcpu_agent_probe_duration_seconds_count 3.0" in http_get(url + "/metrics")[1])  # re-probes every second
        metrics = http_get(url + "/metrics")[1]
        assert 'armcpu_agent_api_writes_total{code="201",verb="POST"} 1.0' in metrics
        assert 'armcpu_agent_api_writes_total{code="200",verb="PATCH"} 1.0' in metrics, "later cycles wrote nothing"
        assert "armcpu_agent_last_success_timestamp_seconds" in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        _, err = proc.communicate()
    assert '"msg": "stopped"' in err and '"msg": "published"' in err


def test_agent_idles_on_a_node_that_is_not_arm64(control_plane: ControlPlane) -> None:
    admin = Kube(load_kubeconfig(control_plane.kubeconfig))
    if admin.get_or_none("/api/v1/nodes/proc-x86") is None:
        admin.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "proc-x86", "labels": {"k": "v"}}})
    mark = control_plane.audit_mark()
    with agent(control_plane, "--node-name", "proc-x86", "--machine", "x86_64", "--interval", "1") as (proc, url):
        wait_for(lambda: http_get(url + "/readyz")[0] == 200)
        time.sleep(2.5)
        assert "armcpu_agent_arm64 0.0" in http_get(url + "/metrics")[1]
        assert proc.poll() is None, "no crash loop"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        _, err = proc.communicate()
    assert err.count("not an arm64 node") == 1
    assert control_plane.writes_since(mark) == []
    assert admin.get("/api/v1/nodes/proc-x86")["metadata"]["labels"] == {"k": "v"}
