"""One synthetic subject: image, true vessel labels, manual mask, trachea and metadata.

>>> s = generate_subject(2, seed=0, grid=48, spacing_mm=52 / 48)
>>> s.gt.shape, s.meta["arch_side"]
((48, 48, 48), 'both')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fetalcmr.anatomy import ARCH_LOOPS, ARCH_SIDE, CLASSES, EXPECTED_CONTACTS, LABEL_INDEX, N_LABELS
from fetalcmr.synth.appearance import render_image
from fetalcmr.synth.geometry import Grid, Pose
from fetalcmr.synth.labels import clean_labels
from fetalcmr.synth.manual import manual_mask
from fetalcmr.synth.params import SubjectParams, sample_params
from fetalcmr.synth.randomise import randomise_appearance
from fetalcmr.synth.thorax import heart_inside, thorax_tissues
from fetalcmr.synth.vessels import PAINT_ORDER, vessel_tree
from fetalcmr.topology import adjacency_graph, arch_side, betti_numbers, components_per_label

#: Field of view of the reference's 80³ input (mm); every profile's grid covers about this.
FOV_MM: float = 52.0
#: Distance (mm) around the vessels over which their soft-tissue sleeve is drawn.
SLEEVE_MM: float = 2.5
_PRIORITY = {label: i for i, label in enumerate(PAINT_ORDER)}
#: Vessels whose labels stop at the heart's surface (inside it they are heart blood pool, as in the
#: manual masks and the real heart's organ label): the great arteries' roots and the SVC's entry.
ENDS_AT_HEART: tuple[int, ...] = (LABEL_INDEX["AO"], LABEL_INDEX["MPA"], LABEL_INDEX["SVC"])


@dataclass
class Subject:
    """A synthetic subject on a centred RAS grid (arrays ``[x, y, z]``)."""

    image: np.ndarray  # float32, raw scanner scale
    gt: np.ndarray  # uint8 label map, labels per anatomy.LABELS
    binary: np.ndarray  # uint8 imperfect manual vessel mask
    trachea: np.ndarray  # uint8 trachea (above the carina)
    meta: dict[str, Any]
    affine: np.ndarray  # voxel-to-world (RAS, diagonal spacing, centred)
    params: SubjectParams
    tissue: np.ndarray  # uint8 tissue classes (thorax.Tissue), for checks and figures; not written


def label_problems(gt: np.ndarray, trachea: np.ndarray, cls: int) -> list[str]:
    """Ways ``gt`` departs from the class template (empty when it matches docs/design.md §9)."""
    problems = []
    comps = components_per_label(gt, range(1, N_LABELS))
    bad = {k: v for k, v in comps.items() if v != 1}
    if bad:
        problems.append(f"labels not exactly one component: {bad}")
    graph = adjacency_graph(gt)
    if graph != set(EXPECTED_CONTACTS[cls]):
        problems.append(f"contacts differ: extra {sorted(graph - EXPECTED_CONTACTS[cls])}, "
                        f"missing {sorted(EXPECTED_CONTACTS[cls] - graph)}")
    loops = betti_numbers(np.isin(gt, (LABEL_INDEX["AO"], LABEL_INDEX["DAO"])))[1]
    if loops != ARCH_LOOPS[cls]:
        problems.append(f"AO∪DAO has {loops} loops, expected {ARCH_LOOPS[cls]}")
    side = arch_side(gt, trachea_mask=trachea.astype(bool))
    if side != ARCH_SIDE[cls]:
        problems.append(f"arch passes {side} of the trachea, expected {ARCH_SIDE[cls]}")
    return problems


def render_subject(p: SubjectParams, grid: int, spacing_mm: float, *, with_binary: bool = True) -> Subject:
    """Render the subject described by ``p`` on a ``grid``³ volume at ``spacing_mm``."""
    g = Grid(grid, spacing_mm)
    pose = Pose.identity() if p.noise_free else Pose.from_params(p.pose_angles_deg, p.pose_shift_mm)
    tree = vessel_tree(p)
    gt = np.zeros(g.shape, dtype=np.uint8)
    coords = g.anatomical_coords(pose)
    vessel_sdf = g.empty_sdf()
    for label in PAINT_ORDER:
        sdf = g.empty_sdf()
        for tube in tree.tubes[label]:
            g.paint_tube_sdf(sdf, tube, pose, pad_mm=SLEEVE_MM, min_radius=0.9 * spacing_mm)
        gt[sdf < 0] = label
        np.minimum(vessel_sdf, sdf, out=vessel_sdf)
    gt[np.isin(gt, ENDS_AT_HEART) & heart_inside(p, coords)] = 0
    clean_labels(gt, EXPECTED_CONTACTS[p.cls], _PRIORITY)
    roots = []
    hilum = ((LABEL_INDEX["LPA"], 0), (LABEL_INDEX["RPA"], 0), (LABEL_INDEX["PV"], 1), (LABEL_INDEX["PV"], 2))
    for label, index in hilum:
        pts = tree.tubes[label][index].points
        roots.append((pts[-1], pts[-1] - pts[-3]))
    tissues, trachea, overlays = thorax_tissues(p, g, pose, coords, vessel_sdf, roots)
    image = render_image(tissues, p, spacing_mm, overlays)
    cuts: dict[str, float] = {}
    if with_binary:
        binary, cuts = manual_mask(gt, tree.tubes, g, pose, np.random.default_rng([p.texture_seed, 2]))
    else:
        binary = (gt > 0).astype(np.uint8)
    marks = {k: g.to_voxel(pose.to_world(v)) for k, v in tree.landmarks.items()}
    zi = int(np.clip(round(float(marks["arch_level"][2])), 0, grid - 1))
    xs = np.nonzero(trachea[:, :, zi])[0]
    tx_vox = float(xs.mean()) if xs.size else float(marks["arch_level"][0])
    meta: dict[str, Any] = {
        "class": CLASSES[p.cls],
        "ga_weeks": round(p.ga_weeks, 2),
        "arch_side": ARCH_SIDE[p.cls],
        "trachea_x_vox": round(tx_vox, 2),
        "calibre_scale": round(p.calibre * p.scale, 4),
        "pose_rotation_deg": [round(float(a), 3) for a in p.pose_angles_deg],
        "pose_translation_mm": [round(float(t), 3) for t in p.pose_shift_mm],
        "psf_sigma_mm": round(p.appearance["psf_sigma_mm"], 3),
        "noise_sd_rel_lung": 0.0 if p.noise_free else round(p.appearance["noise"], 4),
        "landmarks_vox": {k: [round(float(c), 2) for c in v] for k, v in marks.items()},
    }
    if p.cls == 0:
        meta["coa_isthmus_ratio"] = round(p.coa_isthmus_ratio, 4)
        meta["lsa_distal_shift"] = round(p.lsa_shift, 4)
    if p.cls == 2:
        meta["daa_minor_ratio"] = round(p.daa_minor_ratio, 4)
    if with_binary:
        meta["binary_cut_fraction"] = cuts
    return Subject(image=image, gt=gt, binary=binary, trachea=trachea.astype(np.uint8), meta=meta,
                   affine=g.affine, params=p, tissue=tissues)


def generate_subject(cls: int, seed: int, grid: int = 64, spacing_mm: float = 0.8, *,
                     randomise: bool = False, max_attempts: int = 20) -> Subject:
    """Generate a subject of class ``cls`` (0 CoA, 1 RAA, 2 DAA), deterministic in ``seed``.

    Shapes are drawn until the label map matches the class template (one component per label,
    exact contact graph, arch loops and side); the number of draws is ``meta["attempts"]``.
    ``randomise`` redraws the appearance (:mod:`fetalcmr.synth.randomise`), keeping the anatomy.
    """
    if cls not in CLASSES:
        raise ValueError(f"unknown anomaly class {cls}; expected one of {sorted(CLASSES)}")
    rng = np.random.default_rng([int(seed), int(cls)])
    problems: list[str] = []
    for attempt in range(1, max_attempts + 1):
        p = sample_params(cls, rng)
        if randomise:
            p.appearance = randomise_appearance(p.appearance, np.random.default_rng([p.texture_seed, 3]))
        sub = render_subject(p, grid, spacing_mm)
        problems = label_problems(sub.gt, sub.trachea, cls)
        if not problems:
            sub.meta["attempts"] = attempt
            sub.meta["seed"] = int(seed)
            sub.meta["randomised"] = randomise
            return sub
    raise RuntimeError(f"class {CLASSES[cls]} seed {seed}: no valid anatomy in {max_attempts} draws "
                       f"at {grid}³ × {spacing_mm:.3f} mm; last problems: {problems}")
