"""One reconcile of one CpuModel, as plain data: a frozen :class:`World` in, a typed :class:`ModelPlan` out.

:func:`plan_model` is the whole decision: the status (``api.CpuModelStatus``, VM counts, running
revisions and ``RestartPending`` included), the node-label changes, the VM patches, the domain hook
ConfigMap changes and the Events. The executor (:mod:`armcpu_operator.executor`) only sends them.
When some writes fail, :meth:`ModelPlan.settle` derives what to write next from what landed (each VM
write carries what it counts before and after), without planning again.
"""

from __future__ import annotations

import json
from collections import ChainMap
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from armcpu.guarantee import STOCK, Vmm
from armcpu_k8s import api
from armcpu_k8s import labels as keys
from armcpu_operator.planning import hooks, plan, vms

VmKey = vms.VmKey
Claim = vms.Claim  # (a World has a field named vms)
Summary = vms.Summary


class VmiDefinition(NamedTuple):
    """What a running VM was started with, from its VMI's annotations (KubeVirt never changes them while it runs)."""

    model: str
    revision: str
    hooked: bool  # started with armcpu's domain hook


@dataclass(frozen=True)
class CpuModel:
    """One CpuModel as the reconciler sees it: its spec, and its status (the operator's own last
    write while the watch has not delivered it yet)."""

    name: str
    generation: int | None
    spec: Mapping[str, Any]
    status: Mapping[str, Any] | None


@dataclass(frozen=True)
class World:
    """Everything a reconcile reads, taken once from the caches (with the writes they have not echoed
    yet). Planning is one synchronous call, so the world cannot change under it."""

    now: str
    nodes: Mapping[str, Mapping[str, str]]  # node -> labels
    profiles: Mapping[str, plan.ParsedProfile]  # node -> its NodeCpuProfile, parsed
    vms: Mapping[VmKey, Mapping[str, Any]]  # every VM, as vms.subset keeps it (a vms.VmTable decodes them when read)
    vmis: Mapping[VmKey, VmiDefinition]  # running VMs armcpu dressed
    claims: Mapping[str, Claim]  # every CpuModel -> the vmSelector(s) it claims VMs by
    hook_configmaps: Mapping[str, str] | None = None  # namespace -> script held; None: not known (no hook changes planned)
    hook_script: str = ""
    reported_ambiguous: frozenset[VmKey] = frozenset()  # VMs an AmbiguousCpuModel Event was already posted for
    reported_unhooked: frozenset[VmKey] = frozenset()  # VMs a HookSidecarSkipped Event was already posted for
    reported_unstartable: frozenset[VmKey] = frozenset()  # VMs a ModelNotStartable Event was already posted for
    kernel_verification: str = plan.REQUIRED
    vmm: Vmm = STOCK  # what the cluster's QEMU can do, as declared (--vmm-sysreg, --vmm-impl-cpu)
    vm_index: Mapping[VmKey, Summary] | None = None  # every VM's summary; None: computed from vms

    def summaries(self) -> Mapping[VmKey, Summary]:
        return self.vm_index if self.vm_index is not None else {key: vms.summary(vm) for key, vm in self.vms.items()}


class Tally(NamedTuple):
    """What one VM adds to its model's counts, in one state of its template."""

    current: int
    domain_rewrite: int
    restart_pending: bool
    hooked: bool  # its namespace needs the hook ConfigMap


@dataclass(frozen=True)
class VmWrite:
    """One VM's JSON patch, kept encoded (a plan may hold 20,000 of them): about 1.5 KiB where the
    patch and the target as dicts take about 6 KiB."""

    patch: bytes  # the JSON patch, as sent
    stored: vms.Stored  # the VM once it lands, as the caches keep it
    before: Tally
    after: Tally

    @property
    def ops(self) -> list[dict[str, Any]]:
        decoded: list[dict[str, Any]] = json.loads(self.patch)
        return decoded

    @property
    def target(self) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(self.stored[0])
        return decoded


def _write(name: str, write: vms.Write, desired: vms.Desired | None, vmi: VmiDefinition | None) -> VmWrite:
    return VmWrite(patch=json.dumps(write.ops, separators=(",", ":")).encode(), stored=(vms.encode(write.target), vms.summary(write.target)),
                   before=_tally(name, write.current, write.mine, desired, vmi), after=_tally(name, write.target, write.mine, desired, vmi))


@dataclass(frozen=True)
class VmEvent:
    vm: Mapping[str, Any]  # the VM the Event is about
    event: plan.Event


