"""Classification metrics against scikit-learn on hand-made and random examples."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support  # noqa: E402

from fetalcmr.classmetrics import balanced_accuracy, confusion, per_class_scores, plot_confusion  # noqa: E402

CLASSES = {0: "CoA", 1: "RAA", 2: "DAA"}
TRUTH = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
PRED = [0, 0, 1, 0, 1, 1, 2, 2, 1, 2]


def test_hand_made_example_matches_scikit_learn() -> None:
    cm = confusion(TRUTH, PRED, 3)
    assert cm.tolist() == [[3, 1, 0], [0, 2, 1], [0, 1, 2]]
    np.testing.assert_array_equal(cm, confusion_matrix(TRUTH, PRED, labels=[0, 1, 2]))
    # recalls 3/4, 2/3, 2/3
    assert balanced_accuracy(TRUTH, PRED) == pytest.approx((0.75 + 2 / 3 + 2 / 3) / 3)
    assert balanced_accuracy(TRUTH, PRED) == pytest.approx(balanced_accuracy_score(TRUTH, PRED))
    table = per_class_scores(TRUTH, PRED, CLASSES)
    p, r, f, s = precision_recall_fscore_support(TRUTH, PRED, labels=[0, 1, 2], zero_division=np.nan)
    np.testing.assert_allclose(table["precision"], p)
    np.testing.assert_allclose(table["recall"], r)
    np.testing.assert_allclose(table["f1"], f)
    assert table["support"].tolist() == s.tolist() == [4, 3, 3]
    assert table["name"].tolist() == ["CoA", "RAA", "DAA"]


def test_undefined_scores_are_nan_not_zero() -> None:
    table = per_class_scores([0, 0, 1], [0, 0, 0], CLASSES)
    raa, daa = table.iloc[1], table.iloc[2]
    assert np.isnan(raa["precision"]) and raa["recall"] == 0.0  # never predicted, one missed
    assert np.isnan(daa["precision"]) and np.isnan(daa["recall"]) and daa["support"] == 0


def test_confusion_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match="0..2"):
        confusion([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="prediction"):
        confusion([0, 1], [0], 3)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=40))
def test_random_labels_match_scikit_learn(pairs: list[tuple[int, int]]) -> None:
    truth, pred = [t for t, _ in pairs], [p for _, p in pairs]
    np.testing.assert_array_equal(confusion(truth, pred, 3), confusion_matrix(truth, pred, labels=[0, 1, 2]))
    assert balanced_accuracy(truth, pred) == pytest.approx(balanced_accuracy_score(truth, pred))
    table = per_class_scores(truth, pred, CLASSES)
    _, r, _, _ = precision_recall_fscore_support(truth, pred, labels=[0, 1, 2], zero_division=np.nan)
    np.testing.assert_allclose(table["recall"], r)


def test_plot_confusion_writes_counts() -> None:
    fig, ax = plt.subplots()
    plot_confusion(confusion(TRUTH, PRED, 3), ["CoA", "RAA", "DAA"], ax, title="x")
    assert sorted(t.get_text() for t in ax.texts) == sorted(str(v) for v in [3, 1, 0, 0, 2, 1, 0, 1, 2])
    plt.close(fig)
