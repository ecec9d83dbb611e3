"""Affine alignment of a new volume to a bundle's template, so that an uncropped thorax in any pose
gives what a hand crop gives (issue 14, item 3).

Everything is in world millimetres (RAS, as :func:`fetalcmr.io.load_nifti` returns volumes); the
result maps template world points to input world points. Coarse to fine:

1. **Global search** at ``SEARCH_MM``: the template, scaled by each of ``SCALES`` (fetuses differ
   in size) and turned by each of the 24 axis-aligned rotations (only the identity with
   ``orientation="stored"``, for inputs whose RAS axes can be trusted), is slid over the whole input
   (resampled onto a world-aligned box with a margin, so the template may stick out of it) and
   scored by normalised cross-correlation (NCC) at every offset at once (FFT). The best pose of
   each rotation is kept and the ``CANDIDATES`` best rotations go on.
2. **Refinement**: a full affine (12 parameters) fitted with Adam on 1 − NCC between the template
   and the input sampled through it, counting only template points that land where the input has
   data, at ``COARSE_MM`` for each candidate, then at ``FINE_MM`` for the one with the highest NCC.

Intensities are divided by each volume's 99th percentile and each level is smoothed before it is
resampled. Torch runs on one thread meanwhile (the tensors are small). About 4.5 s per volume
with the synthetic cohort's 80 mm template (:func:`fetalcmr.synth.atlas.build_template`; 2 s with a
52 mm one), inputs up to ~100 mm, one core.
:func:`fetalcmr.propagation.affine_align` fits in normalised coordinates of two grids of one
shape; here the input's grid is larger than the template's, so sampling is in world coordinates
with ``grid_sample``.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import fft, ndimage

from fetalcmr.io import Volume

SCALES: tuple[float, ...] = (0.8, 0.9, 1.0, 1.12, 1.25)
SEARCH_MM = 4.0
COARSE_MM = 3.0
FINE_MM = 1.6
#: refinement may leave the searched scales by at most this factor
SCALE_SLACK: float = 1.1
CANDIDATES = 3
STEPS: tuple[int, int] = (40, 30)
LEARNING_RATE = 0.01
#: translation parameter unit (mm), so that one learning rate suits rotation/scale and shift
SHIFT_UNIT_MM = 20.0
#: margin around the input in the global search, in template fields of view (the template may stick out)
MARGIN = 0.25


@dataclass(frozen=True)
class Alignment:
    """An affine from template world to input world (4×4, mm) and how it was found."""

    matrix: np.ndarray
    orientation: str
    scale: float
    ncc_before: float
    ncc_after: float
    seconds: float

    def record(self) -> dict[str, Any]:
        """The alignment as flat table values (the matrix as JSON, rounded to 1e-4)."""
        return {"align_orientation": self.orientation, "align_scale": round(self.scale, 4),
                "align_ncc_before": round(self.ncc_before, 4), "align_ncc_after": round(self.ncc_after, 4),
                "align_seconds": round(self.seconds, 3),
                "align_matrix": json.dumps(np.round(self.matrix, 4).tolist())}


#: how the global search treats the input's axes: "search" tries all 24 axis-aligned turns (an input in any
#: orientation); "stored" trusts the input's RAS axes (e.g. a reconstruction already in the standard thorax
#: atlas space) and searches position and scale only; the refinement may still turn it by small angles
ORIENTATIONS: tuple[str, ...] = ("search", "stored")


def rotations() -> list[np.ndarray]:
    """The 24 orientation-preserving signed permutation matrices (identity first)."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            q = np.zeros((3, 3))
            q[range(3), perm] = signs
            if np.linalg.det(q) > 0:
                out.append(q)
    return out


def centre(vol: Volume) -> np.ndarray:
    """World position (mm) of the volume's central voxel position (as ``io.resample_to_grid`` centres)."""
    return vol.affine[:3, :3] @ ((np.array(vol.array.shape) - 1) / 2.0) + vol.affine[:3, 3]


def grid_at(point_mm: np.ndarray, grid: int, spacing_mm: float) -> np.ndarray:
    """Voxel-to-world affine of a cubic, axis-aligned grid whose central position is ``point_mm``."""
    aff = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    aff[:3, 3] = np.asarray(point_mm, dtype=float) - spacing_mm * (grid - 1) / 2.0
    return aff


