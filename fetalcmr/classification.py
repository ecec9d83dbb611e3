"""Anomaly classification (notebook 03): classifier inputs, experiments over input types and seeds,
and the test predictions (scores, tables and figures: :mod:`fetalcmr.classification_report`).

Three inputs are compared on the same split (docs/design.md §4): the ``image`` alone (1 channel), the
``softmax`` of the frozen LP+manual segmenter (12 channels), and ``softmax+image`` (13
channels, the reference's best). Every classification sample carries both the softmax (key
``extra``) and the image, so the engine draws the *same* augmented volumes for every input type;
the network's first layer (:class:`InputSelect`) keeps the channels its input type reads. The
frozen segmenter's softmax is computed once and cached. The classifier may run on a coarser
grid than the segmenter (:class:`GridPool`, ``ClassifierConfig.grid``): inputs are
average-pooled inside the network, so the same classifier plugs into the joint network
(:class:`fetalcmr.models.JointNet`), which hands it the full-grid softmax and image. What the
stage leaves in a run folder is :class:`ClassificationOutputs` (:func:`run_classification`,
:func:`load_classification`).

>>> input_channels("softmax+image")
13
>>> run_dir("models/classifier", "softmax+image", 1).as_posix()
'models/classifier/softmax_image/seed1'
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
import torch.nn.functional as F
from torch import nn
from tqdm.std import tqdm

from fetalcmr.anatomy import CLASSES, LABEL_INDEX, N_LABELS
from fetalcmr.cache import code_version, content_key, mark_fresh
from fetalcmr.config import ClassifierConfig, SegmenterConfig
from fetalcmr.models import make_classifier
from fetalcmr.parallel import TrainJob, train_runs
from fetalcmr.paths import RunPaths
from fetalcmr.predict import (
    SOFTMAX_DONE,
    SOFTMAX_FORMAT,
    load_softmax,
    predict_volume,
    quantise_softmax,
    save_softmax,
    softmax_file,
)
from fetalcmr.segmentation import METHOD as SEGMENTER_METHOD
from fetalcmr.segmentation import SegmentationOutputs
from fetalcmr.train import TrainConfig, TrainResult, load_checkpoint, read_history, train

#: The notebook of this stage.
STAGE = "03_classification"
#: Classifier input types, in the order they are reported.
INPUT_KINDS: tuple[str, ...] = ("image", "softmax", "softmax+image")
#: Test predictions of every run (:func:`prediction_frame` rows), under the run's ``results/``.
PREDICTIONS_CSV = "classification_predictions.csv"


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


def crop_starts(x: torch.Tensor, size: int, *, centre_channel: int | None) -> torch.Tensor:
    """Return [B, 3] start indices of a ``size``³ crop of the [B, C, ...] tensor ``x``.

    The crop is centred on the probability-weighted centroid of channel ``centre_channel`` (the
    segmenter's AO softmax), or on the grid centre when ``centre_channel`` is None or the channel
    is empty; it is moved inside the volume when the centre is near an edge.
    """
    shape = torch.tensor(x.shape[2:], dtype=torch.float64)
    centre = ((shape - 1) / 2).expand(x.shape[0], 3).clone()
    if centre_channel is not None:
        with torch.no_grad():
            w = x[:, centre_channel].double().clamp_min(0)
            mass = w.sum(dim=(1, 2, 3))
            axes = [torch.arange(n, dtype=torch.float64) for n in x.shape[2:]]
            grids = torch.meshgrid(*axes, indexing="ij")
            weighted = torch.stack([(w * g).sum(dim=(1, 2, 3)) for g in grids], dim=1)
            found = mass > 1e-3
            centre[found] = weighted[found] / mass[found, None]
    start = torch.round(centre - (size - 1) / 2).long()
    return torch.minimum(start.clamp_min(0), (shape.long() - size).clamp_min(0))


class ArchCrop(nn.Module):
    """Crop a [B, n_labels + 1, ...] input (softmax channels, then image) to ``size``³ around the aorta.

    The crop is centred on the segmenter's AO softmax centroid for every input type, so all
    types see the same region (the image-only classifier gets the segmenter's localisation, not its
    softmax channels); identity when the input is already ``size``³ (samples cropped beforehand by
    :func:`crop_sample`).
    """

    def __init__(self, size: int | None) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the crops of ``x``."""
        if self.size is None or tuple(x.shape[2:]) == (self.size,) * 3:
            return x
        starts = crop_starts(x, self.size, centre_channel=LABEL_INDEX["AO"])
        k = self.size
        return torch.stack([x[b, :, i:i + k, j:j + k, m:m + k] for b, (i, j, m) in enumerate(starts.tolist())])


def crop_sample(softmax: np.ndarray, image: np.ndarray, size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(softmax, image)`` [C, ...] cropped to ``size``³ as :class:`ArchCrop` crops them."""
    if size is None:
        return softmax, image
    x = torch.cat([torch.as_tensor(softmax, dtype=torch.float32), torch.as_tensor(image, dtype=torch.float32)])
    out = ArchCrop(size)(x[None])[0].numpy()
    return out[:-image.shape[0]], out[-image.shape[0]:]


def min_classifier_grid(cfg: ClassifierConfig) -> int:
    """Return the smallest input grid whose last dense block is still ≥ 2³ (instance norm needs it).

    The MONAI DenseNet stem divides by 4, each transition by 2: DenseNet121 needs 64, the
    default small net (3 blocks) 32.
    """
    n_blocks = 4 if cfg.arch == "densenet121" else len(cfg.block_config)
    return 8 * 2 ** (n_blocks - 1)


def build_classifier(cfg: ClassifierConfig, kind: str, n_labels: int = N_LABELS) -> nn.Module:
    """Return ``ArchCrop(cfg.crop) → InputSelect(kind) → GridPool(cfg.grid) [→ 1×1×1 projection] → DenseNet``.

    The network reads [B, n_labels + 1, ...]. The projection (``cfg.input_projection``) applies
    to inputs with more channels than it keeps: the 7³ stem convolution dominates the cost of a
    small DenseNet on 12 or 13 channels, and a learned channel mix in front of it is a low-rank
    factorisation of that stem.
    """
    side = cfg.grid or cfg.crop
    if side is not None and side < min_classifier_grid(cfg):
        raise ValueError(f"classifier input {side}³ is below the smallest grid {min_classifier_grid(cfg)} "
                         f"for arch {cfg.arch!r} with blocks {cfg.block_config}")
    channels = input_channels(kind, n_labels)
    layers: list[nn.Module] = [ArchCrop(cfg.crop), InputSelect(kind, n_labels), GridPool(cfg.grid)]
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
    if cfg.crop is not None:
        net += f", input a native-resolution {cfg.crop}³ crop centred on the segmenter's aorta"
        return net + (f" average-pooled to {cfg.grid}³" if cfg.grid else "")
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


def segmenter_softmax(segmenter: nn.Module, samples: Sequence[Mapping[str, Any]], *, grid: int | None,
                      progress: bool = True) -> dict[str, np.ndarray]:
    """Return ``{id: softmax [12, grid³] float32}`` of the frozen ``segmenter`` on each sample's image.

    The softmax is quantised on the sample's grid before pooling, as notebook 02's stored files
    are (:func:`fetalcmr.predict.quantise_softmax`), so the classifier inputs are the same bits
    whether :func:`prepare_classification` computes the softmax or reads notebook 02's files.
    """
    return {str(s["id"]): pool_to(quantise_softmax(predict_volume(segmenter, s["image"]).softmax), grid)
            for s in tqdm(samples, desc="segmenter softmax", disable=not progress, leave=False)}


def classification_samples(samples: Sequence[Mapping[str, Any]], softmax: Mapping[str, np.ndarray], *,
                           grid: int | None, crop: int | None = None) -> list[dict[str, Any]]:
    """Return classifier samples ``{id, image [1,g³], extra (softmax) [12,g³], label}`` on ``grid``,
    or cropped to ``crop``³ around the aorta (:class:`ArchCrop`).

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
        soft, image = crop_sample(soft, image, crop)
        out.append({"id": sid, "image": image, "extra": soft, "label": int(s["label"])})
    return out


def stack_inputs(samples: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    """Return the network input [N, 13, ...]: softmax channels then the image (as the engine does)."""
    return torch.cat([torch.as_tensor(np.stack([s["extra"] for s in samples])),
                      torch.as_tensor(np.stack([s["image"] for s in samples]))], dim=1).float()


def stored_softmax(folder: str | os.PathLike[str], ids: Sequence[str], *, grid: int | None,
                   record: str = SOFTMAX_DONE) -> dict[str, np.ndarray] | None:
    """Return ``{id: softmax pooled to grid}`` from the softmax files in ``folder``
    (:func:`fetalcmr.predict.softmax_file`), or None when the folder's ``record`` is missing or
    any subject's file is."""
    files = [softmax_file(folder, str(i)) for i in ids]
    if not (Path(folder) / record).exists() or not all(f.exists() for f in files):
        return None
    return {str(i): pool_to(load_softmax(f), grid) for i, f in zip(ids, files, strict=True)}


@dataclass
class ClassificationData:
    """Classifier samples of every split (same order as the dataset's items), their cache key and
    the folder caching the segmenter's softmax."""

    samples: dict[str, list[dict[str, Any]]]
    items: dict[str, list[dict[str, Any]]]
    data_key: str
    softmax_dir: Path


def prepare_classification(data: Mapping[str, Any], segmenter: nn.Module, *, segmenter_key: str,
                           cfg: ClassifierConfig, grid: int | None, spacing_mm: float | None,
                           cache_dir: str | os.PathLike[str], softmax_dir: str | os.PathLike[str] | None = None,
                           progress: bool = True) -> ClassificationData:
    """Return classifier samples for every split of ``data``, with the frozen segmenter's softmax cached.

    Items are read through :func:`fetalcmr.data.make_samples` (image and label only; never
    ``gt``) on the cohort grid. The softmax, pooled to the classifier grid, is stored once per
    (segmenter, subjects, grids) in the folder ``cache_dir/softmax_<key>/`` (one file per subject,
    :mod:`fetalcmr.predict`'s format). It is read from ``softmax_dir`` (written by notebook 02
    for the same segmenter, completed by its ``done.json``) when every subject is there, else
    computed here. The samples are always built from the stored (quantised) files, so a first run
    and a cached run give the classifiers the same inputs.
    """
    from fetalcmr.data import make_samples
    from fetalcmr.dataset import SPLITS

    items = {split: list(data.get(split) or []) for split in SPLITS}
    raw = {split: make_samples(v, ("image", "label"), grid=grid, spacing_mm=spacing_mm) for split, v in items.items()}
    key = content_key("softmax", SOFTMAX_FORMAT, segmenter_key, cfg.grid, grid, spacing_mm,
                      {split: [s["id"] for s in v] for split, v in raw.items()})
    cache = Path(cache_dir) / f"softmax_{key}"
    everyone = [s for v in raw.values() for s in v]
    ids = [str(s["id"]) for s in everyone]
    softmax = stored_softmax(cache, ids, grid=cfg.grid)
    if softmax is None:
        softmax = stored_softmax(softmax_dir, ids, grid=cfg.grid) if softmax_dir else None
        if softmax is None:
            softmax = segmenter_softmax(segmenter, everyone, grid=cfg.grid, progress=progress)
        for sid, soft in softmax.items():
            save_softmax(softmax_file(cache, sid), soft)
        mark_fresh(cache / SOFTMAX_DONE, key, n_subjects=len(softmax))
        # read back what was stored, so a first run and a cached run train on identical inputs
        softmax = stored_softmax(cache, ids, grid=cfg.grid)
    samples = {split: classification_samples(v, softmax, grid=cfg.grid, crop=cfg.crop) for split, v in raw.items()}
    return ClassificationData(samples=samples, items=items, data_key=key, softmax_dir=cache)


# --------------------------------------------------------------------------------------------
# training and prediction


#: Weights a classifier run keeps: its last epoch's. Chosen on the validation split (default profile,
#: 15 runs of 20 epochs, ``tab03_selection``): balanced accuracy on 9 validation subjects moves in steps
#: of 1/9–1/3 and sits at its maximum in 3–15 epochs of a run, so "best validation balanced accuracy"
#: took the first of those ties (epoch 4–16), while the validation loss kept falling to the last epoch
#: (its minimum there in 10 runs, within 0.011 of it in the other 5).
SELECT: str = "last"


def train_config(cfg: ClassifierConfig, seed: int) -> TrainConfig:
    """Return the engine's configuration for a classifier run (mode classify, balanced sampling,
    the last epoch's weights: :data:`SELECT`)."""
    return TrainConfig(mode="classify", epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                       weight_decay=cfg.weight_decay, aug_prob=cfg.aug_prob, seed=seed, balanced=True,
                       select=SELECT)


def classifier_job(cfg: ClassifierConfig, kind: str, train_samples: Sequence[dict[str, Any]],
                   out_dir: str | os.PathLike[str], *, seed: int, data_key: str = "", train_set: str = "training",
                   val_set: str = "validation") -> TrainJob:
    """Return the training run of the classifier for input ``kind`` and ``seed`` as a
    :class:`~fetalcmr.parallel.TrainJob` reading the named sample sets."""
    run_key = content_key("classifier", kind, dataclasses.asdict(cfg), data_key, [s["id"] for s in train_samples],
                          code_version(__name__))
    return TrainJob(functools.partial(build_classifier, cfg, kind), train_set, val_set, train_config(cfg, seed),
                    Path(out_dir), run_key)


def train_classifier(cfg: ClassifierConfig, kind: str, train_samples: Sequence[dict[str, Any]],
                     val_samples: Sequence[dict[str, Any]], out_dir: str | os.PathLike[str], *, seed: int,
                     data_key: str = "", progress: bool = True) -> TrainResult:
    """Return the trained classifier for input ``kind`` (resumes or loads a finished run), trained
    here on the current torch threads."""
    job = classifier_job(cfg, kind, train_samples, out_dir, seed=seed, data_key=data_key)
    return train(job.make_model, train_samples, val_samples, job.cfg, job.out_dir, run_key=job.run_key,
                 progress=progress)


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
    """Return one row per subject: ``columns…, id, label, pred, p0…p{C-1}``.

    Probabilities are stored as float64 (exactly the network's values), so a CSV round trip keeps them.
    """
    df = pd.DataFrame({"id": list(ids), "label": [int(v) for v in labels], "pred": probs.argmax(1)})
    for c in range(probs.shape[1]):
        df[f"p{c}"] = probs[:, c].astype(np.float64)
    for k, v in reversed(list(columns.items())):
        df.insert(0, k, v)
    return df


def probs_of(df: pd.DataFrame) -> np.ndarray:
    """Return the probability columns ``p0…`` of a prediction frame as [N, C]."""
    cols = sorted((c for c in df.columns if c.startswith("p") and c[1:].isdigit()), key=lambda c: int(c[1:]))
    return df[cols].to_numpy(float)


@dataclass
class ClassificationRun:
    """One trained classifier: input type, seed, test predictions and costs (``model``: None when
    read from a run folder; :meth:`ClassificationOutputs.weights` loads its weights)."""

    kind: str
    seed: int
    predictions: pd.DataFrame
    history: pd.DataFrame
    train_seconds: float
    infer_seconds_per_subject: float
    out_dir: Path
    model: nn.Module | None = None


def run_dir(out_dir: str | os.PathLike[str], kind: str, seed: int) -> Path:
    """Return the folder of the classifier run of input ``kind`` and ``seed`` under ``out_dir``."""
    return Path(out_dir) / _check_kind(kind).replace("+", "_") / f"seed{seed}"


def run_experiments(cfg: ClassifierConfig, train_samples: Sequence[dict[str, Any]],
                    val_samples: Sequence[dict[str, Any]], test_samples: Sequence[dict[str, Any]],
                    out_dir: str | os.PathLike[str], *, kinds: Sequence[str] = INPUT_KINDS,
                    seeds: Sequence[int] | None = None, data_key: str = "",
                    progress: bool = True) -> list[ClassificationRun]:
    """Return one :class:`ClassificationRun` per input type and seed, trained on the same split.

    Runs live in ``out_dir/<kind>/seed<k>``; finished runs are loaded, not retrained; the runs go
    to parallel single-thread processes (:func:`fetalcmr.parallel.train_runs`). The
    training time is the engine's recorded wall time of the epochs (so it survives reloading).
    """
    out_dir = Path(out_dir)
    plan = [(kind, seed) for kind in kinds for seed in (cfg.seeds if seeds is None else seeds)]
    jobs = [classifier_job(cfg, kind, train_samples, run_dir(out_dir, kind, seed), seed=seed, data_key=data_key)
            for kind, seed in plan]
    results = train_runs(jobs, {"training": train_samples, "validation": val_samples}, desc="classifier runs",
                         progress=progress)
    runs = []
    for (kind, seed), res in zip(plan, results, strict=True):
        t0 = time.perf_counter()
        probs = predict_probs(res.model, test_samples)
        infer = (time.perf_counter() - t0) / max(len(test_samples), 1)
        preds = prediction_frame([s["id"] for s in test_samples], [s["label"] for s in test_samples],
                                 probs, kind=kind, seed=seed)
        seconds = float(res.history["seconds"].sum()) if "seconds" in res.history else float("nan")
        runs.append(ClassificationRun(kind, seed, preds, res.history, seconds, infer, res.out_dir, res.model))
    return runs


# --------------------------------------------------------------------------------------------
# the whole stage


def finished_weights(out_dir: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Return the weights that :func:`fetalcmr.train.train` returns for the finished run in ``out_dir``:
    its ``best.pt`` when the run selects the best epoch and that file belongs to it, else its last
    epoch's (``latest.pt``). Raises ``FileNotFoundError`` for a missing or unfinished run."""
    out = Path(out_dir)
    if not (out / "latest.pt").exists():
        raise FileNotFoundError(f"{out}: no finished training run (no latest.pt)")
    latest = load_checkpoint(out / "latest.pt")
    config = latest["identity"]["config"]
    if int(latest["epoch"]) < int(config["epochs"]):
        raise FileNotFoundError(f"{out}: training run stopped at epoch {latest['epoch']} of {config['epochs']}")
    if config.get("select") == "best" and (out / "best.pt").exists():
        best = load_checkpoint(out / "best.pt")
        if best.get("identity") == latest["identity"]:
            return best["model"]
    return latest["model"]


@dataclass(frozen=True, eq=False)
class ClassificationOutputs:
    """What notebook 03 leaves in a run folder (:func:`run_classification`, :func:`load_classification`)."""

    runs: tuple[ClassificationRun, ...]  # per input type and seed, in training order (no models in memory)
    data_key: str  # cache key of the classifier inputs (segmenter, subjects, grids)
    softmax_dir: Path  # the segmenter's softmax of every subject, pooled to the classifier grid
    split_sizes: Mapping[str, int]  # subjects per split

    @property
    def predictions(self) -> pd.DataFrame:
        """Test predictions of every run: ``kind, seed, id, label, pred, p0…``."""
        return pd.concat([r.predictions for r in self.runs], ignore_index=True)

    def run(self, kind: str, seed: int) -> ClassificationRun:
        """Return the run of input ``kind`` and ``seed``; ``KeyError`` names the runs there are."""
        for r in self.runs:
            if r.kind == kind and r.seed == seed:
                return r
        raise KeyError(f"no classifier run {kind} seed {seed}; runs: {[(r.kind, r.seed) for r in self.runs]}")

    def checkpoint(self, kind: str, seed: int) -> Path:
        """Return the run's last checkpoint (``latest.pt``: its digest identifies the run)."""
        return self.run(kind, seed).out_dir / "latest.pt"

    def weights(self, kind: str, seed: int) -> dict[str, torch.Tensor]:
        """Return the run's selected weights (:func:`finished_weights`), as training returned them."""
        return finished_weights(self.run(kind, seed).out_dir)


def _read_outputs(paths: RunPaths) -> ClassificationOutputs:
    """Return the outputs the stage's record under ``paths`` describes, read from their files."""
    import json

    record = json.loads(paths.outputs_record(STAGE).read_text())
    predictions = pd.read_csv(paths.results_dir / PREDICTIONS_CSV, dtype={"id": str, "kind": str})
    runs = []
    for r in record["runs"]:
        kind, seed = str(r["kind"]), int(r["seed"])
        out = run_dir(paths.classifier_dir, kind, seed)
        paths.require(STAGE, out / "latest.pt", out / "history.csv")
        history = read_history(out)
        preds = predictions[(predictions["kind"] == kind) & (predictions["seed"] == seed)].reset_index(drop=True)
        seconds = float(history["seconds"].sum()) if "seconds" in history else float("nan")
        runs.append(ClassificationRun(kind, seed, preds, history, seconds, float(r["infer_seconds_per_subject"]),
                                      out))
    return ClassificationOutputs(runs=tuple(runs), data_key=record["data_key"],
                                 softmax_dir=paths.classifier_dir / f"softmax_{record['data_key']}",
                                 split_sizes=dict(record["split_sizes"]))


def run_classification(data: Mapping[str, Any], segmentation: SegmentationOutputs, cfg: ClassifierConfig,
                       segmenter_cfg: SegmenterConfig, *, paths: RunPaths, grid: int | None,
                       spacing_mm: float | None, kinds: Sequence[str] = INPUT_KINDS,
                       seeds: Sequence[int] | None = None, progress: bool = True) -> ClassificationOutputs:
    """Train (or load) the classifiers of ``kinds`` × ``seeds`` on the frozen LP+manual segmenter of
    notebook 02 (``segmentation``), predict the test subjects and record the stage.

    Runs live in ``paths.classifier_dir`` (:func:`run_dir`); the test predictions go to
    ``results/classification_predictions.csv``; the stage's record is written last. The outputs are
    read back from the files, so they equal :func:`load_classification`'s.
    """
    from fetalcmr.atomic import atomic_path, write_json_atomic

    if SEGMENTER_METHOD not in segmentation.checkpoints or segmentation.softmax_dir is None:
        raise ValueError(f"notebook 02 did not train the segmenter {SEGMENTER_METHOD!r} the classifier reads")
    segmenter, seg_key = load_segmenter(segmentation.checkpoints[SEGMENTER_METHOD], segmenter_cfg)
    prep = prepare_classification(data, segmenter, segmenter_key=seg_key, cfg=cfg, grid=grid, spacing_mm=spacing_mm,
                                  cache_dir=paths.classifier_dir, softmax_dir=segmentation.softmax_dir,
                                  progress=progress)
    runs = run_experiments(cfg, prep.samples["training"], prep.samples["validation"], prep.samples["testing"],
                           paths.classifier_dir, kinds=kinds, seeds=seeds, data_key=prep.data_key,
                           progress=progress)
    with atomic_path(paths.results_dir / PREDICTIONS_CSV) as tmp:
        pd.concat([r.predictions for r in runs], ignore_index=True).to_csv(tmp, index=False)
    write_json_atomic(paths.outputs_record(STAGE), {
        "data_key": prep.data_key, "split_sizes": {k: len(v) for k, v in prep.samples.items()},
        "runs": [{"kind": r.kind, "seed": r.seed, "infer_seconds_per_subject": r.infer_seconds_per_subject}
                 for r in runs]})
    return _read_outputs(paths)


def load_classification(paths: RunPaths) -> ClassificationOutputs:
    """Return what notebook 03 wrote for the run ``paths``: the finished runs (no retraining).

    Raises :class:`fetalcmr.paths.StageNotRun` when the stage has not run there, or one of its runs
    is missing.
    """
    paths.require(STAGE, paths.outputs_record(STAGE), paths.results_dir / PREDICTIONS_CSV)
    return _read_outputs(paths)
