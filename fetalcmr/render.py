"""Static figures of vessel label maps: label colours, orthogonal slice overlays, 3D surface
renders with fixed cameras, and an itkwidgets viewer for JupyterLab.

Every array is ``[x, y, z]`` in RAS+ (x → subject's Right, y → Anterior, z → Superior).
Surface renders place vertex ``(i, j, k)`` at ``(i·sx, j·sy, k·sz)`` millimetres, so the
plot's axes are RAS+ in mm, and each named view has one camera shared by every subject:

* ``anterior`` — looking at the subject's front (camera on +y): the subject's Right is on the
  viewer's left, Superior up (like a coronal radiograph);
* ``left`` — looking at the subject's left side (camera on −x): Anterior on the viewer's left,
  Superior up;
* ``superior`` — looking down from above the head (camera on +z): Anterior up, the subject's
  Right on the viewer's **right** (a true view from above, not the radiological axial convention).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from fetalcmr.anatomy import LABELS

if TYPE_CHECKING:  # heavy imports only for type checkers
    import matplotlib.axes
    import matplotlib.colors
    import matplotlib.figure

#: One colour per vessel label (RGB in 0..1), chosen from the Okabe–Ito and Paul Tol
#: colour-blind-safe palettes; arteries warm, veins and pulmonary arteries cool.
_PALETTE_HEX: dict[int, str] = {
    1: "#332288",  # SVC   indigo
    2: "#88CCEE",  # LPA   cyan
    3: "#44AA99",  # RPA   teal
    4: "#D55E00",  # AO    vermillion
    5: "#DDCC77",  # AD    sand
    6: "#882255",  # DAO   wine
    7: "#0072B2",  # MPA   blue
    8: "#117733",  # LSA   green
    9: "#E69F00",  # BCA   orange
    10: "#AA4499",  # LCCA purple
    11: "#999933",  # PV   olive
}
#: Colour used for labels beyond the default map (real data with its own labels).
_FALLBACK_CMAP = "tab20"


@dataclass(frozen=True)
class View:
    """A fixed camera: matplotlib elevation/azimuth and the anatomical directions on screen."""

    elev: float
    azim: float
    screen_left: str
    screen_right: str
    screen_top: str


#: The named cameras (RAS+ axes); the same for every subject and every method.
VIEWS: Mapping[str, View] = {
    "anterior": View(elev=0.0, azim=90.0, screen_left="R", screen_right="L", screen_top="S"),
    "left": View(elev=0.0, azim=180.0, screen_left="A", screen_right="P", screen_top="S"),
    "superior": View(elev=90.0, azim=-90.0, screen_left="L", screen_right="R", screen_top="A"),
}


def _hex_to_rgb(code: str) -> tuple[float, float, float]:
    code = code.lstrip("#")
    return tuple(int(code[i:i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]


def label_colors(labels: Sequence[int] | None = None) -> dict[int, tuple[float, float, float]]:
    """Return ``{label: (r, g, b)}`` with one distinct colour per vessel label (1..11).

    Labels beyond the default map (e.g. a real dataset's own map) get colours from ``tab20``.

    >>> label_colors()[4]  # AO
    (0.8352941176470589, 0.3686274509803922, 0.0)
    """
    wanted = sorted(LABELS)[1:] if labels is None else sorted(int(v) for v in labels if int(v) != 0)
    out: dict[int, tuple[float, float, float]] = {}
    extra = [v for v in wanted if v not in _PALETTE_HEX]
    if extra:
        import matplotlib

        cmap = matplotlib.colormaps[_FALLBACK_CMAP]
    for v in wanted:
        if v in _PALETTE_HEX:
            out[v] = _hex_to_rgb(_PALETTE_HEX[v])
        else:
            out[v] = tuple(float(c) for c in cmap(extra.index(v) % cmap.N)[:3])  # type: ignore[assignment]
    return out


def label_cmap(n_labels: int | None = None) -> matplotlib.colors.ListedColormap:
    """Return a ``ListedColormap`` mapping integer label ``v`` to ``label_colors()[v]``.

    Index 0 (background) is fully transparent; use with ``vmin=0, vmax=n_labels - 1`` and
    ``interpolation="nearest"``.
    """
    from matplotlib.colors import ListedColormap

    n = int(n_labels) if n_labels is not None else max(LABELS) + 1
    colors = label_colors(range(1, n))
    table = [(0.0, 0.0, 0.0, 0.0)] + [(*colors[v], 1.0) for v in range(1, n)]
    return ListedColormap(table, name="fetalcmr_labels")


# ----------------------------------------------------------------------------------------------
# Orthogonal slices


def _window(image: np.ndarray) -> tuple[float, float]:
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [1.0, 99.0])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def _centre(labelmap: np.ndarray | None, shape: tuple[int, ...]) -> tuple[int, int, int]:
    if labelmap is not None and np.any(labelmap > 0):
        c = ndimage.center_of_mass(labelmap > 0)
        return tuple(int(round(v)) for v in c)  # type: ignore[return-value]
    return tuple(s // 2 for s in shape)  # type: ignore[return-value]


def overlay_slices(
    image: np.ndarray,
    labelmap: np.ndarray | None = None,
    *,
    slices: tuple[int, int, int] | None = None,
    axes: Sequence[matplotlib.axes.Axes] | None = None,
    alpha: float = 0.5,
    spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
    title: str | None = None,
) -> matplotlib.figure.Figure:
    """Return a figure of axial, coronal and sagittal slices with the label map overlaid.

    The slices pass through ``slices = (i, j, k)`` voxel indices, by default the centroid of the
    vessels (``labelmap > 0``) or the volume centre. Display follows the radiological convention:
    axial seen from the feet (subject's Right on the viewer's left, Anterior up), coronal seen
    from the front (Right on the left, Superior up), sagittal with Anterior on the left and
    Superior up. Intensities are windowed to the 1st–99th percentile. With ``axes`` (three
    Axes) the panels are drawn there and their figure is returned.
    """
    import matplotlib.pyplot as plt

    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"overlay_slices: image must be 3D [x, y, z], got shape {image.shape}")
    if labelmap is not None:
        labelmap = np.asarray(labelmap)
        if labelmap.shape != image.shape:
            raise ValueError(f"overlay_slices: labelmap shape {labelmap.shape} does not match "
                             f"image shape {image.shape}")
    i, j, k = slices if slices is not None else _centre(labelmap, image.shape)
    if axes is None:
        fig, axs = plt.subplots(1, 3, figsize=(9.0, 3.2), constrained_layout=True)
        axes = list(axs)
    else:
        axes = list(axes)
        if len(axes) != 3:
            raise ValueError(f"overlay_slices: need 3 axes, got {len(axes)}")
        fig = axes[0].figure
    sx, sy, sz = (float(s) for s in spacing_mm)
    nx, ny, nz = image.shape
    lo, hi = _window(image)
    n_lab = max(int(labelmap.max()) + 1, max(LABELS) + 1) if labelmap is not None else 0
    cmap = label_cmap(n_lab) if labelmap is not None else None
    # (name, 2D slice indexed [horizontal, vertical], extent, horizontal/vertical screen letters)
    panels = [
        ("axial", (slice(None), slice(None), k), (0, nx * sx, 0, ny * sy), ("R", "L", "A")),
        ("coronal", (slice(None), j, slice(None)), (0, nx * sx, 0, nz * sz), ("R", "L", "S")),
        ("sagittal", (i, slice(None), slice(None)), (0, ny * sy, 0, nz * sz), ("A", "P", "S")),
    ]
    for ax, (name, index, extent, (left, right, top)) in zip(axes, panels, strict=True):
        ax.imshow(image[index].T, cmap="gray", origin="lower", vmin=lo, vmax=hi, extent=extent,
                  interpolation="nearest")
        if labelmap is not None:
            lab = labelmap[index].T
            ax.imshow(np.ma.masked_equal(lab, 0), cmap=cmap, vmin=0, vmax=n_lab - 1, alpha=alpha,
                      origin="lower", extent=extent, interpolation="nearest")
        ax.invert_xaxis()  # Right (axial/coronal) or Anterior (sagittal) on the viewer's left
        ax.set_xticks([])
        ax.set_yticks([])
        pos = {"axial": k, "coronal": j, "sagittal": i}[name]
        ax.set_title(f"{name} ({'zyx'[['axial', 'coronal', 'sagittal'].index(name)]}={pos})",
                     fontsize=9)
        kw = dict(transform=ax.transAxes, color="white", fontsize=8, fontweight="bold")
        ax.text(0.02, 0.5, left, ha="left", va="center", **kw)
        ax.text(0.98, 0.5, right, ha="right", va="center", **kw)
        ax.text(0.5, 0.97, top, ha="center", va="top", **kw)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------------
# Surfaces


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh of one label, vertices in RAS+ millimetres."""

    label: int
    verts: np.ndarray  # (n, 3) float
    faces: np.ndarray  # (m, 3) int


def label_meshes(
    labelmap: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    labels: Sequence[int] | None = None,
    smooth: float = 0.6,
    step_size: int = 1,
    decimate: float = 1.25,
) -> list[Mesh]:
    """Return one marching-cubes surface per label present in ``labelmap``.

    Each label's mask is cropped to its bounding box (padded so surfaces close), optionally
    smoothed with a Gaussian of ``smooth`` voxels (0 turns smoothing off; with smoothing,
    structures about one voxel thick may vanish, the price of non-blocky surfaces) and
    triangulated at level 0.5 (0.4 when smoothed) with ``skimage.measure.marching_cubes``
    (``step_size`` > 1 samples coarser; a label it would miss is sampled at 1). ``decimate`` > 0
    then merges vertices on a grid of that many voxels (vertex clustering: ≈ half the faces at
    1.25, thin vessels kept); 0 keeps all.
    """
    from skimage.measure import marching_cubes

    labelmap = np.asarray(labelmap)
    if labelmap.ndim != 3:
        raise ValueError(f"label_meshes: labelmap must be 3D, got shape {labelmap.shape}")
    spacing = np.asarray(spacing_mm, dtype=float)
    present = [int(v) for v in np.unique(labelmap) if v != 0]
    wanted = present if labels is None else [int(v) for v in labels if int(v) in present]
    objects = ndimage.find_objects(labelmap.astype(np.int32, copy=False))
    meshes: list[Mesh] = []
    pad = 2
    for v in wanted:
        box = objects[v - 1]
        if box is None:
            continue
        starts = np.array([max(s.start - pad, 0) for s in box])
        crop = labelmap[tuple(slice(max(s.start - pad, 0), s.stop + pad) for s in box)] == v
        field = np.pad(crop.astype(np.float32), 1)
        level = 0.5
        if smooth > 0:
            field = ndimage.gaussian_filter(field, smooth)
            level = 0.4
        if field.max() <= level:
            continue
        try:
            verts, faces, _, _ = marching_cubes(field, level=level, step_size=step_size,
                                                allow_degenerate=False)
        except RuntimeError:  # a coarse step missed a thin structure: sample it at full resolution
            verts, faces, _, _ = marching_cubes(field, level=level, step_size=1, allow_degenerate=False)
        verts = (verts - 1 + starts) * spacing
        if decimate > 0:
            verts, faces = _cluster_vertices(verts, faces, decimate * spacing)
        meshes.append(Mesh(label=v, verts=verts, faces=faces))
    return meshes


def _cluster_vertices(verts: np.ndarray, faces: np.ndarray, cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (verts, faces) with the vertices in each grid cell merged to their mean."""
    keys = np.floor(verts / cell).astype(np.int64)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    merged = np.zeros((counts.size, 3))
    np.add.at(merged, inverse, verts)
    merged /= counts[:, None]
    f = inverse[faces]
    keep = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    return merged, f[keep]


def _bounds(labelmaps: Sequence[np.ndarray], spacing: np.ndarray) -> np.ndarray:
    """Return ``[[lo, hi] x 3]`` mm enclosing the foreground of all maps (volume if empty)."""
    lo = np.full(3, np.inf)
    hi = np.full(3, -np.inf)
    for lm in labelmaps:
        idx = np.nonzero(np.any(lm > 0, axis=(1, 2))), np.nonzero(np.any(lm > 0, axis=(0, 2))), \
            np.nonzero(np.any(lm > 0, axis=(0, 1)))
        if any(len(a[0]) == 0 for a in idx):
            continue
        lo = np.minimum(lo, [a[0][0] for a in idx])
        hi = np.maximum(hi, [a[0][-1] + 1 for a in idx])
    if not np.all(np.isfinite(lo)):
        lo, hi = np.zeros(3), np.asarray(labelmaps[0].shape, dtype=float)
    lo, hi = (lo - 1) * spacing, (hi + 1) * spacing
    # a cube, so that every view of one subject shares one scale
    centre, half = (lo + hi) / 2, float(np.max(hi - lo)) / 2
    return np.stack([centre - half, centre + half], axis=1)


def _headlight(view: View) -> np.ndarray:
    """Return the unit light direction: from the camera, tilted up and to the viewer's left."""
    el, az = np.radians(view.elev), np.radians(view.azim)
    to_cam = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    up = np.array([-np.sin(el) * np.cos(az), -np.sin(el) * np.sin(az), np.cos(el)])
    left = np.cross(to_cam, up)
    d = to_cam + 0.45 * up + 0.35 * left
    return d / np.linalg.norm(d)


def _shade(tris: np.ndarray, rgb: tuple[float, float, float], light: np.ndarray) -> np.ndarray:
    """Return per-face RGBA: ambient 0.35 plus two-sided Lambert 0.65 (orientation-free)."""
    normals = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    norm = np.linalg.norm(normals, axis=1, keepdims=True)
    lambert = np.abs((normals / np.where(norm > 0, norm, 1.0)) @ light)
    out = np.empty((len(tris), 4))
    out[:, :3] = np.clip((0.35 + 0.65 * lambert)[:, None] * np.asarray(rgb)[None, :], 0.0, 1.0)
    out[:, 3] = 1.0
    return out


def _draw_meshes(ax: Any, meshes: Sequence[Mesh], view: View, bounds: np.ndarray) -> None:
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    light = _headlight(view)
    colors = label_colors(sorted({m.label for m in meshes}) or None)
    if meshes:
        # one collection for all labels: the painter's sort then orders faces across vessels
        tris = np.concatenate([m.verts[m.faces] for m in meshes])
        face_colors = np.concatenate([_shade(m.verts[m.faces], colors[m.label], light) for m in meshes])
        ax.add_collection3d(Poly3DCollection(tris, facecolors=face_colors, edgecolors="none",
                                             linewidths=0.0))
    ax.set_xlim(*bounds[0])
    ax.set_ylim(*bounds[1])
    ax.set_zlim(*bounds[2])
    ax.set_box_aspect((1.0, 1.0, 1.0), zoom=1.3)  # bounds are a cube: equal aspect in mm
    ax.set_proj_type("ortho")
    ax.view_init(elev=view.elev, azim=view.azim, roll=0.0)
    ax.set_axis_off()
    kw = dict(transform=ax.transAxes, fontsize=8, color="0.35", fontweight="bold")
    ax.text2D(0.02, 0.5, view.screen_left, ha="left", va="center", **kw)
    ax.text2D(0.98, 0.5, view.screen_right, ha="right", va="center", **kw)
    ax.text2D(0.5, 0.98, view.screen_top, ha="center", va="top", **kw)


def _check_views(views: Sequence[str]) -> list[View]:
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise ValueError(f"unknown view(s) {unknown}; choose from {sorted(VIEWS)}")
    return [VIEWS[v] for v in views]


def render_surfaces(
    labelmap: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    views: Sequence[str] = ("anterior", "left", "superior"),
    title: str | None = None,
    axes: Sequence[Any] | None = None,
    smooth: float = 0.6,
    step_size: int = 1,
    decimate: float = 1.25,
    bounds: np.ndarray | None = None,
    legend: bool = True,
) -> matplotlib.figure.Figure:
    """Return a figure with one shaded 3D surface render of ``labelmap`` per named view.

    Surfaces are marching cubes per label (see ``label_meshes``), one colour per label
    (``label_colors``), orthographic cameras from ``VIEWS`` (the same for every subject), equal
    aspect in mm. ``axes`` may give one ``projection="3d"`` Axes per view to draw into.
    ``bounds`` (``[[lo, hi]] * 3`` mm) fixes the box; by default a cube around the vessels.
    """
    import matplotlib.pyplot as plt

    cams = _check_views(views)
    labelmap = np.asarray(labelmap)
    spacing = np.asarray(spacing_mm, dtype=float)
    meshes = label_meshes(labelmap, spacing, smooth=smooth, step_size=step_size, decimate=decimate)
    if bounds is None:
        bounds = _bounds([labelmap], spacing)
    if axes is None:
        fig = plt.figure(figsize=(3.0 * len(cams), 3.3 if title else 3.0))
        axes = [fig.add_subplot(1, len(cams), n + 1, projection="3d") for n in range(len(cams))]
        fig.subplots_adjust(left=0.0, right=1.0, bottom=0.02, top=0.88 if title else 0.95,
                            wspace=0.02)
    else:
        axes = list(axes)
        if len(axes) != len(cams):
            raise ValueError(f"render_surfaces: {len(cams)} views but {len(axes)} axes")
        fig = axes[0].figure
    for ax, name, cam in zip(axes, views, cams, strict=True):
        _draw_meshes(ax, meshes, cam, bounds)
        ax.set_title(name, fontsize=8, pad=0)
    if title:
        fig.suptitle(title, fontsize=10)
    if legend and meshes:
        _legend(fig, sorted({m.label for m in meshes}))
    return fig


def _legend(fig: Any, labels: Sequence[int]) -> None:
    from matplotlib.patches import Patch

    colors = label_colors(labels)
    handles = [Patch(color=colors[v], label=LABELS.get(v, str(v))) for v in labels]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 11), fontsize=6,
               frameon=False, handlelength=1.0, columnspacing=0.8)


