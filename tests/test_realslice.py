"""Measurements of a real thorax volume and the matched field of view (fetalcmr.realslice), on a
synthetic volume of known geometry; and on the shared real volume when it is there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fetalcmr.realslice import arch_centre, arch_crop, load_real, measure_thorax, relative_histogram

REAL = Path(__file__).resolve().parents[2] / "shared" / "real"
GAIN = 500.0


@pytest.fixture(scope="module")
def known() -> tuple[np.ndarray, np.ndarray]:
    """A 1 mm thorax with known sizes and intensities (relative to lung) and atlas-style organ labels."""
    ax = np.arange(100, dtype=np.float32) - 49.5
    x, y, z = np.meshgrid(ax, ax, ax, indexing="ij")
    img = np.zeros(x.shape, np.float32)
    org = np.zeros(x.shape, np.int16)
    img[(x / 40) ** 2 + (y / 40) ** 2 < 1] = 0.45  # body wall, 80 mm across
    img[((x / 40) ** 2 + (y / 40) ** 2 < 1) & (z < -25)] = 0.35  # liver under the lungs
    for side, label in ((1, 2), (-1, 3)):  # right lung at higher x (RAS), flat base at z = -25
        lung = (((x - side * 16) / 11) ** 2 + (y / 20) ** 2 < 1) & (np.abs(z) < 25)
        img[lung], org[lung] = 1.0, label
    heart = ((x + 5) / 12) ** 2 + ((y - 22) / 10) ** 2 + ((z + 5) / 9) ** 2 < 1
    pool = ((x + 5) / 10) ** 2 + ((y - 22) / 8) ** 2 + ((z + 5) / 7) ** 2 < 1
    img[heart], org[heart] = 0.30, 1
    img[pool] = 0.06
    sup = (x / 8) ** 2 + ((y - 15) / 8) ** 2 + ((z - 12) / 6) ** 2 < 1
    img[sup], org[sup] = np.where(y[sup] > 15, 0.47, 0.30), 4
    img[(x**2 + (y + 20.5) ** 2 < 2.5**2)] = 0.55  # vertebral column
    img[(x**2 + (y + 25) ** 2 < 2.5**2)] = 1.30  # spinal canal
    img[((x + 2) ** 2 + (y + 12) ** 2 < 2.5**2)] = 0.05  # descending aorta, 5 mm
    return img * GAIN, org


def test_measures_known_geometry(known):
    m = measure_thorax(*known, spacing_mm=1.0)
    assert m["lung_median_raw"] == pytest.approx(GAIN)
    assert m["lungs_lr_mm"] == pytest.approx(54.0, abs=2) and m["lungs_ap_mm"] == pytest.approx(40.0, abs=2)
    assert m["body_lr_mm"] == pytest.approx(80.0, abs=2)
    assert (m["heart_lr_mm"], m["heart_ap_mm"], m["heart_si_mm"]) == pytest.approx((24.0, 20.0, 18.0), abs=1.5)
    assert m["heart_blood_fraction"] == pytest.approx(10 * 8 * 7 / (12 * 10 * 9), abs=0.05)
    assert m["heart_wall_mm"] == pytest.approx(2.0, abs=1.0)
    assert m["dao_diameter_mm"] == pytest.approx(5.0, abs=0.6)
    assert m["canal_to_dao_ap_mm"] == pytest.approx(13.0, abs=1.0)
    expected = {"rel_heart_blood": 0.06, "rel_myocardium": 0.30, "rel_dao": 0.05, "rel_thymus": 0.47,
                "rel_liver": 0.35, "rel_csf": 1.30, "rel_vertebral_column": 0.55}
    assert {k: m[k] for k in expected} == pytest.approx(expected, abs=0.01)
    assert m["rel_residual_noise"] < 0.05


def test_arch_crop_centres_and_resamples(known):
    _, org = known
    centre = arch_centre(org)
    assert centre[0] == pytest.approx(49.5, abs=0.5) and centre[2] == pytest.approx(49.5 + 12, abs=0.5)
    assert centre[1] == pytest.approx(49.5, abs=1.0)  # middle of the lungs' antero-posterior extent
    ramp = np.broadcast_to(np.arange(100, dtype=np.float32)[:, None, None], (100, 100, 100))
    crop = arch_crop(np.ascontiguousarray(ramp), 1.0, np.array([50.0, 50.0, 50.0]), grid=8, out_spacing_mm=2.0)
    assert crop.shape == (8, 8, 8) and np.allclose(crop[:, 4, 4], 50.0 + 2.0 * (np.arange(8) - 3.5))
    labels = arch_crop(org, 1.0, centre, grid=16, out_spacing_mm=0.8, order=0)
    assert labels.dtype == org.dtype and set(np.unique(labels)) <= {0, 1, 2, 3, 4}


def test_relative_histogram_is_a_density(known):
    img, org = known
    bins = np.linspace(0.0, 1.6, 33)
    hist = relative_histogram(img, np.isin(org, (2, 3)), bins)
    assert hist.sum() * (bins[1] - bins[0]) == pytest.approx(1.0, abs=1e-3)
    lung_bin = np.searchsorted(bins, 1.0, side="right") - 1
    assert hist[lung_bin] > 0 and hist[np.searchsorted(bins, 1.55) - 1] == 0  # lung at 1, nothing at 1.5


def test_missing_files_give_none(tmp_path: Path):
    assert load_real(tmp_path / "a.nii.gz", tmp_path / "b.nii.gz") is None


@pytest.mark.skipif(not (REAL / "thorax-atlas.nii.gz").exists(), reason="../shared/real/ is not on this machine")
def test_shared_real_volume_is_black_blood_with_a_large_dark_heart():
    image, organs, spacing = load_real(REAL / "thorax-atlas.nii.gz", REAL / "thorax-atlas-organs.nii.gz")
    m = measure_thorax(image, organs, spacing)
    assert m["heart_blood_fraction"] > 0.5 and m["rel_heart_blood"] < 0.12 and m["rel_dao"] < 0.12
    assert m["lungs_lr_mm"] / m["dao_diameter_mm"] > 11.0
