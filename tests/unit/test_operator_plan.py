"""The operator's pure reconcile, spec reading and event routing, on real CPU data, no cluster."""

from __future__ import annotations

import functools
from dataclasses import replace
from functools import cache
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from armcpu import model as algebra
from armcpu.profile import Profile, from_dict, to_dict
from armcpu_k8s import labels, selectors
from armcpu_operator.caches import Caches
from armcpu_operator.planning import admission, plan, spec, vms
from armcpu_operator.planning import world as worlds
from armcpu_operator.webhookscope import patch_for
from armcpu_testing.fixtures import host_618_profile
from tests.helpers import CPUS

# These worlds are register dumps, not kernels: no verdict can arrive, so armcpu's rules decide (tests of the
# verdicts themselves pass kernel_verification="Required").
reconcile = functools.partial(plan.reconcile, kernel_verification="Advisory")

KVM_GUEST = sorted(p.name for p in (CPUS / "kvm-guest").glob("*.json"))
NOW, LATER = "2026-11-25T10:00:00Z", "2026-11-25T11:00:00Z"


@cache
def profile(file: str) -> Profile:
    return host_618_profile(f"kvm-guest/{file}")


def world(members: dict[str, str], pool: str = "p") -> tuple[dict[str, dict[str, str]], dict[str, dict[str, Any]]]:
    nodes = {name: {"pool": pool, "team": "infra"} for name in members}
    profiles = {name: to_dict(replace(profile(file), name=name)) for name, file in members.items()}
    return nodes, profiles


def cpumodel(spec_: dict[str, Any], status: dict[str, Any] | None = None, generation: int = 1) -> dict[str, Any]:
    return {"metadata": {"name": "m", "generation": generation}, "spec": spec_, "status": status}


def applied(nodes: dict[str, dict[str, str]], p: plan.Plan) -> dict[str, dict[str, str]]:
    return {name: labels.patched(node_labels, p.label_changes.get(name, {})) for name, node_labels in nodes.items()}


SPEC = {"nodeSelector": {"matchLabels": {"pool": "p"}}}


@settings(max_examples=40, deadline=None)
@given(
    members=st.lists(st.sampled_from(KVM_GUEST), min_size=1, max_size=4),
    policy=st.sampled_from(["Pinned", "Follow"]),
    settings_=st.sampled_from([{}, {"FEAT_SHA3": "Disabled"}, {"FEAT_SVE": "Disabled", "FEAT_PAuth": "Disabled"}, {"FEAT_AES": "Required"}]),
)
def test_a_second_reconcile_of_the_same_world_changes_nothing(members: list[str], policy: str, settings_: dict[str, str]) -> None:
    nodes, profiles = world({f"n{i}": f for i, f in enumerate(members)})
    s = {**SPEC, "updatePolicy": policy, "features": settings_}
    first = reconcile(cpumodel(s), nodes, profiles, NOW)
    second = reconcile(cpumodel(s, first.status), applied(nodes, first), profiles, LATER)
    assert second.status == first.status
    assert second.label_changes == {}
    assert second.events == []
    # labels say exactly which nodes can run the model
    labelled = {n for n, labels in applied(nodes, first).items() if plan.label_key("m") in labels}
    assert labelled == set(first.compatible)
    if first.status.get("model"):
        model = plan.model_from_status(first.status["model"])
        for name in first.compatible:
            assert algebra.can_run(from_dict({**profiles[name], "name": name}), model).ok


def test_pinned_model_holds_when_a_weaker_node_joins_and_a_stronger_leaves() -> None:
    nodes, profiles = world({"g4": "graviton4-neoverse-v2-host6.18.json"})
    first = reconcile(cpumodel(SPEC), nodes, profiles, NOW)
    assert first.status["revision"] == 1 and first.compatible == ("g4",)
    more_nodes, more_profiles = world({"g4": "graviton4-neoverse-v2-host6.18.json", "g3": "graviton3-neoverse-v1-host6.18.json"})
    second = reconcile(cpumodel(SPEC, first.status), applied(more_nodes, first), more_profiles, LATER)
    assert second.status["revision"] == 1 and second.status["fingerprint"] == first.status["fingerprint"]
    assert second.incompatible == ("g3",) and second.label_changes == {}
    reasons = second.status["incompatibleNodes"][0]["reasons"]
    assert reasons[-1].startswith("and ") and all(": node 0x" in r and ", model 0x" in r for r in reasons[:-1])
    assert [e.reason for e in second.events] == ["NodesIncompatible"]
    # the strong node leaves: a pinned model never rises or falls
    only_g3 = {"g3": more_nodes["g3"]}
    third = reconcile(cpumodel(SPEC, second.status), only_g3, {"g3": more_profiles["g3"]}, LATER)
    assert third.status["fingerprint"] == first.status["fingerprint"] and third.status["revision"] == 1
    assert next(c for c in third.status["conditions"] if c["type"] == "Ready")["reason"] == "NoCompatibleNodes"


