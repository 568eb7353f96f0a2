"""Every command the README and docs/ show, so tests can run them.

A command is a ``$ `` line inside a fenced ```` ```console ```` block (a trailing ``\\`` continues it on
the next line); the lines after it, up to the next command or the block's end, are the output the
docs show. Each command's program decides who runs it:

- OFFLINE programs (the CLI, the agent in replay mode, ``--help`` texts): tests/unit/test_docs_commands.py,
  which also compares the shown output with the real one;
- CLUSTER programs (kubectl, helm): tests/integration/test_docs_commands.py, against the demo's cluster;
- SCRIPTS: the README's two commands, run by tests/integration/test_demo.py and by CI itself;
- BENCHMARKS (``python -m benchmarks...``): tests/integration/test_docs_commands.py, at the documented
  (smallest) size.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
OFFLINE = {"armcpu", "armcpu-agent", "armcpu-operator", "kubectl-armcpu"}
DEV_TOOLS = ("python -m armcpu_testing.",)  # test support run from a clone: offline too
CLUSTER = {"kubectl", "helm"}
SCRIPTS = {"./scripts/demo.sh", "./scripts/test.sh"}


@dataclass(frozen=True)
class Command:
    doc: Path
    line: int
    text: str
    shown: tuple[str, ...]  # output lines the docs show

    @property
    def program(self) -> str:
        return shlex.split(self.text)[0]

    @property
    def is_offline(self) -> bool:
        return self.program in OFFLINE or self.text.startswith(DEV_TOOLS)

    @property
    def is_benchmark(self) -> bool:
        return self.text.startswith(("python -m benchmarks.", "python -c 'from benchmarks."))

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


def commands(docs: list[Path] = DOCS) -> list[Command]:
    found: list[Command] = []
    for doc in docs:
        found += _commands_of(doc)
    return found


def _commands_of(doc: Path) -> list[Command]:
    out: list[Command] = []
    in_block, continued = False, False
    text: list[str] = []
    shown: list[str] = []
    start = 0
    for number, line in [*enumerate(doc.read_text().splitlines(), 1), (0, "```")]:
        if line.startswith("```") or (in_block and line.startswith("$ ") and not continued):
            if text:
                out.append(Command(doc, start, " ".join(text), tuple(shown)))
            text, shown = [], []
            if line.startswith("```"):
                in_block = not in_block and line.strip() == "```console"
                continue
        if not in_block:
            continue
        if continued or line.startswith("$ "):
            if not continued:
                start = number
            text.append(line.removeprefix("$ ").strip().removesuffix("\\").strip())
            continued = line.rstrip().endswith("\\")
        elif text:
            shown.append(line)
    return out


_AGE = re.compile(r"^\d+(\.\d+)?(s|m|h|d)(\d+s)?$|^<invalid>$")


def normalised(line: str) -> list[str]:
    """A line's tokens without ages (``39s``, ``2m3s``), which differ from run to run, and without
    the spacing that depends on the widest value of a column."""
    return [token for token in line.split() if not _AGE.match(token)]
