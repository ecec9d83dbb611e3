"""Terminal progress of ``make reproduce``: the running notebook's cell, the package's tqdm bars
streamed from the kernel, and the time left estimated from the previous run's timings.

The runner hands :class:`NotebookProgress` to papermill: ``on_cell_start`` is nbclient's hook before
each cell, and :meth:`NotebookProgress.stream` gives file-like sinks for the kernel's stdout and
stderr (papermill writes every stream message to them). Lines that look like tqdm bars are shown;
other output stays in the executed notebook. On a terminal one status line is redrawn in place
and finished bars (``leave=True``) stay above it, as tqdm itself does; elsewhere (CI logs, pytest)
a line is printed at each cell and at most every ``log_every_s`` seconds while a bar runs.

Time left = the previous run's time of the cells still to come (``cells_s`` in the MANIFEST's
notebook record; its ``wall_s`` when the cells changed) plus the previous wall time of the
notebooks still to run, scaled by how fast this run has been so far relative to the previous one.

>>> fmt_duration(75), fmt_duration(3 * 3600 + 120)
('1 min 15 s', '3 h 02 min')
>>> looks_like_bar("segment net_lp:  40%|####      | 12/30 [01:02<01:30,  5.1s/it]")
True
>>> looks_like_bar("12 test subjects")
False
"""

from __future__ import annotations

import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

#: tqdm's ``n/total [`` or ``n it [`` (counts may carry k/M/G suffixes)
_COUNT = re.compile(r"(\d+(?:\.\d+)?[kMGT]?)/(\d+(?:\.\d+)?[kMGT]?) \[")
_BAR = re.compile(r"\d+(?:\.\d+)?[kMGT]?/\d+(?:\.\d+)?[kMGT]? \[|\d+(?:\.\d+)?[kMGT]?it \[")
_HEADING = re.compile(r"^\s{0,3}#{2,6}\s+(.*?)\s*#*\s*$")  # sections: the title (#) is the notebook
_TOKENS = re.compile(r"\x1b\[(\d*)A|\x1b\[[0-9;?]*[A-Za-z]|\r|\n|[^\r\n\x1b]+")
PREFIX = "[fetalcmr]"


def _complete(text: str) -> bool:
    """True when ``text`` is a tqdm bar at its total (``n/n``)."""
    m = _COUNT.search(text)
    return bool(m) and m.group(1) == m.group(2)


def looks_like_bar(text: str) -> bool:
    """True when ``text`` is a tqdm progress line (a count with a ``[`` timing part)."""
    return bool(_BAR.search(text))


