"""Network factories: the Attention U-Net segmenter, the DenseNet classifier and the joint pair
(docs/design.md §4). Sizes come from the profile's stage sections.

>>> from fetalcmr.config import get_profile
>>> net = make_segmenter(get_profile("smoke").segmenter)
>>> net.out_channels
12
"""

from __future__ import annotations

import numpy as np
import torch
from monai.networks.nets import AttentionUnet, DenseNet, DenseNet121, UNet
from torch import nn

from fetalcmr.anatomy import N_CLASSES, N_LABELS
from fetalcmr.config import ClassifierConfig, SegmenterConfig


def make_segmenter(cfg: SegmenterConfig, out_channels: int = N_LABELS) -> nn.Module:
    """Return a 3D MONAI ``AttentionUnet`` (or ``UNet`` for ``arch="unet"``), 1 input channel, 12 outputs.

    The reference uses the Attention U-Net. On 2 CPU cores, within the default profile's budget,
    MONAI's AttentionUnet (8–128 channels) had not learned to tell the vessels apart after 300
    steps (test Dice 0 for AO, DAO and MPA) while MONAI's UNet with residual units reached
    0.76/0.74/0.80 in 200 steps on the same data; the default profile therefore uses the UNet.
    """
    if cfg.arch == "attention_unet":
        return AttentionUnet(spatial_dims=3, in_channels=1, out_channels=out_channels,
                             channels=tuple(cfg.channels), strides=tuple(cfg.strides), kernel_size=3,
                             dropout=cfg.dropout)
    if cfg.arch == "unet":
        return UNet(spatial_dims=3, in_channels=1, out_channels=out_channels, channels=tuple(cfg.channels),
                    strides=tuple(cfg.strides), kernel_size=3, num_res_units=1, dropout=cfg.dropout)
    raise ValueError(f"unknown segmenter arch {cfg.arch!r}; choose 'attention_unet' or 'unet'")


def make_classifier(cfg: ClassifierConfig, in_channels: int, out_channels: int = N_CLASSES) -> nn.Module:
    """Return a 3D MONAI ``DenseNet121`` (instance norm) or, for ``arch="small"``, a small ``DenseNet``."""
    if cfg.arch == "densenet121":
        return DenseNet121(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                           norm="instance", dropout_prob=cfg.dropout)
    if cfg.arch == "small":
        return DenseNet(spatial_dims=3, in_channels=in_channels, out_channels=out_channels,
                        init_features=cfg.init_features, growth_rate=cfg.growth_rate,
                        block_config=tuple(cfg.block_config), norm="instance", dropout_prob=cfg.dropout)
    raise ValueError(f"unknown classifier arch {cfg.arch!r}; choose 'densenet121' or 'small'")


def divisor(model: nn.Module) -> int:
    """Return the factor every spatial size of ``model``'s input must divide: the product of its
    U-Net's strides (a :class:`JointNet`'s segmenter), 1 for a network without strides.

    ``DistributedDataParallel``/``DataParallel`` wrappers are looked through.

    >>> from fetalcmr.config import get_profile
    >>> divisor(make_segmenter(get_profile("paper").segmenter))
    16
    """
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    net = model.segmenter if isinstance(model, JointNet) else model
    out = 1
    for s in getattr(net, "strides", None) or ():
        out *= int(np.prod(s))
    return out


class JointNet(nn.Module):
    """Segmenter followed by a classifier reading its softmax (and the image): returns both logits.

    Gradients of the classification loss flow into the segmenter through the softmax.
    """

    def __init__(self, segmenter: nn.Module, classifier: nn.Module, with_image: bool = True) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.classifier = classifier
        self.with_image = with_image

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(segmentation logits [B,12,...], class logits [B,3])`` for ``image`` [B,1,...]."""
        seg_logits = self.segmenter(image)
        soft = torch.softmax(seg_logits.float(), dim=1)
        cls_in = torch.cat([soft, image.to(soft.dtype)], dim=1) if self.with_image else soft
        return seg_logits, self.classifier(cls_in)
