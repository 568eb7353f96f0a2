"""FEAT_xxx names: decode a register set into the features that hold, and switch features off.

Definitions come from Arm's Features.json (generated into `feat_data`), plus a short, documented
list of derived definitions for features Features.json states only through dependencies but whose
register encoding the Arm ARM gives in the field descriptions (EL support, pointer authentication).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from armcpu import catalog
from armcpu.feat_data import FEATURES as _GENERATED
from armcpu.feat_data import NON_ID

Cond = tuple[Any, ...]
Registers = Mapping[str, int]

# Arm ARM (DDI 0487), ID_AA64PFR0_EL1.ELx: 0b0001 = AArch64 only, 0b0010 = AArch64 and AArch32;
# ID_AA64ISAR1/2 APA, API, APA3 != 0 means pointer authentication is implemented (FEAT_PAuth).
DERIVED: dict[str, Cond] = {
    **{f"FEAT_AA64EL{n}": ("ge", "ID_AA64PFR0_EL1", f"EL{n}", 1) for n in range(4)},
    **{f"FEAT_AA32EL{n}": ("ge", "ID_AA64PFR0_EL1", f"EL{n}", 2) for n in range(4)},
    "FEAT_EL2": ("ge", "ID_AA64PFR0_EL1", "EL2", 1),
    "FEAT_EL3": ("ge", "ID_AA64PFR0_EL1", "EL3", 1),
    "FEAT_PAuth": (
        "or",
        ("or", ("ge", "ID_AA64ISAR1_EL1", "APA", 1), ("ge", "ID_AA64ISAR1_EL1", "API", 1)),
        ("ge", "ID_AA64ISAR2_EL1", "APA3", 1),
    ),
}


@dataclass(frozen=True)
class Feature:
    """One FEAT name and how registers encode it."""

    name: str
    cond: Cond | None  # None: the feature has no register encoding (dependency-only)
    guard: Cond | None
    requires: tuple[Cond, ...]
    derived: bool

    @property
    def single_field(self) -> tuple[catalog.Field, int] | None:
        """(field, minimum value) when the feature is one field >= a value, else None."""
        cond = self.cond
        if cond is None:
            return None
        if cond[0] == "and" and cond[1][0] == "ge" and cond[2][0] == "lt" and cond[1][1:3] == cond[2][1:3]:
            cond = cond[1]  # PMU versions: PMUVer >= N && PMUVer < 15 (0xF is IMPDEF)
        if cond[0] == "ge":
            return catalog.field(cond[1], cond[2]), int(cond[3])
        return None

    @property
    def fields(self) -> tuple[catalog.Field, ...]:
        return tuple(catalog.field(c[1], c[2]) for c in _comparisons(self.cond))


def _comparisons(cond: Cond | None) -> list[Cond]:
    if cond is None:
        return []
    if cond[0] in ("ge", "eq", "lt"):
        return [cond]
    if cond[0] in ("and", "or"):
        return _comparisons(cond[1]) + _comparisons(cond[2])
    if cond[0] == "implies":
        return _comparisons(cond[2])
    return []


@cache
def all_features() -> Mapping[str, Feature]:
    out: dict[str, Feature] = {}
    for name, entry in _GENERATED.items():
        derived = entry["cond"] is None and name in DERIVED
        out[name] = Feature(
            name=name,
            cond=DERIVED[name] if derived else entry["cond"],
            guard=None if derived else entry["guard"],
            requires=tuple(entry["requires"]),
            derived=derived,
        )
    return out


class UnknownFeature(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def lookup(name: str) -> Feature:
    """The feature named ``name`` (case-insensitive, ``FEAT_`` prefix optional); clear errors."""
    wanted = name.strip()
    if not wanted.upper().startswith("FEAT_"):
        wanted = "FEAT_" + wanted
    feats = all_features()
    for candidate, feat in feats.items():
        if candidate.lower() == wanted.lower():
            if feat.cond is None:
                raise UnknownFeature(
                    f"{candidate} is defined only through other features (no ID register field "
                    f"encodes it); name the features it stands for instead"
                )
            return feat
    for candidate, reason in NON_ID.items():
        if candidate.lower() == wanted.lower():
            raise UnknownFeature(f"{candidate} cannot be controlled for a guest: it is {reason}")
    raise UnknownFeature(f"unknown feature {name!r}")


def _field_value(regs: Registers, register: str, field_name: str) -> int:
    fld = catalog.field(register, field_name)
    return fld.ordinal(fld.extract(regs.get(register, 0)))


def evaluate(cond: Cond | None, regs: Registers, _seen: frozenset[str] = frozenset()) -> bool:
    """Whether ``cond`` holds for ``regs``. Architecture-version atoms are never implied."""
    if cond is None:
        return False
    op = cond[0]
    if op == "ge":
        return _field_value(regs, cond[1], cond[2]) >= catalog.field(cond[1], cond[2]).ordinal(cond[3])
    if op == "lt":
        return _field_value(regs, cond[1], cond[2]) < catalog.field(cond[1], cond[2]).ordinal(cond[3])
    if op == "eq":
        return _field_value(regs, cond[1], cond[2]) == catalog.field(cond[1], cond[2]).ordinal(cond[3])
    if op == "and":
        return evaluate(cond[1], regs, _seen) and evaluate(cond[2], regs, _seen)
    if op == "or":
        return evaluate(cond[1], regs, _seen) or evaluate(cond[2], regs, _seen)
    if op == "feat":
        return holds(cond[1], regs, _seen)
    if op == "implies":
        return not _guard_holds(cond[1], regs, _seen) or evaluate(cond[2], regs, _seen)
    if op == "const":
        return bool(cond[1])
    return False  # ("version", ...): not visible in ID registers


def holds(name: str, regs: Registers, _seen: frozenset[str] = frozenset()) -> bool:
    """Whether feature ``name`` holds; an unencoded feature counts as present for guards only."""
    feat = all_features().get(name)
    if feat is None or name in _seen:
        return False
    seen = _seen | {name}
    if feat.cond is None:
        return False
    if feat.guard is not None and not _guard_holds(feat.guard, regs, seen):
        return False
    return evaluate(feat.cond, regs, seen)


def _guard_holds(cond: Cond, regs: Registers, seen: frozenset[str]) -> bool:
    """Guards name features like FEAT_SME; an unencoded one (FEAT_TRC_SR) is assumed present."""
    op = cond[0]
    if op == "feat":
        feat = all_features().get(cond[1])
        return feat is None or feat.cond is None or holds(cond[1], regs, seen)
    if op == "and":
        return _guard_holds(cond[1], regs, seen) and _guard_holds(cond[2], regs, seen)
    if op == "or":
        return _guard_holds(cond[1], regs, seen) or _guard_holds(cond[2], regs, seen)
    return evaluate(cond, regs, seen)


def decode(regs: Registers) -> list[str]:
    """Every FEAT name that holds for this register set, sorted."""
    return sorted(name for name in all_features() if holds(name, regs))


def _requirement_met(cond: Cond, present: set[str]) -> bool:
    op = cond[0]
    if op == "feat":
        feat = all_features().get(cond[1])
        return feat is None or feat.cond is None or cond[1] in present
    if op == "and":
        return _requirement_met(cond[1], present) and _requirement_met(cond[2], present)
    if op == "or":
        return _requirement_met(cond[1], present) or _requirement_met(cond[2], present)
    return True  # versions and constants never force a feature off


def dependants_to_drop(present: Iterable[str]) -> set[str]:
    """Features in ``present`` whose architectural requirements are no longer all present."""
    current = set(present)
    dropped: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name in sorted(current):
            feat = all_features()[name]
            if not all(_requirement_met(req, current) for req in feat.requires):
                current.discard(name)
                dropped.add(name)
                changed = True
    return dropped


def feature_names_for_field(fld: catalog.Field) -> list[tuple[str, int]]:
    """Single-field features encoded by ``fld``, as (name, minimum value), lowest first."""
    return list(_single_field_features().get(fld, ()))


@cache
def _single_field_features() -> dict[catalog.Field, tuple[tuple[str, int], ...]]:
    """Every field's single-field features, indexed once (can_run asks for each differing field of
    each node: scanning every feature each time was most of a 5,000-node reconcile)."""
    found: dict[catalog.Field, list[tuple[str, int]]] = {}
    for feat in all_features().values():
        sf = feat.single_field
        if sf is not None:
            found.setdefault(sf[0], []).append((feat.name, sf[1]))
    return {fld: tuple(sorted(items, key=lambda item: (fld.ordinal(item[1]), item[0]))) for fld, items in found.items()}
