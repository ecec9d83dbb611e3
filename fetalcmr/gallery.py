"""Offline HTML gallery for reviewers without Jupyter: one page per subject with rotatable 3D
vessel surfaces (ground truth and each method side by side) and the case's metrics, plus an
index page. Opens from the file system with no network: plotly.js is written once, as
``plotly.min.js`` next to the pages, and every page loads it by a relative ``<script src>``.

Each page marks its ``<body>`` with ``data-rendered="ok"`` once Plotly has drawn, or
``data-error="..."`` when a script fails, so a headless browser can check it.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fetalcmr.anatomy import LABELS
from fetalcmr.atomic import write_text_atomic
from fetalcmr.methods import by_name
from fetalcmr.render import _bounds, label_colors, label_meshes, per_map

PLOTLY_JS = "plotly.min.js"

#: Plotly cameras equivalent to ``render.VIEWS`` (eye on +y, −x, +z; RAS+ axes, Superior up).
CAMERAS: dict[str, dict[str, Any]] = {
    "anterior": {"eye": {"x": 0.0, "y": 2.0, "z": 0.0}, "up": {"x": 0, "y": 0, "z": 1}},
    "left": {"eye": {"x": -2.0, "y": 0.0, "z": 0.0}, "up": {"x": 0, "y": 0, "z": 1}},
    "superior": {"eye": {"x": 0.0, "y": 0.0, "z": 2.0}, "up": {"x": 0, "y": 1, "z": 0}},
}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.2em; color: #222; }
h1 { font-size: 1.3em; margin: 0.2em 0; } h2 { font-size: 1.05em; }
nav a { margin-right: 1em; } .note { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
tr.bad td { background: #fde8e8; } tr.good td { background: #eaf6ea; }
#plot { width: 100%; height: 560px; }
"""

# error hook first: any script failure (including plotly.js missing) marks the body
_ERROR_HOOK = """<script>
window.addEventListener('error', function (e) {
  var msg = (e && e.message) ? e.message : ('failed to load ' + ((e && e.target && e.target.src) || '?'));
  document.documentElement.setAttribute('data-error', msg);
}, true);
</script>"""

_PLOT_SCRIPT = """<script>
(function () {
  if (typeof Plotly === 'undefined') {
    document.documentElement.setAttribute('data-error', 'Plotly not loaded (is %(js)s next to this page?)');
    return;
  }
  var fig = %(fig)s;
  var scenes = %(scenes)s;
  var gd = document.getElementById('plot');
  Plotly.newPlot(gd, fig.data, fig.layout, {responsive: true, displaylogo: false}).then(function () {
    var syncing = false;  // rotate every scene together
    gd.on('plotly_relayout', function (ev) {
      if (syncing) return;
      var cam = null;
      for (var i = 0; i < scenes.length; i++) {
        if (ev[scenes[i] + '.camera']) { cam = ev[scenes[i] + '.camera']; break; }
      }
      if (!cam) return;
      var upd = {};
      scenes.forEach(function (s) { upd[s + '.camera'] = cam; });
      syncing = true;
      Plotly.relayout(gd, upd).then(function () { syncing = false; });
    });
    document.documentElement.setAttribute('data-rendered', 'ok');
  }).catch(function (err) {
    document.documentElement.setAttribute('data-error', String(err));
  });
})();
</script>"""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "case"


def _hex(rgb: Sequence[float]) -> str:
    return "#" + "".join(f"{int(round(255 * c)):02x}" for c in rgb)


def _b64(array: np.ndarray) -> dict[str, str]:
    """Return plotly.js's typed-array JSON form (base64) of a 1D array."""
    import base64

    codes = {np.dtype("float32"): "f4", np.dtype("uint16"): "u2", np.dtype("uint32"): "u4",
             np.dtype("int32"): "i4"}
    array = np.ascontiguousarray(array)
    return {"dtype": codes[array.dtype], "bdata": base64.b64encode(array.tobytes()).decode("ascii")}


def _mesh_traces(labelmap: np.ndarray, spacing: np.ndarray, scene: str, shown: set[int],
                 smooth: float, decimate: float, step_size: int = 1) -> list[dict[str, Any]]:
    traces = []
    meshes = label_meshes(labelmap, spacing, smooth=smooth, decimate=decimate, step_size=step_size)
    colors = label_colors(sorted({m.label for m in meshes}) or None)
    for mesh in meshes:
        verts = mesh.verts.astype(np.float32)
        faces = mesh.faces.astype(np.uint16 if len(verts) < 65536 else np.uint32)
        name = LABELS.get(mesh.label, str(mesh.label))
        traces.append({
            "type": "mesh3d", "scene": scene, "name": name, "legendgroup": name,
            "showlegend": mesh.label not in shown, "color": _hex(colors[mesh.label]),
            "x": _b64(verts[:, 0]), "y": _b64(verts[:, 1]), "z": _b64(verts[:, 2]),
            "i": _b64(faces[:, 0]), "j": _b64(faces[:, 1]), "k": _b64(faces[:, 2]),
            "flatshading": False, "hoverinfo": "name",
            "lighting": {"ambient": 0.8, "diffuse": 0.5, "specular": 0.05, "roughness": 0.8,
                         "fresnel": 0.05},
            "lightposition": {"x": -1000, "y": 3000, "z": 3000},
        })
        shown.add(mesh.label)
    return traces


