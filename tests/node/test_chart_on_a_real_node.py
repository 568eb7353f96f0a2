"""`helm install` of the chart on a real node: the pods run under the real kubelet, with the chart's
probes, security contexts, volumes and service accounts, and the API server reaches the webhooks
through the Service that kube-proxy programs.

The node is x86, so the agent runs in replay mode as the chart documents (``agent.kvmReplay``: a
recorded arm64 KVM conversation in a ConfigMap; ``agent.kvm=false``: no device is requested), and
the operator runs with ``kernelVerification=Advisory``: a probe recording cannot verify a model on a
kernel. Runs in file order: install, then each check, then upgrade, then uninstall.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from armcpu_k8s import labels
from armcpu_k8s.kube import ApiError, Kube, load_kubeconfig
from armcpu_testing import launcher
from armcpu_testing.controlplane import REPO
from armcpu_testing.waiting import wait_for
from tests.node.conftest import Cluster

pytestmark = pytest.mark.node

RELEASE = NS = "armcpu"
CHART = str(REPO / "charts" / "armcpu")
CONVERSATION = REPO / "tests/fixtures/kvm/emulated/neoverse-n1-linux-7.3.4/kvm-conversation.json"
AGENT = f"system:serviceaccount:{NS}:armcpu-agent"
CLEANUP = f"system:serviceaccount:{NS}:{RELEASE}-cleanup"
EXAMPLES = REPO / "examples"
MODEL_KEY = labels.MODEL_PREFIX + "graviton4"


def _values(cluster: Cluster) -> list[str]:
    return ["--set", f"image.repository={cluster.images.repository}", "--set", f"image.tag={cluster.images.tag}",
            "--set", "agent.kvm=false", "--set", "agent.kvmReplay.configMap=armcpu-kvm-replay",
            "--set", "agent.nodeSelector.kubernetes\\.io/arch=amd64", "--set", "operator.kernelVerification=Advisory"]


def _json(cluster: Cluster, *args: str) -> Any:
    return json.loads(cluster.plane.kubectl("get", *args, "-o", "json").stdout)


def _pods(cluster: Cluster, component: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = _json(cluster, "pods", "-n", NS, "-l", f"app.kubernetes.io/component={component}")["items"]
    return items


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def _rolled_out(cluster: Cluster, kind: str, name: str) -> None:
    # Not `helm --wait`: with maxUnavailable 1 and one replica it counts zero ready operators as enough.
    cluster.plane.kubectl("rollout", "status", "-n", NS, f"{kind}/{name}", "--timeout=180s")


def _node_labels(cluster: Cluster) -> dict[str, str]:
    found: dict[str, str] = _json(cluster, "node", cluster.node.name)["metadata"]["labels"]
    return found


def _metrics(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[None]:
    cluster.plane.kubectl("create", "namespace", NS)
    cluster.plane.kubectl("create", "configmap", "armcpu-kvm-replay", "-n", NS, f"--from-file=kvm-conversation.json={CONVERSATION}")
    cluster.plane.helm("install", RELEASE, CHART, "--namespace", NS, *_values(cluster))
    yield
    if RELEASE in cluster.plane.helm("list", "--namespace", NS, "-q").split():  # a test failed before the uninstall test
        cluster.plane.helm("uninstall", RELEASE, "--namespace", NS, "--no-hooks")


def test_the_operator_becomes_ready_and_serves_its_webhooks_through_the_service(cluster: Cluster, release: None) -> None:
    _rolled_out(cluster, "deployment", f"{RELEASE}-operator")
    [pod] = _pods(cluster, "operator")
    assert _ready(pod) and pod["spec"]["nodeName"] == cluster.node.name
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0, cluster.plane.kubectl("logs", "-n", NS, pod["metadata"]["name"]).stdout
    service = _json(cluster, "service", "-n", NS, f"{RELEASE}-operator")
    cluster_ip = service["spec"]["clusterIP"]
    # The API server dials the Service's ClusterIP (it resolves no endpoints itself): kube-proxy's rule is the way.
    rule = f"-d {cluster_ip}/32 -p tcp -m comment --comment \"{NS}/{RELEASE}-operator:webhook cluster IP\""
    wait_for(lambda: rule in subprocess.run(["iptables", "-t", "nat", "-S", "KUBE-SERVICES"], capture_output=True, text=True,
                                            check=True).stdout, 30, "kube-proxy's rule for the webhook Service")
    for kind in ("validatingwebhookconfiguration", "mutatingwebhookconfiguration"):
        for configuration in _json(cluster, kind, "-l", f"app.kubernetes.io/instance={RELEASE}")["items"]:
            for hook in configuration["webhooks"]:
                service_ref = hook["clientConfig"]["service"]
                assert (service_ref["name"], service_ref["namespace"], service_ref["port"]) == (f"{RELEASE}-operator", NS, 443)
    denied = cluster.plane.kubectl("apply", "-f", "-", check=False, input=(
        "apiVersion: armcpu.io/v1alpha1\nkind: CpuModel\nmetadata: {name: nope}\n"
        "spec: {nodeSelector: {matchLabels: {a: b}}, features: {FEAT_NOPE: Required}}\n")).stderr
    assert ('admission webhook "validate-cpumodel.armcpu.io" denied the request: '
            "spec.features.FEAT_NOPE: unknown feature 'FEAT_NOPE'") in denied, denied


def test_the_agent_labels_its_node_under_its_own_account(cluster: Cluster, release: None) -> None:
    _rolled_out(cluster, "daemonset", f"{RELEASE}-agent")
    [pod] = _pods(cluster, "agent")
    assert _ready(pod) and pod["spec"]["nodeName"] == cluster.node.name
    assert "devices.kubevirt.io/kvm" not in pod["spec"]["containers"][0]["resources"].get("limits", {})
    # What the same agent reads from the same recording on this machine, outside any pod.
    expected = json.loads(subprocess.run(
        [sys.executable, "-m", "node_agent.main", "--once", "--node-name", cluster.node.name, "--host-root", "/",
         "--kvm-replay", str(CONVERSATION), "--listen=", "--log-format", "text"],
        capture_output=True, text=True, check=True, cwd=REPO).stdout)
    wait_for(lambda: _node_labels(cluster).get(labels.FINGERPRINT) == expected["fingerprint"], 60, "the agent's labels")
    profile = _json(cluster, "nodecpuprofile", cluster.node.name)
    assert profile["spec"]["fingerprint"] == expected["fingerprint"] and profile["spec"]["probe"] == "kvm"
    node_writes = [e for e in cluster.plane.writes_since(0, AGENT) if (e.get("objectRef") or {}).get("resource") == "nodes"]
    assert node_writes, "the agent labelled its node with its own service account"
    for event in node_writes:  # a pod-bound token: the API server names the agent's node in every request
        assert event["user"]["extra"]["authentication.kubernetes.io/node-name"] == [cluster.node.name]
        assert event["objectRef"]["name"] == cluster.node.name and event["responseStatus"]["code"] == 200
    # The token the kubelet projected into the agent's pod, read from the node's disk: the admission
    # policy keeps it to its own node and to armcpu's labels.
    [token] = (cluster.node.workdir / "kubelet" / "pods" / pod["metadata"]["uid"] / "volumes").glob("kubernetes.io~projected/*/token")
    agent = Kube(load_kubeconfig(cluster.plane.kubeconfig_with_token("agent-pod", token.read_text())))
    cluster.admin.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "not-the-agents"}})
    try:
        with pytest.raises(ApiError, match="may not change node not-the-agents") as other:
            agent.merge_patch("/api/v1/nodes/not-the-agents", {"metadata": {"labels": {labels.CPU: "x"}}})
        assert other.value.status == 403
        with pytest.raises(ApiError, match=r"may change only armcpu\.io/ and feature\.armcpu\.io/ labels"):
            agent.merge_patch(f"/api/v1/nodes/{cluster.node.name}", {"metadata": {"labels": {"team": "z"}}})
    finally:
        cluster.admin.delete("/api/v1/nodes/not-the-agents")


def test_the_examples_reconcile_and_the_vm_webhook_dresses_a_new_vm(cluster: Cluster, release: None) -> None:
    cluster.plane.kubectl("label", "node", cluster.node.name, "cpu-pool=graviton4")
    cluster.plane.kubectl("apply", "-f", str(EXAMPLES / "cpumodels"))
    cluster.plane.kubectl("apply", "-f", str(EXAMPLES / "vms"))

    def ready() -> dict[str, Any] | None:
        status = _json(cluster, "cpumodel", "graviton4").get("status") or {}
        conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
        return status if conditions.get("Ready") == "True" else None

    status = wait_for(ready, 60, "the graviton4 CpuModel Ready")
    assert status["nodes"]["compatible"] == 1 and status["fingerprint"] == _node_labels(cluster)[labels.FINGERPRINT]
    assert _node_labels(cluster)[MODEL_KEY] == str(status["revision"])
    wait_for(lambda: (_json(cluster, "vm", "-n", "default", "api")["spec"]["template"]["spec"].get("nodeSelector") or {})
             .get(MODEL_KEY) == str(status["revision"]), 30, "the api VM patched")
    # A VM created now is dressed by the mutating webhook, in the API server's answer to the create.
    created = json.loads(cluster.plane.kubectl(
        "create", "-o", "json", "-f", "-",
        input=(EXAMPLES / "vms/api-graviton4.yaml").read_text().replace("name: api\n", "name: api-2\n")).stdout)
    assert created["spec"]["template"]["spec"]["nodeSelector"] == {MODEL_KEY: str(status["revision"])}
    assert json.loads(created["metadata"]["annotations"]["armcpu.io/applied"])["cpumodel"] == "graviton4"
    # The third webhook: a VM's boot pod, as virt-launcher makes it, must boot where the model is the node's own view.
    boot = cluster.admin.create("/api/v1/namespaces/default/pods",
                                launcher.launcher_pod("api", "uid-of-api", {MODEL_KEY: str(status["revision"])}))
    try:
        assert boot["spec"]["nodeSelector"][labels.start_key("graviton4")] == str(status["revision"])
    finally:
        cluster.admin.delete(f"/api/v1/namespaces/default/pods/{boot['metadata']['name']}")


def test_metrics_are_scraped_from_the_pods_ports(cluster: Cluster, release: None) -> None:
    [operator] = _pods(cluster, "operator")
    [agent] = _pods(cluster, "agent")
    assert "armcpu_operator_" in _metrics(f"http://{operator['status']['podIP']}:8080/metrics")
    agent_metrics = _metrics(f"http://{agent['status']['podIP']}:9101/metrics")
    assert "armcpu_agent_arm64 1.0" in agent_metrics and "armcpu_agent_profile_info{" in agent_metrics
    service = _json(cluster, "service", "-n", NS, f"{RELEASE}-operator")
    assert "armcpu_operator_" in _metrics(f"http://{service['spec']['clusterIP']}:8080/metrics")


def test_helm_upgrade_rolls_the_operator_and_the_agents(cluster: Cluster, release: None) -> None:
    before = {c: [p["metadata"]["uid"] for p in _pods(cluster, c)] for c in ("operator", "agent")}
    secret = _json(cluster, "secret", "-n", NS, f"{RELEASE}-webhook-tls")["data"]
    cluster.plane.helm("upgrade", RELEASE, CHART, "--namespace", NS, *_values(cluster),
                       "--set", "operator.resyncSeconds=240", "--set", "agent.intervalSeconds=300")
    _rolled_out(cluster, "deployment", f"{RELEASE}-operator")
    _rolled_out(cluster, "daemonset", f"{RELEASE}-agent")
    for component, uids in before.items():
        pods = wait_for(lambda c=component: (p := _pods(cluster, c)) and len(p) == 1 and p, 60, f"one {component} pod")
        assert pods[0]["metadata"]["uid"] not in uids and _ready(pods[0]), component
    [operator] = _pods(cluster, "operator")
    assert "--resync=240" in operator["spec"]["containers"][0]["args"]
    assert _json(cluster, "secret", "-n", NS, f"{RELEASE}-webhook-tls")["data"] == secret, "an upgrade keeps the certificate"
    denied = cluster.plane.kubectl("apply", "-f", "-", check=False, input=(
        "apiVersion: armcpu.io/v1alpha1\nkind: CpuModel\nmetadata: {name: nope}\n"
        "spec: {nodeSelector: {matchLabels: {a: b}}, features: {FEAT_NOPE: Required}}\n")).stderr
    assert 'admission webhook "validate-cpumodel.armcpu.io" denied the request' in denied, denied


def test_helm_uninstall_runs_the_cleanup_job_which_restores_every_vm_and_label(cluster: Cluster, release: None) -> None:
    originals = {doc["metadata"]["name"]: doc for path in sorted((EXAMPLES / "vms").glob("*.yaml"))
                 for doc in yaml.safe_load_all(Path(path).read_text()) if doc}
    assert any(labels.is_model_key(k) for k in _node_labels(cluster))
    mark = cluster.plane.audit_mark()
    cluster.plane.helm("uninstall", RELEASE, "--namespace", NS, "--wait", "--timeout", "5m")
    left = [k for k in _node_labels(cluster) if labels.is_agent_key(k) or labels.is_model_key(k)]
    assert left == [], left
    assert _node_labels(cluster)["cpu-pool"] == "graviton4", "labels armcpu does not own stay"
    for name, original in originals.items():
        vm = _json(cluster, "vm", "-n", "default", name)
        assert vm["spec"] == original["spec"], name
        assert "armcpu.io/applied" not in (vm["metadata"].get("annotations") or {}), name
    api_2 = _json(cluster, "vm", "-n", "default", "api-2")
    assert "nodeSelector" not in api_2["spec"]["template"]["spec"], "a VM the webhook dressed is restored too"
    cleanup_writes = cluster.plane.writes_since(mark, CLEANUP)
    assert {(e["objectRef"]["resource"], e["verb"]) for e in cleanup_writes} >= {
        ("deployments", "patch"), ("daemonsets", "patch"), ("virtualmachines", "patch"), ("nodes", "patch"),
        ("validatingwebhookconfigurations", "delete"), ("mutatingwebhookconfigurations", "delete")}
    assert [e for e in cleanup_writes if e["responseStatus"]["code"] >= 400] == []
    # Nothing the operator or an agent wrote after the cleanup's first node patch: they had stopped.
    first_node_patch = min(e["requestReceivedTimestamp"] for e in cleanup_writes if e["objectRef"]["resource"] == "nodes")
    late = [e for e in cluster.plane.writes_since(mark) if e["user"]["username"] in (AGENT, f"system:serviceaccount:{NS}:{RELEASE}-operator")
            and e["requestReceivedTimestamp"] > first_node_patch]
    assert late == [], late
    wait_for(lambda: _json(cluster, "pods", "-n", NS)["items"] == [], 60, "no pod of the release left")
