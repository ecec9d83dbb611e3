"""Joint fine-tuning: the loss is seg + λ·CE, gradients reach the segmenter only through λ·CE,
a tiny end-to-end fine-tuning with evaluation, ensembles, paired tests and the tables."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from fetalcmr.anatomy import LABELS
from fetalcmr.classification import build_classifier
from fetalcmr.config import ClassifierConfig, JointConfig, SegmenterConfig
from fetalcmr.io import load_nifti
from fetalcmr.joint import build_joint, fine_tune, joint_train_config, predict_and_evaluate, stratified_subset
from fetalcmr.joint_report import comparison_table, paired_test, paired_tests, per_label_table, sweep_table
from fetalcmr.losses import SegmentationLoss, binary_weight_at, joint_loss
from fetalcmr.models import make_segmenter

SEG = SegmenterConfig(channels=(2, 4), strides=(2,), dropout=0.0, aug_prob=0.0)
CLS = ClassifierConfig(arch="small", init_features=4, growth_rate=4, block_config=(2,), dropout=0.0, grid=8)


def _pair(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_joint(SEG, CLS, seg_state=make_segmenter(SEG).state_dict(),
                       cls_state=build_classifier(CLS, "softmax+image").state_dict())


def test_joint_loss_equals_seg_plus_lambda_ce_on_known_tensors() -> None:
    seg = torch.tensor(0.75)
    logits = torch.zeros(2, 3)  # uniform: CE = log 3
    total, ce = joint_loss(seg, logits, torch.tensor([0, 2]), 14.0)
    assert float(ce) == pytest.approx(math.log(3))
    assert float(total) == pytest.approx(0.75 + 14 * math.log(3))
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    total, ce = joint_loss(seg, logits, torch.tensor([0]), 5.0)
    expected_ce = -2.0 + math.log(math.exp(2) + 2)
    assert float(total) == pytest.approx(0.75 + 5 * expected_ce)


def _grads(lam: float | None) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """Back-propagate ``joint_loss``'s own total (``lam=None``: the segmentation loss alone) through a
    fixed joint pair on a fixed batch; return (segmenter gradients, classifier gradients)."""
    model = _pair()
    model.train()
    image = torch.rand(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    lp = torch.zeros(2, 16, 16, 16, dtype=torch.long)
    lp[:, 4:8, 4:8, 2:-2] = 4
    seg_logits, cls_logits = model(image)
    seg, _ = SegmentationLoss("lp+binary")(seg_logits, lp=lp, binary=(lp > 0).long(), epoch=0)
    total = seg if lam is None else joint_loss(seg, cls_logits, torch.tensor([0, 2]), lam)[0]
    total.backward()
    seg_grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.segmenter.parameters()]
    return seg_grads, [p.grad for p in model.classifier.parameters()]


def _moved(grads: list[torch.Tensor | None]) -> float:
    return sum(float(g.abs().sum()) for g in grads if g is not None)


def test_classification_gradients_reach_the_segmenter_only_when_lambda_is_positive() -> None:
    seg_only, cls_seg_only = _grads(None)
    assert _moved(seg_only) > 0 and _moved(cls_seg_only) == 0.0  # the seg loss alone never reaches the classifier
    seg14, cls14 = _grads(14.0)
    assert _moved(cls14) > 0
    # the λ·CE term adds to the segmenter's gradient: it differs from the segmentation loss's alone
    extra = sum(float((a - b).abs().sum()) for a, b in zip(seg14, seg_only, strict=True))
    assert extra > 1e-3 * _moved(seg_only)
    seg0, cls0 = _grads(0.0)
    assert _moved(cls0) == 0.0
    for a, b in zip(seg0, seg_only, strict=True):
        torch.testing.assert_close(a, b)


def test_joint_pair_starts_from_the_given_weights() -> None:
    torch.manual_seed(3)
    seg, cls = make_segmenter(SEG), build_classifier(CLS, "softmax+image")
    pair = build_joint(SEG, CLS, seg_state=seg.state_dict(), cls_state=cls.state_dict())
    for a, b in zip(seg.state_dict().values(), pair.segmenter.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    x = torch.rand(1, 1, 16, 16, 16)
    seg.eval(), cls.eval(), pair.eval()
    with torch.no_grad():
        s = seg(x)
        expected = cls(torch.cat([torch.softmax(s, 1), x], 1))
        torch.testing.assert_close(pair(x)[1], expected)
    # without weights (a bundle loads them afterwards): freshly initialised, reading the given input kind
    fresh = build_joint(SEG, CLS, "image")
    assert fresh.classifier[1].kind == "image" and fresh.with_image
    assert any(not torch.equal(a, b) for a, b in zip(seg.state_dict().values(), fresh.segmenter.state_dict().values(),
                                                      strict=True))


def test_train_config_is_joint_with_lambda_and_last_weights() -> None:
    cfg = joint_train_config(JointConfig(lr=2e-4, batch_size=3), SEG, lam=5.0, epochs=2, seed=4)
    assert (cfg.mode, cfg.lam, cfg.epochs, cfg.seed, cfg.select, cfg.lr, cfg.batch_size) == \
        ("joint", 5.0, 2, 4, "last", 2e-4, 3)
    assert cfg.targets == "lp+binary"


def test_fine_tuning_keeps_the_binary_weight_the_segmenter_ended_with() -> None:
    seg = dataclasses.replace(SEG, epochs=30, binary_weight=(0.0, 0.1, 2))
    cfg = joint_train_config(JointConfig(), seg, lam=14.0, epochs=3, seed=0)
    for epoch in range(3):
        assert binary_weight_at(epoch, cfg.binary_weight) == pytest.approx(1.4)  # 0 + 0.1 * (29 // 2)


def _samples(n: int, seed: int, size: int = 16) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        gt = np.zeros((size,) * 3, np.uint8)
        gt[3:6, 6:9, 2:-2] = 4
        gt[10:13, 6:9, 2:-2] = 6
        if i % 3 == 2:
            gt[6:10, 6:9, 10:13] = 4  # a bridge: "ring"
        image = rng.normal(1.0, 0.05, (1, size, size, size)).astype(np.float32)
        image[0][gt > 0] = 0.1
        out.append({"id": f"s{seed}-{i}", "image": image, "lp": np.roll(gt, 1, 0)[None], "binary": (gt > 0)[None]
                    .astype(np.uint8), "label": i % 3, "affine": np.eye(4), "gt": gt})
    return out


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("joint")
    train = [{k: v for k, v in s.items() if k != "gt"} for s in _samples(6, 0)]
    val = [{k: v for k, v in s.items() if k != "gt"} for s in _samples(3, 1)]
    test = _samples(3, 2)
    jcfg = JointConfig(lr=1e-3, batch_size=2)
    runs = {}
    for name, lam in (("joint", 14.0), ("lambda0", 0.0)):
        cfg = joint_train_config(jcfg, SEG, lam=lam, epochs=1, seed=0)
        runs[name] = fine_tune(_pair, train, val, cfg, root / name, start_key="k", progress=False)
    return {"root": root, "runs": runs, "test": test, "train": train}


def test_fine_tuning_with_lambda_changes_the_segmenter_differently(fine_tuned: dict[str, Any]) -> None:
    runs = fine_tuned["runs"]
    start = _pair()
    for name in ("joint", "lambda0"):
        h = runs[name].history
        assert len(h) == 1 and {"train_ce", "train_lp", "val_dice", "val_bacc"} <= set(h.columns)
        moved = any(not torch.equal(a, b) for a, b in zip(start.segmenter.state_dict().values(),
                                                          runs[name].model.segmenter.state_dict().values(),
                                                          strict=True))
        assert moved
    a = runs["joint"].model.segmenter.state_dict()
    b = runs["lambda0"].model.segmenter.state_dict()
    assert any(not torch.allclose(a[k].float(), b[k].float()) for k in a)  # the CE term changed the segmenter
    assert (runs["lambda0"].history["train_loss"] - runs["lambda0"].history["train_lp"]
            - runs["lambda0"].history["binary_weight"] * runs["lambda0"].history["train_binary"]).abs().max() < 1e-4


def test_predict_evaluate_ensemble_and_tables(fine_tuned: dict[str, Any], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    runs, test = fine_tuned["runs"], fine_tuned["test"]
    models = {"separate": _pair(), "joint": runs["joint"].model, "lambda0": runs["lambda0"].model}
    truth = {s["id"]: s["gt"] for s in test}
    samples = [{k: v for k, v in s.items() if k != "gt"} for s in test]
    seg, cls = predict_and_evaluate(models, samples, truth, spacing_mm=1.0, labels=LABELS,
                                    ensembles={"ensemble": ["joint", "lambda0"]},
                                    save_dirs={"joint": tmp_path / "joint"}, progress=False)
    # two spawned single-thread processes (the default profile's 150 test subjects) give the same tables
    monkeypatch.setattr("fetalcmr.workers.MIN_ITEMS", 1)
    seg2, cls2 = predict_and_evaluate(models, samples, truth, spacing_mm=1.0, labels=LABELS,
                                      ensembles={"ensemble": ["joint", "lambda0"]},
                                      save_dirs={"joint": tmp_path / "joint2"}, progress=False, workers=2)
    pd.testing.assert_frame_equal(seg2, seg)
    pd.testing.assert_frame_equal(cls2.drop(columns="seconds"), cls.drop(columns="seconds"))
    assert set(cls["method"]) == {"separate", "joint", "lambda0", "ensemble"} and len(cls) == 4 * 3
    np.testing.assert_allclose(cls[["p0", "p1", "p2"]].sum(1), 1.0, atol=1e-5)
    assert len(seg) == 4 * 3 * 11 and seg["dice"].dropna().between(0, 1).all()
    saved = sorted(p.name for p in (tmp_path / "joint").iterdir())
    assert saved == sorted(f"{s['id']}.nii.gz" for s in test)
    vol = load_nifti(tmp_path / "joint" / saved[0])
    assert vol.array.shape == (16, 16, 16) and vol.array.max() < 12
    # the ensemble's probabilities are the members' mean
    e = cls[cls["method"] == "ensemble"].set_index("id")[["p0", "p1", "p2"]]
    m = cls[cls["method"].isin(["joint", "lambda0"])].groupby("id")[["p0", "p1", "p2"]].mean()
    np.testing.assert_allclose(e.loc[m.index].to_numpy(), m.to_numpy(), atol=1e-6)
    table = comparison_table(seg, cls, ["separate", "joint", "lambda0", "ensemble"])
    assert table["n_daa"].tolist() == [1] * 4 and table["balanced_accuracy"].between(0, 1).all()
    per_label = per_label_table(seg, ["separate", "joint"])
    assert set(per_label["label"]) == set(LABELS.values()) - {"background"}
    tests = paired_tests(seg, cls, [("joint", "separate")])
    assert tests["subset"].tolist() == ["all", "DAA", "DAA classified correctly"] and tests.loc[0, "n"] == 3


def _seg_frame(dice_a: list[float], dice_b: list[float]) -> pd.DataFrame:
    rows = []
    for i, (a, b) in enumerate(zip(dice_a, dice_b, strict=True)):
        for m, d in (("a", a), ("b", b)):
            rows += [{"method": m, "id": f"s{i}", "cls": i % 3, "label": lab, "name": str(lab), "dice": d,
                      "hd95": 1.0, "asd": 0.5, "precision": d} for lab in (4, 6)]
    return pd.DataFrame(rows)


def test_paired_wilcoxon_matches_scipy() -> None:
    from scipy.stats import wilcoxon

    a = [0.80, 0.82, 0.85, 0.70, 0.90, 0.77, 0.88]
    b = [0.78, 0.83, 0.80, 0.65, 0.86, 0.70, 0.80]
    res = paired_test(_seg_frame(a, b), "a", "b")
    ref = wilcoxon(a, b)
    assert res["n"] == 7 and res["p"] == pytest.approx(ref.pvalue) and res["statistic"] == pytest.approx(ref.statistic)
    assert res["mean_diff"] == pytest.approx(np.mean(np.subtract(a, b)))
    same = paired_test(_seg_frame(a, a), "a", "b")
    assert np.isnan(same["p"]) or same["p"] == pytest.approx(1.0)
    assert paired_test(_seg_frame(a, b), "a", "b", ids={"s0"})["n"] == 1


def test_sweep_table_and_subset() -> None:
    seg = _seg_frame([0.5, 0.6, 0.7], [0.4, 0.4, 0.4]).replace({"method": {"a": "sweep_0", "b": "sweep_14"}})
    cls = pd.DataFrame({"method": ["sweep_0"] * 3 + ["sweep_14"] * 3, "id": ["s0", "s1", "s2"] * 2,
                        "label": [0, 1, 2] * 2, "pred": [0, 1, 1, 0, 1, 2]})
    table = sweep_table(seg, cls, [0.0, 14.0])
    assert table["dice"].tolist() == pytest.approx([0.6, 0.4])
    assert table["balanced_accuracy"].tolist() == pytest.approx([2 / 3, 1.0])
    assert table["dice_daa"].tolist() == pytest.approx([0.7, 0.4])
    samples = [{"id": str(i), "label": lab} for i, lab in enumerate([0] * 6 + [1] * 3 + [2] * 3)]
    sub = stratified_subset(samples, 4, seed=0)
    assert len(sub) == 4 and {s["label"] for s in sub} == {0, 1, 2}
    assert stratified_subset(samples, None) == samples


def test_verdict_states_reproduced_only_with_significant_daa_gain() -> None:
    from fetalcmr.joint_report import verdict

    comparison = pd.DataFrame({"method": ["separate", "joint", "lambda0"], "balanced_accuracy": [0.95, 0.99, 0.95]})
    tests = pd.DataFrame([
        {"a": "joint", "b": "separate", "subset": "all", "n": 20, "mean_a": 0.8, "mean_b": 0.78, "mean_diff": 0.02,
         "statistic": 10.0, "p": 0.01},
        {"a": "joint", "b": "separate", "subset": "DAA classified correctly", "n": 8, "mean_a": 0.8, "mean_b": 0.7,
         "mean_diff": 0.1, "statistic": 0.0, "p": 0.008},
        {"a": "joint", "b": "lambda0", "subset": "all", "n": 20, "mean_a": 0.8, "mean_b": 0.8, "mean_diff": 0.0,
         "statistic": 50.0, "p": 0.9},
    ])
    text = verdict(comparison, tests)
    assert "balanced accuracy after joint training was REPRODUCED" in text
    assert "DAA cases was REPRODUCED" in text and "significantly better" in text
    tests.loc[1, "p"] = 0.3
    text = verdict(comparison, tests)
    assert "DAA cases was NOT reproduced" in text and "not significantly different" in text
    comparison.loc[1, "balanced_accuracy"] = 0.6
    assert "NOT kept" in verdict(comparison, tests)


def test_bundle_postprocessing_is_chosen_on_validation_lp(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ensemble's validation maps are judged against the propagated labels: a label whose stray
    pieces the LP does not have is cleaned, one whose second piece the LP has is left alone."""
    import fetalcmr.joint as joint_mod
    from fetalcmr.predict import VolumePrediction

    g = 16
    lp = np.zeros((g, g, g), np.uint8)
    lp[2:6, 2:6, 2:6] = 1
    lp[10:14, 10:14, 10:14] = 2
    lp[2:5, 11:14, 11:14] = 2  # label 2 truly has two pieces
    pred = lp.copy()
    pred[12:14, 2:4, 2:4] = 1  # a stray piece of label 1
    soft = np.stack([(pred == k).astype(np.float32) for k in range(3)])

    monkeypatch.setattr(joint_mod, "predict_volume", lambda model, image: VolumePrediction(soft, None))
    val = [{"image": np.zeros((1, g, g, g), np.float32), "lp": lp[None], "gt": None}]
    choice = joint_mod.ensemble_postprocessing([torch.nn.Identity()], val, {0: "bg", 1: "one", 2: "two"})
    assert 1 in choice.labels and 2 not in choice.labels
    assert joint_mod.ensemble_postprocessing([torch.nn.Identity()], [], {1: "one"}).labels == ()
