#!/usr/bin/env python3
"""Generate armcpu/feat_data.py from Arm's machine-readable Features.json (AARCHMRS, BSD-3-Clause).

Each FEAT_xxx in Features.json carries constraints such as
``FEAT_AA64EL1 --> (FEAT_AES <-> UInt(ID_AA64ISAR0_EL1.AES) >= 1)``. This script keeps, per feature:
- ``cond``: the register condition (the right-hand side of ``<->``), when every register it names
  is one armcpu catalogues (an ID register a guest can see);
- ``guard``: what must hold for that condition to apply (e.g. FEAT_SME for SME sub-features);
- ``requires``: the features it implies (``FEAT_X --> ...``), used to switch dependants off.
Features whose definition is in registers a guest cannot read (trace, SPE, external debug) are
listed in ``NON_ID``; features with no register condition at all are dependency-only.

Usage: python scripts/gen_feat_map.py [path/to/Features.json]   (default ../shared/arm/Features.json)
The output is checked in; tests/unit/test_feat_data_fresh.py fails when it is stale.
"""

from __future__ import annotations

import json
import pprint
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from armcpu import catalog  # noqa: E402

Node = dict[str, Any]
Cond = tuple[Any, ...]


class NotAnIdRegister(Exception):
    pass


def field_ref(node: Node) -> tuple[str, str]:
    value = node.get("value")
    if node["_type"] != "Types.Field" or not isinstance(value, dict) or value.get("state") != "AArch64":
        raise NotAnIdRegister(str(value))
    try:
        fld = catalog.field(value["name"], value["field"])
    except KeyError as exc:
        raise NotAnIdRegister(str(value)) from exc
    return fld.register, fld.name


def convert(node: Node) -> Cond:
    """Translate an AST node of a register condition into armcpu's tuple form."""
    kind = node["_type"]
    if kind == "AST.Identifier":
        name = node["value"]
        return ("feat", name) if name.startswith("FEAT_") else ("version", name)
    if kind == "AST.Bool":
        return ("const", bool(node["value"]))
    if kind == "AST.BinaryOp":
        op = node["op"]
        if op in ("&&", "||"):
            return ("and" if op == "&&" else "or", convert(node["left"]), convert(node["right"]))
        if op in (">=", "==", "<"):
            fn = node["left"]
            if fn["_type"] != "AST.Function" or fn["name"] not in ("UInt", "SInt"):
                raise NotAnIdRegister(str(fn))
            reg, fld = field_ref(fn["arguments"][0])
            value = node["right"]["value"]
            op_name = {">=": "ge", "==": "eq", "<": "lt"}[op]
            return (op_name, reg, fld, int(value))
    raise NotAnIdRegister(kind)


def identifiers(cond: Cond) -> set[str]:
    if cond[0] == "feat":
        return {cond[1]}
    if cond[0] in ("and", "or"):
        return identifiers(cond[1]) | identifiers(cond[2])
    return set()


def _defines(node: Node, name: str) -> bool:
    """Whether ``node`` is (a guarded) ``name <-> ...``."""
    if node.get("_type") != "AST.BinaryOp":
        return False
    if node["op"] == "<->":
        return node["left"].get("_type") == "AST.Identifier" and node["left"].get("value") == name
    return node["op"] == "-->" and _defines(node["right"], name)


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared/arm/Features.json"
    data = json.loads(source.read_text())
    features: dict[str, dict[str, Any]] = {}
    non_id: dict[str, str] = {}
    for param in data["parameters"]:
        name = param["name"]
        if not name.startswith("FEAT_"):
            continue
        entry: dict[str, Any] = {"cond": None, "guard": None, "requires": []}
        candidates: list[tuple[Cond | None, Cond]] = []
        for constraint in param["constraints"]:
            guard: Node | None = None
            body = constraint
            # Peel guards: A --> (X <-> C), and nested A --> (B --> (X <-> C)) as A && B.
            while (
                body["_type"] == "AST.BinaryOp" and body["op"] == "-->" and body["right"].get("op") in ("<->", "-->")
                and _defines(body["right"], name)
            ):
                left = body["left"]
                guard = left if guard is None else {"_type": "AST.BinaryOp", "op": "&&", "left": guard, "right": left}
                body = body["right"]
            if body["_type"] == "AST.BinaryOp" and body["op"] == "<->":
                lhs = body["left"]
                if lhs["_type"] != "AST.Identifier" or lhs["value"] != name:
                    continue
                try:
                    cond = convert(body["right"])
                    guard_cond = convert(guard) if guard is not None else None
                except NotAnIdRegister as exc:
                    non_id[name] = f"defined in a register a guest cannot read ({exc})"
                    continue
                candidates.append((guard_cond, cond))
            elif (
                body["_type"] == "AST.BinaryOp"
                and body["op"] == "-->"
                and body["left"]["_type"] == "AST.Identifier"
                and body["left"]["value"] == name
            ):
                try:
                    entry["requires"].append(convert(body["right"]))
                except NotAnIdRegister:
                    pass
        if candidates:
            # Arm states one equivalence per field and all must hold (FEAT_FP16 <-> FP >= 1 and
            # FEAT_FP16 <-> AdvSIMD >= 1): AND them. The AArch64 equivalences define the feature;
            # AArch32 views (guarded by FEAT_AA32EL0) are used only when there is no AArch64 one.
            aa64 = [gc for gc in candidates if "FEAT_AA32EL0" not in identifiers(gc[0] or ("const", True))]
            # An equivalence under a narrower guard (FEAT_I8MM <-> ZFR0.I8MM >= 1 only when SVE or
            # SME exists) becomes ("implies", guard, cond).
            chosen = aa64 or candidates
            chosen.sort(key=lambda gc: len(repr(gc[0])))
            entry["guard"] = chosen[0][0]
            cond = chosen[0][1]
            for more_guard, more in chosen[1:]:
                if more == cond:
                    continue
                cond = ("and", cond, more if more_guard == entry["guard"] else ("implies", more_guard, more))
            entry["cond"] = cond
            non_id.pop(name, None)
        elif name in non_id:
            continue
        features[name] = entry

    meta = data["_meta"]
    header = f'''"""FEAT_xxx definitions, GENERATED by scripts/gen_feat_map.py -- do not edit by hand.

Derived from Arm's AARCHMRS Features.json {meta["version"]["architecture"]} build {meta["version"]["build"]}
(ref {meta["version"]["ref"]}, {meta["version"]["timestamp"]}).
{meta["license"]["copyright"]}
{meta["license"]["info"]} The full notice is in LICENSES/ARM-AARCHMRS-BSD-3-Clause.txt.

Condition tuples: ("ge"|"eq"|"lt", REGISTER, FIELD, VALUE), ("and"|"or", a, b), ("feat", NAME),
("version", NAME), ("const", BOOL), ("implies", guard, cond).
"""

from typing import Any

'''
    body = "FEATURES: dict[str, dict[str, Any]] = " + pprint.pformat(features, width=100, sort_dicts=True)
    body += "\n\nNON_ID: dict[str, str] = " + pprint.pformat(non_id, width=100, sort_dicts=True) + "\n"
    (REPO / "armcpu/feat_data.py").write_text(header + body)


if __name__ == "__main__":
    main()
