"""Bad input, tried systematically (hypothesis): every parser of outside data either accepts it or
says what is wrong; none raises anything else, and the reconcile of a hostile object plans an
``Invalid`` status instead of crashing the loop."""

from __future__ import annotations

import copy
import functools
import json
import os
import xml.etree.ElementTree as ET
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from armcpu.profile import Profile, ProfileError, from_dict
from armcpu_k8s import domain_hook
from armcpu_operator.planning import plan, vms
from armcpu_operator.planning import spec as specs
from node_agent import plan as agent_plan
from tests.helpers import CPUS, REPO

# These worlds are register dumps, not kernels: no verdict can arrive, so armcpu's rules decide (tests of the
# verdicts themselves pass kernel_verification="Required").
reconcile = functools.partial(plan.reconcile, kernel_verification="Advisory")

VALID_PROFILE: dict[str, Any] = json.loads((CPUS / "kvm-guest/graviton4-neoverse-v2-host6.18.json").read_text())
VALID_SPEC: dict[str, Any] = {
    "nodeSelector": {"matchLabels": {"pool": "a"}}, "vmSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["x"]}]},
    "base": "neoverse-v1", "features": {"FEAT_SHA3": "Disabled", "FEAT_LSE": "Required"},
    "registers": [{"register": "CTR_EL0", "field": "DminLine", "value": 4}], "identityFrom": "n1", "updatePolicy": "Follow",
    "enforcement": "HookSidecar",
}

# CI: 300 examples per parser; the long mode (scripts/faults-long.sh) runs 10,000.
EXAMPLES = int(os.environ.get("ARMCPU_FUZZ_EXAMPLES", "300"))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=30)
    | st.sampled_from(["0x", "0xffffffffffffffffff", "-0x1", "0x1g", "FEAT_", "ID_AA64ISAR0_EL1", "In", "Disabled", "\u0000", "a" * 300]),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=20), children, max_size=5),
    max_leaves=25,
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for key, value in obj.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            out += _paths(value, (*prefix, index))
    return out


@st.composite
def mutated(draw: st.DrawFn, valid: dict[str, Any]) -> Any:
    """``valid`` with one to three values (or whole subtrees) replaced by arbitrary JSON, or removed."""
    obj = copy.deepcopy(valid)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(obj) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = obj
        for part in path[:-1]:
            parent = parent[part]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    return obj


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(json_values, mutated(VALID_PROFILE)))
def test_profile_parser_accepts_or_names_the_problem(data: Any) -> None:
    try:
        parsed = from_dict(data, "fuzz")
    except ProfileError as exc:
        assert str(exc).startswith("fuzz")
        return
    assert isinstance(parsed, Profile)
    agent_plan.desired_labels(parsed, feature_labels=True)  # whatever was accepted can be labelled


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(json_values, mutated(VALID_PROFILE)))
def test_the_operator_reads_a_hostile_nodecpuprofile_as_a_reason_not_a_crash(data: Any) -> None:
    parsed = plan.parse_profile("node-a", data if isinstance(data, dict) else {"spec": data})
    assert isinstance(parsed, (Profile, str))
    if isinstance(parsed, Profile):
        assert parsed.name == "node-a", "a profile naming another node is read as the node it belongs to"


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.one_of(st.dictionaries(st.text(max_size=15), json_values, max_size=6), mutated(VALID_SPEC)))
def test_spec_parser_and_reconcile_turn_bad_specs_into_an_invalid_condition(spec: Any) -> None:
    request = specs.parse(spec)
    assert all(isinstance(e, str) and e.startswith("spec.") for e in request.errors)
    cpumodel = {"metadata": {"name": "fuzz", "generation": 1}, "spec": spec, "status": None}
    result = reconcile(cpumodel, {"node-a": {"pool": "a"}}, {}, "2026-11-25T00:00:00Z")
    kinds = {c["type"]: c for c in result.status["conditions"]}
    assert (kinds["Invalid"]["status"] == "True") == bool(request.errors)
    if request.errors:
        assert result.label_changes == {} and kinds["Invalid"]["message"] == plan.capped("; ".join(request.errors), plan.MAX_MESSAGE_CHARS)


@settings(max_examples=max(EXAMPLES, 500), deadline=None)
@given(midr=st.integers(0, 2**32 - 1))
def test_any_midr_gives_a_valid_label_value(midr: int) -> None:
    profile = from_dict({**VALID_PROFILE, "midr": f"{midr:#x}"}, "midr")
    value = agent_plan.cpu_label(profile)
    assert len(value) <= 63 and agent_plan._LABEL_VALUE.match(value)


