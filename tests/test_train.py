"""Training engine: resume equals an uninterrupted run, the three modes and their steps (loss,
scores, selection metric), learning-rate decay, precision and memory layout, and a 2-process DDP
run under torchrun (gloo).
The weak-supervision invariant: tests/test_weak_supervision.py."""

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
import torch.nn.functional as F
from ddp_smoke import make_toy_dataset
from hypothesis import given, settings
from hypothesis import strategies as st

from fetalcmr.config import ClassifierConfig, SegmenterConfig
from fetalcmr.curves import plot_history
from fetalcmr.data import make_samples
from fetalcmr.dataset import read_dataset
from fetalcmr.models import JointNet, make_classifier, make_segmenter
from fetalcmr.train import (
    AMP_ENV,
    MODES,
    STEPS,
    SampleScore,
    TrainConfig,
    mixed_precision,
    mode_step,
    read_history,
    train,
)

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


def _cfg(mode: str, **kw: Any) -> TrainConfig:
    return TrainConfig(mode=mode, epochs=1, batch_size=2, lr=1e-3, **kw)


def _logits_and_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    seg, cls = torch.randn(2, 12, 4, 4, 4, generator=g), torch.randn(2, 3, generator=g)
    lp = torch.randint(0, 12, (2, 1, 4, 4, 4), generator=g).to(torch.uint8)
    return seg, cls, {"lp": lp, "binary": (lp > 0).to(torch.uint8), "label": torch.tensor([0, 2])}


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), epoch=st.integers(0, 300), lam=st.floats(0.0, 30.0))
def test_mode_losses_follow_their_formulas(seed: int, epoch: int, lam: float) -> None:
    seg, cls, batch = _logits_and_batch(seed)
    cpu, w = torch.device("cpu"), 1.0 + 0.05 * (epoch // 50)
    # segment: L = lp + w(epoch) * binary
    s_total, s_parts = mode_step(_cfg("segment", lam=lam)).loss(seg, batch, epoch, cpu)
    assert set(s_parts) == {"lp", "binary", "binary_weight"} and s_parts["binary_weight"] == pytest.approx(w)
    assert float(s_total) == pytest.approx(s_parts["lp"] + w * s_parts["binary"], rel=1e-5)
    # classify: L = CE
    ce = float(F.cross_entropy(cls, batch["label"]))
    c_total, c_parts = mode_step(_cfg("classify", lam=lam)).loss(cls, batch, epoch, cpu)
    assert float(c_total) == pytest.approx(ce, rel=1e-6) and c_parts == {"ce": pytest.approx(ce, rel=1e-6)}
    # joint: L = segment loss + lam * CE, logging the segmentation parts and ce
    j_total, j_parts = mode_step(_cfg("joint", lam=lam)).loss((seg, cls), batch, epoch, cpu)
    assert j_parts == {**s_parts, "ce": pytest.approx(ce, rel=1e-6)}
    assert float(j_total) == pytest.approx(float(s_total) + lam * ce, rel=1e-5)


def test_selection_metric_per_mode() -> None:
    row = {"val_loss": 1.0, "val_dice": 0.8, "val_bacc": 0.4}
    assert {m: mode_step(_cfg(m)).val_metric(row) for m in MODES} == {
        "segment": 0.8, "classify": 0.4, "joint": pytest.approx(0.6)}
    assert np.isnan(mode_step(_cfg("segment")).val_metric({"val_loss": 1.0}))
    assert np.isnan(mode_step(_cfg("classify")).val_metric({"val_loss": 1.0, "val_dice": 0.8}))


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown training mode 'regress'; choose one of \('segment', 'classify'"):
        _cfg("regress")


def test_each_mode_reads_its_outputs_and_targets() -> None:
    seg, cls, _ = _logits_and_batch(0)
    steps = {m: mode_step(_cfg(m)) for m in MODES}
    assert steps["segment"].segmentation(seg) is seg and steps["segment"].classification(seg) is None
    assert steps["classify"].classification(cls) is cls and steps["classify"].segmentation(cls) is None
    assert steps["joint"].segmentation((seg, cls)) is seg and steps["joint"].classification((seg, cls)) is cls
    assert {m: _cfg(m, targets="lp").sample_keys for m in MODES} == {
        "segment": ("image", "extra", "lp"), "classify": ("image", "extra"), "joint": ("image", "extra", "lp")}
    assert [m for m in MODES if STEPS[m].patches] == ["segment"]  # a classifier sees whole volumes


def test_validation_scores_of_one_sample() -> None:
    lp = np.zeros((1, 4, 4, 4), np.uint8)
    lp[0, :2] = 3
    lp[0, 2:, :2] = 5
    sample = {"lp": lp, "binary": (lp > 0).astype(np.uint8), "label": 2}
    logits = F.one_hot(torch.as_tensor(lp[0]).long(), 12).permute(3, 0, 1, 2)[None].float()  # argmax == lp
    swapped = logits[:, [0, 1, 2, 5, 4, 3, 6, 7, 8, 9, 10, 11]]  # vessels 3 and 5 exchanged
    cls = torch.tensor([[0.1, 2.0, 0.3]])
    assert mode_step(_cfg("joint")).score((logits, cls), sample) == SampleScore(dice=1.0, pred=1, truth=2)
    assert mode_step(_cfg("segment", targets="lp")).score(swapped, sample) == SampleScore(dice=0.0)
    # with manual masks only, Dice scores the foreground: the exchange goes unnoticed
    assert mode_step(_cfg("segment", targets="binary")).score(swapped, sample) == SampleScore(dice=1.0)
    assert mode_step(_cfg("classify")).score(cls, sample) == SampleScore(pred=1, truth=2)


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


def test_training_runs_channels_last_and_returns_a_contiguous_model(toy: dict[str, Any], tmp_path: Path) -> None:
    tr, va = _seg(toy)
    layouts: list[bool] = []

    def model() -> torch.nn.Module:
        net = make_segmenter(NET)
        weights = [p for p in net.parameters() if p.ndim == 5 and p.shape[1] > 1]  # one channel: layouts agree

        def record(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            if module.training:
                layouts.append(args[0].is_contiguous(memory_format=torch.channels_last_3d)
                               and all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in weights))

        net.register_forward_pre_hook(record)
        return net

    cfg = TrainConfig(mode="segment", epochs=1, batch_size=2, lr=1e-3, aug_prob=0.0, targets="lp",
                      precision="float32")
    res = train(model, tr, va, cfg, tmp_path, progress=False)
    assert layouts and all(layouts)  # every training step: channels-last input and 3D weights
    weights = [p for p in res.model.parameters() if p.ndim == 5]
    assert weights and all(p.is_contiguous() for p in weights)  # handed back as a loaded checkpoint is


def test_mixed_precision_follows_the_cpu_and_the_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    monkeypatch.delenv(AMP_ENV, raising=False)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    assert mixed_precision(cpu) == "float32"  # no native bfloat16: emulating it would be slower
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert mixed_precision(cpu) == "bfloat16"
    assert TrainConfig(mode="segment", epochs=1, batch_size=1, lr=1e-3).precision == (
        "bfloat16" if not torch.cuda.is_available() else mixed_precision())
    monkeypatch.setenv(AMP_ENV, "0")
    assert mixed_precision(cpu) == "float32"
    cfg = TrainConfig(mode="segment", epochs=1, batch_size=1, lr=1e-3)
    assert cfg.precision == "float32" and cfg.to_dict()["precision"] == "float32"  # so in every run key
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(mode="segment", epochs=1, batch_size=1, lr=1e-3, precision="int8")


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_training_computes_in_its_precision(toy: dict[str, Any], tmp_path: Path, precision: str) -> None:
    tr, va = _seg(toy)
    seen: list[tuple[torch.dtype, bool]] = []

    def model() -> torch.nn.Module:
        net = make_segmenter(NET)
        conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv3d))

        def record(module: torch.nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            if module.training:
                seen.append((out.dtype, out.is_contiguous()))

        conv.register_forward_hook(record)
        return net

    cfg = TrainConfig(mode="segment", epochs=1, batch_size=2, lr=1e-3, aug_prob=0.0, targets="lp",
                      precision=precision)
    res = train(model, tr, va, cfg, tmp_path, progress=False)
    assert seen and {dtype for dtype, _ in seen} == {getattr(torch, precision)}
    if precision == "bfloat16":  # the CPU's fast layout for bfloat16 is the contiguous one
        assert all(contiguous for _, contiguous in seen)
    assert np.isfinite(res.history["train_loss"]).all()
    assert all(p.dtype == torch.float32 for p in res.model.parameters())  # weights stay float32
