"""Label propagation (LP) with VoxelMorph: register each subject's class atlas to it, warp the labels.

The study's weak supervision (docs/design.md §4): the anomaly-specific atlas (chosen by the subject's
known class ``label``) is registered to each subject by one amortised
:class:`voxelmorph.nn.models.VxmPairwise` network trained across all training and validation
subjects; the atlas's multi-class label map is then warped onto the subject and written as the
subject's ``lp``. Test subjects are propagated with their true-class atlas too (the paper's
"LP baseline"), flagged ``"lp_oracle_class": true``.

Loss (per pair, at the registration grid)::

    (1 - NCC(warped atlas image, subject image))
    + weight_smooth * |grad v|^2                (v: stationary velocity field)
    + weight_dice * (1 - Dice(warped atlas foreground, subject binary mask))

The velocity field is integrated by scaling and squaring (``integration_steps`` > 0), so the
transform is diffeomorphic up to discretisation. The network runs on a reduced cubic grid
(``PropagationConfig.grid``); images are area-downsampled to it and the displacement field is
trilinearly upsampled (and rescaled to full-grid voxels) to warp the labels at the cohort grid.

VoxelMorph assumes affinely pre-aligned pairs. Here each atlas is first aligned to its subject by
a fast affine fitted with Adam on the global correlation coefficient (:func:`affine_align`,
``affine_steps``; a few tenths of a second at 32³); the network then learns the residual
deformation ``u`` and the final map is ``x -> A(x + u(x))``. Measured on an 18-subject 64³
development cohort: without it, 300 iterations of the amortised network left the test labels
below affine-only accuracy (mean Dice 0.45 vs 0.63); the network spends its first hundreds of
iterations learning pose.

The amortised network under-fits on the CPU budget (its loss still falls after 800 iterations),
so each subject's velocity field is refined by a few Adam steps on that pair's own loss, starting
from the network's prediction (``refine_steps``; instance-specific optimisation, Balakrishnan et
al., TMI 2019). The refinement keeps the similarity and smoothness terms but drops the
manual-mask Dice term by default (``refine_weight_dice``): fitted per subject, the mask's cut
distal ends pull the atlas's thin branches short. Measured on the 9 validation subjects of the
default cohort with one trained network (8 steps): mean label Dice 0.678 (network alone),
0.685 refined with the Dice term (BCA/LCCA volume 0.48/0.41 of the truth), 0.779 without it at
lr 0.3 (1.11/1.13) and 0.792 at lr 0.5 (1.05/1.10); no folding. A step costs 0.08 s at 32³ on 2
cores.

Only ``image``, ``binary``, ``label`` and the atlases are read (:func:`fetalcmr.dataset.training_view`);
``gt`` never is.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from fetalcmr.config import PropagationConfig
from fetalcmr.data import class_balanced_weights
from fetalcmr.dataset import SPLITS, training_view
from fetalcmr.io import DataError, Volume, load_nifti, normalise_intensity, save_nifti
from fetalcmr.padding import crop_to, pad_to_multiple
from fetalcmr.paths import RunPaths

#: Bump when the meaning of saved model/outputs changes (part of every cache key).
FORMAT_VERSION = 1
#: PropagationConfig fields that do not change the trained network (kept out of its cache key).
_NOT_TRAINING = frozenset({"label_interp", "baseline_max_subjects", "refine_steps", "refine_lr",
                           "refine_weight_dice"})


# --------------------------------------------------------------------------------------------
# grids and checks


def check_same_grid(ref: Volume, ref_path: str | os.PathLike[str], other: Volume,
                    other_path: str | os.PathLike[str]) -> None:
    """Raise :class:`DataError` naming both files when ``other`` is not on ``ref``'s voxel grid."""
    if ref.array.shape != other.array.shape:
        raise DataError(f"{other_path}: shape {tuple(other.array.shape)} does not match "
                        f"{ref_path} {tuple(ref.array.shape)} (atlas and subjects must share one grid)")
    if not np.allclose(ref.affine, other.affine, atol=1e-3):
        raise DataError(f"{other_path}: voxel-to-world affine differs from {ref_path} "
                        "(atlas and subjects must share one grid; resample them first)")


def to_grid(array: np.ndarray | torch.Tensor, grid: int | Sequence[int]) -> torch.Tensor:
    """Return a ``[1, 1, *grid]`` float tensor: ``array`` area-averaged (or copied) onto ``grid``.

    Geometry follows ``align_corners=False``: the registration grid covers the same field of view
    as the input, voxel ``j`` centred at full-grid coordinate ``(j + 0.5) * s - 0.5``.
    """
    t = torch.as_tensor(np.asarray(array, dtype=np.float32) if not torch.is_tensor(array) else array)
    t = t.float().reshape(1, 1, *t.shape[-3:])
    size = (grid,) * 3 if isinstance(grid, int) else tuple(int(g) for g in grid)
    if tuple(t.shape[2:]) == size:
        return t
    if all(s <= n for s, n in zip(size, t.shape[2:])):
        return F.adaptive_avg_pool3d(t, size)
    return F.interpolate(t, size=size, mode="trilinear", align_corners=False)


