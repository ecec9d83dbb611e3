"""Paired comparison of two runs (fetalcmr.compare_runs): the verdict follows the paired interval,
identical runs say so, and runs over different subjects are refused with a clear message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fetalcmr.compare_runs import compare_runs, main


def _per_label(ids: list[str], shift: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for method in ("lp", "net_lp_manual"):
        for sid in ids:
            for label, name in ((4, "AO"), (8, "LSA")):
                base = 0.7 if name == "AO" else 0.4
                rows.append({"method": method, "id": sid, "class": "CoA", "label": label, "name": name,
                             "dice": base + rng.normal(0, 0.02) + (shift if method == "net_lp_manual" else 0.0)})
    return pd.DataFrame(rows)


def _predictions(ids: list[str], wrong: int) -> pd.DataFrame:
    rows = []
    for seed in range(3):
        for i, sid in enumerate(ids):
            label = i % 3
            rows.append({"kind": "softmax", "seed": seed, "id": sid, "label": label,
                         "pred": (label + 1) % 3 if i < wrong else label})
    return pd.DataFrame(rows)


def _run(root: Path, per_label: pd.DataFrame, preds: pd.DataFrame) -> Path:
    (root / "results").mkdir(parents=True)
    per_label.to_csv(root / "results" / "segmentation_per_label.csv", index=False)
    preds.to_csv(root / "results" / "classification_predictions.csv", index=False)
    return root


def test_verdicts_follow_the_paired_interval(tmp_path: Path) -> None:
    ids = [f"sub-{i:03d}" for i in range(40)]
    a = _run(tmp_path / "a", _per_label(ids, 0.05, seed=0), _predictions(ids, wrong=0))
    b = _run(tmp_path / "b", _per_label(ids, 0.0, seed=0), _predictions(ids, wrong=20))
    table = compare_runs(a, b, per_label=True).set_index(["stage", "method", "label"])
    assert table.loc[("segmentation", "lp", "mean vessel Dice"), "verdict"] == "identical"
    row = table.loc[("segmentation", "net_lp_manual", "mean vessel Dice")]
    assert row["verdict"] == "A better" and row["ci_low"] > 0 and row["diff"] == pytest.approx(0.05)
    assert table.loc[("segmentation", "net_lp_manual", "LSA Dice"), "n"] == 40
    cls = table.loc[("classification", "softmax", "balanced accuracy")]
    assert cls["a"] == 1.0 and cls["b"] == pytest.approx(0.5) and cls["verdict"] == "A better"
    backwards = compare_runs(b, a).set_index(["stage", "method", "label"])
    assert backwards.loc[("segmentation", "net_lp_manual", "mean vessel Dice"), "verdict"] == "B better"
    # a noisy difference much smaller than its spread is not distinguishable
    c = _run(tmp_path / "c", _per_label(ids, 0.001, seed=1), _predictions(ids, wrong=0))
    noisy = compare_runs(c, b).set_index(["stage", "method", "label"])
    assert noisy.loc[("segmentation", "net_lp_manual", "mean vessel Dice"), "verdict"] == "not distinguishable"


def test_different_subjects_and_missing_runs_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _run(tmp_path / "a", _per_label(["s1", "s2"], 0.0, 0), _predictions(["s1", "s2"], 0))
    b = _run(tmp_path / "b", _per_label(["s1", "s3"], 0.0, 0), _predictions(["s1", "s2"], 0))
    with pytest.raises(ValueError, match="different test subjects"):
        compare_runs(a, b)
    assert main([str(a), str(b)]) == 2 and "different test subjects" in capsys.readouterr().err
    assert main([str(a), str(tmp_path / "nowhere")]) == 2 and "not a run folder" in capsys.readouterr().err
    out = tmp_path / "table.csv"
    assert main([str(a), str(a), "--out", str(out)]) == 0
    assert set(pd.read_csv(out)["verdict"]) == {"identical"}
