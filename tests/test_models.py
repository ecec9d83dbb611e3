"""Network factories: architectures and output shapes from profile sections."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from monai.networks.nets import AttentionUnet, DenseNet, DenseNet121, UNet

from fetalcmr.config import ClassifierConfig, SegmenterConfig, get_profile
from fetalcmr.models import JointNet, divisor, make_classifier, make_segmenter


def test_segmenter_is_an_attention_unet_with_12_outputs() -> None:
    net = make_segmenter(SegmenterConfig(channels=(2, 4, 8), strides=(2, 2), dropout=0.0))
    assert isinstance(net, AttentionUnet)
    out = net(torch.rand(1, 1, 16, 16, 16))
    assert out.shape == (1, 12, 16, 16, 16)


def test_paper_segmenter_has_the_reference_channels() -> None:
    cfg = get_profile("paper").segmenter
    net = make_segmenter(cfg)
    assert tuple(net.channels) == (32, 64, 128, 256, 512) and net.dropout == pytest.approx(0.2)
    assert divisor(net) == 16



def test_default_profile_segmenter_builds_and_trains_one_step(tmp_path: Path) -> None:
    """The default profile's segmenter, built and trained as the pipeline does (one 48³ patch, one step)."""
    from fetalcmr.segmentation import METHOD, train_config
    from fetalcmr.train import seed_everything, train

    cfg = get_profile("default").segmenter
    assert cfg.arch == "unet" and cfg.patch == 48
    lp = np.zeros((64, 64, 64), np.uint8)  # the default cohort grid
    lp[20:30, 25:35, 10:54] = 4
    lp[34:44, 25:35, 10:54] = 6
    sample = {"id": "s", "image": np.where(lp > 0, 0.1, 0.9).astype(np.float32)[None], "lp": lp[None],
              "binary": (lp > 0).astype(np.uint8)[None], "label": 0, "affine": np.eye(4)}
    tcfg = dataclasses.replace(train_config(cfg, METHOD, seed=0), epochs=1, batch_size=1)
    result = train(lambda: make_segmenter(cfg), [sample], [], tcfg, tmp_path, progress=False)
    net = result.model
    assert isinstance(net, UNet) and tuple(net.channels) == cfg.channels and tuple(net.strides) == cfg.strides
    assert net.num_res_units == 1 and net.dropout == pytest.approx(cfg.dropout)
    assert len(result.history) == 1 and np.isfinite(result.history["train_loss"].iloc[0])
    seed_everything(tcfg.seed)  # the engine builds the network after seeding: the same initial weights
    start = make_segmenter(cfg).state_dict()
    trained = net.state_dict()
    changed = [k for k in start if start[k].is_floating_point() and not torch.equal(start[k], trained[k])]
    assert len(changed) > 0.9 * sum(t.is_floating_point() for t in start.values())
    with torch.no_grad():
        assert net.eval()(torch.rand(2, 1, 32, 32, 32)).shape == (2, 12, 32, 32, 32)


def test_classifiers() -> None:
    small = make_classifier(ClassifierConfig(arch="small", init_features=4, growth_rate=4, block_config=(2, 2)),
                            in_channels=13)
    assert isinstance(small, DenseNet)
    small.eval()
    assert small(torch.rand(2, 13, 16, 16, 16)).shape == (2, 3)
    assert isinstance(make_classifier(ClassifierConfig(), in_channels=1), DenseNet121)
    with pytest.raises(ValueError, match="unknown classifier arch"):
        make_classifier(ClassifierConfig(arch="resnet"), in_channels=1)


def test_joint_net_feeds_softmax_and_image_and_passes_gradients() -> None:
    seg = make_segmenter(SegmenterConfig(channels=(2, 4), strides=(2,), dropout=0.0))
    cls = make_classifier(ClassifierConfig(arch="small", init_features=4, growth_rate=4, block_config=(2,),
                                           dropout=0.0), in_channels=13)
    joint = JointNet(seg, cls)
    seg_logits, cls_logits = joint(torch.rand(2, 1, 16, 16, 16))
    assert seg_logits.shape == (2, 12, 16, 16, 16) and cls_logits.shape == (2, 3)
    torch.nn.functional.cross_entropy(cls_logits, torch.tensor([0, 2])).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in seg.parameters())


@pytest.mark.parametrize(("arch", "strides", "expected"), [("attention_unet", (2, 2), 4), ("unet", (2, 2, 2), 8),
                                                            ("unet", (2, 1, 2), 4)])
def test_divisor_is_the_product_of_the_segmenter_strides_whatever_wraps_it(
        arch: str, strides: tuple[int, ...], expected: int, tmp_path: Path) -> None:
    seg = make_segmenter(SegmenterConfig(arch=arch, channels=(2,) * (len(strides) + 1), strides=strides, dropout=0.0))
    cls = make_classifier(ClassifierConfig(arch="small", init_features=4, growth_rate=4, block_config=(2,)),
                          in_channels=13)
    joint = JointNet(seg, cls)
    assert divisor(seg) == divisor(joint) == divisor(torch.nn.DataParallel(joint)) == expected
    assert divisor(cls) == 1  # no strides: any size
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo", init_method=(tmp_path / "store").as_uri(), rank=0, world_size=1)
    try:
        assert divisor(torch.nn.parallel.DistributedDataParallel(joint)) == expected
        assert divisor(torch.nn.parallel.DistributedDataParallel(seg)) == expected
    finally:
        if started:
            dist.destroy_process_group()
