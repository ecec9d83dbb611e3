"""Synthetic black-blood T2w fetal thorax cohort with the three aortic arch anomalies.

Replaces the study's private patient data (docs/design.md §9): per subject an image, the 11-vessel truth,
an imperfect manual vessel mask, the trachea and metadata; class atlases; a Decathlon-style
``dataset.json`` with a stratified split.

Modules: ``geometry`` (grid, pose, tube rasterisation), ``params`` (random subject parameters),
``vessels`` (class-specific vessel trees), ``labels`` (label-map clean-up), ``thorax``
(surrounding structures), ``appearance`` (intensities, PSF, noise, bias), ``manual`` (imperfect
manual masks), ``subject`` (one subject), ``atlas`` (class atlases), ``cohort`` (the cohort).
"""

from fetalcmr.synth.atlas import Atlas, build_atlas
from fetalcmr.synth.cohort import generate_cohort, plan_cohort
from fetalcmr.synth.subject import Subject, generate_subject, render_subject

__all__ = ["Atlas", "Subject", "build_atlas", "generate_cohort", "generate_subject", "plan_cohort", "render_subject"]
