"""``make verify``: regenerate the tables from a clean run and compare them with the committed
ones, within stated tolerances, printing every difference.

Run-time columns are not compared. Numbers may differ slightly between machines (thread
scheduling in BLAS and in training), so a numeric cell passes when
``|new - ref| <= atol + rtol * |ref|``; text cells must be equal.
The smoke profile has no committed results (its numbers are meaningless), so ``verify`` at
smoke compares two clean runs with each other: it checks that the pipeline is deterministic.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fetalcmr.notebook import REPO_ROOT

#: Columns holding run times (``seconds…``, ``…_s``, ``…_s_…``): machine-dependent, not compared.
TIMING_COLUMN = re.compile(r"seconds|(^|_)s(_|$)")
#: Default tolerances for numeric cells.
RTOL: float = 0.05
ATOL: float = 0.02


@dataclass(frozen=True)
class Difference:
    """One table cell (or a whole table, row or column) that did not reproduce."""

    table: str
    where: str
    reference: str
    regenerated: str

    def __str__(self) -> str:
        return f"{self.table} {self.where}: committed {self.reference} vs regenerated {self.regenerated}"


def _close(a: object, b: object, rtol: float, atol: float) -> bool:
    try:
        fa, fb = float(a), float(b)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(a) == str(b)
    if math.isnan(fa) or math.isnan(fb):
        return math.isnan(fa) and math.isnan(fb)
    if math.isinf(fa) or math.isinf(fb):
        return fa == fb
    return abs(fa - fb) <= atol + rtol * abs(fa)


def compare_tables(reference: Path, regenerated: Path, *, rtol: float = RTOL, atol: float = ATOL) -> list[Difference]:
    """Differences between two CSV tables (shape, columns, then cell by cell; run times skipped)."""
    name = reference.name
    if not regenerated.exists():
        return [Difference(name, "(file)", "present", "missing")]
    ref = pd.read_csv(reference, keep_default_na=False, na_values=["nan", "NaN"])
    new = pd.read_csv(regenerated, keep_default_na=False, na_values=["nan", "NaN"])
    if list(ref.columns) != list(new.columns):
        return [Difference(name, "(columns)", str(list(ref.columns)), str(list(new.columns)))]
    if len(ref) != len(new):
        return [Difference(name, "(rows)", str(len(ref)), str(len(new)))]
    diffs = []
    for i in range(len(ref)):
        for col in ref.columns:
            if TIMING_COLUMN.search(str(col)):
                continue
            a, b = ref.at[i, col], new.at[i, col]
            if not _close(a, b, rtol, atol):
                diffs.append(Difference(name, f"row {i + 1}, column {col!r}", str(a), str(b)))
    return diffs


def compare_folders(reference: Path, regenerated: Path, *, rtol: float = RTOL,
                    atol: float = ATOL) -> list[Difference]:
    """Differences for every ``tab*.csv`` of ``reference`` against ``regenerated``."""
    tables = sorted(reference.glob("tab*.csv"))
    if not tables:
        return [Difference(str(reference), "(folder)", "tables tab*.csv", "none found")]
    diffs: list[Difference] = []
    for table in tables:
        diffs += compare_tables(table, regenerated / table.name, rtol=rtol, atol=atol)
    return diffs


def _fresh_run(profile: str, root: Path, seed: int) -> Path:
    from fetalcmr.runner import run_pipeline

    if root.exists():
        shutil.rmtree(root)
    figures = root / "figures"
    run_pipeline(profile, seed=seed, run_dir=str(root / "run"), figures_dir=str(figures))
    return figures


def verify(profile: str = "default", *, seed: int = 0, reference: Path | None = None,
           regenerated: Path | None = None, work_dir: Path | None = None, rtol: float = RTOL,
           atol: float = ATOL) -> list[Difference]:
    """Regenerate ``profile`` from scratch in ``work_dir`` and compare its tables with ``reference``.

    ``reference`` defaults to the committed ``figures/`` for the default profile; for other
    profiles a second clean run is the reference. ``regenerated`` compares an existing folder
    (e.g. the ``figures_dir`` of an earlier ``make reproduce``) instead of running again.
    """
    work = work_dir or REPO_ROOT / "data" / "runs" / f"verify-{profile}"
    if reference is None:
        reference = REPO_ROOT / "figures" if profile == "default" else _fresh_run(profile, work / "first", seed)
    if regenerated is None:
        regenerated = _fresh_run(profile, work / "second", seed)
    return compare_folders(reference, regenerated, rtol=rtol, atol=atol)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: exit 0 when every table reproduces, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="python -m fetalcmr.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference", type=Path, default=None, help="folder of committed tables")
    parser.add_argument("--regenerated", type=Path, default=None,
                        help="compare this folder of tables instead of regenerating them")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the clean runs go (default data/runs/verify-PROFILE)")
    parser.add_argument("--rtol", type=float, default=RTOL)
    parser.add_argument("--atol", type=float, default=ATOL)
    args = parser.parse_args(argv)
    diffs = verify(args.profile, seed=args.seed, reference=args.reference, regenerated=args.regenerated,
                   work_dir=args.work_dir, rtol=args.rtol, atol=args.atol)
    if diffs:
        print(f"verify: {len(diffs)} difference(s) beyond rtol={args.rtol}, atol={args.atol}:")
        for d in diffs:
            print(f"  {d}")
        return 1
    print(f"verify: every table reproduced within rtol={args.rtol}, atol={args.atol}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
