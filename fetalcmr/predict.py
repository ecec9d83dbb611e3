"""Whole-volume prediction and the stored softmax: one predictor for every stage, one file format.

:func:`predict_volume` runs a segmenter or a joint network on one volume: the volume is
zero-padded at its end to a multiple of :func:`fetalcmr.models.divisor`, run in eval mode
without gradients, cropped back, and the softmax taken in float32. A softmax kept for a later
stage is one ``<folder>/<id>.npz`` per subject (:func:`softmax_file`): ``softmax_u8`` [C, x, y, z],
the probabilities quantised to steps of 1/255 (:func:`quantise_softmax`; ~0.1 MB and 10 ms a
subject at 64³, where float16 took 3 MB and 0.5 s to compress) and, when known, the grid's
``affine``; a folder is complete once its ``done.json`` record is written
(:func:`fetalcmr.cache.mark_fresh`). Files of the earlier float16 format (``softmax``) still load.

>>> from fetalcmr.config import SegmenterConfig
>>> from fetalcmr.models import make_segmenter
>>> net = make_segmenter(SegmenterConfig(channels=(2, 4), strides=(2,), dropout=0.0))
>>> predict_volume(net, np.zeros((1, 9, 8, 7), np.float32)).softmax.shape
(12, 9, 8, 7)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from fetalcmr.atomic import atomic_path
from fetalcmr.models import divisor
from fetalcmr.train import forward_volume

#: Name of the record that marks a folder of softmax files complete.
SOFTMAX_DONE = "done.json"
#: Stored softmax format; part of every cache key of a folder of softmax files.
SOFTMAX_FORMAT = "u8/255"


class VolumePrediction(NamedTuple):
    """Outputs of :func:`predict_volume` for one volume."""

    #: segmentation softmax [n_labels, x, y, z], float32
    softmax: np.ndarray
    #: class probabilities [n_classes], float32, for a joint network; None for a segmenter
    class_probs: np.ndarray | None


@torch.no_grad()
def predict_volume(model: nn.Module, image: np.ndarray | torch.Tensor) -> VolumePrediction:
    """Return the softmax (and, for a :class:`~fetalcmr.models.JointNet`, the class probabilities)
    of ``model`` on one volume ``image`` [C, x, y, z]; ``model`` is put in eval mode.

    Any spatial size works: the volume is padded to a multiple of ``divisor(model)`` and the
    output cropped back. Outputs are on the CPU whatever the model's device.
    """
    x = torch.as_tensor(np.ascontiguousarray(image, dtype=np.float32))
    if x.ndim != 4:
        raise ValueError(f"predict_volume: expected one volume [C, x, y, z], got shape {tuple(x.shape)}")
    model.eval()
    out = forward_volume(model, x[None], multiple=divisor(model))
    seg_logits, cls_logits = out if isinstance(out, tuple) else (out, None)
    softmax = torch.softmax(seg_logits, dim=1)[0].cpu().numpy()
    probs = None if cls_logits is None else torch.softmax(cls_logits, dim=1)[0].cpu().numpy()
    return VolumePrediction(softmax, probs)


def softmax_file(folder: str | os.PathLike[str], subject: str) -> Path:
    """Return the path of ``subject``'s softmax in ``folder`` (``<folder>/<subject>.npz``)."""
    return Path(folder) / f"{subject}.npz"


def _to_u8(softmax: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(np.asarray(softmax, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def _from_u8(q: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) / np.float32(255.0)


def quantise_softmax(softmax: np.ndarray) -> np.ndarray:
    """Return ``softmax`` as :func:`load_softmax` gives it back after :func:`save_softmax`: float32
    probabilities rounded to the nearest multiple of 1/255 (error ≤ 0.002)."""
    return _from_u8(_to_u8(softmax))


def save_softmax(path: str | os.PathLike[str], softmax: np.ndarray, affine: np.ndarray | None = None) -> None:
    """Write one softmax [C, ...] to ``path`` atomically (``softmax_u8``; ``affine`` when given)."""
    arrays = {"softmax_u8": _to_u8(softmax)}
    if affine is not None:
        arrays["affine"] = np.asarray(affine, dtype=np.float64)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def load_softmax(path: str | os.PathLike[str]) -> np.ndarray:
    """Return the softmax [C, ...] written by :func:`save_softmax` as float32 (equal to
    :func:`quantise_softmax` of what was saved)."""
    with np.load(path) as z:
        if "softmax_u8" in z.files:
            return _from_u8(z["softmax_u8"])
        return z["softmax"].astype(np.float32)  # float16 files of the earlier format
