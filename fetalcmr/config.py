"""Profiles: every size, count and hyperparameter of the pipeline in one place (docs/design.md §3).

``smoke`` exercises every code path in seconds, ``default`` is the laptop-CPU reproduction
behind the committed figures, ``paper`` carries the reference implementation's settings for a
GPU. Each stage reads only its own section, passed in explicitly.

>>> p = get_profile("default")
>>> p.cohort.grid
64
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CohortConfig:
    """Synthetic cohort size, class balance, split and voxel grid."""

    n_subjects: int
    grid: int  # voxels per side of the cubic training grid
    spacing_mm: float  # isotropic voxel size of that grid
    #: class fractions CoA, RAA, DAA (the study is imbalanced: CoA most, DAA fewest)
    class_fractions: tuple[float, float, float] = (0.55, 0.30, 0.15)
    #: fractions of subjects in training, validation, testing (stratified by class)
    split_fractions: tuple[float, float, float] = (0.6, 0.1, 0.3)
    #: test subjects drawn on top of ``n_subjects`` (which then fill training and validation only,
    #: in the ratio of the first two split fractions); None: the test split is a fraction of ``n_subjects``
    n_test: int | None = None
    #: class fractions of that separate test set (None: ``class_fractions``)
    test_class_fractions: tuple[float, float, float] | None = None
    #: share of the training subjects (per class) whose appearance is domain-randomised, SynthSeg-style
    #: (fetalcmr.synth.randomise): 0 none, 1 all. Validation and test subjects always keep the phantom's
    #: measured appearance, the target domain on which settings are chosen and results reported.
    domain_randomisation: float = 0.0

    def n_training(self) -> int:
        """Approximate number of training subjects (for cost estimates; the plan is stratified by class)."""
        f = self.split_fractions
        share = f[0] / (f[0] + f[1]) if self.n_test is not None else f[0]
        return round(self.n_subjects * share)

    def n_testing(self) -> int:
        """Approximate number of test subjects (exact when ``n_test`` is set)."""
        return self.n_test if self.n_test is not None else round(self.n_subjects * self.split_fractions[2])


@dataclass(frozen=True)
class PropagationConfig:
    """VoxelMorph atlas-to-subject registration (label propagation)."""

    grid: int  # grid the registration network runs on (may be below the cohort grid)
    nb_features: tuple[int, ...] = (16, 32, 32, 32, 32)
    integration_steps: int = 7
    similarity: str = "ncc"  # "ncc" or "mse"
    weight_smooth: float = 1.0
    weight_dice: float = 1.0
    lr: float = 1e-3
    iterations: int = 1000
    batch_size: int = 1
    ncc_window: int = 9  # local NCC window (voxels of the registration grid)
    label_interp: str = "nearest"  # label warping: "nearest" or "onehot" (warp indicators + argmax)
    #: test subjects registered by the classical baselines (0 = all; stratified by class)
    baseline_max_subjects: int = 0
    #: Adam steps of the affine pre-alignment at half and full registration grid (() = none)
    affine_steps: tuple[int, ...] = (40, 20)
    #: instance-specific refinement: Adam steps on each subject's velocity field, starting from
    #: the network's prediction (0 = the network's field as is)
    refine_steps: int = 0
    refine_lr: float = 0.5  # voxels of the registration grid per Adam step
    #: weight of the manual-mask Dice term while refining (similarity and smoothness keep theirs)
    refine_weight_dice: float = 0.0


@dataclass(frozen=True)
class SegmenterConfig:
    """Segmenter trained on LP labels plus manual binary masks (Attention U-Net in the paper)."""

    #: "attention_unet" (MONAI AttentionUnet, the reference) or "unet" (MONAI UNet, residual units)
    arch: str = "attention_unet"
    channels: tuple[int, ...] = (32, 64, 128, 256, 512)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    dropout: float = 0.2
    epochs: int = 300
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-5
    #: weight of the binary (manual mask) term: start, increment, every N epochs
    binary_weight: tuple[float, float, int] = (1.0, 0.05, 50)
    aug_prob: float = 0.3
    #: side of random vessel-centred training patches (None: whole volumes, as the reference);
    #: inference always runs on the whole grid
    patch: int | None = None
    #: validate (and consider a best checkpoint) every N epochs
    val_every: int = 1
    #: epochs of network (d), trained on the manual masks alone (None: ``epochs``); its two-class task
    #: converges sooner than the twelve-label networks (b) and (c)
    manual_epochs: int | None = None


@dataclass(frozen=True)
class ClassifierConfig:
    """DenseNet anomaly classifier."""

    arch: str = "densenet121"  # "densenet121" or "small" (MONAI DenseNet, see below)
    init_features: int = 16  # for arch="small"
    growth_rate: int = 16  # for arch="small"
    block_config: tuple[int, ...] = (4, 8, 8)  # for arch="small"
    dropout: float = 0.2
    epochs: int = 300
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-5
    seeds: tuple[int, ...] = (0, 1, 2)
    aug_prob: float = 0.3
    #: side of the classifier's input grid: inputs (image, segmenter softmax) are average-pooled
    #: to it inside the network; None keeps the cohort grid
    grid: int | None = None
    #: side of a native-resolution crop the classifier reads instead of the whole grid, centred on the
    #: segmenter's aorta (AO softmax centroid) for every input type (None: no crop; ``grid`` then
    #: pools the whole input)
    crop: int | None = None
    #: inputs with more channels pass a learned 1×1×1 convolution to this many channels before
    #: the DenseNet's 7³ stem (a low-rank factorisation of the stem); None feeds them directly
    input_projection: int | None = None


@dataclass(frozen=True)
class JointConfig:
    """Joint fine-tuning of segmenter and classifier."""

    lam: float = 14.0
    epochs: int = 100
    lambda_sweep: tuple[float, ...] = (0.0, 1.0, 5.0, 14.0, 30.0)
    sweep_epochs: int = 20
    #: training subjects used by each λ-sweep run (None: all of them)
    sweep_subjects: int | None = None
    ensemble_seeds: tuple[int, ...] = (0, 1, 2)
    lr: float = 1e-4  # one AdamW learning rate for both networks while fine-tuning
    batch_size: int = 4


@dataclass(frozen=True)
class Profile:
    """A named set of stage configurations."""

    name: str
    cohort: CohortConfig
    propagation: PropagationConfig
    segmenter: SegmenterConfig
    classifier: ClassifierConfig
    joint: JointConfig
    #: reductions relative to the reference implementation, recorded in the MANIFEST
    reductions: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view (for hashing, MANIFEST entries and notebooks)."""
        return dataclasses.asdict(self)


