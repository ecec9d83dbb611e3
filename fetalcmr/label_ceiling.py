"""How much of the segmenters' Dice gap is their labels (issue 16's diagnostic): an oracle ablation.

Segmenter (c) learns from the propagated labels (LP) plus the manual vessel masks. This diagnostic
trains the *same* network with the same configuration, seed and schedule once more, with the one
difference that its multi-class target is the ground truth instead of LP (an **oracle**: it breaks
the weak-supervision invariant on purpose, so it never feeds a result of the compendium and is not
part of ``make reproduce``). Per vessel on the run's test subjects it compares the Dice of LP, of
(c) and of the oracle, and the strict topology verdict of the raw maps of (c) and the oracle:

* where the oracle reaches a target that (c) misses, the labels are what stands between (c) and
  the target (better label propagation would close it);
* where the oracle misses it too, the network, its schedule or the resolution of this profile do; the
  Dice of the truth moved by one voxel (:func:`shifted_dice`) shows how much one voxel of boundary
  error costs each vessel on this grid.

Run ``python -m fetalcmr.label_ceiling`` after the default run; outputs under the run's
``ablations/label_ceiling/`` (``per_vessel.csv``, ``summary.csv``, ``subjects.csv``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fetalcmr.metrics import dice_per_label

#: method names in the outputs
LP, SEPARATE, ORACLE = "LP", "(c)", "(c) trained on gt (oracle)"
#: the truth moved by one voxel: what a segmentation that is right but one voxel off scores
SHIFTED = "gt shifted by one voxel"


def oracle_items(items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Return copies of ``items`` whose ``lp`` is their ``gt`` (what the oracle trains on); an item without
    ``gt`` is an error (the oracle needs the truth of every training and validation subject)."""
    missing = [str(it.get("id")) for it in items if not it.get("gt")]
    if missing:
        raise ValueError(f"label_ceiling: no gt for {len(missing)} subject(s), e.g. {missing[:3]}")
    return [{**it, "lp": it["gt"]} for it in items]


def oracle_digest(data: Mapping[str, Any]) -> str:
    """Return a hash of the files the oracle trains on (images, manual masks, truth as labels, classes), so
    its cached run is retrained when the cohort changes, not reused."""
    from fetalcmr.segmentation import training_digest

    return training_digest({"training": oracle_items(data["training"]),
                            "validation": oracle_items(data.get("validation") or [])})


def per_vessel_dice(maps: Mapping[str, Mapping[str, np.ndarray]], truth: Mapping[str, np.ndarray],
                    labels: Mapping[int, str]) -> pd.DataFrame:
    """Return long rows ``method, id, label, name, dice`` of every method's map of every subject in ``truth``."""
    fg = [int(k) for k in labels if int(k)]
    rows = []
    for method, by_id in maps.items():
        for sid, gt in truth.items():
            for k, d in dice_per_label(by_id[sid], gt, fg).items():
                rows.append({"method": method, "id": sid, "label": k, "name": labels[k], "dice": d})
    return pd.DataFrame(rows)


def shifted_dice(truth: Mapping[str, np.ndarray], labels: Mapping[int, str]) -> pd.DataFrame:
    """Return long rows (method :data:`SHIFTED`) of each vessel's Dice between the truth and the truth moved by
    one voxel, averaged over the six axis directions: how much one voxel of boundary error costs a vessel of
    that calibre on this grid."""
    fg = [int(k) for k in labels if int(k)]
    rows = []
    for sid, gt in truth.items():
        per_shift = [dice_per_label(np.roll(gt, step, axis=axis), gt, fg) for axis in range(3) for step in (-1, 1)]
        for k in fg:
            values = [d[k] for d in per_shift if np.isfinite(d[k])]
            rows.append({"method": SHIFTED, "id": sid, "label": k, "name": labels[k],
                         "dice": float(np.mean(values)) if values else np.nan})
    return pd.DataFrame(rows)


def vessel_table(dice: pd.DataFrame, targets: Mapping[str, float]) -> pd.DataFrame:
    """Return one row per vessel: mean Dice per method (columns in ``dice``'s order), the target where one
    is set, and the oracle's gain over (c) with its 95 % paired bootstrap interval over subjects."""
    from fetalcmr.stats import bootstrap_ci

    wide = dice.pivot_table(index=["label", "name", "id"], columns="method", values="dice")
    rows = []
    for (label, name), g in wide.groupby(level=["label", "name"]):
        row: dict[str, Any] = {"label": int(label), "vessel": name}
        for m in dict.fromkeys(dice["method"]):
            row[m] = float(np.nanmean(g[m]))
        row["target"] = targets.get(str(name), np.nan)
        pair = g[[ORACLE, SEPARATE]].dropna()
        lo, hi = bootstrap_ci(pair[ORACLE].to_numpy(), paired_with=pair[SEPARATE].to_numpy())
        row["oracle_minus_c"], row["ci_low"], row["ci_high"] = float((pair[ORACLE] - pair[SEPARATE]).mean()), lo, hi
        rows.append(row)
    return pd.DataFrame(rows)


