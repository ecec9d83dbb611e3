"""Joint fine-tuning long enough to matter (issue 16, item 5): a measured ablation on a finished run.

Notebook 04 fine-tunes the separately trained pair for :attr:`fetalcmr.config.JointConfig.epochs`
epochs (2 at the default profile), which may be too short for the classification term to change
the segmenter. This ablation fine-tunes the same starting pair (the run's segmenter (c) and the
``softmax+image`` classifier of the first ensemble seed) for :data:`EPOCHS` epochs twice, with the
profile's λ and with λ = 0 (the control: the same steps, only the segmentation loss), predicts the
run's test subjects and compares, on the same subjects:

* mean vessel Dice (paired, bootstrap interval; all, DAA, and the paper's subgroup: DAA classified
  correctly by both), balanced accuracy;
* the strict topology verdict of notebook 05, raw and after the clean-up notebook 05 chose on the
  validation split (exact McNemar, all and DAA);
* how much the classification term changed the segmentation: the share of voxels labelled
  differently by the λ and λ = 0 maps within their joint vessel region;
* the validation curves of both runs (Dice against the propagated labels, balanced accuracy).

The run's own rows (separate pair, and the 2-epoch joint and λ = 0 runs of ``results/``) are put
beside them. It is not part of ``make reproduce``; run ``python -m fetalcmr.joint_length`` after the
default run (outputs under the run's ``ablations/joint_length/``).
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fetalcmr.stats import mcnemar_exact

#: fine-tuning epochs of the ablation's two runs (6 × the default profile's 2)
EPOCHS = 12


def method_name(base: str, epochs: int) -> str:
    """Return the ablation's name of a fine-tuning run: ``joint_12ep``, ``lambda0_2ep``; ``separate`` for 0 epochs."""
    return "separate" if epochs == 0 else f"{base}_{epochs}ep"


def disagreement(a: np.ndarray, b: np.ndarray) -> float:
    """Return the share of voxels inside either map's vessels (label > 0) that the two maps label differently."""
    region = (a > 0) | (b > 0)
    n = int(region.sum())
    return float(np.count_nonzero(a[region] != b[region]) / n) if n else 0.0


def topology_counts(reports: pd.DataFrame, method: str, post: str, cls: int | None = None) -> tuple[int, int]:
    """Return (correct, reviewed) of ``method``'s maps in ``reports`` (``post`` = "raw"/"post"; one class or all)."""
    g = reports[(reports["method"] == method) & (reports["postprocessing"] == post)]
    if cls is not None:
        g = g[g["cls"] == cls]
    return int(g["correct"].astype(bool).sum()), len(g)


def summary_table(seg: pd.DataFrame, cls_pred: pd.DataFrame, reports: pd.DataFrame,
                  epochs: Mapping[str, int], lams: Mapping[str, float], train_s: Mapping[str, float],
                  changed: Mapping[str, float], daa: int = 2) -> pd.DataFrame:
    """Return one row per method: epochs, λ, Dice (all, DAA, DAA classified correctly), balanced accuracy,
    topology-correct counts (raw and post, all and DAA; empty where the method's maps were not kept),
    fine-tuning seconds and the share of vessel voxels that differ from the λ = 0 run of the same length."""
    from fetalcmr.joint_report import comparison_table

    comp = comparison_table(seg, cls_pred, list(epochs), daa=daa).set_index("method")
    rows = []
    for m in epochs:
        row = {"method": m, "epochs": epochs[m], "lam": lams[m], **comp.loc[m].drop("description").to_dict()}
        for post in ("raw", "post"):
            for name, c in (("all", None), ("daa", daa)):
                k, n = topology_counts(reports, m, post, c)
                row[f"topology_{post}_{name}"] = f"{k}/{n}" if n else ""
        row["train_s"] = train_s.get(m, float("nan"))
        row["voxels_changed_vs_lambda0"] = changed.get(m, float("nan"))
        rows.append(row)
    return pd.DataFrame(rows)


