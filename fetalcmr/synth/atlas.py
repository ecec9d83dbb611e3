"""Class atlases: one image + full label map per anomaly, built from the class population.

Method: the *mean-shape subject*. The parameters of the class's (training) subjects are
averaged — gestational age, calibre, the class shape parameters (isthmus ratio, minor-arch
ratio, LSA position) and the weights of the smooth deformation, which enter the anatomy
linearly, so their mean is the population's mean shape — and that subject is rendered in the
aligned space (no residual pose), without noise or bias field, with the mean tissue contrast and
a wider point-spread (an average of aligned scans is smoother than any one scan).

Why not average aligned subjects' images and majority-vote their labels, as groupwise atlas
construction does with real scans? Majority voting of thin structures across shapes that do
not overlap exactly erodes or breaks them: the minor arch of a double arch (down to 0.3 of the
dominant one) and the head-and-neck arteries would lose their connectivity, and with it the
class-defining topology the atlas must carry into label propagation. Real atlas pipelines
avoid this by iterated deformable registration, which a synthetic generator can do exactly by
averaging the deformation parameters instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fetalcmr.anatomy import CLASS_INDEX, CLASSES
from fetalcmr.synth.params import SubjectParams, mean_params
from fetalcmr.synth.subject import label_problems, render_subject
from fetalcmr.synth.thorax import Tissue

#: Field of view (mm) of the alignment template: the whole thorax, wider than the 52 mm training field.
TEMPLATE_FOV_MM: float = 80.0


@dataclass
class Atlas:
    """A class atlas on the cohort grid."""

    cls: int
    image: np.ndarray  # float32
    labelmap: np.ndarray  # uint8, labels per anatomy.LABELS
    affine: np.ndarray
    meta: dict


def build_atlas(cls: int, population: list[SubjectParams], grid: int, spacing_mm: float) -> Atlas:
    """Atlas of class ``cls`` from the parameters of that class's subjects (see module docstring)."""
    members = [p for p in population if p.cls == cls]
    if not members:
        raise ValueError(f"no subjects of class {CLASSES[cls]} to build its atlas from")
    p = mean_params(members, texture_seed=1000 + cls)
    sub = render_subject(p, grid, spacing_mm, with_binary=False)
    problems = label_problems(sub.gt, sub.trachea, cls)
    if problems:
        raise RuntimeError(f"atlas {CLASSES[cls]}: mean-shape label map breaks the class template: {problems}")
    meta = {k: v for k, v in sub.meta.items() if k not in ("binary_cut_fraction",)}
    meta["n_subjects"] = len(members)
    meta["method"] = "mean-shape rendering of the class's training subjects (averaged parameters, no pose/noise)"
    return Atlas(cls=cls, image=sub.image, labelmap=sub.gt, affine=sub.affine, meta=meta)


def build_template(population: list[SubjectParams], spacing_mm: float,
                   fov_mm: float = TEMPLATE_FOV_MM) -> Atlas:
    """The alignment template new volumes are registered to at inference (:mod:`fetalcmr.align`).

    The CoA mean-shape subject (as :func:`build_atlas`) rendered over ``fov_mm`` — the whole thorax, so
    the body outline, lungs, heart and spine fix the pose — with everything outside the body set to 0,
    as a masked reconstruction is. Its centre is the training field's centre, so the model grid centred
    on it is the arch-centred crop. Why wide and masked: against the real SVRTK thorax atlas, the 52 mm
    CoA atlas chose a turned pose (LIP) over the right one (NCC 0.53 vs 0.48), while this template finds
    the upright pose (docs/design.md §9).
    """
    coa = CLASS_INDEX["CoA"]
    members = [p for p in population if p.cls == coa]
    if not members:
        raise ValueError("no CoA subjects to build the alignment template from")
    n = int(round(fov_mm / spacing_mm))
    sub = render_subject(mean_params(members, texture_seed=2000), n, spacing_mm, with_binary=False)
    image = np.where(sub.tissue == Tissue.AMNIOTIC, 0.0, sub.image).astype(np.float32)
    meta = {"n_subjects": len(members), "fov_mm": round(n * spacing_mm, 2), "class": CLASSES[coa],
            "method": "CoA mean-shape rendering over the whole thorax, outside the body set to 0"}
    return Atlas(cls=coa, image=image, labelmap=sub.gt, affine=sub.affine, meta=meta)
