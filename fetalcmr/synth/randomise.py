"""Domain randomisation of the phantom's appearance, SynthSeg-style (Billot et al., 2023).

With ``generate_subject(..., randomise=True)`` each subject's appearance is redrawn from wider
ranges than the measured ones: every tissue intensity from its measured range (relative to lung,
:data:`fetalcmr.synth.params.APPEARANCE_RANGES`) widened :data:`WIDEN` times about its centre, and
bias field, point-spread (with one axis coarser, as a thick-slice acquisition), noise level and
correlation, and a gamma from the ranges of :data:`RANDOM_RANGES`. The anatomy is untouched: a
randomised subject has the same shapes and labels as the plain one of the same seed. Draws come
from their own generator seeded by the subject, so they are deterministic.

>>> from fetalcmr.synth.params import sample_params
>>> p = sample_params(0, np.random.default_rng(0))
>>> a = randomise_appearance(p.appearance, np.random.default_rng(1))
>>> a == randomise_appearance(p.appearance, np.random.default_rng(1)), a["blood"] != p.appearance["blood"]
(True, True)
"""

from __future__ import annotations

import numpy as np

from fetalcmr.synth.params import APPEARANCE_RANGES

#: Factor by which the measured tissue-intensity ranges are widened about their centres.
WIDEN: float = 2.0
#: Appearance parameters drawn from their own (low, high) ranges instead of widened ones.
RANDOM_RANGES: dict[str, tuple[float, float]] = {
    "lung_texture": (0.01, 0.10),
    "psf_sigma_mm": (0.3, 1.0),
    "noise": (0.02, 0.18),
    "noise_corr_mm": (0.5, 1.6),
    "bias": (0.0, 0.35),
    "gamma": (0.7, 1.4),
}
#: Through-plane PSF factor range of the one coarser axis.
SLICE_FACTOR: tuple[float, float] = (1.0, 2.5)
_NOT_TISSUE = {"lung_texture", "psf_sigma_mm", "noise", "noise_corr_mm", "bias", "gain"}


def randomise_appearance(appearance: dict[str, float], rng: np.random.Generator) -> dict[str, float]:
    """A randomised copy of ``appearance`` (see the module docstring); ``gain`` is kept."""
    out = dict(appearance)
    for key, (lo, hi) in APPEARANCE_RANGES.items():
        if key not in _NOT_TISSUE:
            centre, half = 0.5 * (lo + hi), 0.5 * WIDEN * (hi - lo)
            out[key] = float(rng.uniform(max(centre - half, 0.0), centre + half))
    for key, (lo, hi) in RANDOM_RANGES.items():
        out[key] = float(rng.uniform(lo, hi))
    coarse = "xyz"[int(rng.integers(3))]
    for axis in "xyz":
        out[f"psf_{axis}"] = float(rng.uniform(*SLICE_FACTOR)) if axis == coarse else 1.0
    return out
