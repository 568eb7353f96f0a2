"""Which pools to declare: nodes grouped into classes, the migration matrix between classes, and a
front of pools trading nodes covered against FEATs kept.

Nothing here decides anything of its own. A pool's model is :func:`armcpu.pool.plan_pool` (what the
operator computes), its migrations are :func:`armcpu.guarantee.guarantee` (what the operator
promises in ``MigrationSafe``), on each *stack* a cluster may run: stock QEMU, which every released
QEMU is (enforcement ``Scheduling``), or a QEMU with the SYSREG properties and impl-cpu (enforcement
``HookSidecar``; none is released in December 2026). The advisor only chooses which pools to ask
them about, and says what they answered.

- A **class** is a set of nodes a pool cannot tell apart: same fingerprint, identity and kernel
  abilities (kernel series, writable masks, KVM capabilities, guest view). The guarantee computes on
  one representative per class; every member of a class gets its answer.
- A **unit** is what a label selector can pick: nodes of one ``armcpu.io/fingerprint`` and one
  ``armcpu.io/kernel-series`` (the agent's labels). Usually one class; when nodes differ only in what
  no label shows (identity, masks), a pool takes the whole unit.
- An **island** is one kernel series: a guest never moves between series (``migration.can_move``),
  so a pool across islands covers no more nodes than its largest island part and keeps fewer FEATs.
  Pools are proposed per island.
- A pool is **proposed** on a stack when its model is feasible, the guarantee holds there, and every
  selected node may take the pool's VMs (a pool that leaves some of its nodes out is beaten by the pool
  without them). The proposals of an island are its Pareto front: no other pool covers as many nodes
  and keeps as many FEATs, with one of the two strictly more.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from armcpu import features, midr, migration, pool
from armcpu.guarantee import HOOK_SIDECAR, SCHEDULING, Guarantee, Vmm, guarantee
from armcpu.model import Model
from armcpu.profile import Profile

MAX_EXHAUSTIVE_UNITS = 12  # up to 2**12 - 1 pools per island are tried; more units: grown greedily
MAX_FEATS_NAMED = 6


@dataclass(frozen=True)
class Stack:
    """A VMM a cluster may run, and the enforcement mode that goes with it."""

    name: str
    mode: str
    vmm: Vmm
    description: str


STOCK = Stack("stock", SCHEDULING, Vmm(), "stock QEMU (every released QEMU), enforcement Scheduling")
SYSREG = Stack("sysreg", HOOK_SIDECAR, Vmm(sysreg=True, impl_cpu=True),
               "a QEMU with SYSREG_* properties and impl-cpu (none released), enforcement HookSidecar")
STACKS = (STOCK, SYSREG)


@dataclass(frozen=True)
class NodeClass:
    """Nodes a pool cannot tell apart; ``representative`` stands for all of them."""

    id: str
    members: tuple[str, ...]
    representative: Profile
    unit: tuple[str, str]  # (fingerprint, kernel series or "unknown"): what labels can select

    @property
    def fingerprint(self) -> str:
        return self.unit[0]

    @property
    def kernel_series(self) -> str:
        return self.unit[1]

    @property
    def cpu(self) -> str:
        parts = sorted({midr.decode(c.midr).label_value() for c in self.representative.cores}
                       or {midr.decode(self.representative.midr).label_value()})
        return ".".join(parts)

    @functools.cached_property
    def features(self) -> tuple[str, ...]:
        return tuple(features.decode(self.representative.registers))


@dataclass(frozen=True)
class Evaluation:
    """What the pipeline and the guarantee said of one pool of classes."""

    class_ids: tuple[str, ...]
    model: Model | None  # None: the classes cannot share a model
    problem: str  # why not, when ``model`` is None
    guarantees: Mapping[str, Guarantee] = field(default_factory=dict)  # by stack name
    covered: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # class ids that may take VMs, by stack
    starts: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # class ids VMs may boot on, by stack
    feats: tuple[str, ...] = ()  # the model's FEATs (decoded once: decoding is the advisor's main cost)

    def proposable(self, stack: Stack) -> bool:
        g = self.guarantees.get(stack.name)
        return g is not None and g.safe and set(self.covered[stack.name]) == set(self.class_ids)


@dataclass(frozen=True)
class Cell:
    """Whether a VM started on ``source`` can migrate to ``target`` when both are one pool."""

    source: str
    target: str
    ok: bool
    reason: str  # the guarantee's reason, or Infeasible
    message: str


@dataclass(frozen=True)
class Proposal:
    """A pool on an island's front, with what each of its classes gives up and why it is there."""

    island: str
    class_ids: tuple[str, ...]
    nodes: tuple[str, ...]
    model: Model
    fronts: tuple[str, ...]  # the stacks on whose front it is
    guarantees: Mapping[str, Guarantee]
    lost: Mapping[str, tuple[str, ...]]  # class id -> FEATs its nodes have and the model lacks
    explanation: str


