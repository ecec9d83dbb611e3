"""The anomaly class read from a vessel label map's topology: an interpretable classifier.

The rule (docs/design.md §9, issue 16) on a label map, after tiny fragments are removed:

1. no AO voxels → *undetermined* ("no arch found");
2. a loop (β1 ≥ 1) in AO∪DAO → **DAA** (the ring of a double arch);
3. otherwise the side of the trachea the arch passes on (:func:`fetalcmr.topology.arch_side`):
   right → **RAA**, left → **CoA**, both sides → **DAA** (a double arch whose ring a thin minor
   arch leaves open); no side → *undetermined*.

The trachea is a mask or its x position where known (synthetic data); otherwise it is found in
the image by :func:`trachea_from_image`. **Fallback**: an *undetermined* verdict is not a class.
Evaluations count it as an error, and :func:`disagreement` flags it for review, so the
network's class stands but a person looks at the case.

>>> ring = np.zeros((9, 9, 5), np.uint8); ring[2:7, 2:7, 2] = 4; ring[3:6, 3:6, 2] = 0
>>> classify_topology(ring).name, classify_topology(np.zeros((4, 4, 4), np.uint8)).name
('DAA', 'undetermined')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from fetalcmr.anatomy import CLASSES, LABEL_INDEX
from fetalcmr.topology import ARCH_LABELS, MIN_FRAGMENT_VOXELS, arch_side, betti_numbers, remove_fragments

#: The rule's class when it cannot decide (not an anomaly class).
UNDETERMINED: int = -1
#: Side of the trachea → class, for an arch complex without a loop.
SIDE_CLASS: dict[str, int] = {"left": 0, "right": 1, "both": 2}
AO = LABEL_INDEX["AO"]


def class_name(cls: int) -> str:
    """Return the class's name, or "undetermined"."""
    return CLASSES.get(cls, "undetermined")


@dataclass(frozen=True)
class RuleVerdict:
    """The rule's class and its evidence: AO∪DAO loops (β1) and pieces (β0), the arch side, how
    the trachea was known (``mask``, ``x``, ``image`` or ``none``) and the reason in words."""

    cls: int
    loops: int
    pieces: int
    side: str | None
    trachea: str
    reason: str

    @property
    def name(self) -> str:
        """The class's name ("undetermined" for :data:`UNDETERMINED`)."""
        return class_name(self.cls)

    def as_row(self) -> dict[str, object]:
        """Flat columns for a table (``rule_`` prefix)."""
        return {"rule_cls": self.cls, "rule_class": self.name, "rule_loops": self.loops,
                "rule_pieces": self.pieces, "rule_side": self.side or "", "rule_trachea": self.trachea,
                "rule_reason": self.reason}


