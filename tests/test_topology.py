"""Tests for fetalcmr.topology: Betti numbers, adjacency and the per-subject verdict."""

from __future__ import annotations

import itertools
from collections import deque

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from fetalcmr import topology
from fetalcmr.anatomy import ARCH_SIDE, CLASS_INDEX, EXPECTED_CONTACTS, LABEL_INDEX

L = LABEL_INDEX
GRID = np.indices((64, 64, 64), dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# constructed shapes


def _ball(shape: tuple[int, int, int], centre: tuple[float, ...], radius: float) -> np.ndarray:
    g = np.indices(shape, dtype=np.float32)
    return sum((g[i] - centre[i]) ** 2 for i in range(3)) <= radius**2


def _torus(shape: tuple[int, int, int], centre: tuple[float, ...], big: float, small: float) -> np.ndarray:
    g = np.indices(shape, dtype=np.float32)
    x, y, z = (g[i] - centre[i] for i in range(3))
    return (np.sqrt(x**2 + y**2) - big) ** 2 + z**2 <= small**2


def test_betti_solid_ball() -> None:
    assert topology.betti_numbers(_ball((20, 20, 20), (10, 10, 10), 6)) == (1, 0, 0)


def test_betti_two_balls() -> None:
    m = _ball((30, 20, 20), (7, 10, 10), 5) | _ball((30, 20, 20), (22, 10, 10), 5)
    assert topology.betti_numbers(m) == (2, 0, 0)


def test_betti_solid_torus() -> None:
    assert topology.betti_numbers(_torus((30, 30, 12), (15, 15, 6), 8, 3)) == (1, 1, 0)


def test_betti_hollow_sphere() -> None:
    shell = _ball((24, 24, 24), (12, 12, 12), 9) & ~_ball((24, 24, 24), (12, 12, 12), 6)
    assert topology.betti_numbers(shell) == (1, 0, 1)


def test_betti_two_holed_torus() -> None:
    eight = _torus((44, 30, 12), (13, 15, 6), 8, 3) | _torus((44, 30, 12), (29, 15, 6), 8, 3)
    assert ndimage.label(eight)[1] == 1  # the two rings overlap: one figure eight
    assert topology.betti_numbers(eight) == (1, 2, 0)


def test_betti_uses_26_foreground_6_background() -> None:
    diag = np.zeros((4, 4, 4), bool)
    diag[1, 1, 1] = diag[2, 2, 2] = True  # corner contact: one 26-component
    assert topology.betti_numbers(diag) == (1, 0, 0)
    # a ring closed only through a vertex contact is still a loop under 26-connectivity
    ring = np.zeros((6, 6, 3), bool)
    ring[1, 2:4, 1] = ring[4, 2:4, 1] = ring[2:4, 1, 1] = ring[2:4, 4, 1] = True
    assert topology.betti_numbers(ring) == (1, 1, 0)
    # a one-voxel cavity sealed only face-wise is a cavity for a 6-connected background
    box = np.ones((3, 3, 3), bool)
    box[1, 1, 1] = False
    assert topology.betti_numbers(box) == (1, 0, 1)
    assert topology.betti_numbers(np.zeros((3, 3, 3), bool)) == (0, 0, 0)


def test_betti_of_a_torus_and_a_ball_at_64() -> None:
    """The 64³ case whose time ``make bench SECTIONS=topology`` reports (budget 0.05 s)."""
    m = _torus((64, 64, 64), (32, 32, 32), 18, 6) | _ball((64, 64, 64), (10, 10, 10), 6)
    assert topology.betti_numbers(m) == (2, 1, 0)


_small_masks = arrays(np.bool_, st.tuples(*[st.integers(2, 7)] * 3), elements=st.booleans())


def _neighbours(idx: tuple[int, ...], offsets: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    return [tuple(i + o for i, o in zip(idx, off, strict=True)) for off in offsets]


_OFFSETS_26 = [o for o in itertools.product((-1, 0, 1), repeat=3) if o != (0, 0, 0)]
_OFFSETS_6 = [o for o in _OFFSETS_26 if sum(map(abs, o)) == 1]


def _count_components(cells: set[tuple[int, ...]], offsets: list[tuple[int, ...]]) -> int:
    """Connected components of a set of voxels by breadth-first search (independent of scipy)."""
    seen: set[tuple[int, ...]] = set()
    count = 0
    for start in cells:
        if start in seen:
            continue
        count += 1
        seen.add(start)
        queue = deque([start])
        while queue:
            for nb in _neighbours(queue.popleft(), offsets):
                if nb in cells and nb not in seen:
                    seen.add(nb)
                    queue.append(nb)
    return count


def _reference_betti(m: np.ndarray) -> tuple[int, int, int]:
    """(β0, β1, β2) of the union of closed unit cubes at the foreground voxels, computed from scratch.

    β0: 26-connected foreground components (BFS); β2: 6-connected background components of the
    padded volume other than the outer one (BFS); χ: V − E + F − C of the cubical complex,
    enumerating every cube's vertices, edges and faces as sets; β1 = β0 + β2 − χ (Euler–Poincaré).
    """
    fg = {tuple(int(i) for i in idx) for idx in np.argwhere(m)}
    if not fg:
        return 0, 0, 0
    padded = np.pad(m, 1)
    bg = {tuple(int(i) for i in idx) for idx in np.argwhere(~padded)}
    b0 = _count_components(fg, _OFFSETS_26)
    b2 = _count_components(bg, _OFFSETS_6) - 1
    vertices, edges, faces = set(), set(), set()
    for x, y, z in fg:
        for c in itertools.product((0, 1), repeat=3):
            vertices.add((x + c[0], y + c[1], z + c[2]))
        for axis in range(3):  # an edge: its lower end and its direction; a face: its corner and normal
            others = [a for a in range(3) if a != axis]
            for u, v in itertools.product((0, 1), repeat=2):
                corner = [x, y, z]
                corner[others[0]] += u
                corner[others[1]] += v
                edges.add((*corner, axis))
            for w in (0, 1):
                corner = [x, y, z]
                corner[axis] += w
                faces.add((*corner, axis))
    chi = len(vertices) - len(edges) + len(faces) - len(fg)
    return b0, b0 + b2 - chi, b2


def test_reference_betti_on_known_shapes() -> None:
    """The test's own reference agrees with shapes whose Betti numbers are known."""
    ring = np.zeros((5, 5, 3), bool)
    ring[1:4, 1:4, 1] = True
    ring[2, 2, 1] = False
    box = np.ones((3, 3, 3), bool)
    box[1, 1, 1] = False
    assert _reference_betti(_ball((12, 12, 12), (6, 6, 6), 4)) == (1, 0, 0)
    assert _reference_betti(ring) == (1, 1, 0)
    assert _reference_betti(box) == (1, 0, 1)


def test_betti_two_separate_rings_and_a_diagonal_chain() -> None:
    two = np.zeros((30, 30, 12), bool)
    two[:, :15] = _torus((30, 15, 12), (15, 7, 6), 5, 1.5)
    two[:, 16:] = _torus((30, 14, 12), (15, 7, 6), 5, 1.5)
    assert topology.betti_numbers(two) == (2, 2, 0)
    chain = np.zeros((6, 6, 6), bool)
    for i in range(6):
        chain[i, i, i] = True  # touching only at corners: one 26-connected piece, no loop
    assert topology.betti_numbers(chain) == (1, 0, 0)
    assert topology.betti_numbers(chain | chain[::-1]) == _reference_betti(chain | chain[::-1])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_small_masks)
def test_betti_numbers_match_an_independent_computation(m: np.ndarray) -> None:
    assert topology.betti_numbers(m) == _reference_betti(m)
    if m.any():
        b0, b1, b2 = _reference_betti(m)
        assert topology.euler_characteristic(m) == b0 - b1 + b2


@settings(max_examples=60, deadline=None)
@given(_small_masks, st.integers(0, 2), st.tuples(*[st.integers(0, 3)] * 3))
def test_betti_invariant_under_flip_translation_transpose(m: np.ndarray, axis: int,
                                                          shift: tuple[int, int, int]) -> None:
    ref = topology.betti_numbers(m)
    moved = np.pad(np.flip(m, axis=axis), [(s, 3 - s) for s in shift])
    assert topology.betti_numbers(moved) == ref
    assert topology.betti_numbers(np.transpose(m, (2, 0, 1))) == ref
    assert topology.euler_characteristic(moved) == topology.euler_characteristic(m)


@settings(max_examples=40, deadline=None)
@given(_small_masks, _small_masks)
def test_betti_additive_over_separated_union(a: np.ndarray, b: np.ndarray) -> None:
    both = np.zeros((a.shape[0] + b.shape[0] + 2, max(a.shape[1], b.shape[1]),
                     max(a.shape[2], b.shape[2])), bool)
    both[:a.shape[0], :a.shape[1], :a.shape[2]] = a
    both[a.shape[0] + 2:, :b.shape[1], :b.shape[2]] = b  # a gap of two voxels: no contact
    got = topology.betti_numbers(both)
    assert got == tuple(x + y for x, y in zip(topology.betti_numbers(a), topology.betti_numbers(b),
                                              strict=True))


# ---------------------------------------------------------------------------------------------
# components and adjacency


def test_components_per_label() -> None:
    lm = np.zeros((10, 10, 10), np.uint8)
    lm[1:3, 1:3, 1:3] = 4
    lm[6:8, 6:8, 6:8] = 4
    lm[4, 4, 4] = 6
    assert topology.components_per_label(lm) == {4: 2, 6: 1}
    assert topology.components_per_label(lm, labels=[4, 6, 8]) == {4: 2, 6: 1, 8: 0}
    lm[3, 3, 3] = 4  # a corner contact joins the two pieces (26-connectivity)
    lm[4:6, 4:6, 4:6] = 4
    assert topology.components_per_label(lm)[4] == 1


def test_adjacency_graph_faces_corners_and_gaps() -> None:
    lm = np.zeros((8, 8, 8), np.uint8)
    lm[1, 1, 1], lm[2, 2, 2] = 1, 2  # corner contact
    lm[5, 5, 5], lm[5, 5, 6] = 3, 4  # face contact
    lm[1, 6, 6], lm[3, 6, 6] = 5, 6  # one-voxel gap: no contact
    assert topology.adjacency_graph(lm) == {(1, 2), (3, 4)}
    assert topology.adjacency_graph(np.zeros((3, 3, 3), np.uint8)) == set()


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint8, st.tuples(*[st.integers(2, 6)] * 3), elements=st.integers(0, 4)))
def test_adjacency_graph_matches_bruteforce(lm: np.ndarray) -> None:
    want = set()
    for idx in np.ndindex(lm.shape):
        a = lm[idx]
        if a == 0:
            continue
        for d in np.ndindex(3, 3, 3):
            j = tuple(i + k - 1 for i, k in zip(idx, d, strict=True))
            if all(0 <= j[n] < lm.shape[n] for n in range(3)) and lm[j] not in (0, a):
                want.add((int(min(a, lm[j])), int(max(a, lm[j]))))
    assert topology.adjacency_graph(lm) == want


