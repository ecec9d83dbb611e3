"""Classifier inputs (1/12/13 channels), the smallest grid, softmax caching, a tiny experiment and
its tables, and the benchmark's keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fetalcmr.classification import (
    INPUT_KINDS,
    ClassificationRun,
    GridPool,
    InputSelect,
    build_classifier,
    classification_samples,
    input_channels,
    min_classifier_grid,
    run_experiments,
    segmenter_softmax,
    stack_inputs,
    train_classifier,
)
from fetalcmr.classification_report import (
    confusion_cases,
    per_class_table,
    pooled_confusion,
    pooled_reliability,
    run_scores,
    selection_table,
    summary_table,
)
from fetalcmr.config import ClassifierConfig, SegmenterConfig
from fetalcmr.models import make_segmenter
from fetalcmr.predict import quantise_softmax
from fetalcmr.stage_bench import classification_costs
from fetalcmr.train import ClassifyStep, load_checkpoint

TINY = ClassifierConfig(arch="small", init_features=4, growth_rate=4, block_config=(2,), dropout=0.0,
                        epochs=1, batch_size=3, lr=1e-3, seeds=(0, 1), aug_prob=0.3, grid=8)


def _channel_coded(n: int = 2, grid: int = 8) -> torch.Tensor:
    """Input whose channel c holds the value c everywhere."""
    return torch.arange(13, dtype=torch.float32).view(1, 13, 1, 1, 1).expand(n, 13, grid, grid, grid).clone()


@pytest.mark.parametrize(("kind", "channels"), [("image", [12]), ("softmax", list(range(12))),
                                                ("softmax+image", list(range(13)))])
def test_input_assembly_gives_1_12_13_channels(kind: str, channels: list[int]) -> None:
    assert input_channels(kind) == len(channels)
    out = InputSelect(kind)(_channel_coded())
    assert out.shape[1] == len(channels)
    assert out[0, :, 0, 0, 0].tolist() == channels  # the image is the last channel, softmax first
    # the network built for the kind has a first convolution with that many input channels
    net = build_classifier(TINY, kind)
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv3d))
    assert conv.in_channels == len(channels)


@pytest.mark.parametrize(("kind", "stem_channels"), [("image", 1), ("softmax", 4), ("softmax+image", 4)])
def test_input_projection_mixes_multichannel_inputs_down(kind: str, stem_channels: int) -> None:
    import dataclasses

    cfg = dataclasses.replace(TINY, input_projection=4)
    net = build_classifier(cfg, kind)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    if stem_channels < input_channels(kind):  # a 1×1×1 channel mix, then the stem reads its output
        assert convs[0].kernel_size == (1, 1, 1) and convs[0].in_channels == input_channels(kind)
        assert convs[0].out_channels == 4
        convs = convs[1:]
    assert convs[0].in_channels == stem_channels and convs[0].kernel_size != (1, 1, 1)
    assert net(torch.rand(2, 13, 8, 8, 8)).shape == (2, 3)


def test_stack_inputs_puts_softmax_before_image() -> None:
    samples = [{"extra": np.full((12, 4, 4, 4), 0.5, np.float32), "image": np.full((1, 4, 4, 4), 7.0, np.float32)}]
    x = stack_inputs(samples)
    assert x.shape == (1, 13, 4, 4, 4) and float(x[0, 12].mean()) == 7.0 and float(x[0, :12].mean()) == 0.5


def test_unknown_kind_and_wrong_channel_count_raise() -> None:
    with pytest.raises(ValueError, match="unknown classifier input"):
        input_channels("mask")
    with pytest.raises(ValueError, match="13"):
        InputSelect("image")(torch.zeros(1, 12, 4, 4, 4))


@pytest.mark.parametrize("cfg", [TINY, ClassifierConfig(arch="small", init_features=4, growth_rate=4,
                                                        block_config=(2, 2, 2), grid=None)])
def test_forward_on_the_smallest_allowed_grid(cfg: ClassifierConfig) -> None:
    torch.manual_seed(0)
    g = min_classifier_grid(cfg)
    for kind in INPUT_KINDS:
        net = build_classifier(cfg, kind).train()
        out = net(torch.rand(2, 13, g, g, g))
        assert out.shape == (2, 3) and torch.isfinite(out).all()
        out.sum().backward()


def test_min_grid_follows_the_densenet_depth() -> None:
    assert min_classifier_grid(ClassifierConfig(arch="densenet121")) == 64  # DESIGN §4: 48 fails
    assert min_classifier_grid(ClassifierConfig(arch="small", block_config=(4, 8, 8))) == 32
    with pytest.raises(ValueError, match="below the smallest grid"):
        build_classifier(ClassifierConfig(arch="small", block_config=(4, 8, 8), grid=16), "image")


@settings(max_examples=10, deadline=None)
@given(st.sampled_from([8, 16]), st.integers(1, 3))
def test_grid_pool_is_average_pooling(grid: int, factor: int) -> None:
    x = torch.rand(1, 2, grid * factor, grid * factor, grid * factor)
    pooled = GridPool(grid)(x)
    assert pooled.shape[2:] == (grid,) * 3
    torch.testing.assert_close(pooled, torch.nn.functional.avg_pool3d(x, factor))
    assert float(pooled.mean()) == pytest.approx(float(x.mean()), rel=1e-5)


def _samples(n: int, size: int = 16, seed: int = 0) -> list[dict[str, Any]]:
    """Image samples whose class is visible: a dark tube left (0), right (1) or both sides (2)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = i % 3
        img = rng.normal(1.0, 0.05, (1, size, size, size)).astype(np.float32)
        if label in (0, 2):
            img[0, 2:5, 6:9, 2:-2] = 0.1
        if label in (1, 2):
            img[0, -5:-2, 6:9, 2:-2] = 0.1
        out.append({"id": f"sub-{seed}{i:02d}", "image": img, "label": label, "affine": np.eye(4)})
    return out


