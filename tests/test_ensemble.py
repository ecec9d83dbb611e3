"""Ensemble softmax averaging and majority voting on hand-made outputs."""

from __future__ import annotations

import numpy as np
import pytest

from fetalcmr.ensemble import average_softmax, ensemble_classes, majority_vote


def test_average_softmax_is_the_elementwise_mean() -> None:
    a = np.array([[0.8, 0.2], [0.1, 0.9]])
    b = np.array([[0.4, 0.6], [0.3, 0.7]])
    c = np.array([[0.0, 1.0], [0.5, 0.5]])
    np.testing.assert_allclose(average_softmax([a, b, c]), [[0.4, 0.6], [0.3, 0.7]], atol=1e-7)
    # a voxel-wise argmax of the mean can differ from every member's majority
    mean = average_softmax([np.array([0.9, 0.1]), np.array([0.45, 0.55]), np.array([0.45, 0.55])])
    assert mean.argmax() == 0


def test_average_softmax_checks_members() -> None:
    with pytest.raises(ValueError, match="at least one"):
        average_softmax([])
    with pytest.raises(ValueError, match="different shapes"):
        average_softmax([np.zeros((2, 3)), np.zeros((3, 2))])


def test_majority_vote() -> None:
    votes = np.array([[0, 1, 2, 0],
                      [0, 2, 2, 1],
                      [1, 2, 0, 2]])
    assert majority_vote(votes, 3).tolist() == [0, 2, 2, 0]  # last: 3-way tie -> lowest index


def test_ties_are_broken_by_mean_probability() -> None:
    votes = np.array([[0], [1]])
    probs = np.array([[[0.55, 0.45, 0.0]], [[0.1, 0.9, 0.0]]])
    assert majority_vote(votes, 3, probs).tolist() == [1]
    # but probability never overrides a real majority
    votes3 = np.array([[0], [0], [1]])
    probs3 = np.array([[[0.4, 0.35, 0.25]], [[0.4, 0.35, 0.25]], [[0.0, 1.0, 0.0]]])
    assert majority_vote(votes3, 3, probs3).tolist() == [0]


def test_ensemble_classes() -> None:
    members = [np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]),
               np.array([[0.4, 0.5, 0.1], [0.1, 0.1, 0.8]]),
               np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1]])]
    voted, mean = ensemble_classes(members)
    assert voted.tolist() == [0, 2]
    np.testing.assert_allclose(mean[1], [0.8 / 3, 0.7 / 3, 1.5 / 3])