# ---------------------------------------------------------------------------------------------
# class phantoms: tubes at 64³ in RAS+ (x → Right, y → Anterior, z → Superior)

TRACHEA_X = 32


def _tube(vol: np.ndarray, points: list[tuple[float, float, float]], radius: float, label: int) -> None:
    """Draw a capsule chain into background voxels of ``vol`` (earlier vessels keep theirs)."""
    for a, b in zip(points[:-1], points[1:], strict=True):
        a_, b_ = np.asarray(a, np.float32), np.asarray(b, np.float32)
        lo = np.maximum(np.floor(np.minimum(a_, b_) - radius - 1), 0).astype(int)
        hi = np.minimum(np.ceil(np.maximum(a_, b_) + radius + 2), vol.shape).astype(int)
        box = tuple(slice(lo[i], hi[i]) for i in range(3))
        g = np.stack([GRID[i][box] for i in range(3)], axis=-1)
        d = b_ - a_
        t = np.clip(((g - a_) @ d) / float(d @ d), 0.0, 1.0)
        dist = np.linalg.norm(g - (a_ + t[..., None] * d), axis=-1)
        region = vol[box]
        region[(dist <= radius) & (region == 0)] = label


LEFT_ARCH = [(36, 42, 40), (29, 39, 47), (25, 30, 47), (28, 22, 46), (32, 20, 46)]
RIGHT_ARCH = [(36, 42, 40), (40, 36, 47), (40, 30, 47), (36, 22, 46), (32, 20, 46)]


