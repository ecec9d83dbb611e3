"""Weakly supervised segmentation experiments (notebook 02): four methods on one split.

(a) ``lp``: label propagation (the atlas of the subject's true class warped onto it);
(b) ``net_lp``: Attention U-Net trained on the propagated labels alone;
(c) ``net_lp_manual``: trained on propagated labels + manual binary masks (the method);
(d) ``net_manual``: trained on manual binary masks alone (evaluated on the vessel region only).

Training reads only ``image``, ``binary``, ``label`` and ``lp`` (:mod:`fetalcmr.data`); ``gt`` is
read here for evaluation of the test subjects only. Trained networks live under
``models_dir/segmenter_<method>/`` and are reused when their cache key (configuration, seed,
training-data digest, code version) is unchanged.

>>> METHODS["c"]
'net_lp_manual'
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from fetalcmr.anatomy import CLASSES, LABEL_INDEX, LABELS
from fetalcmr.cache import code_version, content_key, file_digest
from fetalcmr.config import SegmenterConfig
from fetalcmr.data import load_volume, make_samples
from fetalcmr.dataset import training_view
from fetalcmr.io import save_nifti
from fetalcmr.models import make_segmenter, min_divisor
from fetalcmr.train import TrainConfig, TrainResult, forward_volume, train

#: Method letter -> short name (also the folder of its predictions).
METHODS: Mapping[str, str] = {"a": "lp", "b": "net_lp", "c": "net_lp_manual", "d": "net_manual"}
#: Method letter -> label used in figures and tables.
METHOD_LABELS: Mapping[str, str] = {"a": "(a) LP", "b": "(b) net: LP", "c": "(c) net: LP + manual",
                                    "d": "(d) net: manual"}
#: Network methods -> supervision targets of the segmentation loss.
TARGETS: Mapping[str, str] = {"b": "lp", "c": "lp+binary", "d": "binary"}
#: Modules whose code a trained network depends on (its cache key hashes them).
TRAINING_MODULES: tuple[str, ...] = ("train", "models", "losses", "transforms", "data", "io", "dataset", "anatomy")
#: Methods evaluated per vessel label ((d) has no vessel identities: region only).
MULTICLASS_METHODS: tuple[str, ...] = ("a", "b", "c")


def segmenter_dir(models_dir: str | os.PathLike[str], method: str = "c") -> Path:
    """Return the folder of network ``method`` (``b``, ``c`` or ``d``) under ``models_dir``."""
    if method not in TARGETS:
        raise ValueError(f"no trained network for method {method!r}; choose one of {tuple(TARGETS)}")
    return Path(models_dir) / f"segmenter_{method}"


def method_checkpoint(models_dir: str | os.PathLike[str], method: str = "c") -> Path:
    """Return the checkpoint holding the selected weights of network ``method`` (default: the method, c)."""
    return segmenter_dir(models_dir, method) / "best.pt"


def train_config(cfg: SegmenterConfig, method: str, seed: int) -> TrainConfig:
    """Return the engine configuration of network ``method`` from the profile's segmenter section."""
    return TrainConfig(mode="segment", epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                       weight_decay=cfg.weight_decay, aug_prob=cfg.aug_prob, patch=cfg.patch,
                       targets=TARGETS[method], binary_weight=tuple(cfg.binary_weight), seed=seed,
                       val_every=cfg.val_every, select="best")


def training_digest(data: Mapping[str, Any], keys: Sequence[str] = ("image", "binary", "lp")) -> str:
    """Return a hash of what segmenter training reads (training/validation files and classes)."""
    parts: list[Any] = []
    for split in ("training", "validation"):
        for item in data.get(split, []) or []:
            view = training_view(item)
            parts.append([split, view["id"], int(view.get("label", -1)),
                          *[file_digest(view[k]) if view.get(k) else None for k in keys]])
    return content_key(parts)


@dataclass
class SegmenterRuns:
    """The trained networks (b, c, d), their histories and training times."""

    results: dict[str, TrainResult]
    keys: dict[str, str]

    @property
    def histories(self) -> dict[str, pd.DataFrame]:
        """Training history per method label."""
        return {METHOD_LABELS[m]: r.history for m, r in self.results.items()}

    def seconds(self) -> dict[str, float]:
        """Total training wall seconds per method (from the history, so also for reused runs)."""
        return {m: float(r.history["seconds"].sum()) for m, r in self.results.items()}


