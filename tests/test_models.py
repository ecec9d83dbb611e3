"""Network factories: architectures and output shapes from profile sections."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import AttentionUnet, DenseNet, DenseNet121

from fetalcmr.config import ClassifierConfig, SegmenterConfig, get_profile
from fetalcmr.models import JointNet, make_classifier, make_segmenter, min_divisor


def test_segmenter_is_an_attention_unet_with_12_outputs() -> None:
    net = make_segmenter(SegmenterConfig(channels=(2, 4, 8), strides=(2, 2), dropout=0.0))
    assert isinstance(net, AttentionUnet)
    out = net(torch.rand(1, 1, 16, 16, 16))
    assert out.shape == (1, 12, 16, 16, 16)


def test_paper_segmenter_has_the_reference_channels() -> None:
    cfg = get_profile("paper").segmenter
    net = make_segmenter(cfg)
    assert tuple(net.channels) == (32, 64, 128, 256, 512) and net.dropout == pytest.approx(0.2)
    assert min_divisor(cfg.strides) == 16


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
