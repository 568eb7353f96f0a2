"""The package as a user installs it: a fresh virtualenv, ``pip install`` from a clean copy of the
sources (PyPI for the dependencies), each console script run. Without extras the CLI and the agent
work, the operator and the kubectl plugin name the extra they need; with ``[k8s]`` the operator starts too. Test
support is not part of what gets installed."""

from __future__ import annotations

import shutil
import subprocess
import venv
from pathlib import Path

import pytest

from tests.helpers import REPO


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def clean_sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tracked files only: a build from the work tree could pick up a stale ``build/`` directory."""
    target = tmp_path_factory.mktemp("src") / "armcpu"
    files = _run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=REPO).stdout.split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def test_each_console_script_works_from_the_extras_it_is_installed_with(clean_sources: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"
    installed = _run(bin_dir / "python", "-m", "pip", "install", "--quiet", str(clean_sources))
    assert installed.returncode == 0, installed.stderr[-2000:]

    assert _run(bin_dir / "armcpu", "--help", cwd=tmp_path).returncode == 0
    agent = _run(bin_dir / "armcpu-agent", "--help", cwd=tmp_path)
    assert agent.returncode == 0, agent.stderr[-2000:]
    operator = _run(bin_dir / "armcpu-operator", "--help", cwd=tmp_path)
    assert operator.returncode == 2 and "pip install 'armcpu[k8s]'" in operator.stderr, operator.stderr[-2000:]
    plugin = _run(bin_dir / "kubectl-armcpu", "advise", cwd=tmp_path)
    assert plugin.returncode == 2 and "pip install 'armcpu[kubectl]'" in plugin.stderr, plugin.stderr[-2000:]
    for absent in ("armcpu-controlplane", "armcpu-demo"):
        assert not (bin_dir / absent).exists(), f"{absent} is test support and must not be installed"
    testing = _run(bin_dir / "python", "-c", "import armcpu_testing", cwd=tmp_path)
    assert testing.returncode != 0 and "No module named 'armcpu_testing'" in testing.stderr

    with_extra = _run(bin_dir / "python", "-m", "pip", "install", "--quiet", f"{clean_sources}[k8s]")
    assert with_extra.returncode == 0, with_extra.stderr[-2000:]
    operator = _run(bin_dir / "armcpu-operator", "--help", cwd=tmp_path)
    assert operator.returncode == 0 and "usage: armcpu-operator" in operator.stdout, operator.stderr[-2000:]
    agent_imports = _run(bin_dir / "python", "-c", "import sys, node_agent.main; print(sorted(m for m in ('kopf', 'pydantic') if m in sys.modules))",
                         cwd=tmp_path)
    assert agent_imports.stdout.strip() == "[]", "the agent imports neither kopf nor pydantic"
