"""``figures/MANIFEST.json``: which notebook made each figure and table, under which profile,
seed, commit and environment, and what each notebook cost (wall time, peak memory)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from fetalcmr.atomic import write_json_atomic

#: Packages whose versions define the numerical environment of a run.
KEY_PACKAGES: tuple[str, ...] = (
    "torch", "monai", "numpy", "scipy", "scikit-image", "scikit-learn", "nibabel",
    "voxelmorph", "neurite", "SimpleITK", "pandas", "matplotlib", "papermill",
)


class ManifestError(RuntimeError):
    """A figure would be written by two notebooks, or the manifest is unreadable."""


def git_commit(repo: Path | None = None) -> str:
    """Current commit hash, suffixed ``+dirty`` when tracked files differ; ``unknown`` outside git."""
    cwd = str(repo) if repo else None
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "fetalcmr",
                                "notebooks"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def environment_record() -> dict[str, Any]:
    """Python, platform and key package versions, with a hash of all installed versions."""
    versions = {}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    everything = sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions())
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "packages_sha256": hashlib.sha256("\n".join(everything).encode()).hexdigest()[:16],
    }


class Manifest:
    """Read-modify-write access to one ``MANIFEST.json`` (atomic on every save)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.exists():
            try:
                self.data: dict[str, Any] = json.loads(self.path.read_text())
            except json.JSONDecodeError as err:
                raise ManifestError(f"{self.path}: not valid JSON ({err})") from None
        else:
            self.data = {}
        self.data.setdefault("description", "Every figure and table in this folder, the notebook that "
                                            "wrote it, and the run that produced it.")
        self.data.setdefault("outputs", {})
        self.data.setdefault("notebooks", {})

    def record_output(self, name: str, *, notebook: str, profile: str, seed: int, commit: str,
                      file_sha256: str, synthetic: bool, caption: str, notes: list[str]) -> None:
        """Register figure/table ``name``; refuse one already owned by another notebook."""
        owner = self.data["outputs"].get(name, {}).get("notebook")
        if owner is not None and owner != notebook:
            raise ManifestError(f"{name} is already written by notebook {owner}; "
                                f"{notebook} may not write it too (one notebook per figure)")
        self.data["outputs"][name] = {
            "notebook": notebook, "profile": profile, "seed": seed, "commit": commit,
            "sha256": file_sha256, "synthetic": synthetic, "caption": caption, "notes": notes,
            "written": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def record_notebook(self, notebook: str, record: dict[str, Any]) -> None:
        """Store a notebook's run record (wall time, peak memory, parameters, commit)."""
        self.data["notebooks"][notebook] = record

    def outputs_of(self, notebook: str) -> list[str]:
        """Names of the outputs the manifest attributes to ``notebook``."""
        return sorted(k for k, v in self.data["outputs"].items() if v.get("notebook") == notebook)

    def save(self) -> None:
        """Write the manifest atomically, with the environment of the current process."""
        self.data["environment"] = environment_record()
        self.data["outputs"] = dict(sorted(self.data["outputs"].items()))
        self.data["notebooks"] = dict(sorted(self.data["notebooks"].items()))
        write_json_atomic(self.path, self.data)