def phantom(cls: int) -> np.ndarray:
    """Return a tube phantom of class ``cls`` whose topology matches the class template."""
    v = np.zeros((64, 64, 64), np.uint8)
    _tube(v, [(36, 42, 12), (36, 42, 40)], 2.5, L["AO"])
    if cls in (0, 2):
        _tube(v, LEFT_ARCH, 2.5 if cls == 0 else 1.6, L["AO"])
    if cls in (1, 2):
        _tube(v, RIGHT_ARCH, 2.5, L["AO"])
    _tube(v, [(32, 20, 46), (32, 20, 4)], 2.5, L["DAO"])
    _tube(v, [(28, 46, 10), (28, 40, 30), (28, 36, 32)], 3, L["MPA"])
    _tube(v, [(28, 36, 32), (16, 30, 30)], 2, L["LPA"])
    _tube(v, [(28, 36, 32), (48, 30, 30)], 2, L["RPA"])
    _tube(v, [(29, 38, 35), (30, 28, 40), (31, 21, 40)], 2, L["AD"])
    if cls == 1:  # aberrant LSA from the proximal DAO, behind the trachea
        _tube(v, [(31, 17, 26), (20, 19, 56)], 1.5, L["LSA"])
    else:
        _tube(v, [(26, 31, 48), (22, 32, 60)], 1.5, L["LSA"])
    _tube(v, [(39, 41, 42), (43, 40, 60)], 1.5, L["BCA"])
    _tube(v, [(34, 40, 43.5), (30, 40, 60)], 1.5, L["LCCA"])
    _tube(v, [(50, 40, 8), (50, 40, 60)], 2, L["SVC"])
    _tube(v, [(16, 28, 14), (46, 28, 14)], 1.5, L["PV"])
    return v


