"""``armcpu advise --plot``: the pictures are written, and read back they show what the advice says:
the PNG's cells are green exactly where the matrix says a move is safe, the SVG names every class
and every kernel series' front."""

from __future__ import annotations

import builtins
import dataclasses
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import matplotlib.image
import pytest

from armcpu import advisor
from armcpu.profile import from_dict
from armcpu_cli import main as cli
from armcpu_cli import plots
from tests.helpers import REPO

RECORDINGS = sorted((REPO / "tests" / "fixtures" / "kvm" / "emulated").glob("*/profile-kvm.json"))
GREEN = (0x2E / 255, 0x9E / 255, 0x4F / 255)


def _green_pixels(path: Path) -> int:
    image = matplotlib.image.imread(path)
    return int(sum(1 for row in image for px in row if all(abs(float(px[i]) - GREEN[i]) < 0.02 for i in range(3))))


def test_the_cli_writes_both_pictures_as_svg_and_png(tmp_path: Path) -> None:
    assert cli.main(["advise", *map(str, RECORDINGS), "--plot", str(tmp_path), "-o", "json"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["front.png", "front.svg", "matrix.png", "matrix.svg"]
    for svg in ("matrix.svg", "front.svg"):
        ET.parse(tmp_path / svg)  # well-formed XML
    texts = (tmp_path / "matrix.svg").read_text() + (tmp_path / "front.svg").read_text()
    assert "Linux 6.12" in texts and "Linux 7.3" in texts


def _with_only(advice: advisor.Advice, keep: object) -> advisor.Advice:
    """The same advice with every safe cell ``keep`` rejects turned refused."""
    matrix = {stack: tuple(dataclasses.replace(c, ok=c.ok and bool(keep(c))) for c in cells)  # type: ignore[operator]
              for stack, cells in advice.matrix.items()}
    return dataclasses.replace(advice, matrix=matrix)


def test_the_matrix_picture_is_green_exactly_in_proportion_to_the_safe_cells(tmp_path: Path) -> None:
    profiles = [from_dict(json.loads(p.read_text()), p.parent.name) for p in RECORDINGS]
    advice = advisor.advise(profiles)
    diagonal = _with_only(advice, lambda c: c.source == c.target)
    nothing = _with_only(advice, lambda c: False)
    counts = {}
    for name, variant in (("all", advice), ("diagonal", diagonal), ("nothing", nothing)):
        plots.write(variant, tmp_path / name)
        safe = sum(c.ok for cells in variant.matrix.values() for c in cells)
        counts[name] = (safe, _green_pixels(tmp_path / name / "matrix.png"))
    assert counts["nothing"] == (0, 0)
    (all_safe, all_green), (diag_safe, diag_green) = counts["all"], counts["diagonal"]
    assert all_safe > diag_safe > 0
    assert abs(all_green / diag_green - all_safe / diag_safe) < 0.05 * all_safe / diag_safe, counts


def test_without_matplotlib_the_message_names_the_extra() -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builtins, "__import__", no_matplotlib)
        with pytest.raises(plots.PlotError, match=r"pip install 'armcpu\[plot\]'"):
            plots._pyplot()


def test_the_pictures_in_the_docs_are_what_the_documented_command_draws_today(tmp_path: Path) -> None:
    """docs/cli.md shows docs/images/advise, made by `armcpu advise tests/fixtures/kvm/emulated/*/profile-kvm.json
    --plot docs/images/advise`: drawn again, the SVGs are byte for byte the same (the advice did not drift)."""
    assert cli.main(["advise", *map(str, RECORDINGS), "--plot", str(tmp_path), "-o", "json"]) == 0
    for name in ("matrix.svg", "front.svg"):
        assert (tmp_path / name).read_bytes() == (REPO / "docs" / "images" / "advise" / name).read_bytes(), \
            f"docs/images/advise/{name} is stale: run the command in docs/cli.md"
