"""Pure reconcile: from a CpuModel, the Nodes' labels and the NodeCpuProfiles, the desired status,
node-label changes and Events. No I/O; :mod:`armcpu_operator.act` applies the plan.

Revisions keep running VMs safe:

- ``Pinned`` (default): a model, once computed for a spec, stays. Nodes that join later and cannot
  run it are marked incompatible with reasons; nodes that leave never raise it. A spec change
  (status.specHash differs) computes a new revision.
- ``Follow``: every reconcile recomputes the model from the pool; when its registers change, the
  revision increases.

A plan for an unchanged world equals the current state, so applying it writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from armcpu import features as feats
from armcpu import guarantee as guarantees
from armcpu import identity
from armcpu import model as algebra
from armcpu import pool as pools
from armcpu.profile import Profile, ProfileError, from_dict, hex64
from armcpu.verification import KernelVerdict, verification_key
from armcpu_k8s import labels as keys
from armcpu_k8s import selectors
from armcpu_k8s.status import model_from_status
from armcpu_operator.planning import spec as specs

MAX_LISTED_NODES = 20
MAX_REASONS_PER_NODE = 5
MAX_LIVE_REVISIONS = 16
EVENT_NODE_LIST = 5
MAX_REASON_CHARS = 300  # one node's reason: a profile's text is quoted in it, and one huge name must not swell every status
MAX_MESSAGE_CHARS = 2048  # a condition's or an Event's message


def capped(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut: status and Events stay bounded
    whatever a node's agent (or a hostile writer of its profile) put into the profile."""
    if len(text) <= limit:
        return text
    note = f"... ({len(text) - limit} more characters)"
    return text[: max(0, limit - len(note))] + note


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


REQUIRED, ADVISORY = "Required", "Advisory"  # --kernel-verification


