"""Joint fine-tuning of segmenter and classifier (notebook 04): runs, controls, λ sweep, ensemble
and their evaluation on the test subjects (tables, paired tests, figures: :mod:`fetalcmr.joint_report`).

A joint pair is :class:`fetalcmr.models.JointNet` built from the separately trained LP+manual
segmenter (notebook 02) and ``softmax+image`` classifier (notebook 03, which pools its input to
its own grid). The engine's ``joint`` mode trains both with ``seg loss + λ · CE``; gradients of
the classification term reach the segmenter through its softmax. Controls: the separately
trained pair (no fine-tuning) and the same fine-tuning with λ = 0 (as many steps; only the
segmentation loss). Every run keeps its last weights (``select="last"``), so the runs compared
differ only in λ. The compared methods are named by their :mod:`fetalcmr.methods` id; what the
stage leaves in a run folder is :class:`JointOutputs` (:func:`run_joint`, :func:`load_joint`).

>>> joint_run_dir("models/joint", "sweep_0.5").as_posix()
'models/joint/sweep/sweep_0.5'
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from fetalcmr.anatomy import N_LABELS
from fetalcmr.atomic import atomic_path
from fetalcmr.cache import code_version, content_key, file_digest
from fetalcmr.classification import ClassificationOutputs, build_classifier, load_segmenter
from fetalcmr.classmetrics import balanced_accuracy
from fetalcmr.config import ClassifierConfig, JointConfig, SegmenterConfig
from fetalcmr.ensemble import average_softmax, ensemble_classes
from fetalcmr.io import save_nifti
from fetalcmr.losses import binary_weight_at
from fetalcmr.methods import get, methods_of
from fetalcmr.metrics import dice_per_label, evaluate_segmentation
from fetalcmr.models import JointNet, make_segmenter
from fetalcmr.parallel import TrainJob, train_runs
from fetalcmr.paths import RunPaths
from fetalcmr.postprocess import PostProcessing, choose_postprocessing
from fetalcmr.predict import predict_volume
from fetalcmr.segmentation import METHOD as SEGMENTER_METHOD
from fetalcmr.segmentation import SegmentationOutputs
from fetalcmr.stats import finite_mean
from fetalcmr.train import TrainConfig, TrainResult, read_history, train
from fetalcmr.workers import map_items

#: The notebook of this stage.
STAGE = "04_joint_training"
#: The classifier input of the joint pair.
KIND = "softmax+image"
#: Per-subject tables of the evaluation, under the run's ``results/``.
SEG_METRICS_CSV = "joint_segmentation_metrics.csv"
CLASS_PREDICTIONS_CSV = "joint_classification.csv"
#: the λ sweep's metrics (Dice against the propagated labels) and class predictions on the validation
#: split: a balance is a setting to choose, and validation truth is never read
SWEEP_METRICS_CSV = "joint_sweep_segmentation_metrics.csv"
SWEEP_PREDICTIONS_CSV = "joint_sweep_classification.csv"
#: fine-tuning runs whose test label maps are kept (under ``predictions/``, in their registry folder): the
#: joint pair and its λ = 0 control, so that notebook 05 compares their topology after the same steps
SAVED_MAPS: tuple[str, ...] = ("joint", "lambda0")


def compared_methods(class_predictions: pd.DataFrame) -> list[str]:
    """Return the compared methods (registry order: separate, λ = 0, joint, ensemble) that have predictions."""
    present = set(class_predictions["method"])
    return [m.id for m in methods_of(STAGE) if m.id in present]


def prediction_dirs(predictions_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Return ``{method id: folder}`` of the label maps of :data:`SAVED_MAPS` under ``predictions_dir``."""
    return {m: Path(predictions_dir) / str(get(m).folder or m) for m in SAVED_MAPS}


def joint_run_dir(out_dir: str | os.PathLike[str], name: str) -> Path:
    """Return the folder of fine-tuning run ``name`` under ``out_dir`` (λ sweep runs under ``sweep/``)."""
    return Path(out_dir) / ("sweep" if name.startswith("sweep_") else "") / name


