"""The cohort plan: a separate, larger test set, and generation that does not depend on the workers."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from fetalcmr.config import CohortConfig, get_profile
from fetalcmr.dataset import SPLITS, read_dataset
from fetalcmr.io import load_nifti
from fetalcmr.synth.cohort import generate_cohort, plan_cohort


def _count(plan: list[dict], split: str, label: int | None = None) -> int:
    return sum(p["split"] == split and (label is None or p["label"] == label) for p in plan)


def test_default_test_set_is_separate_and_large() -> None:
    cfg = get_profile("default").cohort
    plan = plan_cohort(cfg, seed=0)
    assert _count(plan, "testing") == cfg.n_test == 150
    assert [_count(plan, "testing", c) for c in range(3)] == [75, 45, 30]
    assert _count(plan, "training") + _count(plan, "validation") == cfg.n_subjects
    assert _count(plan, "training") == cfg.n_training()
    ids = [p["id"] for p in plan]
    assert len(set(ids)) == len(ids) and len({p["seed"] for p in plan}) == len(plan)
    # every class is in validation, and the test subjects come after the training/validation ones
    assert all(_count(plan, "validation", c) >= 1 for c in range(3))
    assert all(p["split"] == "testing" for p in plan[cfg.n_subjects:])


def test_plain_ablation_differs_from_default_only_in_domain_randomisation() -> None:
    default, plain = get_profile("default"), get_profile("default_plain")
    assert default.cohort.domain_randomisation == 0.5 and plain.cohort.domain_randomisation == 0.0
    assert dataclasses.replace(plain.cohort, domain_randomisation=0.5) == default.cohort
    for section in ("propagation", "segmenter", "classifier", "joint"):
        assert getattr(plain, section) == getattr(default, section)
    assert plan_cohort(plain.cohort, seed=0) == plan_cohort(default.cohort, seed=0)  # same subjects and seeds
    assert any("ablation" in r for r in plain.reductions)
    assert not any("domain-randomised" in r for r in plain.reductions)
    assert any("domain-randomised" in r for r in default.reductions)


def test_separate_test_set_leaves_training_subjects_unchanged() -> None:
    """Growing the test set must not redraw the training subjects (their ids, classes and seeds)."""
    base = CohortConfig(n_subjects=30, grid=32, spacing_mm=1.6, n_test=20)
    more = dataclasses.replace(base, n_test=60)
    train = [p for p in plan_cohort(base, 3) if p["split"] != "testing"]
    assert train == [p for p in plan_cohort(more, 3) if p["split"] != "testing"]


def test_fraction_split_when_no_separate_test_set() -> None:
    cfg = CohortConfig(n_subjects=40, grid=32, spacing_mm=1.6)
    plan = plan_cohort(cfg, seed=0)
    assert {p["split"] for p in plan} == set(SPLITS) and len(plan) == 40
    assert abs(_count(plan, "testing") - cfg.n_testing()) <= 3  # stratified per class: approximate


def test_generation_is_independent_of_the_worker_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = CohortConfig(n_subjects=6, grid=32, spacing_mm=52 / 32, class_fractions=(0.34, 0.33, 0.33),
                       split_fractions=(0.5, 0.17, 0.33))
    monkeypatch.setenv("FETALCMR_THREADS", "1")
    one = read_dataset(generate_cohort(tmp_path / "one", cfg, seed=0, progress=False))
    monkeypatch.setenv("FETALCMR_THREADS", "2")
    many = read_dataset(generate_cohort(tmp_path / "many", cfg, seed=0, progress=False))
    for split in SPLITS:
        assert [i["id"] for i in one[split]] == [i["id"] for i in many[split]]
        for a, b in zip(one[split], many[split]):
            assert np.array_equal(load_nifti(a["image"]).array, load_nifti(b["image"]).array)
            assert a["meta"] == b["meta"]


def test_randomisation_reaches_only_the_chosen_share_of_training_subjects(tmp_path: Path) -> None:
    """Validation and test subjects keep the measured appearance; half the training subjects of each
    class are randomised, and the same subject is identical to its plain twin but for appearance."""
    cfg = CohortConfig(n_subjects=8, grid=32, spacing_mm=52 / 32, class_fractions=(0.5, 0.25, 0.25),
                       split_fractions=(0.75, 0.25, 0.0), n_test=3, domain_randomisation=0.5)
    mixed = read_dataset(generate_cohort(tmp_path / "mixed", cfg, seed=1, progress=False))
    plain = read_dataset(generate_cohort(tmp_path / "plain", dataclasses.replace(cfg, domain_randomisation=0.0),
                                         seed=1, progress=False))
    flags = {s: [i["meta"]["randomised"] for i in mixed[s]] for s in SPLITS}
    assert not any(flags["validation"]) and not any(flags["testing"]) and mixed["testing"]
    for cls in {i["label"] for i in mixed["training"]}:
        members = [i["meta"]["randomised"] for i in mixed["training"] if i["label"] == cls]
        assert sum(members) == round(0.5 * len(members))
    for split in SPLITS:
        for a, b in zip(mixed[split], plain[split]):
            same_image = np.array_equal(load_nifti(a["image"]).array, load_nifti(b["image"]).array)
            assert same_image != a["meta"]["randomised"]
            assert np.array_equal(load_nifti(a["gt"]).array, load_nifti(b["gt"]).array)
