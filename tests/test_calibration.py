"""Expected calibration error and reliability table on hand-made examples."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402

from fetalcmr.calibration import expected_calibration_error, plot_reliability, reliability_table  # noqa: E402


def test_hand_made_ece() -> None:
    # confidences 0.95 (right), 0.85 (right), 0.75 (wrong), 0.55 (right); 4 bins of width 0.25
    probs = np.array([[0.95, 0.05, 0.0], [0.1, 0.85, 0.05], [0.75, 0.25, 0.0], [0.2, 0.25, 0.55]])
    truth = [0, 1, 1, 2]
    table = reliability_table(probs, truth, n_bins=4)
    assert table["count"].tolist() == [0, 0, 2, 2]
    assert table.loc[2, "confidence"] == pytest.approx(0.65) and table.loc[2, "accuracy"] == 0.5
    assert table.loc[3, "confidence"] == pytest.approx(0.9) and table.loc[3, "accuracy"] == 1.0
    # ECE = 2/4 * |0.5 - 0.65| + 2/4 * |1 - 0.9| = 0.075 + 0.05
    assert expected_calibration_error(probs, truth, n_bins=4) == pytest.approx(0.125)


def test_confident_and_right_is_calibrated_confident_and_wrong_is_not() -> None:
    onehot = np.eye(3)[[0, 1, 2, 0]]
    assert expected_calibration_error(onehot, [0, 1, 2, 0]) == pytest.approx(0.0)
    assert expected_calibration_error(onehot, [1, 2, 0, 1]) == pytest.approx(1.0)


def test_shape_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="do not match"):
        expected_calibration_error(np.ones((3, 3)) / 3, [0, 1])


@settings(max_examples=30, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 20), st.just(3)), elements=st.floats(0.01, 1.0)),
       st.integers(1, 15))
def test_ece_is_bounded_and_bins_hold_every_subject(raw: np.ndarray, n_bins: int) -> None:
    probs = raw / raw.sum(axis=1, keepdims=True)
    truth = np.arange(len(probs)) % 3
    table = reliability_table(probs, truth, n_bins)
    assert table["count"].sum() == len(probs)
    filled = table[table["count"] > 0]
    assert ((filled["confidence"] > filled["lower"] - 1e-12) & (filled["confidence"] <= filled["upper"] + 1e-12)).all()
    assert 0.0 <= expected_calibration_error(probs, truth, n_bins) <= 1.0


def test_plot_reliability() -> None:
    fig, ax = plt.subplots()
    plot_reliability({"a": reliability_table(np.eye(3), [0, 1, 2], 5)}, ax, title="t")
    assert len(ax.lines) == 2
    plt.close(fig)
