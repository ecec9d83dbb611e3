"""VoxelMorph label propagation: warping, grids, loss, atlas choice, the weak-supervision invariant."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from fetalcmr import propagation as prop
from fetalcmr.config import PropagationConfig
from fetalcmr.data import class_balanced_weights
from fetalcmr.dataset import read_dataset, write_dataset
from fetalcmr.io import DataError, load_nifti, save_nifti

TOY_GRID = 24
TOY_CFG = PropagationConfig(grid=16, nb_features=(8, 8, 8, 8), integration_steps=5, iterations=3,
                            ncc_window=5)


def toy_atlas(cls: int, grid: int = TOY_GRID) -> tuple[np.ndarray, np.ndarray]:
    """A labelled phantom: dark labelled bars in mid-grey tissue with a bright 'lung'; class shifts bars."""
    g = np.mgrid[:grid, :grid, :grid].astype(float) / grid
    labels = np.zeros((grid,) * 3, np.uint8)
    off = 0.08 * (cls - 1)
    labels[(np.abs(g[0] - 0.35 - off) < 0.07) & (np.abs(g[1] - 0.5) < 0.07) & (g[2] > 0.2) & (g[2] < 0.8)] = 1
    labels[(np.abs(g[0] - 0.65 + off) < 0.06) & (np.abs(g[2] - 0.5) < 0.06) & (g[1] > 0.25) & (g[1] < 0.75)] = 2
    labels[(np.abs(g[1] - 0.3) < 0.06) & (np.abs(g[2] - 0.3) < 0.06) & (g[0] > 0.3) & (g[0] < 0.7)] = 3
    image = 0.4 + 0.5 * (((g[0] - 0.5) ** 2 + (g[1] - 0.7) ** 2) < 0.04)
    image = np.where(labels > 0, 0.08, image)
    return ndimage.gaussian_filter(image, 0.7).astype(np.float32) * 1000, labels


def smooth_field(rng: np.random.Generator, grid: int, amplitude: float) -> np.ndarray:
    """A random smooth displacement field ``[3, g, g, g]`` with max magnitude ~``amplitude`` voxels."""
    f = np.stack([ndimage.gaussian_filter(rng.normal(size=(grid,) * 3), grid / 5) for _ in range(3)])
    return f / (np.abs(f).max() + 1e-9) * amplitude


def apply_field(array: np.ndarray, field: np.ndarray, order: int) -> np.ndarray:
    coords = np.mgrid[tuple(slice(0, n) for n in array.shape)].astype(float) + field
    return ndimage.map_coordinates(array, coords, order=order, mode="constant", cval=0)


def make_toy_dataset(root: Path, n_per_class: int = 2, seed: int = 0, with_gt: bool = True,
                     grid: int = TOY_GRID) -> Path:
    """Write a tiny synthetic dataset (3 class atlases, warped subjects) and return its dataset.json."""
    rng = np.random.default_rng(seed)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    data: dict[str, Any] = {
        "name": "toy", "synthetic": True, "labels": {"0": "background", "1": "A", "2": "B", "3": "C"},
        "classes": {"0": "CoA", "1": "RAA", "2": "DAA"}, "spacing_mm": [1.5] * 3,
        "atlases": [], "training": [], "validation": [], "testing": [],
    }
    for cls in range(3):
        img, lab = toy_atlas(cls, grid)
        save_nifti(root / f"atlas{cls}_image.nii.gz", img, affine)
        save_nifti(root / f"atlas{cls}_labels.nii.gz", lab, affine)
        data["atlases"].append({"label": cls, "image": str(root / f"atlas{cls}_image.nii.gz"),
                                "labelmap": str(root / f"atlas{cls}_labels.nii.gz")})
    k = 0
    for cls in range(3):
        img, lab = toy_atlas(cls, grid)
        for j in range(n_per_class + 1):
            field = smooth_field(rng, grid, 1.5)
            s_img = apply_field(img, field, 1) * rng.uniform(0.8, 1.2) + rng.normal(0, 5, img.shape)
            s_lab = apply_field(lab, field, 0).astype(np.uint8)
            sid = f"sub-{k:03d}"
            item = {"id": sid, "image": str(root / f"{sid}_image.nii.gz"), "binary": str(root / f"{sid}_binary.nii.gz"),
                    "label": cls, "meta": {}}
            save_nifti(item["image"], s_img.astype(np.float32), affine)
            save_nifti(item["binary"], (s_lab > 0).astype(np.uint8), affine)
            if with_gt:
                item["gt"] = str(root / f"{sid}_gt.nii.gz")
                save_nifti(item["gt"], s_lab, affine)
            split = "testing" if j == n_per_class else ("validation" if j == 0 and cls == 0 else "training")
            data[split].append(item)
            k += 1
    path = root / "dataset.json"
    write_dataset(path, data)
    return path


# ------------------------------------------------------------------------------------------ warping


def test_identity_field_leaves_labels_unchanged() -> None:
    _, lab = toy_atlas(0)
    zero = torch.zeros(1, 3, *lab.shape)
    for mode in ("onehot", "nearest"):
        assert np.array_equal(prop.warp_labels(lab, zero, 4, mode=mode), lab)


@settings(max_examples=10, deadline=None)
@given(st.tuples(st.integers(-3, 3), st.integers(-3, 3), st.integers(-3, 3)), st.sampled_from(["onehot", "nearest"]))
def test_integer_translation_is_exact(shift: tuple[int, int, int], mode: str) -> None:
    _, lab = toy_atlas(1)
    disp = torch.tensor(shift, dtype=torch.float32).view(1, 3, 1, 1, 1).expand(1, 3, *lab.shape).contiguous()
    out = prop.warp_labels(lab, disp, 4, mode=mode)
    # out(x) = lab(x + shift), zero outside
    expected = ndimage.shift(lab, [-s for s in shift], order=0, mode="constant", cval=0)
    assert np.array_equal(out, expected)
    assert set(np.unique(out)) <= set(np.unique(lab))


def _label_dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    """Dice of one label between two label maps (1.0 when both lack it)."""
    x, y = a == label, b == label
    total = int(x.sum() + y.sum())
    return 1.0 if total == 0 else 2.0 * int((x & y).sum()) / total


def test_smooth_warp_matches_reference_resampling() -> None:
    _, lab = toy_atlas(2)
    # a translation of 3-4 voxels plus a smooth random part: every vessel voxel moves 4-6 voxels,
    # further than the bars are thick, so the unwarped atlas shares no vessel voxel with the reference
    field = smooth_field(np.random.default_rng(3), lab.shape[0], 2.0) + np.reshape([2.6, -3.3, 2.2], (3, 1, 1, 1))
    assert np.linalg.norm(field, axis=0)[lab > 0].min() > 3.0
    ref = apply_field(lab, field, 0)  # independent resampling: scipy, nearest neighbour
    vessels = (1, 2, 3)
    assert all((ref == k).sum() > 50 for k in vessels)
    assert max(_label_dice(ref, lab, k) for k in vessels) < 0.2
    disp = torch.tensor(field, dtype=torch.float32)[None]
    nearest = prop.warp_labels(lab, disp, 4, mode="nearest")
    onehot = prop.warp_labels(lab, disp, 4, mode="onehot")
    # measured: nearest 1.0 per label (ties at exact half-voxels may round either way); one-hot
    # (a trilinear partial-volume vote) 0.94-0.99
    assert min(_label_dice(nearest, ref, k) for k in vessels) > 0.99
    assert min(_label_dice(onehot, ref, k) for k in vessels) > 0.9
    for out in (nearest, onehot):
        assert max(_label_dice(out, lab, k) for k in vessels) < 0.2  # the labels did move
        assert set(np.unique(out)) == set(np.unique(lab))


def test_upsampled_translation_matches_full_grid_translation() -> None:
    coarse = torch.zeros(1, 3, 12, 12, 12)
    coarse[:, 0] = 1.0  # one coarse voxel along x
    full = prop.upsample_field(coarse, (24, 24, 24))
    assert torch.allclose(full[:, 0], torch.full((1, 24, 24, 24), 2.0))
    assert torch.allclose(full[:, 1:], torch.zeros(1, 2, 24, 24, 24))


def test_coarse_grid_geometry_is_consistent() -> None:
    # A blob downsampled, shifted on the coarse grid, upsampled: same as shifting the full blob.
    _, lab = toy_atlas(0)
    fg = (lab > 0).astype(np.float32)
    coarse = torch.zeros(1, 3, 12, 12, 12)
    coarse[:, 1] = 1.5
    moved = prop.warp(torch.tensor(fg)[None, None], prop.upsample_field(coarse, fg.shape))[0, 0].numpy()
    expected = ndimage.shift(fg, (0, -3, 0), order=1)
    assert np.abs(moved - expected).max() < 1e-4


def test_jacobian_of_known_fields() -> None:
    zero = np.zeros((3, 8, 8, 8))
    assert np.allclose(prop.jacobian_determinant(zero), 1.0)
    x = np.mgrid[:8, :8, :8].astype(float)
    stretch = np.stack([0.5 * x[0], np.zeros_like(x[0]), np.zeros_like(x[0])])  # x -> 1.5 x
    assert np.allclose(prop.jacobian_determinant(stretch), 1.5)
    fold = np.stack([-2.0 * x[0], np.zeros_like(x[0]), np.zeros_like(x[0])])  # x -> -x
    stats = prop.folding_stats(fold)
    assert stats["fold_fraction"] == 1.0 and stats["jac_min"] == pytest.approx(-1.0)


# ------------------------------------------------------------------------------------- grids, model


def test_mismatched_grids_raise_clear_error(tmp_path: Path) -> None:
    path = make_toy_dataset(tmp_path, n_per_class=1)
    data = read_dataset(path)
    item = data["training"][0]
    vol = load_nifti(item["image"])
    save_nifti(item["image"], vol.array[:-2], vol.affine)  # wrong shape
    with pytest.raises(DataError, match=rf"{Path(item['image']).name}.*does not match"):
        prop.load_subjects(data, prop.load_atlases(data, 16), 16)
    save_nifti(item["image"], vol.array, vol.affine @ np.diag([1, 1, 1.2, 1]))  # wrong affine
    with pytest.raises(DataError, match=rf"{Path(item['image']).name}.*affine"):
        prop.load_subjects(data, prop.load_atlases(data, 16), 16)


def test_loss_decreases_on_a_tiny_pair(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = read_dataset(make_toy_dataset(tmp_path, n_per_class=1))
    atlases = prop.load_atlases(data, 16)
    subjects = prop.load_subjects(data, atlases, 16, splits=("training",))[:1]
    cfg = dataclasses.replace(TOY_CFG, iterations=25, lr=3e-3)
    _, hist = prop.train_registration(subjects, atlases, cfg, progress=False)
    first, last = hist["loss"].iloc[:3].mean(), hist["loss"].iloc[-3:].mean()
    assert last < first - 0.01, (first, last)


def test_atlas_used_matches_subject_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = read_dataset(make_toy_dataset(tmp_path, n_per_class=1))
    atlases = prop.load_atlases(data, 16)
    subjects = prop.load_subjects(data, atlases, 16)
    seen: list[tuple[str, int]] = []
    real = prop.register

    def spy(model: torch.nn.Module, atlas: prop.AtlasData, subject: prop.SubjectData, **kw: Any) -> torch.Tensor:
        seen.append((subject.id, atlas.cls))
        return real(model, atlas, subject, **kw)

    monkeypatch.setattr(prop, "register", spy)
    model = prop.build_model(TOY_CFG)
    prop.propagate_subjects(model, subjects, atlases, tmp_path / "labels", progress=False)
    classes = {str(it["id"]): int(it["label"]) for split in ("training", "validation", "testing") for it in data[split]}
    assert len(seen) == len(classes)
    assert all(classes[sid] == cls for sid, cls in seen)
    # with an untrained (near-identity) network the propagated labels are the class atlas itself
    lp = load_nifti(tmp_path / "labels" / f"{seen[0][0]}_lp.nii.gz").array
    assert np.array_equal(lp, atlases[seen[0][1]].labelmap)


def test_local_ncc_matches_neurite_and_stays_in_range() -> None:
    from neurite.nn.modules import NCC

    torch.manual_seed(0)
    a = F.avg_pool3d(torch.rand(2, 1, 16, 16, 16), 3, 1, 1)
    b = 0.5 * a + 0.5 * F.avg_pool3d(torch.rand(2, 1, 16, 16, 16), 3, 1, 1)
    expected = NCC(window_size=5, reduction=None)(a, b).reshape(2)
    torch.testing.assert_close(prop.local_ncc(a, b, 5), expected, rtol=1e-4, atol=1e-5)
    # near-constant volumes far from zero: float32 round-off in the local variances, where
    # neurite's range assertion stops the run (without the clamps the mean here is ~180)
    c, d = 100 + 0.01 * torch.rand(1, 1, 12, 12, 12), 100 + 0.01 * torch.rand(1, 1, 12, 12, 12)
    with pytest.raises(AssertionError, match="NCC coefficients"):
        NCC(window_size=5)(c, d)
    value = prop.local_ncc(c, d, 5)
    assert torch.isfinite(value).all() and 0 <= float(value) <= 1


def _pair_loss(model: torch.nn.Module, loss_fn: prop.RegistrationLoss, v: torch.Tensor,
               atlas: prop.AtlasData, subject: prop.SubjectData) -> float:
    with torch.no_grad():
        loss, _ = prop.velocity_loss(model, loss_fn, v, atlas.image_reg, atlas.fg_reg, subject.image_reg,
                                     subject.binary_reg)
    return float(loss)


def test_refinement_lowers_the_pair_loss_and_leaves_the_network(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = read_dataset(make_toy_dataset(tmp_path, n_per_class=1))
    atlases = prop.load_atlases(data, 16)
    subject = next(s for s in prop.load_subjects(data, atlases, 16) if s.cls == 1)
    atlas = atlases[subject.cls]
    model, loss_fn = prop.build_model(TOY_CFG), prop.RegistrationLoss(TOY_CFG)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    v0 = prop.predict_velocity(model, atlas, subject)
    v = prop.refine_velocity(model, loss_fn, v0, atlas.image_reg, atlas.fg_reg, subject.image_reg,
                             subject.binary_reg, steps=15, lr=0.3)
    assert _pair_loss(model, loss_fn, v, atlas, subject) < _pair_loss(model, loss_fn, v0, atlas, subject) - 0.01
    assert all(torch.equal(before[k], t) for k, t in model.state_dict().items())
    same = prop.refine_velocity(model, loss_fn, v0, atlas.image_reg, atlas.fg_reg, subject.image_reg,
                                subject.binary_reg, steps=0, lr=0.3)
    assert torch.equal(same, v0)


def test_refinement_without_dice_term_never_reads_the_mask(tmp_path: Path) -> None:
    data = read_dataset(make_toy_dataset(tmp_path, n_per_class=1))
    atlases = prop.load_atlases(data, 16)
    subject = prop.load_subjects(data, atlases, 16)[0]
    subject.binary_reg = torch.full_like(subject.binary_reg, float("nan"))  # poison: any read shows
    model = prop.build_model(TOY_CFG)
    no_dice = prop.RegistrationLoss(dataclasses.replace(TOY_CFG, weight_dice=0.0))
    disp = prop.register(model, atlases[subject.cls], subject, refine=(no_dice, 3, 0.5))
    assert torch.isfinite(disp).all()
    with_dice = prop.RegistrationLoss(dataclasses.replace(TOY_CFG, weight_dice=1.0))
    assert not torch.isfinite(prop.register(model, atlases[subject.cls], subject, refine=(with_dice, 3, 0.5))).all()


def test_network_only_labels_are_written_for_the_listed_splits(tmp_path: Path) -> None:
    data = read_dataset(make_toy_dataset(tmp_path, n_per_class=1))
    atlases = prop.load_atlases(data, 16)
    subjects = prop.load_subjects(data, atlases, 16)
    refine = (prop.RegistrationLoss(TOY_CFG), 2, 0.3)
    table = prop.propagate_subjects(prop.build_model(TOY_CFG), subjects, atlases, tmp_path / "labels",
                                    progress=False, refine=refine, network_only_splits=("testing",))
    has_network = table["lp_network"].notna()
    assert has_network.any() and (table.loc[has_network, "split"] == "testing").all()
    assert (table.loc[~has_network, "split"] != "testing").all()
    assert all(Path(p).exists() for p in table.loc[has_network, "lp_network"])
    assert (table.loc[has_network, "seconds_network"] > 0).all()


def test_two_worker_processes_write_the_labels_of_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The subjects spread over spawned single-thread processes (what the default profile does)
    give the same label maps and fold statistics as one process: nothing in the per-subject
    context fails to pickle (not even the last training step's graph that VoxelMorph keeps on the
    model), and the refinement's bits do not follow the worker count."""
    monkeypatch.setattr("fetalcmr.workers.MIN_ITEMS", 1)
    data = read_dataset(make_toy_dataset(tmp_path, n_per_class=1))
    atlases = prop.load_atlases(data, 16)
    subjects = prop.load_subjects(data, atlases, 16)
    model = prop.build_model(TOY_CFG)
    with torch.enable_grad():  # a forward pass as in training: VoxelMorph keeps its velocity and graph
        prop.velocity_field(model.train(), subjects[0].image_reg, subjects[1].image_reg)
    refine = (prop.RegistrationLoss(TOY_CFG), 2, 0.3)
    tables = {w: prop.propagate_subjects(model, subjects, atlases, tmp_path / f"w{w}", progress=False,
                                         prealign_steps=(2, 1), refine=refine, workers=w) for w in (2, 1)}
    assert list(tables[1]["id"]) == list(tables[2]["id"]) == [s.id for s in subjects]
    for a, b in zip(tables[1]["lp"], tables[2]["lp"], strict=True):
        np.testing.assert_array_equal(load_nifti(a).array, load_nifti(b).array)
    np.testing.assert_array_equal(tables[1]["fold_fraction"], tables[2]["fold_fraction"])


