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
    from fetalcmr.stage_bench import review_costs
    from fetalcmr.synth import generate_subject
    from fetalcmr.topology import betti_numbers, topology_report

    cfg = get_profile("default").cohort
    subjects = [generate_subject(c, seed=10 + c, grid=cfg.grid, spacing_mm=cfg.spacing_mm) for c in range(3)]
    per = [timed(lambda s=s, c=c: topology_report(s.gt, c, trachea_x_vox=s.meta.get("trachea_x_vox")), 3)[0]
           for c, s in enumerate(subjects)]
    betti = timed(lambda: betti_numbers(subjects[2].gt > 0), 3)[0]
    review = review_costs("default")
    return [Row("topology", "topology report per subject, 64³", max(per), "s", 0.5),
            Row("topology", "Betti numbers of the vessel mask, 64³", betti, "s", 0.05),
            Row("topology", "review per case (truth + 4 maps), 64³", review["review_s_per_case"], "s"),
            Row("topology", "correct rates and McNemar on those reviews", review["stats_s"], "s")]


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
    n_test = cfg.n_testing()
    cases = [{"id": f"case-{i:03d}", "labelmaps": {m: subjects[i % 3].gt for m in ("truth", "LP", "separate", "joint")},
              "spacing_mm": spacing} for i in range(n_test)]
    gallery = timed(lambda: write_gallery(work / "gallery", cases))[0]
    return [Row("render", "3-view surface render per subject, 64³", per, "s"),
            Row("render", f"offline gallery, {n_test} subjects × truth + 3 methods", gallery, "s", 60.0)]


def _small_cohort(work: Path, n_subjects: int) -> Path:
    """A default-grid cohort of ``n_subjects`` (one dataset.json) for timing the later stages."""
    import dataclasses

    from fetalcmr.config import get_profile
    from fetalcmr.synth import generate_cohort

    cfg = dataclasses.replace(get_profile("default").cohort, n_subjects=n_subjects,
                              class_fractions=(0.34, 0.33, 0.33), split_fractions=(0.5, 0.17, 0.33))
    return generate_cohort(work / "cohort", cfg, 0, progress=False)


def bench_propagation(work: Path) -> list[Row]:
    """VoxelMorph propagation per subject at the default grid vs the classical baseline (same subjects)."""
    import dataclasses

    import torch

    from fetalcmr.config import get_profile
    from fetalcmr.dataset import read_dataset
    from fetalcmr.propagation import run_label_propagation
    from fetalcmr.registration_baselines import run_baselines

    torch.set_num_threads(2)
    source = _small_cohort(work, 12)
    cfg = dataclasses.replace(get_profile("default").propagation, iterations=20)
    t0 = time.perf_counter()
    result = run_label_propagation(source, work / "lp", work / "lp" / "dataset.json", cfg, 0, progress=False)
    wall = time.perf_counter() - t0
    per_iter = float(result.history["seconds"].diff().dropna().median())
    test = result.subjects[result.subjects["split"] == "testing"]
    vxm = float(test["seconds"].mean())
    base = run_baselines(read_dataset(source), work / "baselines", methods=("demons",), progress=False)
    demons = float(base["seconds"].mean())
    full = get_profile("default").propagation.iterations
    steps = cfg.refine_steps
    network_only = [Row("propagation", "  of which network only (no refinement), same subjects",
                        float(test["seconds_network"].mean()), "s")] if "seconds_network" in test else []
    return [Row("propagation", f"VoxelMorph propagation per test subject (affine + net + {steps} refinement steps "
                "+ labels), 64³", vxm, "s", 1.0), *network_only,
            Row("propagation", "classical (affine + demons) per test subject, same subjects", demons, "s"),
            Row("propagation", "speed ratio classical / VoxelMorph", demons / vxm, "x"),
            Row("propagation", "VoxelMorph training iteration (registration grid)", per_iter, "s"),
            Row("propagation", f"default training estimate ({full} iterations)", per_iter * full / 60, "min", 8.0),
            Row("propagation", "whole 20-iteration stage on 12 subjects", wall, "s")]


def bench_segmentation(work: Path) -> list[Row]:
    """Segmenter inference (default vs reference architecture) and training throughput."""
    from fetalcmr.stage_bench import segmentation_costs

    units = {"threads": "", "train_samples_per_s": "1/s"}
    rows = [Row("segmentation", k, float(v), units.get(k, "s")) for k, v in segmentation_costs().items()]
    est = next((r for r in rows if r.measure == "estimated_train_s_three_networks"), None)
    if est is not None:  # a share of the whole default reproduce (45 min budget, see MANIFEST wall times)
        rows.append(Row("segmentation", "default training of networks b, c, d (estimate)", est.value / 60, "min"))
    return rows


