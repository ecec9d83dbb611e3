"""A real fetal thorax volume against the phantom: measurements and a matched field of view.

Works on a real black-blood T2w thorax volume with coarse organ labels (1 heart, 2 and 3 the
lungs, 4 the superior mediastinum, as in the public SVRTK thorax atlas; see ``../shared/real``),
RAS, isotropic. :func:`measure_thorax` measures what the phantom must not contradict (docs/design.md
§9): thorax and heart size against the descending aorta's calibre, the heart's blood-pool fraction
and wall, and tissue intensities relative to the lung median. :func:`arch_crop` resamples the
volume to the cohort grid around the superior mediastinum, the field of view the models see.
Nothing here trains or tunes on the real volume: it is measured only.

>>> ramp = np.arange(8.0)[:, None, None] * np.ones((8, 8, 8))
>>> arch_crop(ramp, 1.0, np.array([3.5, 3.5, 3.5]), grid=2, out_spacing_mm=2.0)[:, 0, 0]
array([2.5, 4.5])
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from fetalcmr.io import load_nifti

#: Organ labels of the SVRTK thorax atlas (``thorax-atlas-organs.nii.gz``).
HEART, LUNGS, SUPERIOR = 1, (2, 3), 4
#: Where the shared development volume lives: ``../shared/real`` next to the repository.
REAL_DIR: Path = Path(__file__).resolve().parents[2] / "shared" / "real"
#: Blood / soft-tissue threshold relative to lung: midway between the top of the blood range
#: (0.12) and the bottom of the soft-tissue range (0.25) of DESIGN §6.
DARK: float = 0.18


def load_real(image_path: str | os.PathLike[str] = REAL_DIR / "thorax-atlas.nii.gz",
              organs_path: str | os.PathLike[str] = REAL_DIR / "thorax-atlas-organs.nii.gz"
              ) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Image (float32), organ labels and isotropic spacing (mm); None when a file is absent."""
    if not (Path(image_path).exists() and Path(organs_path).exists()):
        return None
    image, organs = load_nifti(image_path), load_nifti(organs_path)
    spacing = float(np.mean(image.spacing))
    return image.array.astype(np.float32), np.rint(organs.array).astype(np.int16), spacing


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    return lab == (1 + int(np.argmax(ndimage.sum(mask, lab, range(1, n + 1)))))


def _extent_mm(mask: np.ndarray, axis: int, spacing: float) -> float:
    idx = np.nonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))[0]
    return float((idx.max() - idx.min() + 1) * spacing) if idx.size else 0.0


