"""Tables, paired tests and figures of the joint-training stage (notebook 04).

Built from the per-subject tables :func:`fetalcmr.joint.run_joint` leaves (segmentation metrics
and class predictions per compared method); nothing here trains or predicts, and the stage module
does not import this one (docs/design.md §8).

>>> [method_label(m) for m in ("lambda0", "joint_seed1")]
['fine-tuned, λ = 0 (control)', 'joint fine-tuned, classifier seed 1']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from fetalcmr.anatomy import CLASSES
from fetalcmr.joint import method_scores
from fetalcmr.methods import METHODS
from fetalcmr.metrics import subject_mean_dice
from fetalcmr.stats import finite_mean, paired_wilcoxon


def method_label(name: str) -> str:
    """Return the display name of a compared method (its :mod:`fetalcmr.methods` label) or of a
    run that is not one (``joint_seed1`` → joint, classifier seed 1; ``sweep_2`` → λ sweep, λ = 2)."""
    if name.startswith("joint_seed"):
        return f"joint fine-tuned, classifier seed {name[len('joint_seed'):]}"
    if name.startswith("sweep_"):
        return f"λ sweep, λ = {name[len('sweep_'):]}"
    return METHODS[name].label if name in METHODS else name



def correct_ids(cls_pred: pd.DataFrame, method: str) -> set[str]:
    """Return the ids that ``method`` classified correctly."""
    g = cls_pred[cls_pred["method"] == method]
    return set(g.loc[g["label"] == g["pred"], "id"])



def comparison_table(seg: pd.DataFrame, cls_pred: pd.DataFrame, methods: Sequence[str],
                     daa: int = 2) -> pd.DataFrame:
    """Return one row per method: Dice/HD95/ASD on all test subjects, the DAA subset and the
    correctly classified DAA subset, and balanced accuracy (HD95/ASD: mean over finite values)."""
    scores = method_scores(seg, cls_pred, methods)
    rows = []
    for m in methods:
        s = seg[seg["method"] == m]
        good = correct_ids(cls_pred, m)
        daa_s = s[s["cls"] == daa]
        daa_ok = daa_s[daa_s["id"].isin(good)]
        rows.append({
            "method": m, "description": method_label(m),
            "dice": scores[m]["dice"], "hd95_mm": finite_mean(s["hd95"]), "asd_mm": finite_mean(s["asd"]),
            "dice_daa": finite_mean(daa_s["dice"]), "n_daa": daa_s["id"].nunique(),
            "dice_daa_correct": finite_mean(daa_ok["dice"]), "n_daa_correct": daa_ok["id"].nunique(),
            "balanced_accuracy": scores[m]["balanced_accuracy"],
        })
    return pd.DataFrame(rows)



def per_label_table(seg: pd.DataFrame, methods: Sequence[str], classes: Mapping[int, str] = CLASSES) -> pd.DataFrame:
    """Return mean Dice, HD95 and ASD per method, anomaly class and label (finite values only)."""
    rows = []
    for m in methods:
        for (c, _lab, name), g in seg[seg["method"] == m].groupby(["cls", "label", "name"]):
            rows.append({"method": m, "class": classes.get(int(c), str(c)), "label": name,
                         "dice": finite_mean(g["dice"]), "hd95_mm": finite_mean(g["hd95"]),
                         "asd_mm": finite_mean(g["asd"]), "n": len(g)})
    return pd.DataFrame(rows)



def paired_test(seg: pd.DataFrame, a: str, b: str, ids: set[str] | None = None) -> dict[str, Any]:
    """Return the paired Wilcoxon signed-rank test of per-subject mean Dice, method ``a`` vs ``b``.

    Keys: ``n``, ``mean_a``, ``mean_b``, ``mean_diff`` (a − b) with its 95 % paired bootstrap interval
    ``diff_ci_low``/``diff_ci_high``, ``statistic``, ``p`` (two-sided;
    ``nan`` with fewer than 2 pairs or all differences zero; :func:`fetalcmr.stats.paired_wilcoxon`).
    """
    wide = subject_mean_dice(seg).reset_index().pivot_table(index="id", columns="method", values="dice")
    if a not in wide or b not in wide:
        return {"n": 0, "mean_a": np.nan, "mean_b": np.nan, "mean_diff": np.nan, "diff_ci_low": np.nan,
                "diff_ci_high": np.nan, "statistic": np.nan, "p": np.nan}
    wide = wide[[a, b]].dropna()
    if ids is not None:
        wide = wide[wide.index.isin(ids)]
    t = paired_wilcoxon(wide[a], wide[b])
    return {"n": t.n, "mean_a": t.mean_a, "mean_b": t.mean_b, "mean_diff": t.mean_diff,
            "diff_ci_low": t.diff_ci_low, "diff_ci_high": t.diff_ci_high, "statistic": t.statistic, "p": t.p_value}



def paired_tests(seg: pd.DataFrame, cls_pred: pd.DataFrame, pairs: Sequence[tuple[str, str]],
                 daa: int = 2) -> pd.DataFrame:
    """Return Wilcoxon tests for each (a, b) pair on all subjects, DAA, and DAA classified correctly by both."""
    ids_daa = set(seg.loc[seg["cls"] == daa, "id"])
    rows = []
    for a, b in pairs:
        both_ok = correct_ids(cls_pred, a) & correct_ids(cls_pred, b)
        for subset, ids in (("all", None), ("DAA", ids_daa), ("DAA classified correctly", ids_daa & both_ok)):
            rows.append({"a": a, "b": b, "subset": subset, **paired_test(seg, a, b, ids)})
    return pd.DataFrame(rows)



def sweep_table(seg: pd.DataFrame, cls_pred: pd.DataFrame, lams: Sequence[float],
                prefix: str = "sweep_") -> pd.DataFrame:
    """Return one row per λ of the sweep: mean Dice, DAA Dice, balanced accuracy."""
    names = [f"{prefix}{lam:g}" for lam in lams]
    scores = method_scores(seg, cls_pred, names)
    rows = []
    for lam, m in zip(lams, names, strict=True):
        s = seg[seg["method"] == m]
        rows.append({"lambda": float(lam), "dice": scores[m]["dice"],
                     "dice_daa": finite_mean(s.loc[s["cls"] == 2, "dice"]),
                     "balanced_accuracy": scores[m]["balanced_accuracy"]})
    return pd.DataFrame(rows)



def verdict(comparison: pd.DataFrame, tests: pd.DataFrame, alpha: float = 0.05) -> str:
    """Return plain sentences: did joint training reproduce the paper's effects on this cohort?

    The paper reports balanced accuracy 0.99 (0.01) after joint training, kept at the level of
    the separate classifier, and better anatomy of correctly classified DAA cases.
    """
    row = comparison.set_index("method")
    lines = []
    if {"joint", "separate"} <= set(row.index):
        j, s = row.loc["joint"], row.loc["separate"]
        kept = j["balanced_accuracy"] >= s["balanced_accuracy"] - 0.02
        lines.append(f"Balanced accuracy: joint {j['balanced_accuracy']:.2f} vs separate {s['balanced_accuracy']:.2f} "
                     f"(paper: 0.99 after joint training) — classification "
                     f"{'kept' if kept else 'NOT kept'} at the separate level"
                     f"{' and at the paper level' if j['balanced_accuracy'] >= 0.97 else ', below the paper level'}.")
    for subset in ("all", "DAA classified correctly"):
        t = tests[(tests["a"] == "joint") & (tests["b"] == "separate") & (tests["subset"] == subset)]
        if t.empty:
            continue
        t = t.iloc[0]
        if t["n"] == 0 or not np.isfinite(t["mean_diff"]):
            lines.append(f"Dice, {subset}: no paired subjects to compare.")
            continue
        sig = np.isfinite(t["p"]) and t["p"] < alpha
        better = t["mean_diff"] > 0
        effect = ("significantly better" if sig and better else "significantly worse" if sig
                  else "not significantly different")
        p_text = f"p = {t['p']:.3g}" if np.isfinite(t["p"]) else "p undefined"
        lines.append(f"Mean Dice, {subset} (n = {int(t['n'])}): joint {t['mean_a']:.3f} vs separate "
                     f"{t['mean_b']:.3f} (difference {t['mean_diff']:+.3f}, Wilcoxon {p_text}): {effect}.")
    c = tests[(tests["a"] == "joint") & (tests["b"] == "lambda0") & (tests["subset"] == "all")]
    if not c.empty and c.iloc[0]["n"] > 0:
        c = c.iloc[0]
        p_text = f"p = {c['p']:.3g}" if np.isfinite(c["p"]) else "p undefined"
        adds = np.isfinite(c["p"]) and c["p"] < alpha and c["mean_diff"] > 0
        lines.append(f"Against the λ = 0 control (same steps): difference {c['mean_diff']:+.3f} ({p_text}); "
                     + ("the classification term adds to what extra training gives." if adds else
                        "no evidence that the classification term, rather than the extra steps, changes Dice."))
    sel = (tests["a"] == "joint") & (tests["b"] == "separate") & (tests["subset"] == "DAA classified correctly")
    daa_ok = tests[sel]
    reproduced = (not daa_ok.empty and daa_ok.iloc[0]["n"] > 0 and bool(np.isfinite(daa_ok.iloc[0]["p"]))
                  and daa_ok.iloc[0]["p"] < alpha and daa_ok.iloc[0]["mean_diff"] > 0)
    bacc_ok = "joint" in row.index and row.loc["joint", "balanced_accuracy"] >= 0.97
    judged = not daa_ok.empty and daa_ok.iloc[0]["n"] > 0
    seg_text = ("REPRODUCED" if reproduced else "NOT reproduced") if judged else \
        "not judged (no paired ground-truth Dice of correctly classified DAA subjects)"
    lines.append("Verdict on this cohort: the paper's balanced accuracy after joint training was "
                 f"{'REPRODUCED' if bacc_ok else 'NOT reproduced'}; its better segmentation of correctly "
                 f"classified DAA cases was {seg_text}.")
    return "\n".join(lines)



def plot_paired_dice(seg: pd.DataFrame, a: str, b: str, ax: Any, classes: Mapping[int, str] = CLASSES) -> None:
    """Scatter per-subject mean Dice of method ``b`` (x) against ``a`` (y), coloured by anomaly class."""
    d = subject_mean_dice(seg, ("method", "id", "cls")).reset_index()
    wide = d.pivot_table(index=["id", "cls"], columns="method", values="dice").reset_index()
    colours = {0: "tab:blue", 1: "tab:orange", 2: "tab:red"}
    for c, name in classes.items():
        g = wide[wide["cls"] == c]
        if a in g and b in g and len(g):
            ax.scatter(g[b], g[a], s=28, color=colours.get(c, "k"), label=f"{name} (n={len(g)})", alpha=0.85)
    vals = wide[[m for m in (a, b) if m in wide]].to_numpy(float)
    lo = float(np.nanmin(vals)) if np.isfinite(vals).any() else 0.0
    hi = float(np.nanmax(vals)) if np.isfinite(vals).any() else 1.0
    pad = 0.02 + 0.05 * (hi - lo)
    lo, hi = max(0.0, lo - pad), min(1.0, hi + pad)
    ax.plot([lo, hi], [lo, hi], color="0.5", ls="--", lw=1)
    ax.set(xlim=(lo, hi), ylim=(lo, hi),
           xlabel=f"mean Dice, {method_label(b)}", ylabel=f"mean Dice, {method_label(a)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="above the line: joint better", title_fontsize=8)



def plot_sweep(table: pd.DataFrame, axes: Sequence[Any]) -> None:
    """Plot Dice (and DAA Dice) and balanced accuracy against λ on two axes."""
    x = table["lambda"]
    axes[0].plot(x, table["dice"], marker="o", label="all subjects")
    axes[0].plot(x, table["dice_daa"], marker="s", label="DAA")
    axes[0].set(xlabel="λ", ylabel="mean Dice", title="segmentation")
    axes[1].plot(x, table["balanced_accuracy"], marker="o", color="tab:green")
    axes[1].set(xlabel="λ", ylabel="balanced accuracy", title="classification", ylim=(0, 1.05))
    for ax in axes:
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xticks(list(x), [f"{v:g}" for v in x])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)



def plot_training_curves(histories: Mapping[str, pd.DataFrame], axes: Sequence[Any]) -> None:
    """Plot per epoch: segmentation loss, cross-entropy, validation Dice (vs LP) and balanced accuracy."""
    panels = [("seg", "training segmentation loss"), ("train_ce", "training cross-entropy"),
              ("val_dice", "validation Dice vs LP"), ("val_bacc", "validation balanced accuracy")]
    for ax, (col, title) in zip(axes, panels, strict=True):
        for name, h in histories.items():
            if col == "seg":
                y = h.get("train_lp", 0) + h.get("binary_weight", 1.0) * h.get("train_binary", 0)
            elif col in h:
                y = h[col]
            else:
                continue
            ax.plot(h["epoch"], y, marker="o", ms=3, label=method_label(name))
        ax.set(xlabel="epoch", title=title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