def trachea(shape: tuple[int, int, int] = (64, 64, 64)) -> np.ndarray:
    """Return a trachea cylinder at x = 32, y = 30 above the carina (z ≥ 36)."""
    g = np.indices(shape)
    return ((g[0] - TRACHEA_X) ** 2 + (g[1] - 30) ** 2 <= 9) & (g[2] >= 36)


@pytest.fixture(scope="module")
def phantoms() -> dict[int, np.ndarray]:
    return {cls: phantom(cls) for cls in (0, 1, 2)}


@pytest.mark.parametrize("cls", [0, 1, 2])
def test_phantom_templates_are_correct(phantoms: dict[int, np.ndarray], cls: int) -> None:
    lm = phantoms[cls]
    assert topology.adjacency_graph(lm) == set(EXPECTED_CONTACTS[cls])
    for kwargs in ({"trachea_x_vox": TRACHEA_X}, {"trachea_mask": trachea()}, {}):
        rep = topology.topology_report(lm, cls, **kwargs)
        assert rep.correct, (cls, kwargs, rep.reasons)
        assert rep.reasons == []
        want_side = ARCH_SIDE[cls] if kwargs else None
        assert rep.arch_side == want_side
    assert rep.arch_betti == (1, 1 if cls == 2 else 0, 0)
    assert set(rep.components.values()) == {1}


def test_report_flags_merged_arches(phantoms: dict[int, np.ndarray]) -> None:
    """A DAA whose two arches are segmented as one thick arch down the middle has no ring."""
    daa = CLASS_INDEX["DAA"]
    lm = phantoms[daa].copy()
    lm[(lm == L["AO"]) & (GRID[2] >= 42)] = 0
    merged = np.zeros_like(lm)
    _tube(merged, [(36, 42, 40), (34, 36, 48), (32, 28, 48), (32, 20, 46)], 3.5, L["AO"])
    lm[(merged > 0) & (lm != L["DAO"])] = L["AO"]
    rep = topology.topology_report(lm, daa, trachea_x_vox=TRACHEA_X)
    assert not rep.correct
    assert rep.arch_betti == (1, 0, 0)
    assert any("merged or missing arch" in r for r in rep.reasons)


