"""What must hold for the truth matrix and the guest moves (``armcpu_testing.truth``), recorded or live.

Used by the unit tier on the recordings in tests/fixtures/kvm/emulated (with the current rules
recomputing every prediction) and by the emulated tier on what the kernels answer now.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tests.emulated_checks import RECORDINGS

MIN_CPUS, MIN_KERNELS, MIN_CELLS = 6, 2, 60


def load_matrix() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RECORDINGS / "truth-matrix.json").read_text())
    return data


def load_moves() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RECORDINGS / "guest-moves.json").read_text())
    return data


def _host(cell: Mapping[str, Any]) -> tuple[str, str]:
    return cell["host"]["cpu"], cell["host"]["kernel"]


def check_matrix(matrix: Mapping[str, Any]) -> None:
    """At least 6 CPU models x 2 kernels, 60 cells; armcpu's prediction equals the kernel's verdict in
    every cell, and the guest read back exactly every model the kernel accepted."""
    cells = matrix["cells"]
    hosts = {_host(c) for c in cells}
    assert len({h[0] for h in hosts}) >= MIN_CPUS and len({h[1] for h in hosts}) >= MIN_KERNELS, sorted(hosts)
    assert len(cells) >= MIN_CELLS
    assert all(c["accepted"] is not None for c in cells), [c for c in cells if c["accepted"] is None][:3]
    wrong = [(c["host"], c["model"], c.get("prediction"), c.get("disagreements")) for c in cells if c["predicted"] != c["accepted"]]
    assert wrong == [], f"{len(wrong)} cells where armcpu's prediction is not the kernel's verdict: {wrong[:5]}"
    misread = [(c["host"], c["model"], c.get("disagreements")) for c in cells if c["accepted"] and c["guest_read_matches"] is not True]
    assert misread == [], f"{len(misread)} accepted models the guest did not read back exactly: {misread[:5]}"
    kinds = {c["model"]["kind"] for c in cells}
    assert kinds == {"own", "pair", "cross-kernel-pair", "raw-view"}, kinds
    assert any(c["accepted"] for c in cells if c["model"]["kind"] == "pair")
    assert any(not c["accepted"] for c in cells), "a matrix in which every model runs everywhere proves no refusal"


def comparable(matrix: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """What a re-measurement must reproduce: per cell, the model and every verdict."""
    return sorted((c["host"]["cpu"], c["host"]["kernel"], c["model"]["kind"], tuple(c["model"]["members"]), c["model"]["key"],
                   c["predicted"], c["accepted"], c["guest_read_matches"], tuple(c.get("refused", ()))) for c in matrix["cells"])


def _end(m: Mapping[str, Any], side: str) -> tuple[str, str]:
    return m[side]["cpu"], m[side]["kernel"]


def check_moves(moves: Mapping[str, Any]) -> None:
    """Every move ended as armcpu predicted (``armcpu.migration.can_move``), for all three kinds; a move
    that completed let the guest read exactly what it read before; every pool model armcpu says can
    move, moved both ways; and each host took back its own guest (the control)."""
    rows = moves["moves"]
    assert {m["kind"] for m in rows} == {"armcpu-model", "raw-view", "stock-qemu"}
    wrong = [m for m in rows if m["result"] != ("ok" if m["predicted"] else "refused")]
    assert wrong == [], f"{len(wrong)} moves ended otherwise than predicted: {wrong[:3]}"
    assert all(m["guest_reads_match"] is True for m in rows if m["result"] == "ok")
    between = {(_end(m, "from"), _end(m, "to")) for m in rows if m["kind"] == "armcpu-model" and m["result"] == "ok"
               and _end(m, "from") != _end(m, "to")}
    assert between, "no pool model moved between two different hosts"
    assert all((b, a) in between for a, b in between), "a pool model must move in both directions"
    for kind in ("raw-view", "stock-qemu"):
        hosts = {_end(m, "from") for m in rows if m["kind"] == kind}
        home = {_end(m, "from") for m in rows if m["kind"] == kind and _end(m, "from") == _end(m, "to") and m["result"] == "ok"}
        assert home == hosts, f"{kind}: hosts that could not take back their own guest: {sorted(hosts - home)}"


def comparable_moves(moves: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    return sorted((m["kind"], m["from"]["cpu"], m["from"]["kernel"], m["to"]["cpu"], m["to"]["kernel"], m.get("model", ""),
                   m["predicted"], m["result"], m["guest_reads_match"]) for m in moves["moves"])
