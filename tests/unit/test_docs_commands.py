"""Every command the README and docs/ show is run by a test; the offline ones here, with their shown
output compared with the real one (see tests/docs_commands.py for the format)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests import docs_commands as docs
from tests.helpers import REPO

COMMANDS = docs.commands()
OFFLINE = [c for c in COMMANDS if c.is_offline]


def test_every_documented_command_has_a_runner() -> None:
    assert len(COMMANDS) >= 20
    strays = [f"{c.where}: {c.text}" for c in COMMANDS
              if not c.is_offline and c.program not in docs.CLUSTER | docs.SCRIPTS and not c.is_benchmark]
    assert strays == [], "a documented command no test runs"


@pytest.mark.parametrize("command", OFFLINE, ids=[c.where for c in OFFLINE])
def test_offline_command_runs_and_prints_what_the_docs_show(command: docs.Command) -> None:
    env = {**os.environ, "COLUMNS": "100", "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", command.text], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    shown = list(command.shown)
    status = 0
    if shown and shown[-1].startswith("[exit "):
        status = int(shown.pop()[6:-1])
    assert done.returncode == status, f"{command.where}: {done.stderr[-2000:]}"
    actual = (done.stdout + done.stderr).splitlines()
    if shown and shown[-1] == "...":
        shown.pop()
        actual = actual[: len(shown)]
    assert actual == shown, f"{command.where}: the docs show something else"
