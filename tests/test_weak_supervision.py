"""The weak-supervision invariant (DESIGN §3): training reads ``image``, ``binary``, ``label``, the
atlases and ``lp`` only; ``gt`` is for evaluation.

Every training entry point runs on a cohort whose training and validation ``gt`` files hold
garbage, while an audit-hook spy (``tests/gt_spy.py``) fails any open of them from anywhere in the
process: VoxelMorph training and propagation, the segmenters, the classifiers and joint
fine-tuning, each called as its notebook calls it. The notebooks themselves run in kernels of
their own: the session's smoke run (``smoke_run`` in ``conftest.py``) corrupts those files after
notebook 01, arms the same spy inside the kernels of the later notebooks, and restores the files.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import gt_spy
import numpy as np
import pytest

from fetalcmr.classification import run_classification
from fetalcmr.config import get_profile
from fetalcmr.dataset import read_dataset
from fetalcmr.io import DataError, load_nifti, save_nifti
from fetalcmr.joint import run_joint
from fetalcmr.paths import RunPaths
from fetalcmr.propagation import run_label_propagation
from fetalcmr.segmentation import run_segmentation, supervision_agreement
from fetalcmr.synth import generate_cohort

SMOKE = get_profile("smoke")
#: The smoke cohort, three subjects per split (one per class), on a coarser grid (1.63 mm; the phantom keeps
#: its class template there, docs/design.md §9; at 24³ it needs many redraws).
GRID = 32
COHORT = dataclasses.replace(SMOKE.cohort, n_subjects=9, grid=GRID, spacing_mm=52.0 / GRID)
#: The smoke profile, trimmed where it only repeats a code path: registration on a 16³ grid (four
#: U-Net levels), one classifier seed and one joint ensemble member, a one-λ sweep.
PROFILE = dataclasses.replace(
    SMOKE, cohort=COHORT,
    propagation=dataclasses.replace(SMOKE.propagation, grid=16, nb_features=(8, 8, 8, 8), ncc_window=5,
                                    affine_steps=(3,), refine_steps=1),
    classifier=dataclasses.replace(SMOKE.classifier, seeds=(0,)),
    joint=dataclasses.replace(SMOKE.joint, ensemble_seeds=(0,), lambda_sweep=(14.0,)))


def _open_builtin(p: Path) -> None:
    with open(p, "rb") as fh:
        fh.read(1)


def _open_os(p: Path) -> None:
    os.close(os.open(p, os.O_RDONLY))


def _open_gzip(p: Path) -> None:
    with gzip.open(p) as fh:
        fh.read(1)


def _copy(p: Path) -> None:
    shutil.copyfile(p, p.with_name("copy.nii.gz"))


OPENERS: dict[str, Callable[[Path], object]] = {
    "builtins.open": _open_builtin, "os.open": _open_os, "pathlib": Path.read_bytes, "gzip": _open_gzip,
    "shutil": _copy, "nibabel": load_nifti,
}


@pytest.mark.parametrize("opener", sorted(OPENERS))
def test_spy_fails_every_way_of_opening_a_forbidden_file(opener: str, tmp_path: Path) -> None:
    bad, fine = tmp_path / "sub_gt.nii.gz", tmp_path / "sub_image.nii.gz"
    for p in (bad, fine):
        save_nifti(p, np.zeros((4, 4, 4), np.uint8), np.eye(4))
    with pytest.raises(AssertionError, match="sub_gt.nii.gz opened from") as failed:
        with gt_spy.forbid([bad], watch=[fine]) as record:
            OPENERS[opener](fine)
            with pytest.raises((gt_spy.ForbiddenOpen, DataError)):  # load_nifti names the file in a DataError
                OPENERS[opener](bad)
    assert {h.path for h in record.hits} == {str(bad.resolve())} and record.seen
    assert "test_weak_supervision.py" in str(failed.value)  # the report names the code that opened it
    OPENERS[opener](bad)  # disarmed: the hook lets everything through


def test_corrupted_truth_restores_the_files_and_reports_rewrites(tiny_dataset: Path, tmp_path: Path) -> None:
    data = read_dataset(tiny_dataset)

    def contents() -> dict[str, bytes]:
        return {it["id"]: Path(it["gt"]).read_bytes() for s in ("training", "validation", "testing") for it in data[s]}

    before, report = contents(), tmp_path / "rewritten.json"
    with gt_spy.corrupted_truth(data, report) as paths:
        assert len(paths) == 4 and all(p.read_bytes() == gt_spy.GARBAGE for p in paths)
        assert load_nifti(data["testing"][0]["gt"]).array.any()  # the test subject's truth is untouched
        paths[0].write_bytes(before[data["training"][0]["id"]])  # as a regenerated cohort would
    assert json.loads(report.read_text()) == [str(paths[0])]
    assert contents() == before


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], list[Path]]:
    """A small synthetic cohort whose training and validation ``gt`` files are garbage."""
    source = generate_cohort(tmp_path_factory.mktemp("weak") / "cohort", COHORT, seed=0, progress=False)
    data = read_dataset(source)
    forbidden = gt_spy.corrupt_truth(data)
    assert forbidden and len(forbidden) == len(data["training"]) + len(data["validation"])
    return source, forbidden, [Path(it["gt"]) for it in data["testing"]]


def test_training_entry_points_never_open_training_or_validation_truth(
        cohort: tuple[Path, list[Path], list[Path]], tmp_path: Path) -> None:
    source, forbidden, test_truth = cohort
    run, p, spacing = RunPaths(tmp_path), PROFILE, COHORT.spacing_mm
    with gt_spy.forbid(forbidden, watch=test_truth) as record:
        # notebook 01: VoxelMorph training, then propagation of the atlas labels
        data = run_label_propagation(source, run.lp_dir, run.lp_json, p.propagation, seed=0, progress=False).dataset
        # notebook 02: segmenters (b)-(d), then evaluation on the test subjects (may read their gt)
        stage = run_segmentation(data, p.segmenter, models_dir=run.models_dir, predictions_dir=run.predictions_dir,
                                 results_dir=run.results_dir, grid=GRID, spacing_mm=spacing, seed=0, progress=False)
        supervision_agreement(data["training"], grid=GRID, spacing_mm=spacing)
        # notebook 03: classifiers on the frozen segmenter's softmax, every input kind and seed
        cls = run_classification(data, stage, p.classifier, p.segmenter, paths=run, grid=GRID, spacing_mm=spacing,
                                 progress=False)
        # notebook 04: joint fine-tuning (λ, λ = 0, ensemble members, λ sweep), its evaluation and the bundle
        exp = run_joint(data, stage, cls, seg_cfg=p.segmenter, cls_cfg=p.classifier, jcfg=p.joint, paths=run,
                        grid=GRID, spacing_mm=spacing, progress=False)
    # no forbidden open (forbid() raised otherwise); every stage ran to its end, and the spy saw
    # evaluation read the test subjects' truth
    assert stage.per_label is not None and len(cls.runs) == 3 * len(p.classifier.seeds)
    assert not exp.seg_metrics.empty
    assert {h.path for h in record.seen} == {str(t.resolve()) for t in test_truth}
    assert all(f.read_bytes() == gt_spy.GARBAGE for f in forbidden)


@pytest.mark.slow
def test_notebooks_never_open_training_or_validation_truth(smoke_run) -> None:
    """Notebooks 02 on ran on the smoke cohort with corrupted training/validation ``gt`` and the spy
    armed in their kernels: every kernel armed it, none opened a forbidden file, and nothing
    rewrote those files meanwhile."""
    results, root = smoke_run
    spy = root / "gt_spy"
    forbidden = (spy / "forbidden.txt").read_text().split()
    cohort = read_dataset(root / "run" / "cohort" / "dataset.json")
    expected = {str(Path(it["gt"]).resolve()) for s in ("training", "validation") for it in cohort[s]}
    assert forbidden and set(forbidden) == expected
    assert json.loads((spy / "rewritten.json").read_text()) == []
    armed, opened = gt_spy.read_log(spy / "opens.jsonl")
    guarded = [r.notebook for r in results if r.notebook[:2] > "01"]
    assert guarded and all(r.status == "ran" for r in results)
    kernels = list(dict.fromkeys(e["pid"] for e in armed if "ipykernel_launcher" in e["argv"]))
    assert len(kernels) == len(guarded), "the spy was not armed in every kernel"
    notebook_of = dict(zip(kernels, guarded, strict=True))  # the runner starts one kernel per notebook, in order
    assert not opened, "\n".join(dict.fromkeys(
        f"{notebook_of.get(e['pid'], e['pid'])} opened {e['path']} from {' <- '.join(reversed(e['where']))}"
        for e in opened))
