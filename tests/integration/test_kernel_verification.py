"""The operator counts a node compatible only when its kernel agreed (``--kernel-verification Required``),
and a kernel that disagrees with armcpu's rules is loud: real agent processes replay what a real Linux
KVM answered on an emulated host (tests/fixtures/kvm/emulated/*/verify-own.json), one of them a
doctored copy in which the kernel refuses a register armcpu's rules accept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from armcpu_k8s.kube import Kube, load_kubeconfig
from armcpu_testing.controlplane import ControlPlane
from armcpu_testing.waiting import WaitTimeout, wait_for
from tests.emulated_checks import RECORDINGS
from tests.helpers import REPO
from tests.operator_harness import running_operator

pytestmark = pytest.mark.integration
OWN = sorted(RECORDINGS.glob("*/verify-own.json"))[0]
REFUSED_REGISTER = "ID_AA64ISAR0_EL1"


def _doctored(tmp: Path) -> Path:
    """The same conversation, but the kernel answers EINVAL to the write of one register."""
    data = json.loads(OWN.read_text())
    from armcpu import catalog

    reg_id = catalog.sysreg_id(*catalog.register(REFUSED_REGISTER).encoding)
    for call in data["verify"]["calls"]:
        if call["call"] == "set_reg" and call["args"][0] == reg_id:
            call["errno"] = "EINVAL"
            break
    else:
        raise AssertionError(f"{OWN} writes no {REFUSED_REGISTER}")
    out = tmp / "doctored.json"
    out.write_text(json.dumps(data))
    return out


def _probe_only(tmp: Path) -> Path:
    out = tmp / "probe-only.json"
    out.write_text(json.dumps(json.loads(OWN.read_text())["probe"]))
    return out


@pytest.fixture(scope="module")
def admin(control_plane: ControlPlane) -> Kube:
    return Kube(load_kubeconfig(control_plane.kubeconfig))


@pytest.fixture(scope="module")
def agents(control_plane: ControlPlane, admin: Kube) -> Iterator[dict[str, Path]]:
    tmp = Path(tempfile.mkdtemp(prefix="verify-agents-"))
    recordings = {"kv-good": OWN, "kv-bad": _doctored(tmp), "kv-none": _probe_only(tmp)}
    procs = []
    for node, recording in recordings.items():
        existing = admin.get_or_none(f"/api/v1/nodes/{node}")
        if existing is None:
            admin.create("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node, "labels": {"kv-pool": node}}})
        log = open(tmp / f"{node}.log", "wb")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "node_agent.main", "--node-name", node, "--kvm-replay", str(recording), "--host-root", str(tmp / "none"),
             "--kubeconfig", str(control_plane.kubeconfig), "--listen", "", "--interval", "600", "--log-format", "text"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}))
    try:
        yield recordings
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=20)


def _wait(predicate: Any, what: str, op: Any, logs: Path) -> None:
    try:
        wait_for(predicate, 90, what)
    except WaitTimeout:
        agents = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted(logs.glob("*.log")))
        raise AssertionError(f"{what}: not reached\n--- operator\n{op.logs()[-3000:]}\n{agents}") from None


def _status(admin: Kube, name: str) -> dict[str, Any]:
    obj = admin.get_or_none(f"/apis/armcpu.io/v1alpha1/cpumodels/{name}")
    return dict((obj or {}).get("status") or {})


def _condition(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == ctype), {})


def test_only_nodes_whose_kernel_agreed_are_labelled(control_plane: ControlPlane, admin: Kube, agents: dict[str, Path]) -> None:
    logs = agents["kv-bad"].parent
    with running_operator(control_plane, identity="kv-op", kernel_verification="Required") as op:
        for node in agents:
            control_plane.kubectl("apply", "-f", "-", input=json.dumps({
                "apiVersion": "armcpu.io/v1alpha1", "kind": "CpuModel", "metadata": {"name": node},
                "spec": {"nodeSelector": {"matchLabels": {"kv-pool": node}}}}))

        # the node whose kernel accepted the model and whose guest read it back: compatible and labelled
        _wait(lambda: _status(admin, "kv-good").get("nodes", {}).get("compatible") == 1, "kv-good compatible", op, logs)
        good = admin.get("/api/v1/nodes/kv-good")["metadata"]["labels"]
        assert good.get("cpumodel.armcpu.io/kv-good") == "1"
        profile = admin.get("/apis/armcpu.io/v1alpha1/nodecpuprofiles/kv-good")["spec"]
        assert [(v["model"], v["accepted"], v["guest_read_matches"]) for v in profile["verifications"]] == [("kv-good", True, True)]
        assert _condition(_status(admin, "kv-good"), "PredictionMismatch")["status"] == "False"

        # the doctored kernel refuses a register armcpu's rules accept: incompatible, unlabelled, and loud
        def bad_reported() -> bool:
            return _condition(_status(admin, "kv-bad"), "PredictionMismatch").get("status") == "True"

        _wait(bad_reported, "kv-bad's mismatch reported", op, logs)
        status = _status(admin, "kv-bad")
        message = _condition(status, "PredictionMismatch")["message"]
        assert "kv-bad: armcpu predicted it can run revision 1, its kernel refused it" in message and REFUSED_REGISTER in message
        assert status["nodes"]["compatible"] == 0 and status["incompatibleNodes"][0]["name"] == "kv-bad"
        assert "cpumodel.armcpu.io/kv-bad" not in admin.get("/api/v1/nodes/kv-bad")["metadata"]["labels"]
        events = admin.get("/api/v1/namespaces/default/events")["items"]
        warned = [e for e in events if e.get("reason") == "PredictionMismatch" and e["involvedObject"].get("name") == "kv-bad"]
        assert warned and warned[0]["type"] == "Warning" and REFUSED_REGISTER in warned[0]["message"] and "kv-bad" in warned[0]["message"]

        # an agent that cannot verify (a probe-only replay): the node stays pending, never labelled
        _wait(lambda: _status(admin, "kv-none").get("nodes", {}).get("pending") == 1, "kv-none pending", op, logs)
        status = _status(admin, "kv-none")
        assert status["pendingNodes"] == ["kv-none"] and _condition(status, "Ready")["reason"] == "VerificationPending"
        assert "cpumodel.armcpu.io/kv-none" not in admin.get("/api/v1/nodes/kv-none")["metadata"]["labels"]