VALID_VM: dict[str, Any] = vms.dress(
    {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
     "metadata": {"name": "v", "namespace": "ns", "uid": "u", "labels": {"app": "x"}, "annotations": {"a": "b"}},
     "spec": {"template": {"metadata": {"annotations": {vms.HOOK_SIDECARS: '[{"image": "x"}]'}},
                           "spec": {"nodeSelector": {"disk": "ssd"}, "domain": {"cpu": {"features": [{"name": "sve", "policy": "require"}]}}}}}},
    vms.Desired("m", 2, "f", disable=("sve", "pauth"), qemu_cpu="host,SYSREG_ID_AA64ISAR0_EL1_SHA3=0"))
DESIRED = vms.Desired("m", 3, "g", disable=("pauth",), qemu_cpu="host,SYSREG_ID_AA64ISAR0_EL1_SHA3=0", qemu_machine="impl-cpu.0.midr=1")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(vm=st.one_of(st.dictionaries(st.text(max_size=10), json_values, max_size=4), mutated(VALID_VM)))
def test_a_hostile_vm_object_is_kept_planned_and_restored_without_a_crash(vm: Any) -> None:
    """Whatever a VM holds (written around KubeVirt's schema, or a record edited by hand), the operator
    keeps it, plans a patch for it or leaves it, and what it would write applies to it."""
    if not isinstance(vm, dict):
        return
    try:
        kept = vms.stored(vm)
    except (AttributeError, TypeError, KeyError):
        return  # not even an object with the shape of a VM: the list-watch skips it (tested with the watch)
    about = kept[1]
    assert about.model is None or isinstance(about.model, str)
    for desired in (DESIRED, None):
        try:
            ops = vms.patch(vm, desired)
        except (AttributeError, TypeError) as exc:
            # only a VM whose subtrees armcpu writes are not objects (the API server refuses those) may fail here
            assert _not_objects(vm), f"{exc!r} on a VM whose subtrees are objects"
            continue
        assert all(op["op"] in ("test", "add", "replace", "remove") for op in ops)


def _not_objects(vm: dict[str, Any]) -> bool:
    node: Any = vm
    for path in (("metadata",), ("metadata", "annotations"), ("spec",), ("spec", "template"), ("spec", "template", "metadata"),
                 ("spec", "template", "metadata", "annotations"), ("spec", "template", "spec"),
                 ("spec", "template", "spec", "nodeSelector"), ("spec", "template", "spec", "domain"),
                 ("spec", "template", "spec", "domain", "cpu")):
        node = vm
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None and not isinstance(node, dict):
            return True
    features = (((((vm.get("spec") or {}).get("template") or {}).get("spec") or {}).get("domain") or {}).get("cpu") or {})
    return isinstance(features, dict) and features.get("features") is not None and not (
        isinstance(features["features"], list) and all(isinstance(f, dict) for f in features["features"]))


DOMAIN = (REPO / "tests/fixtures/domains/kubevirt-arm64.xml").read_text()
VALID_VMI: dict[str, Any] = {"metadata": {"annotations": {domain_hook.CPU_ANNOTATION: "host,SYSREG_ID_AA64ISAR0_EL1_SHA3=0",
                                                          domain_hook.MACHINE_ANNOTATION: "impl-cpu.0.midr=1"}}}


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(vmi=st.one_of(json_values, mutated(VALID_VMI)), domain=st.one_of(st.just(DOMAIN), st.text(max_size=80),
                                                                          st.sampled_from(["<domain/>", "<domain><cpu mode='custom'/></domain>"])))
def test_the_domain_hook_rewrites_or_refuses_with_a_reason(vmi: Any, domain: str) -> None:
    """KubeVirt's sidecar shim hands the hook any VMI and domain: it prints a domain or exits 1 with a
    reason (a guest never starts with a CPU armcpu did not check)."""
    if not isinstance(vmi, dict):
        vmi = {"metadata": vmi}
    try:
        out = domain_hook.rewrite(domain, vmi)
    except (domain_hook.HookError, ET.ParseError) as exc:
        assert str(exc)
        return
    if domain_hook.wanted_args(vmi):
        assert "-cpu" in out and ET.fromstring(out).find("cpu").get("mode") == "host-passthrough"  # type: ignore[union-attr]
    else:
        assert out == domain
