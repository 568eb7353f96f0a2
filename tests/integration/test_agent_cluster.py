"""The node agent against a real kube-apiserver: publication, labels, zero-write reruns, and the
admission policy that confines the agent to its own node (exercised by impersonating the agent's
service account with the node-name extra a pod-bound token carries)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from armcpu import kvm
from armcpu.profile import Profile
from armcpu_k8s.kube import ApiError, Kube, load_kubeconfig
from armcpu_testing.controlplane import ControlPlane
from node_agent.collect import Sources, collect
from node_agent.probes import kvm_replay
from node_agent.publish import publish
from tests import agent_fixtures as fx
from tests.helpers import CPUS, REPO

pytestmark = pytest.mark.integration
NAMESPACE = "armcpu-system"
AGENT_USER = f"system:serviceaccount:{NAMESPACE}:armcpu-agent"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"


def _profile(tmp_path: Path, node: str, cpu_file: str) -> Profile:
    cpu = json.loads((CPUS / cpu_file).read_text())
    root = tmp_path / node / cpu_file
    fx.write_host_tree(root, cpu, ncpus=2)
    replay = kvm_replay.Replay(fx.conversation(fx.registers_of(cpu), kvm.assumed_writable_masks(False)))
    return collect(node, Sources(root=root, kvm=replay))


def _node(kube: Kube, name: str, labels: dict[str, str]) -> dict[str, Any]:
    existing = kube.get_or_none(f"/api/v1/nodes/{name}")
    if existing is not None:
        kube.delete(f"/api/v1/nodes/{name}")
    body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels, "annotations": {"team/owner": "infra"}}}
    node: dict[str, Any] = kube.create("/api/v1/nodes", body)
    return node


@pytest.fixture(scope="module")
def admin(control_plane: ControlPlane) -> Kube:
    return Kube(load_kubeconfig(control_plane.kubeconfig))


@pytest.fixture(scope="module")
def chart_installed(control_plane: ControlPlane) -> Iterator[None]:
    """The chart's agent RBAC and admission policies, rendered by the real helm and applied by kubectl."""
    control_plane.kubectl("create", "namespace", NAMESPACE, check=False)
    rendered = control_plane.helm("template", "armcpu", str(REPO / "charts/armcpu"), "--namespace", NAMESPACE,
                                  "--kube-version", "1.35.4", "--show-only", "templates/agent-rbac.yaml",
                                  "--show-only", "templates/agent-policy.yaml")
    control_plane.kubectl("apply", "-f", "-", input=rendered)
    yield


def _as_agent(control_plane: ControlPlane, node: str) -> Kube:
    return Kube(load_kubeconfig(control_plane.kubeconfig), impersonate_user=AGENT_USER, impersonate_extra={NODE_NAME_EXTRA: [node]})


def test_publish_creates_profile_and_labels_then_stays_quiet(control_plane: ControlPlane, admin: Kube, tmp_path: Path) -> None:
    node = _node(admin, "agent-a", {"team": "infra", "cpumodel.armcpu.io/pool": "3", "armcpu.io/stale": "x", "kubevirt.io/schedulable": "true"})
    g4 = _profile(tmp_path, "agent-a", "graviton4.json")

    first = publish(admin, "agent-a", g4)
    assert first.profile_written == "created"
    ncp = admin.get("/apis/armcpu.io/v1alpha1/nodecpuprofiles/agent-a")
    assert ncp["spec"]["fingerprint"] == g4.fingerprint and ncp["spec"]["probe"] == "kvm"
    assert ncp["metadata"]["ownerReferences"][0]["uid"] == node["metadata"]["uid"]
    labels = admin.get("/api/v1/nodes/agent-a")["metadata"]["labels"]
    assert labels["armcpu.io/fingerprint"] == g4.fingerprint
    assert labels["armcpu.io/cpu"] == "arm-neoverse-v2" and labels["armcpu.io/probe"] == "kvm"
    assert "armcpu.io/stale" not in labels, "a label armcpu set earlier that no longer holds is removed"
    assert labels["team"] == "infra" and labels["kubevirt.io/schedulable"] == "true" and labels["cpumodel.armcpu.io/pool"] == "3"

    mark = control_plane.audit_mark()
    again = publish(admin, "agent-a", g4)
    assert again.profile_written is None and again.labels_changed == ()
    assert control_plane.writes_since(mark) == [], "a run with nothing changed makes no write request"

    g3 = _profile(tmp_path, "agent-a", "graviton3.json")
    mark = control_plane.audit_mark()
    changed = publish(admin, "agent-a", g3)
    assert changed.profile_written == "updated" and changed.labels_changed == ("armcpu.io/cpu", "armcpu.io/fingerprint")
    writes = control_plane.writes_since(mark)
    assert sorted((w["verb"], w["objectRef"]["resource"]) for w in writes) == [("patch", "nodes"), ("update", "nodecpuprofiles")]
    assert admin.get("/apis/armcpu.io/v1alpha1/nodecpuprofiles/agent-a")["spec"]["fingerprint"] == g3.fingerprint
    assert admin.get("/api/v1/nodes/agent-a")["metadata"]["labels"]["armcpu.io/fingerprint"] == g3.fingerprint