def test_follow_recomputes_and_counts_revisions() -> None:
    s = {**SPEC, "updatePolicy": "Follow"}
    nodes, profiles = world({"g4": "graviton4-neoverse-v2-host6.18.json"})
    first = reconcile(cpumodel(s), nodes, profiles, NOW)
    more_nodes, more_profiles = world({"g4": "graviton4-neoverse-v2-host6.18.json", "g3": "graviton3-neoverse-v1-host6.18.json"})
    second = reconcile(cpumodel(s, first.status), applied(more_nodes, first), more_profiles, LATER)
    assert second.status["revision"] == 2 and set(second.compatible) == {"g3", "g4"}
    assert second.label_changes == {"g4": {"cpumodel.armcpu.io/m": "2", "start.cpumodel.armcpu.io/m": "2"},
                                    "g3": {"cpumodel.armcpu.io/m": "2", "start.cpumodel.armcpu.io/m": "2"}}
    assert [e.reason for e in second.events] == ["ModelRevised", "MigrationUnsafe"]  # Graviton3 joined Graviton4


def test_spec_change_makes_a_new_revision_of_a_pinned_model() -> None:
    nodes, profiles = world({"g4": "graviton4-neoverse-v2-host6.18.json"})
    first = reconcile(cpumodel(SPEC), nodes, profiles, NOW)
    changed = {**SPEC, "features": {"FEAT_SHA3": "Disabled"}}
    second = reconcile(cpumodel(changed, first.status, generation=2), applied(nodes, first), profiles, LATER)
    assert second.status["revision"] == 2 and "FEAT_SHA3" not in second.status["model"]["features"]
    assert "FEAT_SHA3" in first.status["model"]["features"]


def test_invalid_spec_keeps_the_previous_revision_and_reports_once() -> None:
    nodes, profiles = world({"g4": "graviton4-neoverse-v2-host6.18.json"})
    first = reconcile(cpumodel(SPEC), nodes, profiles, NOW)
    bad = {**SPEC, "features": {"FEAT_NOPE": "Disabled"}}
    second = reconcile(cpumodel(bad, first.status, generation=2), applied(nodes, first), profiles, LATER)
    assert second.label_changes == {}
    assert second.status["model"] == first.status["model"] and second.status["revision"] == 1
    invalid = next(c for c in second.status["conditions"] if c["type"] == "Invalid")
    assert invalid["status"] == "True" and invalid["message"] == "spec.features.FEAT_NOPE: unknown feature 'FEAT_NOPE'"
    assert [e.reason for e in second.events] == ["InvalidSpec"]
    third = reconcile(cpumodel(bad, second.status, generation=2), applied(nodes, first), profiles, LATER)
    assert third.events == [] and third.status == second.status


def test_labels_leave_nodes_outside_the_pool_and_foreign_keys_stay() -> None:
    nodes, profiles = world({"a": "graviton4-neoverse-v2-host6.18.json"})
    nodes["stray"] = {"pool": "other", "cpumodel.armcpu.io/m": "7", "cpumodel.armcpu.io/other": "1"}
    result = reconcile(cpumodel(SPEC), nodes, profiles, NOW)
    assert result.label_changes == {"a": {"cpumodel.armcpu.io/m": "1", "start.cpumodel.armcpu.io/m": "1"},
                                    "stray": {"cpumodel.armcpu.io/m": None}}
    assert plan.removal("m", applied(nodes, result)) == {"a": {"cpumodel.armcpu.io/m": None, "start.cpumodel.armcpu.io/m": None}}


def test_mrs_or_missing_profiles_are_incompatible_with_reasons() -> None:
    nodes, profiles = world({"a": "graviton4-neoverse-v2-host6.18.json", "b": "graviton4-neoverse-v2-host6.18.json"})
    profiles["b"] = {**profiles["b"], "probe": "mrs"}
    nodes["c"] = {"pool": "p"}
    result = reconcile(cpumodel(SPEC), nodes, profiles, NOW)
    listed = {n["name"]: n["reasons"][0] for n in result.status["incompatibleNodes"]}
    assert set(listed) == {"b", "c"} and "not kvm" in listed["b"] and "no NodeCpuProfile" in listed["c"]