@dataclass(frozen=True)
class Advice:
    classes: tuple[NodeClass, ...]
    matrix: Mapping[str, tuple[Cell, ...]]  # by stack name: every ordered pair of classes
    proposals: tuple[Proposal, ...]
    notes: tuple[str, ...]  # what no proposal says: classes that pool with nothing, islands that could merge


def _class_key(p: Profile) -> tuple[object, ...]:
    identity = tuple(sorted((c.midr, c.revidr, c.aidr) for c in p.cores)) or (p.midr,)
    masks = tuple(sorted(p.writable.items())) if p.writable is not None else None
    guest = tuple(sorted(p.guest_view.items())) if p.guest_view is not None else None
    return (p.fingerprint, identity, migration.kernel_series(p.kernel), masks, p.kvm.vcpu_features,
            p.kvm.writable_imp_id_regs, guest)


def classify(profiles: Sequence[Profile]) -> tuple[NodeClass, ...]:
    """The classes of ``profiles``, largest first, named c1, c2, ... in that order."""
    groups: dict[tuple[object, ...], list[Profile]] = {}
    for p in profiles:
        groups.setdefault(_class_key(p), []).append(p)
    ordered = sorted(groups.values(), key=lambda ps: (-len(ps), min(p.name for p in ps)))
    out = []
    for i, ps in enumerate(ordered, 1):
        rep = min(ps, key=lambda p: p.name)
        out.append(NodeClass(f"c{i}", tuple(sorted(p.name for p in ps)), rep,
                             (rep.fingerprint, migration.kernel_series(rep.kernel) or "unknown")))
    return tuple(out)


def class_number(class_id: str) -> int:
    """``c12`` -> 12: classes sort by size rank, not as strings."""
    return int(class_id[1:])


class Advisor:
    """Evaluates pools of classes, each once (the matrix and the fronts ask for the same pools)."""

    def __init__(self, classes: Sequence[NodeClass]) -> None:
        self.classes = {c.id: c for c in classes}
        self._by_rep = {c.representative.name: c.id for c in classes}
        self._memo: dict[frozenset[str], Evaluation] = {}

    def evaluate(self, class_ids: Iterable[str]) -> Evaluation:
        key = frozenset(class_ids)
        if key not in self._memo:
            self._memo[key] = self._evaluate(tuple(sorted(key, key=class_number)))
        return self._memo[key]

    def _evaluate(self, ids: tuple[str, ...]) -> Evaluation:
        chosen = [self.classes[i] for i in ids]
        # The operator's default identity is the first pool member by name: the class holding it speaks.
        reps = sorted((c.representative for c in chosen), key=lambda p: min(self.classes[self._by_rep[p.name]].members))
        planned = pool.plan_pool(reps)
        if not planned.feasible:
            return Evaluation(ids, None, "; ".join(b.message() for b in planned.combined.blockers[:3]))
        usable = [n for n, check in planned.checks.items() if check.ok]
        promised, covered, starts = {}, {}, {}
        for stack in STACKS:
            g = guarantee(reps, planned.model, mode=stack.mode, vmm=stack.vmm, usable=usable,
                          rendered_cpu=planned.qemu.cpu_properties, rendered_machine=planned.qemu.machine_properties)
            promised[stack.name] = g
            covered[stack.name] = tuple(self._by_rep[n] for n in g.migrate_to) if g.safe else ()
            starts[stack.name] = tuple(self._by_rep[n] for n in g.start_on) if g.safe else ()
        return Evaluation(ids, planned.model, "", promised, covered, starts, tuple(planned.model.features))

    def size(self, class_ids: Iterable[str]) -> int:
        return sum(len(self.classes[i].members) for i in class_ids)


