"""The cluster commands of the docs (kubectl, helm) run against the demo's cluster, in document order;
what the docs show is what they print, ages aside (see tests/docs_commands.py)."""

from __future__ import annotations

import ast
import json
import os
import subprocess

import pytest

from armcpu_testing.demo import demo
from tests import docs_commands as docs
from tests.helpers import REPO

pytestmark = pytest.mark.integration
CLUSTER = [c for c in docs.commands() if c.program in docs.CLUSTER]


def test_documented_cluster_commands_run_and_print_what_the_docs_show() -> None:
    assert len(CLUSTER) >= 8
    with demo(keep=False) as show:
        show.run()
        tools = os.environ["ARMCPU_TOOLS_DIR"]
        env = {**os.environ, "KUBECONFIG": str(show.plane.kubeconfig), "PATH": f"{tools}:{REPO / '.venv' / 'bin'}:{os.environ['PATH']}"}
        failures = []
        for command in CLUSTER:
            done = subprocess.run(["bash", "-c", command.text], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
            if done.returncode != 0:
                failures.append(f"{command.where}: exit {done.returncode}: {done.stderr[-500:]}")
                continue
            shown = [docs.normalised(line) for line in command.shown]
            actual = [docs.normalised(line) for line in done.stdout.splitlines()]
            for lines in (shown, actual):
                while lines and not lines[-1]:
                    lines.pop()
            if shown and shown[-1] == ["..."]:
                shown.pop()
                actual = actual[: len(shown)]
            if shown != actual:
                failures.append(f"{command.where}: shows {shown}, printed {actual}")
        assert failures == []


BENCHMARKS = [c for c in docs.commands() if c.is_benchmark]


@pytest.mark.parametrize("command", BENCHMARKS, ids=[c.where for c in BENCHMARKS])
def test_documented_benchmark_commands_run(command: docs.Command) -> None:
    """The benchmark at its documented size still runs and still says what docs/benchmarks.md reports."""
    env = {**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", command.text], capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    try:
        result = json.loads(done.stdout)  # the convergence benchmark prints JSON
    except ValueError:
        result = ast.literal_eval(done.stdout.strip())  # agent_footprint() is printed as a Python dict
    if "clients" in result:  # benchmarks.clients: every client listed every Node
        assert [c["client"] for c in result["clients"]] == ["armcpu", "kubernetes", "kubernetes_asyncio"]
        assert all(c["listed"] == result["nodes"] for c in result["clients"]), result
    elif "vm_dressed_after_kib" in result:  # benchmarks.memory: what the caches keep shrank
        for kind in ("vm_undressed", "vm_dressed", "profile"):
            assert 0 < result[f"{kind}_after_kib"] < result[f"{kind}_before_kib"], result
    elif "proposals" in result:  # benchmarks.advise: every class of the fleet found, and pools proposed
        assert result["classes"] == 12 and result["proposals"] >= 1 and result["largest_proposal_nodes"] > 1, result
    elif "ratio" in result:
        quiet = next(v for k, v in result.items() if k.startswith("operator_requests_in_") and k.endswith("s_quiet"))
        assert all(k.startswith("watch ") for k in quiet), f"no write and no list at steady state: {quiet}"
        assert result["operator_requests_during_convergence"]["patch virtualmachines"] == result["vms"]
        if "vmis_started" in result:
            # a watch re-opened in that window (every 290-300 s, by the clock) is no answer to the updates
            answered = {k: v for k, v in result["operator_requests_during_vmi_updates"].items() if not k.startswith("watch ")}
            assert answered == {}, "a VMI's status update makes the operator write (or list) nothing"
            assert set(result["operator_requests_starting_vmis"]) <= {"patch cpumodels"}, "starting VMs changes only the counts"
    else:
        assert result["agent_once_wall_s"] > 0 and result["agent_once_max_rss_mib"] > 0
