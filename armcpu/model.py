"""The common-model algebra: combine a pool, check a node, adjust a model, compare two CPUs.

All functions are pure: profiles and models in, new values out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from armcpu import catalog, features, kvm
from armcpu.catalog import Field, RegisterKind
from armcpu.profile import Core, Profile, fingerprint


@dataclass(frozen=True)
class Model:
    """A CPU model a guest is started with: absolute register values plus identity targets."""

    registers: Mapping[str, int]
    targets: tuple[Core, ...] = ()  # every pool member's (MIDR, REVIDR, AIDR), for errata
    members: tuple[str, ...] = ()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.registers)

    def value(self, register: str) -> int:
        return self.registers.get(register, 0)

    @property
    def features(self) -> list[str]:
        return features.decode(self.registers)


def model_of(profile: Profile) -> Model:
    """A node's own view as a model (what host-passthrough gives a guest there)."""
    return Model(
        registers=dict(profile.registers),
        targets=(_identity(profile),),
        members=(profile.name,),
    )


def _identity(profile: Profile) -> Core:
    return Core(
        midr=profile.midr,
        revidr=profile.value("REVIDR_EL1"),
        aidr=profile.value("AIDR_EL1"),
    )


def _feature_registers() -> list[catalog.Register]:
    return [r for r in catalog.registers().values() if r.kind is not RegisterKind.IDENTITY]


def combine_values(fld: Field, values: Iterable[int]) -> int:
    """Fold raw field values with the field's safe-value rule (as KVM checks it)."""
    it = iter(values)
    acc = next(it)
    for v in it:
        acc = kvm.safe_value(fld, v, acc)
    return acc


def _ctr_coherence(ctr: int) -> tuple[int, int]:
    return catalog.field("CTR_EL0", "IDC").extract(ctr), catalog.field("CTR_EL0", "DIC").extract(ctr)


def _clidr_for(ctr: int, profiles: Sequence[Profile], folded: int) -> int:
    """The pool model's CLIDR_EL1: a member's whole CLIDR whose CTR_EL0 has the model's IDC and DIC.

    KVM (Linux >= 6.3) fabricates a vCPU's CLIDR_EL1 from CTR_EL0's IDC and DIC, so the members'
    CLIDRs are a function of those two bits; folding them field by field made a hybrid (LoUU and
    LoUIS 0 from one member, Ctype1 from another) that claims coherence a member lacks, and KVM
    refused it on that member (the truth matrix: every cortex-a72 pair on Linux 6.12 and 7.3). A
    member with the model's IDC and DIC gives the CLIDR a guest needs for that CTR_EL0; only when
    none has them is the field fold kept (and ``can_run`` checks it against each node).
    """
    want = _ctr_coherence(ctr)
    matching = [p.value("CLIDR_EL1") for p in profiles if "CLIDR_EL1" in p.registers and _ctr_coherence(p.value("CTR_EL0")) == want]
    reg = catalog.register("CLIDR_EL1")
    # the member asking for the most maintenance (order-independent: the same pool gives the same model)
    chosen = max(matching, key=lambda v: (reg.field("LoUU").extract(v), reg.field("LoUIS").extract(v), reg.field("LoC").extract(v), v),
                 default=folded)
    if not matching and want[0] == 0 and clidr_implies_idc(chosen):
        # A folded CLIDR without IDC must not claim it (KVM refuses it): what KVM fabricates then has
        # LoUU = LoUIS = 1. A member's own CLIDR is kept as it is: its kernel showed it with that CTR.
        for name in ("LoUU", "LoUIS", "LoC"):
            fld = reg.field(name)
            chosen = fld.insert(chosen, max(1, fld.extract(chosen)))
    return chosen


def clidr_implies_idc(clidr: int) -> bool:
    """Linux's ``set_clidr``: a CLIDR_EL1 with LoC 0, or LoUU and LoUIS both 0, says no cleaning to
    the point of unification is needed, which only a CPU with CTR_EL0.IDC may say."""
    f = catalog.register("CLIDR_EL1").decode(clidr)
    return f["LoC"] == 0 or (f["LoUU"] == 0 and f["LoUIS"] == 0)


