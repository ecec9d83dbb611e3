"""The reproduce runner: parameters injected, stages cached by hash, failures named,
MANIFEST entries written."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from fetalcmr.manifest import Manifest, ManifestError
from fetalcmr.runner import StageFailed, notebook_digest, run_pipeline

PARAMS = 'profile = "smoke"\nseed = 0\ndataset = ""\nrun_dir = ""\nfigures_dir = ""'


def _write_nb(path: Path, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(PARAMS)
    params.metadata["tags"] = ["parameters"]
    setup = nbformat.v4.new_code_cell(
        "from fetalcmr.notebook import setup\n"
        f"ctx = setup({path.stem!r}, profile=profile, seed=seed, dataset=dataset, run_dir=run_dir, "
        "figures_dir=figures_dir)")
    nb.cells = [params, setup, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


FIG = ("import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
       "fig, ax = plt.subplots()\nax.plot([seed, {v}])\nctx.save_figure(fig, 'fig{n}_line', caption='a line')")


@pytest.fixture()
def pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    # the package's code version is part of every key; pin it so edits elsewhere don't interfere
    monkeypatch.setattr("fetalcmr.runner.code_version", lambda *modules: "pinned")
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _write_nb(nbs / "00_first.ipynb", FIG.format(v=1, n="00"))
    _write_nb(nbs / "01_second.ipynb", FIG.format(v=2, n="01"))
    return {"notebooks": nbs, "run": tmp_path / "run", "figs": tmp_path / "figs"}


def _run(p: dict[str, Path], **kw):
    return run_pipeline("smoke", run_dir=str(p["run"]), figures_dir=str(p["figs"]),
                        notebook_dir=p["notebooks"], **kw)


@pytest.mark.slow
def test_runs_then_caches_then_reruns_only_what_changed(pipeline: dict[str, Path]) -> None:
    first = _run(pipeline)
    assert [r.status for r in first] == ["ran", "ran"]
    manifest = json.loads((pipeline["figs"] / "MANIFEST.json").read_text())
    entry = manifest["outputs"]["fig00_line.png"]
    assert entry["notebook"] == "00_first" and entry["profile"] == "smoke" and entry["seed"] == 0
    assert entry["commit"] and entry["synthetic"] is True
    nb_record = manifest["notebooks"]["01_second"]
    assert nb_record["wall_s"] > 0 and nb_record["peak_rss_mb"] > 10
    assert nb_record["torch_threads"] >= 1  # the thread count changes the bits: it is recorded
    assert manifest["environment"]["packages"]["torch"].startswith("2.13")
    assert (pipeline["run"] / "executed" / "00_first.ipynb").exists()

    assert [r.status for r in _run(pipeline)] == ["cached", "cached"]

    _write_nb(pipeline["notebooks"] / "01_second.ipynb", FIG.format(v=3, n="01"))
    assert [r.status for r in _run(pipeline)] == ["cached", "ran"]

    (pipeline["figs"] / "fig00_line.png").unlink()  # a lost output re-runs its stage
    assert [r.status for r in _run(pipeline)][0] == "ran"
    assert [r.status for r in _run(pipeline, seed=1)] == ["ran", "ran"]  # parameters are in the key


@pytest.mark.slow
def test_failure_names_notebook_and_cell_and_keeps_earlier_outputs(pipeline: dict[str, Path]) -> None:
    _write_nb(pipeline["notebooks"] / "01_second.ipynb", "raise ValueError('broken input volume')")
    with pytest.raises(StageFailed) as err:
        _run(pipeline)
    msg = str(err.value)
    assert "01_second.ipynb" in msg and "ValueError" in msg and "broken input volume" in msg
    assert "cell" in msg
    assert (pipeline["figs"] / "fig00_line.png").exists()
    # fixing the notebook resumes at the failed stage
    _write_nb(pipeline["notebooks"] / "01_second.ipynb", FIG.format(v=2, n="01"))
    assert [r.status for r in _run(pipeline)] == ["cached", "ran"]


def test_notebook_digest_ignores_outputs(tmp_path: Path) -> None:
    path = tmp_path / "00_x.ipynb"
    _write_nb(path, "1 + 1")
    before = notebook_digest(path)
    nb = nbformat.read(str(path), as_version=4)
    nb.cells[2].outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
    nb.cells[2].execution_count = 1
    nbformat.write(nb, str(path))
    assert notebook_digest(path) == before
    nb.cells[2].source = "1 + 2"
    nbformat.write(nb, str(path))
    assert notebook_digest(path) != before


def test_manifest_refuses_a_second_owner(tmp_path: Path) -> None:
    m = Manifest(tmp_path / "MANIFEST.json")
    kw = dict(profile="smoke", seed=0, commit="abc", file_sha256="0", synthetic=True, caption="", notes=[])
    m.record_output("fig00_a.png", notebook="00_a", **kw)
    m.record_output("fig00_a.png", notebook="00_a", **kw)  # the same notebook may rewrite it
    with pytest.raises(ManifestError, match="already written by notebook 00_a"):
        m.record_output("fig00_a.png", notebook="01_b", **kw)
