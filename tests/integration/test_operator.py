"""The operator against a real kube-apiserver: pools made of real CPU data converge to the model the
core computes, nodes get and lose labels, pinned models hold, Follow models follow, deletion cleans
up, and a quiet reconcile writes nothing (counted in the API server's audit log)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from armcpu import model as algebra
from armcpu.profile import Profile
from armcpu_k8s.kube import Kube, load_kubeconfig
from armcpu_operator.planning import plan
from armcpu_testing.controlplane import ControlPlane
from tests.operator_harness import OPERATOR_USER, OperatorProcess, add_node, remove_node, running_operator, wait_for

pytestmark = pytest.mark.integration
CPUMODELS = "/apis/armcpu.io/v1alpha1/cpumodels"
G3 = "kvm-guest/graviton3-neoverse-v1-host6.18.json"
G4 = "kvm-guest/graviton4-neoverse-v2-host6.18.json"
G2 = "kvm-guest/graviton2-neoverse-n1-host6.18.json"
G4_OLD = "kvm-guest/graviton4-neoverse-v2-host6.1.json"


@pytest.fixture(scope="module")
def admin(control_plane: ControlPlane) -> Kube:
    return Kube(load_kubeconfig(control_plane.kubeconfig))


@pytest.fixture(scope="module")
def operator(control_plane: ControlPlane) -> Iterator[OperatorProcess]:
    with running_operator(control_plane) as op:
        yield op


def cpumodel(kube: Kube, name: str, spec: dict[str, Any]) -> None:
    kube.create(CPUMODELS, {"apiVersion": "armcpu.io/v1alpha1", "kind": "CpuModel", "metadata": {"name": name}, "spec": spec})


def status(kube: Kube, name: str) -> dict[str, Any]:
    return kube.get(f"{CPUMODELS}/{name}").get("status") or {}


def labelled(kube: Kube, model: str) -> dict[str, str]:
    key = plan.label_key(model)
    return {n["metadata"]["name"]: n["metadata"]["labels"][key] for n in kube.get("/api/v1/nodes")["items"]
            if key in n["metadata"].get("labels", {})}


def converged(kube: Kube, name: str, **expect: Any) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        st = status(kube, name)
        nodes = st.get("nodes") or {}
        ok = all((nodes.get(k) if k in ("selected", "compatible", "incompatible") else st.get(k)) == v for k, v in expect.items())
        return st if ok else None

    result: dict[str, Any] = wait_for(check, 30, f"{name} status {expect}")
    return result


def operator_writes(plane: ControlPlane, mark: int) -> list[tuple[str, str, str]]:
    """Writes by the operator, except renewing its leader Lease."""
    return [(w["verb"], w["objectRef"]["resource"], w["objectRef"].get("name", ""))
            for w in plane.writes_since(mark, user=OPERATOR_USER) if w["objectRef"]["resource"] != "leases"]


def test_pool_of_two_cpu_types_gets_the_combined_model_and_a_weaker_node_is_reported(
        control_plane: ControlPlane, admin: Kube, operator: OperatorProcess) -> None:
    g3 = add_node(admin, "p1-g3", {"pool": "p1"}, G3)
    g4 = add_node(admin, "p1-g4", {"pool": "p1"}, G4)
    assert g3 and g4
    cpumodel(admin, "p1", {"nodeSelector": {"matchLabels": {"pool": "p1"}}})
    st = converged(admin, "p1", compatible=2, selected=2, revision=1)
    expected = algebra.combine([_named(g3, "p1-g3"), _named(g4, "p1-g4")]).model
    assert st["model"]["registers"] == {k: f"0x{v:016x}" for k, v in sorted(expected.registers.items())}
    assert st["fingerprint"] == expected.fingerprint
    assert labelled(admin, "p1") == {"p1-g3": "1", "p1-g4": "1"}
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["reason"] == "ModelReady"

    # a third node that cannot run the pinned model: reported with exactly the core's reasons
    g2 = add_node(admin, "p1-g2", {"pool": "p1"}, G2)
    assert g2
    check = algebra.can_run(_named(g2, "p1-g2"), expected)
    assert not check.ok
    want = [{"name": "p1-g2", "reasons": plan._refusal_reasons(check)}]
    st = wait_for(lambda: (s := status(admin, "p1")).get("incompatibleNodes") == want and s, 30, "p1-g2 reported")
    assert st["nodes"] == {"selected": 3, "compatible": 2, "incompatible": 1} and st["revision"] == 1
    assert st["fingerprint"] == expected.fingerprint, "a weaker node never lowers a pinned model"
    degraded = next(c for c in st["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and "p1-g2" in degraded["message"]
    assert labelled(admin, "p1") == {"p1-g3": "1", "p1-g4": "1"}
    events = admin.get("/api/v1/namespaces/default/events")["items"]
    reasons = {e["reason"] for e in events if e["involvedObject"].get("name") == "p1"}
    assert {"ModelRevised", "NodesIncompatible"} <= reasons

    # removing a node never raises a pinned model
    remove_node(admin, "p1-g3")
    st = converged(admin, "p1", compatible=1, selected=2, incompatible=1, revision=1)
    assert st["fingerprint"] == expected.fingerprint
    assert labelled(admin, "p1") == {"p1-g4": "1"}


def _named(profile: Profile, name: str) -> Profile:
    from dataclasses import replace

    return replace(profile, name=name)


def test_a_reconcile_that_changes_nothing_writes_nothing(control_plane: ControlPlane, admin: Kube, operator: OperatorProcess) -> None:
    add_node(admin, "q-a", {"pool": "quiet"}, G4)
    add_node(admin, "q-b", {"pool": "quiet"}, G3)
    cpumodel(admin, "quiet", {"nodeSelector": {"matchLabels": {"pool": "quiet"}}, "features": {"FEAT_SHA3": "Disabled"}})
    converged(admin, "quiet", compatible=2, selected=2, revision=1)
    wait_for(lambda: labelled(admin, "quiet") == {"q-a": "1", "q-b": "1"}, 10, "labels")
    before = operator.metric("armcpu_operator_reconcile_duration_seconds_count")
    mark = control_plane.audit_mark()
    # events that make the operator reconcile without anything to change
    admin.merge_patch("/api/v1/nodes/q-a", {"metadata": {"labels": {"rack": "r1"}}})
    admin.merge_patch("/api/v1/nodes/q-b", {"metadata": {"labels": {"rack": "r2"}}})
    wait_for(lambda: operator.metric("armcpu_operator_reconcile_duration_seconds_count") >= before + 1, 10, "a reconcile")
    import time

    time.sleep(1.0)
    assert operator_writes(control_plane, mark) == []
    # what changes on a node all the time (status heartbeats) or without meaning to armcpu (annotations) wakes nothing
    reconciles = operator.metric("armcpu_operator_reconcile_duration_seconds_count")
    for beat in range(3):
        stamp = f"2026-01-01T00:00:0{beat}Z"
        admin.merge_patch("/api/v1/nodes/q-a/status", {"status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}]}})
        admin.merge_patch("/api/v1/nodes/q-b", {"metadata": {"annotations": {"example.com/beat": str(beat)}}})
    time.sleep(1.5)
    assert operator.metric("armcpu_operator_reconcile_duration_seconds_count") == reconciles, "a heartbeat woke a reconcile"
    assert operator_writes(control_plane, mark) == []


def test_selector_change_moves_the_labels_and_delete_cleans_up(control_plane: ControlPlane, admin: Kube, operator: OperatorProcess) -> None:
    add_node(admin, "s-a", {"pool": "sa"}, G3)
    add_node(admin, "s-b", {"pool": "sb"}, G4)
    cpumodel(admin, "sel", {"nodeSelector": {"matchLabels": {"pool": "sa"}}})
    converged(admin, "sel", compatible=1, selected=1, revision=1)
    assert labelled(admin, "sel") == {"s-a": "1"}
    admin.merge_patch(f"{CPUMODELS}/sel", {"spec": {"nodeSelector": {"matchLabels": {"pool": "sb"}}}})
    st = converged(admin, "sel", compatible=1, selected=1, revision=2)
    assert st["model"]["members"] == ["s-b"]
    wait_for(lambda: labelled(admin, "sel") == {"s-b": "2"}, 10, "labels moved")

    # a node relabelled out of the pool loses the label
    admin.merge_patch("/api/v1/nodes/s-b", {"metadata": {"labels": {"pool": "elsewhere"}}})
    converged(admin, "sel", compatible=0, selected=0)
    wait_for(lambda: labelled(admin, "sel") == {}, 10, "label removed")
    admin.merge_patch("/api/v1/nodes/s-b", {"metadata": {"labels": {"pool": "sb"}}})
    wait_for(lambda: labelled(admin, "sel") == {"s-b": "2"}, 10, "label back")

    admin.delete(f"{CPUMODELS}/sel")
    wait_for(lambda: admin.get_or_none(f"{CPUMODELS}/sel") is None, 20, "CpuModel gone")
    assert labelled(admin, "sel") == {}
    node = admin.get("/api/v1/nodes/s-b")
    assert not any(k.startswith("kopf") for k in node["metadata"].get("annotations", {})), "no kopf bookkeeping on Nodes"
    assert not node["metadata"].get("finalizers"), "no finalizers on Nodes"


def test_follow_model_follows_the_pool(control_plane: ControlPlane, admin: Kube, operator: OperatorProcess) -> None:
    add_node(admin, "f-a", {"pool": "follow"}, G4)
    cpumodel(admin, "follow", {"nodeSelector": {"matchLabels": {"pool": "follow"}}, "updatePolicy": "Follow"})
    first = converged(admin, "follow", compatible=1, selected=1, revision=1)
    add_node(admin, "f-b", {"pool": "follow"}, G3)
    second = converged(admin, "follow", compatible=2, selected=2, revision=2)
    assert second["fingerprint"] != first["fingerprint"]
    wait_for(lambda: labelled(admin, "follow") == {"f-a": "2", "f-b": "2"}, 10, "labels at revision 2")
    remove_node(admin, "f-b")
    third = converged(admin, "follow", compatible=1, selected=1, revision=3)
    assert third["fingerprint"] == first["fingerprint"], "with the weaker node gone the model rises again"


def test_node_without_profile_is_reported(control_plane: ControlPlane, admin: Kube, operator: OperatorProcess) -> None:
    add_node(admin, "np-a", {"pool": "np"}, G4)
    add_node(admin, "np-b", {"pool": "np"}, None)
    cpumodel(admin, "np", {"nodeSelector": {"matchLabels": {"pool": "np"}}})
    st = converged(admin, "np", compatible=1, selected=2, incompatible=1)
    assert st["incompatibleNodes"] == [{"name": "np-b", "reasons": ["no NodeCpuProfile: is the armcpu agent running on this node?"]}]


def test_required_feature_the_pool_lacks_is_reported_not_applied(control_plane: ControlPlane, admin: Kube,
                                                                 operator: OperatorProcess) -> None:
    add_node(admin, "rq-a", {"pool": "rq"}, G4)
    cpumodel(admin, "rq", {"nodeSelector": {"matchLabels": {"pool": "rq"}}, "features": {"FEAT_SM4": "Required"}})
    st = wait_for(lambda: (s := status(admin, "rq")).get("conditions") and s, 30, "status")
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "NoModel"
    assert "features.FEAT_SM4: FEAT_SM4 is Required but the model does not have it; nodes without it: rq-a" in ready["message"]
    assert labelled(admin, "rq") == {}


def _apply(plane: ControlPlane, doc: str) -> str:
    proc = plane.kubectl("apply", "-f", "-", input=doc, check=False)
    assert proc.returncode != 0, f"expected a rejection, got: {proc.stdout}"
    return proc.stderr


BAD_SPECS = [
    ("features: {FEAT_NOPE: Disabled}", "spec.features.FEAT_NOPE: unknown feature 'FEAT_NOPE'"),
    ("features: {FEAT_AA64: Disabled}", "spec.features.FEAT_AA64: FEAT_AA64 is defined only through other features"),
    ("features: {FEAT_SHA3: Disabled}\n  registers: [{register: ID_AA64ISAR0_EL1, field: SHA3, value: 1}]",
     "spec.registers[0] (ID_AA64ISAR0_EL1.SHA3): ID_AA64ISAR0_EL1.SHA3=0x1 contradicts features.FEAT_SHA3: Disabled"),
    ("registers: [{register: ID_AA64FOO_EL1, field: X, value: 1}]", "spec.registers[0].register: unknown register 'ID_AA64FOO_EL1'"),
    ("registers: [{register: CTR_EL0, field: Nope, value: 1}]", "spec.registers[0].field: CTR_EL0 has no field 'Nope'; its fields:"),
    ("registers: [{register: CTR_EL0, field: DminLine, value: 99}]",
     "spec.registers[0] (CTR_EL0.DminLine): value 0x63 does not fit in 4 bits (0..0xf)"),
    ("base: neoverse-x9", "spec.base: unknown base model 'neoverse-x9'; known: ampereone, neoverse-n1"),
    ("vmSelector: {matchLabels: {'app ': web}}", "spec.vmSelector.matchLabels['app ']: label key 'app ': the name must be 1-63 characters"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_SPECS, ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD_SPECS)])
def test_kubectl_apply_rejects_bad_specs_with_the_field_named(control_plane: ControlPlane, operator: OperatorProcess,
                                                             extra: str, message: str) -> None:
    doc = f"apiVersion: armcpu.io/v1alpha1\nkind: CpuModel\nmetadata: {{name: bad}}\nspec:\n  nodeSelector: {{matchLabels: {{pool: x}}}}\n  {extra}\n"
    err = _apply(control_plane, doc)
    assert 'admission webhook "' in err and message in err, err


@pytest.mark.parametrize(("doc", "message"), [
    ("metadata: {name: empty}\nspec: {nodeSelector: {}}", "spec.nodeSelector must select something"),
    ("metadata: {name: enum}\nspec: {nodeSelector: {matchLabels: {a: b}}, features: {FEAT_SVE: Off}}",
     'supported values: "Disabled", "Required"'),
    ("metadata: {name: lower}\nspec: {nodeSelector: {matchLabels: {a: b}}, features: {sve: Disabled}}", "feature names look like FEAT_SVE"),
    ("metadata: {name: " + "x" * 64 + "}\nspec: {nodeSelector: {matchLabels: {a: b}}}", "a CpuModel name is at most 63 characters"),
    ("metadata: {name: pol}\nspec: {nodeSelector: {matchLabels: {a: b}}, updatePolicy: Sometimes}", 'supported values: "Pinned", "Follow"'),
])
def test_schema_and_cel_reject_what_they_can(control_plane: ControlPlane, doc: str, message: str) -> None:
    err = _apply(control_plane, "apiVersion: armcpu.io/v1alpha1\nkind: CpuModel\n" + doc + "\n")
    assert message in err, err


def test_kubectl_explain_and_get_show_the_api(control_plane: ControlPlane, admin: Kube, operator: OperatorProcess) -> None:
    explained = control_plane.kubectl("explain", "cpumodel.spec.updatePolicy").stdout
    assert "Pinned: once computed the model stays" in explained
    explained = control_plane.kubectl("explain", "cpumodels.status.incompatibleNodes").stdout
    assert "Up to 20 nodes that cannot run the model" in explained
    add_node(admin, "get-a", {"pool": "get"}, G4)
    cpumodel(admin, "get", {"nodeSelector": {"matchLabels": {"pool": "get"}}})
    converged(admin, "get", compatible=1, selected=1, revision=1)
    table = control_plane.kubectl("get", "cpum", "get").stdout.split("\n")
    assert table[0].split() == ["NAME", "COMPATIBLE", "SELECTED", "REVISION", "READY", "MIGRATIONSAFE", "AGE"]
    wait_for(lambda: control_plane.kubectl("get", "cpum", "get").stdout.split("\n")[1].split()[:6] == ["get", "1", "1", "1", "True", "True"],
             20, "one node: Ready and MigrationSafe")
    wide = control_plane.kubectl("get", "cpumodels", "get", "-o", "wide").stdout.split("\n")[0].split()
    assert wide[-3:] == ["POLICY", "FINGERPRINT", "AGE"]
    denied = control_plane.kubectl("apply", "-f", "-", check=False, input=(
        "apiVersion: armcpu.io/v1alpha1\nkind: CpuModel\nmetadata: {name: named}\n"
        "spec: {nodeSelector: {matchLabels: {a: b}}, features: {FEAT_NOPE: Required}}\n")).stderr
    assert 'admission webhook "validate-cpumodel.armcpu.io" denied the request' in denied, denied


def test_invalid_model_created_while_the_webhook_was_down_is_reported(control_plane: ControlPlane, admin: Kube,
                                                                       operator: OperatorProcess) -> None:
    """Remove the webhook (a down webhook is ignored: failurePolicy Ignore); the reconciler says Invalid.
    Runs last in this module: the operator registers its webhook configuration only at start."""
    control_plane.kubectl("delete", "validatingwebhookconfiguration", "armcpu.io")
    if True:
        add_node(admin, "inv-a", {"pool": "inv"}, G4)
        cpumodel(admin, "inv", {"nodeSelector": {"matchLabels": {"pool": "inv"}}, "features": {"FEAT_NOPE": "Disabled"}})
        st = wait_for(lambda: (s := status(admin, "inv")).get("conditions") and s, 30, "status")
        invalid = next(c for c in st["conditions"] if c["type"] == "Invalid")
        assert invalid["status"] == "True"
        assert invalid["message"] == "spec.features.FEAT_NOPE: unknown feature 'FEAT_NOPE'"
        assert st.get("model") is None and labelled(admin, "inv") == {}
        # fixing the spec makes it valid and ready
        admin.merge_patch(f"{CPUMODELS}/inv", {"spec": {"features": {"FEAT_NOPE": None, "FEAT_SHA3": "Disabled"}}})
        converged(admin, "inv", compatible=1, selected=1, revision=1)
