"""The operator's whole decision for one CpuModel (``plan_model``): typed status, VM writes, hook
ConfigMap changes, Events; and what is written after some VM writes fail (``settle``), checked
against a fresh plan of the world those failures leave. Real CPU data, no cluster."""

from __future__ import annotations

import itertools
from dataclasses import replace
from types import MappingProxyType
from typing import Any

import jsonpatch
import pytest

from armcpu.guarantee import STOCK, Vmm
from armcpu.profile import to_dict
from armcpu_k8s import api, labels, selectors
from armcpu_operator.planning import admission, hooks, plan, vms
from armcpu_operator.planning.world import CpuModel, ModelPlan, VmiDefinition, World, dump, plan_model, plan_removal
from armcpu_testing.fixtures import host_618_profile

NOW = "2026-12-01T10:00:00Z"
SCRIPT = "#!/usr/bin/env python3\n# the hook\n"
G3, G4 = "kvm-guest/graviton3-neoverse-v1-host6.18.json", "kvm-guest/graviton4-neoverse-v2-host6.18.json"
SPEC = {"nodeSelector": {"matchLabels": {"pool": "p"}}, "vmSelector": {"matchLabels": {"app": "web"}}, "enforcement": "HookSidecar"}


def vm(ns: str, name: str, app: str = "web") -> dict[str, Any]:
    return vms.subset({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                       "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "labels": {"app": app}},
                       "spec": {"template": {"spec": {"domain": {"cpu": {"model": "host-passthrough"}}}}}})


CAPABLE = Vmm(sysreg=True, impl_cpu=True)  # these worlds test the hook's mechanics, so their QEMU could run it


def make_world(vm_objects: dict[tuple[str, str], dict[str, Any]], *, vmis: dict[tuple[str, str], VmiDefinition] | None = None,
               held: dict[str, str] | None = None, claims: dict[str, Any] | None = None, vmm: Vmm = CAPABLE) -> World:
    profiles = {name: plan.parse_profile(name, {**to_dict(replace(host_618_profile(cpu), name=name))})
                for name, cpu in (("a-g3", G3), ("b-g4", G4))}
    return World(now=NOW, nodes=MappingProxyType({"a-g3": {"pool": "p"}, "b-g4": {"pool": "p"}}), profiles=MappingProxyType(profiles),
                 vms=MappingProxyType(vm_objects), vmis=MappingProxyType(vmis or {}),
                 claims=MappingProxyType(claims if claims is not None else {"m": [SPEC["vmSelector"]]}),
                 hook_configmaps=MappingProxyType(held if held is not None else {}), hook_script=SCRIPT, kernel_verification=plan.ADVISORY,
                 vmm=vmm)


def landed(world: World, planned: ModelPlan, only: set[tuple[str, str]] | None = None) -> World:
    """``world`` after the plan's writes landed (all, or ``only`` those VMs): labels and VMs as the API server would hold them."""
    nodes = {n: labels.patched(dict(v), planned.label_changes.get(n, {})) for n, v in world.nodes.items()}
    after = dict(world.vms)
    for key, write in planned.vm_writes.items():
        if only is None or key in only:
            after[key] = jsonpatch.apply_patch(dict(world.vms[key]), [dict(op) for op in write.ops])
            assert vms.roots_equal(after[key], write.target), "the patch reaches the planned target"
    return replace(world, nodes=MappingProxyType(nodes), vms=MappingProxyType(after))


def converge(world: World, model: CpuModel) -> tuple[World, CpuModel, ModelPlan]:
    planned = plan_model(world, model)
    return landed(world, planned), replace(model, status=dump(planned.status)), planned


def fresh(spec: dict[str, Any] | None = None) -> CpuModel:
    return CpuModel(name="m", generation=1, spec=spec or SPEC, status=None)


def test_the_plan_is_the_whole_typed_status_and_a_converged_world_plans_no_write() -> None:
    world = make_world({("web", "v1"): vm("web", "v1"), ("web", "v2"): vm("web", "v2"), ("db", "d1"): vm("db", "d1", app="db")})
    world, model, first = converge(world, fresh())
    assert isinstance(first.status, api.CpuModelStatus) and first.status.revision == 1
    assert first.status.vms is not None and (first.status.vms.selected, first.status.vms.current) == (2, 2)
    assert set(first.vm_writes) == {("web", "v1"), ("web", "v2")}, "the db VM is not selected"
    assert first.label_changes, "the nodes get the model's label"
    assert first.hook_changes is not None and first.hook_changes.create == ("web",), "HookSidecar: the namespace gets the hook ConfigMap"
    restart = next(c for c in first.status.conditions if c.type == "RestartPending")
    assert restart.status == "False"
    world = replace(world, hook_configmaps=MappingProxyType({"web": SCRIPT}))
    again = plan_model(world, model)
    assert dump(again.status) == model.status and not again.vm_writes and not again.label_changes and not again.events
    assert again.hook_changes is not None and not (again.hook_changes.create or again.hook_changes.update or again.hook_changes.delete)


