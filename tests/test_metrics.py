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
    precision_per_label,
    region_metrics,
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
