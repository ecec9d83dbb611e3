"""Static figures of vessel label maps: label colours, orthogonal slice overlays, 3D surface
renders with fixed cameras, and an interactive 3D view for JupyterLab (:func:`view3d`: plotly,
offline; itkwidgets' image + label viewer when its web assets can load).

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
from pathlib import Path
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


#: MIME type of a plotly figure: JupyterLab draws it with the ``jupyterlab-plotly`` extension that
#: ships inside the plotly package (plotly.js included), so it needs no network.
PLOTLY_MIME = "application/vnd.plotly.v1+json"

_INSTALL_HINT = ("itkwidgets is not installed: pip install 'itkwidgets[lab]==1.0a55' 'ngff-zarr==0.32.2' "
                 "(included in this project's environment; run `make lab`)")


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def itk_asset_hosts() -> list[str]:
    """Return the web hosts itkwidgets' viewer loads its code from (the viewer app and imjoy-rpc).

    Read from itkwidgets' ``viewer_config.py`` without importing itkwidgets (seconds).
    """
    import ast
    import importlib.util
    from urllib.parse import urlparse

    hosts = ["cdn.jsdelivr.net"]  # imjoy-rpc and Vue, loaded by the imjoy JupyterLab extension
    spec = importlib.util.find_spec("itkwidgets")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        config = Path(folder) / "viewer_config.py"
        if not config.exists():
            continue
        for node in ast.walk(ast.parse(config.read_text())):
            if (isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "ITK_VIEWER_SRC" for t in node.targets)
                    and isinstance(node.value, ast.Constant)):
                hosts.insert(0, urlparse(str(node.value.value)).hostname or "")
    return [h for h in dict.fromkeys(hosts) if h]


def _reachable(host: str, timeout_s: float) -> str:
    """Return '' when ``host:443`` accepts a connection within ``timeout_s``, else why not."""
    import socket
    import threading

    result = [f"no answer within {timeout_s:g} s"]

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout_s).close()
            result[0] = ""
        except OSError as err:
            result[0] = f"{type(err).__name__}: {err}"

    worker = threading.Thread(target=probe, daemon=True)  # DNS lookups ignore the socket timeout
    worker.start()
    worker.join(timeout_s + 0.5)
    return result[0]


#: host -> (when probed, why unreachable or ""): a kernel probes each host at most every 5 minutes
_PROBED: dict[str, tuple[float, str]] = {}


def itk_viewer_status(timeout_s: float = 1.5) -> tuple[bool, str]:
    """Return (itkwidgets' viewer can load here, why): installed, in a kernel, web assets reachable.

    itkwidgets 1.0a draws nothing without its viewer and Vue, which come from the web: the check
    opens a connection to each host in :func:`itk_asset_hosts` (from this machine, which is where
    the browser of ``make lab`` runs too).
    """
    import importlib.util
    import time

    if importlib.util.find_spec("itkwidgets") is None:
        return False, _INSTALL_HINT
    if not _in_kernel():
        return False, "itkwidgets' viewer needs a running Jupyter kernel (this is not one)"
    hosts = itk_asset_hosts()
    for host in hosts:
        seen = _PROBED.get(host)
        why = seen[1] if seen and time.monotonic() - seen[0] < 300 else _reachable(host, timeout_s)
        _PROBED[host] = (time.monotonic(), why)
        if why:
            return False, (f"itkwidgets' viewer loads its code from {host}, which cannot be reached from "
                           f"this machine ({why}), and without it the viewer would draw nothing")
    return True, "its web assets are reachable (" + ", ".join(hosts) + ")"


def _typed(array: np.ndarray) -> dict[str, str]:
    """Return plotly.js's typed-array form (float32, base64, with its shape) of ``array``."""
    import base64

    a = np.ascontiguousarray(array, dtype=np.float32)
    return {"dtype": "f4", "bdata": base64.b64encode(a.tobytes()).decode("ascii"),
            "shape": ",".join(str(n) for n in a.shape)}


def _image_planes(image: np.ndarray, spacing: np.ndarray, centre: tuple[int, int, int], scene: str,
                  show_legend: bool, max_side: int = 64) -> list[dict[str, Any]]:
    """Return three plotly ``surface`` traces: the axial, coronal and sagittal planes through ``centre``."""
    lo, hi = _window(image)
    step = max(1, int(np.ceil(max(image.shape) / max_side)))
    i, j, k = centre
    axes_mm = [np.arange(0, n, step) * s for n, s in zip(image.shape, spacing)]
    # (name, values, the two in-plane axes, the fixed axis and its position in mm)
    planes = [("axial", image[::step, ::step, k], (0, 1), 2, k * spacing[2]),
              ("coronal", image[::step, j, ::step], (0, 2), 1, j * spacing[1]),
              ("sagittal", image[i, ::step, ::step], (1, 2), 0, i * spacing[0])]
    traces = []
    for name, values, (a, b), fixed, at in planes:
        grid_a, grid_b = np.meshgrid(axes_mm[a], axes_mm[b], indexing="ij")
        xyz = [np.empty(0)] * 3
        xyz[a], xyz[b], xyz[fixed] = grid_a, grid_b, np.full(grid_a.shape, at)
        traces.append({
            "type": "surface", "scene": scene, "name": "image (3 planes)", "legendgroup": "image",
            "showlegend": show_legend and name == "axial", "x": _typed(xyz[0]), "y": _typed(xyz[1]),
            "z": _typed(xyz[2]), "surfacecolor": _typed(np.clip((values - lo) / (hi - lo), 0, 1)),
            "colorscale": "Greys", "reversescale": True, "cmin": 0, "cmax": 1, "showscale": False,
            "hoverinfo": "skip", "visible": "legendonly", "lighting": {"ambient": 1.0, "diffuse": 0.0},
        })
    return traces


class Plotly3DView:
    """An interactive plotly 3D view of vessel surfaces (and the image's planes) for Jupyter.

    Displayed through its MIME bundle: JupyterLab 4 renders ``application/vnd.plotly.v1+json`` with
    the renderer shipped in the plotly package, offline; ``fetalcmr.site`` turns the same output into
    a plot in the HTML report. ``figure`` is the plotly figure as a dict.
    """

    def __init__(self, figure: dict[str, Any], reason: str) -> None:
        self.figure = figure
        self.backend = "plotly"
        self.reason = reason

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        n = sum(1 for t in self.figure["data"] if t.get("type") == "mesh3d")
        return {PLOTLY_MIME: self.figure,
                "text/plain": f"<fetalcmr 3D view: plotly, {n} vessel surfaces>"}

    def write_html(self, path: str, *, plotly_js: str = "plotly.min.js") -> str:
        """Write a standalone page that loads plotly.js from ``plotly_js`` (a path next to it)."""
        import json

        from fetalcmr.atomic import write_text_atomic

        page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><script src='{plotly_js}'></script></head>"
                "<body><div id='plot' style='height:560px'></div><script>"
                f"var f = {json.dumps(self.figure, separators=(',', ':'))};"
                "Plotly.newPlot('plot', f.data, f.layout, f.config);</script></body></html>\n")
        write_text_atomic(path, page)
        return path


