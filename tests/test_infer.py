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
from scipy import ndimage

from fetalcmr.anatomy import CLASSES, LABELS
from fetalcmr.bundle import BUNDLE_FILE, BundleError, export_bundle, load_bundle
from fetalcmr.cli import main as cli_main
from fetalcmr.config import get_profile
from fetalcmr.infer import collect_cases, infer
from fetalcmr.io import Volume, resample_labels
from fetalcmr.joint import build_joint

KIND = "softmax+image"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[torch.nn.Module]]:
    """A two-member bundle of untrained smoke-profile networks and the in-memory members it was made from."""
    prof = get_profile("smoke")
    torch.manual_seed(0)
    members = [build_joint(prof.segmenter, prof.classifier, KIND) for _ in range(2)]
    template = _volume(tmp_path_factory.mktemp("template") / "template.nii.gz", shape=(24, 24, 24),
                       spacing=(2.0, 2.0, 2.0))
    folder = export_bundle(tmp_path_factory.mktemp("bundle"), members, segmenter=prof.segmenter,
                           classifier=prof.classifier, kind=KIND, grid=prof.cohort.grid,
                           spacing_mm=prof.cohort.spacing_mm, labels=dict(LABELS), classes=dict(CLASSES),
                           provenance={"test": True}, template=template)
    return folder, members


@pytest.fixture(scope="module")
def bundle_dir(exported: tuple[Path, list[torch.nn.Module]]) -> Path:
    return exported[0]


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


def test_bundle_round_trip_gives_identical_outputs(exported: tuple[Path, list[torch.nn.Module]]) -> None:
    """Each loaded member computes exactly what the in-memory network it was exported from computes."""
    folder, originals = exported
    bundle = load_bundle(folder, labels=dict(LABELS), classes=dict(CLASSES))
    assert len(bundle.members) == 2 and bundle.grid == get_profile("smoke").cohort.grid
    x = torch.rand(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))  # any divisible size will do
    with torch.no_grad():
        want = [m.eval()(x) for m in originals]
        got = [m(x) for m in bundle.members]
    for (seg, cls), (seg_want, cls_want) in zip(got, want, strict=True):
        torch.testing.assert_close(seg, seg_want, rtol=0, atol=0)
        torch.testing.assert_close(cls, cls_want, rtol=0, atol=0)
    # the two members differ, so a mix-up of members would show too
    assert not torch.allclose(want[0][0], want[1][0])


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
        (lambda i: i["template"].update(sha256="0" * 16), "template.nii.gz: checksum differs"),
    ],
    ids=["format", "fetalcmr-version", "monai-version", "checksum", "template-checksum"],
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


def _blobs(path: Path, shape: tuple[int, int, int] = (40, 36, 30)) -> tuple[Path, dict[int, np.ndarray]]:
    """An oblique-free but flipped, anisotropic volume with two off-centre boxes of different brightness.

    Returns the file and ``{label: mask}`` in the volume's own voxels (4: the brightest box, 6: the dimmer).
    """
    rng = np.random.default_rng(0)
    arr = rng.normal(0.0, 0.02, shape).astype(np.float32)
    masks = {4: np.zeros(shape, bool), 6: np.zeros(shape, bool)}
    masks[4][5:15, 6:16, 4:12] = True  # off-centre along every axis: any flipped axis moves it
    masks[6][24:34, 20:30, 16:26] = True
    arr[masks[4]], arr[masks[6]] = 1.0, 0.5
    affine = np.diag([-1.3, -1.1, 1.7, 1.0])  # x and y reversed (LPS-like), anisotropic voxels
    affine[:3, 3] = [12.0, -7.0, 3.0]
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path, masks


