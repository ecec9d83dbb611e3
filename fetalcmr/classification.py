"""Anomaly classification (notebook 03): classifier inputs, experiments over input types and seeds,
test-set evaluation and a benchmark.

Three inputs are compared on the same split (DESIGN §5): the ``image`` alone (1 channel), the
``softmax`` of the frozen LP+manual segmenter (12 channels), and ``softmax+image`` (13
channels, the reference's best). Every classification sample carries both the softmax (key
``extra``) and the image, so the engine draws the *same* augmented volumes for every input type;
the network's first layer (:class:`InputSelect`) keeps the channels its input type reads. The
frozen segmenter's softmax is computed once and cached. The classifier may run on a coarser
grid than the segmenter (:class:`GridPool`, ``ClassifierConfig.grid``): inputs are
average-pooled inside the network, so the same classifier plugs into the joint network
(:class:`fetalcmr.models.JointNet`), which hands it the full-grid softmax and image.

>>> input_channels("softmax+image")
13
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fetalcmr.anatomy import CLASSES, N_LABELS
from fetalcmr.atomic import atomic_path
from fetalcmr.cache import code_version, content_key
from fetalcmr.calibration import expected_calibration_error, reliability_table
from fetalcmr.classmetrics import balanced_accuracy, confusion, per_class_scores
from fetalcmr.config import ClassifierConfig
from fetalcmr.models import make_classifier
from fetalcmr.train import TrainConfig, TrainResult, forward_volume, train

#: Classifier input types, in the order they are reported.
INPUT_KINDS: tuple[str, ...] = ("image", "softmax", "softmax+image")


def input_channels(kind: str, n_labels: int = N_LABELS) -> int:
    """Return the number of channels the classifier reads for input ``kind`` (1, 12 or 13)."""
    return {"image": 1, "softmax": n_labels, "softmax+image": n_labels + 1}[_check_kind(kind)]


def _check_kind(kind: str) -> str:
    if kind not in INPUT_KINDS:
        raise ValueError(f"unknown classifier input {kind!r}; choose one of {INPUT_KINDS}")
    return kind


class InputSelect(nn.Module):
    """Keep the channels of ``kind`` from a [B, n_labels + 1, ...] tensor (softmax first, image last)."""

    def __init__(self, kind: str, n_labels: int = N_LABELS) -> None:
        super().__init__()
        self.kind = _check_kind(kind)
        self.n_labels = n_labels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the selected channels of ``x``."""
        if x.shape[1] != self.n_labels + 1:
            raise ValueError(f"classifier input has {x.shape[1]} channels; expected {self.n_labels + 1} "
                             "(segmenter softmax then image)")
        if self.kind == "image":
            return x[:, self.n_labels:]
        if self.kind == "softmax":
            return x[:, :self.n_labels]
        return x