def case_figure(labelmaps: Mapping[str, np.ndarray], spacing_mm: Sequence[float], *,
                smooth: float = 0.6, decimate: float | Mapping[str, float] = 1.25, view: str = "anterior",
                step_size: int | Mapping[str, int] = 1) -> dict[str, Any]:
    """Return a plotly figure dict: one 3D scene per label map, shared box, cameras and legend.

    ``decimate`` and ``step_size`` may be given per map (``{name: value}``; others get 1.25 and 1).

    Scenes sit side by side in the order of ``labelmaps`` (e.g. truth, then methods); axes are
    RAS+ millimetres; buttons switch every scene to the anterior, left or superior camera. A scene
    named after a method of :mod:`fetalcmr.methods` (its id, short or long label) has its title in
    that method's colour.
    """
    if not labelmaps:
        raise ValueError("case_figure: no label maps given")
    spacing = np.asarray(spacing_mm, dtype=float)
    maps = {k: np.asarray(v) for k, v in labelmaps.items()}
    bounds = _bounds(list(maps.values()), spacing)
    n = len(maps)
    gap = 0.01
    width = (1.0 - gap * (n - 1)) / n
    data: list[dict[str, Any]] = []
    layout: dict[str, Any] = {
        "margin": {"l": 0, "r": 0, "t": 40, "b": 0},
        "legend": {"orientation": "h", "y": -0.02, "itemclick": "toggle"},
        "annotations": [], "paper_bgcolor": "white",
    }
    shown: set[int] = set()
    scenes = []
    for c, (name, lm) in enumerate(maps.items()):
        scene = "scene" if c == 0 else f"scene{c + 1}"
        scenes.append(scene)
        data += _mesh_traces(lm, spacing, scene, shown, smooth, per_map(decimate, name, 1.25),
                             per_map(step_size, name, 1))
        x0 = c * (width + gap)
        axis = {"showbackground": False, "showticklabels": False, "title": {"text": ""},
                "showspikes": False, "dtick": 10, "gridcolor": "#e4e4e4", "zeroline": False}
        layout[scene] = {
            "domain": {"x": [x0, x0 + width], "y": [0.0, 1.0]},
            "xaxis": {**axis, "range": list(bounds[0])},
            "yaxis": {**axis, "range": list(bounds[1])},
            "zaxis": {**axis, "range": list(bounds[2])},
            "aspectmode": "cube", "camera": {**CAMERAS[view], "projection": {"type": "orthographic"}},
        }
        method = by_name(name)
        font = {"size": 14, **({"color": method.colour} if method else {})}
        layout["annotations"].append({"text": f"<b>{html.escape(name)}</b>", "x": x0 + width / 2,
                                      "y": 0.97, "xref": "paper", "yref": "paper", "showarrow": False,
                                      "yanchor": "top", "font": font})
    layout["updatemenus"] = [{
        "type": "buttons", "direction": "right", "x": 0.0, "y": 1.0, "xanchor": "left",
        "yanchor": "bottom", "pad": {"t": 0, "b": 4},
        "buttons": [{"label": v, "method": "relayout",
                     "args": [{f"{s}.camera": {**CAMERAS[v], "projection": {"type": "orthographic"}}
                               for s in scenes}]} for v in CAMERAS],
    }]
    return {"data": data, "layout": layout, "scenes": scenes}


def _table_html(metrics: Any) -> str:
    """Return an HTML table of per-method metrics (DataFrame, list of rows or {method: {...}})."""
    import pandas as pd

    if metrics is None:
        return ""
    if isinstance(metrics, pd.DataFrame):
        df = metrics
    elif isinstance(metrics, Mapping):
        df = pd.DataFrame.from_dict(metrics, orient="index")
        df.index.name = "method"
        df = df.reset_index()
    else:
        df = pd.DataFrame(list(metrics))
    if df.empty:
        return ""
    head = "".join(f"<th class='l'>{html.escape(str(c))}</th>" if i == 0 else f"<th>{html.escape(str(c))}</th>"
                   for i, c in enumerate(df.columns))
    rows = []
    for _, row in df.iterrows():
        cls = ""
        if "correct" in df.columns and isinstance(row["correct"], (bool, np.bool_)):
            cls = " class='good'" if row["correct"] else " class='bad'"
        cells = "".join(
            f"<td class='l'>{_fmt(v)}</td>" if i == 0 else f"<td>{_fmt(v)}</td>" for i, v in enumerate(row.values)
        )
        rows.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _fmt(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return "" if not np.isfinite(value) else f"{value:.3f}"
    return html.escape(str(value))


def _page(title: str, body: str, head_extra: str = "") -> str:
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title>{_ERROR_HOOK}{head_extra}<style>{_CSS}</style></head>"
            f"<body>{body}</body></html>\n")


