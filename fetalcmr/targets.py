"""Paper vs here: the paper's reported results and the accuracy targets of issue 16, each beside the
number this run measured, read from the stage tables of a figures folder.

One row per target: what is measured, where the target comes from (``paper``: Ramirez Gilliland
et al., MELBA 2023; ``issue 16``: the compendium's accuracy goals), the target, the measured value
with its spread or interval as the source table gives it, the same measure of the propagated
labels (LP) the networks learn from (``tab02_dice`` column (a), ``tab05_correct_rate`` method LP,
on the test subjects; whether those labels are what keeps a target out of reach is the question of
the :mod:`fetalcmr.label_ceiling` oracle), whether it is met (``yes``/``no``, by the mean or the
rate against the threshold) and the table it comes from. Notebook ``06_claims`` writes
it as ``tab06_targets`` and renders it into the README between ``<!-- targets:start -->`` and
``<!-- targets:end -->``, so the README never states a reached target the tables do not show.
A target whose table is missing (a dataset without ground truth has no Dice) is left out.

>>> _met(0.981, 0.97), _met(0.5, 0.95)
('yes', 'no')
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from fetalcmr.claims import PAPER_LEVEL, write_readme_block
from fetalcmr.methods import get
from fetalcmr.results import Tables, read_tables

MARK_START, MARK_END = "<!-- targets:start -->", "<!-- targets:end -->"
TARGETS_TABLE = "tab06_targets"
COLUMNS: tuple[str, ...] = ("goal", "source", "target", "here", "lp", "met", "table")

#: Issue 16's Dice targets per vessel: the arch and pulmonary trunk, then the head-and-neck arteries.
DICE_TARGETS: tuple[tuple[tuple[str, ...], float], ...] = (("AO", "DAO", "MPA"), 0.92), (("LSA", "BCA", "LCCA"), 0.80)
#: The paper's best per-vessel Dice ("up to 0.91") and its balanced accuracy after joint training.
PAPER_MAX_DICE = 0.91
PAPER_BACC = "0.99 (0.01)"
#: Issue 16's classification target for the DenseNet reading softmax + image: the paper's level
#: (its mean minus two of its sds, as :data:`fetalcmr.claims.PAPER_LEVEL`).
BACC_TARGET = PAPER_LEVEL
#: Issue 16's strict topology targets after post-processing (all classes, each class) and raw (an aim).
TOPOLOGY_ALL, TOPOLOGY_CLASS, TOPOLOGY_RAW = 0.95, 0.90, 0.50
#: Methods (``tab05_correct_rate`` names) whose topology the targets concern.
TOPOLOGY_METHODS: tuple[str, ...] = ("LP+manual", "joint")

Row = dict[str, str]


def _met(value: float, threshold: float) -> str:
    return "yes" if float(value) >= threshold else "no"


def _row(goal: str, source: str, target: str, here: str, met: str, table: str, lp: str = "") -> Row:
    return dict(zip(COLUMNS, (goal, source, target, here, lp, met, table), strict=True))


def _classification(t: Tables) -> list[Row]:
    b = t["tab03_balanced_accuracy"].set_index("input")
    if "softmax+image" not in b.index:
        return []
    r = b.loc["softmax+image"]
    here = f"{r['bacc_ci95']} (mean over {int(r['seeds'])} seeds [95 % bootstrap])" if "bacc_ci95" in b \
        else f"{r['balanced_accuracy']} (mean (sd) over {int(r['seeds'])} seeds)"
    return [_row("balanced accuracy, DenseNet reading softmax + image", f"paper {PAPER_BACC}; issue 16",
                 f"≥ {BACC_TARGET:.2f}", here, _met(r["bacc_mean"], BACC_TARGET), "tab03_balanced_accuracy")]


def _mean_sd(cell: str) -> float:
    """The mean of a ``"0.784 (0.043)"`` table cell."""
    return float(str(cell).split(" ")[0])


def _lp_dice(t: Tables) -> dict[str, str]:
    """LP's per-vessel Dice cells (``tab02_dice`` column (a)); empty without the table or the column."""
    dice = t.get("tab02_dice")
    label = get("lp").label
    if dice is None or label not in dice:
        return {}
    column = dice.set_index("label")[label]
    return {str(v): str(c) for v, c in column.items() if str(c) != "–"}


def _dice_rows(means: dict[str, str], method: str, table: str, how: str, lp: dict[str, str]) -> list[Row]:
    rows = []
    for vessels, threshold in DICE_TARGETS:
        shown = [v for v in vessels if v in means]
        if not shown:
            continue
        values = ", ".join(f"{v} {means[v]}" for v in shown) + f" ({how})"
        lowest = min(_mean_sd(means[v]) for v in shown)
        lp_values = ", ".join(f"{v} {_mean_sd(lp[v]):.3f}" for v in shown if v in lp)
        rows.append(_row(f"Dice {'/'.join(shown)}, {method}", "issue 16", f"≥ {threshold:.2f} each", values,
                         _met(lowest, threshold), table, lp_values))
    return rows


