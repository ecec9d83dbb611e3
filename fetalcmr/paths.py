"""Where each stage of a run reads and writes (one folder per run under ``data/runs``).

>>> p = RunPaths(Path("data/runs/smoke"))
>>> p.lp_json
PosixPath('data/runs/smoke/lp/dataset.json')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