@dataclass(frozen=True)
class Blocker:
    """A field the pool disagrees on that some node cannot change."""

    field: str  # REGISTER.FIELD
    nodes_by_value: Mapping[int, tuple[str, ...]]
    model_value: int
    stuck_nodes: tuple[str, ...]  # nodes where the field is not writable
    hint: str

    def message(self) -> str:
        sides = "; ".join(
            f"{v:#x} on {', '.join(ns)}" for v, ns in sorted(self.nodes_by_value.items())
        )
        return (
            f"{self.field} differs ({sides}) and KVM cannot change it on "
            f"{', '.join(self.stuck_nodes)}: {self.hint}"
        )


@dataclass(frozen=True)
class CombineResult:
    model: Model
    blockers: tuple[Blocker, ...] = ()

    @property
    def feasible(self) -> bool:
        return not self.blockers


_HINTS = {
    "pauth": "switch pointer authentication off for the guest (features: {FEAT_PAuth: Disabled})",
    "sve": "switch SVE off for the guest (features: {FEAT_SVE: Disabled})",
    "pmu": "switch the guest's PMU off (features: {FEAT_PMUv3: Disabled}; QEMU pmu=off, so it needs enforcement HookSidecar)",
}


def _vcpu_group(fld: Field) -> str | None:
    for group, members in kvm.VCPU_FEATURE_FIELDS.items():
        if (fld.register, fld.name) in members:
            return group
    return None


def combine(profiles: Sequence[Profile], identity_from: str | None = None) -> CombineResult:
    """The pool's common model: every field folded by its safe-value rule.

    The guest's MIDR/REVIDR/AIDR are those of ``identity_from`` (a member's name; default the
    first profile), and every member's identity is listed as a target implementation.
    Fields that differ where some node cannot write them make the pool infeasible; each such
    field is reported with the nodes on each side and what would make it feasible.
    """
    if not profiles:
        raise ValueError("combine needs at least one profile")
    regs: dict[str, int] = {}
    blockers: list[Blocker] = []
    in_groups: list[tuple[Field, list[int], int]] = []
    for reg in _feature_registers():
        if not any(reg.name in p.registers for p in profiles):
            continue
        value = 0
        raw = [p.value(reg.name) for p in profiles]
        distinct = list(dict.fromkeys(raw))  # a large pool has a few kinds of node: extract and fold each value once
        for fld in reg.fields:
            extracted = {v: fld.extract(v) for v in distinct}
            vals = [extracted[v] for v in raw]
            combined = combine_values(fld, dict.fromkeys(vals))  # the fold is idempotent: each value once (tested)
            value = fld.insert(value, combined)
            if len(set(vals)) > 1:
                if _vcpu_group(fld) is not None:
                    in_groups.append((fld, vals, combined))  # decided once the whole group is folded
                    continue
                blocker = _blocker(fld, profiles, vals, combined, group_off=False)
                if blocker is not None:
                    blockers.append(blocker)
        outside = ~reg.defined_mask
        stray = [v & outside for v in raw]
        value |= stray[0] if len(set(stray)) == 1 else 0
        if len(set(stray)) > 1:
            by_value: dict[int, list[str]] = {}
            for p, v in zip(profiles, stray, strict=True):
                by_value.setdefault(v, []).append(p.name)
            blockers.append(
                Blocker(
                    field=f"{reg.name}.<bits outside catalogued fields>",
                    nodes_by_value={v: tuple(ns) for v, ns in by_value.items()},
                    model_value=0,
                    stuck_nodes=tuple(p.name for p, v in zip(profiles, stray, strict=True) if v),
                    hint="the pool's CPUs differ in bits armcpu does not know: split the pool",
                )
            )
        regs[reg.name] = value
    for fld, vals, combined in in_groups:
        # A vCPU feature's field is lowered by switching the whole feature off (KVM then reports 0 in
        # every field of the group); a group left on must present each of its fields as the node has it.
        group = _vcpu_group(fld)
        assert group is not None
        blocker = _blocker(fld, profiles, vals, combined, group_off=kvm.vcpu_group_is_off(lambda r: regs.get(r, 0), group))
        if blocker is not None:
            blockers.append(blocker)
    if "CLIDR_EL1" in regs:
        regs["CLIDR_EL1"] = _clidr_for(regs.get("CTR_EL0", 0), profiles, regs["CLIDR_EL1"])
    chosen = profiles[0]
    if identity_from is not None:
        matches = [p for p in profiles if p.name == identity_from]
        if not matches:
            raise ValueError(f"identity_from: no pool member named {identity_from!r}")
        chosen = matches[0]
    ident = _identity(chosen)
    regs["MIDR_EL1"] = ident.midr
    regs["REVIDR_EL1"] = ident.revidr
    regs["AIDR_EL1"] = ident.aidr
    targets = tuple(dict.fromkeys(_identity(p) for p in profiles))
    model = Model(registers=regs, targets=targets, members=tuple(p.name for p in profiles))
    return CombineResult(model=model, blockers=tuple(blockers))