@dataclass(frozen=True)
class Restart:
    """What the RestartPending condition is computed from, so it can be recomputed after a failure."""

    old_conditions: tuple[Mapping[str, Any], ...]
    generation: int | None
    now: str


@dataclass(frozen=True)
class ModelPlan:
    name: str
    status: api.CpuModelStatus
    label_changes: Mapping[str, Mapping[str, str | None]]
    vm_writes: Mapping[VmKey, VmWrite]
    events: tuple[plan.Event, ...]  # about the CpuModel
    vm_events: tuple[VmEvent, ...] = ()
    report_ambiguous: frozenset[VmKey] = frozenset()  # now reported
    clear_ambiguous: frozenset[VmKey] = frozenset()  # no longer ambiguous
    report_unhooked: frozenset[VmKey] = frozenset()
    clear_unhooked: frozenset[VmKey] = frozenset()
    report_unstartable: frozenset[VmKey] = frozenset()
    clear_unstartable: frozenset[VmKey] = frozenset()
    hook_changes: hooks.Changes | None = None  # None: the held ConfigMaps are not known
    selected: tuple[str, ...] = ()
    compatible: tuple[str, ...] = ()
    incompatible: tuple[str, ...] = ()
    deferred: frozenset[VmKey] = frozenset()  # VMs that need a write this plan does not carry (MAX_VM_WRITES): the next reconcile's
    # what settle() needs to derive the status and hook changes after failed VM writes
    _changes: Mapping[VmKey, tuple[Tally, Tally]] = field(default_factory=dict)  # every VM write, sent or deferred: (before, after)
    _counts_vms: bool = False
    _pending: tuple[VmKey, ...] = ()
    _restart: Restart | None = None
    _hook_base: frozenset[str] = frozenset()
    _hooks_held: Mapping[str, str] | None = None
    _hook_script: str = ""

    @property
    def revision(self) -> int | None:
        return self.status.revision

    def settle(self, failed: frozenset[VmKey] | set[VmKey]) -> ModelPlan:
        """This plan with the VM writes in ``failed`` (and the deferred ones) not landed: their VMs are
        counted as they still are, and their namespaces keep (or still lack) the hook ConfigMap they
        need now."""
        failed = (frozenset(failed) & frozenset(self.vm_writes)) | self.deferred
        if not failed:
            return self
        writes = {k: w for k, w in self.vm_writes.items() if k not in failed}
        hook_changes = self.hook_changes
        if self._hooks_held is not None:
            hook_changes = hooks.plan(_hook_needs(self._hook_base, self._changes, failed), self._hooks_held, self._hook_script)
        status = self.status
        if self._counts_vms and status.vms is not None:
            dumped = dump(status)
            counts = dumped["vms"]
            for key in failed:  # counted as it still is
                before, after = self._changes[key]
                counts["current"] = counts.get("current", 0) - after.current + before.current
                counts["domainRewrite"] = counts.get("domainRewrite", 0) - after.domain_rewrite + before.domain_rewrite
            pending = sorted({*(k for k in self._pending if k not in failed), *(k for k in failed if self._changes[k][0].restart_pending)})
            counts["restartPending"] = len(pending)
            assert self._restart is not None
            plan.add_restart_condition(dumped, self._restart.old_conditions, pending, self._restart.generation, self._restart.now)
            status = api.CpuModelStatus.model_validate(dumped)
        return ModelPlan(name=self.name, status=status, label_changes=self.label_changes, vm_writes=writes, events=self.events,
                         vm_events=self.vm_events, report_ambiguous=self.report_ambiguous, clear_ambiguous=self.clear_ambiguous,
                         report_unhooked=self.report_unhooked, clear_unhooked=self.clear_unhooked,
                         report_unstartable=self.report_unstartable, clear_unstartable=self.clear_unstartable,
                         hook_changes=hook_changes, selected=self.selected, compatible=self.compatible, incompatible=self.incompatible)


def dump(status: api.CpuModelStatus) -> dict[str, Any]:
    """The status as the API server stores it: only the fields the plan set (an unset field stays
    absent, so a status written by an older operator compares equal and is not rewritten)."""
    return status.model_dump(mode="json", by_alias=True, exclude_unset=True)


def _hook_needs(base: frozenset[str], changes: Mapping[VmKey, tuple[Tally, Tally]], failed: frozenset[VmKey]) -> set[str]:
    return set(base) | {key[0] for key, (before, after) in changes.items() if (before if key in failed else after).hooked}