def _detail(labelmap: np.ndarray, spacing: np.ndarray, decimate: float, max_faces: int) -> tuple[int, float]:
    """Return the finest ``(step_size, decimate)`` whose surfaces of ``labelmap`` stay under ``max_faces``."""
    tiers = [(1, decimate), (2, max(decimate, 2.5)), (3, max(decimate, 4.0))]
    for step, cell in tiers[:-1]:
        faces = sum(len(m.faces) for m in label_meshes(labelmap, spacing, step_size=step, decimate=cell))
        if faces <= max_faces:
            return step, cell
    return tiers[-1]


def plotly_figure(image: np.ndarray | None, labelmaps: Mapping[str, np.ndarray], spacing_mm: Sequence[float], *,
                  title: str | None = None, height: int = 520, decimate: float = 1.25,
                  max_faces: int = 30_000) -> dict[str, Any]:
    """Return the plotly figure (a dict) of :class:`Plotly3DView`: one scene per label map.

    Scenes share one box and camera buttons (:func:`fetalcmr.gallery.case_figure`); the image's
    three orthogonal planes through the vessels' centre are in the legend (hidden until clicked).
    A map whose surfaces would exceed ``max_faces`` triangles (a speckled prediction) is drawn
    coarser, so that a notebook with the view stays small (≈ 0.2–1 MB a map).
    """
    from fetalcmr.gallery import case_figure

    spacing = np.asarray(spacing_mm, dtype=float)
    detail = {name: _detail(lm, spacing, decimate, max_faces) for name, lm in labelmaps.items()}
    fig = case_figure(labelmaps, spacing, decimate={k: d[1] for k, d in detail.items()},
                      step_size={k: d[0] for k, d in detail.items()})
    scenes = fig.pop("scenes")
    if image is not None:
        first = next(iter(labelmaps.values()))
        centre = _centre(first, image.shape)
        for n, scene in enumerate(scenes):
            fig["data"] += _image_planes(image, spacing, centre, scene, show_legend=n == 0)
    fig["layout"]["height"] = height
    if title:
        fig["layout"]["title"] = {"text": title, "x": 0.5, "y": 0.995, "yanchor": "top", "font": {"size": 13}}
        fig["layout"]["margin"]["t"] = 60
    fig["config"] = {"displaylogo": False, "responsive": True}
    return fig


