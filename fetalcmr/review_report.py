"""Tables, case selections and figures of the topology review (notebook 05).

From the per-map verdicts :func:`fetalcmr.review.review_table` returns: correct rates with
confidence intervals, the paired McNemar test, the worst cases, surface renders and the 3D gallery's
cases. :mod:`fetalcmr.review` does not import this one (docs/design.md §8).

>>> reports = pd.DataFrame({"id": ["a", "b"], "cls": [2, 2], "method": "joint", "correct": [True, False]})
>>> all_ = correct_rates(reports).set_index("class").loc["all"]
>>> int(all_["n"]), int(all_["n_correct"]), round(float(all_["ci_low"]), 3), round(float(all_["ci_high"]), 3)
(2, 1, 0.095, 0.905)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from fetalcmr.anatomy import CLASSES
from fetalcmr.methods import METHODS
from fetalcmr.review import REVIEWED, TRUTH, ReviewCase, review_order
from fetalcmr.stats import mcnemar_exact, proportion_ci


def correct_rates(reports: pd.DataFrame, *, alpha: float = 0.05, method: str = "wilson",
                  classes: Mapping[int, str] = CLASSES) -> pd.DataFrame:
    """Return the topologically correct rate per method and class (and over all classes) with CIs.

    Columns: ``method, class, n, n_correct, rate, ci_low, ci_high``; methods in :func:`review_order`.
    """
    rows = []
    order = review_order()
    methods = [m for m in order if m in set(reports["method"])] + \
        [m for m in dict.fromkeys(reports["method"]) if m not in order]
    for m in methods:
        g = reports[reports["method"] == m]
        groups = [(classes.get(c, str(c)), g[g["cls"] == c]) for c in sorted(classes)]
        for name, sub in [*groups, ("all", g)]:
            n, k = len(sub), int(sub["correct"].astype(bool).sum())
            lo, hi = proportion_ci(k, n, alpha, method)
            rows.append({"method": m, "class": name, "n": n, "n_correct": k,
                         "rate": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows, columns=["method", "class", "n", "n_correct", "rate", "ci_low", "ci_high"])



def mcnemar_table(reports: pd.DataFrame, a: str, b: str, subsets: Mapping[str, Iterable[str]]) -> pd.DataFrame:
    """Return one exact McNemar row per subset of subject ids: method ``a`` vs ``b`` on the subjects
    both were reviewed on. Columns: ``subset, a, b, n, both_correct, only_a, only_b, both_wrong,
    rate_a, rate_b, p_value``."""
    wide = reports[reports["method"].isin([a, b])].pivot_table(
        index="id", columns="method", values="correct", aggfunc="first")
    rows = []
    for name, ids in subsets.items():
        sub = wide.loc[wide.index.isin(set(ids))].dropna() if {a, b} <= set(wide.columns) else wide.iloc[:0]
        res = mcnemar_exact(sub[a].astype(bool).tolist() if len(sub) else [],
                            sub[b].astype(bool).tolist() if len(sub) else []).as_dict()
        n = res["n"]
        rows.append({"subset": name, "a": a, "b": b, **res,
                     "rate_a": (res["both_correct"] + res["only_a"]) / n if n else float("nan"),
                     "rate_b": (res["both_correct"] + res["only_b"]) / n if n else float("nan")})
    cols = ["subset", "a", "b", "n", "both_correct", "only_a", "only_b", "both_wrong", "rate_a", "rate_b", "p_value"]
    return pd.DataFrame(rows, columns=cols)



def worst_cases(reports: pd.DataFrame, n: int = 3) -> list[str]:
    """Return up to ``n`` subject ids with the most verdict reasons summed over the methods
    (truth excluded); only subjects with at least one reason, ties broken by id."""
    g = reports[reports["method"] != TRUTH].groupby("id")["n_reasons"].sum()
    g = g[g > 0]
    return [str(i) for i, _ in sorted(g.items(), key=lambda kv: (-kv[1], str(kv[0])))[:n]]



def verdict_text(reports: pd.DataFrame, sid: str, method: str) -> str:
    """Return "correct" or "WRONG (k)" for one subject and method (k = number of reasons)."""
    row = reports[(reports["id"] == sid) & (reports["method"] == method)]
    if row.empty:
        return "not reviewed"
    r = row.iloc[0]
    return "correct" if bool(r["correct"]) else f"WRONG ({int(r['n_reasons'])})"



#: Render detail tiers: (largest vessel-voxel count of the maps in a figure, marching-cubes step,
#: vertex-clustering cell in voxels). A badly trained network can label half the volume (hundreds
#: of thousands of faces, a minute a panel); such maps are drawn coarser so review stays fast.
RENDER_TIERS: tuple[tuple[int, int, float], ...] = ((15_000, 1, 1.25), (40_000, 2, 2.5), (2**62, 3, 3.0))



def render_detail(maps: Iterable[np.ndarray]) -> tuple[int, float]:
    """Return ``(step_size, decimate)`` for surface renders of ``maps`` (see ``RENDER_TIERS``)."""
    biggest = max((int(np.count_nonzero(m)) for m in maps), default=0)
    return next((step, dec) for limit, step, dec in RENDER_TIERS if biggest <= limit)



def detail_per_map(maps: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Return ``{"step_size": {name: step}, "decimate": {name: cell}}`` from :func:`render_detail` of each map."""
    detail = {name: render_detail([m]) for name, m in maps.items()}
    return {"step_size": {k: d[0] for k, d in detail.items()}, "decimate": {k: d[1] for k, d in detail.items()}}



