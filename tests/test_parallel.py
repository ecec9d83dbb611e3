"""Parallel training runs (fetalcmr.parallel): one worker and two give the same bits, because every
run uses one thread; runs come back in job order; the worker count follows ``FETALCMR_WORKERS``."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fetalcmr.classification import classification_samples, classifier_job
from fetalcmr.config import get_profile
from fetalcmr.models import make_segmenter
from fetalcmr.parallel import TrainJob, run_processes, train_runs
from fetalcmr.predict import quantise_softmax
from fetalcmr.train import TrainConfig
from fetalcmr.workers import WORKERS_ENV


def _jobs(out_dir: Path) -> tuple[list[TrainJob], dict[str, list[dict[str, Any]]]]:
    """Two smoke classifiers (different inputs and seeds) and a smoke segmenter, one epoch each."""
    prof = get_profile("smoke")
    cfg = dataclasses.replace(prof.classifier, epochs=1)
    grid = cfg.crop or 8
    rng = np.random.default_rng(0)
    raw = [{"id": f"s{i}", "image": rng.random((1, grid, grid, grid), dtype=np.float32), "label": i % 3}
           for i in range(6)]
    soft = {s["id"]: quantise_softmax(rng.dirichlet(np.ones(12), size=(grid,) * 3).transpose(3, 0, 1, 2))
            for s in raw}
    cls_samples = classification_samples(raw, soft, grid=grid)
    seg_samples = []
    for s in raw[:3]:
        lp = rng.integers(0, 12, (1, grid, grid, grid)).astype(np.uint8)
        seg_samples.append({"id": s["id"], "image": s["image"], "lp": lp, "binary": (lp > 0).astype(np.uint8),
                            "label": s["label"]})
    scfg = dataclasses.replace(prof.segmenter, epochs=1)
    seg_cfg = TrainConfig(mode="segment", epochs=1, batch_size=2, lr=scfg.lr, aug_prob=scfg.aug_prob, seed=0)
    jobs = [classifier_job(cfg, "softmax+image", cls_samples[:4], out_dir / "a", seed=0, train_set="cls",
                           val_set="cls_val"),
            classifier_job(cfg, "image", cls_samples[:4], out_dir / "b", seed=1, train_set="cls", val_set="cls_val"),
            TrainJob(functools.partial(make_segmenter, scfg), "seg", "seg_val", seg_cfg, out_dir / "c", "seg")]
    return jobs, {"cls": cls_samples[:4], "cls_val": cls_samples[4:], "seg": seg_samples[:2],
                  "seg_val": seg_samples[2:]}


def _state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def test_one_worker_and_two_train_the_same_bits_in_job_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    jobs, samples = _jobs(tmp_path / "one")
    here = train_runs(jobs, samples, workers=1, progress=False)
    jobs2, _ = _jobs(tmp_path / "two")
    spawned = train_runs(jobs2, samples, workers=2, progress=True)
    # one bar counts the epochs of every run, reported by the workers as they finish
    assert "3/3 runs done" in capsys.readouterr().err
    assert [r.out_dir for r in spawned] == [j.out_dir for j in jobs2]  # results in job order
    for a, b in zip(here, spawned, strict=True):
        sa, sb = _state(a.model), _state(b.model)
        assert sa.keys() == sb.keys()
        for k in sa:
            np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
        timing = [c for c in a.history.columns if "second" in c]
        assert a.history.drop(columns=timing).equals(b.history.drop(columns=timing))
    # another seed gives other bits, so equal bits above are not a comparison of untrained copies
    other = dataclasses.replace(jobs[1], cfg=dataclasses.replace(jobs[1].cfg, seed=2), out_dir=tmp_path / "seed2")
    moved = _state(train_runs([other], samples, workers=1, progress=False)[0].model)
    assert any(not np.array_equal(v, moved[k]) for k, v in _state(here[1].model).items())
    # finished runs load instead of training again
    again = train_runs(jobs, samples, workers=1, progress=False)
    assert [r.resumed_from for r in again] == [1, 1, 1]


def test_unknown_sample_set_is_named(tmp_path: Path) -> None:
    jobs, samples = _jobs(tmp_path)
    with pytest.raises(KeyError, match="no samples named \\['seg_val'\\]"):
        train_runs(jobs, {k: v for k, v in samples.items() if k != "seg_val"}, workers=1, progress=False)


def test_a_few_more_runs_than_cores_all_start_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    monkeypatch.setattr("fetalcmr.workers.available_cores", lambda: 2)
    assert run_processes(3) == 3  # not two side by side, then the third alone
    assert run_processes(2) == 2 and run_processes(1) == 1
    assert run_processes(4) == 2 and run_processes(15) == 2  # as many as the cores
    monkeypatch.setenv(WORKERS_ENV, "2")
    assert run_processes(3) == 2  # an explicit worker count is kept
