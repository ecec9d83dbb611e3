"""The training engine: one loop that trains a segmenter, a classifier or both jointly.

:func:`train` seeds every generator, builds the model, AdamW (learning rate decaying linearly
to 0 over the run) and mixed precision where the device computes it natively
(:func:`mixed_precision`: CUDA, or a CPU with AVX512-BF16/AMX); continues from ``latest.pt`` when it holds
the same ``run_key`` and configuration (a finished run only loads); then each epoch draws a
class-balanced set of samples, augments them (the reference's MONAI augmentations), takes the
optimiser steps, validates, and writes atomic ``latest.pt``, ``best.pt`` and ``history.csv``.
It returns the weights of the best validation metric (or of the last epoch).

What differs between the three modes of the reference lives in one step object per mode
(:data:`STEPS`, chosen once from ``TrainConfig.mode``): the loss of a batch and its logged
parts, which outputs are segmentation and class logits, the scores of one validation sample,
and the selection metric ``val_metric`` (Dice for ``segment``, balanced accuracy for
``classify``, their mean for ``joint``).

The same call runs under ``torchrun --nproc_per_node N`` (DistributedDataParallel): every rank
draws the same class-balanced epoch and keeps its share, the logged losses are averaged over
ranks, only rank 0 validates and writes, and every rank returns rank 0's history and weights.

Samples are dicts of channel-first arrays made by :mod:`fetalcmr.data` (``image`` [C,...],
optional ``extra`` [E,...] placed before the image channels, ``lp``/``binary`` [1,...],
``label`` int). Model outputs per mode: ``segment`` logits [B,12,...]; ``classify`` logits
[B,3]; ``joint`` a tuple of both (:class:`fetalcmr.models.JointNet`).

>>> cfg = TrainConfig(mode="segment", epochs=2, batch_size=2, lr=1e-3)
>>> cfg.lr_at(1)
0.0005
>>> mode_step(cfg).val_metric({"val_dice": 0.8, "val_bacc": 0.5})
0.8
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.std import tqdm

from fetalcmr.atomic import atomic_path, write_text_atomic
from fetalcmr.classmetrics import balanced_accuracy
from fetalcmr.data import EpochDataset, balanced_indices
from fetalcmr.losses import SegmentationLoss, joint_loss
from fetalcmr.metrics import mean_dice
from fetalcmr.models import divisor
from fetalcmr.padding import crop_to, pad_to_multiple
from fetalcmr.transforms import augmentation
from fetalcmr.workers import THREADS_ENV, available_cores

CHECKPOINT_VERSION = 1
#: environment variable: "0" turns mixed precision off (:func:`mixed_precision`)
AMP_ENV = "FETALCMR_AMP"
#: precisions of training steps and whole-volume forward passes (the last two: mixed, via autocast)
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on besides the model and the data."""

    mode: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 1e-5
    aug_prob: float = 0.3
    #: side of random vessel-biased training patches (segment mode); None trains on whole volumes
    patch: int | None = None
    #: segmenter supervision: "lp+binary", "lp" or "binary"
    targets: str = "lp+binary"
    binary_weight: tuple[float, float, int] = (1.0, 0.05, 50)
    #: weight of the classification loss in joint mode
    lam: float = 14.0
    seed: int = 0
    balanced: bool = True
    val_every: int = 1
    #: weights returned at the end: "best" validation metric or "last" epoch
    select: str = "best"
    #: "float32", or mixed precision "bfloat16"/"float16"; default: what this machine's training
    #: device computes natively (:func:`mixed_precision`), so it is part of every run's key
    precision: str = field(default_factory=lambda: mixed_precision())
    #: data-loader worker processes; None: 0 on CPU (the cores train), up to 4 per GPU
    num_workers: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in STEPS:
            raise ValueError(f"unknown training mode {self.mode!r}; choose one of {MODES}")
        if self.select not in ("best", "last"):
            raise ValueError(f"select must be 'best' or 'last', not {self.select!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be positive")

    def lr_at(self, epoch: int) -> float:
        """Return the learning rate used during ``epoch`` (0-based): linear decay to 0."""
        return self.lr * (1.0 - epoch / self.epochs)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view (for cache keys and checkpoints)."""
        return dataclasses.asdict(self)

    @property
    def sample_keys(self) -> tuple[str, ...]:
        """Sample keys the run reads (never ``gt``)."""
        return ("image", "extra", *STEPS[self.mode].target_keys(self.targets))


@dataclass
class TrainResult:
    """A finished run: the model (selected weights, eval mode), its history and files."""

    model: nn.Module
    history: pd.DataFrame
    out_dir: Path
    best_epoch: int
    best_metric: float
    resumed_from: int  # epochs already done when this call started (0: fresh run)


# --------------------------------------------------------------------------------------------
# environment


@dataclass(frozen=True)
class Runtime:
    """Device and process-group facts of this process."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0)."""
        return self.rank == 0


