"""Model bundles and `fetalcmr infer`: round trip, refusals, write-back to the input's grid,
and the bad-input suite (a clear message naming the file, a non-zero exit, no outputs)."""

from __future__ import annotations

import gzip
import json
import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from fetalcmr.anatomy import CLASSES, LABELS
from fetalcmr.bundle import BUNDLE_FILE, BundleError, build_joint, export_bundle, load_bundle
from fetalcmr.cli import main as cli_main
from fetalcmr.config import get_profile
from fetalcmr.infer import collect_cases, infer

KIND = "softmax+image"


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prof = get_profile("smoke")
    torch.manual_seed(0)
    members = [build_joint(prof.segmenter, prof.classifier, KIND) for _ in range(2)]
    return export_bundle(tmp_path_factory.mktemp("bundle"), members, segmenter=prof.segmenter,
                         classifier=prof.classifier, kind=KIND, grid=prof.cohort.grid,
                         spacing_mm=prof.cohort.spacing_mm, labels=dict(LABELS), classes=dict(CLASSES),
                         provenance={"test": True})


def _volume(path: Path, shape=(40, 36, 30), spacing=(1.3, 1.1, 1.7), flip_x=True, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.normal(100, 20, shape).astype(np.float32)
    affine = np.diag([*spacing, 1.0])
    if flip_x:  # LPS-like: x runs to the subject's left
        affine[0, 0] *= -1
        affine[1, 1] *= -1
    affine[:3, 3] = [12.0, -7.0, 3.0]
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


def test_bundle_round_trip_gives_identical_outputs(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir, labels=dict(LABELS), classes=dict(CLASSES))
    assert len(bundle.members) == 2 and bundle.grid == get_profile("smoke").cohort.grid
    again = load_bundle(bundle_dir)
    x = torch.rand(1, 1, *(bundle.grid,) * 3)
    with torch.no_grad():
        a, b = bundle.members[0](x), again.members[0](x)
    torch.testing.assert_close(a[1], b[1])


def _copy_bundle(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda i: i.update(format=99), "bundle format 99"),
        (lambda i: i["versions"].update(fetalcmr="9.9.0"), "made with fetalcmr 9.9.0"),
        (lambda i: i["versions"].update(monai="0.1.0"), "made with monai 0.1.0"),
        (lambda i: i["members"][0].update(segmenter_sha256="0" * 16), "checksum differs"),
    ],
    ids=["format", "fetalcmr-version", "monai-version", "checksum"],
)
def test_bundle_refused_when_it_does_not_match(bundle_dir: Path, tmp_path: Path, edit, message: str) -> None:
    copy = _copy_bundle(bundle_dir, tmp_path / "b")
    info = json.loads((copy / BUNDLE_FILE).read_text())
    edit(info)
    (copy / BUNDLE_FILE).write_text(json.dumps(info))
    with pytest.raises(BundleError, match=message):
        load_bundle(copy)


def test_bundle_refused_for_other_label_map(bundle_dir: Path) -> None:
    other = dict(LABELS) | {11: "IVC"}
    with pytest.raises(BundleError, match="label map"):
        load_bundle(bundle_dir, labels=other)