def _hook_plan(world: World, writes: Mapping[VmKey, tuple[Tally, Tally]]) -> tuple[frozenset[str], hooks.Changes | None]:
    """(the namespaces that need the hook ConfigMap whatever the writes do, the changes once they all land);
    no changes when the held ConfigMaps are not known."""
    if world.hook_configmaps is None:
        return frozenset(), None
    hooked_vms = [key for key, about in world.summaries().items() if about.hooked and key not in writes]
    base = frozenset(ns for ns, _ in [*hooked_vms, *(key for key, d in world.vmis.items() if d.hooked)])
    return base, hooks.plan(_hook_needs(base, writes, frozenset()), world.hook_configmaps, world.hook_script)


def _tally(model: str, vm: Mapping[str, Any], mine: bool, desired: vms.Desired | None, vmi: VmiDefinition | None) -> Tally:
    current = int(mine and desired is not None and vms.current_revision(vm) == str(desired.revision))
    rewrite = int(mine and vms.uses_hook(vm))
    pending = vmi is not None and vmi.model == model and vms.template_revision_of(model, vm) != vmi.revision
    return Tally(current, rewrite, pending, vms.uses_hook(vm))


MAX_VM_WRITES = 4000  # VM writes one plan carries: the rest are deferred to the next reconcile, so a plan's memory is bounded


def plan_model(world: World, cpumodel: CpuModel, max_vm_writes: int = MAX_VM_WRITES) -> ModelPlan:
    """Everything one reconcile of ``cpumodel`` writes, decided from ``world`` alone. At most
    ``max_vm_writes`` VM patches are carried; the VMs beyond are ``deferred`` (the reconciler runs
    again at once) and counted as they are until their patch lands."""
    name = cpumodel.name
    mine_running = {key: d.revision for key, d in world.vmis.items() if d.model == name}
    running: dict[str, int] = {}
    for revision in mine_running.values():
        running[revision] = running.get(revision, 0) + 1
    observed = dict(cpumodel.status) if cpumodel.status is not None else None
    obj = {"metadata": {"name": name, "generation": cpumodel.generation}, "spec": dict(cpumodel.spec), "status": observed}
    nodes = plan.reconcile(obj, world.nodes, world.profiles, world.now, running=running, kernel_verification=world.kernel_verification,
                           vmm=world.vmm)
    status = nodes.status
    writes: dict[VmKey, VmWrite] = {}
    changes: dict[VmKey, tuple[Tally, Tally]] = {}
    deferred: set[VmKey] = set()
    vm_events: list[VmEvent] = []
    report: set[VmKey] = set()
    clear: set[VmKey] = set()
    report_unhooked: set[VmKey] = set()
    clear_unhooked: set[VmKey] = set()
    report_unstartable: set[VmKey] = set()
    clear_unstartable: set[VmKey] = set()
    pending: list[VmKey] = []
    counts_vms = False
    restart = Restart(tuple((observed or {}).get("conditions") or ()), cpumodel.generation, world.now)
    targets: dict[VmKey, Mapping[str, Any]] = {}
    if nodes.applied is not None:  # None: the spec in effect is unknown (an invalid spec over a status older than appliedSpec), VMs stay
        applied = nodes.applied
        computed = api.CpuModelStatus.model_validate(status)
        desired = vms.desired_of(name, computed, applied.enforcement) if computed.model is not None else None
        live = [e.revision for e in computed.liveRevisions]
        vm_selector = dict(applied.vm_selector) if applied.vm_selector is not None else None
        scan = vms.Scan()
        for write in vms.walk(name, desired, vm_selector, world.vms, world.claims, scan, running=mine_running, live=live,
                              index=world.summaries()):
            vmi = world.vmis.get(write.key)
            if len(writes) < max_vm_writes:
                writes[write.key] = _write(name, write, desired, vmi)
                changes[write.key] = (writes[write.key].before, writes[write.key].after)
            else:
                deferred.add(write.key)
                changes[write.key] = (_tally(name, write.current, write.mine, desired, vmi),
                                      _tally(name, write.target, write.mine, desired, vmi))
            if vmi is not None:
                targets[write.key] = write.target  # the running VMs' templates, to tell which wait for a restart
        result = scan
        after = ChainMap(targets, world.vms)  # type: ignore[arg-type]
        running_counts, pending = vms.running_revisions(name, world.vmis, after, desired)
        counts_vms = status.get("model") is not None or bool((observed or {}).get("vms"))
        if counts_vms:
            status["vms"] = {**result.counts, "running": running_counts, "restartPending": len(pending)}
            plan.add_restart_condition(status, restart.old_conditions, pending, restart.generation, restart.now)
        for key, models in result.ambiguous.items():
            if key not in world.reported_ambiguous:
                report.add(key)
                vm_events.append(VmEvent(world.vms[key], plan.Event(
                    "Warning", "AmbiguousCpuModel",
                    f"selected by CpuModels {', '.join(models)}: armcpu leaves this VM unchanged until one selector drops it")))
        clear = (result.selected - set(result.ambiguous)) & set(world.reported_ambiguous)
        for key in sorted(result.unhooked - world.reported_unhooked):
            report_unhooked.add(key)
            vm_events.append(VmEvent(world.vms[key], plan.Event(
                "Warning", "HookSidecarSkipped",
                f"CpuModel {name} has enforcement HookSidecar, but this VM's template annotation {vms.HOOK_SIDECARS} is not a JSON "
                "list, so armcpu cannot add its domain hook: the VM is pinned to compatible nodes and starts host-passthrough, "
                "without the model's registers. Fix or remove the annotation.")))
        clear_unhooked = set(world.reported_unhooked) & (result.selected - result.unhooked)
        promise = status.get("guarantee") or {}
        unstartable = set(result.selected) if promise.get("reason") == "VmmLacksSysreg" else set()
        for key in sorted(unstartable - world.reported_unstartable):
            report_unstartable.add(key)
            vm_events.append(VmEvent(world.vms[key], plan.Event(
                "Warning", "ModelNotStartable",
                f"CpuModel {name} has enforcement HookSidecar and sets ID-register fields, which needs a QEMU with SYSREG_* "
                "properties; the operator was not told the cluster's QEMU has them (--vmm-sysreg), and no released QEMU does "
                "(QEMU 10.0: Property '...SYSREG_...' not found). No node may boot this VM, so its virt-launcher pod stays "
                "Pending instead of QEMU failing at every start. Use enforcement Scheduling, or a QEMU with the properties.")))
        clear_unstartable = set(world.reported_unstartable) & (set(result.selected) - unstartable)
    hook_base, hook_changes = _hook_plan(world, changes)
    return ModelPlan(
        name=name, status=api.CpuModelStatus.model_validate(status), label_changes=nodes.label_changes, vm_writes=writes,
        deferred=frozenset(deferred), _changes=changes,
        events=tuple(nodes.events), vm_events=tuple(vm_events), report_ambiguous=frozenset(report), clear_ambiguous=frozenset(clear),
        report_unhooked=frozenset(report_unhooked), clear_unhooked=frozenset(clear_unhooked),
        report_unstartable=frozenset(report_unstartable), clear_unstartable=frozenset(clear_unstartable),
        hook_changes=hook_changes, selected=nodes.selected, compatible=nodes.compatible, incompatible=nodes.incompatible,
        _counts_vms=counts_vms, _pending=tuple(pending), _restart=restart, _hook_base=hook_base,
        _hooks_held=dict(world.hook_configmaps) if world.hook_configmaps is not None else None, _hook_script=world.hook_script,
    )