def _smoke() -> Profile:
    return Profile(
        name="smoke",
        cohort=CohortConfig(n_subjects=12, grid=48, spacing_mm=52.0 / 48,
                            class_fractions=(0.34, 0.33, 0.33), split_fractions=(0.5, 0.17, 0.33)),
        propagation=PropagationConfig(grid=32, nb_features=(8, 8, 8, 8, 8), iterations=2, baseline_max_subjects=3,
                                      affine_steps=(6, 3), refine_steps=2),
        segmenter=SegmenterConfig(channels=(4, 8, 16), strides=(2, 2), epochs=1, batch_size=2),
        classifier=ClassifierConfig(arch="small", init_features=4, growth_rate=4,
                                    block_config=(2, 2), epochs=1, batch_size=2, seeds=(0, 1), crop=24,
                                    input_projection=2),
        joint=JointConfig(epochs=1, lambda_sweep=(0.0, 14.0), sweep_epochs=1, sweep_subjects=4,
                          ensemble_seeds=(0, 1), batch_size=2),
        reductions=("smoke profile: tiny grid, networks and 1-2 iterations; numbers are meaningless",),
    )


def _default() -> Profile:
    return Profile(
        name="default",
        cohort=CohortConfig(n_subjects=63, grid=64, spacing_mm=0.8, n_test=150, test_class_fractions=(0.5, 0.3, 0.2),
                            domain_randomisation=0.5),
        propagation=PropagationConfig(grid=32, iterations=800, lr=2e-3, weight_dice=2.0, integration_steps=5,
                                      baseline_max_subjects=15, refine_steps=8),
        segmenter=SegmenterConfig(arch="unet", channels=(8, 16, 32, 64, 128), dropout=0.1, epochs=40, batch_size=2,
                                  lr=2e-3, binary_weight=(0.0, 0.1, 3), patch=48, val_every=3,
                                  manual_epochs=15),
        classifier=ClassifierConfig(arch="small", epochs=40, batch_size=4, lr=1e-3, crop=32, input_projection=4,
                                    seeds=(0, 1, 2, 3, 4)),
        joint=JointConfig(epochs=2, sweep_epochs=1, sweep_subjects=12, batch_size=2),
        reductions=(
            "grid 64^3 at 0.8 mm instead of 80^3 at 0.65 mm (same ~52 mm field of view)",
            "segmenter: MONAI UNet (residual units) instead of the Attention U-Net, which did not learn to tell "
            "the vessels apart within this CPU budget; channels 8-128 instead of 32-512, dropout 0.1 instead of "
            "0.2, trained on random vessel-centred 48^3 patches (inference on the whole 64^3 grid) for 40 epochs "
            "at lr 2e-3 instead of whole 80^3 volumes for 300 epochs at lr 1e-3 (with 30, the validation Dice "
            "of network (c) against the propagated labels was still rising at the last epoch: 0.67, 0.70, 0.72 "
            "at epochs 24, 27, 30); validation every 3 epochs; "
            "network (d) (manual masks alone, two classes) 15 epochs (in 30 its validation Dice reached 0.71 "
            "by epoch 12 and 0.75 at its best, epoch 27)",
            "segmenter binary-term weight starts at 0 and grows by 0.1 every 3 epochs (to 1.3, the reference's "
            "final weight) instead of starting at 1 and growing by 0.05 every 50 epochs: starting at 1 stalled "
            "the learning of vessel identities in this short schedule (validation Dice against LP after 18 "
            "epochs 0.28 vs 0.53 when starting at 0)",
            "classifier: small MONAI DenseNet (init 16, growth 16, blocks 4-8-8) instead of DenseNet121, "
            "reading a native-resolution 32^3 crop (25.6 mm) centred on the segmenter's aorta (every input type, "
            "the image alone included) instead of the whole 80^3 volume; 40 epochs at lr 1e-3 instead of 300 "
            "at 1e-4 (with 8 epochs the classifiers reading the image stayed at chance: training loss ln 3; "
            "with 20, training loss 0.65-0.84 at the last epoch and validation loss still falling there in "
            "10 of 15 runs; tab03_selection gives the epoch of each run's lowest validation loss)",
            "classifier: the 12- and 13-channel inputs pass a learned 1x1x1 convolution to 4 channels before the "
            "DenseNet stem (1.5x faster per epoch; seed 0, validation loss after 19-20 epochs: softmax+image 0.68 "
            "vs 0.73 without it, softmax 0.79 vs 0.64)",
            "label propagation: each subject's velocity field is refined by 8 Adam steps (lr 0.5) on its own image "
            "similarity and smoothness after the network, which alone under-fits in 800 iterations (validation "
            "mean label Dice 0.678 network, 0.792 refined)",
            "joint fine-tuning: 2 epochs per run (lr 1e-4, batch 2); lambda sweep: 1 epoch on 12 training "
            "subjects per lambda, evaluated on the validation split; ensemble members share the separately "
            "trained segmenter",
            "epochs reduced to fit 2 CPU cores",
            "cohort: half of the training subjects (per class) are domain-randomised (fetalcmr.synth.randomise: "
            "tissue intensities, blur, noise, bias field and gamma drawn per subject from ranges wider than the "
            "measured ones), which the paper's real cohort does not need; it is there so that the networks do not "
            "learn the phantom's exact contrast. Validation and test subjects keep the measured appearance",
            "test set: 150 synthetic subjects (75 CoA, 45 RAA, 30 DAA) drawn separately from the 63 training and "
            "validation subjects, for power (the paper's test set is its 30 % split of 195 real subjects)",
        ),
    )


