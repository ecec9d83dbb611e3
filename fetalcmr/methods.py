"""Every compared method, named once: id, display labels, prediction folder, colour and stage.

Tables, figures, galleries and file names look methods up here instead of spelling their own
names (see ``docs/design.md`` §5). ``id`` is what tables store and folders are called; ``label``
is the long display name (tables of the producing notebook), ``short`` the compact one (the
cross-method figures and tables of the topology review).

>>> METHODS["net_lp_manual"].label
'(c) net: LP + manual'
>>> [m.id for m in methods_of("02_segmentation")]
['lp', 'net_lp', 'net_lp_manual', 'net_manual']
>>> by_letter("c").id
'net_lp_manual'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class Method:
    """One compared method and how every output names it."""

    id: str
    label: str
    short: str
    stage: str
    colour: str
    #: folder under the run's ``predictions/`` holding its label maps (None: it writes none)
    folder: str | None = None
    #: the paper's letter for the segmentation comparison (a)-(d), where it has one
    letter: str | None = None
    #: True when it predicts every vessel label (False: a vessel-region mask only)
    multiclass: bool = True


_ALL: tuple[Method, ...] = (
    Method("truth", "ground truth", "truth", "00_cohort", "#424242"),
    # 01: label propagation and its baselines (test subjects; the class is the oracle one)
    Method("voxelmorph", "VoxelMorph (test, oracle class)", "VoxelMorph", "01_label_propagation", "#1f77b4"),
    Method("voxelmorph_network", "VoxelMorph network only, no refinement", "VoxelMorph net",
           "01_label_propagation", "#ff7f0e"),
    Method("affine", "Affine only", "affine", "01_label_propagation", "#2ca02c"),
    Method("demons", "Affine + demons", "demons", "01_label_propagation", "#d62728"),
    Method("voxelmorph_all_test", "VoxelMorph (all test subjects)", "VoxelMorph all test",
           "01_label_propagation", "#9467bd"),
    Method("voxelmorph_fitted", "VoxelMorph (training+validation, fitted)", "VoxelMorph fitted",
           "01_label_propagation", "#8c564b"),
    # 02: the paper's segmentation comparison
    Method("lp", "(a) LP", "LP", "02_segmentation", "#9e9e9e", folder="lp", letter="a"),
    Method("net_lp", "(b) net: LP", "LP-only", "02_segmentation", "#64b5f6", folder="net_lp", letter="b"),
    Method("net_lp_manual", "(c) net: LP + manual", "LP+manual", "02_segmentation", "#d84315",
           folder="net_lp_manual", letter="c"),
    Method("net_manual", "(d) net: manual", "manual only", "02_segmentation", "#7cb342", folder="net_manual",
           letter="d", multiclass=False),
    # 04: joint fine-tuning
    Method("separate", "separately trained pair", "separate", "04_joint_training", "#d84315"),
    Method("lambda0", "fine-tuned, λ = 0 (control)", "λ = 0", "04_joint_training", "#8d6e63"),
    Method("joint", "joint fine-tuned (λ = 14)", "joint", "04_joint_training", "#6a1b9a", folder="joint"),
    Method("ensemble", "joint ensemble (softmax mean, majority vote)", "ensemble", "04_joint_training",
           "#00897b"),
)

#: id -> method, in display order.
METHODS: Mapping[str, Method] = MappingProxyType({m.id: m for m in _ALL})


def methods_of(stage: str) -> list[Method]:
    """Return the methods a stage (notebook name, e.g. ``"02_segmentation"``) produces, in display order."""
    return [m for m in _ALL if m.stage == stage]


def by_letter(letter: str) -> Method:
    """Return the segmentation method the paper calls (``letter``), ``"a"``–``"d"``."""
    for m in _ALL:
        if m.letter == letter:
            return m
    raise KeyError(f"no method ({letter}); the paper's segmentation methods are (a)-(d)")


def by_name(name: str) -> Method | None:
    """Return the method whose id, ``short`` or ``label`` is ``name``, or None when none is.

    >>> by_name("LP+manual").id
    'net_lp_manual'
    """
    return next((m for m in _ALL if name in (m.id, m.short, m.label)), None)


def get(method_id: str) -> Method:
    """Return the method ``method_id``; the error lists the known ids."""
    try:
        return METHODS[method_id]
    except KeyError:
        raise KeyError(f"unknown method {method_id!r}; known: {', '.join(METHODS)}") from None