def _blocker(fld: Field, profiles: Sequence[Profile], vals: list[int], combined: int, *, group_off: bool) -> Blocker | None:
    lowered_by_vcpu_feature = group_off and combined == 0
    stuck = tuple(
        p.name
        for p, v in zip(profiles, vals, strict=True)
        if v != combined and not lowered_by_vcpu_feature and not kvm.is_field_writable(p.writable, fld)
    )
    if not stuck:
        return None
    by_value: dict[int, list[str]] = {}
    for p, v in zip(profiles, vals, strict=True):
        by_value.setdefault(v, []).append(p.name)
    group = _vcpu_group(fld)
    if group is not None:
        hint = _HINTS[group]
    else:
        hint = "split the pool by this value: " + " | ".join(
            f"{{{', '.join(ns)}}}" for _, ns in sorted(by_value.items())
        )
    return Blocker(
        field=fld.qualified,
        nodes_by_value={v: tuple(ns) for v, ns in by_value.items()},
        model_value=combined,
        stuck_nodes=stuck,
        hint=hint,
    )


@dataclass(frozen=True)
class Refusal:
    """Why one node cannot present one field of a model."""

    register: str
    field: str
    node_value: int
    model_value: int
    features: tuple[str, ...]
    writable: bool | None
    rule: str

    def message(self) -> str:
        feats = f" ({', '.join(self.features)})" if self.features else ""
        return (
            f"{self.register}.{self.field}{feats}: node {self.node_value:#x}, model "
            f"{self.model_value:#x}: {self.rule}"
        )


@dataclass(frozen=True)
class CanRun:
    ok: bool
    refusals: tuple[Refusal, ...] = ()
    warnings: tuple[str, ...] = ()


def _features_of_field(fld: Field, a: int, b: int) -> tuple[str, ...]:
    """FEAT names that hold at the higher of two values of ``fld`` but not at the lower."""
    lo, hi = sorted((a, b), key=fld.ordinal)
    return tuple(
        name
        for name, minimum in features.feature_names_for_field(fld)
        if fld.ordinal(lo) < fld.ordinal(minimum) <= fld.ordinal(hi)
    )


def view_key(node: Profile) -> tuple[object, ...]:
    """Everything :func:`can_run` reads of a node, as a hashable key: nodes with equal keys get the
    same answer for a model (a large pool has a few kinds of node, and the answer names no node)."""
    return (tuple(sorted(node.registers.items())),
            tuple(sorted(node.writable.items())) if node.writable is not None else None,
            tuple(sorted((node.guest_view or {}).items())) if node.guest_view is not None else None,
            node.kvm.writable_imp_id_regs)


def can_run_each(nodes: Sequence[Profile], model: Model) -> dict[str, CanRun]:
    """:func:`can_run` for every node, computed once per distinct :func:`view_key`."""
    by_view: dict[tuple[object, ...], CanRun] = {}
    out: dict[str, CanRun] = {}
    for node in nodes:
        key = view_key(node)
        found = by_view.get(key)
        if found is None:
            found = by_view[key] = can_run(node, model)
        out[node.name] = found
    return out


