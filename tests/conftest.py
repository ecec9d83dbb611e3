"""Shared fixtures: small NIfTI datasets written to a temporary folder, and the session's smoke run
of every notebook."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gt_spy
import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

from fetalcmr.anatomy import CLASSES, LABELS  # noqa: E402
from fetalcmr.dataset import write_dataset  # noqa: E402
from fetalcmr.io import save_nifti  # noqa: E402

if TYPE_CHECKING:
    from fetalcmr.runner import StageResult


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
def committed_tables(tmp_path: Path) -> Path:
    """A copy of every committed stage table (``figures/tab*.csv``) to read or alter."""
    import shutil

    from fetalcmr.notebook import REPO_ROOT

    for table in (REPO_ROOT / "figures").glob("tab*.csv"):
        shutil.copy(table, tmp_path / table.name)
    return tmp_path


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


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[StageResult], Path]:
    """Every notebook run once at the smoke profile: ``(one result per notebook, root folder)``.

    Notebooks 00–01 run first. The later notebooks then run while the training and validation
    subjects' ``gt`` files hold garbage and the ``gt_spy`` is armed in their kernels (in
    ``root/gt_spy``: the forbidden list, the spy's log, and ``rewritten.json``); the files are
    restored afterwards. One run serves the notebook tests and the weak-supervision invariant
    (tests/test_weak_supervision.py).
    """
    from fetalcmr.dataset import read_dataset
    from fetalcmr.runner import list_notebooks, run_pipeline

    root = tmp_path_factory.mktemp("smoke")
    dirs = {"run_dir": str(root / "run"), "figures_dir": str(root / "figures")}
    first = run_pipeline("smoke", only=["00", "01"], **dirs)
    cohort = read_dataset(root / "run" / "cohort" / "dataset.json")
    later = [nb.name[:2] for nb in list_notebooks() if nb.name[:2] > "01"]
    spy = root / "gt_spy"
    with gt_spy.corrupted_truth(cohort, spy / "rewritten.json") as forbidden, pytest.MonkeyPatch.context() as mp:
        for key, value in gt_spy.kernel_env(forbidden, spy).items():
            mp.setenv(key, value)
        rest = run_pipeline("smoke", only=later, **dirs)
    return [*first, *rest], root
