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

from fetalcmr.anatomy import CLASSES, LABELS
from fetalcmr.methods import METHODS
from fetalcmr.review import REVIEWED, TRUTH, Choice, ReviewCase, review_order
from fetalcmr.stats import mcnemar_exact, proportion_ci
from fetalcmr.topology_rule import UNDETERMINED, balanced_accuracy_ci


def _by_postprocessing(reports: pd.DataFrame) -> list[tuple[str | None, pd.DataFrame]]:
    """Split ``reports`` by its ``postprocessing`` column ("raw" first), or one group without it."""
    if "postprocessing" not in reports.columns:
        return [(None, reports)]
    names = sorted(dict.fromkeys(reports["postprocessing"]), key=lambda p: (p != "raw", str(p)))
    return [(p, reports[reports["postprocessing"] == p]) for p in names]


def correct_rates(reports: pd.DataFrame, *, alpha: float = 0.05, method: str = "wilson",
                  classes: Mapping[int, str] = CLASSES) -> pd.DataFrame:
    """Return the topologically correct rate per method and class (and over all classes) with CIs.

    Columns: ``method, class, n, n_correct, rate, ci_low, ci_high``; methods in :func:`review_order`.
    With a ``postprocessing`` column in ``reports`` (:func:`fetalcmr.review.review_both`), one
    block per value ("raw" first) and that column after ``method``.
    """
    rows = []
    order = review_order()
    for post, reps in _by_postprocessing(reports):
        methods = [m for m in order if m in set(reps["method"])] + \
            [m for m in dict.fromkeys(reps["method"]) if m not in order]
        extra = {} if post is None else {"postprocessing": post}
        for m in methods:
            g = reps[reps["method"] == m]
            groups = [(classes.get(c, str(c)), g[g["cls"] == c]) for c in sorted(classes)]
            for name, sub in [*groups, ("all", g)]:
                n, k = len(sub), int(sub["correct"].astype(bool).sum())
                lo, hi = proportion_ci(k, n, alpha, method)
                rows.append({"method": m, **extra, "class": name, "n": n, "n_correct": k,
                             "rate": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi})
    cols = ["method", *(["postprocessing"] if "postprocessing" in reports.columns else []), "class", "n",
            "n_correct", "rate", "ci_low", "ci_high"]
    return pd.DataFrame(rows, columns=cols)


def mcnemar_table(reports: pd.DataFrame, a: str, b: str, subsets: Mapping[str, Iterable[str]]) -> pd.DataFrame:
    """Return one exact McNemar row per subset of subject ids: method ``a`` vs ``b`` on the subjects
    both were reviewed on. Columns: ``subset, a, b, n, both_correct, only_a, only_b, both_wrong,
    rate_a, rate_b, p_value`` (and ``postprocessing`` after ``subset``, one block per value, when
    ``reports`` has that column)."""
    rows = []
    for post, reps in _by_postprocessing(reports):
        wide = reps[reps["method"].isin([a, b])].pivot_table(
            index="id", columns="method", values="correct", aggfunc="first")
        extra = {} if post is None else {"postprocessing": post}
        for name, ids in subsets.items():
            sub = wide.loc[wide.index.isin(set(ids))].dropna() if {a, b} <= set(wide.columns) else wide.iloc[:0]
            res = mcnemar_exact(sub[a].astype(bool).tolist() if len(sub) else [],
                                sub[b].astype(bool).tolist() if len(sub) else []).as_dict()
            n = res["n"]
            rows.append({"subset": name, **extra, "a": a, "b": b, **res,
                         "rate_a": (res["both_correct"] + res["only_a"]) / n if n else float("nan"),
                         "rate_b": (res["both_correct"] + res["only_b"]) / n if n else float("nan")})
    cols = ["subset", *(["postprocessing"] if "postprocessing" in reports.columns else []), "a", "b", "n",
            "both_correct", "only_a", "only_b", "both_wrong", "rate_a", "rate_b", "p_value"]
    return pd.DataFrame(rows, columns=cols)


def postprocessing_table(choices: Mapping[str, Choice], labels: Mapping[int, str] = LABELS) -> pd.DataFrame:
    """Return one row per method: ``method, chosen_on`` (whose validation predictions decided;
    "none" without any), ``validation_subjects``, ``keep_largest`` and ``left_alone`` (vessel
    names, ";"-separated: labels whose largest-piece clean-up is applied / would lower Dice)."""
    names = lambda ks: ";".join(labels.get(k, str(k)) for k in sorted(ks))  # noqa: E731
    rows = []
    for m, choice in choices.items():
        pp = choice.postprocessing
        rows.append({"method": m, "chosen_on": choice.chosen_on or "none",
                     "validation_subjects": max((int(sc["subjects"]) for sc in pp.scores.values()), default=0),
                     "keep_largest": names(pp.labels), "left_alone": names(set(pp.scores) - set(pp.labels))})
    return pd.DataFrame(rows, columns=["method", "chosen_on", "validation_subjects", "keep_largest", "left_alone"])


