"""Worker processes and thread counts: how many cores, how many processes, and per-item work in
parallel single-thread processes.

:func:`map_items` spreads independent per-subject work (propagating labels, predicting and
scoring test subjects) over :func:`run_workers` spawned processes, **each on one torch thread**,
and returns the results in item order. Because every item sees one thread however many workers
there are, the results do not depend on the number of cores or workers (the thread count can
change the bits of a convolution's reductions); ``tests/test_workers.py`` checks one worker
against two. :mod:`fetalcmr.parallel` runs whole training runs the same way.

This module imports nothing else from the package, so a stage that uses it keeps its cache key
(:func:`fetalcmr.cache.code_version`) free of the training engine's source.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

#: environment variable setting the number of parallel worker processes (default: the cores)
WORKERS_ENV = "FETALCMR_WORKERS"
#: environment variable fixing the CPU threads of every training process (default: its cores)
THREADS_ENV = "FETALCMR_THREADS"

#: fewer items than this run here: starting a process (importing torch) costs a few seconds
MIN_ITEMS = 16

#: seconds between a worker's checks that the process that started it is still alive
PARENT_POLL_S = 1.0

#: the context every item of a :func:`map_items` worker is given (set by :func:`_init_map_worker`)
_CONTEXT: Any = None

Item = TypeVar("Item")
Context = TypeVar("Context")
Result = TypeVar("Result")


def available_cores() -> int:
    """Return the number of CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def run_workers(n_jobs: int) -> int:
    """Return the processes for ``n_jobs`` runs or items: ``$FETALCMR_WORKERS`` when set, else the usable
    cores; 1 with CUDA; never more than the jobs."""
    if torch.cuda.is_available():
        return 1
    value = os.environ.get(WORKERS_ENV, "").strip()
    if value and (not value.isdigit() or int(value) < 1):
        raise ValueError(f"{WORKERS_ENV} must be a positive integer, not {value!r}")
    workers = int(value) if value else available_cores()
    return max(1, min(workers, n_jobs))


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the enclosed work on one torch thread (what every worker process does), then restore."""
    before_env, before_threads = os.environ.get(THREADS_ENV), torch.get_num_threads()
    os.environ[THREADS_ENV] = "1"
    torch.set_num_threads(1)
    try:
        yield
    finally:
        if before_env is None:
            os.environ.pop(THREADS_ENV, None)
        else:
            os.environ[THREADS_ENV] = before_env
        torch.set_num_threads(before_threads)


def exit_with_parent(poll_s: float = PARENT_POLL_S) -> None:
    """Make this worker process end itself soon after the process that started it dies.

    A worker busy with a long job (a training run) never reads the pool's queue, so when the
    notebook kernel above it is killed (an interrupted ``make reproduce``) it would train on,
    orphaned, competing for the cores with the next run. A daemon thread polls the parent's pid
    and exits the process (status 1) once the worker has been re-parented.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_map_worker(context: Any) -> None:
    global _CONTEXT
    exit_with_parent()
    os.environ[THREADS_ENV] = "1"
    torch.set_num_threads(1)
    _CONTEXT = context


def _apply(fn: Callable[[Any, Any], Any], item: Any) -> Any:
    return fn(item, _CONTEXT)


def map_items(fn: Callable[[Item, Context], Result], items: Sequence[Item], context: Context, *,
              workers: int | None = None, min_items: int | None = None, desc: str = "items",
              progress: bool = True) -> list[Result]:
    """Return ``[fn(item, context) for item in items]``, in the order of ``items``.

    ``fn`` is a module-level function; ``context`` (models, atlases, settings) is pickled once per
    worker process, ``item`` once per call. With ``workers`` (default :func:`run_workers`) above one
    and at least ``min_items`` items (default :data:`MIN_ITEMS`), the items are spread over
    spawned processes, each on one torch thread; otherwise they run here, also on one thread (on
    the GPU with CUDA). Either way every call sees one thread, so results do not depend on the
    number of workers. Exceptions propagate with the worker's traceback. One progress bar counts
    the finished items.
    """
    n = len(items)
    min_items = MIN_ITEMS if min_items is None else min_items
    workers = run_workers(n) if workers is None else max(1, min(workers, n))
    if workers == 1 or n < min_items or torch.cuda.is_available():
        if torch.cuda.is_available():
            return [fn(item, context) for item in tqdm(items, desc=desc, disable=not progress, leave=False)]
        with one_thread():
            return [fn(item, context) for item in tqdm(items, desc=desc, disable=not progress, leave=False)]
    results: dict[int, Result] = {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_map_worker, initargs=(context,)) as pool, \
            tqdm(total=n, desc=f"{desc} ({workers} processes)", disable=not progress, leave=False) as bar:
        futures = {pool.submit(_apply, fn, item): i for i, item in enumerate(items)}
        try:
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # the items not started yet are dropped
            raise
    return [results[i] for i in range(n)]