def test_missing_atlas_for_a_class_is_an_error(tmp_path: Path) -> None:
    data = read_dataset(make_toy_dataset(tmp_path, n_per_class=1))
    data["atlases"] = data["atlases"][:2]
    with pytest.raises(DataError, match="class 2 has no atlas"):
        prop.load_subjects(data, prop.load_atlases(data, 16), 16)


# ----------------------------------------------------------------------------------- the whole stage


def test_stage_writes_lp_never_reads_gt_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_toy_dataset(tmp_path / "cohort", n_per_class=1)
    raw = json.loads(src.read_text())
    for split in ("training", "validation", "testing"):  # gt points at missing / corrupt files
        for i, item in enumerate(raw[split]):
            item["gt"] = "missing_gt.nii.gz" if i % 2 else "corrupt_gt.nii.gz"
    (tmp_path / "cohort" / "corrupt_gt.nii.gz").write_bytes(b"not a nifti")
    src.write_text(json.dumps(raw))
    opened: list[str] = []
    real_load = prop.load_nifti

    def spy(path: Any, **kw: Any) -> Any:
        opened.append(str(path))
        return real_load(path, **kw)

    monkeypatch.setattr(prop, "load_nifti", spy)
    lp_json = tmp_path / "lp" / "dataset.json"
    res = prop.run_label_propagation(src, tmp_path / "lp", lp_json, TOY_CFG, seed=0, progress=False)
    assert not any("gt" in Path(p).name for p in opened)
    assert not res.reused
    out = read_dataset(lp_json)
    for split in ("training", "validation", "testing"):
        for item in out[split]:
            lp = load_nifti(item["lp"])
            img = load_nifti(item["image"])
            assert lp.array.shape == img.array.shape and np.allclose(lp.affine, img.affine)
            assert set(np.unique(lp.array)) <= {0, 1, 2, 3}
            assert item.get("lp_oracle_class", False) == (split == "testing")
    assert len(res.history) == TOY_CFG.iterations
    assert set(res.subjects.columns) >= {"id", "seconds", "fold_fraction"}
    again = prop.run_label_propagation(src, tmp_path / "lp", lp_json, TOY_CFG, seed=0, progress=False)
    assert again.reused
    other = prop.run_label_propagation(src, tmp_path / "lp", lp_json, dataclasses.replace(TOY_CFG, lr=2e-3),
                                       seed=0, progress=False)
    assert not other.reused


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = prop.build_model(TOY_CFG)
    prop.save_model(model, tmp_path / "m.pt")
    loaded = prop.load_model(TOY_CFG, tmp_path / "m.pt")
    for (k, v), (_, w) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(v, w), k
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(DataError, match="bad.pt"):
        prop.load_model(TOY_CFG, tmp_path / "bad.pt")