def model_grid(template: Volume, grid: int, spacing_mm: float) -> np.ndarray:
    """Voxel-to-world affine of the cubic model grid centred on the template."""
    return grid_at(centre(template), grid, spacing_mm)


def centre_crop(image: Volume, template: Volume) -> np.ndarray:
    """The pose without alignment: template centre onto input centre, no turn (the fallback crop)."""
    m = np.eye(4)
    m[:3, 3] = centre(image) - centre(template)
    return m


def sample(vol: Volume, affine: np.ndarray, shape: tuple[int, ...], sigma_mm: float = 0.0) -> np.ndarray:
    """``vol`` resampled (linear, zero outside) onto the grid ``affine``/``shape``, optionally smoothed first."""
    arr = np.asarray(vol.array, dtype=np.float32)
    if sigma_mm > 0:
        sigma = sigma_mm / np.asarray(vol.spacing)
        if sigma.max() >= 0.3:
            arr = ndimage.gaussian_filter(arr, sigma)
    mapping = np.linalg.inv(vol.affine) @ affine
    return ndimage.affine_transform(arr, mapping[:3, :3], offset=mapping[:3, 3], output_shape=tuple(shape),
                                    order=1, mode="constant", cval=0.0)


def _scaled(vol: Volume) -> Volume:
    ref = float(np.percentile(vol.array, 99))
    return Volume(np.asarray(vol.array, dtype=np.float32) / (ref if ref > 0 else 1.0), vol.affine)


def _box(vol: Volume, spacing: float, margin_mm: float) -> tuple[np.ndarray, tuple[int, int, int]]:
    """World-aligned grid at ``spacing`` covering ``vol`` plus ``margin_mm`` on every side."""
    n = np.array(vol.array.shape)
    corners = np.array(list(itertools.product(*[(-0.5, k - 0.5) for k in n])))
    world = corners @ vol.affine[:3, :3].T + vol.affine[:3, 3]
    lo, hi = world.min(0) - margin_mm, world.max(0) + margin_mm
    shape = tuple(int(k) for k in np.ceil((hi - lo) / spacing) + 1)
    aff = np.diag([spacing, spacing, spacing, 1.0])
    aff[:3, 3] = lo
    return aff, shape  # type: ignore[return-value]


def _kernel(template: Volume, scale: float, h: float) -> np.ndarray:
    """The template sampled at ``h / scale`` mm over its own field of view (``h`` mm after scaling)."""
    extent = np.array(template.array.shape) * np.asarray(template.spacing)
    n = np.maximum(3, np.round(extent * scale / h)).astype(int)
    step = h / scale
    aff = np.diag([step, step, step, 1.0])
    aff[:3, 3] = centre(template) - step * (n - 1) / 2.0
    return sample(template, aff, tuple(n), sigma_mm=0.4 * step)


