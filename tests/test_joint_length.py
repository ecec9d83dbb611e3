"""Joint fine-tuning length ablation: what it compares (paired Dice, paired topology verdicts, the share of
voxels the classification term changed), the run's own rows beside the longer runs, and its end-to-end
run on the smoke pipeline's outputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fetalcmr import joint_length as jl


def test_disagreement_counts_differing_voxels_inside_either_vessel_region() -> None:
    a = np.zeros((4, 4, 4), np.uint8)
    b = a.copy()
    assert jl.disagreement(a, b) == 0.0  # no vessel at all
    a[0, 0, :2] = 4
    b[0, 0, :2] = 4
    assert jl.disagreement(a, b) == 0.0
    b[0, 0, 1] = 6  # relabelled
    b[1, 1, 1] = 7  # only in b
    assert jl.disagreement(a, b) == pytest.approx(2 / 3)


def _frames() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    ids, classes = [f"s{i}" for i in range(6)], [0, 1, 2, 2, 0, 1]
    methods = {"separate": 0.70, "joint_2ep": 0.72, "lambda0_2ep": 0.73, "joint_12ep": 0.75, "lambda0_12ep": 0.76}
    seg = pd.DataFrame([{"method": m, "id": i, "cls": c, "label": lab, "name": str(lab), "dice": d + 0.01 * lab,
                         "hd95": np.nan, "asd": np.nan, "precision": np.nan}
                        for m, d in methods.items() for i, c in zip(ids, classes, strict=True) for lab in (4, 6)])
    cls = pd.DataFrame([{"method": m, "id": i, "label": c, "pred": c if (m, i) != ("joint_12ep", "s2") else 0}
                        for m in methods for i, c in zip(ids, classes, strict=True)])
    verdicts = {"separate": [1, 0, 0, 0, 1, 1], "joint_2ep": [1, 1, 0, 0, 1, 1],
                "joint_12ep": [1, 1, 1, 1, 1, 1], "lambda0_12ep": [1, 1, 0, 0, 1, 0]}  # no λ0 2-epoch maps
    reports = pd.DataFrame([{"id": i, "cls": c, "method": m, "postprocessing": post, "correct": bool(v)}
                            for m, vs in verdicts.items() for i, c, v in zip(ids, classes, vs, strict=True)
                            for post in ("raw", "post")])
    return seg, cls, reports


def test_summary_rows_count_topology_only_where_maps_were_kept() -> None:
    seg, cls, reports = _frames()
    epochs = {"separate": 0, "joint_2ep": 2, "lambda0_2ep": 2, "joint_12ep": 12, "lambda0_12ep": 12}
    lams = {m: (0.0 if m.startswith("lambda0") else 14.0) for m in epochs}
    summary = jl.summary_table(seg, cls, reports, epochs, lams, {"joint_12ep": 300.0},
                               {"joint_12ep": 0.05}).set_index("method")
    assert list(summary.index) == list(epochs)
    assert summary.loc["joint_12ep", "topology_post_all"] == "6/6"
    assert summary.loc["joint_12ep", "topology_raw_daa"] == "2/2"
    assert summary.loc["lambda0_12ep", "topology_post_all"] == "3/6"
    assert summary.loc["lambda0_2ep", "topology_post_all"] == ""  # its maps were not kept
    assert summary.loc["joint_12ep", "dice"] == pytest.approx(0.80)
    assert summary.loc["joint_12ep", "n_daa_correct"] == 1  # s2 called CoA
    assert summary.loc["joint_12ep", "voxels_changed_vs_lambda0"] == 0.05
    assert np.isnan(summary.loc["separate", "train_s"])


def test_paired_rows_test_dice_and_topology_on_the_same_subjects() -> None:
    seg, cls, reports = _frames()
    paired = jl.paired_table(seg, cls, reports, [("joint_12ep", "lambda0_12ep"), ("lambda0_12ep", "lambda0_2ep")])
    dice = paired[(paired["measure"] == "mean vessel Dice") & (paired["subset"] == "all")].set_index("a")
    assert dice.loc["joint_12ep", "mean_diff"] == pytest.approx(-0.01)
    assert dice.loc["joint_12ep", "n"] == 6
    topo = paired[paired["measure"] == "topology correct (post)"].set_index("subset")
    assert topo.loc["all", "only_a"] == 3 and topo.loc["all", "only_b"] == 0
    assert topo.loc["DAA", "n"] == 2 and topo.loc["DAA", "only_a"] == 2
    # λ0 at 2 epochs has no maps: no topology rows for that pair, but its Dice rows are there
    other = paired[paired["b"] == "lambda0_2ep"]
    assert set(other["measure"]) == {"mean vessel Dice"}


def test_validation_curves_stack_the_runs_and_leave_missing_columns_empty() -> None:
    full = pd.DataFrame({"epoch": [1, 2], "val_dice": [0.5, 0.6], "val_bacc": [1.0, 1.0], "train_ce": [0.4, 0.3],
                         "seconds": [9.0, 9.0]})
    curves = jl.validation_curves({"joint_2ep": full, "lambda0_2ep": full[["epoch", "val_dice"]]})
    assert list(curves.columns) == ["method", "epoch", "val_dice", "val_bacc", "train_ce"]
    assert list(curves["method"]) == ["joint_2ep", "joint_2ep", "lambda0_2ep", "lambda0_2ep"]
    assert curves["val_bacc"].isna().tolist() == [False, False, True, True]


def test_it_refuses_a_length_the_run_already_has(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not longer"):
        jl.run_ablation(tmp_path, "smoke", epochs=1, progress=False)


def test_the_ablation_runs_on_a_finished_pipeline(smoke_run: tuple[list, Path], tmp_path: Path) -> None:
    _, root = smoke_run
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    summary = jl.run_ablation(run, "smoke", epochs=2, progress=False).set_index("method")
    assert list(summary.index) == ["separate", "joint_1ep", "lambda0_1ep", "joint_2ep", "lambda0_2ep"]
    assert list(summary["epochs"]) == [0, 1, 1, 2, 2]
    committed = pd.read_csv(run / "results" / "joint_classification.csv", dtype={"id": str})
    n_test = committed["id"].nunique()
    for m in summary.index:  # notebook 04 keeps the maps of its joint and λ = 0 runs: every row is reviewed
        assert summary.loc[m, "topology_raw_all"].endswith(f"/{n_test}")
    for m in ("joint_1ep", "joint_2ep"):
        assert 0.0 <= summary.loc[m, "voxels_changed_vs_lambda0"] <= 1.0
    out = run / "ablations" / "joint_length"
    curves = pd.read_csv(out / "validation_curves.csv")
    assert set(curves["method"]) == {"joint_1ep", "lambda0_1ep", "joint_2ep", "lambda0_2ep"}
    assert len(list((out / "predictions" / "joint_2ep").glob("*.nii.gz"))) == n_test
    paired = pd.read_csv(out / "paired.csv")
    assert {"mean vessel Dice", "topology correct (raw)", "topology correct (post)"} <= set(paired["measure"])
