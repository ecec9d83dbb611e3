"""Tests for fetalcmr.render: colours, slice overlays, surface renders and their cameras."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from mpl_toolkits.mplot3d import proj3d  # noqa: E402

from fetalcmr import render  # noqa: E402
from fetalcmr.anatomy import LABELS  # noqa: E402

SPACING = (0.8, 0.8, 0.8)


def _balls(shape: tuple[int, int, int], spec: dict[int, tuple[tuple[int, int, int], float]]) -> np.ndarray:
    grid = np.indices(shape)
    out = np.zeros(shape, dtype=np.uint8)
    for label, (centre, radius) in spec.items():
        inside = sum((grid[i] - centre[i]) ** 2 for i in range(3)) <= radius**2
        out[inside] = label
    return out


def _pixels(fig: matplotlib.figure.Figure) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float) / 255.0


def _matches(pixels: np.ndarray, rgb: tuple[float, float, float], lo: float = 0.3) -> np.ndarray:
    """Mask of pixels equal to ``s * rgb`` for a shading factor s in [lo, 1] (within 4 %)."""
    c = np.asarray(rgb)
    p = pixels.reshape(-1, 3)
    s = p @ c / (c @ c)
    resid = np.linalg.norm(p - s[:, None] * c[None, :], axis=1)
    return ((resid < 0.04) & (s >= lo) & (s <= 1.02)).reshape(pixels.shape[:2])


def test_label_colors_distinct_and_complete() -> None:
    colors = render.label_colors()
    assert sorted(colors) == [v for v in LABELS if v != 0]
    for a, b in itertools.combinations(colors.values(), 2):
        assert np.linalg.norm(np.subtract(a, b)) > 0.15
    extra = render.label_colors([3, 14, 15])
    assert extra[3] == colors[3] and extra[14] != extra[15]


def test_label_cmap_maps_index_to_colour() -> None:
    cmap = render.label_cmap()
    colors = render.label_colors()
    assert cmap(0)[3] == 0.0  # background transparent
    for v, rgb in colors.items():
        assert np.allclose(cmap(v)[:3], rgb)


def test_render_surfaces_shows_each_label_colour() -> None:
    lm = _balls((40, 40, 40), {4: ((12, 20, 20), 6), 7: ((28, 20, 20), 6), 1: ((20, 20, 32), 4)})
    fig = render.render_surfaces(lm, SPACING, title="three balls")
    assert len(fig.axes) == 3
    pixels = _pixels(fig)
    for ax in fig.axes:
        bbox = ax.get_window_extent()
        h = pixels.shape[0]
        panel = pixels[int(h - bbox.y1):int(h - bbox.y0), int(bbox.x0):int(bbox.x1)]
        assert panel.std() > 0.05  # not blank
        for v in (4, 7):  # AO and MPA visible from every side
            assert _matches(panel, render.label_colors()[v]).sum() > 50, (ax.get_title(), v)
    # the SVC ball is visible (superior view at least) and an absent label's colour is not drawn
    assert _matches(pixels, render.label_colors()[1], lo=0.5).sum() > 30
    assert _matches(pixels, render.label_colors()[5]).sum() < 5
    plt.close(fig)


@pytest.mark.parametrize("name", list(render.VIEWS))
def test_camera_letters_match_projection(name: str) -> None:
    """The R/L/A/P/S letters drawn on each view agree with where that direction projects."""
    direction = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0), "S": (0, 0, 1),
                 "I": (0, 0, -1)}
    view = render.VIEWS[name]
    fig = render.render_surfaces(_balls((16, 16, 16), {4: ((8, 8, 8), 4)}), SPACING, views=(name,))
    ax = fig.axes[0]
    fig.canvas.draw()

    def screen(vec: tuple[int, int, int]) -> np.ndarray:
        x, y, _ = proj3d.proj_transform(*np.add((6.4, 6.4, 6.4), vec), ax.get_proj())
        x0, y0, _ = proj3d.proj_transform(6.4, 6.4, 6.4, ax.get_proj())
        return np.array([x - x0, y - y0])

    assert screen(direction[view.screen_left])[0] < -0.5 * np.abs(screen(direction[view.screen_left])).max()
    assert screen(direction[view.screen_right])[0] > 0
    assert screen(direction[view.screen_top])[1] > 0
    plt.close(fig)


def test_overlay_slices_radiological_orientation() -> None:
    image = np.random.default_rng(0).random((32, 32, 32)).astype(np.float32)
    lm = np.zeros((32, 32, 32), np.uint8)
    lm[24:28, 14:18, 14:18] = 4  # on the subject's Right (large x)
    fig = render.overlay_slices(image, lm, alpha=1.0, slices=(26, 16, 16))
    pixels = _pixels(fig)
    h = pixels.shape[0]
    ao = render.label_colors()[4]
    for ax, horizontal_first in zip(fig.axes[:2], ("axial", "coronal"), strict=True):
        bbox = ax.get_window_extent()
        panel = pixels[int(h - bbox.y1):int(h - bbox.y0), int(bbox.x0):int(bbox.x1)]
        cols = np.nonzero(_matches(panel, ao, lo=0.95).any(axis=0))[0]
        assert cols.size > 0, horizontal_first
        assert cols.mean() < panel.shape[1] / 2  # subject's Right drawn on the viewer's left
    plt.close(fig)


def test_overlay_slices_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="does not match"):
        render.overlay_slices(np.zeros((8, 8, 8)), np.zeros((8, 8, 7), np.uint8))


def test_render_comparison_grid_and_shared_box() -> None:
    truth = _balls((24, 24, 24), {4: ((12, 12, 12), 5)})
    shifted = _balls((24, 24, 24), {6: ((8, 12, 12), 3)})
    fig = render.render_comparison({"truth": truth, "method": shifted}, SPACING,
                                   views=("anterior", "left"))
    axes3d = [ax for ax in fig.axes if ax.name == "3d"]
    assert len(axes3d) == 4
    assert len({tuple(ax.get_xlim()) for ax in axes3d}) == 1
    pixels = _pixels(fig)
    assert _matches(pixels, render.label_colors()[6]).sum() > 20
    plt.close(fig)


def test_view3d_gives_an_offline_plotly_view_and_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    lm = _balls((24, 24, 24), {4: ((12, 12, 12), 5), 6: ((6, 12, 12), 3)})
    image = np.random.default_rng(0).normal(size=lm.shape).astype(np.float32)
    view = render.view3d(image, lm, spacing_mm=SPACING)
    assert isinstance(view, render.Plotly3DView) and view.backend == "plotly"
    assert "view3d: plotly (works offline" in capsys.readouterr().out
    bundle = view._repr_mimebundle_()
    assert set(bundle) == {render.PLOTLY_MIME, "text/plain"}
    traces = bundle[render.PLOTLY_MIME]["data"]
    assert sorted(t["name"] for t in traces if t["type"] == "mesh3d") == ["AO", "DAO"]
    planes = [t for t in traces if t["type"] == "surface"]
    assert len(planes) == 3 and all(t["visible"] == "legendonly" for t in planes)
    assert planes[0]["surfacecolor"]["shape"] == "24,24"
    # several maps side by side, one scene each
    two = render.view3d(None, {"truth": lm, "method": lm}, spacing_mm=SPACING, quiet=True)
    assert {t["scene"] for t in two.figure["data"]} == {"scene", "scene2"}
    with pytest.raises(ValueError, match="does not match"):
        render.view3d(image, lm[:-1])
    with pytest.raises(ValueError, match="backend"):
        render.view3d(image, lm, backend="vtk")


def test_view3d_asked_for_itk_falls_back_with_the_reason(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    lm = _balls((16, 16, 16), {4: ((8, 8, 8), 4)})
    view = render.view3d(lm.astype(np.float32), lm, backend="itk")
    assert view.backend == "plotly" and "needs a running Jupyter kernel" in capsys.readouterr().out
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "itkwidgets" else real(name, *a))
    render.view3d(lm.astype(np.float32), lm, backend="itk")
    assert "pip install 'itkwidgets[lab]==1.0a55' 'ngff-zarr==0.32.2'" in capsys.readouterr().out


def test_itk_viewer_is_offered_only_when_its_web_assets_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    assert render._reachable("host.invalid", 0.5)  # no network needed to say no
    monkeypatch.setattr(render, "_in_kernel", lambda: True)
    monkeypatch.setattr(render, "_PROBED", {})
    hosts = render.itk_asset_hosts()
    assert "cdn.jsdelivr.net" in hosts and len(hosts) == 2
    monkeypatch.setattr(render, "_reachable", lambda host, timeout_s: "" if host != hosts[0] else "timed out")
    ok, why = render.itk_viewer_status()
    assert not ok and hosts[0] in why and "draw nothing" in why
    monkeypatch.setattr(render, "_reachable", lambda host, timeout_s: "")
    assert not render.itk_viewer_status()[0]  # the answer is kept for 5 minutes
    render._PROBED.clear()
    assert render.itk_viewer_status()[0]


def test_label_meshes_decimation_keeps_thin_vessels() -> None:
    lm = np.zeros((40, 40, 40), np.uint8)
    grid = np.indices(lm.shape)
    lm[((grid[0] - 20) ** 2 + (grid[1] - 20) ** 2 <= 1) & (grid[2] > 5) & (grid[2] < 35)] = 10  # ~2.2 vox wide
    lm[8:20, 8:20, 8:20] = 4
    full = {m.label: m for m in render.label_meshes(lm, SPACING, decimate=0)}
    dec = {m.label: m for m in render.label_meshes(lm, SPACING)}
    assert set(dec) == set(full) == {4, 10}
    for v in (4, 10):
        assert len(dec[v].faces) < 0.75 * len(full[v].faces)
        assert dec[v].faces.max() < len(dec[v].verts)
        lo, hi = full[v].verts.min(axis=0), full[v].verts.max(axis=0)
        assert np.all(dec[v].verts >= lo - 1.0) and np.all(dec[v].verts <= hi + 1.0)
    # the thin tube spans its full length in mm
    assert np.ptp(dec[10].verts[:, 2]) > 0.8 * 28 * SPACING[2]


def test_docstring_examples() -> None:
    import doctest

    assert doctest.testmod(render).failed == 0