def test_infer_writes_back_in_the_inputs_grid_and_affine(bundle_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    paths = [_volume(src / f"case{i}.nii.gz", seed=i) for i in range(2)]
    out = tmp_path / "out"
    table = infer(src, bundle_dir, out, progress=False)
    assert list(table["id"]) == ["case0", "case1"]
    for p in paths:
        given = nib.load(str(p))
        written = nib.load(str(out / p.name.replace(".nii.gz", "_labels.nii.gz")))
        assert written.shape == given.shape
        np.testing.assert_allclose(written.affine, given.affine, atol=1e-5)
        assert set(np.unique(np.asarray(written.dataobj))) <= set(LABELS)
    probs = table[[f"p_{c}" for c in CLASSES.values()]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert {"class", "topology_correct", "topology_reasons", "seconds"} <= set(table.columns)
    assert json.loads((out / "predictions.json").read_text())["cases"][0]["id"] == "case0"


def test_write_back_preserves_position(bundle_dir: Path, tmp_path: Path) -> None:
    """A label at a world position lands at the same world position in the input grid."""
    from fetalcmr.infer import to_input_grid

    image = nib.Nifti1Image(np.zeros((20, 20, 20), np.float32), np.diag([-1.0, 1.0, 2.0, 1.0]))
    model_affine = np.diag([0.5, 0.5, 0.5, 1.0])
    model_affine[:3, 3] = [-10.0, 0.0, 0.0]
    lab = np.zeros((40, 40, 40), np.uint8)
    lab[10:14, 10:14, 20:24] = 4  # world x in [-5, -3], y in [5, 7], z in [10, 12]
    back = to_input_grid(lab, model_affine, image)
    idx = np.argwhere(back == 4)
    world = (image.affine @ np.c_[idx, np.ones(len(idx))].T).T[:, :3]
    assert world[:, 0].min() >= -5.5 and world[:, 0].max() <= -2.5
    assert world[:, 2].min() >= 9.5 and world[:, 2].max() <= 12.5


def _bad(kind: str, folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    good = _volume(folder / "good.nii.gz")
    path = folder / "bad.nii.gz"
    if kind == "corrupt-gzip":
        path.write_bytes(gzip.compress(good.read_bytes())[:200])
    elif kind == "2d":
        nib.save(nib.Nifti1Image(np.ones((8, 8), np.float32), np.eye(4)), str(path))
    elif kind == "4d":
        nib.save(nib.Nifti1Image(np.ones((8, 8, 8, 3), np.float32), np.eye(4)), str(path))
    elif kind == "nan":
        arr = np.ones((8, 8, 8), np.float32)
        arr[2, 2, 2] = np.nan
        nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))
    elif kind == "empty":
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), str(path))
    return path


@pytest.mark.parametrize("kind", ["corrupt-gzip", "2d", "4d", "nan", "empty"])
def test_bad_volume_stops_with_its_name_and_writes_nothing(bundle_dir: Path, tmp_path: Path, kind: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    bad = _bad(kind, tmp_path / "in")
    out = tmp_path / "out"
    code = cli_main(["infer", str(tmp_path / "in"), "--bundle", str(bundle_dir), "--out", str(out)])
    assert code == 2
    assert str(bad) in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_missing_input_duplicate_ids_and_malformed_json(tmp_path: Path) -> None:
    from fetalcmr.io import DataError

    with pytest.raises(DataError, match="no such file"):
        collect_cases(tmp_path / "nope.nii.gz")
    ds = tmp_path / "dataset.json"
    ds.write_text('{"testing": [')
    with pytest.raises(DataError, match="not valid JSON"):
        collect_cases(ds)
    a = _volume(tmp_path / "a.nii.gz")
    ds.write_text(json.dumps({"testing": [{"id": "x", "image": str(a)}, {"id": "x", "image": str(a)}]}))
    with pytest.raises(DataError, match="duplicate case ids"):
        collect_cases(ds)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_output_folder(bundle_dir: Path, tmp_path: Path) -> None:
    src = _volume(tmp_path / "a.nii.gz")
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(stat.S_IRUSR | stat.S_IXUSR)
    assert cli_main(["infer", str(src), "--bundle", str(bundle_dir), "--out", str(out)]) == 2


def test_output_path_that_cannot_be_a_folder(bundle_dir: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    src = _volume(tmp_path / "a.nii.gz")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli_main(["infer", str(src), "--bundle", str(bundle_dir), "--out", str(blocker / "out")]) == 2
    assert "cannot create the output folder" in capsys.readouterr().err


def test_export_copies_a_loadable_bundle_and_refuses_a_broken_one(bundle_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "models").mkdir(parents=True)
    _copy_bundle(bundle_dir, run / "models" / "bundle")
    out = tmp_path / "exported"
    assert cli_main(["export", "--run-dir", str(run), "--out", str(out)]) == 0
    assert load_bundle(out).info["provenance"]["commit"]
    (run / "models" / "bundle" / "member0_classifier.pt").write_bytes(b"broken")
    assert cli_main(["export", "--run-dir", str(run), "--out", str(tmp_path / "again")]) == 3
    assert not (tmp_path / "again").exists()