@pytest.fixture(scope="module")
def tiny_split() -> dict[str, list[dict[str, Any]]]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    seg = make_segmenter(SegmenterConfig(channels=(2, 4), strides=(2,), dropout=0.0))
    raw = {"training": _samples(9, seed=1), "validation": _samples(3, seed=2), "testing": _samples(6, seed=3)}
    soft = segmenter_softmax(seg, [s for v in raw.values() for s in v], grid=TINY.grid, progress=False)
    return {k: classification_samples(v, soft, grid=TINY.grid) for k, v in raw.items()}


def test_segmenter_softmax_is_a_distribution_on_the_classifier_grid() -> None:
    torch.manual_seed(0)
    seg = make_segmenter(SegmenterConfig(channels=(2, 4), strides=(2,), dropout=0.0))
    samples = _samples(2)
    soft = segmenter_softmax(seg, samples, grid=8, progress=False)
    assert set(soft) == {s["id"] for s in samples}
    for v in soft.values():
        assert v.shape == (12, 8, 8, 8) and v.dtype == np.float32
        np.testing.assert_allclose(v.sum(0), 1.0, atol=12 / 510)  # 12 channels quantised to 1/255 before pooling
    with pytest.raises(KeyError, match="no segmenter softmax"):
        classification_samples(_samples(1, seed=9), soft, grid=8)


def test_classification_samples_hold_pooled_image_and_softmax(tiny_split: dict[str, Any]) -> None:
    s = tiny_split["training"][0]
    assert s["image"].shape == (1, 8, 8, 8) and s["extra"].shape == (12, 8, 8, 8)
    assert "gt" not in s and set(s) == {"id", "image", "extra", "label"}


def test_experiment_tables(tiny_split: dict[str, Any], tmp_path: Path) -> None:
    runs = run_experiments(TINY, tiny_split["training"], tiny_split["validation"], tiny_split["testing"],
                           tmp_path, kinds=("image", "softmax+image"), data_key="k", progress=False)
    assert [(r.kind, r.seed) for r in runs] == [("image", 0), ("image", 1), ("softmax+image", 0),
                                                ("softmax+image", 1)]
    assert all(r.train_seconds > 0 and r.infer_seconds_per_subject > 0 for r in runs)
    preds = __import__("pandas").concat([r.predictions for r in runs])
    assert len(preds) == 4 * 6
    np.testing.assert_allclose(preds[["p0", "p1", "p2"]].sum(1), 1.0, atol=1e-5)
    scores = run_scores(preds)
    assert len(scores) == 4 and scores["balanced_accuracy"].between(0, 1).all()
    summary = summary_table(runs)
    assert summary["input"].tolist() == ["image", "softmax+image"] and summary["channels"].tolist() == [1, 13]
    img = scores[scores["kind"] == "image"]["balanced_accuracy"]
    assert summary.loc[0, "bacc_mean"] == pytest.approx(img.mean())
    assert summary.loc[0, "balanced_accuracy"] == f"{img.mean():.2f} ({img.std(ddof=1):.2f})"
    per_class = per_class_table(preds)
    assert len(per_class) == 2 * 3 and per_class["support"].tolist() == [2] * 6
    cm = pooled_confusion(preds, "image")
    assert cm.sum() == 12 and cm.sum(1).tolist() == [4, 4, 4]
    assert pooled_reliability(preds, "image")["count"].sum() == 12
    items = [{"id": s["id"], "label": s["label"], "meta": {"daa_minor_ratio": 0.3 if s["label"] == 2 else None}}
             for s in tiny_split["testing"]]
    cases = confusion_cases(preds, items)
    wrong = int((preds["label"] != preds["pred"]).sum())
    assert cases["predictions"].sum() == wrong if wrong else cases.empty
    # a second call loads the finished runs instead of training again
    again = run_experiments(TINY, tiny_split["training"], tiny_split["validation"], tiny_split["testing"],
                            tmp_path, kinds=("image",), seeds=(0,), data_key="k", progress=False)
    np.testing.assert_allclose(again[0].predictions[["p0", "p1", "p2"]], runs[0].predictions[["p0", "p1", "p2"]],
                               atol=1e-6)


