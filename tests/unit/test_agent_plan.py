"""Label and NodeCpuProfile planning: armcpu's keys change, nobody else's."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from armcpu import profile as profile_mod
from armcpu_k8s import labels
from node_agent import plan
from tests.helpers import SHARED

G4 = profile_mod.from_dict(json.loads((SHARED / "cpus/graviton4.json").read_text()), "g4")

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
    assert got == {"armcpu.io/fingerprint": G4.fingerprint, "armcpu.io/cpu": "arm-neoverse-v2", "armcpu.io/probe": "unknown"}
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
