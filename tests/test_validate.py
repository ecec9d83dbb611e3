"""dataset.json validation: every problem is reported with the file named, and the reference
implementation's datalist imports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fetalcmr.dataset import read_dataset, training_view, write_dataset
from fetalcmr.io import DataError, save_nifti
from fetalcmr.validate import DatasetInvalid, import_reference_datalist, validate_dataset


def _edit(path: Path, fn) -> None:
    data = read_dataset(path)
    fn(data)
    write_dataset(path, data)


def test_valid_dataset_passes_and_paths_are_absolute(tiny_dataset: Path) -> None:
    data = validate_dataset(tiny_dataset)
    assert Path(data["training"][0]["image"]).is_absolute()
    raw = json.loads(tiny_dataset.read_text())
    assert not Path(raw["training"][0]["image"]).is_absolute(), "written relative to the json"


def _problem(path: Path) -> str:
    with pytest.raises(DatasetInvalid) as err:
        validate_dataset(path)
    return str(err.value)


def test_missing_file(tiny_dataset: Path) -> None:
    _edit(tiny_dataset, lambda d: d["training"][0].update(binary=str(tiny_dataset.parent / "nope.nii.gz")))
    msg = _problem(tiny_dataset)
    assert "nope.nii.gz: file not found" in msg


def test_corrupt_nifti(tiny_dataset: Path) -> None:
    target = Path(read_dataset(tiny_dataset)["training"][1]["image"])
    target.write_bytes(target.read_bytes()[:50])
    msg = _problem(tiny_dataset)
    assert f"{target}: not a readable NIfTI" in msg


def test_shape_mismatch(tiny_dataset: Path) -> None:
    target = Path(read_dataset(tiny_dataset)["training"][0]["binary"])
    save_nifti(target, np.zeros((12, 12, 10), np.uint8), np.diag([1.5, 1.5, 1.5, 1]))
    assert f"{target}: shape (12, 12, 10) does not match its image (12, 12, 12)" in _problem(tiny_dataset)


def test_affine_mismatch(tiny_dataset: Path) -> None:
    target = Path(read_dataset(tiny_dataset)["testing"][0]["gt"])
    save_nifti(target, np.zeros((12, 12, 12), np.uint8), np.diag([1.0, 1.5, 1.5, 1]))
    assert f"{target}: affine differs" in _problem(tiny_dataset)


def test_unknown_label_values(tiny_dataset: Path) -> None:
    target = Path(read_dataset(tiny_dataset)["testing"][0]["gt"])
    arr = np.zeros((12, 12, 12), np.uint8)
    arr[1, 1, 1] = 17
    save_nifti(target, arr, np.diag([1.5, 1.5, 1.5, 1]))
    assert f"{target}: unknown label values [17]" in _problem(tiny_dataset)


def test_binary_mask_with_label_values(tiny_dataset: Path) -> None:
    target = Path(read_dataset(tiny_dataset)["training"][0]["binary"])
    save_nifti(target, np.full((12, 12, 12), 4, np.uint8), np.diag([1.5, 1.5, 1.5, 1]))
    assert "binary mask values must be 0/1" in _problem(tiny_dataset)


def test_nan_image(tiny_dataset: Path) -> None:
    target = Path(read_dataset(tiny_dataset)["training"][2]["image"])
    arr = np.ones((12, 12, 12), np.float32)
    arr[0, 0, 0] = np.inf
    save_nifti(target, arr, np.diag([1.5, 1.5, 1.5, 1]))
    assert f"{target}: contains 1 NaN/Inf voxels" in _problem(tiny_dataset)


def test_constant_image(tiny_dataset: Path) -> None:
    target = Path(read_dataset(tiny_dataset)["training"][2]["image"])
    save_nifti(target, np.zeros((12, 12, 12), np.float32), np.diag([1.5, 1.5, 1.5, 1]))
    assert "image is constant" in _problem(tiny_dataset)


def test_class_out_of_range(tiny_dataset: Path) -> None:
    _edit(tiny_dataset, lambda d: d["training"][0].update(label=5))
    assert "class 5 is not one of the dataset's classes [0, 1, 2]" in _problem(tiny_dataset)


def test_duplicate_entries(tiny_dataset: Path) -> None:
    _edit(tiny_dataset, lambda d: d["testing"].append(dict(d["training"][0])))
    msg = _problem(tiny_dataset)
    assert "duplicate id 'sub-000'" in msg and "listed 2 times" in msg


@pytest.mark.parametrize("split", ["training", "testing"])
def test_empty_split(tiny_dataset: Path, split: str) -> None:
    _edit(tiny_dataset, lambda d: d.update({split: []}))
    assert f"split '{split}' is empty" in _problem(tiny_dataset)


def test_all_problems_reported_together(tiny_dataset: Path) -> None:
    def break_two(d):
        d["training"][0]["label"] = 9
        d["testing"] = []
    _edit(tiny_dataset, break_two)
    with pytest.raises(DatasetInvalid) as err:
        validate_dataset(tiny_dataset)
    assert len(err.value.problems) == 2


def test_malformed_json(tmp_path: Path) -> None:
    path = tmp_path / "dataset.json"
    path.write_text('{"labels": {')
    with pytest.raises(DataError, match=f"{path}: not valid JSON"):
        validate_dataset(path)


def test_training_view_never_carries_gt(tiny_dataset: Path) -> None:
    item = read_dataset(tiny_dataset)["training"][0]
    assert "gt" in item and "gt" not in training_view(item)
    assert set(training_view(item)) == {"id", "image", "binary", "label"}


def test_reference_datalist_imports(tiny_dataset: Path, tmp_path: Path) -> None:
    ours = read_dataset(tiny_dataset)
    ref = {
        "training": [{"image": it["image"], "mask": it["binary"], "LP": it["gt"], "label": [0, 1, 0]}
                     for it in ours["training"]],
        "testing": [{"image": it["image"], "mask": it["gt"], "label": it["label"]} for it in ours["testing"]],
    }
    src = tmp_path / "ref" / "datalist.json"
    src.parent.mkdir()
    src.write_text(json.dumps(ref))
    out = import_reference_datalist(src, tmp_path / "imported" / "dataset.json", spacing_mm=1.5)
    data = validate_dataset(out)
    first = data["training"][0]
    assert first["binary"] == ours["training"][0]["binary"] and first["lp"] == ours["training"][0]["gt"]
    assert first["label"] == 1
    assert data["testing"][0]["gt"] == ours["testing"][0]["gt"] and "binary" not in data["testing"][0]


def test_alignment_template_entry_round_trips_and_is_checked(tiny_dataset: Path) -> None:
    """``template`` (the image new volumes are aligned to): written relative, read absolute, preferred
    over the CoA atlas by the bundle; a missing file or a malformed entry is named."""
    from fetalcmr.bundle import alignment_template

    image = tiny_dataset.parent / "template.nii.gz"
    save_nifti(image, np.ones((20, 20, 20), np.float32), np.diag([1.5, 1.5, 1.5, 1]))
    _edit(tiny_dataset, lambda d: d.update(template={"image": str(image)},
                                           atlases=[{"label": 0, "image": "a.nii.gz", "labelmap": "b.nii.gz"}]))
    assert json.loads(tiny_dataset.read_text())["template"]["image"] == "template.nii.gz"
    data = read_dataset(tiny_dataset)
    assert alignment_template(data) == str(image)
    assert alignment_template({"atlases": data["atlases"]}) == str(tiny_dataset.parent / "a.nii.gz")
    _edit(tiny_dataset, lambda d: d.pop("atlases"))
    validate_dataset(tiny_dataset)
    image.unlink()
    assert "template.nii.gz: file not found" in _problem(tiny_dataset)
    _edit(tiny_dataset, lambda d: d.update(template="template.nii.gz"))
    assert "template: expected an object with an 'image' path" in _problem(tiny_dataset)
