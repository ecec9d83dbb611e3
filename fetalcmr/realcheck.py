"""``make realcheck INPUT=path.nii.gz``: what a model bundle does with one real volume.

Runs :func:`fetalcmr.infer.infer` on the volume as given (the same preprocessing as any user's
input: aligned to the bundle's template unless ``--no-align``) and measures, on the input's own
grid: the class and its probabilities, the topology verdict, the alignment (orientation, scale,
NCC with the template before and after, seconds), the aortic arch's connectivity (AO ∪ DAO:
pieces and loops, Betti b0 and b1), each predicted vessel's volume in mm³ and mean intensity,
and an overlay figure. With organ labels (``--organs``: 1 heart, 2 and 3 the lungs, as in the
public SVRTK thorax atlas), intensities are given relative to the lungs' mean (black-blood
vessel lumen is dark: near 0) and the share of predicted vessel voxels inside the heart is
reported, overall and per vessel (blood pool labelled as vessel, and as which vessel), with how
deep inside the heart label those voxels lie: near its surface (≤ 2 mm, where vessels meet the
heart and the label's border, partial volume and the labelling convention all matter) or deep in
the blood pool (a chamber read as vessel). Without
them, intensities are relative to the image's 99th percentile and the heart share is not known.

With organ labels that include the superior mediastinum (4, as in the SVRTK atlas),
``--crop-at-organs`` replaces the alignment by a hand crop centred on the arch's place from those
labels, axes kept: the same models on the right pose, which tells alignment errors from model errors.

Outputs in ``out_dir``: what ``infer`` writes, ``realcheck.json``, ``realcheck_vessels.csv`` and
``realcheck_overlay.png``. Nothing here trains or tunes: it is a check.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from fetalcmr.anatomy import LABEL_INDEX, LABELS
from fetalcmr.atomic import atomic_path, write_json_atomic, write_text_atomic
from fetalcmr.cli import KEEP_ORIENTATION_HELP
from fetalcmr.io import DataError, load_nifti
from fetalcmr.realslice import HEART, LUNGS, SUPERIOR, arch_centre
from fetalcmr.topology import betti_numbers

#: Depth (mm) inside the heart label beyond which a predicted vessel voxel is "deep": past the border
#: zone where vessel roots meet the heart (about three voxels of the real atlas's 0.65 mm grid).
DEEP_MM: float = 2.0


def heart_depth(heart: np.ndarray, spacing_mm: np.ndarray) -> np.ndarray:
    """Return each voxel's distance (mm) to the nearest voxel outside ``heart`` (0 outside it)."""
    return ndimage.distance_transform_edt(heart, sampling=spacing_mm)


def vessel_table(image: np.ndarray, labels: np.ndarray, voxel_mm3: float, reference: float,
                 heart: np.ndarray | None = None, depth: np.ndarray | None = None) -> pd.DataFrame:
    """Return per predicted vessel: voxels, volume (mm³) and mean image intensity / ``reference``; with a
    ``heart`` mask also the share of its voxels inside the heart (which vessels a heart share comes from)
    and, given the voxels' ``depth`` in it (:func:`heart_depth`), the share deeper than :data:`DEEP_MM`
    and the median depth of those inside (NaN when none is)."""
    heart_columns = [] if heart is None else ["in_heart"] + ([] if depth is None else ["deep_in_heart",
                                                                                        "heart_depth_mm"])
    columns = ["label", "voxels", "volume_mm3", "intensity_rel"] + heart_columns
    rows = []
    for k, name in LABELS.items():
        mask = labels == k
        if k == 0 or not mask.any():
            continue
        row = {"label": name, "voxels": int(mask.sum()), "volume_mm3": float(mask.sum() * voxel_mm3),
               "intensity_rel": float(image[mask].mean() / reference)}
        if heart is not None:
            row["in_heart"] = float((mask & heart).sum() / mask.sum())
        if heart is not None and depth is not None:
            inside = depth[mask & heart]
            row["deep_in_heart"] = float((inside > DEEP_MM).sum() / mask.sum())
            row["heart_depth_mm"] = float(np.median(inside)) if inside.size else float("nan")
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def arch_connectivity(labels: np.ndarray) -> dict[str, int]:
    """Return Betti numbers of AO ∪ DAO: ``arch_pieces`` (b0) and ``arch_loops`` (b1)."""
    b0, b1, _ = betti_numbers(np.isin(labels, [LABEL_INDEX["AO"], LABEL_INDEX["DAO"]]))
    return {"arch_pieces": int(b0), "arch_loops": int(b1)}


