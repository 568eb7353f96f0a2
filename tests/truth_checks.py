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
    return sorted((c["host"]["cpu"], c["host"]["kernel"], c["model"]["kind"], tuple(c["model"]["members"]), c["model"]["fingerprint"],
                   c["predicted"], c["accepted"], c["guest_read_matches"], tuple(c.get("refused", ()))) for c in matrix["cells"])


def check_moves(moves: Mapping[str, Any]) -> None:
    """Every pool model armcpu calls compatible moves both ways with the guest reading the same; a raw
    view is refused by the destination's KVM exactly where armcpu predicts."""
    rows = moves["moves"]
    armcpu = [m for m in rows if m["kind"] == "armcpu-model"]
    assert armcpu, "no guest moved with an armcpu model"
    bad = [m for m in armcpu if m["result"] != "ok" or m["guest_reads_match"] is not True]
    assert bad == [], bad[:3]
    pairs = {(m["from"]["cpu"], m["to"]["cpu"], m["from"]["kernel"]) for m in armcpu}
    assert all((b, a, k) in pairs for a, b, k in pairs), "a pool model must move in both directions"
    raw = [m for m in rows if m["kind"] == "raw-view"]
    assert raw and all(m["result"] == ("ok" if m["predicted"] else "refused") for m in raw), \
        [m for m in raw if m["result"] != ("ok" if m["predicted"] else "refused")][:3]
    assert all(m["guest_reads_match"] is True for m in raw if m["result"] == "ok")
    stock = [m for m in rows if m["kind"] == "stock-qemu"]
    assert stock, "stock QEMU moved nothing"


def comparable_moves(moves: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    return sorted((m["kind"], m["from"]["cpu"], m["from"]["kernel"], m["to"]["cpu"], m["to"]["kernel"], m.get("model", ""),
                   m["predicted"], m["result"], m["guest_reads_match"]) for m in moves["moves"])