def matrix(advisor: Advisor) -> dict[str, tuple[Cell, ...]]:
    """For each stack and each ordered pair of classes: pooled together, may a VM started on the
    first move to the second? The diagonal is the class alone."""
    out: dict[str, list[Cell]] = {s.name: [] for s in STACKS}
    ids = list(advisor.classes)
    for a, b in itertools.product(ids, ids):
        ev = advisor.evaluate({a, b})
        for stack in STACKS:
            if ev.model is None:
                out[stack.name].append(Cell(a, b, False, "Infeasible", f"the two cannot share one model: {ev.problem}"))
                continue
            g = ev.guarantees[stack.name]
            ok = g.safe and a in ev.starts[stack.name] and b in ev.covered[stack.name]
            message = g.message
            if g.safe and not ok:
                message = (f"VMs of this pool never start on {a}, whose own view is above the model" if a not in ev.starts[stack.name]
                           else f"{b} takes no VM of this pool: {g.message}")
            out[stack.name].append(Cell(a, b, ok, g.reason if g.safe == ok else "NotReached", message))
    return {k: tuple(v) for k, v in out.items()}


def _units(classes: Iterable[NodeClass]) -> dict[tuple[str, str], tuple[str, ...]]:
    units: dict[tuple[str, str], list[str]] = {}
    for c in classes:
        units.setdefault(c.unit, []).append(c.id)
    return {u: tuple(ids) for u, ids in units.items()}


def _candidates(advisor: Advisor, units: Sequence[tuple[str, ...]], stack: Stack) -> Iterable[tuple[str, ...]]:
    """Every union of units when there are few; otherwise chains grown from each unit by adding the unit
    that costs fewest FEATs while the pool stays proposable."""
    if len(units) <= MAX_EXHAUSTIVE_UNITS:
        # Combining is monotone: nodes added to an infeasible pool keep the field that blocks it, so a
        # pool holding an infeasible pair is never tried (the pairs are the matrix's, evaluated anyway).
        clash = {(a, b) for a, b in itertools.combinations(units, 2) if advisor.evaluate(a + b).model is None}
        for r in range(1, len(units) + 1):
            for combo in itertools.combinations(units, r):
                if not any(pair in clash for pair in itertools.combinations(combo, 2)):
                    yield tuple(i for u in combo for i in u)
        return
    for start in units:
        chosen = list(start)
        yield tuple(chosen)
        rest = [u for u in units if u != start]
        while rest:
            grown = [(advisor.evaluate(chosen + list(u)), u) for u in rest]
            scored = [(len(ev.feats), advisor.size(u), u) for ev, u in grown if ev.proposable(stack)]
            if not scored:
                break
            _, _, best = max(scored)
            chosen += list(best)
            rest.remove(best)
            yield tuple(chosen)


def front(advisor: Advisor, units: Sequence[tuple[str, ...]], stack: Stack) -> list[Evaluation]:
    """The island's Pareto front on ``stack``, fewest nodes first: (nodes covered, FEATs kept)."""
    points: dict[frozenset[str], Evaluation] = {}
    for ids in _candidates(advisor, units, stack):
        ev = advisor.evaluate(ids)
        if ev.model is not None and ev.proposable(stack):
            points[frozenset(ids)] = ev
    scored = [(advisor.size(ev.class_ids), len(ev.feats), ev) for ev in points.values()]
    kept = [(n, f, ev) for n, f, ev in scored
            if not any(n2 >= n and f2 >= f and (n2, f2) != (n, f) for n2, f2, _ in scored)]
    kept.sort(key=lambda t: (t[0], -t[1], t[2].class_ids))
    unique: dict[tuple[int, int], Evaluation] = {}
    for n, f, ev in kept:  # equal points: the pool of fewer classes (then the first by name)
        if (n, f) not in unique or len(ev.class_ids) < len(unique[(n, f)].class_ids):
            unique[(n, f)] = ev
    return list(unique.values())


def _named_feats(feats: Sequence[str]) -> str:
    shown = ", ".join(feats[:MAX_FEATS_NAMED])
    return shown + (f" and {len(feats) - MAX_FEATS_NAMED} more" if len(feats) > MAX_FEATS_NAMED else "")


def _describe(advisor: Advisor, ids: Iterable[str]) -> str:
    parts = []
    for i in ids:
        c = advisor.classes[i]
        parts.append(f"{i} ({len(c.members)} {c.cpu} node{'s' if len(c.members) != 1 else ''})")
    return ", ".join(parts)


def _lost(advisor: Advisor, ev: Evaluation) -> dict[str, tuple[str, ...]]:
    """Per class of the pool: the FEATs its nodes have and the pool's model lacks."""
    kept = set(ev.feats)
    return {i: tuple(f for f in advisor.classes[i].features if f not in kept) for i in ev.class_ids}


