"""How the commands print: ``-o json|yaml`` objects and plain tables, one way for ``armcpu`` and ``kubectl armcpu``."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import yaml


def emit(obj: Any, fmt: str) -> None:
    """``obj`` as YAML (``fmt == "yaml"``) or indented JSON on stdout."""
    if fmt == "yaml":
        sys.stdout.write(yaml.safe_dump(obj, sort_keys=False))
    else:
        sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def table_lines(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows as left-aligned columns two spaces apart, trailing spaces cut."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