def train_segmenters(data: Mapping[str, Any], cfg: SegmenterConfig, models_dir: str | os.PathLike[str], *,
                     grid: int | None, spacing_mm: float | None, seed: int = 0,
                     methods: Sequence[str] = ("b", "c", "d"), progress: bool = True) -> SegmenterRuns:
    """Train (or reuse, or resume) the networks of ``methods`` on the training split of ``data``."""
    keys = ("image", "lp", "binary", "label")
    train_samples = make_samples(data["training"], keys, grid=grid, spacing_mm=spacing_mm)
    val_samples = make_samples(data.get("validation", []) or [], keys, grid=grid, spacing_mm=spacing_mm)
    digest = training_digest(data)
    results, run_keys = {}, {}
    for method in methods:
        tcfg = train_config(cfg, method, seed)
        run_key = content_key("segmenter", method, dataclasses.asdict(cfg), tcfg.to_dict(), seed, digest,
                              grid, spacing_mm, code_version(*TRAINING_MODULES))
        results[method] = train(lambda: make_segmenter(cfg), train_samples, val_samples, tcfg,
                                segmenter_dir(models_dir, method), run_key=run_key, progress=progress)
        run_keys[method] = run_key
    return SegmenterRuns(results, run_keys)


# --------------------------------------------------------------------------------------------
# inference


@torch.no_grad()
def predict_softmax(model: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """Return the softmax [12, x, y, z] (float32) of ``model`` for one image [1, x, y, z]."""
    model.eval()
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))[None]
    logits = forward_volume(model, x, multiple=min_divisor(tuple(getattr(model, "strides", (1,)))))
    return torch.softmax(logits, 1)[0].cpu().numpy()


def predict_labels(model: torch.nn.Module, samples: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike[str],
                   *, progress: bool = True) -> dict[str, np.ndarray]:
    """Return ``{id: label map}`` (argmax) for ``samples`` and save each as NIfTI (the input's affine)."""
    out = Path(out_dir)
    preds: dict[str, np.ndarray] = {}
    for s in tqdm(samples, desc=f"predict {out.name}", disable=not progress, leave=False):
        labels = predict_softmax(model, s["image"]).argmax(0).astype(np.uint8)
        save_nifti(out / f"{s['id']}.nii.gz", labels, s["affine"])
        preds[s["id"]] = labels
    return preds