def _explain(advisor: Advisor, ev: Evaluation, losses: Mapping[str, Sequence[str]], before: Evaluation | None,
             fronts: Sequence[str]) -> str:
    """One sentence a user can check against the proposal's own fields (``losses``: its :func:`_lost`)."""
    assert ev.model is not None
    kept = set(ev.feats)
    nodes = advisor.size(ev.class_ids)
    text = f"{_describe(advisor, ev.class_ids)}: {nodes} node(s), {len(kept)} FEATs"
    if not any(losses.values()):
        text += ", nothing lost" + (" (its own view)" if len(ev.class_ids) == 1 else "")
    else:
        text += "; " + ", ".join(f"{i} loses {len(lost)}" for i, lost in losses.items() if lost)
    if before is not None and before.model is not None:
        cost = sorted(set(before.feats) - kept)
        if set(before.class_ids) < set(ev.class_ids):
            joined = [i for i in ev.class_ids if i not in before.class_ids]
            text += f"; joining {', '.join(joined)} to the pool above costs {len(cost)} FEAT(s)"
            text += f" ({_named_feats(cost)})" if cost else ""
        else:
            text += (f"; against the pool above: {nodes - advisor.size(before.class_ids)} more node(s), "
                     f"{len(before.feats) - len(kept)} fewer FEAT(s)")
    for stack in STACKS:
        g = ev.guarantees[stack.name]
        if stack.name in fronts:
            continue
        if not g.safe:
            text += f"; {stack.name}-unsafe ({g.reason})"
        else:
            text += f"; on {stack.name} only {', '.join(ev.covered[stack.name])} would take its VMs"
        if stack is STOCK:
            text += ": as proposed it needs a SYSREG-capable QEMU, which no released QEMU is"
    return text


def advise(profiles: Sequence[Profile]) -> Advice:
    """Classes, the matrix on each stack and each island's front of proposed pools."""
    classes = classify(profiles)
    advisor = Advisor(classes)
    units = _units(classes)
    islands: dict[str, list[tuple[str, ...]]] = {}
    for (_, series), ids in sorted(units.items(), key=lambda kv: class_number(kv[1][0])):
        islands.setdefault(series, []).append(ids)
    proposals: list[Proposal] = []
    for series, island_units in islands.items():
        by_stack = {s.name: front(advisor, island_units, s) for s in STACKS}
        seen: dict[frozenset[str], list[str]] = {}
        for s in STACKS:
            for ev in by_stack[s.name]:
                seen.setdefault(frozenset(ev.class_ids), []).append(s.name)
        for s in STACKS:
            previous: Evaluation | None = None
            for ev in by_stack[s.name]:
                fronts = seen[frozenset(ev.class_ids)]
                if fronts[0] == s.name:  # each pool once, explained along the first front it is on
                    assert ev.model is not None
                    lost = _lost(advisor, ev)
                    nodes = tuple(sorted(n for i in ev.class_ids for n in advisor.classes[i].members))
                    proposals.append(Proposal(series, ev.class_ids, nodes, ev.model, tuple(fronts), dict(ev.guarantees), lost,
                                              _explain(advisor, ev, lost, previous, fronts)))
                previous = ev
    cells = matrix(advisor)
    return Advice(classes, cells, tuple(proposals), tuple(_notes(advisor, classes, islands, cells)))


def _notes(advisor: Advisor, classes: Sequence[NodeClass], islands: Mapping[str, Sequence[tuple[str, ...]]],
           cells: Mapping[str, Sequence[Cell]]) -> list[str]:
    """Facts a user can act on that no proposal states: classes no pool can hold, the same CPU on
    several kernel series."""
    notes = []
    for c in classes:
        alone = [cell for stack in STACKS for cell in cells[stack.name] if cell.source == cell.target == c.id]
        if not any(cell.ok for cell in alone):
            refusals = pool.plan_pool([c.representative]).checks[c.representative.name].refusals
            why = refusals[0].message() if refusals else alone[0].message
            notes.append(f"{c.id} ({len(c.members)} {c.cpu} node(s)) is in no pool, not even alone: {why}")
    by_cpu: dict[str, dict[str, int]] = {}
    for c in classes:
        by_cpu.setdefault(c.cpu, {}).setdefault(c.kernel_series, 0)
        by_cpu[c.cpu][c.kernel_series] += len(c.members)
    for cpu, series in sorted(by_cpu.items()):
        if len(series) > 1:
            counts = ", ".join(f"{n} on Linux {s}" for s, n in sorted(series.items()))
            notes.append(f"{cpu} nodes run {len(series)} kernel series ({counts}): a guest never moves between series, "
                         "so they pool only after moving to one series")
    if len(islands) > 1:
        notes.append(f"{len(islands)} kernel series ({', '.join(sorted(islands))}): pools are proposed per series")
    return notes
