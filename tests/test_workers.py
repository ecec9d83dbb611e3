"""Worker processes (fetalcmr.workers): per-item work gives the same bits on one worker and on
two, comes back in item order, names the failing item; the worker and thread counts follow the
environment."""

from __future__ import annotations

import os

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
