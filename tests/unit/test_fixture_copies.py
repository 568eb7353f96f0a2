"""The repo's copies of shared reference data stay equal to their source in ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import CPUS, REFERENCE, SHARED


def _files(root: object, pattern: str) -> dict[str, bytes]:
    base = Path(str(root))
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob(pattern))}


@pytest.mark.parametrize(("name", "copy_dir", "pattern"), [("cpus", CPUS, "*.json"), ("reference", REFERENCE, "*.csv")])
def test_the_copies_equal_shared(name: str, copy_dir: object, pattern: str) -> None:
    if not (SHARED / name).is_dir():
        pytest.skip(f"{SHARED / name} is not here (a clone without its sibling ../shared): nothing to compare the copy with")
    source, copy = _files(SHARED / name, pattern), _files(copy_dir, pattern)
    assert sorted(copy) == sorted(source), f"files added or missing: copy ../shared/{name} into tests/fixtures/{name} again"
    assert [name for name in source if source[name] != copy[name]] == []
