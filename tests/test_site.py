"""`make report` (fetalcmr.site): offline HTML of a run's executed notebooks, built here from a
tiny fake run (two executed notebooks, a MANIFEST, a one-case 3D gallery)."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest

from fetalcmr import site

RECORD = {"profile": "smoke", "seed": 0, "dataset": "synthetic", "commit": "abc1234+dirty", "wall_s": 72.4,
          "peak_rss_mb": 512.0, "cpu_count": 2, "finished": "2026-11-30T12:00:00+00:00",
          "outputs": ["fig00_line.png"]}


def _png() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _labels() -> np.ndarray:
    lm = np.zeros((20, 20, 20), np.uint8)
    lm[8:12, 8:12, 3:17] = 4
    lm[3:6, 12:16, 3:14] = 7
    return lm


def _executed(path: Path, title: str, cells: list, params: dict) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\nIntro with a [link](https://arxiv.org/abs/2311.07234)."),
                *cells]
    nb.metadata["papermill"] = {"parameters": params}
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


def fake_run(root: Path, *, gallery: bool = True, with_3d: bool = True) -> Path:
    """Write ``root/run`` as the runner would: executed notebooks, figures/MANIFEST.json, gallery/."""
    from fetalcmr import gallery as gal
    from fetalcmr import render

    run, figs = root / "run", root / "run" / "figures"
    (run / "executed").mkdir(parents=True)
    figs.mkdir()
    params = {"profile": "smoke", "seed": 0, "dataset": "", "run_dir": str(run), "figures_dir": str(figs)}
    v4 = nbformat.v4
    first = [
        v4.new_markdown_cell("## Section A\n\nDiscussion of **the** table."),
        v4.new_code_cell("train()", outputs=[
            v4.new_output("stream", name="stderr",
                          text="\rtrain:   0%| | 0/2 [00:00<?]\rtrain: 100%| | 2/2 [00:01<00:00]\n"),
            v4.new_output("display_data", data={"image/png": _png(), "text/plain": "<Figure>"}),
            v4.new_output("execute_result", data={"text/html": "<table><tr><td>0.812</td></tr></table>",
                                                  "text/plain": "table"}, execution_count=1)]),
        v4.new_markdown_cell("## Section B"),
    ]
    _executed(run / "executed" / "00_first.ipynb", "00 · First notebook", first, params)
    second: list = [v4.new_markdown_cell("## Interactive 3D view")]
    if with_3d:
        bundle = render.view3d(None, _labels(), spacing_mm=(1.0, 1.0, 1.0), quiet=True)._repr_mimebundle_()
        second.append(v4.new_code_cell("view3d(...)", outputs=[v4.new_output("display_data", data=bundle)]))
    _executed(run / "executed" / "01_second.ipynb", "01 · Second notebook", second, params)
    manifest = {"notebooks": {"00_first": RECORD, "01_second": {**RECORD, "wall_s": 5.0, "outputs": []}},
                "environment": {"python": "3.11.9", "packages": {"torch": "2.13.0"}}}
    (figs / "MANIFEST.json").write_text(json.dumps(manifest))
    if gallery:
        gal.write_gallery(run / "gallery", [{"id": "sub-000", "labelmaps": {"truth": _labels()}}],
                          spacing_mm=(1.0, 1.0, 1.0))
    return run


NETWORK = re.compile(r"""(src|href)\s*=\s*['"]?(https?:)?//|@import|url\(\s*['"]?https?:""")


def _network_refs(text: str) -> list[str]:
    """Loads from the network: scripts, styles, images (plain links to papers are fine)."""
    hits = []
    for m in NETWORK.finditer(text):
        before = text[max(0, m.start() - 3):m.start()]
        if not before.endswith("<a "):
            hits.append(text[m.start():m.start() + 80])
    return hits


