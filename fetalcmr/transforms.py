"""MONAI augmentation pipelines of the reference (docs/design.md §4) and a vessel-biased patch crop.

Intensity augmentations (shift, Gaussian smooth/noise/sharpen, histogram shift, contrast, bias
field) act on the ``image`` key only; the random affine and the crop act on every spatial key
consistently (images linear, label maps nearest). A sample is a dict of channel-first arrays::

    {"image": [C,x,y,z] float, "extra": [E,x,y,z] float (optional, e.g. a frozen softmax),
     "lp": [1,x,y,z], "binary": [1,x,y,z], "label": int}

Randomness comes from the transform's own state, set per sample by the training engine
(:func:`augment`), so a resumed run draws the same augmentations as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    Compose,
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandGaussianNoised,
    RandGaussianSharpend,
    RandGaussianSmoothd,
    RandHistogramShiftd,
    Randomizable,
    RandShiftIntensityd,
)

#: Keys holding label maps (nearest-neighbour resampling).
LABEL_KEYS: tuple[str, ...] = ("lp", "binary")
#: Keys holding continuous images (linear resampling).
IMAGE_KEYS: tuple[str, ...] = ("image", "extra")


class RandVesselPatchd(Randomizable, MapTransform):
    """Crop a random cubic patch of side ``size`` from every spatial key.

    With probability ``foreground_prob`` the patch is centred on a random voxel of ``guide_key``
    (the manual vessel mask, a training key), otherwise placed uniformly.
    """

    def __init__(self, keys: Sequence[str], size: int, guide_key: str = "binary",
                 foreground_prob: float = 0.7) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        self.size = int(size)
        self.guide_key = guide_key
        self.foreground_prob = float(foreground_prob)

    def randomize(self, data: Any = None) -> None:  # noqa: D102 (state drawn in __call__)
        pass

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return ``data`` with its spatial keys cropped to the same random patch."""
        d = dict(data)
        shape = np.array(d["image"].shape[1:])
        size = np.minimum(self.size, shape)
        guide = d.get(self.guide_key)
        start = None
        if guide is not None and self.R.rand() < self.foreground_prob:
            fg = np.argwhere(np.asarray(guide[0]) > 0)
            if len(fg):
                centre = fg[self.R.randint(len(fg))]
                start = np.clip(centre - size // 2, 0, shape - size)
        if start is None:
            start = np.array([self.R.randint(0, n - s + 1) for n, s in zip(shape, size, strict=True)])
        sl = (slice(None),) + tuple(slice(int(a), int(a + s)) for a, s in zip(start, size, strict=True))
        for key in self.key_iterator(d):
            d[key] = d[key][sl]
        return d


def augmentation(prob: float, keys: Sequence[str] = ("image", "lp", "binary"), *,
                 patch: int | None = None, spatial: bool = True) -> Compose:
    """Return the reference's MONAI augmentation pipeline, each transform applied with ``prob``.

    ``keys`` lists the sample's spatial keys; ``patch`` crops a vessel-biased cubic patch first.
    """
    keys = tuple(keys)
    image_keys = [k for k in keys if k in IMAGE_KEYS]
    label_keys = [k for k in keys if k not in IMAGE_KEYS]
    steps: list[Any] = []
    if patch:
        steps.append(RandVesselPatchd(keys, patch))
    p = float(prob)
    steps += [
        RandShiftIntensityd("image", offsets=0.1, prob=p),
        RandGaussianSmoothd("image", sigma_x=(0.25, 1.0), sigma_y=(0.25, 1.0), sigma_z=(0.25, 1.0), prob=p),
        RandGaussianNoised("image", mean=0.0, std=0.05, prob=p),
        RandGaussianSharpend("image", prob=p),
        RandHistogramShiftd("image", num_control_points=(5, 15), prob=p),
        RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=p),
        RandBiasFieldd("image", coeff_range=(0.0, 0.1), prob=p),
    ]
    if spatial:
        all_keys = image_keys + label_keys
        steps.append(RandAffined(
            all_keys, prob=p, rotate_range=(0.26, 0.26, 0.26), scale_range=(0.1, 0.1, 0.1),
            translate_range=(3, 3, 3), mode=["bilinear"] * len(image_keys) + ["nearest"] * len(label_keys),
            padding_mode=["border"] * len(image_keys) + ["zeros"] * len(label_keys),
        ))
    return Compose(steps)


def seed_pipeline(pipeline: Compose, seed: int) -> None:
    """Give every random transform of ``pipeline`` one shared generator seeded with ``seed``.

    ``Compose.set_random_state`` builds a new generator for each transform and each transform's
    inner transforms (18 per sample here, a quarter of the augmentation time of a classifier
    sample); one generator drawn in pipeline order is as reproducible and costs one.
    """
    state = np.random.RandomState(int(seed) % (2**32))
    for transform in pipeline.transforms:
        if isinstance(transform, Randomizable):
            transform.set_random_state(state=state)


def augment(pipeline: Compose, sample: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """Return ``pipeline`` applied to ``sample`` with random state ``seed``, as plain tensors."""
    seed_pipeline(pipeline, seed)
    out = pipeline(dict(sample))
    return {k: _plain(v) if k in (*IMAGE_KEYS, *LABEL_KEYS) else v for k, v in out.items()}


def _plain(value: Any) -> torch.Tensor:
    """Return ``value`` as a plain ``torch.Tensor`` (not a MONAI MetaTensor)."""
    if isinstance(value, torch.Tensor):
        return value.as_subclass(torch.Tensor)
    return torch.as_tensor(np.asarray(value))