def can_run(node: Profile, model: Model) -> CanRun:
    """Whether KVM on ``node`` accepts ``model`` at VM start (and so as a migration target).

    KVM's accept rule: a field inside the node's writable mask must be safe against the node's
    value under the field's rule; every other bit must equal the node's value. A node that
    reported no masks can only run its own view.
    """
    refusals: list[Refusal] = []
    warnings: list[str] = []
    off_groups = {group for group in kvm.VCPU_FEATURE_FIELDS if kvm.vcpu_group_is_off(model.value, group)}
    for reg in catalog.registers().values():
        if reg.name not in model.registers:
            continue
        mv, nv = model.value(reg.name), node.value(reg.name)
        seen = (node.guest_view or {}).get(reg.name)
        if mv == nv and seen is not None and seen != mv:
            # KVM leaves the register untrapped when the VM's value equals the host's: the guest reads the physical one
            for fld in reg.fields:
                if fld.extract(seen) != fld.extract(mv):
                    refusals.append(Refusal(reg.name, fld.name, fld.extract(seen), fld.extract(mv), (), None,
                                            "a guest reads the physical register here, not the model's value: KVM traps it only "
                                            "when the VM's value differs from the node's (guest view measured by the agent)"))
            continue
        if mv == nv:
            continue
        if reg.kind is RegisterKind.IDENTITY:
            if node.kvm.writable_imp_id_regs is not True:
                refusals.append(
                    Refusal(reg.name, "*", nv, mv, (), False,
                            "the node's KVM cannot set implementation ID registers "
                            "(KVM_CAP_ARM_WRITABLE_IMP_ID_REGS, Linux 6.15+): the model must "
                            "present this node's own value")
                )
            continue
        for fld in reg.fields:
            fm, fn = fld.extract(mv), fld.extract(nv)
            if fm == fn:
                continue
            group = _vcpu_group(fld)
            if group in off_groups and fm == 0:
                continue
            writable = kvm.is_field_writable(node.writable, fld)
            feats = _features_of_field(fld, fm, fn)
            if writable is None:
                rule = "the node reported no writable ID registers (KVM before Linux 6.7): it can only run its own view"
            elif not writable and (reg.name, fld.name) in kvm.IGNORED_WRITES:
                rule = "KVM accepts a written value here but ignores it: the guest reads the node's value (measured on Linux 7.3)"
            elif not writable:
                rule = "not writable on this node: must equal the node's value"
            elif reg.name in kvm.UNCHECKED_WRITABLE:
                continue  # any value of its writable fields (set_clidr checks only the IDC rule below)
            elif kvm.safe_value(fld, fm, fn) != fm:
                eff, safe = kvm.effective_rule(fld)
                rule = f"KVM's {eff.value} rule refuses it"
                if eff is catalog.Rule.EXACT:
                    rule += f" (only the node's value or {safe:#x})"
            else:
                if reg.name == "CTR_EL0":
                    warnings.append(
                        f"CTR_EL0.{fld.name} differs from the node's: every guest CTR_EL0 read "
                        "traps to KVM on this node (JITs notice)"
                    )
                continue
            refusals.append(Refusal(reg.name, fld.name, fn, fm, feats, writable, rule))
        if reg.name == "CLIDR_EL1" and clidr_implies_idc(mv) and not catalog.field("CTR_EL0", "IDC").extract(node.value("CTR_EL0")):
            refusals.append(
                Refusal(reg.name, "LoUU/LoUIS/LoC", nv, mv, (), kvm.is_field_writable(node.writable, reg.fields[0]),
                        "KVM refuses a CLIDR_EL1 that implies CTR_EL0.IDC (LoC 0, or LoUU and LoUIS 0) on a node without IDC "
                        "(sys_regs.c set_clidr; measured on Linux 6.12 and 7.3)")
            )
        stray = (mv ^ nv) & ~reg.defined_mask
        if stray:
            mask = None if node.writable is None else node.writable.get(reg.name, 0)
            if mask is None or stray & ~mask:
                refusals.append(
                    Refusal(reg.name, f"bits {stray:#x}", nv & stray, mv & stray, (), False,
                            "bits outside any catalogued field must equal the node's")
                )
    return CanRun(ok=not refusals, refusals=tuple(refusals), warnings=tuple(dict.fromkeys(warnings)))


@dataclass(frozen=True)
class FieldDiff:
    register: str
    field: str
    a: int
    b: int
    features_only_in_a: tuple[str, ...]
    features_only_in_b: tuple[str, ...]


def diff(a: Mapping[str, int], b: Mapping[str, int]) -> list[FieldDiff]:
    """Every catalogued field that differs between two register sets, in catalog order."""
    out: list[FieldDiff] = []
    for reg in catalog.registers().values():
        va, vb = a.get(reg.name, 0), b.get(reg.name, 0)
        if va == vb:
            continue
        for fld in reg.fields:
            fa, fb = fld.extract(va), fld.extract(vb)
            if fa == fb:
                continue
            gained = _features_of_field(fld, fa, fb)
            higher_a = fld.ordinal(fa) > fld.ordinal(fb)
            out.append(
                FieldDiff(
                    reg.name, fld.name, fa, fb,
                    features_only_in_a=gained if higher_a else (),
                    features_only_in_b=() if higher_a else gained,
                )
            )
    return out