def build_joint(seg_cfg: SegmenterConfig, cls_cfg: ClassifierConfig, kind: str = "softmax+image", *,
                seg_state: Mapping[str, torch.Tensor] | None = None,
                cls_state: Mapping[str, torch.Tensor] | None = None, n_labels: int = N_LABELS) -> JointNet:
    """Return a :class:`JointNet`: a segmenter, then a classifier reading ``kind`` inputs, holding
    copies of the given weights (freshly initialised where none are given).

    Joint fine-tuning starts from the separately trained pair; :mod:`fetalcmr.bundle` loads its
    members into networks built here.
    """
    segmenter = make_segmenter(seg_cfg, n_labels)
    classifier = build_classifier(cls_cfg, kind, n_labels)
    if seg_state is not None:
        segmenter.load_state_dict(seg_state)
    if cls_state is not None:
        classifier.load_state_dict(cls_state)
    return JointNet(segmenter, classifier, with_image=True)


def joint_train_config(jcfg: JointConfig, seg_cfg: SegmenterConfig, *, lam: float, epochs: int,
                       seed: int) -> TrainConfig:
    """Return the engine configuration of one fine-tuning run (mode joint, last weights kept).

    Fine-tuning continues the segmenter's training, so its binary-term weight stays at the value
    the segmenter's schedule reached in its last epoch.
    """
    final_weight = binary_weight_at(seg_cfg.epochs - 1, seg_cfg.binary_weight)
    return TrainConfig(mode="joint", epochs=epochs, batch_size=jcfg.batch_size, lr=jcfg.lr,
                       weight_decay=seg_cfg.weight_decay, aug_prob=seg_cfg.aug_prob, targets="lp+binary",
                       binary_weight=(final_weight, 0.0, 1), lam=float(lam), seed=seed, balanced=True,
                       select="last")


def fine_tune_job(factory: Callable[[], nn.Module], train_samples: Sequence[dict[str, Any]], cfg: TrainConfig,
                  out_dir: str | os.PathLike[str], *, start_key: str, train_set: str = "training",
                  val_set: str = "validation") -> TrainJob:
    """Return one fine-tuning run as a :class:`~fetalcmr.parallel.TrainJob` (``factory`` picklable,
    e.g. a :func:`functools.partial` of :func:`build_joint`); ``start_key`` identifies the starting
    weights (e.g. digests of the separate checkpoints)."""
    run_key = content_key("joint", start_key, [s["id"] for s in train_samples], code_version(__name__))
    return TrainJob(factory, train_set, val_set, cfg, Path(out_dir), run_key)


def fine_tune(factory: Callable[[], nn.Module], train_samples: Sequence[dict[str, Any]],
              val_samples: Sequence[dict[str, Any]], cfg: TrainConfig, out_dir: str | os.PathLike[str], *,
              start_key: str, progress: bool = True) -> TrainResult:
    """Return the fine-tuned pair, trained here (the engine resumes, or loads a finished run with the same inputs)."""
    job = fine_tune_job(factory, train_samples, cfg, out_dir, start_key=start_key)
    return train(factory, train_samples, val_samples, cfg, out_dir, run_key=job.run_key, progress=progress)


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


@dataclass(frozen=True)
class _Prediction:
    """What predicting one test subject needs besides the subject (a :func:`fetalcmr.parallel.map_items` context)."""

    models: Mapping[str, nn.Module]
    ensembles: Mapping[str, Sequence[str]]
    save_dirs: Mapping[str, Path]
    dice_only: Sequence[str]
    spacing_mm: float | Sequence[float]
    labels: Mapping[int, str]


