"""``scripts/build-tools.sh`` run twice at once into one tools directory (two setups on one machine):
both succeed, every binary is built once and runs. Before, both built into the same ``NAME.tmp`` and
one failed with ``mv: cannot stat ...kubectl.tmp``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from armcpu_testing.controlplane import TOOLS
from tests.helpers import REPO


@pytest.mark.skipif(shutil.which("go") is None, reason="Go is not installed: build-tools.sh cannot build anything here")
def test_two_concurrent_builds_share_the_work_and_both_succeed(tmp_path: Path) -> None:
    env = {**os.environ, "ARMCPU_TOOLS_DIR": str(tmp_path / "tools")}
    runs = [subprocess.Popen(["bash", "scripts/build-tools.sh"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=1800) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-1500:] for _, err in outputs]
    assert all(out.strip().splitlines()[-1] == str(tmp_path / "tools") for out, _ in outputs)
    built = "".join(err for _, err in outputs)
    for tool in TOOLS:
        assert built.count(f"building {tool} ") == 1, f"{tool} built {built.count(f'building {tool} ')} times"
    assert sorted(p.name for p in (tmp_path / "tools").iterdir() if not p.name.startswith(".")) == sorted(TOOLS)
    assert subprocess.run([str(tmp_path / "tools" / "kubectl"), "version", "--client"], capture_output=True).returncode == 0
