"""The test harness's long-running processes (etcd, kube-apiserver, the node's daemons): each in a
process group of its own, logging to a file, so a stop reaches everything it started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``args`` in a new session, stdout and stderr appended to ``log``."""
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_groups(processes: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM every running one's process group, in order; SIGKILL a group still there after ``timeout``."""
    for proc in processes:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    for proc in processes:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
