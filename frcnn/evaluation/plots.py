"""Precision-recall curves from COCOeval's accumulated precision table."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_pr_curves(precision: np.ndarray, class_names: list[str], path: str | Path) -> Path:
    """Save PR curves: all classes at IoU 0.5 / 0.75 / [.5:.95], and each class at IoU 0.5.

    Args:
        precision: COCOeval ``eval["precision"]``, ``[T=10 IoUs, R=101 recalls, K, A=4 areas, M=3 maxDets]``
            with -1 where undefined.
    """
    recall = np.linspace(0, 1, precision.shape[1])
    fig, (ax_all, ax_cls) = plt.subplots(1, 2, figsize=(11, 4.5))

    def mean_curve(p: np.ndarray) -> np.ndarray:
        p = np.where(p > -1, p, np.nan)
        with np.errstate(all="ignore"):
            return np.nan_to_num(np.nanmean(p, axis=-1))

    for label, sl in (("IoU 0.50", slice(0, 1)), ("IoU 0.75", slice(5, 6)), ("IoU 0.50:0.95", slice(0, 10))):
        curve = mean_curve(precision[sl, :, :, 0, -1].transpose(1, 0, 2).reshape(len(recall), -1))
        ax_all.plot(recall, curve, label=label)
    ax_all.set(xlabel="recall", ylabel="precision", title="all classes (area all, 100 dets)", xlim=(0, 1), ylim=(0, 1.02))
    ax_all.legend()
    for k, name in enumerate(class_names):
        ax_cls.plot(recall, np.clip(precision[0, :, k, 0, -1], 0, None), label=name)
    ax_cls.set(xlabel="recall", ylabel="precision", title="per class at IoU 0.50", xlim=(0, 1), ylim=(0, 1.02))
    ax_cls.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
