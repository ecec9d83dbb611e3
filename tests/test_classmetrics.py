"""Classification metrics against scikit-learn on hand-made and random examples."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support  # noqa: E402

from fetalcmr.classmetrics import (  # noqa: E402
    balanced_accuracy,
    bootstrap_balanced_accuracy,
    confusion,
    per_class_scores,
    plot_confusion,
)

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


def _predictions(correct: np.ndarray, labels: np.ndarray) -> pd.DataFrame:
    """Prediction table from a ``[seeds, subjects]`` correctness array (wrong = the next class)."""
    rows = []
    for s, ok in enumerate(correct):
        for i, (good, lab) in enumerate(zip(ok, labels)):
            rows.append({"seed": s, "id": f"s{i}", "label": int(lab), "pred": int(lab if good else (lab + 1) % 3)})
    return pd.DataFrame(rows)


def test_bootstrap_interval_covers_seed_spread_and_subjects() -> None:
    labels = np.repeat([0, 1, 2], 20)
    rng = np.random.default_rng(0)
    same = _predictions(np.tile(rng.random(60) < 0.7, (3, 1)), labels)  # seeds agree: subject spread only
    lo, hi = bootstrap_balanced_accuracy(same)
    point = balanced_accuracy(same[same.seed == 0]["label"], same[same.seed == 0]["pred"])
    assert lo < point < hi and hi - lo < 0.4
    # seeds that disagree completely (one perfect, one always wrong) widen the interval to both ends
    split = _predictions(np.array([np.ones(60, bool), np.zeros(60, bool)]), labels)
    lo2, hi2 = bootstrap_balanced_accuracy(split)
    assert lo2 == 0.0 and hi2 == 1.0


def test_paired_bootstrap_needs_same_subjects_and_sees_a_difference() -> None:
    labels = np.repeat([0, 1, 2], 15)
    good = _predictions(np.ones((3, 45), bool), labels)
    bad = _predictions(np.zeros((3, 45), bool), labels)
    assert bootstrap_balanced_accuracy(good, bad) == (1.0, 1.0)
    with pytest.raises(ValueError, match="same test subjects"):
        bootstrap_balanced_accuracy(good, bad[bad["id"] != "s0"])


def test_paired_table_verdicts() -> None:
    from fetalcmr.classification_report import paired_table

    labels = np.repeat([0, 1, 2], 15)
    rng = np.random.default_rng(1)
    noisy = rng.random((3, 45)) < 0.6
    preds = pd.concat([_predictions(np.ones((3, 45), bool), labels).assign(kind="a"),
                       _predictions(noisy, labels).assign(kind="b"),
                       _predictions(noisy, labels).assign(kind="c")])
    table = paired_table(preds).set_index(["a", "b"])
    assert table.loc[("a", "b"), "verdict"] == "a better"
    assert table.loc[("b", "c"), "verdict"] == "not distinguishable"
    assert table.loc[("a", "b"), "ci_low"] > 0 and table.loc[("a", "b"), "n"] == 45
