"""Figures and tables of notebook 01 (label propagation): overlays, Dice by method, training curve.

Inputs are the tables of :mod:`fetalcmr.propagation` and :mod:`fetalcmr.registration_baselines`
(per-label and per-subject scores with a ``method`` column); nothing here trains or registers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fetalcmr.anatomy import ARCH_LOOPS, LABEL_INDEX
from fetalcmr.io import load_nifti
from fetalcmr.methods import METHODS, methods_of
from fetalcmr.stats import finite_mean

if TYPE_CHECKING:
    import matplotlib.figure

#: The stage whose methods (ids, labels, colours, table order) :mod:`fetalcmr.methods` lists.
STAGE = "01_label_propagation"


def method_label(method: str) -> str:
    """Return the display label of a method of this stage (the id itself for one the registry lacks)."""
    return METHODS[method].label if method in METHODS else method


def arch_loops(labelmap: np.ndarray) -> int:
    """Return β1 (independent loops) of the aorta (AO ∪ DAO) in ``labelmap``."""
    from fetalcmr.topology import betti_numbers

    return betti_numbers(np.isin(labelmap, [LABEL_INDEX["AO"], LABEL_INDEX["DAO"]]))[1]


def add_arch_topology(per_subject: pd.DataFrame, predictions: Mapping[str, str]) -> pd.DataFrame:
    """Return ``per_subject`` with ``arch_loops`` and ``arch_loops_ok`` (β1 of AO∪DAO as the class expects)."""
    out = per_subject.copy()
    loops = [arch_loops(np.rint(load_nifti(predictions[sid]).array).astype(int)) for sid in out["id"]]
    out["arch_loops"] = loops
    out["arch_loops_ok"] = [int(n == ARCH_LOOPS.get(int(c), -1)) for n, c in zip(loops, out["class"])]
    return out


def evaluate_methods(lp_dataset: Mapping[str, Any], lp_subjects: pd.DataFrame, baselines: pd.DataFrame,
                     labels: Mapping[int, str], progress: bool = True) -> dict[str, pd.DataFrame]:
    """Return ``per_label``, ``per_subject`` and ``timing`` tables for every method (reads ``gt``).

    Methods: ``voxelmorph`` on the test subjects the baselines registered (same pairs),
    ``voxelmorph_network`` on the same pairs without the per-subject refinement (when
    ``lp_subjects`` has ``lp_network``), ``voxelmorph_all_test`` on every test subject,
    ``voxelmorph_fitted`` on the training and validation subjects the network was trained on,
    and each baseline method.
    """
    from fetalcmr.propagation import evaluate_against_truth

    test = list(lp_dataset.get("testing", []) or [])
    fitted = list(lp_dataset.get("training", []) or []) + list(lp_dataset.get("validation", []) or [])
    same = set(baselines["id"].astype(str)) if len(baselines) else set()
    vxm_pred = {str(it["id"]): it["lp"] for it in test + fitted}
    runs: list[tuple[str, list[Mapping[str, Any]], Mapping[str, str]]] = [
        ("voxelmorph", [it for it in test if str(it["id"]) in same], vxm_pred),
    ]
    timings = {"voxelmorph": lp_subjects, "voxelmorph_all_test": lp_subjects, "voxelmorph_fitted": lp_subjects}
    if "lp_network" in lp_subjects:
        net = lp_subjects.dropna(subset=["lp_network"])
        runs.append(("voxelmorph_network", [it for it in test if str(it["id"]) in same],
                     dict(zip(net["id"].astype(str), net["lp_network"]))))
        timings["voxelmorph_network"] = net.drop(columns=["seconds", "fold_fraction", "jac_min"]).rename(
            columns={"seconds_network": "seconds", "fold_fraction_network": "fold_fraction"}).assign(jac_min=np.nan)
    runs += [
        ("voxelmorph_all_test", test, vxm_pred),
        ("voxelmorph_fitted", fitted, vxm_pred),
    ]
    for method, sub in baselines.groupby("method", sort=False) if len(baselines) else []:
        ids = set(sub["id"].astype(str))
        preds = dict(zip(sub["id"].astype(str), sub["labels"]))
        runs.append((str(method), [it for it in test if str(it["id"]) in ids], preds))
    per_label, per_subject, timing = [], [], []
    for method, items, preds in runs:
        lab, subj = evaluate_against_truth(items, preds, labels, method, progress=progress)
        if subj.empty:
            continue
        per_label.append(lab)
        per_subject.append(add_arch_topology(subj, preds))
        src = timings.get(method, baselines[baselines["method"] == method] if len(baselines) else lp_subjects)
        t = src[src["id"].astype(str).isin(set(subj["id"]))][["id", "seconds", "fold_fraction", "jac_min"]].copy()
        t.insert(0, "method", method)
        timing.append(t)
    return {"per_label": pd.concat(per_label, ignore_index=True) if per_label else pd.DataFrame(),
            "per_subject": pd.concat(per_subject, ignore_index=True) if per_subject else pd.DataFrame(),
            "timing": pd.concat(timing, ignore_index=True) if timing else pd.DataFrame()}


def methods_table(per_subject: pd.DataFrame, per_label: pd.DataFrame, timing: pd.DataFrame,
                  classes: Mapping[int, str]) -> pd.DataFrame:
    """Return one row per method: mean Dice overall and per class, HD95, ASD, foreground Dice, folding, time.

    ``per_subject``: ``method, id, class, mean_dice, fg_dice_binary, arch_loops_ok``;
    ``per_label``: ``method, id, class, label, dice, hd95, asd``; ``timing``: ``method, id,
    seconds, fold_fraction``. Dice is averaged over labels per subject, then over subjects
    (mean ± SD); HD95 is the median over subject-labels (infinite when a label is lost);
    ASD the mean over finite values.
    """
    rows = []
    for method, sub in per_subject.groupby("method", sort=False):
        lab = per_label[per_label["method"] == method]
        tim = timing[timing["method"] == method]
        row: dict[str, Any] = {
            "method": method_label(str(method)),
            "subjects": len(sub),
            "dice_mean": sub["mean_dice"].mean(),
            "dice_sd": sub["mean_dice"].std(ddof=0),
        }
        for cls, name in classes.items():
            row[f"dice_{name}"] = sub.loc[sub["class"] == cls, "mean_dice"].mean()
        row.update({
            "hd95_median_mm": float(np.median(lab["hd95"].dropna())) if len(lab) else float("nan"),
            "asd_mean_mm": finite_mean(lab["asd"]),
            "fg_dice_vs_manual": sub["fg_dice_binary"].mean(),
            "arch_topology_ok": sub["arch_loops_ok"].mean() if "arch_loops_ok" in sub else float("nan"),
            "fold_percent": 100 * tim["fold_fraction"].mean(),
            "seconds_per_subject": tim["seconds"].mean(),
        })
        rows.append(row)
    return pd.DataFrame(rows)


def dice_by_method_figure(per_label: pd.DataFrame, labels: Mapping[int, str],
                          title: str = "") -> matplotlib.figure.Figure:
    """Return box plots of per-label Dice (one box per method within each label, in the registry's
    order and colours)."""
    import matplotlib.pyplot as plt

    order = [m.id for m in methods_of(STAGE)]
    methods = [m for m in order if m in set(per_label["method"])] + \
        [m for m in per_label["method"].unique() if m not in order]
    fg = [lab for lab in labels if lab != 0]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.28 * len(fg) * len(methods) + 1.5), 3.6), constrained_layout=True)
    width = 0.8 / len(methods)
    tab10 = plt.get_cmap("tab10")
    for k, method in enumerate(methods):
        colour = METHODS[method].colour if method in METHODS else tab10(k)
        sub = per_label[per_label["method"] == method]
        data = [sub.loc[sub["label"] == lab, "dice"].dropna().to_numpy() for lab in fg]
        pos = np.arange(len(fg)) + (k - (len(methods) - 1) / 2) * width
        bp = ax.boxplot([d if len(d) else [np.nan] for d in data], positions=pos, widths=width * 0.9,
                        patch_artist=True, showfliers=True, flierprops={"markersize": 2})
        for patch in bp["boxes"]:
            patch.set_facecolor(colour)
            patch.set_alpha(0.7)
        ax.plot([], [], "s", color=colour, label=method_label(method))
    ax.set_xticks(np.arange(len(fg)))
    ax.set_xticklabels([labels[lab] for lab in fg], fontsize=8)
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=len(methods), loc="lower left")
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def training_curve_figure(history: pd.DataFrame, title: str = "", window: int = 25) -> matplotlib.figure.Figure:
    """Return the registration network's loss terms against iteration (raw and running mean)."""
    import matplotlib.pyplot as plt

    terms = [("loss", "total"), ("sim", "1 − NCC" if "sim" in history else "similarity"),
             ("dice", "1 − Dice (foreground)"), ("smooth", "smoothness |∇v|²")]
    fig, axes = plt.subplots(1, len(terms), figsize=(3.0 * len(terms), 2.8), constrained_layout=True)
    w = max(1, min(window, len(history) // 5 or 1))
    for ax, (col, name) in zip(axes, terms):
        ax.plot(history["iteration"], history[col], color="0.75", lw=0.6)
        ax.plot(history["iteration"], history[col].rolling(w, min_periods=1).mean(), color="C0", lw=1.4)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _axial_level(labelmap: np.ndarray) -> int:
    """Return the axial index with the most aorta (AO ∪ DAO) voxels: the arch level."""
    aorta = np.isin(labelmap, [LABEL_INDEX["AO"], LABEL_INDEX["DAO"]])
    counts = aorta.sum(axis=(0, 1))
    return int(np.argmax(counts)) if counts.any() else labelmap.shape[2] // 2


def overlays_figure(rows: Sequence[Mapping[str, Any]], title: str = "") -> matplotlib.figure.Figure:
    """Return a grid: one row per example (atlas, subject, propagated labels, truth), axial at the arch.

    Each row is ``{"name", "atlas_image", "atlas_labels", "image", "lp", "gt" (or None)}`` (arrays).
    The slice is the one with most aorta in the propagated labels (the atlas: in its own labels).
    Radiological display: the subject's Right on the viewer's left, Anterior up.
    """
    import matplotlib.pyplot as plt

    from fetalcmr.render import label_cmap

    cols = ["atlas (labels)", "subject image", "propagated labels", "truth"]
    fig, axes = plt.subplots(len(rows), 4, figsize=(9.6, 2.55 * len(rows)), squeeze=False, constrained_layout=True)
    cmap = label_cmap(12)

    def show(ax: Any, image: np.ndarray, lab: np.ndarray | None, k: int) -> None:
        sl = image[:, :, k].T
        lo, hi = np.percentile(image, [1, 99])
        ax.imshow(sl, cmap="gray", origin="lower", vmin=lo, vmax=hi, interpolation="nearest")
        if lab is not None:
            ax.imshow(np.ma.masked_equal(lab[:, :, k].T, 0), cmap=cmap, vmin=0, vmax=11, alpha=0.55,
                      origin="lower", interpolation="nearest")
        ax.invert_xaxis()
        ax.set_xticks([])
        ax.set_yticks([])

    for r, row in enumerate(rows):
        k_sub = _axial_level(row["lp"])
        show(axes[r, 0], row["atlas_image"], row["atlas_labels"], _axial_level(row["atlas_labels"]))
        show(axes[r, 1], row["image"], None, k_sub)
        show(axes[r, 2], row["image"], row["lp"], k_sub)
        if row.get("gt") is not None:
            show(axes[r, 3], row["image"], row["gt"], k_sub)
        else:
            axes[r, 3].axis("off")
            axes[r, 3].text(0.5, 0.5, "no ground truth", ha="center", va="center", fontsize=9)
        axes[r, 0].set_ylabel(str(row["name"]), fontsize=9)
        for c in range(4):
            if r == 0:
                axes[r, c].set_title(cols[c], fontsize=9)
        axes[r, 1].text(0.02, 0.02, f"z={k_sub}", transform=axes[r, 1].transAxes, color="white", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def reduction_notes(cfg: Any, cohort_grid: int, n_baseline: int, n_test: int) -> list[str]:
    """Return the MANIFEST notes recording this stage's reductions relative to the reference."""
    notes = [f"VoxelMorph trained {cfg.iterations} iterations (batch {cfg.batch_size}) with features "
             f"{tuple(cfg.nb_features)}; affine pre-alignment steps {tuple(cfg.affine_steps)}"]
    if cfg.grid != cohort_grid:
        notes.append(f"registration on a {cfg.grid}^3 grid, displacement upsampled to the {cohort_grid}^3 cohort grid")
    if 0 < n_baseline < n_test:
        notes.append(f"classical baselines on {n_baseline} of {n_test} test subjects (stratified by class)")
    return notes