def fit_bar(text: str, width: int) -> str:
    """Shorten a tqdm line to ``width`` characters by narrowing its ``|bar|`` graphic (then cutting).

    >>> fit_bar("x:  50%|##########          | 5/10 [00:01<00:01]", 40)
    'x:  50%|######      | 5/10 [00:01<00:01]'
    """
    if len(text) <= width:
        return text
    m = re.search(r"\|([^|]*)\|", text)
    if m:
        graphic = m.group(1)
        n = max(len(graphic) - (len(text) - width), 0)
        short = "".join(graphic[i * len(graphic) // n] for i in range(n)) if n else ""
        text = text[: m.start(1)] + short + text[m.end(1):]
        if not short:
            text = text.replace("||", "|", 1)
    return text if len(text) <= width else text[: max(width - 1, 1)] + "…"


def fmt_duration(seconds: float) -> str:
    """Return ``seconds`` as ``"42 s"``, ``"3 min 05 s"`` or ``"1 h 12 min"``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def cell_titles(cells: Sequence[Mapping[str, Any]]) -> list[str]:
    """Return one title per code cell: the last Markdown section heading above it, else its first line.

    >>> cells = [{"cell_type": "markdown", "source": "# 02 · Title"}, {"cell_type": "code", "source": "x = 1"},
    ...          {"cell_type": "markdown", "source": "## Train (c)\\ntext"},
    ...          {"cell_type": "code", "source": "\\nprint(x)"}]
    >>> cell_titles(cells)
    ['x = 1', 'Train (c)']
    >>> cell_titles([{"cell_type": "code", "source": "import numpy as np", "metadata": {"tags": ["parameters"]}}])
    ['parameters']
    """
    titles: list[str] = []
    heading = ""
    for cell in cells:
        source = "".join(cell.get("source", ""))
        if cell.get("cell_type") == "markdown":
            for line in source.splitlines():
                m = _HEADING.match(line)
                if m:
                    heading = m.group(1).strip().replace("`", "")
            continue
        if cell.get("cell_type") != "code":
            continue
        tags = (cell.get("metadata") or {}).get("tags") or []
        if "injected-parameters" in tags:
            titles.append("injected parameters")
            continue
        if "parameters" in tags:
            titles.append("parameters")
            continue
        first = next((ln.strip() for ln in source.splitlines() if ln.strip()), "")
        titles.append(heading or (first if len(first) <= 48 else first[:47] + "…"))
    return titles


class Screen:
    """The rows a stream would leave on a terminal, enough to follow tqdm (``\\r``, ``\\n``, cursor up).

    A nested bar (``position`` > 0) is drawn one row down and the cursor comes back up, so a row
    is *finished* when a complete bar (``n/n``) is followed by a newline (tqdm's ``leave=True``),
    when text is written twice in a row on a row below it with no cursor-up in between (the next
    bar is running there), or when the cell ends. ``feed`` returns the finished rows; :attr:`live`
    holds the rows still being drawn.

    >>> scr = Screen()
    >>> scr.feed("\\rload:  50%|# | 1/2 [00:00<00:00]\\rload: 100%|##| 2/2 [00:00<00:00]\\n")
    ['load: 100%|##| 2/2 [00:00<00:00]']
    >>> scr.feed("\\rtrain:  11%| | 1/9 [00:01<00:08]\\n\\rinner: 1/4 [00:00<00:01]\\x1b[A")
    []
    >>> scr.live
    ['train:  11%| | 1/9 [00:01<00:08]', 'inner: 1/4 [00:00<00:01]']
    """

    def __init__(self, max_rows: int = 24) -> None:
        self.rows: list[str] = [""]
        self.row = 0
        self.max_rows = max_rows
        self._cr = False
        self._last_row = -1
        self._up = False

    def feed(self, text: str) -> list[str]:
        """Apply ``text``; return the rows that are finished (scrolled up for good)."""
        done: list[str] = []
        for m in _TOKENS.finditer(text):
            tok = m.group(0)
            if m.group(1) is not None:  # cursor up
                self.row = max(self.row - int(m.group(1) or 1), 0)
                self._up = True
            elif tok.startswith("\x1b"):
                continue
            elif tok == "\r":
                self._cr = True
            elif tok == "\n":
                if _complete(self.rows[self.row]):  # tqdm's close with leave=True: the bar is done
                    done += self._commit(self.row + 1)
                    self._cr = True
                    continue
                self.row += 1
                self._cr = True
                if self.row >= len(self.rows):
                    self.rows.append("")
                if len(self.rows) > self.max_rows:
                    done += self._commit(len(self.rows) - self.max_rows)
            else:
                if self.row == self._last_row and self.row > 0 and not self._up:
                    done += self._commit(self.row)
                self.rows[self.row] = tok if self._cr else self.rows[self.row] + tok
                self._cr = False
                self._last_row, self._up = self.row, False
        return done

    def _commit(self, n: int) -> list[str]:
        done = [r.strip() for r in self.rows[:n]]
        self.rows = self.rows[n:] or [""]
        self.row = max(self.row - n, 0)
        self._last_row = max(self._last_row - n, -1)
        return done

    def close(self) -> list[str]:
        """End of the cell: every row above the cursor is finished; start afresh."""
        done = self._commit(self.row) if self.row > 0 else []
        self.rows, self.row, self._last_row, self._up, self._cr = [""], 0, -1, False, False
        return done

    @property
    def live(self) -> list[str]:
        """The rows on screen that hold a progress bar, top to bottom."""
        return [r.strip() for r in self.rows if looks_like_bar(r.strip())]


@dataclass
class PlannedNotebook:
    """A notebook of this run with the previous run's timings (None when unknown)."""

    name: str
    will_run: bool
    wall_s: float | None = None
    cells_s: list[float] | None = None


def previous_timings(manifest: Mapping[str, Any], notebook: str,
                     profile: str) -> tuple[float | None, list[float] | None]:
    """Return ``(wall_s, cells_s)`` of ``notebook``'s last run at ``profile`` in a MANIFEST dict.

    >>> m = {"notebooks": {"02_x": {"profile": "smoke", "wall_s": 30.0, "cells_s": [1.0, 29.0]}}}
    >>> previous_timings(m, "02_x", "smoke"), previous_timings(m, "02_x", "default")
    ((30.0, [1.0, 29.0]), (None, None))
    """
    record = (manifest.get("notebooks") or {}).get(notebook) or {}
    if record.get("profile") != profile or not isinstance(record.get("wall_s"), (int, float)):
        return None, None
    cells = record.get("cells_s")
    ok = isinstance(cells, list) and all(isinstance(c, (int, float)) for c in cells)
    return float(record["wall_s"]), [float(c) for c in cells] if ok else None


@dataclass
class RunProgress:
    """Progress of one pipeline run: the notebooks it will run and how fast it goes."""

    plan: list[PlannedNotebook]
    out: TextIO = field(default_factory=lambda: sys.stdout)
    tty: bool | None = None
    log_every_s: float = 30.0
    #: seconds actually spent and seconds the previous run spent, on the same finished cells
    actual_s: float = 0.0
    expected_s: float = 0.0

    def __post_init__(self) -> None:
        if self.tty is None:
            self.tty = bool(getattr(self.out, "isatty", lambda: False)())

    def speed(self) -> float:
        """This run's time / the previous run's time on the work done so far (1 until 30 s are done)."""
        if self.expected_s < 30.0:
            return 1.0
        return min(max(self.actual_s / self.expected_s, 0.33), 3.0)

    def after(self, name: str) -> tuple[float, bool]:
        """Return (previous seconds of the notebooks to run after ``name``, all of them known)."""
        names = [p.name for p in self.plan]
        later = self.plan[names.index(name) + 1:] if name in names else []
        todo = [p for p in later if p.will_run]
        return sum(p.wall_s or 0.0 for p in todo), all(p.wall_s is not None for p in todo)

    def summary(self) -> str:
        """One line: how many notebooks run, how many are cached, and the previous run's time."""
        todo = [p for p in self.plan if p.will_run]
        known = [p.wall_s for p in todo if p.wall_s is not None]
        line = f"{len(todo)} of {len(self.plan)} notebooks to run"
        if todo and len(known) == len(todo):
            line += f"; the previous run took {fmt_duration(sum(known))} for them"
        elif known:
            line += f"; previous timings known for {len(known)} of them"
        else:
            line += "; no previous timings (the time left is shown from the second run on)"
        return line

    def notebook(self, name: str, cells: Sequence[Mapping[str, Any]]) -> NotebookProgress:
        """Return the progress of notebook ``name`` about to run with ``cells`` (papermill's copy)."""
        planned = next((p for p in self.plan if p.name == name), PlannedNotebook(name, True))
        return NotebookProgress(self, name, cell_titles(cells), planned.wall_s, planned.cells_s)


class _Sink:
    """A write-only text stream handed to papermill as ``stdout_file``/``stderr_file``."""

    def __init__(self, owner: NotebookProgress, name: str) -> None:
        self.owner, self.name = owner, name

    def write(self, text: str) -> int:
        self.owner.feed(self.name, text)
        return len(text)

    def flush(self) -> None:
        pass


class NotebookProgress:
    """Progress of one notebook: nbclient hook, stream sinks, status line and timings."""

    def __init__(self, run: RunProgress, name: str, titles: list[str], wall_s: float | None,
                 cells_s: list[float] | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.run, self.name, self.titles = run, name, titles
        self.wall_s = wall_s
        self._previous_cells = cells_s
        self.cells_s = cells_s if cells_s is not None and len(cells_s) == len(titles) else None
        self.clock = clock
        self.t0 = clock()
        self.cell = -1  # index among the code cells, -1 before the first
        self.cell_t0 = self.t0
        self.durations: list[float] = []
        self.bar = ""
        self._screens: dict[str, Screen] = {}
        self._lock = threading.RLock()
        self._shown = ""
        self._last_log = -1e9
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # -- nbclient / papermill interface -----------------------------------------------------------

    def on_notebook_start(self, notebook: Mapping[str, Any], **_: Any) -> None:
        """nbclient hook: the notebook as it will run (with papermill's injected parameters)."""
        with self._lock:
            self.titles = cell_titles(notebook.get("cells", []))
            prev = self._previous_cells
            self.cells_s = prev if prev is not None and len(prev) == len(self.titles) else None

    def on_cell_start(self, cell: Mapping[str, Any], cell_index: int, **_: Any) -> None:
        """nbclient hook: a cell is about to run (Markdown cells are ignored)."""
        if cell.get("cell_type") != "code":
            return
        with self._lock:
            now = self.clock()
            self._finish_cell(now)
            self._close_screens()
            self.cell += 1
            self.cell_t0 = now
            if self.run.tty:
                self._draw()
            else:
                self._log(self.status(), now)

    def stream(self, name: str) -> _Sink:
        """A file-like sink for the kernel's ``stdout`` or ``stderr``."""
        return _Sink(self, name)

    def feed(self, stream: str, text: str) -> None:
        """Take a chunk of the kernel's output: show the live tqdm bars, keep finished ones (``leave``)."""
        with self._lock:
            screen = self._screens.setdefault(stream, Screen())
            self._keep(screen.feed(text))
            self._update_bar()
            self._show_bar()

    def _keep(self, rows: list[str]) -> None:
        for row in rows:
            if looks_like_bar(row):
                self._print_line(fit_bar(f"{PREFIX}   {row}", self._width()))

    def _update_bar(self) -> None:
        bars = [b for scr in self._screens.values() for b in scr.live]
        # outer bars shortened to "desc n/total", the innermost in full
        outer = [re.sub(r":?\s*\d+%\|[^|]*\|\s*", " ", b).split(" [")[0].strip() for b in bars[:-1]]
        self.bar = " › ".join([*outer, *bars[-1:]])

    def _close_screens(self) -> None:
        for screen in self._screens.values():
            self._keep(screen.close())
        self._screens.clear()
        self.bar = ""

    def _show_bar(self) -> None:
        if self.run.tty:
            self._draw()
        elif self.bar:
            now = self.clock()
            if now - self._last_log >= self.run.log_every_s:
                self._log(fit_bar(f"{PREFIX}   {self.bar}", self._width()), now)

    # -- estimates -------------------------------------------------------------------------------

    def left_s(self, now: float | None = None) -> tuple[float | None, bool]:
        """Return (seconds left for the whole run, estimate complete) or (None, False) when unknown."""
        now = self.clock() if now is None else now
        f = self.run.speed()
        if self.cells_s is not None and self.cell >= 0:
            current = max(self.cells_s[self.cell] * f - (now - self.cell_t0), 0.0)
            here: float | None = current + f * sum(self.cells_s[self.cell + 1:])
        elif self.wall_s is not None:
            here = max(self.wall_s * f - (now - self.t0), 0.0)
        else:
            here = None
        later, known = self.run.after(self.name)
        if here is None:
            return (f * later, False) if later > 0 else (None, False)
        return here + f * later, known

    def status(self, now: float | None = None) -> str:
        """The status line: notebook, cell, its title, the running bar and the time left."""
        now = self.clock() if now is None else now
        n = len(self.titles)
        k = self.cell
        title = self.titles[k] if 0 <= k < n else ""
        where = f"{PREFIX} {self.name} cell {k + 1}/{n}" if k >= 0 else f"{PREFIX} {self.name} starting"
        left, complete = self.left_s(now)
        when = f"{fmt_duration(now - self.t0)} in"
        if left is not None:
            when += f", ~{fmt_duration(left)} left" if complete else f", ≥ {fmt_duration(left)} left"
        parts = [where + (f": {title}" if title else ""), self.bar, when]
        return " · ".join(p for p in parts if p)

    def fitted(self, width: int) -> str:
        """The status line cut to ``width`` characters, shortening the title and the bar first."""
        line = self.status()
        if len(line) <= width:
            return line
        save_title = self.titles[self.cell] if 0 <= self.cell < len(self.titles) else ""
        save_bar = self.bar
        try:
            if save_title and len(save_title) > 24:
                self.titles[self.cell] = save_title[:23] + "…"
            line = self.status()
            if len(line) > width and self.bar:  # narrow the bar graphic, keep the counts
                self.bar = fit_bar(self.bar, max(len(self.bar) - (len(line) - width), 0))
                line = self.status()
        finally:
            if save_title:
                self.titles[self.cell] = save_title
            self.bar = save_bar
        return line if len(line) <= width else line[: max(width - 1, 1)] + "…"

    # -- terminal --------------------------------------------------------------------------------

    def _width(self) -> int:
        return max(shutil.get_terminal_size((120, 24)).columns - 1, 40) if self.run.tty else 160

    def _draw(self) -> None:
        line = self.fitted(self._width())
        if line != self._shown:
            self.run.out.write("\r\x1b[K" + line)
            self.run.out.flush()
            self._shown = line

    def _clear(self) -> None:
        if self.run.tty and self._shown:
            self.run.out.write("\r\x1b[K")
            self.run.out.flush()
            self._shown = ""

    def _print_line(self, line: str) -> None:
        self._clear()
        self.run.out.write(line + "\n")
        self.run.out.flush()

    def _log(self, line: str, now: float) -> None:
        self._print_line(line)
        self._last_log = now

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                if self.run.tty:
                    self._draw()
                elif self.bar and self.clock() - self._last_log >= self.run.log_every_s:
                    self._log(fit_bar(f"{PREFIX}   {self.bar}", self._width()), self.clock())

    def _finish_cell(self, now: float) -> None:
        if self.cell < 0:
            return
        spent = now - self.cell_t0
        self.durations.append(round(spent, 2))
        if self.cells_s is not None and self.cell < len(self.cells_s):
            self.run.actual_s += spent
            self.run.expected_s += self.cells_s[self.cell]

    def __enter__(self) -> NotebookProgress:
        if self.run.tty or self.run.log_every_s > 0:
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            self._finish_cell(self.clock())
            self._close_screens()
            self.cell = len(self.titles)  # past the end: nothing runs any more
            if self.cells_s is None and self.wall_s is not None and exc_type is None:
                self.run.actual_s += self.clock() - self.t0
                self.run.expected_s += self.wall_s
            self._clear()
