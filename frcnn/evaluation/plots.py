"""The evaluation's figures: PR curves from COCOeval's precision table, and the error analysis's (TIDE bars, COCO
analyze, confusion matrix, reliability diagram)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from frcnn.evaluation.analysis import CURVES
from frcnn.evaluation.tide import MAIN_ERRORS, SPECIAL_ERRORS


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


# One colour per TIDE type, shared by the bars, the gallery and the report's legend.
TYPE_COLOURS = {
    "TP": "#2ca02c",
    "Cls": "#9467bd",
    "Loc": "#ff7f0e",
    "Both": "#8c564b",
    "Dupe": "#17becf",
    "Bkg": "#d62728",
    "Miss": "#e377c2",
    "FN": "#e377c2",
    "FP": "#7f7f7f",
}
CURVE_COLOURS = ("#1f3b73", "#2f6fb0", "#5fa2d9", "#8dd3c7", "#f0c05a", "#f28e6b", "#d9d9d9")


def plot_tide(models: dict[str, dict], path: str | Path) -> Path:
    """TIDE's bars: dAP of each main error type and of FP / FN, one bar per model (``{name: metrics["analysis"]["tide"]}``)."""
    fig, (ax_main, ax_special) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 1]})
    width = 0.8 / len(models)
    for m, (name, t) in enumerate(models.items()):
        for ax, types in ((ax_main, MAIN_ERRORS), (ax_special, SPECIAL_ERRORS)):
            x = np.arange(len(types)) + (m - (len(models) - 1) / 2) * width
            values = [t["dap"][e] for e in types]
            alpha = 1.0 - 0.6 * m / max(1, len(models) - 1)  # the first model solid, the last faded
            bars = ax.bar(x, values, width, color=[TYPE_COLOURS[e] for e in types], alpha=alpha, edgecolor="black", linewidth=0.5,
                          label=name)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax_main.set_xticks(range(len(MAIN_ERRORS)), [f"{e}\n({' / '.join(str(t['counts'][e]) for t in models.values())})" for e in MAIN_ERRORS])
    ax_main.set(ylabel="dAP (AP50 points)", title="main errors: AP50 gained by fixing each type alone (count)")
    ax_special.set_xticks(range(len(SPECIAL_ERRORS)), ["all false\npositives", "all missed\nobjects"])
    ax_special.set(title="special errors")
    if len(models) > 1:
        ax_main.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def plot_coco_analyze(curves: np.ndarray, curve_ap: dict[str, float], title: str, path: str | Path, ax: plt.Axes | None = None) -> Path | None:
    """COCO's analyze figure: the seven PR curves of ``CURVES`` (``[7, R]``) stacked, each area filled, the AP in the legend."""
    own = ax is None
    if own:
        _, ax = plt.subplots(figsize=(5.5, 4.2))
    recall = np.linspace(0, 1, curves.shape[-1])
    for i in range(len(CURVES) - 1, -1, -1):  # the most forgiving judge first, so the stricter ones fill over it
        ax.fill_between(recall, np.nan_to_num(curves[i]), color=CURVE_COLOURS[i], label=f"[{curve_ap[CURVES[i]]:.3f}] {CURVES[i]}")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[::-1], labels[::-1], fontsize=7, loc="lower left")
    ax.set(xlabel="recall", ylabel="precision", title=title, xlim=(0, 1), ylim=(0, 1.01))
    return _save(ax.figure, path) if own else None


def plot_coco_analyze_grid(curves: np.ndarray, names: list[str], path: str | Path) -> Path:
    """Per-category analyze figures, up to 16 (``curves`` ``[7, K, R]``; categories without ground truth left out)."""
    ks = [k for k in range(curves.shape[1]) if not np.isnan(curves[0, k]).all()][:16]
    cols = min(4, max(1, len(ks)))
    rows = max(1, -(-len(ks) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat[len(ks):]:
        ax.axis("off")
    for ax, k in zip(axes.flat, ks):
        plot_coco_analyze(curves[:, k], {c: float(curves[i, k].mean()) for i, c in enumerate(CURVES)}, names[k], path, ax=ax)
        ax.set_xlabel("")
        ax.set_ylabel("")
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion(counts: np.ndarray, rows: list[str], columns: list[str], title: str, path: str | Path) -> Path:
    """The confusion matrix row-normalized as colour, the counts written in each cell (up to 30 categories)."""
    counts = np.asarray(counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.nan_to_num(counts / counts.sum(axis=1, keepdims=True))
    n = len(rows)
    size = min(12, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        for i in range(counts.shape[0]):
            for j in range(counts.shape[1]):
                if counts[i, j]:
                    ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7, color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(columns)), columns, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set(xlabel="detected as", ylabel="ground truth", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the row")
    fig.tight_layout()
    return _save(fig, path)


def plot_calibration(models: dict[str, dict], path: str | Path) -> Path:
    """Reliability diagram (precision per score bin against the bin's mean score) and the score histogram, per model."""
    fig, (ax, ax_hist) = plt.subplots(1, 2, figsize=(10, 4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    for name, c in models.items():
        edges = np.asarray(c["bins"])
        mean_score, precision = np.asarray(c["mean_score"], float), np.asarray(c["precision"], float)
        ax.plot(mean_score, precision, marker="o", label=f"{name} (ECE {c['ece']:.3f})")
        ax_hist.stairs(c["count"], edges, label=name)
    ax.set(xlabel="mean score in the bin", ylabel="precision at IoU 0.5", title="reliability", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize="small")
    ax_hist.set(xlabel="score", ylabel="detections", title="scores")
    if any(sum(c["count"]) for c in models.values()):
        ax_hist.set_yscale("log")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
