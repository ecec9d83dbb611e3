"""A spy on file opens for the weak-supervision invariant (DESIGN §3): training never opens ``gt``.

An audit hook (:func:`sys.addaudithook`) sees every ``open`` event of its process: ``builtins.open``,
``io.open`` and ``os.open``, and so the reads of nibabel, gzip and numpy. Audit hooks cannot be
removed, so one module-level hook is installed once and does nothing until :func:`forbid` arms it.
An armed hook records each open of a forbidden path and raises :class:`ForbiddenOpen` there.

A notebook kernel is another process: :func:`kernel_env` returns the environment that makes
``tests/spy/sitecustomize.py`` arm the hook inside every Python process started with it (the
kernels papermill starts), appending each forbidden open to a log that :func:`read_log` parses.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Environment variable naming a file that lists the forbidden paths, one a line.
ENV_PATHS = "FETALCMR_TEST_FORBIDDEN_OPENS"
#: Environment variable naming the log a kernel-side spy appends to (JSON lines).
ENV_LOG = "FETALCMR_TEST_OPENS_LOG"
#: Folder holding the ``sitecustomize.py`` that arms the spy in child Python processes.
SPY_DIR = Path(__file__).resolve().with_name("spy")
#: What a corrupted ``gt`` file holds: not gzip, not NIfTI, so any read fails loudly too.
GARBAGE = b"corrupt: ground truth is for evaluation only; training must never open this file\n"


class ForbiddenOpen(PermissionError):
    """A forbidden path was opened (raised inside the ``open`` call by the armed hook)."""


@dataclass
class Opened:
    """One open of a watched path: the path and the frames of the project code that opened it."""

    path: str
    where: list[str]

    def __str__(self) -> str:
        return f"{self.path} opened from " + " <- ".join(reversed(self.where))


@dataclass
class Record:
    """What an armed spy saw: forbidden opens (``hits``) and opens of merely watched paths (``seen``)."""

    hits: list[Opened] = field(default_factory=list)
    seen: list[Opened] = field(default_factory=list)


def _norm(path: Any) -> str | None:
    if isinstance(path, int):  # an open file descriptor: no path to judge
        return None
    try:
        return os.fsdecode(os.fspath(path))
    except TypeError:
        return None


#: Frames worth naming: the package, the tests, and notebook cells (``/tmp/ipykernel_<pid>/<hash>.py``).
_OURS = re.compile(r"/fetalcmr/|/tests/|/ipykernel_\d+/|^<(?!frozen)")


def _where() -> list[str]:
    """The innermost frames of project code or notebook cells (at most 6), outermost first."""
    frames = traceback.extract_stack()[:-2]  # drop the hook's own frames (the hook is called from C)
    keep = [f for f in frames if _OURS.search(f.filename) and "site-packages" not in f.filename]
    return [f"{f.filename}:{f.lineno} in {f.name}" for f in (keep or frames)[-6:]]


class _Spy:
    """The audit hook's state: forbidden and watched real paths, indexed by file name for speed."""

    def __init__(self) -> None:
        self.forbidden: frozenset[str] = frozenset()
        self.watched: frozenset[str] = frozenset()
        self.names: frozenset[str] = frozenset()
        self.record: Record | None = None
        self.log: Path | None = None
        self.local = threading.local()

    def arm(self, forbidden: Iterable[str | os.PathLike[str]], watched: Iterable[str | os.PathLike[str]],
            record: Record, log: Path | None = None) -> None:
        self.forbidden = frozenset(os.path.realpath(p) for p in forbidden)
        self.watched = frozenset(os.path.realpath(p) for p in watched) - self.forbidden
        self.names = frozenset(os.path.basename(p) for p in self.forbidden | self.watched)
        self.record, self.log = record, log

    def disarm(self) -> None:
        self.forbidden = self.watched = self.names = frozenset()
        self.record = self.log = None

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if event != "open" or not self.names or getattr(self.local, "busy", False):
            return
        name = _norm(args[0]) if args else None
        if name is None or os.path.basename(name) not in self.names:
            return
        self.local.busy = True  # the hook's own log writes and path lookups are not judged
        try:
            real = os.path.realpath(name)
            if real not in self.forbidden and real not in self.watched:
                return
            opened = Opened(real, _where())
            record = self.record
            if record is None:
                return
            if real in self.watched:
                record.seen.append(opened)
                return
            record.hits.append(opened)
            if self.log is not None:
                with open(self.log, "a") as fh:
                    fh.write(json.dumps({"event": "opened", "pid": os.getpid(), "path": real,
                                         "where": opened.where}) + "\n")
        finally:
            self.local.busy = False
        raise ForbiddenOpen(f"weak-supervision invariant: {opened}")


