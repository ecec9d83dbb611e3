"""Segmentation experiments: the four methods end to end on a toy cohort, caching, evaluation
tables and the paired tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from ddp_smoke import make_toy_dataset
from scipy.stats import wilcoxon

from fetalcmr.config import SegmenterConfig
from fetalcmr.data import make_samples
from fetalcmr.dataset import read_dataset
from fetalcmr.methods import get
from fetalcmr.predict import load_softmax
from fetalcmr.segmentation import (
    evaluate,
    method_checkpoint,
    predict_labels,
    run_segmentation,
    save_softmax_files,
    supervision_agreement,
    train_config,
    train_segmenters,
)
from fetalcmr.segmentation_report import (
    by_class_table,
    coronal_projection,
    dice_table,
    label_colours,
    pick_subjects,
    plot_dice_boxplots,
    plot_overlays,
    wilcoxon_tests,
)
from fetalcmr.train import load_checkpoint
from fetalcmr.workers import WORKERS_ENV

CFG = SegmenterConfig(channels=(2, 4), strides=(2,), dropout=0.0, epochs=1, batch_size=2, patch=8)


def test_four_methods_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    data = read_dataset(make_toy_dataset(tmp_path / "data", n=7, size=16, n_test=2))
    dirs = {k: tmp_path / k for k in ("models", "pred", "results")}
    kw = dict(models_dir=dirs["models"], predictions_dir=dirs["pred"], results_dir=dirs["results"],
              grid=None, spacing_mm=None, seed=0, progress=False)
    stage = run_segmentation(data, CFG, **kw)
    assert set(stage.prediction_dirs) == {"lp", "net_lp", "net_lp_manual", "net_manual"}
    test_ids = [it["id"] for it in data["testing"]]
    assert stage.test_ids == tuple(test_ids)
    for method, folder in stage.prediction_dirs.items():
        assert folder == dirs["pred"] / get(method).folder
        for sid in test_ids:
            img = nib.load(folder / f"{sid}.nii.gz")
            assert np.allclose(img.affine, nib.load(data["testing"][0]["image"]).affine)
    # (a) is the propagated label map itself
    lp = np.asarray(nib.load(data["testing"][0]["lp"]).dataobj)
    assert np.array_equal(stage.labels("lp", test_ids[0]), lp)
    per_label, region = stage.per_label, stage.region
    assert set(per_label["method"]) == {"lp", "net_lp", "net_lp_manual"} and set(region["method"]) == set(
        stage.prediction_dirs)
    assert len(per_label) == 3 * 2 * 11
    # the oracle LP of the toy data is gt shifted by one voxel: known Dice per tube (3x3 cross-section)
    ao = per_label[(per_label["method"] == "lp") & (per_label["name"] == "AO")]["dice"]
    assert np.allclose(ao, 2 / 3)
    # softmax of (c) saved for every subject, quantised to 1/255, sums to one
    n_all = sum(len(data[s]) for s in ("training", "validation", "testing"))
    files = sorted(stage.softmax_dir.glob("*.npz"))
    assert len(files) == n_all
    soft = load_softmax(files[0])
    assert soft.shape == (12, 16, 16, 16) and np.allclose(soft.sum(0), 1, atol=12 / 510)
    checkpoint = stage.checkpoints["net_lp_manual"]
    assert checkpoint == method_checkpoint(dirs["models"]) == dirs["models"] / "segmenter_c" / "best.pt"
    assert "model" in load_checkpoint(checkpoint) and set(stage.histories) == set(stage.checkpoints)
    # a second run reuses the trained networks; other settings retrain them
    kw_train = dict(grid=None, spacing_mm=None, seed=0, progress=False)
    again = train_segmenters(data, CFG, dirs["models"], **kw_train)
    assert all(r.resumed_from == CFG.epochs for r in again.results.values())
    other = train_segmenters(data, dataclasses.replace(CFG, lr=5e-4), dirs["models"], methods=("net_lp_manual",),
                             **kw_train)
    assert other.results["net_lp_manual"].resumed_from == 0
    # two spawned single-thread worker processes (what the default profile's 150 test subjects get)
    # predict, store and score exactly what one process did
    monkeypatch.setattr("fetalcmr.workers.MIN_ITEMS", 1)
    monkeypatch.setenv(WORKERS_ENV, "2")
    model = again.results["net_lp_manual"].model
    samples = make_samples(data["testing"], ("image",), grid=None, spacing_mm=None)
    spawned = predict_labels(model, samples, tmp_path / "spawned", progress=False)
    assert list(spawned) == test_ids
    for sid, labels in spawned.items():
        np.testing.assert_array_equal(labels, stage.labels("net_lp_manual", sid))
    save_softmax_files(model, samples, tmp_path / "softmax", progress=False)
    for sid in test_ids:
        np.testing.assert_array_equal(load_softmax(tmp_path / "softmax" / f"{sid}.npz"),
                                      load_softmax(stage.softmax_dir / f"{sid}.npz"))
    maps = {m: {sid: stage.labels(m, sid) for sid in test_ids} for m in stage.prediction_dirs}
    per_label2, region2 = evaluate(maps, data["testing"], grid=None, spacing_mm=None)
    pd.testing.assert_frame_equal(per_label2.reset_index(drop=True), per_label.reset_index(drop=True),
                                  check_dtype=False)
    pd.testing.assert_frame_equal(region2, region.reset_index(drop=True), check_dtype=False)


def _toy_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    rows, region = [], []
    for i in range(8):
        for m, base in (("lp", 0.6), ("net_lp", 0.7), ("net_lp_manual", 0.8)):
            for lab, name in ((4, "AO"), (6, "DAO")):
                rows.append({"method": m, "id": f"s{i}", "class": "CoA" if i % 2 else "DAA", "label": lab,
                             "name": name, "dice": base + 0.05 * rng.standard_normal()})
        for m in ("lp", "net_lp", "net_lp_manual", "net_manual"):
            region.append({"method": m, "id": f"s{i}", "class": "CoA" if i % 2 else "DAA",
                           "dice": 0.9, "sensitivity": 0.9, "specificity": 0.99, "precision": 0.9})
    return pd.DataFrame(rows), pd.DataFrame(region)


def test_only_the_manual_mask_network_takes_its_own_epoch_count() -> None:
    cfg = SegmenterConfig(epochs=30, manual_epochs=15)
    epochs = {m: train_config(cfg, m, seed=0).epochs for m in ("net_lp", "net_lp_manual", "net_manual")}
    assert epochs == {"net_lp": 30, "net_lp_manual": 30, "net_manual": 15}
    assert train_config(SegmenterConfig(epochs=30), "net_manual", seed=0).epochs == 30


def test_wilcoxon_matches_scipy_on_subject_means() -> None:
    per_label, _ = _toy_tables()
    tests = wilcoxon_tests(per_label)
    means = per_label.groupby(["id", "method"])["dice"].mean().unstack()
    expect = wilcoxon(means["net_lp_manual"], means["lp"])
    row = tests.iloc[0]
    assert row["comparison"] == "(c) net: LP + manual vs (a) LP"
    assert row["mean_dice_c"] == pytest.approx(means["net_lp_manual"].mean())  # the column the tables show
    assert row["wilcoxon_W"] == pytest.approx(expect.statistic) and row["p_value"] == pytest.approx(expect.pvalue)
    assert row["subjects_improved"] == 8 and len(tests) == 2


def test_tables_and_figures() -> None:
    per_label, region = _toy_tables()
    table = dice_table(per_label, region)
    assert list(table["label"]) == ["AO", "DAO", "vessel region (binary)"]
    assert list(table.columns) == ["label", "(a) LP", "(b) net: LP", "(c) net: LP + manual", "(d) net: manual"]
    assert table.loc[2, "(d) net: manual"] == "0.900 (0.000)" and table.loc[0, "(d) net: manual"] == "–"
    sub = per_label[(per_label["method"] == "net_lp_manual") & (per_label["name"] == "AO")]["dice"]
    assert table.loc[0, "(c) net: LP + manual"] == f"{sub.mean():.3f} ({sub.std():.3f})"
    assert set(by_class_table(per_label, region)["class"]) == {"CoA", "DAA"}
    picks = pick_subjects(per_label)
    means = per_label[per_label["method"] == "net_lp_manual"].groupby("id")["dice"].mean()
    assert picks["best"] == means.idxmax() and picks["worst"] == means.idxmin()
    assert len(plot_dice_boxplots(per_label, region).axes) == 2
    vol = np.zeros((8, 8, 8), np.uint8)
    vol[2:4, 2:4, 2:4] = 4
    case = {"image": np.random.default_rng(0).random((8, 8, 8)), "gt": vol, "pred": vol, "dice": 1.0}
    assert len(plot_overlays({"best": case, "worst": case}).axes) == 8


def test_coronal_projection_shows_the_most_anterior_vessel() -> None:
    vol = np.zeros((3, 5, 3), np.uint8)
    vol[1, 1, 1] = 6  # posterior
    vol[1, 3, 1] = 4  # anterior (larger y)
    vol[0, 0, 0] = 7
    proj = coronal_projection(vol)
    assert proj[1, 1] == 4 and proj[0, 0] == 7 and proj[2, 2] == 0



def test_supervision_agreement_counts_propagated_voxels_inside_the_manual_mask(tmp_path: Path) -> None:
    lp = np.zeros((8, 8, 8), np.uint8)
    lp[1:3, 1:3, 1:3] = 4  # AO: 8 voxels, all inside the mask
    lp[5:7, 5:7, 5:7] = 10  # LCCA: 8 voxels, half inside
    manual = np.zeros_like(lp)
    manual[1:3, 1:3, 1:3] = 1
    manual[5:6, 5:7, 5:7] = 1
    for name, arr in (("lp", lp), ("binary", manual)):
        nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / f"{name}.nii.gz")
    item = {"id": "s", "image": "unused", "lp": str(tmp_path / "lp.nii.gz"),
            "binary": str(tmp_path / "binary.nii.gz"), "gt": str(tmp_path / "missing_gt.nii.gz")}
    table = supervision_agreement([item], grid=None, spacing_mm=None).set_index("label")
    assert table.loc["AO", "lp_inside_manual"] == 1.0
    assert table.loc["LCCA", "lp_inside_manual"] == 0.5
    assert table.loc["LCCA", "lp_voxels"] == 8
    assert np.isnan(table.loc["SVC", "lp_inside_manual"])  # no voxel propagated: no agreement to measure


def test_overlay_colours_are_the_render_palette() -> None:
    from fetalcmr.render import label_colors

    table = label_colours()
    assert table[0, 3] == 0  # background transparent
    for label, rgb in label_colors().items():
        np.testing.assert_allclose(table[label], (*rgb, 1.0))
