"""Segmentation metrics against hand-made volumes with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fetalcmr.metrics import (
    dice,
    dice_per_label,
    evaluate_segmentation,
    mean_dice,
    precision_per_label,
    region_metrics,
    subject_mean_dice,
    surface_distances,
)

GRID = np.mgrid[:40, :40, :40]


def sphere(centre: tuple[float, float, float], radius: float) -> np.ndarray:
    return ((GRID[0] - centre[0]) ** 2 + (GRID[1] - centre[1]) ** 2 + (GRID[2] - centre[2]) ** 2) <= radius**2


def cube(start: tuple[int, int, int], side: int, shape: tuple[int, int, int] = (20, 20, 20)) -> np.ndarray:
    out = np.zeros(shape, bool)
    out[start[0]:start[0] + side, start[1]:start[1] + side, start[2]:start[2] + side] = True
    return out


def test_shifted_cubes_dice_is_analytic() -> None:
    a = cube((2, 2, 2), 10)
    b = cube((4, 2, 2), 10)  # overlap 8*10*10 of 1000 each
    assert dice(a, b) == pytest.approx(0.8)
    pred = a.astype(int) * 3
    truth = b.astype(int) * 3
    assert dice_per_label(pred, truth, [3])[3] == pytest.approx(0.8)


def test_absent_label_is_nan_and_missed_label_is_zero() -> None:
    truth = cube((2, 2, 2), 4).astype(int)
    pred = np.zeros_like(truth)
    d = dice_per_label(pred, truth, [1, 2])
    assert d[1] == 0.0 and math.isnan(d[2])
    p = precision_per_label(pred, truth, [1, 2])
    assert p[1] == 0.0 and math.isnan(p[2])


def test_mean_dice_empty_label_rules() -> None:
    truth = np.zeros((20, 20, 20), int)
    truth[cube((2, 2, 2), 10)] = 1  # label 1: predicted shifted, Dice 0.8
    truth[cube((14, 14, 14), 4)] = 2  # label 2: missed, Dice 0
    pred = np.zeros_like(truth)
    pred[cube((4, 2, 2), 10)] = 1
    pred[cube((14, 2, 14), 3)] = 3  # label 3: predicted, absent from the truth
    assert mean_dice(pred, truth) == pytest.approx((0.8 + 0 + 0) / 3)  # labels in either map
    assert mean_dice(pred, truth, over="truth") == pytest.approx((0.8 + 0) / 2)  # the truth's labels only
    assert mean_dice(pred, truth, labels=[1, 3, 5]) == pytest.approx(0.4)  # 5 is in neither map: not scored
    assert math.isnan(mean_dice(np.zeros((3, 3)), np.zeros((3, 3))))
    assert math.isnan(mean_dice(pred, np.zeros_like(truth), over="truth"))
    with pytest.raises(ValueError, match="over"):
        mean_dice(pred, truth, over="pred")  # type: ignore[arg-type]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**16))
def test_subject_mean_dice_of_the_per_label_table_is_mean_dice(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 5, (6, 6, 6)) * (rng.random((6, 6, 6)) < 0.5)
    pred = np.where(rng.random(truth.shape) < 0.2, rng.integers(0, 6, truth.shape), truth)
    table = evaluate_segmentation(pred, truth, 1.0, {k: f"L{k}" for k in range(7)})
    table["id"], table["method"] = "s1", "m"
    per_subject = subject_mean_dice(table)
    assert per_subject.index.tolist() == [("s1", "m")]
    expect = mean_dice(pred, truth, labels=range(7))
    assert per_subject.iloc[0] == pytest.approx(expect, nan_ok=True)


def test_precision_known_value() -> None:
    truth = cube((2, 2, 2), 10).astype(int)
    pred = cube((2, 2, 2), 10).astype(int)
    pred[12:14, 2:12, 2:12] = 1  # 200 false positive voxels, 1000 true
    assert precision_per_label(pred, truth, [1])[1] == pytest.approx(1000 / 1200)


def test_identical_masks_have_zero_distance() -> None:
    a = sphere((20, 20, 20), 8)
    assert surface_distances(a, a, (0.8, 0.8, 0.8)) == (0.0, 0.0)


@pytest.mark.parametrize("shift", [2, 4])
def test_translated_sphere_distances_match_shift(shift: int) -> None:
    # A sphere shifted by d: a surface point at angle theta from the shift axis lies ~d|cos theta|
    # from the other surface, |cos theta| ~ U(0, 1): HD95 ~ 0.95 d, ASD ~ 0.5 d (+ voxelisation).
    spacing = (0.5, 0.8, 1.0)
    a = sphere((18, 20, 20), 11)
    b = sphere((18 + shift, 20, 20), 11)
    hd95, asd = surface_distances(a, b, spacing)
    d_mm = shift * spacing[0]
    assert hd95 == pytest.approx(0.95 * d_mm, abs=0.5 * spacing[0] + 0.05 * d_mm)
    assert 0.4 * d_mm <= asd <= 0.5 * d_mm + 0.5 * spacing[0]


def test_spacing_scales_distances() -> None:
    a = sphere((18, 20, 20), 9)
    b = sphere((21, 20, 20), 9)
    h1, a1 = surface_distances(a, b, 1.0)
    h2, a2 = surface_distances(a, b, (2.0, 2.0, 2.0))
    assert h2 == pytest.approx(2 * h1) and a2 == pytest.approx(2 * a1)


def test_empty_masks_convention() -> None:
    empty = np.zeros((10, 10, 10), bool)
    full = cube((2, 2, 2), 4, (10, 10, 10))
    assert all(math.isnan(v) for v in surface_distances(empty, empty, 1.0))
    assert surface_distances(full, empty, 1.0) == (math.inf, math.inf)
    assert surface_distances(empty, full, 1.0) == (math.inf, math.inf)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_surface_distances_match_monai(seed: int) -> None:
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    rng = np.random.default_rng(seed)
    shape = (16, 16, 16)
    a = np.zeros(shape, bool)
    b = np.zeros(shape, bool)
    for m in (a, b):
        lo = rng.integers(1, 7, 3)
        hi = lo + rng.integers(2, 9, 3)
        m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    spacing = tuple(float(s) for s in rng.uniform(0.5, 1.5, 3))
    hd95, asd = surface_distances(a, b, spacing)
    ta = torch.tensor(a)[None, None].float()
    tb = torch.tensor(b)[None, None].float()
    ref_hd = compute_hausdorff_distance(ta, tb, percentile=95, spacing=spacing).item()
    ref_asd = compute_average_surface_distance(ta, tb, symmetric=True, spacing=spacing).item()
    assert hd95 == pytest.approx(ref_hd, rel=1e-4, abs=1e-4)
    assert asd == pytest.approx(ref_asd, rel=1e-4, abs=1e-4)


def test_region_metrics_known_values() -> None:
    truth = np.zeros((10, 10, 10), bool)
    truth[:5] = True  # 500 voxels
    pred = np.zeros_like(truth)
    pred[1:6] = True  # 400 TP, 100 FP, 100 FN, 400 TN
    m = region_metrics(pred, truth)
    assert m["dice"] == pytest.approx(0.8)
    assert m["sensitivity"] == pytest.approx(0.8)
    assert m["specificity"] == pytest.approx(0.8)
    assert m["precision"] == pytest.approx(0.8)


def test_evaluate_segmentation_long_format() -> None:
    truth = np.zeros((20, 20, 20), int)
    truth[2:12, 2:12, 2:12] = 1
    truth[14:18, 14:18, 14:18] = 2
    pred = np.zeros_like(truth)
    pred[4:14, 2:12, 2:12] = 1
    df = evaluate_segmentation(pred, truth, (1.0, 1.0, 1.0), {0: "background", 1: "A", 2: "B", 3: "C"})
    assert list(df.columns) == ["label", "name", "dice", "hd95", "asd", "precision"]
    assert list(df["label"]) == [1, 2, 3]
    by = df.set_index("label")
    assert by.loc[1, "name"] == "A"
    assert by.loc[1, "dice"] == pytest.approx(0.8) and by.loc[1, "precision"] == pytest.approx(0.8)
    assert by.loc[2, "dice"] == 0.0 and math.isinf(by.loc[2, "hd95"])
    assert math.isnan(by.loc[3, "dice"])


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="does not match"):
        dice(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))


# ---------------------------------------------------------------------------------------------
# behaviour pinned down by the mutation-testing pass (tests/mutation/mutate.py)


def _surface_reference(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a 6-neighbour outside the mask or outside the array, by explicit look-up."""
    out = np.zeros(mask.shape, bool)
    for idx in zip(*np.nonzero(mask)):
        for axis in range(3):
            for step in (-1, 1):
                j = list(idx)
                j[axis] += step
                if not 0 <= j[axis] < mask.shape[axis] or not mask[tuple(j)]:
                    out[idx] = True
    return out


