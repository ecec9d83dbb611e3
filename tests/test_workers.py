"""Worker processes (fetalcmr.workers): per-item work gives the same bits on one worker and on
two, comes back in item order, names the failing item; the worker and thread counts follow the
environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fetalcmr.workers import THREADS_ENV, WORKERS_ENV, map_items, one_thread, run_workers


def _conv(seed: int, weight: torch.Tensor) -> tuple[int, np.ndarray, int]:
    """A 3D convolution of a seeded volume (its bits can depend on the thread count), the thread count."""
    x = torch.randn((1, 2, 24, 24, 24), generator=torch.Generator().manual_seed(seed))
    return seed, torch.nn.functional.conv3d(x, weight, padding=1).numpy(), torch.get_num_threads()


def _fail_on_three(item: int, context: None) -> int:
    if item == 3:
        raise ValueError(f"item {item} is bad")
    return item


def test_one_worker_and_two_give_the_same_bits_in_item_order() -> None:
    weight = torch.randn((4, 2, 3, 3, 3), generator=torch.Generator().manual_seed(0))
    items = [5, 1, 4, 2, 3, 0]
    here = map_items(_conv, items, weight, workers=1, progress=False)
    spawned = map_items(_conv, items, weight, workers=2, min_items=1, progress=False)
    assert [r[0] for r in here] == items and [r[0] for r in spawned] == items
    assert {r[2] for r in here} == {1} and {r[2] for r in spawned} == {1}  # every item on one thread
    for a, b in zip(here, spawned, strict=True):
        np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(here[0][1], here[1][1])  # different items, different results


def test_few_items_stay_in_this_process() -> None:
    out = map_items(_conv, [0, 1], torch.ones((1, 2, 3, 3, 3)), workers=2, min_items=8, progress=False)
    assert [r[0] for r in out] == [0, 1]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_item_raises_its_error(workers: int) -> None:
    with pytest.raises(ValueError, match="item 3 is bad"):
        map_items(_fail_on_three, list(range(6)), None, workers=workers, min_items=1, progress=False)


def test_worker_count_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(WORKERS_ENV, "3")
    assert run_workers(10) == 3
    assert run_workers(2) == 2  # never more than the jobs
    monkeypatch.setenv(WORKERS_ENV, "0")
    with pytest.raises(ValueError, match="FETALCMR_WORKERS must be a positive integer"):
        run_workers(4)
    monkeypatch.delenv(WORKERS_ENV)
    monkeypatch.setattr("fetalcmr.workers.available_cores", lambda: 5)
    assert run_workers(8) == 5
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert run_workers(8) == 1  # one GPU: runs one after another


def test_one_thread_restores_threads_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(THREADS_ENV, "2")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_thread():
            assert os.environ[THREADS_ENV] == "1" and torch.get_num_threads() == 1
        assert os.environ[THREADS_ENV] == "2" and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


_SLEEPER = '''
import os, time

def sleep_and_report(item, folder):
    with open(os.path.join(folder, f"worker{os.getpid()}"), "w"):
        pass
    time.sleep(120)
    return item
'''

_DRIVER = '''
import sys
from sleeper import sleep_and_report
from fetalcmr.workers import map_items
map_items(sleep_and_report, [0, 1], sys.argv[1], workers=2, min_items=1, progress=False)
'''


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its new parent to reap it has ended
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_workers_end_when_the_process_that_started_them_is_killed(tmp_path: Path) -> None:
    """An interrupted stage must not leave its workers training on (orphaned, competing for the cores)."""
    (tmp_path / "sleeper.py").write_text(_SLEEPER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    driver = subprocess.Popen([sys.executable, "-c", _DRIVER, str(tmp_path)], env=env)
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("worker*"))) < 2:
            assert driver.poll() is None and time.monotonic() < deadline, "the workers never started"
            time.sleep(0.2)
    finally:
        driver.kill()  # SIGKILL: no clean-up in the parent, as when a kernel is killed
        driver.wait()
    pids = [int(f.name.removeprefix("worker")) for f in tmp_path.glob("worker*")]
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    survivors = [pid for pid in pids if _alive(pid)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"workers {survivors} kept running after their parent was killed"