class GridPool(nn.Module):
    """Average-pool a [B, C, ...] tensor to a cubic ``grid`` (identity when already on it)."""

    def __init__(self, grid: int | None) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` pooled to ``grid``³."""
        if self.grid is None or tuple(x.shape[2:]) == (self.grid,) * 3:
            return x
        return F.adaptive_avg_pool3d(x, self.grid)


def min_classifier_grid(cfg: ClassifierConfig) -> int:
    """Return the smallest input grid whose last dense block is still ≥ 2³ (instance norm needs it).

    The MONAI DenseNet stem divides by 4, each transition by 2: DenseNet121 needs 64, the
    default small net (3 blocks) 32.
    """
    n_blocks = 4 if cfg.arch == "densenet121" else len(cfg.block_config)
    return 8 * 2 ** (n_blocks - 1)


def build_classifier(cfg: ClassifierConfig, kind: str, n_labels: int = N_LABELS) -> nn.Module:
    """Return ``InputSelect(kind) → GridPool(cfg.grid) [→ 1×1×1 projection] → DenseNet``.

    The network reads [B, n_labels + 1, ...]. The projection (``cfg.input_projection``) applies
    to inputs with more channels than it keeps: the 7³ stem convolution dominates the cost of a
    small DenseNet on 12 or 13 channels, and a learned channel mix in front of it is a low-rank
    factorisation of that stem.
    """
    if cfg.grid is not None and cfg.grid < min_classifier_grid(cfg):
        raise ValueError(f"classifier grid {cfg.grid} is below the smallest grid {min_classifier_grid(cfg)} "
                         f"for arch {cfg.arch!r} with blocks {cfg.block_config}")
    channels = input_channels(kind, n_labels)
    layers: list[nn.Module] = [InputSelect(kind, n_labels), GridPool(cfg.grid)]
    if cfg.input_projection is not None and channels > cfg.input_projection:
        layers.append(nn.Conv3d(channels, cfg.input_projection, kernel_size=1))
        channels = cfg.input_projection
    return nn.Sequential(*layers, make_classifier(cfg, channels))


def describe_classifier(cfg: ClassifierConfig, source_grid: int | None = None) -> str:
    """Return a caption fragment naming the classifier network and its input grid."""
    if cfg.arch == "densenet121":
        net = "MONAI DenseNet121 (instance norm)"
    else:
        blocks = "-".join(str(b) for b in cfg.block_config)
        net = (f"small MONAI DenseNet (init {cfg.init_features}, growth {cfg.growth_rate}, blocks {blocks}; "
               "the reference uses DenseNet121)")
    grid = cfg.grid or source_grid
    return f"{net}, input {grid}³" + (f" average-pooled from {source_grid}³" if cfg.grid and source_grid
                                       and cfg.grid != source_grid else "")


def load_segmenter(checkpoint: str | os.PathLike[str], cfg: Any, n_labels: int = N_LABELS) -> tuple[nn.Module, str]:
    """Return ``(segmenter in eval mode, digest of its checkpoint)`` from an engine checkpoint."""
    from fetalcmr.cache import file_digest
    from fetalcmr.models import make_segmenter
    from fetalcmr.train import load_checkpoint

    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"{path}: segmenter checkpoint not found (run notebook 02_segmentation first)")
    model = make_segmenter(cfg, n_labels)
    try:
        model.load_state_dict(load_checkpoint(path)["model"])
    except (KeyError, RuntimeError) as err:
        raise ValueError(f"{path}: not a segmenter checkpoint for this profile ({err})") from None
    return model.eval(), file_digest(path)


# --------------------------------------------------------------------------------------------
# inputs


def pool_to(x: np.ndarray | torch.Tensor, grid: int | None) -> np.ndarray:
    """Return the [C, ...] array ``x`` average-pooled to ``grid``³ as float32 (unchanged if None)."""
    t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if grid is not None and tuple(t.shape[1:]) != (grid,) * 3:
        t = F.adaptive_avg_pool3d(t[None], grid)[0]
    return t.numpy()


def segmenter_divisor(segmenter: nn.Module) -> int:
    """Return the factor spatial sizes must divide for ``segmenter`` (product of its strides)."""
    out = 1
    for s in getattr(segmenter, "strides", ()) or ():
        out *= int(np.prod(s))
    return out


@torch.no_grad()
def segmenter_softmax(segmenter: nn.Module, samples: Sequence[Mapping[str, Any]], *, grid: int | None,
                      progress: bool = True) -> dict[str, np.ndarray]:
    """Return ``{id: softmax [12, grid³] float32}`` of the frozen ``segmenter`` on each sample's image."""
    segmenter.eval()
    multiple = segmenter_divisor(segmenter)
    out: dict[str, np.ndarray] = {}
    for s in tqdm(samples, desc="segmenter softmax", disable=not progress, leave=False):
        image = torch.as_tensor(np.asarray(s["image"], dtype=np.float32))[None]
        logits = forward_volume(segmenter, image, multiple=multiple)
        out[str(s["id"])] = pool_to(torch.softmax(logits.float(), dim=1)[0], grid)
    return out


def save_softmax(path: str | os.PathLike[str], softmax: Mapping[str, np.ndarray]) -> None:
    """Write ``{id: softmax}`` to ``path`` (.npz, float16, atomically)."""
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **{k: v.astype(np.float16) for k, v in softmax.items()})


def load_softmax(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Return ``{id: softmax float32}`` written by :func:`save_softmax`."""
    with np.load(path) as z:
        return {k: z[k].astype(np.float32) for k in z.files}


def classification_samples(samples: Sequence[Mapping[str, Any]], softmax: Mapping[str, np.ndarray], *,
                           grid: int | None) -> list[dict[str, Any]]:
    """Return classifier samples ``{id, image [1,g³], extra (softmax) [12,g³], label}`` on ``grid``.

    ``samples`` come from :func:`fetalcmr.data.make_samples` (image and label; never ``gt``).
    """
    out = []
    for s in samples:
        sid = str(s["id"])
        if sid not in softmax:
            raise KeyError(f"{sid}: no segmenter softmax for this subject")
        image = pool_to(s["image"], grid)
        soft = pool_to(softmax[sid], grid)
        if soft.shape[1:] != image.shape[1:]:
            raise ValueError(f"{sid}: softmax grid {soft.shape[1:]} differs from image grid {image.shape[1:]}")
        out.append({"id": sid, "image": image, "extra": soft, "label": int(s["label"])})
    return out


def stack_inputs(samples: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    """Return the network input [N, 13, ...]: softmax channels then the image (as the engine does)."""
    return torch.cat([torch.as_tensor(np.stack([s["extra"] for s in samples])),
                      torch.as_tensor(np.stack([s["image"] for s in samples]))], dim=1).float()


def stored_softmax(folder: str | os.PathLike[str], ids: Sequence[str], *, grid: int | None,
                   record: str = "done.json") -> dict[str, np.ndarray] | None:
    """Return ``{id: softmax pooled to grid}`` from ``folder/<id>.npz`` (key ``softmax``), or None
    when the folder's ``record`` is missing or any subject's file is."""
    folder = Path(folder)
    files = [folder / f"{i}.npz" for i in ids]
    if not (folder / record).exists() or not all(f.exists() for f in files):
        return None
    out = {}
    for i, f in zip(ids, files, strict=True):
        with np.load(f) as z:
            out[str(i)] = pool_to(z["softmax"].astype(np.float32), grid)
    return out


@dataclass
class ClassificationData:
    """Classifier samples of every split (same order as the dataset's items), and their cache key."""

    samples: dict[str, list[dict[str, Any]]]
    items: dict[str, list[dict[str, Any]]]
    data_key: str
    softmax_path: Path


def prepare_classification(data: Mapping[str, Any], segmenter: nn.Module, *, segmenter_key: str,
                           cfg: ClassifierConfig, grid: int | None, spacing_mm: float | None,
                           cache_dir: str | os.PathLike[str], softmax_dir: str | os.PathLike[str] | None = None,
                           progress: bool = True) -> ClassificationData:
    """Return classifier samples for every split of ``data``, with the frozen segmenter's softmax cached.

    Items are read through :func:`fetalcmr.data.make_samples` (image and label only; never
    ``gt``) on the cohort grid. The softmax, pooled to the classifier grid, is stored once per
    (segmenter, subjects, grids) in ``cache_dir/softmax_<key>.npz``. It is read from
    ``softmax_dir/<id>.npz`` (written by notebook 02 for the same segmenter, completed by its
    ``done.json``) when every subject is there, else computed here.
    """
    from fetalcmr.data import make_samples
    from fetalcmr.dataset import SPLITS

    items = {split: list(data.get(split) or []) for split in SPLITS}
    raw = {split: make_samples(v, ("image", "label"), grid=grid, spacing_mm=spacing_mm) for split, v in items.items()}
    key = content_key("softmax", segmenter_key, cfg.grid, grid, spacing_mm,
                      {split: [s["id"] for s in v] for split, v in raw.items()})
    path = Path(cache_dir) / f"softmax_{key}.npz"
    everyone = [s for v in raw.values() for s in v]
    if path.exists():
        softmax = load_softmax(path)
    else:
        softmax = stored_softmax(softmax_dir, [s["id"] for s in everyone], grid=cfg.grid) if softmax_dir else None
        if softmax is None:
            softmax = segmenter_softmax(segmenter, everyone, grid=cfg.grid, progress=progress)
        save_softmax(path, softmax)
    samples = {split: classification_samples(v, softmax, grid=cfg.grid) for split, v in raw.items()}
    return ClassificationData(samples=samples, items=items, data_key=key, softmax_path=path)


# --------------------------------------------------------------------------------------------
# training and prediction


def train_config(cfg: ClassifierConfig, seed: int) -> TrainConfig:
    """Return the engine's configuration for a classifier run (mode classify, balanced sampling)."""
    return TrainConfig(mode="classify", epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                       weight_decay=cfg.weight_decay, aug_prob=cfg.aug_prob, seed=seed, balanced=True)


def train_classifier(cfg: ClassifierConfig, kind: str, train_samples: Sequence[dict[str, Any]],
                     val_samples: Sequence[dict[str, Any]], out_dir: str | os.PathLike[str], *, seed: int,
                     data_key: str = "", progress: bool = True) -> TrainResult:
    """Return the trained classifier for input ``kind`` (resumes or loads a finished run)."""
    run_key = content_key("classifier", kind, dataclasses.asdict(cfg), data_key, [s["id"] for s in train_samples],
                          code_version("classification", "models"))
    return train(lambda: build_classifier(cfg, kind), train_samples, val_samples, train_config(cfg, seed),
                 out_dir, run_key=run_key, progress=progress)


@torch.no_grad()
def predict_probs(model: nn.Module, samples: Sequence[Mapping[str, Any]], batch_size: int = 8) -> np.ndarray:
    """Return class probabilities [N, classes] of ``model`` on classifier ``samples``."""
    model.eval()
    device = next(model.parameters()).device
    probs = []
    for i in range(0, len(samples), batch_size):
        x = stack_inputs(samples[i:i + batch_size]).to(device)
        probs.append(torch.softmax(model(x).float(), dim=1).cpu().numpy())
    return np.concatenate(probs) if probs else np.zeros((0, len(CLASSES)))


def prediction_frame(ids: Sequence[str], labels: Sequence[int], probs: np.ndarray, **columns: Any) -> pd.DataFrame:
    """Return one row per subject: ``columns…, id, label, pred, p0…p{C-1}``."""
    df = pd.DataFrame({"id": list(ids), "label": [int(v) for v in labels], "pred": probs.argmax(1)})
    for c in range(probs.shape[1]):
        df[f"p{c}"] = probs[:, c]
    for k, v in reversed(list(columns.items())):
        df.insert(0, k, v)
    return df


def probs_of(df: pd.DataFrame) -> np.ndarray:
    """Return the probability columns ``p0…`` of a prediction frame as [N, C]."""
    cols = sorted((c for c in df.columns if c.startswith("p") and c[1:].isdigit()), key=lambda c: int(c[1:]))
    return df[cols].to_numpy(float)


@dataclass
class ClassificationRun:
    """One trained classifier: input type, seed, test predictions and costs."""

    kind: str
    seed: int
    predictions: pd.DataFrame
    history: pd.DataFrame
    train_seconds: float
    infer_seconds_per_subject: float
    out_dir: Path
    model: nn.Module


def run_experiments(cfg: ClassifierConfig, train_samples: Sequence[dict[str, Any]],
                    val_samples: Sequence[dict[str, Any]], test_samples: Sequence[dict[str, Any]],
                    out_dir: str | os.PathLike[str], *, kinds: Sequence[str] = INPUT_KINDS,
                    seeds: Sequence[int] | None = None, data_key: str = "",
                    progress: bool = True) -> list[ClassificationRun]:
    """Return one :class:`ClassificationRun` per input type and seed, trained on the same split.

    Runs live in ``out_dir/<kind>/seed<k>``; finished runs are loaded, not retrained. The
    training time is the engine's recorded wall time of the epochs (so it survives reloading).
    """
    out_dir = Path(out_dir)
    runs = []
    for kind in kinds:
        for seed in (cfg.seeds if seeds is None else seeds):
            res = train_classifier(cfg, kind, train_samples, val_samples,
                                   out_dir / kind.replace("+", "_") / f"seed{seed}", seed=seed,
                                   data_key=data_key, progress=progress)
            t0 = time.perf_counter()
            probs = predict_probs(res.model, test_samples)
            infer = (time.perf_counter() - t0) / max(len(test_samples), 1)
            preds = prediction_frame([s["id"] for s in test_samples], [s["label"] for s in test_samples],
                                     probs, kind=kind, seed=seed)
            seconds = float(res.history["seconds"].sum()) if "seconds" in res.history else float("nan")
            runs.append(ClassificationRun(kind, seed, preds, res.history, seconds, infer, res.out_dir, res.model))
    return runs


# --------------------------------------------------------------------------------------------
# evaluation


def _mean_sd(values: Sequence[float], digits: int = 2) -> str:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return "n/a"
    sd = float(v.std(ddof=1)) if v.size > 1 else float("nan")
    return f"{v.mean():.{digits}f} ({sd:.{digits}f})" if np.isfinite(sd) else f"{v.mean():.{digits}f}"


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
    """Return one row per input type: channels, balanced accuracy and ECE as mean (sd) over seeds, costs."""
    preds = pd.concat([r.predictions for r in runs], ignore_index=True)
    scores = run_scores(preds, n_bins)
    rows = []
    for kind in dict.fromkeys(r.kind for r in runs):
        s = scores[scores["kind"] == kind]
        mine = [r for r in runs if r.kind == kind]
        rows.append({
            "input": kind, "channels": input_channels(kind), "seeds": len(mine),
            "balanced_accuracy": _mean_sd(s["balanced_accuracy"]),
            "bacc_mean": float(s["balanced_accuracy"].mean()),
            "bacc_sd": float(s["balanced_accuracy"].std(ddof=1)) if len(s) > 1 else float("nan"),
            "ece": _mean_sd(s["ece"]),
            "train_s_per_run": float(np.mean([r.train_seconds for r in mine])),
            "infer_s_per_subject": float(np.mean([r.infer_seconds_per_subject for r in mine])),
        })
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
                         **{m: _mean_sd(sc[m]) for m in ("precision", "recall", "f1")},
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


# --------------------------------------------------------------------------------------------
# benchmark


def _time_steps(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, steps: int) -> tuple[float, float]:
    """Return (training s/sample, inference s/sample) of ``model`` on the batch ``x``."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    loss = F.cross_entropy(model(x), labels)  # warm-up step (allocations)
    loss.backward()
    opt.step()
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), labels).backward()
        opt.step()
    train_s = (time.perf_counter() - t0) / (steps * x.shape[0])
    model.eval()
    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(steps):
            model(x)
    return train_s, (time.perf_counter() - t0) / (steps * x.shape[0])


def benchmark(profile: str = "default", *, steps: int = 2, batch_size: int | None = None,
              source_grid: int | None = None,
              kinds: Sequence[str] = INPUT_KINDS, timer: Callable[..., tuple[float, float]] | None = None
              ) -> dict[str, Any]:
    """Return measured classifier costs of ``profile`` per input type (random inputs, this machine).

    Keys: ``profile``, ``arch``, ``grid`` (classifier input grid), ``threads`` and, per input
    type, ``train_s_per_sample`` and ``infer_s_per_sample`` (forward+backward / forward, from
    the cohort grid, pooling included), plus ``train_s_per_epoch`` for the profile's training set.
    """
    from fetalcmr.config import get_profile

    prof = get_profile(profile)
    cfg = prof.classifier
    grid = source_grid or prof.cohort.grid
    bs = batch_size or cfg.batch_size
    timer = timer or _time_steps
    n_train = round(prof.cohort.n_subjects * prof.cohort.split_fractions[0])
    out: dict[str, Any] = {"profile": profile, "arch": cfg.arch, "grid": cfg.grid or grid,
                           "source_grid": grid, "threads": torch.get_num_threads(), "batch_size": bs}
    for kind in kinds:
        torch.manual_seed(0)
        model = build_classifier(cfg, kind)
        x = torch.rand(bs, N_LABELS + 1, *(cfg.grid or grid,) * 3)  # samples are cached pooled
        labels = torch.arange(bs) % len(CLASSES)
        train_s, infer_s = timer(model, x, labels, steps)
        out[kind] = {"train_s_per_sample": train_s, "infer_s_per_sample": infer_s,
                     "train_s_per_epoch": train_s * n_train}
    return out
