"""Every profile armcpu has recorded, and what the agent publishes, is a valid NodeCpuProfileSpec:
the API type the CRD schema is generated from is the data model, not a second description of it.
(The API server would refuse a profile the schema does not allow; this finds it before a cluster.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from armcpu_k8s.api import NodeCpuProfileSpec
from tests.helpers import REPO

RECORDED = sorted((REPO / "tests/fixtures/kvm/emulated").glob("*/profile-*.json"))  # what agents published on real kernels


def test_there_are_recordings_of_both_probes() -> None:
    names = {p.name for p in RECORDED}
    assert len(RECORDED) >= 20 and {"profile-kvm.json", "profile-mrs.json"} <= names


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: str(p.relative_to(REPO)))
def test_a_recorded_profile_is_a_valid_spec(path: Path) -> None:
    NodeCpuProfileSpec.model_validate(json.loads(path.read_text()))


def test_what_the_agent_publishes_is_a_valid_spec() -> None:
    """The agent's own output, replaying a recorded Graviton4 KVM conversation (this machine is not arm64)."""
    done = subprocess.run([sys.executable, "-m", "node_agent.main", "--once", "-o", "json", "--node-name", "n-g4",
                           "--host-root", "tests/fixtures/hosts/graviton4", "--kvm-replay", "tests/fixtures/kvm/graviton4-host6.18.json"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    spec = NodeCpuProfileSpec.model_validate(json.loads(done.stdout))
    assert spec.name == "n-g4" and spec.probe == "kvm"