def postprocessing_evidence(choices: Mapping[str, Choice], labels: Mapping[int, str] = LABELS) -> pd.DataFrame:
    """Return the validation evidence of each choice once per method that made it (``chosen_on``):
    ``chosen_on, label, name, subjects, dice_raw, dice_largest, keep_largest``."""
    rows = []
    made = {c.chosen_on: c.postprocessing for c in choices.values() if c.chosen_on}
    for source, pp in made.items():
        for k, sc in sorted(pp.scores.items()):
            rows.append({"chosen_on": source, "label": k, "name": labels.get(k, str(k)),
                         "subjects": int(sc["subjects"]), "dice_raw": sc["dice_raw"],
                         "dice_largest": sc["dice_largest"], "keep_largest": k in pp.labels})
    return pd.DataFrame(rows, columns=["chosen_on", "label", "name", "subjects", "dice_raw", "dice_largest",
                                       "keep_largest"])


def rule_scores(rules: pd.DataFrame, networks: pd.DataFrame | None = None, *, seed: int = 0) -> pd.DataFrame:
    """Return the balanced accuracy of the topology rule per method and trachea source, and of
    the networks' classes beside it, each with a stratified bootstrap 95 % interval
    (:func:`fetalcmr.topology_rule.balanced_accuracy_ci`) and the Wilson interval of the accuracy.

    ``rules`` is :func:`fetalcmr.review.rule_table`'s; ``networks`` has ``classifier, id, label,
    pred`` (one row per subject and classifier). Columns: ``classifier, trachea, n, n_correct,
    undetermined, accuracy, acc_low, acc_high, balanced_accuracy, ci_low, ci_high``.
    """
    groups: list[tuple[str, str, pd.Series, pd.Series]] = []
    order = {m: k for k, m in enumerate(review_order())}
    for (method, trachea), g in sorted(rules.groupby(["method", "trachea"]),
                                       key=lambda kv: (order.get(kv[0][0], len(order)), kv[0])):
        groups.append((f"rule on {method}", str(trachea), g["cls"], g["rule_cls"]))
    if networks is not None:
        for name, g in networks.groupby("classifier", sort=False):
            groups.append((str(name), "", g["label"], g["pred"]))
    rows = []
    for name, trachea, truth, pred in groups:
        t, p = truth.astype(int).to_numpy(), pred.astype(int).to_numpy()
        k = int((t == p).sum())
        bacc, lo, hi = balanced_accuracy_ci(t, p, seed=seed)
        alo, ahi = proportion_ci(k, len(t))
        rows.append({"classifier": name, "trachea": trachea, "n": len(t), "n_correct": k,
                     "undetermined": int((p == UNDETERMINED).sum()), "accuracy": k / len(t) if len(t) else float("nan"),
                     "acc_low": alo, "acc_high": ahi, "balanced_accuracy": bacc, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows, columns=["classifier", "trachea", "n", "n_correct", "undetermined", "accuracy",
                                       "acc_low", "acc_high", "balanced_accuracy", "ci_low", "ci_high"])


def network_classes(classifiers: pd.DataFrame | None, pairs: pd.DataFrame | None) -> pd.DataFrame:
    """Return the networks' test classes as ``classifier, id, label, pred``: each DenseNet run of
    notebook 03 (``kind, seed, …``, named "DenseNet <kind> seed <s>") and each segmenter +
    classifier pair of notebook 04 (``method, …``, named "pair <method>")."""
    parts = []
    if classifiers is not None and not classifiers.empty:
        parts.append(classifiers.assign(classifier="DenseNet " + classifiers["kind"].astype(str)
                                        + " seed " + classifiers["seed"].astype(str)))
    if pairs is not None and not pairs.empty:
        parts.append(pairs.assign(classifier="pair " + pairs["method"].astype(str)))
    cols = ["classifier", "id", "label", "pred"]
    return pd.concat([p[cols] for p in parts], ignore_index=True) if parts else pd.DataFrame(columns=cols)


def rule_confusion(rules: pd.DataFrame, classes: Mapping[int, str] = CLASSES) -> pd.DataFrame:
    """Return the rule's confusion counts: one row per method, trachea source and true class, one
    column per predicted class (and ``undetermined``)."""
    names = {**{int(c): n for c, n in classes.items()}, UNDETERMINED: "undetermined"}
    rows = []
    for (method, trachea), g in rules.groupby(["method", "trachea"], sort=False):
        for c, cname in sorted(classes.items()):
            sub = g[g["cls"] == c]
            counts = {n: int((sub["rule_cls"] == k).sum()) for k, n in names.items()}
            rows.append({"method": method, "trachea": trachea, "true": cname, **counts})
    return pd.DataFrame(rows, columns=["method", "trachea", "true", *names.values()])


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
