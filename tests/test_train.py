"""Training engine: resume equals an uninterrupted run, the weak-supervision invariant, the three
modes, learning-rate decay, and a 2-process DDP run under torchrun (gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from ddp_smoke import make_toy_dataset

from fetalcmr import data as data_mod
from fetalcmr.config import ClassifierConfig, SegmenterConfig
from fetalcmr.data import make_samples
from fetalcmr.dataset import read_dataset
from fetalcmr.models import JointNet, make_classifier, make_segmenter
from fetalcmr.train import TrainConfig, plot_history, read_history, train

NET = SegmenterConfig(channels=(2, 4), strides=(2,), dropout=0.2)
CLS = ClassifierConfig(arch="small", init_features=4, growth_rate=4, block_config=(2,), dropout=0.2)
KEYS = ("image", "lp", "binary", "label")


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.set_num_threads(1)
    return read_dataset(make_toy_dataset(tmp_path_factory.mktemp("toy"), n=6, size=16))


def _seg(toy: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return make_samples(toy["training"], KEYS), make_samples(toy["validation"], KEYS)


class Interrupt(Exception):
    pass


def test_resume_reproduces_the_uninterrupted_run(toy: dict[str, Any], tmp_path: Path) -> None:
    tr, va = _seg(toy)
    cfg = TrainConfig(mode="segment", epochs=2, batch_size=2, lr=1e-2, aug_prob=0.5, patch=8, seed=3)
    full = train(lambda: make_segmenter(NET), tr, va, cfg, tmp_path / "full", run_key="k", progress=False)

    def stop(epoch: int, row: dict[str, Any]) -> None:
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(lambda: make_segmenter(NET), tr, va, cfg, tmp_path / "cut", run_key="k", callback=stop,
              progress=False)
    assert len(read_history(tmp_path / "cut")) == 1
    resumed = train(lambda: make_segmenter(NET), tr, va, cfg, tmp_path / "cut", run_key="k", progress=False)
    assert resumed.resumed_from == 1
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name
    cols = ["epoch", "train_loss", "lr", "val_loss", "val_metric"]
    pd.testing.assert_frame_equal(full.history[cols], resumed.history[cols], atol=1e-5)
    # a finished run only loads; another key starts over
    again = train(lambda: make_segmenter(NET), tr, va, cfg, tmp_path / "cut", run_key="k", progress=False)
    assert again.resumed_from == 2
    other = train(lambda: make_segmenter(NET), tr, va, TrainConfig(**{**cfg.to_dict(), "epochs": 1}),
                  tmp_path / "cut", run_key="k", progress=False)
    assert other.resumed_from == 0
    assert {"latest.pt", "best.pt", "history.csv"} <= {p.name for p in (tmp_path / "cut").iterdir()}
    assert not [p for p in (tmp_path / "cut").iterdir() if ".tmp" in p.name]  # atomic writes left nothing


def test_learning_rate_decays_linearly_to_zero(toy: dict[str, Any], tmp_path: Path) -> None:
    tr, va = _seg(toy)
    cfg = TrainConfig(mode="segment", epochs=4, batch_size=4, lr=1e-3, aug_prob=0.0, targets="lp")
    res = train(lambda: make_segmenter(NET), tr, va, cfg, tmp_path, progress=False)
    assert res.history["lr"].tolist() == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4])
    assert "train_binary" not in res.history and "train_lp" in res.history
    fig = plot_history({"lp": res.history})
    assert len(fig.axes) == 2


def test_training_never_reads_gt(toy: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    items, gt_paths = [], set()
    for it in toy["training"] + toy["validation"]:
        bad = tmp_path / f"{it['id']}_corrupt_truth.nii.gz"
        bad.write_bytes(b"corrupt: training must not open this")
        items.append({**it, "gt": str(bad)})
        gt_paths.add(str(bad))
    opened: list[str] = []
    real = data_mod.load_nifti
    monkeypatch.setattr(data_mod, "load_nifti", lambda p, **kw: opened.append(str(p)) or real(p, **kw))
    real_open = open

    def guarded_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        assert str(file) not in gt_paths, f"training opened {file}"
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", guarded_open)
    data_mod.clear_cache()
    tr = make_samples(items[:-1], KEYS)
    va = make_samples(items[-1:], KEYS)
    assert all("gt" not in s for s in tr + va)
    train(lambda: make_segmenter(NET), tr, va, TrainConfig(mode="segment", epochs=1, batch_size=2, lr=1e-3),
          tmp_path / "m", progress=False)
    assert opened and not gt_paths & set(opened)
    assert {Path(p).name.split("_")[1] for p in opened} == {"image.nii.gz", "lp.nii.gz", "binary.nii.gz"}


def test_classify_and_joint_modes(toy: dict[str, Any], tmp_path: Path) -> None:
    tr, va = _seg(toy)
    cls = train(lambda: make_classifier(CLS, in_channels=1), tr, va,
                TrainConfig(mode="classify", epochs=1, batch_size=2, lr=1e-3), tmp_path / "c", progress=False)
    assert {"train_ce", "val_bacc"} <= set(cls.history.columns)
    # classifier reading a frozen "softmax" (extra channels) + image: 13 input channels
    rng = np.random.default_rng(0)
    with_extra = [{**s, "extra": rng.random((12, 16, 16, 16), dtype=np.float32)} for s in tr]
    train(lambda: make_classifier(CLS, in_channels=13), with_extra, [], TrainConfig(
        mode="classify", epochs=1, batch_size=2, lr=1e-3), tmp_path / "c13", progress=False)
    joint = train(lambda: JointNet(make_segmenter(NET), make_classifier(CLS, in_channels=13)), tr, va,
                  TrainConfig(mode="joint", epochs=1, batch_size=2, lr=1e-3, lam=14.0), tmp_path / "j",
                  progress=False)
    h = joint.history.iloc[0]
    assert {"train_ce", "train_lp", "train_binary", "val_dice", "val_bacc"} <= set(joint.history.columns)
    assert h["val_metric"] == pytest.approx(0.5 * (h["val_dice"] + h["val_bacc"]))


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path: Path) -> None:
    script = Path(__file__).with_name("ddp_smoke.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(script.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--standalone", str(script), str(tmp_path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers
        proc.communicate()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    ranks = json.loads((tmp_path / "ranks.json").read_text())
    assert ranks["world_size"] == 2 and ranks["epochs"] == 2
    assert ranks["checksums"][0] == pytest.approx(ranks["checksums"][1], rel=1e-9)  # DDP kept ranks in sync
    assert len(pd.read_csv(tmp_path / "model" / "history.csv")) == 2