def _surface_distances_reference(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> tuple[float, float]:
    """HD95 and ASD from all pairwise distances between the two surfaces' voxel centres (no distance transform)."""
    from scipy.spatial.distance import cdist

    d = cdist(np.argwhere(_surface_reference(a)) * spacing, np.argwhere(_surface_reference(b)) * spacing)
    d_ab, d_ba = d.min(1), d.min(0)
    return max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)), float(np.concatenate([d_ab, d_ba]).mean())


@settings(max_examples=40, deadline=None)
@given(st.tuples(*[st.integers(2, 7)] * 3), st.integers(0, 2**32 - 1), st.floats(0.2, 0.8),
       st.tuples(*[st.floats(0.5, 2.0)] * 3))
def test_surface_distances_match_brute_force_on_any_shapes(shape: tuple[int, int, int], seed: int, density: float,
                                                           spacing: tuple[float, float, float]) -> None:
    # arbitrary masks (holes, several pieces, touching the array border on any side)
    rng = np.random.default_rng(seed)
    a, b = rng.random(shape) < density, rng.random(shape) < density
    if not a.any() or not b.any():
        return
    hd95, asd = surface_distances(a, b, spacing)
    ref_hd, ref_asd = _surface_distances_reference(a, b, spacing)
    assert hd95 == pytest.approx(ref_hd, rel=1e-9, abs=1e-9)
    assert asd == pytest.approx(ref_asd, rel=1e-9, abs=1e-9)


