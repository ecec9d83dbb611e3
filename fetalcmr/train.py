"""One training engine for the three modes of the reference: ``segment``, ``classify``, ``joint``.

AdamW with a learning rate decaying linearly to 0 over the run, class-balanced sampling, the
reference's MONAI augmentations, deterministic seeding, CUDA with mixed precision when present
(CPU threads otherwise), a tqdm bar, a history CSV, atomic ``latest``/``best`` checkpoints and
resume: calling :func:`train` again with the same ``run_key`` continues from the last finished
epoch (a finished run just loads). The same call runs under ``torchrun --nproc_per_node N``
(DistributedDataParallel; every rank draws the same class-balanced epoch and keeps its share;
only rank 0 writes).

Samples are dicts of channel-first arrays made by :mod:`fetalcmr.data` (``image`` [C,...],
optional ``extra`` [E,...] placed before the image channels, ``lp``/``binary`` [1,...],
``label`` int). Model outputs per mode: ``segment`` logits [B,12,...]; ``classify`` logits
[B,3]; ``joint`` a tuple of both (:class:`fetalcmr.models.JointNet`).

>>> cfg = TrainConfig(mode="segment", epochs=2, batch_size=2, lr=1e-3)
>>> cfg.lr_at(1)
0.0005
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from fetalcmr.atomic import atomic_path, write_text_atomic
from fetalcmr.data import EpochDataset, balanced_indices
from fetalcmr.losses import SegmentationLoss, joint_loss
from fetalcmr.transforms import augmentation

MODES: tuple[str, ...] = ("segment", "classify", "joint")
CHECKPOINT_VERSION = 1


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
    amp: bool = True
    #: data-loader worker processes; None: 0 on CPU (the cores train), up to 4 per GPU
    num_workers: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown training mode {self.mode!r}; choose one of {MODES}")
        if self.select not in ("best", "last"):
            raise ValueError(f"select must be 'best' or 'last', not {self.select!r}")
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
        keys: list[str] = ["image", "extra"]
        if self.mode in ("segment", "joint"):
            keys += [k for k in ("lp", "binary") if k in self.targets.split("+")]
        return tuple(keys)


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


def available_cores() -> int:
    """Return the number of CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def runtime() -> Runtime:
    """Return the device (CUDA if present) and, under ``torchrun``, join the process group."""
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
        torch.set_num_threads(max(1, available_cores() // max(world, 1)))
    return Runtime(device=device, rank=rank, world_size=world, distributed=world > 1)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) random generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 (libraries draw from the global state)
    torch.manual_seed(seed)


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


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    if enabled and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


# --------------------------------------------------------------------------------------------
# per-mode loss and validation


def _inputs(batch: dict[str, Any], device: torch.device) -> torch.Tensor:
    image = batch["image"].to(device, non_blocking=True).float()
    if "extra" in batch:
        image = torch.cat([batch["extra"].to(device, non_blocking=True).float(), image], dim=1)
    return image


def _target(batch: dict[str, Any], key: str, device: torch.device) -> torch.Tensor | None:
    if key not in batch:
        return None
    value = batch[key]
    if key == "label":
        return torch.as_tensor(value).to(device).long()
    return value.to(device, non_blocking=True)[:, 0].long()


def _loss(cfg: TrainConfig, seg_loss: SegmentationLoss, outputs: Any, batch: dict[str, Any], epoch: int,
          device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
    """Return the mode's loss and its parts for one batch."""
    if cfg.mode == "classify":
        ce = F.cross_entropy(outputs.float(), _target(batch, "label", device))
        return ce, {"ce": float(ce.detach())}
    seg_logits = outputs[0] if cfg.mode == "joint" else outputs
    total, parts = seg_loss(seg_logits, lp=_target(batch, "lp", device),
                            binary=_target(batch, "binary", device), epoch=epoch)
    if cfg.mode == "joint":
        total, ce = joint_loss(total, outputs[1], _target(batch, "label", device), cfg.lam)
        parts["ce"] = float(ce.detach())
    return total, parts


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Return ``x`` [B,C,...] zero-padded at the end so each spatial size divides ``multiple``."""
    shape = x.shape[2:]
    pads = [(-s) % multiple for s in shape]
    if not any(pads):
        return x, tuple(shape)
    flat: list[int] = []
    for p in reversed(pads):
        flat += [0, p]
    return F.pad(x, flat), tuple(shape)


@torch.no_grad()
def forward_volume(model: nn.Module, image: torch.Tensor, *, multiple: int = 16, amp: bool = True) -> Any:
    """Return ``model``'s outputs for a whole volume ``image`` [B,C,...] (padded, then cropped back)."""
    device = next(model.parameters()).device
    x, shape = pad_to_multiple(image.to(device).float(), multiple)
    with _autocast(device, amp):
        out = model(x)

    def crop(t: torch.Tensor) -> torch.Tensor:
        return t[(slice(None), slice(None)) + tuple(slice(0, s) for s in shape)].float() if t.ndim > 2 else t.float()

    return tuple(crop(o) for o in out) if isinstance(out, tuple) else crop(out)


def _divisor(model: nn.Module) -> int:
    net = model.segmenter if hasattr(model, "segmenter") else model
    strides = getattr(net, "strides", None)
    if not strides:
        return 1
    out = 1
    for s in strides:
        out *= int(s) if isinstance(s, int) else int(np.prod(s))
    return out


def dice_mean(pred: torch.Tensor, truth: torch.Tensor, labels: Sequence[int]) -> float:
    """Return the mean Dice over ``labels`` present in ``truth`` or ``pred`` (integer maps)."""
    scores = []
    for lab in labels:
        p, t = pred == lab, truth == lab
        denom = int(p.sum() + t.sum())
        if denom:
            scores.append(2.0 * int((p & t).sum()) / denom)
    return float(np.mean(scores)) if scores else 1.0


def balanced_accuracy(pred: Sequence[int], truth: Sequence[int]) -> float:
    """Return the mean per-class recall over classes present in ``truth``."""
    pred_a, truth_a = np.asarray(pred), np.asarray(truth)
    recalls = [float((pred_a[truth_a == c] == c).mean()) for c in np.unique(truth_a)]
    return float(np.mean(recalls)) if recalls else float("nan")


@torch.no_grad()
def validate(model: nn.Module, samples: Sequence[dict[str, Any]], cfg: TrainConfig, epoch: int) -> dict[str, float]:
    """Return validation loss and metrics (``val_dice`` against the training targets, ``val_bacc``).

    ``val_metric`` (higher is better) selects the best checkpoint: Dice for ``segment``,
    balanced accuracy for ``classify``, their mean for ``joint``. No ``gt`` is read.
    """
    model.eval()
    seg_loss = SegmentationLoss(cfg.targets, cfg.binary_weight)
    device = next(model.parameters()).device
    multiple = _divisor(model)
    losses, dices, preds, truths = [], [], [], []
    keys = cfg.sample_keys
    for s in samples:
        batch = {k: torch.as_tensor(np.asarray(s[k]))[None] for k in keys if k in s}
        if "label" in s:
            batch["label"] = torch.tensor([int(s["label"])])
        out = forward_volume(model, _inputs(batch, device), multiple=multiple, amp=cfg.amp)
        loss, _ = _loss(cfg, seg_loss, out, batch, epoch, device)
        losses.append(float(loss))
        if cfg.mode in ("segment", "joint"):
            seg = (out[0] if cfg.mode == "joint" else out).argmax(1)[0].cpu()
            if seg_loss.uses_lp:
                dices.append(dice_mean(seg, torch.as_tensor(np.asarray(s["lp"][0])).long(),
                                       range(1, seg_loss_channels(out, cfg))))
            else:
                dices.append(dice_mean((seg > 0).long(), torch.as_tensor(np.asarray(s["binary"][0])).long(), [1]))
        if cfg.mode in ("classify", "joint"):
            preds.append(int((out[1] if cfg.mode == "joint" else out).argmax(1)[0]))
            truths.append(int(s["label"]))
    row: dict[str, float] = {"val_loss": float(np.mean(losses)) if losses else float("nan")}
    if dices:
        row["val_dice"] = float(np.mean(dices))
    if preds:
        row["val_bacc"] = balanced_accuracy(preds, truths)
    if cfg.mode == "segment":
        row["val_metric"] = row.get("val_dice", float("nan"))
    elif cfg.mode == "classify":
        row["val_metric"] = row.get("val_bacc", float("nan"))
    else:
        row["val_metric"] = 0.5 * (row.get("val_dice", 0.0) + row.get("val_bacc", 0.0))
    return row


def seg_loss_channels(out: Any, cfg: TrainConfig) -> int:
    """Return the number of segmentation channels of ``out``."""
    return int((out[0] if cfg.mode == "joint" else out).shape[1])


# --------------------------------------------------------------------------------------------
# checkpoints


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


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
    rt = runtime()
    out_dir = Path(out_dir)
    latest_path, best_path, history_path = out_dir / "latest.pt", out_dir / "best.pt", out_dir / "history.csv"
    identity = {"run_key": run_key, "config": cfg.to_dict(), "version": CHECKPOINT_VERSION}

    seed_everything(cfg.seed)
    model = make_model().to(rt.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: max(0.0, 1.0 - e / cfg.epochs))
    use_scaler = cfg.amp and rt.device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    history: list[dict[str, Any]] = []
    start_epoch, best_metric, best_epoch = 0, -float("inf"), 0
    if latest_path.exists():
        ckpt = load_checkpoint(latest_path, rt.device)
        if ckpt.get("identity") == identity:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            start_epoch, history = int(ckpt["epoch"]), list(ckpt["history"])
            best_metric, best_epoch = float(ckpt["best_metric"]), int(ckpt["best_epoch"])
            _set_rng_state(ckpt["rng"])
    resumed_from = start_epoch

    net: nn.Module = model
    if rt.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    seg_loss = SegmentationLoss(cfg.targets, cfg.binary_weight)
    pipeline = augmentation(cfg.aug_prob, [k for k in cfg.sample_keys if k in train_samples[0]],
                            patch=cfg.patch if cfg.mode == "segment" else None) if cfg.aug_prob > 0 or cfg.patch \
        else None
    labels = [int(s.get("label", 0)) for s in train_samples]
    workers = cfg.num_workers if cfg.num_workers is not None else (
        min(4, max(available_cores() // rt.world_size - 1, 0)) if rt.device.type == "cuda" else 0)
    bar = tqdm(range(start_epoch, cfg.epochs), initial=start_epoch, total=cfg.epochs,
               desc=f"{cfg.mode} {out_dir.name}", disable=not (progress and rt.is_main), leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        net.train()
        indices = balanced_indices(labels, seed=cfg.seed, epoch=epoch, rank=rt.rank,
                                   world_size=rt.world_size, balanced=cfg.balanced)
        ds = EpochDataset(train_samples, indices, pipeline, (*cfg.sample_keys, "label"), seed=cfg.seed,
                          epoch=epoch, rank=rt.rank)
        loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=False, num_workers=workers,
                            pin_memory=rt.device.type == "cuda", persistent_workers=False)
        sums: dict[str, float] = {}
        n_batches = 0
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            with _autocast(rt.device, cfg.amp):
                outputs = net(_inputs(batch, rt.device))
            loss, parts = _loss(cfg, seg_loss, outputs, batch, epoch, rt.device)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            parts = {"loss": float(loss.detach()), **parts}
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            n_batches += 1
        means = {k: v / max(n_batches, 1) for k, v in sums.items()}
        if rt.distributed:
            names = sorted(means)
            t = torch.tensor([means[k] for k in names], dtype=torch.float64, device=rt.device)
            dist.all_reduce(t)
            means = dict(zip(names, (t / rt.world_size).tolist(), strict=True))
        lr_used = scheduler.get_last_lr()[0]
        scheduler.step()
        row: dict[str, Any] = {"epoch": epoch + 1, **{f"train_{k}" if k != "binary_weight" else k: v
                                                      for k, v in means.items()}, "lr": lr_used}
        last = epoch + 1 == cfg.epochs
        if rt.is_main:
            if val_samples and ((epoch + 1) % cfg.val_every == 0 or last):
                row.update(validate(model, val_samples, cfg, epoch))
            elif not val_samples:
                row["val_metric"] = -means.get("loss", 0.0)
            row["seconds"] = time.perf_counter() - t0
            history.append(row)
            metric = row.get("val_metric")
            if metric is not None and np.isfinite(metric) and metric > best_metric:
                best_metric, best_epoch = float(metric), epoch + 1
                _save(best_path, {"identity": identity, "model": model.state_dict(), "epoch": epoch + 1,
                                  "metric": best_metric})
            _save(latest_path, {
                "identity": identity, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch + 1,
                "history": history, "best_metric": best_metric, "best_epoch": best_epoch,
                "rng": _rng_state(),
            })
            _write_history(history_path, history)
            bar.set_postfix(loss=f"{means.get('loss', float('nan')):.3f}",
                            val=f"{row.get('val_metric', float('nan')):.3f}")
            if callback is not None:
                callback(epoch + 1, row)
        if rt.distributed:
            dist.barrier()
    bar.close()

    if rt.distributed:
        # every rank returns the same history and selected weights
        payload = [history, best_metric, best_epoch]
        dist.broadcast_object_list(payload, src=0)
        history, best_metric, best_epoch = payload
    if cfg.select == "best" and best_path.exists():
        best = load_checkpoint(best_path, rt.device)
        if best.get("identity") == identity:
            model.load_state_dict(best["model"])
    model.eval()
    return TrainResult(model=model, history=pd.DataFrame(history), out_dir=out_dir, best_epoch=best_epoch,
                       best_metric=best_metric, resumed_from=resumed_from)


def read_history(out_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Return the ``history.csv`` of the run in ``out_dir``."""
    return pd.read_csv(Path(out_dir) / "history.csv")


def plot_history(histories: dict[str, pd.DataFrame], *, title: str = "") -> Any:
    """Return a matplotlib figure: training loss (left) and validation metric (right) per run."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, h in histories.items():
        axes[0].plot(h["epoch"], h["train_loss"], label=name)
        if "val_metric" in h:
            v = h.dropna(subset=["val_metric"])
            axes[1].plot(v["epoch"], v["val_metric"], marker="o", ms=3, label=name)
    axes[0].set(xlabel="epoch", ylabel="training loss", title="training loss")
    axes[1].set(xlabel="epoch", ylabel="validation metric", title="validation metric (higher is better)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
