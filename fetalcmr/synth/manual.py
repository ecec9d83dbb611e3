"""Imperfect "manual" binary vessel masks, as a clinician would draw them (docs/design.md §9).

Two kinds of error are simulated on the union of the true vessel labels:

* boundaries off by one voxel in places: a smooth random field chooses patches where the mask
  is dilated or eroded by one voxel;
* distal ends of the small branches (head-and-neck arteries, branch pulmonary arteries,
  pulmonary veins, SVC) cut at varying lengths: a random fraction of each end tube is dropped.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from fetalcmr.anatomy import LABEL_INDEX
from fetalcmr.synth.appearance import smooth_field
from fetalcmr.synth.geometry import Grid, Pose, Tube

#: Labels whose distal ends annotators cut at varying lengths.
CUT_LABELS: tuple[int, ...] = tuple(LABEL_INDEX[n] for n in ("SVC", "LPA", "RPA", "LSA", "BCA", "LCCA", "PV"))
#: Largest fraction of an end tube's length that may be left out.
MAX_CUT_FRACTION: float = 0.4
#: Fraction of the vessel surface shifted outwards, and inwards, by one voxel.
BOUNDARY_FRACTION: float = 0.15


def manual_mask(gt: np.ndarray, tubes: dict[int, list[Tube]], grid: Grid, pose: Pose,
                rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """Return the imperfect binary mask (uint8) and the cut fraction applied to each label."""
    union = gt > 0
    fractions: dict[str, float] = {}
    for label in CUT_LABELS:
        f = float(rng.uniform(0.0, MAX_CUT_FRACTION))
        fractions[str(label)] = round(f, 3)
        for tube in tubes.get(label, []):
            arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(tube.points, axis=0), axis=1))])
            start = int(np.searchsorted(arc, (1.0 - f) * arc[-1]))
            if start >= len(arc) - 1:
                continue
            distal = Tube(tube.points[start:], tube.radii[start:] + grid.spacing)
            sdf = grid.empty_sdf()
            grid.paint_tube_sdf(sdf, distal, pose)
            union &= ~((sdf < 0) & (gt == label))
    field = smooth_field(rng, grid.shape, 4.0)
    t = float(np.quantile(field, 1.0 - BOUNDARY_FRACTION))
    grown = ndimage.binary_dilation(union)
    shrunk = ndimage.binary_erosion(union)
    out = np.where(field > t, grown, np.where(field < -t, shrunk, union))
    return out.astype(np.uint8), fractions