# ------------------------------------------------------------------------------------ affine pre-alignment


def test_affine_displacement_known_values() -> None:
    assert prop.affine_displacement(torch.eye(3, 4), (5, 6, 7)).abs().max() < 1e-5
    shift = torch.eye(3, 4)
    shift[0, 3] = 0.25  # a quarter of the half-width along x: 0.25 * 8 / 2 = 1 voxel
    d = prop.affine_displacement(shift, (8, 8, 8))
    assert torch.allclose(d[:, 0], torch.ones(1, 8, 8, 8)) and d[:, 1:].abs().max() < 1e-5
    # composition: points moved by +1 voxel along y, then the x shift
    pts = torch.stack(torch.meshgrid(*[torch.arange(8.0)] * 3, indexing="ij"))[None]
    pts = pts + torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1, 1)
    comp = prop.affine_displacement(shift, (8, 8, 8), points=pts)
    assert torch.allclose(comp[:, 0], torch.ones(1, 8, 8, 8), atol=1e-5)
    assert torch.allclose(comp[:, 1], torch.ones(1, 8, 8, 8), atol=1e-5)


def test_affine_align_recovers_a_translation() -> None:
    img, lab = toy_atlas(0)
    moving = prop.to_grid(img / 1000.0, 16)
    fixed_img = ndimage.shift(img, (2, -2, 1), order=1, mode="nearest")
    fixed = prop.to_grid(fixed_img / 1000.0, 16)
    matrix = prop.affine_align(moving, fixed)
    disp = prop.affine_displacement(matrix, lab.shape)
    out = prop.warp_labels(lab, disp, 4)
    truth = ndimage.shift(lab, (2, -2, 1), order=0)
    before = (lab == truth)[truth > 0].mean()
    after = (out == truth)[truth > 0].mean()
    assert after > before + 0.2 and after > 0.7, (before, after)


