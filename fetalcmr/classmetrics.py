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


def _correct_by_class(predictions: pd.DataFrame) -> list[np.ndarray]:
    """Per true class, a ``[seeds, subjects]`` boolean array: was the subject classified correctly."""
    wide = predictions.assign(ok=predictions["label"] == predictions["pred"]).pivot_table(
        index="id", columns="seed", values="ok", aggfunc="first")
    if wide.isna().any().any():
        raise ValueError("every seed must predict the same subjects")
    truth = predictions.drop_duplicates("id").set_index("id")["label"].loc[wide.index].to_numpy()
    ok = wide.to_numpy(dtype=bool).T
    return [ok[:, truth == c] for c in np.unique(truth)]


def bootstrap_balanced_accuracy(predictions: pd.DataFrame, other: pd.DataFrame | None = None, *,
                                n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the seed-mean balanced accuracy (columns ``seed, id, label, pred``).

    Two-level resampling, so the interval covers both sources of variance: the training seeds are
    resampled with replacement, and the test subjects within each true class (class sizes fixed,
    every class present); each resample's balanced accuracy is averaged over its seeds. With
    ``other`` (another classifier's predictions of the same subjects) the interval is of the
    difference ``predictions − other`` on the same subject resamples (seeds drawn independently:
    runs of different classifiers are not paired by seed).

    >>> p = pd.DataFrame({"seed": 0, "id": list("abcd"), "label": [0, 0, 1, 1], "pred": [0, 0, 1, 1]})
    >>> bootstrap_balanced_accuracy(p)
    (1.0, 1.0)
    """
    rng = np.random.default_rng(seed)
    tables = [_correct_by_class(predictions)] + ([_correct_by_class(other)] if other is not None else [])
    if len(tables) == 2 and [m.shape[1] for m in tables[0]] != [t.shape[1] for t in tables[1]]:
        raise ValueError("paired bootstrap needs the same test subjects in both prediction tables")
    seed_draws = [rng.integers(0, t[0].shape[0], size=(n_boot, t[0].shape[0]))[:, :, None] for t in tables]
    total = np.zeros(n_boot)
    for c in range(len(tables[0])):
        n_c = tables[0][c].shape[1]
        idx = rng.integers(0, n_c, size=(n_boot, 1, n_c))
        for sign, table, seeds in zip((1.0, -1.0), tables, seed_draws):
            total += sign * table[c][seeds, idx].mean(axis=(1, 2))  # recall of class c per resample
    lo, hi = np.percentile(total / len(tables[0]), [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


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
