"""Precision-recall curves at IoU 0.5 from COCOeval's precision array (matplotlib, Agg backend)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from yolodet.evaluation.runner import EvalResult

__all__ = ["pr_curve_figure"]

_LEGEND_MAX = 20  # above this many classes a per-class legend is unreadable: name only the best few


def pr_curve_figure(result: "EvalResult") -> "Figure":
    """AP50 precision-recall curve per class (thin) and over all classes (thick) of an :class:`EvalResult`.

    Uses COCOeval's interpolated precision ``[T=0 (IoU .5), R, K, area all, largest maxDets]``; the overall
    curve is the mean over the classes that have ground truth, so its area is AP50. The caller saves it
    (``fig.savefig(path)``); without any detection the figure only says so.
    """
    from matplotlib.figure import Figure  # a bare Figure needs no pyplot state and renders with Agg

    fig = Figure(figsize=(10, 6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"precision-recall @ IoU 0.5  (AP50 {result.ap50:.4f}, AP {result.ap:.4f})")
    ax.grid(alpha=0.3)
    if result.precision is None:
        ax.text(0.5, 0.5, "no detections", ha="center", va="center")
        return fig
    recall = result.recall_thresholds
    p50 = result.precision[0, :, :, 0, -1]  # [R, K]
    names = {row.category_id: row.name for row in result.per_class}
    curves = [(float(p50[:, k].mean()), names.get(cid, str(cid)), p50[:, k])
              for k, cid in enumerate(result.eval_category_ids) if (p50[:, k] > -1).all()]
    curves.sort(key=lambda c: -c[0])
    for rank, (ap50, name, curve) in enumerate(curves):
        label = f"{name} {ap50:.3f}" if rank < _LEGEND_MAX else None
        ax.plot(recall, curve, linewidth=0.8, alpha=0.6, label=label)
    if curves:
        mean = np.mean([c[2] for c in curves], axis=0)
        ax.plot(recall, mean, color="black", linewidth=2.5, label=f"all classes {mean.mean():.3f}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False,
              title=f"AP50 (best {min(len(curves), _LEGEND_MAX)} of {len(curves)})" if curves else None)
    return fig