def test_surface_distances_with_masks_in_opposite_corners() -> None:
    # one voxel each, at the first and the last index of every axis: nothing may be cropped away
    a = np.zeros((6, 2, 3), bool)
    b = np.zeros((6, 2, 3), bool)
    a[0, 0, 0] = b[5, 1, 2] = True
    d = math.sqrt((5 * 1.0) ** 2 + (1 * 2.0) ** 2 + (2 * 3.0) ** 2)
    assert surface_distances(a, b, (1.0, 2.0, 3.0)) == pytest.approx((d, d))
    assert surface_distances(b, a, (1.0, 2.0, 3.0)) == pytest.approx((d, d))


def test_every_metric_rejects_mismatched_shapes_and_spacing() -> None:
    a, b = np.zeros((4, 4, 4), int), np.zeros((4, 4, 5), int)
    for call in (lambda: dice_per_label(a, b, [1]), lambda: precision_per_label(a, b, [1]),
                 lambda: surface_distances(a, b, 1.0), lambda: region_metrics(a, b),
                 lambda: evaluate_segmentation(a, b, 1.0, [1])):
        with pytest.raises(ValueError, match="does not match"):
            call()
    with pytest.raises(ValueError, match="spacing"):
        surface_distances(a, a, (1.0, 1.0))


def test_region_metrics_on_empty_and_full_masks() -> None:
    empty = np.zeros((4, 4, 4), bool)
    full = np.ones((4, 4, 4), bool)
    m = region_metrics(empty, empty)  # nothing to find, nothing found: only specificity is defined
    assert math.isnan(m["dice"]) and math.isnan(m["sensitivity"]) and math.isnan(m["precision"])
    assert m["specificity"] == 1.0
    m = region_metrics(full, empty)  # everything predicted, nothing there
    assert m["dice"] == 0.0 and m["specificity"] == 0.0 and m["precision"] == 0.0 and math.isnan(m["sensitivity"])
    m = region_metrics(empty, full)
    assert m["dice"] == 0.0 and m["sensitivity"] == 0.0 and math.isnan(m["specificity"])
    # asymmetric counts tell sensitivity from precision: 8 TP, 8 FN, 0 FP, 48 TN
    truth = np.zeros((4, 4, 4), bool)
    truth[:1] = True
    pred = truth.copy()
    pred[0, 2:] = False
    m = region_metrics(pred, truth)
    assert m == pytest.approx({"dice": 16 / 24, "sensitivity": 0.5, "specificity": 1.0, "precision": 1.0})


def test_evaluate_segmentation_with_a_list_of_labels_matches_the_parts() -> None:
    truth = np.zeros((12, 12, 12), int)
    truth[1:6, 1:6, 1:6] = 1
    truth[7:11, 7:11, 7:11] = 2
    pred = np.zeros_like(truth)
    pred[2:6, 1:6, 1:7] = 1
    pred[7:11, 7:11, 6:10] = 2
    df = evaluate_segmentation(pred, truth, (0.5, 1.0, 2.0), [0, 1, 2])
    assert list(df["label"]) == [1, 2] and list(df["name"]) == ["1", "2"]
    for lab in (1, 2):
        row = df.set_index("label").loc[lab]
        hd95, asd = surface_distances(pred == lab, truth == lab, (0.5, 1.0, 2.0))
        assert (row["hd95"], row["asd"]) == pytest.approx((hd95, asd))
        assert row["dice"] == pytest.approx(dice(pred == lab, truth == lab))
        assert row["precision"] == pytest.approx(precision_per_label(pred, truth, [lab])[lab])
        assert 0.0 < row["dice"] < 1.0 and row["hd95"] > 0.0


def test_metrics_accept_nested_lists_and_small_denominators() -> None:
    pred = [[[0, 1], [1, 2]]]
    truth = [[[0, 1], [2, 2]]]
    assert dice_per_label(pred, truth, [1, 2]) == dice_per_label(np.array(pred), np.array(truth), [1, 2])
    assert precision_per_label(pred, truth, [1, 2]) == {1: 0.5, 2: 1.0}
    assert mean_dice(pred, truth) == pytest.approx(2 / 3)
    df = evaluate_segmentation(pred, truth, 1.0, [1, 2])
    assert df["dice"].tolist() == pytest.approx([2 / 3, 2 / 3])
    # one voxel found in a two-voxel volume: every ratio is 1 (denominators of 1 and 2)
    hit = np.array([[[True, False]]])
    assert region_metrics(hit, hit) == {"dice": 1.0, "sensitivity": 1.0, "specificity": 1.0, "precision": 1.0}


def test_evaluate_segmentation_without_foreground_labels_keeps_the_columns() -> None:
    df = evaluate_segmentation(np.zeros((3, 3, 3), int), np.zeros((3, 3, 3), int), 1.0, {0: "background"})
    assert df.empty and list(df.columns) == ["label", "name", "dice", "hd95", "asd", "precision"]
