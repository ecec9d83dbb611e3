"""Ensembling as in the reference's inference: average the members' softmax, vote on the class.

Segmentation: the members' softmax maps are averaged and the label map is the argmax of the
mean. Classification: each member votes its argmax class; the most frequent class wins, and a
tie is broken by the largest mean probability among the tied classes.

>>> import numpy as np
>>> majority_vote(np.array([[0, 1], [2, 1], [2, 0]]), n_classes=3).tolist()
[2, 1]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def average_softmax(members: Sequence[np.ndarray]) -> np.ndarray:
    """Return the element-wise mean of the members' probability arrays (all the same shape)."""
    if not members:
        raise ValueError("an ensemble needs at least one member")
    shapes = {np.shape(m) for m in members}
    if len(shapes) > 1:
        raise ValueError(f"ensemble members have different shapes: {sorted(shapes)}")
    return np.mean(np.stack([np.asarray(m, dtype=np.float32) for m in members]), axis=0)


def majority_vote(votes: np.ndarray, n_classes: int, probs: np.ndarray | None = None) -> np.ndarray:
    """Return the majority class per subject from ``votes`` [members, subjects].

    ``probs`` [members, subjects, classes] breaks ties by the tied classes' mean probability;
    without it ties go to the lowest class index.
    """
    votes = np.asarray(votes, dtype=int)
    if votes.ndim != 2:
        raise ValueError(f"votes must be [members, subjects], got shape {votes.shape}")
    counts = np.stack([(votes == c).sum(axis=0) for c in range(n_classes)], axis=1)  # [S, C]
    score = counts.astype(float)
    if probs is not None:
        mean_p = np.asarray(probs, dtype=float).mean(axis=0)  # [S, C], in [0, 1]: breaks ties only
        score = score + 0.5 * mean_p
    return score.argmax(axis=1)


def ensemble_classes(member_probs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(voted classes [S], mean probabilities [S, C])`` from members' [S, C] probabilities."""
    probs = np.stack([np.asarray(p, dtype=float) for p in member_probs])
    votes = probs.argmax(axis=2)
    return majority_vote(votes, probs.shape[2], probs), probs.mean(axis=0)
