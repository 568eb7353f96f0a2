"""What a CpuModel guarantees about migration, on the stack a cluster really runs.

A model is only as good as the component that enforces it. Two enforcement modes exist:

- ``Scheduling``: the VM runs ``host-passthrough`` (all KubeVirt offers on arm64), so the guest sees
  the registers of the node it *booted* on, with libvirt's ``sve``/``pauth`` disables applied. On a
  migration, stock QEMU writes those registers into the destination's vCPU, never enabling
  KVM_CAP_ARM_WRITABLE_IMP_ID_REGS (cap 239): the destination's KVM must accept them as they are
  (measured: docs/truth.md, the stock-QEMU guest moves). So the pool is safe only if VMs *boot* on
  nodes whose own view equals the model and *migrate* only to nodes that accept that view. Where no
  node's view equals the model, scheduling cannot make the pool safe.
- ``HookSidecar``: QEMU is started with the model's per-field ``SYSREG_*`` properties (and
  ``impl-cpu`` identities). That holds only with a QEMU that has them, which no released QEMU has in
  December 2026 (the VMM abilities are declared by the cluster, default: none).

Both modes then need every pair of nodes a guest may travel between to pass
:func:`armcpu.migration.can_move`: the destination's KVM accepts what the guest carries, one kernel
series, equal guest views. The answer names nodes, so that the operator can label and place them and
the CLI can say it before anything is applied.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from armcpu import catalog, kvm, migration
from armcpu.model import Model, can_run, view_key
from armcpu.profile import Profile

SCHEDULING, HOOK_SIDECAR = "Scheduling", "HookSidecar"
MODES = (SCHEDULING, HOOK_SIDECAR)
MAX_GROUPS_NAMED = 4
MAX_NODES_NAMED = 3


@dataclass(frozen=True)
class Vmm:
    """What the cluster's QEMU can do, as its operator declares it (nothing here can probe it: QEMU
    runs inside KubeVirt's virt-launcher image). The default is every released QEMU's."""

    sysreg: bool = False  # -cpu host,SYSREG_<REG>_<FIELD>=<value> (QEMU's customizable host model, unmerged)
    impl_cpu: bool = False  # -M virt,impl-cpu.N.{midr,revidr,aidr} plus cap 239 (unmerged RFC)


@dataclass(frozen=True)
class Guarantee:
    """Which migrations of a pool's VMs are safe under one enforcement mode and one VMM.

    ``start_on``: nodes a VM may boot on; ``migrate_to``: nodes a running VM may move to, from any of
    ``start_on`` and from each other. Empty ``migrate_to`` with ``safe`` False: no migration is safe.
    """

    mode: str
    safe: bool
    reason: str  # CamelCase, for a condition
    message: str  # what holds and, when unsafe, what would fix it
    start_on: tuple[str, ...]
    migrate_to: tuple[str, ...]

    @property
    def directional(self) -> bool:
        """Some nodes only receive migrations (their own view is above the model)."""
        return self.safe and set(self.migrate_to) != set(self.start_on)


def off_groups(model: Model) -> tuple[str, ...]:
    """vCPU feature groups (``pauth``, ``sve``, ``pmu``) the model switches off entirely."""
    return tuple(g for g in kvm.VCPU_FEATURE_FIELDS if kvm.vcpu_group_is_off(model.value, g))


def passthrough_off(model: Model) -> tuple[str, ...]:
    """The groups a ``host-passthrough`` guest gets switched off: only those libvirt, and so KubeVirt,
    can say (``sve``, ``pauth``); a model with the PMU off needs a VMM that sets ``pmu=off``."""
    return tuple(g for g in off_groups(model) if g in kvm.LIBVIRT_GROUPS)


def has_pmu(node: Profile) -> bool:
    """Whether KubeVirt's vCPU on ``node`` has a PMU: it asks for one wherever the host has one."""
    return not kvm.vcpu_group_is_off(node.value, "pmu")


def passthrough_view(node: Profile, groups: Collection[str]) -> dict[str, int]:
    """What a ``host-passthrough`` guest gets on ``node`` with the vCPU feature ``groups`` switched
    off (libvirt's ``<feature policy='disable'>``: KVM then reports 0 in their fields)."""
    regs = dict(node.registers)
    for group in groups:
        for reg, name in kvm.VCPU_FEATURE_FIELDS[group]:
            if reg in regs:
                regs[reg] = catalog.field(reg, name).insert(regs[reg], 0)
    return regs


def presents_model(node: Profile, model: Model) -> bool:
    """Whether a ``host-passthrough`` guest booted on ``node`` sees exactly the model (Scheduling's
    only way to give a guest the model)."""
    view = passthrough_view(node, passthrough_off(model))
    return all(view.get(name, 0) == value for name, value in model.registers.items())


