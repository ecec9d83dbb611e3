"""Determinism (docs/design.md §6): the same seed and thread count give the same bits, for the
classifier of every input type and for a segmenter, in this process and in a fresh one, whatever
the cores; ``FETALCMR_THREADS`` fixes the thread count; training asks torch for deterministic kernels."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import fetalcmr
from fetalcmr.classification import INPUT_KINDS, classification_samples, predict_probs, train_classifier
from fetalcmr.config import get_profile
from fetalcmr.models import make_segmenter
from fetalcmr.predict import predict_volume, quantise_softmax
from fetalcmr.train import THREADS_ENV, TrainConfig, available_cores, cpu_threads, seed_everything, train


def train_all(out_dir: str) -> dict[str, object]:
    """Train the smoke-size classifier of every input type and a smoke segmenter (1 epoch each, seed 0)
    on fixed synthetic inputs in this process; return the thread count and, per network, digests of
    its weights and of its predictions."""
    prof = get_profile("smoke")
    cfg = dataclasses.replace(prof.classifier, epochs=1)
    grid = cfg.crop or cfg.grid  # the smoke classifier reads a crop: inputs of that size pass unchanged
    rng = np.random.default_rng(0)
    raw: dict[str, list[dict[str, Any]]] = {}
    soft: dict[str, np.ndarray] = {}
    for split, n in (("training", 6), ("validation", 2), ("testing", 3)):
        raw[split] = []
        for i in range(n):
            sid = f"{split}{i}"
            raw[split].append({"id": sid, "image": rng.random((1, grid, grid, grid), dtype=np.float32),
                               "label": i % 3})
            dirichlet = rng.dirichlet(np.ones(12), size=(grid,) * 3).transpose(3, 0, 1, 2)
            soft[sid] = quantise_softmax(dirichlet)
    samples = {k: classification_samples(v, soft, grid=grid) for k, v in raw.items()}
    result: dict[str, object] = {}
    for kind in INPUT_KINDS:
        run = train_classifier(cfg, kind, samples["training"], samples["validation"], f"{out_dir}/{kind}",
                               seed=0, progress=False)
        result[kind] = [_weights(run.model), _digest(predict_probs(run.model, samples["testing"]))]
    result["threads"] = torch.get_num_threads()
    scfg = dataclasses.replace(prof.segmenter, epochs=1)
    seg = []
    for i in range(3):
        lp = rng.integers(0, 12, (1, grid, grid, grid)).astype(np.uint8)
        seg.append({"id": f"s{i}", "image": raw["training"][i]["image"], "lp": lp,
                    "binary": (lp > 0).astype(np.uint8), "label": i % 3})
    tcfg = TrainConfig(mode="segment", epochs=1, batch_size=2, lr=scfg.lr, aug_prob=scfg.aug_prob, seed=0)
    run = train(lambda: make_segmenter(scfg), seg[:2], seg[2:], tcfg, f"{out_dir}/segmenter", progress=False)
    result["segmenter"] = [_weights(run.model), _digest(predict_volume(run.model, seg[2]["image"]).softmax)]
    return result


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _weights(model: torch.nn.Module) -> str:
    return _digest(*[v.detach().numpy() for _, v in sorted(model.state_dict().items())])


def _train_in_fresh_process(out: Path, cpus: set[int]) -> dict[str, object]:
    """Run :func:`train_all` in a new interpreter on the CPUs ``cpus`` (``FETALCMR_THREADS`` unset)."""
    out.mkdir(parents=True)
    here = Path(__file__).resolve().parent
    root = str(Path(fetalcmr.__file__).resolve().parents[1])  # the package under test, not another install
    env = {k: v for k, v in os.environ.items() if k != THREADS_ENV}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, str(here), env.get("PYTHONPATH", "")) if p)
    code = (f"import os; os.sched_setaffinity(0, {sorted(cpus)!r}); import json, test_determinism as t; "
            f"json.dump(t.train_all({str(out)!r}), open({str(out / 'result.json')!r}, 'w'))")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)
    return json.loads((out / "result.json").read_text())


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or available_cores() < 2,
                    reason="needs two CPU cores and CPU affinity (Linux)")
def test_fixed_threads_give_identical_runs_on_one_and_two_cores(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    # this process (after whatever ran before in it) on its cores, threads fixed to 1 ...
    monkeypatch.setenv(THREADS_ENV, "1")
    threads = torch.get_num_threads()
    try:
        here = train_all(str(tmp_path / "here"))
    finally:
        torch.set_num_threads(threads)
    # ... and a fresh process on one core (1 thread by default)
    fresh = _train_in_fresh_process(tmp_path / "fresh", {cpus[0]})
    differ = [name for name in (*INPUT_KINDS, "segmenter") if here[name] != fresh[name]]
    assert not differ, (f"weights or predictions differ between the runs on {len(cpus)} cores and on 1 core "
                        f"({here['threads']} and {fresh['threads']} threads): {differ}")
    assert here["threads"] == fresh["threads"] == 1


def test_thread_count_is_the_environment_value_or_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert cpu_threads() == available_cores()
    assert cpu_threads(world_size=available_cores() + 1) == 1
    monkeypatch.setenv(THREADS_ENV, "3")
    assert cpu_threads() == cpu_threads(world_size=2) == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(THREADS_ENV, bad)
        with pytest.raises(ValueError, match=THREADS_ENV):
            cpu_threads()


def test_seeding_asks_for_deterministic_kernels() -> None:
    seed_everything(0)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")
