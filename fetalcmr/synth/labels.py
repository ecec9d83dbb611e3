"""Painting the vessel label map and making it obey the class template.

Where tubes of different vessels overlap, the later label in the painting order wins; this can
leave slivers of a vessel outside its main body (e.g. the rim of a duct's end poking through the
DAO) and, for unlucky random shapes, a contact the anatomy forbids. :func:`clean_labels` absorbs
slivers into the vessel that surrounds them and peels one voxel layer off the lower-priority
vessel of each forbidden contact, so every label is one 26-connected component and the label
adjacency graph is exactly the class template (checked by the caller, who redraws the subject if
it is not).

>>> lab = np.zeros((6, 6, 6), np.uint8); lab[1:3, 1:3, 1:3] = 1; lab[3:5, 1:3, 1:3] = 2; lab[5, 5, 5] = 1
>>> absorb_fragments(lab); int(lab[5, 5, 5])
0
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

from fetalcmr.topology import adjacency_graph

_CUBE = np.ones((3, 3, 3), dtype=bool)


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of ``mask``: ``(labels, count)``."""
    return ndimage.label(mask, structure=_CUBE)


def absorb_fragments(lab: np.ndarray) -> None:
    """Keep each label's largest component; give other pieces to their main neighbour (in place)."""
    boxes = ndimage.find_objects(lab.astype(np.int32, copy=False))
    for value, box in enumerate(boxes, start=1):
        if box is None:
            continue
        box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box)
        region = lab[box]
        cc, n = components(region == value)
        if n <= 1:
            continue
        sizes = np.bincount(cc.ravel())[1:]
        keep = int(np.argmax(sizes)) + 1
        for piece in range(1, n + 1):
            if piece == keep:
                continue
            frag = cc == piece
            ring = ndimage.binary_dilation(frag, _CUBE) & ~frag
            neigh = region[ring]
            neigh = neigh[(neigh > 0) & (neigh != value)]
            region[frag] = int(np.bincount(neigh).argmax()) if neigh.size else 0


def separate(lab: np.ndarray, forbidden: Iterable[tuple[int, int]], priority: dict[int, int]) -> bool:
    """Peel the lower-priority label off each forbidden touching pair; True if anything changed."""
    changed = False
    for a, b in forbidden:
        low, high = (a, b) if priority[a] < priority[b] else (b, a)
        near_high = ndimage.binary_dilation(lab == high, _CUBE)
        peel = near_high & (lab == low)
        if peel.any():
            lab[peel] = 0
            changed = True
    return changed


def clean_labels(lab: np.ndarray, allowed: Iterable[tuple[int, int]], priority: dict[int, int],
                 rounds: int = 3) -> None:
    """Absorb slivers and remove contacts not in ``allowed`` (in place, a few rounds)."""
    allowed = {tuple(sorted(p)) for p in allowed}
    for _ in range(rounds):
        absorb_fragments(lab)
        bad = adjacency_graph(lab) - allowed
        if not bad:
            return
        separate(lab, sorted(bad), priority)
    absorb_fragments(lab)