def _predict_one(pair: tuple[Mapping[str, Any], np.ndarray | None], ctx: _Prediction
                 ) -> tuple[list[pd.DataFrame], list[dict[str, Any]]]:
    """Return the segmentation metric frames and class rows of every model and ensemble on one subject."""
    s, gt = pair
    sid, cls_true = str(s["id"]), int(s["label"])
    soft: dict[str, np.ndarray] = {}
    probs: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for name, model in ctx.models.items():
        t0 = time.perf_counter()
        soft[name], probs[name] = predict_volume(model, s["image"])
        seconds[name] = time.perf_counter() - t0
    voted: dict[str, int] = {}
    for name, members in ctx.ensembles.items():
        soft[name] = average_softmax([soft[m] for m in members])
        votes, mean_p = ensemble_classes([probs[m][None] for m in members])
        probs[name], voted[name] = mean_p[0], int(votes[0])
        seconds[name] = sum(seconds[m] for m in members)
    seg_rows: list[pd.DataFrame] = []
    cls_rows: list[dict[str, Any]] = []
    for name in [*ctx.models, *ctx.ensembles]:
        pred_cls = voted[name] if name in voted else int(probs[name].argmax())
        label_map = soft[name].argmax(0).astype(np.uint8)
        if name in ctx.save_dirs:
            save_nifti(Path(ctx.save_dirs[name]) / f"{sid}.nii.gz", label_map, np.asarray(s["affine"]))
        cls_rows.append({"method": name, "id": sid, "label": cls_true, "pred": pred_cls,
                         **{f"p{c}": float(v) for c, v in enumerate(probs[name])},
                         "seconds": seconds[name]})
        if gt is not None:
            df = _dice_frame(label_map, gt, ctx.labels) if name in ctx.dice_only else \
                evaluate_segmentation(label_map, gt, ctx.spacing_mm, ctx.labels)
            df.insert(0, "cls", cls_true)
            df.insert(0, "id", sid)
            df.insert(0, "method", name)
            seg_rows.append(df)
    return seg_rows, cls_rows


