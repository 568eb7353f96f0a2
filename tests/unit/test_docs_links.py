"""Links between the README and docs/ point at files and headings that exist."""

from __future__ import annotations

import re
from pathlib import Path

from tests.docs_commands import DOCS
from tests.helpers import REPO

LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(doc: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in doc.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def test_relative_links_and_anchors_resolve() -> None:
    broken = []
    checked = 0
    for doc in DOCS:
        prose = re.sub(r"`[^`\n]*`", "", doc.read_text())  # inline code (patterns, rules) holds no links
        for target in LINK.findall(prose):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            resolved = (doc.parent / path).resolve() if path else doc
            checked += 1
            if not resolved.exists():
                broken.append(f"{doc.relative_to(REPO)}: {target}")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{doc.relative_to(REPO)}: {target} (no such heading)")
    assert checked >= 30
    assert broken == []