def test_benchmark_reports_every_input_type() -> None:
    calls: list[tuple[int, ...]] = []

    def fake_timer(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, steps: int) -> tuple[float, float]:
        calls.append(tuple(x.shape))
        assert model(x).shape == (x.shape[0], 3)
        return 0.5, 0.1

    out = classification_costs("smoke", timer=fake_timer)
    assert out["profile"] == "smoke" and out["arch"] == "small"
    for kind in INPUT_KINDS:
        assert out[kind]["train_s_per_sample"] == 0.5 and out[kind]["infer_s_per_sample"] == 0.1
    assert len(calls) == 3 and calls[0][1] == 13


def test_stored_softmax_is_read_and_pooled_only_when_complete(tmp_path: Path) -> None:
    from fetalcmr.classification import stored_softmax
    from fetalcmr.predict import save_softmax, softmax_file

    soft = np.random.default_rng(0).dirichlet(np.ones(12), size=(16, 16, 16)).transpose(3, 0, 1, 2)
    for i in ("a", "b"):
        save_softmax(softmax_file(tmp_path, i), soft, np.eye(4))
    assert stored_softmax(tmp_path, ["a", "b"], grid=8) is None  # no completion record
    (tmp_path / "done.json").write_text("{}")
    assert stored_softmax(tmp_path, ["a", "c"], grid=8) is None  # a subject missing
    out = stored_softmax(tmp_path, ["a", "b"], grid=8)
    assert out is not None and out["a"].shape == (12, 8, 8, 8)
    np.testing.assert_allclose(out["a"].sum(0), 1.0, atol=1e-2)
    np.testing.assert_allclose(out["b"][:, 0, 0, 0], soft[:, :2, :2, :2].mean(axis=(1, 2, 3)), atol=1e-3)


