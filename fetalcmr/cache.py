"""Content-addressed caching of stage outputs: a result is reused only when the hash of
everything that produced it (code, parameters, inputs) is unchanged.

A stage's code version is *computed*: the source of the module that runs the stage and of every
``fetalcmr`` module it imports, transitively (module-level and function-level imports alike, read
from the source with :mod:`ast`), so an edit anywhere a stage can reach re-runs it and an edit
elsewhere does not. :data:`VALUE_MODULES` are left out on purpose: they hold only settings, and
every stage keys on the resolved settings it reads (its config section), so a changed number in a
profile re-runs exactly the stages that read it. See ``docs/design.md`` ("What re-runs when a
file changes").

>>> key = content_key({"lr": 1e-3}, "v1")
>>> len(key)
16
>>> "fetalcmr.losses" in module_closure("fetalcmr.train")
True
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from fetalcmr.atomic import write_json_atomic

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name

#: modules that hold only settings: stages key on the values they read instead (see above)
VALUE_MODULES: frozenset[str] = frozenset({f"{PACKAGE}.config"})


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


def module_file(module: str, package_dir: Path = PACKAGE_DIR) -> Path | None:
    """Return the source file of ``fetalcmr.a.b`` under ``package_dir`` (None if it is not a module there)."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = package_dir.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(module: str, path: Path, package_dir: Path) -> set[str]:
    """Return the ``fetalcmr`` modules that the source of ``module`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against this module's package
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            # ``from fetalcmr import io`` and ``from fetalcmr.synth import cohort`` name submodules
            found.update(f"{base}.{alias.name}" for alias in node.names)
    out = set()
    for name in found:
        # ``import fetalcmr.synth.cohort`` also runs the packages above it
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if module_file(prefix, package_dir) is not None:
                out.add(prefix)
    return out


@functools.lru_cache(maxsize=256)
def _closure(modules: tuple[str, ...], package_dir: Path) -> tuple[str, ...]:
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_file(name, package_dir)
        if path is None:
            raise ValueError(f"module_closure: no module {name} under {package_dir}")
        seen.add(name)
        todo.extend(_imported(name, path, package_dir) - seen)
    return tuple(sorted(seen))


def module_closure(*modules: str, package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Return ``modules`` and every ``fetalcmr`` module they import, transitively, sorted.

    Names may omit the package prefix (``"losses"`` means ``fetalcmr.losses``).
    """
    full = tuple(m if m.split(".")[0] == PACKAGE else f"{PACKAGE}.{m}" for m in modules)
    return list(_closure(full, Path(package_dir).resolve()))


def code_version(*modules: str, package_dir: Path = PACKAGE_DIR) -> str:
    """Hash of the source of ``modules`` and everything they import from the package (16 hex digits).

    Pass the module that runs a stage (usually ``__name__``). Without arguments: the whole package.
    :data:`VALUE_MODULES` are not part of the hash.

    >>> code_version("fetalcmr.io") != code_version("fetalcmr.train")
    True
    """
    package_dir = Path(package_dir).resolve()
    if modules:
        names = [m for m in module_closure(*modules, package_dir=package_dir) if m not in VALUE_MODULES]
        paths = [module_file(m, package_dir) for m in names]
    else:
        paths = sorted(package_dir.rglob("*.py"))
    h = hashlib.sha256()
    for path in sorted({p for p in paths if p is not None}):
        h.update(path.relative_to(package_dir).as_posix().encode())
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
