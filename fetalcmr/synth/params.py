"""Random parameters of one synthetic subject, and their class mean (for atlases).

A subject is fully described by a :class:`SubjectParams`: gestational age (global size),
vessel calibre, class-defining shape parameters, a smooth random deformation of the anatomy
(Gaussian radial-basis displacements on a coarse lattice, so neighbouring structures move
together and their spacing is preserved), the residual pose, and the appearance (tissue
intensities relative to lung, blur, noise, bias field, gamma). :func:`mean_params` averages the
numeric fields of a class population: rendering that gives the class's mean shape.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

#: Gestational age range of the cohort (weeks).
GA_RANGE: tuple[float, float] = (28.0, 34.0)
#: CoA isthmus-to-transverse-arch diameter ratio range.
COA_RATIO_RANGE: tuple[float, float] = (0.4, 0.75)
#: DAA minor (left) to dominant (right) arch diameter ratio range.
DAA_RATIO_RANGE: tuple[float, float] = (0.3, 1.0)
#: Centres of the deformation basis: a 3×3×3 lattice over the field of view (mm).
RBF_CENTRES: np.ndarray = np.stack(np.meshgrid(*([np.array([-18.0, 0.0, 18.0])] * 3), indexing="ij"),
                                   axis=-1).reshape(-1, 3)
RBF_SIGMA_MM: float = 11.0
#: Labels whose calibre varies independently (all eleven vessels).
VESSEL_LABELS: tuple[int, ...] = tuple(range(1, 12))

#: Appearance parameters: name -> (low, high) of a uniform draw; intensities are relative to lung
#: and bracket those measured on a real thorax (docs/design.md §9).
APPEARANCE_RANGES: dict[str, tuple[float, float]] = {
    "blood": (0.04, 0.09),
    "mediastinum": (0.30, 0.45),
    "myocardium": (0.28, 0.40),
    "thymus": (0.42, 0.52),
    "muscle": (0.25, 0.35),
    "subcutaneous": (0.45, 0.60),
    "liver": (0.31, 0.38),
    "vertebra": (0.45, 0.60),
    "disc": (0.70, 0.85),
    "csf": (1.15, 1.35),
    "cord": (0.40, 0.50),
    "rib": (0.25, 0.35),
    "oesophagus": (0.32, 0.42),
    "airway": (1.03, 1.17),
    "amniotic": (1.30, 1.60),
    "lung_texture": (0.03, 0.06),  # amplitude of the low-frequency lung texture
    "psf_sigma_mm": (0.45, 0.70),  # Gaussian PSF of the SVR reconstruction
    "noise": (0.05, 0.10),  # residual noise SD relative to lung
    "noise_corr_mm": (0.9, 1.3),  # correlation length (Gaussian sigma) of the residual noise
    "bias": (0.04, 0.10),  # amplitude of the multiplicative bias field
    "gain": (300.0, 3000.0),  # arbitrary scanner scale of the lung
}
#: Appearance parameters fixed in the plain phantom (varied by :mod:`fetalcmr.synth.randomise`):
#: PSF factor per axis and the gamma applied to the lung-relative image.
APPEARANCE_FIXED: dict[str, float] = {"psf_x": 1.0, "psf_y": 1.0, "psf_z": 1.0, "gamma": 1.0}


@dataclass
class SubjectParams:
    """Everything that defines one synthetic subject (see the module docstring)."""

    cls: int
    ga_weeks: float
    calibre: float
    label_calibre: np.ndarray  # (12,) per-label radius factor (index 0 unused)
    coa_isthmus_ratio: float  # used for CoA only
    daa_minor_ratio: float  # used for DAA only
    arch_hypoplasia: float  # transverse-arch radius factor (CoA arches are often hypoplastic)
    lsa_shift: float  # 0..1: how far the LSA origin moves towards the isthmus (CoA)
    trachea_x_mm: float  # trachea and oesophagus shift to the subject's right (mm)
    rbf_weights: np.ndarray  # (27, 3) deformation weights (mm)
    pose_angles_deg: np.ndarray  # (3,)
    pose_shift_mm: np.ndarray  # (3,)
    appearance: dict[str, float] = field(default_factory=dict)
    texture_seed: int = 0
    noise_free: bool = False  # atlases: no noise, bias field or pose

    @property
    def scale(self) -> float:
        """Global size factor relative to 30 weeks (vessel diameters and distances)."""
        return self.ga_weeks / 30.0

    def displacement(self, points: np.ndarray) -> np.ndarray:
        """Smooth anatomical deformation (mm) at ``points (..., 3)``."""
        d2 = ((points[..., None, :] - RBF_CENTRES) ** 2).sum(-1)
        w = np.exp(-d2 / (2 * RBF_SIGMA_MM**2))
        return w @ self.rbf_weights

    def place(self, points: np.ndarray) -> np.ndarray:
        """Reference (30-week) anatomy points scaled to this subject and deformed."""
        p = np.asarray(points, dtype=float) * self.scale
        return p + self.displacement(p)


def sample_params(cls: int, rng: np.random.Generator) -> SubjectParams:
    """Draw one subject's parameters of class ``cls`` (0 CoA, 1 RAA, 2 DAA) from ``rng``."""
    ga = float(rng.uniform(*GA_RANGE))
    calibre = float(np.clip(rng.normal(1.0, 0.05), 0.9, 1.1))
    label_calibre = np.clip(rng.normal(1.0, 0.06, size=12), 0.88, 1.12)
    coa = float(rng.uniform(*COA_RATIO_RANGE))
    daa = float(rng.uniform(*DAA_RATIO_RANGE))
    hypo = float(rng.uniform(0.78, 0.95)) if cls == 0 else float(rng.uniform(0.95, 1.05))
    lsa_shift = float(rng.uniform(0.2, 0.8)) if cls == 0 else 0.0
    tx = float(rng.uniform(-0.6, 0.6))
    rbf = np.clip(rng.normal(0.0, 0.7, size=(len(RBF_CENTRES), 3)), -1.5, 1.5)
    angles = np.clip(rng.normal(0.0, 3.0, size=3), -6.0, 6.0)
    shift = np.clip(rng.normal(0.0, 1.0, size=3), -2.0, 2.0)
    appearance = {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in APPEARANCE_RANGES.items()} | APPEARANCE_FIXED
    return SubjectParams(cls=cls, ga_weeks=ga, calibre=calibre, label_calibre=label_calibre,
                         coa_isthmus_ratio=coa, daa_minor_ratio=daa, arch_hypoplasia=hypo,
                         lsa_shift=lsa_shift, trachea_x_mm=tx, rbf_weights=rbf,
                         pose_angles_deg=angles, pose_shift_mm=shift, appearance=appearance,
                         texture_seed=int(rng.integers(0, 2**31 - 1)))


