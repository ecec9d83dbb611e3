"""The ``paper`` profile cannot rot: one optimisation step of every stage at its sizes, on CPU.

80³ volumes, VoxelMorph with five levels (80 does not halve five times: the inputs are padded),
the Attention U-Net 32–512, DenseNet121 and their joint pair, each trained one step on one
generated subject through the same code the pipeline runs. ``make bench SECTIONS=paper`` times
these steps.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from fetalcmr.config import get_profile
from fetalcmr.synth import generate_subject

PAPER = get_profile("paper")
GRID = PAPER.cohort.grid

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def subject():  # type: ignore[no-untyped-def]
    """One generated DAA subject on the paper's grid (80³ at 0.65 mm)."""
    return generate_subject(2, seed=3, grid=GRID, spacing_mm=PAPER.cohort.spacing_mm)


def _changed_share(before: dict[str, torch.Tensor], model: torch.nn.Module) -> float:
    after = model.state_dict()
    floats = [k for k in before if before[k].is_floating_point()]
    return sum(not torch.equal(before[k], after[k]) for k in floats) / len(floats)


def _volume(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]


def test_velocity_field_pads_to_the_network_divisor_and_crops_back() -> None:
    from fetalcmr.propagation import build_model, registration_divisor, velocity_field

    small = dataclasses.replace(PAPER.propagation, nb_features=(4, 4, 4, 4, 4))
    model = build_model(small).eval()
    assert registration_divisor(model) == 2 ** len(small.nb_features) == 32
    torch.manual_seed(0)
    a, b = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():  # a grid that divides passes unchanged
        assert torch.equal(velocity_field(model, a, b), model(a, b, return_field_type="velocity"))
        odd = velocity_field(model, torch.rand(1, 1, 40, 36, 33), torch.rand(1, 1, 40, 36, 33))
    assert odd.shape == (1, 3, 40, 36, 33) and torch.isfinite(odd).all()


def test_label_propagation_trains_one_step_at_80(subject) -> None:  # type: ignore[no-untyped-def]
    from fetalcmr.propagation import AtlasData, SubjectData, build_model, train_registration

    cfg = dataclasses.replace(PAPER.propagation, iterations=1)
    assert cfg.grid == GRID and len(cfg.nb_features) == 5  # 80 is not a multiple of 2**5
    image, fg = _volume(subject.image), _volume(subject.gt > 0)
    atlas = AtlasData(cls=2, image_path="atlas", labelmap=subject.gt, affine=np.eye(4),
                      image_reg=torch.roll(image, 2, dims=2), fg_reg=torch.roll(fg, 2, dims=2))
    data = SubjectData(id="s", split="training", cls=2, image_path="s", affine_world=np.eye(4),
                       shape=(GRID,) * 3, image_reg=image, binary_reg=fg)
    torch.manual_seed(0)
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model, history = train_registration([data], {2: atlas}, cfg, progress=False, model=model)
    assert len(history) == 1 and np.isfinite(history["loss"].iloc[0])
    assert _changed_share(before, model) > 0.9


def _segmentation_sample(subject) -> dict:  # type: ignore[no-untyped-def]
    lp = np.roll(subject.gt, 1, axis=0)  # stands in for propagated labels (never the truth itself)
    return {"id": "s", "image": subject.image.astype(np.float32)[None], "lp": lp[None].astype(np.uint8),
            "binary": (subject.binary > 0).astype(np.uint8)[None], "label": 2, "affine": np.eye(4)}


