"""The CLI and the operator plan a pool through the same core pipeline (armcpu.pool.plan_pool):
the same members and settings give the same model, fingerprint and rendering on both sides."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from armcpu.pool import assume_kvm, plan_pool
from armcpu.profile import from_dict, to_dict
from armcpu_cli.main import main as cli
from armcpu_operator.planning import plan
from tests.helpers import REPO

PROFILES = [REPO / "examples/profiles/graviton3-kvm-6.18.json", REPO / "examples/profiles/graviton4-kvm-6.18.json"]


@pytest.mark.parametrize("features", [{}, {"FEAT_SHA3": "Disabled"}, {"FEAT_SVE": "Disabled", "FEAT_AES": "Required"}])
def test_cli_baseline_and_operator_reconcile_compute_the_same_model(features: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    flags = [f"--feature={name}={'off' if state == 'Disabled' else 'on'}" for name, state in features.items()]
    assert cli(["baseline", "--assume-kvm", *map(str, PROFILES), *flags, "-o", "json"]) == 0
    from_cli = json.loads(capsys.readouterr().out)

    members = {f"n{i}": assume_kvm(from_dict(json.loads(p.read_text()), p.name)) for i, p in enumerate(PROFILES)}
    nodes = {name: {"pool": "p"} for name in members}
    profiles = {name: to_dict(replace(profile, name=name, probe="kvm")) for name, profile in members.items()}
    spec = {"nodeSelector": {"matchLabels": {"pool": "p"}}, "features": features}
    status = plan.reconcile({"metadata": {"name": "m", "generation": 1}, "spec": spec, "status": None}, nodes, profiles,
                            "2026-12-01T00:00:00Z", kernel_verification="Advisory").status

    direct = plan_pool(list(members.values()), feature_settings=features)
    assert status["fingerprint"] == from_cli["model"]["fingerprint"] == direct.model.fingerprint
    assert status["model"]["qemu"] == direct.qemu.cpu_arg == from_cli["qemu"]["cpu"]
    assert status["model"]["registers"] == from_cli["model"]["registers"]
