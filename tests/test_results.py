"""The README's results per step: rendered from the tables, so a changed table changes the README."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fetalcmr import results
from fetalcmr.claims import readme_block
from fetalcmr.notebook import REPO_ROOT

FIGURES = REPO_ROOT / "figures"


@pytest.fixture()
def tables(committed_tables: Path) -> Path:
    return committed_tables


def test_every_step_has_a_row_built_from_its_tables(tables: Path) -> None:
    rows = results.results_rows(tables)
    assert [r[0] for r in rows] == [s[0] for s in results.STEPS]
    cohort = pd.read_csv(tables / "tab00_cohort.csv").set_index("class")
    assert f"{int(cohort.loc['all', 'total'])} subjects" in rows[0][1]


def test_a_changed_table_cell_changes_the_block(tables: Path) -> None:
    before = results.render_results_block(tables)
    bacc = pd.read_csv(tables / "tab03_balanced_accuracy.csv")
    bacc.loc[bacc["input"] == "softmax+image", "bacc_ci95"] = "0.97 [0.95, 0.99]"
    bacc.to_csv(tables / "tab03_balanced_accuracy.csv", index=False)
    after = results.render_results_block(tables)
    assert after != before and "softmax+image 0.97 [0.95, 0.99]" in after


def test_a_step_without_its_tables_is_left_out(tables: Path) -> None:
    (tables / "tab02_tests.csv").unlink()
    steps = [r[0] for r in results.results_rows(tables)]
    assert "segmentation (02)" not in steps and "classification (03)" in steps


def test_update_readme_writes_between_the_markers_only(tables: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{results.MARK_START}\nold\n{results.MARK_END}\noutro\n")
    assert results.update_readme(readme, tables)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("\noutro\n") and "old" not in text
    assert not results.update_readme(readme, tables)  # already up to date
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="results:start"):
        results.update_readme(readme, tables)


def test_the_readme_states_the_committed_results() -> None:
    block = readme_block((REPO_ROOT / "README.md").read_text(), results.MARK_START, results.MARK_END)
    assert block == results.render_results_block(FIGURES), (
        "README.md's results block is out of date: run notebook 06 (make reproduce) on the committed figures")
