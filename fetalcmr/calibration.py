"""Calibration of class probabilities: expected calibration error (ECE) and reliability diagram.

Top-label calibration with equal-width confidence bins on [0, 1]: a subject's confidence is its
largest class probability, it is correct when that class is the true one. ECE is the
count-weighted mean over bins of |accuracy − mean confidence| (Guo et al., 2017).

>>> import numpy as np
>>> probs = np.array([[0.9, 0.1], [0.6, 0.4]])
>>> round(expected_calibration_error(probs, [0, 1], n_bins=10), 3)
0.35
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd


def _confidence_and_correct(probs: np.ndarray, truth: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=float)
    t = np.asarray(truth, dtype=int)
    if p.ndim != 2 or p.shape[0] != t.size:
        raise ValueError(f"probabilities {p.shape} do not match {t.size} labels (expected [N, classes])")
    return p.max(axis=1), (p.argmax(axis=1) == t)


def reliability_table(probs: np.ndarray, truth: Sequence[int], n_bins: int = 10) -> pd.DataFrame:
    """Return one row per confidence bin: ``lower, upper, count, confidence, accuracy``.

    Bins are ``(lower, upper]`` (the first also holds 0); empty bins have ``nan`` means.
    """
    conf, correct = _confidence_and_correct(probs, truth)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        sel = which == b
        rows.append({"lower": edges[b], "upper": edges[b + 1], "count": int(sel.sum()),
                     "confidence": float(conf[sel].mean()) if sel.any() else float("nan"),
                     "accuracy": float(correct[sel].mean()) if sel.any() else float("nan")})
    return pd.DataFrame(rows)


def expected_calibration_error(probs: np.ndarray, truth: Sequence[int], n_bins: int = 10) -> float:
    """Return the ECE of ``probs`` [N, classes] against ``truth`` (``nan`` when N = 0)."""
    table = reliability_table(probs, truth, n_bins)
    n = table["count"].sum()
    if n == 0:
        return float("nan")
    filled = table[table["count"] > 0]
    return float((filled["count"] * (filled["accuracy"] - filled["confidence"]).abs()).sum() / n)


def plot_reliability(tables: Mapping[str, pd.DataFrame], ax: Any, *, title: str = "") -> None:
    """Draw reliability curves (accuracy vs mean confidence per non-empty bin) on ``ax``."""
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1, label="perfect calibration")
    for name, table in tables.items():
        t = table[table["count"] > 0]
        ax.plot(t["confidence"], t["accuracy"], marker="o", label=name)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="mean confidence (top class)", ylabel="accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
