"""VM patches: applied with a real JSON-patch implementation, they reach the target; removal restores
the VM byte for byte; a VM already right gets no patch; users' own settings are never changed."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from armcpu_k8s import api
from armcpu_operator.planning import vms

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
            # a user's own hook sidecars, spelled their way (restored byte for byte), or not valid JSON (left alone)
            sidecars = draw(st.sampled_from([None, '[ {"image": "example/smbios:1", "args": ["--version", "v1alpha2"]} ]', "[]", "{oops"]))
            if sidecars is not None:
                template["metadata"]["annotations"][vms.HOOK_SIDECARS] = sidecars
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
                           fingerprint=st.just("3565d72f6470af2f"), disable=st.sampled_from([(), ("sve",), ("sve", "pauth")]),
                           qemu_cpu=st.sampled_from([None, "host,pauth=off,SYSREG_ID_AA64ISAR0_EL1_SM3=0"]),
                           qemu_machine=st.sampled_from([None, "impl-cpu.0.midr=0x410fd0c1,impl-cpu.0.revidr=0x0"]),
                           running_revision=st.sampled_from([None, 7]))


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
    assert set(single.patches) == {("ns", "one")} and single.counts == {"selected": 1, "current": 1, "ambiguous": 0, "domainRewrite": 0}
    patched = apply(vm("one", "web"), single.patches[("ns", "one")])
    patched["metadata"]["labels"]["app"] = "db"  # relabelled out of the selection
    gone = vms.plan_for_model("a", desired, {"matchLabels": {"app": "web"}}, {("ns", "one"): patched}, {"a": {"matchLabels": {"app": "web"}}})
    assert apply(patched, gone.patches[("ns", "one")]) == {**vm("one", "db")}


HOOKED = vms.Desired("m", 2, "f", (), qemu_cpu="host,SYSREG_ID_AA64ISAR0_EL1_SM3=0", qemu_machine="impl-cpu.0.midr=0x410fd0c1")


def _template_annotations(vm: dict[str, Any]) -> dict[str, str]:
    annotations: dict[str, str] = vm["spec"]["template"]["metadata"]["annotations"]
    return annotations


def test_the_hook_entry_joins_the_users_sidecars_and_leaves_alone() -> None:
    mine = '[ {"image": "example/smbios:1"} ]'
    vm = {"metadata": {"name": "v"}, "spec": {"template": {"metadata": {"annotations": {vms.HOOK_SIDECARS: mine}}, "spec": {"domain": {}}}}}
    dressed = apply(vm, vms.patch(vm, HOOKED))
    annotations = _template_annotations(dressed)
    assert json.loads(annotations[vms.HOOK_SIDECARS]) == [{"image": "example/smbios:1"}, vms.HOOK_ENTRY]
    assert annotations["armcpu.io/qemu-cpu"] == HOOKED.qemu_cpu and annotations["armcpu.io/qemu-machine"] == HOOKED.qemu_machine
    assert vms.uses_hook(dressed)
    # the user adds a sidecar of their own meanwhile: removal keeps it and takes only armcpu's entry out
    later = copy.deepcopy(dressed)
    _template_annotations(later)[vms.HOOK_SIDECARS] = json.dumps([{"image": "example/smbios:1"}, vms.HOOK_ENTRY, {"image": "b:2"}])
    restored = apply(later, vms.patch(later, None))
    assert json.loads(_template_annotations(restored)[vms.HOOK_SIDECARS]) == [{"image": "example/smbios:1"}, {"image": "b:2"}]
    assert "armcpu.io/qemu-cpu" not in _template_annotations(restored)
    # unchanged: back to the user's exact string
    assert _template_annotations(apply(dressed, vms.patch(dressed, None)))[vms.HOOK_SIDECARS] == mine


def test_a_hook_annotation_that_is_not_a_json_list_is_left_and_the_vm_gets_no_hook() -> None:
    vm = {"metadata": {"name": "v"}, "spec": {"template": {"metadata": {"annotations": {vms.HOOK_SIDECARS: "{oops"}}, "spec": {}}}}
    dressed = apply(vm, vms.patch(vm, HOOKED))
    assert _template_annotations(dressed)[vms.HOOK_SIDECARS] == "{oops" and not vms.uses_hook(dressed)
    assert "armcpu.io/qemu-cpu" not in _template_annotations(dressed)


def test_desired_uses_the_hook_only_when_asked_and_needed() -> None:
    raw = {"revision": 3, "fingerprint": "f", "model": {"registers": {}, "midr": "0x00000000", "qemu": "host,SYSREG_X_Y=0",
                                                        "qemuMachine": None, "libvirtDisabled": ["sve"], "domainRewrite": "Needed"}}
    status = api.CpuModelStatus.model_validate(raw)
    assert vms.desired_of("m", status, "HookSidecar").qemu_cpu == "host,SYSREG_X_Y=0"
    assert vms.desired_of("m", status, "Scheduling").qemu_cpu is None
    assert vms.desired_of("m", status, None).disable == ("sve",)
    same = api.CpuModelStatus.model_validate({**raw, "model": {**raw["model"], "qemu": "host", "domainRewrite": "NotNeeded"}})
    assert vms.desired_of("m", same, "HookSidecar").qemu_cpu is None, "a model equal to every node's registers needs no rewrite"
    with pytest.raises(ValueError, match="no computed revision"):
        vms.desired_of("m", api.CpuModelStatus(), "Scheduling")


def test_running_vms_started_with_another_revision_are_restart_pending() -> None:
    def vm(revision: str | None, model: str = "m") -> dict[str, Any]:
        annotations = {} if revision is None else {vms.T_MODEL: model, vms.T_REVISION: revision}
        return {"spec": {"template": {"metadata": {"annotations": annotations}}}}

    vmis = {("a", "1"): ("m", "2", False), ("a", "2"): ("m", "1", False), ("a", "3"): ("m", "1", True),
            ("a", "4"): ("other", "1", False), ("a", "5"): ("m", "2", False)}
    current = {("a", "1"): vm("2"), ("a", "2"): vm("2"), ("a", "3"): vm(None)}  # a/3 left the selection; a/5 has no VM
    running, pending = vms.running_revisions("m", vmis, current, vms.Desired("m", 2, "f"))
    assert running == {"2": 2, "1": 2}
    assert pending == [("a", "2"), ("a", "3")]


def test_a_vm_still_running_an_older_revision_also_requires_nodes_that_can_run_it() -> None:
    vm = {"metadata": {"name": "v", "namespace": "a", "labels": {"app": "x"}}, "spec": {"template": {"spec": {"nodeSelector": {"disk": "ssd"}}}}}
    desired = vms.Desired("m", 3, "f")
    sel = {"matchLabels": {"app": "x"}}
    planned = vms.plan_for_model("m", desired, sel, {("a", "v"): vm}, {"m": sel}, running={("a", "v"): "2"}, live=[2])
    dressed = apply(vm, planned.patches[("a", "v")])
    assert dressed["spec"]["template"]["spec"]["nodeSelector"] == {"disk": "ssd", "cpumodel.armcpu.io/m": "3", "r2.cpumodel.armcpu.io/m": "true"}
    assert planned.counts["current"] == 1
    # restarted on revision 3: the older requirement goes, the user's key stays
    after = vms.plan_for_model("m", desired, sel, {("a", "v"): dressed}, {"m": sel}, running={("a", "v"): "3"}, live=[])
    assert apply(dressed, after.patches[("a", "v")])["spec"]["template"]["spec"]["nodeSelector"] == {"disk": "ssd", "cpumodel.armcpu.io/m": "3"}
    # a revision no node is labelled for any more is not required (it would strand the VM)
    assert vms.for_running(desired, "1", live=[2]) == desired
    assert json.dumps(apply(dressed, vms.patch(dressed, None)), sort_keys=True) == json.dumps(vm, sort_keys=True)


def test_a_vm_that_becomes_ambiguous_stays_current_with_the_model_that_dressed_it() -> None:
    """Issue 19: a VM dressed by model a, then also selected by b, kept requiring a's old revision after a
    moved on; once no node carried that revision, no node could start it. It now follows a's revision
    (reported ambiguous all the same), and b leaves it alone."""
    web = {"matchLabels": {"app": "web"}}
    vm = {"metadata": {"name": "one", "namespace": "ns", "labels": {"app": "web"}}, "spec": {"template": {"spec": {"domain": {}}}}}
    dressed = vms.dress(vm, vms.Desired("a", 1, "f1"))
    both = {"a": web, "b": web}
    moved = vms.plan_for_model("a", vms.Desired("a", 2, "f2"), web, {("ns", "one"): dressed}, both)
    assert moved.ambiguous == {("ns", "one"): ["a", "b"]} and moved.counts["ambiguous"] == 1
    after = apply(dressed, moved.patches[("ns", "one")])
    assert after["spec"]["template"]["spec"]["nodeSelector"] == {"cpumodel.armcpu.io/a": "2"}
    assert vms.strip(after) == vm, "still restorable byte for byte"
    other = vms.plan_for_model("b", vms.Desired("b", 1, "g"), web, {("ns", "one"): after}, both)
    assert other.patches == {} and other.ambiguous == {("ns", "one"): ["a", "b"]}
    undressed = vms.plan_for_model("a", vms.Desired("a", 2, "f2"), web, {("ns", "one"): vm}, both)
    assert undressed.patches == {}, "a VM nobody dressed yet stays undressed while two models select it"


def _user_vm(**template_annotations: str) -> dict[str, Any]:
    return {"metadata": {"name": "v", "namespace": "ns", "uid": "uid-v", "labels": {"app": "web"}},
            "spec": {"template": {"metadata": {"annotations": {"team": "db", **template_annotations}},
                                  "spec": {"nodeSelector": {"cpumodel.armcpu.io/a": "mine", "disk": "ssd"},
                                           "domain": {"cpu": {"features": [{"name": "sve", "policy": "disable"}]}}}}}}


def test_a_users_own_values_under_armcpus_keys_come_back_on_removal() -> None:
    """Issue 19: dressing overwrote them and removal then deleted them; the record keeps them now."""
    original = _user_vm(**{"armcpu.io/revision": "their own", "armcpu.io/cpumodel": "theirs"})
    dressed = vms.dress(original, vms.Desired("a", 3, "f", disable=("sve", "pauth")))
    assert dressed["spec"]["template"]["spec"]["nodeSelector"]["cpumodel.armcpu.io/a"] == "3"
    assert vms.strip(dressed) == original
    again = vms.target(dressed, vms.Desired("a", 4, "g"))
    assert vms.strip(again) == original, "a new revision keeps what the user had"
    assert apply(dressed, vms.patch(dressed, None)) == original


def test_a_record_copied_from_another_vm_is_not_believed() -> None:
    """Issue 19: a record names what armcpu removes. Copied with a manifest onto another VM, it made
    armcpu delete that VM's own entries; a record names its VM's uid, and another uid's record is ignored."""
    source = vms.dress(_user_vm(), vms.Desired("a", 1, "f", disable=("pauth",)))
    record = json.loads(source["metadata"]["annotations"][vms.RECORD])
    assert record["uid"] == "uid-v" and record["features"] == ["pauth"]
    copy_ = _user_vm()
    copy_["metadata"] = {**copy_["metadata"], "name": "w", "uid": "uid-w",
                         "annotations": {vms.RECORD: json.dumps({**record, "features": ["sve"]})}}
    stripped = vms.strip(copy_)
    assert stripped["spec"]["template"]["spec"]["domain"]["cpu"]["features"] == [{"name": "sve", "policy": "disable"}], \
        "the user's own sve entry stays"
    assert stripped["spec"]["template"]["spec"]["nodeSelector"] == copy_["spec"]["template"]["spec"]["nodeSelector"]
    assert vms.uses(copy_) is None


