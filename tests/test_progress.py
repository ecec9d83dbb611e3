"""Progress of `make reproduce`: the running cell, the kernel's tqdm bars, the time left, and the
kernel's channels (no plain-TCP warning)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import nbformat
import pytest

from fetalcmr.progress import NotebookProgress, PlannedNotebook, RunProgress, cell_titles

CELLS = [
    {"cell_type": "markdown", "source": "# 02 · Segmentation"},
    {"cell_type": "code", "source": "x = 1", "metadata": {"tags": ["parameters"]}},
    {"cell_type": "code", "source": "x = 2", "metadata": {"tags": ["injected-parameters"]}},
    {"cell_type": "markdown", "source": "## Train networks (c)"},
    {"cell_type": "code", "source": "train()"},
]


class Clock:
    """A settable clock for the estimates."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _notebook(run: RunProgress, clock: Clock, name: str = "02_seg") -> NotebookProgress:
    planned = next(p for p in run.plan if p.name == name)
    nbp = NotebookProgress(run, name, cell_titles(CELLS), planned.wall_s, planned.cells_s, clock=clock)
    nbp.on_notebook_start({"cells": CELLS})
    return nbp


def _start(nbp: NotebookProgress, k: int) -> None:
    code = [c for c in CELLS if c["cell_type"] == "code"]
    nbp.on_cell_start(code[k], k)


def test_cell_titles_name_the_section_not_the_notebook() -> None:
    assert cell_titles(CELLS) == ["parameters", "injected parameters", "Train networks (c)"]


def test_time_left_from_previous_cell_timings_and_later_notebooks() -> None:
    clock = Clock()
    run = RunProgress([PlannedNotebook("02_seg", True, 100.0, [1.0, 1.0, 90.0]),
                       PlannedNotebook("03_cls", True, 60.0, None),
                       PlannedNotebook("04_joint", False, 500.0, None)],  # cached: not counted
                      out=io.StringIO(), tty=False)
    nbp = _notebook(run, clock)
    _start(nbp, 0)
    clock.t = 1.0
    _start(nbp, 1)
    clock.t = 2.0
    _start(nbp, 2)
    clock.t = 32.0  # 30 s into a cell that took 90 s last time
    left, complete = nbp.left_s()
    assert complete and left == pytest.approx(60.0 + 60.0)
    line = nbp.status()
    assert "02_seg cell 3/3: Train networks (c)" in line and "~2 min 00 s left" in line
    # a cell overrunning its previous time counts as finishing now, never as negative time
    clock.t = 200.0
    assert nbp.left_s()[0] == pytest.approx(60.0)


def test_speed_of_this_run_scales_the_estimate() -> None:
    clock = Clock()
    run = RunProgress([PlannedNotebook("02_seg", True, 100.0, [40.0, 1.0, 50.0]),
                       PlannedNotebook("03_cls", True, 100.0, None)], out=io.StringIO(), tty=False)
    nbp = _notebook(run, clock)
    _start(nbp, 0)
    clock.t = 80.0  # the first cell took twice as long as last time
    _start(nbp, 1)
    assert run.speed() == pytest.approx(2.0)
    assert nbp.left_s()[0] == pytest.approx(2.0 * (1.0 + 50.0 + 100.0))


def test_unknown_timings_say_so() -> None:
    run = RunProgress([PlannedNotebook("02_seg", True)], out=io.StringIO(), tty=False)
    nbp = _notebook(run, Clock())
    _start(nbp, 0)
    assert "left" not in nbp.status()
    assert "no previous timings" in run.summary()


def _tqdm_into(nbp: NotebookProgress) -> None:
    """Drive real tqdm bars (an outer one and a nested one that disappears) into the sink."""
    from tqdm.std import tqdm

    sink = nbp.stream("stderr")
    for _ in tqdm(range(3), desc="joint runs", file=sink, mininterval=0, ascii=True, ncols=80):
        for _ in tqdm(range(2), desc="inner", file=sink, leave=False, position=1, mininterval=0, ascii=True,
                      ncols=80):
            pass


def test_terminal_keeps_finished_bars_and_redraws_one_status_line() -> None:
    out = Terminal()
    run = RunProgress([PlannedNotebook("02_seg", True)], out=out)
    nbp = _notebook(run, Clock())
    _start(nbp, 2)
    nbp.stream("stdout").write("12 subjects\n")  # ordinary output stays in the notebook
    _tqdm_into(nbp)
    text = out.getvalue()
    assert "\x1b[A" not in text  # tqdm's cursor moves for nested bars never reach the terminal
    kept = [line.split("\r")[-1] for line in text.split("\n")[:-1]]
    kept = [k.replace("\x1b[K", "") for k in kept if k.strip()]
    assert len(kept) == 1 and "joint runs: 100%" in kept[0] and "3/3" in kept[0]  # leave=True bar kept
    assert "joint runs 1/3 › inner:" in text  # the nested bar under the outer one while it ran
    assert "12 subjects" not in text


def test_log_mode_prints_cells_and_finished_bars_only() -> None:
    out = io.StringIO()
    run = RunProgress([PlannedNotebook("02_seg", True)], out=out, tty=False, log_every_s=1e9)
    nbp = _notebook(run, Clock())
    for k in range(3):
        _start(nbp, k)
    _tqdm_into(nbp)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[fetalcmr] 02_seg cell 1/3")
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    bars = [ln for ln in lines if "joint runs" in ln]
    assert len(bars) == 1 and "joint runs: 100%" in bars[0]  # the finished bar, once; the nested one never


PARAMS = 'profile = "smoke"\nseed = 0\ndataset = ""\nrun_dir = ""\nfigures_dir = ""'
BODY = ("import time\nfrom tqdm.std import tqdm\n"
        "for i in tqdm(range(4), desc='train thing'):\n    time.sleep(0.05)\nprint('done')")


@pytest.mark.slow
def test_runner_shows_cells_and_bars_records_cell_times_and_kernel_is_not_plain_tcp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    from fetalcmr.runner import kernel_config, run_pipeline

    monkeypatch.setattr("fetalcmr.runner.code_version", lambda *modules: "pinned")
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(PARAMS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("## Training the thing"), params, nbformat.v4.new_code_cell(BODY)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(nbs / "00_only.ipynb"))
    kw = dict(run_dir=str(tmp_path / "run"), figures_dir=str(tmp_path / "figs"), notebook_dir=nbs)

    assert kernel_config()  # curve keys (or IPC sockets) on this machine: never plain TCP
    run_pipeline("smoke", **kw)
    first = capfd.readouterr()
    record = json.loads((tmp_path / "figs" / "MANIFEST.json").read_text())["notebooks"]["00_only"]
    assert len(record["cells_s"]) == 3  # parameters, papermill's injected parameters, the loop
    assert "00_only cell 3/3: Training the thing" in first.out
    assert "train thing: 100%" in first.out and "4/4" in first.out
    assert "done" not in first.out.replace("done in", "")  # prints stay in the notebook
    assert "without encryption" not in first.out + first.err

    run_pipeline("smoke", force=True, **kw)
    second = capfd.readouterr().out
    assert "the previous run took" in second and "left" in second
