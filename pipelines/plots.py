"""PNG plots: loss curves, ROC curves, score timelines (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_loss_curve(history: Sequence[dict[str, float]], path: Path) -> Path:
    """Training loss, training NLL and validation NLL per epoch."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ep = [h["epoch"] for h in history]
    for key, label in (
        ("loss", "loss (flow + point)"),
        ("train_nll", "train NLL"),
        ("val_nll", "validation NLL"),
    ):
        ax.plot(ep, [h[key] for h in history], marker="o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per dimension")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
