"""Skeleton Recall (Kirchhoff et al., ECCV 2024) as a measured ablation of segmenter (c) (issue 16, item 4).

The term rewards covering each vessel's centreline: for every label ``c`` of the training target,
``S_c`` is the skeleton of the propagated label (``lp``, never ``gt``) thickened by one voxel
inside the label (the "tubed" skeleton), and the loss is ``1 − Σ p_c S_c / Σ S_c``, averaged over
the (sample, label) pairs present. It is added to (c)'s segmentation loss with weight
:data:`WEIGHT` (the paper's 1). Skeletons are computed once per subject and travel through the
patch crop and the augmentation as one more label map (``skel``, nearest-neighbour), so they stay
on the image they came from.

The ablation retrains (c) with the term on the committed default run's data (same configuration,
seed and epochs; engine mode :data:`MODE`, registered in :data:`fetalcmr.train.STEPS` on import)
and compares it with the run's own (c) on the same test subjects: mean vessel Dice and the strict
topology verdict of the raw maps (paired, exact McNemar), plus the cost per epoch. It is not part
of ``make reproduce``; run it with ``python -m fetalcmr.skeleton_recall`` after the default run
(its outputs go under the run's ``ablations/skeleton_recall/``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from fetalcmr.train import STEPS, SegmentStep

MODE = "segment_skeleton"
#: weight of the skeleton-recall term (Kirchhoff et al. use 1 beside nnU-Net's Dice + CE)
WEIGHT = 1.0
SKELETON_KEY = "skel"


def tubed_skeleton(labels: np.ndarray) -> np.ndarray:
    """Return the tubed skeleton of each label of ``labels`` [1, x, y, z] (or [x, y, z]) as a label map
    of the same shape: label ``c`` on the skeleton of ``labels == c`` (scikit-image's 3D thinning; a
    piece it erases entirely counts whole) dilated by one voxel (26-neighbours) and kept inside
    ``labels == c``; 0 elsewhere."""
    from skimage.morphology import skeletonize

    lab = np.asarray(labels)
    volume = lab[0] if lab.ndim == 4 else lab
    out = np.zeros(volume.shape, np.uint8)
    cube = np.ones((3, 3, 3), bool)
    for c in np.unique(volume):
        if c == 0:
            continue
        mask = volume == c
        skeleton = skeletonize(mask)
        # thinning can erase a whole even-width piece (a 4×4-voxel bar leaves nothing): such a piece is
        # thin enough to be its own skeleton
        pieces, n = ndimage.label(mask, structure=cube)
        kept = np.unique(pieces[skeleton])
        skeleton |= (pieces > 0) & ~np.isin(pieces, kept)
        tube = ndimage.binary_dilation(skeleton, structure=cube) & mask
        out[tube] = int(c)
    return out[None] if lab.ndim == 4 else out


def skeleton_recall_loss(logits: torch.Tensor, skeleton: torch.Tensor) -> torch.Tensor:
    """Return ``1 −`` the mean over present (sample, label) pairs of the softmax mass on the label's tubed
    skeleton divided by the skeleton's size; 0 when no skeleton voxel is present.

    ``logits`` [B, C, ...]; ``skeleton`` [B, ...] integer labels (0 = none).
    """
    probs = torch.softmax(logits.float(), dim=1)
    recalls = []
    for c in range(1, probs.shape[1]):
        on = (skeleton == c).float()
        size = on.flatten(1).sum(1)
        present = size > 0
        if present.any():
            covered = (probs[:, c] * on).flatten(1).sum(1)
            recalls.append(covered[present] / size[present])
    if not recalls:
        return logits.sum() * 0.0
    return 1.0 - torch.cat(recalls).mean()


class SkeletonRecallStep(SegmentStep):
    """``segment`` plus :data:`WEIGHT` × :func:`skeleton_recall_loss` against the samples' ``skel`` maps."""

    @classmethod
    def target_keys(cls, targets: str) -> tuple[str, ...]:
        """The segmenter's targets and the tubed skeletons."""
        return (*super().target_keys(targets), SKELETON_KEY)

    def loss(self, outputs: Any, batch: dict[str, Any], epoch: int,
             device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        """Return the segmentation loss plus the weighted skeleton-recall term, and the parts."""
        seg, parts = super().loss(outputs, batch, epoch, device)
        skeleton = batch[SKELETON_KEY].to(device, non_blocking=True)[:, 0].long()
        term = skeleton_recall_loss(self.segmentation(outputs), skeleton)
        return seg + WEIGHT * term, {**parts, "skeleton_recall": float(term.detach())}


STEPS.setdefault(MODE, SkeletonRecallStep)


def with_skeletons(samples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Return ``samples`` with the tubed skeleton of their ``lp`` under ``skel``."""
    return [{**s, SKELETON_KEY: tubed_skeleton(s["lp"])} for s in samples]


def _mcnemar(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int, float]:
    """Discordant counts (only a, only b) and the exact two-sided McNemar p-value."""
    from scipy.stats import binomtest

    only_a = int(sum(x and not y for x, y in zip(a, b, strict=True)))
    only_b = int(sum(y and not x for x, y in zip(a, b, strict=True)))
    n = only_a + only_b
    return only_a, only_b, (1.0 if n == 0 else float(binomtest(only_b, n, 0.5).pvalue))


def run_ablation(run_dir: str | Path, profile_name: str = "default", *, seed: int = 0,
                 progress: bool = True) -> pd.DataFrame:
    """Train (c) with the skeleton-recall term on the run's data, predict its test subjects, and return
    per-subject rows (Dice against gt and the raw topology verdict) for the run's (c) and the ablation.

    Writes ``<run>/ablations/skeleton_recall/``: the model folder, ``predictions/``, ``subjects.csv``
    and ``summary.csv``.
    """
    from fetalcmr.cache import content_key
    from fetalcmr.config import get_profile
    from fetalcmr.data import make_samples
    from fetalcmr.methods import get
    from fetalcmr.models import make_segmenter
    from fetalcmr.paths import RunPaths
    from fetalcmr.propagation import load_label_propagation
    from fetalcmr.review import load_cases, review_table
    from fetalcmr.segmentation import METHOD, predict_labels, train_config, training_digest
    from fetalcmr.train import train

    paths = RunPaths(Path(run_dir))
    profile = get_profile(profile_name)
    cfg, grid, spacing = profile.segmenter, profile.cohort.grid, profile.cohort.spacing_mm
    data = load_label_propagation(paths).dataset
    out = Path(run_dir) / "ablations" / "skeleton_recall"
    keys = ("image", "lp", "binary", "label")
    t0 = time.perf_counter()
    train_samples = with_skeletons(make_samples(data["training"], keys, grid=grid, spacing_mm=spacing))
    val_samples = with_skeletons(make_samples(data.get("validation", []) or [], keys, grid=grid, spacing_mm=spacing))
    skeleton_seconds = time.perf_counter() - t0
    tcfg = dataclasses.replace(train_config(cfg, METHOD, seed), mode=MODE)
    run_key = content_key("skeleton-recall", WEIGHT, profile_name, seed, tcfg.to_dict(), dataclasses.asdict(cfg),
                          training_digest(data), grid, spacing)
    result = train(functools.partial(make_segmenter, cfg), train_samples, val_samples, tcfg, out / "model",
                   run_key=run_key, progress=progress)
    test_items = list(data.get("testing", []) or [])
    test_samples = make_samples(test_items, ("image",), grid=grid, spacing_mm=spacing)
    predict_labels(result.model, test_samples, out / "predictions", progress=progress)
    separate = get(METHOD).short
    ablation = f"{separate} + skeleton recall"
    cases, messages = load_cases(test_items, {separate: paths.predictions_dir / str(get(METHOD).folder),
                                              ablation: out / "predictions"}, with_lp=False, progress=progress)
    if messages:
        raise FileNotFoundError("; ".join(messages))
    reports = review_table(cases, progress=progress)
    rows = reports[reports["method"].isin([separate, ablation])][["id", "cls", "method", "correct", "mean_dice"]]
    out.mkdir(parents=True, exist_ok=True)
    rows.to_csv(out / "subjects.csv", index=False)
    wide = rows.pivot(index="id", columns="method", values=["correct", "mean_dice"])
    only_sep, only_abl, p = _mcnemar(wide["correct"][separate].astype(bool).tolist(),
                                     wide["correct"][ablation].astype(bool).tolist())
    diff = wide["mean_dice"][ablation] - wide["mean_dice"][separate]
    rng = np.random.default_rng(seed)
    boot = [float(rng.choice(diff.to_numpy(), len(diff)).mean()) for _ in range(2000)]
    history = result.history
    summary = pd.DataFrame([{
        "subjects": len(wide), "weight": WEIGHT, "epochs": int(len(history)),
        "correct_separate": int(wide["correct"][separate].sum()),
        "correct_ablation": int(wide["correct"][ablation].sum()),
        "only_separate": only_sep, "only_ablation": only_abl, "mcnemar_p": p,
        "dice_separate": float(wide["mean_dice"][separate].mean()),
        "dice_ablation": float(wide["mean_dice"][ablation].mean()),
        "dice_diff": float(diff.mean()), "dice_diff_ci_low": float(np.percentile(boot, 2.5)),
        "dice_diff_ci_high": float(np.percentile(boot, 97.5)),
        "seconds_per_epoch": float(history["seconds"].median()), "skeleton_seconds": skeleton_seconds,
        "threads": torch.get_num_threads()}])
    summary.to_csv(out / "summary.csv", index=False)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fetalcmr.skeleton_recall [--run data/runs/default] [--profile default]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="data/runs/default")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    summary = run_ablation(args.run, args.profile, seed=args.seed)
    print(summary.T.to_string(header=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
