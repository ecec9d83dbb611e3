"""The eleven labelled great vessels of each anomaly class as trees of smooth tubes (docs/design.md §9).

Control points are given for a 30-week fetus in the anatomical frame (mm; x to the subject's
right, y anterior, z superior; trachea at x≈0, y=1) and then scaled by gestational age and
deformed by the subject's smooth random deformation (:meth:`SubjectParams.place`).
Diameters at 30 weeks follow docs/design.md §9: ascending aorta ~5.2 mm, transverse arch ~3.9,
DAO ~4.2, MPA ~6, duct ~4.2, branch pulmonary arteries ~3.4, SVC ~4, head-and-neck arteries
~2.1, pulmonary veins ~2.4.

Class differences:

* CoA: left arch passing left of the trachea, branches BCA, LCCA, LSA in that order, a narrowed
  isthmus (ratio ``coa_isthmus_ratio`` of the transverse arch), a hypoplastic arch and a more
  distal LSA.
* RAA: right arch passing right of the trachea, branches LCCA then right carotid/subclavian
  (label BCA); the aberrant LSA arises from the proximal DAO behind the oesophagus (Kommerell
  diverticulum); the left duct joins the DAO there, closing a ring.
* DAA: the ascending aorta splits into a dominant right and a minor left arch (ratio
  ``daa_minor_ratio``) which rejoin behind the oesophagus into the DAO: one loop in AO ∪ DAO.

Tubes of a branch start inside their parent, so parent and branch touch; the painting order
:data:`PAINT_ORDER` lets the parent win where they overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fetalcmr.anatomy import LABEL_INDEX
from fetalcmr.synth.geometry import Tube, catmull_rom
from fetalcmr.synth.params import SubjectParams

L = LABEL_INDEX
#: Later labels overwrite earlier ones where tubes overlap (parents after their branches).
PAINT_ORDER: tuple[int, ...] = (L["PV"], L["SVC"], L["LSA"], L["LCCA"], L["BCA"], L["LPA"], L["RPA"],
                                L["AD"], L["MPA"], L["DAO"], L["AO"])
#: Reference arch level (z, mm at 30 weeks), where the arch passes the trachea.
ARCH_LEVEL_Z: float = 8.0

_P = np.array  # shorthand for control-point tables

# ----- vessels shared by every class (30 weeks, mm) ------------------------------------------------
_SVC = (_P([(12, 6, 27), (11.5, 6.5, 10), (10.5, 7, -2), (9.5, 7.5, -10)]), _P([2.0, 2.0, 2.0, 2.1]))
_MPA = (_P([(-4.5, 14, -5), (-5, 11, 0), (-5.5, 8, 3)]), _P([3.0, 3.0, 2.9]))
# The LPA keeps ~0.5 mm off the duct and the RPA ~0.5 mm off the ascending aorta (they grazed them):
# the clean-up peels forbidden contacts, and at coarse voxels a peel cut the branch next to the MPA.
_LPA = (_P([(-5.5, 10.5, 2), (-10.8, 7.6, 0.3), (-14, 3.5, -1), (-18, 0.5, -2.5), (-22, -2, -4)]),
        _P([1.8, 1.75, 1.7, 1.6, 1.5]))
_RPA = (_P([(-4.8, 9.5, 2.5), (-1.5, 4.9, 1.5), (3, 2.2, 0.5), (8, 1.8, -0.5), (13, 0.8, -2.5), (19, -0.3, -4.5)]),
        _P([1.8, 1.75, 1.7, 1.65, 1.55, 1.5]))
_PV = [
    (_P([(-7, 1, -14), (-2, 1.3, -14.3), (3, 1, -14)]), _P([1.5, 1.6, 1.5])),
    (_P([(-7, 1, -14), (-12, 0, -15), (-16.5, -1, -16.5)]), _P([1.3, 1.2, 1.1])),
    (_P([(3, 1, -14), (8, 0, -15), (13.5, -1, -16.5)]), _P([1.3, 1.2, 1.1])),
]
_ASC = _P([(2.5, 8.5, -12), (3.5, 9.5, -5), (3.5, 7.2, 1)])  # ascending aorta up to the arch
_ASC_R = _P([2.6, 2.6, 2.5])
# ----- left arch (CoA) ----------------------------------------------------------------------------
_LEFT_ARCH = _P([(3, 7.5, 6.5), (0, 7.5, 9), (-4.5, 4.5, 9), (-6.5, 0.5, 8), (-7, -3, 6.5), (-6.5, -6, 4)])
_LEFT_DAO = _P([(-6.5, -6, 4), (-6.2, -7.8, 0), (-5.8, -8.5, -5), (-5.3, -8.6, -15), (-4.8, -8.2, -27)])
_LEFT_AD = _P([(-5.5, 8, 3), (-8, 3.5, 2), (-8.8, -1.5, 0.5), (-7.8, -5.5, -1.5), (-6.3, -8, -3.5)])
_LEFT_BCA = _P([(2.5, 7, 8), (4, 5.5, 14), (5, 5, 20), (5.5, 5, 27)])
_LEFT_LCCA = _P([(-2.5, 6, 9.5), (-3.5, 5, 15), (-4, 5, 27)])
_LEFT_LSA = _P([(-6.5, 0.5, 8.5), (-8, 0, 14), (-10, -0.5, 20), (-12, -1, 27)])
_LEFT_LSA_DISTAL = _P([(-7.0, -2.3, 7.6), (-8.4, -1.4, 13.5)])  # CoA: LSA origin moved distally
# ----- right arch (RAA) ---------------------------------------------------------------------------
_RIGHT_ARCH = _P([(3, 6.5, 6.5), (4.5, 5, 9.5), (6.5, 2, 9), (7, -1.5, 7.5), (5.5, -5.5, 6), (4, -7.5, 5)])
_RIGHT_DAO = _P([(4, -7.5, 5), (1.5, -9.3, 2), (-1.5, -9.8, -1), (-4.5, -9.3, -6), (-5.3, -8.6, -15),
                 (-4.8, -8.2, -27)])
_RIGHT_AD = _P([(-5.5, 8, 3), (-7.5, 3.5, 2.5), (-8, -1.5, 1.5), (-6.5, -6, -1), (-4.5, -9.3, -4.5)])
_RIGHT_LCCA = _P([(2.5, 6.5, 8), (-1.5, 6, 14), (-3.5, 5.5, 20), (-4, 5, 27)])
_RIGHT_HEAD = [_P([(5.5, 4, 9.5), (6, 4, 14), (6.2, 4, 27)]), _P([(6, 4, 14), (9, -0.5, 20), (12, -3, 27)])]
_ABERRANT_LSA = _P([(-1.5, -9.8, -1), (-4.5, -8.5, 4), (-8, -5.5, 11), (-10, -3, 19), (-12, -2, 27)])
# ----- double arch (DAA) --------------------------------------------------------------------------
_DAA_ASC = _P([(2.5, 8.5, -12), (3.5, 9.5, -5), (3.5, 7.2, 1), (3, 6.5, 6)])
_DAA_RIGHT = _P([(3, 6.5, 6), (5, 4.5, 9), (6.5, 1, 9), (6.5, -3, 7.5), (4, -7, 5.5), (0.5, -9, 4)])
_DAA_LEFT = _P([(3, 6.5, 6), (0, 6.8, 8.5), (-4.5, 4.5, 9), (-6.5, 0.5, 8), (-6, -4, 6.5), (-3.5, -7.8, 5),
                (0.5, -9, 4)])
_DAA_DAO = _P([(0.5, -9, 4), (-2.5, -9.5, 0), (-4.5, -9.2, -5), (-5.3, -8.6, -15), (-4.8, -8.2, -27)])
_DAA_LCCA = _P([(-2, 6, 9), (-3.5, 5.5, 15), (-4, 5, 27)])
_DAA_LSA = _LEFT_LSA

_ARCH_R = 1.95  # transverse arch radius at 30 weeks (mm)
_HEAD_R = _P([1.1, 1.05, 1.0, 1.0])


@dataclass(frozen=True)
class VesselTree:
    """Tubes per label (anatomical frame, placed for the subject) and landmarks (mm)."""

    tubes: dict[int, list[Tube]]
    landmarks: dict[str, np.ndarray]


def _r(values: np.ndarray, n: int) -> np.ndarray:
    return np.resize(values, n)


def _class_tables(p: SubjectParams) -> tuple[dict[int, list[tuple[np.ndarray, np.ndarray]]], dict[str, np.ndarray]]:
    """Control points and radii (30-week frame) per label for ``p.cls``; plus landmarks."""
    t: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {
        L["SVC"]: [_SVC], L["MPA"]: [_MPA], L["LPA"]: [_LPA], L["RPA"]: [_RPA], L["PV"]: list(_PV),
    }
    rt = _ARCH_R * p.arch_hypoplasia
    marks: dict[str, np.ndarray] = {}
    if p.cls == 0:  # CoA: left arch, narrowed isthmus
        ri = p.coa_isthmus_ratio * rt
        ao = np.vstack([_ASC, _LEFT_ARCH])
        t[L["AO"]] = [(ao, _P([*_ASC_R, 2.3, rt, rt, rt, ri, 2.0]))]
        t[L["DAO"]] = [(_LEFT_DAO, _P([2.05, 2.1, 2.1, 2.0, 1.9]))]
        t[L["AD"]] = [(_LEFT_AD, _r(_P([2.1]), 5))]
        t[L["BCA"]] = [(_LEFT_BCA, _HEAD_R)]
        t[L["LCCA"]] = [(_LEFT_LCCA, _HEAD_R[1:])]
        lsa = _LEFT_LSA.copy()
        lsa[:2] = (1 - p.lsa_shift) * _LEFT_LSA[:2] + p.lsa_shift * _LEFT_LSA_DISTAL
        t[L["LSA"]] = [(lsa, _HEAD_R)]
        marks["isthmus"] = _LEFT_ARCH[4]
        marks["transverse"] = _LEFT_ARCH[2]
    elif p.cls == 1:  # RAA with aberrant LSA
        ao = np.vstack([_ASC, _RIGHT_ARCH])
        t[L["AO"]] = [(ao, _P([*_ASC_R, 2.3, rt, rt, rt, 1.95, 1.95]))]
        t[L["DAO"]] = [(_RIGHT_DAO, _P([2.0, 2.2, 2.3, 2.1, 2.0, 1.9]))]  # Kommerell bulge
        t[L["AD"]] = [(_RIGHT_AD, _r(_P([2.1]), 5))]
        t[L["LCCA"]] = [(_RIGHT_LCCA, _HEAD_R)]
        t[L["BCA"]] = [(_RIGHT_HEAD[0], _HEAD_R[:3]), (_RIGHT_HEAD[1], _HEAD_R[1:])]
        t[L["LSA"]] = [(_ABERRANT_LSA, _P([1.6, 1.2, 1.05, 1.0, 1.0]))]
        marks["transverse"] = _RIGHT_ARCH[2]
    elif p.cls == 2:  # DAA: dominant right, minor left arch
        rm = p.daa_minor_ratio * rt
        t[L["AO"]] = [
            (_DAA_ASC, _P([*_ASC_R, 2.4])),
            (_DAA_RIGHT, _P([2.3, rt, rt, rt, 1.95, 2.0])),
            (_DAA_LEFT, _P([2.0, max(rm, 0.5 * (2.0 + rm)), rm, rm, rm, rm, 1.6])),
        ]
        t[L["DAO"]] = [(_DAA_DAO, _P([2.1, 2.15, 2.1, 2.0, 1.9]))]
        t[L["AD"]] = [(_RIGHT_AD, _r(_P([2.1]), 5))]
        t[L["BCA"]] = [(_RIGHT_HEAD[0], _HEAD_R[:3]), (_RIGHT_HEAD[1], _HEAD_R[1:])]
        t[L["LCCA"]] = [(_DAA_LCCA, _HEAD_R[1:])]
        t[L["LSA"]] = [(_DAA_LSA, _HEAD_R)]
        marks["transverse"] = _DAA_RIGHT[2]
        marks["minor_arch"] = _DAA_LEFT[3]
    else:
        raise ValueError(f"unknown anomaly class {p.cls}; expected 0 (CoA), 1 (RAA) or 2 (DAA)")
    marks["arch_level"] = _P([p.trachea_x_mm / p.scale, 1.0, ARCH_LEVEL_Z])
    return t, marks


def vessel_tree(p: SubjectParams, *, step_mm: float = 1.0) -> VesselTree:
    """The subject's labelled vessels as smooth tubes, scaled, deformed and with calibre applied."""
    tables, marks = _class_tables(p)
    tubes: dict[int, list[Tube]] = {}
    for label, parts in tables.items():
        factor = p.scale * p.calibre * float(p.label_calibre[label])
        tubes[label] = [catmull_rom(p.place(pts), rad * factor, step_mm) for pts, rad in parts]
    return VesselTree(tubes=tubes, landmarks={k: p.place(v) for k, v in marks.items()})
