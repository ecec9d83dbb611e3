"""``fetalcmr`` command line: the pipeline's steps outside notebooks.

Exit codes: 0 success, 1 a stage failed, 2 bad input (the message names the file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fetalcmr.config import PROFILE_NAMES
from fetalcmr.io import DataError


def _cmd_synthesise(args: argparse.Namespace) -> int:
    from fetalcmr.config import get_profile
    from fetalcmr.synth import generate_cohort

    profile = get_profile(args.profile)
    path = generate_cohort(Path(args.out), profile.cohort, args.seed)
    print(f"synthetic cohort ({profile.cohort.n_subjects} subjects, profile {profile.name}): {path}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from fetalcmr.validate import validate_dataset

    data = validate_dataset(args.dataset, check_files=not args.json_only)
    counts = ", ".join(f"{s}: {len(data.get(s, []) or [])}" for s in ("training", "validation", "testing"))
    print(f"{args.dataset}: valid ({counts})")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from fetalcmr.validate import import_reference_datalist

    out = import_reference_datalist(args.source, args.out, spacing_mm=args.spacing_mm)
    print(f"wrote {out}; check it with: fetalcmr validate {out}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from fetalcmr.runner import main as runner_main

    argv = ["--profile", args.profile, "--seed", str(args.seed)]
    if args.dataset:
        argv += ["--dataset", args.dataset]
    if args.force:
        argv.append("--force")
    if args.only:
        argv += ["--only", *args.only]
    return runner_main(argv)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fetalcmr`` command."""
    parser = argparse.ArgumentParser(
        prog="fetalcmr",
        description="Fetal cardiac vessel segmentation and aortic arch anomaly classification "
                    "(Ramirez Gilliland et al., MELBA 2023), reproducible on a laptop.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synthesise", help="generate the synthetic cohort and its dataset.json")
    p.add_argument("--profile", default="default", choices=PROFILE_NAMES)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=_cmd_synthesise)

    p = sub.add_parser("validate", help="check a dataset.json and every file it names")
    p.add_argument("dataset")
    p.add_argument("--json-only", action="store_true", help="check the JSON only, not the NIfTI files")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("import-reference", help="convert the reference implementation's datalist "
                                                 "(mask/LP keys) to a dataset.json")
    p.add_argument("source")
    p.add_argument("out")
    p.add_argument("--spacing-mm", type=float, default=None)
    p.set_defaults(func=_cmd_import)

    p = sub.add_parser("reproduce", help="run the notebooks headlessly (what `make reproduce` does)")
    p.add_argument("--profile", default="default", choices=PROFILE_NAMES)
    p.add_argument("--dataset", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")
    p.add_argument("--only", nargs="*")
    p.set_defaults(func=_cmd_reproduce)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
