"""Run the ordered notebooks headlessly with papermill: the engine behind ``make reproduce``.

Each notebook is a stage. A stage is skipped when its cache key — the source of the package
modules the notebook imports (transitively, :func:`fetalcmr.cache.code_version`), the notebook's
cells, the injected parameters, the profile's settings, the previous stage's key and the user's
dataset file — matches the record of its last successful run and its outputs still exist. On failure
the runner names the notebook and the failing cell and stops; earlier stages keep their
outputs. Wall time, peak memory and the time of each code cell go to ``MANIFEST.json``; the next
run reads them back to show the time left (:mod:`fetalcmr.progress`: the running cell, the
package's tqdm bars and the estimate, on one line of the terminal).

Kernels talk to the runner over ZeroMQ with CurveZMQ encryption when the kernelspec supports it
(ipykernel's does), else over IPC sockets: never plain TCP (:func:`kernel_config`).

Usage::

    python -m fetalcmr.runner --profile default            # what make reproduce runs
    python -m fetalcmr.runner --profile smoke --only 00 01  # a subset
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from fetalcmr.cache import code_version, content_key, file_digest, is_fresh, mark_fresh, module_file
from fetalcmr.config import PROFILE_NAMES, get_profile
from fetalcmr.manifest import Manifest, git_commit
from fetalcmr.notebook import REPO_ROOT, default_figures_dir, default_run_dir
from fetalcmr.paths import RunPaths
from fetalcmr.progress import PlannedNotebook, RunProgress, previous_timings

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


class StageFailed(RuntimeError):
    """A notebook raised; the message names the notebook, the cell and the error."""


@dataclass(frozen=True)
class StageResult:
    """What happened to one notebook: ``ran`` or ``cached``, with its cost."""

    notebook: str
    status: str
    wall_s: float
    peak_rss_mb: float


def list_notebooks(notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """The pipeline's notebooks ``NN_*.ipynb`` in order."""
    return sorted(p for p in notebook_dir.glob("[0-9][0-9]_*.ipynb"))


def notebook_modules(path: Path) -> list[str]:
    """Return the ``fetalcmr`` modules a notebook's code cells import (IPython magics are skipped)."""
    import ast

    nb = json.loads(path.read_text())
    found: set[str] = set()
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        source = "\n".join(line for line in "".join(cell.get("source", "")).splitlines()
                           if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(source, filename=f"{path.name}")):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
    return sorted(n for n in found if n.split(".")[0] == "fetalcmr" and module_file(n) is not None)


def notebook_digest(path: Path) -> str:
    """Hash of a notebook's cell types, sources and tags (outputs and run counts ignored)."""
    nb = json.loads(path.read_text())
    cells = [(c.get("cell_type"), "".join(c.get("source", "")), sorted(c.get("metadata", {}).get("tags", [])))
             for c in nb.get("cells", [])]
    return content_key(cells)


