"""Largest-piece post-processing: what it removes, and how it is chosen on validation data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from fetalcmr.metrics import dice
from fetalcmr.postprocess import PostProcessing, choose_postprocessing, keep_largest

FULL = np.ones((3, 3, 3), bool)


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, (7, 6, 5), elements=st.integers(0, 3)), st.sets(st.integers(1, 3)))
def test_keep_largest_leaves_one_piece_of_each_chosen_label_and_nothing_else_changes(lm, labels) -> None:
    out = keep_largest(lm, labels)
    for k in range(1, 4):
        if k in labels and (lm == k).any():
            comp, n = ndimage.label(lm == k, structure=FULL)
            assert ndimage.label(out == k, structure=FULL)[1] == 1
            assert (out == k).sum() == np.bincount(comp.ravel())[1:].max()
            assert ((out == k) <= (lm == k)).all()  # only removes, never moves
        else:
            assert np.array_equal(out == k, lm == k)
    assert set(np.unique(out[out != lm])) <= {0}  # removed voxels become background


def test_diagonal_neighbours_are_one_piece() -> None:
    lm = np.zeros((4, 4, 4), np.uint8)
    lm[0, 0, 0] = lm[1, 1, 1] = lm[2, 2, 2] = 5  # 26-connected chain
    assert np.array_equal(keep_largest(lm, [5]), lm)


def _case(rng: np.random.Generator, island: bool) -> tuple[np.ndarray, np.ndarray]:
    ref = np.zeros((16, 16, 16), np.uint8)
    ref[4:12, 4:8, 4:12] = 1
    ref[4:12, 10:14, 4:8] = 2  # label 2 is in two pieces in the reference too
    ref[4:12, 10:14, 10:12] = 2
    pred = ref.copy()
    if island:  # a stray piece of label 1, outside the reference
        x, z = rng.integers(0, 2, size=2)
        pred[x:x + 2, 14:16, z:z + 2] = 1
    return pred, ref


def test_chosen_where_validation_dice_does_not_drop() -> None:
    rng = np.random.default_rng(0)
    cases = [_case(rng, island=True) for _ in range(4)]
    pp = choose_postprocessing([p for p, _ in cases], [r for _, r in cases], labels=[1, 2])
    assert 1 in pp.labels and pp.scores[1]["dice_largest"] > pp.scores[1]["dice_raw"]
    # label 2 really has two pieces: keeping the larger loses true voxels, so it is left alone
    assert 2 not in pp.labels and pp.scores[2]["dice_largest"] < pp.scores[2]["dice_raw"]
    assert pp.scores[1]["subjects"] == 4


def test_a_label_in_one_piece_everywhere_is_a_harmless_choice() -> None:
    rng = np.random.default_rng(1)
    cases = [_case(rng, island=False) for _ in range(2)]
    pp = choose_postprocessing([p for p, _ in cases], [r for _, r in cases], labels=[1])
    assert pp.labels == (1,) and pp.scores[1]["dice_largest"] == pp.scores[1]["dice_raw"]


def test_round_trip_through_plain_data_and_mismatched_inputs() -> None:
    pp = PostProcessing((1, 4), {1: {"dice_raw": 0.8, "dice_largest": 0.81, "subjects": 3.0}})
    again = PostProcessing.from_dict(pp.to_dict())
    assert again == pp and again.scores == pp.scores
    assert PostProcessing.from_dict({}).labels == ()
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        choose_postprocessing([np.zeros((2, 2, 2))] * 2, [np.zeros((2, 2, 2))], [1])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(arrays(np.uint8, (6, 5, 5), elements=st.integers(0, 2)),
                          arrays(np.uint8, (6, 5, 5), elements=st.integers(0, 2))), min_size=1, max_size=4))
def test_the_choice_never_lowers_validation_dice(pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
    pp = choose_postprocessing(preds, refs, labels=[1, 2])
    for label in (1, 2):
        before = [dice(p == label, r == label) for p, r in pairs]
        after = [dice(pp.apply(p) == label, r == label) for p, r in pairs]
        scored = [k for k, d in enumerate(before) if not np.isnan(d)]
        if not scored:
            assert label not in pp.scores
            continue
        assert np.nanmean([after[k] for k in scored]) >= np.mean([before[k] for k in scored]) - 1e-12
        assert (label in pp.labels) == (pp.scores[label]["dice_largest"] >= pp.scores[label]["dice_raw"])