def _wait_denied(call: Any, timeout: float = 30.0) -> ApiError:
    """Policies take effect a moment after creation; retry until the API server enforces them."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            call()
        except ApiError as exc:
            if exc.status == 403 and "ValidatingAdmissionPolicy" in exc.message:
                return exc
            raise
        if time.monotonic() > deadline:
            raise AssertionError("the request was allowed; the policy never denied it")
        time.sleep(0.5)


def test_agent_policy_confines_the_agent_to_its_own_node(control_plane: ControlPlane, admin: Kube, chart_installed: None,
                                                         tmp_path: Path) -> None:
    _node(admin, "agent-b", {"team": "infra"})
    _node(admin, "agent-c", {"team": "storage"})
    agent_b = _as_agent(control_plane, "agent-b")

    denied = _wait_denied(lambda: agent_b.merge_patch("/api/v1/nodes/agent-c", {"metadata": {"labels": {"armcpu.io/cpu": "x"}}}))
    assert "the armcpu agent on node agent-b may not change node agent-c" in denied.message

    # its own node: armcpu labels yes, and the full publish works through the policy
    g4 = _profile(tmp_path, "agent-b", "graviton4.json")
    assert publish(agent_b, "agent-b", g4).profile_written == "created"
    assert admin.get("/api/v1/nodes/agent-b")["metadata"]["labels"]["armcpu.io/fingerprint"] == g4.fingerprint

    foreign = _wait_denied(lambda: agent_b.merge_patch("/api/v1/nodes/agent-b", {"metadata": {"labels": {"team": "evil"}}}))
    assert "may change only armcpu.io/ and feature.armcpu.io/ labels, not team" in foreign.message
    removal = _wait_denied(lambda: agent_b.merge_patch("/api/v1/nodes/agent-b", {"metadata": {"labels": {"team": None}}}))
    assert "not team" in removal.message
    kubevirt = _wait_denied(lambda: agent_b.merge_patch("/api/v1/nodes/agent-b", {"metadata": {"labels": {"kubevirt.io/schedulable": "true"}}}))
    assert "kubevirt.io/schedulable" in kubevirt.message
    annotation = _wait_denied(lambda: agent_b.merge_patch("/api/v1/nodes/agent-b", {"metadata": {"annotations": {"x": "y"}}}))
    assert "only labels of its node" in annotation.message
    spec = _wait_denied(lambda: agent_b.merge_patch("/api/v1/nodes/agent-b", {"spec": {"unschedulable": True}}))
    assert "only labels of its node" in spec.message

    other_profile = {"apiVersion": "armcpu.io/v1alpha1", "kind": "NodeCpuProfile", "metadata": {"name": "agent-c"},
                     "spec": admin.get("/apis/armcpu.io/v1alpha1/nodecpuprofiles/agent-b")["spec"]}
    ncp = _wait_denied(lambda: agent_b.create("/apis/armcpu.io/v1alpha1/nodecpuprofiles", other_profile))
    assert "may write only NodeCpuProfile agent-b, not agent-c" in ncp.message

    no_node = Kube(load_kubeconfig(control_plane.kubeconfig), impersonate_user=AGENT_USER)
    missing = _wait_denied(lambda: no_node.merge_patch("/api/v1/nodes/agent-b", {"metadata": {"labels": {"armcpu.io/cpu": "y"}}}))
    assert "carries no node name" in missing.message

    # the admin (not the agent) is not matched by the policy
    admin.merge_patch("/api/v1/nodes/agent-c", {"metadata": {"labels": {"team": "db"}}})
