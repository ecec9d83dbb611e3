"""Structures around the great vessels: body wall, lungs with hilar branches, airways,
oesophagus, heart, thymus, spine, ribs, liver and stomach, as a tissue-class volume.

These make the synthetic image a fetal thorax rather than vessels on a blank background: the
vessels are not the only dark structures (the heart is a large dark blood pool with a thin
grey wall, as measured on a real thorax, and pulmonary hilar branches are dark blood too) and
not the only tubes (airways are bright fluid-filled tubes, ribs dark).
All shapes are placed with the subject's scale and smooth deformation, then seen through the
residual pose via the anatomical coordinates of the voxels.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

from fetalcmr.synth.geometry import Grid, Pose, Tube, catmull_rom, ellipsoid_value, rotation_z
from fetalcmr.synth.params import SubjectParams


class Tissue(IntEnum):
    """Tissue classes of the synthetic thorax (intensities in :mod:`fetalcmr.synth.appearance`)."""

    AMNIOTIC = 0
    SUBCUTANEOUS = 1
    MUSCLE = 2
    LUNG = 3
    MEDIASTINUM = 4
    THYMUS = 5
    LIVER = 6
    STOMACH = 7
    MYOCARDIUM = 8
    BLOOD = 9
    VERTEBRA = 10
    DISC = 11
    CSF = 12
    CORD = 13
    RIB = 14
    OESOPHAGUS = 15
    AIRWAY = 16


#: Reference (30-week) body centre and body and pleural-cavity radii (mm), and the heart
#: (centre, radii, long-axis angle about z, wall thickness), sized against the vessels as
#: measured on a real thorax (docs/design.md §9): lungs ~14 and the body ~16 DAO diameters
#: across, the heart ~7.6 × 7.6 × 6 DAO diameters and ~2/3 blood pool.
BODY_CENTRE: tuple[float, float, float] = (0.0, 3.5, 0.0)
BODY_RADII: tuple[float, float] = (33.5, 35.0)
CAVITY_RADII: tuple[float, float] = (29.0, 28.0)
HEART_CENTRE: tuple[float, float, float] = (-4.5, 14.0, -10.5)
HEART_RADII: tuple[float, float, float] = (18.0, 13.5, 12.4)
HEART_AXIS_DEG: float = 135.0
HEART_WALL_MM: float = 1.8


def heart_inside(p: SubjectParams, coords: np.ndarray) -> np.ndarray:
    """Boolean mask of the heart (myocardium and blood pool, not the pericardium) at anatomical ``coords``.

    The great arteries' labels stop at its surface (:func:`fetalcmr.synth.subject.render_subject`): their
    roots inside it are heart blood pool, as the real heart's organ label contains them.
    """
    return ellipsoid_value(coords, p.place(np.array(HEART_CENTRE)), np.array(HEART_RADII) * p.scale,
                           rotation_z(HEART_AXIS_DEG)) < 1


def _airway_tubes(p: SubjectParams) -> tuple[list[Tube], list[tuple[np.ndarray, np.ndarray]]]:
    """Trachea and main bronchi (placed) and the bronchus ends with directions (for branching)."""
    tx = p.trachea_x_mm / p.scale
    s = p.scale
    trachea = catmull_rom(p.place(np.array([(tx, 1.2, 30), (tx, 1, 16), (tx, 1, 6), (tx, 1, 1)])),
                          np.array([2.0, 2.0, 2.0, 1.9]) * s)
    left = catmull_rom(p.place(np.array([(tx, 1, 1), (-6, 0, -3), (-12, -1, -7), (-18, -2, -10)])),
                       np.array([1.6, 1.4, 1.2, 1.0]) * s)
    right = catmull_rom(p.place(np.array([(tx, 1, 1), (5, -0.5, -2), (11, -2.5, -5), (17, -4, -8)])),
                        np.array([1.6, 1.4, 1.2, 1.0]) * s)
    ends = [(left.points[-1], left.points[-1] - left.points[-3]),
            (right.points[-1], right.points[-1] - right.points[-3])]
    return [trachea, left, right], ends


def _tree(rng: np.random.Generator, root: np.ndarray, direction: np.ndarray, radius: float,
          length: float, depth: int) -> list[Tube]:
    """A random bifurcating tree of straight, tapering tubes (lung vessels or bronchi)."""
    direction = direction / (np.linalg.norm(direction) + 1e-9)
    tip = root + direction * length
    tubes = [Tube(np.vstack([root, (root + tip) / 2 + rng.normal(0, 0.3, 3), tip]),
                  np.array([radius, 0.9 * radius, 0.8 * radius]))]
    if depth > 0:
        for _ in range(2):
            turn = rng.normal(0, 0.55, 3)
            new_dir = direction + turn - (turn @ direction) * direction
            tubes += _tree(rng, tip, new_dir, 0.72 * radius, 0.8 * length * rng.uniform(0.8, 1.2), depth - 1)
    return tubes


def thorax_tissues(p: SubjectParams, grid: Grid, pose: Pose, coords: np.ndarray, vessel_sdf: np.ndarray,
                   hilar_roots: list[tuple[np.ndarray, np.ndarray]]
                   ) -> tuple[np.ndarray, np.ndarray, list[tuple[np.ndarray, Tissue]]]:
    """Tissue-class volume (uint8, :class:`Tissue`), the trachea mask (above the carina) and
    partial-volume overlays ``(fraction, tissue)`` for the thin lung vessels and bronchi.

    ``coords`` are the voxels' anatomical coordinates, ``vessel_sdf`` the signed distance (mm)
    to the labelled vessels (used for their soft-tissue sleeves and painted as blood last), and
    ``hilar_roots`` the (point, direction) pairs where lung vessel trees leave the hilum.
    """
    s = p.scale
    rng = np.random.default_rng(p.texture_seed)
    x, y, z = coords
    T = Tissue
    tis = np.full(grid.shape, T.AMNIOTIC, dtype=np.uint8)
    zr = z / s
    taper = 1.0 - 0.012 * np.clip(zr - 6.0, 0.0, None)  # thoracic inlet narrows into the neck
    c = p.place(np.array(BODY_CENTRE))

    def body(rx: float, ry: float) -> np.ndarray:
        return ((x - c[0]) / (rx * s * taper)) ** 2 + ((y - c[1]) / (ry * s * taper)) ** 2 < 1.0

    tis[body(*BODY_RADII)] = T.SUBCUTANEOUS
    tis[body(BODY_RADII[0] - 1.5, BODY_RADII[1] - 1.5)] = T.MUSCLE
    cavity = body(*CAVITY_RADII)
    # diaphragm: right dome higher; liver below it, stomach under the left dome
    zd = s * (-22.0 + 4.0 * np.exp(-((x / s - 8.0) ** 2) / (2 * 9.0**2)))
    below = cavity & (z < zd)
    apex = zr < 24.0 - 0.016 * (x / s) ** 2  # domed lung apices; neck soft tissue above them
    tis[cavity & ~below & apex] = T.LUNG
    tis[cavity & ~apex] = T.MEDIASTINUM
    tis[below] = T.LIVER
    tis[ellipsoid_value(coords, p.place(np.array([-15.0, 2.0, -27.5])), np.array([7.0, 5.0, 4.5]) * s) < 1] = T.STOMACH
    # mediastinum: central column behind the sternum down to the heart, vessel sleeves, thymus
    cm = p.place(np.array([-1.0, -2.5, 0.0]))
    column = (((x - cm[0]) / (6.0 * s)) ** 2 + ((y - cm[1]) / (7.0 * s)) ** 2 < 1.0) & (z > -14.0 * s) & cavity
    tis[column] = T.MEDIASTINUM
    central = np.abs(x - cm[0]) < 10.0 * s  # vessels have a soft-tissue sleeve in the mediastinum, not in the lung
    tis[(vessel_sdf < 1.5 * s) & cavity & central] = T.MEDIASTINUM
    tis[ellipsoid_value(coords, p.place(np.array([-1.0, 18.0, 5.0])), np.array([13.0, 9.0, 11.0]) * s) < 1] = T.THYMUS
    # spine (vertebral bodies with discs, canal with CSF and cord, posterior arch), paraspinal muscle
    sp = p.place(np.array([0.0, -16.0, 0.0]))
    sy = sp[1] - 0.004 * z**2 / s  # gentle curvature
    tis[((x - sp[0]) / (10.0 * s)) ** 2 + ((y - sy + 5.5 * s) / (7.0 * s)) ** 2 < 1.0] = T.MUSCLE
    vb = ((x - sp[0]) / (5.0 * s)) ** 2 + ((y - sy) / (4.0 * s)) ** 2 < 1.0
    disc = np.mod(zr + rng.uniform(0, 3.8), 3.8) < 0.9
    tis[vb] = T.VERTEBRA
    tis[vb & disc] = T.DISC
    rc = np.sqrt((x - sp[0]) ** 2 + (y - sy + 6.5 * s) ** 2)
    tis[(rc < 3.9 * s) & ~vb] = T.VERTEBRA
    tis[rc < 2.5 * s] = T.CSF
    tis[rc < 1.0 * s] = T.CORD
    # ribs: curved tubes in the chest wall, sloping down anteriorly
    rib_sdf = grid.empty_sdf()
    for k in range(8):
        z0 = -21.0 + 5.5 * k + rng.normal(0, 0.4)
        for side in (-1.0, 1.0):
            th = np.deg2rad(np.linspace(-80.0, 45.0, 9))
            narrow = 1 - 0.012 * max(z0 - 6, 0)
            pts = np.stack([side * (CAVITY_RADII[0] + 1.0) * np.cos(th) * narrow,
                            BODY_CENTRE[1] + (CAVITY_RADII[1] + 1.0) * np.sin(th) * narrow,
                            z0 - 3.0 * (th - th[0]) / (th[-1] - th[0])], axis=1)
            grid.paint_tube_sdf(rib_sdf, catmull_rom(p.place(pts), np.full(len(pts), 0.8 * s), 2.0), pose)
    tis[rib_sdf < 0] = T.RIB
    # heart: a thin myocardial wall around one dark blood pool split by the septa
    h_c, h_r = p.place(np.array(HEART_CENTRE)), np.array(HEART_RADII) * s
    h_rot = rotation_z(HEART_AXIS_DEG)
    tis[ellipsoid_value(coords, h_c, h_r + 0.8 * s, h_rot) < 1] = T.MEDIASTINUM  # pericardium
    tis[heart_inside(p, coords)] = T.MYOCARDIUM
    pool = ellipsoid_value(coords, h_c, h_r - HEART_WALL_MM * s, h_rot) < 1
    u = np.deg2rad(HEART_AXIS_DEG)
    along = np.cos(u) * (x - h_c[0]) + np.sin(u) * (y - h_c[1])  # towards the apex (left, anterior)
    across = np.abs(np.cos(u) * (y - h_c[1]) - np.sin(u) * (x - h_c[0]))
    septum = np.where(along > -4.0 * s, across < 1.2 * s, across < 0.5 * s)  # ventricular, atrial
    tis[pool & ~septum] = T.BLOOD
    # oesophagus behind the trachea
    tx = p.trachea_x_mm / p.scale
    oes_sdf = grid.empty_sdf()
    oes = catmull_rom(p.place(np.array([(tx - 1.0, -3.6, 30), (tx - 1.2, -3.8, 10), (tx - 1.5, -4.0, -8),
                                        (tx - 2.5, -3.5, -30)])), np.full(4, 1.6 * s), 1.5)
    grid.paint_tube_sdf(oes_sdf, oes, pose)
    tis[oes_sdf < 0] = T.OESOPHAGUS
    # airways (bright fluid) with a thin wall; bronchial and vascular trees in the lungs
    air_tubes, bronchus_ends = _airway_tubes(p)
    air_sdf = grid.empty_sdf()
    for tube in air_tubes:
        grid.paint_tube_sdf(air_sdf, tube, pose, pad_mm=1.0)
    trachea_sdf = grid.empty_sdf()
    grid.paint_tube_sdf(trachea_sdf, air_tubes[0], pose)
    trachea = trachea_sdf < 0
    lung = tis == T.LUNG
    lung_air = grid.empty_sdf()
    for root, direction in bronchus_ends:
        for _ in range(2):
            d = direction / np.linalg.norm(direction) + rng.normal(0, 0.4, 3)
            for tube in _tree(rng, root, d, 0.8 * s, 6.0 * s, 2):
                grid.paint_tube_sdf(lung_air, tube, pose, pad_mm=grid.spacing)
    lung_vessels = grid.empty_sdf()
    roots = list(hilar_roots)
    for side in (-1.0, 1.0):  # upper, middle and lower lobe vessels leaving the hilum
        roots += [(p.place(np.array([side * 13.0, 1.0, 4.0])), np.array([side * 0.5, 0.2, 1.0])),
                  (p.place(np.array([side * 14.0, 6.0, -6.0])), np.array([side * 0.6, 1.0, 0.1])),
                  (p.place(np.array([side * 14.0, -5.0, -14.0])), np.array([side * 0.7, -0.4, -0.6]))]
    for root, direction in roots:
        for _ in range(2):
            d = direction / np.linalg.norm(direction) + rng.normal(0, 0.35, 3)
            for tube in _tree(rng, root, d, 0.9 * s, 6.5 * s, 3):
                grid.paint_tube_sdf(lung_vessels, tube, pose, pad_mm=grid.spacing)
    tis[(air_sdf < 0.6 * s) & ~lung] = T.MEDIASTINUM
    tis[(air_sdf < 0.5 * s) & lung] = T.MEDIASTINUM
    tis[air_sdf < 0] = T.AIRWAY
    tis[vessel_sdf < 0] = T.BLOOD
    lung = tis == T.LUNG
    h = grid.spacing
    overlays = [(np.where(lung, np.clip(0.5 - lung_air / h, 0.0, 1.0), 0.0).astype(np.float32), T.AIRWAY),
                (np.where(lung, np.clip(0.5 - lung_vessels / h, 0.0, 1.0), 0.0).astype(np.float32), T.BLOOD)]
    return tis, trachea, overlays
