"""Table comparison behind `make verify`: formatted cells are read with their spread, a number
beyond its measured spread fails naming its cell, a claim whose verdict changes fails naming the
claim, equal tables pass."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fetalcmr.verify import Cell, compare_folders, compare_tables, main, parse_cell, tolerance


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


# --- formatted cells ------------------------------------------------------------------------------

_values = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)
_spreads = st.floats(min_value=0, max_value=1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(_values, _spreads, st.integers(0, 4))
def test_mean_sd_cells_parse_back_to_what_was_written(mean: float, sd: float, digits: int) -> None:
    cell = parse_cell(f"{mean:.{digits}f} ({sd:.{digits}f})")
    assert cell is not None and cell.decimals == digits
    assert cell.value == float(f"{mean:.{digits}f}") and cell.sd == float(f"{sd:.{digits}f}")


@settings(max_examples=200, deadline=None)
@given(_values, _values, _values, st.sampled_from(["[{} , {}]", "[{}, {}]", "({}, {})", "[{}; {}]", "[{} – {}]"]))
def test_interval_cells_parse(value: float, low: float, high: float, form: str) -> None:
    text = f"{value:.3f} " + form.format(f"{low:.3f}", f"{high:.3f}")
    cell = parse_cell(text)
    assert cell is not None
    assert (cell.value, cell.low, cell.high) == tuple(float(f"{v:.3f}") for v in (value, low, high))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 500), st.integers(1, 500))
def test_fraction_and_percent_cells_parse(k: int, n: int) -> None:
    cell = parse_cell(f"{k}/{n}")
    assert cell is not None and (cell.value, cell.total) == (k, n)
    with_share = parse_cell(f"{k}/{n} ({100 * k / n:.1f} %)")
    assert with_share is not None and (with_share.value, with_share.total) == (k, n)
    percent = parse_cell(f"{100 * k / n:.1f} %")
    assert percent is not None and percent.percent and percent.value == float(f"{100 * k / n:.1f}")


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False))
def test_plain_numbers_parse_as_written(x: float) -> None:
    cell = parse_cell(repr(x))
    assert cell is not None and cell.value == x


@pytest.mark.parametrize("text", ["", "nan", "NaN", "n/a", "–", "—", "-", "NA"])
def test_missing_cells(text: str) -> None:
    cell = parse_cell(text)
    assert cell is not None and cell.missing


@pytest.mark.parametrize("text", ["AO", "True", "LP+manual", "sub-002", "0.5 0.6", "(c) net: LP", "2/27 subjects"])
def test_text_cells_are_not_numbers(text: str) -> None:
    assert parse_cell(text) is None


# --- tolerances from the measured spread ---------------------------------------------------------

def _write(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_tolerance_follows_the_measured_spread() -> None:
    row = {"bacc_mean": Cell(0.68), "bacc_sd": Cell(0.024), "seeds": Cell(3.0), "p": Cell(0.01)}
    assert tolerance("bacc_mean", row["bacc_mean"], row).value == pytest.approx(0.048)
    assert tolerance("bacc_sd", row["bacc_sd"], row).value == pytest.approx(0.024)  # 2 sd / sqrt(2 (3 - 1))
    assert tolerance("seeds", row["seeds"], row).value == 0.0
    assert tolerance("p", row["p"], row).decision
    cell = parse_cell("0.68 (0.02)")
    assert tolerance("balanced_accuracy", cell, {}).value == pytest.approx(0.04)
    interval = parse_cell("0.62 [0.55, 0.70]")
    assert tolerance("x", interval, {}).value == pytest.approx(0.075)
    rate = {"rate": Cell(0.8), "ci_low": Cell(0.6), "ci_high": Cell(0.9), "n": Cell(27.0), "n_correct": Cell(22.0)}
    assert tolerance("rate", rate["rate"], rate).value == pytest.approx(0.15)
    assert 1 < tolerance("n_correct", rate["n_correct"], rate).value < 27 * 0.2
    zero_sd = parse_cell("1.00 (0.00)")
    assert tolerance("recall", zero_sd, {}).value == pytest.approx(0.005)  # the written resolution


def test_a_value_beyond_its_seed_spread_fails_and_names_the_cell(tmp_path: Path) -> None:
    rows = [{"input": "softmax", "seeds": 3, "balanced_accuracy": "0.64 (0.05)", "bacc_mean": 0.6389,
             "bacc_sd": 0.04811}]
    a = _write(tmp_path / "a.csv", rows)
    b = _write(tmp_path / "b.csv", [{**rows[0], "bacc_mean": 0.70}])  # within 2 sd = 0.096
    assert compare_tables(a, b) == []
    c = _write(tmp_path / "c.csv", [{**rows[0], "balanced_accuracy": "0.76 (0.05)", "bacc_mean": 0.76}])
    diffs = compare_tables(a, c)
    assert [d.where for d in diffs] == ["row 1, column 'balanced_accuracy'", "row 1, column 'bacc_mean'"]
    assert "2 × bacc_sd" in diffs[1].reason
    d = _write(tmp_path / "d.csv", [{**rows[0], "seeds": 2}])
    assert [x.where for x in compare_tables(a, d)] == ["row 1, column 'seeds'"]


def test_p_values_fail_only_when_the_decision_flips(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.csv", [{"n": 27, "p": 0.0007}, {"n": 27, "p": 0.43}])
    assert compare_tables(a, _write(tmp_path / "b.csv", [{"n": 27, "p": 0.02}, {"n": 27, "p": 0.9}])) == []
    (diff,) = compare_tables(a, _write(tmp_path / "c.csv", [{"n": 27, "p": 0.08}, {"n": 27, "p": 0.9}]))
    assert diff.where == "row 1, column 'p'" and "decision" in diff.reason


def test_fractions_keep_their_total(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.csv", [{"method": "joint", "correct": "7/27"}])
    assert compare_tables(a, _write(tmp_path / "b.csv", [{"method": "joint", "correct": "9/27"}])) == []
    assert compare_tables(a, _write(tmp_path / "c.csv", [{"method": "joint", "correct": "7/26"}]))
    assert compare_tables(a, _write(tmp_path / "d.csv", [{"method": "joint", "correct": "20/27"}]))


# --- claims --------------------------------------------------------------------------------------

def _segmentation_tests(folder: Path, p_b: float) -> None:
    folder.mkdir(exist_ok=True)
    _write(folder / "tab02_tests.csv", [
        {"comparison": "(c) net: LP + manual vs (a) LP", "n_subjects": 27, "mean_dice_c": 0.7992,
         "mean_dice_other": 0.7838, "median_difference": 0.014, "subjects_improved": 21, "wilcoxon_W": 54,
         "p_value": 0.0006678},
        {"comparison": "(c) net: LP + manual vs (b) net: LP", "n_subjects": 27, "mean_dice_c": 0.7992,
         "mean_dice_other": 0.7869, "median_difference": 0.01162, "subjects_improved": 22, "wilcoxon_W": 41,
         "p_value": p_b}])


def test_a_claim_that_flips_makes_verify_fail_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref, same, flipped = tmp_path / "ref", tmp_path / "same", tmp_path / "flipped"
    _segmentation_tests(ref, 0.0001428)
    _segmentation_tests(same, 0.002)
    _segmentation_tests(flipped, 0.07)
    args = ["--profile", "smoke", "--reference", str(ref), "--regenerated"]
    assert main([*args, str(same)]) == 0
    assert "every claim kept its verdict" in capsys.readouterr().out
    assert main([*args, str(flipped)]) == 1
    out = capsys.readouterr().out
    assert "claim 'seg-c-vs-b': committed supported vs regenerated not distinguishable" in out
    assert "claim 'seg-c-vs-a'" not in out


def test_a_claim_that_cannot_be_evaluated_any_more_fails(tmp_path: Path) -> None:
    ref, new = tmp_path / "ref", tmp_path / "new"
    _segmentation_tests(ref, 0.0001428)
    _segmentation_tests(new, 0.0001428)
    frame = pd.read_csv(new / "tab02_tests.csv")
    frame.loc[1, "comparison"] = "(c) vs something else"
    frame.to_csv(new / "tab02_tests.csv", index=False)
    diffs = compare_folders(ref, new)
    assert [d.where for d in diffs if d.table == "claims"] == ["claim 'seg-c-vs-b'"]


def test_a_stale_claims_table_is_reported(tmp_path: Path) -> None:
    from fetalcmr.claims import CLAIMS_TABLE, build_claims

    ref = tmp_path / "ref"
    _segmentation_tests(ref, 0.0001428)
    claims = build_claims(ref)
    claims.loc[claims["claim"] == "seg-c-vs-a", "verdict"] = "contradicted"
    claims.to_csv(ref / f"{CLAIMS_TABLE}.csv", index=False)
    diffs = compare_folders(ref, ref)
    assert len(diffs) == 2 and all("seg-c-vs-a" in d.where and "out of date" in d.reason for d in diffs)


def test_readme_claims_block_is_checked_against_the_tables(tmp_path: Path) -> None:
    from fetalcmr.claims import MARK_END, MARK_START, build_claims, render_readme_block
    from fetalcmr.verify import check_readme

    figures = tmp_path / "figures"
    _segmentation_tests(figures, 0.0001428)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{render_readme_block(build_claims(figures))}\n")
    assert check_readme(readme, figures) == []
    _segmentation_tests(figures, 0.3)
    (diff,) = check_readme(readme, figures)
    assert diff.where == "claims block" and "notebook 06" in diff.reason
    readme.write_text(f"# x\n\n{MARK_START}\n{MARK_END}\n")
    assert check_readme(readme, figures)
