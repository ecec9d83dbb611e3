"""Whole-volume prediction (padding to the divisor, softmax, class probabilities) and the stored
softmax format."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from fetalcmr.classification import build_classifier
from fetalcmr.config import ClassifierConfig, SegmenterConfig
from fetalcmr.models import JointNet, make_segmenter
from fetalcmr.predict import (
    VolumePrediction,
    load_softmax,
    predict_volume,
    quantise_softmax,
    save_softmax,
    softmax_file,
)
from fetalcmr.train import mixed_precision

SEG = SegmenterConfig(channels=(2, 4, 4), strides=(2, 2), dropout=0.0)  # divisor 4
CLS = ClassifierConfig(arch="small", init_features=4, growth_rate=4, block_config=(2,), grid=8, dropout=0.0)


def _segmenter() -> torch.nn.Module:
    torch.manual_seed(0)
    return make_segmenter(SEG).eval()


def _padded_forward(model: torch.nn.Module, image: np.ndarray, multiple: int) -> tuple[torch.Tensor, ...]:
    """The reference: zero-pad the end of every axis to ``multiple``, run (in this machine's mixed
    precision, as every whole-volume forward is), crop the voxel outputs, in float32."""
    x = torch.from_numpy(image)[None]
    shape = x.shape[2:]
    pads = [p for n in reversed(shape) for p in (0, (-n) % multiple)]
    precision = mixed_precision(torch.device("cpu"))
    mixed = torch.autocast("cpu", dtype=getattr(torch, precision)) if precision != "float32" else (
        contextlib.nullcontext())
    with torch.no_grad(), mixed:
        out = model(F.pad(x, pads))
    outs = out if isinstance(out, tuple) else (out,)
    return tuple((o[:, :, : shape[0], : shape[1], : shape[2]] if o.ndim == 5 else o).float() for o in outs)


@settings(max_examples=8, deadline=None)
@given(st.tuples(st.integers(5, 13), st.integers(5, 13), st.integers(5, 13)), st.integers(0, 100))
def test_segmenter_softmax_is_the_softmax_of_a_forward_on_the_padded_volume(shape: tuple[int, int, int],
                                                                            seed: int) -> None:
    model = _segmenter()
    image = np.random.default_rng(seed).random((1, *shape), dtype=np.float32)
    pred = predict_volume(model, image)
    (logits,) = _padded_forward(model, image, 4)
    assert pred.class_probs is None
    assert pred.softmax.shape == (12, *shape) and pred.softmax.dtype == np.float32
    np.testing.assert_allclose(pred.softmax, torch.softmax(logits, 1)[0].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(pred.softmax.sum(0), 1.0, atol=1e-5)


def test_joint_network_gives_softmax_and_class_probabilities() -> None:
    seg = _segmenter()
    torch.manual_seed(1)
    joint = JointNet(seg, build_classifier(CLS, "softmax+image")).train()  # left in training mode on purpose
    image = np.random.default_rng(3).random((1, 11, 9, 10), dtype=np.float32)
    pred = predict_volume(joint, image)
    assert not joint.training
    seg_logits, cls_logits = _padded_forward(joint, image, 4)
    np.testing.assert_allclose(pred.softmax, torch.softmax(seg_logits, 1)[0].numpy(), rtol=0, atol=1e-6)
    assert pred.class_probs is not None and pred.class_probs.shape == (3,)
    np.testing.assert_allclose(pred.class_probs, torch.softmax(cls_logits, 1)[0].numpy(), rtol=0, atol=1e-6)
    softmax, probs = pred  # a named tuple: unpacks as (softmax, class probabilities)
    assert isinstance(pred, VolumePrediction) and softmax is pred.softmax and probs is pred.class_probs


def test_prediction_needs_one_channel_first_volume() -> None:
    with pytest.raises(ValueError, match=r"expected one volume \[C, x, y, z\], got shape \(1, 1, 8, 8, 8\)"):
        predict_volume(_segmenter(), np.zeros((1, 1, 8, 8, 8), np.float32))


def test_softmax_file_round_trip_keeps_quantised_values_and_affine(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    soft = torch.softmax(torch.from_numpy(rng.normal(size=(12, 5, 6, 7))), 0).numpy().astype(np.float32)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    path = softmax_file(tmp_path / "softmax", "sub-001")
    assert path == tmp_path / "softmax" / "sub-001.npz"
    save_softmax(path, soft, affine)
    back = load_softmax(path)
    assert back.dtype == np.float32 and back.shape == soft.shape
    np.testing.assert_array_equal(back, quantise_softmax(soft))
    assert np.abs(back - soft).max() <= 0.5 / 255 + 1e-7
    np.testing.assert_array_equal(quantise_softmax(back), back)  # quantising twice changes nothing
    with np.load(path) as z:
        assert sorted(z.files) == ["affine", "softmax_u8"] and z["softmax_u8"].dtype == np.uint8
        np.testing.assert_array_equal(z["affine"], affine)
    save_softmax(path, soft)  # no affine: the softmax alone, the file replaced
    with np.load(path) as z:
        assert z.files == ["softmax_u8"]
    assert [p.name for p in path.parent.iterdir()] == ["sub-001.npz"]  # no temporary file left


def test_softmax_files_of_the_earlier_float16_format_still_load(tmp_path: Path) -> None:
    soft = np.full((12, 2, 2, 2), 1 / 12, np.float32)
    np.savez_compressed(tmp_path / "old.npz", softmax=soft.astype(np.float16))
    np.testing.assert_array_equal(load_softmax(tmp_path / "old.npz"), soft.astype(np.float16).astype(np.float32))
