"""Model bundles: a trained segmenter/classifier ensemble packed into one folder for inference.

A bundle holds ``bundle.json`` (format version, package versions, network configurations,
preprocessing grid, label and class maps, provenance and metrics) and one pair of weight
files per ensemble member (``state_dict`` only, loaded with ``weights_only=True``; their
SHA-256 is recorded and checked). :func:`load_bundle` refuses a bundle whose format or
package version, or whose maps, do not match, saying what differs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

import fetalcmr
from fetalcmr.atomic import atomic_path, write_json_atomic
from fetalcmr.cache import file_digest
from fetalcmr.config import ClassifierConfig, SegmenterConfig
from fetalcmr.io import DataError, Volume, load_nifti, save_nifti
from fetalcmr.joint import build_joint
from fetalcmr.manifest import git_commit
from fetalcmr.postprocess import PostProcessing

BUNDLE_FORMAT: int = 2  # 2: classifier crops around the aorta (layer order), post-processing entry
BUNDLE_FILE = "bundle.json"
TEMPLATE_FILE = "template.nii.gz"


class BundleError(ValueError):
    """A bundle that cannot be used here; the message says what does not match."""


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: ready-to-run joint networks and the facts needed to preprocess."""

    path: Path
    members: list[nn.Module]
    grid: int
    spacing_mm: float
    labels: dict[int, str]
    classes: dict[int, str]
    info: dict[str, Any]
    #: the alignment template (RAS), or None for a bundle made without one
    template: Volume | None = None
    #: connected-component clean-up chosen on the validation split when the bundle was exported
    postprocessing: PostProcessing = dataclasses.field(default_factory=PostProcessing)


def _major_minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def _package_versions() -> dict[str, str]:
    import monai

    return {"fetalcmr": fetalcmr.__version__, "torch": torch.__version__, "monai": monai.__version__}


