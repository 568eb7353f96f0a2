"""Label and NodeCpuProfile planning: armcpu's keys change, nobody else's."""

from __future__ import annotations

import dataclasses
import json

from hypothesis import given
from hypothesis import strategies as st

from armcpu import profile as profile_mod
from armcpu_k8s import labels
from node_agent import plan
from tests.helpers import CPUS

G4 = profile_mod.from_dict(json.loads((CPUS / "graviton4.json").read_text()), "g4")

keys = st.sampled_from([
    "armcpu.io/fingerprint", "armcpu.io/cpu", "armcpu.io/stale", "feature.armcpu.io/FEAT_SVE",
    "cpumodel.armcpu.io/pool", "kubevirt.io/schedulable", "team", "cpu-model.node.kubevirt.io/host",
])
label_maps = st.dictionaries(keys, st.sampled_from(["a", "b", "true"]), max_size=8)


@given(current=label_maps, desired=st.dictionaries(st.sampled_from(["armcpu.io/fingerprint", "armcpu.io/cpu", "feature.armcpu.io/FEAT_SVE"]),
                                                   st.sampled_from(["a", "x"]), max_size=3))
def test_label_patch_touches_only_agent_keys_and_reaches_desired(current: dict[str, str], desired: dict[str, str]) -> None:
    patch = plan.label_patch(current, desired)
    assert all(labels.is_agent_key(k) for k in patch)
    after = labels.patched(current, patch)
    assert {k: v for k, v in after.items() if labels.is_agent_key(k)} == desired
    assert {k: v for k, v in after.items() if not labels.is_agent_key(k)} == {k: v for k, v in current.items() if not labels.is_agent_key(k)}
    assert plan.label_patch(after, desired) == {}


def test_desired_labels() -> None:
    got = plan.desired_labels(G4)
    assert got == {"armcpu.io/fingerprint": G4.fingerprint, "armcpu.io/cpu": "arm-neoverse-v2", "armcpu.io/probe": "unknown",
                   "armcpu.io/kernel-series": "unknown"}
    assert plan.desired_labels(dataclasses.replace(G4, kernel="6.12.117+deb13-arm64"))["armcpu.io/kernel-series"] == "6.12"
    with_features = plan.desired_labels(G4, feature_labels=True)
    assert with_features["feature.armcpu.io/FEAT_SHA3"] == "true" and "feature.armcpu.io/FEAT_SM4" not in with_features
    assert all(len(k.split("/", 1)[1]) <= 63 for k in with_features)


def test_profile_object_is_owned_by_the_node_and_round_trips() -> None:
    node = {"metadata": {"name": "n1", "uid": "u-1"}}
    obj = plan.profile_object(node, G4)
    assert obj["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "u-1"}]
    assert profile_mod.from_dict(obj["spec"]).fingerprint == G4.fingerprint
    assert not plan.profile_needs_update(obj, obj)
    changed = json.loads(json.dumps(obj))
    changed["spec"]["kernel"] = "6.19"
    assert plan.profile_needs_update(changed, obj)


def _cpumodel(name: str, selector: dict[str, object], revision: int | None, registers: dict[str, str] | None,
              live: list[dict[str, object]] | None = None) -> dict[str, object]:
    status: dict[str, object] = {}
    if revision is not None and registers is not None:
        status = {"revision": revision, "model": {"registers": registers}}
    if live:
        status["liveRevisions"] = live
    return {"metadata": {"name": name}, "spec": {"nodeSelector": selector}, "status": status}


G4_REGS = {k: f"{v:#x}" for k, v in G4.registers.items()}
NO_SHA3 = {**G4_REGS, "ID_AA64ISAR0_EL1": f"{G4.registers['ID_AA64ISAR0_EL1'] & ~(0xF << 32):#x}"}


def test_verification_targets_are_the_current_and_live_revisions_of_models_selecting_the_node() -> None:
    from armcpu.verification import verification_key

    models = [
        _cpumodel("mine", {"matchLabels": {"pool": "a"}}, 3, G4_REGS, live=[{"revision": 2, "registers": NO_SHA3}]),
        _cpumodel("twin", {"matchLabels": {"pool": "a"}}, 1, G4_REGS),  # same registers: one verdict serves both
        _cpumodel("other-pool", {"matchLabels": {"pool": "b"}}, 1, NO_SHA3),
        _cpumodel("not-yet-computed", {"matchLabels": {"pool": "a"}}, None, None),
        _cpumodel("broken-selector", {"matchExpressions": [{"key": "pool", "operator": "Bogus"}]}, 1, G4_REGS),
        _cpumodel("bad-registers", {"matchLabels": {"pool": "a"}}, 1, {"NOPE_EL1": "0x1"}),
    ]
    targets = plan.verification_targets(models, {"pool": "a"})
    assert [(t.model, t.revision) for t in targets] == [("mine", 3), ("mine", 2)]
    assert targets[0].key == verification_key({k: int(v, 16) for k, v in G4_REGS.items()})
    assert plan.verification_targets(models, {"pool": "c"}) == []
    assert len(plan.verification_targets(models * 40, {"pool": "a"}, limit=1)) == 1