def test_methods_table_aggregates_per_method() -> None:
    import pandas as pd

    from fetalcmr.propagation_report import methods_table

    per_subject = pd.DataFrame({"method": ["voxelmorph", "voxelmorph", "affine"], "id": ["a", "b", "a"],
                                "class": [0, 2, 0], "mean_dice": [0.8, 0.6, 0.5], "fg_dice_binary": [0.9, 0.7, 0.6],
                                "arch_loops_ok": [1, 0, 1]})
    per_label = pd.DataFrame({"method": ["voxelmorph"] * 2 + ["affine"], "id": ["a", "b", "a"], "class": [0, 2, 0],
                              "label": [1, 1, 1], "dice": [0.8, 0.6, 0.5], "hd95": [1.0, np.inf, 2.0],
                              "asd": [0.5, np.inf, 1.0]})
    timing = pd.DataFrame({"method": ["voxelmorph", "voxelmorph", "affine"], "id": ["a", "b", "a"],
                           "seconds": [0.2, 0.4, 2.0], "fold_fraction": [0.0, 0.01, 0.0]})
    t = methods_table(per_subject, per_label, timing, {0: "CoA", 1: "RAA", 2: "DAA"}).set_index("method")
    vxm = t.loc["VoxelMorph (test, oracle class)"]
    assert vxm["dice_mean"] == pytest.approx(0.7) and vxm["dice_CoA"] == pytest.approx(0.8)
    assert vxm["dice_DAA"] == pytest.approx(0.6) and np.isnan(vxm["dice_RAA"])
    assert vxm["asd_mean_mm"] == pytest.approx(0.5) and vxm["arch_topology_ok"] == pytest.approx(0.5)
    assert vxm["fold_percent"] == pytest.approx(0.5) and vxm["seconds_per_subject"] == pytest.approx(0.3)
    assert t.loc["Affine only", "subjects"] == 1


