"""One boot of every emulated host for the whole tier: phase 1 of the truth matrix is the agent's probe,
which the probe checks (test_real_kvm.py) and the truth matrix (test_truth_matrix.py) share."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from armcpu.profile import Profile
from armcpu_testing import emulated, truth


@dataclass(frozen=True)
class Phase1:
    guest: emulated.Guest
    workdir: Path
    runs: dict[tuple[str, str], emulated.Run]
    profiles: dict[tuple[str, str], Profile]


@pytest.fixture(scope="session")
def phase1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phase1]:
    if os.geteuid() != 0:
        pytest.skip("building and booting the emulated hosts needs root (debootstrap, binfmt_misc); CI runs as root")
    guest = emulated.build_guest()
    workdir = tmp_path_factory.mktemp("emulated")
    runs, profiles = truth.probe_all(guest, workdir, truth.CPUS)
    yield Phase1(guest, workdir, runs, profiles)