def mean_params(population: list[SubjectParams], *, texture_seed: int = 0) -> SubjectParams:
    """The class-mean subject: numeric parameters averaged, no pose, noise-free.

    All members must share one class. Averaging the deformation weights gives the mean shape
    (the deformation is linear in them); pose is zero because an atlas is built in the aligned
    space.
    """
    if not population:
        raise ValueError("mean_params needs at least one subject")
    classes = {p.cls for p in population}
    if len(classes) != 1:
        raise ValueError(f"mean_params needs one class, got {sorted(classes)}")
    out: dict[str, object] = {}
    for f in dataclasses.fields(SubjectParams):
        vals = [getattr(p, f.name) for p in population]
        if f.name == "appearance":
            out[f.name] = {k: float(np.mean([v[k] for v in vals])) for k in vals[0]}
        elif f.name in ("cls", "texture_seed", "noise_free"):
            out[f.name] = vals[0]
        elif isinstance(vals[0], np.ndarray):
            out[f.name] = np.mean(vals, axis=0)
        else:
            out[f.name] = float(np.mean(vals))
    out["pose_angles_deg"] = np.zeros(3)
    out["pose_shift_mm"] = np.zeros(3)
    out["texture_seed"] = texture_seed
    out["noise_free"] = True
    return SubjectParams(**out)  # type: ignore[arg-type]