def orphaned_models(world: World, existing: Collection[str]) -> list[str]:
    """CpuModels that left something behind: their labels on nodes, or their dressing on VMs, while no
    CpuModel of that name exists. That is what a deletion leaves when its finalizer was removed by
    hand (a common remedy for a stuck deletion), or while no operator ran: its removal never ran."""
    named = {model for labels in world.nodes.values() for key in labels if (model := keys.model_of_key(key)) is not None}
    named |= {about.model for about in world.summaries().values() if about.model is not None}
    return sorted(named - set(existing))


def plan_removal(world: World, name: str) -> ModelPlan:
    """A CpuModel going away: its labels leave every node, every VM it patched is restored, and the
    hook ConfigMaps no VM needs any more go."""
    writes = {write.key: _write(name, write, None, None)
              for write in vms.walk(name, None, None, world.vms, {}, vms.Scan(), index=world.summaries())}
    changes = {key: (w.before, w.after) for key, w in writes.items()}
    hook_base, hook_changes = _hook_plan(world, changes)
    return ModelPlan(name=name, status=api.CpuModelStatus.model_validate({}), label_changes=plan.removal(name, world.nodes),
                     vm_writes=writes, events=(), hook_changes=hook_changes, _hook_base=hook_base, _changes=changes,
                     _hooks_held=dict(world.hook_configmaps) if world.hook_configmaps is not None else None, _hook_script=world.hook_script)

