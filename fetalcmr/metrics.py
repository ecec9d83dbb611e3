"""Segmentation metrics shared by every stage: Dice, precision, HD95, ASD, foreground region scores.

Conventions (used by notebooks 01, 02, 04 and 05):

* Per-label scores are ``NaN`` when the label is absent from both prediction and truth
  (nothing to score), so ``nanmean`` over labels ignores them. A label present in only one
  of the two maps scores Dice 0.
* A subject's mean vessel Dice (:func:`mean_dice`, :func:`subject_mean_dice`) is the mean over
  the labels it scores: by default every label present in the prediction or the truth (a
  vessel predicted where the truth has none counts as a miss); ``over="truth"`` scores the
  truth's labels only (notebook 05's ``mean_dice`` column).
* Surface distances are in millimetres, computed with Euclidean distance transforms on the
  voxel grid scaled by ``spacing_mm``. A surface voxel is a mask voxel with at least one
  6-connected neighbour outside the mask (the image border counts as outside).
  ``hd95`` is the symmetric 95th-percentile Hausdorff distance (the larger of the two directed
  95th percentiles, as MONAI's ``compute_hausdorff_distance(percentile=95)``); ``asd`` is the
  symmetric average surface distance (mean over the surface points of both masks).
  Both masks empty: ``(nan, nan)``; exactly one empty: ``(inf, inf)``.

>>> import numpy as np
>>> a = np.zeros((8, 8, 8), int); a[2:6, 2:6, 2:6] = 1
>>> dice_per_label(a, a, [1])
{1: 1.0}
>>> surface_distances(a == 1, a == 1, (1.0, 1.0, 1.0))
(0.0, 0.0)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from scipy import ndimage


def _as_bool(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask).astype(bool)


def _check_shapes(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"prediction shape {a.shape} does not match truth shape {b.shape}")


def dice(pred_mask: np.ndarray, truth_mask: np.ndarray) -> float:
    """Return the Dice overlap of two binary masks (``nan`` when both are empty)."""
    p, t = _as_bool(pred_mask), _as_bool(truth_mask)
    _check_shapes(p, t)
    denom = int(p.sum()) + int(t.sum())
    if denom == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(p, t).sum()) / denom


def dice_per_label(pred: np.ndarray, truth: np.ndarray, labels: Iterable[int]) -> dict[int, float]:
    """Return ``{label: Dice}`` for integer label maps (``nan`` when a label is absent from both)."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    _check_shapes(pred, truth)
    return {int(lab): dice(pred == lab, truth == lab) for lab in labels}


def mean_dice(pred: np.ndarray, truth: np.ndarray, labels: Iterable[int] | None = None, *,
              over: Literal["either", "truth"] = "either") -> float:
    """Return a subject's mean vessel Dice over the labels it scores (``nan`` when none).

    ``labels`` are the candidate labels (default: every nonzero value of either map). A label
    absent from both maps is not scored. ``over="either"`` scores every other label, so a vessel
    predicted where the truth has none scores 0; ``over="truth"`` scores only the labels present
    in ``truth``.

    >>> truth = np.array([0, 1, 1, 2, 2]); pred = np.array([0, 1, 1, 2, 3])  # Dice 1, 2/3 and (label 3) 0
    >>> round(mean_dice(pred, truth), 4), round(mean_dice(pred, truth, over="truth"), 4)
    (0.5556, 0.8333)
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    _check_shapes(pred, truth)
    if over not in ("either", "truth"):
        raise ValueError(f"mean_dice: over must be 'either' or 'truth', got {over!r}")
    present = np.unique(truth) if over == "truth" else np.union1d(np.unique(pred), np.unique(truth))
    candidates = present if labels is None else np.intersect1d(np.fromiter(labels, dtype=int), present)
    scores = list(dice_per_label(pred, truth, [int(v) for v in candidates if v != 0]).values())
    return float(np.mean(scores)) if scores else float("nan")


def subject_mean_dice(per_label: pd.DataFrame, keys: Sequence[str] = ("id", "method")) -> pd.Series:
    """Return each subject's mean vessel Dice from a long per-label table, indexed by ``keys``.

    The table form of :func:`mean_dice` (``over="either"``): rows with ``nan`` Dice (label absent
    from both maps) are left out of the mean. ``.unstack("method")`` gives subjects × methods.

    >>> t = pd.DataFrame({"id": ["s1"] * 3, "method": ["c"] * 3, "dice": [0.8, 0.6, float("nan")]})
    >>> subject_mean_dice(t).round(6).to_dict()
    {('s1', 'c'): 0.7}
    """
    return per_label.groupby(list(keys))["dice"].mean()


def precision_per_label(pred: np.ndarray, truth: np.ndarray, labels: Iterable[int]) -> dict[int, float]:
    """Return ``{label: precision}`` = TP / predicted voxels.

    ``nan`` when the label is absent from both; ``0.0`` when it is predicted nowhere but
    present in the truth (nothing predicted is correct by convention, and it is a miss).
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    _check_shapes(pred, truth)
    out: dict[int, float] = {}
    for lab in labels:
        p, t = pred == lab, truth == lab
        n_pred = int(p.sum())
        if n_pred == 0:
            out[int(lab)] = float("nan") if not t.any() else 0.0
        else:
            out[int(lab)] = int(np.logical_and(p, t).sum()) / n_pred
    return out