def needs(model: Model, rendered_cpu: Sequence[str], rendered_machine: Sequence[str]) -> tuple[str, ...]:
    """The VMM abilities HookSidecar needs for this rendering: ``sysreg`` for any ``SYSREG_*`` property,
    ``impl-cpu`` when the pool's identities differ."""
    out = []
    if any(p.startswith("SYSREG_") for p in rendered_cpu):
        out.append("sysreg")
    if rendered_machine or len(model.targets) > 1:
        out.append("impl-cpu")
    return tuple(out)


def destination_for(node: Profile, mode: str, vmm: Vmm) -> Profile:
    """A node as the cluster's QEMU uses it: without ``impl-cpu`` support QEMU never enables cap 239."""
    if mode == HOOK_SIDECAR and vmm.impl_cpu:
        return node
    return migration.stock_destination(node)


def _kind(node: Profile) -> tuple[object, ...]:
    return (view_key(node), migration.kernel_series(node.kernel))


def _named(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_NODES_NAMED])
    return shown + (f" and {len(names) - MAX_NODES_NAMED} more" if len(names) > MAX_NODES_NAMED else "")


def split_by_view(nodes: Sequence[Profile], model: Model) -> list[list[str]]:
    """Groups of nodes whose passthrough views and kernel series are equal: each group alone is a
    pool Scheduling makes safe (its model is its members' own view)."""
    groups: dict[tuple[object, ...], list[str]] = {}
    off = passthrough_off(model)
    seen: dict[int, tuple[object, ...]] = {}  # equal profiles often share one register mapping (the operator's parser)
    for node in nodes:
        key = seen.get(id(node.registers))
        if key is None:
            key = seen[id(node.registers)] = tuple(sorted(passthrough_view(node, off).items()))
        groups.setdefault((key, migration.kernel_series(node.kernel)), []).append(node.name)
    return sorted(groups.values(), key=lambda g: (-len(g), g))


def _split_text(nodes: Sequence[Profile], model: Model) -> str:
    parts = split_by_view(nodes, model)
    shown = " | ".join("{" + _named(g) + "}" for g in parts[:MAX_GROUPS_NAMED])
    more = f" | {len(parts) - MAX_GROUPS_NAMED} more groups" if len(parts) > MAX_GROUPS_NAMED else ""
    return f"split the pool into pools of equal views ({shown}{more})"


HOOK_FIX = ("or use enforcement HookSidecar with a QEMU that has the SYSREG properties and impl-cpu "
            "(declared with --vmm-sysreg/--vmm-impl-cpu; no released QEMU has them)")


STOCK = Vmm()


def guarantee(members: Sequence[Profile], model: Model, *, mode: str, vmm: Vmm = STOCK,
              usable: Collection[str] | None = None, rendered_cpu: Sequence[str] = (),
              rendered_machine: Sequence[str] = ()) -> Guarantee:
    """The guarantee for ``model`` over ``members`` under ``mode`` and ``vmm``.

    ``usable``: the members that can run the model at all (the operator's compatible nodes, which
    also waited for their kernel's verdict); default: those ``can_run`` accepts. ``rendered_*``: the
    model's QEMU rendering (what HookSidecar would pass).
    """
    if mode not in MODES:
        raise ValueError(f"enforcement {mode!r}: expected one of {', '.join(MODES)}")
    if usable is not None:
        allowed = set(usable)
        pool = [m for m in members if m.name in allowed]
    else:
        pool = [m for m in members if can_run(m, model).ok]
    kinds = {m.name: _kind(m) for m in pool}  # computed once per node: it sorts every register
    names = tuple(sorted(m.name for m in pool))
    if not pool:
        return Guarantee(mode, False, "NoUsableNodes", "no selected node can run the model", (), ())
    if mode == HOOK_SIDECAR:
        missing = [n for n in needs(model, rendered_cpu, rendered_machine)
                   if not (vmm.sysreg if n == "sysreg" else vmm.impl_cpu)]
        if "sysreg" in missing:
            return Guarantee(mode, False, "VmmLacksSysreg",
                             "the model sets ID-register fields, which needs a QEMU with SYSREG_* properties; the declared "
                             "QEMU has none (no released QEMU does), so QEMU refuses to start these VMs: use enforcement "
                             "Scheduling on a pool it can make safe, or declare a SYSREG-capable QEMU (--vmm-sysreg)", (), ())
        if "impl-cpu" in missing:
            return Guarantee(mode, False, "VmmLacksImplCpu",
                             "the pool's nodes differ in MIDR/REVIDR/AIDR, which a guest can keep across a migration only "
                             "with QEMU's impl-cpu and cap 239; the declared QEMU lacks them: split the pool by identity, "
                             "or declare such a QEMU (--vmm-impl-cpu)", names, ())
        if len(model.targets) > 1:
            lacking = sorted(m.name for m in pool if m.kvm.writable_imp_id_regs is not True)
            if lacking:
                return Guarantee(mode, False, "NodesLackCap239",
                                 f"the pool's identities differ and {len(lacking)} node(s) cannot set MIDR/REVIDR/AIDR "
                                 f"(KVM_CAP_ARM_WRITABLE_IMP_ID_REGS, Linux 6.15+): {_named(lacking)}", names, ())
        start = list(pool)
    else:
        presents: dict[tuple[object, ...], bool] = {}  # once per kind of node, not once per node
        for m in pool:
            kind = kinds[m.name]
            if kind not in presents:
                presents[kind] = presents_model(m, model)
        start = [m for m in pool if presents[kinds[m.name]]]
        if not start:
            return Guarantee(mode, False, "NoNodePresentsModel",
                             "with enforcement Scheduling a VM runs host-passthrough and carries its boot node's registers, "
                             "and no selected node's own view equals the model, so a migration to a node with a lower view "
                             f"fails: {_split_text(pool, model)}, {HOOK_FIX}", names, ())
    return _closure(pool, kinds, start, model, mode, vmm)


