"""The README's main command, end to end: it must work and say what it promises."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.integration


def test_demo_runs_end_to_end_and_applies_every_example() -> None:
    """Exactly the README's command, ``./scripts/demo.sh``."""
    run = subprocess.run(["./scripts/demo.sh"], capture_output=True, text=True, check=False, cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    for example in sorted((REPO / "examples/cpumodels").glob("*.yaml")) + sorted((REPO / "examples/vms").glob("*.yaml")):
        name = next(line.split(":", 1)[1].strip() for line in example.read_text().splitlines() if line.startswith("  name:"))
        assert f"/{name} created" in out, f"{example.name} was not applied"
    assert "graviton    4            5          1          True    False" in out, "the Graviton3/4 pool is not MigrationSafe"
    assert "graviton4   3            3          1          True    True" in out
    assert "graviton: NOT safe under Scheduling (NoNodePresentsModel)" in out and "split the pool into pools of equal views" in out
    assert "graviton4: safe under Scheduling (DirectionalPlacement)" in out
    assert "boot pod: the webhook added start.cpumodel.armcpu.io/graviton4; the scheduler bound it to g4-fleet-c" in out
    assert "migration target pod (kubevirt.io/migrationJobUID): left as KubeVirt made it; bound to g4-fleet-a" in out \
        or "migration target pod (kubevirt.io/migrationJobUID): left as KubeVirt made it; bound to g4-fleet-b" in out
    assert "can run" not in out.split("=== Which migrations")[1].split("===")[0], "the guarantee speaks of migrations, not of running"
    assert "g4-old:" in out and "the node reported no writable ID registers (KVM before Linux 6.7)" in out
    assert "admitted already dressed by the mutating webhook" in out
    assert 'spec.nodeSelector: {"cpumodel.armcpu.io/graviton": "1"}' in out
    assert out.rstrip().endswith("Stopped; nothing left running.")