def _flatten(prefix: str, d: dict[str, Any]) -> list[tuple[str, float]]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _flatten(f"{prefix}{k}.", v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append((f"{prefix}{k}", float(v)))
    return out


def bench_classification(work: Path) -> list[Row]:
    """Classifier training/inference cost per input type, and the joint step (default profile)."""
    from fetalcmr.stage_bench import classification_costs, joint_costs

    rows = [Row("classify", k, v, "") for k, v in _flatten("", classification_costs("default"))]
    rows += [Row("joint", k, v, "") for k, v in _flatten("", joint_costs("default"))]
    return rows


def bench_infer(work: Path) -> list[Row]:
    """`fetalcmr infer` per subject at the default grid (untrained default-size bundle, 3 members)."""
    import resource

    import torch

    from fetalcmr.anatomy import CLASSES, LABELS
    from fetalcmr.bundle import alignment_template, export_bundle
    from fetalcmr.config import get_profile
    from fetalcmr.dataset import read_dataset
    from fetalcmr.infer import infer
    from fetalcmr.joint import build_joint

    torch.set_num_threads(2)
    prof = get_profile("default")
    members = [build_joint(prof.segmenter, prof.classifier, "softmax+image") for _ in prof.joint.ensemble_seeds]
    source = _small_cohort(work, 6)
    bundle = export_bundle(work / "bundle", members, segmenter=prof.segmenter, classifier=prof.classifier,
                           kind="softmax+image", grid=prof.cohort.grid, spacing_mm=prof.cohort.spacing_mm,
                           labels=dict(LABELS), classes=dict(CLASSES), provenance={"bench": True},
                           template=alignment_template(read_dataset(source)))
    n = len(read_dataset(source)["testing"])
    wall, table = timed(lambda: infer(source, bundle, work / "out", progress=False))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return [Row("infer", f"infer per subject incl. I/O, {len(members)}-member ensemble, 64³", wall / n, "s", 2.0),
            Row("infer", "peak memory of the benchmark process", peak, "MB")]


def bench_paper(work: Path) -> list[Row]:
    """One training step per stage at the paper profile's sizes (80³, its networks and batch sizes),
    on the GPU when there is one, and the training time the paper's schedule implies."""
    from fetalcmr.stage_bench import paper_step_costs

    costs = paper_step_costs()
    device = costs["device"]
    rows = []
    for stage in ("propagation", "segmenter", "classifier", "joint"):
        rows.append(Row("paper", f"{stage} training step, 80³ ({device})", costs[f"{stage}_step_s"], "s"))
        rows.append(Row("paper", f"{stage} paper schedule ({device}, one network)", costs[f"{stage}_train_h"], "h"))
    return rows


def bench_smoke(work: Path) -> list[Row]:
    """``make reproduce PROFILE=smoke`` end to end in a fresh folder, per notebook, then the cached re-run."""
    from fetalcmr.runner import run_pipeline

    def run() -> list[Any]:
        return run_pipeline("smoke", run_dir=str(work / "run"), figures_dir=str(work / "figures"))

    wall, stages = timed(run)
    rows = [Row("smoke", f"{r.notebook} ({r.status})", r.wall_s, "s") for r in stages]
    rows.append(Row("smoke", "make reproduce PROFILE=smoke, all notebooks, fresh", wall, "s", 180.0))
    again, _ = timed(run)
    rows.append(Row("smoke", "second run, nothing changed (hash checks only)", again, "s"))
    return rows


SECTIONS: dict[str, Callable[[Path], list[Row]]] = {
    "synth": bench_synth,
    "topology": bench_topology,
    "render": bench_render,
    "propagation": bench_propagation,
    "segmentation": bench_segmentation,
    "classification": bench_classification,
    "infer": bench_infer,
    "smoke": bench_smoke,
    "paper": bench_paper,
}
#: Sections run when none is named (``paper`` takes minutes on a CPU: name it to run it).
DEFAULT_SECTIONS: tuple[str, ...] = tuple(s for s in SECTIONS if s != "paper")


def print_rows(rows: list[Row]) -> None:
    """Print rows as an aligned table."""
    width = max(len(r.measure) for r in rows) + 2
    print(f"{'section':<12}{'measure':<{width}}{'value':>10}  {'unit':<6}{'budget':>8}  verdict")
    for r in rows:
        budget = f"{r.budget:g}" if r.budget is not None else "-"
        print(f"{r.section:<12}{r.measure:<{width}}{r.value:>10.3f}  {r.unit:<6}{budget:>8}  {r.verdict}")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmark sections (``DEFAULT_SECTIONS`` when none is named); returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m fetalcmr.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("sections", nargs="*",
                        help=f"sections to run (default: {', '.join(DEFAULT_SECTIONS)}; also: paper)")
    args = parser.parse_args(argv)
    names = args.sections or list(DEFAULT_SECTIONS)
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
