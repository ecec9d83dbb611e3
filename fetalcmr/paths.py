"""Where each stage of a run reads and writes (one folder per run under ``data/runs``), and the
error a stage's ``load_*`` function raises when the stage has not run for a run folder.

>>> p = RunPaths(Path("data/runs/smoke"))
>>> p.lp_json
PosixPath('data/runs/smoke/lp/dataset.json')
>>> p.outputs_record("02_segmentation")
PosixPath('data/runs/smoke/results/02_segmentation_outputs.json')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class StageNotRun(FileNotFoundError):
    """A stage's outputs are missing from a run folder; the message names the notebook that writes them."""


def outputs_record(results_dir: str | Path, notebook: str) -> Path:
    """Return the file in ``results_dir`` where ``notebook``'s stage records what it wrote (written last)."""
    return Path(results_dir) / f"{notebook}_outputs.json"


@dataclass(frozen=True)
class RunPaths:
    """Folder layout of one run (a profile on one dataset)."""

    root: Path

    @property
    def cohort_dir(self) -> Path:
        """Generated synthetic cohort (images, masks, truth, atlases)."""
        return self.root / "cohort"

    @property
    def cohort_json(self) -> Path:
        """``dataset.json`` of the generated synthetic cohort."""
        return self.cohort_dir / "dataset.json"

    @property
    def lp_dir(self) -> Path:
        """Label propagation outputs (propagated label maps, registration model)."""
        return self.root / "lp"

    @property
    def lp_json(self) -> Path:
        """``dataset.json`` with ``lp`` entries added by label propagation."""
        return self.lp_dir / "dataset.json"

    @property
    def models_dir(self) -> Path:
        """Trained networks, checkpoints and training histories."""
        return self.root / "models"

    @property
    def classifier_dir(self) -> Path:
        """Classifier runs of notebook 03 (``<input>/seed<k>/``) and their cached softmax inputs."""
        return self.models_dir / "classifier"

    @property
    def joint_dir(self) -> Path:
        """Joint fine-tuning runs of notebook 04."""
        return self.models_dir / "joint"

    @property
    def bundle_dir(self) -> Path:
        """The model bundle exported by notebook 04 (:mod:`fetalcmr.bundle`)."""
        return self.models_dir / "bundle"

    @property
    def predictions_dir(self) -> Path:
        """Predicted label maps and class probabilities."""
        return self.root / "predictions"

    @property
    def results_dir(self) -> Path:
        """Per-subject result tables shared between notebooks (not committed figures)."""
        return self.root / "results"

    @property
    def executed_dir(self) -> Path:
        """Executed notebook copies written by the runner."""
        return self.root / "executed"

    @property
    def stages_dir(self) -> Path:
        """Stage completion records (cache keys) written by the runner."""
        return self.root / "stages"

    def outputs_record(self, notebook: str) -> Path:
        """Where ``notebook``'s stage records its outputs (:func:`outputs_record`)."""
        return outputs_record(self.results_dir, notebook)

    def require(self, notebook: str, *files: Path) -> None:
        """Raise :class:`StageNotRun` naming ``notebook`` unless every one of ``files`` exists."""
        for f in files:
            if not Path(f).exists():
                raise StageNotRun(f"{self.root}: {notebook} has not run (no {f}); run it and the notebooks before "
                                  f"it for this run folder: make reproduce PROFILE=... (or python -m fetalcmr.runner "
                                  f"--profile ... --run-dir {self.root})")
