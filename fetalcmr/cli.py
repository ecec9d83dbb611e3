"""``fetalcmr`` command line: the pipeline's steps outside notebooks.

Exit codes: 0 success, 1 a stage failed, 2 bad input (the message names the file).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fetalcmr.config import PROFILE_NAMES
from fetalcmr.io import DataError

#: help of ``--keep-orientation`` (``fetalcmr infer`` and ``python -m fetalcmr.realcheck``)
KEEP_ORIENTATION_HELP = ("trust each volume's RAS axes (a reconstruction already in the standard thorax orientation, "
                         "e.g. SVRTK's atlas space): the alignment searches position and scale, not the 24 axis turns")


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


def _cmd_export(args: argparse.Namespace) -> int:
    from fetalcmr.bundle import BundleError, copy_bundle
    from fetalcmr.joint import load_joint
    from fetalcmr.notebook import default_run_dir
    from fetalcmr.paths import RunPaths, StageNotRun

    run = Path(args.run_dir) if args.run_dir else default_run_dir(args.profile)
    try:
        out = copy_bundle(load_joint(RunPaths(run)).bundle_dir, args.out)
    except (BundleError, StageNotRun) as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    print(f"bundle of {run} copied to {out}; run it with: fetalcmr infer VOLUMES --bundle {out} --out RESULTS")
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


def _cmd_infer(args: argparse.Namespace) -> int:
    from fetalcmr.bundle import BundleError
    from fetalcmr.infer import infer

    try:
        table = infer(args.input, args.bundle, args.out, align=not args.no_align,
                      orientation="stored" if args.keep_orientation else "search", centre_mm=args.centre,
                      progress=not args.quiet)
    except BundleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    cols = [c for c in table.columns if c.startswith("p_")]
    for _, row in table.iterrows():
        probs = ", ".join(f"{c[2:]} {row[c]:.2f}" for c in cols)
        verdict = "topology ok" if row["topology_correct"] else f"topology flagged: {row['topology_reasons']}"
        print(f"{row['id']}: {row['class']} ({probs}); {verdict}")
    print(f"label maps and predictions.csv written to {args.out}")
    return 0


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

    p = sub.add_parser(
        "infer", help="segment vessels and classify the arch anomaly of new NIfTI volumes",
        description="Segment the 11 great vessels and classify the aortic arch anomaly (CoA, RAA, DAA) of "
                    "thorax-cropped 3D T2w fetal MRI reconstructions, with a model bundle. Each volume may be "
                    "in any orientation, spacing and field of view (a whole thorax is fine): it is aligned to the "
                    "bundle's template (affine registration: 24 orientations × 5 scales searched, then refined) "
                    "and resampled onto the bundle's grid, and the label map is written back "
                    "in the volume's own grid and affine as <id>_labels.nii.gz. predictions.csv holds one row "
                    "per volume: class, class probabilities, and whether the vessel topology matches the "
                    "predicted class (with reasons). Exit codes: 0 done, 2 bad input (the file is named), "
                    "3 the bundle does not match this installation. Research use only: not a medical device.",
    )
    p.add_argument("input", help="a .nii/.nii.gz volume, a folder of them, or a dataset.json")
    p.add_argument("--bundle", required=True, help="model bundle folder (from `fetalcmr export` or make reproduce)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--no-align", action="store_true",
                   help="skip the alignment to the bundle's template and centre the bundle's grid on each volume "
                        "(for volumes already cropped around the arch as in training)")
    p.add_argument("--keep-orientation", action="store_true", help=KEEP_ORIENTATION_HELP)
    p.add_argument("--centre", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="one volume only: place the bundle's grid at this world point (RAS mm, e.g. the arch picked "
                        "in a viewer), the volume's axes and the bundle's spacing kept, no alignment")
    p.set_defaults(func=_cmd_infer)

    p = sub.add_parser("export", help="pack a trained run's model bundle into a folder",
                       description="Copy the model bundle that notebook 04 wrote for a run (weights, "
                                   "configuration, label and class maps, provenance, metrics) into a new folder, "
                                   "after checking that it loads.")
    p.add_argument("--profile", default="default", choices=PROFILE_NAMES, help="run of the synthetic cohort")
    p.add_argument("--run-dir", default="", help="a run folder (default: data/runs/<profile>)")
    p.add_argument("--out", required=True, help="new output folder")
    p.set_defaults(func=_cmd_export)

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
