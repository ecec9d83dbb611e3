"""Training losses: the weakly supervised segmentation loss (propagated labels + manual binary
mask) and the joint segmentation + classification loss (docs/design.md §4).

Segmentation loss on the softmax ``p`` of the 12 logits::

    L = DiceCE(p, onehot(lp)) + w(epoch) * DiceCE([p_0, sum_{c>0} p_c], onehot(binary))

The binary term sees only the foreground sum, so the manual mask constrains the vessel region
while the propagated labels decide which vessel is which. ``w`` grows during training
(reference: start 1, +0.05 every 50 epochs).

>>> import torch
>>> loss = SegmentationLoss("lp+binary")
>>> logits = torch.zeros(1, 12, 4, 4, 4)
>>> total, parts = loss(logits, lp=torch.zeros(1, 4, 4, 4), binary=torch.zeros(1, 4, 4, 4), epoch=0)
>>> sorted(parts)
['binary', 'binary_weight', 'lp']
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

#: Supervision modes of the segmenter: the method, LP alone, manual masks alone.
TARGETS: tuple[str, ...] = ("lp+binary", "lp", "binary")


def binary_weight_at(epoch: int, schedule: tuple[float, float, int]) -> float:
    """Return the binary-term weight at ``epoch`` for ``schedule = (start, increment, every)``.

    >>> binary_weight_at(120, (1.0, 0.05, 50))
    1.1
    """
    start, increment, every = schedule
    return float(start) + float(increment) * (int(epoch) // max(int(every), 1))


def _dice_ce_from_log_probs(log_probs: torch.Tensor, target: torch.Tensor, dice: DiceLoss) -> torch.Tensor:
    """Dice (on probabilities) + cross-entropy (mean NLL) for ``log_probs`` [B,C,...], ``target`` [B,...]."""
    target = target.long()
    ce = F.nll_loss(log_probs, target)
    return dice(log_probs.exp(), target.unsqueeze(1)) + ce


def foreground_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Return log [p_background, sum of foreground probabilities] ([B,2,...]) from 12-class logits."""
    log_p = torch.log_softmax(logits.float(), dim=1)
    return torch.cat([log_p[:, :1], torch.logsumexp(log_p[:, 1:], dim=1, keepdim=True)], dim=1)


class SegmentationLoss:
    """DiceCE against ``lp`` plus ``w(epoch)`` × DiceCE of [background, foreground sum] against ``binary``.

    ``targets``: ``"lp+binary"`` (the method), ``"lp"`` (propagated labels only) or
    ``"binary"`` (manual masks only: only the binary term).
    """

    def __init__(self, targets: str = "lp+binary",
                 binary_weight: tuple[float, float, int] = (1.0, 0.05, 50)) -> None:
        if targets not in TARGETS:
            raise ValueError(f"unknown segmentation targets {targets!r}; choose one of {TARGETS}")
        self.targets = targets
        self.schedule = tuple(binary_weight)
        # MONAI's Dice (smooth 1e-5, background included, mean over batch and channels)
        self._dice = DiceLoss(to_onehot_y=True, softmax=False)

    @property
    def uses_lp(self) -> bool:
        """True when the loss reads the propagated labels."""
        return "lp" in self.targets.split("+")

    @property
    def uses_binary(self) -> bool:
        """True when the loss reads the manual binary masks."""
        return "binary" in self.targets.split("+")

    def lp_term(self, logits: torch.Tensor, lp: torch.Tensor) -> torch.Tensor:
        """Return DiceCE of softmax(``logits``) against the multi-class ``lp`` [B,...]."""
        return _dice_ce_from_log_probs(torch.log_softmax(logits.float(), dim=1), lp, self._dice)

    def binary_term(self, logits: torch.Tensor, binary: torch.Tensor) -> torch.Tensor:
        """Return DiceCE of [background, foreground sum] against ``binary`` [B,...] (0/1)."""
        return _dice_ce_from_log_probs(foreground_log_probs(logits), (binary > 0).long(), self._dice)

    def __call__(self, logits: torch.Tensor, *, lp: torch.Tensor | None, binary: torch.Tensor | None,
                 epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Return the total loss and its parts (``lp``, ``binary``, ``binary_weight``) as floats."""
        parts: dict[str, float] = {}
        total = logits.new_zeros((), dtype=torch.float32)
        if self.uses_lp:
            if lp is None:
                raise ValueError("segmentation targets include 'lp' but the batch has no 'lp'")
            term = self.lp_term(logits, lp)
            parts["lp"] = float(term.detach())
            total = total + term
        if self.uses_binary:
            if binary is None:
                raise ValueError("segmentation targets include 'binary' but the batch has no 'binary'")
            w = binary_weight_at(epoch, self.schedule) if self.uses_lp else 1.0
            term = self.binary_term(logits, binary)
            parts["binary"] = float(term.detach())
            parts["binary_weight"] = w
            total = total + w * term
        return total, parts


def joint_loss(seg_loss: torch.Tensor, class_logits: torch.Tensor, labels: torch.Tensor,
               lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(seg_loss + lam * CE(class_logits, labels), CE)`` (the reference's λ = 14)."""
    ce = F.cross_entropy(class_logits.float(), labels.long())
    return seg_loss + float(lam) * ce, ce