def _config_from(cls: type, data: dict[str, Any]) -> Any:
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - fields
    if unknown:
        raise BundleError(f"bundle configuration has fields this version does not know: {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def alignment_template(data: dict[str, Any]) -> str:
    """The bundle's alignment template: the dataset's ``template`` image when it has one (the synthetic
    cohort's wide, background-masked thorax, :func:`fetalcmr.synth.atlas.build_template`), else the
    image of its CoA atlas (``atlases`` entry with label 0)."""
    template = data.get("template")
    if isinstance(template, dict) and template.get("image"):
        return str(template["image"])
    for atlas in data.get("atlases") or []:
        if int(atlas["label"]) == 0:
            return str(atlas["image"])
    raise DataError("dataset has no CoA atlas (an 'atlases' entry with label 0) to use as the bundle's template")


def export_bundle(out_dir: str | os.PathLike[str], members: list[nn.Module], *, segmenter: SegmenterConfig,
                  classifier: ClassifierConfig, kind: str, grid: int, spacing_mm: float,
                  labels: dict[int, str], classes: dict[int, str], provenance: dict[str, Any],
                  template: str | os.PathLike[str], postprocessing: PostProcessing | None = None,
                  metrics: dict[str, Any] | None = None) -> Path:
    """Write ``members`` (joint networks with ``.segmenter``/``.classifier``), the alignment ``template``
    (a NIfTI image, stored in RAS) and the ``postprocessing`` chosen on validation as a bundle; return
    its folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tpl = load_nifti(template)
    save_nifti(out / TEMPLATE_FILE, tpl.array, tpl.affine)
    entries = []
    for i, net in enumerate(members):
        entry = {}
        for part in ("segmenter", "classifier"):
            name = f"member{i}_{part}.pt"
            with atomic_path(out / name) as tmp:
                torch.save(getattr(net, part).state_dict(), tmp)
            entry[part] = name
            entry[f"{part}_sha256"] = file_digest(out / name)
        entries.append(entry)
    write_json_atomic(out / BUNDLE_FILE, {
        "format": BUNDLE_FORMAT,
        "versions": _package_versions(),
        "preprocessing": {"grid": grid, "spacing_mm": spacing_mm, "orientation": "RAS",
                          "intensity": "z-score then min-max to 0..1",
                          "crop_pad": "affine alignment to the template (fetalcmr.align), zero padding; "
                                      "centred on the input volume's centre when alignment is off"},
        "segmenter": dataclasses.asdict(segmenter),
        "classifier": dataclasses.asdict(classifier),
        "classifier_input": kind,
        "labels": {str(k): v for k, v in labels.items()},
        "classes": {str(k): v for k, v in classes.items()},
        "members": entries,
        "template": {"file": TEMPLATE_FILE, "sha256": file_digest(out / TEMPLATE_FILE), "source": str(template)},
        "provenance": {"commit": git_commit(), "created": datetime.now(UTC).isoformat(timespec="seconds"),
                       **provenance},
        "postprocessing": (postprocessing or PostProcessing()).to_dict(),
        "metrics": metrics or {},
    })
    return out


def load_bundle(path: str | os.PathLike[str], *, labels: dict[int, str] | None = None,
                classes: dict[int, str] | None = None) -> Bundle:
    """Load a bundle folder; refuse it (``BundleError``) when versions or the given maps differ."""
    folder = Path(path)
    meta_path = folder / BUNDLE_FILE
    if not meta_path.exists():
        raise BundleError(f"{folder}: not a model bundle (no {BUNDLE_FILE})")
    try:
        info = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{meta_path}: not valid JSON ({err})") from None
    if info.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{meta_path}: bundle format {info.get('format')} but this fetalcmr reads format "
                          f"{BUNDLE_FORMAT}; re-export the bundle with this version")
    here = _package_versions()
    for pkg in ("fetalcmr", "torch", "monai"):
        theirs = str(info.get("versions", {}).get(pkg, "?"))
        if _major_minor(theirs) != _major_minor(here[pkg]):
            raise BundleError(f"{meta_path}: made with {pkg} {theirs}, this environment has {here[pkg]}; "
                              f"install the bundle's versions or re-export it")
    b_labels = {int(k): v for k, v in info["labels"].items()}
    b_classes = {int(k): v for k, v in info["classes"].items()}
    if labels is not None and labels != b_labels:
        raise BundleError(f"{meta_path}: label map {b_labels} does not match the data's {labels}")
    if classes is not None and classes != b_classes:
        raise BundleError(f"{meta_path}: classes {b_classes} do not match the data's {classes}")
    seg_cfg = _config_from(SegmenterConfig, info["segmenter"])
    cls_cfg = _config_from(ClassifierConfig, info["classifier"])
    members = []
    for entry in info["members"]:
        net = build_joint(seg_cfg, cls_cfg, info["classifier_input"])
        for part in ("segmenter", "classifier"):
            weights = folder / entry[part]
            if not weights.exists():
                raise BundleError(f"{weights}: weight file missing from the bundle")
            if file_digest(weights) != entry[f"{part}_sha256"]:
                raise BundleError(f"{weights}: checksum differs from bundle.json (corrupt or replaced)")
            state = torch.load(weights, map_location="cpu", weights_only=True)
            getattr(net, part).load_state_dict(state)
        net.eval()
        members.append(net)
    prep = info["preprocessing"]
    return Bundle(folder, members, int(prep["grid"]), float(prep["spacing_mm"]), b_labels, b_classes, info,
                  _template(folder, info.get("template")), PostProcessing.from_dict(info.get("postprocessing") or {}))


def _template(folder: Path, entry: dict[str, str] | None) -> Volume | None:
    if entry is None:
        return None
    path = folder / entry["file"]
    if not path.exists():
        raise BundleError(f"{path}: template missing from the bundle")
    if file_digest(path) != entry["sha256"]:
        raise BundleError(f"{path}: checksum differs from bundle.json (corrupt or replaced)")
    return load_nifti(path)


def copy_bundle(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Check that the bundle at ``src`` loads, then copy it to the new folder ``dst``; return ``dst``."""
    bundle = load_bundle(src)
    out = Path(dst)
    if out.exists() and any(out.iterdir()):
        raise BundleError(f"{out}: folder exists and is not empty")
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(bundle.path, tmp)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out
