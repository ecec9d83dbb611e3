"""The synthetic cohort on disk: NIfTI files, class atlases and a ``dataset.json``.

Layout under ``out_dir``::

    sub-000/sub-000_image.nii.gz, _gt, _binary, _trachea
    atlases/atlas-CoA_image.nii.gz, atlas-CoA_labelmap.nii.gz, ...
    atlases/template_image.nii.gz   (the alignment template for inference: 80 mm, masked)
    dataset.json          (written last; holds the cache key)

Generation is cached: when ``dataset.json`` already carries the content key of (cohort
configuration, seed, generator code) and its files exist, nothing is regenerated.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.std import tqdm

from fetalcmr.anatomy import CLASSES, LABELS
from fetalcmr.cache import code_version, content_key
from fetalcmr.config import CohortConfig
from fetalcmr.dataset import SPLITS, read_dataset, write_dataset
from fetalcmr.io import DataError, save_nifti
from fetalcmr.synth.atlas import build_atlas, build_template
from fetalcmr.synth.params import SubjectParams
from fetalcmr.synth.subject import FOV_MM, generate_subject

DATASET_NAME = "fetalcmr-synthetic"


def allocate(n: int, fractions: tuple[float, ...], minimum: int = 0) -> list[int]:
    """Split ``n`` into integer counts proportional to ``fractions`` (largest remainder).

    Each count is at least ``minimum`` when ``n`` allows it.

    >>> allocate(90, (0.55, 0.30, 0.15))
    [50, 27, 13]
    """
    f = np.asarray(fractions, dtype=float)
    f = f / f.sum()
    raw = n * f
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    if n >= minimum * len(f):
        while (counts < minimum).any():
            counts[int(np.argmax(counts))] -= 1
            counts[int(np.argmin(counts))] += 1
    return [int(c) for c in counts]


def cohort_key(cfg: CohortConfig, seed: int) -> str:
    """Content key of a cohort: configuration, seed and generator code."""
    return content_key(dataclasses.asdict(cfg), int(seed), code_version(__name__))


def _is_cached(path: Path, key: str) -> bool:
    if not path.exists():
        return False
    try:
        data = read_dataset(path)
    except DataError:
        return False
    if data.get("content_key") != key:
        return False
    files = [item[k] for s in SPLITS for item in data.get(s, []) for k in ("image", "gt", "binary", "trachea")]
    files += [a[k] for a in data.get("atlases", []) for k in ("image", "labelmap")]
    files += [data["template"]["image"]] if "template" in data else []
    return all(os.path.exists(f) for f in files)


def _stratified(plan: list[dict[str, Any]], fractions: tuple[float, ...], splits: tuple[str, ...],
                rng: np.random.Generator) -> None:
    """Assign each entry of ``plan`` a split, per class in proportion to ``fractions``."""
    for cls in sorted({p["label"] for p in plan}):
        members = [p for p in plan if p["label"] == cls]
        order = rng.permutation(len(members))
        counts = allocate(len(members), fractions, minimum=1 if len(members) >= len(fractions) else 0)
        for member, k in zip([members[i] for i in order], np.repeat(np.arange(len(splits)), counts)):
            member["split"] = splits[int(k)]


def _draw(n: int, fractions: tuple[float, ...], seed: int, first: int, rng: np.random.Generator
          ) -> list[dict[str, Any]]:
    """``n`` subjects with ids and generator seeds from index ``first`` on, classes in ``fractions``."""
    classes = rng.permutation(np.repeat(np.arange(len(fractions)), allocate(n, fractions, minimum=1)))
    return [{"id": f"sub-{i:03d}", "label": int(c),
             "seed": int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0])}
            for i, c in enumerate(classes, start=first)]


def plan_cohort(cfg: CohortConfig, seed: int) -> list[dict[str, Any]]:
    """Per subject: id, class, split and generator seed (stratified by class, deterministic).

    With ``cfg.n_test`` the test subjects are drawn after the ``n_subjects`` training and
    validation subjects, with their own class fractions.

    >>> from fetalcmr.config import get_profile
    >>> plan = plan_cohort(get_profile("default").cohort, 0)
    >>> sum(p["split"] == "testing" for p in plan), sum(p["split"] == "testing" and p["label"] == 2 for p in plan)
    (150, 30)
    """
    rng = np.random.default_rng([int(seed), 7])
    plan = _draw(cfg.n_subjects, cfg.class_fractions, seed, 0, rng)
    if cfg.n_test is None:
        _stratified(plan, cfg.split_fractions, SPLITS, rng)
        return plan
    _stratified(plan, cfg.split_fractions[:2], SPLITS[:2], rng)
    test = _draw(cfg.n_test, cfg.test_class_fractions or cfg.class_fractions, seed, cfg.n_subjects, rng)
    for entry in test:
        entry["split"] = SPLITS[2]
    return plan + test


def randomised_ids(plan: list[dict[str, Any]], share: float, seed: int) -> set[str]:
    """Ids of the training subjects whose appearance is domain-randomised: ``share`` of each class's
    training subjects (rounded), drawn by ``seed``; validation and test subjects never.

    >>> plan = plan_cohort(CohortConfig(n_subjects=40, grid=32, spacing_mm=1.6, n_test=10), 0)
    >>> len(randomised_ids(plan, 0.5, 0)), len(randomised_ids(plan, 1.0, 0)), randomised_ids(plan, 0.0, 0)
    (17, 34, set())
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"domain_randomisation must be a share in [0, 1], got {share}")
    chosen: set[str] = set()
    for cls in sorted({p["label"] for p in plan}):
        members = [p["id"] for p in plan if p["split"] == "training" and p["label"] == cls]
        order = np.random.default_rng([int(seed), 11, int(cls)]).permutation(len(members))
        chosen.update(members[i] for i in order[: round(share * len(members))])
    return chosen