def test_report_flags_missing_left_arch_in_daa(phantoms: dict[int, np.ndarray]) -> None:
    daa = CLASS_INDEX["DAA"]
    lm = phantoms[daa].copy()
    lm[(lm == L["AO"]) & (GRID[0] < 30) & (GRID[2] >= 42)] = 0  # drop the left arch
    rep = topology.topology_report(lm, daa, trachea_x_vox=TRACHEA_X)
    assert not rep.correct
    assert rep.arch_betti[1] == 0
    assert rep.arch_side == "right"
    assert any("passes right of the trachea" in r for r in rep.reasons)
    assert any("merged or missing arch" in r for r in rep.reasons)


def test_report_flags_lsa_on_wrong_vessel(phantoms: dict[int, np.ndarray]) -> None:
    raa = CLASS_INDEX["RAA"]
    lm = phantoms[raa].copy()
    lm[lm == L["LSA"]] = 0
    _tube(lm, [(38, 33, 49), (40, 33, 60)], 1.5, L["LSA"])  # LSA from the (right) arch
    rep = topology.topology_report(lm, raa, trachea_x_vox=TRACHEA_X)
    assert not rep.correct
    assert (L["AO"], L["LSA"]) in rep.extra_contacts
    assert (L["DAO"], L["LSA"]) in rep.missing_contacts
    assert any("extra contact AO–LSA" in r for r in rep.reasons)
    # an LSA touching both AO and DAO closes an extra loop in the ring
    lm2 = phantoms[raa].copy()
    _tube(lm2, [(24, 18.5, 47), (36, 22, 47)], 1.2, L["LSA"])
    assert (L["AO"], L["LSA"]) in topology.adjacency_graph(lm2)
    rep2 = topology.topology_report(lm2, raa)
    assert not rep2.correct and rep2.ring_betti[1] == 1
    assert any("AO∪DAO∪AD∪LSA has 1 loop" in w for w in rep2.warnings)


def test_report_extra_fragment_and_tiny_fragment(phantoms: dict[int, np.ndarray]) -> None:
    coa = CLASS_INDEX["CoA"]
    lm = phantoms[coa].copy()
    lm[55:58, 55:58, 55:58] = L["MPA"]  # a 27-voxel island of MPA
    rep = topology.topology_report(lm, coa)
    assert not rep.correct
    assert rep.components[L["MPA"]] == 2
    assert any("MPA split into 2 pieces" in r for r in rep.reasons)
    tiny = phantoms[coa].copy()
    tiny[58, 58, 58] = L["MPA"]  # one stray voxel: tolerated, reported
    rep = topology.topology_report(tiny, coa)
    assert rep.correct, rep.reasons
    assert rep.fragments_removed == {L["MPA"]: 1}
    assert any("tiny fragment" in w for w in rep.warnings)
    assert not topology.topology_report(tiny, coa, min_fragment_voxels=0).correct


def test_report_missing_label_and_incidental_contact(phantoms: dict[int, np.ndarray]) -> None:
    coa = CLASS_INDEX["CoA"]
    lm = phantoms[coa].copy()
    lm[lm == L["PV"]] = 0
    rep = topology.topology_report(lm, coa)
    assert not rep.correct and "PV missing" in rep.reasons
    touching = phantoms[coa].copy()
    _tube(touching, [(47, 40, 30), (40, 41, 30)], 1.5, L["SVC"])  # SVC bulges onto the AO
    rep = topology.topology_report(touching, coa)
    assert rep.extra_contacts == {(L["SVC"], L["AO"])}
    assert rep.correct and any("extra contact" in w for w in rep.warnings)
    assert not topology.topology_report(touching, coa, extra_contacts_fail=True).correct


def test_report_wrong_side_coa(phantoms: dict[int, np.ndarray]) -> None:
    """A right arch judged as CoA (left arch expected) fails on side and on LSA origin."""
    rep = topology.topology_report(phantoms[CLASS_INDEX["RAA"]], CLASS_INDEX["CoA"],
                                   trachea_mask=trachea())
    assert rep.arch_side == "right"
    assert not rep.correct


def test_report_row_is_flat(phantoms: dict[int, np.ndarray]) -> None:
    rows = topology.report_table({"sub-000": topology.topology_report(phantoms[0], 0)})
    assert rows[0]["id"] == "sub-000" and rows[0]["correct"] is True and rows[0]["class"] == "CoA"
    assert all(isinstance(v, (str, int, bool)) for v in rows[0].values())


