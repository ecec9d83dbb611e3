"""Classification metrics: confusion matrix, balanced accuracy, per-class precision/recall/F1.

Rows of a confusion matrix are the true class, columns the predicted class (as scikit-learn).
Per-class scores are ``nan`` where undefined (no prediction of the class for precision, no true
case for recall), never silently 0.

>>> confusion([0, 1, 2, 2], [0, 2, 2, 2], 3).tolist()
[[1, 0, 0], [0, 0, 1], [0, 0, 2]]
>>> balanced_accuracy([0, 1, 2, 2], [0, 2, 2, 2])
0.6666666666666666
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd


def confusion(truth: Sequence[int], pred: Sequence[int], n_classes: int) -> np.ndarray:
    """Return the ``n_classes`` × ``n_classes`` count matrix (rows truth, columns prediction)."""
    t, p = np.asarray(truth, dtype=int), np.asarray(pred, dtype=int)
    if t.shape != p.shape:
        raise ValueError(f"truth has {t.size} labels but prediction has {p.size}")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise ValueError(f"class labels must lie in 0..{n_classes - 1}")
    out = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(out, (t, p), 1)
    return out


def balanced_accuracy(truth: Sequence[int], pred: Sequence[int]) -> float:
    """Return the mean recall over the classes present in ``truth`` (``nan`` when empty)."""
    t, p = np.asarray(truth, dtype=int), np.asarray(pred, dtype=int)
    if t.size == 0:
        return float("nan")
    return float(np.mean([np.mean(p[t == c] == c) for c in np.unique(t)]))


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def per_class_scores(truth: Sequence[int], pred: Sequence[int], classes: Mapping[int, str]) -> pd.DataFrame:
    """Return one row per class: ``class, name, precision, recall, f1, support``.

    F1 is ``nan`` when precision or recall is undefined, ``0`` when both are 0.
    """
    cm = confusion(truth, pred, max(classes) + 1 if classes else 0)
    rows: list[dict[str, Any]] = []
    for c, name in sorted(classes.items()):
        tp = cm[c, c]
        prec, rec = _ratio(tp, cm[:, c].sum()), _ratio(tp, cm[c, :].sum())
        if np.isnan(prec) or np.isnan(rec):
            f1 = float("nan")
        else:
            f1 = _ratio(2 * prec * rec, prec + rec) if prec + rec > 0 else 0.0
        rows.append({"class": int(c), "name": name, "precision": prec, "recall": rec, "f1": f1,
                     "support": int(cm[c, :].sum())})
    return pd.DataFrame(rows, columns=["class", "name", "precision", "recall", "f1", "support"])


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], ax: Any, *, title: str = "",
                   normalise: bool = True) -> Any:
    """Draw ``cm`` on ``ax`` (row-normalised shading, counts written in cells); return the image."""
    cm = np.asarray(cm)
    rows = cm.sum(axis=1, keepdims=True)
    shade = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0) if normalise else cm
    im = ax.imshow(shade, cmap="Blues", vmin=0, vmax=1 if normalise else max(int(cm.max()), 1))
    n = len(class_names)
    ax.set_xticks(range(n), class_names)
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center",
                    color="white" if shade[i, j] > 0.6 * (1 if normalise else cm.max()) else "black")
    if title:
        ax.set_title(title)
    return im