def paired_table(seg: pd.DataFrame, cls_pred: pd.DataFrame, reports: pd.DataFrame,
                 pairs: Sequence[tuple[str, str]], daa: int = 2) -> pd.DataFrame:
    """Return, per pair (a, b): paired Dice tests (all, DAA, DAA correct by both; :func:`paired_tests`)
    and exact McNemar tests of the topology verdicts (raw and post, all and DAA) where both have maps."""
    from fetalcmr.joint_report import paired_tests

    dice = paired_tests(seg, cls_pred, pairs, daa=daa)
    dice.insert(2, "measure", "mean vessel Dice")
    rows = []
    for a, b in pairs:
        for post in ("raw", "post"):
            r = reports[reports["postprocessing"] == post]
            wide = r[r["method"].isin([a, b])].pivot_table(index="id", columns="method", values="correct",
                                                          aggfunc="first")
            if not {a, b} <= set(wide.columns):
                continue
            wide = wide.dropna()
            cls = r.drop_duplicates("id").set_index("id")["cls"]
            for subset, ids in (("all", wide.index), ("DAA", wide.index[cls.reindex(wide.index) == daa])):
                sub = wide.loc[ids]
                t = mcnemar_exact(sub[a].astype(bool), sub[b].astype(bool))
                rows.append({"a": a, "b": b, "measure": f"topology correct ({post})", "subset": subset, "n": t.n,
                             "mean_a": (t.both_correct + t.only_a) / t.n if t.n else np.nan,
                             "mean_b": (t.both_correct + t.only_b) / t.n if t.n else np.nan,
                             "only_a": t.only_a, "only_b": t.only_b, "p": t.p_value})
    return pd.concat([dice, pd.DataFrame(rows)], ignore_index=True)