@dataclass
class Plan:
    status: dict[str, Any]
    label_changes: dict[str, dict[str, str | None]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    compatible: tuple[str, ...] = ()
    incompatible: tuple[str, ...] = ()
    selected: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()
    applied: specs.Request | None = None  # the spec in effect (None: unknown, so VMs are left exactly as they are)


@dataclass(frozen=True)
class Mismatch:
    """armcpu's prediction and a node's kernel disagree on a model: a bug in armcpu's rules."""

    node: str
    predicted: bool
    kernel: KernelVerdict
    refusals: tuple[str, ...]  # can_run's reasons, when it predicted a refusal

    def message(self, revision: int) -> str:
        said = "ran it" if self.kernel.ok else ("accepted it but its guest read something else" if self.kernel.accepted else "refused it")
        fields = "; ".join(self.kernel.disagreements[:3] or self.refusals[:3]) or "no field named"
        return (f"{self.node}: armcpu predicted it {'can' if self.predicted else 'cannot'} run revision {revision}, "
                f"its kernel {said}: {fields}")


def kernel_says(profile: Profile, key: str, check: algebra.CanRun, policy: str) -> tuple[str, Mismatch | None]:
    """One node and one model: "compatible", "incompatible" or "pending" (no verdict yet, and the
    policy requires one), and the mismatch when the kernel disagrees with ``check``.

    A kernel's refusal always counts, whatever the policy: the kernel is the authority, the rules a model of it.
    """
    kernel = profile.verdict(key)
    mismatch = None
    if kernel is not None and kernel.ok != check.ok:
        mismatch = Mismatch(profile.name, check.ok, kernel, tuple(r.message() for r in check.refusals))
    if not check.ok or (kernel is not None and not kernel.ok):
        return "incompatible", mismatch
    if kernel is None and policy == REQUIRED:
        return "pending", None
    return "compatible", mismatch


def label_key(model_name: str) -> str:
    return keys.MODEL_PREFIX + model_name


@dataclass(frozen=True)
class Rendered:
    """How the model reaches a guest: QEMU's -cpu and -machine properties, libvirt's disables."""

    qemu: str | None = None
    machine: str | None = None
    libvirt_disabled: tuple[str, ...] = ()

    @classmethod
    def of(cls, planned: pools.PoolPlan) -> Rendered:
        qemu = planned.qemu
        return cls(qemu.cpu_arg, ",".join(qemu.machine_properties) or None, planned.libvirt.libvirt_disabled)

    @classmethod
    def from_status(cls, model_status: Mapping[str, Any]) -> Rendered:
        return cls(model_status.get("qemu"), model_status.get("qemuMachine"), tuple(model_status.get("libvirtDisabled") or ()))

    @property
    def rewrite_needed(self) -> bool:
        """False when the model equals every pool node's registers: the rendering sets nothing."""
        return self.qemu not in (None, "host") or self.machine is not None


def model_to_status(model: algebra.Model, rendered: Rendered) -> dict[str, Any]:
    return {
        "registers": {k: hex64(v) for k, v in sorted(model.registers.items())},
        "features": feats.decode(model.registers),
        "midr": f"0x{model.value('MIDR_EL1'):08x}",
        "implementations": [{"midr": f"0x{t.midr:08x}", "revidr": hex64(t.revidr), "aidr": hex64(t.aidr)} for t in model.targets],
        "qemu": rendered.qemu,
        "qemuMachine": rendered.machine,
        "libvirtDisabled": list(rendered.libvirt_disabled),
        "domainRewrite": "Needed" if rendered.rewrite_needed else "NotNeeded",
        "members": list(model.members),
    }


def _condition(old: Sequence[Mapping[str, Any]], ctype: str, status: str, reason: str, message: str, generation: int | None,
               now: str) -> dict[str, Any]:
    previous = next((c for c in old if c.get("type") == ctype), None)
    since = previous["lastTransitionTime"] if previous and previous.get("status") == status and previous.get("lastTransitionTime") else now
    return {"type": ctype, "status": status, "reason": reason, "message": capped(message, MAX_MESSAGE_CHARS), "lastTransitionTime": since,
            "observedGeneration": generation}


def _names(nodes: Sequence[str]) -> str:
    shown = ", ".join(nodes[:EVENT_NODE_LIST])
    return shown + (f" and {len(nodes) - EVENT_NODE_LIST} more" if len(nodes) > EVENT_NODE_LIST else "")


ParsedProfile = Profile | str  # a usable profile, or why the NodeCpuProfile cannot be used


def parse_profile(name: str, raw: Mapping[str, Any]) -> ParsedProfile:
    try:
        parsed = from_dict({**raw, "name": name}, f"NodeCpuProfile {name}")
    except ProfileError as exc:
        return str(exc)
    if parsed.probe != "kvm":
        return f"profile probed by {parsed.probe!r}, not kvm: the agent could not open /dev/kvm, so the guest view is unknown"
    return parsed


def _node_profiles(selected: Sequence[str], profiles: Mapping[str, Mapping[str, Any] | ParsedProfile]) -> tuple[list[Profile], dict[str, list[str]]]:
    good: list[Profile] = []
    broken: dict[str, list[str]] = {}
    for name in selected:
        raw = profiles.get(name)
        if raw is None:
            broken[name] = ["no NodeCpuProfile: is the armcpu agent running on this node?"]
            continue
        parsed = raw if isinstance(raw, (Profile, str)) else parse_profile(name, raw)
        if isinstance(parsed, str):
            broken[name] = [parsed]
        else:
            good.append(parsed if parsed.name == name else replace(parsed, name=name))
    return good, broken


_CAN_RUN_CACHE: dict[tuple[Any, ...], algebra.CanRun] = {}


def _can_run(profile: Profile, model: algebra.Model) -> algebra.CanRun:
    """can_run, memoised: in a large pool most nodes share a CPU and a kernel, so a handful of
    distinct (node view, model) pairs decide thousands of nodes. The answer names no node."""
    key = (algebra.view_key(profile), tuple(sorted(model.registers.items())), model.targets)
    found = _CAN_RUN_CACHE.get(key)
    if found is None:
        if len(_CAN_RUN_CACHE) > 4096:
            _CAN_RUN_CACHE.clear()
        found = _CAN_RUN_CACHE[key] = algebra.can_run(profile, model)
    return found


def _refusal_reasons(check: algebra.CanRun) -> list[str]:
    msgs = [r.message() for r in check.refusals]
    if len(msgs) > MAX_REASONS_PER_NODE:
        msgs = [*msgs[:MAX_REASONS_PER_NODE], f"and {len(msgs) - MAX_REASONS_PER_NODE} more fields"]
    return msgs


def _compute(request: specs.Request, pool: list[Profile]) -> tuple[algebra.Model | None, Rendered, str]:
    """(model, its rendering, problem). problem is '' when the model was computed."""
    if not pool:
        return None, Rendered(), "no selected node has a usable NodeCpuProfile"
    if request.identity_from is not None and request.identity_from not in {p.name for p in pool}:
        return None, Rendered(), (f"spec.identityFrom: {request.identity_from!r} is not a selected node with a usable profile; "
                                  f"members: {', '.join(p.name for p in pool)}")
    try:
        planned = pools.plan_pool(pool, identity_from=request.identity_from, base=request.base,
                                  feature_settings=request.feature_settings, register_settings=request.register_settings)
    except algebra.SettingError as exc:
        return None, Rendered(), f"spec.{exc}"
    if not planned.feasible:
        blockers = planned.combined.blockers
        reasons = "; ".join(b.message() for b in blockers[:5])
        more = f" (and {len(blockers) - 5} more)" if len(blockers) > 5 else ""
        return None, Rendered(), f"the selected nodes cannot share one model: {reasons}{more}"
    return planned.model, Rendered.of(planned), ""


_GUARANTEES: dict[tuple[Any, ...], tuple[list[Profile], guarantees.Guarantee, identity.IdentityCheck | None]] = {}


def _guarantee(pool: Sequence[Profile], model: algebra.Model, rendered: Rendered, compatible: Sequence[str], mode: str,
               vmm: guarantees.Vmm) -> tuple[guarantees.Guarantee, identity.IdentityCheck | None]:
    """The guarantee for the revision in effect, over the nodes found compatible (kernel verdicts
    included), and what its identity tells. Memoised: an unchanged world hands the same profile
    objects (the caches keep them, and equal profiles share their mappings), so a steady reconcile
    of 5,000 nodes does not compute the guarantee again. The entry keeps those profiles alive, so
    their ids cannot be reused by other objects while it exists."""
    usable = set(compatible)
    members = [p for p in pool if p.name in usable]
    key = (tuple(sorted(model.registers.items())), model.targets, mode, vmm, rendered.qemu, rendered.machine,
           tuple(sorted((p.name, id(p.registers), id(p.writable), id(p.guest_view), p.kernel, p.kvm.writable_imp_id_regs)
                        for p in members)))
    found = _GUARANTEES.get(key)
    if found is None:
        cpu = tuple((rendered.qemu or "host").split(",")[1:])
        machine = tuple(p for p in (rendered.machine or "").split(",") if p)
        promise = guarantees.guarantee(members, model, mode=mode, vmm=vmm, rendered_cpu=cpu, rendered_machine=machine, usable=usable)
        told = identity.check(model, members) if members else None
        if len(_GUARANTEES) >= 64:
            _GUARANTEES.clear()
        found = _GUARANTEES[key] = (members, promise, told)
    return found[1], found[2]


def _live_revisions(old: Mapping[str, Any], revision: int, running: Mapping[str, int]) -> list[dict[str, Any]]:
    """Older revisions some running VM still runs, with their models (kept in status, since only the
    current model is otherwise stored): their nodes keep an ``r<N>`` label so those VMs can migrate."""
    history = {int(e["revision"]): dict(e) for e in old.get("liveRevisions") or []}
    old_revision = old.get("revision")
    if old.get("model") and old_revision is not None and int(old_revision) != revision:
        history[int(old_revision)] = {"revision": int(old_revision), "fingerprint": old.get("fingerprint"),
                                      "registers": old["model"].get("registers") or {},
                                      "implementations": old["model"].get("implementations") or []}
    live = [history[r] for r in sorted(history, reverse=True) if r != revision and running.get(str(r))]
    return live[:MAX_LIVE_REVISIONS]


def reconcile(cpumodel: Mapping[str, Any], nodes: Mapping[str, Mapping[str, str]],
              profiles: Mapping[str, Mapping[str, Any] | ParsedProfile], now: str,
              running: Mapping[str, int] | None = None, kernel_verification: str = REQUIRED,
              vmm: guarantees.Vmm = guarantees.STOCK) -> Plan:
    """``running``: how many running VMs (VMIs) of this model were started with each revision.
    ``kernel_verification``: Required (a node is compatible only once its kernel verified the
    revision) or Advisory (a missing verdict does not hold a node back; a refusal still does).
    ``vmm``: what the cluster's QEMU can do, as declared: with the enforcement in effect it decides
    the guarantee, and so which compatible nodes VMs may boot on and migrate to."""
    meta = cpumodel.get("metadata", {})
    name = meta["name"]
    generation = meta.get("generation")
    old = dict(cpumodel.get("status") or {})
    old_conditions = old.get("conditions") or []
    key = label_key(name)
    raw_spec = cpumodel.get("spec") or {}
    request = specs.parse(raw_spec)
    applied_raw = specs.applied_spec(raw_spec, old)
    applied = specs.parse(applied_raw) if applied_raw is not None else None
    if applied is not None and not applied.valid:
        applied, applied_raw = None, None  # written around the schema: nothing known to be in effect
    events: list[Event] = []

    def cond(ctype: str, status: str, reason: str, message: str) -> dict[str, Any]:
        return _condition(old_conditions, ctype, status, reason, message, generation, now)

    if not request.valid:
        message = "; ".join(request.errors)
        invalid_status = {**old, "observedGeneration": generation}
        invalid_status["conditions"] = [
            cond("Ready", "False", "InvalidSpec", "the spec is invalid; the previous revision, if any, stays in effect"),
            cond("Invalid", "True", "InvalidSpec", message),
            *[c for c in old_conditions if c.get("type") == "Degraded"],
        ]
        if not any(c.get("type") == "Invalid" and c.get("status") == "True" and c.get("message") == message for c in old_conditions):
            events.append(Event("Warning", "InvalidSpec", message))
        return Plan(status=invalid_status, events=[replace(e, message=capped(e.message, MAX_MESSAGE_CHARS)) for e in events], applied=applied)

    def pool_of(req: specs.Request) -> tuple[list[str], list[Profile], dict[str, list[str]]]:
        chosen = sorted(n for n, node_labels in nodes.items() if selectors.matches(req.selector, node_labels))
        return (chosen, *_node_profiles(chosen, profiles))

    selected, pool, broken = pool_of(request)
    current = model_from_status(old["model"]) if old.get("model") and old.get("specHash") == request.spec_hash else None
    revision = int(old.get("revision") or 0)
    old_model = old.get("model") or {}
    model, rendered, problem = current, Rendered.from_status(old_model), ""
    effective, effective_raw = request, raw_spec  # the spec the status describes
    if current is None or request.policy == "Follow":
        computed, computed_rendered, problem = _compute(request, pool)
        if computed is not None and (current is None or dict(computed.registers) != dict(current.registers)
                                     or computed.targets != current.targets):
            model, rendered = computed, computed_rendered
            revision += 1
            members = _names([p.name for p in pool])
            events.append(Event("Normal", "ModelRevised",
                                f"revision {revision} (fingerprint {computed.fingerprint}) computed from {len(pool)} node(s): {members}"))
    spec_change_waits = model is None and bool(old.get("model")) and old.get("specHash") != request.spec_hash
    if model is None and old.get("model"):
        # Nothing computable now (e.g. every node left, or a changed spec's pool cannot be combined): keep
        # serving the last revision to running VMs, under the spec it was computed from. A changed spec is
        # not recorded as applied, so every reconcile tries it again until it computes.
        model, rendered = model_from_status(old["model"]), Rendered.from_status(old_model)
        if spec_change_waits and applied is not None:
            effective, effective_raw = applied, applied_raw or {}
            selected, pool, broken = pool_of(applied)

    incompatible: dict[str, list[str]] = dict(broken)
    compatible: list[str] = []
    pending: list[str] = []
    mismatches: list[Mismatch] = []
    warnings: list[dict[str, str]] = []
    verdicts = 0
    if model is not None:
        verified = verification_key(model.registers)
        verdicts = sum(1 for profile in pool if profile.verdict(verified) is not None)
        for profile in pool:
            check = _can_run(profile, model)
            verdict, mismatch = kernel_says(profile, verified, check, kernel_verification)
            if mismatch is not None:
                mismatches.append(mismatch)
            if verdict == "compatible":
                compatible.append(profile.name)
                warnings += [{"name": profile.name, "message": capped(w)} for w in check.warnings]
            elif verdict == "pending":
                pending.append(profile.name)
            elif not check.ok:
                incompatible[profile.name] = _refusal_reasons(check)
            else:
                kernel = profile.verdict(verified)
                assert kernel is not None
                incompatible[profile.name] = [f"this node's kernel refused the model (armcpu's rules predicted it would run): {d}"
                                              for d in kernel.disagreements[:MAX_REASONS_PER_NODE]] or ["this node's kernel refused the model"]
    else:
        for profile in pool:
            incompatible[profile.name] = [problem]

    live = _live_revisions(old, revision, running or {}) if model is not None else list(old.get("liveRevisions") or [])
    by_name = {p.name: p for p in pool}
    mode = effective.enforcement
    promise, told = _guarantee(pool, model, rendered, compatible, mode, vmm) if model is not None else (None, None)
    # Where a VM may be: every node the guarantee names when it holds; when it does not, every compatible
    # node, as before the guarantee existed (MigrationSafe=False says that migrations there may fail).
    placed = set(promise.start_on) | set(promise.migrate_to) if promise is not None and promise.safe else set(compatible)
    boot = set(promise.start_on) if promise is not None else set()
    start = keys.start_key(name)
    label_changes: dict[str, dict[str, str | None]] = {}
    both = {int(e["revision"]): 0 for e in live}  # nodes that can run the older revision and the current one
    older_models = [(entry, model_from_status(entry)) for entry in live]
    older_keys = {int(e["revision"]): verification_key(m.registers) for e, m in older_models}  # hashed once, not once per node
    for node_name, node_labels in nodes.items():
        want: dict[str, str | None] = {key: str(revision) if node_name in placed else None,
                                       start: str(revision) if node_name in boot else None}
        for entry, older in older_models:
            # a running guest of the older revision carries its registers as the cluster's QEMU writes them
            runs = node_name in placed and kernel_says(
                by_name[node_name], older_keys[int(entry["revision"])],
                _can_run(guarantees.destination_for(by_name[node_name], mode, vmm), older), kernel_verification)[0] == "compatible"
            both[int(entry["revision"])] += runs
            want[keys.revision_key(name, int(entry["revision"]))] = "true" if runs else None
        for label in node_labels:
            if keys.revision_of_key(label, name) is not None and label not in want:
                want[label] = None  # a revision no running VM uses any more
        change = {k: v for k, v in want.items() if node_labels.get(k) != v}
        if change:
            label_changes[node_name] = change

    inc_names = sorted(incompatible)
    conditions = []
    if model is None:
        conditions.append(cond("Ready", "False", "NoModel", problem))
    elif not compatible and pending:
        conditions.append(cond("Ready", "False", "VerificationPending",
                               f"{len(pending)} selected node(s) wait for their agent to verify revision {revision} on their kernel: "
                               f"{_names(pending)}"))
    elif not compatible:
        conditions.append(cond("Ready", "False", "NoCompatibleNodes", f"none of the {len(selected)} selected node(s) can run revision {revision}"))
    else:
        unsafe = "; migrations are not safe: see MigrationSafe" if promise is not None and not promise.safe else ""
        conditions.append(cond("Ready", "True", "ModelReady",
                               f"{len(compatible)} of {len(selected)} selected node(s) can run revision {revision}{unsafe}"))
    not_computed = (f"the spec change is not applied, revision {revision} and its spec stay in effect: {problem}" if spec_change_waits
                    else f"a new revision could not be computed: {problem}")
    if inc_names:
        message = f"{len(inc_names)} selected node(s) cannot run the model: {_names(inc_names)}"
        if problem and model is not None:
            message += f"; {not_computed}"
        conditions.append(cond("Degraded", "True", "IncompatibleNodes", message))
    elif problem and model is not None:
        conditions.append(cond("Degraded", "True", "RecomputeFailed", not_computed))
    else:
        conditions.append(cond("Degraded", "False", "AllNodesCompatible", "every selected node can run the model") if selected
                          else cond("Degraded", "False", "NoNodesSelected", "the nodeSelector selects no node"))
    conditions.append(cond("Invalid", "False", "SpecValid", "the spec is valid"))
    if promise is not None:
        conditions.append(cond("MigrationSafe", "True" if promise.safe else "False", promise.reason, promise.message))
        was: Mapping[str, Any] = next((c for c in old_conditions if c.get("type") == "MigrationSafe"), {})
        if not promise.safe and (was.get("status") != "False" or was.get("reason") != promise.reason):
            pending_pods = (f"; no node is labelled {keys.start_key(name)}, so the VMs' virt-launcher pods stay Pending "
                            "(Unschedulable) rather than QEMU failing at every start" if not promise.start_on else "")
            events.append(Event("Warning", "MigrationUnsafe", f"{promise.message}{pending_pods}"))
        if told is not None:
            conditions.append(cond("IdentityMatchesModel", "True" if told.truthful else "False",
                                   "NoHiddenFeatures" if told.truthful else "MidrPromisesHiddenFeatures", identity.message(told)))
    else:
        conditions.append(cond("MigrationSafe", "False", "NoModel", "no model is computed, so no migration is promised"))
    if mismatches:
        conditions.append(cond("PredictionMismatch", "True", "KernelDisagrees",
                               f"{len(mismatches)} node(s) disagree with armcpu's rules (a bug in armcpu: please report it): "
                               + " | ".join(m.message(revision) for m in mismatches[:EVENT_NODE_LIST])))
    elif model is not None and verdicts:
        conditions.append(cond("PredictionMismatch", "False", "KernelAgrees",
                               f"the kernel verdicts of {verdicts} node(s) on this revision agree with armcpu's prediction"))

    status: dict[str, Any] = {
        "observedGeneration": generation,
        "revision": revision if model is not None else None,
        "fingerprint": model.fingerprint if model is not None else None,
        "specHash": (old.get("specHash") if spec_change_waits else effective.spec_hash) if model is not None else old.get("specHash"),
        "model": model_to_status(model, rendered) if model is not None else None,
        "nodes": {"selected": len(selected), "compatible": len(compatible), "incompatible": len(inc_names)},
        "incompatibleNodes": [{"name": n, "reasons": [capped(r) for r in incompatible[n]]} for n in inc_names[:MAX_LISTED_NODES]],
        "incompatibleNodesOmitted": max(0, len(inc_names) - MAX_LISTED_NODES),
        "nodeWarnings": warnings[:MAX_LISTED_NODES],
        "conditions": conditions,
    }
    if model is not None and old.get("model") and current is not None and model is current:
        status["model"] = old["model"]  # byte-identical: no write for a pinned model
    applied_out = (applied_raw if spec_change_waits else effective_raw) if model is not None else old.get("appliedSpec")
    if applied_out is not None:
        status["appliedSpec"] = dict(applied_out)
    if pending:  # only then: a status without pending nodes stays as it was before verification existed (no write on upgrade)
        status["nodes"]["pending"] = len(pending)
        status["pendingNodes"] = sorted(pending)[:MAX_LISTED_NODES]
    if promise is not None:
        status["guarantee"] = {
            "enforcement": promise.mode, "safe": promise.safe, "reason": promise.reason,
            "message": capped(promise.message, MAX_MESSAGE_CHARS), "vmm": {"sysreg": vmm.sysreg, "implCpu": vmm.impl_cpu},
            "startOn": list(promise.start_on[:MAX_LISTED_NODES]), "startOnCount": len(promise.start_on),
            "migrateTo": list(promise.migrate_to[:MAX_LISTED_NODES]), "migrateToCount": len(promise.migrate_to)}
    if live:
        status["liveRevisions"] = [{**e, "nodes": both.get(int(e["revision"]), e.get("nodes", 0))} for e in live]

    reported = next((c.get("message") for c in old_conditions if c.get("type") == "PredictionMismatch" and c.get("status") == "True"), "")
    for m in mismatches:
        if m.message(revision) not in (reported or ""):
            events.append(Event("Warning", "PredictionMismatch", m.message(revision)))
    before = {n["name"] for n in old.get("incompatibleNodes") or []}
    newly = [n for n in inc_names[:MAX_LISTED_NODES] if n not in before]
    if newly:
        events.append(Event("Warning", "NodesIncompatible", f"cannot run revision {revision}: " + "; ".join(
            f"{n}: {incompatible[n][0]}" for n in newly[:EVENT_NODE_LIST])))
    in_effect = (applied if spec_change_waits else effective) if model is not None else request
    events = [replace(e, message=capped(e.message, MAX_MESSAGE_CHARS)) for e in events]
    return Plan(status=status, label_changes=label_changes, events=events, compatible=tuple(compatible),
                incompatible=tuple(inc_names), selected=tuple(selected), pending=tuple(sorted(pending)), applied=in_effect)


def add_restart_condition(status: dict[str, Any], old_conditions: Sequence[Mapping[str, Any]], pending: Sequence[tuple[str, str]],
                          generation: int | None, now: str) -> None:
    """The RestartPending condition: running VMs keep the CPU they started with (KubeVirt reuses the
    source domain on migration), so a new definition reaches them only when they restart."""
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != "RestartPending"]
    if pending:
        shown = _names(["/".join(key) for key in pending])
        stuck = [str(e["revision"]) for e in status.get("liveRevisions") or [] if not e.get("nodes")]
        note = (f"; no node can run both revision {', '.join(stuck)} and revision {status.get('revision')}: "
                "those VMs cannot migrate until they restart" if stuck else "")
        condition = _condition(old_conditions, "RestartPending", "True", "OlderDefinitionRunning",
                               f"{len(pending)} running VM(s) started with another definition than their template's; "
                               f"it applies at their next restart: {shown}{note}", generation, now)
    else:
        condition = _condition(old_conditions, "RestartPending", "False", "AllRunningCurrent",
                               "every running VM runs its template's definition", generation, now)
    status["conditions"] = [*conditions, condition]


def removal(model_name: str, nodes: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str | None]]:
    """Label changes when a CpuModel goes away: its keys (current and older revisions) leave every node."""
    out: dict[str, dict[str, str | None]] = {}
    for node, node_labels in nodes.items():
        mine: dict[str, str | None] = {k: None for k in node_labels if keys.owned_by_model(k, model_name)}
        if mine:
            out[node] = mine
    return out