def _organs(path: str | os.PathLike[str] | None, image_path: Path, shape: tuple[int, ...],
            affine: np.ndarray) -> np.ndarray | None:
    if path is None:
        return None
    organs = load_nifti(path)
    if organs.array.shape != shape or not np.allclose(organs.affine, affine, atol=1e-3):
        raise DataError(f"{path}: organ labels are not on the grid of {image_path} "
                        f"(shape {organs.array.shape} vs {shape})")
    return np.rint(organs.array).astype(np.int16)


def _alignment(row: dict[str, Any]) -> dict[str, Any]:
    if not row["aligned"]:
        centre = row.get("crop_centre_mm")
        return {"aligned": False} | ({"crop_centre_mm": json.loads(centre)} if isinstance(centre, str) else {})
    return {"aligned": True, "align_search": str(row.get("align_search", "search")),
            "align_orientation": str(row["align_orientation"]),
            "align_matrix": json.loads(row["align_matrix"]),
            **{k: float(row[k]) for k in ("align_scale", "align_ncc_before", "align_ncc_after", "align_seconds")}}


def real_check(image: str | os.PathLike[str], bundle_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str],
               *, organs: str | os.PathLike[str] | None = None, align: bool = True,
               orientation: str = "search", crop_at_organs: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run the bundle on ``image`` and return (and write) the measurements described above
    (``orientation`` as :func:`fetalcmr.infer.infer` takes it). ``crop_at_organs`` replaces the
    alignment by a hand crop: the grid centred where :func:`fetalcmr.realslice.arch_centre` puts the
    arch from the organ labels, the input's axes kept (what the models do when the pose is right)."""
    from fetalcmr.infer import infer
    from fetalcmr.render import overlay_slices

    image_path, out = Path(image), Path(out_dir)
    vol = load_nifti(image_path)
    organ_map = _organs(organs, image_path, vol.array.shape, vol.affine)
    centre_mm = None
    if crop_at_organs:
        if organ_map is None:
            raise DataError(f"{image_path}: a crop at the organs needs organ labels (--organs)")
        if not (organ_map == SUPERIOR).any():
            raise DataError(f"{organs}: no superior mediastinum (label {SUPERIOR}) to place the arch at")
        centre_mm = vol.affine[:3, :3] @ arch_centre(organ_map) + vol.affine[:3, 3]
    row = infer(image_path, bundle_dir, out, align=align, orientation=orientation, centre_mm=centre_mm,
                progress=progress).iloc[0].to_dict()
    labels = np.rint(load_nifti(row["labels"]).array).astype(np.int16)
    voxel_mm3 = float(abs(np.linalg.det(vol.affine[:3, :3])))
    vessels = labels > 0
    heart = depth = None
    in_heart = deep_in_heart = None
    if organ_map is not None:
        heart = organ_map == HEART
        depth = heart_depth(heart, np.sqrt((vol.affine[:3, :3] ** 2).sum(0)))
        lung = np.isin(organ_map, LUNGS)
        reference, reference_name = float(vol.array[lung].mean()), "lung mean"
        in_heart = float((vessels & heart).sum() / max(int(vessels.sum()), 1))
        deep_in_heart = float((vessels & (depth > DEEP_MM)).sum() / max(int(vessels.sum()), 1))
    else:
        reference, reference_name = float(np.percentile(vol.array, 99)), "image 99th percentile"
    table = vessel_table(vol.array, labels, voxel_mm3, reference, heart, depth)
    all_vessels = float(vol.array[vessels].mean() / reference) if vessels.any() else float("nan")
    result = {
        "image": str(image_path), "bundle": str(Path(bundle_dir).resolve()), "organs": str(organs or ""),
        "class": row["class"], "probabilities": {k[2:]: float(v) for k, v in row.items() if k.startswith("p_")},
        "topology_correct": bool(row["topology_correct"]), "topology_reasons": row["topology_reasons"],
        **arch_connectivity(labels), "vessel_volume_mm3": float(vessels.sum() * voxel_mm3),
        "vessel_intensity_rel": all_vessels, "intensity_reference": reference_name,
        "vessel_fraction_in_heart": in_heart, "vessel_fraction_deep_in_heart": deep_in_heart,
        **_alignment(row),
    }
    with atomic_path(out / "realcheck_vessels.csv") as tmp:
        table.to_csv(tmp, index=False)
    write_json_atomic(out / "realcheck.json", result)
    fig = overlay_slices(vol.array, labels, spacing_mm=np.abs(np.diag(vol.affine))[:3],
                         title=f"{image_path.name}: {row['class']} "
                               f"(p = {max(result['probabilities'].values()):.2f})")
    with atomic_path(out / "realcheck_overlay.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    write_text_atomic(out / "realcheck.md", summary(result, table))
    return result


def summary(result: dict[str, Any], vessels: pd.DataFrame) -> str:
    """Return the measurements as Markdown."""
    probs = ", ".join(f"{k} {v:.2f}" for k, v in result["probabilities"].items())
    heart = result["vessel_fraction_in_heart"]
    lines = [f"**{Path(result['image']).name}**: class {result['class']} ({probs}); topology "
             f"{'correct' if result['topology_correct'] else 'wrong'} for that class"
             + (f" ({result['topology_reasons']})" if result["topology_reasons"] else ""),
             f"AO ∪ DAO: {result['arch_pieces']} piece(s), {result['arch_loops']} loop(s); vessels "
             f"{result['vessel_volume_mm3']:.0f} mm³, mean intensity {result['vessel_intensity_rel']:.2f} of the "
             f"{result['intensity_reference']}"
             + ("" if heart is None else f"; {100 * heart:.1f} % of vessel voxels inside the heart label, "
                f"{100 * result['vessel_fraction_deep_in_heart']:.1f} % deeper than {DEEP_MM:g} mm"),
             alignment_line(result), "", vessels.to_markdown(index=False, floatfmt=".3g")]
    return "\n".join(lines) + "\n"


def alignment_line(result: dict[str, Any]) -> str:
    """One sentence on how the volume was placed on the bundle's grid."""
    if not result["aligned"]:
        if "crop_centre_mm" in result:
            x, y, z = result["crop_centre_mm"]
            return (f"Not aligned: the bundle's grid was centred at ({x:.1f}, {y:.1f}, {z:.1f}) mm, the arch's "
                    "place from the organ labels, with the volume's axes kept (a hand crop).")
        return "Not aligned: the bundle's grid was centred on the volume's centre."
    turns = "the input's axes kept" if result.get("align_search") == "stored" else "24 axis turns searched"
    return (f"Aligned to the bundle's template ({turns}) in {result['align_seconds']:.1f} s: template axes point "
            f"{result['align_orientation']} in the volume, scale {result['align_scale']:.2f}, NCC with the "
            f"template {result['align_ncc_before']:.2f} (centre crop) → {result['align_ncc_after']:.2f}.")


def main(argv: list[str] | None = None) -> int:
    """``python -m fetalcmr.realcheck INPUT BUNDLE OUT [--organs ORGANS] [--no-align | --keep-orientation |
    --crop-at-organs]``."""
    parser = argparse.ArgumentParser(prog="python -m fetalcmr.realcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("image", help="a 3D T2w NIfTI")
    parser.add_argument("bundle", help="a model bundle folder (fetalcmr export)")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--organs", help="organ labels on the image's grid (1 heart, 2/3 lungs)")
    parser.add_argument("--no-align", action="store_true",
                        help="no alignment to the bundle's template: centre the bundle's grid on the volume "
                             "(for volumes already cropped as in training)")
    parser.add_argument("--keep-orientation", action="store_true", help=KEEP_ORIENTATION_HELP)
    parser.add_argument("--crop-at-organs", action="store_true",
                        help="no alignment: centre the bundle's grid on the arch found from the organ labels "
                             "(superior mediastinum), the volume's axes kept; needs --organs. Tells pose errors "
                             "from model errors")
    args = parser.parse_args(argv)
    try:
        result = real_check(args.image, args.bundle, args.out, organs=args.organs, align=not args.no_align,
                            orientation="stored" if args.keep_orientation else "search",
                            crop_at_organs=args.crop_at_organs)
    except DataError as err:
        print(f"realcheck: {err}", file=sys.stderr)
        return 2
    print(summary(result, pd.read_csv(Path(args.out) / "realcheck_vessels.csv")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