@given(st.lists(st.integers(0, 2), min_size=1, max_size=60))
def test_training_draws_every_class_equally_often(classes: list[int]) -> None:
    weights = class_balanced_weights(classes)
    assert weights.sum() == pytest.approx(1.0)
    present = sorted(set(classes))
    per_class = [weights[np.asarray(classes) == c].sum() for c in present]
    np.testing.assert_allclose(per_class, 1.0 / len(present))


# ---------------------------------------------------------------------------------------------
# warping: behaviour pinned down by the mutation-testing pass (tests/mutation/mutate.py)


def _ramp(n: int, shape: tuple[int, int, int], power: int = 1) -> np.ndarray:
    """``x ** power`` along the first axis, constant along the others."""
    return np.broadcast_to((np.arange(n, dtype=np.float64) ** power).reshape(n, 1, 1), (n, *shape[1:])).copy()


def test_warping_to_grid_pools_down_and_interpolates_up() -> None:
    f = _ramp(8, (8, 8, 8), power=2)
    # every axis shrinks or stays: area average (means of 4 along x)
    down = prop.to_grid(f, (2, 4, 8))
    assert down.shape == (1, 1, 2, 4, 8) and down.dtype == torch.float32
    np.testing.assert_allclose(down[0, 0, :, 0, 0].numpy(), [np.mean(np.arange(4) ** 2),
                                                             np.mean(np.arange(4, 8) ** 2)])
    # one axis grows: trilinear, align_corners=False (x samples at 4j + 1.5: halfway between 4j+1 and 4j+2)
    mixed = prop.to_grid(f, (2, 16, 8))
    assert mixed.shape == (1, 1, 2, 16, 8)
    np.testing.assert_allclose(mixed[0, 0, :, 0, 0].numpy(), [(1 + 4) / 2, (25 + 36) / 2])
    up = prop.to_grid(_ramp(4, (4, 8, 8)), (8, 8, 8))
    np.testing.assert_allclose(up[0, 0, :, 0, 0].numpy(), np.clip((np.arange(8) + 0.5) / 2 - 0.5, 0, 3))
    # same grid: a float copy; a tensor with leading singleton axes reads the same as the array
    same = prop.to_grid(f.astype(np.int64), 8)
    assert same.shape == (1, 1, 8, 8, 8) and same.dtype == torch.float32 and np.array_equal(same[0, 0].numpy(), f)
    assert torch.equal(prop.to_grid(torch.tensor(f)[None, None], (2, 4, 8)), down)