def generation_workers() -> int:
    """Processes generating subjects: ``FETALCMR_THREADS`` when set, else the usable cores (at most 4)."""
    env = os.environ.get("FETALCMR_THREADS")
    return int(env) if env else min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                   else os.cpu_count() or 1)


def _generate_one(job: tuple[dict[str, Any], Path, int, float, bool]
                  ) -> tuple[dict[str, Any], dict[str, Any], SubjectParams]:
    """Generate and write one planned subject; return its plan entry, dataset item and parameters."""
    entry, out, grid, spacing, randomise = job
    sub = generate_subject(entry["label"], entry["seed"], grid, spacing, randomise=randomise)
    folder = out / entry["id"]
    item: dict[str, Any] = {"id": entry["id"], "label": entry["label"]}
    for kind in ("image", "gt", "binary", "trachea"):
        file = folder / f"{entry['id']}_{kind}.nii.gz"
        save_nifti(file, getattr(sub, kind), sub.affine)
        item[kind] = str(file)
    item["meta"] = sub.meta
    return entry, item, sub.params


def generate_cohort(out_dir: str | os.PathLike[str], cohort_cfg: CohortConfig, seed: int,
                    progress: bool = True) -> Path:
    """Generate (or reuse) the synthetic cohort in ``out_dir``; return its ``dataset.json`` path."""
    out = Path(out_dir).resolve()
    path = out / "dataset.json"
    key = cohort_key(cohort_cfg, seed)
    if _is_cached(path, key):
        return path
    out.mkdir(parents=True, exist_ok=True)
    grid, spacing = cohort_cfg.grid, cohort_cfg.spacing_mm
    plan = plan_cohort(cohort_cfg, seed)
    data: dict[str, Any] = {
        "name": DATASET_NAME,
        "description": (f"Synthetic black-blood T2w fetal thorax MRI phantoms ({len(plan)} subjects, "
                        f"{grid}^3 at {spacing:.3f} mm, field of view {grid * spacing:.0f} mm, seed {seed}) with "
                        "the three aortic arch anomaly classes; generated by fetalcmr.synth. Not patient data."),
        "synthetic": True,
        "labels": {str(k): v for k, v in LABELS.items()},
        "classes": {str(k): v for k, v in CLASSES.items()},
        "spacing_mm": [spacing] * 3,
        "content_key": key,
        "generator": {"seed": int(seed), "code_version": code_version(__name__), "fov_mm": FOV_MM,
                      "config": dataclasses.asdict(cohort_cfg)},
        "atlases": [],
        **{s: [] for s in SPLITS},
    }
    randomised = randomised_ids(plan, float(cohort_cfg.domain_randomisation), seed)
    jobs = [(entry, out, grid, spacing, entry["id"] in randomised) for entry in plan]
    workers = max(1, min(generation_workers(), len(jobs)))
    items: list[tuple[dict[str, Any], dict[str, Any], SubjectParams]] = []
    with tqdm(total=len(jobs), desc="synthetic cohort", disable=not progress) as bar:
        if workers == 1:
            for job in jobs:
                items.append(_generate_one(job))
                bar.update()
        else:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                for result in pool.map(_generate_one, jobs):  # results in plan order: deterministic
                    items.append(result)
                    bar.update()
    training_params = []
    for entry, item, params in items:
        data[entry["split"]].append(item)
        if entry["split"] == "training":
            training_params.append(params)
    for cls in CLASSES:
        atlas = build_atlas(cls, training_params, grid, spacing)
        files = {k: out / "atlases" / f"atlas-{CLASSES[cls]}_{k}.nii.gz" for k in ("image", "labelmap")}
        save_nifti(files["image"], atlas.image, atlas.affine)
        save_nifti(files["labelmap"], atlas.labelmap, atlas.affine)
        data["atlases"].append({"label": cls, "image": str(files["image"]), "labelmap": str(files["labelmap"]),
                                "meta": atlas.meta})
    template = build_template(training_params, spacing)
    save_nifti(out / "atlases" / "template_image.nii.gz", template.image, template.affine)
    data["template"] = {"image": str(out / "atlases" / "template_image.nii.gz"), "meta": template.meta}
    write_dataset(path, data)
    return path