def cpu_threads(world_size: int = 1) -> int:
    """Return the torch CPU threads of one training process: ``$FETALCMR_THREADS`` when set, else
    this process's cores shared among ``world_size`` processes.

    The thread count changes the bits of training (the splits of every reduction follow it), so
    fixing it makes runs on machines with different core counts comparable (docs/design.md §6).
    """
    value = os.environ.get(THREADS_ENV, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, not {value!r}")
        return int(value)
    return max(1, available_cores() // max(world_size, 1))


def mixed_precision(device: torch.device | None = None) -> str:
    """Return the precision to train and run whole volumes in on ``device`` (default: the device
    :func:`runtime` trains on, CUDA if present): one of :data:`PRECISIONS`.

    CUDA: bfloat16 where supported, else float16 (with a gradient scaler). CPU: bfloat16 where the
    cores compute it natively (AVX512-BF16 or AMX tiles), which halves a segmenter step (0.64 →
    0.32 s, one thread, docs/design.md §6); elsewhere float32, as oneDNN would emulate bfloat16,
    slower than float32. ``$FETALCMR_AMP=0`` gives float32 on every device.
    """
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if os.environ.get(AMP_ENV, "").strip() == "0":
        return "float32"
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        native = any(getattr(torch.cpu, probe, lambda: False)()
                     for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        return "bfloat16" if native else "float32"
    return "float32"


def runtime() -> Runtime:
    """Return the device (CUDA if present) and, under ``torchrun``, join the process group.

    On the CPU, torch runs :func:`cpu_threads` threads.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(cpu_threads(world))
    return Runtime(device=device, rank=rank, world_size=world, distributed=world > 1)


def deterministic_kernels() -> None:
    """Ask torch for deterministic kernels: ``use_deterministic_algorithms`` (warning, not failing,
    on an operation that has none, e.g. 3D average-pool backward on CUDA), cuDNN without
    benchmarking or non-deterministic algorithms, and cuBLAS's deterministic workspace (read when
    CUDA's first cuBLAS handle is made). On the CPU this changes no result of the pipeline."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) random generators; use deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 (libraries draw from the global state)
    torch.manual_seed(seed)
    deterministic_kernels()


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()  # noqa: NPY002
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1]).copy()), *map(float, np_state[2:])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, precision))


# --------------------------------------------------------------------------------------------
# batches and whole-volume forward passes


def training_layout(device: torch.device, precision: str) -> torch.memory_format:
    """Return the memory layout of 3D tensors while training in ``precision`` on ``device``.

    ``torch.channels_last_3d``, oneDNN's fast layout for 3D convolutions in float32 (default profile,
    one CPU thread, epochs of the same data: segmenter 36 % and 12/13-channel classifiers 33 % shorter
    than contiguous, image-only classifier unchanged), except bfloat16 on the CPU, where the
    contiguous layout is the faster one (a default-profile step, one thread: segmenter 0.45 s float32
    channels-last, 0.37 s bfloat16 channels-last, 0.27 s bfloat16 contiguous; 13-channel classifier
    0.16, 0.12, 0.11 s; docs/design.md §6).
    """
    return torch.contiguous_format if device.type == "cpu" and precision == "bfloat16" else torch.channels_last_3d