def test_warping_upsample_field_rescales_each_axis() -> None:
    coarse = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1, 1).expand(1, 3, 4, 4, 4).contiguous()
    full = prop.upsample_field(coarse, (8, 12, 4))  # factors 2, 3 and 1
    assert full.shape == (1, 3, 8, 12, 4)
    for axis, value in enumerate((2.0, 6.0, 3.0)):
        assert torch.allclose(full[0, axis], torch.full((8, 12, 4), value))
    assert prop.upsample_field(coarse, (4, 4, 4)) is coarse and prop.upsample_field(coarse, [4, 4, 4]) is coarse
    # a varying field is interpolated like an image (align_corners=False), then scaled
    ramp = torch.zeros(1, 3, 4, 4, 4)
    ramp[0, 0] = torch.arange(4.0).view(4, 1, 1)
    up = prop.upsample_field(ramp, (8, 4, 4))
    np.testing.assert_allclose(up[0, 0, :, 0, 0].numpy(), 2 * np.clip((np.arange(8) + 0.5) / 2 - 0.5, 0, 3))


def test_warping_labels_rejects_unknown_modes_and_clears_outside() -> None:
    lab = np.zeros((6, 6, 6), np.int64)
    lab[1:4, 2:5, 2:4] = 3
    with pytest.raises(ValueError, match="unknown label interpolation"):
        prop.warp_labels(lab, torch.zeros(1, 3, 6, 6, 6), 4, mode="linear")
    away = torch.zeros(1, 3, 6, 6, 6)
    away[:, 0] = 10.0  # every voxel samples beyond the atlas
    for mode in ("nearest", "onehot"):
        out = prop.warp_labels(lab, away, 4, mode=mode)
        assert out.dtype == np.uint8 and not out.any()


