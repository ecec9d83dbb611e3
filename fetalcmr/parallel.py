"""Independent training runs in parallel processes, one CPU thread each.

A stage that trains several independent networks (notebook 02's segmenters, notebook 03's
classifier seeds, notebook 04's fine-tuning runs) hands them to :func:`train_runs` as
:class:`TrainJob` s. On the CPU they run in :func:`run_workers` spawned processes, **each run on
one torch thread**, with the samples sent once per process; with one worker they run here, also
on one thread. Small 3D networks use a second thread poorly (a classifier step at 32³: 0.30 s on
one thread, 0.28 s on two; two single-thread runs side by side: 0.40 s each), so two runs side
by side finish about 1.4× sooner. And because every run uses one thread whatever the machine,
its bits do not depend on the number of cores or workers (the thread count changes the bits of
training: docs/design.md §6); ``tests/test_parallel.py`` checks one worker against two.

Per-subject work goes to the same kind of workers through :func:`fetalcmr.workers.map_items`.

With CUDA the runs stay in this process, on the GPU, one after another.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from fetalcmr.train import TrainConfig, TrainResult, train
from fetalcmr.workers import THREADS_ENV, WORKERS_ENV, exit_with_parent, one_thread, run_workers

#: samples shared by every job of a worker process, and the queue its finished epochs go to
#: (set by :func:`_init_worker`)
_SHARED: Mapping[str, Sequence[dict[str, Any]]] = {}
_EPOCHS: Any = None


@dataclass(frozen=True)
class TrainJob:
    """One call of :func:`fetalcmr.train.train`, picklable: ``make_model`` is a module-level
    function or a :func:`functools.partial` of one; ``train_set``/``val_set`` name entries of the
    samples given to :func:`train_runs`."""

    make_model: Callable[[], nn.Module]
    train_set: str
    val_set: str
    cfg: TrainConfig
    out_dir: Path
    run_key: str


def run_processes(n_runs: int) -> int:
    """Return the processes for ``n_runs`` training runs: :func:`~fetalcmr.workers.run_workers`, but
    all runs at once when they are fewer than twice the cores and ``$FETALCMR_WORKERS`` is not set.

    Three equal runs on two cores would otherwise train two side by side, then the third alone on
    one core while the other idles (notebook 02's segmenters); three processes sharing two cores
    keep both busy to the end. Each run still has one thread, so the bits stay the same.
    """
    workers = run_workers(n_runs)
    if workers > 1 and not os.environ.get(WORKERS_ENV, "").strip() and n_runs < 2 * workers:
        return n_runs
    return workers


def _init_worker(samples: Mapping[str, Sequence[dict[str, Any]]], epochs: Any) -> None:
    global _SHARED, _EPOCHS
    exit_with_parent()
    os.environ[THREADS_ENV] = "1"
    torch.set_num_threads(1)
    _SHARED, _EPOCHS = samples, epochs


def _run_job(job: TrainJob, index: int = 0, samples: Mapping[str, Sequence[dict[str, Any]]] | None = None,
             progress: bool = False) -> TrainResult:
    """Train ``job``; in a worker, report every finished epoch as ``(index, epochs done, row)``."""
    shared = _SHARED if samples is None else samples
    queue = _EPOCHS if samples is None else None

    def report(epoch: int, row: dict[str, Any]) -> None:
        queue.put((index, epoch, float(row.get("train_loss", float("nan")))))

    return train(job.make_model, shared[job.train_set], shared[job.val_set], job.cfg, job.out_dir,
                 run_key=job.run_key, progress=progress, callback=report if queue is not None else None)


def train_runs(jobs: Sequence[TrainJob], samples: Mapping[str, Sequence[dict[str, Any]]], *,
               workers: int | None = None, desc: str = "training runs", progress: bool = True) -> list[TrainResult]:
    """Return the :class:`~fetalcmr.train.TrainResult` of every job, in the order of ``jobs``.

    Each run resumes or loads as :func:`~fetalcmr.train.train` does, so an interrupted stage
    continues where it stopped. ``workers`` defaults to :func:`run_processes`. With workers, one
    progress bar counts the epochs of all runs (each run's epochs arrive through a queue); here,
    each run shows its own bar.
    """
    missing = {name for job in jobs for name in (job.train_set, job.val_set)} - set(samples)
    if missing:
        raise KeyError(f"train_runs: no samples named {sorted(missing)}")
    workers = run_processes(len(jobs)) if workers is None else max(1, min(workers, len(jobs)))
    if workers == 1 or torch.cuda.is_available():
        if torch.cuda.is_available():
            return [_run_job(job, i, samples, progress) for i, job in enumerate(jobs)]
        with one_thread():
            return [_run_job(job, i, samples, progress) for i, job in enumerate(jobs)]
    results: dict[int, TrainResult] = {}
    context = multiprocessing.get_context("spawn")
    done = [0] * len(jobs)  # epochs finished per run (a resumed or finished run reports from where it is)
    with context.Manager() as manager, tqdm(total=sum(j.cfg.epochs for j in jobs), unit="epoch",
                                            desc=f"{desc} ({workers} processes)", disable=not progress) as bar:
        epochs = manager.Queue()
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                 initargs=(samples, epochs)) as pool:
            futures = {pool.submit(_run_job, job, i): i for i, job in enumerate(jobs)}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                changed = bool(finished)
                while not epochs.empty():
                    i, epoch, loss = epochs.get()
                    done[i], changed = max(done[i], epoch), True
                    bar.set_postfix_str(f"{jobs[i].out_dir.name} epoch {epoch}: loss {loss:.3f}", refresh=False)
                for future in finished:
                    i = futures[future]
                    results[i] = future.result()
                    done[i] = jobs[i].cfg.epochs
                if changed:  # redraw only when an epoch or a run finished
                    bar.n = sum(done)
                    bar.set_description(f"{desc} ({workers} processes, {len(results)}/{len(jobs)} runs done)",
                                        refresh=False)
                    bar.refresh()
    return [results[i] for i in range(len(jobs))]