def set_memory_format(model: nn.Module, memory_format: torch.memory_format) -> nn.Module:
    """Return ``model`` with its 5-D parameters and buffers (3D convolution weights) in ``memory_format``.

    The engine trains in :func:`training_layout` and hands models back contiguous, as a loaded
    checkpoint is, so every consumer sees the same layout whether a model was just trained or read.
    """
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.ndim == 5:
            tensor.data = tensor.data.contiguous(memory_format=memory_format)
    return model


def _inputs(batch: dict[str, Any], device: torch.device,
            layout: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    image = batch["image"].to(device, non_blocking=True).float()
    if "extra" in batch:
        image = torch.cat([batch["extra"].to(device, non_blocking=True).float(), image], dim=1)
    return image.contiguous(memory_format=layout) if image.ndim == 5 else image


def _target(batch: dict[str, Any], key: str, device: torch.device) -> torch.Tensor | None:
    if key not in batch:
        return None
    value = batch[key]
    if key == "label":
        return torch.as_tensor(value).to(device).long()
    return value.to(device, non_blocking=True)[:, 0].long()


def _sample_batch(sample: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """Return one sample as a batch of 1 (tensors [1,C,...], ``label`` [1])."""
    batch = {k: torch.as_tensor(np.asarray(sample[k]))[None] for k in keys if k in sample}
    if "label" in sample:
        batch["label"] = torch.tensor([int(sample["label"])])
    return batch


@torch.no_grad()
def forward_volume(model: nn.Module, image: torch.Tensor, *, multiple: int = 16, precision: str | None = None) -> Any:
    """Return ``model``'s outputs for a whole volume ``image`` [B,C,...] (padded, then cropped back),
    computed in ``precision`` (None: :func:`mixed_precision` of the model's device), returned in float32."""
    device = next(model.parameters()).device
    x, shape = pad_to_multiple(image.to(device).float(), multiple)
    with _autocast(device, precision or mixed_precision(device)):
        out = model(x)

    def crop(t: torch.Tensor) -> torch.Tensor:
        return crop_to(t, shape).float() if t.ndim > 2 else t.float()

    return tuple(crop(o) for o in out) if isinstance(out, tuple) else crop(out)


# --------------------------------------------------------------------------------------------
# per-mode steps


def dice_mean(pred: torch.Tensor, truth: torch.Tensor, labels: Sequence[int]) -> float:
    """Return :func:`fetalcmr.metrics.mean_dice` over ``labels`` of two integer maps, 1.0 when none is present.

    Validation only (checkpoint selection against the training targets): an empty pair counts as
    perfect here, while evaluation tables leave it out (``docs/design.md`` §7).
    """
    score = mean_dice(np.asarray(pred), np.asarray(truth), labels)
    return 1.0 if np.isnan(score) else score


@dataclass(frozen=True)
class SampleScore:
    """Validation scores of one sample: segmentation Dice and/or the predicted and true class."""

    dice: float | None = None
    pred: int | None = None
    truth: int | None = None


class ModeStep(ABC):
    """What the engine asks of a training mode; one subclass per mode in :data:`STEPS`."""

    #: the mode supervises a segmentation (its batches carry the ``lp``/``binary`` targets)
    segments: ClassVar[bool]
    #: the mode may train on random patches (``TrainConfig.patch``); a classifier needs whole volumes
    patches: ClassVar[bool]

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.seg_loss = SegmentationLoss(cfg.targets, cfg.binary_weight)

    @classmethod
    def target_keys(cls, targets: str) -> tuple[str, ...]:
        """Return the mask keys (``lp``, ``binary``) this mode reads under segmenter ``targets``."""
        return tuple(k for k in ("lp", "binary") if k in targets.split("+")) if cls.segments else ()

    def segmentation(self, outputs: Any) -> torch.Tensor | None:
        """Return the segmentation logits [B,12,...] in the model's ``outputs`` (None: there are none)."""
        return None

    def classification(self, outputs: Any) -> torch.Tensor | None:
        """Return the class logits [B,3] in the model's ``outputs`` (None: there are none)."""
        return None

    @abstractmethod
    def loss(self, outputs: Any, batch: dict[str, Any], epoch: int,
             device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        """Return the loss of a batch and its logged parts."""

    @abstractmethod
    def score(self, outputs: Any, sample: dict[str, Any]) -> SampleScore:
        """Return the validation scores of one sample from the model's ``outputs`` for it."""

    @abstractmethod
    def val_metric(self, row: dict[str, float]) -> float:
        """Return the selection metric (higher is better) from a validation row."""

    def _segment_loss(self, seg_logits: torch.Tensor, batch: dict[str, Any], epoch: int,
                      device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        return self.seg_loss(seg_logits, lp=_target(batch, "lp", device), binary=_target(batch, "binary", device),
                             epoch=epoch)

    def _dice(self, seg_logits: torch.Tensor, sample: dict[str, Any]) -> float:
        """Dice of the argmax against the training target: every ``lp`` label, or the ``binary`` foreground."""
        seg = seg_logits.argmax(1)[0].cpu()
        if self.seg_loss.uses_lp:
            lp = torch.as_tensor(np.asarray(sample["lp"][0])).long()
            return dice_mean(seg, lp, range(1, int(seg_logits.shape[1])))
        return dice_mean((seg > 0).long(), torch.as_tensor(np.asarray(sample["binary"][0])).long(), [1])

    @staticmethod
    def _predicted(class_logits: torch.Tensor) -> int:
        return int(class_logits.argmax(1)[0])


class SegmentStep(ModeStep):
    """``segment``: :class:`~fetalcmr.losses.SegmentationLoss` on the logits; selected by Dice."""

    segments, patches = True, True

    def segmentation(self, outputs: Any) -> torch.Tensor:
        """Return ``outputs`` (the model is a segmenter)."""
        return outputs

    def loss(self, outputs: Any, batch: dict[str, Any], epoch: int,
             device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        """Return the segmentation loss and its parts (``lp``, ``binary``, ``binary_weight``)."""
        return self._segment_loss(self.segmentation(outputs), batch, epoch, device)

    def score(self, outputs: Any, sample: dict[str, Any]) -> SampleScore:
        """Return the sample's Dice against its training target."""
        return SampleScore(dice=self._dice(self.segmentation(outputs), sample))

    def val_metric(self, row: dict[str, float]) -> float:
        """Return ``val_dice``."""
        return row.get("val_dice", float("nan"))


class ClassifyStep(ModeStep):
    """``classify``: cross-entropy on the class logits; selected by balanced accuracy."""

    segments, patches = False, False

    def classification(self, outputs: Any) -> torch.Tensor:
        """Return ``outputs`` (the model is a classifier)."""
        return outputs

    def loss(self, outputs: Any, batch: dict[str, Any], epoch: int,
             device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        """Return the cross-entropy and its part ``ce``."""
        ce = F.cross_entropy(self.classification(outputs).float(), _target(batch, "label", device))
        return ce, {"ce": float(ce.detach())}

    def score(self, outputs: Any, sample: dict[str, Any]) -> SampleScore:
        """Return the sample's predicted and true class."""
        return SampleScore(pred=self._predicted(self.classification(outputs)), truth=int(sample["label"]))

    def val_metric(self, row: dict[str, float]) -> float:
        """Return ``val_bacc``."""
        return row.get("val_bacc", float("nan"))


class JointStep(ModeStep):
    """``joint``: segmentation loss + ``lam`` × cross-entropy (:func:`~fetalcmr.losses.joint_loss`);
    selected by the mean of Dice and balanced accuracy."""

    segments, patches = True, False

    def segmentation(self, outputs: Any) -> torch.Tensor:
        """Return ``outputs[0]``."""
        return outputs[0]

    def classification(self, outputs: Any) -> torch.Tensor:
        """Return ``outputs[1]``."""
        return outputs[1]

    def loss(self, outputs: Any, batch: dict[str, Any], epoch: int,
             device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        """Return the joint loss and its parts (the segmentation parts and ``ce``)."""
        seg, parts = self._segment_loss(self.segmentation(outputs), batch, epoch, device)
        total, ce = joint_loss(seg, self.classification(outputs), _target(batch, "label", device), self.cfg.lam)
        parts["ce"] = float(ce.detach())
        return total, parts

    def score(self, outputs: Any, sample: dict[str, Any]) -> SampleScore:
        """Return the sample's Dice and its predicted and true class."""
        return SampleScore(dice=self._dice(self.segmentation(outputs), sample),
                           pred=self._predicted(self.classification(outputs)), truth=int(sample["label"]))

    def val_metric(self, row: dict[str, float]) -> float:
        """Return the mean of ``val_dice`` and ``val_bacc`` (a missing one counts 0)."""
        return 0.5 * (row.get("val_dice", 0.0) + row.get("val_bacc", 0.0))


#: The step of each training mode.
STEPS: dict[str, type[ModeStep]] = {"segment": SegmentStep, "classify": ClassifyStep, "joint": JointStep}
MODES: tuple[str, ...] = tuple(STEPS)


def mode_step(cfg: TrainConfig) -> ModeStep:
    """Return the step of ``cfg.mode`` (a valid mode: :class:`TrainConfig` refuses others)."""
    return STEPS[cfg.mode](cfg)


@torch.no_grad()
def validate(model: nn.Module, samples: Sequence[dict[str, Any]], cfg: TrainConfig, epoch: int) -> dict[str, float]:
    """Return validation loss and metrics (``val_dice`` against the training targets, ``val_bacc``).

    ``val_metric`` (higher is better) selects the best checkpoint: Dice for ``segment``,
    balanced accuracy for ``classify``, their mean for ``joint``. No ``gt`` is read.
    """
    model.eval()
    step = mode_step(cfg)
    device = next(model.parameters()).device
    multiple = divisor(model)
    losses, scores = [], []
    for s in samples:
        batch = _sample_batch(s, cfg.sample_keys)
        out = forward_volume(model, _inputs(batch, device, training_layout(device, cfg.precision)),
                             multiple=multiple, precision=cfg.precision)
        losses.append(float(step.loss(out, batch, epoch, device)[0]))
        scores.append(step.score(out, s))
    row: dict[str, float] = {"val_loss": float(np.mean(losses)) if losses else float("nan")}
    dices = [sc.dice for sc in scores if sc.dice is not None]
    classified = [sc for sc in scores if sc.pred is not None]
    if dices:
        row["val_dice"] = float(np.mean(dices))
    if classified:
        row["val_bacc"] = balanced_accuracy([sc.truth for sc in classified], [sc.pred for sc in classified])
    row["val_metric"] = step.val_metric(row)
    return row


# --------------------------------------------------------------------------------------------
# checkpoints


def _save(path: Path, payload: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Return a checkpoint written by :func:`train` (``weights_only`` loading)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def _write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    write_text_atomic(path, pd.DataFrame(rows).to_csv(index=False))


# --------------------------------------------------------------------------------------------
# the engine


@dataclass
class _Run:
    """What one call of :func:`train` works on: model, optimisation state, history and files."""

    cfg: TrainConfig
    rt: Runtime
    step: ModeStep
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    out_dir: Path
    identity: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    best_metric: float = -float("inf")
    best_epoch: int = 0

    @property
    def latest_path(self) -> Path:
        """Everything needed to resume, written after every epoch."""
        return self.out_dir / "latest.pt"

    @property
    def best_path(self) -> Path:
        """Model weights at the best validation metric."""
        return self.out_dir / "best.pt"


def _setup(make_model: Callable[[], nn.Module], cfg: TrainConfig, out_dir: Path, run_key: str) -> _Run:
    """Return a fresh run: device (and process group), seeded model, optimiser, scheduler, scaler."""
    rt = runtime()
    seed_everything(cfg.seed)
    model = set_memory_format(make_model().to(rt.device), training_layout(rt.device, cfg.precision))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: max(0.0, 1.0 - e / cfg.epochs))
    use_scaler = cfg.precision == "float16" and rt.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    identity = {"run_key": run_key, "config": cfg.to_dict(), "version": CHECKPOINT_VERSION}
    return _Run(cfg=cfg, rt=rt, step=mode_step(cfg), model=model, optimizer=optimizer, scheduler=scheduler,
                scaler=scaler, out_dir=out_dir, identity=identity)


def _resume(run: _Run) -> None:
    """Load ``latest.pt`` into ``run`` (weights, optimisation and RNG state, history) if it is this run's."""
    if not run.latest_path.exists():
        return
    ckpt = load_checkpoint(run.latest_path, run.rt.device)
    if ckpt.get("identity") != run.identity:
        return
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.scaler.load_state_dict(ckpt["scaler"])
    run.start_epoch, run.history = int(ckpt["epoch"]), list(ckpt["history"])
    run.best_metric, run.best_epoch = float(ckpt["best_metric"]), int(ckpt["best_epoch"])
    _set_rng_state(ckpt["rng"])


def _wrap(run: _Run) -> nn.Module:
    """Return the module the training steps call: the model, in DDP when distributed."""
    if not run.rt.distributed:
        return run.model
    device_ids = [run.rt.device.index] if run.rt.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(run.model, device_ids=device_ids)


def _augmentation(cfg: TrainConfig, step: ModeStep, sample: dict[str, Any]) -> Any:
    """Return the training augmentation of the keys ``sample`` has (random patches where the mode allows)."""
    if not (cfg.aug_prob > 0 or cfg.patch):
        return None
    return augmentation(cfg.aug_prob, [k for k in cfg.sample_keys if k in sample],
                        patch=cfg.patch if step.patches else None)


def _epoch_loader(run: _Run, samples: Sequence[dict[str, Any]], pipeline: Any, epoch: int) -> DataLoader:
    """Return this rank's share of ``epoch``'s class-balanced draw (the same draw on every rank)."""
    cfg, rt = run.cfg, run.rt
    labels = [int(s.get("label", 0)) for s in samples]
    indices = balanced_indices(labels, seed=cfg.seed, epoch=epoch, rank=rt.rank, world_size=rt.world_size,
                               balanced=cfg.balanced)
    ds = EpochDataset(samples, indices, pipeline, (*cfg.sample_keys, "label"), seed=cfg.seed, epoch=epoch,
                      rank=rt.rank)
    workers = cfg.num_workers if cfg.num_workers is not None else (
        min(4, max(available_cores() // rt.world_size - 1, 0)) if rt.device.type == "cuda" else 0)
    return DataLoader(ds, batch_size=cfg.batch_size, shuffle=False, num_workers=workers,
                      pin_memory=rt.device.type == "cuda", persistent_workers=False)


def _train_epoch(run: _Run, net: nn.Module, loader: DataLoader, epoch: int) -> tuple[dict[str, float], float]:
    """Take one epoch of optimiser steps; return the mean loss and parts (over batches and ranks) and the lr."""
    net.train()
    sums: dict[str, float] = {}
    n_batches = 0
    for batch in loader:
        run.optimizer.zero_grad(set_to_none=True)
        with _autocast(run.rt.device, run.cfg.precision):
            outputs = net(_inputs(batch, run.rt.device, training_layout(run.rt.device, run.cfg.precision)))
        loss, parts = run.step.loss(outputs, batch, epoch, run.rt.device)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        for k, v in {"loss": float(loss.detach()), **parts}.items():
            sums[k] = sums.get(k, 0.0) + v
        n_batches += 1
    means = {k: v / max(n_batches, 1) for k, v in sums.items()}
    if run.rt.distributed:
        names = sorted(means)
        t = torch.tensor([means[k] for k in names], dtype=torch.float64, device=run.rt.device)
        dist.all_reduce(t)
        means = dict(zip(names, (t / run.rt.world_size).tolist(), strict=True))
    lr_used = run.scheduler.get_last_lr()[0]
    run.scheduler.step()
    return means, lr_used


def _epoch_row(run: _Run, epoch: int, means: dict[str, float], lr_used: float,
               val_samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Return ``epoch``'s history row: training means, learning rate and, when due, validation.

    Without validation samples the selection metric is minus the training loss.
    """
    cfg = run.cfg
    row: dict[str, Any] = {"epoch": epoch + 1, **{f"train_{k}" if k != "binary_weight" else k: v
                                                  for k, v in means.items()}, "lr": lr_used}
    if val_samples and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
        row.update(validate(run.model, val_samples, cfg, epoch))
    elif not val_samples:
        row["val_metric"] = -means.get("loss", 0.0)
    return row


def _record_epoch(run: _Run, epoch: int, row: dict[str, Any]) -> None:
    """Append ``row`` to the history; write ``best.pt`` if the metric improved, ``latest.pt``, ``history.csv``."""
    run.history.append(row)
    metric = row.get("val_metric")
    if metric is not None and np.isfinite(metric) and metric > run.best_metric:
        run.best_metric, run.best_epoch = float(metric), epoch + 1
        _save(run.best_path, {"identity": run.identity, "model": run.model.state_dict(), "epoch": epoch + 1,
                              "metric": run.best_metric})
    _save(run.latest_path, {
        "identity": run.identity, "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(), "epoch": epoch + 1,
        "history": run.history, "best_metric": run.best_metric, "best_epoch": run.best_epoch,
        "rng": _rng_state(),
    })
    _write_history(run.out_dir / "history.csv", run.history)


def _select(run: _Run) -> TrainResult:
    """Give every rank rank 0's history and best epoch, load the selected weights, return the result."""
    if run.rt.distributed:
        payload = [run.history, run.best_metric, run.best_epoch]
        dist.broadcast_object_list(payload, src=0)
        run.history, run.best_metric, run.best_epoch = payload
    if run.cfg.select == "best" and run.best_path.exists():
        best = load_checkpoint(run.best_path, run.rt.device)
        if best.get("identity") == run.identity:
            run.model.load_state_dict(best["model"])
    set_memory_format(run.model, torch.contiguous_format).eval()
    return TrainResult(model=run.model, history=pd.DataFrame(run.history), out_dir=run.out_dir,
                       best_epoch=run.best_epoch, best_metric=run.best_metric, resumed_from=run.start_epoch)


def train(make_model: Callable[[], nn.Module], train_samples: Sequence[dict[str, Any]],
          val_samples: Sequence[dict[str, Any]], cfg: TrainConfig, out_dir: str | os.PathLike[str], *,
          run_key: str = "", progress: bool = True,
          callback: Callable[[int, dict[str, Any]], None] | None = None) -> TrainResult:
    """Train the model from ``make_model()`` on ``train_samples``; return the selected weights.

    Writes under ``out_dir``: ``latest.pt`` (everything needed to resume, after every epoch),
    ``best.pt`` (model weights at the best validation metric) and ``history.csv``. When
    ``latest.pt`` exists with the same ``run_key`` and configuration, training resumes after its
    epoch (a finished run only loads); otherwise it starts over. ``callback(epoch, row)`` runs on
    rank 0 after each epoch's checkpoint (e.g. to stop early). The model is built after seeding
    with ``cfg.seed``, so the initial weights are reproducible.
    """
    run = _setup(make_model, cfg, Path(out_dir), run_key)
    _resume(run)
    net = _wrap(run)
    pipeline = _augmentation(cfg, run.step, train_samples[0])
    bar = tqdm(range(run.start_epoch, cfg.epochs), initial=run.start_epoch, total=cfg.epochs,
               desc=f"{cfg.mode} {run.out_dir.name}", disable=not (progress and run.rt.is_main), leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        means, lr_used = _train_epoch(run, net, _epoch_loader(run, train_samples, pipeline, epoch), epoch)
        if run.rt.is_main:
            row = _epoch_row(run, epoch, means, lr_used, val_samples)
            row["seconds"] = time.perf_counter() - t0
            _record_epoch(run, epoch, row)
            bar.set_postfix(loss=f"{means.get('loss', float('nan')):.3f}",
                            val=f"{row.get('val_metric', float('nan')):.3f}")
            if callback is not None:
                callback(epoch + 1, row)
        if run.rt.distributed:
            dist.barrier()
    bar.close()
    return _select(run)


def read_history(out_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Return the ``history.csv`` of the run in ``out_dir``."""
    return pd.read_csv(Path(out_dir) / "history.csv")


