"""Sizes a strided network accepts: zero-pad a volume to a multiple of its divisor, crop back.

A U-Net with ``k`` halvings needs every spatial size divisible by ``2**k``; the segmenters
(:func:`fetalcmr.models.divisor`) and VoxelMorph (:func:`fetalcmr.propagation.registration_divisor`)
pad at the end of each axis and crop their output to the input's size.

>>> import torch
>>> x, shape = pad_to_multiple(torch.ones(1, 1, 5, 8, 3), 4)
>>> tuple(x.shape), shape, float(x.sum())
((1, 1, 8, 8, 4), (5, 8, 3), 120.0)
>>> tuple(crop_to(x, shape).shape)
(1, 1, 5, 8, 3)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Return ``x`` [B,C,...] zero-padded at the end so each spatial size divides ``multiple``,
    and the original spatial shape."""
    shape = tuple(x.shape[2:])
    pads = [(-s) % multiple for s in shape]
    if not any(pads):
        return x, shape
    flat: list[int] = []
    for p in reversed(pads):
        flat += [0, p]
    return F.pad(x, flat), shape


def crop_to(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Return ``x`` [B,C,...] cropped to the spatial ``shape`` (the inverse of :func:`pad_to_multiple`)."""
    return x[(..., *(slice(0, int(s)) for s in shape))]