def test_attention_unet_trains_one_step_at_80(subject, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from monai.networks.nets import AttentionUnet

    from fetalcmr.models import make_segmenter
    from fetalcmr.segmentation import METHOD, train_config
    from fetalcmr.train import train

    cfg = PAPER.segmenter
    assert cfg.arch == "attention_unet" and cfg.channels == (32, 64, 128, 256, 512) and cfg.patch is None
    tcfg = dataclasses.replace(train_config(cfg, METHOD, seed=0), epochs=1, batch_size=1)
    result = train(lambda: make_segmenter(cfg), [_segmentation_sample(subject)], [], tcfg, tmp_path,
                   progress=False)
    assert isinstance(result.model, AttentionUnet)
    assert len(result.history) == 1 and np.isfinite(result.history["train_loss"].iloc[0])


def test_densenet121_trains_one_step_at_80(subject, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from monai.networks.nets import DenseNet121

    from fetalcmr.anatomy import N_LABELS
    from fetalcmr.classification import train_classifier

    cfg = dataclasses.replace(PAPER.classifier, epochs=1, batch_size=1)
    assert cfg.arch == "densenet121" and cfg.grid is None  # reads the full 80³ grid
    softmax = np.eye(N_LABELS, dtype=np.float32)[subject.gt].transpose(3, 0, 1, 2)
    sample = {"id": "s", "image": subject.image.astype(np.float32)[None], "extra": softmax, "label": 2}
    result = train_classifier(cfg, "softmax+image", [sample], [], tmp_path, seed=0, progress=False)
    assert any(isinstance(m, DenseNet121) for m in result.model.modules())
    assert len(result.history) == 1 and np.isfinite(result.history["train_loss"].iloc[0])


def test_joint_pair_fine_tunes_one_step_at_80(subject, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from fetalcmr.joint import KIND, build_joint, fine_tune, joint_train_config

    tcfg = dataclasses.replace(joint_train_config(PAPER.joint, PAPER.segmenter, lam=PAPER.joint.lam, epochs=1,
                                                  seed=0), batch_size=1)
    torch.manual_seed(0)
    start = build_joint(PAPER.segmenter, PAPER.classifier, KIND)
    before = {k: v.clone() for k, v in start.state_dict().items()}
    result = fine_tune(lambda: build_joint(PAPER.segmenter, PAPER.classifier, KIND, seg_state=start.segmenter
                                           .state_dict(), cls_state=start.classifier.state_dict()),
                       [_segmentation_sample(subject)], [], tcfg, tmp_path, start_key="paper", progress=False)
    assert len(result.history) == 1 and np.isfinite(result.history["train_loss"].iloc[0])
    assert _changed_share(before, result.model) > 0.5


def test_paper_bench_times_every_stage_and_its_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    """``make bench SECTIONS=paper`` (here on tiny networks standing in for the paper's): one step
    time per stage, and the schedule's hours from it."""
    import math

    from fetalcmr import config
    from fetalcmr.config import ClassifierConfig
    from fetalcmr.stage_bench import paper_step_costs

    tiny = dataclasses.replace(
        PAPER, cohort=dataclasses.replace(PAPER.cohort, grid=16),
        propagation=dataclasses.replace(PAPER.propagation, grid=16, nb_features=(2, 2, 2)),
        segmenter=dataclasses.replace(PAPER.segmenter, channels=(2, 4), strides=(2,)),
        classifier=ClassifierConfig(arch="small", init_features=2, growth_rate=2, block_config=(1,)))
    monkeypatch.setattr(config, "get_profile", lambda name: tiny)
    costs = paper_step_costs("cpu", repeat=1)
    assert costs["device"] == "cpu" and costs["grid"] == 16
    n_train = round(tiny.cohort.n_subjects * tiny.cohort.split_fractions[0])
    batches = {"segmenter": tiny.segmenter.batch_size, "classifier": tiny.classifier.batch_size,
               "joint": tiny.joint.batch_size}
    epochs = {"segmenter": tiny.segmenter.epochs, "classifier": tiny.classifier.epochs, "joint": tiny.joint.epochs}
    for stage, bs in batches.items():
        step = costs[f"{stage}_step_s"]
        assert step > 0 and costs[f"{stage}_train_h"] == pytest.approx(step * epochs[stage] * math.ceil(n_train / bs)
                                                                        / 3600)
    assert costs["propagation_train_h"] == pytest.approx(costs["propagation_step_s"] * tiny.propagation.iterations
                                                         / 3600)