def test_report_pages_toc_provenance_gallery_and_nothing_from_the_network(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    report = site.build_report(run)
    out = run / "report"
    assert report.index == out / "index.html"
    assert [p.file for p in report.pages] == ["00_first.html", "01_second.html"]
    assert report.bytes > 4_000_000 and report.seconds > 0  # plotly.js once, in the gallery copy
    index = report.index.read_text()
    # contents in notebook order, with each notebook's sections
    assert index.index("00 · First notebook") < index.index("01 · Second notebook")
    assert "href='00_first.html#Section-A'" in index and "href='00_first.html#Section-B'" in index
    assert "1 min 12 s" in index and "abc1234+dirty" in index and "Smoke profile" in index
    assert "href='gallery/index.html'" in index and "href='gallery/case_sub-000.html'" in index
    assert (out / "gallery" / "case_sub-000.html").exists() and (out / "gallery" / "plotly.min.js").exists()
    assert not (out / "plotly.min.js").exists()  # one copy of plotly.js, the gallery's

    page = (out / "00_first.html").read_text()
    box = page[page.index("class='fc-prov'"):]
    box = box[:box.index("</div>")]
    for text in ("smoke", "<td>seed</td><td>0</td>", "abc1234+dirty", "1 min 12 s (72 s)", "fig00_line.png"):
        assert text in box, text
    assert "data:image/png;base64," in page and "<td>0.812</td>" in page and "<strong>the</strong>" in page
    assert "train: 100%" in page and "train:   0%" not in page  # tqdm's \r updates: the last state only
    assert "href='01_second.html'" in page and "class='current'" in page
    assert "https://arxiv.org/abs/2311.07234" in page  # a link to read, not a load
    for name in ("index.html", "00_first.html", "01_second.html"):
        assert not _network_refs((out / name).read_text()), name

    second = (out / "01_second.html").read_text()
    assert "<script src='gallery/plotly.min.js'></script>" in second
    assert second.count("Plotly.newPlot(") == 1 and '"mesh3d"' in second and "fc-plotly" in second


def test_report_without_gallery_or_manifest_record_says_so(tmp_path: Path) -> None:
    run = fake_run(tmp_path, gallery=False, with_3d=False)
    manifest = json.loads((run / "figures" / "MANIFEST.json").read_text())
    del manifest["notebooks"]["01_second"]
    (run / "figures" / "MANIFEST.json").write_text(json.dumps(manifest))
    failed = nbformat.read(str(run / "executed" / "00_first.ipynb"), as_version=4)
    failed.metadata["papermill"]["exception"] = True  # papermill's mark of a run that raised
    nbformat.write(failed, str(run / "executed" / "00_first.ipynb"))
    report = site.build_report(run, out_dir=tmp_path / "elsewhere", include_code=False)
    assert report.index == tmp_path / "elsewhere" / "index.html"
    assert (tmp_path / "elsewhere" / "plotly.min.js").exists()
    assert "no 3D gallery" in report.index.read_text()
    assert "MANIFEST has no record of 01_second" in (tmp_path / "elsewhere" / "01_second.html").read_text()
    first = (tmp_path / "elsewhere" / "00_first.html").read_text()
    assert "train()" not in first  # --no-code
    assert "stopped with an error" in first
    # a rebuild replaces the folder: pages of notebooks no longer executed disappear
    (run / "executed" / "01_second.ipynb").unlink()
    site.build_report(run, out_dir=tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere" / "01_second.html").exists()
    assert not list(tmp_path.glob(".elsewhere*"))  # no build or old folder left behind


def test_cli_builds_the_report_and_names_a_run_without_notebooks(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run = fake_run(tmp_path, gallery=False, with_3d=False)
    assert site.main(["--run-dir", str(run)]) == 0
    assert "report:" in capsys.readouterr().out and (run / "report" / "index.html").exists()
    assert site.main(["--run-dir", str(tmp_path / "nothing")]) == 2
    assert "make reproduce" in capsys.readouterr().out
