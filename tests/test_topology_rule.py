"""The topology rule as a classifier: generated subjects of every class, hand-made rings and arches,
the trachea found in the image, the review flag and the balanced accuracy's interval."""

from __future__ import annotations

import doctest
from typing import Any

import numpy as np
import pytest

from fetalcmr import topology_rule as tr
from fetalcmr.anatomy import LABEL_INDEX
from fetalcmr.topology import arch_side

AO = LABEL_INDEX["AO"]
SPACING = 52.0 / 48


@pytest.fixture(scope="module")
def subjects() -> list[tuple[int, Any]]:
    synth = pytest.importorskip("fetalcmr.synth")
    return [(cls, synth.generate_subject(cls, seed=seed, grid=48, spacing_mm=SPACING))
            for cls in (0, 1, 2) for seed in (0, 1)]


def test_ground_truth_of_every_class_is_classified_correctly(subjects: list[tuple[int, Any]]) -> None:
    for cls, sub in subjects:
        verdict = tr.classify_topology(sub.gt, trachea_mask=sub.trachea > 0)
        assert verdict.cls == cls, (cls, verdict)
        assert verdict.pieces == 1 and verdict.loops == (1 if cls == 2 else 0)
        assert verdict.trachea == "mask" and verdict.reason
        by_x = tr.classify_topology(sub.gt, trachea_x_vox=sub.meta["trachea_x_vox"])
        assert by_x.cls == cls and by_x.trachea == "x"


def test_trachea_found_in_the_image_gives_the_true_tracheas_arch_side(subjects: list[tuple[int, Any]]) -> None:
    for cls, sub in subjects:
        found = tr.trachea_from_image(sub.image, sub.gt, spacing_mm=SPACING)
        assert found.any()
        true = sub.trachea > 0
        both = found.any(axis=(0, 1)) & true.any(axis=(0, 1))
        assert both.sum() >= 0.6 * found.any(axis=(0, 1)).sum(), cls  # mostly at the trachea's levels
        centre = [np.nonzero(m[:, :, both])[:2] for m in (found, true)]
        assert abs(centre[0][0].mean() - centre[1][0].mean()) <= 1.5, cls  # x, voxels
        assert abs(centre[0][1].mean() - centre[1][1].mean()) <= 1.5, cls  # y
        assert arch_side(sub.gt, trachea_mask=found) == arch_side(sub.gt, trachea_mask=true), cls
        verdict = tr.classify_topology(sub.gt, image=sub.image, spacing_mm=SPACING)
        assert verdict.cls == cls and verdict.trachea == "image"
    assert not tr.trachea_from_image(sub.image, np.zeros_like(sub.gt)).any()  # no AO: nothing found
    with pytest.raises(ValueError, match="differ"):
        tr.trachea_from_image(sub.image[:-1], sub.gt)


def _arch(*sides: int) -> tuple[np.ndarray, np.ndarray]:
    """Separate AO pieces beside a vertical trachea at x = 10 (+1: right, −1: left); no loop."""
    lm = np.zeros((21, 21, 21), np.uint8)
    trachea = np.zeros(lm.shape, bool)
    trachea[9:12, 9:12, 4:17] = True
    for side in sides:
        lm[10 + 4 * side - 1:10 + 4 * side + 2, 9:12, 8:13] = AO
    return lm, trachea


@pytest.mark.parametrize(("sides", "cls"), [((1,), 1), ((-1,), 0), ((1, -1), 2)])
def test_arch_side_without_a_loop(sides: tuple[int, ...], cls: int) -> None:
    lm, trachea = _arch(*sides)
    verdict = tr.classify_topology(lm, trachea_mask=trachea)
    assert verdict.cls == cls and verdict.loops == 0
    assert verdict.pieces == len(sides)
    assert verdict.side == {1: "right", 0: "left", 2: "both"}[cls]


def test_a_ring_is_a_double_arch_whatever_the_trachea() -> None:
    ring = np.zeros((15, 15, 9), np.uint8)
    ring[3:12, 3:12, 3:6] = AO
    ring[5:10, 5:10, 3:6] = 0
    ring[3:6, 3:6, 3:6] = LABEL_INDEX["DAO"]  # the ring may close through the DAO
    verdict = tr.classify_topology(ring)
    assert (verdict.cls, verdict.loops, verdict.pieces, verdict.trachea) == (2, 1, 1, "none")
    assert "ring" in verdict.reason and verdict.as_row()["rule_class"] == "DAA"


def test_undetermined_cases_are_explicit() -> None:
    empty = tr.classify_topology(np.zeros((8, 8, 8), np.uint8))
    assert empty.cls == tr.UNDETERMINED and empty.name == "undetermined" and "no arch" in empty.reason
    lm, trachea = _arch(1)
    assert "trachea is unknown" in tr.classify_topology(lm).reason  # no loop and no trachea
    beside = np.zeros(lm.shape, bool)
    beside[0:2, 0:2, :] = True  # a "trachea" in slices with no arch next to it: no side
    assert tr.classify_topology(lm, trachea_mask=beside).cls == tr.UNDETERMINED
    dark = tr.classify_topology(lm, image=np.zeros(lm.shape))  # a flat image still yields a centre
    assert dark.trachea == "image"
    assert tr.class_name(tr.UNDETERMINED) == "undetermined" and tr.class_name(1) == "RAA"


def test_disagreement_flags_other_and_undetermined_classes() -> None:
    assert not tr.disagreement(1, 1)
    assert tr.disagreement(1, 2) and tr.disagreement(np.int64(0), tr.UNDETERMINED)
    assert tr.disagreement(tr.UNDETERMINED, tr.UNDETERMINED)


def test_balanced_accuracy_and_its_interval() -> None:
    truth = [0] * 6 + [1] * 3 + [2]
    pred = [0] * 6 + [1, 1, 0] + [tr.UNDETERMINED]
    bacc, lo, hi = tr.balanced_accuracy_ci(truth, pred)
    assert bacc == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert lo <= bacc <= hi and lo >= 1 / 3 - 1e-9 and hi <= 2 / 3 + 1e-9  # CoA 1, DAA 0 always; RAA 0..1
    assert tr.balanced_accuracy_ci(truth, pred, seed=3) == tr.balanced_accuracy_ci(truth, pred, seed=3)
    assert all(np.isnan(v) for v in tr.balanced_accuracy_ci([], []))


def test_docstring_examples() -> None:
    assert doctest.testmod(tr, raise_on_error=False).failed == 0