@dataclass(frozen=True)
class SettingError(ValueError):
    """A requested setting cannot be applied; ``setting`` names it (e.g. ``features.FEAT_SVE``)."""

    setting: str
    reason: str

    def __str__(self) -> str:
        return f"{self.setting}: {self.reason}"


@dataclass(frozen=True)
class Applied:
    model: Model
    switched_off: tuple[str, ...] = ()  # every FEAT the settings removed, dependants included
    notes: tuple[str, ...] = field(default=())


def _lower_to(fld: Field, current: int, minimum: int) -> int:
    """The value just below ``minimum`` (never above ``current``), honouring signedness."""
    target_ordinal = fld.ordinal(minimum) - 1
    if fld.signed:
        lowest = -(1 << (fld.width - 1))
        target_ordinal = max(target_ordinal, lowest)
        target = target_ordinal & fld.max_value
    else:
        target = max(target_ordinal, 0)
    return target if fld.ordinal(target) < fld.ordinal(current) else current


def _make_false(cond: features.Cond, regs: dict[str, int], setting: str) -> None:
    """Lower register fields until ``cond`` no longer holds; refuse what lowering cannot do."""
    if not features.evaluate(cond, regs):
        return
    op = cond[0]
    if op == "ge":
        fld = catalog.field(cond[1], cond[2])
        cur = fld.extract(regs.get(fld.register, 0))
        new = _lower_to(fld, cur, cond[3])
        if kvm.safe_value(fld, new, cur) != new:
            eff, _ = kvm.effective_rule(fld)
            raise SettingError(setting, f"{fld.qualified} cannot be lowered: its rule is {eff.value}")
        regs[fld.register] = fld.insert(regs.get(fld.register, 0), new)
    elif op == "or":
        _make_false(cond[1], regs, setting)
        _make_false(cond[2], regs, setting)
    elif op == "and":
        _make_false(cond[1] if cond[1][0] not in ("lt",) else cond[2], regs, setting)
    elif op == "implies":
        _make_false(cond[2], regs, setting)
    elif op == "feat":
        _make_false(features.all_features()[cond[1]].cond or ("const", False), regs, setting)
    elif op == "eq":
        fld = catalog.field(cond[1], cond[2])
        regs[fld.register] = fld.insert(regs.get(fld.register, 0), 0)
    if features.evaluate(cond, regs):
        raise SettingError(setting, "cannot be switched off by lowering ID register fields")


def _parse_settings(
    feature_settings: Mapping[str, str], register_settings: Mapping[str, int]
) -> tuple[list[SettingError], dict[str, tuple[str, str]], dict[Field, tuple[int, str]]]:
    """Check settings on their own (no pool needed); return every error and the parsed settings."""
    errors: list[SettingError] = []
    wanted: dict[str, tuple[str, str]] = {}  # FEAT -> (Disabled|Required, setting that said so)
    for name, state in feature_settings.items():
        where = f"features.{name}"
        if state not in ("Disabled", "Required"):
            errors.append(SettingError(where, f"{state!r} is not one of Disabled, Required"))
            continue
        try:
            feat = features.lookup(name)
        except features.UnknownFeature as exc:
            errors.append(SettingError(where, str(exc)))
            continue
        wanted[feat.name] = (state, where)

    raw: dict[Field, tuple[int, str]] = {}
    for ref, value in register_settings.items():
        where = f"registers.{ref}"
        try:
            fld = catalog.parse_field_ref(ref)
        except KeyError as exc:
            errors.append(SettingError(where, str(exc.args[0])))
            continue
        if not 0 <= value <= fld.max_value:
            errors.append(SettingError(where, f"value {value:#x} does not fit in {fld.width} bits (0..{fld.max_value:#x})"))
            continue
        raw[fld] = (value, where)

    # Raw settings of FEAT-covered fields must not contradict FEAT settings.
    for fld, (value, where) in raw.items():
        for fname, minimum in features.feature_names_for_field(fld):
            if fname not in wanted:
                continue
            state, other = wanted[fname]
            has = fld.ordinal(value) >= fld.ordinal(minimum)
            if (state == "Required") != has:
                errors.append(SettingError(where, f"{fld.qualified}={value:#x} contradicts {other}: {state}"))
    return errors, wanted, raw