@pytest.mark.parametrize("cls", [0, 1, 2])
def test_report_correct_on_generated_ground_truth(cls: int) -> None:
    """The verdict accepts the synthetic generator's ground truth of every class."""
    synth = pytest.importorskip("fetalcmr.synth")
    sub = synth.generate_subject(cls, seed=3, grid=48, spacing_mm=52.0 / 48)
    for kwargs in ({"trachea_x_vox": sub.meta["trachea_x_vox"]}, {"trachea_mask": sub.trachea}):
        rep = topology.topology_report(sub.gt, cls, **kwargs)
        assert rep.correct, (kwargs.keys(), rep.reasons)
        assert rep.arch_side == ARCH_SIDE[cls]


def test_docstring_examples() -> None:
    import doctest

    result = doctest.testmod(topology)
    assert result.attempted >= 3 and result.failed == 0


# ---------------------------------------------------------------------------------------------
# behaviour pinned down by the mutation-testing pass (tests/mutation/mutate.py)

AO, DAO, MPA = L["AO"], L["DAO"], L["MPA"]


def test_inputs_must_be_3d_and_may_be_nested_lists() -> None:
    flat = np.zeros((4, 4), np.uint8)
    for call in (topology.components_per_label, topology.euler_characteristic, topology.betti_numbers,
                 topology.adjacency_graph, topology.remove_fragments, lambda a: topology.arch_side(a, 1.0),
                 lambda a: topology.topology_report(a, 0)):
        with pytest.raises(ValueError, match="expected a 3D"):
            call(flat)
    cube = [[[1, 1], [1, 1]], [[1, 1], [1, 0]]]  # seven voxels of a 2x2x2 cube
    assert topology.betti_numbers(cube) == (1, 0, 0) and topology.components_per_label(cube) == {1: 1}
    with pytest.raises(ValueError, match="does not match"):
        topology.arch_side(np.full((4, 4, 4), AO), trachea_mask=np.ones((4, 4, 5), bool))


def test_components_of_background_and_absent_labels_are_zero() -> None:
    lm = np.zeros((6, 6, 6), np.uint8)
    lm[0, 0, 0] = lm[5, 5, 5] = MPA
    assert topology.components_per_label(lm, [0, AO, MPA, 11]) == {0: 0, AO: 0, MPA: 2, 11: 0}


def test_remove_fragments_size_boundary_and_labels_made_of_tiny_pieces() -> None:
    lm = np.zeros((12, 12, 12), np.uint8)
    lm[0:3, 0:3, 0:3] = AO  # main piece
    lm[6, 6, 6:10] = AO  # 4 voxels: exactly the threshold, kept
    lm[10, 10, 9:12] = AO  # 3 voxels: removed
    lm[0, 11, 0:2] = MPA  # MPA's largest piece (2 voxels) stays although tiny
    lm[11, 0, 0] = MPA  # its 1-voxel fragment goes
    out, removed = topology.remove_fragments(lm, 4)
    assert removed == {AO: 1, MPA: 1}
    assert (out == AO).sum() == 27 + 4 and (out == MPA).sum() == 2 and out[11, 0, 0] == 0
    assert lm[10, 10, 9] == AO  # the input is left unchanged
    # min_voxels 2 removes single voxels only; 1 or less removes nothing
    assert topology.remove_fragments(lm, 2)[1] == {MPA: 1}
    assert topology.remove_fragments(lm, 1)[1] == {}


def _arch_scene(groups: list[tuple[int, int, int]], z: int = 4) -> np.ndarray:
    """AO voxels: ``n`` voxels at (x, y, 0..n-1) for each ``(x, y, n)``; a 20 x 20 x ``z`` volume."""
    lm = np.zeros((20, 20, z), np.uint8)
    for x, y, n in groups:
        lm[x, y, :n] = AO
    return lm


