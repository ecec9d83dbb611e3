"""Two runs on the same test subjects, compared pair by pair: ablations and regenerations.

``python -m fetalcmr.compare_runs RUN_A RUN_B`` reads the per-subject tables each run wrote in
its ``results/`` folder and prints, for every method both runs share, A − B with a 95 % paired
bootstrap interval over the test subjects and a verdict: "A better", "B better" or "not
distinguishable" (the interval contains 0), or "identical" (every pair equal). The rows:

- ``segmentation``: each subject's mean vessel Dice (:func:`fetalcmr.metrics.subject_mean_dice`)
  per method of notebook 02 (``segmentation_per_label.csv``) and, with ``--per-label``, each
  label's Dice;
- ``joint``: the same for notebook 04's models (``joint_segmentation_metrics.csv``);
- ``classification``: the seed-mean balanced accuracy per input type of notebook 03
  (``classification_predictions.csv``), with the two-level bootstrap of
  :func:`fetalcmr.classmetrics.bootstrap_balanced_accuracy` (seeds and subjects resampled).

Runs are paired by subject id; a comparison over different subjects is refused (the default
profile and its ``default_plain`` ablation share every subject and its anatomy). ``--out`` writes
the table as CSV.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fetalcmr.classification import PREDICTIONS_CSV
from fetalcmr.classmetrics import balanced_accuracy, bootstrap_balanced_accuracy
from fetalcmr.metrics import subject_mean_dice
from fetalcmr.stats import paired_wilcoxon

#: per-subject segmentation tables of a run's ``results/`` folder, by the stage that wrote them
SEGMENTATION_TABLES = {"segmentation": "segmentation_per_label.csv", "joint": "joint_segmentation_metrics.csv"}
COLUMNS = ["stage", "method", "label", "n", "a", "b", "diff", "ci_low", "ci_high", "p", "verdict"]


def _verdict(low: float, high: float, identical: bool = False) -> str:
    if identical:
        return "identical"
    if not (np.isfinite(low) and np.isfinite(high)):
        return "not evaluated"
    return "A better" if low > 0 else "B better" if high < 0 else "not distinguishable"


def _results(run: Path) -> Path:
    folder = run / "results" if (run / "results").is_dir() else run
    if not folder.is_dir():
        raise FileNotFoundError(f"{run}: not a run folder (no results/ inside)")
    return folder


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"id": str})


def _same_subjects(a: pd.Series, b: pd.Series, what: str) -> None:
    ids_a, ids_b = set(a.astype(str)), set(b.astype(str))
    if ids_a != ids_b:
        only = sorted(ids_a ^ ids_b)[:5]
        raise ValueError(f"{what}: the runs have different test subjects (e.g. {only}); a paired comparison "
                         "needs the same ones")


def _paired_row(stage: str, method: str, label: str, a: pd.Series, b: pd.Series) -> dict[str, object]:
    joined = pd.concat({"a": a, "b": b}, axis=1).dropna()
    test = paired_wilcoxon(joined["a"].to_numpy(), joined["b"].to_numpy())
    return {"stage": stage, "method": method, "label": label, "n": test.n, "a": test.mean_a, "b": test.mean_b,
            "diff": test.mean_diff, "ci_low": test.diff_ci_low, "ci_high": test.diff_ci_high, "p": test.p_value,
            "verdict": _verdict(test.diff_ci_low, test.diff_ci_high,
                                identical=test.n > 0 and bool((joined["a"] == joined["b"]).all()))}


def segmentation_rows(stage: str, a: pd.DataFrame, b: pd.DataFrame, *, per_label: bool = False) -> list[dict]:
    """Rows of paired Dice differences (A − B) for every method in both per-subject tables."""
    rows: list[dict] = []
    for method in [m for m in dict.fromkeys(a["method"]) if m in set(b["method"])]:
        ma, mb = a[a["method"] == method], b[b["method"] == method]
        _same_subjects(ma["id"], mb["id"], f"{stage} {method}")
        da = subject_mean_dice(ma, keys=("id",))
        db = subject_mean_dice(mb, keys=("id",))
        rows.append(_paired_row(stage, method, "mean vessel Dice", da, db))
        if per_label:
            for name in dict.fromkeys(ma["name"]):
                la = ma[ma["name"] == name].set_index("id")["dice"]
                lb = mb[mb["name"] == name].set_index("id")["dice"]
                rows.append(_paired_row(stage, method, f"{name} Dice", la, lb))
    return rows


def _same_predictions(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    keys = ["seed", "id"]
    return a.sort_values(keys)[[*keys, "pred"]].reset_index(drop=True).equals(
        b.sort_values(keys)[[*keys, "pred"]].reset_index(drop=True))


def classification_rows(a: pd.DataFrame, b: pd.DataFrame) -> list[dict]:
    """Rows of paired differences in seed-mean balanced accuracy (A − B) per input type."""
    rows: list[dict] = []
    for kind in [k for k in dict.fromkeys(a["kind"]) if k in set(b["kind"])]:
        pa, pb = a[a["kind"] == kind], b[b["kind"] == kind]
        _same_subjects(pa["id"], pb["id"], f"classification {kind}")
        ma, mb = (float(np.mean([balanced_accuracy(g["label"], g["pred"]) for _, g in x.groupby("seed")]))
                  for x in (pa, pb))
        low, high = bootstrap_balanced_accuracy(pa, pb)
        rows.append({"stage": "classification", "method": kind, "label": "balanced accuracy",
                     "n": int(pa["id"].nunique()), "a": ma, "b": mb, "diff": ma - mb, "ci_low": low,
                     "ci_high": high, "p": float("nan"),
                     "verdict": _verdict(low, high, identical=_same_predictions(pa, pb))})
    return rows


def compare_runs(run_a: str | Path, run_b: str | Path, *, per_label: bool = False) -> pd.DataFrame:
    """Return the paired comparison table of two runs (columns :data:`COLUMNS`); tables missing in
    either run are skipped."""
    ra, rb = _results(Path(run_a)), _results(Path(run_b))
    rows: list[dict] = []
    for stage, name in SEGMENTATION_TABLES.items():
        if (ra / name).exists() and (rb / name).exists():
            rows += segmentation_rows(stage, _read(ra / name), _read(rb / name), per_label=per_label)
    if (ra / PREDICTIONS_CSV).exists() and (rb / PREDICTIONS_CSV).exists():
        rows += classification_rows(_read(ra / PREDICTIONS_CSV), _read(rb / PREDICTIONS_CSV))
    return pd.DataFrame(rows, columns=COLUMNS)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print (and with ``--out`` write) the comparison of two runs."""
    parser = argparse.ArgumentParser(prog="python -m fetalcmr.compare_runs", description=__doc__.split("\n")[0])
    parser.add_argument("run_a", type=Path, help="run folder (data/runs/<name>) or its results/ folder")
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--per-label", action="store_true", help="also every label's Dice")
    parser.add_argument("--out", type=Path, default=None, help="write the table as CSV")
    args = parser.parse_args(argv)
    try:
        table = compare_runs(args.run_a, args.run_b, per_label=args.per_label)
    except (FileNotFoundError, ValueError) as err:
        print(f"compare_runs: {err}", file=sys.stderr)
        return 2
    if table.empty:
        print("compare_runs: the two runs share no per-subject table", file=sys.stderr)
        return 2
    print(f"A = {args.run_a}\nB = {args.run_b}\n")
    with pd.option_context("display.width", 200, "display.max_rows", None, "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))
    if args.out is not None:
        from fetalcmr.atomic import atomic_path

        with atomic_path(args.out) as tmp:
            table.to_csv(tmp, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
