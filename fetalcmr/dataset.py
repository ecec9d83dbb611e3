"""Decathlon-style ``dataset.json``: read, write, validate (docs/design.md §2).

Paths inside the file are relative to its folder (as MONAI's ``load_decathlon_datalist``
expects); :func:`read_dataset` returns them absolute, :func:`write_dataset` makes them
relative again.

Item keys: ``id``, ``image``; ``binary`` (manual vessel-region mask); ``label`` (anomaly class
int); optional ``gt`` (multi-class truth, for evaluation only); ``lp`` (propagated labels);
optional ``trachea`` (mask) and ``meta`` (free-form metadata such as gestational age).
Top level: ``name``, ``labels``, ``classes``, ``spacing_mm``, optional ``atlases`` (a list of
``{"label": class, "image": ..., "labelmap": ...}``), optional ``template`` (``{"image": ...}``: the
image new volumes are aligned to at inference, any field of view; without it the CoA atlas) and the
splits ``training``, ``validation``, ``testing``.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from fetalcmr.atomic import write_json_atomic
from fetalcmr.io import DataError

SPLITS: tuple[str, ...] = ("training", "validation", "testing")
#: Item keys that hold file paths.
PATH_KEYS: tuple[str, ...] = ("image", "binary", "gt", "lp", "trachea")
#: Keys that training may read (the weak-supervision invariant: never ``gt``).
TRAINING_KEYS: frozenset[str] = frozenset({"id", "image", "binary", "label", "lp"})


def _map_paths(data: dict[str, Any], fn: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    for split in SPLITS:
        for item in out.get(split, []) or []:
            for key in PATH_KEYS:
                if isinstance(item.get(key), str):
                    item[key] = fn(item[key])
    for atlas in out.get("atlases", []) or []:
        for key in ("image", "labelmap"):
            if isinstance(atlas.get(key), str):
                atlas[key] = fn(atlas[key])
    template = out.get("template")
    if isinstance(template, dict) and isinstance(template.get("image"), str):
        template["image"] = fn(template["image"])
    return out


def read_dataset(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``dataset.json`` and return it with absolute file paths.

    Raises :class:`~fetalcmr.io.DataError` naming the file when it is missing or not JSON.
    """
    path = Path(path).resolve()
    if not path.exists():
        raise DataError(f"{path}: dataset file not found")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level must be a JSON object, got {type(data).__name__}")
    base = path.parent
    return _map_paths(data, lambda p: str((base / p).resolve()) if not os.path.isabs(p) else p)


def write_dataset(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` atomically, with file paths relative to its folder."""
    path = Path(path).resolve()
    base = path.parent

    def rel(p: str) -> str:
        return os.path.relpath(p, base) if os.path.isabs(p) else p

    write_json_atomic(path, _map_paths(data, rel))


def labels_of(data: dict[str, Any]) -> dict[int, str]:
    """The dataset's label map as ``{int: name}``."""
    return {int(k): str(v) for k, v in data.get("labels", {}).items()}


def classes_of(data: dict[str, Any]) -> dict[int, str]:
    """The dataset's anomaly classes as ``{int: name}``."""
    return {int(k): str(v) for k, v in data.get("classes", {}).items()}


def training_view(item: dict[str, Any]) -> dict[str, Any]:
    """The part of an item that training may read: drops ``gt``, ``meta`` and anything else."""
    return {k: v for k, v in item.items() if k in TRAINING_KEYS}
