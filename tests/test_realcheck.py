"""make realcheck: measurements on one volume, checked against an independent count from the files it writes."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from fetalcmr.anatomy import CLASSES, LABEL_INDEX, LABELS
from fetalcmr.bundle import export_bundle
from fetalcmr.config import get_profile
from fetalcmr.io import DataError
from fetalcmr.joint import build_joint
from fetalcmr.realcheck import arch_connectivity, heart_depth, main, real_check, vessel_table
from fetalcmr.synth import generate_subject
from fetalcmr.synth.thorax import Tissue

REAL = Path(__file__).resolve().parents[2] / "shared" / "real"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-member smoke bundle whose template is another generated CoA subject on the bundle's grid."""
    prof = get_profile("smoke")
    torch.manual_seed(0)
    members = [build_joint(prof.segmenter, prof.classifier, "softmax+image")]
    atlas = generate_subject(0, seed=1, grid=prof.cohort.grid, spacing_mm=prof.cohort.spacing_mm)
    template = tmp_path_factory.mktemp("template") / "template.nii.gz"
    nib.save(nib.Nifti1Image(atlas.image.astype(np.float32), np.diag([prof.cohort.spacing_mm] * 3 + [1.0])),
             str(template))
    return export_bundle(tmp_path_factory.mktemp("bundle"), members, segmenter=prof.segmenter,
                         classifier=prof.classifier, kind="softmax+image", grid=prof.cohort.grid,
                         spacing_mm=prof.cohort.spacing_mm, labels=dict(LABELS), classes=dict(CLASSES),
                         provenance={"test": True}, template=template)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A generated subject inside a larger field of view (lung-bright margin), with organ labels."""
    sub = generate_subject(0, seed=5, grid=40, spacing_mm=1.3)
    pad = 12
    image = np.pad(sub.image, pad, constant_values=float(np.median(sub.image[sub.tissue == Tissue.LUNG])))
    tissue = np.pad(sub.tissue, pad, constant_values=int(Tissue.LUNG))
    organs = np.zeros(image.shape, np.int16)
    organs[np.isin(tissue, [Tissue.MYOCARDIUM, Tissue.BLOOD])] = 1
    organs[tissue == Tissue.LUNG] = 2
    affine = np.diag([1.3, 1.3, 1.3, 1.0])
    folder = tmp_path_factory.mktemp("volume")
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(folder / "thorax.nii.gz"))
    nib.save(nib.Nifti1Image(organs, affine), str(folder / "organs.nii.gz"))
    return folder / "thorax.nii.gz", folder / "organs.nii.gz"


def test_measurements_match_an_independent_count(bundle: Path, embedded: tuple[Path, Path], tmp_path: Path) -> None:
    image_path, organs_path = embedded
    result = real_check(image_path, bundle, tmp_path, organs=organs_path, progress=False)
    image = nib.load(str(image_path)).get_fdata()
    organs = nib.load(str(organs_path)).get_fdata().astype(int)
    labels = nib.load(str(tmp_path / "thorax_labels.nii.gz")).get_fdata().astype(int)
    assert labels.shape == image.shape  # back on the input's own (larger) grid
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert result["class"] in CLASSES.values()
    vessels = labels > 0
    assert result["vessel_volume_mm3"] == pytest.approx(vessels.sum() * 1.3 ** 3)
    if vessels.any():
        assert result["vessel_fraction_in_heart"] == pytest.approx((vessels & (organs == 1)).sum() / vessels.sum())
        lung = image[organs == 2].mean()
        assert result["vessel_intensity_rel"] == pytest.approx(image[vessels].mean() / lung, rel=1e-5)
    table = pd.read_csv(tmp_path / "realcheck_vessels.csv")
    assert table["voxels"].sum() == vessels.sum()
    assert json.loads((tmp_path / "realcheck.json").read_text())["class"] == result["class"]
    assert (tmp_path / "realcheck_overlay.png").stat().st_size > 10_000
    # aligned to the template (another subject): the pose is reported and beats the centre crop
    assert result["aligned"] and result["align_orientation"] == "RAS"
    assert result["align_ncc_after"] > result["align_ncc_before"] and np.shape(result["align_matrix"]) == (4, 4)
    assert "Aligned to the bundle's template" in (tmp_path / "realcheck.md").read_text()


def test_no_align_flag_centres_the_grid(bundle: Path, embedded: tuple[Path, Path], tmp_path: Path) -> None:
    image_path, organs_path = embedded
    assert main([str(image_path), str(bundle), str(tmp_path), "--organs", str(organs_path), "--no-align"]) == 0
    result = json.loads((tmp_path / "realcheck.json").read_text())
    assert result["aligned"] is False and "align_matrix" not in result
    assert "Not aligned" in (tmp_path / "realcheck.md").read_text()


def test_keep_orientation_flag_is_recorded(bundle: Path, embedded: tuple[Path, Path], tmp_path: Path) -> None:
    image_path, organs_path = embedded
    assert main([str(image_path), str(bundle), str(tmp_path), "--organs", str(organs_path), "--keep-orientation"]) == 0
    result = json.loads((tmp_path / "realcheck.json").read_text())
    assert result["aligned"] is True and result["align_search"] == "stored" and result["align_orientation"] == "RAS"
    assert "the input's axes kept" in (tmp_path / "realcheck.md").read_text()


def test_vessel_table_and_arch_connectivity_on_known_maps() -> None:
    labels = np.zeros((12, 12, 12), np.int16)
    ao, dao = LABEL_INDEX["AO"], LABEL_INDEX["DAO"]
    labels[2:10, 2:10, 5] = ao
    labels[4:8, 4:8, 5] = 0  # a ring of AO
    labels[0, 0, 0] = dao  # a separate DAO piece
    assert arch_connectivity(labels) == {"arch_pieces": 2, "arch_loops": 1}
    image = np.where(labels == ao, 10.0, 100.0)
    t = vessel_table(image, labels, voxel_mm3=0.5, reference=100.0).set_index("label")
    assert t.loc["AO", "voxels"] == 48 and t.loc["AO", "volume_mm3"] == 24.0
    assert t.loc["AO", "intensity_rel"] == pytest.approx(0.1) and t.loc["DAO", "intensity_rel"] == pytest.approx(1.0)
    assert "in_heart" not in t.columns  # without organ labels the heart is not known
    heart = np.zeros_like(labels, dtype=bool)
    heart[2:6] = True  # the half of the AO ring with x < 6, none of the DAO voxel
    t = vessel_table(image, labels, voxel_mm3=0.5, reference=100.0, heart=heart).set_index("label")
    assert t.loc["AO", "in_heart"] == pytest.approx(24 / 48) and t.loc["DAO", "in_heart"] == 0.0
    # with 1.5 mm voxels the heart slab x 2..5 is 1.5, 3, 3, 1.5 mm deep; the ring has 8, 8, 4, 4 voxels
    # at x = 2, 3, 4, 5: 12 of them deeper than 2 mm, median depth (1.5 + 3) / 2 mm
    depth = heart_depth(heart, np.array([1.5, 1.0, 1.0]))
    assert depth[2, 5, 5] == 1.5 and depth[3, 5, 5] == 3.0 and depth[6, 5, 5] == 0.0
    t = vessel_table(image, labels, voxel_mm3=0.5, reference=100.0, heart=heart, depth=depth).set_index("label")
    assert t.loc["AO", "deep_in_heart"] == pytest.approx(12 / 48) and t.loc["DAO", "deep_in_heart"] == 0.0
    assert t.loc["AO", "heart_depth_mm"] == pytest.approx(2.25) and np.isnan(t.loc["DAO", "heart_depth_mm"])


def test_organ_labels_on_another_grid_are_refused(bundle: Path, embedded: tuple[Path, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    image_path, _ = embedded
    wrong = tmp_path / "organs_small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.int16), np.eye(4)), str(wrong))
    with pytest.raises(DataError, match="organs_small.nii.gz: organ labels are not on the grid"):
        real_check(image_path, bundle, tmp_path / "out", organs=wrong, progress=False)
    assert main([str(image_path), str(bundle), str(tmp_path / "out2"), "--organs", str(wrong)]) == 2
    assert "not on the grid" in capsys.readouterr().err


@pytest.mark.skipif(not (REAL / "thorax-atlas.nii.gz").exists(), reason="../shared/real/ is not on this machine")
def test_runs_on_the_shared_real_volume(bundle: Path, tmp_path: Path) -> None:
    """The public thorax atlas end to end (an untrained bundle here: only that it runs and measures)."""
    result = real_check(REAL / "thorax-atlas.nii.gz", bundle, tmp_path, organs=REAL / "thorax-atlas-organs.nii.gz",
                        progress=False)
    assert result["intensity_reference"] == "lung mean" and (tmp_path / "realcheck.md").exists()


def test_crop_at_organs_centres_the_grid_on_the_arch(bundle: Path, embedded: tuple[Path, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``--crop-at-organs``: no alignment; the grid's centre is where the organ labels put the arch."""
    from fetalcmr.realslice import SUPERIOR, arch_centre

    image_path, organs_path = embedded
    organs_img = nib.load(str(organs_path))
    organs = np.asarray(organs_img.dataobj).astype(np.int16)
    organs[30:36, 34:40, 40:46] = SUPERIOR
    with_superior = tmp_path / "organs4.nii.gz"
    nib.save(nib.Nifti1Image(organs, organs_img.affine), str(with_superior))
    out = tmp_path / "crop"
    assert main([str(image_path), str(bundle), str(out), "--organs", str(with_superior), "--crop-at-organs"]) == 0
    result = json.loads((out / "realcheck.json").read_text())
    expected = organs_img.affine[:3, :3] @ arch_centre(organs) + organs_img.affine[:3, 3]
    assert result["aligned"] is False and "align_matrix" not in result
    np.testing.assert_allclose(result["crop_centre_mm"], expected, atol=0.01)
    assert "the arch's place from the organ labels" in (out / "realcheck.md").read_text()
    assert main([str(image_path), str(bundle), str(tmp_path / "none"), "--crop-at-organs"]) == 2
    assert "needs organ labels" in capsys.readouterr().err
    no_superior = [str(image_path), str(bundle), str(tmp_path / "no4"), "--organs", str(organs_path)]
    assert main([*no_superior, "--crop-at-organs"]) == 2
    assert "no superior mediastinum (label 4)" in capsys.readouterr().err