def test_the_status_dump_keeps_only_what_the_plan_set() -> None:
    """An older operator's status (no appliedSpec, no pending counts) is re-read as written: dumping
    must not add defaulted fields, or every upgrade would rewrite every status."""
    planned = plan_model(make_world({}), fresh())
    out = dump(planned.status)
    assert "pending" not in out["nodes"] and "pendingNodes" not in out
    assert api.CpuModelStatus.model_validate(out) == planned.status


def counted(world: World, revision: int) -> tuple[int, int, int, list[str]]:
    """(current, domainRewrite, restartPending, the pending VMs) of model m, counted straight from the VMs of ``world``."""
    mine = [v for v in world.vms.values() if selectors.matches(SPEC["vmSelector"], v["metadata"].get("labels") or {})]
    _, pending = vms.running_revisions("m", world.vmis, world.vms, None)
    return (sum(vms.current_revision(v) == str(revision) for v in mine), sum(vms.uses_hook(v) for v in mine), len(pending),
            ["/".join(k) for k in pending])


@pytest.mark.parametrize("failed_count", [0, 1, 2, 3])
def test_what_is_written_after_failed_vm_writes_describes_what_landed(failed_count: int) -> None:
    """settle() derives the counts, RestartPending and the hook ConfigMaps from the writes that
    landed; each is checked against the world those writes leave, counted straight from its VMs."""
    keys = [("web", "v1"), ("web", "v2"), ("shop", "s1")]
    world = make_world({k: vm(*k) for k in keys}, vmis={("web", "v1"): VmiDefinition("m", "1", True)})
    world, model, _ = converge(world, fresh())  # revision 1 everywhere
    world = replace(world, hook_configmaps=MappingProxyType({"web": SCRIPT, "shop": SCRIPT}))
    changed = replace(model, generation=2, spec={**SPEC, "enforcement": "Scheduling"})  # a spec change: revision 2, no hook
    planned = plan_model(world, changed)
    assert planned.status.revision == 2 and set(planned.vm_writes) == set(keys)
    for failed in itertools.combinations(keys, failed_count):
        settled = planned.settle(set(failed))
        partial = landed(world, planned, only=set(keys) - set(failed))
        assert settled.status.vms is not None
        current, rewrite, restart_pending, pending = counted(partial, 2)
        assert (settled.status.vms.current, settled.status.vms.domainRewrite, settled.status.vms.restartPending) == (
            current, rewrite, restart_pending), f"failed {failed}"
        restart = next(c for c in settled.status.conditions if c.type == "RestartPending")
        assert (restart.status == "True") == bool(pending) and all(name in restart.message for name in pending), f"failed {failed}"
        needed = hooks.needed_namespaces(partial.vms, [k for k, d in partial.vmis.items() if d.hooked])
        assert settled.hook_changes == hooks.plan(needed, {"web": SCRIPT, "shop": SCRIPT}, SCRIPT), f"failed {failed}"
        assert set(settled.vm_writes) == set(keys) - set(failed)
    everything = planned.settle(set())
    assert everything.status.vms is not None and everything.status.vms.restartPending == 1 and everything.status.vms.running == {"1": 1}
    assert everything.hook_changes == hooks.Changes(delete=("shop",)), "the running VM started with the hook keeps web's ConfigMap"


def test_a_vm_two_models_claim_is_left_alone_and_reported_once() -> None:
    world = make_world({("web", "v1"): vm("web", "v1")}, claims={"m": [SPEC["vmSelector"]], "other": [{"matchLabels": {"app": "web"}}]})
    planned = plan_model(world, fresh())
    assert not planned.vm_writes and planned.report_ambiguous == {("web", "v1")}
    assert [e.event.reason for e in planned.vm_events] == ["AmbiguousCpuModel"]
    again = plan_model(replace(world, reported_ambiguous=frozenset(planned.report_ambiguous)), fresh())
    assert not again.vm_events, "reported once"
    alone = plan_model(replace(world, claims=MappingProxyType({"m": [SPEC["vmSelector"]]}), reported_ambiguous=frozenset({("web", "v1")})),
                       fresh())
    assert alone.clear_ambiguous == {("web", "v1")} and ("web", "v1") in alone.vm_writes


def test_removal_restores_every_vm_and_drops_the_hook_configmaps_no_vm_needs() -> None:
    world = make_world({("web", "v1"): vm("web", "v1"), ("shop", "s1"): vm("shop", "s1")},
                       vmis={("shop", "s1"): VmiDefinition("m", "1", True)})
    world, _, _ = converge(world, fresh())
    world = replace(world, hook_configmaps=MappingProxyType({"web": SCRIPT, "shop": SCRIPT}))
    removal = plan_removal(world, "m")
    restored = landed(world, removal)
    assert all(vms.uses(v) is None for v in restored.vms.values())
    assert restored.vms == {k: vm(*k) for k in (("web", "v1"), ("shop", "s1"))}, "byte for byte"
    assert removal.hook_changes is not None and removal.hook_changes.delete == ("web",), "a running VM started with the hook keeps its namespace's"
    assert all(not k.startswith("cpumodel.armcpu.io/") for n in restored.nodes.values() for k in n)


