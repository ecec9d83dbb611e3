"""Whole-volume prediction and the stored softmax: one predictor for every stage, one file format.

:func:`predict_volume` runs a segmenter or a joint network on one volume: the volume is
zero-padded at its end to a multiple of :func:`fetalcmr.models.divisor`, run in eval mode
without gradients, cropped back, and the softmax taken in float32. A softmax kept for a later
stage is one ``<folder>/<id>.npz`` per subject (:func:`softmax_file`): ``softmax`` [C, x, y, z]
as float16 and, when known, the grid's ``affine``; a folder is complete once its ``done.json``
record is written (:func:`fetalcmr.cache.mark_fresh`).

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


def save_softmax(path: str | os.PathLike[str], softmax: np.ndarray, affine: np.ndarray | None = None) -> None:
    """Write one softmax [C, ...] to ``path`` atomically (float16 ``softmax``; ``affine`` when given)."""
    arrays = {"softmax": np.asarray(softmax).astype(np.float16)}
    if affine is not None:
        arrays["affine"] = np.asarray(affine, dtype=np.float64)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def load_softmax(path: str | os.PathLike[str]) -> np.ndarray:
    """Return the softmax [C, ...] written by :func:`save_softmax`, as float32."""
    with np.load(path) as z:
        return z["softmax"].astype(np.float32)
