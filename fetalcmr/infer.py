"""Inference on new volumes with a model bundle: segmentation, anomaly class, topology verdict.

Input policy: each volume is a 3D T2w reconstruction of the thorax (or the whole body) in any
orientation and spacing. It is reoriented to RAS and affinely aligned to the bundle's template
(:mod:`fetalcmr.align`: a search over the 24 axis-aligned turns, scales and shifts, then an affine
refined on normalised cross-correlation); the input is resampled (linear) through that affine
onto the bundle's cubic grid, zero-padded where it has no data, and normalised (z-score, then
0..1), exactly as in training. The predicted label map goes back (nearest neighbour) through the
inverse affine onto the input's own voxel grid. Without alignment (``align=False``, for inputs
already cropped as in training, or a bundle made before templates, with a warning) the bundle's
grid is centred on the volume's centre instead, as in training.

The ensemble's label map is cleaned as the bundle says (:class:`fetalcmr.postprocess.PostProcessing`,
chosen on the validation split when it was exported) before it is written and judged. Beside the
network's class, the topology rule (:mod:`fetalcmr.topology_rule`: a ring → DAA, else the arch's
side of a trachea found in the image) gives its own class; ``review`` is true where the two
disagree or the rule cannot decide, so those cases go to a human first.

Every input is checked before anything is written: a bad file stops the run with a message
naming it, and no output is left half-written (all writes are atomic).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from fetalcmr.atomic import write_json_atomic, write_text_atomic
from fetalcmr.bundle import Bundle
from fetalcmr.io import DataError, Volume, load_nifti, normalise_intensity, resample_labels, save_nifti
from fetalcmr.predict import predict_volume
from fetalcmr.topology_rule import classify_topology, disagreement

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class Case:
    """One volume to segment: an id and its file."""

    id: str
    image: Path


def _case_id(path: Path) -> str:
    name = path.name
    for suffix in NIFTI_SUFFIXES[::-1]:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def collect_cases(source: str | os.PathLike[str]) -> list[Case]:
    """Cases from a NIfTI file, a folder of NIfTI files, or a ``dataset.json`` (its ``testing`` items,
    or every item when it has no ``testing`` split)."""
    from fetalcmr.dataset import SPLITS, read_dataset

    src = Path(source)
    if not src.exists():
        raise DataError(f"{src}: no such file or folder")
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.name.endswith(NIFTI_SUFFIXES))
        if not files:
            raise DataError(f"{src}: folder holds no .nii or .nii.gz files")
        cases = [Case(_case_id(p), p) for p in files]
    elif src.name.endswith(".json"):
        data = read_dataset(src)
        items = data.get("testing") or [it for s in SPLITS for it in data.get(s, []) or []]
        if not items:
            raise DataError(f"{src}: no items to run")
        cases = [Case(str(it.get("id") or _case_id(Path(it["image"]))), Path(it["image"])) for it in items]
    elif src.name.endswith(NIFTI_SUFFIXES):
        cases = [Case(_case_id(src), src)]
    else:
        raise DataError(f"{src}: expected a .nii/.nii.gz file, a folder of them, or a dataset.json")
    ids = [c.id for c in cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise DataError(f"{src}: duplicate case ids {dupes}")
    return cases


def check_cases(cases: list[Case]) -> None:
    """Load every input once; raise ``DataError`` listing each unusable file."""
    problems = []
    for case in cases:
        try:
            vol = load_nifti(case.image)
        except DataError as err:
            problems.append(str(err))
            continue
        if float(np.ptp(vol.array)) == 0.0:
            problems.append(f"{case.image}: image is constant (empty volume)")
    if problems:
        raise DataError("cannot run inference:\n  - " + "\n  - ".join(problems))


def check_output_folder(out_dir: Path) -> None:
    """Create ``out_dir`` if needed and make sure it is writable (``DataError`` otherwise)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"{out_dir}: cannot create the output folder ({err.strerror})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise DataError(f"{out_dir}: output folder is not writable")


