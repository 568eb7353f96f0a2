"""``armcpu advise``: which pools to declare, from profile files (or, through ``kubectl armcpu``, a cluster).

The decisions are :mod:`armcpu.advisor`'s; this module only renders them: a table that fits an
80-column terminal (long lists summarised with a count), or ``-o json|yaml`` with every detail and a
CpuModel manifest per proposal.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

import yaml

from armcpu import advisor
from armcpu.profile import Profile
from armcpu_cli import output
from armcpu_k8s import manifests

WIDTH = 80
MAX_MATRIX_CLASSES = 16  # 4 columns per class: more would not fit 80 columns
MAX_MEMBERS_SHOWN = 3


def _members(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_MEMBERS_SHOWN])
    return shown + (f" and {len(names) - MAX_MEMBERS_SHOWN} more" if len(names) > MAX_MEMBERS_SHOWN else "")


def to_dict(advice: advisor.Advice) -> dict[str, Any]:
    """The stable ``-o json`` object: classes, matrix (per stack, every ordered pair), proposals, notes."""
    return {
        "classes": [{"id": c.id, "nodes": len(c.members), "members": list(c.members), "cpu": c.cpu,
                     "kernelSeries": c.kernel_series, "fingerprint": c.fingerprint, "features": len(c.features)}
                    for c in advice.classes],
        "stacks": {s.name: {"enforcement": s.mode, "description": s.description} for s in advisor.STACKS},
        "matrix": {stack: [{"from": cell.source, "to": cell.target, "ok": cell.ok, "reason": cell.reason, "message": cell.message}
                           for cell in cells] for stack, cells in advice.matrix.items()},
        "proposals": [_proposal(p, advice.classes) for p in advice.proposals],
        "notes": list(advice.notes),
    }


def _proposal(p: advisor.Proposal, classes: Sequence[advisor.NodeClass]) -> dict[str, Any]:
    manifest = manifests.cpumodel(p, classes)
    return {
        "name": manifest["metadata"]["name"],
        "kernelSeries": p.island,
        "classes": list(p.class_ids),
        "nodes": len(p.nodes),
        "members": list(p.nodes),
        "fingerprint": p.model.fingerprint,
        "features": len(p.model.features),
        "fronts": list(p.fronts),
        "guarantee": {stack: {"safe": g.safe, "reason": g.reason, "message": g.message} for stack, g in p.guarantees.items()},
        "lost": {cid: list(feats) for cid, feats in p.lost.items()},
        "explanation": p.explanation,
        "manifest": yaml.safe_dump(manifest, sort_keys=False),
    }


def classes_table(advice: advisor.Advice) -> list[str]:
    rows = [["CLASS", "NODES", "CPU", "KERNEL", "FEATS", "FINGERPRINT"]]
    rows += [[c.id, str(len(c.members)), c.cpu[:24], c.kernel_series, str(len(c.features)), c.fingerprint] for c in advice.classes]
    return output.table_lines(rows)


def matrix_table(advice: advisor.Advice) -> list[str]:
    """Each stack's matrix, ``yes`` where a VM started on the row's class may migrate to the column's."""
    out: list[str] = []
    ids = [c.id for c in advice.classes]
    for stack in advisor.STACKS:
        out += textwrap.wrap(f"May a VM started on ROW migrate to COLUMN? On {stack.description}:", WIDTH)
        if len(ids) > MAX_MATRIX_CLASSES:
            ok = sum(1 for cell in advice.matrix[stack.name] if cell.ok and cell.source != cell.target)
            out += [f"  {len(ids)} classes, {ok} safe moves between two of them: see -o json", ""]
            continue
        cells = {(c.source, c.target): c.ok for c in advice.matrix[stack.name]}
        out.append("      " + "".join(f"{i:>4}" for i in ids))
        out += [f"{a:<6}" + "".join(f"{'yes' if cells[(a, b)] else '-':>4}" for b in ids) for a in ids]
        out.append("")
    return out


def table(advice: advisor.Advice, profiles: Sequence[Profile], wide: bool = False) -> str:
    """The human view: classes, each stack's matrix, the proposals with their sentences, the notes.
    ``wide`` lists every node of a proposal instead of a count."""
    out = [f"{len(profiles)} node(s) in {len(advice.classes)} class(es)", "", *classes_table(advice), "", *matrix_table(advice)]
    out.append(f"{len(advice.proposals)} proposed pool(s), per kernel series, fewest nodes first:")
    for p in advice.proposals:
        manifest = manifests.cpumodel(p, advice.classes)
        out += textwrap.wrap(f"- {manifest['metadata']['name']} (Linux {p.island}, {manifest['spec']['enforcement']}), "
                             f"fingerprint {p.model.fingerprint}", WIDTH, subsequent_indent="    ")
        out += textwrap.wrap(p.explanation, WIDTH, initial_indent="    ", subsequent_indent="    ")
        nodes = ", ".join(p.nodes) if wide else _members(p.nodes)
        out += textwrap.wrap(f"nodes: {nodes}", WIDTH, initial_indent="    ", subsequent_indent="      ")
    if advice.notes:
        out.append("")
        for note in advice.notes:
            out += textwrap.wrap(note, WIDTH, initial_indent="note: ", subsequent_indent="      ")
    out.append("")
    out.append("Manifests: -o yaml (each proposal's `manifest`) or --manifests DIR.")
    return "\n".join(out)
