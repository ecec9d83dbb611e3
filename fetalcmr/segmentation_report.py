"""Tables and figures of the segmentation stage (notebook 02), from :class:`SegmentationOutputs` tables.

Reads the per-subject tables :func:`fetalcmr.segmentation.run_segmentation` leaves (``per_label``,
``region``) and never trains or predicts; the stage module does not import this one (docs/design.md §8).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from fetalcmr.anatomy import CLASSES, LABEL_INDEX, LABELS
from fetalcmr.methods import get, methods_of
from fetalcmr.metrics import subject_mean_dice
from fetalcmr.segmentation import METHOD, STAGE
from fetalcmr.stats import mean_sd, paired_wilcoxon


def wilcoxon_tests(per_label: pd.DataFrame, reference: str = METHOD,
                   others: Sequence[str] = ("lp", "net_lp")) -> pd.DataFrame:
    """Return paired Wilcoxon signed-rank tests of per-subject mean Dice: ``reference`` vs each other,
    with the 95 % paired bootstrap interval of the mean difference.

    One row per comparison on the subjects both methods were evaluated on
    (:func:`fetalcmr.stats.paired_wilcoxon`: W and p are NaN with fewer than 2 subjects or no difference);
    the reference's mean is the column ``mean_dice_<its letter>``.
    """
    wide = subject_mean_dice(per_label).unstack("method")
    rows = []
    for other in others:
        if reference not in wide or other not in wide:
            continue
        pair = wide[[reference, other]].dropna()
        t = paired_wilcoxon(pair[reference], pair[other])
        rows.append({"comparison": f"{get(reference).label} vs {get(other).label}",
                     "n_subjects": t.n, f"mean_dice_{get(reference).letter}": t.mean_a, "mean_dice_other": t.mean_b,
                     "median_difference": t.median_diff, "mean_difference": t.mean_diff,
                     "diff_ci_low": t.diff_ci_low, "diff_ci_high": t.diff_ci_high, "subjects_improved": t.n_a_greater,
                     "wilcoxon_W": t.statistic, "p_value": t.p_value})
    return pd.DataFrame(rows)



def dice_table(per_label: pd.DataFrame, region: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    """Return ``metric`` as "mean (sd)" per vessel label (rows) and method (columns), plus the region row."""
    present = set(per_label["method"]) | set(region["method"])
    methods = [m for m in methods_of(STAGE) if m.id in present]
    rows = []
    for (_lab, name), grp in per_label.groupby(["label", "name"], sort=True):
        row = {"label": name}
        for m in methods:
            row[m.label] = mean_sd(grp.loc[grp["method"] == m.id, metric], 3) if m.multiclass else "–"
        rows.append(row)
    if metric in region:
        row = {"label": "vessel region (binary)"}
        for m in methods:
            row[m.label] = mean_sd(region.loc[region["method"] == m.id, metric], 3)
        rows.append(row)
    return pd.DataFrame(rows)



def by_class_table(per_label: pd.DataFrame, region: pd.DataFrame) -> pd.DataFrame:
    """Return mean (sd) per-subject mean Dice by anomaly class and method, and region Dice for (d)."""
    subj = subject_mean_dice(per_label, ("method", "class", "id")).reset_index()
    rows = []
    for cls in sorted(set(region["class"]), key=lambda c: list(CLASSES.values()).index(c)
                      if c in CLASSES.values() else 99):
        row: dict[str, Any] = {"class": cls, "n": int(region.loc[region["class"] == cls, "id"].nunique())}
        for m in methods_of(STAGE):
            if m.multiclass:
                vals = subj.loc[(subj["method"] == m.id) & (subj["class"] == cls), "dice"]
                row[f"{m.label} mean vessel Dice"] = mean_sd(vals, 3)
        for m in methods_of(STAGE):
            vals = region.loc[(region["method"] == m.id) & (region["class"] == cls), "dice"]
            if len(vals):
                row[f"{m.label} region Dice"] = mean_sd(vals, 3)
        rows.append(row)
    return pd.DataFrame(rows)



def plot_dice_boxplots(per_label: pd.DataFrame, region: pd.DataFrame, *, title: str = "") -> Any:
    """Return a figure: per-label Dice box plots by method (a–c) and the region Dice of all methods
    (registry labels and colours)."""
    import matplotlib.pyplot as plt

    methods = [m for m in methods_of(STAGE) if m.multiclass and m.id in set(per_label["method"])]
    names = [n for _, n in sorted(set(zip(per_label["label"], per_label["name"], strict=True)))]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [5, 1.3]})
    width = 0.8 / max(len(methods), 1)
    for k, m in enumerate(methods):
        data = [per_label.loc[(per_label["method"] == m.id) & (per_label["name"] == n), "dice"].dropna().to_numpy()
                for n in names]
        pos = np.arange(len(names)) + (k - (len(methods) - 1) / 2) * width
        bp = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, showfliers=True,
                        flierprops={"markersize": 2})
        for box in bp["boxes"]:
            box.set(facecolor=m.colour, alpha=0.8)
        ax.plot([], [], "s", color=m.colour, label=m.label)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set(ylabel="Dice vs ground truth", ylim=(0, 1), title="per-vessel Dice (test subjects)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left", ncol=len(methods))
    rmethods = [m for m in methods_of(STAGE) if m.id in set(region["method"])]
    bp = ax2.boxplot([region.loc[region["method"] == m.id, "dice"].to_numpy() for m in rmethods],
                     patch_artist=True, flierprops={"markersize": 2})
    for box, m in zip(bp["boxes"], rmethods, strict=True):
        box.set(facecolor=m.colour, alpha=0.8)
    ax2.set_xticks(range(1, len(rmethods) + 1), [f"({m.letter})" for m in rmethods])
    ax2.set(ylim=(0, 1), title="vessel region Dice")
    ax2.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig



def label_colours(n: int = len(LABELS)) -> np.ndarray:
    """Return an [n, 4] RGBA table: transparent background, each vessel in its :mod:`fetalcmr.render` colour."""
    from fetalcmr.render import label_colors

    table = np.zeros((n, 4))
    for label, rgb in label_colors(range(1, n)).items():
        table[label] = (*rgb, 1.0)
    return table



def coronal_projection(labels: np.ndarray) -> np.ndarray:
    """Return the [x, z] label map seen from the front: the most anterior vessel along each ray."""
    fg = labels > 0
    idx = (labels.shape[1] - 1) - np.argmax(fg[:, ::-1, :], axis=1)  # largest y (anterior) first
    proj = np.take_along_axis(labels, idx[:, None, :], axis=1)[:, 0, :]
    return np.where(fg.any(axis=1), proj, 0)



def pick_subjects(per_label: pd.DataFrame, method: str = METHOD) -> dict[str, str]:
    """Return ``{"best", "median", "worst": subject id}`` by per-subject mean Dice of ``method``."""
    scores = subject_mean_dice(per_label).unstack("method")[method].dropna().sort_values()
    return {"best": scores.index[-1], "median": scores.index[len(scores) // 2], "worst": scores.index[0]}



def plot_overlays(cases: Mapping[str, Mapping[str, Any]], *, method_label: str = get(METHOD).label,
                  title: str = "") -> Any:
    """Return a figure: per case (rows) the coronal label view of ``gt`` and prediction, and an axial slice.

    ``cases`` maps a row title to ``{"image": [x,y,z], "gt": [x,y,z], "pred": [x,y,z], "dice": float}``.
    Arrays are RAS (x to the subject's right): displayed in radiological convention (subject's
    right on the viewer's left), anterior (axial) or superior (front view) up.
    """
    import matplotlib.pyplot as plt

    colours = label_colours()
    fig, axes = plt.subplots(len(cases), 4, figsize=(12.5, 3.2 * len(cases)), squeeze=False)
    for r, (name, case) in enumerate(cases.items()):
        image, gt, pred = case["image"], case["gt"], case["pred"]
        ao = gt == LABEL_INDEX["AO"]
        z = int(np.argmax(ao.sum(axis=(0, 1)))) if ao.any() else gt.shape[2] // 2  # the arch's level
        views = [("ground truth (front view)", None, coronal_projection(gt)),
                 (f"{method_label} (front view)", None, coronal_projection(pred)),
                 (f"ground truth, axial z={z}", image[:, :, z], gt[:, :, z]),
                 (f"{method_label}, axial z={z}", image[:, :, z], pred[:, :, z])]
        for c, (label, background, lab) in enumerate(views):
            ax = axes[r, c]
            lab = lab[::-1]  # radiological display: the subject's right (+x) on the viewer's left
            background = None if background is None else background[::-1]
            if background is not None:
                ax.imshow(background.T, cmap="gray", origin="lower")
            else:
                ax.imshow(np.zeros(lab.T.shape), cmap="gray", origin="lower", vmin=0, vmax=1)
            ax.imshow(colours[np.clip(lab, 0, len(colours) - 1)].transpose(1, 0, 2), origin="lower",
                      alpha=0.85 if background is None else 0.6)
            ax.set_title(label, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(f"{name}\nmean Dice {case['dice']:.2f}", fontsize=9)
    handles = [plt.Line2D([], [], marker="s", ls="", color=colours[k], label=v) for k, v in LABELS.items() if k]
    fig.legend(handles=handles, loc="lower center", ncol=11, fontsize=7, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig
