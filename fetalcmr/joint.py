"""Joint fine-tuning of segmenter and classifier (notebook 04): runs, controls, λ sweep, ensemble,
evaluation and paired tests.

A joint pair is :class:`fetalcmr.models.JointNet` built from the separately trained LP+manual
segmenter (notebook 02) and ``softmax+image`` classifier (notebook 03, which pools its input to
its own grid). The engine's ``joint`` mode trains both with ``seg loss + λ · CE``; gradients of
the classification term reach the segmenter through its softmax. Controls: the separately
trained pair (no fine-tuning) and the same fine-tuning with λ = 0 (as many steps; only the
segmentation loss). Every run keeps its last weights (``select="last"``), so the runs compared
differ only in λ.

>>> sorted(METHOD_LABELS)[:2]
['ensemble', 'joint']
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn
from tqdm.auto import tqdm

from fetalcmr.anatomy import CLASSES, N_LABELS
from fetalcmr.cache import content_key
from fetalcmr.classification import build_classifier, segmenter_divisor
from fetalcmr.classmetrics import balanced_accuracy
from fetalcmr.config import ClassifierConfig, JointConfig, SegmenterConfig
from fetalcmr.ensemble import average_softmax, ensemble_classes
from fetalcmr.io import save_nifti
from fetalcmr.metrics import evaluate_segmentation
from fetalcmr.models import JointNet, make_segmenter
from fetalcmr.train import TrainConfig, TrainResult, forward_volume, train

#: Display names of the compared methods.
METHOD_LABELS: dict[str, str] = {
    "separate": "separately trained pair",
    "lambda0": "fine-tuned, λ = 0 (control)",
    "joint": "joint fine-tuned (λ = 14)",
    "ensemble": "joint ensemble (3 seeds)",
}


def make_joint(seg_cfg: SegmenterConfig, seg_state: Mapping[str, torch.Tensor], cls_cfg: ClassifierConfig,
               cls_state: Mapping[str, torch.Tensor], n_labels: int = N_LABELS) -> JointNet:
    """Return a :class:`JointNet` holding copies of the given segmenter and softmax+image classifier."""
    segmenter = make_segmenter(seg_cfg, n_labels)
    segmenter.load_state_dict(seg_state)
    classifier = build_classifier(cls_cfg, "softmax+image", n_labels)
    classifier.load_state_dict(cls_state)
    return JointNet(segmenter, classifier, with_image=True)


def joint_train_config(jcfg: JointConfig, seg_cfg: SegmenterConfig, *, lam: float, epochs: int,
                       seed: int) -> TrainConfig:
    """Return the engine configuration of one fine-tuning run (mode joint, last weights kept)."""
    return TrainConfig(mode="joint", epochs=epochs, batch_size=jcfg.batch_size, lr=jcfg.lr,
                       weight_decay=seg_cfg.weight_decay, aug_prob=seg_cfg.aug_prob, targets="lp+binary",
                       binary_weight=seg_cfg.binary_weight, lam=float(lam), seed=seed, balanced=True,
                       select="last")


def fine_tune(factory: Callable[[], nn.Module], train_samples: Sequence[dict[str, Any]],
              val_samples: Sequence[dict[str, Any]], cfg: TrainConfig, out_dir: str | os.PathLike[str], *,
              start_key: str, progress: bool = True) -> TrainResult:
    """Return the fine-tuned pair (the engine resumes, or loads a finished run with the same inputs).

    ``start_key`` identifies the starting weights (e.g. digests of the separate checkpoints).
    """
    run_key = content_key("joint", start_key, [s["id"] for s in train_samples])
    return train(factory, train_samples, val_samples, cfg, out_dir, run_key=run_key, progress=progress)


def stratified_subset(samples: Sequence[dict[str, Any]], n: int | None, seed: int = 0) -> list[dict[str, Any]]:
    """Return ``n`` samples drawn with the class proportions of ``samples`` (all when ``n`` is None)."""
    if n is None or n >= len(samples):
        return list(samples)
    rng = np.random.default_rng(seed)
    labels = np.array([int(s["label"]) for s in samples])
    picked: list[int] = []
    classes = np.unique(labels)
    quota = {c: max(1, round(n * np.mean(labels == c))) for c in classes}
    for c in classes:
        idx = rng.permutation(np.flatnonzero(labels == c))
        picked += idx[:quota[c]].tolist()
    return [samples[i] for i in sorted(picked)[:max(n, len(classes))]]


# --------------------------------------------------------------------------------------------
# prediction and evaluation


@torch.no_grad()
def pair_outputs(model: JointNet, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(segmentation softmax [12, ...], class probabilities [3])`` of ``model`` on ``image`` [1, ...]."""
    model.eval()
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))[None]
    seg, cls = forward_volume(model, x, multiple=segmenter_divisor(model.segmenter))
    return torch.softmax(seg, 1)[0].numpy(), torch.softmax(cls, 1)[0].numpy()


def predict_and_evaluate(models: Mapping[str, JointNet], samples: Sequence[Mapping[str, Any]],
                         truth: Mapping[str, np.ndarray | None], *, spacing_mm: float | Sequence[float],
                         labels: Mapping[int, str], ensembles: Mapping[str, Sequence[str]] | None = None,
                         save_dirs: Mapping[str, Path] | None = None, progress: bool = True
                         ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return ``(segmentation metrics, class predictions)`` of every model and ensemble on ``samples``.

    ``truth`` maps a subject id to its multi-class truth (or None: no segmentation metrics).
    ``ensembles`` maps a name to member model names: softmax averaged, class by majority vote.
    Label maps of the methods in ``save_dirs`` are written there as ``<id>.nii.gz`` with the
    image's affine. Metrics rows: ``method, id, cls, label, name, dice, hd95, asd, precision``;
    class rows: ``method, id, label, pred, p0…``, plus ``seconds`` (inference per subject).
    """
    ensembles = dict(ensembles or {})
    save_dirs = dict(save_dirs or {})
    seg_rows: list[pd.DataFrame] = []
    cls_rows: list[dict[str, Any]] = []
    for s in tqdm(samples, desc="predict", disable=not progress, leave=False):
        sid, cls_true = str(s["id"]), int(s["label"])
        soft: dict[str, np.ndarray] = {}
        probs: dict[str, np.ndarray] = {}
        seconds: dict[str, float] = {}
        for name, model in models.items():
            t0 = time.perf_counter()
            soft[name], probs[name] = pair_outputs(model, s["image"])
            seconds[name] = time.perf_counter() - t0
        voted: dict[str, int] = {}
        for name, members in ensembles.items():
            soft[name] = average_softmax([soft[m] for m in members])
            votes, mean_p = ensemble_classes([probs[m][None] for m in members])
            probs[name], voted[name] = mean_p[0], int(votes[0])
            seconds[name] = sum(seconds[m] for m in members)
        for name in [*models, *ensembles]:
            pred_cls = voted[name] if name in voted else int(probs[name].argmax())
            label_map = soft[name].argmax(0).astype(np.uint8)
            if name in save_dirs:
                save_nifti(Path(save_dirs[name]) / f"{sid}.nii.gz", label_map, np.asarray(s["affine"]))
            cls_rows.append({"method": name, "id": sid, "label": cls_true, "pred": pred_cls,
                             **{f"p{c}": float(v) for c, v in enumerate(probs[name])},
                             "seconds": seconds[name]})
            gt = truth.get(sid)
            if gt is not None:
                df = evaluate_segmentation(label_map, gt, spacing_mm, labels)
                df.insert(0, "cls", cls_true)
                df.insert(0, "id", sid)
                df.insert(0, "method", name)
                seg_rows.append(df)
    seg = pd.concat(seg_rows, ignore_index=True) if seg_rows else pd.DataFrame(
        columns=["method", "id", "cls", "label", "name", "dice", "hd95", "asd", "precision"])
    return seg, pd.DataFrame(cls_rows)


def subject_dice(seg: pd.DataFrame) -> pd.DataFrame:
    """Return one row per (method, subject): mean Dice over labels, ``cls``."""
    return (seg.groupby(["method", "id", "cls"], sort=False)["dice"].mean().reset_index())


def correct_ids(cls_pred: pd.DataFrame, method: str) -> set[str]:
    """Return the ids that ``method`` classified correctly."""
    g = cls_pred[cls_pred["method"] == method]
    return set(g.loc[g["label"] == g["pred"], "id"])


def _finite_mean(v: pd.Series) -> float:
    a = pd.to_numeric(v, errors="coerce").to_numpy(float)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def comparison_table(seg: pd.DataFrame, cls_pred: pd.DataFrame, methods: Sequence[str],
                     daa: int = 2) -> pd.DataFrame:
    """Return one row per method: Dice/HD95/ASD on all test subjects, the DAA subset and the
    correctly classified DAA subset, and balanced accuracy (HD95/ASD: mean over finite values)."""
    rows = []
    for m in methods:
        s = seg[seg["method"] == m]
        c = cls_pred[cls_pred["method"] == m]
        good = correct_ids(cls_pred, m)
        daa_s = s[s["cls"] == daa]
        daa_ok = daa_s[daa_s["id"].isin(good)]
        rows.append({
            "method": m, "description": METHOD_LABELS.get(m, m),
            "dice": _finite_mean(s["dice"]), "hd95_mm": _finite_mean(s["hd95"]), "asd_mm": _finite_mean(s["asd"]),
            "dice_daa": _finite_mean(daa_s["dice"]), "n_daa": daa_s["id"].nunique(),
            "dice_daa_correct": _finite_mean(daa_ok["dice"]), "n_daa_correct": daa_ok["id"].nunique(),
            "balanced_accuracy": balanced_accuracy(c["label"], c["pred"]) if len(c) else float("nan"),
        })
    return pd.DataFrame(rows)


def per_label_table(seg: pd.DataFrame, methods: Sequence[str], classes: Mapping[int, str] = CLASSES) -> pd.DataFrame:
    """Return mean Dice, HD95 and ASD per method, anomaly class and label (finite values only)."""
    rows = []
    for m in methods:
        for (c, _lab, name), g in seg[seg["method"] == m].groupby(["cls", "label", "name"]):
            rows.append({"method": m, "class": classes.get(int(c), str(c)), "label": name,
                         "dice": _finite_mean(g["dice"]), "hd95_mm": _finite_mean(g["hd95"]),
                         "asd_mm": _finite_mean(g["asd"]), "n": len(g)})
    return pd.DataFrame(rows)


def paired_test(seg: pd.DataFrame, a: str, b: str, ids: set[str] | None = None) -> dict[str, Any]:
    """Return the paired Wilcoxon signed-rank test of per-subject mean Dice, method ``a`` vs ``b``.

    Keys: ``n``, ``mean_a``, ``mean_b``, ``mean_diff`` (a − b), ``statistic``, ``p`` (two-sided;
    ``nan`` with fewer than 2 pairs or all differences zero).
    """
    d = subject_dice(seg)
    wide = d.pivot_table(index="id", columns="method", values="dice")
    if a not in wide or b not in wide:
        return {"n": 0, "mean_a": np.nan, "mean_b": np.nan, "mean_diff": np.nan, "statistic": np.nan, "p": np.nan}
    wide = wide[[a, b]].dropna()
    if ids is not None:
        wide = wide[wide.index.isin(ids)]
    diff = (wide[a] - wide[b]).to_numpy()
    stat, p = float("nan"), float("nan")
    if len(diff) >= 2 and np.any(diff != 0):
        res = stats.wilcoxon(wide[a], wide[b])
        stat, p = float(res.statistic), float(res.pvalue)
    return {"n": len(diff), "mean_a": float(wide[a].mean()) if len(wide) else np.nan,
            "mean_b": float(wide[b].mean()) if len(wide) else np.nan,
            "mean_diff": float(diff.mean()) if len(diff) else np.nan, "statistic": stat, "p": p}


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
    rows = []
    for lam in lams:
        m = f"{prefix}{lam:g}"
        s, c = seg[seg["method"] == m], cls_pred[cls_pred["method"] == m]
        rows.append({"lambda": float(lam), "dice": _finite_mean(s["dice"]),
                     "dice_daa": _finite_mean(s.loc[s["cls"] == 2, "dice"]),
                     "balanced_accuracy": balanced_accuracy(c["label"], c["pred"]) if len(c) else float("nan")})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# figures


def plot_paired_dice(seg: pd.DataFrame, a: str, b: str, ax: Any, classes: Mapping[int, str] = CLASSES) -> None:
    """Scatter per-subject mean Dice of method ``b`` (x) against ``a`` (y), coloured by anomaly class."""
    d = subject_dice(seg)
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
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.5", ls="--", lw=1)
    ax.set(xlim=(lo - pad, hi + pad), ylim=(lo - pad, hi + pad),
           xlabel=f"mean Dice, {METHOD_LABELS.get(b, b)}", ylabel=f"mean Dice, {METHOD_LABELS.get(a, a)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="above the line: joint better", title_fontsize=8)


def plot_sweep(table: pd.DataFrame, axes: Sequence[Any]) -> None:
    """Plot Dice (and DAA Dice) and balanced accuracy against λ on two axes."""
    x = table["lambda"]
    axes[0].plot(x, table["dice"], marker="o", label="all test subjects")
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
            ax.plot(h["epoch"], y, marker="o", ms=3, label=METHOD_LABELS.get(name, name))
        ax.set(xlabel="epoch", title=title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)


# --------------------------------------------------------------------------------------------
# benchmark


def benchmark(profile: str = "default", *, steps: int = 2) -> dict[str, Any]:
    """Return the measured joint training step and inference seconds per subject for ``profile``."""
    from fetalcmr.config import get_profile

    prof = get_profile(profile)
    torch.manual_seed(0)
    seg = make_segmenter(prof.segmenter)
    cls = build_classifier(prof.classifier, "softmax+image")
    model = JointNet(seg, cls)
    g = prof.cohort.grid
    bs = prof.joint.batch_size
    x = torch.rand(bs, 1, g, g, g)
    labels = torch.arange(bs) % len(CLASSES)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        opt.zero_grad()
        seg_logits, logits = model(x)
        (seg_logits.float().mean() + torch.nn.functional.cross_entropy(logits, labels)).backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    train_s = (time.perf_counter() - t0) / (steps * bs)
    model.eval()
    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(steps):
            model(x[:1])
    infer_s = (time.perf_counter() - t0) / steps
    n_train = round(prof.cohort.n_subjects * prof.cohort.split_fractions[0])
    return {"profile": profile, "grid": g, "threads": torch.get_num_threads(), "batch_size": bs,
            "joint_train_s_per_sample": train_s, "joint_infer_s_per_subject": infer_s,
            "joint_s_per_epoch": train_s * n_train}
