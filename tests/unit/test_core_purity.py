"""The pure core stays pure: no I/O, no Kubernetes (import-linter checks imports too)."""

from __future__ import annotations

import ast

from tests.helpers import REPO

FORBIDDEN_MODULES = {"os", "subprocess", "socket", "pathlib", "kopf", "kubernetes", "yaml", "urllib", "shutil"}


def test_armcpu_core_imports_no_io_module_and_calls_no_open() -> None:
    problems = []
    for path in sorted((REPO / "armcpu").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [(node.module or "").split(".")[0]]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("open", "print", "input"):
                problems.append(f"{path.name}:{node.lineno} calls {node.func.id}()")
                continue
            else:
                continue
            problems += [f"{path.name}:{node.lineno} imports {n}" for n in names if n in FORBIDDEN_MODULES]
    assert problems == []
