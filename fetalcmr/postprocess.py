"""Connected-component post-processing of predicted label maps, chosen on the validation split.

A vessel is one connected piece (docs/design.md §9), so a predicted label's smaller pieces are
usually errors; removing them is what turns most split vessels into correct topology. As nnU-Net
does, the clean-up is not applied blindly: :func:`choose_postprocessing` keeps only a label's
largest 26-connected piece where that does not lower the validation score of that label, and
the choice (:class:`PostProcessing`) travels with the model. Weak supervision holds here too: the
validation reference is what training may read (propagated labels, ``lp``), never ``gt``.

>>> lm = np.zeros((6, 6, 6), np.uint8); lm[0, 0, 0] = 4; lm[3:5, 3:5, 3:5] = 4; lm[0, 5, 5] = 6
>>> out = PostProcessing((4,)).apply(lm)
>>> int((out == 4).sum()), int((out == 6).sum())
(8, 1)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fetalcmr.metrics import dice
from fetalcmr.topology import remove_fragments


def keep_largest(labelmap: np.ndarray, labels: Iterable[int]) -> np.ndarray:
    """Return ``labelmap`` with every label in ``labels`` reduced to its largest 26-connected piece
    (other pieces become background); other labels are unchanged."""
    lm = np.asarray(labelmap)
    chosen = sorted({int(k) for k in labels} - {0})
    if not chosen:
        return lm.copy()
    cleaned, _ = remove_fragments(lm, min_voxels=lm.size + 1)  # every piece but the largest, every label
    return np.where(np.isin(lm, chosen), cleaned, lm).astype(lm.dtype, copy=False)


@dataclass(frozen=True)
class PostProcessing:
    """Which labels keep only their largest piece; ``scores`` records the validation evidence
    (per label: mean Dice without and with the clean-up, and the number of subjects)."""

    labels: tuple[int, ...] = ()
    scores: Mapping[int, Mapping[str, float]] = field(default_factory=dict, compare=False)

    def apply(self, labelmap: np.ndarray) -> np.ndarray:
        """Return the post-processed copy of ``labelmap``."""
        return keep_largest(labelmap, self.labels)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a bundle's JSON."""
        return {"keep_largest": list(self.labels),
                "scores": {str(k): dict(v) for k, v in self.scores.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PostProcessing:
        """Inverse of :meth:`to_dict`; a missing or empty entry is no post-processing."""
        scores = {int(k): {s: float(x) for s, x in v.items()} for k, v in dict(data.get("scores", {})).items()}
        return cls(tuple(int(k) for k in data.get("keep_largest", [])), scores)


def _label_dice(pred: np.ndarray, ref: np.ndarray, label: int) -> float:
    return dice(pred == label, ref == label)


def choose_postprocessing(predictions: Sequence[np.ndarray], references: Sequence[np.ndarray],
                          labels: Iterable[int], *, min_gain: float = 0.0) -> PostProcessing:
    """Return the labels whose largest-piece clean-up does not lower their mean validation Dice.

    For each label on its own (as nnU-Net decides per class), the mean Dice of ``predictions``
    against ``references`` over the subjects where the label occurs in either map is compared
    with and without keeping only its largest piece; the label is kept when the gain is at least
    ``min_gain``. Ties (a label already in one piece everywhere) choose the clean-up, which then
    changes nothing.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    wanted = sorted({int(k) for k in labels} - {0})
    # a label's Dice depends only on its own voxels, so one clean-up of every label serves all
    cleaned = [keep_largest(pred, wanted) for pred in predictions]
    chosen, scores = [], {}
    for label in wanted:
        raw, clean = [], []
        for pred, pred_clean, ref in zip(predictions, cleaned, references, strict=True):
            d_raw = _label_dice(pred, ref, label)
            if np.isnan(d_raw):
                continue
            raw.append(d_raw)
            clean.append(_label_dice(pred_clean, ref, label))
        if not raw:
            continue
        before, after = float(np.mean(raw)), float(np.nanmean(clean))
        scores[label] = {"dice_raw": before, "dice_largest": after, "subjects": float(len(raw))}
        if after - before >= min_gain:
            chosen.append(label)
    return PostProcessing(tuple(chosen), scores)
