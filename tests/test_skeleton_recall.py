"""Skeleton Recall ablation: tubed skeletons of each label, the recall term's values, and its engine
mode (the skeletons travel through the patch crop and augmentation with the labels; gt is never read)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from ddp_smoke import make_toy_dataset

from fetalcmr.config import SegmenterConfig
from fetalcmr.data import make_samples
from fetalcmr.dataset import read_dataset
from fetalcmr.models import make_segmenter
from fetalcmr.skeleton_recall import MODE, SKELETON_KEY, skeleton_recall_loss, tubed_skeleton, with_skeletons
from fetalcmr.train import TrainConfig, train


def _bars() -> np.ndarray:
    lab = np.zeros((1, 24, 24, 24), np.uint8)
    lab[0, 4:20, 10:14, 10:14] = 3  # even width: 3D thinning erases it entirely
    lab[0, 10:14, 2:22, 16:21] = 5
    return lab


def test_tubed_skeleton_keeps_each_label_thin_and_inside_itself() -> None:
    lab = _bars()
    skel = tubed_skeleton(lab)
    assert skel.shape == lab.shape and set(np.unique(skel)) == {0, 3, 5}
    assert not ((skel > 0) & (skel != lab)).any()  # inside its own label
    assert 0 < (skel == 5).sum() < (lab == 5).sum()  # thinner than the vessel
    assert (skel == 3).sum() > 0  # a piece thinning erases counts whole
    np.testing.assert_array_equal(tubed_skeleton(lab[0]), skel[0])


def test_recall_term_is_zero_when_covered_and_one_minus_chance_when_uniform() -> None:
    lab = _bars()
    skel = torch.as_tensor(tubed_skeleton(lab)).long()
    uniform = torch.zeros(1, 12, 24, 24, 24)
    assert float(skeleton_recall_loss(uniform, skel)) == pytest.approx(1 - 1 / 12, abs=1e-6)
    perfect = torch.full((1, 12, 24, 24, 24), -20.0).scatter_(1, torch.as_tensor(lab[None]).long(), 20.0)
    assert float(skeleton_recall_loss(perfect, skel)) == pytest.approx(0.0, abs=1e-6)
    # label 5's logit lowered everywhere: on its skeleton every class ties (recall 1/12), label 3 keeps 1
    missing = perfect.clone()
    missing[:, 5] = -20.0
    assert float(skeleton_recall_loss(missing, skel)) == pytest.approx(1 - (1 + 1 / 12) / 2, abs=1e-4)
    assert float(skeleton_recall_loss(uniform, torch.zeros_like(skel))) == 0.0  # nothing to recall


def test_the_mode_trains_on_skeletons_and_logs_the_term(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    data = read_dataset(make_toy_dataset(tmp_path / "toy", n=6, size=16))
    keys = ("image", "lp", "binary", "label")
    tr, va = (with_skeletons(make_samples(data[s], keys)) for s in ("training", "validation"))
    assert all(SKELETON_KEY in s for s in tr)
    cfg = TrainConfig(mode=MODE, epochs=2, batch_size=2, lr=1e-3, aug_prob=0.5, patch=8, seed=1)
    assert SKELETON_KEY in cfg.sample_keys and "gt" not in cfg.sample_keys
    net = SegmenterConfig(channels=(2, 4), strides=(2,))
    res = train(lambda: make_segmenter(net), tr, va, cfg, tmp_path / "run", progress=False)
    history: Any = res.history
    assert "train_skeleton_recall" in history and history["train_skeleton_recall"].between(0, 1).all()
