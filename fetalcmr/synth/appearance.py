"""Black-blood T2w appearance: tissue intensities relative to lung, lung texture, the
point-spread of slice-to-volume reconstruction (per axis), smooth residual noise, bias field,
gamma and scanner gain.

Intensity ranges (relative to lung, docs/design.md §9, from public real fetal thorax atlases) are drawn
per subject in :data:`fetalcmr.synth.params.APPEARANCE_RANGES`; the raw image is scaled by an
arbitrary gain, as scanner data is (consumers normalise per volume).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from fetalcmr.synth.params import SubjectParams
from fetalcmr.synth.thorax import Tissue

_TISSUE_KEY: dict[Tissue, str] = {
    Tissue.SUBCUTANEOUS: "subcutaneous", Tissue.MUSCLE: "muscle", Tissue.MEDIASTINUM: "mediastinum",
    Tissue.THYMUS: "thymus", Tissue.LIVER: "liver", Tissue.MYOCARDIUM: "myocardium", Tissue.BLOOD: "blood",
    Tissue.VERTEBRA: "vertebra", Tissue.DISC: "disc", Tissue.CSF: "csf", Tissue.CORD: "cord", Tissue.RIB: "rib",
    Tissue.OESOPHAGUS: "oesophagus", Tissue.AIRWAY: "airway", Tissue.AMNIOTIC: "amniotic",
}


def tissue_lut(p: SubjectParams) -> np.ndarray:
    """Intensity of each :class:`Tissue` relative to lung (lung = 1)."""
    a = p.appearance
    lut = np.ones(len(Tissue), dtype=np.float32)
    for tissue, key in _TISSUE_KEY.items():
        lut[tissue] = a[key]
    lut[Tissue.LUNG] = 1.0
    lut[Tissue.STOMACH] = 0.95 * a["amniotic"]
    return lut


def _upsample_matrix(n: int, m: int) -> np.ndarray:
    """(n, m) linear-interpolation weights from ``m`` coarse knots spanning ``n`` samples."""
    pos = np.linspace(0.0, m - 1.0, n)
    lo = np.minimum(np.floor(pos).astype(int), m - 2)
    w = np.zeros((n, m), dtype=np.float32)
    w[np.arange(n), lo] = 1.0 - (pos - lo)
    w[np.arange(n), lo + 1] = pos - lo
    return w


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    """Zero-mean, unit-SD smooth random field: coarse noise (knots ~``sigma_vox`` apart), interpolated."""
    knots = [max(3, int(round(s / max(sigma_vox, 1.0))) + 1) for s in shape]
    small = ndimage.gaussian_filter(rng.standard_normal(knots).astype(np.float32), 0.7)
    big = np.tensordot(_upsample_matrix(shape[0], knots[0]), small, axes=(1, 0))
    big = np.tensordot(big, _upsample_matrix(shape[1], knots[1]), axes=(1, 1)).transpose(0, 2, 1)
    big = np.tensordot(big, _upsample_matrix(shape[2], knots[2]), axes=(2, 1))
    big -= big.mean()
    return (big / (big.std() + 1e-6)).astype(np.float32)


def render_image(tissue: np.ndarray, p: SubjectParams, spacing: float,
                 overlays: list[tuple[np.ndarray, Tissue]] = ()) -> np.ndarray:
    """Raw float32 image from a tissue-class volume: intensities, PSF, bias, noise, gain.

    ``overlays`` are partial-volume fractions of thin structures (lung vessels, bronchi)
    blended over the lung after its texture.
    """
    rng = np.random.default_rng([p.texture_seed, 1])
    a = p.appearance
    img = tissue_lut(p)[tissue]
    lung = tissue == Tissue.LUNG
    texture = smooth_field(rng, tissue.shape, 3.0 / spacing)
    img[lung] *= 1.0 + a["lung_texture"] * texture[lung]
    lut = tissue_lut(p)
    for fraction, kind in overlays:
        img += fraction * (lut[kind] - img)
    psf = a["psf_sigma_mm"] * (1.6 if p.noise_free else 1.0)  # an atlas is an average: smoother
    sigma = [psf * a[f"psf_{axis}"] / spacing for axis in "xyz"]
    img = ndimage.gaussian_filter(img, sigma, truncate=3.0)
    if not p.noise_free:
        n = img.shape[0]
        u = (np.arange(n, dtype=np.float32) - (n - 1) / 2) / (n / 2)
        c = rng.normal(0.0, 1.0, size=6)
        c /= np.abs(c).sum()
        ux, uy, uz = u[:, None, None], u[None, :, None], u[None, None, :]
        field = c[0] * ux + c[1] * uy + c[2] * uz + c[3] * ux**2 + c[4] * ux * uy + c[5] * uz**2
        img = img * np.exp(a["bias"] * field).astype(np.float32)
        img = img + band_limited_noise(rng, img.shape, a["noise_corr_mm"] / spacing) * a["noise"]
    img = np.clip(img, 0.0, None) ** a["gamma"] * a["gain"]
    return img.astype(np.float32)


def band_limited_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    """Unit-SD Gaussian-correlated noise (white noise low-passed at ``sigma_vox``), as the residual
    noise of a slice-to-volume reconstruction, which interpolates many slices, is smooth."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox)
    return noise / (noise.std() + 1e-6)
