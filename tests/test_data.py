"""Data layer: samples from dataset items (never gt), caching, class-balanced epochs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from ddp_smoke import make_toy_dataset

from fetalcmr import data as data_mod
from fetalcmr.data import EpochDataset, balanced_indices, make_sample, make_samples
from fetalcmr.dataset import read_dataset
from fetalcmr.transforms import augmentation


def test_samples_are_channel_first_normalised_and_binary(tmp_path: Path) -> None:
    ds = read_dataset(make_toy_dataset(tmp_path, n=3, size=16))
    s = make_sample(ds["training"][0], ("image", "lp", "binary", "label"))
    assert s["image"].shape == (1, 16, 16, 16) and s["image"].dtype == np.float32
    assert 0.0 <= s["image"].min() and s["image"].max() <= 1.0
    assert set(np.unique(s["binary"])) <= {0, 1}
    assert s["label"] == 0 and s["affine"].shape == (4, 4)
    with pytest.raises(ValueError, match="only read"):
        make_sample(ds["training"][0], ("image", "gt"))


def test_resampled_when_off_grid(tmp_path: Path) -> None:
    ds = read_dataset(make_toy_dataset(tmp_path, n=3, size=16))
    s = make_sample(ds["training"][0], ("image", "lp"), grid=8, spacing_mm=2.0)
    assert s["image"].shape == (1, 8, 8, 8) and s["lp"].shape == (1, 8, 8, 8)
    assert np.allclose(np.abs(np.diag(s["affine"])[:3]), 2.0)


def test_volumes_are_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = read_dataset(make_toy_dataset(tmp_path, n=3, size=16))
    data_mod.clear_cache()
    opened: list[str] = []
    real = data_mod.load_nifti
    monkeypatch.setattr(data_mod, "load_nifti", lambda p, **kw: opened.append(str(p)) or real(p, **kw))
    make_samples(ds["training"], ("image", "binary"))
    make_samples(ds["training"], ("image", "binary"))
    assert len(opened) == 2 * len(ds["training"])


def test_balanced_sampler_balances_classes() -> None:
    labels = [0] * 80 + [1] * 15 + [2] * 5
    counts: Counter[int] = Counter()
    for epoch in range(30):
        counts.update(labels[i] for i in balanced_indices(labels, seed=1, epoch=epoch))
    fractions = np.array([counts[c] for c in range(3)]) / sum(counts.values())
    assert np.allclose(fractions, 1 / 3, atol=0.04)
    # epochs differ, seeds reproduce
    assert balanced_indices(labels, seed=1, epoch=0) == balanced_indices(labels, seed=1, epoch=0)
    assert balanced_indices(labels, seed=1, epoch=0) != balanced_indices(labels, seed=1, epoch=1)


def test_distributed_ranks_share_one_epoch() -> None:
    labels = [0, 0, 0, 1, 1, 2, 2]
    full = balanced_indices(labels, seed=0, epoch=3, num_samples=8)
    parts = [balanced_indices(labels, seed=0, epoch=3, num_samples=8, rank=r, world_size=2) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 4
    assert sorted(parts[0] + parts[1]) == sorted(full)


def test_unbalanced_is_a_permutation() -> None:
    assert sorted(balanced_indices([0, 0, 1], seed=0, epoch=0, balanced=False)) == [0, 1, 2]


def test_epoch_dataset_augments_reproducibly_and_consistently(tmp_path: Path) -> None:
    ds = read_dataset(make_toy_dataset(tmp_path, n=4, size=16))
    samples = make_samples(ds["training"], ("image", "lp", "binary", "label"))
    pipe = augmentation(1.0, ("image", "lp", "binary"), patch=8)
    a = EpochDataset(samples, [0, 1], pipe, ("image", "lp", "binary", "label"), seed=0, epoch=0)
    b = EpochDataset(samples, [0, 1], augmentation(1.0, ("image", "lp", "binary"), patch=8),
                     ("image", "lp", "binary", "label"), seed=0, epoch=0)
    x, y = a[1], b[1]
    assert x["image"].shape == (1, 8, 8, 8)
    assert all(np.array_equal(np.asarray(x[k]), np.asarray(y[k])) for k in ("image", "lp", "binary"))
    # label maps stay integer-valued (nearest) and binary stays the foreground of lp's support
    assert set(np.unique(np.asarray(x["lp"]))) <= {0, 4, 6, 7}
    assert set(np.unique(np.asarray(x["binary"]))) <= {0, 1}