def _segmentation(t: Tables) -> list[Row]:
    dice = t["tab02_dice"].set_index("label")
    label = get("net_lp_manual").label
    if label not in dice:
        return []
    column = dice[label][dice[label].astype(str) != "–"]
    means = {str(v): str(c) for v, c in column.items()}
    best = max(means, key=lambda v: _mean_sd(means[v]))
    lp = _lp_dice(t)
    lp_best = max(lp, key=lambda v: _mean_sd(lp[v])) if lp else ""
    rows = [_row(f"best per-vessel Dice, {label}", "paper (real patients)", f"up to {PAPER_MAX_DICE:.2f}",
                 f"{best} {means[best]} (mean (sd) over test subjects)", _met(_mean_sd(means[best]), PAPER_MAX_DICE),
                 "tab02_dice", f"{lp_best} {_mean_sd(lp[lp_best]):.3f}" if lp else "")]
    return rows + _dice_rows(means, label, "tab02_dice", "mean (sd) over test subjects", lp)


def _joint(t: Tables) -> list[Row]:
    per = t["tab04_per_label"]
    joint = per[per["method"] == "joint"]
    if joint.empty:
        return []
    weighted = (joint["dice"] * joint["n"]).groupby(joint["label"]).sum() / joint["n"].groupby(joint["label"]).sum()
    means = {str(v): f"{d:.3f}" for v, d in weighted.items()}
    return _dice_rows(means, "joint", "tab04_per_label", "mean over test subjects", _lp_dice(t))


def _rate_cell(row: pd.Series) -> str:
    return f"{int(row['n_correct'])}/{int(row['n'])} = {row['rate']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"


def _topology(t: Tables) -> list[Row]:
    rates = t["tab05_correct_rate"]
    lp_rates = rates[(rates["method"] == get("lp").short) & (rates["postprocessing"] == "raw")]
    lp_all = lp_rates[lp_rates["class"] == "all"]
    lp_overall = _rate_cell(lp_all.iloc[0]) if len(lp_all) else ""
    lp_classes = ", ".join(f"{r['class']} {int(r['n_correct'])}/{int(r['n'])}"
                           for _, r in lp_rates[lp_rates["class"] != "all"].iterrows())
    rows = []
    for method in TOPOLOGY_METHODS:
        mine = rates[rates["method"] == method]
        post, raw = mine[mine["postprocessing"] == "post"], mine[mine["postprocessing"] == "raw"]
        for stage, part, threshold in (("post-processed", post, TOPOLOGY_ALL), ("raw", raw, TOPOLOGY_RAW)):
            allrow = part[part["class"] == "all"]
            if allrow.empty:
                continue
            a = allrow.iloc[0]
            aim = " (aim)" if stage == "raw" else ""
            rows.append(_row(f"strict topology-correct, {stage}, {method}, all classes", "issue 16",
                             f"≥ {threshold:.2f}{aim}", _rate_cell(a), _met(a["rate"], threshold),
                             "tab05_correct_rate", lp_overall))
        classes = post[post["class"] != "all"]
        if not classes.empty:
            here = ", ".join(f"{r['class']} {int(r['n_correct'])}/{int(r['n'])}" for _, r in classes.iterrows())
            rows.append(_row(f"strict topology-correct, post-processed, {method}, each class", "issue 16",
                             f"≥ {TOPOLOGY_CLASS:.2f} each", here, _met(classes["rate"].min(), TOPOLOGY_CLASS),
                             "tab05_correct_rate", lp_classes))
    return rows


#: (tables a group needs, its row builder), in the order the table lists them
GROUPS: tuple[tuple[tuple[str, ...], Callable[[Tables], list[Row]]], ...] = (
    (("tab03_balanced_accuracy",), _classification),
    (("tab02_dice",), _segmentation),
    (("tab04_per_label",), _joint),
    (("tab05_correct_rate",), _topology),
)


def build_targets(folder: str | Path) -> pd.DataFrame:
    """Return the targets table (:data:`COLUMNS`) for the stage tables in ``folder``."""
    tables = read_tables(folder)
    rows: list[Row] = []
    for needed, build in GROUPS:
        if all(n in tables for n in needed):
            rows += build(tables)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _cells(row: Sequence[str]) -> str:
    return "| " + " | ".join(str(c) for c in row) + " |"


def render_targets_block(targets: pd.DataFrame) -> str:
    """Return the README's paper-vs-here block (markers included) for the targets table."""
    met = int((targets["met"] == "yes").sum())
    lines = [MARK_START, "<!-- written by fetalcmr.targets from the tables in figures/ (notebook 06_claims); "
                         "do not edit by hand -->", "",
             f"**Paper vs here** ({len(targets)} targets: {met} met, {len(targets) - met} not; synthetic test "
             "subjects; *met* compares the mean or the rate with the target):", "",
             _cells(("goal", "source", "target", "here", "LP (the labels the networks learn from)", "met", "table")),
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [_cells((r.goal, r.source, r.target, r.here, r.lp or "–", f"**{r.met}**", f"`{r.table}`"))
              for r in targets.itertuples(index=False)]
    return "\n".join([*lines, MARK_END])


def update_readme(readme: str | Path, targets: pd.DataFrame) -> bool:
    """Write the targets block into ``readme`` (atomically); True when it changed."""
    return write_readme_block(readme, render_targets_block(targets), MARK_START, MARK_END)