def test_incompatible_list_is_capped_with_a_count() -> None:
    members = {f"n{i:02d}": "graviton2-neoverse-n1-host6.18.json" for i in range(25)}
    members["strong"] = "graviton4-neoverse-v2-host6.18.json"
    nodes, profiles = world({"strong": members.pop("strong")})
    first = reconcile(cpumodel(SPEC), nodes, profiles, NOW)
    more_nodes, more_profiles = world({"strong": "graviton4-neoverse-v2-host6.18.json", **members})
    second = reconcile(cpumodel(SPEC, first.status), applied(more_nodes, first), more_profiles, LATER)
    assert len(second.status["incompatibleNodes"]) == plan.MAX_LISTED_NODES
    assert second.status["incompatibleNodesOmitted"] == 25 - plan.MAX_LISTED_NODES
    assert second.status["nodes"] == {"selected": 26, "compatible": 1, "incompatible": 25}


def test_spec_reports_every_problem_at_once() -> None:
    request = spec.parse({
        "nodeSelector": {},
        "base": "nope",
        "features": {"FEAT_NOPE": "Disabled", "FEAT_SHA3": "Disabled"},
        "registers": [{"register": "ID_AA64ISAR0_EL1", "field": "SHA3", "value": 1}, {"register": "CTR_EL0", "field": "DminLine", "value": 16}],
    })
    assert sorted(e.split(":")[0] for e in request.errors) == sorted([
        "spec.nodeSelector", "spec.base", "spec.registers[1] (CTR_EL0.DminLine)", "spec.features.FEAT_NOPE",
        "spec.registers[0] (ID_AA64ISAR0_EL1.SHA3)",
    ])
    assert spec.spec_hash({"a": 1, "b": [1]}) == spec.spec_hash({"b": [1], "a": 1}) != spec.spec_hash({"a": 2, "b": [1]})


@pytest.mark.parametrize(("selector", "labels", "expected"), [
    ({}, {"a": "b"}, False),
    ({"matchLabels": {"a": "b"}}, {"a": "b", "c": "d"}, True),
    ({"matchLabels": {"a": "b"}}, {"a": "x"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["x", "b"]}]}, {"a": "b"}, True),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["b"]}]}, {}, True),
    ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {}, False),
    ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": ""}, False),
])
def test_selectors(selector: dict[str, Any], labels: dict[str, str], expected: bool) -> None:
    assert selectors.matches(selector, labels) is expected


def test_only_events_that_can_change_a_model_wake_it() -> None:
    state = Caches()
    sels = {"m": {"matchLabels": {"pool": "p"}}, "other": {"matchLabels": {"pool": "q"}}}
    assert state.node_event("n", {"pool": "p"}, sels) == ["m"]
    assert state.node_event("n", {"pool": "p"}, sels) == [], "a heartbeat with the same labels wakes nobody"
    assert state.node_event("n", {"pool": "q", "cpumodel.armcpu.io/m": "1"}, sels) == ["m", "other"]
    assert state.node_event("n", None, sels) == ["m", "other"], "deletion wakes the models it was in"
    assert state.model_event("m", 1, False) and not state.model_event("m", 1, False)
    assert state.model_event("m", 2, False)


def test_mixed_pool_without_writable_identity_registers_says_why() -> None:
    """Before Linux 6.15 (no cap 239) a guest sees the host's MIDR: only nodes of the chosen identity qualify."""
    nodes, profiles = world({"a-g3": "graviton3-neoverse-v1-host6.18.json", "b-g4": "graviton4-neoverse-v2-host6.18.json"})
    for name in profiles:
        profiles[name] = {**profiles[name], "kvm": {**profiles[name]["kvm"], "writable_imp_id_regs": False}}
    result = reconcile(cpumodel(SPEC), nodes, profiles, NOW)
    assert result.compatible == ("a-g3",)
    reasons = result.status["incompatibleNodes"][0]["reasons"]
    assert result.status["incompatibleNodes"][0]["name"] == "b-g4"
    assert any("KVM_CAP_ARM_WRITABLE_IMP_ID_REGS" in r for r in reasons)


