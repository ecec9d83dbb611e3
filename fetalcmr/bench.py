"""``make bench``: measure the speed budgets named in the issues and print them.

Each section times one stage on freshly generated data at the default profile's grid and
prints rows of ``measure, value, budget, verdict``. Results also go to
``data/bench/bench.json`` (with the environment). Sections can be picked by name::

    python -m fetalcmr.bench synth topology
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fetalcmr.atomic import write_json_atomic
from fetalcmr.manifest import environment_record
from fetalcmr.notebook import REPO_ROOT


@dataclass(frozen=True)
class Row:
    """One measured figure; ``budget`` is the issue's limit in the same unit (None: report only)."""

    section: str
    measure: str
    value: float
    unit: str
    budget: float | None = None

    @property
    def verdict(self) -> str:
        """``ok``/``OVER`` against the budget, or ``-`` when there is none."""
        if self.budget is None:
            return "-"
        return "ok" if self.value <= self.budget else "OVER"


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Median wall seconds of ``repeat`` calls of ``fn`` and the last result."""
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2], result


def _one_core() -> Any:
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def bench_synth(work: Path) -> list[Row]:
    """Synthetic subject generation at the default grid on one core, and the default cohort."""
    from fetalcmr.config import get_profile
    from fetalcmr.synth import generate_cohort, generate_subject

    cfg = get_profile("default").cohort
    with _one_core():
        generate_subject(0, seed=0, grid=cfg.grid, spacing_mm=cfg.spacing_mm)  # warm-up
        per = [timed(lambda c=c, s=s: generate_subject(c, seed=s, grid=cfg.grid, spacing_mm=cfg.spacing_mm))[0]
               for c in range(3) for s in range(1, 4)]
    rows = [Row("synth", "generate one subject, 64³, 1 core (mean of 9)", sum(per) / len(per), "s", 1.0),
            Row("synth", "generate one subject, 64³, 1 core (max of 9)", max(per), "s")]
    wall, _ = timed(lambda: generate_cohort(work / "cohort", cfg, 0, progress=False))
    rows.append(Row("synth", f"default cohort ({cfg.n_subjects} subjects, atlases, NIfTI)", wall, "s", 120.0))
    return rows


def bench_topology(work: Path) -> list[Row]:
    """Topology report per subject at the default grid."""
    from fetalcmr.config import get_profile
    from fetalcmr.synth import generate_subject
    from fetalcmr.topology import betti_numbers, topology_report

    cfg = get_profile("default").cohort
    subjects = [generate_subject(c, seed=10 + c, grid=cfg.grid, spacing_mm=cfg.spacing_mm) for c in range(3)]
    per = [timed(lambda s=s, c=c: topology_report(s.gt, c, trachea_x_vox=s.meta.get("trachea_x_vox")), 3)[0]
           for c, s in enumerate(subjects)]
    betti = timed(lambda: betti_numbers(subjects[2].gt > 0), 3)[0]
    return [Row("topology", "topology report per subject, 64³", max(per), "s", 0.5),
            Row("topology", "Betti numbers of the vessel mask, 64³", betti, "s")]


def bench_render(work: Path) -> list[Row]:
    """Static surface renders per subject and the offline gallery for the default test set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fetalcmr.config import get_profile
    from fetalcmr.gallery import write_gallery
    from fetalcmr.render import render_surfaces
    from fetalcmr.synth import generate_subject

    cfg = get_profile("default").cohort
    spacing = (cfg.spacing_mm,) * 3
    subjects = [generate_subject(c % 3, seed=20 + c, grid=cfg.grid, spacing_mm=cfg.spacing_mm) for c in range(3)]

    def render(gt):
        fig = render_surfaces(gt, spacing)
        fig.canvas.draw()
        plt.close(fig)

    per = max(timed(lambda s=s: render(s.gt))[0] for s in subjects)
    n_test = round(cfg.n_subjects * cfg.split_fractions[2])
    cases = [{"id": f"case-{i:03d}", "labelmaps": {m: subjects[i % 3].gt for m in ("truth", "LP", "separate", "joint")},
              "spacing_mm": spacing} for i in range(n_test)]
    gallery = timed(lambda: write_gallery(work / "gallery", cases))[0]
    return [Row("render", "3-view surface render per subject, 64³", per, "s"),
            Row("render", f"offline gallery, {n_test} subjects × truth + 3 methods", gallery, "s", 60.0)]


SECTIONS: dict[str, Callable[[Path], list[Row]]] = {
    "synth": bench_synth,
    "topology": bench_topology,
    "render": bench_render,
}


def print_rows(rows: list[Row]) -> None:
    """Print rows as an aligned table."""
    width = max(len(r.measure) for r in rows) + 2
    print(f"{'section':<12}{'measure':<{width}}{'value':>10}  {'unit':<6}{'budget':>8}  verdict")
    for r in rows:
        budget = f"{r.budget:g}" if r.budget is not None else "-"
        print(f"{r.section:<12}{r.measure:<{width}}{r.value:>10.3f}  {r.unit:<6}{budget:>8}  {r.verdict}")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmark sections (all by default); returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m fetalcmr.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("sections", nargs="*", help=f"sections to run (default: all of {', '.join(SECTIONS)})")
    args = parser.parse_args(argv)
    names = args.sections or list(SECTIONS)
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    print(f"fetalcmr bench on {platform.node()}: {os.cpu_count()} cores, python {platform.python_version()}",
          flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="fetalcmr-bench-") as tmp:
        for name in names:
            section = SECTIONS[name](Path(tmp) / name)
            print_rows(section)
            print(flush=True)
            rows += section
    out = REPO_ROOT / "data" / "bench" / "bench.json"
    write_json_atomic(out, {"rows": [asdict(r) | {"verdict": r.verdict} for r in rows],
                            "environment": environment_record(), "cpu_count": os.cpu_count()})
    print("summary:")
    print_rows(rows)
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