def _paper() -> Profile:
    return Profile(
        name="paper",
        cohort=CohortConfig(n_subjects=195, grid=80, spacing_mm=0.65),
        propagation=PropagationConfig(grid=80, iterations=5000),
        segmenter=SegmenterConfig(),
        classifier=ClassifierConfig(),
        joint=JointConfig(),
    )


def _default_plain() -> Profile:
    """The default profile without domain randomisation: the ablation that measures what the
    randomisation costs or gains (same subjects, same anatomy, only the appearance differs)."""
    base = _default()
    reductions = tuple(r for r in base.reductions if not r.startswith("cohort: half of the training subjects"))
    return dataclasses.replace(
        base, name="default_plain", cohort=dataclasses.replace(base.cohort, domain_randomisation=0.0),
        reductions=(*reductions, "ablation: the default profile without domain randomisation (fetalcmr.synth."
                    "randomise off); every subject has the phantom's own tissue intensities, blur and noise"))


_PROFILES = {"smoke": _smoke, "default": _default, "default_plain": _default_plain, "paper": _paper}
PROFILE_NAMES: tuple[str, ...] = tuple(_PROFILES)


def get_profile(name: str) -> Profile:
    """Return the profile called ``name`` (``smoke``, ``default``, ``default_plain`` or ``paper``)."""
    try:
        return _PROFILES[name]()
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILE_NAMES)}") from None
