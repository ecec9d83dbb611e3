"""Segmentation and joint losses: known values, the binary term's foreground-sum invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fetalcmr.losses import SegmentationLoss, binary_weight_at, foreground_log_probs, joint_loss

SMOOTH = 1e-5  # MONAI DiceLoss default smooth_nr = smooth_dr


def _dice_ce_reference(probs: np.ndarray, target: np.ndarray) -> float:
    """Independent numpy DiceCE: mean over channels of 1 - Dice, plus mean voxel NLL (batch 1)."""
    n_classes = probs.shape[0]
    onehot = np.stack([(target == c).astype(float) for c in range(n_classes)])
    axes = tuple(range(1, probs.ndim))
    inter = (probs * onehot).sum(axes)
    denom = probs.sum(axes) + onehot.sum(axes)
    dice = 1.0 - (2 * inter + SMOOTH) / (denom + SMOOTH)
    nll = -np.log(np.take_along_axis(probs, target[None].astype(int), 0)).mean()
    return float(dice.mean() + nll)


def test_known_values_on_a_hand_made_volume() -> None:
    # 2 voxels, 12 classes: voxel 0 is confident background, voxel 1 splits 0.6 on AO (4)
    probs = np.full((12, 2, 1, 1), 1e-3)
    probs[0, 0] = 1 - 11e-3
    probs[4, 1], probs[6, 1], probs[0, 1] = 0.6, 0.3, 0.1 - 10e-3 + 1e-3 * 2
    probs /= probs.sum(0, keepdims=True)
    logits = torch.tensor(np.log(probs))[None].float()
    lp = np.array([0, 4]).reshape(2, 1, 1)
    binary = np.array([0, 1]).reshape(2, 1, 1)
    loss = SegmentationLoss("lp+binary", binary_weight=(2.0, 0.5, 10))
    total, parts = loss(logits, lp=torch.tensor(lp)[None], binary=torch.tensor(binary)[None], epoch=25)
    expect_lp = _dice_ce_reference(probs, lp)
    p2 = np.stack([probs[0], probs[1:].sum(0)])
    expect_bin = _dice_ce_reference(p2, binary)
    assert parts["lp"] == pytest.approx(expect_lp, rel=1e-5)
    assert parts["binary"] == pytest.approx(expect_bin, rel=1e-5)
    assert parts["binary_weight"] == pytest.approx(3.0)  # 2 + 0.5 * (25 // 10)
    assert float(total) == pytest.approx(expect_lp + 3.0 * expect_bin, rel=1e-5)


def test_perfect_prediction_has_near_zero_binary_loss() -> None:
    binary = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    binary[0, 1:3, 1:3, 1:3] = 1
    logits = torch.full((1, 12, 4, 4, 4), -30.0)
    logits[:, 0][binary == 0] = 30.0
    logits[:, 7][binary == 1] = 30.0
    _, parts = SegmentationLoss("binary")(logits, lp=None, binary=binary, epoch=0)
    assert parts["binary"] < 1e-4


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_binary_term_sees_only_the_foreground_sum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(12), size=(2, 3, 3, 3)).transpose(0, 4, 1, 2, 3)  # [B,12,x,y,z]
    fg_sum = probs[:, 1:].sum(1, keepdims=True)
    shuffled = rng.dirichlet(np.ones(11), size=(2, 3, 3, 3)).transpose(0, 4, 1, 2, 3) * fg_sum
    probs2 = np.concatenate([probs[:, :1], shuffled], axis=1)
    binary = torch.tensor(rng.integers(0, 2, (2, 3, 3, 3)))
    loss = SegmentationLoss("lp+binary")
    a = torch.tensor(np.log(probs)).float()
    b = torch.tensor(np.log(probs2)).float()
    assert float(loss.binary_term(a, binary)) == pytest.approx(float(loss.binary_term(b, binary)), rel=1e-4)
    # control: the per-class split really changed (a loss value can coincide by chance, e.g. seed 2663)
    assert np.abs(probs2[:, 1:] - probs[:, 1:]).max() > 0.05


def test_foreground_log_probs_sum_to_one() -> None:
    logits = torch.randn(2, 12, 3, 3, 3)
    p = foreground_log_probs(logits).exp()
    assert torch.allclose(p.sum(1), torch.ones(2, 3, 3, 3), atol=1e-6)


def test_modes_read_only_their_targets() -> None:
    logits = torch.randn(1, 12, 4, 4, 4)
    lp = torch.randint(0, 12, (1, 4, 4, 4))
    binary = torch.randint(0, 2, (1, 4, 4, 4))
    _, only_bin = SegmentationLoss("binary")(logits, lp=None, binary=binary, epoch=0)
    _, only_lp = SegmentationLoss("lp")(logits, lp=lp, binary=None, epoch=0)
    assert set(only_bin) == {"binary", "binary_weight"} and only_bin["binary_weight"] == 1.0
    assert set(only_lp) == {"lp"}
    with pytest.raises(ValueError, match="no 'lp'"):
        SegmentationLoss("lp+binary")(logits, lp=None, binary=binary, epoch=0)
    with pytest.raises(ValueError, match="unknown"):
        SegmentationLoss("gt")


def test_binary_weight_schedule() -> None:
    assert [binary_weight_at(e, (1.0, 0.05, 50)) for e in (0, 49, 50, 149, 150)] == \
        pytest.approx([1.0, 1.0, 1.05, 1.1, 1.15])


def test_joint_loss_is_seg_plus_lambda_ce() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 2])
    p = torch.softmax(logits, 1)
    ce = -(torch.log(p[0, 0]) + torch.log(p[1, 2])) / 2
    total, got_ce = joint_loss(torch.tensor(0.7), logits, labels, lam=14.0)
    assert float(got_ce) == pytest.approx(float(ce), rel=1e-6)
    assert float(total) == pytest.approx(0.7 + 14.0 * float(ce), rel=1e-6)