def _surface(mask: np.ndarray) -> np.ndarray:
    """Return the boundary voxels of ``mask`` (6-connectivity; the array border is outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    eroded = ndimage.binary_erosion(padded, structure=ndimage.generate_binary_structure(3, 1))
    return (padded & ~eroded)[1:-1, 1:-1, 1:-1]


def _directed(from_surface: np.ndarray, to_surface: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Return distances (mm) from each voxel of ``from_surface`` to the nearest of ``to_surface``."""
    dist = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return dist[from_surface]


def surface_distances(pred_mask: np.ndarray, truth_mask: np.ndarray,
                      spacing_mm: Sequence[float] | float) -> tuple[float, float]:
    """Return ``(hd95, asd)`` in mm between two binary masks (see the module docstring)."""
    p, t = _as_bool(pred_mask), _as_bool(truth_mask)
    _check_shapes(p, t)
    spacing = [float(spacing_mm)] * p.ndim if np.isscalar(spacing_mm) else [float(s) for s in spacing_mm]  # type: ignore[union-attr]
    if len(spacing) != p.ndim:
        raise ValueError(f"spacing {spacing} does not match a {p.ndim}D mask")
    if not p.any() and not t.any():
        return float("nan"), float("nan")
    if not p.any() or not t.any():
        return float("inf"), float("inf")
    # both surfaces lie in the joint bounding box: crop to it (+1 voxel) for speed, same result
    box = np.nonzero(p | t)
    crop = tuple(slice(max(int(b.min()) - 1, 0), int(b.max()) + 2) for b in box)
    p, t = p[crop], t[crop]
    sp, st = _surface(p), _surface(t)
    d_pt = _directed(sp, st, spacing)
    d_tp = _directed(st, sp, spacing)
    hd95 = max(float(np.percentile(d_pt, 95)), float(np.percentile(d_tp, 95)))
    asd = float(np.concatenate([d_pt, d_tp]).mean())
    return hd95, asd


def region_metrics(pred_fg: np.ndarray, truth_fg: np.ndarray) -> dict[str, float]:
    """Return Dice, sensitivity, specificity and precision of a binary foreground ("ROI") mask."""
    p, t = _as_bool(pred_fg), _as_bool(truth_fg)
    _check_shapes(p, t)
    tp = int(np.logical_and(p, t).sum())
    fp = int(np.logical_and(p, ~t).sum())
    fn = int(np.logical_and(~p, t).sum())
    tn = int(p.size - tp - fp - fn)

    def ratio(num: int, den: int) -> float:
        return num / den if den > 0 else float("nan")

    return {
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "precision": ratio(tp, tp + fp),
    }


def evaluate_segmentation(pred: np.ndarray, truth: np.ndarray, spacing_mm: Sequence[float] | float,
                          labels: Mapping[int, str] | Iterable[int]) -> pd.DataFrame:
    """Return a long table, one row per foreground label: ``label, name, dice, hd95, asd, precision``.

    ``labels`` is a ``{index: name}`` map (as :func:`fetalcmr.dataset.labels_of`) or a list of
    indices; label 0 (background) is skipped.
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    _check_shapes(pred, truth)
    names = dict(labels) if isinstance(labels, Mapping) else {int(lab): str(lab) for lab in labels}
    fg = [int(lab) for lab in names if int(lab) != 0]
    dices = dice_per_label(pred, truth, fg)
    precs = precision_per_label(pred, truth, fg)
    rows = []
    for lab in fg:
        hd95, asd = surface_distances(pred == lab, truth == lab, spacing_mm)
        rows.append({"label": lab, "name": names[lab], "dice": dices[lab], "hd95": hd95,
                     "asd": asd, "precision": precs[lab]})
    return pd.DataFrame(rows, columns=["label", "name", "dice", "hd95", "asd", "precision"])
