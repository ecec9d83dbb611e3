"""Label-ceiling oracle: it swaps only the multi-class target (LP → gt), scores every method per vessel on
the same subjects, and runs end to end on the smoke pipeline's outputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fetalcmr import label_ceiling as lc


def test_the_oracle_reads_gt_where_the_network_reads_lp_and_nothing_else_changes() -> None:
    items = [{"id": "a", "image": "a_img", "lp": "a_lp", "gt": "a_gt", "binary": "a_bin", "label": 2}]
    swapped = lc.oracle_items(items)
    assert swapped == [{"id": "a", "image": "a_img", "lp": "a_gt", "gt": "a_gt", "binary": "a_bin", "label": 2}]
    assert items[0]["lp"] == "a_lp"  # the dataset itself is untouched
    with pytest.raises(ValueError, match="no gt for 1 subject"):
        lc.oracle_items([{"id": "b", "lp": "b_lp"}])


def test_the_oracle_is_retrained_when_its_training_files_change(tmp_path: Path) -> None:
    """Its cache key follows the content of the truth, images and masks it trains on (not only the settings):
    a regenerated cohort with the same subject ids must not reuse the oracle trained on the old one."""
    items = []
    for sid, split in (("s0", "training"), ("s1", "validation")):
        item = {"id": sid, "label": 0}
        for key in ("image", "lp", "gt", "binary"):
            (tmp_path / f"{sid}_{key}").write_bytes(f"{sid} {key}".encode())
            item[key] = str(tmp_path / f"{sid}_{key}")
        items.append((split, item))
    data = {split: [item] for split, item in items}
    before = lc.oracle_digest(data)
    assert lc.oracle_digest(data) == before
    (tmp_path / "s0_lp").write_bytes(b"other propagated labels")  # the oracle does not read LP
    assert lc.oracle_digest(data) == before
    (tmp_path / "s1_gt").write_bytes(b"another cohort's truth")
    assert lc.oracle_digest(data) != before


def test_vessel_rows_score_every_method_on_the_same_subjects() -> None:
    truth = {"s0": np.array([[[4, 4, 6, 6]]]), "s1": np.array([[[4, 4, 6, 0]]])}
    maps = {lc.LP: {"s0": np.array([[[4, 0, 6, 6]]]), "s1": np.array([[[4, 4, 6, 0]]])},
            lc.SEPARATE: {"s0": np.array([[[4, 4, 0, 6]]]), "s1": np.array([[[4, 0, 6, 0]]])},
            lc.ORACLE: truth}
    dice = lc.per_vessel_dice(maps, truth, {0: "background", 4: "AO", 6: "DAO"})
    assert set(dice["name"]) == {"AO", "DAO"} and len(dice) == 3 * 2 * 2
    table = lc.vessel_table(dice, {"AO": 0.92}).set_index("vessel")
    assert table.loc["AO", lc.ORACLE] == 1.0
    assert table.loc["AO", lc.LP] == pytest.approx((2 / 3 + 1) / 2)
    assert table.loc["AO", lc.SEPARATE] == pytest.approx((1 + 2 / 3) / 2)
    assert table.loc["AO", "oracle_minus_c"] == pytest.approx(1 - (1 + 2 / 3) / 2)
    assert table.loc["AO", "ci_low"] <= table.loc["AO", "oracle_minus_c"] <= table.loc["AO", "ci_high"]
    assert table.loc["AO", "target"] == 0.92 and np.isnan(table.loc["DAO", "target"])


def test_one_voxel_of_shift_costs_a_thin_vessel_more_than_a_thick_one() -> None:
    gt = np.zeros((20, 20, 20), np.uint8)
    gt[2:18, 2:4, 2:4] = 8  # a 2-voxel-wide artery
    gt[2:18, 8:16, 8:16] = 4  # an 8-voxel-wide aorta
    rows = lc.shifted_dice({"s": gt}, {0: "background", 4: "AO", 8: "LSA", 9: "BCA"}).set_index("name")
    assert set(rows["method"]) == {lc.SHIFTED}
    # along the vessel a shift of one voxel loses 1/16 of it, across it 1/2 (LSA) or 1/8 (AO)
    assert rows.loc["LSA", "dice"] == pytest.approx((2 * 15 / 16 + 4 * 1 / 2) / 6)
    assert rows.loc["AO", "dice"] == pytest.approx((2 * 15 / 16 + 4 * 7 / 8) / 6)
    assert np.isnan(rows.loc["BCA", "dice"])  # absent vessel: not scored


def test_the_oracle_runs_on_a_finished_pipeline(smoke_run: tuple[list, Path], tmp_path: Path) -> None:
    _, root = smoke_run
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    table = lc.run_ablation(run, "smoke", progress=False).set_index("vessel")
    assert {lc.LP, lc.SEPARATE, lc.ORACLE, lc.SHIFTED} <= set(table.columns)
    # (c)'s column is notebook 02's per-vessel Dice of the same maps
    per_label = pd.read_csv(run / "results" / "segmentation_per_label.csv", dtype={"id": str})
    mine = per_label[per_label["method"] == "net_lp_manual"].groupby("name")["dice"].mean()
    for vessel, value in mine.items():
        if vessel in table.index:
            assert table.loc[vessel, lc.SEPARATE] == pytest.approx(value, abs=1e-6)
    summary = pd.read_csv(run / "ablations" / "label_ceiling" / "summary.csv").set_index("method")
    assert list(summary.index) == ["LP", lc.SEPARATE, lc.ORACLE]
    assert (summary["subjects"] == summary.loc["LP", "subjects"]).all()