def trachea_from_image(image: np.ndarray, labels: np.ndarray, *, spacing_mm: float = 0.8,
                       radius_mm: float = 2.0) -> np.ndarray:
    """Return a trachea mask found in a black-blood T2w ``image`` at the arch level of ``labels``.

    Above the carina the trachea is a bright, fluid-filled, nearly vertical tube of radius
    ≈ ``radius_mm`` inside the mediastinum, enclosed by the vessels: the arch beside it, the
    ascending aorta and SVC in front, the descending aorta behind. In each axial slice of the
    upper half of the AO's extent (the carina is about halfway up; a prediction's AO may run on
    into the head-and-neck arteries, so the arch is not simply its top) the trachea's centre is
    taken where a bright round blob of that radius responds most (negative Laplacian of Gaussian)
    among the voxels inside the convex hull of the vessels and at least one voxel from any vessel.
    The returned tube is a disc of that radius around the median centre over the slices, in each
    slice that had one. Empty without an AO.
    """
    from skimage.morphology import convex_hull_image

    img, lm = np.asarray(image, dtype=np.float64), np.asarray(labels)
    if img.shape != lm.shape:
        raise ValueError(f"trachea_from_image: image {img.shape} and labels {lm.shape} differ")
    out = np.zeros(lm.shape, bool)
    zs = np.nonzero((lm == AO).any(axis=(0, 1)))[0]
    if zs.size == 0:
        return out
    sigma = radius_mm / spacing_mm / np.sqrt(2.0)  # the LoG's strongest response to a disc of that radius
    centres: list[tuple[int, int]] = []
    slices: list[int] = []
    for z in range((int(zs.min()) + int(zs.max())) // 2, int(zs.max()) + 1):
        vessels = lm[:, :, z] > 0
        if vessels.sum() < 3:
            continue
        free = convex_hull_image(vessels) & ~ndimage.binary_dilation(vessels)
        if not free.any():
            continue
        blob = np.where(free, -ndimage.gaussian_laplace(img[:, :, z], sigma), -np.inf)
        bx, by = np.unravel_index(int(np.argmax(blob)), blob.shape)
        centres.append((int(bx), int(by)))
        slices.append(z)
    if not centres:
        return out
    cx, cy = np.median(np.asarray(centres, float), axis=0)
    x, y = np.ogrid[:lm.shape[0], :lm.shape[1]]
    disc = (x - cx) ** 2 + (y - cy) ** 2 <= max(radius_mm / spacing_mm, 1.0) ** 2
    out[:, :, slices] = disc[:, :, None]
    return out


def classify_topology(labelmap: np.ndarray, *, trachea_mask: np.ndarray | None = None,
                      trachea_x_vox: float | None = None, image: np.ndarray | None = None,
                      spacing_mm: float = 0.8, min_fragment_voxels: int = MIN_FRAGMENT_VOXELS) -> RuleVerdict:
    """Return the rule's class of ``labelmap`` (module docstring) with its evidence.

    The trachea is ``trachea_mask``, else ``trachea_x_vox``, else found in ``image``
    (:func:`trachea_from_image`, on the label map's grid with voxels of ``spacing_mm``).
    """
    lm, _ = remove_fragments(np.asarray(labelmap), min_fragment_voxels)
    b0, b1, _ = betti_numbers(np.isin(lm, ARCH_LABELS))
    source = "mask" if trachea_mask is not None else "x" if trachea_x_vox is not None else \
        "image" if image is not None else "none"
    if not (lm == AO).any():
        return RuleVerdict(UNDETERMINED, b1, b0, None, source, "no AO: no arch found")
    if b1 >= 1:
        return RuleVerdict(2, b1, b0, None, source, f"AO∪DAO closes {b1} loop(s): a ring (double arch)")
    if image is not None and source == "image":
        trachea_mask = trachea_from_image(image, lm, spacing_mm=spacing_mm)
        if not trachea_mask.any():
            return RuleVerdict(UNDETERMINED, b1, b0, None, source, "no loop, and no trachea found in the image")
    elif source == "none":
        return RuleVerdict(UNDETERMINED, b1, b0, None, source, "no loop, and the trachea is unknown")
    side = arch_side(lm, trachea_x_vox, trachea_mask)
    if side is None:
        return RuleVerdict(UNDETERMINED, b1, b0, None, source, "no loop, and the arch side is undetermined")
    cls = SIDE_CLASS[side]
    why = {"left": "no loop; the arch passes left of the trachea",
           "right": "no loop; the arch passes right of the trachea",
           "both": "no loop, but arch on both sides of the trachea: a double arch with an open ring"}[side]
    return RuleVerdict(cls, b1, b0, side, source, why)


def disagreement(network_class: int, rule_class: int) -> bool:
    """True when the case needs review: the rule is undetermined or names another class.

    >>> disagreement(2, 2), disagreement(1, 2), disagreement(0, UNDETERMINED)
    (False, True, True)
    """
    return rule_class == UNDETERMINED or int(network_class) != int(rule_class)


def balanced_accuracy_ci(truth: Sequence[int], pred: Sequence[int], *, n_boot: int = 2000,
                         alpha: float = 0.05, seed: int = 0) -> tuple[float, float, float]:
    """Return (balanced accuracy, low, high): the mean recall over the classes in ``truth`` and
    its percentile bootstrap interval, subjects resampled within each true class (seeded).

    >>> balanced_accuracy_ci([0, 0, 1, 1], [0, 0, 1, 1])
    (1.0, 1.0, 1.0)
    """
    t, p = np.asarray(truth, int), np.asarray(pred, int)
    if t.size == 0:
        return float("nan"), float("nan"), float("nan")
    hits = [(p[t == c] == c).astype(float) for c in np.unique(t)]
    rng = np.random.default_rng(seed)
    boot = np.mean([rng.choice(h, size=(n_boot, h.size)).mean(axis=1) for h in hits], axis=0)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return float(np.mean([h.mean() for h in hits])), float(lo), float(hi)
