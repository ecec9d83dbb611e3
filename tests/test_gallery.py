"""Tests for fetalcmr.gallery: offline pages, one shared plotly.js, rendering in headless Chromium."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fetalcmr import gallery
from fetalcmr.anatomy import LABEL_INDEX as L

SPACING = (0.8, 0.8, 0.8)


def _tubes(shape: tuple[int, int, int] = (32, 32, 32), with_lsa: bool = True) -> np.ndarray:
    """Return a small label map: an AO column with an arch, DAO, MPA and optionally an LSA."""
    lm = np.zeros(shape, np.uint8)
    lm[18:22, 14:18, 4:24] = L["AO"]
    lm[10:22, 10:18, 24:28] = L["AO"]
    lm[10:14, 10:14, 4:24] = L["DAO"]
    lm[4:8, 20:26, 4:20] = L["MPA"]
    if with_lsa:
        lm[11:13, 11:13, 28:31] = L["LSA"]
    return lm


def _cases(n: int = 2) -> list[dict]:
    return [{
        "id": f"sub-{k:03d}",
        "labelmaps": {"truth": _tubes(), "joint": _tubes(with_lsa=bool(k % 2))},
        "metrics": [{"method": "joint", "dice": 0.9 - 0.1 * k, "correct": bool(k % 2)}],
        "summary": {"class": "DAA", "correct (joint)": bool(k % 2)},
        "notes": ["[synthetic] constructed test case"],
    } for k in range(n)]


def test_gallery_files_offline_and_shared_plotly(tmp_path: Path) -> None:
    index = gallery.write_gallery(tmp_path, _cases(3), spacing_mm=SPACING, note="[synthetic]")
    assert index == tmp_path / "index.html"
    js = tmp_path / gallery.PLOTLY_JS
    assert js.stat().st_size > 1_000_000  # the real bundle, once
    pages = sorted(tmp_path.glob("case_*.html"))
    assert [p.name for p in pages] == ["case_sub-000.html", "case_sub-001.html", "case_sub-002.html"]
    for page in pages:
        text = page.read_text()
        assert "<script src='plotly.min.js'></script>" in text
        assert len(text) < 1_000_000  # plotly.js not inlined
        assert not re.search(r"(src|href)=['\"]?(https?:)?//", text)  # nothing from the network
        assert "sub-" in text and "<table>" in text and "mesh3d" in text
    text = index.read_text()
    for page in pages:
        assert f"href='{page.name}'" in text
    # rewriting reuses the bundle and overwrites pages
    gallery.write_gallery(tmp_path, _cases(1), spacing_mm=SPACING)
    assert js.stat().st_size > 1_000_000


def test_case_figure_scenes_traces_and_cameras() -> None:
    fig = gallery.case_figure({"truth": _tubes(), "LP": _tubes(with_lsa=False)}, SPACING)
    assert fig["scenes"] == ["scene", "scene2"]
    names = [(t["scene"], t["name"]) for t in fig["data"]]
    assert ("scene", "LSA") in names and ("scene2", "LSA") not in names
    # one legend entry per label, shared by both scenes
    shown = [t["name"] for t in fig["data"] if t["showlegend"]]
    assert sorted(shown) == sorted({t["name"] for t in fig["data"]})
    assert fig["layout"]["scene"]["xaxis"]["range"] == fig["layout"]["scene2"]["xaxis"]["range"]
    assert set(gallery.CAMERAS) == {"anterior", "left", "superior"}
    with pytest.raises(ValueError, match="no label maps"):
        gallery.case_figure({}, SPACING)


def test_scene_titles_take_the_registry_colour_of_a_method() -> None:
    from fetalcmr.methods import METHODS

    fig = gallery.case_figure({"LP": _tubes(), "LP+manual": _tubes(), "a sketch": _tubes()}, SPACING)
    fonts = {a["text"]: a["font"] for a in fig["layout"]["annotations"]}
    assert fonts["<b>LP</b>"]["color"] == METHODS["lp"].colour
    assert fonts["<b>LP+manual</b>"]["color"] == METHODS["net_lp_manual"].colour
    assert "color" not in fonts["<b>a sketch</b>"]


def test_gallery_rejects_bad_cases(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs 'id' and 'labelmaps'"):
        gallery.write_gallery(tmp_path, [{"id": "x"}], spacing_mm=SPACING)
    with pytest.raises(ValueError, match="no spacing_mm"):
        gallery.write_gallery(tmp_path, [{"id": "x", "labelmaps": {"t": _tubes()}}])
    with pytest.raises(ValueError, match="not unique"):
        gallery.write_gallery(tmp_path, _cases(1) * 2, spacing_mm=SPACING)


# ---------------------------------------------------------------------------------------------
# headless Chromium (Debian `chromium`; .ci/run installs it)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium): gallery browser test skipped"
)


def _chromium(tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess[bytes]:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--window-size=1400,1000", "--virtual-time-budget=20000",
           *extra, url]
    return subprocess.run(cmd, capture_output=True, timeout=180, check=False)


@needs_chromium
def test_gallery_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "gallery"
    gallery.write_gallery(out, _cases(2), spacing_mm=SPACING)
    page = (out / "case_sub-000.html").as_uri()
    dom = _chromium(tmp_path, page, "--dump-dom").stdout.decode("utf-8", "replace")
    html_tag = dom[dom.index("<html"):dom.index(">", dom.index("<html"))]
    assert "data-error" not in html_tag, html_tag
    assert 'data-rendered="ok"' in html_tag, html_tag
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, page, f"--screenshot={shot}")
    pixels = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("RGB"), float) / 255.0
    plot = pixels[150:600]  # below the header, above the legend: the 3D scenes
    assert plot.std() > 0.05
    saturated = (plot.max(axis=2) - plot.min(axis=2)) > 0.25  # coloured surfaces, not grey axes
    assert saturated.sum() > 5000
    index_dom = _chromium(tmp_path, (out / "index.html").as_uri(), "--dump-dom").stdout.decode()
    assert 'data-rendered="ok"' in index_dom and "case_sub-001.html" in index_dom


@needs_chromium
def test_gallery_page_reports_missing_plotly(tmp_path: Path) -> None:
    """Control: without plotly.min.js next to it the page is marked as failed, not as rendered."""
    out = tmp_path / "gallery"
    gallery.write_gallery(out, _cases(1), spacing_mm=SPACING)
    (out / gallery.PLOTLY_JS).unlink()
    dom = _chromium(tmp_path, (out / "case_sub-000.html").as_uri(), "--dump-dom").stdout.decode()
    html_tag = dom[dom.index("<html"):dom.index(">", dom.index("<html"))]
    assert "data-error" in html_tag and "data-rendered" not in html_tag