def worst_method(reports: pd.DataFrame, sid: str) -> str | None:
    """Return the method (truth excluded) with the most failed checks on subject ``sid``."""
    g = reports[(reports["id"] == sid) & (reports["method"] != TRUTH)]
    g = g[g["n_reasons"] > 0]
    return None if g.empty else str(g.sort_values("n_reasons", ascending=False, kind="stable").iloc[0]["method"])



def render_cases(cases: Sequence[ReviewCase], reports: pd.DataFrame,
                 methods: Sequence[str] | Mapping[str, Sequence[str]], *,
                 views: Sequence[str] = ("anterior", "superior"), title: str | None = None) -> Any:
    """Return one :func:`render.render_comparison` figure: for each case, one row per method in
    ``methods`` (or ``methods[case id]``) it has, labelled with the id and the verdict.

    Surface detail follows :func:`render_detail` of each map (coarser only for huge maps).
    """
    from fetalcmr.render import render_comparison

    maps: dict[str, np.ndarray] = {}
    for c in cases:
        wanted = methods.get(c.id, ()) if isinstance(methods, Mapping) else methods
        for m in wanted:
            if m in c.maps:
                maps[f"{c.id} {m}\n{verdict_text(reports, c.id, m)}"] = c.maps[m]
    if not maps:
        raise ValueError("render_cases: none of the cases has a label map of the methods asked")
    return render_comparison(maps, cases[0].spacing_mm, views=views, title=title, **detail_per_map(maps))



def plot_correct_rates(rates: pd.DataFrame, ax: Any, *, colors: Mapping[str, str] | None = None) -> None:
    """Draw grouped bars of the correct rate by class (groups) and method (bars) with CI whiskers
    (each reviewed method in its registry colour unless ``colors`` names another)."""
    classes = list(dict.fromkeys(rates["class"]))
    methods = list(dict.fromkeys(rates["method"]))
    default = {METHODS[m].short: METHODS[m].colour for m in REVIEWED}
    colors = {**default, **(colors or {})}
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(classes))
    for k, m in enumerate(methods):
        g = rates[rates["method"] == m].set_index("class").reindex(classes)
        pos = x - 0.4 + width * (k + 0.5)
        rate = g["rate"].to_numpy(float)
        err = np.vstack([rate - g["ci_low"].to_numpy(float), g["ci_high"].to_numpy(float) - rate])
        ax.bar(pos, np.nan_to_num(rate), width, color=colors.get(m, None), label=m, edgecolor="0.3", linewidth=0.5)
        ax.errorbar(pos, rate, yerr=np.nan_to_num(err), fmt="none", ecolor="0.2", capsize=2, linewidth=0.8)
        for p, (nn, kk) in zip(pos, zip(g["n"].fillna(0), g["n_correct"].fillna(0), strict=True), strict=True):
            ax.text(p, 1.02, f"{int(kk)}/{int(nn)}", ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(x, classes)
    ax.set_ylim(0, 1.22)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("topologically correct rate")
    ax.legend(fontsize=7, ncol=len(methods), loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)



def gallery_cases(cases: Sequence[ReviewCase], reports: pd.DataFrame) -> list[dict[str, Any]]:
    """Return :func:`gallery.write_gallery` cases: every map, per-method verdict, reasons, Dice
    (surface detail per map from :func:`render_detail`: coarser only for huge maps)."""
    out = []
    cols = ["method", "correct", "mean_dice", "n_reasons", "arch_b0", "arch_b1", "arch_side", "reasons", "warnings"]
    for c in cases:
        rep = reports[reports["id"] == c.id]
        metrics = rep[[k for k in cols if k in rep.columns]].copy()
        if c.truth is None:
            metrics = metrics.drop(columns=["mean_dice"], errors="ignore")
        summary: dict[str, Any] = {"class": CLASSES.get(c.cls, str(c.cls))}
        summary.update({m: verdict_text(reports, c.id, m) for m in c.maps if m != TRUTH})
        notes = [f"True class {CLASSES.get(c.cls, c.cls)}; every map is judged against that class's template."]
        if c.truth is None:
            notes.append("No ground truth in this dataset: only the predictions are shown.")
        out.append({"id": c.id, "labelmaps": c.maps, "spacing_mm": c.spacing_mm, **detail_per_map(c.maps),
                    "title": f"{c.id} — {CLASSES.get(c.cls, c.cls)}", "metrics": metrics,
                    "summary": summary, "notes": notes})
    return out
