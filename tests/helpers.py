"""Shared test helpers: where the real CPU data lives and how to load it."""

from __future__ import annotations

import json
import os
from pathlib import Path

from armcpu.profile import Profile, from_dict

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ARMCPU_SHARED", REPO.parent / "shared"))
CPUS = REPO / "tests" / "fixtures" / "cpus"  # a copy of ../shared/cpus (tests/unit/test_fixture_copies.py keeps it equal)
REFERENCE = REPO / "tests" / "fixtures" / "reference"  # a copy of ../shared/reference (kept equal by test_fixture_copies)


def load_cpu(relpath: str) -> Profile:
    path = CPUS / relpath
    return from_dict(json.loads(path.read_text()), path.name)


def raw_cpu(relpath: str) -> dict:  # type: ignore[type-arg]
    return json.loads((CPUS / relpath).read_text())  # type: ignore[no-any-return]
