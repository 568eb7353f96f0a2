"""The truth matrix and guest moves recorded on real kernels (tests/fixtures/kvm/emulated, measured by
``python -m armcpu_testing.truth``), replayed against the current rules on every run: a change to
armcpu's accept rules that disagrees with what a real kernel answered fails here, cell by cell."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from armcpu.migration import can_move, stock_destination
from armcpu.model import Model, can_run, combine, model_of
from armcpu.profile import Profile, from_dict
from armcpu_testing import truth
from tests import truth_checks
from tests.emulated_checks import RECORDINGS
from tests.helpers import REPO

MATRIX = truth_checks.load_matrix()
MOVES = truth_checks.load_moves()


@cache
def host_profile(cpu: str, kernel: str) -> Profile:
    from armcpu_testing.emulated import node_name

    name = node_name(cpu, kernel)
    return from_dict(json.loads((RECORDINGS / name / "profile-kvm.json").read_text()), name)


def _model(key: str) -> Model:
    return Model(registers={k: int(v, 16) for k, v in MATRIX["models"][key].items()})


def test_the_recorded_matrix_holds_every_required_property() -> None:
    truth_checks.check_matrix(MATRIX)


def test_every_cell_predicted_by_todays_rules_is_what_the_kernel_answered() -> None:
    wrong = []
    for cell in MATRIX["cells"]:
        node = host_profile(cell["host"]["cpu"], cell["host"]["kernel"])
        check = can_run(node, _model(cell["model"]["key"]))
        if check.ok != cell["accepted"]:
            wrong.append((node.name, cell["model"]["kind"], cell["model"]["members"], [r.message() for r in check.refusals][:3],
                          cell.get("disagreements")))
    assert wrong == [], wrong[:5]


def test_every_cell_still_describes_the_model_armcpu_builds() -> None:
    """The pool models of the matrix are what combine makes of the recorded profiles today (else a cell
    would speak of a model armcpu no longer builds)."""
    for cell in MATRIX["cells"]:
        members = [host_profile(*_split(m)) for m in cell["model"]["members"]]
        built = model_of(members[0]) if cell["model"]["kind"] in ("own", "raw-view") else combine(members).model
        assert dict(built.registers) == dict(_model(cell["model"]["key"]).registers), (cell["host"], cell["model"])


def _split(name: str) -> tuple[str, str]:
    """``neoverse-n1-linux-7.3.4`` -> the recorded host's (cpu, kernel)."""
    for directory in RECORDINGS.iterdir():
        if directory.name == name:
            meta = json.loads((directory / "kvm-conversation.json").read_text())["emulated"]
            return meta["qemu_cpu"], meta["kernel"]
    raise KeyError(name)


def test_the_recorded_guest_moves_hold() -> None:
    truth_checks.check_moves(MOVES)


def test_every_move_is_predicted_by_todays_rules() -> None:
    """can_move on the recorded profiles, today, says what the kernels (and stock QEMU) did."""
    hosts = {truth.emulated.node_name(*h): h for h in {(c["host"]["cpu"], c["host"]["kernel"]) for c in MATRIX["cells"]}}
    profiles = {h: host_profile(*h) for h in hosts.values()}
    wrong = []
    for move in MOVES["moves"]:
        source, target = (move["from"]["cpu"], move["from"]["kernel"]), (move["to"]["cpu"], move["to"]["kernel"])
        if move["kind"] == "stock-qemu":
            check = can_move(profiles[source], stock_destination(profiles[target]), model_of(profiles[source]))
        else:
            check = can_move(profiles[source], profiles[target], truth.move_model(profiles, move["model"], source))
        if check.ok != (move["result"] == "ok"):
            wrong.append((move["kind"], source, target, move.get("model"), [r.message() for r in check.refusals][:2], move["error"]))
    assert wrong == [], wrong[:5]


VERIFY_FIXTURES = sorted(RECORDINGS.glob("*/verify-*.json"))


@pytest.mark.parametrize("recording", VERIFY_FIXTURES, ids=[f"{p.parent.name}/{p.name}" for p in VERIFY_FIXTURES])
def test_armcpu_agent_verify_replays_a_real_kernels_answer(recording: Path, tmp_path: Path) -> None:
    """The whole command on a recorded conversation: it asks the kernel exactly what it asked the real
    one (the replay refuses anything else), and exits 0 only where the recorded kernel accepted."""
    done = subprocess.run([sys.executable, "-m", "node_agent.main", "verify", "--model", str(recording), "--kvm-replay", str(recording),
                           "-o", "json", "--node-name", recording.parent.name], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, 1), done.stderr
    doc = json.loads(done.stdout)
    cell = next(c for c in MATRIX["cells"] if truth.emulated.node_name(c["host"]["cpu"], c["host"]["kernel"]) == recording.parent.name
                and c["model"]["key"] == doc["model"]["key"])
    assert (doc["ok"], doc["accepted"], doc["guest_read_matches"]) == (cell["accepted"], cell["writes_accepted"], cell["guest_read_matches"])
    assert (done.returncode == 0) == doc["ok"]
    if done.returncode == 1:
        assert doc["disagreements"] or doc["run"]["error"], "a refusal names its fields, or why the vCPU could not be set up"


def test_a_probe_only_recording_cannot_answer_a_verification(tmp_path: Path) -> None:
    host = RECORDINGS / "neoverse-n1-linux-7.3.4"
    done = subprocess.run([sys.executable, "-m", "node_agent.main", "verify", "--model", str(host / "profile-kvm.json"),
                           "--kvm-replay", str(host / "kvm-conversation.json")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "holds no verifier conversation" in done.stderr


def test_docs_show_the_tables_of_the_recordings() -> None:
    doc = (REPO / "docs" / "truth.md").read_text()
    assert truth.tables(MATRIX, MOVES) in doc, "docs/truth.md: run `python -m armcpu_testing.truth --tables tests/fixtures/kvm/emulated`"
