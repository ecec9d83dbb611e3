"""Classical registration baselines (SimpleITK affine and diffeomorphic demons)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from test_propagation import make_toy_dataset, toy_atlas

from fetalcmr import registration_baselines as rb
from fetalcmr.dataset import read_dataset
from fetalcmr.io import load_nifti, normalise_intensity
from fetalcmr.metrics import dice_per_label

#: lowest per-label Dice accepted for an image registered to itself, per method (a new method needs one)
IDENTITY_MIN_DICE = {"affine": 0.83, "demons": 0.97}


@pytest.mark.parametrize("method", rb.METHODS)
def test_identical_pair_keeps_labels(method: str) -> None:
    min_dice = IDENTITY_MIN_DICE[method]
    img, lab = toy_atlas(0)
    img = normalise_intensity(img)
    out = rb.register_pair(img, img, lab, 1.5, method)
    vessels = [1, 2, 3]
    # Per-label Dice against the atlas itself, measured: demons 1.0/1.0/0.994. Mutual information
    # on a 24^3 toy lets the affine drift off the identity (Jacobian ~0.85: labels ~10-30% larger),
    # 0.968/0.957/0.857. A label map shifted by one voxel scores 0.48-0.76 (affine), 0.50-0.88 (demons).
    dice = dice_per_label(out.labels, lab, vessels)
    assert min(dice.values()) > min_dice, dice
    # each vessel stays where it was: centroids within 0.75 voxel (measured ≤ 0.5; a 1-voxel shift moves them ≥ 1)
    ones = np.ones_like(lab)
    moved = np.subtract(ndimage.center_of_mass(ones, out.labels, vessels), ndimage.center_of_mass(ones, lab, vessels))
    assert np.linalg.norm(moved, axis=1).max() < 0.75, moved
    assert out.fold_fraction == 0.0 and out.seconds > 0


@pytest.mark.parametrize("method", rb.METHODS)
def test_same_pair_same_seed_same_result(method: str) -> None:
    # SimpleITK takes a sampling seed of 0 as "use the clock": seed 0 must still be reproducible
    img, lab = toy_atlas(1)
    fixed = normalise_intensity(ndimage.shift(img, (1, 0, -1), order=1, mode="nearest"))
    first, second = (rb.register_pair(fixed, normalise_intensity(img), lab, 1.5, method, seed=0) for _ in range(2))
    np.testing.assert_array_equal(first.labels, second.labels)
    assert first.jac_mean == pytest.approx(second.jac_mean, rel=1e-6)  # threaded filters: last-digit noise


@pytest.mark.parametrize("method", rb.METHODS)
def test_known_translation_is_recovered(method: str) -> None:
    img, lab = toy_atlas(1)
    shift = (2, -1, 1)
    fixed = ndimage.shift(img, shift, order=1, mode="nearest")
    truth = ndimage.shift(lab, shift, order=0)
    # the 24^3 toy is too small for demons on a 2x coarser grid: register at full resolution
    out = rb.register_pair(normalise_intensity(fixed), normalise_intensity(img), lab, (1.5, 1.5, 1.5), method,
                           demons_shrink=1)
    before = np.nanmean(list(dice_per_label(lab, truth, [1, 2, 3]).values()))
    after = np.nanmean(list(dice_per_label(out.labels, truth, [1, 2, 3]).values()))
    assert after > 0.85 and after > before + 0.2, (before, after)
    assert set(np.unique(out.labels)) <= set(np.unique(lab))  # nearest neighbour keeps the label set


def test_jacobian_of_a_scaling() -> None:
    import SimpleITK as sitk

    ref = sitk.Image([10, 10, 10], sitk.sitkFloat32)
    ref.SetSpacing((2.0, 1.0, 0.5))
    scale = sitk.ScaleTransform(3, (1.2, 1.0, 0.5))
    stats = rb.transform_jacobian_stats(scale, ref)
    assert stats["jac_mean"] == pytest.approx(0.6, rel=1e-3) and stats["fold_fraction"] == 0.0


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        rb.register_pair(np.zeros((8, 8, 8)), np.zeros((8, 8, 9)), np.zeros((8, 8, 9), np.uint8), 1.0, "affine")
    with pytest.raises(ValueError, match="unknown baseline"):
        rb.register_pair(np.zeros((8, 8, 8)), np.zeros((8, 8, 8)), np.zeros((8, 8, 8), np.uint8), 1.0, "bogus")


def test_run_baselines_never_reads_gt_and_caches(tmp_path: Path) -> None:
    src = make_toy_dataset(tmp_path, n_per_class=1, grid=20)
    raw = json.loads(src.read_text())
    for item in raw["testing"]:
        item["gt"] = "missing_gt.nii.gz"  # reading it would raise
    src.write_text(json.dumps(raw))
    data = read_dataset(src)
    table = rb.run_baselines(data, tmp_path / "bl", max_subjects=2, progress=False)
    assert sorted(table["method"].unique()) == sorted(rb.METHODS)
    assert len(table) == 2 * len(rb.METHODS)
    assert table.groupby("method")["class"].nunique().eq(2).all()  # stratified pick: two classes
    for path in table["labels"]:
        assert set(np.unique(load_nifti(path).array)) <= {0, 1, 2, 3}
    stamp = (tmp_path / "bl" / "baselines.csv").stat().st_mtime_ns
    again = rb.run_baselines(data, tmp_path / "bl", max_subjects=2, progress=False)
    assert (tmp_path / "bl" / "baselines.csv").stat().st_mtime_ns == stamp
    assert again["seconds"].tolist() == pytest.approx(table["seconds"].tolist())