def upsample_field(disp: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Return a displacement field ``[B, 3, *shape]`` in full-grid voxels from one on a coarser grid.

    Consistent with :func:`to_grid` (``align_corners=False``): a displacement of ``d`` coarse
    voxels along an axis is ``d * shape / coarse`` full voxels.
    """
    shape = tuple(int(s) for s in shape)
    coarse = tuple(disp.shape[2:])
    if coarse == shape:
        return disp
    up = F.interpolate(disp, size=shape, mode="trilinear", align_corners=False)
    scale = torch.tensor([s / c for s, c in zip(shape, coarse)], dtype=disp.dtype, device=disp.device)
    return up * scale.view(1, 3, 1, 1, 1)


def warp(moving: torch.Tensor, disp: torch.Tensor, mode: str = "linear") -> torch.Tensor:
    """Return ``moving`` ``[B, C, *S]`` resampled at ``x + disp(x)`` (voxel units, zero outside)."""
    from voxelmorph.nn.functional import spatial_transform

    return spatial_transform(moving, disp, method=mode, isdisp=True, align_corners=True,
                             padding_mode="zeros")


def warp_labels(labelmap: np.ndarray, disp: torch.Tensor, n_labels: int, mode: str = "nearest") -> np.ndarray:
    """Return ``labelmap`` (int ``[x, y, z]``) warped by ``disp`` (``[1, 3, x, y, z]``, full-grid voxels).

    ``mode="onehot"``: each label's indicator is warped with trilinear interpolation and the
    arg-max taken; it follows the sub-voxel position of every boundary (a partial-volume vote)
    and never invents a label that no neighbour has. ``mode="nearest"`` picks the nearest atlas
    voxel. Measured on 8 held-out 64³ subjects with the same fields: mean Dice 0.658 (one-hot)
    vs 0.656 (nearest), but 0.40 s vs 0.025 s per subject (12 channels at 64³, one thread), so
    the profiles use nearest to stay within the 1 s per-subject budget. Voxels mapped outside
    the atlas become background in both modes.
    """
    lab = torch.as_tensor(np.asarray(labelmap, dtype=np.int64))
    if mode == "nearest":
        out = warp(lab[None, None].float(), disp, mode="nearest")
        return out[0, 0].round().to(torch.int64).numpy().astype(np.uint8)
    if mode != "onehot":
        raise ValueError(f"unknown label interpolation {mode!r}; use 'onehot' or 'nearest'")
    onehot = F.one_hot(lab.clamp(0, n_labels - 1), n_labels).permute(3, 0, 1, 2)[None].float()
    warped = warp(onehot, disp, mode="linear")
    # outside the atlas all channels are 0: argmax picks channel 0 (background)
    return warped[0].argmax(0).numpy().astype(np.uint8)


def jacobian_determinant(disp: np.ndarray | torch.Tensor) -> np.ndarray:
    """Return the Jacobian determinant of ``x -> x + disp(x)`` (``disp``: ``[3, x, y, z]`` voxels)."""
    d = disp.detach().cpu().numpy() if torch.is_tensor(disp) else np.asarray(disp)
    d = d.reshape(3, *d.shape[-3:]).astype(np.float64)
    grads = np.stack([np.stack(np.gradient(d[i]), 0) for i in range(3)], 0)  # [i, j, ...] = d u_i / d x_j
    jac = grads + np.eye(3).reshape(3, 3, 1, 1, 1)
    return np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))


def folding_stats(disp: np.ndarray | torch.Tensor) -> dict[str, float]:
    """Return ``fold_fraction`` (share of voxels with det J <= 0), ``jac_min``, ``jac_mean``, ``jac_std``."""
    det = jacobian_determinant(disp)
    return {"fold_fraction": float((det <= 0).mean()), "jac_min": float(det.min()),
            "jac_mean": float(det.mean()), "jac_std": float(det.std())}


# --------------------------------------------------------------------------------------------
# affine pre-alignment (VoxelMorph assumes affinely pre-aligned pairs)


def affine_displacement(matrix: torch.Tensor, shape: Sequence[int], points: torch.Tensor | None = None) -> torch.Tensor:
    """Return the displacement ``[1, 3, *shape]`` (voxels) of the affine ``matrix`` (3×4).

    ``matrix`` acts on normalised coordinates in array axis order (``align_corners=False``:
    voxel ``i`` of ``n`` sits at ``(2i + 1) / n - 1``), so one matrix serves every grid size.
    With ``points`` (``[1, 3, *shape]`` voxel positions, default the grid itself) the result is
    ``A(points) - grid``: composing a deformation ``x -> x + u(x)`` with the affine.
    """
    shape = tuple(int(n) for n in shape)
    axes = [torch.arange(n, dtype=matrix.dtype) for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]
    pts = grid if points is None else points
    n = torch.tensor(shape, dtype=matrix.dtype).view(1, 3, 1, 1, 1)
    norm = (2 * pts + 1) / n - 1
    mapped = torch.einsum("ij,bj...->bi...", matrix[:, :3], norm) + matrix[:, 3].view(1, 3, 1, 1, 1)
    return ((mapped + 1) * n - 1) / 2 - grid


def affine_align(moving: torch.Tensor, fixed: torch.Tensor, steps: Sequence[int] = (40, 20),
                 lr: float = 0.01) -> torch.Tensor:
    """Return a 3×4 affine (normalised coordinates) aligning ``moving`` to ``fixed`` (``[1, 1, g, g, g]``).

    Gradient descent (Adam) on 1 − the global correlation coefficient, coarse to fine (half
    grid, then the given grid), starting from the identity. Fast (a few tenths of a second at
    32³), so it fits inside the per-subject budget; it replaces the separate affine
    pre-registration that VoxelMorph assumes of its inputs.
    """
    matrix = torch.eye(3, 4, dtype=torch.float32).requires_grad_(True)
    opt = torch.optim.Adam([matrix], lr=lr)
    levels = [tuple(max(4, n // 2) for n in fixed.shape[2:]), tuple(fixed.shape[2:])]
    with torch.enable_grad():
        for size, n_steps in zip(levels, steps):
            f, m = to_grid(fixed, size), to_grid(moving, size)
            fz = (f - f.mean()) / (f.std() + 1e-6)
            for _ in range(n_steps):
                w = warp(m, affine_displacement(matrix, size))
                wz = (w - w.mean()) / (w.std() + 1e-6)
                loss = 1 - (wz * fz).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
    return matrix.detach()


# --------------------------------------------------------------------------------------------
# data


def atlas_for_classes(data: Mapping[str, Any]) -> dict[int, dict[str, str]]:
    """Return ``{class: {"image", "labelmap"}}`` from the dataset's ``atlases`` (one per class)."""
    out: dict[int, dict[str, str]] = {}
    for atlas in data.get("atlases", []) or []:
        cls = int(atlas["label"])
        if cls in out:
            raise DataError(f"dataset lists two atlases for class {cls}: {out[cls]['image']} and {atlas['image']}")
        out[cls] = {"image": str(atlas["image"]), "labelmap": str(atlas["labelmap"])}
    if not out:
        raise DataError("dataset has no 'atlases' entry: label propagation needs one atlas per class")
    return out


@dataclass
class AtlasData:
    """One class atlas: full-grid labels, registration-grid image and foreground."""

    cls: int
    image_path: str
    labelmap: np.ndarray
    affine: np.ndarray
    image_reg: torch.Tensor  # [1, 1, g, g, g]
    fg_reg: torch.Tensor  # [1, 1, g, g, g] fractional foreground


@dataclass
class SubjectData:
    """One subject at the registration grid (binary mask only when the item has one)."""

    id: str
    split: str
    cls: int
    image_path: str
    affine_world: np.ndarray
    shape: tuple[int, int, int]
    image_reg: torch.Tensor
    binary_reg: torch.Tensor | None
    #: affine pre-alignment of the class atlas (3×4, normalised coordinates; identity when off)
    affine: torch.Tensor | None = None
    atlas_image_reg: torch.Tensor | None = None  # the class atlas affinely aligned, registration grid
    atlas_fg_reg: torch.Tensor | None = None


def load_atlases(data: Mapping[str, Any], grid: int) -> dict[int, AtlasData]:
    """Return every class atlas loaded, checked (image and labelmap on one grid) and downsampled."""
    out: dict[int, AtlasData] = {}
    for cls, files in atlas_for_classes(data).items():
        img = load_nifti(files["image"])
        lab = load_nifti(files["labelmap"])
        check_same_grid(img, files["image"], lab, files["labelmap"])
        labels = np.rint(lab.array).astype(np.int64)
        out[cls] = AtlasData(cls, files["image"], labels, img.affine,
                             to_grid(normalise_intensity(img.array), grid), to_grid(labels > 0, grid))
    return out


def load_subject(item: Mapping[str, Any], split: str, atlas: AtlasData, grid: int) -> SubjectData:
    """Return a subject's image (and ``binary`` when present) checked against its atlas's grid."""
    view = training_view(item)  # the weak-supervision invariant: never gt
    img = load_nifti(view["image"])
    ref = Volume(atlas.labelmap, atlas.affine)
    check_same_grid(ref, atlas.image_path, img, view["image"])
    binary_reg = None
    if view.get("binary"):
        b = load_nifti(view["binary"])
        check_same_grid(img, view["image"], b, view["binary"])
        binary_reg = to_grid(b.array > 0, grid)
    return SubjectData(str(view["id"]), split, int(view["label"]), view["image"], img.affine,
                       tuple(img.array.shape), to_grid(normalise_intensity(img.array), grid), binary_reg)  # type: ignore[arg-type]


def load_subjects(data: Mapping[str, Any], atlases: Mapping[int, AtlasData], grid: int,
                  splits: Sequence[str] = SPLITS, progress: bool = False) -> list[SubjectData]:
    """Return the subjects of ``splits`` loaded at the registration grid (class atlas must exist)."""
    from tqdm.std import tqdm

    items = [(split, item) for split in splits for item in data.get(split, []) or []]
    out = []
    for split, item in tqdm(items, desc="load subjects", disable=not progress):
        cls = int(item["label"])
        if cls not in atlases:
            raise DataError(f"{item['image']}: subject class {cls} has no atlas in the dataset")
        out.append(load_subject(item, split, atlases[cls], grid))
    return out


# --------------------------------------------------------------------------------------------
# model and loss


def build_model(cfg: PropagationConfig) -> torch.nn.Module:
    """Return a fresh ``VxmPairwise`` (source: atlas image, target: subject image)."""
    from voxelmorph.nn.models import VxmPairwise

    if cfg.integration_steps <= 0:
        raise ValueError("integration_steps must be > 0: label propagation uses a diffeomorphic field")
    return VxmPairwise(ndim=3, source_channels=1, target_channels=1, nb_features=list(cfg.nb_features),
                       integration_steps=cfg.integration_steps)


def registration_divisor(model: torch.nn.Module) -> int:
    """Return the factor every spatial size of ``model``'s inputs must divide: the product of its
    U-Net's pooling factors (``2**len(nb_features)`` for VoxelMorph's)."""
    factor = 1
    for layer in model.modules():
        if isinstance(layer, torch.nn.MaxPool3d):
            k = layer.kernel_size
            factor *= int(k if isinstance(k, int) else k[0])
    return factor


def velocity_field(model: torch.nn.Module, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return the network's ``source``-to-``target`` velocity field ``[B, 3, ...]`` on their grid.

    Inputs whose size the U-Net cannot halve often enough (the paper's 80³ through five levels)
    are zero-padded at the end to a multiple of :func:`registration_divisor`, and the field is
    cropped back; on a grid that divides, the inputs pass unchanged.
    """
    multiple = registration_divisor(model)
    src, shape = pad_to_multiple(source, multiple)
    tgt, _ = pad_to_multiple(target, multiple)
    return crop_to(model(src, tgt, return_field_type="velocity"), shape)


def local_ncc(a: torch.Tensor, b: torch.Tensor, window: int, eps: float = 1e-5) -> torch.Tensor:
    """Return the mean squared local correlation of ``a`` and ``b`` (``[B, 1, ...]``) per batch item.

    The formula of ``neurite.nn.functional.ncc`` (box sums over a ``window``³ neighbourhood, zero
    padding), with local variances clamped at 0 and coefficients at [0, 1]: in flat regions
    (e.g. zero padding pulled in by a large deformation) float32 round-off makes neurite's
    coefficients leave [0, 1] and its range assertion stop the run.
    """
    from neurite.nn.functional import box_filter

    moments = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    sums = box_filter(moments, window_size=[window] * (a.ndim - 2))
    i_sum, j_sum, i2_sum, j2_sum, ij_sum = sums.chunk(5, dim=1)
    n = float(window ** (a.ndim - 2))
    cross = ij_sum - i_sum * j_sum / n
    i_var = (i2_sum - i_sum.square() / n).clamp_min(0)
    j_var = (j2_sum - j_sum.square() / n).clamp_min(0)
    cc = (cross.square() / (i_var * j_var + eps)).clamp(0, 1)
    return cc.mean(dim=tuple(range(1, a.ndim)))


class RegistrationLoss(torch.nn.Module):
    """Similarity + smoothness + foreground Dice; returns the total and its three terms."""

    def __init__(self, cfg: PropagationConfig) -> None:
        super().__init__()
        from neurite.nn.modules import MSE, SpatialGradient

        if cfg.similarity == "ncc":
            self.sim: torch.nn.Module | None = None
        elif cfg.similarity == "mse":
            self.sim = MSE()
        else:
            raise ValueError(f"unknown similarity {cfg.similarity!r}; use 'ncc' or 'mse'")
        self.kind = cfg.similarity
        self.window = cfg.ncc_window
        self.grad = SpatialGradient(penalty="l2")
        self.w_smooth = cfg.weight_smooth
        self.w_dice = cfg.weight_dice

    def forward(self, warped_img: torch.Tensor, target_img: torch.Tensor, velocity: torch.Tensor,
                warped_fg: torch.Tensor | None,
                target_fg: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
        """Return ``(total, {"sim", "smooth", "dice"})`` for one batch."""
        if self.sim is None:  # local NCC: a squared correlation in [0, 1]
            sim = 1.0 - local_ncc(warped_img, target_img, self.window).mean()
        else:
            sim = self.sim(warped_img, target_img).mean()
        smooth = self.grad(velocity)
        total = sim + self.w_smooth * smooth
        dice_loss = torch.zeros(())
        if warped_fg is not None and target_fg is not None and self.w_dice > 0:
            inter = (warped_fg * target_fg).sum(dim=(1, 2, 3, 4))
            denom = warped_fg.sum(dim=(1, 2, 3, 4)) + target_fg.sum(dim=(1, 2, 3, 4))
            dice_loss = (1.0 - (2 * inter + 1e-5) / (denom + 1e-5)).mean()
            total = total + self.w_dice * dice_loss
        return total, {"sim": float(sim.detach()), "smooth": float(smooth.detach()),
                       "dice": float(dice_loss.detach())}


def registration_step(model: torch.nn.Module, loss_fn: RegistrationLoss, atlas_img: torch.Tensor,
                      atlas_fg: torch.Tensor, subj_img: torch.Tensor,
                      subj_fg: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
    """Return the loss of registering a batch of atlases to subjects (forward only)."""
    velocity = velocity_field(model, atlas_img, subj_img)
    return velocity_loss(model, loss_fn, velocity, atlas_img, atlas_fg, subj_img, subj_fg)


def velocity_loss(model: torch.nn.Module, loss_fn: RegistrationLoss, velocity: torch.Tensor,
                  atlas_img: torch.Tensor, atlas_fg: torch.Tensor, subj_img: torch.Tensor,
                  subj_fg: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, float]]:
    """Return the loss of the stationary ``velocity`` field (integrated by the model's integrator)."""
    disp = model.velocity_field_integrator(velocity)
    if subj_fg is None:
        return loss_fn(warp(atlas_img, disp), subj_img, velocity, None, None)
    warped = warp(torch.cat([atlas_img, atlas_fg], dim=1), disp)  # one resampling for both
    return loss_fn(warped[:, :1], subj_img, velocity, warped[:, 1:], subj_fg)


def refine_velocity(model: torch.nn.Module, loss_fn: RegistrationLoss, velocity: torch.Tensor,
                    atlas_img: torch.Tensor, atlas_fg: torch.Tensor, subj_img: torch.Tensor,
                    subj_fg: torch.Tensor | None, steps: int, lr: float) -> torch.Tensor:
    """Return ``velocity`` after ``steps`` Adam steps on this one pair's registration loss.

    Instance-specific optimisation (Balakrishnan et al., TMI 2019): the network's prediction is
    the starting point and the field itself is optimised with ``loss_fn`` (its Dice term only
    when ``subj_fg`` is given). The network's weights are not touched.
    """
    v = velocity.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            loss, _ = velocity_loss(model, loss_fn, v, atlas_img, atlas_fg, subj_img, subj_fg)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return v.detach()


def train_registration(subjects: Sequence[SubjectData], atlases: Mapping[int, AtlasData],
                       cfg: PropagationConfig, seed: int = 0, progress: bool = True,
                       model: torch.nn.Module | None = None) -> tuple[torch.nn.Module, pd.DataFrame]:
    """Return the trained network and its history (iteration, loss, sim, smooth, dice, seconds).

    Each iteration draws ``batch_size`` subjects at random with class-balanced probabilities
    (weight 1 / class count, so the rare DAA atlas is trained as often as the CoA one), each
    with its class atlas as source.
    """
    from tqdm.std import tqdm

    if not subjects:
        raise DataError("no training subjects for label propagation")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    weights = class_balanced_weights([s.cls for s in subjects])
    model = model if model is not None else build_model(cfg)
    loss_fn = RegistrationLoss(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    model.train()
    rows = []
    t0 = time.perf_counter()
    bar = tqdm(range(cfg.iterations), desc="train VoxelMorph", disable=not progress)
    for it in bar:
        idx = rng.choice(len(subjects), size=cfg.batch_size, p=weights)
        batch = [subjects[i] for i in idx]
        a_img = torch.cat([source_of(s, atlases[s.cls])[0] for s in batch])
        a_fg = torch.cat([source_of(s, atlases[s.cls])[1] for s in batch])
        s_img = torch.cat([s.image_reg for s in batch])
        has_fg = all(s.binary_reg is not None for s in batch)
        s_fg = torch.cat([s.binary_reg for s in batch]) if has_fg else None  # type: ignore[misc]
        loss, parts = registration_step(model, loss_fn, a_img, a_fg, s_img, s_fg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        rows.append({"iteration": it + 1, "loss": float(loss.detach()), **parts, "seconds": time.perf_counter() - t0})
        if progress and (it % 10 == 0 or it == cfg.iterations - 1):
            bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}", dice=f"{parts['dice']:.3f}")
    model.eval()
    return model, pd.DataFrame(rows)


def prealign(subject: SubjectData, atlas: AtlasData, steps: Sequence[int]) -> SubjectData:
    """Return ``subject`` with its class atlas affinely aligned to it (see :func:`affine_align`)."""
    matrix = affine_align(atlas.image_reg, subject.image_reg, steps)
    disp = affine_displacement(matrix, atlas.image_reg.shape[2:])
    with torch.no_grad():
        subject.affine = matrix
        subject.atlas_image_reg = warp(atlas.image_reg, disp)
        subject.atlas_fg_reg = warp(atlas.fg_reg, disp)
    return subject


def _prealign_one(subject: SubjectData, ctx: tuple[Mapping[int, AtlasData], tuple[int, ...]]) -> SubjectData:
    atlases, steps = ctx
    return prealign(subject, atlases[subject.cls], steps)


def source_of(subject: SubjectData, atlas: AtlasData) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the network's source (atlas image, atlas foreground): affinely aligned when available."""
    if subject.atlas_image_reg is not None and subject.atlas_fg_reg is not None:
        return subject.atlas_image_reg, subject.atlas_fg_reg
    return atlas.image_reg, atlas.fg_reg


@torch.no_grad()
def predict_velocity(model: torch.nn.Module, atlas: AtlasData, subject: SubjectData) -> torch.Tensor:
    """Return the network's atlas-to-subject velocity field on the registration grid."""
    model.eval()
    src, _ = source_of(subject, atlas)
    return velocity_field(model, src, subject.image_reg)


@torch.no_grad()
def full_displacement(model: torch.nn.Module, velocity: torch.Tensor, subject: SubjectData) -> torch.Tensor:
    """Return the displacement ``[1, 3, *subject.shape]`` (full-grid voxels) of ``velocity``.

    The field is integrated, upsampled and, with an affine pre-alignment, composed with it:
    ``x -> A(x + u(x))``.
    """
    disp = upsample_field(model.velocity_field_integrator(velocity), subject.shape)
    if subject.affine is None:
        return disp
    axes = [torch.arange(n, dtype=disp.dtype) for n in subject.shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]
    return affine_displacement(subject.affine, subject.shape, points=grid + disp)


def register(model: torch.nn.Module, atlas: AtlasData, subject: SubjectData,
             refine: tuple[RegistrationLoss, int, float] | None = None) -> torch.Tensor:
    """Return the atlas-to-subject displacement ``[1, 3, *subject.shape]`` in full-grid voxels.

    ``refine`` = ``(loss, steps, lr)`` optimises the network's field on this pair first
    (:func:`refine_velocity`). With an affine pre-alignment the result is the composition
    ``x -> A(x + u(x))`` of the deformation ``u`` and the affine ``A``.
    """
    velocity = predict_velocity(model, atlas, subject)
    if refine is not None and refine[1] > 0:
        src, src_fg = source_of(subject, atlas)
        mask = subject.binary_reg if refine[0].w_dice > 0 else None  # no Dice term: no mask read
        velocity = refine_velocity(model, refine[0], velocity, src, src_fg, subject.image_reg, mask,
                                   refine[1], refine[2])
    return full_displacement(model, velocity, subject)


# --------------------------------------------------------------------------------------------
# the stage


def dataset_digest(data: Mapping[str, Any]) -> str:
    """Return a hash of everything propagation reads (atlas files, item images, masks, classes)."""
    from fetalcmr.cache import content_key, file_digest

    parts: list[Any] = []
    for cls, files in sorted(atlas_for_classes(data).items()):
        parts.append([cls, file_digest(files["image"]), file_digest(files["labelmap"])])
    for split in SPLITS:
        for item in data.get(split, []) or []:
            view = training_view(item)
            parts.append([split, view["id"], int(view["label"]), file_digest(view["image"]),
                          file_digest(view["binary"]) if view.get("binary") else None])
    return content_key(parts)


def save_model(model: torch.nn.Module, path: str | os.PathLike[str]) -> None:
    """Write the network's ``state_dict`` atomically."""
    from fetalcmr.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)


def load_model(cfg: PropagationConfig, path: str | os.PathLike[str]) -> torch.nn.Module:
    """Return a network of ``cfg``'s architecture with weights from ``path`` (``weights_only``)."""
    model = build_model(cfg)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as err:  # torch raises pickle, struct, runtime and OS errors for bad files
        raise DataError(f"{path}: cannot load the registration network ({err})") from None
    model.eval()
    return model


@dataclass(frozen=True, eq=False)
class PropagationOutputs:
    """What notebook 01 leaves in a run folder (:func:`run_label_propagation`, :func:`load_label_propagation`)."""

    dataset: dict[str, Any]  # the input dataset with ``lp`` (and test ``lp_oracle_class``) added
    history: pd.DataFrame  # training curve
    subjects: pd.DataFrame  # per subject: id, split, class, seconds, fold_fraction, jac_*
    model_path: Path
    lp_json: Path  # where ``dataset`` is stored
    reused: bool  # True when everything came from the cache (always for :func:`load_label_propagation`)


@dataclass(frozen=True)
class _Files:
    """The files of the propagation stage in its folder."""

    lp_dir: Path

    @property
    def model(self) -> Path:
        """The registration network's weights."""
        return self.lp_dir / "vxm_model.pt"

    @property
    def history(self) -> Path:
        """Its training curve."""
        return self.lp_dir / "vxm_history.csv"

    @property
    def subjects(self) -> Path:
        """Per-subject propagation table (time, folding, label-map files)."""
        return self.lp_dir / "lp_subjects.csv"

    @property
    def train_record(self) -> Path:
        """Written when training finished (its cache key)."""
        return self.lp_dir / "vxm_train.done.json"

    @property
    def done(self) -> Path:
        """Written last: propagation finished."""
        return self.lp_dir / "lp.done.json"


def _read_outputs(files: _Files, lp_json: str | os.PathLike[str], reused: bool) -> PropagationOutputs:
    from fetalcmr.dataset import read_dataset

    return PropagationOutputs(read_dataset(lp_json), pd.read_csv(files.history), pd.read_csv(files.subjects),
                              files.model, Path(lp_json), reused=reused)


def load_label_propagation(paths: RunPaths) -> PropagationOutputs:
    """Return what notebook 01 wrote for the run ``paths`` (nothing is trained or registered).

    Raises :class:`fetalcmr.paths.StageNotRun` when label propagation has not finished there.
    """
    files = _Files(paths.lp_dir)
    paths.require("01_label_propagation", files.done, paths.lp_json, files.model, files.history, files.subjects)
    return _read_outputs(files, paths.lp_json, reused=True)


@dataclass(frozen=True)
class _Propagation:
    """What propagating one subject needs besides the subject (a :func:`fetalcmr.parallel.map_items` context)."""

    model: torch.nn.Module
    atlases: Mapping[int, AtlasData]
    out_dir: Path
    label_interp: str
    n_labels: int | None
    prealign_steps: Sequence[int] | None
    refine: tuple[RegistrationLoss, int, float] | None
    network_only_splits: Sequence[str]


def _propagate_one(subj: SubjectData, ctx: _Propagation) -> dict[str, Any]:
    """Register ``ctx``'s class atlas to ``subj``, write its labels; return the subject's table row."""
    atlas = ctx.atlases[subj.cls]
    n = ctx.n_labels or int(atlas.labelmap.max()) + 1
    t0 = time.perf_counter()
    if ctx.prealign_steps and subj.affine is None:  # subjects aligned for training keep that alignment
        prealign(subj, atlas, ctx.prealign_steps)
    t_prealign = time.perf_counter() - t0
    disp = register(ctx.model, atlas, subj, refine=ctx.refine)
    lp = warp_labels(atlas.labelmap, disp, n, mode=ctx.label_interp)
    seconds = time.perf_counter() - t0
    path = ctx.out_dir / f"{subj.id}_lp.nii.gz"
    save_nifti(path, lp, subj.affine_world)
    row = {"id": subj.id, "split": subj.split, "class": subj.cls, "lp": str(path),
           "seconds": seconds, **folding_stats(disp[0])}
    if ctx.refine is not None and ctx.refine[1] > 0 and subj.split in ctx.network_only_splits:
        t1 = time.perf_counter()
        disp = register(ctx.model, atlas, subj)
        lp = warp_labels(atlas.labelmap, disp, n, mode=ctx.label_interp)
        row["seconds_network"] = t_prealign + time.perf_counter() - t1
        row["fold_fraction_network"] = folding_stats(disp[0])["fold_fraction"]
        row["lp_network"] = str(ctx.out_dir / f"{subj.id}_lp_network.nii.gz")
        save_nifti(row["lp_network"], lp, subj.affine_world)
    return row


def propagate_subjects(model: torch.nn.Module, subjects: Sequence[SubjectData],
                       atlases: Mapping[int, AtlasData], out_dir: Path, label_interp: str = "nearest",
                       n_labels: int | None = None, progress: bool = True,
                       prealign_steps: Sequence[int] | None = None,
                       refine: tuple[RegistrationLoss, int, float] | None = None,
                       network_only_splits: Sequence[str] = (), workers: int | None = None) -> pd.DataFrame:
    """Write ``<out_dir>/<id>_lp.nii.gz`` for each subject; return per-subject time and Jacobian stats.

    ``seconds`` covers registration (affine pre-alignment when ``prealign_steps`` is given and the
    subject was not already aligned while training, network, refinement when ``refine`` =
    ``(loss, steps, lr)`` is given, field upsampling and composition) and label warping, not
    file I/O. For subjects of ``network_only_splits`` (with refinement on) the labels of the
    network's field alone are also written (``<id>_lp_network.nii.gz``; columns ``lp_network``,
    ``seconds_network``, ``fold_fraction_network``), so the refinement's effect is measured on
    the same pairs. Subjects are registered in parallel single-thread processes
    (:func:`fetalcmr.parallel.map_items`; ``workers`` defaults to its choice), so the labels do
    not depend on the number of cores.
    """
    from fetalcmr.workers import map_items

    if isinstance(getattr(model, "velocity", None), torch.Tensor):
        model.velocity = None  # VoxelMorph's copy of its last field, with that pass's graph: cannot be pickled
    ctx = _Propagation(model.eval(), atlases, Path(out_dir), label_interp, n_labels,
                       tuple(prealign_steps) if prealign_steps else None, refine, tuple(network_only_splits))
    return pd.DataFrame(map_items(_propagate_one, subjects, ctx, workers=workers, desc="propagate labels",
                                  progress=progress))


def run_label_propagation(source_json: str | os.PathLike[str], lp_dir: str | os.PathLike[str],
                          lp_json: str | os.PathLike[str], cfg: PropagationConfig, seed: int = 0,
                          progress: bool = True, torch_threads: int | None = None) -> PropagationOutputs:
    """Train (or reuse) the registration network, propagate atlas labels, write ``lp_json``.

    Cached by ``content_key(config, seed, dataset digest, code version)``: the model
    (``vxm_model.pt`` + ``vxm_history.csv``) and the propagated labels (``labels/``,
    ``lp_subjects.csv``, ``lp_json``) are reused when nothing that produced them changed. The
    outputs are read back from those files, so they equal :func:`load_label_propagation`'s.
    """
    from fetalcmr.cache import code_version, content_key, is_fresh, mark_fresh
    from fetalcmr.dataset import read_dataset, write_dataset

    if torch_threads:
        torch.set_num_threads(torch_threads)
    lp_dir = Path(lp_dir)
    data = read_dataset(source_json)
    digest = dataset_digest(data)
    train_cfg = {k: v for k, v in vars(cfg).items() if k not in _NOT_TRAINING}
    train_key = content_key("vxm-train", FORMAT_VERSION, train_cfg, seed, digest,
                            code_version(__name__))
    prop_key = content_key("vxm-propagate", train_key, cfg.label_interp, cfg.refine_steps, cfg.refine_lr,
                           cfg.refine_weight_dice)
    files = _Files(lp_dir)
    model_path, history_path, subjects_path = files.model, files.history, files.subjects
    train_record, prop_record = files.train_record, files.done

    if is_fresh(prop_record, prop_key) and Path(lp_json).exists() and is_fresh(train_record, train_key):
        return _read_outputs(files, lp_json, reused=True)

    atlases = load_atlases(data, cfg.grid)
    subjects = load_subjects(data, atlases, cfg.grid, progress=progress)
    if is_fresh(train_record, train_key) and model_path.exists():
        model = load_model(cfg, model_path)
    else:
        fit = [s for s in subjects if s.split in ("training", "validation")]
        if cfg.affine_steps:
            from fetalcmr.workers import map_items

            fit = map_items(_prealign_one, fit, (atlases, tuple(cfg.affine_steps)), desc="affine pre-alignment",
                            progress=progress)
            aligned = {s.id: s for s in fit}  # copies when aligned in worker processes
            subjects = [aligned.get(s.id, s) for s in subjects]
        model, history = train_registration(fit, atlases, cfg, seed=seed, progress=progress)
        save_model(model, model_path)
        from fetalcmr.atomic import atomic_path

        with atomic_path(history_path) as tmp:
            history.to_csv(tmp, index=False)
        mark_fresh(train_record, train_key, iterations=cfg.iterations)

    refine_loss = RegistrationLoss(dataclasses.replace(cfg, weight_dice=cfg.refine_weight_dice))
    refine = (refine_loss, cfg.refine_steps, cfg.refine_lr) if cfg.refine_steps > 0 else None
    table = propagate_subjects(model, subjects, atlases, lp_dir / "labels", cfg.label_interp,
                               n_labels=_n_labels(data, atlases), progress=progress,
                               prealign_steps=cfg.affine_steps or None, refine=refine,
                               network_only_splits=("testing",))
    out = copy.deepcopy(data)
    lp_of = dict(zip(table["id"], table["lp"]))
    for split in SPLITS:
        for item in out.get(split, []) or []:
            item["lp"] = lp_of[str(item["id"])]
            if split == "testing":
                item["lp_oracle_class"] = True
    write_dataset(lp_json, out)
    from fetalcmr.atomic import atomic_path

    with atomic_path(subjects_path) as tmp:
        table.to_csv(tmp, index=False)
    mark_fresh(prop_record, prop_key, n_subjects=len(table))
    return _read_outputs(files, lp_json, reused=False)


def _n_labels(data: Mapping[str, Any], atlases: Mapping[int, AtlasData]) -> int:
    labels = [int(k) for k in data.get("labels", {})]
    return max(labels + [int(a.labelmap.max()) for a in atlases.values()]) + 1


# --------------------------------------------------------------------------------------------
# evaluation (reads ``gt``: for reporting only, never called by training or propagation)


def evaluate_against_truth(items: Sequence[Mapping[str, Any]], predictions: Mapping[str, str | os.PathLike[str]],
                           labels: Mapping[int, str], method: str,
                           progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (per-label, per-subject) tables of predicted label maps scored against each item's ``gt``.

    Per label: ``method, id, class, label, name, dice, hd95, asd, precision`` (mm). Per subject:
    ``method, id, class, mean_dice`` (over labels present), ``fg_dice_gt`` (foreground vs the
    truth's foreground) and ``fg_dice_binary`` (foreground vs the manual mask, when the item has
    one). Items without ``gt`` or without a prediction are skipped.
    """
    from tqdm.std import tqdm

    from fetalcmr.metrics import evaluate_segmentation, region_metrics

    per_label, per_subject = [], []
    for item in tqdm(items, desc=f"evaluate {method}", disable=not progress):
        sid = str(item["id"])
        if not item.get("gt") or sid not in predictions:
            continue
        truth = load_nifti(item["gt"])
        pred = load_nifti(predictions[sid])
        check_same_grid(truth, item["gt"], pred, predictions[sid])
        t, p = np.rint(truth.array).astype(np.int64), np.rint(pred.array).astype(np.int64)
        table = evaluate_segmentation(p, t, truth.spacing, labels)
        table.insert(0, "class", int(item["label"]))
        table.insert(0, "id", sid)
        table.insert(0, "method", method)
        per_label.append(table)
        row = {"method": method, "id": sid, "class": int(item["label"]),
               "mean_dice": float(np.nanmean(table["dice"])) if table["dice"].notna().any() else float("nan"),
               "fg_dice_gt": region_metrics(p > 0, t > 0)["dice"], "fg_dice_binary": float("nan")}
        if item.get("binary"):
            row["fg_dice_binary"] = region_metrics(p > 0, load_nifti(item["binary"]).array > 0)["dice"]
        per_subject.append(row)
    lab = pd.concat(per_label, ignore_index=True) if per_label else pd.DataFrame()
    return lab, pd.DataFrame(per_subject)