def _box(shape: tuple[int, ...], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    lo = np.clip(np.floor(lo).astype(int), 0, shape)
    hi = np.clip(np.ceil(hi).astype(int), 0, shape)
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return out


def measure_thorax(image: np.ndarray, organs: np.ndarray, spacing_mm: float) -> dict[str, float]:
    """Sizes (mm, mL), fractions and intensities relative to the lung median (see module docstring).

    Structures without labels are found from the labelled ones: the spinal canal is the largest
    bright (> 1.05) component behind the lungs' centres in a 16 mm midline band over the heart's
    height; the vertebral column a 3 mm wide strip 3–6 mm anterior to it (bodies and discs); the
    descending aorta the largest dark (< :data:`DARK`) component between canal and heart within
    12 mm of the midline; the liver the 2–6 mm under the right lung's base; the thymus the grey
    anterior half of the superior mediastinum; heart blood and myocardium the heart label below
    and above :data:`DARK`. The body is the largest component above 0.1 of lung, holes filled.
    """
    h = spacing_mm
    lung = np.isin(organs, LUNGS)
    heart = organs == HEART
    ref = float(np.median(image[lung]))
    r = image / ref
    hb = np.argwhere(heart)
    hlo, hhi = hb.min(0), hb.max(0) + 1
    lung_c = [np.array(ndimage.center_of_mass(organs == k)) for k in LUNGS]
    mid_x = 0.5 * (lung_c[0][0] + lung_c[1][0])
    back_y = min(c[1] for c in lung_c)
    band = _box(r.shape, np.array([mid_x - 8 / h, 0, hlo[2]]), np.array([mid_x + 8 / h, back_y, hhi[2]]))
    canal = _largest(band & (r > 1.05) & ~lung)
    cc = np.array(ndimage.center_of_mass(canal))
    column = _box(r.shape, np.array([cc[0] - 1.5 / h, cc[1] + 3 / h, hlo[2]]),
                  np.array([cc[0] + 1.5 / h, cc[1] + 6 / h, hhi[2]]))
    posterior = _box(r.shape, np.array([mid_x - 12 / h, cc[1] + 2 / h, hlo[2]]),
                     np.array([mid_x + 12 / h, hlo[1], hhi[2]]))
    dao = _largest(posterior & (r < DARK) & ~lung)
    dao_area = dao.sum(axis=(0, 1))
    dao_diam = 2.0 * np.sqrt(dao_area[dao_area > 0] / np.pi) * h
    right = organs == LUNGS[0] if lung_c[0][0] > lung_c[1][0] else organs == LUNGS[1]
    base = np.where(right.any(2), np.argmax(right, axis=2), -1)
    zz = np.arange(r.shape[2])[None, None, :]
    liver = (base[..., None] >= 0) & (zz >= base[..., None] - 6 / h) & (zz < base[..., None] - 2 / h)
    liver &= ~lung & ~heart & (r > 0.1)
    sup = organs == SUPERIOR
    sup_y = ndimage.center_of_mass(sup)[1]
    thymus = sup & (np.arange(r.shape[1])[None, :, None] > sup_y) & (r >= DARK) & (r < 0.8)
    blood = heart & (r < DARK)
    body = _largest(r > 0.1)
    body_slice = ndimage.binary_fill_holes(body[:, :, int(round(ndimage.center_of_mass(heart)[2]))])
    surface = heart & ~ndimage.binary_erosion(heart)
    wall = ndimage.distance_transform_edt(~blood, sampling=h)[surface]
    core = ndimage.binary_erosion(lung, iterations=3)
    residual = r - ndimage.gaussian_filter(r, 2.0 / h)
    return {
        "lung_median_raw": ref,
        "lungs_lr_mm": _extent_mm(lung, 0, h), "lungs_ap_mm": _extent_mm(lung, 1, h),
        "lungs_si_mm": _extent_mm(lung, 2, h),
        "body_lr_mm": _extent_mm(body_slice, 0, h), "body_ap_mm": _extent_mm(body_slice, 1, h),
        "heart_lr_mm": _extent_mm(heart, 0, h), "heart_ap_mm": _extent_mm(heart, 1, h),
        "heart_si_mm": _extent_mm(heart, 2, h), "heart_ml": float(heart.sum() * h**3 / 1000.0),
        "heart_blood_fraction": float(blood.sum() / heart.sum()),
        "heart_wall_mm": float(np.median(wall)),
        "dao_diameter_mm": float(np.median(dao_diam)) if dao_diam.size else float("nan"),
        "canal_to_dao_ap_mm": float((ndimage.center_of_mass(dao)[1] - cc[1]) * h),
        "canal_to_heart_ap_mm": float((ndimage.center_of_mass(heart)[1] - cc[1]) * h),
        "rel_heart_blood": float(np.median(r[blood])),
        "rel_myocardium": float(np.median(r[heart & ~blood])),
        "rel_dao": float(np.median(r[dao])),
        "rel_thymus": float(np.median(r[thymus])),
        "rel_liver": float(np.median(r[liver])),
        "rel_csf": float(np.median(r[canal])),
        "rel_vertebral_column": float(np.median(r[column])),
        "rel_lung_p5": float(np.percentile(r[core], 5)), "rel_lung_p95": float(np.percentile(r[core], 95)),
        "rel_residual_noise": float(np.std(residual[core])),
    }


def arch_centre(organs: np.ndarray) -> np.ndarray:
    """Voxel centre of the arch-centred field of view, from the organ labels.

    Left-right and superior-inferior: the superior mediastinum's centroid (the label covers the
    region above the heart where the arch and its branches run). Antero-posterior: the middle of
    the lungs' extent, because that label lies in front of the trachea, around which the arch turns.
    """
    centre = np.array(ndimage.center_of_mass(organs == SUPERIOR))
    ys = np.nonzero(np.isin(organs, LUNGS).any(axis=(0, 2)))[0]
    centre[1] = 0.5 * (ys.min() + ys.max())
    return centre


def arch_crop(volume: np.ndarray, spacing_mm: float, centre_vox: np.ndarray, grid: int, out_spacing_mm: float,
              *, order: int = 1) -> np.ndarray:
    """``grid``³ resampling of ``volume`` at ``out_spacing_mm`` centred on ``centre_vox`` (linear, or
    nearest with ``order=0`` for labels); outside the volume is 0."""
    offsets = (np.arange(grid) - (grid - 1) / 2.0) * out_spacing_mm / spacing_mm
    axes = [c + offsets for c in centre_vox]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"), axis=0)
    return ndimage.map_coordinates(volume, coords, order=order, mode="constant", cval=0.0).astype(volume.dtype)


def relative_histogram(image: np.ndarray, lung: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Density histogram of ``image`` / lung median over the nonzero field, on ``bins``."""
    r = image / float(np.median(image[lung]))
    hist, _ = np.histogram(r[image > 0], bins=bins, density=True)
    return hist
