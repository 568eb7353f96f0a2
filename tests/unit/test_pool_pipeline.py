"""The CLI and the operator plan a pool through the same core pipeline (armcpu.pool.plan_pool):
the same members and settings give the same model, fingerprint and rendering on both sides."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from armcpu.model import can_run, can_run_each
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


@settings(max_examples=40, deadline=None)
@given(picks=st.lists(st.tuples(st.sampled_from(range(len(PROFILES))), st.booleans(), st.booleans()), min_size=1, max_size=8))
def test_each_members_check_is_what_can_run_says_for_it_alone(picks: list[tuple[int, bool, bool]]) -> None:
    """plan_pool checks each distinct node view once; every member must still get can_run's own
    answer, including members that differ only in a guest view or in cap 239."""
    base = [assume_kvm(from_dict(json.loads(p.read_text()), p.name)) for p in PROFILES]
    members = []
    for i, (which, seen_differs, no_cap) in enumerate(picks):
        member = replace(base[which], name=f"n{i}")
        if seen_differs:  # the agent measured the guest reading another CTR_EL0 than the node's
            member = replace(member, guest_view={"CTR_EL0": member.value("CTR_EL0") ^ 0x1})
        if no_cap:
            member = replace(member, kvm=replace(member.kvm, writable_imp_id_regs=False))
        members.append(member)
    planned = plan_pool(members)
    assert planned.checks == {m.name: can_run(m, planned.model) for m in members}
    assert {m.name for m in members} == set(planned.checks)


def test_nodes_that_differ_only_in_what_their_guest_reads_are_checked_apart() -> None:
    g3 = assume_kvm(from_dict(json.loads(PROFILES[0].read_text()), PROFILES[0].name))
    model = plan_pool([g3]).model
    traps_not = replace(g3, name="b", guest_view={"CTR_EL0": g3.value("CTR_EL0") ^ 0x1})  # the guest reads the physical IminLine
    checks = can_run_each([replace(g3, name="a"), traps_not], model)
    assert checks["a"].ok and not checks["b"].ok
    assert checks["b"] == can_run(traps_not, model)
