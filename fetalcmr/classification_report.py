"""Tables and figures of the classification stage (notebook 03), from its test predictions.

Scores, confusions, reliability and the DAA-ratio view are computed from the prediction table
:func:`fetalcmr.classification.run_classification` leaves; nothing here trains or predicts, and the
stage module does not import this one (docs/design.md §8).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from fetalcmr.anatomy import CLASSES
from fetalcmr.calibration import expected_calibration_error, reliability_table
from fetalcmr.classification import SELECT, ClassificationRun, input_channels, probs_of
from fetalcmr.classmetrics import balanced_accuracy, bootstrap_balanced_accuracy, confusion, per_class_scores
from fetalcmr.stats import mean_sd


def run_scores(predictions: pd.DataFrame, n_bins: int = 10) -> pd.DataFrame:
    """Return one row per (kind, seed): balanced accuracy, accuracy and ECE on the test subjects."""
    rows = []
    for (kind, seed), g in predictions.groupby(["kind", "seed"], sort=False):
        rows.append({"kind": kind, "seed": int(seed),
                     "balanced_accuracy": balanced_accuracy(g["label"], g["pred"]),
                     "accuracy": float((g["label"] == g["pred"]).mean()),
                     "ece": expected_calibration_error(probs_of(g), g["label"], n_bins)})
    return pd.DataFrame(rows)



def summary_table(runs: Sequence[ClassificationRun], n_bins: int = 10) -> pd.DataFrame:
    """Return one row per input type: channels, balanced accuracy and ECE as mean (sd) over seeds,
    the 95 % bootstrap interval over test subjects of the seed-mean balanced accuracy, and costs."""
    preds = pd.concat([r.predictions for r in runs], ignore_index=True)
    scores = run_scores(preds, n_bins)
    rows = []
    for kind in dict.fromkeys(r.kind for r in runs):
        s = scores[scores["kind"] == kind]
        mine = [r for r in runs if r.kind == kind]
        ci = bootstrap_balanced_accuracy(preds[preds["kind"] == kind])
        rows.append({
            "input": kind, "channels": input_channels(kind), "seeds": len(mine),
            "balanced_accuracy": mean_sd(s["balanced_accuracy"]),
            "bacc_mean": float(s["balanced_accuracy"].mean()),
            "bacc_sd": float(s["balanced_accuracy"].std(ddof=1)) if len(s) > 1 else float("nan"),
            "bacc_ci95": _interval_cell(float(s["balanced_accuracy"].mean()), *ci),
            "bacc_ci_low": ci[0], "bacc_ci_high": ci[1],
            "ece": mean_sd(s["ece"]),
            "train_s_per_run": float(np.mean([r.train_seconds for r in mine])),
            "infer_s_per_subject": float(np.mean([r.infer_seconds_per_subject for r in mine])),
        })
    return pd.DataFrame(rows)



def selection_table(runs: Sequence[ClassificationRun]) -> pd.DataFrame:
    """Return one row per run with what its validation history says about which epoch to keep
    (validation split only; the test subjects play no part): the highest validation balanced
    accuracy, the first epoch reaching it and how many epochs tie there, the epoch of the lowest
    validation loss, the validation loss at each of those epochs and at the last, and the epoch the
    run keeps (:data:`fetalcmr.classification.SELECT`)."""
    rows = []
    for r in runs:
        h = r.history.dropna(subset=["val_bacc", "val_loss"])
        if h.empty:
            continue
        top = float(h["val_bacc"].max())
        at_top = h[h["val_bacc"] >= top - 1e-9]
        first = at_top.iloc[0]
        lowest = h.loc[h["val_loss"].idxmin()]
        last = h.iloc[-1]
        rows.append({"input": r.kind, "seed": r.seed, "epochs": int(r.history["epoch"].max()),
                     "val_bacc_max": top, "first_epoch_at_max": int(first["epoch"]),
                     "epochs_at_max": len(at_top), "val_loss_at_first_max": float(first["val_loss"]),
                     "epoch_min_val_loss": int(lowest["epoch"]), "val_loss_min": float(lowest["val_loss"]),
                     "val_loss_last": float(last["val_loss"]),
                     "kept_epoch": int(last["epoch"]) if SELECT == "last" else int(first["epoch"])})
    return pd.DataFrame(rows)


_EPS = 1e-9  # bootstrap bounds within rounding of 0 count as 0


def _interval_cell(mean: float, low: float, high: float, digits: int = 2) -> str:
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def paired_table(predictions: pd.DataFrame, pairs: Sequence[tuple[str, str]] | None = None) -> pd.DataFrame:
    """Paired differences in seed-mean balanced accuracy between input types on the same test subjects.

    One row per pair ``(a, b)`` (default: every pair, in order of appearance): both means, the
    difference ``a − b`` and its 95 % paired bootstrap interval over subjects, and the verdict
    "a better", "b better" or "not distinguishable" (the interval contains 0).
    """
    kinds = list(dict.fromkeys(predictions["kind"]))
    pairs = pairs or [(a, b) for i, a in enumerate(kinds) for b in kinds[i + 1:]]
    rows = []
    for a, b in pairs:
        pa, pb = predictions[predictions["kind"] == a], predictions[predictions["kind"] == b]
        ma, mb = (np.mean([balanced_accuracy(g["label"], g["pred"]) for _, g in x.groupby("seed")]) for x in (pa, pb))
        lo, hi = bootstrap_balanced_accuracy(pa, pb)
        verdict = f"{a} better" if lo > _EPS else f"{b} better" if hi < -_EPS else "not distinguishable"
        rows.append({"a": a, "b": b, "seeds": int(pa["seed"].nunique()), "n": int(pa["id"].nunique()),
                     "bacc_a": float(ma), "bacc_b": float(mb), "diff": float(ma - mb),
                     "diff_ci95": _interval_cell(float(ma - mb), lo, hi, 3), "ci_low": lo, "ci_high": hi,
                     "verdict": verdict})
    return pd.DataFrame(rows)


def per_class_table(predictions: pd.DataFrame, classes: Mapping[int, str] = CLASSES) -> pd.DataFrame:
    """Return per input type and class: precision, recall and F1 as mean (sd) over seeds, and support."""
    rows = []
    for kind, g in predictions.groupby("kind", sort=False):
        per_seed = [per_class_scores(gs["label"], gs["pred"], classes) for _, gs in g.groupby("seed")]
        stacked = pd.concat(per_seed)
        for c, name in sorted(classes.items()):
            sc = stacked[stacked["class"] == c]
            rows.append({"input": kind, "class": name,
                         **{m: mean_sd(sc[m]) for m in ("precision", "recall", "f1")},
                         "support": int(sc["support"].iloc[0])})
    return pd.DataFrame(rows)



def pooled_confusion(predictions: pd.DataFrame, kind: str, n_classes: int = len(CLASSES)) -> np.ndarray:
    """Return the confusion matrix of input ``kind`` summed over its seeds."""
    g = predictions[predictions["kind"] == kind]
    return confusion(g["label"], g["pred"], n_classes)



def pooled_reliability(predictions: pd.DataFrame, kind: str, n_bins: int = 10) -> pd.DataFrame:
    """Return the reliability table of input ``kind`` pooled over its seeds."""
    g = predictions[predictions["kind"] == kind]
    return reliability_table(probs_of(g), g["label"], n_bins)



def with_metadata(predictions: pd.DataFrame, items: Sequence[Mapping[str, Any]],
                  keys: Sequence[str] = ("arch_side", "coa_isthmus_ratio", "daa_minor_ratio", "ga_weeks")
                  ) -> pd.DataFrame:
    """Return ``predictions`` with the cohort metadata ``keys`` of each subject joined on ``id``."""
    meta = pd.DataFrame([{"id": str(it["id"]), **{k: (it.get("meta") or {}).get(k, np.nan) for k in keys}}
                         for it in items])
    return predictions.merge(meta, on="id", how="left")



def confusion_cases(predictions: pd.DataFrame, items: Sequence[Mapping[str, Any]],
                    classes: Mapping[int, str] = CLASSES) -> pd.DataFrame:
    """Return per input type and (true, predicted) class pair the share of wrong calls and metadata.

    Only misclassified pairs are listed, with how many subject-seed predictions fell there and the
    mean of the class-shape metadata of those subjects (e.g. the DAA minor-arch ratio).
    """
    df = with_metadata(predictions, items)
    wrong = df[df["label"] != df["pred"]]
    rows = []
    for (kind, t, p), g in wrong.groupby(["kind", "label", "pred"], sort=False):
        n_total = int((df["kind"] == kind).sum())
        row = {"input": kind, "true": classes[int(t)], "predicted": classes[int(p)], "predictions": len(g),
               "share_of_all": len(g) / max(n_total, 1), "subjects": g["id"].nunique()}
        for k in ("daa_minor_ratio", "coa_isthmus_ratio"):
            v = pd.to_numeric(g[k], errors="coerce").dropna()
            row[f"mean_{k}"] = float(v.mean()) if len(v) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)



def describe_confusions(predictions: pd.DataFrame, items: Sequence[Mapping[str, Any]],
                        classes: Mapping[int, str] = CLASSES, daa: int = 2) -> str:
    """Return sentences naming each input type's most frequent confusion and, for DAA subjects,
    the minor-arch ratio of those called DAA against those called otherwise."""
    df = with_metadata(predictions, items)
    lines = []
    for kind, g in df.groupby("kind", sort=False):
        wrong = g[g["label"] != g["pred"]]
        if wrong.empty:
            lines.append(f"{kind}: no test subject misclassified by any seed.")
            continue
        (t, p), n = next(iter(wrong.groupby(["label", "pred"]).size().sort_values(ascending=False).items()))
        text = (f"{kind}: {len(wrong)} of {len(g)} subject-seed predictions wrong; most often "
                f"{classes[int(t)]} called {classes[int(p)]} ({n}).")
        d = g[g["label"] == daa]
        ratio = pd.to_numeric(d["daa_minor_ratio"], errors="coerce")
        ok, missed = ratio[d["pred"] == daa].dropna(), ratio[d["pred"] != daa].dropna()
        if len(missed) and len(ok):
            text += (f" DAA minor-arch ratio: {missed.mean():.2f} where DAA was missed vs {ok.mean():.2f} "
                     "where it was found.")
        elif len(missed):
            text += f" Every DAA prediction missed (minor-arch ratio {missed.mean():.2f} on average)."
        lines.append(text)
    return "\n".join(lines)



def plot_confusions(predictions: pd.DataFrame, kinds: Sequence[str], classes: Mapping[int, str] = CLASSES) -> Any:
    """Return a figure with one confusion matrix per input type (counts summed over seeds)."""
    import matplotlib.pyplot as plt

    from fetalcmr.classmetrics import plot_confusion

    fig, axes = plt.subplots(1, len(kinds), figsize=(3.6 * len(kinds), 3.4), squeeze=False)
    names = [classes[c] for c in sorted(classes)]
    for ax, kind in zip(axes[0], kinds, strict=True):
        n_seeds = predictions.loc[predictions["kind"] == kind, "seed"].nunique()
        plot_confusion(pooled_confusion(predictions, kind, len(classes)), names, ax,
                       title=f"{kind} ({n_seeds} seed{'s' if n_seeds != 1 else ''})")
    fig.tight_layout()
    return fig



def plot_reliability_by_kind(predictions: pd.DataFrame, kinds: Sequence[str], n_bins: int = 10) -> Any:
    """Return a figure: reliability curves per input type (left) and confidence histograms (right)."""
    import matplotlib.pyplot as plt

    from fetalcmr.calibration import plot_reliability

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    plot_reliability({k: pooled_reliability(predictions, k, n_bins) for k in kinds}, axes[0],
                     title="reliability (pooled over seeds)")
    for kind in kinds:
        conf = probs_of(predictions[predictions["kind"] == kind]).max(1)
        axes[1].hist(conf, bins=np.linspace(0, 1, n_bins + 1), histtype="step", lw=1.5, label=kind)
    axes[1].set(xlabel="confidence (top class)", ylabel="subject-seed predictions", title="confidence")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig



def plot_daa_ratio(predictions: pd.DataFrame, items: Sequence[Mapping[str, Any]], kinds: Sequence[str],
                   daa: int = 2) -> Any:
    """Return a figure: per DAA test subject, the share of seeds calling it DAA against its minor-arch ratio."""
    import matplotlib.pyplot as plt

    df = with_metadata(predictions, items)
    d = df[df["label"] == daa].copy()
    d["called_daa"] = (d["pred"] == daa).astype(float)
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for i, kind in enumerate(kinds):
        g = d[d["kind"] == kind].groupby("id").agg(ratio=("daa_minor_ratio", "first"), share=("called_daa", "mean"))
        ratio = pd.to_numeric(g["ratio"], errors="coerce")
        ax.scatter(ratio, g["share"] + (i - 1) * 0.03, label=kind, s=30, alpha=0.8)
    ax.set(xlabel="DAA minor (left) / dominant arch diameter ratio", ylabel="share of seeds calling it DAA",
           ylim=(-0.1, 1.1), title="DAA test subjects")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