def test_warping_folding_stats_of_a_known_field() -> None:
    # u_x = -x^2 / 8: d(x + u_x)/dx = 1 - x/4 (central differences are exact for a quadratic; the
    # first and last voxels use one-sided differences): det J per x = 7/8, 3/4, 1/2, 1/4, 0, -1/4, -1/2, -5/8
    disp = np.zeros((3, 8, 4, 4))
    disp[0] = -(np.arange(8.0) ** 2 / 8).reshape(8, 1, 1)
    det = np.array([7 / 8, 3 / 4, 1 / 2, 1 / 4, 0, -1 / 4, -1 / 2, -5 / 8])
    np.testing.assert_allclose(prop.jacobian_determinant(disp)[:, 0, 0], det, atol=1e-12)
    stats = prop.folding_stats(torch.tensor(disp, dtype=torch.float32)[None])  # a [1, 3, ...] tensor reads the same
    assert stats["fold_fraction"] == pytest.approx(0.5)  # det <= 0 at x = 4..7 (x = 4 is exactly 0)
    assert stats["jac_min"] == pytest.approx(-5 / 8) and stats["jac_mean"] == pytest.approx(det.mean())
    assert stats["jac_std"] == pytest.approx(det.std())


def test_warping_affine_displacement_scaling_and_axis_mixing() -> None:
    # halving x about the volume centre (n - 1) / 2 = 3.5: x' = 3.5 + (x - 3.5) / 2
    half = torch.eye(3, 4, dtype=torch.float64)
    half[0, 0] = 0.5
    d = prop.affine_displacement(half, (8, 6, 4))
    x = torch.arange(8.0, dtype=torch.float64).view(8, 1, 1)
    assert torch.allclose(d[0, 0], (3.5 + (x - 3.5) / 2 - x).expand(8, 6, 4))
    assert d[0, 1:].abs().max() < 1e-12
    # x' taken from y at the same fraction of the field of view: x' = (2y + 1) * 8 / 4 / 2 - 1 / 2
    mix = torch.zeros(3, 4)
    mix[0, 1] = mix[1, 1] = mix[2, 2] = 1.0
    d = prop.affine_displacement(mix, (8, 4, 4))
    y = torch.arange(4.0).view(1, 4, 1)
    assert torch.allclose(d[0, 0], (2 * y + 0.5 - torch.arange(8.0).view(8, 1, 1)).expand(8, 4, 4))