def per_map(value: Any, name: str, default: Any) -> Any:
    """Return ``value[name]`` (``default`` when absent) for a per-map setting, or ``value`` itself.

    >>> per_map({"truth": 2}, "joint", 1), per_map(3, "joint", 1)
    (1, 3)
    """
    return value.get(name, default) if isinstance(value, Mapping) else value


def render_comparison(
    labelmaps: Mapping[str, np.ndarray],
    spacing_mm: Sequence[float],
    *,
    views: Sequence[str] = ("anterior", "left", "superior"),
    title: str | None = None,
    smooth: float = 0.6,
    step_size: int | Mapping[str, int] = 1,
    decimate: float | Mapping[str, float] = 1.25,
) -> matplotlib.figure.Figure:
    """Return a figure with one row per label map (e.g. truth, then methods) and one column per view.

    All rows share the cameras and one bounding box, so differences between methods are
    differences of the surfaces, not of the framing. ``step_size`` and ``decimate`` may be given
    per row (``{name: value}``; rows not named get 1 and 1.25).
    """
    import matplotlib.pyplot as plt

    if not labelmaps:
        raise ValueError("render_comparison: no label maps given")
    cams = _check_views(views)
    spacing = np.asarray(spacing_mm, dtype=float)
    maps = {k: np.asarray(v) for k, v in labelmaps.items()}
    shapes = {v.shape for v in maps.values()}
    if len(shapes) != 1:
        raise ValueError(f"render_comparison: label maps differ in shape: {sorted(shapes)}")
    bounds = _bounds(list(maps.values()), spacing)
    n_rows, n_cols = len(maps), len(cams)
    fig = plt.figure(figsize=(2.6 * n_cols + 0.6, 2.6 * n_rows + (0.7 if title else 0.4)))
    present: set[int] = set()
    for r, (name, lm) in enumerate(maps.items()):
        axes = [fig.add_subplot(n_rows, n_cols, r * n_cols + c + 1, projection="3d")
                for c in range(n_cols)]
        render_surfaces(lm, spacing, views=views, axes=axes, smooth=smooth, step_size=per_map(step_size, name, 1),
                        decimate=per_map(decimate, name, 1.25), bounds=bounds, legend=False)
        axes[0].text2D(-0.05, 0.5, name, transform=axes[0].transAxes, rotation=90, ha="right",
                       va="center", fontsize=9)
        present |= {int(v) for v in np.unique(lm) if v != 0}
    fig.subplots_adjust(left=0.06, right=1.0, bottom=0.06, top=0.92 if title else 0.97,
                        wspace=0.02, hspace=0.08)
    if title:
        fig.suptitle(title, fontsize=10)
    if present:
        _legend(fig, sorted(present))
    return fig