def validation_curves(histories: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Return the runs' validation curves stacked: ``method, epoch, val_dice, val_bacc, train_ce`` (NaN
    where a history lacks a column)."""
    cols = ["method", "epoch", "val_dice", "val_bacc", "train_ce"]
    return pd.concat([h.assign(method=m).reindex(columns=cols) for m, h in histories.items()], ignore_index=True)


def run_ablation(run_dir: str | Path, profile_name: str = "default", *, epochs: int = EPOCHS,
                 progress: bool = True) -> pd.DataFrame:
    """Fine-tune the run's starting pair for ``epochs`` epochs with λ and with λ = 0, predict and review the
    test subjects, and return the summary table (also written, with the paired tests and the validation
    curves, under ``<run>/ablations/joint_length/``)."""
    from fetalcmr.cache import content_key, file_digest
    from fetalcmr.classification import load_classification, load_segmenter
    from fetalcmr.config import get_profile
    from fetalcmr.dataset import labels_of
    from fetalcmr.joint import (
        CLASS_PREDICTIONS_CSV,
        KIND,
        SEG_METRICS_CSV,
        build_joint,
        fine_tune_job,
        joint_samples,
        joint_train_config,
        load_joint,
        predict_and_evaluate,
        truth_maps,
    )
    from fetalcmr.methods import get
    from fetalcmr.parallel import train_runs
    from fetalcmr.paths import RunPaths
    from fetalcmr.propagation import load_label_propagation
    from fetalcmr.review import choose_for_methods, load_cases, postprocessed, review_both, validation_pairs
    from fetalcmr.segmentation import METHOD, load_segmentation

    paths = RunPaths(Path(run_dir))
    profile = get_profile(profile_name)
    seg_cfg, cls_cfg, jcfg = profile.segmenter, profile.classifier, profile.joint
    if epochs <= jcfg.epochs:
        raise ValueError(f"joint_length: {epochs} epochs is not longer than the run's own fine-tuning "
                         f"({jcfg.epochs} epochs at profile {profile_name!r})")
    grid, spacing = profile.cohort.grid, profile.cohort.spacing_mm
    data = load_label_propagation(paths).dataset
    segmentation, classification = load_segmentation(paths), load_classification(paths)
    labels = labels_of(dict(data))
    segmenter, seg_key = load_segmenter(segmentation.checkpoints[METHOD], seg_cfg)
    seed = (list(jcfg.ensemble_seeds) or [0])[0]
    factory = functools.partial(build_joint, seg_cfg, cls_cfg, seg_state=segmenter.state_dict(),
                                cls_state=classification.weights(KIND, seed))
    start_key = content_key(seg_key, file_digest(classification.checkpoint(KIND, seed)))
    samples = joint_samples(data, grid=grid, spacing_mm=spacing)
    out = paths.root / "ablations" / "joint_length"

    lams = {method_name("joint", epochs): float(jcfg.lam), method_name("lambda0", epochs): 0.0}
    jobs = [fine_tune_job(factory, samples["training"],
                          joint_train_config(jcfg, seg_cfg, lam=lam, epochs=epochs, seed=seed),
                          out / "models" / name, start_key=start_key) for name, lam in lams.items()]
    shared = {"training": samples["training"], "validation": samples["validation"]}
    runs = dict(zip(lams, train_runs(jobs, shared, desc="joint length runs", progress=progress), strict=True))
    pred_dirs = {name: out / "predictions" / name for name in runs}
    for d in pred_dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    seg_new, cls_new = predict_and_evaluate({n: r.model for n, r in runs.items()}, samples["testing"],
                                            truth_maps(data["testing"], grid=grid, spacing_mm=spacing),
                                            spacing_mm=spacing, labels=labels, save_dirs=pred_dirs,
                                            dice_only=list(runs), progress=progress)

    short = jcfg.epochs
    rename = {"separate": "separate", "joint": method_name("joint", short), "lambda0": method_name("lambda0", short)}
    seg_old = pd.read_csv(paths.results_dir / SEG_METRICS_CSV, dtype={"id": str})
    cls_old = pd.read_csv(paths.results_dir / CLASS_PREDICTIONS_CSV, dtype={"id": str})
    seg_old = seg_old[seg_old["method"].isin(rename)].assign(method=lambda d: d["method"].map(rename))
    cls_old = cls_old[cls_old["method"].isin(rename)].assign(method=lambda d: d["method"].map(rename))
    seg = pd.concat([seg_old, seg_new], ignore_index=True)
    cls_pred = pd.concat([cls_old, cls_new], ignore_index=True)

    # topology of every method whose maps exist: (c) is the separate pair's segmenter; notebook 04 keeps the
    # maps of its joint pair and (since it keeps them) of its λ = 0 control
    kept = {rename[m]: d for m, d in load_joint(paths).prediction_dirs.items()
            if m in rename and d.is_dir() and any(d.glob("*.nii.gz"))}
    map_dirs = {"separate": paths.predictions_dir / str(get(METHOD).folder), **kept, **pred_dirs}
    items = list(data.get("testing") or [])
    cases, messages = load_cases(items, map_dirs, with_lp=False, progress=progress)
    if messages:
        raise FileNotFoundError("; ".join(messages[:5]))
    val_pred, val_ref, _ = validation_pairs(segmentation.softmax_dir, data.get("validation") or []) \
        if segmentation.softmax_dir is not None else ([], [], [])
    choices = choose_for_methods({"separate": (val_pred, val_ref)}, list(map_dirs),
                                 [k for k in labels if int(k)], fallback="separate")
    reports = review_both(cases, postprocessed(cases, choices), progress=progress)

    long_joint, long_zero = lams
    changed = {j: float(np.mean([disagreement(c.maps[j], c.maps[z]) for c in cases]))
               for j, z in ((rename["joint"], rename["lambda0"]), (long_joint, long_zero)) if {j, z} <= set(map_dirs)}
    epochs_of = {"separate": 0, rename["joint"]: short, rename["lambda0"]: short, long_joint: epochs,
                 long_zero: epochs}
    lam_of = {"separate": float("nan"), rename["joint"]: float(jcfg.lam), rename["lambda0"]: 0.0, **lams}
    joint_hist = paths.joint_dir
    histories = {rename["joint"]: pd.read_csv(joint_hist / "joint" / "history.csv"),
                 rename["lambda0"]: pd.read_csv(joint_hist / "lambda0" / "history.csv"),
                 **{n: r.history for n, r in runs.items()}}
    train_s = {n: float(h["seconds"].sum()) for n, h in histories.items() if "seconds" in h}
    summary = summary_table(seg, cls_pred, reports, epochs_of, lam_of, train_s, changed)
    paired = paired_table(seg, cls_pred, reports, [(long_joint, long_zero), (rename["joint"], rename["lambda0"]),
                                                   (long_joint, rename["joint"]), (long_zero, rename["lambda0"]),
                                                   (long_joint, "separate")])
    out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out / "summary.csv", index=False)
    paired.to_csv(out / "paired.csv", index=False)
    validation_curves(histories).to_csv(out / "validation_curves.csv", index=False)
    reports[["id", "cls", "method", "postprocessing", "correct", "mean_dice"]].to_csv(out / "subjects.csv",
                                                                                      index=False)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fetalcmr.joint_length [--run data/runs/default] [--profile default] [--epochs 12]``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--run", default="data/runs/default")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args(argv)
    summary = run_ablation(args.run, args.profile, epochs=args.epochs)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(summary.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