def test_identity_from_chooses_the_midr_the_guest_sees() -> None:
    nodes, profiles = world({"a-g3": "graviton3-neoverse-v1-host6.18.json", "b-g4": "graviton4-neoverse-v2-host6.18.json"})
    default = reconcile(cpumodel(SPEC), nodes, profiles, NOW)
    chosen = reconcile(cpumodel({**SPEC, "identityFrom": "b-g4"}), nodes, profiles, NOW)
    assert default.status["model"]["midr"] == profiles["a-g3"]["midr"]
    assert chosen.status["model"]["midr"] == profiles["b-g4"]["midr"]
    assert {i["midr"] for i in chosen.status["model"]["implementations"]} == {profiles["a-g3"]["midr"], profiles["b-g4"]["midr"]}
    missing = reconcile(cpumodel({**SPEC, "identityFrom": "nope"}), nodes, profiles, NOW)
    ready = next(c for c in missing.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "NoModel" and "spec.identityFrom: 'nope' is not a selected node" in ready["message"]


def test_a_node_whose_ctr_differs_from_the_model_gets_a_warning() -> None:
    """Two nodes equal but for CTR_EL0.DIC: the model has DIC=0; on the DIC=1 node guest CTR_EL0 reads trap."""
    nodes, profiles = world({"dic0": "graviton4-neoverse-v2-host6.18.json", "dic1": "graviton4-neoverse-v2-host6.18.json"})
    ctr = int(profiles["dic0"]["registers"]["CTR_EL0"], 16)
    profiles["dic1"] = {**profiles["dic1"], "registers": {**profiles["dic1"]["registers"], "CTR_EL0": hex(ctr | 1 << 29)}}
    profiles["dic0"] = {**profiles["dic0"], "registers": {**profiles["dic0"]["registers"], "CTR_EL0": hex(ctr & ~(1 << 29))}}
    result = reconcile(cpumodel(SPEC), nodes, profiles, NOW)
    assert set(result.compatible) == {"dic0", "dic1"}
    assert result.status["nodeWarnings"] == [{"name": "dic1", "message": "CTR_EL0.DIC differs from the node's: every guest CTR_EL0 read "
                                                                              "traps to KVM on this node (JITs notice)"}]


def test_an_older_revision_running_vms_use_keeps_its_own_node_label_until_they_restart() -> None:
    """Revision 1 is Graviton4's own model; Graviton3 joins and revision 2 is lower. VMs started with 1
    may only migrate to nodes that can run 1 as well: g4, not g3."""
    s = {**SPEC, "updatePolicy": "Follow"}
    nodes, profiles = world({"g4": "graviton4-neoverse-v2-host6.18.json"})
    first = reconcile(cpumodel(s), nodes, profiles, NOW, running={"1": 2})
    assert "liveRevisions" not in first.status
    more_nodes, more_profiles = world({"g4": "graviton4-neoverse-v2-host6.18.json", "g3": "graviton3-neoverse-v1-host6.18.json"})
    second = reconcile(cpumodel(s, first.status), applied(more_nodes, first), more_profiles, LATER, running={"1": 2})
    assert second.status["revision"] == 2
    assert [(e["revision"], e["nodes"]) for e in second.status["liveRevisions"]] == [(1, 1)]
    assert second.status["liveRevisions"][0]["registers"] == first.status["model"]["registers"]
    assert second.label_changes == {"g4": {"cpumodel.armcpu.io/m": "2", "start.cpumodel.armcpu.io/m": "2",
                                           "r1.cpumodel.armcpu.io/m": "true"},
                                    "g3": {"cpumodel.armcpu.io/m": "2", "start.cpumodel.armcpu.io/m": "2"}}
    steady = reconcile(cpumodel(s, second.status), applied(applied(more_nodes, first), second), more_profiles, LATER,
                            running={"1": 1, "2": 1})
    assert steady.label_changes == {} and steady.status == second.status
    restarted = reconcile(cpumodel(s, second.status), applied(applied(more_nodes, first), second), more_profiles, LATER,
                               running={"2": 2})
    assert "liveRevisions" not in restarted.status
    assert restarted.label_changes == {"g4": {"r1.cpumodel.armcpu.io/m": None}}
    gone = plan.removal("m", applied(applied(more_nodes, first), second))
    assert gone == {"g4": {"cpumodel.armcpu.io/m": None, "start.cpumodel.armcpu.io/m": None, "r1.cpumodel.armcpu.io/m": None},
                    "g3": {"cpumodel.armcpu.io/m": None, "start.cpumodel.armcpu.io/m": None}}


def test_restart_pending_says_when_an_older_revision_has_nowhere_to_migrate() -> None:
    status = {"revision": 3, "liveRevisions": [{"revision": 2, "nodes": 0}, {"revision": 1, "nodes": 4}], "conditions": []}
    plan.add_restart_condition(status, [], [("a", "v1"), ("a", "v2")], 5, NOW)
    condition = status["conditions"][-1]
    assert condition["type"] == "RestartPending" and condition["status"] == "True"
    assert "2 running VM(s)" in condition["message"] and "a/v1, a/v2" in condition["message"]
    assert "no node can run both revision 2 and revision 3" in condition["message"]
    plan.add_restart_condition(status, status["conditions"], [], 5, LATER)
    assert [c["status"] for c in status["conditions"] if c["type"] == "RestartPending"] == ["False"]


# ---------------------------------------------------------------- kernel verdicts (--kernel-verification)

def _with_verdict(raw: dict[str, Any], registers: dict[str, str], accepted: bool, read: bool | None,
                  disagreements: tuple[str, ...] = ()) -> dict[str, Any]:
    from armcpu.verification import verification_key

    key = verification_key({k: int(v, 16) for k, v in registers.items()})
    entry = {"key": key, "model": "m", "revision": 1, "boot_id": "b", "accepted": accepted, "guest_read_matches": read,
             "disagreements": list(disagreements)}
    return {**raw, "verifications": [entry]}


def test_required_verification_holds_nodes_pending_until_their_kernel_agrees() -> None:
    nodes, profiles = world({"a": "graviton3-neoverse-v1-host6.18.json", "b": "graviton4-neoverse-v2-host6.18.json"})
    first = plan.reconcile(cpumodel(SPEC), nodes, profiles, NOW, kernel_verification="Required")
    assert first.compatible == () and first.pending == ("a", "b") and first.label_changes == {}
    assert first.status["nodes"]["pending"] == 2 and first.status["pendingNodes"] == ["a", "b"]
    ready = next(c for c in first.status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "VerificationPending"
    registers = first.status["model"]["registers"]
    profiles["a"] = _with_verdict(profiles["a"], registers, True, True)
    second = plan.reconcile(cpumodel(SPEC, first.status), nodes, profiles, LATER, kernel_verification="Required")
    assert second.compatible == ("a",) and second.pending == ("b",)
    assert second.label_changes == {"a": {plan.label_key("m"): "1", labels.start_key("m"): "1"}}
    mismatch = next(c for c in second.status["conditions"] if c["type"] == "PredictionMismatch")
    assert mismatch["status"] == "False"
    # Advisory: the node without a verdict is not held back
    advisory = plan.reconcile(cpumodel(SPEC, first.status), nodes, profiles, LATER, kernel_verification="Advisory")
    assert advisory.compatible == ("a", "b") and advisory.pending == ()


@pytest.mark.parametrize("policy", ["Required", "Advisory"])
def test_a_kernel_that_refuses_what_the_rules_admit_is_incompatible_and_loud(policy: str) -> None:
    nodes, profiles = world({"a": "graviton3-neoverse-v1-host6.18.json", "b": "graviton4-neoverse-v2-host6.18.json"})
    first = plan.reconcile(cpumodel(SPEC), nodes, profiles, NOW, kernel_verification="Advisory")
    registers = first.status["model"]["registers"]
    field = "ID_AA64ISAR1_EL1.BF16: model 0x0, node 0x1, KVM_SET_ONE_REG EINVAL, guest read not read"
    profiles["a"] = _with_verdict(profiles["a"], registers, False, None, (field,))
    profiles["b"] = _with_verdict(profiles["b"], registers, True, True)
    second = plan.reconcile(cpumodel(SPEC, first.status), applied(nodes, first), profiles, LATER, kernel_verification=policy)
    assert second.compatible == ("b",) and second.incompatible == ("a",)
    assert second.label_changes == {"a": {plan.label_key("m"): None, labels.start_key("m"): None}}
    reasons = next(n["reasons"] for n in second.status["incompatibleNodes"] if n["name"] == "a")
    assert "kernel refused" in reasons[0] and "ID_AA64ISAR1_EL1.BF16" in reasons[0]
    mismatch = next(c for c in second.status["conditions"] if c["type"] == "PredictionMismatch")
    assert mismatch["status"] == "True" and "a: armcpu predicted it can run revision 1, its kernel refused it" in mismatch["message"]
    assert "ID_AA64ISAR1_EL1.BF16" in mismatch["message"]
    warned = [e for e in second.events if e.reason == "PredictionMismatch"]
    assert len(warned) == 1 and warned[0].type == "Warning" and "ID_AA64ISAR1_EL1.BF16" in warned[0].message
    # reported once: the same disagreement on the next reconcile raises no second Event, and writes nothing
    third = plan.reconcile(cpumodel(SPEC, second.status), applied(applied(nodes, first), second), profiles, LATER, kernel_verification=policy)
    assert [e for e in third.events if e.reason == "PredictionMismatch"] == [] and third.status == second.status


def test_a_kernel_that_runs_what_the_rules_refuse_is_reported_too() -> None:
    nodes, profiles = world({"a": "graviton3-neoverse-v1-host6.18.json"})
    first = plan.reconcile(cpumodel(SPEC), nodes, profiles, NOW, kernel_verification="Advisory")
    registers = first.status["model"]["registers"]
    nodes2, profiles2 = world({"a": "graviton3-neoverse-v1-host6.18.json", "old": "graviton3-neoverse-v1-host6.1.json"})
    profiles2["old"] = _with_verdict(profiles2["old"], registers, True, True)
    second = plan.reconcile(cpumodel(SPEC, first.status), nodes2, profiles2, LATER, kernel_verification="Advisory")
    assert "old" in second.incompatible  # the rules still decide a refusal; the report says they may be too strict
    mismatch = next(c for c in second.status["conditions"] if c["type"] == "PredictionMismatch")
    assert mismatch["status"] == "True" and "old: armcpu predicted it cannot run revision 1, its kernel ran it" in mismatch["message"]


def _condition(p: plan.Plan, ctype: str) -> dict[str, Any]:
    return next(c for c in p.status["conditions"] if c["type"] == ctype)


def test_a_pinned_spec_change_that_cannot_be_computed_yet_is_kept_and_applied_once_it_can() -> None:
    """Issue 19's "spec change silently dropped": the new spec's hash was recorded over the old model,
    so the change was never applied, and the condition vanished at the next reconcile."""
    nodes, profiles = world({"a-g3": "graviton3-neoverse-v1-host6.18.json", "b-g4": "graviton4-neoverse-v2-host6.18.json"})
    first = reconcile(cpumodel(SPEC), nodes, profiles, NOW)
    changed = {**SPEC, "features": {"FEAT_SHA3": "Disabled"}, "identityFrom": "typo"}
    second = reconcile(cpumodel(changed, first.status, generation=2), applied(nodes, first), profiles, LATER)
    assert second.status["revision"] == 1 and second.status["model"] == first.status["model"]
    assert second.status["specHash"] == first.status["specHash"] and second.status["appliedSpec"] == SPEC
    degraded = _condition(second, "Degraded")
    assert degraded["status"] == "True" and "the spec change is not applied" in degraded["message"] and "spec.identityFrom" in degraded["message"]
    third = reconcile(cpumodel(changed, second.status, generation=2), applied(nodes, first), profiles, LATER)
    assert third.status == second.status, "the change stays pending, and said so, at every later reconcile"
    fixed = {**changed, "identityFrom": "b-g4"}
    fourth = reconcile(cpumodel(fixed, third.status, generation=3), applied(nodes, first), profiles, LATER)
    assert fourth.status["revision"] == 2 and "FEAT_SHA3" not in fourth.status["model"]["features"]
    assert fourth.status["appliedSpec"] == fixed and _condition(fourth, "Degraded")["status"] == "False"


def test_a_spec_change_whose_pool_cannot_be_combined_keeps_the_old_spec_and_its_selectors_in_effect() -> None:
    nodes, profiles = world({"g4": "graviton4-neoverse-v2-host6.18.json"})
    first = reconcile(cpumodel({**SPEC, "vmSelector": {"matchLabels": {"app": "a"}}}), nodes, profiles, NOW)
    assert first.applied is not None and first.applied.vm_selector == {"matchLabels": {"app": "a"}}
    moved = {"nodeSelector": {"matchLabels": {"pool": "empty"}}, "vmSelector": {"matchLabels": {"app": "b"}}}
    second = reconcile(cpumodel(moved, first.status, generation=2), applied(nodes, first), profiles, LATER)
    assert second.status["revision"] == 1 and second.compatible == ("g4",), "the old pool keeps its label"
    assert second.label_changes == {}
    assert second.applied is not None and second.applied.vm_selector == {"matchLabels": {"app": "a"}}
    assert "no selected node has a usable NodeCpuProfile" in _condition(second, "Degraded")["message"]


def test_an_invalid_spec_change_moves_no_vm_selector() -> None:
    """Issue 19's "invalid spec half-applied": the reconciler used the invalid spec's new vmSelector."""
    nodes, profiles = world({"g4": "graviton4-neoverse-v2-host6.18.json"})
    valid = {**SPEC, "vmSelector": {"matchLabels": {"app": "a"}}}
    first = reconcile(cpumodel(valid), nodes, profiles, NOW)
    bad = {**SPEC, "vmSelector": {"matchLabels": {"app": "b"}}, "features": {"FEAT_NOPE": "Disabled"}}
    second = reconcile(cpumodel(bad, first.status, generation=2), applied(nodes, first), profiles, LATER)
    assert second.applied is not None and second.applied.vm_selector == {"matchLabels": {"app": "a"}}
    assert spec.applied_spec(bad, second.status) == valid, "the webhook's index reads the same spec"
    legacy = {k: v for k, v in first.status.items() if k != "appliedSpec"}  # a status written before appliedSpec existed
    assert spec.applied_spec(valid, legacy) == valid and spec.applied_spec(bad, legacy) is None
    unknown = reconcile(cpumodel(bad, legacy, generation=2), applied(nodes, first), profiles, LATER)
    assert unknown.applied is None, "nothing known to be in effect: VMs are left exactly as they are"


def test_one_node_with_a_huge_profile_cannot_swell_the_status() -> None:
    """Issue 19: an 800 KB register name in one agent's profile was quoted twice into every
    selecting CpuModel's status, until etcd refused each status write ("request is too large")."""
    import json

    nodes, profiles = world({"g4": "graviton4-neoverse-v2-host6.18.json", "bad": "graviton3-neoverse-v1-host6.18.json"})
    huge = "ID_" + "X" * 800_000 + "_EL1"
    profiles["bad"] = {**profiles["bad"], "registers": {**profiles["bad"]["registers"], huge: "0x1"}}
    result = reconcile(cpumodel(SPEC), nodes, profiles, NOW)
    assert result.compatible == ("g4",) and result.incompatible == ("bad",)
    assert len(json.dumps(result.status)) < 32_000
    reason = result.status["incompatibleNodes"][0]["reasons"][0]
    assert len(reason) <= plan.MAX_REASON_CHARS and "more characters)" in reason
    assert all(len(e.message) <= plan.MAX_MESSAGE_CHARS for e in result.events)


def test_a_selector_that_matches_nothing_does_not_say_every_node_can_run_the_model() -> None:
    nodes, profiles = world({"a": "graviton3-neoverse-v1-host6.18.json"}, pool="elsewhere")
    result = reconcile(cpumodel(SPEC), nodes, profiles, NOW)
    degraded = _condition(result, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("False", "NoNodesSelected") and "selects no node" in degraded["message"]
    pinned = reconcile(cpumodel(SPEC, status=reconcile(cpumodel(SPEC), *world({"a": "graviton3-neoverse-v1-host6.18.json"}), NOW).status),
                       nodes, profiles, LATER)
    assert _condition(pinned, "Degraded")["reason"] == "NoNodesSelected", "every node left a pinned model's pool"


def test_unknown_registers_list_the_known_ones_once() -> None:
    request = spec.parse({**SPEC, "registers": [{"register": f"NOPE{i}_EL1", "field": "X", "value": 0} for i in range(64)]})
    assert len(request.errors) == 64
    assert sum("ID_AA64ISAR0_EL1" in e for e in request.errors) == 1
    assert len("; ".join(request.errors)) < 6000, "64 unknown registers make one readable message, not 49 KB"


@pytest.mark.parametrize(("selector", "wrong"), [
    ({"matchLabels": {"pool ": "a"}}, "nodeSelector.matchLabels['pool ']: label key"),
    ({"matchLabels": {"Example.com/pool": "a"}}, "the prefix before '/' must be a DNS subdomain"),
    ({"matchLabels": {"pool": "a b"}}, "label value 'a b'"),
    ({"matchLabels": {"pool": "x" * 64}}, "at most 63 characters"),
    ({"matchLabels": {"pool": "a\n"}}, "label value 'a\\n'"),
    ({"matchExpressions": [{"key": "-pool", "operator": "Exists"}]}, "nodeSelector.matchExpressions[0]: label key '-pool'"),
    ({"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ok", "not/ok"]}]}, "label value 'not/ok'"),
])
def test_a_selector_on_a_key_or_value_no_label_can_have_is_refused_with_its_path(selector: dict[str, Any], wrong: str) -> None:
    """A typo such as a trailing space selected nothing, silently (issue 19); the API server refuses such
    labels on every object, so armcpu refuses them in the selector."""
    errors = selectors.check(selector)
    assert len(errors) == 1 and wrong in errors[0], errors
    request = spec.parse({"nodeSelector": {"matchLabels": {"pool": "a"}}, "vmSelector": selector})
    assert any(e.startswith("spec.vmSelector.") and wrong.split(": ", 1)[-1] in e for e in request.errors), request.errors