def test_armcpus_dressing_without_its_record_is_still_taken_off() -> None:
    """Issue 19: with the record annotation deleted, armcpu no longer knew the VM and its nodeSelector
    kept naming the model's label forever. armcpu's own keys name the model: they go; the rest stays."""
    plain = {"metadata": {"name": "v", "namespace": "ns", "uid": "u", "labels": {"app": "web"}},
             "spec": {"template": {"spec": {"nodeSelector": {"disk": "ssd"}, "domain": {}}}}}
    dressed = vms.dress(plain, vms.Desired("a", 2, "f", qemu_cpu="host,SYSREG_X=0"))
    del dressed["metadata"]["annotations"][vms.RECORD]
    assert vms.uses(dressed) == "a"
    gone = vms.plan_for_model("a", vms.Desired("a", 2, "f"), {"matchLabels": {"app": "db"}}, {("ns", "v"): dressed}, {})
    restored = apply(dressed, gone.patches[("ns", "v")])
    assert restored["spec"]["template"]["spec"]["nodeSelector"] == {"disk": "ssd"}
    assert vms.HOOK_SIDECARS not in restored["spec"]["template"]["metadata"].get("annotations", {})
    assert not any(k.startswith("armcpu.io/") for k in restored["spec"]["template"]["metadata"].get("annotations", {}))


def test_a_record_written_without_a_uid_is_not_rewritten_to_add_one() -> None:
    """Dressed at admission (no uid yet) or by an older armcpu: no write just to add the uid."""
    created = {"metadata": {"name": "v", "namespace": "ns", "labels": {"app": "web"}}, "spec": {"template": {"spec": {"domain": {}}}}}
    dressed = vms.dress(created, vms.Desired("a", 1, "f"))
    stored = {**dressed, "metadata": {**dressed["metadata"], "uid": "given-later"}}
    assert vms.patch(stored, vms.Desired("a", 1, "f")) == []