def _closure(pool: Sequence[Profile], kind_of: Mapping[str, tuple[object, ...]], start: Sequence[Profile], model: Model, mode: str,
             vmm: Vmm) -> Guarantee:
    """The largest set of nodes around ``start`` between which every move is accepted, computed on
    node kinds (a large pool has a few kinds of node, and a move depends only on the kinds)."""
    kinds: dict[tuple[object, ...], list[Profile]] = {}
    for node in pool:
        kinds.setdefault(kind_of[node.name], []).append(node)
    first = {k: ns[0] for k, ns in kinds.items()}
    start_kinds = list(dict.fromkeys(kind_of[n.name] for n in start))
    memo: dict[tuple[tuple[object, ...], tuple[object, ...]], bool] = {}

    pmu_by_vmm = mode == HOOK_SIDECAR  # QEMU's pmu=off; under Scheduling the vCPU has a PMU wherever the host has one

    def moves(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
        if a == b:
            return True
        if (a, b) not in memo:
            # A vCPU with a PMU lists PMU registers one without lacks: a move between them fails like one
            # between kernel series (inferred from the register lists; not measured)
            same_pmu = pmu_by_vmm or has_pmu(first[a]) == has_pmu(first[b])
            memo[(a, b)] = same_pmu and migration.can_move(first[a], destination_for(first[b], mode, vmm), model).ok
        return memo[(a, b)]

    stuck = [(a, b) for a in start_kinds for b in start_kinds if not moves(a, b)]
    start_names = tuple(sorted(n.name for k in start_kinds for n in kinds[k]))
    if stuck:
        a, b = stuck[0]
        refusals = migration.can_move(first[a], destination_for(first[b], mode, vmm), model).refusals
        why = ("one vCPU has a PMU and the other not, so their register lists differ" if not refusals
               else refusals[0].rule if refusals[0].register == "*" else refusals[0].message())
        return Guarantee(mode, False, "StartNodesCannotMove",
                         f"VMs can start on nodes that cannot take each other's guests ({first[a].name} -> {first[b].name}: "
                         f"{why}): {_split_text(pool, model)}", start_names, ())
    reach = [k for k in kinds if k in start_kinds or all(moves(s, k) and moves(k, s) for s in start_kinds)]
    while True:  # every pair both ways: drop the kind that fails most, until none fails
        failures = {k: sum(1 for o in reach if not (moves(k, o) and moves(o, k))) for k in reach if k not in start_kinds}
        worst = max(failures, key=lambda k: (failures[k], first[k].name), default=None)
        if worst is None or failures[worst] == 0:
            break
        reach.remove(worst)
    migrate_names = tuple(sorted(n.name for k in reach for n in kinds[k]))
    reached = set(reach)
    left_out = sorted(n.name for k, ns in kinds.items() if k not in reached for n in ns)
    if mode == HOOK_SIDECAR:
        reason, message = "ModelSetByVmm", f"QEMU sets the model on every node: VMs start on and migrate between {len(migrate_names)} node(s)"
    elif len(migrate_names) == len(start_names):
        reason, message = "NodesPresentModel", (f"every usable node's own view equals the model: VMs start on and migrate between "
                                                f"{len(migrate_names)} node(s)")
    else:
        reason, message = "DirectionalPlacement", (
            f"VMs start only on the {len(start_names)} node(s) whose own view equals the model ({_named(start_names)}) and may "
            f"migrate to {len(migrate_names)} node(s), which accept that view; a VM never starts on the others, since its "
            "guest would carry registers the model lacks")
    if left_out:
        message += f"; {len(left_out)} usable node(s) take no VM of this model, since a move between them and the others fails: {_named(left_out)}"
    return Guarantee(mode, True, reason, message, start_names, migrate_names)


def all_modes(members: Sequence[Profile], model: Model, vmm: Vmm, *, rendered_cpu: Sequence[str] = (),
              rendered_machine: Sequence[str] = (), usable: Collection[str] | None = None) -> Mapping[str, Guarantee]:
    """The guarantee under each enforcement mode, for the CLI (known before anything is applied)."""
    return {mode: guarantee(members, model, mode=mode, vmm=vmm, usable=usable, rendered_cpu=rendered_cpu,
                            rendered_machine=rendered_machine) for mode in MODES}