# ----------------------------------------------------------------------------------------------
# Interactive viewer

_INSTALL_HINT = ("view3d needs itkwidgets for JupyterLab: pip install 'itkwidgets[lab]==1.0a55' "
                 "'ngff-zarr==0.32.2' (included in this project's environment; run `make lab`).")


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def view3d(image: np.ndarray, labelmap: np.ndarray | None = None, **kwargs: Any) -> Any:
    """Return an itkwidgets 3D viewer of ``image`` with ``labelmap`` as label overlay, or None.

    Works in JupyterLab with ``itkwidgets[lab]==1.0a55``. When itkwidgets is missing it says what
    to install; outside a Jupyter kernel (scripts, headless runs without a viewer) or when the
    viewer cannot start, it warns and returns None instead of raising.
    """
    import importlib.util

    if importlib.util.find_spec("itkwidgets") is None:
        warnings.warn(_INSTALL_HINT, stacklevel=2)
        print(_INSTALL_HINT)
        return None
    if not _in_kernel():
        msg = "view3d: not running inside a Jupyter kernel; no interactive viewer created."
        warnings.warn(msg, stacklevel=2)
        print(msg)
        return None
    img = np.ascontiguousarray(np.asarray(image, dtype=np.float32))
    # itkwidgets takes numpy arrays as [z, y, x]; ours are [x, y, z]
    args: dict[str, Any] = {"image": img.transpose(2, 1, 0).copy()}
    if labelmap is not None:
        lab = np.asarray(labelmap)
        if lab.shape != img.shape:
            raise ValueError(f"view3d: labelmap shape {lab.shape} does not match image {img.shape}")
        args["label_image"] = np.ascontiguousarray(lab.astype(np.uint8).transpose(2, 1, 0))
    args.update(kwargs)
    try:
        from itkwidgets import view  # heavy import (seconds): only inside a kernel

        return view(**args)
    except Exception as exc:  # noqa: BLE001 - a viewer failure must never break a notebook run
        msg = f"view3d: the itkwidgets viewer could not start ({type(exc).__name__}: {exc})."
        warnings.warn(msg, stacklevel=2)
        print(msg)
        return None
