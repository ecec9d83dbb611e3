"""Training and evaluation samples from ``dataset.json`` items, cached in memory, plus the
class-balanced epoch sampler that also works under DistributedDataParallel.

Training reads items only through :func:`fetalcmr.dataset.training_view`: ``gt`` never reaches
the data layer of a training run (the weak-supervision invariant, docs/design.md §2).

>>> import numpy as np
>>> idx = balanced_indices([0, 0, 0, 1], seed=0, epoch=0)
>>> len(idx)
4
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fetalcmr.dataset import TRAINING_KEYS, training_view
from fetalcmr.io import DataError, Volume, load_nifti, normalise_intensity, resample_to_grid
from fetalcmr.transforms import augment

#: In-process cache of preprocessed volumes: (path, mtime, size, grid, spacing, kind) -> Volume.
_CACHE: dict[tuple[Any, ...], Volume] = {}
_CACHE_MAX = 2048


def clear_cache() -> None:
    """Empty the in-memory volume cache."""
    _CACHE.clear()


def load_volume(path: str | os.PathLike[str], *, kind: str, grid: int | None = None,
                spacing_mm: float | None = None) -> Volume:
    """Return the volume at ``path`` preprocessed for ``kind`` (``image`` or ``label``), cached.

    Images are normalised (z-score then 0..1); label maps are integers. With ``grid`` and
    ``spacing_mm`` the volume is resampled onto that cubic grid when it is not already on it.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        raise DataError(f"{path}: file not found") from None
    key = (str(path), st.st_mtime_ns, st.st_size, grid, spacing_mm, kind)
    if key in _CACHE:
        return _CACHE[key]
    vol = load_nifti(path)
    is_label = kind == "label"
    if grid is not None and spacing_mm is not None:
        on_grid = vol.array.shape == (grid,) * 3 and np.allclose(vol.spacing, spacing_mm, rtol=1e-3)
        if not on_grid:
            vol = resample_to_grid(vol, grid, spacing_mm, is_label=is_label)
    if is_label:
        arr = np.rint(vol.array).astype(np.uint8)
    else:
        arr = normalise_intensity(vol.array)
    vol = Volume(arr, vol.affine)
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = vol
    return vol


def make_sample(item: dict[str, Any], keys: Iterable[str], *, grid: int | None = None,
                spacing_mm: float | None = None) -> dict[str, Any]:
    """Return a training sample (channel-first arrays) from ``item``'s ``keys`` (never ``gt``).

    ``image`` becomes float32 [1,x,y,z]; ``lp`` and ``binary`` uint8 [1,x,y,z] (binary as 0/1);
    ``label`` an int. The sample also carries ``id`` and the image's ``affine``.
    """
    keys = tuple(keys)
    bad = set(keys) - TRAINING_KEYS
    if bad:
        raise ValueError(f"training samples may only read {sorted(TRAINING_KEYS)}, not {sorted(bad)}")
    view = training_view(item)
    name = view.get("id", view.get("image", "?"))
    sample: dict[str, Any] = {"id": str(name)}
    for key in keys:
        if key in ("id",):
            continue
        if key not in view or view[key] is None:
            raise DataError(f"{name}: item has no {key!r} (needed for training)")
        if key == "label":
            sample["label"] = int(view["label"])
            continue
        vol = load_volume(view[key], kind="image" if key == "image" else "label", grid=grid,
                          spacing_mm=spacing_mm)
        arr = vol.array
        if key == "binary":
            arr = (arr > 0).astype(np.uint8)
        sample[key] = arr[None]
        if key == "image":
            sample["affine"] = vol.affine
    shapes = {k: sample[k].shape for k in ("image", "lp", "binary") if k in sample}
    if len(set(shapes.values())) > 1:
        raise DataError(f"{name}: shapes differ between {shapes} (resample to one grid first)")
    return sample


def make_samples(items: Sequence[dict[str, Any]], keys: Iterable[str], *, grid: int | None = None,
                 spacing_mm: float | None = None) -> list[dict[str, Any]]:
    """Return :func:`make_sample` of every item in ``items``."""
    keys = tuple(keys)
    return [make_sample(it, keys, grid=grid, spacing_mm=spacing_mm) for it in items]


def class_balanced_weights(classes: Sequence[int]) -> np.ndarray:
    """Return drawing probabilities ``1 / count(class)``, normalised, so every class is drawn equally.

    >>> class_balanced_weights([0, 0, 0, 1]).round(3).tolist()
    [0.167, 0.167, 0.167, 0.5]
    """
    cls = np.asarray(classes)
    _, inverse, counts = np.unique(cls, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inverse]
    return w / w.sum()


def balanced_indices(labels: Sequence[int], *, seed: int, epoch: int, num_samples: int | None = None,
                     rank: int = 0, world_size: int = 1, balanced: bool = True) -> list[int]:
    """Return this rank's sample indices for ``epoch``: a class-balanced draw with replacement.

    Every rank draws the same epoch (like ``WeightedRandomSampler`` with a generator seeded by
    ``seed`` and ``epoch``, weights 1 / class count) and keeps every ``world_size``-th index from
    ``rank`` on, like ``DistributedSampler``. ``balanced=False`` gives a plain permutation.
    """
    labels = [int(v) for v in labels]
    n = len(labels)
    total = num_samples if num_samples is not None else n
    total = int(math.ceil(total / world_size) * world_size)
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    if balanced:
        weights = torch.as_tensor(class_balanced_weights(labels), dtype=torch.double)
        idx = torch.multinomial(weights, total, replacement=True, generator=gen).tolist()
    else:
        reps = int(math.ceil(total / max(n, 1)))
        idx = torch.cat([torch.randperm(n, generator=gen) for _ in range(reps)])[:total].tolist()
    return idx[rank::world_size]


def sample_seed(seed: int, epoch: int, position: int, rank: int = 0) -> int:
    """Return the augmentation seed of the ``position``-th draw of ``epoch`` on ``rank``."""
    mixed = int(seed) * 2_654_435_761 + int(epoch) * 40_503 + int(position) * 97 + int(rank) * 7_919
    return mixed % (2**32)


class EpochDataset(Dataset):
    """One epoch of augmented samples: item ``k`` is ``samples[indices[k]]`` augmented with a seed
    fixed by ``(seed, epoch, k, rank)`` (reproducible with any number of loader workers)."""

    def __init__(self, samples: Sequence[dict[str, Any]], indices: Sequence[int], pipeline: Any,
                 keys: Sequence[str], *, seed: int, epoch: int, rank: int = 0) -> None:
        self.samples = samples
        self.indices = list(indices)
        self.pipeline = pipeline
        self.keys = tuple(keys)
        self.seed, self.epoch, self.rank = seed, epoch, rank

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict[str, Any]:
        src = self.samples[self.indices[k]]
        sample = {key: src[key] for key in self.keys if key in src}
        out = augment(self.pipeline, sample, sample_seed(self.seed, self.epoch, k, self.rank)) \
            if self.pipeline is not None else {
                key: torch.as_tensor(np.asarray(v)) for key, v in sample.items()}
        if "label" in src:
            out["label"] = int(src["label"])
        return out