class PeakMemory:
    """Samples the resident memory of this process and its children (the kernel) in a thread."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            try:
                for proc in [me, *me.children(recursive=True)]:
                    try:
                        total += proc.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def kernel_config(kernel_name: str = "python3") -> dict[str, dict[str, str]]:
    """Return the traitlets config that keeps the kernel's channels private.

    jupyter_client starts kernels on TCP without encryption unless told otherwise, and ipykernel
    then warns that all code and outputs cross the loopback in plain text. When libzmq has CURVE
    and the kernelspec declares ``supported_encryption: curve``, the kernel manager provisions
    CurveZMQ keys (``transport_encryption = "required"``); otherwise, on POSIX, the channels use
    IPC (Unix sockets in the user's runtime folder). Elsewhere nothing changes.
    """
    import zmq
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        supported = KernelSpecManager().get_kernel_spec(kernel_name).metadata.get("supported_encryption") or []
    except NoSuchKernel:
        supported = []
    if isinstance(supported, str):
        supported = [supported]
    if zmq.has("curve") and "curve" in {str(s).lower() for s in supported}:
        return {"KernelManager": {"transport_encryption": "required"}}
    if os.name == "posix":
        return {"KernelManager": {"transport": "ipc"}}
    return {}


def _is_cached(notebook: Path, paths: RunPaths, manifest_path: Path, key: str, force: bool) -> bool:
    """True when ``notebook``'s record is fresh for ``key`` and all its outputs exist."""
    if force:
        return False
    manifest = Manifest(manifest_path)
    outputs_exist = all((manifest_path.parent / o).exists() for o in manifest.outputs_of(notebook.stem))
    return outputs_exist and is_fresh(paths.stages_dir / f"{notebook.stem}.json", key)


def _describe_failure(err: Exception) -> str:
    cell = getattr(err, "exec_count", None) or getattr(err, "cell_index", None)
    ename = getattr(err, "ename", type(err).__name__)
    evalue = getattr(err, "evalue", str(err))
    where = f"cell [{cell}]" if cell is not None else "a cell"
    return f"{where} raised {ename}: {evalue}"


def _torch_threads() -> int:
    """Torch CPU threads the notebook's training ran with (they change the bits: docs/design.md §6)."""
    from fetalcmr.train import cpu_threads

    return cpu_threads()


def run_stage(notebook: Path, params: dict[str, Any], paths: RunPaths, manifest_path: Path,
              key: str, *, force: bool = False, log_output: bool = False,
              progress: RunProgress | None = None) -> StageResult:
    """Execute ``notebook`` with ``params`` unless its record is fresh for ``key``.

    ``progress`` shows the running cell, the kernel's tqdm bars and the time left (a fresh
    :class:`~fetalcmr.progress.RunProgress` on stdout when None).
    """
    import nbformat
    import papermill
    from traitlets.config import Config

    name = notebook.stem
    record = paths.stages_dir / f"{name}.json"
    if _is_cached(notebook, paths, manifest_path, key, force):
        return StageResult(name, "cached", 0.0, 0.0)
    if progress is None:
        wall, cells = previous_timings(Manifest(manifest_path).data, name, params["profile"])
        progress = RunProgress([PlannedNotebook(name, True, wall, cells)])
    tracker = progress.notebook(name, nbformat.read(str(notebook), as_version=4).cells)
    executed = paths.executed_dir / notebook.name
    executed.parent.mkdir(parents=True, exist_ok=True)
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    env_threads = os.environ.get("OMP_NUM_THREADS")
    with PeakMemory() as mem, tracker:
        try:
            papermill.execute_notebook(
                str(notebook), str(executed), parameters=params, cwd=str(REPO_ROOT),
                kernel_name="python3", progress_bar=False, log_output=log_output,
                request_save_on_cell_execute=True, config=Config(kernel_config("python3")),
                on_notebook_start=tracker.on_notebook_start, on_cell_start=tracker.on_cell_start,
                stdout_file=tracker.stream("stdout"), stderr_file=tracker.stream("stderr"),
            )
        except Exception as err:  # papermill wraps the kernel's exception
            raise StageFailed(
                f"notebook {notebook.name} failed: {_describe_failure(err)}\n"
                f"  executed copy with the traceback: {executed}\n"
                f"  outputs of earlier stages are intact; fix the error and run again to resume here."
            ) from None
    wall = time.perf_counter() - t0
    peak_mb = mem.peak_bytes / 2**20
    manifest = Manifest(manifest_path)  # the notebook updated it while running
    # outputs this notebook wrote before but not in this run are stale: remove them
    for out in manifest.outputs_of(name):
        written = manifest.data["outputs"][out].get("written", "")
        if written and datetime.fromisoformat(written) < started.replace(microsecond=0):
            (manifest_path.parent / out).unlink(missing_ok=True)
            del manifest.data["outputs"][out]
    manifest.record_notebook(name, {
        "profile": params["profile"], "seed": params["seed"],
        "dataset": params["dataset"] or "synthetic", "commit": git_commit(REPO_ROOT),
        "wall_s": round(wall, 1), "peak_rss_mb": round(peak_mb, 1),
        "cells_s": [round(d, 1) for d in tracker.durations],
        "omp_num_threads": env_threads, "cpu_count": os.cpu_count(), "torch_threads": _torch_threads(),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "outputs": manifest.outputs_of(name),
    })
    manifest.save()
    mark_fresh(record, key, notebook=name, wall_s=round(wall, 1), peak_rss_mb=round(peak_mb, 1))
    return StageResult(name, "ran", wall, peak_mb)


def run_pipeline(profile: str, *, dataset: str = "", seed: int = 0, force: bool = False,
                 only: list[str] | None = None, run_dir: str = "", figures_dir: str = "",
                 log_output: bool = False, notebook_dir: Path = NOTEBOOK_DIR) -> list[StageResult]:
    """Run every notebook (or those whose number is in ``only``) for ``profile``, in order."""
    if profile not in PROFILE_NAMES:
        raise SystemExit(f"unknown profile {profile!r}; choose one of {', '.join(PROFILE_NAMES)}")
    dataset_path = str(Path(dataset).resolve()) if dataset else ""
    if dataset_path and not Path(dataset_path).exists():
        raise SystemExit(f"{dataset_path}: dataset file not found")
    run = Path(run_dir).resolve() if run_dir else default_run_dir(profile, dataset_path)
    figs = Path(figures_dir).resolve() if figures_dir else default_figures_dir(profile, dataset_path)
    paths = RunPaths(run)
    params = {"profile": profile, "seed": seed, "dataset": dataset_path, "run_dir": str(run),
              "figures_dir": str(figs)}
    data_key = file_digest(dataset_path) if dataset_path else "synthetic"
    settings = get_profile(profile).to_dict()  # the notebooks read the whole profile
    previous = ""
    results = []
    notebooks = list_notebooks(notebook_dir)
    if not notebooks:
        raise SystemExit(f"no notebooks NN_*.ipynb in {notebook_dir}")
    manifest_path = figs / "MANIFEST.json"
    timings = Manifest(manifest_path).data
    stages: list[tuple[Path, str]] = []
    plan: list[PlannedNotebook] = []
    for nb in notebooks:
        key = content_key(code_version(*notebook_modules(nb)), notebook_digest(nb), params, settings, previous,
                          data_key)
        previous = key
        if only and nb.name[:2] not in only:
            continue
        stages.append((nb, key))
        plan.append(PlannedNotebook(nb.stem, not _is_cached(nb, paths, manifest_path, key, force),
                                    *previous_timings(timings, nb.stem, profile)))
    progress = RunProgress(plan)
    print(f"[fetalcmr] {profile} profile: {progress.summary()}", flush=True)
    for nb, key in stages:
        print(f"[fetalcmr] {nb.stem} ...", flush=True)
        result = run_stage(nb, params, paths, manifest_path, key, force=force, log_output=log_output,
                           progress=progress)
        if result.status == "cached":
            print(f"[fetalcmr] {nb.stem}: up to date (cached)", flush=True)
        else:
            print(f"[fetalcmr] {nb.stem}: done in {result.wall_s:.1f} s, peak memory "
                  f"{result.peak_rss_mb:.0f} MB", flush=True)
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m fetalcmr.runner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="default", choices=PROFILE_NAMES)
    parser.add_argument("--dataset", default="", help="a Decathlon-style dataset.json (default: synthetic cohort)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="re-run every stage even when cached")
    parser.add_argument("--only", nargs="*", help="notebook numbers to run, e.g. 00 01")
    parser.add_argument("--run-dir", default="")
    parser.add_argument("--figures-dir", default="")
    parser.add_argument("--log-output", action="store_true", help="stream the notebooks' output")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        results = run_pipeline(args.profile, dataset=args.dataset, seed=args.seed, force=args.force,
                               only=args.only, run_dir=args.run_dir, figures_dir=args.figures_dir,
                               log_output=args.log_output)
    except StageFailed as err:
        print(f"[fetalcmr] ERROR: {err}", file=sys.stderr, flush=True)
        return 1
    ran = sum(r.status == "ran" for r in results)
    print(f"[fetalcmr] {len(results)} notebooks ({ran} ran, {len(results) - ran} cached) in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
