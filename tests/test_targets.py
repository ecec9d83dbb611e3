"""Paper vs here: every target is read from its table, a changed cell changes whether it is met,
and the README's targets block is the one the committed tables render to."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fetalcmr import targets as tg
from fetalcmr.claims import readme_block
from fetalcmr.notebook import REPO_ROOT

FIGURES = REPO_ROOT / "figures"


@pytest.fixture()
def tables(committed_tables: Path) -> Path:
    return committed_tables


def _row(targets: pd.DataFrame, goal: str) -> pd.Series:
    rows = targets[targets["goal"] == goal]
    assert len(rows) == 1, f"{goal!r}: {len(rows)} rows"
    return rows.iloc[0]


def test_every_group_has_its_rows_with_the_measured_values(tables: Path) -> None:
    targets = tg.build_targets(tables)
    assert list(targets.columns) == list(tg.COLUMNS)
    assert set(targets["met"]) <= {"yes", "no"}
    assert set(targets["table"]) == {"tab03_balanced_accuracy", "tab02_dice", "tab04_per_label",
                                     "tab05_correct_rate"}
    bacc = pd.read_csv(tables / "tab03_balanced_accuracy.csv").set_index("input").loc["softmax+image"]
    row = _row(targets, "balanced accuracy, DenseNet reading softmax + image")
    assert bacc["bacc_ci95"] in row["here"]
    assert row["met"] == ("yes" if bacc["bacc_mean"] >= tg.BACC_TARGET else "no")
    rates = pd.read_csv(tables / "tab05_correct_rate.csv")
    post = rates[(rates["postprocessing"] == "post") & (rates["class"] == "all")]
    joint = post[post["method"] == "joint"].iloc[0]
    row = _row(targets, "strict topology-correct, post-processed, joint, all classes")
    assert row["here"].startswith(f"{int(joint['n_correct'])}/{int(joint['n'])}")


def test_a_changed_cell_changes_whether_a_target_is_met(tables: Path) -> None:
    goal = "strict topology-correct, post-processed, LP+manual, all classes"
    rates = pd.read_csv(tables / "tab05_correct_rate.csv")
    where = (rates["method"] == "LP+manual") & (rates["postprocessing"] == "post") & (rates["class"] == "all")
    for rate, met in ((0.96, "yes"), (0.94, "no")):
        rates.loc[where, "rate"] = rate
        rates.to_csv(tables / "tab05_correct_rate.csv", index=False)
        assert _row(tg.build_targets(tables), goal)["met"] == met
    dice = pd.read_csv(tables / "tab02_dice.csv")
    column = "(c) net: LP + manual"
    for vessel in ("AO", "DAO", "MPA"):
        dice.loc[dice["label"] == vessel, column] = "0.930 (0.010)"
    dice.to_csv(tables / "tab02_dice.csv", index=False)
    assert _row(tg.build_targets(tables), f"Dice AO/DAO/MPA, {column}")["met"] == "yes"
    dice.loc[dice["label"] == "MPA", column] = "0.919 (0.010)"  # the lowest vessel decides
    dice.to_csv(tables / "tab02_dice.csv", index=False)
    assert _row(tg.build_targets(tables), f"Dice AO/DAO/MPA, {column}")["met"] == "no"


def test_the_lp_column_shows_the_labels_the_networks_learn_from(tables: Path) -> None:
    dice = pd.read_csv(tables / "tab02_dice.csv")
    dice.loc[dice["label"] == "AO", "(a) LP"] = "0.555 (0.010)"
    dice.to_csv(tables / "tab02_dice.csv", index=False)
    rates = pd.read_csv(tables / "tab05_correct_rate.csv")
    lp = (rates["method"] == "LP") & (rates["postprocessing"] == "raw")
    rates.loc[lp & (rates["class"] == "DAA"), "n_correct"] = 7
    rates.to_csv(tables / "tab05_correct_rate.csv", index=False)
    targets = tg.build_targets(tables)
    for method in ("(c) net: LP + manual", "joint"):
        assert _row(targets, f"Dice AO/DAO/MPA, {method}")["lp"].startswith("AO 0.555, DAO ")
    assert "DAA 7/" in _row(targets, "strict topology-correct, post-processed, joint, each class")["lp"]
    overall = rates[lp & (rates["class"] == "all")].iloc[0]
    assert _row(targets, "strict topology-correct, raw, joint, all classes")["lp"].startswith(
        f"{int(overall['n_correct'])}/{int(overall['n'])} = ")
    assert _row(targets, "balanced accuracy, DenseNet reading softmax + image")["lp"] == ""
    (tables / "tab02_dice.csv").unlink()  # the joint rows keep their values, without the LP column
    assert _row(tg.build_targets(tables), "Dice AO/DAO/MPA, joint")["lp"] == ""


def test_targets_without_their_table_are_left_out(tables: Path) -> None:
    (tables / "tab04_per_label.csv").unlink()
    targets = tg.build_targets(tables)
    assert "tab04_per_label" not in set(targets["table"]) and "tab02_dice" in set(targets["table"])


def test_update_readme_writes_between_the_markers_only(tables: Path, tmp_path: Path) -> None:
    targets = tg.build_targets(tables)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{tg.MARK_START}\nold\n{tg.MARK_END}\noutro\n")
    assert tg.update_readme(readme, targets)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("\noutro\n") and "old" not in text
    assert f"{len(targets)} targets" in text
    assert not tg.update_readme(readme, targets)  # already up to date
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="targets:start"):
        tg.update_readme(readme, targets)


def test_the_readme_states_the_committed_targets() -> None:
    block = readme_block((REPO_ROOT / "README.md").read_text(), tg.MARK_START, tg.MARK_END)
    assert block is not None, "README.md has no targets block"
    assert block == tg.render_targets_block(tg.build_targets(FIGURES)), (
        "README.md's targets block is out of date: run notebook 06")
