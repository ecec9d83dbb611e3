"""Shared fixtures: small NIfTI datasets written to a temporary folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

from fetalcmr.anatomy import CLASSES, LABELS  # noqa: E402
from fetalcmr.dataset import write_dataset  # noqa: E402
from fetalcmr.io import save_nifti  # noqa: E402


def make_item(folder: Path, sid: str, cls: int, shape: tuple[int, int, int] = (12, 12, 12),
              seed: int = 0, affine: np.ndarray | None = None) -> dict[str, Any]:
    """Write one tiny subject (image, binary, gt) and return its dataset item."""
    rng = np.random.default_rng(seed)
    affine = np.diag([1.5, 1.5, 1.5, 1.0]) if affine is None else affine
    gt = np.zeros(shape, np.uint8)
    gt[3:7, 3:7, 3:9] = 4
    gt[7:9, 3:7, 3:9] = 6
    image = rng.normal(100, 10, shape).astype(np.float32)
    image[gt > 0] = 10
    paths = {k: folder / f"{sid}_{k}.nii.gz" for k in ("image", "binary", "gt")}
    save_nifti(paths["image"], image, affine)
    save_nifti(paths["binary"], (gt > 0).astype(np.uint8), affine)
    save_nifti(paths["gt"], gt, affine)
    return {"id": sid, "label": cls, **{k: str(v) for k, v in paths.items()}}


@pytest.fixture()
def tiny_dataset(tmp_path: Path) -> Path:
    """A valid 5-subject dataset.json in ``tmp_path``."""
    items = [make_item(tmp_path, f"sub-{i:03d}", i % 3, seed=i) for i in range(5)]
    data = {
        "name": "tiny", "synthetic": True,
        "labels": {str(k): v for k, v in LABELS.items()},
        "classes": {str(k): v for k, v in CLASSES.items()},
        "spacing_mm": [1.5, 1.5, 1.5],
        "training": items[:3], "validation": items[3:4], "testing": items[4:],
    }
    path = tmp_path / "dataset.json"
    write_dataset(path, data)
    return path