@pytest.mark.parametrize("selector", [
    {"matchLabels": {"kubernetes.io/arch": "arm64", "pool": "", "a_b.c-d": "X-1_y.z"}},
    {"matchExpressions": [{"key": "node.example.com/pool", "operator": "NotIn", "values": ["a", ""]}]},
])
def test_label_syntax_accepts_what_kubernetes_accepts(selector: dict[str, Any]) -> None:
    assert selectors.check(selector) == []


def test_a_vm_selector_change_wakes_every_model() -> None:
    """Whether a VM is ambiguous depends on every model's vmSelector: when b's changes, a must look again
    (its status.vms stayed stale until its resync, issue 19)."""
    state = Caches()
    web = {"matchLabels": {"app": "web"}}
    state.models_changed("a", 1, False, {"a": web}, {"a": {"matchLabels": {"pool": "p"}}})
    state.models_changed("b", 1, False, {"a": web, "b": {"matchLabels": {"app": "db"}}}, {})
    for event in state.triggers.values():
        event.clear()
    state.models_changed("b", 2, False, {"a": web, "b": web}, {})
    assert {m for m, e in state.triggers.items() if e.is_set()} == {"a", "b"}
    for event in state.triggers.values():
        event.clear()
    state.models_changed("b", 2, False, {"a": web, "b": web}, {})
    assert not any(e.is_set() for e in state.triggers.values()), "a status write of b changes no claim: nobody wakes"


