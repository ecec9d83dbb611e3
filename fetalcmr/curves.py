"""Training-curve figures of the engine's runs (``history.csv``, :func:`fetalcmr.train.read_history`)."""

from __future__ import annotations

from typing import Any

import pandas as pd


def plot_history(histories: dict[str, pd.DataFrame], *, title: str = "") -> Any:
    """Return a matplotlib figure: training loss (left) and validation metric (right) per run."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, h in histories.items():
        axes[0].plot(h["epoch"], h["train_loss"], label=name)
        if "val_metric" in h:
            v = h.dropna(subset=["val_metric"])
            axes[1].plot(v["epoch"], v["val_metric"], marker="o", ms=3, label=name)
    axes[0].set(xlabel="epoch", ylabel="training loss", title="training loss")
    axes[1].set(xlabel="epoch", ylabel="validation metric", title="validation metric (higher is better)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
