"""The agent's verifier on a real kernel's recorded answers: one verification per (model, kernel boot),
a refusal when the vCPU cannot be set up, nothing for a model the replay cannot answer."""

from __future__ import annotations

import json
from pathlib import Path

from armcpu.profile import from_dict
from armcpu.verification import verification_key
from node_agent import verifier
from node_agent.plan import Target
from tests.emulated_checks import RECORDINGS

HOST = RECORDINGS / "neoverse-n1-linux-7.3.4"
OWN = json.loads((HOST / "verify-own.json").read_text())
NODE = from_dict(json.loads((HOST / "profile-kvm.json").read_text()), HOST.name)


def _target(recording: dict[str, object], revision: int = 1) -> Target:
    registers = from_dict({"registers": recording["model"]["registers"]}, "model").registers  # type: ignore[index]
    return Target("m", revision, verification_key(registers), registers)


def test_a_model_is_verified_once_per_kernel_boot() -> None:
    sessions = verifier.replayed_sessions(OWN, "own")
    checker = verifier.Verifier(sessions, "boot-1")
    target = _target(OWN)
    first = checker.verdicts(NODE, [target])
    assert [(v.key, v.ok, v.boot_id) for v in first] == [(target.key, True, "boot-1")] and checker.ran == 1
    assert checker.verdicts(NODE, [target]) == first and checker.ran == 1 and checker.fresh == []
    checker.boot = "boot-2"  # the node rebooted: its kernel is asked again
    assert checker.verdicts(NODE, [target])[0].boot_id == "boot-2" and checker.ran == 2


def test_a_model_the_replay_has_no_answer_for_gets_no_verdict(tmp_path: Path) -> None:
    checker = verifier.Verifier(verifier.replayed_sessions(OWN, "own"), "b")
    other = Target("m", 2, "0" * 16, {"MIDR_EL1": 1})
    assert checker.verdicts(NODE, [other]) == () and checker.ran == 0
    assert verifier.Verifier(None, "b").verdicts(NODE, [_target(OWN)]) == ()


def test_a_vcpu_that_cannot_be_made_for_the_model_is_a_refusal_naming_why() -> None:
    refused = json.loads((HOST / "verify-raw-max-linux-7.3.4.json").read_text())
    checker = verifier.Verifier(verifier.replayed_sessions(refused, "max"), "b")
    (verdict,) = checker.verdicts(NODE, [_target(refused)])
    assert not verdict.accepted and not verdict.ok and verdict.guest_read_matches is None
    assert any("sve" in d for d in verdict.disagreements), verdict.disagreements
