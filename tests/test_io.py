"""NIfTI loading to RAS, atomic saving, normalisation and resampling."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fetalcmr.io import DataError, Volume, load_nifti, normalise_intensity, resample_to_grid, save_nifti


def test_round_trip_keeps_array_and_affine(tmp_path: Path) -> None:
    arr = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    aff = np.diag([0.8, 0.9, 1.0, 1.0])
    aff[:3, 3] = [-10, 5, 3]
    save_nifti(tmp_path / "a.nii.gz", arr, aff)
    vol = load_nifti(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(vol.array, arr)
    np.testing.assert_allclose(vol.affine, aff)
    assert vol.spacing == pytest.approx((0.8, 0.9, 1.0))
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


def test_las_volume_is_reoriented_to_ras(tmp_path: Path) -> None:
    arr = np.zeros((5, 4, 3), np.float32)
    arr[0, 1, 2] = 7.0  # in LAS: index 0 on x is the subject's right-most voxel
    las = np.diag([-1.0, 1.0, 1.0, 1.0])
    las[0, 3] = 4.0
    nib.save(nib.Nifti1Image(arr, las), str(tmp_path / "las.nii.gz"))
    vol = load_nifti(tmp_path / "las.nii.gz")
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    assert vol.array[4, 1, 2] == 7.0  # now the right-most voxel has the largest x index
    # the voxel keeps its world position
    world_before = las @ np.array([0, 1, 2, 1])
    world_after = vol.affine @ np.array([4, 1, 2, 1])
    np.testing.assert_allclose(world_before, world_after)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "file not found"),
        (lambda p: p.write_bytes(b"not a nifti at all"), "not a readable NIfTI"),
        (lambda p: p.write_bytes(gzip.compress(b"x" * 400)[:-20]), "not a readable NIfTI"),
        (lambda p: nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), str(p)), "expected a 3D"),
        (lambda p: nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), str(p)),
         "expected a 3D"),
        (lambda p: nib.save(nib.Nifti1Image(np.full((4, 4, 4), np.nan, np.float32), np.eye(4)), str(p)),
         "NaN/Inf"),
    ],
    ids=["missing", "garbage", "truncated-gzip", "2d", "4d", "nan"],
)
def test_bad_files_raise_with_the_file_named(tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "bad.nii.gz"
    make(path)
    with pytest.raises(DataError, match=message) as err:
        load_nifti(path)
    assert str(path) in str(err.value)


def test_single_channel_4d_is_accepted(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 1), np.float32), np.eye(4)), str(tmp_path / "c.nii.gz"))
    assert load_nifti(tmp_path / "c.nii.gz").array.shape == (4, 4, 4)


def test_labels_saved_as_integers(tmp_path: Path) -> None:
    save_nifti(tmp_path / "l.nii.gz", np.array([[[0, 11]]] * 2, dtype=np.int64).repeat(2, 2), np.eye(4))
    assert nib.load(str(tmp_path / "l.nii.gz")).get_data_dtype() == np.uint8


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 1000), st.floats(0.5, 200.0), st.floats(-50, 50))
def test_normalise_is_invariant_to_scale_and_shift(seed: int, scale: float, shift: float) -> None:
    img = np.random.default_rng(seed).normal(size=(6, 6, 6)).astype(np.float32)
    a = normalise_intensity(img)
    b = normalise_intensity(img * scale + shift)
    assert a.min() == pytest.approx(0.0) and a.max() == pytest.approx(1.0)
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_resample_same_spacing_crops_and_pads_about_the_centre() -> None:
    arr = np.zeros((10, 10, 10), np.uint8)
    arr[5, 5, 5] = 3
    vol = Volume(arr, np.diag([1.0, 1.0, 1.0, 1.0]))
    out = resample_to_grid(vol, 6, 1.0, is_label=True)
    assert out.array.shape == (6, 6, 6)
    idx = np.argwhere(out.array == 3)[0]
    world_in = vol.affine @ np.array([5, 5, 5, 1])
    world_out = out.affine @ np.array([*idx, 1])
    np.testing.assert_allclose(world_in, world_out, atol=0.51)
    big = resample_to_grid(vol, 14, 1.0, is_label=True)
    assert big.array.shape == (14, 14, 14) and (big.array == 3).sum() == 1


def test_resample_to_other_spacing_keeps_label_set_and_extent() -> None:
    arr = np.zeros((20, 20, 20), np.uint8)
    arr[5:15, 5:15, 5:15] = 2
    vol = Volume(arr, np.diag([0.5, 0.5, 0.5, 1.0]))
    out = resample_to_grid(vol, 10, 1.0, is_label=True)
    assert set(np.unique(out.array)) == {0, 2}
    assert (out.array == 2).sum() == pytest.approx(125, rel=0.35)
