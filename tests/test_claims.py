"""Claims as data: the verdict rules, the claims rebuilt from the tables (a changed cell changes the
claim), claims that cannot be evaluated, and the README block written from the claims table."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fetalcmr import claims as cl
from fetalcmr.notebook import REPO_ROOT

FIGURES = REPO_ROOT / "figures"


@pytest.fixture()
def tables(tmp_path: Path) -> Path:
    """A copy of the committed stage tables (not the claims table) to alter."""
    folder = tmp_path / "figures"
    folder.mkdir()
    for table in FIGURES.glob("tab0[0-5]_*.csv"):
        shutil.copy(table, folder / table.name)
    return folder


def _claim(folder: Path, claim_id: str) -> pd.Series:
    table = cl.build_claims(folder).set_index("claim")
    return table.loc[claim_id]


def _edit(path: Path, match: dict[str, str], **values: object) -> None:
    frame = pd.read_csv(path)
    sel = pd.Series(True, index=frame.index)
    for col, value in match.items():
        sel &= frame[col].astype(str) == value
    assert sel.sum() == 1, f"{path.name}: {sel.sum()} rows match {match}"
    for col, value in values.items():
        if isinstance(value, float) and col in frame:
            frame[col] = frame[col].astype(float)  # a column of whole numbers may be read as int
        frame.loc[sel, col] = value
    frame.to_csv(path, index=False)


def test_verdict_rules() -> None:
    assert cl.verdict_from_test(0.01, 0.049) == "supported"
    assert cl.verdict_from_test(0.01, 0.05) == "not distinguishable"
    assert cl.verdict_from_test(-0.01, 0.001) == "contradicted"
    assert cl.verdict_from_test(0.01, math.nan) == "not distinguishable"
    assert cl.verdict_from_interval(0.01, 0.2) == "supported"
    assert cl.verdict_from_interval(-0.2, -0.01) == "contradicted"
    assert cl.verdict_from_interval(math.nan, math.nan) == "not distinguishable"
    assert [cl.verdict_every(k, 4) for k in (4, 3)] == ["supported", "contradicted"]
    assert cl.verdict_every(0, 0) == "not distinguishable"


@settings(max_examples=200, deadline=None)
@given(st.floats(-1, 1), st.floats(0, 1))
def test_interval_rule_is_symmetric(low: float, width: float) -> None:
    high = low + width
    mirrored = {"supported": "contradicted", "contradicted": "supported", "not distinguishable": "not distinguishable"}
    assert cl.verdict_from_interval(-high, -low) == mirrored[cl.verdict_from_interval(low, high)]


def test_t_interval_needs_two_seeds() -> None:
    low, high = cl.t_interval(0.5, 0.1, 10)
    assert low < 0.5 < high and high - 0.5 == pytest.approx(0.5 - low)
    assert all(math.isnan(v) for v in cl.t_interval(0.5, math.nan, 1))


def test_every_claim_is_evaluated_on_the_committed_tables() -> None:
    assert cl.not_evaluated(FIGURES) == []
    claims = cl.build_claims(FIGURES)
    assert list(claims.columns) == list(cl.COLUMNS)
    assert list(claims["claim"]) == [c.id for c in cl.CLAIMS]
    assert set(claims["verdict"]) <= set(cl.VERDICTS)
    assert set(claims["origin"]) == {"paper", "compendium"}


def test_a_changed_test_cell_changes_the_segmentation_claim(tables: Path) -> None:
    comparison = {"comparison": "(c) net: LP + manual vs (b) net: LP"}
    _edit(tables / "tab02_tests.csv", comparison, mean_dice_c=0.80, mean_dice_other=0.75, p_value=0.001)
    claim = _claim(tables, "seg-c-vs-b")
    assert claim["effect"] == pytest.approx(0.05) and claim["verdict"] == "supported"
    _edit(tables / "tab02_tests.csv", comparison, p_value=0.3)
    assert _claim(tables, "seg-c-vs-b")["verdict"] == "not distinguishable"
    _edit(tables / "tab02_tests.csv", comparison, mean_dice_other=0.85, p_value=0.001)
    claim = _claim(tables, "seg-c-vs-b")
    assert claim["effect"] == pytest.approx(-0.05) and claim["verdict"] == "contradicted"


def test_classifier_order_follows_the_seed_intervals(tables: Path) -> None:
    """Tables without bootstrap intervals (older runs): t-intervals over seeds."""
    path = tables / "tab03_balanced_accuracy.csv"
    frame = pd.read_csv(path)
    bootstrap = [c for c in ("bacc_ci95", "bacc_ci_low", "bacc_ci_high") if c in frame]
    frame.drop(columns=bootstrap).to_csv(path, index=False)
    (tables / "tab03_paired.csv").unlink(missing_ok=True)
    _edit(path, {"input": "softmax+image"}, bacc_mean=0.90, bacc_sd=0.01, seeds=3)
    _edit(path, {"input": "softmax"}, bacc_mean=0.60, bacc_sd=0.01, seeds=3)
    claim = _claim(tables, "cls-si-vs-s")
    assert claim["verdict"] == "supported" and claim["ci_low"] > 0 and claim["effect"] == pytest.approx(0.30)
    _edit(path, {"input": "softmax"}, bacc_mean=0.85, bacc_sd=0.10)  # intervals overlap
    assert _claim(tables, "cls-si-vs-s")["verdict"] == "not distinguishable"
    _edit(path, {"input": "softmax+image"}, bacc_mean=0.99, bacc_sd=0.002)
    assert _claim(tables, "cls-si-level")["verdict"] == "supported"
    _edit(path, {"input": "softmax+image"}, seeds=1, bacc_sd=float("nan"))  # one seed: no interval
    assert _claim(tables, "cls-si-level")["verdict"] == "not distinguishable"


def test_classifier_order_follows_the_paired_bootstrap(tables: Path) -> None:
    path = tables / "tab03_balanced_accuracy.csv"
    rows = [{"a": "image", "b": "softmax", "n": 150, "ci_low": -0.3, "ci_high": -0.1},
            {"a": "image", "b": "softmax+image", "n": 150, "ci_low": -0.4, "ci_high": -0.2},
            {"a": "softmax", "b": "softmax+image", "n": 150, "ci_low": -0.05, "ci_high": 0.02}]
    pd.DataFrame(rows).to_csv(tables / "tab03_paired.csv", index=False)
    _edit(path, {"input": "softmax+image"}, bacc_mean=0.90, bacc_sd=0.01, seeds=5)
    _edit(path, {"input": "softmax"}, bacc_mean=0.60, bacc_sd=0.01, seeds=5)
    # the seed intervals alone would support the order; the paired interval contains 0
    claim = _claim(tables, "cls-si-vs-s")
    assert claim["verdict"] == "not distinguishable"
    assert (claim["ci_low"], claim["ci_high"]) == pytest.approx((-0.02, 0.05))  # sign turned: a − b
    assert _claim(tables, "cls-si-vs-image")["verdict"] == "supported"
    assert _claim(tables, "cls-s-vs-image")["ci_low"] == pytest.approx(0.1)


def _with_postprocessing(tables: Path) -> None:
    """Give the topology tables raw and post-processed rows (as notebook 05 now writes them)."""
    for name in ("tab05_correct_rate", "tab05_mcnemar"):
        frame = pd.read_csv(tables / f"{name}.csv")
        if "postprocessing" not in frame:
            both = pd.concat([frame.assign(postprocessing="raw"), frame.assign(postprocessing="post")])
            both.to_csv(tables / f"{name}.csv", index=False)


def test_topology_claims_read_raw_or_post_processed_rows(tables: Path) -> None:
    _with_postprocessing(tables)
    rates = tables / "tab05_correct_rate.csv"
    sep = "LP+manual"
    _edit(rates, {"method": sep, "class": "all", "postprocessing": "raw"}, n_correct=2, rate=2 / 150,
          ci_low=0.004, ci_high=0.05, n=150)
    _edit(rates, {"method": sep, "class": "all", "postprocessing": "post"}, n_correct=140, rate=140 / 150,
          ci_low=0.88, ci_high=0.96, n=150)
    claim = _claim(tables, "postprocessing-topology")
    assert claim["verdict"] == "supported" and claim["ci_low"] == pytest.approx(0.88 - 0.05)
    mcnemar = tables / "tab05_mcnemar.csv"
    _edit(mcnemar, {"subset": "all", "postprocessing": "post", "a": "LP+manual"}, only_a=9, only_b=0, p_value=0.0039)
    _edit(mcnemar, {"subset": "all", "postprocessing": "raw", "a": "LP+manual"}, only_a=0, only_b=9, p_value=0.0039)
    assert _claim(tables, "joint-topology-all-post")["verdict"] == "contradicted"
    assert _claim(tables, "joint-topology-all")["verdict"] == "supported"  # the raw rows


def test_rule_claim_follows_its_table(tables: Path) -> None:
    rows = [{"classifier": "rule on joint", "trachea": t, "n": 150, "n_correct": 148, "balanced_accuracy": 0.985,
             "ci_low": lo, "ci_high": 1.0} for t, lo in (("given", 0.90), ("image", 0.975))]
    pd.DataFrame(rows).to_csv(tables / "tab05_rule_scores.csv", index=False)
    claim = _claim(tables, "rule-level")  # the image-derived trachea row: the one a real scan gets
    assert claim["verdict"] == "supported" and claim["ci_low"] == pytest.approx(0.975 - cl.PAPER_LEVEL)
    _edit(tables / "tab05_rule_scores.csv", {"trachea": "image"}, ci_low=0.9)
    assert _claim(tables, "rule-level")["verdict"] == "not distinguishable"


def test_joint_and_topology_claims_follow_their_tables(tables: Path) -> None:
    _edit(tables / "tab04_paired_tests.csv", {"a": "joint", "b": "lambda0", "subset": "all"},
          mean_diff=0.02, p=0.01)
    assert _claim(tables, "joint-vs-lambda0")["verdict"] == "supported"
    mcnemar = tables / "tab05_mcnemar.csv"
    n = int(pd.read_csv(mcnemar).query("subset == 'all' and postprocessing == 'raw'")["n"].iloc[0])
    _edit(mcnemar, {"subset": "all", "postprocessing": "raw", "a": "LP+manual"}, only_a=0, only_b=9, both_correct=1,
          both_wrong=n - 10, p_value=0.0039)
    claim = _claim(tables, "joint-topology-all")
    assert claim["verdict"] == "supported" and claim["effect"] == pytest.approx(9 / n)
    _edit(tables / "tab05_correct_rate.csv", {"method": "truth", "class": "all", "postprocessing": "raw"},
          n_correct=n - 1)
    assert _claim(tables, "topology-truth")["verdict"] == "contradicted"


def test_the_classification_term_is_judged_against_the_control_with_the_same_steps(tables: Path) -> None:
    mcnemar = tables / "tab05_mcnemar.csv"
    control = {"postprocessing": "post", "a": "λ = 0", "b": "joint"}
    _edit(mcnemar, {"subset": "all", **control}, only_a=0, only_b=12, p_value=0.0005)
    _edit(mcnemar, {"subset": "DAA", **control}, only_a=6, only_b=0, p_value=0.031)
    _edit(mcnemar, {"subset": "all", "postprocessing": "post", "a": "LP+manual"}, only_a=9, only_b=0,
          p_value=0.0039)
    assert _claim(tables, "joint-vs-lambda0-topology-post")["verdict"] == "supported"
    assert _claim(tables, "joint-vs-lambda0-topology-daa")["verdict"] == "contradicted"
    assert _claim(tables, "joint-topology-all-post")["verdict"] == "contradicted"  # the other block's row


def test_claims_without_their_tables_are_listed_not_guessed(tables: Path) -> None:
    (tables / "tab02_tests.csv").unlink()
    skipped = dict(cl.not_evaluated(tables))
    assert set(skipped) == {"seg-c-vs-a", "seg-c-vs-b"} and "tab02_tests.csv" in skipped["seg-c-vs-a"]
    assert "seg-c-vs-a" not in set(cl.build_claims(tables)["claim"])
    pd.DataFrame().to_csv(tables / "tab04_paired_tests.csv", index=False)  # what a run without truth writes
    assert {"joint-dice-daa", "joint-dice-all"} <= {cid for cid, _ in cl.not_evaluated(tables)}
    empty = cl.build_claims(tables.parent / "nothing")
    assert empty.empty and list(empty.columns) == list(cl.COLUMNS)


def test_readme_block_is_replaced_between_its_markers(tables: Path, tmp_path: Path) -> None:
    claims = cl.build_claims(tables)
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n\n{cl.MARK_START}\nold sentences\n{cl.MARK_END}\n\nafter\n")
    assert cl.update_readme(readme, claims)
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert "old sentences" not in text and "**supported**" in text
    assert cl.readme_block(text) == cl.render_readme_block(claims)
    assert not cl.update_readme(readme, claims)  # a second write changes nothing
    # the block is the same when rendered from the claims table as written to disk
    claims.to_csv(tmp_path / "claims.csv", index=False, float_format="%.4g")
    assert cl.render_readme_block(pd.read_csv(tmp_path / "claims.csv")) == cl.render_readme_block(claims)
    (tmp_path / "plain.md").write_text("# no markers\n")
    with pytest.raises(ValueError, match="markers"):
        cl.update_readme(tmp_path / "plain.md", claims)


def test_the_readme_states_the_committed_claims() -> None:
    """The README's findings are the block the committed tables render to (notebook 06 writes it)."""
    block = cl.readme_block((REPO_ROOT / "README.md").read_text())
    assert block is not None, "README.md has no claims block"
    assert block == cl.render_readme_block(cl.build_claims(FIGURES)), (
        "README.md's claims block is out of date: run notebook 06 or `python -m fetalcmr.claims --write-readme`")