def test_what_a_model_that_no_longer_exists_left_is_garbage() -> None:
    """A finalizer removed by hand skips the deletion's cleanup (issue 19): its labels and VM dressing
    are found by their keys, for every model not among the existing ones."""
    state = Caches()
    state.node_labels = {"n1": {"pool": "p", "cpumodel.armcpu.io/live": "1", "start.cpumodel.armcpu.io/gone": "true"},
                         "n2": {"r3.cpumodel.armcpu.io/gone": "true", "cpumodel.armcpu.io/other-gone": "2"}, "n3": {"pool": "q"}}
    vm = {"metadata": {"name": "v", "namespace": "ns", "labels": {}}, "spec": {"template": {"spec": {"domain": {}}}}}
    kept = vms.stored(vms.dress(vm, vms.Desired("vm-only", 1, "f")))
    state.vm_store, state.vm_index = {("ns", "v"): kept[0]}, {("ns", "v"): kept[1]}
    world = state.world("2026-12-01T00:00:00Z", hook_script="", kernel_verification="Advisory")
    assert worlds.orphaned_models(world, {"live"}) == ["gone", "other-gone", "vm-only"]
    assert worlds.orphaned_models(world, {"live", "gone", "other-gone", "vm-only"}) == []
    removal = worlds.plan_removal(world, "gone")
    assert removal.label_changes == {"n1": {"start.cpumodel.armcpu.io/gone": None}, "n2": {"r3.cpumodel.armcpu.io/gone": None}}


