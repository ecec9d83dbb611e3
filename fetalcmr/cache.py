"""Content-addressed caching of stage outputs: a result is reused only when the hash of
everything that produced it (code, parameters, inputs) is unchanged.

>>> key = content_key({"lr": 1e-3}, "v1")
>>> len(key)
16
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from fetalcmr.atomic import write_json_atomic

PACKAGE_DIR = Path(__file__).resolve().parent


def _default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot hash {type(obj).__name__}")


def content_key(*parts: Any) -> str:
    """16-hex-digit hash of JSON-serialisable ``parts`` (dicts are key-sorted)."""
    blob = json.dumps(parts, sort_keys=True, default=_default).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (16 hex digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def code_version(*modules: str) -> str:
    """Hash of the package's source files, or only of ``modules`` (``"propagation"``, ``"synth"``…).

    A cache keyed by the modules a result depends on survives edits elsewhere in the package.

    >>> code_version("io") != code_version("io", "dataset")
    True
    """
    if modules:
        paths = []
        for name in modules:
            target = PACKAGE_DIR / name.replace(".", "/")
            found = sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]
            if not found or not found[0].exists():
                raise ValueError(f"code_version: no module fetalcmr.{name}")
            paths += found
    else:
        paths = list(PACKAGE_DIR.rglob("*.py"))
    h = hashlib.sha256()
    for path in sorted(set(paths)):
        h.update(path.relative_to(PACKAGE_DIR).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def is_fresh(record: str | os.PathLike[str], key: str) -> bool:
    """True when ``record`` exists and was written for ``key`` (the outputs are current)."""
    try:
        return json.loads(Path(record).read_text()).get("key") == key
    except (OSError, json.JSONDecodeError):
        return False


def mark_fresh(record: str | os.PathLike[str], key: str, **info: Any) -> None:
    """Write ``record`` saying its outputs were produced for ``key`` (write it last)."""
    write_json_atomic(record, {"key": key, **info})