def test_labels_land_where_the_anatomy_is_in_the_inputs_grid(bundle_dir: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Labels predicted on the model grid come back onto the same structures in the input's own grid.

    The network is replaced by a rule that labels the model-grid image by brightness (4: bright
    box, 6: dim box), so the written label map must reproduce the boxes drawn in the input's voxels:
    reorientation, resampling to the bundle grid and back all have to agree.
    """
    import fetalcmr.infer as infer_mod

    path, masks = _blobs(tmp_path / "blobs.nii.gz")
    seen: list[tuple[int, ...]] = []

    def by_brightness(bundle: object, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        seen.append(image.shape)
        lab = np.zeros(image.shape, np.uint8)
        lab[image > 0.3 * image.max()] = 6
        lab[image > 0.75 * image.max()] = 4
        return lab, np.array([0.2, 0.3, 0.5]), 2

    monkeypatch.setattr(infer_mod, "predict", by_brightness)
    infer(path, bundle_dir, tmp_path / "out", align=False, progress=False)
    grid = get_profile("smoke").cohort.grid
    assert seen == [(grid,) * 3]
    written = nib.load(str(tmp_path / "out" / "blobs_labels.nii.gz"))
    np.testing.assert_allclose(written.affine, nib.load(str(path)).affine, atol=1e-5)
    labels = np.asarray(written.dataobj)
    assert labels.shape == masks[4].shape
    for label, mask in masks.items():
        got = labels == label
        dice = 2 * (got & mask).sum() / (got.sum() + mask.sum())
        assert dice > 0.95, (label, dice)  # measured 1.0 for both


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
    image = nib.Nifti1Image(np.zeros((20, 20, 20), np.float32), np.diag([-1.0, 1.0, 2.0, 1.0]))
    model_affine = np.diag([0.5, 0.5, 0.5, 1.0])
    model_affine[:3, 3] = [-10.0, 0.0, 0.0]
    lab = np.zeros((40, 40, 40), np.uint8)
    lab[10:14, 10:14, 20:24] = 4  # world x in [-5, -3], y in [5, 7], z in [10, 12]
    back = resample_labels(Volume(lab, model_affine), image.affine, image.shape)
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


def test_read_only_output_folder(bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    src = _volume(tmp_path / "a.nii.gz")
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.geteuid() == 0:
        # root may write anywhere: make os.access answer from the permission bits, as for a normal user
        def by_mode_bits(path: str | os.PathLike[str], mode: int, **kw: object) -> bool:
            need = ((stat.S_IRUSR if mode & os.R_OK else 0) | (stat.S_IWUSR if mode & os.W_OK else 0)
                    | (stat.S_IXUSR if mode & os.X_OK else 0))
            return os.stat(path).st_mode & need == need

        monkeypatch.setattr(os, "access", by_mode_bits)
    try:
        assert cli_main(["infer", str(src), "--bundle", str(bundle_dir), "--out", str(out)]) == 2
        assert f"{out}: output folder is not writable" in capsys.readouterr().err
        assert not any(out.iterdir())
    finally:
        out.chmod(stat.S_IRWXU)


def test_output_path_that_cannot_be_a_folder(bundle_dir: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    src = _volume(tmp_path / "a.nii.gz")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli_main(["infer", str(src), "--bundle", str(bundle_dir), "--out", str(blocker / "out")]) == 2
    assert "cannot create the output folder" in capsys.readouterr().err


def test_export_copies_a_loadable_bundle_and_refuses_a_broken_one(bundle_dir: Path, tmp_path: Path) -> None:
    from fetalcmr.joint import CLASS_PREDICTIONS_CSV, SEG_METRICS_CSV, STAGE, SWEEP_METRICS_CSV, SWEEP_PREDICTIONS_CSV
    from fetalcmr.paths import RunPaths

    run = tmp_path / "run"
    (run / "models").mkdir(parents=True)
    _copy_bundle(bundle_dir, run / "models" / "bundle")
    out = tmp_path / "exported"
    # the bundle alone is not a finished stage 04: export names the notebook to run
    assert cli_main(["export", "--run-dir", str(run), "--out", str(out)]) == 3
    assert not out.exists()
    paths = RunPaths(run)  # what notebook 04 writes besides the bundle (no runs recorded here)
    paths.results_dir.mkdir(parents=True)
    for name in (SEG_METRICS_CSV, CLASS_PREDICTIONS_CSV, SWEEP_METRICS_CSV, SWEEP_PREDICTIONS_CSV):
        (paths.results_dir / name).write_text("id\n")
    paths.outputs_record(STAGE).write_text(json.dumps({"runs": [], "ensemble_members": [], "sweep": []}))
    assert cli_main(["export", "--run-dir", str(run), "--out", str(out)]) == 0
    assert load_bundle(out).info["provenance"]["commit"]
    (run / "models" / "bundle" / "member0_classifier.pt").write_bytes(b"broken")
    assert cli_main(["export", "--run-dir", str(run), "--out", str(tmp_path / "again")]) == 3
    assert not (tmp_path / "again").exists()


def test_infer_cleans_as_the_bundle_says_and_flags_rule_disagreement(
        exported: tuple[Path, list[torch.nn.Module]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundle's post-processing is applied before writing; the topology rule's class sits beside
    the network's and a disagreement asks for review."""
    import fetalcmr.infer as infer_mod
    from fetalcmr.anatomy import LABEL_INDEX
    from fetalcmr.postprocess import PostProcessing

    _, members = exported
    prof = get_profile("smoke")
    ao = LABEL_INDEX["AO"]
    folders = {}
    for name, post in (("clean", PostProcessing((ao,))), ("raw", None)):
        folders[name] = export_bundle(
            tmp_path / name, members, segmenter=prof.segmenter, classifier=prof.classifier, kind=KIND,
            grid=prof.cohort.grid, spacing_mm=prof.cohort.spacing_mm, labels=dict(LABELS), classes=dict(CLASSES),
            provenance={}, template=_volume(tmp_path / f"tpl_{name}.nii.gz", shape=(24, 24, 24),
                                            spacing=(2.0, 2.0, 2.0)), postprocessing=post)
    assert load_bundle(folders["clean"]).postprocessing.labels == (ao,)
    assert load_bundle(folders["raw"]).postprocessing == PostProcessing()

    def ring_and_speck(bundle: object, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        lab = np.zeros(image.shape, np.uint8)
        c = image.shape[0] // 2
        lab[c - 8:c + 8, c - 8:c + 8, c - 1:c + 2] = ao  # a square ring of aorta: the rule says DAA
        lab[c - 5:c + 5, c - 5:c + 5, c - 1:c + 2] = 0
        lab[c + 13:c + 16, c - 1:c + 2, c - 1:c + 2] = ao  # a stray speck of aorta, apart from the ring
        return lab, np.array([0.6, 0.3, 0.1]), 0  # the network says CoA

    monkeypatch.setattr(infer_mod, "predict", ring_and_speck)
    src = _volume(tmp_path / "case.nii.gz")
    counts = {}
    for name, folder in folders.items():
        table = infer(src, folder, tmp_path / f"out_{name}", align=False, progress=False)
        row = table.iloc[0]
        assert row["rule_class"] == "DAA" and "ring" in row["rule_reason"] and bool(row["review"])
        written = np.asarray(nib.load(str(tmp_path / f"out_{name}" / "case_labels.nii.gz")).dataobj)
        counts[name] = int(ndimage.label(written == ao, structure=np.ones((3, 3, 3)))[1])
    assert counts == {"clean": 1, "raw": 2}  # the speck is gone only where the bundle chose the clean-up


def test_a_crop_centre_places_the_grid_there_and_equals_the_centre_crop_at_the_volumes_centre(
        bundle_dir: Path, tmp_path: Path) -> None:
    """``centre_mm``: the model grid's centre voxel sits at the given world point, axes kept; at the volume's
    own centre the input is the unaligned centre crop's, voxel for voxel."""
    from fetalcmr.align import centre
    from fetalcmr.bundle import load_bundle
    from fetalcmr.infer import model_input
    from fetalcmr.io import load_nifti

    path = _volume(tmp_path / "vol.nii.gz", flip_x=False)
    bundle = load_bundle(bundle_dir)
    point = np.array([20.0, 5.0, 30.0])
    vol, record = model_input(bundle, path, align=True, centre_mm=point)
    middle = (np.array(vol.array.shape) - 1) / 2.0
    np.testing.assert_allclose(vol.affine[:3, :3] @ middle + vol.affine[:3, 3], point, atol=1e-9)
    np.testing.assert_allclose(vol.affine[:3, :3], np.eye(3) * bundle.spacing_mm)
    assert record == {"aligned": False, "crop_centre_mm": "[20.0, 5.0, 30.0]"}
    at_centre, _ = model_input(bundle, path, align=True, centre_mm=centre(load_nifti(path)))
    centre_crop, _ = model_input(bundle, path, align=False)
    np.testing.assert_allclose(at_centre.array, centre_crop.array, atol=1e-4)


def test_a_crop_centre_is_for_one_volume(bundle_dir: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        _volume(src / f"case{i}.nii.gz", seed=i)
    argv = ["infer", str(src), "--bundle", str(bundle_dir), "--out", str(tmp_path / "out"), "--quiet"]
    assert cli_main([*argv, "--centre", "0", "0", "0"]) == 2
    assert "a crop centre applies to one volume, not 2" in capsys.readouterr().err
    assert not (tmp_path / "out" / "predictions.csv").exists()
    one = ["infer", str(src / "case0.nii.gz"), "--bundle", str(bundle_dir), "--out", str(tmp_path / "one"), "--quiet"]
    assert cli_main([*one, "--centre", "1", "2", "3"]) == 0
    row = json.loads((tmp_path / "one" / "predictions.json").read_text())["cases"][0]
    assert row["crop_centre_mm"] == "[1.0, 2.0, 3.0]" and row["aligned"] is False