def view3d(image: np.ndarray | None = None, labelmap: np.ndarray | Mapping[str, np.ndarray] | None = None, *,
           spacing_mm: Sequence[float] = (1.0, 1.0, 1.0), backend: str = "auto", title: str | None = None,
           quiet: bool = False, **kwargs: Any) -> Any:
    """Return an interactive 3D view of ``labelmap`` (and ``image``) for JupyterLab; say which and why.

    ``backend="auto"`` or ``"plotly"``: a :class:`Plotly3DView` of the vessel surfaces, one scene per
    label map when ``labelmap`` is ``{name: map}`` (e.g. truth and a method), with the image's
    planes in the legend. It works offline in JupyterLab 4 (the renderer ships with plotly) and in
    the HTML report. ``backend="itk"``: itkwidgets' image + label viewer (``kwargs`` go to
    ``itkwidgets.view``) when it can load here — installed, inside a kernel, its web assets
    reachable — else the plotly view. The printed line names the view shown and the reason; with
    ``auto`` it also says whether the itkwidgets viewer is on offer. Arrays are ``[x, y, z]``.
    """
    if backend not in {"auto", "plotly", "itk"}:
        raise ValueError(f"view3d: backend must be 'auto', 'plotly' or 'itk', got {backend!r}")
    if image is None and labelmap is None:
        raise ValueError("view3d: give an image, a label map or both")
    img = None if image is None else np.asarray(image, dtype=np.float32)
    maps: dict[str, np.ndarray] = {}
    if isinstance(labelmap, Mapping):
        maps = {str(k): np.asarray(v) for k, v in labelmap.items()}
    elif labelmap is not None:
        maps = {"labels": np.asarray(labelmap)}
    shape = img.shape if img is not None else next(iter(maps.values())).shape
    if len(shape) != 3:
        raise ValueError(f"view3d: volumes must be 3D [x, y, z], got shape {shape}")
    for name, lm in maps.items():
        if lm.shape != shape:
            raise ValueError(f"view3d: label map {name!r} shape {lm.shape} does not match {shape}")

    def say(text: str) -> None:
        if not quiet:
            print(text)

    if backend == "itk":
        ok, why = itk_viewer_status()
        if ok:
            viewer = _itk_view(img, maps, kwargs)
            if viewer is not None:
                say(f"view3d: itkwidgets viewer (asked for; {why})")
                return viewer
            why = "the itkwidgets viewer failed to start (see the warning above)"
        reason = f"plotly (itkwidgets was asked for, but {why})"
    elif backend == "plotly":
        reason = "plotly (asked for)"
    else:
        reason = "plotly (works offline: JupyterLab renders it with the extension shipped in the plotly package)"
        if _in_kernel() and img is not None and maps:
            ok, why = itk_viewer_status()
            reason += (f"; itkwidgets' image + label viewer is on offer with view3d(..., backend='itk'): {why}"
                       if ok else f"; itkwidgets' viewer is not offered: {why}")
    if not maps:  # an image alone: its planes, with an empty surface set
        maps = {"image": np.zeros(shape, np.uint8)}
    fig = plotly_figure(img, maps, spacing_mm, title=title)
    if img is not None and not any(t.get("type") == "mesh3d" for t in fig["data"]):
        for t in fig["data"]:
            t.pop("visible", None)  # nothing else to see: show the planes
    say(f"view3d: {reason}.")
    return Plotly3DView(fig, reason)


def _itk_view(img: np.ndarray | None, maps: Mapping[str, np.ndarray], kwargs: Mapping[str, Any]) -> Any:
    """Return ``itkwidgets.view`` of the image with the first label map, or None when it fails."""
    args: dict[str, Any] = {}
    if img is not None:  # itkwidgets takes numpy arrays as [z, y, x]; ours are [x, y, z]
        args["image"] = np.ascontiguousarray(img.transpose(2, 1, 0))
    if maps:
        lab = next(iter(maps.values()))
        args["label_image"] = np.ascontiguousarray(lab.astype(np.uint8).transpose(2, 1, 0))
    args.update(kwargs)
    try:
        from itkwidgets import view  # heavy import (seconds): only inside a kernel

        return view(**args)
    except Exception as exc:  # noqa: BLE001 - a viewer failure must never break a notebook run
        warnings.warn(f"view3d: the itkwidgets viewer could not start ({type(exc).__name__}: {exc}).", stacklevel=3)
        return None
