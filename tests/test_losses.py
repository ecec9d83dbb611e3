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


# ---------------------------------------------------------------------------------------------
# behaviour pinned down by the mutation-testing pass (tests/mutation/mutate.py)


def test_binary_weight_schedule_steps_every_epoch_and_guards_zero() -> None:
    # every=1 steps each epoch; every=0 is read as 1 (no division by zero)
    assert [binary_weight_at(e, (0.5, 0.25, 1)) for e in (0, 1, 3)] == pytest.approx([0.5, 0.75, 1.25])
    assert binary_weight_at(3, (0.5, 0.25, 0)) == pytest.approx(1.25)


def test_uint8_targets_give_the_int64_loss() -> None:
    # the data layer hands lp and binary over as uint8; the loss must read them as class indices
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 12, 3, 3, 3, generator=gen)
    lp = torch.randint(0, 12, (2, 3, 3, 3), generator=gen)
    binary = (lp > 0).long()
    loss = SegmentationLoss("lp+binary")
    total64, parts64 = loss(logits, lp=lp, binary=binary, epoch=0)
    total8, parts8 = loss(logits, lp=lp.to(torch.uint8), binary=binary.to(torch.uint8), epoch=0)
    assert float(total8) == pytest.approx(float(total64), rel=1e-6)
    assert parts8 == pytest.approx(parts64, rel=1e-6)


def test_each_term_alone_is_its_own_total_and_binary_weight_needs_lp() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 12, 4, 4, 4, generator=gen)
    lp = torch.randint(0, 12, (1, 4, 4, 4), generator=gen)
    binary = torch.randint(0, 2, (1, 4, 4, 4), generator=gen)
    # binary alone: weight 1 at any epoch (the schedule only balances it against the lp term)
    total_b, parts_b = SegmentationLoss("binary", binary_weight=(2.0, 1.0, 1))(logits, lp=None, binary=binary,
                                                                              epoch=500)
    assert parts_b["binary_weight"] == 1.0 and float(total_b) == pytest.approx(parts_b["binary"], rel=1e-6)
    total_l, parts_l = SegmentationLoss("lp")(logits, lp=lp, binary=binary, epoch=500)
    assert float(total_l) == pytest.approx(parts_l["lp"], rel=1e-6)
    # the method at epoch 500 with schedule (2, 1, 100): w = 2 + 1 * 5 = 7
    total, parts = SegmentationLoss("lp+binary", binary_weight=(2.0, 1.0, 100))(logits, lp=lp, binary=binary,
                                                                              epoch=500)
    assert parts["binary_weight"] == pytest.approx(7.0)
    assert parts["lp"] == pytest.approx(parts_l["lp"], rel=1e-6)
    assert parts["binary"] == pytest.approx(parts_b["binary"], rel=1e-6)
    assert float(total) == pytest.approx(parts_l["lp"] + 7.0 * parts_b["binary"], rel=1e-6)


def test_missing_binary_target_is_an_error() -> None:
    logits = torch.zeros(1, 12, 2, 2, 2)
    with pytest.raises(ValueError, match="no 'binary'"):
        SegmentationLoss("lp+binary")(logits, lp=torch.zeros(1, 2, 2, 2, dtype=torch.long), binary=None, epoch=0)
    with pytest.raises(ValueError, match="no 'binary'"):
        SegmentationLoss("binary")(logits, lp=None, binary=None, epoch=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_loss_is_float32_whatever_the_logits_precision(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 12, 3, 3, 3, generator=gen)
    lp = torch.randint(0, 12, (1, 3, 3, 3), generator=gen)
    loss = SegmentationLoss("lp+binary")
    total, parts = loss(logits.to(dtype), lp=lp, binary=(lp > 0).long(), epoch=0)
    reference, _ = loss(logits.to(dtype).float(), lp=lp, binary=(lp > 0).long(), epoch=0)
    assert total.dtype == torch.float32 and float(total) == pytest.approx(float(reference), rel=1e-6)