def test_admission_dresses_a_vm_like_the_reconciler_does() -> None:
    world, model, _ = converge(make_world({("web", "v1"): vm("web", "v1")}), fresh())
    status = dict(model.status or {})
    found = admission.definition("m", SPEC, status, deleting=False)
    assert found is not None
    new = vm("web", "v2")
    dressed = admission.dress_at_admission(new, {"m": admission.vm_claims(SPEC, status, False)}, {"m": found}, {})
    reconciled = plan_model(replace(world, vms=MappingProxyType({**world.vms, ("web", "v2"): new})), model)
    assert dressed is not None and vms.roots_equal(dressed, reconciled.vm_writes[("web", "v2")].target)
    assert admission.dress_at_admission(vm("web", "v3", app="db"), {"m": admission.vm_claims(SPEC, status, False)}, {"m": found}, {}) is None
    assert admission.definition("m", SPEC, status, deleting=True) is None and admission.vm_claims(SPEC, status, True) is None


def test_a_plan_carries_at_most_its_share_of_vm_writes_and_counts_the_rest_as_they_are() -> None:
    """Memory per reconcile is bounded: VMs beyond max_vm_writes are deferred to the next reconcile
    (the executor runs it at once), and until then counted as they are, not as they will be."""
    keys = [("web", f"v{i}") for i in range(5)]
    world = make_world({k: vm(*k) for k in keys})
    model = fresh()
    rounds = 0
    while True:
        planned = plan_model(world, model, max_vm_writes=2)
        settled = planned.settle(set())
        if not planned.vm_writes:
            break
        rounds += 1
        assert len(planned.vm_writes) <= 2 and len(planned.deferred) == 5 - 2 * (rounds - 1) - len(planned.vm_writes)
        world = landed(world, planned)
        model = replace(model, status=dump(settled.status))
        assert settled.status.vms is not None
        assert settled.status.vms.current == counted(world, 1)[0], "the status counts what landed, never the deferred writes"
        assert settled.hook_changes == hooks.plan(hooks.needed_namespaces(world.vms, []), {}, SCRIPT)
    assert rounds == 3 and not planned.deferred
    assert settled.status.vms is not None and settled.status.vms.current == 5


def test_a_vm_whose_hook_sidecars_annotation_cannot_take_the_hook_is_reported_once() -> None:
    broken = vm("web", "v1")
    broken["spec"]["template"]["metadata"] = {"annotations": {vms.HOOK_SIDECARS: "{not a list"}}
    world = make_world({("web", "v1"): broken})
    planned = plan_model(world, fresh())
    assert [e.event.reason for e in planned.vm_events] == ["HookSidecarSkipped"] and planned.report_unhooked == {("web", "v1")}
    assert vms.HOOK_SIDECARS in planned.vm_events[0].event.message
    assert not vms.uses_hook(planned.vm_writes[("web", "v1")].target), "still pinned, without the hook"
    reported = replace(world, reported_unhooked=frozenset(planned.report_unhooked))
    assert not plan_model(reported, fresh()).vm_events, "reported once"
    fixed = replace(reported, vms=MappingProxyType({("web", "v1"): vm("web", "v1")}))
    assert plan_model(fixed, fresh()).clear_unhooked == {("web", "v1")}
    scheduling = plan_model(world, fresh({**SPEC, "enforcement": "Scheduling"}))
    assert not scheduling.vm_events, "no hook wanted, nothing to report"


def test_a_vm_whose_model_a_released_qemu_cannot_start_is_told_once() -> None:
    """HookSidecar on a pool that needs SYSREG properties, with the QEMU every release has: the VM gets
    a Warning Event saying why its pod will stay Pending, once, and it is cleared once the QEMU can."""
    world = make_world({("web", "v1"): vm("web", "v1")}, vmm=STOCK)
    planned = plan_model(world, fresh())
    told = [e.event for e in planned.vm_events]
    assert [e.reason for e in told] == ["ModelNotStartable"] and "SYSREG" in told[0].message and "Pending" in told[0].message
    assert planned.report_unstartable == {("web", "v1")}
    reported = replace(world, reported_unstartable=frozenset(planned.report_unstartable))
    assert not plan_model(reported, fresh()).vm_events, "told once"
    capable = plan_model(replace(reported, vmm=CAPABLE), fresh())
    assert not capable.vm_events and capable.clear_unstartable == {("web", "v1")}
