"""Augmentation pipelines: intensity steps touch the image only, the spatial step and the patch crop
move every spatial key together, and draws are reproducible by seed."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, RandAffined, Randomizable

from fetalcmr.transforms import RandVesselPatchd, augment, augmentation, seed_pipeline

KEYS = ("image", "extra", "lp", "binary")


def _sample(size: int = 16) -> dict[str, Any]:
    """Image and a 2-channel ``extra`` equal to 1 exactly on the vessels of ``lp``; ``binary`` its support."""
    lp = np.zeros((size,) * 3, np.uint8)
    lp[3:7, 5:9, 2:-2] = 4
    lp[9:13, 5:9, 2:-2] = 6
    lp[6:10, 10:13, 2:8] = 7
    fg = (lp > 0).astype(np.float32)
    return {"image": fg[None], "extra": np.stack([fg, fg]), "lp": lp[None], "binary": (lp > 0).astype(np.uint8)[None],
            "label": 2}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_intensity_steps_change_only_the_image() -> None:
    sample = _sample()
    out = augment(augmentation(1.0, KEYS, spatial=False), sample, seed=3)
    assert not np.allclose(out["image"].numpy(), sample["image"])
    for key in ("extra", "lp", "binary"):
        np.testing.assert_array_equal(out[key].numpy(), sample[key])
    assert out["label"] == 2


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_spatial_step_moves_every_key_together(seed: int) -> None:
    sample = _sample()
    spatial = Compose([t for t in augmentation(1.0, KEYS).transforms if isinstance(t, RandAffined)])
    assert len(spatial.transforms) == 1
    out = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in augment(spatial, sample, seed).items()}
    vessels = out["binary"][0] > 0
    assert not np.array_equal(vessels, sample["binary"][0] > 0)  # it moved
    # label maps: nearest neighbour, the same draw: binary is exactly lp's support, no new label values
    assert set(np.unique(out["lp"])) <= {0, 4, 6, 7} and set(np.unique(out["binary"])) <= {0, 1}
    np.testing.assert_array_equal(vessels, out["lp"][0] > 0)
    # images: linear, the same draw: thresholded they are the vessels again up to interpolation
    # (Dice measured 0.97-0.99; 0.2-0.35 when the labels do not move with them)
    for channel in (out["image"][0], *out["extra"]):
        assert _dice(channel > 0.5, vessels) > 0.95


def test_augment_is_reproducible_by_seed_and_returns_plain_tensors() -> None:
    sample = _sample()
    pipe = augmentation(1.0, KEYS, patch=10)
    first, again, other = augment(pipe, sample, 7), augment(pipe, sample, 7), augment(pipe, sample, 8)
    for key in KEYS:
        assert type(first[key]) is torch.Tensor and not isinstance(first[key], MetaTensor)
        torch.testing.assert_close(first[key], again[key], rtol=0, atol=0)
        assert first[key].shape[1:] == (10, 10, 10)
    assert not torch.equal(first["image"], other["image"])
    # a seed beyond 32 bits is folded into numpy's range, not refused
    torch.testing.assert_close(augment(pipe, sample, 7 + 2**32)["lp"], first["lp"], rtol=0, atol=0)


def test_probability_zero_leaves_the_sample_unchanged() -> None:
    sample = _sample()
    out = augment(augmentation(0.0, KEYS), sample, seed=5)
    for key in KEYS:
        np.testing.assert_array_equal(out[key].numpy(), sample[key])


def test_vessel_patch_is_one_crop_of_every_key_centred_on_the_guide() -> None:
    size = 12
    coords = np.indices((size,) * 3)
    code = (coords[0] * 10_000 + coords[1] * 100 + coords[2]).astype(np.float32)  # each voxel its own value
    binary = np.zeros((1,) + (size,) * 3, np.uint8)
    binary[0, 8, 3, 5] = 1  # a single guide voxel
    sample = {"image": code[None], "lp": code[None].astype(np.int64), "binary": binary}
    crop = RandVesselPatchd(("image", "lp", "binary"), size=4, foreground_prob=1.0)
    starts = set()
    for seed in range(5):
        crop.set_random_state(seed)
        out = crop(sample)
        assert out["image"].shape == out["lp"].shape == out["binary"].shape == (1, 4, 4, 4)
        start = tuple(int(v) // m % 100 for v, m in zip([out["image"][0, 0, 0, 0]] * 3, (10_000, 100, 1)))
        np.testing.assert_array_equal(out["lp"][0], code[tuple(slice(s, s + 4) for s in start)])
        assert out["binary"].sum() == 1 and start == (6, 1, 3)  # centred on the guide voxel: start = voxel - 2
        uniform = RandVesselPatchd(("image", "lp", "binary"), size=4, foreground_prob=0.0)
        uniform.set_random_state(seed)
        moved = uniform(sample)
        np.testing.assert_array_equal(moved["lp"][0], moved["image"][0].astype(np.int64))
        starts.add(int(moved["image"][0, 0, 0, 0]))
    assert len(starts) > 1  # uniform placement varies with the seed
    whole = RandVesselPatchd(("image", "lp"), size=40)(sample)  # larger than the volume: the whole volume
    np.testing.assert_array_equal(whole["image"], sample["image"])


def test_one_generator_drives_every_random_transform() -> None:
    pipe = augmentation(1.0, KEYS, patch=10)
    seed_pipeline(pipe, 11)
    states = {id(t.R) for t in pipe.transforms if isinstance(t, Randomizable)}
    assert len(states) == 1
    # the inner array transforms of the dictionary transforms draw from it too
    affine = next(t for t in pipe.transforms if isinstance(t, RandAffined))
    assert affine.rand_affine.R is affine.R and affine.rand_affine.rand_affine_grid.R is affine.R
