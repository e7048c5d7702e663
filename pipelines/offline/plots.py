"""PNG plots of the offline commands: loss curves, ROC curves, score timelines (matplotlib,
headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_loss_curve(history: Sequence[dict[str, float]], path: Path) -> Path:
    """Training loss, training NLL and validation NLL per epoch (per member of an ensemble).

    Arguments:
        history: one row per epoch (and member) with ``epoch``, ``loss``, ``train_nll`` and
            ``val_nll`` (nats per dimension) and, for an ensemble, ``member``.
        path: PNG to write (folders are created).

    Returns:
        ``path``.
    """
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    members = sorted({int(h.get("member", 0)) for h in history})
    for i, key, label in (
        (0, "loss", "loss (flow + point)"),
        (1, "train_nll", "train NLL"),
        (2, "val_nll", "validation NLL"),
    ):
        for m in members:
            part = [h for h in history if int(h.get("member", 0)) == m]
            ax.plot(
                [h["epoch"] for h in part],
                [h[key] for h in part],
                marker="o",
                ms=3,
                color=f"C{i}",
                alpha=1.0 if m == members[0] else 0.5,
                label=label if m == members[0] else None,
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per dimension")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]], path: Path) -> Path:
    """ROC curves: ``{label: (fpr (M,), tpr (M,), auc)}``, rates and AUC in 0..1; writes the
    PNG ``path`` (folders are created) and returns it."""
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    for label, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, lw=1.2, label=f"{label} (AUC {100 * auc:.1f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false-positive rate (frames)")
    ax.set_ylabel("true-positive rate (frames)")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_timeline(
    name: str,
    series: Mapping[str, np.ndarray],
    labels: np.ndarray,
    path: Path,
    threshold: float | None = None,
) -> Path:
    """Score series of one clip over time with the anomalous frames shaded.

    Arguments:
        name: title (the clip's name).
        series: label -> ``(N,)`` scores per frame.
        labels: ``(N,)`` frame labels (> 0 = anomalous, shaded).
        path: PNG to write (folders are created).
        threshold: alert threshold drawn as a dashed line.

    Returns:
        ``path``.
    """
    lab = np.asarray(labels)
    fig, ax = plt.subplots(figsize=(12, 2.6), dpi=90)
    lo, hi = np.inf, -np.inf
    for label, s in series.items():
        arr = np.asarray(s)
        ax.plot(arr, lw=0.8, label=label)
        lo, hi = min(lo, float(np.nanmin(arr))), max(hi, float(np.nanmax(arr)))
    ax.fill_between(
        np.arange(len(lab)),
        lo,
        hi,
        where=lab > 0,
        color="red",
        alpha=0.15,
        label="anomalous (ground truth)",
    )
    if threshold is not None:
        ax.axhline(threshold, color="k", ls="--", lw=0.8, label="alert threshold")
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("frame")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