def predict_and_evaluate(models: Mapping[str, JointNet], samples: Sequence[Mapping[str, Any]],
                         truth: Mapping[str, np.ndarray | None], *, spacing_mm: float | Sequence[float],
                         labels: Mapping[int, str], ensembles: Mapping[str, Sequence[str]] | None = None,
                         save_dirs: Mapping[str, Path] | None = None, dice_only: Sequence[str] = (),
                         progress: bool = True, workers: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return ``(segmentation metrics, class predictions)`` of every model and ensemble on ``samples``.

    ``truth`` maps a subject id to its multi-class truth (or None: no segmentation metrics).
    ``ensembles`` maps a name to member model names: softmax averaged, class by majority vote.
    Label maps of the methods in ``save_dirs`` are written there as ``<id>.nii.gz`` with the
    image's affine. Methods in ``dice_only`` skip the surface distances (``nan``).
    Metrics rows: ``method, id, cls, label, name, dice, hd95, asd, precision``;
    class rows: ``method, id, label, pred, p0…``, plus ``seconds`` (inference per subject).
    Subjects go to parallel single-thread processes (:func:`fetalcmr.parallel.map_items`).
    """
    ctx = _Prediction({n: m.eval() for n, m in models.items()}, dict(ensembles or {}), dict(save_dirs or {}),
                      tuple(dice_only), spacing_mm, dict(labels))
    pairs = [(s, truth.get(str(s["id"]))) for s in samples]
    per_subject = map_items(_predict_one, pairs, ctx, workers=workers, desc="predict", progress=progress)
    seg_rows = [df for frames, _ in per_subject for df in frames]
    cls_rows = [row for _, rows in per_subject for row in rows]
    seg = pd.concat(seg_rows, ignore_index=True) if seg_rows else pd.DataFrame(
        columns=["method", "id", "cls", "label", "name", "dice", "hd95", "asd", "precision"])
    return seg, pd.DataFrame(cls_rows) if cls_rows else pd.DataFrame(columns=["method", "id", "label", "pred"])


def _dice_frame(pred: np.ndarray, truth: np.ndarray, labels: Mapping[int, str]) -> pd.DataFrame:
    fg = [int(k) for k in labels if int(k) != 0]
    dices = dice_per_label(pred, truth, fg)
    return pd.DataFrame([{"label": k, "name": labels[k], "dice": dices[k], "hd95": np.nan, "asd": np.nan,
                          "precision": np.nan} for k in fg])


def method_scores(seg: pd.DataFrame, cls_pred: pd.DataFrame, methods: Sequence[str]) -> dict[str, dict[str, float]]:
    """Return per method its mean Dice (test subjects × labels, finite values) and balanced accuracy
    (NaN without class predictions): what the bundle records and notebook 04's comparison shows."""
    out = {}
    for m in methods:
        c = cls_pred[cls_pred["method"] == m]
        out[m] = {"dice": finite_mean(seg.loc[seg["method"] == m, "dice"]),
                  "balanced_accuracy": balanced_accuracy(c["label"], c["pred"]) if len(c) else float("nan")}
    return out


def ensemble_postprocessing(members: Sequence[nn.Module], validation: Sequence[Mapping[str, Any]],
                            labels: Mapping[int, str]) -> PostProcessing:
    """Choose the bundle's connected-component clean-up on the validation split: the ensemble's label
    maps against the propagated labels (``lp``; the weak labels, never the ground truth), per label
    as :func:`fetalcmr.postprocess.choose_postprocessing` does. No validation subject: no clean-up."""
    if not validation:
        return PostProcessing()
    predictions = [average_softmax([predict_volume(m, s["image"]).softmax for m in members]).argmax(axis=0)
                   for s in validation]
    references = [np.asarray(s["lp"])[0] for s in validation]
    return choose_postprocessing(predictions, references, labels)


def joint_samples(data: Mapping[str, Any], *, grid: int | None, spacing_mm: float | None
                  ) -> dict[str, list[dict[str, Any]]]:
    """Return engine samples per split: training/validation with ``lp`` and ``binary``, testing image+label."""
    from fetalcmr.data import make_samples

    train_keys = ("image", "lp", "binary", "label")
    return {"training": make_samples(data["training"], train_keys, grid=grid, spacing_mm=spacing_mm),
            "validation": make_samples(data.get("validation") or [], train_keys, grid=grid, spacing_mm=spacing_mm),
            "testing": make_samples(data["testing"], ("image", "label"), grid=grid, spacing_mm=spacing_mm)}


def truth_maps(items: Sequence[Mapping[str, Any]], *, grid: int | None, spacing_mm: float | None
               ) -> dict[str, np.ndarray | None]:
    """Return ``{id: multi-class truth}`` of evaluation items (None where an item has no ``gt``)."""
    from fetalcmr.data import load_volume

    return {str(it["id"]): load_volume(it["gt"], kind="label", grid=grid, spacing_mm=spacing_mm).array
            if it.get("gt") else None for it in items}


@dataclass
class JointExperiment:
    """Fine-tuning runs, test-set metrics (validation-split metrics of the λ sweep) and training times
    of notebook 04."""

    runs: dict[str, TrainResult]
    seg: pd.DataFrame
    cls: pd.DataFrame
    sweep_seg: pd.DataFrame
    sweep_cls: pd.DataFrame
    train_seconds: dict[str, float]
    ensemble_members: list[str]
    sweep_methods: dict[float, str]


def run_joint_experiments(*, seg_cfg: SegmenterConfig, seg_state: Mapping[str, torch.Tensor], seg_key: str,
                          cls_cfg: ClassifierConfig, cls_states: Mapping[int, Mapping[str, torch.Tensor]],
                          cls_keys: Mapping[int, str], jcfg: JointConfig, samples: Mapping[str, Sequence[dict]],
                          truth: Mapping[str, np.ndarray | None], spacing_mm: float, labels: Mapping[int, str],
                          out_dir: str | os.PathLike[str], predictions_dir: str | os.PathLike[str],
                          results_dir: str | os.PathLike[str], progress: bool = True) -> JointExperiment:
    """Return the joint experiment: λ fine-tuning, the λ = 0 control and ensemble members, evaluated
    with the separately trained pair on the test subjects, and the λ sweep, evaluated on the
    validation subjects (the balance is a setting; settings are chosen there) against their
    propagated labels (``lp``: the weak labels; validation truth is never read).

    ``truth`` maps test ids to their multi-class truth (None: no segmentation metrics). Runs (engine
    resume/loading) live in ``out_dir``; the label maps of the joint pair and of the λ = 0 control go to
    ``predictions_dir/<method>/<id>.nii.gz`` (:func:`prediction_dirs`); the per-subject tables to ``results_dir``
    (:data:`SEG_METRICS_CSV`, :data:`CLASS_PREDICTIONS_CSV` and the sweep's
    :data:`SWEEP_METRICS_CSV`, :data:`SWEEP_PREDICTIONS_CSV`), reused while the checkpoints and the
    evaluated subjects are unchanged.
    """
    from fetalcmr.cache import is_fresh, mark_fresh

    seeds = list(jcfg.ensemble_seeds) or [0]
    missing = [s for s in seeds if s not in cls_states]
    if missing:
        raise ValueError(f"ensemble seeds {missing} have no separately trained classifier "
                         f"(classifier seeds: {sorted(cls_states)})")
    out_dir, results_dir = Path(out_dir), Path(results_dir)
    train_s, val_s, test_s = samples["training"], samples["validation"], samples["testing"]

    def factory(cls_seed: int) -> Callable[[], JointNet]:
        return functools.partial(build_joint, seg_cfg, cls_cfg, seg_state=seg_state, cls_state=cls_states[cls_seed])

    def key(cls_seed: int) -> str:
        return content_key(seg_key, cls_keys[cls_seed])

    main = seeds[0]
    plan: list[tuple[str, int, float, int, str, str]] = [
        ("joint", main, jcfg.lam, jcfg.epochs, "training", "validation"),
        ("lambda0", main, 0.0, jcfg.epochs, "training", "validation"),
        *[(f"joint_seed{s}", s, jcfg.lam, jcfg.epochs, "training", "validation") for s in seeds[1:]],
    ]
    shared = {"training": train_s, "validation": val_s, "sweep": stratified_subset(train_s, jcfg.sweep_subjects,
                                                                                   seed=main), "none": []}
    sweep_methods = {float(lam): f"sweep_{lam:g}" for lam in jcfg.lambda_sweep}
    plan += [(name, main, lam, jcfg.sweep_epochs, "sweep", "none") for lam, name in sweep_methods.items()]
    jobs = [fine_tune_job(factory(cls_seed), shared[tr],
                          joint_train_config(jcfg, seg_cfg, lam=lam, epochs=epochs, seed=cls_seed),
                          joint_run_dir(out_dir, name), start_key=key(cls_seed), train_set=tr, val_set=va)
            for name, cls_seed, lam, epochs, tr, va in plan]
    runs = dict(zip([p[0] for p in plan], train_runs(jobs, shared, desc="joint runs", progress=progress), strict=True))
    seconds = {n: float(r.history["seconds"].sum()) if "seconds" in r.history else float("nan")
               for n, r in runs.items()}

    members = ["joint", *[f"joint_seed{s}" for s in seeds[1:]]]
    ensembles = {"ensemble": members} if len(members) > 1 else {}
    sweeps = set(sweep_methods.values())
    eval_key = content_key("joint-eval", {n: file_digest(r.out_dir / "latest.pt") for n, r in runs.items()},
                           seg_key, key(main), [s["id"] for s in test_s], [s["id"] for s in val_s],
                           sorted(ensembles), SAVED_MAPS)
    record = results_dir / "joint_eval.json"
    csvs = [results_dir / f for f in (SEG_METRICS_CSV, CLASS_PREDICTIONS_CSV, SWEEP_METRICS_CSV,
                                      SWEEP_PREDICTIONS_CSV)]
    pred_dirs = prediction_dirs(predictions_dir)
    saved = all((d / f"{s['id']}.nii.gz").exists() for d in pred_dirs.values() for s in test_s)
    if is_fresh(record, eval_key) and all(p.exists() for p in csvs) and saved:
        frames = [pd.read_csv(p, dtype={"id": str}) for p in csvs]
    else:
        models: dict[str, JointNet] = {"separate": factory(main)().eval()}
        models.update({n: r.model for n, r in runs.items() if n not in sweeps})
        frames = [*predict_and_evaluate(models, test_s, truth, spacing_mm=spacing_mm, labels=labels,
                                        ensembles=ensembles, save_dirs=pred_dirs, progress=progress),
                  *predict_and_evaluate({n: runs[n].model for n in sweep_methods.values()}, val_s,
                                        {str(s["id"]): np.asarray(s["lp"])[0] for s in val_s},
                                        spacing_mm=spacing_mm, labels=labels, dice_only=sorted(sweeps),
                                        progress=progress)]
        results_dir.mkdir(parents=True, exist_ok=True)
        for df, path in zip(frames, csvs, strict=True):
            with atomic_path(path) as tmp:
                df.to_csv(tmp, index=False)
        mark_fresh(record, eval_key)
    seg, cls, sweep_seg, sweep_cls = frames
    return JointExperiment(runs=runs, seg=seg, cls=cls, sweep_seg=sweep_seg, sweep_cls=sweep_cls,
                           train_seconds=seconds, ensemble_members=members, sweep_methods=sweep_methods)


@dataclass(frozen=True, eq=False)
class JointOutputs:
    """What notebook 04 leaves in a run folder (:func:`run_joint`, :func:`load_joint`)."""

    seg_metrics: pd.DataFrame  # per test subject and label, every method (``joint_segmentation_metrics.csv``)
    class_predictions: pd.DataFrame  # per test subject, every method: label, pred, p0… (``joint_classification.csv``)
    sweep_metrics: pd.DataFrame  # the λ sweep's runs per validation subject and label: Dice against ``lp``
    sweep_predictions: pd.DataFrame  # the λ sweep's runs per validation subject: label, pred, p0…
    run_dirs: Mapping[str, Path]  # fine-tuning run -> its folder
    histories: Mapping[str, pd.DataFrame]  # fine-tuning run -> training history
    ensemble_members: tuple[str, ...]
    sweep_methods: Mapping[float, str]  # λ -> its sweep run
    prediction_dirs: Mapping[str, Path]  # method id -> folder of the test subjects' label maps (:data:`SAVED_MAPS`)
    bundle_dir: Path  # the exported model bundle (:mod:`fetalcmr.bundle`)

    @property
    def train_seconds(self) -> dict[str, float]:
        """Fine-tuning wall seconds per run (from its history)."""
        return {n: float(h["seconds"].sum()) if "seconds" in h else float("nan") for n, h in self.histories.items()}


def _read_outputs(paths: RunPaths) -> JointOutputs:
    """Return the outputs the stage's record under ``paths`` describes, read from their files."""
    import json

    record = json.loads(paths.outputs_record(STAGE).read_text())
    run_dirs = {str(n): joint_run_dir(paths.joint_dir, str(n)) for n in record["runs"]}
    paths.require(STAGE, *[d / "history.csv" for d in run_dirs.values()])
    return JointOutputs(
        seg_metrics=pd.read_csv(paths.results_dir / SEG_METRICS_CSV, dtype={"id": str}),
        class_predictions=pd.read_csv(paths.results_dir / CLASS_PREDICTIONS_CSV, dtype={"id": str}),
        sweep_metrics=pd.read_csv(paths.results_dir / SWEEP_METRICS_CSV, dtype={"id": str}),
        sweep_predictions=pd.read_csv(paths.results_dir / SWEEP_PREDICTIONS_CSV, dtype={"id": str}),
        run_dirs=run_dirs, histories={n: read_history(d) for n, d in run_dirs.items()},
        ensemble_members=tuple(record["ensemble_members"]),
        sweep_methods={float(lam): str(name) for lam, name in record["sweep"]},
        prediction_dirs=prediction_dirs(paths.predictions_dir), bundle_dir=paths.bundle_dir)


def run_joint(data: Mapping[str, Any], segmentation: SegmentationOutputs, classification: ClassificationOutputs, *,
              seg_cfg: SegmenterConfig, cls_cfg: ClassifierConfig, jcfg: JointConfig, paths: RunPaths,
              grid: int, spacing_mm: float, provenance: Mapping[str, Any] | None = None,
              progress: bool = True) -> JointOutputs:
    """Fine-tune the separately trained pairs of notebooks 02 and 03 (:func:`run_joint_experiments`),
    export the ensemble of joint pairs as a model bundle and record the stage.

    The pair starts from ``segmentation``'s LP+manual segmenter and ``classification``'s
    softmax+image classifier of each ensemble seed (their finished runs' weights; nothing is
    retrained). Runs go to ``paths.joint_dir``, label maps of the joint pair and the λ = 0 control to
    ``predictions/joint/`` and ``predictions/lambda0/``, tables to ``results/``, the bundle to
    ``paths.bundle_dir`` (with the compared methods' Dice and balanced accuracy, and ``provenance``).
    The stage's record is written last; the outputs are read back, so they equal :func:`load_joint`'s.
    """
    from fetalcmr.atomic import write_json_atomic
    from fetalcmr.bundle import alignment_template, export_bundle
    from fetalcmr.dataset import classes_of, labels_of

    if SEGMENTER_METHOD not in segmentation.checkpoints:
        raise ValueError(f"notebook 02 did not train the segmenter {SEGMENTER_METHOD!r} joint training starts from")
    segmenter, seg_key = load_segmenter(segmentation.checkpoints[SEGMENTER_METHOD], seg_cfg)
    seeds = list(jcfg.ensemble_seeds) or [0]
    cls_states = {s: classification.weights(KIND, s) for s in seeds}
    cls_keys = {s: file_digest(classification.checkpoint(KIND, s)) for s in seeds}
    labels = labels_of(dict(data))
    samples = joint_samples(data, grid=grid, spacing_mm=spacing_mm)
    exp = run_joint_experiments(
        seg_cfg=seg_cfg, seg_state=segmenter.state_dict(), seg_key=seg_key, cls_cfg=cls_cfg, cls_states=cls_states,
        cls_keys=cls_keys, jcfg=jcfg, samples=samples,
        truth=truth_maps(data["testing"], grid=grid, spacing_mm=spacing_mm), spacing_mm=spacing_mm, labels=labels,
        out_dir=paths.joint_dir, predictions_dir=paths.predictions_dir, results_dir=paths.results_dir,
        progress=progress)
    members = [exp.runs[m].model for m in exp.ensemble_members]
    export_bundle(paths.bundle_dir, members, segmenter=seg_cfg,
                  classifier=cls_cfg, kind=KIND, grid=grid, spacing_mm=spacing_mm,
                  labels=labels, classes=classes_of(dict(data)), provenance=dict(provenance or {}),
                  template=alignment_template(dict(data)),
                  postprocessing=ensemble_postprocessing(members, samples["validation"], labels),
                  metrics=method_scores(exp.seg, exp.cls, compared_methods(exp.cls)))
    write_json_atomic(paths.outputs_record(STAGE), {
        "runs": list(exp.runs), "ensemble_members": list(exp.ensemble_members),
        "sweep": [[lam, name] for lam, name in exp.sweep_methods.items()]})
    return _read_outputs(paths)


def load_joint(paths: RunPaths) -> JointOutputs:
    """Return what notebook 04 wrote for the run ``paths`` (nothing is trained or predicted).

    Raises :class:`fetalcmr.paths.StageNotRun` when the stage has not run there.
    """
    paths.require(STAGE, paths.outputs_record(STAGE), *[paths.results_dir / f for f in (
        SEG_METRICS_CSV, CLASS_PREDICTIONS_CSV, SWEEP_METRICS_CSV, SWEEP_PREDICTIONS_CSV)])
    return _read_outputs(paths)
