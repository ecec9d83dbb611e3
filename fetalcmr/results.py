"""The README's results per step, rendered from the stage tables of a figures folder.

One row per notebook (cohort, label propagation, segmentation, classification, joint training,
topology), each a sentence of numbers read from the tables that notebook wrote, so the README's
numbers cannot outlive a regeneration. Notebook ``06_claims`` writes the block between
``<!-- results:start -->`` and ``<!-- results:end -->``; the verdicts are in :mod:`fetalcmr.claims`.
A step whose tables are missing (a dataset without ground truth has no Dice) is left out.

>>> _f(0.80712), _p(6.33e-05), _p(0.43)
('0.807', '6.3e-05', '0.43')
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from fetalcmr.claims import write_readme_block
from fetalcmr.methods import METHODS, get

MARK_START, MARK_END = "<!-- results:start -->", "<!-- results:end -->"
#: The paper's balanced accuracy for the softmax + image classifier (Ramirez Gilliland et al. 2023).
PAPER_BACC = "0.99 (0.01)"
#: Label propagation methods (registry ids) the row names, rows of ``tab01_methods`` by their label.
PROPAGATION_METHODS: tuple[str, ...] = ("voxelmorph", "voxelmorph_network", "affine", "demons")
#: Vessels whose Dice the segmentation row names (the arch and the head-and-neck branches).
SHOWN_VESSELS: tuple[str, ...] = ("AO", "DAO", "MPA", "LSA", "BCA", "LCCA")

Tables = dict[str, pd.DataFrame]


def _f(x: float, digits: int = 3) -> str:
    return f"{float(x):.{digits}f}"


def _p(p: float) -> str:
    return f"{float(p):.2g}"


def _short(method: str) -> str:
    return get(method).short if method in METHODS else method


def _cohort(t: Tables) -> str:
    c = t["tab00_cohort"].set_index("class")
    test = ", ".join(f"{int(c.loc[k, 'testing'])} {k}" for k in c.index if k != "all")
    a = c.loc["all"]
    return (f"{int(a['total'])} subjects: {int(a['training'])} training, {int(a['validation'])} validation, "
            f"{int(a['testing'])} test ({test})")


def _propagation(t: Tables) -> str:
    m = t["tab01_methods"]
    parts = []
    for method in map(get, PROPAGATION_METHODS):
        row = m[m["method"] == method.label]
        if not row.empty:
            r = row.iloc[0]
            parts.append(f"{method.short} {_f(r['dice_mean'])} ({_f(r['seconds_per_subject'], 2)} s/subject)")
    n = int(m.iloc[0]["subjects"])
    return f"mean label Dice on the same {n} test pairs: " + ", ".join(parts)


def _segmentation(t: Tables) -> str:
    tests, dice = t["tab02_tests"], t["tab02_dice"].set_index("label")
    c = get("net_lp_manual")
    parts = []
    for r in tests.itertuples(index=False):
        other = str(r.comparison).split(" vs ")[-1]
        ci = (f", difference {float(r.mean_difference):+.3f} [{float(r.diff_ci_low):+.3f}, "
              f"{float(r.diff_ci_high):+.3f}]" if "diff_ci_low" in tests else "")
        parts.append(f"vs {other} {_f(r.mean_dice_other)}: {int(r.subjects_improved)}/{int(r.n_subjects)} "
                     f"subjects better{ci}, Wilcoxon p = {_p(r.p_value)}")
    mean_c = _f(tests.iloc[0][f"mean_dice_{c.letter}"]) if len(tests) else "–"
    vessels = ", ".join(f"{v} {dice.loc[v, c.label].split(' ')[0]}" for v in SHOWN_VESSELS if v in dice.index)
    return f"mean vessel Dice of {c.label} {mean_c} (" + "; ".join(parts) + f"); per vessel: {vessels}"


def _classification(t: Tables) -> str:
    b = t["tab03_balanced_accuracy"]
    seeds = int(b["seeds"].max())
    if "bacc_ci95" in b:
        parts = ", ".join(f"{r.input} {r.bacc_ci95}" for r in b.itertuples(index=False))
        return (f"balanced accuracy, mean over {seeds} classifier seeds [95 % bootstrap over seeds and test "
                f"subjects]: {parts} (paper: {PAPER_BACC} for softmax + image)")
    parts = ", ".join(f"{r.input} {r.balanced_accuracy}" for r in b.itertuples(index=False))
    return (f"balanced accuracy, mean (sd) over {seeds} classifier seeds: {parts} "
            f"(paper: {PAPER_BACC} for softmax + image)")


def _joint(t: Tables) -> str:
    comp, tests = t["tab04_comparison"], t["tab04_paired_tests"]
    methods = ", ".join(f"{_short(r.method)} {_f(r.dice)}" for r in comp.itertuples(index=False))
    bacc = ", ".join(f"{_short(r.method)} {_f(r.balanced_accuracy, 2)}" for r in comp.itertuples(index=False))
    pairs = [f"{_short(r.a)} − {_short(r.b)} {float(r.mean_diff):+.3f}"
             + (f" [{float(r.diff_ci_low):+.3f}, {float(r.diff_ci_high):+.3f}]" if "diff_ci_low" in tests else "")
             + f" (p = {_p(r.p)})" for r in tests[tests["subset"] == "all"].itertuples(index=False)]
    how = " (mean [95 % bootstrap])" if "diff_ci_low" in tests else ""
    text = (f"mean Dice {methods}; paired differences on all test subjects{how}: "
            f"{', '.join(pairs)}; balanced accuracy {bacc}")
    sweep = t.get("tab04_lambda_sweep")
    if sweep is not None and len(sweep) > 1:
        first, last = sweep.iloc[0], sweep.iloc[-1]
        text += (f"; λ sweep (validation): Dice {_f(first['dice'])} at λ = {first['lambda']:g}, "
                 f"{_f(last['dice'])} at λ = {last['lambda']:g}")
    return text


def _topology(t: Tables) -> str:
    rates = t["tab05_correct_rate"]
    stages = list(dict.fromkeys(rates["postprocessing"])) if "postprocessing" in rates else [None]
    texts = []
    for stage in stages:
        rows = rates[(rates["class"] == "all") & ((rates["postprocessing"] == stage) if stage else True)]
        parts = ", ".join(f"{r.method} {int(r.n_correct)}/{int(r.n)} [{_f(r.ci_low, 2)}, {_f(r.ci_high, 2)}]"
                          for r in rows.itertuples(index=False))
        texts.append((f"{stage} maps: " if stage else "") + parts)
    text = "topologically correct, all classes (95 % Wilson interval): " + "; ".join(texts)
    mc = t.get("tab05_mcnemar")
    if mc is not None:
        allrow = mc[mc["subset"] == "all"]
        for r in allrow.to_dict("records"):
            stage = f" ({r['postprocessing']})" if "postprocessing" in r else ""
            text += (f"; McNemar{stage} {r['b']} vs {r['a']}: {int(r['only_b'])} vs {int(r['only_a'])} discordant, "
                     f"p = {_p(r['p_value'])}")
    rule = t.get("tab05_rule_scores")
    if rule is not None:
        rows = rule[rule["classifier"].astype(str).str.startswith("rule on") & (rule["trachea"] == "image")]
        parts = ", ".join(f"{r.classifier.removeprefix('rule on ')} {_f(r.balanced_accuracy, 2)} "
                          f"[{_f(r.ci_low, 2)}, {_f(r.ci_high, 2)}]" for r in rows.itertuples(index=False))
        if parts:
            text += f"; topology rule (trachea from the image), balanced accuracy on post-processed maps: {parts}"
    return text


#: (step, its tables, the sentence builder)
STEPS: tuple[tuple[str, tuple[str, ...], Callable[[Tables], str]], ...] = (
    ("cohort (00)", ("tab00_cohort",), _cohort),
    ("label propagation (01)", ("tab01_methods",), _propagation),
    ("segmentation (02)", ("tab02_tests", "tab02_dice"), _segmentation),
    ("classification (03)", ("tab03_balanced_accuracy",), _classification),
    ("joint training (04)", ("tab04_comparison", "tab04_paired_tests"), _joint),
    ("topology (05)", ("tab05_correct_rate",), _topology),
)


def read_tables(folder: str | Path) -> Tables:
    """Return every ``tab*.csv`` of ``folder`` by name."""
    return {p.stem: pd.read_csv(p) for p in sorted(Path(folder).glob("tab*.csv"))}


def results_rows(folder: str | Path) -> list[tuple[str, str, str]]:
    """Return ``(step, sentence, tables)`` for every step whose tables are in ``folder``."""
    tables = read_tables(folder)
    return [(step, build(tables), ", ".join(f"`{n}`" for n in needed))
            for step, needed, build in STEPS if all(n in tables for n in needed)]


def render_results_block(folder: str | Path) -> str:
    """Return the README's results-per-step block (markers included) for the tables in ``folder``."""
    lines = [MARK_START, "<!-- written by fetalcmr.results from the tables in figures/ (notebook 06_claims); "
                         "do not edit by hand -->", "", "| step | result (synthetic test subjects) | table |",
             "| --- | --- | --- |"]
    lines += [f"| {step} | {text} | {tables} |" for step, text, tables in results_rows(folder)]
    return "\n".join([*lines, MARK_END])


def update_readme(readme: str | Path, folder: str | Path) -> bool:
    """Write the results block of ``folder``'s tables into ``readme``; True when it changed."""
    return write_readme_block(readme, render_results_block(folder), MARK_START, MARK_END)