def predict(bundle: Bundle, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Return ``(label map, class probabilities [C], class)`` of the ensemble on a model-grid image."""
    from fetalcmr.ensemble import average_softmax, ensemble_classes

    softmaxes, class_probs = [], []
    for member in bundle.members:
        softmax, probs = predict_volume(member, np.asarray(image)[None])
        softmaxes.append(softmax)
        class_probs.append(probs[None])
    labelmap = average_softmax(softmaxes).argmax(axis=0).astype(np.uint8)
    voted, mean_probs = ensemble_classes(class_probs)
    return labelmap, mean_probs[0], int(voted[0])


def model_input(bundle: Bundle, path: Path, align: bool, orientation: str = "search",
                centre_mm: np.ndarray | None = None) -> tuple[Volume, dict[str, Any]]:
    """Return the normalised image on the model grid (its affine maps to the input's world) and the
    alignment record (``aligned`` false and no numbers when the grid is not aligned); ``orientation``
    as :func:`fetalcmr.align.align_to_template` takes it. ``centre_mm`` (a world point, RAS mm) places
    the grid there with the input's axes kept, instead of aligning or centre-cropping."""
    from fetalcmr.align import align_to_template, grid_at, image_on_model_grid, model_grid
    from fetalcmr.data import load_volume

    if centre_mm is not None:
        affine = grid_at(centre_mm, bundle.grid, bundle.spacing_mm)
        array = normalise_intensity(image_on_model_grid(load_nifti(path), affine, bundle.grid))
        return Volume(array, affine), {"aligned": False, "crop_centre_mm": json.dumps(
            [round(float(c), 2) for c in centre_mm])}
    if not align or bundle.template is None:
        vol = load_volume(path, kind="image", grid=bundle.grid, spacing_mm=bundle.spacing_mm)
        return vol, {"aligned": False}
    image = load_nifti(path)
    alignment = align_to_template(image, bundle.template, orientation=orientation)
    affine = alignment.matrix @ model_grid(bundle.template, bundle.grid, bundle.spacing_mm)
    array = normalise_intensity(image_on_model_grid(image, affine, bundle.grid))
    return Volume(array, affine), {"aligned": True, "align_search": orientation, **alignment.record()}


def infer(source: str | os.PathLike[str], bundle_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
          *, align: bool = True, orientation: str = "search", centre_mm: np.ndarray | None = None,
          progress: bool = True) -> pd.DataFrame:
    """Segment and classify every case of ``source`` with the bundle; write label maps and a table.

    ``orientation="stored"`` trusts each input's RAS axes in the alignment (position and scale are
    searched, not the 24 axis-aligned turns): for reconstructions already in a standard orientation.
    ``centre_mm`` (one input only) places the grid at that world point (RAS mm) with the input's axes
    and spacing kept, no alignment: a hand crop, e.g. from organ labels or a point picked in a viewer
    (recorded as ``crop_centre_mm``).

    Outputs in ``out_dir``: ``<id>_labels.nii.gz`` (the input's grid and affine),
    ``predictions.csv`` and ``predictions.json`` (one row per case: class, probabilities,
    topology verdict and reasons, the alignment (``aligned``; when aligned: ``align_search`` (the
    ``orientation`` mode), orientation of the
    template's axes in the input, scale, NCC with the template before (centre crop) and after,
    seconds, and the 4×4 matrix from template to input world, mm), seconds). Returns the table.
    """
    from tqdm.std import tqdm

    from fetalcmr.bundle import load_bundle
    from fetalcmr.topology import topology_report

    out = Path(out_dir)
    cases = collect_cases(source)
    check_cases(cases)
    if centre_mm is not None and len(cases) != 1:
        raise DataError(f"{source}: a crop centre applies to one volume, not {len(cases)}")
    check_output_folder(out)
    bundle = load_bundle(bundle_dir)
    if align and bundle.template is None:
        warnings.warn(f"{bundle_dir}: bundle has no alignment template (made before templates); volumes are "
                      "centre-cropped to its field of view, so give thorax crops centred on the arch, or "
                      "re-export the bundle", stacklevel=2)
    rows: list[dict[str, Any]] = []
    for case in tqdm(cases, desc="infer", unit="case", disable=not progress):
        t0 = time.perf_counter()
        vol, alignment = model_input(bundle, case.image, align, orientation, centre_mm)
        raw, probs, cls = predict(bundle, vol.array)
        labelmap = bundle.postprocessing.apply(raw)
        rule = classify_topology(labelmap, image=vol.array, spacing_mm=bundle.spacing_mm)
        original = nib.load(str(case.image))
        back = resample_labels(Volume(labelmap, vol.affine), original.affine, original.shape[:3])
        label_path = out / f"{case.id}_labels.nii.gz"
        save_nifti(label_path, back, original.affine)
        report = topology_report(labelmap, cls)
        rows.append({
            "id": case.id, "image": str(case.image), "labels": str(label_path),
            "class": bundle.classes[cls], "class_index": cls,
            **{f"p_{bundle.classes[k]}": float(p) for k, p in enumerate(probs)},
            "topology_correct": bool(report.correct), "topology_reasons": "; ".join(report.reasons),
            "rule_class": rule.name, "rule_reason": rule.reason, "review": disagreement(cls, rule.cls),
            "postprocessed_labels": ",".join(bundle.labels[k] for k in bundle.postprocessing.labels),
            **alignment, "seconds": round(time.perf_counter() - t0, 3),
        })
    table = pd.DataFrame(rows)
    write_text_atomic(out / "predictions.csv", table.to_csv(index=False))
    write_json_atomic(out / "predictions.json", {"bundle": str(Path(bundle_dir).resolve()), "cases": rows})
    return table