class _NoSegmenter(torch.nn.Module):
    """Stands in for a segmenter that must not run (the softmax has to come from files)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the segmenter ran although its softmax was stored")


def test_prepare_classification_stores_and_rereads_the_softmax_per_subject(tiny_dataset: Path,
                                                                           tmp_path: Path) -> None:
    from fetalcmr.classification import prepare_classification
    from fetalcmr.data import make_samples
    from fetalcmr.dataset import read_dataset
    from fetalcmr.predict import SOFTMAX_DONE
    from fetalcmr.segmentation import save_softmax_files

    data = read_dataset(tiny_dataset)
    ids = [it["id"] for split in ("training", "validation", "testing") for it in data[split]]
    torch.manual_seed(0)
    seg = make_segmenter(SegmenterConfig(channels=(2, 4), strides=(2,), dropout=0.0))
    kw: dict[str, Any] = dict(segmenter_key="seg", cfg=TINY, grid=None, spacing_mm=None, progress=False)
    first = prepare_classification(data, seg, cache_dir=tmp_path / "cache", **kw)
    assert sorted(p.name for p in first.softmax_dir.iterdir()) == sorted([f"{i}.npz" for i in ids] + [SOFTMAX_DONE])

    def extras(prep: Any) -> np.ndarray:
        return np.stack([s["extra"] for split in ("training", "validation", "testing") for s in prep.samples[split]])

    assert extras(first).shape == (len(ids), 12, 8, 8, 8)  # pooled from 12³ to the classifier grid
    again = prepare_classification(data, _NoSegmenter(), cache_dir=tmp_path / "cache", **kw)
    # a cached run trains on exactly what the first run trained on (both read the stored quantised files)
    np.testing.assert_array_equal(extras(again), extras(first))
    assert extras(first).dtype == np.float32 and np.array_equal(quantise_softmax(extras(first)), extras(first))
    # notebook 02's full-grid softmax files (same format) feed a fresh cache without running the segmenter
    folder = save_softmax_files(seg, make_samples(data["training"] + data["validation"] + data["testing"],
                                                  ("image",), grid=None, spacing_mm=None), tmp_path / "nb02")
    (folder / SOFTMAX_DONE).write_text("{}")
    stored = prepare_classification(data, _NoSegmenter(), cache_dir=tmp_path / "cache2", softmax_dir=folder, **kw)
    # the same bits as the softmax computed here (both quantised before pooling, then after)
    np.testing.assert_array_equal(extras(stored), extras(first))
    rerun = prepare_classification(data, _NoSegmenter(), cache_dir=tmp_path / "cache2", softmax_dir=folder, **kw)
    np.testing.assert_array_equal(extras(rerun), extras(stored))


def _with_aorta_at(centre: tuple[int, int, int], grid: int = 40) -> torch.Tensor:
    """A [1, 13, grid³] input whose AO softmax channel is a blob at ``centre``; image = x coordinate."""
    from fetalcmr.anatomy import LABEL_INDEX

    x = torch.zeros(1, 13, grid, grid, grid)
    i, j, k = centre
    x[0, LABEL_INDEX["AO"], i - 2:i + 3, j - 2:j + 3, k - 2:k + 3] = 1.0
    x[0, 12] = torch.arange(grid, dtype=torch.float32)[:, None, None]
    return x


@settings(max_examples=25, deadline=None)
@given(st.tuples(*[st.integers(2, 37)] * 3), st.sampled_from([8, 16, 24]))
def test_arch_crop_is_centred_on_the_aorta_and_stays_inside(centre: tuple[int, int, int], size: int) -> None:
    from fetalcmr.anatomy import LABEL_INDEX
    from fetalcmr.classification import ArchCrop

    x = _with_aorta_at(centre)
    out = ArchCrop(size)(x)
    assert out.shape == (1, 13, size, size, size)
    assert out[0, LABEL_INDEX["AO"]].sum() == x[0, LABEL_INDEX["AO"]].sum()  # the whole blob is inside
    start_x = int(out[0, 12, 0, 0, 0])  # image channel holds the x index: the crop's first row
    want = min(max(round(centre[0] - (size - 1) / 2), 0), 40 - size)
    assert start_x == want


def test_arch_crop_falls_back_to_the_centre_and_matches_precropped_samples() -> None:
    from fetalcmr.classification import ArchCrop, crop_sample

    empty = torch.zeros(1, 13, 40, 40, 40)
    empty[0, 12] = torch.arange(40, dtype=torch.float32)[:, None, None]
    assert int(ArchCrop(16)(empty)[0, 12, 0, 0, 0]) == 12  # no aorta: grid centre
    x = _with_aorta_at((30, 10, 20))
    soft, image = crop_sample(x[0, :12].numpy(), x[0, 12:].numpy(), 16)
    assert np.array_equal(np.concatenate([soft, image]), ArchCrop(16)(x)[0].numpy())
    cfg = ClassifierConfig(arch="small", init_features=4, growth_rate=4, block_config=(2, 2), crop=16)
    net = build_classifier(cfg, "softmax+image").eval()
    with torch.no_grad():  # the network crops a full input exactly as the samples were cropped
        assert torch.equal(net(x), net(torch.cat([torch.as_tensor(soft), torch.as_tensor(image)])[None]))


def test_classifier_keeps_its_last_epoch_even_when_validation_peaked_earlier(
        tiny_split: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the validation metric falls every epoch, so "best" would be epoch 1's weights
    falling = iter([0.9, 0.5, 0.1])
    monkeypatch.setattr(ClassifyStep, "val_metric", lambda self, row: next(falling))
    cfg = dataclasses.replace(TINY, epochs=3)
    result = train_classifier(cfg, "image", tiny_split["training"], tiny_split["validation"], tmp_path,
                              seed=0, progress=False)
    assert result.best_epoch == 1
    last = load_checkpoint(tmp_path / "latest.pt")["model"]
    first = load_checkpoint(tmp_path / "best.pt")["model"]
    kept = result.model.state_dict()
    assert any(not torch.equal(first[k], last[k]) for k in last)
    assert all(torch.equal(kept[k], last[k]) for k in last)


def test_selection_table_reads_ties_and_the_loss_minimum_from_the_validation_history(tmp_path: Path) -> None:
    history = pd.DataFrame({"epoch": [1, 2, 3, 4, 5], "val_bacc": [0.5, 1.0, 1.0, 0.9, 1.0],
                            "val_loss": [1.0, 0.8, 0.6, 0.5, 0.55]})
    run = ClassificationRun("softmax", 3, pd.DataFrame(), history, 1.0, 0.1, tmp_path)
    row = selection_table([run]).iloc[0]
    assert (row["input"], row["seed"], row["epochs"]) == ("softmax", 3, 5)
    assert (row["val_bacc_max"], row["first_epoch_at_max"], row["epochs_at_max"]) == (1.0, 2, 3)
    assert (row["epoch_min_val_loss"], row["val_loss_min"]) == (4, 0.5)
    assert row["val_loss_at_first_max"] == 0.8 and row["val_loss_last"] == 0.55 and row["kept_epoch"] == 5