def run_ablation(run_dir: str | Path, profile_name: str = "default", *, seed: int = 0,
                 progress: bool = True) -> pd.DataFrame:
    """Train the oracle, predict and review the run's test subjects, and return the per-vessel table
    (written with the topology summary under ``<run>/ablations/label_ceiling/``)."""
    from fetalcmr.cache import content_key
    from fetalcmr.config import get_profile
    from fetalcmr.data import load_volume, make_samples
    from fetalcmr.dataset import labels_of
    from fetalcmr.io import load_nifti
    from fetalcmr.methods import get
    from fetalcmr.models import make_segmenter
    from fetalcmr.paths import RunPaths
    from fetalcmr.propagation import load_label_propagation
    from fetalcmr.review import load_cases, review_table
    from fetalcmr.segmentation import METHOD, TARGETS, predict_labels, train_config
    from fetalcmr.targets import DICE_TARGETS
    from fetalcmr.train import train

    paths = RunPaths(Path(run_dir))
    profile = get_profile(profile_name)
    cfg, grid, spacing = profile.segmenter, profile.cohort.grid, profile.cohort.spacing_mm
    data = load_label_propagation(paths).dataset
    labels = labels_of(dict(data))
    out = paths.root / "ablations" / "label_ceiling"
    keys = ("image", *TARGETS[METHOD].replace("+", " ").split(), "label")
    train_s = make_samples(oracle_items(data["training"]), keys, grid=grid, spacing_mm=spacing)
    val_s = make_samples(oracle_items(data.get("validation") or []), keys, grid=grid, spacing_mm=spacing)
    tcfg = train_config(cfg, METHOD, seed)
    run_key = content_key("label-ceiling", profile_name, seed, tcfg.to_dict(), dataclasses.asdict(cfg),
                          oracle_digest(data), grid, spacing)
    result = train(functools.partial(make_segmenter, cfg), train_s, val_s, tcfg, out / "model", run_key=run_key,
                   progress=progress)
    test_items = list(data.get("testing") or [])
    test_s = make_samples(test_items, ("image",), grid=grid, spacing_mm=spacing)
    oracle_maps = predict_labels(result.model, test_s, out / "predictions", progress=progress)

    separate_dir = paths.predictions_dir / str(get(METHOD).folder)
    truth = {str(it["id"]): load_volume(it["gt"], kind="label", grid=grid, spacing_mm=spacing).array
             for it in test_items}
    maps = {LP: {str(it["id"]): load_volume(it["lp"], kind="label", grid=grid, spacing_mm=spacing).array
                 for it in test_items},
            SEPARATE: {sid: np.asarray(load_nifti(separate_dir / f"{sid}.nii.gz").array) for sid in truth},
            ORACLE: {str(k): v for k, v in oracle_maps.items()}}
    targets = {name: t for names, t in DICE_TARGETS for name in names}
    table = vessel_table(pd.concat([per_vessel_dice(maps, truth, labels), shifted_dice(truth, labels)],
                                   ignore_index=True), targets)

    cases, messages = load_cases(test_items, {SEPARATE: separate_dir, ORACLE: out / "predictions"},
                                 with_lp=True, progress=progress)
    if messages:
        raise FileNotFoundError("; ".join(messages[:5]))
    reports = review_table(cases, progress=progress)
    rows = []
    for method in ("LP", SEPARATE, ORACLE):
        g = reports[reports["method"] == method]
        row: dict[str, Any] = {"method": method, "subjects": len(g), "topology_raw": int(g["correct"].sum())}
        for c, name in sorted(dict(data.get("classes") or {}).items(), key=lambda kv: int(kv[0])):
            sub = g[g["cls"] == int(c)]
            row[f"topology_raw_{name}"] = f"{int(sub['correct'].sum())}/{len(sub)}"
        rows.append(row)
    summary = pd.DataFrame(rows).assign(epochs=tcfg.epochs, oracle_best_epoch=result.best_epoch)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "per_vessel.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    reports[["id", "cls", "method", "correct", "mean_dice"]].to_csv(out / "subjects.csv", index=False)
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fetalcmr.label_ceiling [--run data/runs/default] [--profile default] [--seed 0]``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--run", default="data/runs/default")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    table = run_ablation(args.run, args.profile, seed=args.seed)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.round(3).to_string(index=False))
        print(pd.read_csv(Path(args.run) / "ablations" / "label_ceiling" / "summary.csv").to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
