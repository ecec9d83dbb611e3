"""What a notebook needs from its ``parameters`` cell: the profile, the run's folders and a
way to save figures and tables that records them in ``MANIFEST.json``.

A notebook starts with::

    ctx = setup("02_segmentation", profile=profile, seed=seed, dataset=dataset,
                run_dir=run_dir, figures_dir=figures_dir)
    ...
    ctx.save_figure(fig, "fig02_dice_boxplots", caption="Per-label Dice by method")
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fetalcmr.atomic import atomic_path, write_text_atomic
from fetalcmr.config import Profile, get_profile
from fetalcmr.manifest import Manifest, git_commit
from fetalcmr.paths import RunPaths

if TYPE_CHECKING:  # heavy imports only for type checkers
    import matplotlib.figure
    import pandas as pd

#: Repository root (the package is installed in editable mode from it).
REPO_ROOT: Path = Path(__file__).resolve().parents[1]


def default_run_dir(profile: str, dataset: str = "") -> Path:
    """``data/runs/<profile>`` for the synthetic cohort, ``data/runs/<name>-<profile>`` for a dataset."""
    if not dataset:
        return REPO_ROOT / "data" / "runs" / profile
    name = Path(dataset).resolve().parent.name or "dataset"
    return REPO_ROOT / "data" / "runs" / f"{name}-{profile}"


def default_figures_dir(profile: str, dataset: str = "") -> Path:
    """Committed ``figures/`` for the default profile on synthetic data; else inside the run."""
    if profile == "default" and not dataset:
        return REPO_ROOT / "figures"
    return default_run_dir(profile, dataset) / "figures"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class NotebookContext:
    """Parameters and output helpers of one notebook run."""

    notebook: str
    profile: Profile
    seed: int
    dataset: Path | None  # a user's dataset.json, or None for the synthetic cohort
    paths: RunPaths
    figures_dir: Path
    written: list[str] = field(default_factory=list)

    @property
    def synthetic(self) -> bool:
        """True when the run uses the generated synthetic cohort."""
        return self.dataset is None

    @property
    def source_json(self) -> Path:
        """The dataset.json the pipeline starts from (the user's, or the generated cohort's)."""
        return self.dataset if self.dataset is not None else self.paths.cohort_json

    def label(self, text: str) -> str:
        """Prefix ``text`` with ``[synthetic]`` when results come from the synthetic cohort."""
        return f"[synthetic] {text}" if self.synthetic else text

    def _record(self, name: str, path: Path, caption: str, notes: list[str] | None) -> None:
        manifest = Manifest(self.figures_dir / "MANIFEST.json")
        manifest.record_output(
            name, notebook=self.notebook, profile=self.profile.name, seed=self.seed,
            commit=git_commit(REPO_ROOT), file_sha256=_sha256(path), synthetic=self.synthetic,
            caption=caption, notes=list(self.profile.reductions) + list(notes or []),
        )
        manifest.save()
        self.written.append(name)

    def save_figure(self, fig: matplotlib.figure.Figure, name: str, *, caption: str,
                    notes: list[str] | None = None, dpi: int = 130) -> Path:
        """Save ``fig`` as ``<figures_dir>/<name>.png`` (atomically) and record it."""
        path = self.figures_dir / f"{name}.png"
        if self.synthetic and not fig.texts and not getattr(fig, "_suptitle", None):
            fig.text(0.995, 0.005, "synthetic data", ha="right", va="bottom", fontsize=7, color="0.4")
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
        self._record(path.name, path, caption, notes)
        return path

    def save_table(self, table: pd.DataFrame, name: str, *, caption: str,
                   notes: list[str] | None = None, float_format: str = "%.4g") -> Path:
        """Save ``table`` as ``<name>.csv`` and a Markdown ``<name>.md`` with caption; record both."""
        csv_path = self.figures_dir / f"{name}.csv"
        md_path = self.figures_dir / f"{name}.md"
        with atomic_path(csv_path) as tmp:
            table.to_csv(tmp, index=False, float_format=float_format)
        md = f"**{self.label(caption)}**\n\n" + table.to_markdown(index=False, floatfmt=".3g") + "\n"
        write_text_atomic(md_path, md)
        self._record(csv_path.name, csv_path, caption, notes)
        self._record(md_path.name, md_path, caption, notes)
        return csv_path


def setup(notebook: str, *, profile: str = "smoke", seed: int = 0, dataset: str = "",
          run_dir: str = "", figures_dir: str = "") -> NotebookContext:
    """Build the context of ``notebook`` from its ``parameters`` cell values.

    Empty ``run_dir``/``figures_dir`` take the defaults (:func:`default_run_dir`,
    :func:`default_figures_dir`); relative paths are taken from the repository root.
    """
    def resolve(p: str) -> Path:
        path = Path(os.path.expanduser(p))
        return path if path.is_absolute() else REPO_ROOT / path

    prof = get_profile(profile)
    ds = resolve(dataset) if dataset else None
    run = resolve(run_dir) if run_dir else default_run_dir(profile, dataset)
    figs = resolve(figures_dir) if figures_dir else default_figures_dir(profile, dataset)
    run.mkdir(parents=True, exist_ok=True)
    figs.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MPLBACKEND", "Agg") if "JPY_PARENT_PID" not in os.environ else None
    return NotebookContext(notebook=notebook, profile=prof, seed=int(seed), dataset=ds,
                           paths=RunPaths(run), figures_dir=figs)


def parameters_summary(ctx: NotebookContext) -> str:
    """One JSON line describing the run, for the top of each executed notebook."""
    return json.dumps({"notebook": ctx.notebook, "profile": ctx.profile.name, "seed": ctx.seed,
                       "dataset": str(ctx.dataset) if ctx.dataset else "synthetic",
                       "run_dir": str(ctx.paths.root), "figures_dir": str(ctx.figures_dir)})