def test_arch_side_with_a_trachea_mask_counts_the_band_beside_it() -> None:
    # trachea: x 9..11 (centre 10), y 8..11 (centre 9.5, back wall 8) in every slice
    tm = np.zeros((20, 20, 4), bool)
    tm[9:12, 8:12, :] = True
    # the band runs from 2 voxels behind the back wall (y = 6) to half a voxel in front of the centre (y = 10)
    assert topology.arch_side(_arch_scene([(5, 10, 4), (15, 11, 4)]), trachea_mask=tm) == "left"
    assert topology.arch_side(_arch_scene([(5, 6, 4), (15, 5, 4)]), trachea_mask=tm) == "left"
    assert topology.arch_side(_arch_scene([(5, 8, 4), (15, 8, 4)]), trachea_mask=tm) == "both"
    assert topology.arch_side(_arch_scene([(15, 9, 4)]), trachea_mask=tm) == "right"
    assert topology.arch_side(_arch_scene([(5, 12, 4), (15, 4, 4)]), trachea_mask=tm) is None
    # AO in slices without trachea does not count
    tm_low = tm.copy()
    tm_low[:, :, 2:] = False
    assert topology.arch_side(_arch_scene([(5, 9, 4)]), trachea_mask=tm_low) is None  # 2 voxels < min_voxels


def test_arch_side_from_the_trachea_position_uses_the_posterior_half_and_thresholds() -> None:
    tx = 10.0
    # AO spans y 0..10 (midline voxels, ignored as too close): the posterior half is y <= 5
    span = [(10, 0, 1), (10, 10, 1)]
    assert topology.arch_side(_arch_scene([*span, (5, 5, 4)]), tx) == "left"
    assert topology.arch_side(_arch_scene([*span, (5, 6, 4)]), tx) is None  # in front of the mid-point
    # exactly min_offset_vox = 2 from the centre counts, and exactly min_voxels = 4 voxels count
    assert topology.arch_side(_arch_scene([*span, (8, 3, 4), (12, 3, 3)]), tx) == "left"
    assert topology.arch_side(_arch_scene([*span, (12, 3, 4)]), tx) == "right"
    assert topology.arch_side(_arch_scene([*span, (12, 3, 1)]), tx, min_voxels=1) == "right"
    assert topology.arch_side(_arch_scene([*span, (10, 3, 4)]), tx) is None  # only midline voxels
    # with no offset required, the midline belongs to neither side
    scene = _arch_scene([*span, (10, 3, 4), (7, 3, 4)])
    assert topology.arch_side(scene, tx, min_offset_vox=0) == "left"
    assert topology.arch_side(_arch_scene([*span, (10, 3, 4), (13, 3, 4)]), tx, min_offset_vox=0) == "right"
    assert topology.arch_side(_arch_scene([*span, (11, 3, 4)]), tx, min_offset_vox=0) == "right"
    # a side needs min_fraction of the counted voxels: 4 of 4 + 80 (< 5 %) is not enough
    big = _arch_scene([*span, (5, 3, 4)], z=84)
    big[15, 1, :80] = AO
    assert topology.arch_side(big, tx) == "right"
    assert topology.arch_side(big, tx, min_fraction=0.04) == "both"
    assert topology.arch_side(np.zeros((4, 4, 4), np.uint8), tx) is None
    assert topology.arch_side(_arch_scene([(5, 3, 4)])) is None  # no trachea position


def test_report_row_values() -> None:
    rep = topology.TopologyReport(
        cls=2, components={AO: 1, DAO: 2, MPA: 0}, fragments_removed={AO: 2, MPA: 1},
        arch_betti=(3, 4, 5), ring_betti=(6, 7, 8), contacts={(AO, DAO)}, missing_contacts={(4, 8), (2, 7)},
        extra_contacts={(1, 4)}, arch_side=None, label_loops={}, correct=False, reasons=["a", "b"],
        warnings=["w"])
    assert rep.as_row() == {
        "class": "DAA", "correct": False, "arch_b0": 3, "arch_b1": 4, "arch_b2": 5, "ring_b1": 7, "arch_side": "",
        "split_labels": "DAO", "missing_labels": "MPA", "missing_contacts": "LPA-MPA;AO-LSA",
        "extra_contacts": "SVC-AO", "fragments_removed": 3, "reasons": "a; b", "warnings": "w"}
    assert topology.report_table({"s": rep})[0] == {"id": "s", **rep.as_row()}


def test_cycle_rank_of_label_graphs() -> None:
    assert topology._graph_loops({(1, 2), (2, 3), (1, 3)}, [1, 2, 3, 4]) == 1  # a triangle and a lone node
    assert topology._graph_loops({(1, 2), (2, 3), (1, 3), (5, 6), (6, 7), (5, 7), (7, 8)}, range(1, 9)) == 2
    assert topology._graph_loops({(1, 2), (2, 3), (3, 9)}, [1, 2, 3]) == 0  # edges leaving the node set do not count
    # the default templates: AD and LSA each join the arch at one place, so the ring adds no loop
    assert all(topology.expected_ring_loops(c) == topology.ARCH_LOOPS[c] for c in topology.ARCH_LOOPS)


