"""The truth matrix, measured live: every model armcpu builds from the emulated hosts written into each
host's real KVM and read back by a guest, guests moved between hosts by armcpu's verifier and by stock
QEMU -- and all of it equal to what the recordings in tests/fixtures/kvm/emulated say (which the unit
tier replays against the current rules on every run)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from armcpu_testing import truth
from tests import truth_checks
from tests.emulated.conftest import Phase1

pytestmark = pytest.mark.emulated


@pytest.fixture(scope="module")
def measured(phase1: Phase1) -> Iterator[dict[str, Any]]:
    result = truth.measure(phase1.guest, phase1.workdir, phase1.profiles)
    print(json.dumps(truth.summarise(result), indent=1))
    yield result


def test_no_host_reported_an_error(measured: dict[str, Any]) -> None:
    assert measured["errors"] == {}


def test_the_live_matrix_holds_every_required_property(measured: dict[str, Any]) -> None:
    truth_checks.check_matrix(measured["matrix"])


def test_the_live_matrix_equals_the_recorded_one(measured: dict[str, Any]) -> None:
    recorded = truth_checks.load_matrix()
    assert truth_checks.comparable(measured["matrix"]) == truth_checks.comparable(recorded)


def test_the_live_guest_moves_hold_and_equal_the_recorded_ones(measured: dict[str, Any]) -> None:
    truth_checks.check_moves(measured["moves"])
    assert truth_checks.comparable_moves(measured["moves"]) == truth_checks.comparable_moves(truth_checks.load_moves())
