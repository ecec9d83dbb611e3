"""Check a ``dataset.json`` and every file it names before any stage uses them.

All problems are collected and reported together, each naming the file (or item) and what is
wrong: missing or unreadable files, volumes that are not 3D, NaN/Inf, masks whose shape or
affine differ from their image, label values outside ``labels``, classes outside
``classes``, duplicate entries and empty splits.

>>> validate_dataset("data/runs/smoke/cohort/dataset.json")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from fetalcmr.dataset import PATH_KEYS, SPLITS, classes_of, labels_of, read_dataset
from fetalcmr.io import DataError, Volume, load_nifti

#: Splits that must hold at least one item.
REQUIRED_SPLITS: tuple[str, ...] = ("training", "testing")
#: Item keys holding label maps, and the values each may contain ("labels" = the label map).
LABEL_KEYS: dict[str, str] = {"binary": "binary", "gt": "labels", "lp": "labels", "trachea": "binary"}


class DatasetInvalid(DataError):
    """One or more problems in a dataset; ``problems`` lists each message."""

    def __init__(self, source: Path, problems: list[str]) -> None:
        self.problems = problems
        head = f"{source}: {len(problems)} problem(s) found"
        super().__init__(head + "\n  - " + "\n  - ".join(problems))


def _check_top_level(data: dict[str, Any], source: Path, problems: list[str]) -> None:
    for key in ("labels", "classes", "training"):
        if key not in data:
            problems.append(f"{source}: missing top-level key '{key}'")
    try:
        labels = labels_of(data)
        if labels and labels.get(0, "").lower() != "background":
            problems.append(f"{source}: label 0 must be 'background', got {labels.get(0)!r}")
    except (ValueError, AttributeError):
        problems.append(f"{source}: 'labels' must map integer indices to names")
    try:
        classes_of(data)
    except (ValueError, AttributeError):
        problems.append(f"{source}: 'classes' must map integer indices to names")
    for split in REQUIRED_SPLITS:
        if split in data and not data[split]:
            problems.append(f"{source}: split '{split}' is empty")
    for split in SPLITS:
        if split in data and not isinstance(data[split], list):
            problems.append(f"{source}: split '{split}' must be a list of items")


def _check_item(item: Any, where: str, labels: set[int], classes: set[int], problems: list[str],
                check_files: bool) -> None:
    if not isinstance(item, dict):
        problems.append(f"{where}: item must be an object, got {type(item).__name__}")
        return
    if "image" not in item:
        problems.append(f"{where}: item has no 'image'")
        return
    if "label" in item:
        cls = item["label"]
        if not isinstance(cls, int) or isinstance(cls, bool) or cls not in classes:
            problems.append(f"{where} ({item['image']}): class {cls!r} is not one of the dataset's "
                            f"classes {sorted(classes)}")
    if not check_files:
        return
    try:
        image = load_nifti(item["image"])
    except DataError as err:
        problems.append(str(err))
        return
    if not np.issubdtype(image.array.dtype, np.number) or float(np.ptp(image.array)) == 0.0:
        problems.append(f"{item['image']}: image is constant (empty volume)")
    for key, kind in LABEL_KEYS.items():
        if key in item:
            _check_label_file(item[key], image, item["image"], kind, labels, problems)


def _check_label_file(path: str, image: Volume, image_path: str, kind: str, labels: set[int],
                      problems: list[str]) -> None:
    try:
        vol = load_nifti(path)
    except DataError as err:
        problems.append(str(err))
        return
    if vol.array.shape != image.array.shape:
        problems.append(f"{path}: shape {vol.array.shape} does not match its image {image.array.shape} "
                        f"({image_path})")
        return
    if not np.allclose(vol.affine, image.affine, atol=1e-3):
        problems.append(f"{path}: affine differs from its image's ({image_path})")
    values = np.unique(vol.array)
    if not np.allclose(values, np.round(values)):
        problems.append(f"{path}: label map has non-integer values")
        return
    allowed = {0, 1} if kind == "binary" else labels
    unknown = sorted(set(int(v) for v in values) - allowed)
    if unknown:
        what = "binary mask values must be 0/1" if kind == "binary" else f"labels are {sorted(allowed)}"
        problems.append(f"{path}: unknown label values {unknown} ({what})")


def validate_dataset(path: str | os.PathLike[str], *, check_files: bool = True) -> dict[str, Any]:
    """Validate ``dataset.json`` and its files; return the dataset (absolute paths) or raise.

    Raises :class:`DatasetInvalid` listing every problem found.
    """
    source = Path(path).resolve()
    data = read_dataset(source)
    problems: list[str] = []
    _check_top_level(data, source, problems)
    labels = set(labels_of(data)) if isinstance(data.get("labels"), dict) else set()
    classes = set(classes_of(data)) if isinstance(data.get("classes"), dict) else set()
    ids: Counter[str] = Counter()
    images: Counter[str] = Counter()
    for split in SPLITS:
        for i, item in enumerate(data.get(split, []) or []):
            where = f"{source} {split}[{i}]"
            if isinstance(item, dict):
                ids[str(item.get("id", ""))] += 1 if "id" in item else 0
                images[str(item.get("image", ""))] += 1
            _check_item(item, where, labels, classes, problems, check_files)
    for name, count in ids.items():
        if name and count > 1:
            problems.append(f"{source}: duplicate id '{name}' ({count} entries)")
    for name, count in images.items():
        if name and count > 1:
            problems.append(f"{source}: image {name} listed {count} times (duplicate entries)")
    for i, atlas in enumerate(data.get("atlases", []) or []):
        for key in ("image", "labelmap"):
            if key not in atlas:
                problems.append(f"{source} atlases[{i}]: missing '{key}'")
        if check_files and "image" in atlas and "labelmap" in atlas:
            try:
                image = load_nifti(atlas["image"])
                _check_label_file(atlas["labelmap"], image, atlas["image"], "labels", labels, problems)
            except DataError as err:
                problems.append(str(err))
    template = data.get("template")
    if template is not None:
        if not isinstance(template, dict) or not isinstance(template.get("image"), str):
            problems.append(f"{source} template: expected an object with an 'image' path")
        elif check_files:
            try:
                load_nifti(template["image"])
            except DataError as err:
                problems.append(str(err))
    if problems:
        raise DatasetInvalid(source, problems)
    return data


def import_reference_datalist(path: str | os.PathLike[str], out_path: str | os.PathLike[str], *,
                              labels: dict[int, str] | None = None, classes: dict[int, str] | None = None,
                              spacing_mm: float | None = None) -> Path:
    """Convert the reference implementation's datalist to this package's ``dataset.json``.

    In the reference datalist ``mask`` is the manual binary mask in training/validation and the
    multi-class truth in testing, and ``LP`` holds propagated labels. Here they become
    ``binary``, ``gt`` and ``lp``. Paths are resolved against the source file's folder and
    written relative to ``out_path``. Returns ``out_path``.
    """
    from fetalcmr.anatomy import CLASSES, LABELS
    from fetalcmr.dataset import write_dataset

    src = read_dataset(path)
    base = Path(path).resolve().parent

    def absolute(p: str) -> str:
        return p if os.path.isabs(p) else str((base / p).resolve())

    out: dict[str, Any] = {
        "name": src.get("name", Path(path).stem),
        "description": src.get("description", f"imported from {Path(path).name} (reference datalist)"),
        "synthetic": False,
        "labels": {str(k): v for k, v in (labels or labels_of(src) or dict(LABELS)).items()},
        "classes": {str(k): v for k, v in (classes or classes_of(src) or dict(CLASSES)).items()},
    }
    if spacing_mm is not None:
        out["spacing_mm"] = [spacing_mm] * 3
    elif "spacing_mm" in src:
        out["spacing_mm"] = src["spacing_mm"]
    for split in SPLITS:
        items = []
        for i, item in enumerate(src.get(split, []) or []):
            if "image" not in item:
                raise DataError(f"{path} {split}[{i}]: item has no 'image'")
            new: dict[str, Any] = {"id": item.get("id") or Path(item["image"]).name.split(".")[0],
                                   "image": absolute(item["image"])}
            if "mask" in item:
                new["gt" if split == "testing" else "binary"] = absolute(item["mask"])
            if "LP" in item:
                new["lp"] = absolute(item["LP"])
            if "label" in item:
                label = item["label"]
                new["label"] = int(np.argmax(label)) if isinstance(label, list) else int(label)
            for key in PATH_KEYS:
                if key in item and key not in new:
                    new[key] = absolute(item[key])
            items.append(new)
        out[split] = items
    write_dataset(out_path, out)
    return Path(out_path)