def test_the_vm_webhook_condition_covers_every_claim_and_nothing_else() -> None:
    """The CEL itself is evaluated by the real API server in tests/integration/test_webhook_scope.py;
    here: which claims go into it."""
    assert admission.vm_webhook_condition({}) == "false"
    assert admission.vm_webhook_condition({"a": None, "b": [{}], "c": {"matchLabels": {"bad key": "x"}}}) == "false"
    web, db = {"matchLabels": {"app": "web"}}, {"matchLabels": {"app": "db"}}
    both = admission.vm_webhook_condition({"a": [web, db], "b": web})
    assert both.count(" || ") == 1 and '"web"' in both and '"db"' in both, "the same selector twice is one term"
    many = {f"m{i}": {"matchLabels": {"app": f"app-{i}-" + "x" * 40}} for i in range(200)}
    assert admission.vm_webhook_condition(many) == "true", "too long: every VM goes to the webhook again"
    config = {"webhooks": [{"name": "other.example.com"}, {"name": admission.VM_WEBHOOK, "matchConditions": []}]}
    ops = patch_for(config, "false")
    assert ops == [{"op": "test", "path": "/webhooks/1/name", "value": admission.VM_WEBHOOK},
                   {"op": "add", "path": "/webhooks/1/matchConditions", "value": [{"name": admission.VM_CONDITION, "expression": "false"}]}]
    config["webhooks"][1]["matchConditions"] = ops[1]["value"]
    assert patch_for(config, "false") is None, "already there: nothing written"
