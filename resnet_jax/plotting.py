"""What the figures of experiments/ share: the paper's colours by depth, and saving as PNG + PDF."""
from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on clusters and CI
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["PAPER_COLORS", "depth_colors", "plt", "save"]

# The paper's colours, roughly: 20 yellow, 32 cyan, 44 green, 56 red, 110 black (1202 added).
PAPER_COLORS = {20: "#e8b400", 32: "#17becf", 44: "#2ca02c", 56: "#d62728", 110: "#000000", 1202: "#9467bd",
                18: "#1f77b4", 34: "#d62728"}  # Fig. 4: 18 layers blue, 34 red
OTHER_COLORS = ["#1f77b4", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#393b79", "#637939"]


def depth_colors(sizes: Sequence) -> dict:
    """One colour per net size: a depth (the paper's colour where it has one), or (depth, k) of a WRN-d-k."""
    colors, spare = {}, iter(OTHER_COLORS * 4)
    order = lambda size: size if isinstance(size, tuple) else (size, 0)
    for size in sorted({s for s in sizes if s is not None}, key=order):
        colors[size] = (PAPER_COLORS.get(size) if not isinstance(size, tuple) else None) or next(spare)
    colors[None] = "#555555"
    return colors


def save(fig, out: str) -> list[str]:
    """Writes OUT.png and OUT.pdf (an extension on OUT is dropped)."""
    base, ext = os.path.splitext(out)
    base = base if ext.lower() in (".png", ".pdf") else out
    os.makedirs(os.path.dirname(os.path.abspath(base)), exist_ok=True)
    paths = [base + ".png", base + ".pdf"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    return paths
