"""Tiny-dataset helpers for the training tests, and a DDP smoke run for ``torchrun``.

Run as ``python -m torch.distributed.run --nproc_per_node 2 tests/ddp_smoke.py OUT_DIR``: both
ranks train a tiny segmenter for two epochs on the gloo backend; rank 0 writes the
checkpoints and ``ranks.json`` with every rank's final weight checksum.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fetalcmr.anatomy import CLASSES, LABELS
from fetalcmr.dataset import write_dataset
from fetalcmr.io import save_nifti


def make_toy_dataset(folder: Path, n: int = 6, size: int = 16, seed: int = 0, n_test: int = 1) -> Path:
    """Write ``n`` tiny subjects (image, binary, lp, gt; 3 classes) and return their dataset.json.

    Three tube-shaped vessels (AO, DAO, MPA) on a bright background; ``lp`` is ``gt`` shifted by
    a voxel (imperfect propagation), ``binary`` is ``gt > 0``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    items: list[dict[str, Any]] = []
    for i in range(n):
        gt = np.zeros((size,) * 3, np.uint8)
        c = size // 2 + int(rng.integers(-1, 2))
        gt[c - 5:c - 2, c - 1:c + 2, 2:-2] = 4
        gt[c + 2:c + 5, c - 1:c + 2, 2:-2] = 6
        gt[c - 1:c + 2, c + 3:c + 6, 2:size // 2] = 7
        image = rng.normal(1.0, 0.1, gt.shape).astype(np.float32)
        image[gt > 0] = 0.1
        paths = {k: folder / f"sub-{i:03d}_{k}.nii.gz" for k in ("image", "binary", "lp", "gt")}
        save_nifti(paths["image"], image * 500.0, affine)
        save_nifti(paths["binary"], (gt > 0).astype(np.uint8), affine)
        save_nifti(paths["lp"], np.roll(gt, 1, axis=0), affine)
        save_nifti(paths["gt"], gt, affine)
        items.append({"id": f"sub-{i:03d}", "label": i % 3, **{k: str(v) for k, v in paths.items()}})
    n_train = max(n - 1 - n_test, 1)
    data = {"name": "toy", "synthetic": True, "labels": {str(k): v for k, v in LABELS.items()},
            "classes": {str(k): v for k, v in CLASSES.items()}, "spacing_mm": [1.0, 1.0, 1.0],
            "training": items[:n_train], "validation": items[n_train:n_train + 1],
            "testing": items[n_train + 1:]}
    path = folder / "dataset.json"
    write_dataset(path, data)
    return path


def main(out_dir: str) -> None:
    """Train a tiny segmenter under torchrun and record every rank's final weights."""
    import torch
    import torch.distributed as dist

    from fetalcmr.config import SegmenterConfig
    from fetalcmr.data import make_samples
    from fetalcmr.dataset import read_dataset
    from fetalcmr.models import make_segmenter
    from fetalcmr.train import TrainConfig, train

    out = Path(out_dir)
    rank = int(os.environ.get("RANK", "0"))
    data_dir = out / "data"
    if rank == 0:
        make_toy_dataset(data_dir, n=6, size=16)
    # wait for rank 0's data (file-based: the process group starts inside train())
    while not (data_dir / "dataset.json").exists():
        import time
        time.sleep(0.1)
    data = read_dataset(data_dir / "dataset.json")
    keys = ("image", "lp", "binary", "label")
    tr = make_samples(data["training"], keys)
    va = make_samples(data["validation"], keys)
    cfg = TrainConfig(mode="segment", epochs=2, batch_size=1, lr=1e-3, aug_prob=0.3, seed=0)
    net_cfg = SegmenterConfig(channels=(2, 4), strides=(2,), dropout=0.0)
    result = train(lambda: make_segmenter(net_cfg), tr, va, cfg, out / "model", run_key="ddp", progress=False)
    checksum = float(sum(p.detach().double().sum() for p in result.model.parameters()))
    sums = [None] * dist.get_world_size()
    dist.all_gather_object(sums, checksum)
    if rank == 0:
        (out / "ranks.json").write_text(json.dumps({"world_size": dist.get_world_size(), "checksums": sums,
                                                    "epochs": len(result.history)}))
    dist.barrier()
    dist.destroy_process_group()
    _ = torch


if __name__ == "__main__":
    main(sys.argv[1])
