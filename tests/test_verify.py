"""Table comparison behind `make verify`: equal within tolerance passes, an altered table fails."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fetalcmr.verify import compare_folders, compare_tables


def _table(path: Path, dice: list[float], names: list[str] | None = None) -> Path:
    pd.DataFrame({"label": names or ["AO", "DAO"], "dice": dice}).to_csv(path, index=False)
    return path


def test_identical_and_within_tolerance_pass(tmp_path: Path) -> None:
    a = _table(tmp_path / "a.csv", [0.90, 0.80])
    b = _table(tmp_path / "b.csv", [0.905, 0.80])
    assert compare_tables(a, a) == []
    assert compare_tables(a, b, rtol=0.0, atol=0.01) == []


def test_altered_number_is_reported_with_its_place(tmp_path: Path) -> None:
    a = _table(tmp_path / "a.csv", [0.90, 0.80])
    b = _table(tmp_path / "b.csv", [0.90, 0.60])
    (diff,) = compare_tables(a, b, rtol=0.0, atol=0.01)
    assert diff.where == "row 2, column 'dice'" and diff.reference == "0.8" and diff.regenerated == "0.6"


def test_text_rows_and_columns_must_match(tmp_path: Path) -> None:
    a = _table(tmp_path / "a.csv", [0.9, 0.8])
    assert compare_tables(a, _table(tmp_path / "b.csv", [0.9, 0.8], ["AO", "MPA"]))
    assert compare_tables(a, _table(tmp_path / "c.csv", [0.9], ["AO"]))[0].where == "(rows)"
    pd.DataFrame({"label": ["AO", "DAO"], "hd95": [1.0, 2.0]}).to_csv(tmp_path / "d.csv", index=False)
    assert compare_tables(a, tmp_path / "d.csv")[0].where == "(columns)"


def test_nan_matches_nan_only(tmp_path: Path) -> None:
    a = _table(tmp_path / "a.csv", [float("nan"), 0.8])
    assert compare_tables(a, _table(tmp_path / "b.csv", [float("nan"), 0.8])) == []
    assert compare_tables(a, _table(tmp_path / "c.csv", [0.5, 0.8]))


def test_folder_comparison_finds_missing_tables(tmp_path: Path) -> None:
    ref, new = tmp_path / "ref", tmp_path / "new"
    ref.mkdir()
    new.mkdir()
    _table(ref / "tab01_x.csv", [0.9, 0.8])
    _table(ref / "tab02_y.csv", [0.9, 0.8])
    _table(new / "tab01_x.csv", [0.9, 0.8])
    (diff,) = compare_folders(ref, new)
    assert diff.table == "tab02_y.csv" and diff.regenerated == "missing"


def test_run_time_columns_are_not_compared(tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    pd.DataFrame({"n_subjects": [3], "train_s": [10.0], "seconds_per_subject": [1.0], "dice_sd": [0.1]}).to_csv(a)
    pd.DataFrame({"n_subjects": [3], "train_s": [99.0], "seconds_per_subject": [9.0], "dice_sd": [0.1]}).to_csv(b)
    assert compare_tables(a, b) == []
    pd.DataFrame({"n_subjects": [4], "train_s": [99.0], "seconds_per_subject": [9.0], "dice_sd": [0.1]}).to_csv(b)
    assert [d.where for d in compare_tables(a, b)] == ["row 1, column 'n_subjects'"]