def _window_sums(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sums of ``a`` over every window of ``shape`` that fits inside it (summed-volume table)."""
    c = np.pad(a, [(1, 0)] * 3).cumsum(0).cumsum(1).cumsum(2)
    out = c
    for axis, k in enumerate(shape):
        hi = [slice(None)] * 3
        lo = [slice(None)] * 3
        hi[axis], lo[axis] = slice(k, None), slice(None, -k)
        out = out[tuple(hi)] - out[tuple(lo)]
    return out


def global_search(image: Volume, template: Volume, h: float = SEARCH_MM, *,
                  turns: list[np.ndarray] | None = None) -> list[tuple[float, np.ndarray]]:
    """Best ``(NCC, 4×4 template→input world)`` of each rotation in ``turns`` (default: all 24 of
    :func:`rotations`) over scales and offsets, best first."""
    extent = np.array(template.array.shape) * np.asarray(template.spacing)
    box, shape = _box(image, h, MARGIN * max(SCALES) * float(extent.max()))
    big = sample(image, box, shape, sigma_mm=0.4 * h).astype(np.float64)
    kernels = {scale: _kernel(template, scale, h).astype(np.float64) for scale in SCALES}
    longest = max(max(k.shape) for k in kernels.values())
    fshape = [fft.next_fast_len(n + longest - 1, real=True) for n in big.shape]
    big_f = fft.rfftn(big, fshape)
    floor = 1e-3 * float(big.var())
    stats: dict[tuple[int, ...], np.ndarray] = {}
    best: dict[int, tuple[float, np.ndarray]] = {}
    c_t = centre(template)
    for scale, base in kernels.items():
        for r, q in enumerate(rotations() if turns is None else turns):
            perm = [int(np.flatnonzero(row)[0]) for row in q]
            k = np.flip(np.transpose(base, perm), axis=[i for i in range(3) if q[i, perm[i]] < 0])
            if k.shape not in stats:  # sum of squared deviations of the input under each window
                s1, s2 = _window_sums(big, k.shape), _window_sums(big * big, k.shape)
                stats[k.shape] = np.sqrt(np.maximum(s2 - s1 * s1 / k.size, 0.0) + floor * k.size)
            kz = k - k.mean()
            kz /= np.sqrt((kz * kz).sum()) + 1e-12
            full = fft.irfftn(big_f * fft.rfftn(kz[::-1, ::-1, ::-1], fshape), fshape)
            valid = tuple(slice(n - 1, n - 1 + m) for n, m in zip(k.shape, stats[k.shape].shape))
            ncc = full[valid] / stats[k.shape]
            d = np.array(np.unravel_index(int(np.argmax(ncc)), ncc.shape))
            score = float(ncc[tuple(d)])
            if r not in best or score > best[r][0]:
                m = np.eye(4)
                m[:3, :3] = scale * q
                # kernel voxel v' sits at box voxel d + v'; its centre (n - 1) / 2 is the template centre
                m[:3, 3] = box[:3, 3] + h * (d + (np.array(k.shape) - 1) / 2.0) - scale * q @ c_t
                best[r] = (score, m)
    return sorted(best.values(), key=lambda sm: -sm[0])


class _Level:
    """One resolution: template points and values, the input on a world-aligned box and where, in
    that box, the input has data (the NCC counts only template points that land there)."""

    def __init__(self, image: Volume, template: Volume, h: float, margin_mm: float) -> None:
        extent = np.array(template.array.shape) * np.asarray(template.spacing)
        n = np.maximum(3, np.round(extent / h)).astype(int)
        aff = np.diag([h, h, h, 1.0])
        aff[:3, 3] = centre(template) - h * (n - 1) / 2.0
        self.values = torch.as_tensor(sample(template, aff, tuple(n), sigma_mm=0.4 * h).ravel())
        idx = np.stack(np.meshgrid(*[np.arange(k) for k in n], indexing="ij"), -1).reshape(-1, 3)
        self.points = torch.as_tensor(idx @ aff[:3, :3].T + aff[:3, 3] - centre(template), dtype=torch.float32)
        box, shape = _box(image, h, margin_mm)
        inside = sample(Volume(np.ones(image.array.shape, np.float32), image.affine), box, shape)
        self.moving = torch.as_tensor(np.stack([sample(image, box, shape, sigma_mm=0.4 * h), inside]))[None]
        inv = np.linalg.inv(box)
        self.to_index = torch.as_tensor(inv[:3, :3], dtype=torch.float32)
        self.index_offset = torch.as_tensor(inv[:3, 3], dtype=torch.float32)
        self.size = torch.as_tensor(shape, dtype=torch.float32)

    def ncc(self, linear: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """NCC of the template and the input at ``x -> linear (x - c) + shift`` (``c``: template centre),
        weighted by the input's presence."""
        world = self.points @ linear.T + shift
        idx = world @ self.to_index.T + self.index_offset
        grid = (2 * idx / (self.size - 1) - 1).flip(-1).view(1, -1, 1, 1, 3)
        v, w = F.grid_sample(self.moving, grid, mode="bilinear", padding_mode="zeros",
                             align_corners=True).view(2, -1)
        w = w / (w.sum() + 1e-12)
        t = self.values - (w * self.values).sum()
        v = v - (w * v).sum()
        return (w * v * t).sum() / ((w * v * v).sum() * (w * t * t).sum() + 1e-12).sqrt()


def _split(m: np.ndarray, c_t: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``x -> M x`` as ``x -> L (x - c_t) + s``."""
    return (torch.as_tensor(m[:3, :3], dtype=torch.float32),
            torch.as_tensor(m[:3, :3] @ c_t + m[:3, 3], dtype=torch.float32))


def _join(linear: torch.Tensor, shift: torch.Tensor, c_t: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = linear.detach().double().numpy()
    m[:3, 3] = shift.detach().double().numpy() - m[:3, :3] @ c_t
    return m


def _scale_allowed(linear: torch.Tensor) -> bool:
    """Whether the isotropic scale of ``linear`` stays within the searched scales (± one step)."""
    scale = float(torch.linalg.det(linear.detach()).abs()) ** (1 / 3)
    return min(SCALES) / SCALE_SLACK <= scale <= max(SCALES) * SCALE_SLACK


def refine(level: _Level, m: np.ndarray, c_t: np.ndarray, steps: int) -> tuple[float, np.ndarray]:
    """Adam on 1 − NCC over a full affine started at ``m``; return the best ``(NCC, matrix)`` seen
    whose scale stays near the searched range (a fit that shrinks the template onto a part of the
    input is not a pose).

    Adam is written out (β 0.9/0.999): ``torch.optim`` imports the compiler stack on first use,
    seconds that a one-volume ``infer`` would pay.
    """
    a0, t0 = _split(m, c_t)
    params = torch.zeros(12, requires_grad=True)  # 9 for the linear part, 3 for the shift
    moment, square = torch.zeros(12), torch.zeros(12)
    best = (-np.inf, m)
    with torch.enable_grad():
        for step in range(steps + 1):
            linear = a0 @ (torch.eye(3) + params[:9].view(3, 3))
            shift = t0 + SHIFT_UNIT_MM * params[9:]
            ncc = level.ncc(linear, shift)
            if float(ncc.detach()) > best[0] and (step == 0 or _scale_allowed(linear)):
                best = (float(ncc.detach()), _join(linear, shift, c_t))
            if step == steps:
                break
            (grad,) = torch.autograd.grad(1 - ncc, params)
            moment.mul_(0.9).add_(0.1 * grad)
            square.mul_(0.999).add_(0.001 * grad * grad)
            with torch.no_grad():
                params -= LEARNING_RATE * (moment / (1 - 0.9 ** (step + 1))) / (
                    (square / (1 - 0.999 ** (step + 1))).sqrt() + 1e-8)
    return best


def align_to_template(image: Volume, template: Volume, *, orientation: str = "search") -> Alignment:
    """Return the affine that carries ``template`` onto ``image`` (both RAS volumes), found as above;
    ``orientation`` is one of :data:`ORIENTATIONS`."""
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {', '.join(ORIENTATIONS)}, not {orientation!r}")
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: one thread was 10× faster than two on a busy 2-core machine
    try:
        return _align(image, template, t0, turns=[np.eye(3)] if orientation == "stored" else None)
    finally:
        torch.set_num_threads(threads)


def _align(image: Volume, template: Volume, t0: float, turns: list[np.ndarray] | None) -> Alignment:
    with torch.no_grad():
        img, tpl = _scaled(image), _scaled(template)
        c_t = centre(tpl)
        candidates = global_search(img, tpl, turns=turns)[:CANDIDATES]
        margin = MARGIN * max(SCALES) * float(np.max(np.array(tpl.array.shape) * np.asarray(tpl.spacing)))
        coarse, fine = (_Level(img, tpl, h, margin) for h in (COARSE_MM, FINE_MM))
        coarse_fits = [refine(coarse, m, c_t, STEPS[0]) for _, m in candidates]
        ncc, matrix = refine(fine, max(coarse_fits, key=lambda sm: sm[0])[1], c_t, STEPS[1])
        before = float(fine.ncc(*_split(centre_crop(img, tpl), c_t)))
    linear = matrix[:3, :3]
    return Alignment(matrix, "".join(nib.orientations.aff2axcodes(matrix)),
                     float(abs(np.linalg.det(linear))) ** (1 / 3), before, ncc, time.perf_counter() - t0)


def image_on_model_grid(image: Volume, model_affine: np.ndarray, grid: int) -> np.ndarray:
    """The input sampled (linear, zero outside) onto the model grid whose voxels map to input world by
    ``model_affine``."""
    return sample(image, model_affine, (grid,) * 3)