def write_plotly_js(out_dir: Path) -> Path:
    """Write plotly.js (the version bundled with the installed plotly) once into ``out_dir``."""
    from plotly.offline import get_plotlyjs

    path = Path(out_dir) / PLOTLY_JS
    text = get_plotlyjs()
    if not path.exists() or path.stat().st_size != len(text.encode("utf-8")):
        write_text_atomic(path, text)
        path.chmod(0o644)
    return path


def write_gallery(
    out_dir: str | Path,
    cases: Sequence[Mapping[str, Any]],
    *,
    title: str = "Vessel segmentation review",
    spacing_mm: Sequence[float] | None = None,
    note: str = "",
    smooth: float = 0.6,
    decimate: float = 1.25,
    progress: bool = False,
) -> Path:
    """Write an offline HTML gallery to ``out_dir`` and return the index page's path.

    Each case is a dict with ``"id"``, ``"labelmaps"`` (``{name: [x, y, z] label map}``, e.g.
    ``{"truth": gt, "LP": lp, "joint": pred}``, shown left to right) and optional
    ``"spacing_mm"`` (else ``spacing_mm``), ``"title"``, ``"metrics"`` (a DataFrame, a list of
    row dicts or ``{method: {metric: value}}``; a boolean ``correct`` column colours rows),
    ``"summary"`` (``{column: value}`` shown on the index), ``"notes"`` (list of strings) and
    ``"decimate"``/``"step_size"`` (this case's surface detail, a value or ``{map name: value}``).
    Surfaces are simplified by vertex clustering on a ``decimate``-voxel grid (pages ≈ 0.5 MB
    for truth + 3 methods at 64³).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not cases:
        raise ValueError("write_gallery: no cases given")
    write_plotly_js(out)
    pages = [f"case_{_slug(c['id'])}.html" for c in cases]
    if len(set(pages)) != len(pages):
        raise ValueError("write_gallery: case ids are not unique")
    iterator: Any = enumerate(cases)
    if progress:
        from tqdm.std import tqdm

        iterator = tqdm(iterator, total=len(cases), desc="gallery")
    index_rows = []
    for n, case in iterator:
        if "id" not in case or "labelmaps" not in case:
            raise ValueError(f"write_gallery: case {n} needs 'id' and 'labelmaps', got {sorted(case)}")
        spacing = case.get("spacing_mm", spacing_mm)
        if spacing is None:
            raise ValueError(f"write_gallery: case {case['id']}: no spacing_mm given")
        fig = case_figure(case["labelmaps"], spacing, smooth=smooth, decimate=case.get("decimate", decimate),
                          step_size=case.get("step_size", 1))
        scenes = fig.pop("scenes")
        case_title = str(case.get("title") or case["id"])
        links = ["<a href='index.html'>index</a>"]
        if n > 0:
            links.append(f"<a href='{pages[n - 1]}'>← previous</a>")
        if n + 1 < len(cases):
            links.append(f"<a href='{pages[n + 1]}'>next →</a>")
        notes = "".join(f"<p class='note'>{html.escape(str(t))}</p>" for t in case.get("notes", []))
        body = (
            f"<nav>{''.join(links)}</nav><h1>{html.escape(case_title)}</h1>"
            f"{f'<p class=note>{html.escape(note)}</p>' if note else ''}{notes}"
            "<p class='note'>Drag to rotate (all panels turn together), scroll to zoom; the buttons "
            "set the anterior view (subject's Right on your left), the left view (Anterior on your left) "
            "or the superior view (Anterior up, Right on your right); grid lines are 10 mm apart. "
            "Click a legend entry to hide a vessel.</p>"
            "<div id='plot'></div>"
            f"<h2>Metrics</h2>{_table_html(case.get('metrics')) or '<p class=note>none</p>'}"
            + _PLOT_SCRIPT % {"fig": json.dumps(fig, separators=(",", ":")), "scenes": json.dumps(scenes),
                              "js": PLOTLY_JS}
        )
        head = f"<script src='{PLOTLY_JS}'></script>"
        write_text_atomic(out / pages[n], _page(case_title, body, head))
        (out / pages[n]).chmod(0o644)  # shareable like any web page
        summary = dict(case.get("summary", {}))
        index_rows.append({"case": f"<a href='{pages[n]}'>{html.escape(str(case['id']))}</a>",
                           **{k: _fmt(v) for k, v in summary.items()}})
    columns: list[str] = []
    for row in index_rows:
        columns += [k for k in row if k not in columns]
    head = "".join(f"<th class='l'>{html.escape(c)}</th>" for c in columns)
    rows = "".join("<tr>" + "".join(f"<td class='l'>{r.get(c, '')}</td>" for c in columns) + "</tr>"
                   for r in index_rows)
    body = (f"<h1>{html.escape(title)}</h1>{f'<p class=note>{html.escape(note)}</p>' if note else ''}"
            f"<p class='note'>{len(cases)} case(s); each page shows rotatable vessel surfaces and metrics. "
            "Works offline: keep the pages next to plotly.min.js.</p>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
            "<script>document.documentElement.setAttribute('data-rendered', 'ok');</script>")
    index = out / "index.html"
    write_text_atomic(index, _page(title, body))
    index.chmod(0o644)
    return index