def test_warping_full_displacement_composes_deformation_then_affine() -> None:
    class Integrator:  # stands in for the network: the "velocity" already is the coarse displacement
        velocity_field_integrator = staticmethod(lambda v: v)

    coarse = torch.zeros(1, 3, 4, 4, 4)
    coarse[:, 0] = 1.0  # one coarse voxel = two full voxels along x
    subject = prop.SubjectData(id="s", split="training", cls=0, image_path="s.nii.gz", affine_world=np.eye(4),
                               shape=(8, 8, 8), image_reg=torch.zeros(1, 1, 4, 4, 4), binary_reg=None)
    plain = prop.full_displacement(Integrator(), coarse, subject)
    assert torch.allclose(plain[:, 0], torch.full((1, 8, 8, 8), 2.0)) and plain[:, 1:].abs().max() < 1e-6
    # x -> A(x + u(x)) with A halving x about the centre 3.5: 3.5 + (x + 2 - 3.5) / 2 - x
    half = torch.eye(3, 4)
    half[0, 0] = 0.5
    composed = prop.full_displacement(Integrator(), coarse, dataclasses.replace(subject, affine=half))
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert torch.allclose(composed[:, 0], (3.5 + (x + 2 - 3.5) / 2 - x).expand(1, 8, 8, 8), atol=1e-5)
    assert composed[:, 1:].abs().max() < 1e-5