_SPY = _Spy()
_installed = False


def install() -> None:
    """Install the process-wide hook (once; it stays inert until armed)."""
    global _installed
    if not _installed:
        sys.addaudithook(_SPY)
        _installed = True


@contextmanager
def forbid(paths: Iterable[str | os.PathLike[str]], watch: Iterable[str | os.PathLike[str]] = ()
           ) -> Iterator[Record]:
    """Arm the spy while the block runs: opening any of ``paths`` raises :class:`ForbiddenOpen` there and
    is recorded in the yielded :class:`Record`'s ``hits``; opens of ``watch`` paths go to its ``seen``.

    On leaving the block (also when the code under test caught the error, or wrapped it into
    another) an ``AssertionError`` lists every forbidden open with the code that made it.
    """
    install()
    record = Record()
    _SPY.arm(list(paths), list(watch), record)
    try:
        yield record
    finally:
        _SPY.disarm()
        if record.hits:
            lines = dict.fromkeys(f"  {h}" for h in record.hits)  # nibabel opens a file more than once
            raise AssertionError("forbidden files were opened:\n" + "\n".join(lines))


def corrupt_truth(dataset: dict[str, Any], splits: Iterable[str] = ("training", "validation")) -> list[Path]:
    """Overwrite the ``gt`` file of every item of ``splits`` with :data:`GARBAGE`; return their paths.

    ``dataset`` is :func:`fetalcmr.dataset.read_dataset`'s output (absolute paths).
    """
    paths = sorted({Path(it["gt"]) for s in splits for it in dataset.get(s) or [] if it.get("gt")})
    for p in paths:
        p.write_bytes(GARBAGE)
    return paths


@contextmanager
def corrupted_truth(dataset: dict[str, Any], report: Path, splits: Iterable[str] = ("training", "validation")
                    ) -> Iterator[list[Path]]:
    """:func:`corrupt_truth` while the block runs, then put the original files back.

    ``report`` receives (JSON) the files that no longer held :data:`GARBAGE` when the block ended:
    something rewrote them meanwhile (e.g. regenerated the cohort), so their reads proved nothing.
    """
    paths = sorted({Path(it["gt"]) for s in splits for it in dataset.get(s) or [] if it.get("gt")})
    originals = {p: p.read_bytes() for p in paths}
    corrupt_truth(dataset, splits)
    try:
        yield paths
    finally:
        rewritten = [str(p) for p in paths if not p.exists() or p.read_bytes() != GARBAGE]
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(rewritten))
        for p, data in originals.items():
            p.write_bytes(data)


def kernel_env(forbidden: Iterable[str | os.PathLike[str]], folder: Path) -> dict[str, str]:
    """Write the forbidden-path listing to ``folder`` and return the environment that arms the spy in
    child Python processes (``PYTHONPATH`` gains :data:`SPY_DIR`); their log is ``folder/opens.jsonl``."""
    folder.mkdir(parents=True, exist_ok=True)
    listing = folder / "forbidden.txt"
    listing.write_text("".join(f"{os.path.realpath(p)}\n" for p in forbidden))
    log = folder / "opens.jsonl"
    log.touch()
    path = os.pathsep.join(p for p in (str(SPY_DIR), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, ENV_PATHS: str(listing), ENV_LOG: str(log)}


def arm_from_env() -> None:
    """Arm the spy for this whole process from :data:`ENV_PATHS` and :data:`ENV_LOG` (when set).

    Writes an ``armed`` line to the log first, so a test can tell that the spy ran in a kernel.
    """
    listing, log = os.environ.get(ENV_PATHS), os.environ.get(ENV_LOG)
    if not listing or not log:
        return
    forbidden = [line for line in Path(listing).read_text().splitlines() if line]
    with open(log, "a") as fh:
        fh.write(json.dumps({"event": "armed", "pid": os.getpid(), "argv": sys.orig_argv[:4],
                             "n_forbidden": len(forbidden)}) + "\n")
    install()
    _SPY.arm(forbidden, (), Record(), Path(log))


def read_log(log: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return the ``(armed, opened)`` entries of a kernel-side spy's log."""
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [e for e in entries if e["event"] == "armed"], [e for e in entries if e["event"] == "opened"]
