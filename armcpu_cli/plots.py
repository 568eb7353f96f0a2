"""Pictures of an advice: the migration matrix as a heatmap and each kernel series' front as a chart.

Rendering is an edge: it draws what :mod:`armcpu.advisor` decided and decides nothing. matplotlib is
an optional extra (``pip install 'armcpu[plot]'``), imported only when pictures are asked for, and
drawn with its non-interactive Agg backend (no display needed). Each picture is written as SVG and
PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from armcpu import advisor

FILES = ("matrix", "front")


class PlotError(Exception):
    pass


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PlotError("--plot needs matplotlib: pip install 'armcpu[plot]'") from None
    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "armcpu"  # the same advice gives the same SVG bytes (docs/images is checked for drift)
    import matplotlib.pyplot as plt

    return plt


def write(advice: advisor.Advice, folder: Path) -> list[Path]:
    """``matrix.svg|png`` and ``front.svg|png`` in ``folder``; returns the files written."""
    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, figure in (("matrix", _matrix(plt, advice)), ("front", _front(plt, advice))):
        for suffix in ("svg", "png"):
            path = folder / f"{name}.{suffix}"
            figure.savefig(path, dpi=110, bbox_inches="tight", metadata={"Date": None} if suffix == "svg" else None)
            written.append(path)
        plt.close(figure)
    return written


def _label(c: advisor.NodeClass) -> str:
    return f"{c.id}: {c.cpu[:20]}, {c.kernel_series} ({len(c.members)})"


def _matrix(plt: Any, advice: advisor.Advice) -> Any:
    """One heatmap per stack: green where a VM started on the row's class may migrate to the column's,
    grey where the two cannot share a model at all, white where the guarantee refuses."""
    from matplotlib.colors import ListedColormap

    ids = [c.id for c in advice.classes]
    index = {cid: i for i, cid in enumerate(ids)}
    size = max(4.0, 0.45 * len(ids) + 2.5)
    figure, axes = plt.subplots(1, len(advisor.STACKS), figsize=(2 * size, size), squeeze=False)
    colours = ListedColormap(["#ffffff", "#d0d0d0", "#2e9e4f"])
    for n, (ax, stack) in enumerate(zip(axes[0], advisor.STACKS, strict=True)):
        grid = [[0] * len(ids) for _ in ids]
        for cell in advice.matrix[stack.name]:
            grid[index[cell.source]][index[cell.target]] = 2 if cell.ok else 1 if cell.reason == "Infeasible" else 0
        ax.imshow(grid, cmap=colours, vmin=0, vmax=2)
        ax.set_xticks(range(len(ids)), ids, rotation=90)
        ax.set_yticks(range(len(ids)), [_label(c) for c in advice.classes] if n == 0 else ids)
        ax.set_xticks([i - 0.5 for i in range(1, len(ids))], minor=True)
        ax.set_yticks([i - 0.5 for i in range(1, len(ids))], minor=True)
        ax.grid(which="minor", color="#888888", linewidth=0.5)
        ax.tick_params(which="minor", length=0)
        ax.set_xlabel("may migrate to")
        ax.set_title(f"{stack.name}: {stack.mode}", fontsize=10)
    axes[0][0].set_ylabel("VM started on")
    figure.suptitle("Migration matrix (green: safe; grey: no common model; white: the guarantee refuses)", fontsize=10)
    figure.subplots_adjust(wspace=0.15)
    return figure


def _front(plt: Any, advice: advisor.Advice) -> Any:
    """Nodes covered against FEATs kept, one panel per kernel series, one line per stack's front."""
    islands = sorted({p.island for p in advice.proposals}) or ["none"]
    figure, axes = plt.subplots(1, len(islands), figsize=(5.0 * len(islands), 4.0), squeeze=False)
    from matplotlib.ticker import MaxNLocator

    # sysreg hollow and large, stock filled and small: a pool on both fronts shows both marks
    markers = {"stock": ("o", "#1f5fa8", 6, "full"), "sysreg": ("s", "#c25b10", 11, "none")}
    for ax, island in zip(axes[0], islands, strict=True):
        named: set[tuple[int, int, str]] = set()
        for stack in advisor.STACKS:
            points = sorted((len(p.nodes), len(p.model.features), "+".join(p.class_ids)) for p in advice.proposals
                            if p.island == island and stack.name in p.fronts)
            if not points:
                continue
            marker, colour, size, fill = markers[stack.name]
            ax.plot([x for x, _, _ in points], [y for _, y, _ in points], marker=marker, color=colour, markersize=size,
                    fillstyle=fill, linestyle="--" if stack.name == "sysreg" else "-", label=f"{stack.name} ({stack.mode})")
            for x, y, text in points:
                if (x, y, text) not in named:  # a pool on both fronts is named once
                    named.add((x, y, text))
                    ax.annotate(text, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=7)
        ax.set_title(f"Linux {island}", fontsize=10)
        most = max((len(p.nodes) for p in advice.proposals if p.island == island), default=1)
        ax.set_xlim(0, most * 1.15 + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("nodes covered")
        ax.set_ylabel("FEATs kept")
        ax.grid(color="#dddddd", linewidth=0.5)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    figure.suptitle("Proposed pools: the front of nodes covered against FEATs kept", fontsize=10)
    return figure
