"""Weakly supervised segmentation experiments (notebook 02): four methods on one split (their
tables and figures: :mod:`fetalcmr.segmentation_report`).

(a) ``lp``: label propagation (the atlas of the subject's true class warped onto it);
(b) ``net_lp``: Attention U-Net trained on the propagated labels alone;
(c) ``net_lp_manual``: trained on propagated labels + manual binary masks (the method);
(d) ``net_manual``: trained on manual binary masks alone (evaluated on the vessel region only).

Methods are named by their :mod:`fetalcmr.methods` id (labels, colours, prediction folders and
letters come from there). Training reads only ``image``, ``binary``, ``label`` and ``lp``
(:mod:`fetalcmr.data`); ``gt`` is read here for evaluation of the test subjects only. Trained
networks live under ``models_dir/segmenter_<letter>/`` and are reused when their cache key
(configuration, seed, training-data digest, code version) is unchanged. What the stage leaves in a
run folder is :class:`SegmentationOutputs` (:func:`run_segmentation`, :func:`load_segmentation`).

>>> from fetalcmr.methods import get, methods_of
>>> [m.id for m in methods_of(STAGE)]
['lp', 'net_lp', 'net_lp_manual', 'net_manual']
>>> get(METHOD).label
'(c) net: LP + manual'
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fetalcmr.anatomy import CLASSES, LABELS
from fetalcmr.cache import code_version, content_key, file_digest
from fetalcmr.config import SegmenterConfig
from fetalcmr.data import load_volume, make_samples
from fetalcmr.dataset import training_view
from fetalcmr.io import load_nifti, save_nifti
from fetalcmr.methods import get
from fetalcmr.models import make_segmenter
from fetalcmr.parallel import TrainJob, train_runs
from fetalcmr.paths import RunPaths, outputs_record
from fetalcmr.predict import SOFTMAX_DONE, SOFTMAX_FORMAT, predict_volume, save_softmax, softmax_file
from fetalcmr.train import TrainConfig, TrainResult
from fetalcmr.workers import map_items

#: The notebook whose methods these are (:func:`fetalcmr.methods.methods_of`).
STAGE = "02_segmentation"
#: The method, (c): its network feeds the classifier (notebook 03) and joint training (notebook 04).
METHOD = "net_lp_manual"
#: Network methods (ids) -> supervision targets of the segmentation loss.
TARGETS: Mapping[str, str] = {"net_lp": "lp", "net_lp_manual": "lp+binary", "net_manual": "binary"}


def segmenter_dir(models_dir: str | os.PathLike[str], method: str = METHOD) -> Path:
    """Return the folder of network ``method`` (an id in :data:`TARGETS`) under ``models_dir``.

    The folder carries the paper's letter (``segmenter_c``), as in runs made before the registry.
    """
    if method not in TARGETS:
        raise ValueError(f"no trained network for method {method!r}; choose one of {tuple(TARGETS)}")
    return Path(models_dir) / f"segmenter_{get(method).letter}"


def method_checkpoint(models_dir: str | os.PathLike[str], method: str = METHOD) -> Path:
    """Return the checkpoint holding the selected weights of network ``method`` (default: the method, c)."""
    return segmenter_dir(models_dir, method) / "best.pt"


def train_config(cfg: SegmenterConfig, method: str, seed: int) -> TrainConfig:
    """Return the engine configuration of network ``method`` from the profile's segmenter section
    (network (d), ``net_manual``, trains for ``cfg.manual_epochs`` when set)."""
    epochs = cfg.manual_epochs if method == "net_manual" and cfg.manual_epochs is not None else cfg.epochs
    return TrainConfig(mode="segment", epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr,
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
    """The trained networks (b, c, d; keyed by method id), their histories and training times."""

    results: dict[str, TrainResult]
    keys: dict[str, str]

    @property
    def histories(self) -> dict[str, pd.DataFrame]:
        """Training history per method label."""
        return {get(m).label: r.history for m, r in self.results.items()}

    def seconds(self) -> dict[str, float]:
        """Total training wall seconds per method (from the history, so also for reused runs)."""
        return {m: float(r.history["seconds"].sum()) for m, r in self.results.items()}


def train_segmenters(data: Mapping[str, Any], cfg: SegmenterConfig, models_dir: str | os.PathLike[str], *,
                     grid: int | None, spacing_mm: float | None, seed: int = 0,
                     methods: Sequence[str] = tuple(TARGETS), progress: bool = True) -> SegmenterRuns:
    """Train (or reuse, or resume) the networks of ``methods`` (ids) on the training split of ``data``.

    The cache key names a network by its letter, so runs trained before the registry stay valid.
    The networks train in parallel single-thread processes (:func:`fetalcmr.parallel.train_runs`).
    """
    keys = ("image", "lp", "binary", "label")
    train_samples = make_samples(data["training"], keys, grid=grid, spacing_mm=spacing_mm)
    val_samples = make_samples(data.get("validation", []) or [], keys, grid=grid, spacing_mm=spacing_mm)
    digest = training_digest(data)
    jobs = []
    for method in methods:
        tcfg = train_config(cfg, method, seed)
        run_key = content_key("segmenter", get(method).letter, dataclasses.asdict(cfg), tcfg.to_dict(), seed, digest,
                              grid, spacing_mm, code_version(__name__))
        jobs.append(TrainJob(functools.partial(make_segmenter, cfg), "training", "validation", tcfg,
                             segmenter_dir(models_dir, method), run_key))
    trained = train_runs(jobs, {"training": train_samples, "validation": val_samples}, desc="segmenters",
                         progress=progress)
    return SegmenterRuns(dict(zip(methods, trained, strict=True)), {m: j.run_key for m, j in zip(methods, jobs)})


# --------------------------------------------------------------------------------------------
# inference


def _predict_labels_one(sample: Mapping[str, Any], ctx: tuple[torch.nn.Module, Path]) -> np.ndarray:
    model, out = ctx
    labels = predict_volume(model, sample["image"]).softmax.argmax(0).astype(np.uint8)
    save_nifti(out / f"{sample['id']}.nii.gz", labels, sample["affine"])
    return labels


def predict_labels(model: torch.nn.Module, samples: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike[str],
                   *, progress: bool = True) -> dict[str, np.ndarray]:
    """Return ``{id: label map}`` (argmax) for ``samples`` and save each as NIfTI (the input's affine);
    subjects go to parallel single-thread processes (:func:`fetalcmr.workers.map_items`)."""
    out = Path(out_dir)
    labels = map_items(_predict_labels_one, samples, (model.eval(), out), desc=f"predict {out.name}",
                       progress=progress)
    return {s["id"]: lab for s, lab in zip(samples, labels, strict=True)}


def _save_softmax_one(sample: Mapping[str, Any], ctx: tuple[torch.nn.Module, Path]) -> None:
    model, out = ctx
    save_softmax(softmax_file(out, sample["id"]), predict_volume(model, sample["image"]).softmax, sample["affine"])


def save_softmax_files(model: torch.nn.Module, samples: Sequence[Mapping[str, Any]],
                       out_dir: str | os.PathLike[str], *, progress: bool = True) -> Path:
    """Save the softmax of every sample in ``out_dir`` (:func:`fetalcmr.predict.save_softmax`, with
    the sample's affine), in parallel single-thread processes; return the folder."""
    out = Path(out_dir)
    map_items(_save_softmax_one, samples, (model.eval(), out), desc="softmax", progress=progress)
    return out


# --------------------------------------------------------------------------------------------
# evaluation (test subjects, against gt)


def has_truth(items: Sequence[Mapping[str, Any]]) -> bool:
    """True when every item carries a ``gt`` label map (synthetic data; real data often lacks it)."""
    return bool(items) and all(it.get("gt") for it in items)


@dataclass(frozen=True)
class _Scoring:
    """What scoring one test subject needs besides the subject (a :func:`map_items` context)."""

    grid: int | None
    spacing_mm: float | None
    labels: Mapping[int, str]
    classes: Mapping[int, str]


def _evaluate_one(pair: tuple[Mapping[str, Any], Mapping[str, np.ndarray]], ctx: _Scoring
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return the per-label and region rows of every method's prediction of one subject."""
    from fetalcmr.metrics import evaluate_segmentation, region_metrics

    it, preds = pair
    truth_vol = load_volume(it["gt"], kind="label", grid=ctx.grid, spacing_mm=ctx.spacing_mm)
    truth = truth_vol.array
    spacing = np.sqrt((truth_vol.affine[:3, :3] ** 2).sum(0))
    cls = ctx.classes.get(int(it["label"]), str(it["label"])) if "label" in it else ""
    per_label, region = [], []
    for method, pred in preds.items():
        base = {"method": method, "id": it["id"], "class": cls}
        region.append({**base, **region_metrics(pred > 0, truth > 0)})
        if get(method).multiclass:
            df = evaluate_segmentation(pred, truth, spacing, ctx.labels)
            per_label += [{**base, **row} for row in df.to_dict("records")]
    return per_label, region


def evaluate(predictions: Mapping[str, Mapping[str, np.ndarray]], items: Sequence[Mapping[str, Any]], *,
             grid: int | None, spacing_mm: float | None, labels: Mapping[int, str] = LABELS,
             classes: Mapping[int, str] = CLASSES, progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return per-subject ``(per_label, region)`` tables of every method against ``gt``.

    ``predictions`` is keyed by method id.
    ``per_label``: method, id, class, label, name, dice, hd95, asd, precision (multi-class methods a–c).
    ``region``: method, id, class, dice, sensitivity, specificity, precision of the vessel region
    (foreground of the prediction vs. foreground of ``gt``), for every method. Subjects are scored
    in parallel processes (:func:`fetalcmr.workers.map_items`).
    """
    pairs = [(it, {m: preds[it["id"]] for m, preds in predictions.items()}) for it in items]
    rows = map_items(_evaluate_one, pairs, _Scoring(grid, spacing_mm, dict(labels), dict(classes)),
                     desc="evaluate", progress=progress)
    return (pd.DataFrame([r for per_label, _ in rows for r in per_label]),
            pd.DataFrame([r for _, region in rows for r in region]))


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


# --------------------------------------------------------------------------------------------
# the whole stage


#: Per-subject result tables of the stage, under the run's ``results/`` (written when the test subjects have gt).
PER_LABEL_CSV = "segmentation_per_label.csv"
REGION_CSV = "segmentation_region.csv"


@dataclass(frozen=True, eq=False)
class SegmentationOutputs:
    """What notebook 02 leaves in a run folder (:func:`run_segmentation`, :func:`load_segmentation`).

    Every mapping is keyed by method id (:mod:`fetalcmr.methods`).
    """

    checkpoints: Mapping[str, Path]  # network -> its selected weights (``best.pt``)
    histories: Mapping[str, pd.DataFrame]  # network -> training history
    best_epochs: Mapping[str, int]  # network -> epoch of the selected weights
    prediction_dirs: Mapping[str, Path]  # method -> folder of the test subjects' label maps ``<id>.nii.gz``
    softmax_dir: Path | None  # softmax of network (c) for every subject (classifier input); None without (c)
    test_ids: tuple[str, ...]
    per_label: pd.DataFrame | None  # per test subject and vessel (None: the test subjects have no gt)
    region: pd.DataFrame | None  # per test subject, the vessel region
    inference_seconds: float  # per test subject, network (c); NaN without test subjects

    def labels(self, method: str, subject: str) -> np.ndarray:
        """Return the label map ``method`` predicted for test subject ``subject`` (uint8, as saved)."""
        return np.rint(load_nifti(self.prediction_dirs[method] / f"{subject}.nii.gz").array).astype(np.uint8)

    def train_seconds(self) -> dict[str, float]:
        """Total training wall seconds per network (from its history, so also for reused runs)."""
        return {m: float(h["seconds"].sum()) for m, h in self.histories.items()}


def _read_tables(results_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    kw: dict[str, Any] = {"dtype": {"id": str, "class": str}}
    return pd.read_csv(results_dir / PER_LABEL_CSV, **kw), pd.read_csv(results_dir / REGION_CSV, **kw)


def _read_outputs(models_dir: str | os.PathLike[str], predictions_dir: str | os.PathLike[str],
                  results_dir: str | os.PathLike[str]) -> SegmentationOutputs:
    """Return the outputs that the stage's record in ``results_dir`` describes, read from their files."""
    import json

    from fetalcmr.train import read_history

    record = json.loads(outputs_record(results_dir, STAGE).read_text())
    nets = list(record["networks"])
    per_label, region = _read_tables(Path(results_dir)) if record["evaluated"] else (None, None)
    seconds = record["inference_seconds"]
    return SegmentationOutputs(
        checkpoints={m: method_checkpoint(models_dir, m) for m in nets},
        histories={m: read_history(segmenter_dir(models_dir, m)) for m in nets},
        best_epochs={m: int(record["best_epochs"][m]) for m in nets},
        prediction_dirs={m: Path(predictions_dir) / str(get(m).folder) for m in record["predicted"]},
        softmax_dir=segmenter_dir(models_dir, METHOD) / "softmax" if record["softmax"] else None,
        test_ids=tuple(record["test_ids"]), per_label=per_label, region=region,
        inference_seconds=float("nan") if seconds is None else float(seconds))


def run_segmentation(data: Mapping[str, Any], cfg: SegmenterConfig, *, models_dir: str | os.PathLike[str],
                     predictions_dir: str | os.PathLike[str], results_dir: str | os.PathLike[str],
                     grid: int | None, spacing_mm: float | None, seed: int = 0,
                     progress: bool = True) -> SegmentationOutputs:
    """Train (or reuse) networks b–d, predict the test subjects into ``predictions_dir/<method folder>/``,
    save the (c) softmax of every subject, and, when the test subjects have ``gt``, evaluate all
    methods and write ``results_dir/segmentation_per_label.csv`` and ``segmentation_region.csv``.

    The stage's record (:func:`fetalcmr.paths.outputs_record`) is written last; the outputs are
    read back from the files, so they equal :func:`load_segmentation`'s for the same folders.
    """
    from fetalcmr.atomic import atomic_path, write_json_atomic

    runs = train_segmenters(data, cfg, models_dir, grid=grid, spacing_mm=spacing_mm, seed=seed,
                            progress=progress)
    test_items = list(data.get("testing", []) or [])
    test_samples = make_samples(test_items, ("image", "lp"), grid=grid, spacing_mm=spacing_mm)
    lp_method = get("lp")
    predictions: dict[str, dict[str, np.ndarray]] = {lp_method.id: {}}
    for s in test_samples:
        lp = s["lp"][0].astype(np.uint8)
        save_nifti(Path(predictions_dir) / str(lp_method.folder) / f"{s['id']}.nii.gz", lp, s["affine"])
        predictions[lp_method.id][s["id"]] = lp
    inference = float("nan")
    for method, result in runs.results.items():
        t0 = time.perf_counter()
        predictions[method] = predict_labels(result.model, test_samples,
                                             Path(predictions_dir) / str(get(method).folder), progress=progress)
        if method == METHOD and test_samples:
            inference = (time.perf_counter() - t0) / len(test_samples)
    # frozen softmax of the method's network for every subject (classifier input, notebook 03)
    all_items = [it for split in ("training", "validation", "testing") for it in data.get(split, []) or []]
    softmax_dir = segmenter_dir(models_dir, METHOD) / "softmax"
    if METHOD in runs.results:
        record = softmax_dir / SOFTMAX_DONE
        from fetalcmr.cache import is_fresh, mark_fresh

        key = content_key("softmax", SOFTMAX_FORMAT, runs.keys[METHOD], [it["id"] for it in all_items])
        if not is_fresh(record, key):
            save_softmax_files(runs.results[METHOD].model,
                               make_samples(all_items, ("image",), grid=grid, spacing_mm=spacing_mm), softmax_dir,
                               progress=progress)
            mark_fresh(record, key, n_subjects=len(all_items))
    evaluated = has_truth(test_items)
    if evaluated:
        per_label, region = evaluate(predictions, test_items, grid=grid, spacing_mm=spacing_mm,
                                     labels={int(k): v for k, v in (data.get("labels") or LABELS).items()},
                                     progress=progress)
        for df, name in ((per_label, PER_LABEL_CSV), (region, REGION_CSV)):
            with atomic_path(Path(results_dir) / name) as tmp:
                df.to_csv(tmp, index=False)
    write_json_atomic(outputs_record(results_dir, STAGE), {
        "networks": list(runs.results), "predicted": list(predictions),
        "best_epochs": {m: int(r.best_epoch) for m, r in runs.results.items()},
        "softmax": METHOD in runs.results, "test_ids": [str(s["id"]) for s in test_samples],
        "evaluated": evaluated, "inference_seconds": inference if np.isfinite(inference) else None})
    return _read_outputs(models_dir, predictions_dir, results_dir)


def load_segmentation(paths: RunPaths) -> SegmentationOutputs:
    """Return what notebook 02 wrote for the run ``paths`` (nothing is trained or predicted).

    Raises :class:`fetalcmr.paths.StageNotRun` when the stage has not run there.
    """
    paths.require(STAGE, paths.outputs_record(STAGE))
    return _read_outputs(paths.models_dir, paths.predictions_dir, paths.results_dir)
