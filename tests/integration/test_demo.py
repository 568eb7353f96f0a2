"""The README's main command, end to end: it must work and say what it promises."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

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


def _processes_under(path: str) -> list[int]:
    """Processes whose command line names ``path`` (etcd's data dir, the API server's certificates...)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if path in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _descendants(pid: int) -> set[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - out
        out |= frontier
    return out


def _alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists() and "(zombie)" not in _state(pid)}


def _state(pid: int) -> str:
    try:
        return "(zombie)" if (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z" else ""
    except OSError:
        return ""


def _started(cmd: list[str], until: str) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    watchdog = threading.Timer(300, proc.kill)  # a line that never comes fails the test instead of hanging it
    watchdog.start()
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if until in line:
                return proc, lines
    finally:
        watchdog.cancel()
    raise AssertionError(f"{cmd} ended before {until!r}: {''.join(lines)[-3000:]}")


def test_sigterm_stops_a_kept_control_plane_and_everything_it_started() -> None:
    """``signal.sigwait`` without blocking the signals left SIGTERM its default action: the process died
    and etcd and kube-apiserver ran on (issue 19). ``--keep`` and the control plane wait the same way."""
    proc, lines = _started([sys.executable, "-m", "armcpu_testing.controlplane"], "stops it and removes everything it started")
    workdir = next(line.split("=", 1)[1].strip() for line in lines if line.startswith("export KUBECONFIG=")).rsplit("/", 1)[0]
    assert _processes_under(workdir), "etcd and kube-apiserver run under the work dir"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, "stopping a kept control plane is its normal end"
    assert _processes_under(workdir) == [] and not Path(workdir).exists()


def test_sigterm_in_the_middle_of_the_demo_stops_everything_it_started() -> None:
    proc, lines = _started([sys.executable, "-m", "armcpu_testing.demo", "--keep"], "=== ")
    started = _descendants(proc.pid)
    assert len(started) >= 2, "the demo's etcd and kube-apiserver run"
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, "".join(lines)[-2000:] + rest[-2000:]
    assert "nothing left running" in rest and _alive(started) == set(), f"left running: {_alive(started)}"