def save_softmax(model: torch.nn.Module, samples: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike[str],
                 *, progress: bool = True) -> Path:
    """Save the softmax of every sample as ``<out_dir>/<id>.npz`` (float16 ``softmax``, ``affine``)."""
    from fetalcmr.atomic import atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for s in tqdm(samples, desc="softmax", disable=not progress, leave=False):
        soft = predict_softmax(model, s["image"]).astype(np.float16)
        with atomic_path(out / f"{s['id']}.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, softmax=soft, affine=np.asarray(s["affine"]))
    return out


def load_softmax(path: str | os.PathLike[str]) -> np.ndarray:
    """Return the float32 softmax [12, x, y, z] saved by :func:`save_softmax`."""
    with np.load(path) as f:
        return f["softmax"].astype(np.float32)


# --------------------------------------------------------------------------------------------
# evaluation (test subjects, against gt)


def has_truth(items: Sequence[Mapping[str, Any]]) -> bool:
    """True when every item carries a ``gt`` label map (synthetic data; real data often lacks it)."""
    return bool(items) and all(it.get("gt") for it in items)


def evaluate(predictions: Mapping[str, Mapping[str, np.ndarray]], items: Sequence[Mapping[str, Any]], *,
             grid: int | None, spacing_mm: float | None, labels: Mapping[int, str] = LABELS,
             classes: Mapping[int, str] = CLASSES) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return per-subject ``(per_label, region)`` tables of every method against ``gt``.

    ``per_label``: method, id, class, label, name, dice, hd95, asd, precision (methods a–c).
    ``region``: method, id, class, dice, sensitivity, specificity, precision of the vessel region
    (foreground of the prediction vs. foreground of ``gt``), for every method.
    """
    from fetalcmr.metrics import evaluate_segmentation, region_metrics

    per_label, region = [], []
    for it in items:
        truth_vol = load_volume(it["gt"], kind="label", grid=grid, spacing_mm=spacing_mm)
        truth = truth_vol.array
        spacing = np.sqrt((truth_vol.affine[:3, :3] ** 2).sum(0))
        cls = classes.get(int(it["label"]), str(it["label"])) if "label" in it else ""
        for method, preds in predictions.items():
            pred = preds[it["id"]]
            base = {"method": method, "id": it["id"], "class": cls}
            region.append({**base, **region_metrics(pred > 0, truth > 0)})
            if method in MULTICLASS_METHODS:
                df = evaluate_segmentation(pred, truth, spacing, labels)
                for row in df.to_dict("records"):
                    per_label.append({**base, **row})
    return pd.DataFrame(per_label), pd.DataFrame(region)


def supervision_agreement(items: Sequence[Mapping[str, Any]], *, grid: int | None, spacing_mm: float | None,
                          labels: Mapping[int, str] = LABELS) -> pd.DataFrame:
    """Return, per vessel label, how far the two training signals of method (c) agree.

    For the training ``items`` (read through :func:`training_view`, so never ``gt``):
    ``lp_inside_manual`` is the fraction of voxels propagated to that label that lie inside the
    manual mask, i.e. where the binary term does not push the label towards background;
    ``lp_voxels`` the mean count per subject. A low value marks a vessel whose propagated label
    is mostly off the vessel the annotator drew.
    """
    n = max(labels) + 1
    inside, total = np.zeros(n), np.zeros(n)
    for item in items:
        view = training_view(item)
        lp = load_volume(view["lp"], kind="label", grid=grid, spacing_mm=spacing_mm).array.astype(np.int64)
        manual = load_volume(view["binary"], kind="label", grid=grid, spacing_mm=spacing_mm).array > 0
        if lp.min() < 0 or lp.max() >= n:
            raise ValueError(f"{view['lp']}: label values outside 0..{n - 1}")
        total += np.bincount(lp.ravel(), minlength=n)[:n]
        inside += np.bincount(lp[manual], minlength=n)[:n]
    rows = [{"label": name, "lp_inside_manual": inside[k] / total[k] if total[k] else float("nan"),
             "lp_voxels": total[k] / max(len(items), 1)} for k, name in sorted(labels.items()) if k > 0]
    return pd.DataFrame(rows)


def subject_mean_dice(per_label: pd.DataFrame) -> pd.DataFrame:
    """Return a subjects × methods table of the mean Dice over vessel labels present in ``gt``."""
    return per_label.groupby(["id", "method"])["dice"].mean().unstack("method")


def wilcoxon_tests(per_label: pd.DataFrame, reference: str = "c", others: Sequence[str] = ("a", "b")) -> pd.DataFrame:
    """Return paired Wilcoxon signed-rank tests of per-subject mean Dice: ``reference`` vs each other."""
    from scipy.stats import wilcoxon

    wide = subject_mean_dice(per_label)
    rows = []
    for other in others:
        if reference not in wide or other not in wide:
            continue
        pair = wide[[reference, other]].dropna()
        diff = pair[reference] - pair[other]
        if len(pair) == 0 or np.allclose(diff, 0):
            stat, p = float("nan"), float("nan")
        else:
            res = wilcoxon(pair[reference], pair[other], alternative="two-sided")
            stat, p = float(res.statistic), float(res.pvalue)
        rows.append({"comparison": f"{METHOD_LABELS[reference]} vs {METHOD_LABELS[other]}",
                     "n_subjects": len(pair), f"mean_dice_{reference}": float(pair[reference].mean()),
                     "mean_dice_other": float(pair[other].mean()), "median_difference": float(diff.median()),
                     "subjects_improved": int((diff > 0).sum()), "wilcoxon_W": stat, "p_value": p})
    return pd.DataFrame(rows)


def _mean_sd(values: pd.Series) -> str:
    v = values.dropna()
    return f"{v.mean():.3f} ({v.std(ddof=1):.3f})" if len(v) > 1 else (f"{v.mean():.3f}" if len(v) else "–")


def dice_table(per_label: pd.DataFrame, region: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    """Return ``metric`` as "mean (sd)" per vessel label (rows) and method (columns), plus the region row."""
    methods = [m for m in METHODS if m in set(per_label["method"]) | set(region["method"])]
    rows = []
    for (_lab, name), grp in per_label.groupby(["label", "name"], sort=True):
        row = {"label": name}
        for m in methods:
            row[METHOD_LABELS[m]] = _mean_sd(grp.loc[grp["method"] == m, metric]) if m in MULTICLASS_METHODS else "–"
        rows.append(row)
    if metric in region:
        row = {"label": "vessel region (binary)"}
        for m in methods:
            row[METHOD_LABELS[m]] = _mean_sd(region.loc[region["method"] == m, metric])
        rows.append(row)
    return pd.DataFrame(rows)


def by_class_table(per_label: pd.DataFrame, region: pd.DataFrame) -> pd.DataFrame:
    """Return mean (sd) per-subject mean Dice by anomaly class and method, and region Dice for (d)."""
    subj = per_label.groupby(["method", "class", "id"])["dice"].mean().reset_index()
    rows = []
    for cls in sorted(set(region["class"]), key=lambda c: list(CLASSES.values()).index(c)
                      if c in CLASSES.values() else 99):
        row: dict[str, Any] = {"class": cls, "n": int(region.loc[region["class"] == cls, "id"].nunique())}
        for m in METHODS:
            if m in MULTICLASS_METHODS:
                vals = subj.loc[(subj["method"] == m) & (subj["class"] == cls), "dice"]
                row[f"{METHOD_LABELS[m]} mean vessel Dice"] = _mean_sd(vals)
        for m in METHODS:
            vals = region.loc[(region["method"] == m) & (region["class"] == cls), "dice"]
            if len(vals):
                row[f"{METHOD_LABELS[m]} region Dice"] = _mean_sd(vals)
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# figures


def plot_dice_boxplots(per_label: pd.DataFrame, region: pd.DataFrame, *, title: str = "") -> Any:
    """Return a figure: per-label Dice box plots by method (a–c) and the region Dice of all methods."""
    import matplotlib.pyplot as plt

    methods = [m for m in MULTICLASS_METHODS if m in set(per_label["method"])]
    names = [n for _, n in sorted(set(zip(per_label["label"], per_label["name"], strict=True)))]
    colours = {"a": "#9e9e9e", "b": "#64b5f6", "c": "#d84315", "d": "#7cb342"}
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [5, 1.3]})
    width = 0.8 / max(len(methods), 1)
    for k, m in enumerate(methods):
        data = [per_label.loc[(per_label["method"] == m) & (per_label["name"] == n), "dice"].dropna().to_numpy()
                for n in names]
        pos = np.arange(len(names)) + (k - (len(methods) - 1) / 2) * width
        bp = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, showfliers=True,
                        flierprops={"markersize": 2})
        for box in bp["boxes"]:
            box.set(facecolor=colours[m], alpha=0.8)
        ax.plot([], [], "s", color=colours[m], label=METHOD_LABELS[m])
    ax.set_xticks(np.arange(len(names)), names)
    ax.set(ylabel="Dice vs ground truth", ylim=(0, 1), title="per-vessel Dice (test subjects)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left", ncol=len(methods))
    rmethods = [m for m in METHODS if m in set(region["method"])]
    bp = ax2.boxplot([region.loc[region["method"] == m, "dice"].to_numpy() for m in rmethods],
                     patch_artist=True, flierprops={"markersize": 2})
    for box, m in zip(bp["boxes"], rmethods, strict=True):
        box.set(facecolor=colours[m], alpha=0.8)
    ax2.set_xticks(range(1, len(rmethods) + 1), [f"({m})" for m in rmethods])
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


def pick_subjects(per_label: pd.DataFrame, method: str = "c") -> dict[str, str]:
    """Return ``{"best", "median", "worst": subject id}`` by per-subject mean Dice of ``method``."""
    scores = subject_mean_dice(per_label)[method].dropna().sort_values()
    return {"best": scores.index[-1], "median": scores.index[len(scores) // 2], "worst": scores.index[0]}


def plot_overlays(cases: Mapping[str, Mapping[str, Any]], *, method_label: str = METHOD_LABELS["c"],
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


# --------------------------------------------------------------------------------------------
# the whole stage


@dataclass
class SegmentationStage:
    """Outputs of :func:`run_segmentation`."""

    runs: SegmenterRuns
    predictions: dict[str, dict[str, np.ndarray]]
    test_samples: list[dict[str, Any]]
    per_label: pd.DataFrame | None
    region: pd.DataFrame | None
    inference_seconds: float  # per subject, method (c)
    softmax_dir: Path


def run_segmentation(data: Mapping[str, Any], cfg: SegmenterConfig, *, models_dir: str | os.PathLike[str],
                     predictions_dir: str | os.PathLike[str], results_dir: str | os.PathLike[str],
                     grid: int | None, spacing_mm: float | None, seed: int = 0,
                     progress: bool = True) -> SegmentationStage:
    """Train (or reuse) networks b–d, predict the test subjects, save the (c) softmax of every
    subject, and, when the test subjects have ``gt``, evaluate all methods and write
    ``results_dir/segmentation_per_label.csv`` and ``segmentation_region.csv``."""
    runs = train_segmenters(data, cfg, models_dir, grid=grid, spacing_mm=spacing_mm, seed=seed,
                            progress=progress)
    test_items = list(data.get("testing", []) or [])
    test_samples = make_samples(test_items, ("image", "lp"), grid=grid, spacing_mm=spacing_mm)
    predictions: dict[str, dict[str, np.ndarray]] = {"a": {}}
    for s in test_samples:
        lp = s["lp"][0].astype(np.uint8)
        save_nifti(Path(predictions_dir) / METHODS["a"] / f"{s['id']}.nii.gz", lp, s["affine"])
        predictions["a"][s["id"]] = lp
    inference = float("nan")
    for method, result in runs.results.items():
        t0 = time.perf_counter()
        predictions[method] = predict_labels(result.model, test_samples, Path(predictions_dir) / METHODS[method],
                                             progress=progress)
        if method == "c" and test_samples:
            inference = (time.perf_counter() - t0) / len(test_samples)
    # frozen softmax of the method's network for every subject (classifier input, notebook 03)
    all_items = [it for split in ("training", "validation", "testing") for it in data.get(split, []) or []]
    softmax_dir = segmenter_dir(models_dir, "c") / "softmax"
    if "c" in runs.results:
        record = softmax_dir / "done.json"
        from fetalcmr.cache import is_fresh, mark_fresh

        key = content_key("softmax", runs.keys["c"], [it["id"] for it in all_items])
        if not is_fresh(record, key):
            save_softmax(runs.results["c"].model, make_samples(all_items, ("image",), grid=grid,
                                                               spacing_mm=spacing_mm), softmax_dir,
                         progress=progress)
            mark_fresh(record, key, n_subjects=len(all_items))
    per_label = region = None
    if has_truth(test_items):
        per_label, region = evaluate(predictions, test_items, grid=grid, spacing_mm=spacing_mm,
                                     labels={int(k): v for k, v in (data.get("labels") or LABELS).items()})
        from fetalcmr.atomic import atomic_path

        for df, name in ((per_label, "segmentation_per_label.csv"), (region, "segmentation_region.csv")):
            with atomic_path(Path(results_dir) / name) as tmp:
                df.assign(method_name=df["method"].map(METHODS)).to_csv(tmp, index=False)
    return SegmentationStage(runs, predictions, test_samples, per_label, region, inference, softmax_dir)


# --------------------------------------------------------------------------------------------
# benchmark


def _time(fn: Any, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def benchmark(threads: int = 2, repeat: int = 3) -> dict[str, float]:
    """Return measured segmenter costs on ``threads`` CPU threads (random inputs, seconds).

    Inference per subject at the default grid with the default channels and with the reference
    architecture (32–512 at 80³), in the same run; the default training step per sample (patch
    or whole grid, forward + backward + AdamW step) and its throughput; the default profile's
    estimated training time of the three networks.
    """
    from fetalcmr.config import get_profile
    from fetalcmr.losses import SegmentationLoss

    torch.set_num_threads(threads)
    prof = get_profile("default")
    cfg, grid = prof.segmenter, prof.cohort.grid
    out: dict[str, float] = {"threads": float(threads)}
    with torch.no_grad():
        net = make_segmenter(cfg).eval()
        x = torch.rand(1, 1, grid, grid, grid)
        out[f"inference_s_per_subject_default_{grid}"] = _time(lambda: net(x), repeat)
        ref = make_segmenter(get_profile("paper").segmenter).eval()
        x80 = torch.rand(1, 1, 80, 80, 80)
        out["inference_s_per_subject_reference_80"] = _time(lambda: ref(x80), max(1, repeat - 1))
    side = cfg.patch or grid
    net = make_segmenter(cfg).train()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
    loss = SegmentationLoss("lp+binary")
    bs = cfg.batch_size
    xb = torch.rand(bs, 1, side, side, side)
    lp = torch.randint(0, 12, (bs, side, side, side))

    def step() -> None:
        opt.zero_grad()
        total, _ = loss(net(xb), lp=lp, binary=(lp > 0).long(), epoch=0)
        total.backward()
        opt.step()

    per_sample = _time(step, repeat) / bs
    out[f"train_s_per_sample_{side}"] = per_sample
    out["train_samples_per_s"] = 1.0 / per_sample
    n_train = round(prof.cohort.n_subjects * prof.cohort.split_fractions[0])
    out["estimated_train_s_three_networks"] = 3 * cfg.epochs * n_train * per_sample
    return out
