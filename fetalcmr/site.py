"""``make report``: an offline HTML rendering of a run's executed notebooks, opened with one file.

Reads ``<run>/executed/NN_*.ipynb`` (written by :mod:`fetalcmr.runner`) and writes
``<run>/report/``: ``index.html`` (the run's provenance, a table of contents in notebook order with
each notebook's sections, links into the 3D gallery), one page per notebook (Markdown, code,
figures, tables and interactive 3D views, with a provenance box from the MANIFEST: profile, seed,
commit, wall time) and a copy of the run's 3D gallery (``gallery/``, hard links where possible),
with one ``plotly.min.js`` for all pages, so the folder can be zipped and opened anywhere without
network or Python.

Pages are rendered by nbconvert's ``lab`` template without its CDN scripts (require.js, MathJax,
mermaid, widget manager). Plotly outputs (``render.view3d``) become plots drawn by the local
plotly.js. Each page marks ``<html>`` with ``data-rendered="ok"`` once its plots are drawn, or
``data-error`` when a script fails, for the browser tests.

Usage::

    python -m fetalcmr.site --profile smoke             # data/runs/smoke/report/index.html
    python -m fetalcmr.site --run-dir data/runs/default
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fetalcmr.atomic import write_text_atomic
from fetalcmr.notebook import REPO_ROOT, default_figures_dir, default_run_dir

PLOTLY_MIME = "application/vnd.plotly.v1+json"  # the same as render.PLOTLY_MIME (no heavy import here)

#: nbconvert's lab template without the scripts it would fetch from CDNs
_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""

_CSS = """
.fc-nav { position: fixed; top: 0; left: 0; bottom: 0; width: 15.5em; overflow-y: auto; padding: 1em 0.8em;
  background: #f6f7f9; border-right: 1px solid #ddd; font: 14px/1.4 system-ui, sans-serif; }
.fc-nav a { color: #0550ae; text-decoration: none; display: block; padding: 0.15em 0; }
.fc-nav a.current { font-weight: 600; color: #111; }
.fc-nav .fc-small { color: #666; font-size: 12px; margin-top: 1em; }
body.jp-Notebook { margin-left: 17.5em !important; }
.fc-prov { font: 13px/1.45 system-ui, sans-serif; border: 1px solid #c8d1dc; background: #f3f6fa;
  border-radius: 6px; padding: 0.6em 1em; max-width: 60em;
  margin: 1em 5px 1.5em calc(var(--jp-cell-prompt-width, 64px) + 10px); }
.fc-prov table { border-collapse: collapse; } .fc-prov td { padding: 0.1em 1.2em 0.1em 0; vertical-align: top; }
.fc-prov td:first-child { white-space: nowrap; }
.fc-prov .fc-warn { color: #a40000; }
.fc-pager { font: 14px system-ui, sans-serif; display: flex; justify-content: space-between; max-width: 60em;
  margin: 2em 5px 2em calc(var(--jp-cell-prompt-width, 64px) + 10px); }
.fc-plotly { width: 100%; height: 520px; }
"""

_INDEX_CSS = """
body { font: 15px/1.5 system-ui, sans-serif; margin: 2em auto; max-width: 62em; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
a { color: #0550ae; } ol.fc-toc > li { margin: 0.5em 0; } ol.fc-toc ul { margin: 0.2em 0; font-size: 0.92em; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { border: 1px solid #ddd; padding: 0.2em 0.6em; }
th { background: #f3f3f3; text-align: left; } .fc-note { color: #555; font-size: 0.9em; }
.fc-cases a { display: inline-block; margin: 0 0.8em 0.2em 0; }
"""

# marks <html> with data-error on any script failure (first, so that it sees a missing plotly.js)
_ERROR_HOOK = """<script>
window.addEventListener('error', function (e) {
  var t = e && e.target;
  var msg = (e && e.message) ? e.message : ('failed to load ' + ((t && (t.src || t.href)) || '?'));
  document.documentElement.setAttribute('data-error', msg);
}, true);
</script>"""

# marks <html> with data-rendered once every plot of the page is drawn
_PLOTS_HOOK = """<script>
window.fcPlots = [];
window.addEventListener('load', function () {
  Promise.all(window.fcPlots).then(function () {
    document.documentElement.setAttribute('data-rendered', 'ok');
  }).catch(function (err) { document.documentElement.setAttribute('data-error', String(err)); });
});
</script>"""

_PLOT = """<div class="fc-plotly" id="{id}"></div>
<script>
(function () {{
  var el = document.getElementById('{id}');
  if (typeof Plotly === 'undefined') {{
    el.textContent = '3D view: plotly.js did not load (keep {js} with this page).';
    document.documentElement.setAttribute('data-error', 'Plotly not loaded');
    return;
  }}
  var fig = {fig};
  var cfg = Object.assign({{displaylogo: false, responsive: true}}, fig.config || {{}});
  window.fcPlots.push(Plotly.newPlot(el, fig.data, fig.layout, cfg));
}})();
</script>"""


@dataclass(frozen=True)
class Page:
    """One notebook page of the report."""

    name: str  # the notebook's stem, e.g. 02_segmentation
    file: str  # the page's file name in the report folder
    title: str  # the notebook's first heading
    sections: list[tuple[str, str]]  # (anchor id, heading text) of its level-2 headings
    record: dict[str, Any]  # the MANIFEST's notebook record ({} when missing)


@dataclass(frozen=True)
class Report:
    """What :func:`build_report` wrote."""

    index: Path
    pages: list[Page]
    seconds: float
    bytes: int


def _text(markup: str) -> str:
    """Return the text of an HTML fragment (tags removed, entities decoded)."""
    return html.unescape(re.sub(r"<[^>]+>", "", markup)).replace("¶", "").strip()


def _title(nb: Any, fallback: str) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = re.search(r"^#\s+(.+)$", cell.source, flags=re.M)
            if m:
                return m.group(1).strip()
    return fallback


def _plotly_html(figure: Mapping[str, Any], plotly_js: str) -> str:
    """Return the HTML that draws a plotly figure with the page's plotly.js."""
    fig = json.dumps(figure, separators=(",", ":")).replace("</", "<\\/")
    return _PLOT.format(id=f"plot-{uuid.uuid4().hex[:12]}", fig=fig, js=plotly_js)


def _prepare(nb: Any, plotly_js: str) -> int:
    """Give every plotly output an HTML form for the page; return how many there are."""
    n = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data") or {}
            if PLOTLY_MIME in data:
                figure = data[PLOTLY_MIME]
                if isinstance(figure, str):
                    figure = json.loads(figure)
                data["text/html"] = _plotly_html(figure, plotly_js)
                n += 1
    return n


def _exporter(include_code: bool) -> Any:
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    config = Config({"CoalesceStreamsPreprocessor": {"enabled": True}})  # tqdm's \r updates: last state only
    exporter = HTMLExporter(config=config, template_name="lab", extra_loaders=[DictLoader({"fc.html.j2": _TEMPLATE})],
                            template_file="fc.html.j2")
    exporter.exclude_input = not include_code
    exporter.exclude_input_prompt = not include_code
    return exporter


def _fmt_wall(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "not recorded"
    s = int(round(seconds))
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60:02d} s ({seconds:.0f} s)"


def _provenance(name: str, record: Mapping[str, Any], papermill: Mapping[str, Any], gallery: str) -> str:
    """The provenance box of one page: what the MANIFEST says about this notebook's run."""
    params = papermill.get("parameters") or {}
    if not record:
        body = (f"<p class='fc-warn'>The MANIFEST has no record of {html.escape(name)}: this executed copy did not "
                "finish, or was written by another run.</p>")
    else:
        rows = [("profile", record.get("profile")), ("seed", record.get("seed")),
                ("dataset", record.get("dataset")), ("commit", record.get("commit")),
                ("wall time", _fmt_wall(record.get("wall_s"))),
                ("peak memory", f"{record['peak_rss_mb']:.0f} MB" if isinstance(record.get("peak_rss_mb"), (int, float))
                 else None),
                ("finished", record.get("finished")),
                ("CPU cores", record.get("cpu_count")),
                ("outputs", ", ".join(record.get("outputs") or []) or "none")]
        body = "<table>" + "".join(f"<tr><td>{k}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows
                                   if v is not None) + "</table>"
        for key in ("profile", "seed"):
            if key in params and key in record and params[key] != record[key]:
                body += (f"<p class='fc-warn'>This page was executed with {key} {html.escape(str(params[key]))}, "
                         f"but the MANIFEST records {html.escape(str(record[key]))}.</p>")
    if papermill.get("exception"):
        body += ("<p class='fc-warn'>This execution stopped with an error (its traceback is below); the MANIFEST "
                 "record above is from the last run that finished.</p>")
    if gallery:
        body += f"<p>Interactive 3D cases: <a href='{gallery}'>the 3D gallery</a> (rotatable vessel surfaces).</p>"
    return f"<div class='fc-prov'><strong>Provenance</strong> (from MANIFEST.json){body}</div>"


def _nav(pages: Sequence[Page], current: str, gallery: str) -> str:
    links = "".join(f"<a href='{p.file}' class='{'current' if p.name == current else ''}'>"
                    f"{html.escape(p.title)}</a>" for p in pages)
    extra = f"<a href='{gallery}'>3D gallery</a>" if gallery else ""
    return (f"<nav class='fc-nav'><a href='index.html'><strong>Contents</strong></a>{links}"
            f"<div class='fc-small'>{extra}<a href='index.html#provenance'>Provenance of the run</a></div></nav>")


def _pager(pages: Sequence[Page], k: int) -> str:
    prev = f"<a href='{pages[k - 1].file}'>← {html.escape(pages[k - 1].title)}</a>" if k > 0 else "<span></span>"
    nxt = (f"<a href='{pages[k + 1].file}'>{html.escape(pages[k + 1].title)} →</a>" if k + 1 < len(pages)
           else "<a href='index.html'>Contents</a>")
    return f"<div class='fc-pager'>{prev}{nxt}</div>"


def _shared_styles(page: str, folder: Path, min_chars: int = 8000) -> str:
    """Move the page's large inline style sheets (JupyterLab's theme, the same on every page) to
    ``style-<hash>.css`` files in ``folder``, written once and linked from each page."""
    import hashlib

    def link(m: re.Match[str]) -> str:
        css = m.group(1)
        if len(css) < min_chars:
            return m.group(0)
        name = f"style-{hashlib.sha256(css.encode()).hexdigest()[:12]}.css"
        if not (folder / name).exists():
            write_text_atomic(folder / name, css)
        return f"<link rel='stylesheet' href='{name}'>"

    head_end = page.find("</head>")
    if head_end < 0:
        return page
    return re.sub(r"<style type=\"text/css\">(.*?)</style>", link, page[:head_end], flags=re.S) + page[head_end:]


def _gallery_cases(gallery_dir: Path) -> list[tuple[str, str]]:
    """(file, case id) of every case page of a gallery, in file order."""
    return [(p.name, p.stem[len("case_"):]) for p in sorted(gallery_dir.glob("case_*.html"))]


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy ``src`` into ``dst``, hard-linking files where the file system allows (no extra space)."""
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def _figures_dir(run: Path, params: Mapping[str, Any]) -> Path:
    """The run's figures folder: from the executed notebooks' parameters, else the default for the run."""
    if params.get("figures_dir"):
        return Path(params["figures_dir"])
    if (run / "figures" / "MANIFEST.json").exists():
        return run / "figures"
    return default_figures_dir(run.name)


def _write_pages(build: Path, run: Path, executed: Sequence[Path], notebooks: Sequence[Any],
                 records: Mapping[str, Any], manifest: Mapping[str, Any], params: Mapping[str, Any],
                 include_code: bool) -> list[Page]:
    """Write the pages, the index, plotly.js and the gallery copy into ``build``; return the pages."""
    from fetalcmr.gallery import PLOTLY_JS as GALLERY_JS
    from fetalcmr.gallery import write_plotly_js

    gallery_src = run / "gallery"
    gallery = ""
    if (gallery_src / "index.html").exists():
        _copy_tree(gallery_src, build / "gallery")
        gallery = "gallery/index.html"
        write_plotly_js(build / "gallery")  # one plotly.js for the gallery and the pages
        plotly_js = f"gallery/{GALLERY_JS}"
    else:
        write_plotly_js(build)
        plotly_js = GALLERY_JS

    exporter = _exporter(include_code)
    bodies: list[tuple[str, dict[str, Any]]] = []
    pages: list[Page] = []
    for path, nb in zip(executed, notebooks, strict=True):
        name = path.stem
        _prepare(nb, plotly_js)
        body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": name}})
        sections = [(m.group(1), _text(m.group(2))) for m in
                    re.finditer(r"<h2 id=\"([^\"]+)\"[^>]*>(.*?)</h2>", body, flags=re.S)]
        pages.append(Page(name, f"{name}.html", _title(nb, name), sections, dict(records.get(name, {}))))
        bodies.append((body, dict(nb.metadata.get("papermill", {}))))

    for k, (page, (body, papermill)) in enumerate(zip(pages, bodies, strict=True)):
        body = _shared_styles(body, build)
        head = f"{_ERROR_HOOK}{_PLOTS_HOOK}<script src='{plotly_js}'></script><style>{_CSS}</style>"
        body = body.replace("<head>", "<head>" + head, 1)
        top = _nav(pages, page.name, gallery) + _provenance(page.name, page.record, papermill, gallery)
        body = body.replace("<main>", "<main>" + top, 1)
        body = body.replace("</main>", _pager(pages, k) + "</main>", 1)
        write_text_atomic(build / page.file, body)

    write_text_atomic(build / "index.html", _index(pages, manifest, params, gallery, build / "gallery", run))
    for path in build.rglob("*"):
        if path.is_file():
            path.chmod(0o644)
    return pages


def build_report(run_dir: str | os.PathLike[str], *, out_dir: str | os.PathLike[str] | None = None,
                 figures_dir: str | os.PathLike[str] | None = None, include_code: bool = True) -> Report:
    """Write the HTML report of the executed notebooks in ``run_dir``; return what was written.

    ``out_dir`` defaults to ``<run_dir>/report`` and is replaced as a whole (built next to it,
    then swapped in). ``figures_dir`` (the folder of MANIFEST.json) defaults to the one the
    notebooks were executed with. Raises ``FileNotFoundError`` when nothing was executed.
    """
    import nbformat

    t0 = time.perf_counter()
    run = Path(run_dir).resolve()
    executed = sorted((run / "executed").glob("[0-9][0-9]_*.ipynb"))
    if not executed:
        raise FileNotFoundError(f"{run / 'executed'}: no executed notebooks; run `make reproduce` first")
    out = Path(out_dir).resolve() if out_dir else run / "report"
    notebooks = [nbformat.read(str(p), as_version=4) for p in executed]
    params = dict(notebooks[0].metadata.get("papermill", {}).get("parameters", {}))
    figs = Path(figures_dir).resolve() if figures_dir else _figures_dir(run, params)
    manifest_path = figs / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    records = manifest.get("notebooks", {})

    build = out.with_name(f".{out.name}.building-{os.getpid()}")
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    try:
        pages = _write_pages(build, run, executed, notebooks, records, manifest, params, include_code)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    build.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return Report(out / "index.html", pages, time.perf_counter() - t0, size)


def _index(pages: Sequence[Page], manifest: Mapping[str, Any], params: Mapping[str, Any], gallery: str,
           gallery_dir: Path, run: Path) -> str:
    """The report's front page: provenance of the run, contents in notebook order, 3D gallery."""
    profile = params.get("profile") or next((p.record.get("profile") for p in pages if p.record), "?")
    synthetic = not params.get("dataset")
    toc = []
    for p in pages:
        wall = _fmt_wall(p.record.get("wall_s")) if p.record else "not in the MANIFEST"
        subs = "".join(f"<li><a href='{p.file}#{html.escape(sid, quote=True)}'>{html.escape(text)}</a></li>"
                       for sid, text in p.sections)
        toc.append(f"<li><a href='{p.file}'><strong>{html.escape(p.title)}</strong></a> "
                   f"<span class='fc-note'>({html.escape(p.name)}, {wall})</span><ul>{subs}</ul></li>")
    commits = sorted({str(p.record.get("commit")) for p in pages if p.record.get("commit")})
    total = sum(p.record.get("wall_s") or 0 for p in pages if p.record)
    env = manifest.get("environment", {})
    packages = ", ".join(f"{k} {v}" for k, v in (env.get("packages") or {}).items() if v)
    prov = [("profile", profile), ("seed", params.get("seed", "?")),
            ("data", "synthetic cohort" if synthetic else params.get("dataset")),
            ("commit", ", ".join(commits) or "not recorded"),
            ("wall time of the notebooks", _fmt_wall(total) if total else "not recorded"),
            ("Python", env.get("python")), ("platform", env.get("platform")), ("packages", packages),
            ("run folder", str(run))]
    prov_html = "".join(f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in prov if v)
    cases = _gallery_cases(gallery_dir) if gallery else []
    if gallery:
        links = "".join(f"<a href='gallery/{f}'>{html.escape(c)}</a>" for f, c in cases)
        gal = (f"<p><a href='{gallery}'><strong>Open the 3D gallery</strong></a>: one page per test subject with "
               "rotatable vessel surfaces of the truth and every method, and the topology verdicts.</p>"
               f"<p class='fc-cases'>{links}</p>")
    else:
        gal = "<p class='fc-note'>This run has no 3D gallery (it is written by the topology-review notebook).</p>"
    warn = ("<p><strong>Synthetic data:</strong> every number and figure comes from the generated phantom cohort; "
            "they are not claims about patients.</p>" if synthetic else "")
    smoke = ("<p><strong>Smoke profile:</strong> tiny data and 1–2 training iterations; the numbers are meaningless "
             "(they only show that the code runs).</p>" if profile == "smoke" else "")
    body = (f"<h1>fetalcmr: the executed notebooks ({html.escape(str(profile))} profile)</h1>{warn}{smoke}"
            "<p class='fc-note'>Each page is a notebook as it ran: its Markdown discussion, code, printed output, "
            "figures, tables and interactive 3D views, with a provenance box from MANIFEST.json. Works offline: "
            "keep this folder together.</p>"
            f"<h2>Contents</h2><ol class='fc-toc'>{''.join(toc)}</ol>"
            f"<h2>3D gallery</h2>{gal}"
            f"<h2 id='provenance'>Provenance of the run</h2><table>{prov_html}</table>"
            "<script>document.documentElement.setAttribute('data-rendered', 'ok');</script>")
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>fetalcmr report ({html.escape(str(profile))})</title>{_ERROR_HOOK}"
            f"<style>{_INDEX_CSS}</style></head><body>{body}</body></html>\n")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``make report``); returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m fetalcmr.site", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="default", help="the run to render: data/runs/<profile>")
    parser.add_argument("--dataset", default="", help="the dataset.json of the run (its run folder)")
    parser.add_argument("--run-dir", default="", help="a run folder (overrides --profile/--dataset)")
    parser.add_argument("--out", default="", help="output folder (default: <run>/report)")
    parser.add_argument("--no-code", action="store_true", help="leave the code cells out")
    args = parser.parse_args(argv)
    run = Path(args.run_dir) if args.run_dir else default_run_dir(args.profile, args.dataset)
    try:
        report = build_report(run, out_dir=args.out or None, include_code=not args.no_code)
    except FileNotFoundError as err:
        print(f"[fetalcmr] {err}", flush=True)
        return 2
    try:
        shown = report.index.relative_to(REPO_ROOT)
    except ValueError:
        shown = report.index
    print(f"[fetalcmr] report: {shown} ({len(report.pages)} notebooks, {report.bytes / 2**20:.1f} MB, "
          f"built in {report.seconds:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
