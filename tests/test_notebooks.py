"""Every notebook executes end to end at the smoke profile (what `make reproduce PROFILE=smoke`
runs), and writes the figures and tables it promises, each recorded in MANIFEST.json. The run is
the session's ``smoke_run`` (conftest.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fetalcmr.runner import list_notebooks, run_pipeline

NOTEBOOKS = list_notebooks()


@pytest.mark.slow
def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, "no notebooks found"


@pytest.mark.slow
@pytest.mark.parametrize("notebook", [p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_records_its_outputs(smoke_run, notebook: str) -> None:
    results, root = smoke_run
    result = next(r for r in results if r.notebook == notebook)
    assert result.status == "ran"
    manifest = json.loads((root / "figures" / "MANIFEST.json").read_text())
    outputs = manifest["notebooks"][notebook]["outputs"]
    number = notebook[:2]
    assert outputs, f"{notebook} wrote no figure or table"
    for name in outputs:
        assert name.startswith((f"fig{number}_", f"tab{number}_")), f"{name}: not named after {notebook}"
        assert (root / "figures" / name).stat().st_size > 0
        assert manifest["outputs"][name]["profile"] == "smoke"
    executed = json.loads((root / "run" / "executed" / f"{notebook}.ipynb").read_text())
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


@pytest.mark.slow
def test_second_run_is_cached(smoke_run) -> None:
    _, root = smoke_run
    again = run_pipeline("smoke", run_dir=str(root / "run"), figures_dir=str(root / "figures"))
    assert all(r.status == "cached" for r in again)



@pytest.mark.slow
def test_every_notebook_runs_on_a_dataset_without_ground_truth(smoke_run, tmp_path: Path) -> None:
    """Real-data mode: a user's dataset.json (here the smoke cohort with `gt` removed) runs end to
    end; the analyses that need ground truth say so and are skipped."""
    _, root = smoke_run
    cohort = root / "run" / "cohort"
    data = json.loads((cohort / "dataset.json").read_text())
    for split in ("training", "validation", "testing"):
        for item in data.get(split, []):
            item.pop("gt", None)
    data.pop("synthetic", None)
    user_json = cohort / "user_dataset.json"  # beside the cohort, so its relative paths resolve
    user_json.write_text(json.dumps(data))
    results = run_pipeline("smoke", dataset=str(user_json), run_dir=str(tmp_path / "run"),
                           figures_dir=str(tmp_path / "figures"))
    assert [r.status for r in results] == ["ran"] * len(NOTEBOOKS)
    skipped = []
    for nb in NOTEBOOKS:
        executed = json.loads((tmp_path / "run" / "executed" / f"{nb.stem}.ipynb").read_text())
        outputs = [o for c in executed["cells"] for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.get("output_type") == "error"], nb.stem
        skipped += [o for o in outputs if "no ground truth" in "".join(o.get("text", "")).lower()]
    assert skipped, "no notebook said that it skipped a ground-truth analysis"



@pytest.mark.slow
def test_killed_reproduce_resumes_and_verify_compares_tables(smoke_run, tmp_path: Path) -> None:
    """`make reproduce` killed mid-notebook resumes where it stopped, and its tables match the
    uninterrupted run's (checked by `make verify`'s comparison, which also reports an altered
    number). One clean smoke run of notebooks 00-02 (cohort, label propagation, the segmenters'
    training) serves both checks; the uninterrupted reference is the session's smoke run."""
    _, root = smoke_run
    run_dir, figures = tmp_path / "run", tmp_path / "figures"
    runner = [sys.executable, "-m", "fetalcmr.runner", "--profile", "smoke", "--only", "00", "01", "02",
              "--run-dir", str(run_dir), "--figures-dir", str(figures)]
    first = subprocess.Popen(runner, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not (run_dir / "stages" / "00_cohort.json").exists():
            assert first.poll() is None and time.monotonic() < deadline, "first run ended before notebook 00 finished"
            time.sleep(0.5)
        time.sleep(8)  # notebook 01 is running now
        assert first.poll() is None
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    time.sleep(3)  # the orphaned kernel notices its parent died (ipykernel's parent poller) and exits
    assert not (run_dir / "stages" / "01_label_propagation.json").exists()

    resumed = subprocess.run(runner, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "00_cohort: up to date (cached)" in resumed.stdout
    assert "01_label_propagation: up to date" not in resumed.stdout

    reference = tmp_path / "reference"  # the uninterrupted run's tables of the same notebooks
    reference.mkdir()
    for table in root.glob("figures/tab0[0-2]_*.csv"):
        shutil.copy(table, reference)
    assert {p.name for p in reference.iterdir()} == {p.name for p in figures.glob("tab*.csv")}
    verify = [sys.executable, "-m", "fetalcmr.verify", "--profile", "smoke", "--regenerated", str(figures)]
    same = subprocess.run([*verify, "--reference", str(reference)], capture_output=True, text=True)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "every table reproduced" in same.stdout

    altered = tmp_path / "altered"
    shutil.copytree(reference, altered)
    table = altered / "tab01_methods.csv"
    frame = pd.read_csv(table)
    frame.loc[0, "dice_mean"] += 0.5
    frame.to_csv(table, index=False)
    changed = subprocess.run([*verify, "--reference", str(altered)], capture_output=True, text=True)
    assert changed.returncode == 1
    assert "tab01_methods.csv row 1, column 'dice_mean'" in changed.stdout
