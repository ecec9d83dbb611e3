"""NIfTI reading and writing: RAS orientation, checks that name the file, atomic writes.

>>> import numpy as np, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "x.nii.gz")
>>> save_nifti(path, np.zeros((4, 4, 4), np.float32), np.eye(4))
>>> load_nifti(path).array.shape
(4, 4, 4)
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage


class DataError(ValueError):
    """Input data that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Volume:
    """A 3D array in RAS+ orientation with its voxel-to-world affine (mm)."""

    array: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the array axes."""
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]


def load_nifti(path: str | os.PathLike[str], *, check_finite: bool = True) -> Volume:
    """Load a 3D NIfTI and reorient it to RAS+; raise :class:`DataError` naming the file.

    A trailing singleton 4th dimension (one channel) is dropped; any other shape that is not
    3D is refused.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, nib.filebasedimages.ImageFileError, ValueError) as err:
        raise DataError(f"{path}: not a readable NIfTI file ({type(err).__name__}: {err})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {tuple(data.shape)}")
    if min(data.shape) < 2:
        raise DataError(f"{path}: degenerate 3D shape {tuple(data.shape)}")
    affine = img.affine
    if affine is None or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise DataError(f"{path}: invalid voxel-to-world affine")
    if check_finite and np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        n_bad = int((~np.isfinite(data)).sum())
        raise DataError(f"{path}: contains {n_bad} NaN/Inf voxels")
    ornt = nib.orientations.io_orientation(affine)
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    transform = nib.orientations.ornt_transform(ornt, ras)
    array = nib.orientations.apply_orientation(data, transform)
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, data.shape)
    return Volume(np.ascontiguousarray(array), new_affine)


def save_nifti(path: str | os.PathLike[str], array: np.ndarray, affine: np.ndarray) -> None:
    """Write ``array`` with ``affine`` as NIfTI atomically (labels as uint8, images float32)."""
    from fetalcmr.atomic import atomic_path

    array = np.asarray(array)
    if array.dtype == bool or np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.uint8 if array.max(initial=0) < 256 and array.min(initial=0) >= 0 else np.int16)
    else:
        array = array.astype(np.float32)
    img = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def normalise_intensity(image: np.ndarray) -> np.ndarray:
    """Per-volume z-score, then min-max to 0..1 (the reference's normalisation)."""
    image = np.asarray(image, dtype=np.float32)
    std = float(image.std())
    z = (image - float(image.mean())) / (std if std > 0 else 1.0)
    lo, hi = float(z.min()), float(z.max())
    return ((z - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)


def resample_to_grid(volume: Volume, grid: int, spacing_mm: float, *, is_label: bool) -> Volume:
    """Resample a RAS volume onto a centred cubic ``grid``³ at ``spacing_mm`` (crop or pad).

    The output grid shares the input's centre in world coordinates; voxels outside the input
    are zero. Labels use nearest-neighbour, images linear interpolation.
    """
    src_spacing = np.array(volume.spacing)
    centre_vox = (np.array(volume.array.shape) - 1) / 2.0
    centre_world = volume.affine[:3, :3] @ centre_vox + volume.affine[:3, 3]
    out_affine = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    out_affine[:3, 3] = centre_world - spacing_mm * (grid - 1) / 2.0
    # map output voxel -> input voxel
    mapping = np.linalg.inv(volume.affine) @ out_affine
    if np.allclose(mapping[:3, :3], np.eye(3)) and np.allclose(mapping[:3, 3], np.round(mapping[:3, 3])) \
            and np.allclose(src_spacing, spacing_mm):
        shift = np.round(mapping[:3, 3]).astype(int)
        out = np.zeros((grid,) * 3, dtype=volume.array.dtype)
        src = [slice(max(s, 0), min(s + grid, n)) for s, n in zip(shift, volume.array.shape)]
        dst = [slice(sl.start - s, sl.stop - s) for sl, s in zip(src, shift)]
        out[tuple(dst)] = volume.array[tuple(src)]
        return Volume(out, out_affine)
    if is_label:
        return Volume(resample_labels(volume, out_affine, (grid,) * 3), out_affine)
    out = ndimage.affine_transform(volume.array.astype(np.float32), mapping[:3, :3], offset=mapping[:3, 3],
                                   output_shape=(grid,) * 3, order=1, mode="constant", cval=0.0)
    return Volume(out, out_affine)


def resample_labels(volume: Volume, affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Return the label map ``volume`` resampled (nearest neighbour) onto the grid of ``shape``
    voxels with voxel-to-world ``affine``; voxels outside ``volume`` are 0, the dtype is kept.

    A grid equal to the volume's own (affines within 1e-4) returns the array unchanged.

    >>> labels = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)
    >>> flipped = np.array([[-1.0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])  # same box, x reversed
    >>> resample_labels(Volume(labels, np.eye(4)), flipped, (2, 2, 2))[:, 0, 0].tolist()
    [4, 0]
    """
    shape = tuple(int(n) for n in shape)
    if volume.array.shape == shape and np.allclose(volume.affine, affine, atol=1e-4):
        return volume.array
    mapping = np.linalg.inv(volume.affine) @ np.asarray(affine, dtype=np.float64)
    return ndimage.affine_transform(volume.array, mapping[:3, :3], offset=mapping[:3, 3], output_shape=shape,
                                    order=0, mode="constant", cval=0)
