"""Topology of vessel label maps: connected components, Betti numbers, the label adjacency
graph, and a per-subject verdict against the class templates in ``fetalcmr.anatomy``.

Digital topology uses the consistent pair (26, 6): foreground is 26-connected, background
6-connected. This is the topology of the union of *closed* unit cubes, one per foreground voxel,
so Betti numbers follow from the Euler characteristic of that cubical complex::

    χ = V − E + F − C,   β0 = #26-components,   β2 = #6-connected cavities,   β1 = β0 + β2 − χ

Arrays are ``[x, y, z]`` in RAS+ (x grows to the subject's Right).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from fetalcmr.anatomy import ARCH_LOOPS, ARCH_SIDE, CLASSES, EXPECTED_CONTACTS, LABEL_INDEX, LABELS

_FULL = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity
_FACE = ndimage.generate_binary_structure(3, 1)  # 6-connectivity

#: Default size (voxels) under which an extra connected piece of a label counts as a tiny
#: fragment: reported, removed before the topology is measured, but not failing the verdict.
#: Four voxels is below the cross-section of the thinnest vessel at the default grid (a head-and-
#: neck artery of 1.8 mm is ≈ 2.3 voxels across at 0.8 mm), so any genuine vessel piece counts.
MIN_FRAGMENT_VOXELS: int = 4

AO, DAO, AD, LSA = (LABEL_INDEX[n] for n in ("AO", "DAO", "AD", "LSA"))
#: Labels of the arch complex and of the ring that can close around the trachea.
ARCH_LABELS: tuple[int, ...] = (AO, DAO)
RING_LABELS: tuple[int, ...] = (AO, DAO, AD, LSA)


def _as_3d(volume: np.ndarray, what: str) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"{what}: expected a 3D [x, y, z] array, got shape {volume.shape}")
    return volume


def components_per_label(labelmap: np.ndarray, labels: Iterable[int] | None = None) -> dict[int, int]:
    """Return ``{label: number of 26-connected components}`` (labels present, or those asked).

    >>> lm = np.zeros((5, 5, 5), int); lm[0, 0, 0] = lm[4, 4, 4] = 2; lm[2, 2, 2] = 3
    >>> components_per_label(lm)
    {2: 2, 3: 1}
    """
    labelmap = _as_3d(labelmap, "components_per_label")
    wanted = [int(v) for v in np.unique(labelmap) if v != 0] if labels is None else [int(v) for v in labels]
    objects = ndimage.find_objects(labelmap.astype(np.int32, copy=False))
    out: dict[int, int] = {}
    for v in wanted:
        box = objects[v - 1] if 0 < v <= len(objects) else None
        out[v] = 0 if box is None else int(ndimage.label(labelmap[box] == v, structure=_FULL)[1])
    return out


def euler_characteristic(mask: np.ndarray) -> int:
    """Return χ of the union of closed unit cubes at the foreground voxels of ``mask``.

    Vectorised count of the distinct vertices, edges, faces and cubes of that complex.
    """
    p = np.pad(_as_3d(mask, "euler_characteristic").astype(bool), 1)
    cubes = int(np.count_nonzero(p))
    # faces: shared by two voxels neighbouring along one axis
    faces = (np.count_nonzero(p[1:] | p[:-1]) + np.count_nonzero(p[:, 1:] | p[:, :-1])
             + np.count_nonzero(p[:, :, 1:] | p[:, :, :-1]))
    # edges: shared by the 2x2 voxels around them, in the plane perpendicular to the edge
    ex = p[:, 1:, 1:] | p[:, 1:, :-1] | p[:, :-1, 1:] | p[:, :-1, :-1]  # x-edges, pairs in (y, z)
    ey = p[1:, :, 1:] | p[1:, :, :-1] | p[:-1, :, 1:] | p[:-1, :, :-1]
    ez = p[1:, 1:, :] | p[1:, :-1, :] | p[:-1, 1:, :] | p[:-1, :-1, :]
    edges = np.count_nonzero(ex) + np.count_nonzero(ey) + np.count_nonzero(ez)
    # vertices: shared by the 2x2x2 voxels around them
    vertices = np.count_nonzero(ez[:, :, 1:] | ez[:, :, :-1])
    return int(vertices - edges + faces - cubes)


def betti_numbers(mask: np.ndarray) -> tuple[int, int, int]:
    """Return (β0, β1, β2) of a binary 3D volume with 26-connected foreground.

    β0 counts 26-connected components, β2 the cavities (6-connected background components that do
    not reach the volume's border after padding), β1 the independent loops (tunnels/handles).

    >>> ring = np.zeros((5, 5, 3), bool); ring[1:4, 1:4, 1] = True; ring[2, 2, 1] = False
    >>> betti_numbers(ring)
    (1, 1, 0)
    """
    m = _as_3d(mask, "betti_numbers").astype(bool)
    if not m.any():
        return 0, 0, 0
    # crop to the foreground's box (+1 background layer on each side)
    nz = [np.nonzero(np.any(m, axis=tuple(a for a in range(3) if a != ax)))[0] for ax in range(3)]
    m = np.pad(m[tuple(slice(i[0], i[-1] + 1) for i in nz)], 1)
    b0 = int(ndimage.label(m, structure=_FULL)[1])
    b2 = int(ndimage.label(~m, structure=_FACE)[1]) - 1  # the outer background is one component
    chi = euler_characteristic(m)
    return b0, b0 + b2 - chi, b2


def adjacency_graph(labelmap: np.ndarray) -> set[tuple[int, int]]:
    """Return the sorted pairs ``(a, b)``, ``0 < a < b``, of labels whose voxels touch (26-neighbours).

    >>> lm = np.zeros((4, 4, 4), int); lm[0, 0, 0] = 1; lm[1, 1, 1] = 2; lm[3, 3, 3] = 3
    >>> adjacency_graph(lm)
    {(1, 2)}
    """
    lm = _as_3d(labelmap, "adjacency_graph").astype(np.int64, copy=False)
    n = int(lm.max()) + 1 if lm.size else 1
    codes: set[int] = set()
    # 13 half-neighbourhood offsets cover all 26 neighbours by symmetry
    offsets = [o for o in np.ndindex(3, 3, 3) if o > (1, 1, 1)]
    sx, sy, sz = lm.shape
    for ox, oy, oz in offsets:
        dx, dy, dz = ox - 1, oy - 1, oz - 1
        a = lm[max(0, -dx):sx - max(0, dx), max(0, -dy):sy - max(0, dy), max(0, -dz):sz - max(0, dz)]
        b = lm[max(0, dx):sx - max(0, -dx), max(0, dy):sy - max(0, -dy), max(0, dz):sz - max(0, -dz)]
        touch = (a != b) & (a > 0) & (b > 0)
        if touch.any():
            lo = np.minimum(a[touch], b[touch])
            hi = np.maximum(a[touch], b[touch])
            codes.update(np.unique(lo * n + hi).tolist())
    return {(int(c // n), int(c % n)) for c in codes}


def remove_fragments(labelmap: np.ndarray, min_voxels: int = MIN_FRAGMENT_VOXELS) -> tuple[np.ndarray, dict[int, int]]:
    """Return (label map without tiny fragments, ``{label: fragments removed}``).

    A fragment is a 26-connected piece of a label smaller than ``min_voxels`` that is not the
    label's largest piece; its voxels become background.
    """
    lm = _as_3d(labelmap, "remove_fragments")
    out = lm.copy()
    removed: dict[int, int] = {}
    if min_voxels <= 1:
        return out, removed
    objects = ndimage.find_objects(lm.astype(np.int32, copy=False))
    for v, box in enumerate(objects, start=1):
        if box is None:
            continue
        comp, n = ndimage.label(lm[box] == v, structure=_FULL)
        if n <= 1:
            continue
        sizes = np.bincount(comp.ravel())[1:]
        small = np.nonzero(sizes < min_voxels)[0] + 1
        small = small[small != np.argmax(sizes) + 1]
        if small.size:
            region = out[box]
            region[np.isin(comp, small)] = 0
            removed[v] = int(small.size)
    return out, removed


# ----------------------------------------------------------------------------------------------
# Arch side


def arch_side(
    labelmap: np.ndarray,
    trachea_x_vox: float | None = None,
    trachea_mask: np.ndarray | None = None,
    *,
    min_fraction: float = 0.05,
    min_voxels: int = 4,
    min_offset_vox: float = 2.0,
) -> str | None:
    """Return the side of the trachea the aortic arch passes on: "left", "right", "both" or None.

    The arch is where the AO lies beside the trachea: with a trachea mask, the AO voxels in the
    trachea's axial slices from its centre back to 2 voxels behind its back wall (the ascending
    aorta lies in front), compared slice by slice with the trachea centre; with only
    ``trachea_x_vox`` (x index of the trachea centre at arch level), the posterior half of the
    AO's anterior–posterior extent (the ascending aorta lies anterior, the arch beside and
    behind the trachea). Larger x is the subject's Right.
    Only voxels at least ``min_offset_vox`` from the trachea centre in x count (the arch passes
    *beside* the trachea; the junction with the DAO behind it is near the midline). A side counts
    when it holds ≥ ``min_fraction`` of those voxels and ≥ ``min_voxels`` (a thin left arch of a
    double arch holds few). None when the AO or the trachea position is absent.
    """
    lm = _as_3d(labelmap, "arch_side")
    ao = lm == AO
    if not ao.any():
        return None
    if trachea_mask is not None:
        tm = _as_3d(trachea_mask, "arch_side trachea_mask").astype(bool)
        if tm.shape != lm.shape:
            raise ValueError(f"arch_side: trachea mask shape {tm.shape} does not match {lm.shape}")
        dx_all: list[np.ndarray] = []
        for z in np.nonzero(tm.any(axis=(0, 1)) & ao.any(axis=(0, 1)))[0]:
            tx, ty = np.nonzero(tm[:, :, z])
            ax_, ay_ = np.nonzero(ao[:, :, z])
            beside = (ay_ <= ty.mean() + 0.5) & (ay_ >= ty.min() - 2)  # level with or behind it
            dx_all.append(ax_[beside] - tx.mean())
        dx = np.concatenate(dx_all) if dx_all else np.zeros(0)
    elif trachea_x_vox is not None:
        x, y, _ = np.nonzero(ao)
        y_mid = (y.min() + y.max()) / 2.0
        dx = x[y <= y_mid] - float(trachea_x_vox)
    else:
        return None
    dx = dx[np.abs(dx) >= min_offset_vox]
    if dx.size == 0:
        return None
    n_right, n_left = int(np.count_nonzero(dx > 0)), int(np.count_nonzero(dx < 0))
    right = n_right >= max(min_voxels, min_fraction * dx.size)
    left = n_left >= max(min_voxels, min_fraction * dx.size)
    if right and left:
        return "both"
    if right or left:
        return "right" if right else "left"
    return None


# ----------------------------------------------------------------------------------------------
# Report


@dataclass
class TopologyReport:
    """Topology of one segmentation of one subject against its class template."""

    cls: int
    components: dict[int, int]
    fragments_removed: dict[int, int]
    arch_betti: tuple[int, int, int]
    ring_betti: tuple[int, int, int]
    contacts: set[tuple[int, int]]
    missing_contacts: set[tuple[int, int]]
    extra_contacts: set[tuple[int, int]]
    arch_side: str | None
    label_loops: dict[int, int]
    correct: bool
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_row(self) -> dict[str, object]:
        """Return a flat dict for one row of a per-subject table."""
        pair = lambda p: f"{LABELS.get(p[0], p[0])}-{LABELS.get(p[1], p[1])}"  # noqa: E731
        return {
            "class": CLASSES.get(self.cls, str(self.cls)),
            "correct": self.correct,
            "arch_b0": self.arch_betti[0], "arch_b1": self.arch_betti[1], "arch_b2": self.arch_betti[2],
            "ring_b1": self.ring_betti[1],
            "arch_side": self.arch_side or "",
            "split_labels": ";".join(LABELS.get(v, str(v)) for v, n in sorted(self.components.items()) if n > 1),
            "missing_labels": ";".join(LABELS.get(v, str(v)) for v, n in sorted(self.components.items()) if n == 0),
            "missing_contacts": ";".join(pair(p) for p in sorted(self.missing_contacts)),
            "extra_contacts": ";".join(pair(p) for p in sorted(self.extra_contacts)),
            "fragments_removed": sum(self.fragments_removed.values()),
            "reasons": "; ".join(self.reasons),
            "warnings": "; ".join(self.warnings),
        }


def _graph_loops(edges: set[tuple[int, int]], nodes: Iterable[int]) -> int:
    """Return the cycle rank E − V + C of an undirected graph on ``nodes``."""
    nodes = set(nodes)
    parent = {v: v for v in nodes}

    def find(v: int) -> int:
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    inner = [(a, b) for a, b in edges if a in nodes and b in nodes]
    for a, b in inner:
        parent[find(a)] = find(b)
    return len(inner) - len(nodes) + len({find(v) for v in nodes})


#: Contacts that distinguish the classes (where the LSA arises): an extra one is an error.
DEFINING_CONTACTS: frozenset[tuple[int, int]] = frozenset(
    set.union(*map(set, EXPECTED_CONTACTS.values())) - set.intersection(*map(set, EXPECTED_CONTACTS.values()))
)


def expected_ring_loops(cls: int) -> int:
    """Return β1 of AO∪DAO∪AD∪LSA in a correct segmentation of class ``cls``.

    The arch loops (``ARCH_LOOPS``) plus the cycles of the class template restricted to the ring
    labels (zero for the default templates: AD and LSA each join the arch at one place).
    """
    sub = {p for p in EXPECTED_CONTACTS[cls] if p[0] != AO or p[1] != DAO}
    return ARCH_LOOPS[cls] + _graph_loops(sub | {(AO, DAO)}, RING_LABELS)


def _label_loops(labelmap: np.ndarray, labels: Iterable[int]) -> dict[int, int]:
    """Return ``{label: β1}`` for each label present, computed on its bounding box."""
    objects = ndimage.find_objects(labelmap.astype(np.int32, copy=False))
    out = {}
    for v in labels:
        box = objects[v - 1] if 0 < v <= len(objects) else None
        if box is not None:
            out[v] = betti_numbers(labelmap[box] == v)[1]
    return out


def topology_report(
    labelmap: np.ndarray,
    cls: int,
    trachea_x_vox: float | None = None,
    trachea_mask: np.ndarray | None = None,
    *,
    min_fragment_voxels: int = MIN_FRAGMENT_VOXELS,
    extra_contacts_fail: bool = False,
) -> TopologyReport:
    """Return the topology report of a vessel label map judged against class ``cls``.

    Tiny fragments (pieces under ``min_fragment_voxels`` that are not a label's largest piece)
    are removed first and listed in ``warnings``. The verdict ``correct`` holds when, with
    ``reasons`` naming each failure:

    * every vessel label of the map (``anatomy.LABELS``) is present as exactly one component;
    * AO∪DAO is one component with ``anatomy.ARCH_LOOPS[cls]`` loops and no cavity;
    * every contact of ``anatomy.EXPECTED_CONTACTS[cls]`` is present and no class-defining
      contact (``DEFINING_CONTACTS``: where the LSA arises) is extra; other extra contacts are
      ``warnings`` (neighbouring vessels may touch at this resolution), or failures when
      ``extra_contacts_fail``;
    * where the trachea is known, the arch passes on ``anatomy.ARCH_SIDE[cls]``.

    Reported without failing (``warnings``): loops of the ring AO∪DAO∪AD∪LSA beyond
    ``expected_ring_loops(cls)`` and tunnels through single vessels (``label_loops``), which at
    this resolution also arise where tubes meet at a junction; extra non-defining contacts.
    """
    if cls not in ARCH_LOOPS:
        raise ValueError(f"topology_report: unknown class {cls}; known {dict(CLASSES)}")
    raw = _as_3d(labelmap, "topology_report")
    lm, removed = remove_fragments(raw, min_fragment_voxels)
    vessels = [v for v in LABELS if v != 0]
    components = components_per_label(lm, vessels)
    reasons: list[str] = []
    warnings: list[str] = [f"removed {n} tiny fragment(s) of {LABELS.get(v, v)}" for v, n in sorted(removed.items())]
    for v in vessels:
        if components[v] == 0:
            reasons.append(f"{LABELS[v]} missing")
        elif components[v] > 1:
            reasons.append(f"{LABELS[v]} split into {components[v]} pieces")
    arch = betti_numbers(np.isin(lm, ARCH_LABELS))
    ring = betti_numbers(np.isin(lm, RING_LABELS))
    want_loops = ARCH_LOOPS[cls]
    if arch[0] > 1:
        reasons.append(f"AO∪DAO in {arch[0]} pieces (arch interrupted)")
    if arch[1] != want_loops:
        what = "merged or missing arch" if arch[1] < want_loops else "extra loop"
        reasons.append(f"AO∪DAO has {arch[1]} loop(s), {CLASSES[cls]} expects {want_loops} ({what})")
    if arch[2]:
        reasons.append(f"AO∪DAO encloses {arch[2]} cavity(ies)")
    want_ring = expected_ring_loops(cls)
    if ring[1] != want_ring and arch[1] == want_loops:
        warnings.append(f"AO∪DAO∪AD∪LSA has {ring[1]} loop(s), expected {want_ring}")
    label_loops = _label_loops(lm, vessels)
    for v, loops in label_loops.items():
        if loops > (want_loops if v == AO else 0):
            warnings.append(f"{LABELS[v]} has {loops} tunnel(s)")
    contacts = adjacency_graph(lm)
    expected = set(EXPECTED_CONTACTS[cls])
    missing = expected - contacts
    extra = contacts - expected
    name = lambda p: f"{LABELS.get(p[0], p[0])}–{LABELS.get(p[1], p[1])}"  # noqa: E731
    for p in sorted(missing):
        reasons.append(f"missing contact {name(p)}")
    for p in sorted(extra):
        if p in DEFINING_CONTACTS or extra_contacts_fail:
            reasons.append(f"extra contact {name(p)}")
        else:
            warnings.append(f"extra contact {name(p)}")
    side = arch_side(lm, trachea_x_vox, trachea_mask)
    want_side = ARCH_SIDE[cls]
    if side is not None and side != want_side:
        reasons.append(f"arch passes {side} of the trachea, {CLASSES[cls]} expects {want_side}")
    elif side is None and (trachea_x_vox is not None or trachea_mask is not None) and components[AO]:
        warnings.append("arch side undetermined")
    return TopologyReport(cls=cls, components=components, fragments_removed=removed, arch_betti=arch,
                          ring_betti=ring, contacts=contacts, missing_contacts=missing,
                          extra_contacts=extra, arch_side=side, label_loops=label_loops,
                          correct=not reasons, reasons=reasons,
                          warnings=warnings)


def report_table(reports: Mapping[str, TopologyReport]) -> list[dict[str, object]]:
    """Return one flat row per report (``{"id": key, **report.as_row()}``) for a DataFrame."""
    return [{"id": key, **rep.as_row()} for key, rep in reports.items()]