def test_report_verdicts_on_edited_phantoms(phantoms: dict[int, np.ndarray]) -> None:
    coa, daa = CLASS_INDEX["CoA"], CLASS_INDEX["DAA"]
    for cls, lm in phantoms.items():  # a correct segmentation raises no warning either
        rep = topology.topology_report(lm, cls, trachea_x_vox=TRACHEA_X)
        assert rep.warnings == [] and rep.label_loops == {v: int(v == AO and cls == daa) for v in range(1, 12)}
    with pytest.raises(ValueError, match="unknown class"):
        topology.topology_report(phantoms[coa], 7)
    # a DAO cut in two interrupts the arch
    cut = phantoms[coa].copy()
    cut[:, :, 20:23][cut[:, :, 20:23] == DAO] = 0
    reasons = topology.topology_report(cut, coa).reasons
    assert "DAO split into 2 pieces" in reasons and "AO∪DAO in 2 pieces (arch interrupted)" in reasons
    # a second arch where the class has one is an extra loop
    double = phantoms[coa].copy()
    _tube(double, RIGHT_ARCH, 2.5, AO)
    assert "AO∪DAO has 1 loop(s), CoA expects 0 (extra loop)" in topology.topology_report(double, coa).reasons
    # a missing vessel also loses its contacts
    no_lsa = phantoms[coa].copy()
    no_lsa[no_lsa == L["LSA"]] = 0
    assert topology.topology_report(no_lsa, coa).reasons == ["LSA missing", "missing contact AO–LSA"]
    # a loop inside one vessel other than a double arch's AO is a warning, not a failure
    looped = phantoms[coa].copy()
    _tube(looped, [(20, 28, 14), (20, 28, 24), (30, 28, 24), (30, 28, 14)], 1.5, L["PV"])
    rep = topology.topology_report(looped, coa)
    assert rep.correct and rep.label_loops[L["PV"]] == 1 and rep.warnings == ["PV has 1 tunnel(s)"]
    # a trachea known but level with no AO leaves the side undetermined: a warning
    tm = np.zeros((64, 64, 64), bool)
    tm[30:34, 28:32, 0:4] = True
    rep = topology.topology_report(phantoms[coa], coa, trachea_mask=tm)
    assert rep.correct and rep.arch_side is None and rep.warnings == ["arch side undetermined"]


def test_report_flags_an_arch_enclosing_a_cavity() -> None:
    g = np.indices((12, 12, 12))
    r2 = sum((g[i] - 6) ** 2 for i in range(3))
    lm = np.where((r2 <= 25) & (r2 > 4), AO, 0).astype(np.uint8)  # a hollow ball of AO
    rep = topology.topology_report(lm, CLASS_INDEX["CoA"])
    assert rep.arch_betti == (1, 0, 1) and "AO∪DAO encloses 1 cavity(ies)" in rep.reasons


def test_report_on_a_double_arch_with_extra_loops(phantoms: dict[int, np.ndarray]) -> None:
    daa = CLASS_INDEX["DAA"]
    third = phantoms[daa].copy()
    _tube(third, [(36, 42, 40), (32, 30, 55), (32, 20, 46)], 1.5, AO)  # a third arch over the top
    assert topology.topology_report(third, daa).reasons == ["AO∪DAO has 3 loop(s), DAA expects 1 (extra loop)"]
    # an LSA running on from its arch to the DAO closes a ring loop beyond the double arch's one
    ring = phantoms[daa].copy()
    _tube(ring, [(22, 32, 60), (20, 19, 56), (31, 17, 30)], 1.2, L["LSA"])
    rep = topology.topology_report(ring, daa)
    assert rep.arch_betti == (1, 1, 0) and rep.ring_betti == (1, 2, 0)
    assert rep.warnings == ["AO∪DAO∪AD∪LSA has 2 loop(s), expected 1"]
    assert rep.reasons == ["extra contact DAO–LSA"]