def validate_settings(feature_settings: Mapping[str, str], register_settings: Mapping[str, int]) -> list[SettingError]:
    """Every problem settings have on their own: unknown or dependency-only FEAT names, unknown
    registers or fields, values too wide, raw fields contradicting FEAT settings. Empty when valid;
    :func:`apply` checks the same, plus what depends on the pool."""
    return _parse_settings(feature_settings, register_settings)[0]


def apply(
    model: Model,
    *,
    base: Model | None = None,
    base_covered: Mapping[str, int] | None = None,
    feature_settings: Mapping[str, str] | None = None,
    register_settings: Mapping[str, int] | None = None,
    pool: Sequence[Profile] = (),
) -> Applied:
    """Adjust a combined model: cap by ``base`` (only the bits ``base_covered`` names, when given), switch FEATs off or require them, set raw fields.

    ``feature_settings`` maps FEAT names to ``"Disabled"`` or ``"Required"``;
    ``register_settings`` maps ``REGISTER.FIELD`` to a value. A raw field a FEAT covers is taken
    as that FEAT's setting; two settings that contradict each other are an error naming both.
    """
    regs = dict(model.registers)
    notes: list[str] = []
    before = set(features.decode(regs))
    if base is not None:
        for reg in _feature_registers():
            if reg.name not in regs or reg.name not in base.registers:
                continue
            value = regs[reg.name]
            covered = reg.defined_mask if base_covered is None else base_covered.get(reg.name, 0)
            for fld in reg.fields:
                if fld.mask & covered != fld.mask:
                    continue
                capped = kvm.safe_value(fld, fld.extract(base.value(reg.name)), fld.extract(value))
                value = fld.insert(value, capped)
            regs[reg.name] = value

    errors, wanted, raw = _parse_settings(feature_settings or {}, register_settings or {})
    if errors:
        raise errors[0]

    for fld, (value, where) in raw.items():
        cur = fld.extract(regs.get(fld.register, 0))
        if fld.register not in catalog.registers() or catalog.register(fld.register).kind is RegisterKind.IDENTITY:
            regs[fld.register] = fld.insert(regs.get(fld.register, 0), value)
            continue
        if kvm.safe_value(fld, value, cur) != value:
            raise SettingError(where, f"{value:#x} is more than the pool offers ({cur:#x}) under the {kvm.effective_rule(fld)[0].value} rule")
        regs[fld.register] = fld.insert(regs.get(fld.register, 0), value)
        named = features.feature_names_for_field(fld)
        if named:
            lost = [n for n, m in named if fld.ordinal(value) < fld.ordinal(m) <= fld.ordinal(cur)]
            if lost:
                notes.append(f"{where} is read as {', '.join(f'{n}: Disabled' for n in lost)}")

    for fname, (state, where) in sorted(wanted.items()):
        feat = features.all_features()[fname]
        if state == "Disabled":
            assert feat.cond is not None
            _make_false(feat.cond, regs, where)
        elif not features.holds(fname, regs):
            lacking = [p.name for p in pool if not features.holds(fname, p.registers)]
            who = f"; nodes without it: {', '.join(lacking)}" if lacking else ""
            raise SettingError(where, f"{fname} is Required but the model does not have it{who}")

    # Switch off what depends on anything switched off.
    present = set(features.decode(regs))
    for dep in sorted(features.dependants_to_drop(present)):
        feat = features.all_features()[dep]
        if dep in {n for n, (s, _) in wanted.items() if s == "Required"}:
            raise SettingError(f"features.{dep}", "is Required but a feature it depends on is Disabled")
        if feat.cond is not None and features.holds(dep, regs):
            try:
                _make_false(feat.cond, regs, f"features.{dep}")
            except SettingError as exc:
                notes.append(f"{dep} depends on a disabled feature but {exc.reason}")
    for group, leads in kvm.GROUP_LEADS.items():
        if all(catalog.field(r, f).extract(regs.get(r, 0)) == 0 for r, f in leads) \
                and not kvm.vcpu_group_is_off(lambda r: regs.get(r, 0), group):
            for r, f in kvm.VCPU_FEATURE_FIELDS[group]:
                if r in regs:
                    regs[r] = catalog.field(r, f).insert(regs[r], 0)
            notes.append(f"the settings switch the vCPU feature {group} off, and KVM then reports 0 in all of its fields")
    after = set(features.decode(regs))
    return Applied(
        model=Model(registers=regs, targets=model.targets, members=model.members),
        switched_off=tuple(sorted(before - after)),
        notes=tuple(notes),
    )
