"""VM patches: applied with a real JSON-patch implementation, they reach the target; removal restores
the VM byte for byte; a VM already right gets no patch; users' own settings are never changed."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
from hypothesis import given, settings
from hypothesis import strategies as st

from armcpu_operator import vms

AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}]}}}


@st.composite
def vm_bodies(draw: st.DrawFn) -> dict[str, Any]:
    vm: dict[str, Any] = {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                          "metadata": {"name": "v", "namespace": "ns", "labels": {"app": "x"}}, "spec": {"template": {"spec": {"domain": {}}}}}
    if draw(st.booleans()):
        vm["metadata"]["annotations"] = {"kubectl.kubernetes.io/last-applied-configuration": "{}"}
    template = vm["spec"]["template"]
    if draw(st.booleans()):
        template["metadata"] = {"labels": {"kubevirt.io/vm": "v"}}
        if draw(st.booleans()):
            template["metadata"]["annotations"] = {"team": "db"}
    spec = template["spec"]
    if draw(st.booleans()):
        spec["nodeSelector"] = {"disk": "ssd"}
    if draw(st.booleans()):
        spec["affinity"] = copy.deepcopy(AFFINITY)
    cpu = draw(st.sampled_from([
        None, {"model": "host-passthrough"}, {"model": "host-passthrough", "features": [{"name": "sve", "policy": "disable"}]},
        {"cores": 2, "features": [{"name": "pauth", "policy": "require"}]},
    ]))
    if cpu is not None:
        spec["domain"]["cpu"] = cpu
    return vm


desired_values = st.builds(vms.Desired, model=st.sampled_from(["pool-a", "pool-b"]), revision=st.integers(1, 5),
                           fingerprint=st.just("3565d72f6470af2f"), disable=st.sampled_from([(), ("sve",), ("sve", "pauth")]))


def apply(vm: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = jsonpatch.apply_patch(vm, ops)
    return result


@settings(max_examples=200, deadline=None)
@given(vm=vm_bodies(), first=desired_values, second=st.one_of(st.none(), desired_values))
def test_patches_reach_their_target_and_removal_restores_exactly(vm: dict[str, Any], first: vms.Desired, second: vms.Desired | None) -> None:
    original = copy.deepcopy(vm)
    dressed = apply(vm, vms.patch(vm, first))
    assert dressed == vms.target(vm, first)
    assert vms.patch(dressed, first) == [], "a VM that carries the right patch gets no write"
    assert dressed["spec"]["template"]["spec"]["nodeSelector"][f"cpumodel.armcpu.io/{first.model}"] == str(first.revision)
    assert dressed["spec"]["template"]["spec"].get("affinity") == original["spec"]["template"]["spec"].get("affinity")
    assert vms.uses(dressed) == first.model
    again = apply(dressed, vms.patch(dressed, second))  # a new revision, another model, or removal
    assert vms.patch(again, second) == []
    restored = apply(again, vms.patch(again, None))
    assert json.dumps(restored, sort_keys=True) == json.dumps(original, sort_keys=True)


def test_users_own_feature_entries_are_kept_and_not_recorded() -> None:
    vm = {"metadata": {"name": "v"}, "spec": {"template": {"spec": {"domain": {"cpu": {"features": [{"name": "sve", "policy": "require"}]}}}}}}
    dressed = apply(vm, vms.patch(vm, vms.Desired("m", 1, "f", ("sve", "pauth"))))
    assert dressed["spec"]["template"]["spec"]["domain"]["cpu"]["features"] == [{"name": "sve", "policy": "require"},
                                                                                   {"name": "pauth", "policy": "disable"}]
    assert json.loads(dressed["metadata"]["annotations"][vms.RECORD])["features"] == ["pauth"]


def test_patches_test_what_they_replace() -> None:
    vm = {"metadata": {"name": "v", "annotations": {"a": "b"}}, "spec": {"template": {"spec": {"domain": {}, "nodeSelector": {"disk": "ssd"}}}}}
    ops = vms.patch(vm, vms.Desired("m", 2, "f"))
    tests = [op for op in ops if op["op"] == "test"]
    assert {op["path"] for op in tests} == {"/metadata/annotations", "/spec/template/spec/nodeSelector"}
    changed = copy.deepcopy(vm)
    changed["spec"]["template"]["spec"]["nodeSelector"]["disk"] = "nvme"  # someone edited it meanwhile
    try:
        jsonpatch.apply_patch(changed, ops)
    except jsonpatch.JsonPatchTestFailed:
        pass
    else:
        raise AssertionError("a stale patch must be refused")


def test_plan_selects_reports_ambiguity_and_restores_deselected() -> None:
    def vm(name: str, app: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": "ns", "labels": {"app": app}}, "spec": {"template": {"spec": {"domain": {}}}}}

    desired = vms.Desired("a", 1, "f")
    web = {"matchLabels": {"app": "web"}}
    also_web = {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]}
    everyone = {("ns", "one"): vm("one", "web"), ("ns", "two"): vm("two", "db"), ("ns", "three"): vm("three", "web")}
    plan = vms.plan_for_model("a", desired, web, everyone, {"a": web, "b": also_web})
    assert plan.ambiguous == {("ns", "one"): ["a", "b"], ("ns", "three"): ["a", "b"]} and plan.patches == {}
    single = vms.plan_for_model("a", desired, web, {("ns", "one"): vm("one", "web")}, {"a": web})
    assert set(single.patches) == {("ns", "one")} and single.counts == {"selected": 1, "current": 1, "ambiguous": 0}
    patched = apply(vm("one", "web"), single.patches[("ns", "one")])
    patched["metadata"]["labels"]["app"] = "db"  # relabelled out of the selection
    gone = vms.plan_for_model("a", desired, {"matchLabels": {"app": "web"}}, {("ns", "one"): patched}, {"a": {"matchLabels": {"app": "web"}}})
    assert apply(patched, gone.patches[("ns", "one")]) == {**vm("one", "db")}
