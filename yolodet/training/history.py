"""A run's per-epoch history on disk: ``results.csv`` and ``results.png`` (loss parts and validation AP), both
written atomically so an interrupted run never leaves a half-written file."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from yolodet.atomic import atomic_write_bytes
from yolodet.training.loss import LOSS_PARTS

__all__ = ["plot_history", "write_csv"]


def write_csv(path: Path, history: list[dict]) -> None:
    """One row per epoch, the keys of the first row as the header."""
    buf = io.StringIO()
    if history:
        writer = csv.DictWriter(buf, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    atomic_write_bytes(path, buf.getvalue().encode())


def plot_history(path: Path, history: list[dict]) -> None:
    """Training loss parts (log scale) and validation AP/AP50 per epoch, as a PNG."""
    from matplotlib.figure import Figure  # a bare Figure needs no pyplot state and renders with Agg

    x = [row["epoch"] for row in history]
    fig = Figure(figsize=(11, 4))
    ax1, ax2 = fig.subplots(1, 2)
    for part in LOSS_PARTS:
        ax1.plot(x, [row[part] for row in history], marker=".", label=part)
    ax1.set(xlabel="epoch", ylabel="loss per image", title="training loss", yscale="log")
    ax1.legend()
    for key in ("ap50", "ap"):
        points = [(e, row[key]) for e, row in zip(x, history) if not math.isnan(row[key])]
        ax2.plot([e for e, _ in points], [v for _, v in points], marker="o", label=key.upper())
    ax2.set(xlabel="epoch", ylabel="COCO AP", title="validation", ylim=(0, 1))
    ax2.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    atomic_write_bytes(path, buf.getvalue())
