"""Stage outputs and the method registry: every stage's ``load_*`` returns what its ``run_*``
returned for the same run folder (nothing retrained), an empty run folder raises
:class:`fetalcmr.paths.StageNotRun` naming the notebook to run, and the registry names every
method a table shows exactly once.

One small chain runs every stage on the toy cohort of ``test_propagation`` (3 atlases, 9 subjects
at 24³): label propagation, the four segmentation methods, classifiers, joint fine-tuning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.colors import to_rgba
from test_propagation import TOY_CFG
from test_propagation import make_toy_dataset as make_lp_cohort

from fetalcmr import classification as C
from fetalcmr import joint as J
from fetalcmr import joint_report as JR
from fetalcmr import review as rv
from fetalcmr.config import ClassifierConfig, JointConfig, SegmenterConfig
from fetalcmr.io import load_nifti
from fetalcmr.methods import METHODS, by_letter, get, methods_of
from fetalcmr.paths import RunPaths, StageNotRun
from fetalcmr.propagation import load_label_propagation, run_label_propagation
from fetalcmr.segmentation import load_segmentation, run_segmentation

SEG = SegmenterConfig(channels=(2, 4), strides=(2,), dropout=0.0, epochs=1, batch_size=2, patch=8)
CLS = ClassifierConfig(arch="small", init_features=4, growth_rate=4, block_config=(2,), dropout=0.0,
                       epochs=1, batch_size=3, lr=1e-3, seeds=(0, 1), aug_prob=0.0, grid=8)
JOINT = JointConfig(epochs=1, lambda_sweep=(0.0, 14.0), sweep_epochs=1, sweep_subjects=3, ensemble_seeds=(0, 1),
                    lr=1e-3, batch_size=2)
STAGES = ("00_cohort", "01_label_propagation", "02_segmentation", "03_classification", "04_joint_training")


def assert_same(a: Any, b: Any, where: str = "outputs") -> None:
    """Assert that two stage outputs (dataclasses of frames, mappings, paths and numbers) are equal."""
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), where
        for f in dataclasses.fields(a):
            if f.name not in ("reused", "model"):
                assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=where)
    elif isinstance(a, Mapping):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, float) and np.isnan(b), where
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run every stage once into one run folder; keep what each ``run_*`` returned."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("stages")
    src = make_lp_cohort(root / "cohort", n_per_class=2)
    paths = RunPaths(root / "run")
    prop = run_label_propagation(src, paths.lp_dir, paths.lp_json, TOY_CFG, seed=0, progress=False)
    data = prop.dataset
    seg = run_segmentation(data, SEG, models_dir=paths.models_dir, predictions_dir=paths.predictions_dir,
                           results_dir=paths.results_dir, grid=None, spacing_mm=None, seed=0, progress=False)
    cls = C.run_classification(data, seg, CLS, SEG, paths=paths, grid=None, spacing_mm=None, progress=False)
    joint = J.run_joint(data, seg, cls, seg_cfg=SEG, cls_cfg=CLS, jcfg=JOINT, paths=paths, grid=24, spacing_mm=1.5,
                        provenance={"test": "stages"}, progress=False)
    return {"root": root, "paths": paths, "data": data, "prop": prop, "seg": seg, "cls": cls, "joint": joint}


def test_load_label_propagation_returns_what_the_run_wrote(chain: dict[str, Any]) -> None:
    run, loaded = chain["prop"], load_label_propagation(chain["paths"])
    assert_same(run, loaded)
    assert loaded.reused and not run.reused
    assert loaded.lp_json == chain["paths"].lp_json and loaded.model_path.exists()
    assert all(it["lp"] for split in ("training", "validation", "testing") for it in loaded.dataset[split])


def test_load_segmentation_returns_what_the_run_wrote(chain: dict[str, Any]) -> None:
    run, loaded, data = chain["seg"], load_segmentation(chain["paths"]), chain["data"]
    assert_same(run, loaded)
    assert list(loaded.prediction_dirs) == [m.id for m in methods_of("02_segmentation")]
    assert set(loaded.checkpoints) == {"net_lp", "net_lp_manual", "net_manual"}
    assert loaded.softmax_dir is not None and len(list(loaded.softmax_dir.glob("*.npz"))) == 9
    test = data["testing"]
    assert loaded.test_ids == tuple(it["id"] for it in test) and np.isfinite(loaded.inference_seconds)
    # (a) is each test subject's propagated label map, read back as saved
    for it in test:
        np.testing.assert_array_equal(loaded.labels("lp", it["id"]), np.rint(load_nifti(it["lp"]).array))
    # per test subject: three vessel labels for the multi-class methods, the region for all four
    assert len(loaded.per_label) == 3 * len(test) * 3 and len(loaded.region) == 4 * len(test)
    assert set(loaded.per_label["method"]) == {m.id for m in methods_of("02_segmentation") if m.multiclass}


def test_load_classification_loads_the_finished_runs(chain: dict[str, Any]) -> None:
    run, loaded, paths = chain["cls"], C.load_classification(chain["paths"]), chain["paths"]
    assert_same(run, loaded)
    assert [(r.kind, r.seed) for r in loaded.runs] == [(k, s) for k in C.INPUT_KINDS for s in CLS.seeds]
    assert all(r.model is None for r in loaded.runs) and loaded.split_sizes == {"training": 5, "validation": 1,
                                                                                 "testing": 3}
    # the engine, asked again, loads the same finished runs: same selected weights, same predictions
    segmenter, key = C.load_segmenter(chain["seg"].checkpoints["net_lp_manual"], SEG)
    prep = C.prepare_classification(chain["data"], segmenter, segmenter_key=key, cfg=CLS, grid=None, spacing_mm=None,
                                    cache_dir=paths.classifier_dir, progress=False)
    assert prep.data_key == loaded.data_key and prep.softmax_dir == loaded.softmax_dir
    again = C.run_experiments(CLS, prep.samples["training"], prep.samples["validation"], prep.samples["testing"],
                              paths.classifier_dir, data_key=prep.data_key, progress=False)
    for r in again:
        weights = loaded.weights(r.kind, r.seed)
        assert all(torch.equal(weights[k].cpu(), v.cpu()) for k, v in r.model.state_dict().items())
        pd.testing.assert_frame_equal(loaded.run(r.kind, r.seed).predictions, r.predictions, check_exact=True)
    assert loaded.checkpoint("softmax+image", 1) == C.run_dir(paths.classifier_dir, "softmax+image", 1) / "latest.pt"
    with pytest.raises(KeyError, match="no classifier run"):
        loaded.run("image", 7)


def test_load_joint_returns_what_the_run_wrote(chain: dict[str, Any]) -> None:
    from fetalcmr.bundle import load_bundle

    run, loaded, data = chain["joint"], J.load_joint(chain["paths"]), chain["data"]
    assert_same(run, loaded)
    assert J.compared_methods(loaded.class_predictions) == ["separate", "lambda0", "joint", "ensemble"]
    assert loaded.ensemble_members == ("joint", "joint_seed1") and loaded.sweep_methods == {0.0: "sweep_0",
                                                                                          14.0: "sweep_14"}
    assert list(loaded.prediction_dirs) == ["joint", "lambda0"]  # the joint pair and its control, same steps
    assert loaded.prediction_dirs["joint"] == chain["paths"].predictions_dir / get("joint").folder
    for folder in loaded.prediction_dirs.values():
        assert sorted(p.name for p in folder.glob("*.nii.gz")) == sorted(f"{it['id']}.nii.gz"
                                                                         for it in data["testing"])
    assert set(loaded.train_seconds) == set(loaded.run_dirs) and all(d.is_dir() for d in loaded.run_dirs.values())
    bundle = load_bundle(loaded.bundle_dir)
    assert len(bundle.members) == 2 and bundle.info["provenance"]["test"] == "stages"
    # every method in the tables is a registry method or a named run of it
    runs = {"joint_seed1"}
    assert set(loaded.class_predictions["method"]) - runs == {m.id for m in methods_of("04_joint_training")}
    assert set(loaded.seg_metrics["method"]) == set(loaded.class_predictions["method"])
    # the λ sweep is a setting: its runs are evaluated on the validation subjects only, never on the test ones
    validation = {str(it["id"]) for it in data["validation"]}
    for frame in (loaded.sweep_metrics, loaded.sweep_predictions):
        assert set(frame["method"]) == {"sweep_0", "sweep_14"} and set(frame["id"]) == validation
    assert loaded.sweep_metrics["dice"].notna().all() and loaded.sweep_metrics["hd95"].isna().all()


def test_review_reads_the_networks_from_the_stage_outputs(chain: dict[str, Any]) -> None:
    seg, joint = load_segmentation(chain["paths"]), J.load_joint(chain["paths"])
    dirs = rv.network_dirs({**seg.prediction_dirs, **joint.prediction_dirs})
    assert dirs == {"LP-only": seg.prediction_dirs["net_lp"], "LP+manual": seg.prediction_dirs["net_lp_manual"],
                    "λ = 0": joint.prediction_dirs["lambda0"], "joint": joint.prediction_dirs["joint"]}
    cases, messages = rv.load_cases(chain["data"]["testing"], dirs)
    assert not messages and all(list(c.maps) == list(rv.review_order()) for c in cases)


def test_cli_export_finds_the_bundle_through_load_joint(chain: dict[str, Any], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from fetalcmr.cli import main

    assert main(["export", "--run-dir", str(chain["paths"].root), "--out", str(tmp_path / "bundle")]) == 0
    assert (tmp_path / "bundle" / "bundle.json").exists()
    assert main(["export", "--run-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "other")]) == 3
    assert "04_joint_training has not run" in capsys.readouterr().err


@pytest.mark.parametrize(("load", "notebook"), [
    (load_label_propagation, "01_label_propagation"), (load_segmentation, "02_segmentation"),
    (C.load_classification, "03_classification"), (J.load_joint, "04_joint_training")])
def test_load_on_an_empty_run_folder_names_the_notebook(load: Any, notebook: str, tmp_path: Path) -> None:
    paths = RunPaths(tmp_path / "runs" / "empty")
    with pytest.raises(StageNotRun, match=f"{paths.root}: {notebook} has not run") as err:
        load(paths)
    assert isinstance(err.value, FileNotFoundError) and "make reproduce" in str(err.value)


def test_load_classification_names_a_missing_run(chain: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    paths = RunPaths(tmp_path / "copy")
    shutil.copytree(chain["paths"].results_dir, paths.results_dir)
    with pytest.raises(StageNotRun, match="03_classification has not run .*image/seed0/latest.pt"):
        C.load_classification(paths)


# ------------------------------------------------------------------------------------------ registry


def test_registry_names_every_method_once() -> None:
    everyone = [m for stage in STAGES for m in methods_of(stage)]
    assert len(everyone) == len(METHODS) and list(METHODS) == [m.id for m in everyone]
    for attr in ("id", "label", "short"):
        values = [getattr(m, attr) for m in everyone]
        assert len(set(values)) == len(values), attr
    folders = [m.folder for m in everyone if m.folder is not None]
    assert len(set(folders)) == len(folders)
    for m in everyone:
        to_rgba(m.colour)  # a valid colour
    assert [by_letter(x).id for x in "abcd"] == [m.id for m in methods_of("02_segmentation")]
    with pytest.raises(KeyError, match="unknown method 'nope'; known: truth"):
        get("nope")


def test_every_method_a_table_shows_is_registered() -> None:
    from fetalcmr import propagation_report as report
    from fetalcmr import registration_baselines as rb
    from fetalcmr import segmentation as S

    # notebook 01: the methods of the propagation table and their labels (the table's text)
    lp_methods = {"voxelmorph", "voxelmorph_network", "voxelmorph_all_test", "voxelmorph_fitted", *rb.METHODS}
    assert lp_methods == {m.id for m in methods_of(report.STAGE)}
    assert report.method_label("affine") == "Affine only" and report.method_label("other") == "other"
    # notebook 02: the predicted methods, the networks and the method itself
    assert set(S.TARGETS) | {"lp"} == {m.id for m in methods_of(S.STAGE)} and S.METHOD in S.TARGETS
    assert S.segmenter_dir("m", "net_lp").name == "segmenter_b"
    # notebook 04 and the review
    assert J.KIND in C.INPUT_KINDS and JR.method_label("ensemble") == METHODS["ensemble"].label
    assert set(rv.REVIEWED) <= set(METHODS)
