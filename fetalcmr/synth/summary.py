"""Summaries of a cohort's ``dataset.json`` for notebook 00: the cohort table, manual-mask
quality, and figures (orthogonal-slice montage, 3D renders, atlases, a real thorax beside the phantom).

They work on the synthetic cohort and on a user's dataset alike: anything that needs the truth
(``gt``) or synthetic metadata is skipped or falls back when absent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import ndimage

from fetalcmr.anatomy import LABEL_INDEX
from fetalcmr.dataset import SPLITS, classes_of
from fetalcmr.io import load_nifti
from fetalcmr.metrics import region_metrics
from fetalcmr.stats import mean_sd

if TYPE_CHECKING:
    import matplotlib.figure

    from fetalcmr.synth.subject import Subject

AO, DAO = LABEL_INDEX["AO"], LABEL_INDEX["DAO"]


def _items(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(split, item) for split in SPLITS for item in data.get(split, []) or []]


def cohort_table(data: dict[str, Any]) -> pd.DataFrame:
    """Subjects per class and split, and gestational age mean (SD) in weeks where known."""
    classes = classes_of(data)
    rows = []
    for cls, name in [*classes.items(), (None, "all")]:
        members = [(s, it) for s, it in _items(data) if cls is None or it.get("label") == cls]
        row: dict[str, Any] = {"class": name}
        for split in SPLITS:
            row[split] = sum(s == split for s, _ in members)
        row["total"] = len(members)
        ga = [float(it["meta"]["ga_weeks"]) for _, it in members if "ga_weeks" in (it.get("meta") or {})]
        row["GA weeks, mean (SD)"] = mean_sd(ga, 1)
        rows.append(row)
    return pd.DataFrame(rows)


def mask_quality(data: dict[str, Any]) -> pd.DataFrame:
    """Per subject with both masks: precision, recall and Dice of ``binary`` against ``gt > 0``
    (:func:`fetalcmr.metrics.region_metrics`: NaN where undefined, e.g. both masks empty)."""
    classes = classes_of(data)
    rows = []
    for split, item in _items(data):
        if "binary" not in item or "gt" not in item:
            continue
        scores = region_metrics(load_nifti(item["binary"]).array > 0, load_nifti(item["gt"]).array > 0)
        rows.append({"id": item.get("id", item["image"]), "label": item.get("label", -1),
                     "class": classes.get(item.get("label"), "?"), "split": split,
                     "precision": scores["precision"], "recall": scores["sensitivity"], "dice": scores["dice"]})
    return pd.DataFrame(rows, columns=["id", "label", "class", "split", "precision", "recall", "dice"])


def mask_quality_by_class(per_subject: pd.DataFrame) -> pd.DataFrame:
    """Mean (SD) of precision, recall and Dice per class, from :func:`mask_quality`."""
    rows = []
    for _, group in per_subject.groupby("label", sort=True):
        rows.append({"class": group["class"].iloc[0], "n": len(group),
                     **{f"{m} mean": group[m].mean() for m in ("precision", "recall", "dice")},
                     **{f"{m} SD": group[m].std(ddof=1) if len(group) > 1 else 0.0
                        for m in ("precision", "recall", "dice")}})
    return pd.DataFrame(rows)


def examples(data: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """One subject per class (the first by id, preferring subjects with ground truth)."""
    out: dict[int, dict[str, Any]] = {}
    for _, item in sorted(_items(data), key=lambda si: ("gt" not in si[1], str(si[1].get("id", si[1]["image"])))):
        out.setdefault(int(item.get("label", -1)), item)
    return {k: out[k] for k in sorted(out) if k >= 0}


def _labels_of_item(item: dict[str, Any]) -> np.ndarray | None:
    key = "gt" if "gt" in item else "binary" if "binary" in item else None
    return load_nifti(item[key]).array if key else None


def _slices(labelmap: np.ndarray, trachea: np.ndarray | None, meta: dict[str, Any]) -> tuple[int, int, int]:
    """Sagittal through the DAO, coronal through the trachea, axial at the arch level."""
    centre = [s // 2 for s in labelmap.shape]
    marks = meta.get("landmarks_vox", {})
    if "arch_level" in marks:
        k = int(round(marks["arch_level"][2]))
    elif (labelmap == AO).any():
        k = int(np.nonzero((labelmap == AO).any(axis=(0, 1)))[0].max()) - 2
    else:
        k = centre[2]
    j = int(round(ndimage.center_of_mass(trachea[:, :, k])[1])) if trachea is not None and trachea[:, :, k].any() \
        else centre[1]
    i = int(round(ndimage.center_of_mass(labelmap == DAO)[0])) if (labelmap == DAO).any() else centre[0]
    return i, j, int(np.clip(k, 0, labelmap.shape[2] - 1))


def _label_legend(fig: matplotlib.figure.Figure, data: dict[str, Any]) -> None:
    from matplotlib.patches import Patch

    from fetalcmr.dataset import labels_of
    from fetalcmr.render import label_colors

    names = {k: v for k, v in labels_of(data).items() if k > 0}
    colors = label_colors(sorted(names))
    fig.legend(handles=[Patch(color=colors[k], label=v) for k, v in sorted(names.items())], loc="outside lower center",
               ncol=min(len(names), 11), fontsize=8, frameon=False)


def montage_figure(data: dict[str, Any], title: str = "") -> matplotlib.figure.Figure:
    """Orthogonal slices per class: image alone, then with the labels (truth, else manual mask)."""
    import matplotlib.pyplot as plt

    from fetalcmr.render import overlay_slices

    chosen = examples(data)
    classes = classes_of(data)
    fig, axes = plt.subplots(len(chosen), 6, figsize=(15.0, 2.75 * len(chosen)), constrained_layout=True,
                             squeeze=False)
    for row, (cls, item) in zip(axes, chosen.items()):
        image = load_nifti(item["image"])
        labels = _labels_of_item(item)
        trachea = load_nifti(item["trachea"]).array if "trachea" in item else None
        cut = _slices(labels if labels is not None else np.zeros(image.array.shape, np.uint8), trachea,
                      item.get("meta") or {})
        overlay_slices(image.array, None, slices=cut, axes=row[:3], spacing_mm=image.spacing)
        overlay_slices(image.array, labels, slices=cut, axes=row[3:], spacing_mm=image.spacing)
        row[0].set_ylabel(f"{classes.get(cls, cls)}\n{item.get('id', '')}", fontsize=10)
    _label_legend(fig, data)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def renders_figure(data: dict[str, Any], title: str = "") -> matplotlib.figure.Figure | None:
    """One 3D surface render per class (same cameras and box for every class); None without masks."""
    from fetalcmr.render import render_comparison

    classes = classes_of(data)
    maps, spacing = {}, None
    for cls, item in examples(data).items():
        if "gt" not in item and "binary" not in item:
            continue
        vol = load_nifti(item["gt"] if "gt" in item else item["binary"])
        maps[f"{classes.get(cls, cls)} ({item.get('id', '')})"] = vol.array
        spacing = vol.spacing
    return render_comparison(maps, spacing, title=title or None) if maps else None


def atlas_figure(data: dict[str, Any], title: str = "") -> matplotlib.figure.Figure:
    """The class atlases: orthogonal slices with the atlas label map."""
    import matplotlib.pyplot as plt

    from fetalcmr.render import overlay_slices

    atlases = data.get("atlases", []) or []
    classes = classes_of(data)
    fig, axes = plt.subplots(len(atlases), 6, figsize=(15.0, 2.75 * len(atlases)), constrained_layout=True,
                             squeeze=False)
    for row, atlas in zip(axes, atlases):
        image, labels = load_nifti(atlas["image"]), load_nifti(atlas["labelmap"]).array
        cut = _slices(labels, None, atlas.get("meta") or {})
        overlay_slices(image.array, None, slices=cut, axes=row[:3], spacing_mm=image.spacing)
        overlay_slices(image.array, labels, slices=cut, axes=row[3:], spacing_mm=image.spacing)
        row[0].set_ylabel(f"atlas {classes.get(atlas['label'], atlas['label'])}", fontsize=10)
    _label_legend(fig, data)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def mask_quality_figure(per_subject: pd.DataFrame, title: str = "") -> matplotlib.figure.Figure:
    """Precision and recall of the manual masks per subject, by class (strip plot with means)."""
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(per_subject.sort_values("label")["class"]))
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 3.0), constrained_layout=True, sharey=True)
    rng = np.random.default_rng(0)
    for ax, metric in zip(axes, ("precision", "recall")):
        for x, name in enumerate(names):
            vals = per_subject.loc[per_subject["class"] == name, metric].to_numpy()
            ax.scatter(x + rng.uniform(-0.15, 0.15, len(vals)), vals, s=12, alpha=0.7)
            ax.hlines(vals.mean(), x - 0.3, x + 0.3, color="k", lw=1.5)
        ax.set_xticks(range(len(names)), names)
        ax.set_title(f"manual mask {metric}", fontsize=10)
        ax.set_ylim(min(0.5, float(per_subject[metric].min()) - 0.05), 1.0)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def real_vs_phantom_figure(real_image: np.ndarray, real_organs: np.ndarray, real_spacing_mm: float,
                           phantom: Subject, title: str = "") -> matplotlib.figure.Figure:
    """A real thorax (top) and a phantom subject (bottom) at the phantom's field of view, with
    intensity histograms relative to lung (lung median = 1).

    The real volume is resampled to the phantom's grid around :func:`fetalcmr.realslice.arch_centre`.
    Slices: axial through the field's centre (arch level), axial 13 mm lower (heart), coronal and
    sagittal through the centre.
    """
    import matplotlib.pyplot as plt

    from fetalcmr.realslice import LUNGS, arch_centre, arch_crop, relative_histogram
    from fetalcmr.synth.thorax import Tissue

    n, spacing = phantom.image.shape[0], float(phantom.affine[0, 0])
    centre = arch_centre(real_organs)
    real = arch_crop(real_image, real_spacing_mm, centre, n, spacing)
    real_lung = np.isin(arch_crop(real_organs, real_spacing_mm, centre, n, spacing, order=0), LUNGS)
    rows = {"real (SVRTK thorax atlas)": (real, real_lung),
            f"phantom ({phantom.meta['class']}, {phantom.meta['ga_weeks']:.0f} wk)": (phantom.image,
                                                                               phantom.tissue == Tissue.LUNG)}
    fig = plt.figure(figsize=(15.0, 6.0), constrained_layout=True)
    grid = fig.add_gridspec(2, 5)
    hist_ax = fig.add_subplot(grid[:, 4])
    bins = np.linspace(0.0, 1.6, 65)
    c, low = n // 2, max(n // 2 - int(round(13.0 / spacing)), 0)
    extent = [-n * spacing / 2, n * spacing / 2] * 2
    for r, (name, (image, lung)) in enumerate(rows.items()):
        rel = image / float(np.median(image[lung]))
        cuts = [("axial, arch", rel[:, :, c]), ("axial, heart", rel[:, :, low]),
                ("coronal", rel[:, c, :]), ("sagittal", rel[c, :, :])]
        for k, (label, plane) in enumerate(cuts):
            ax = fig.add_subplot(grid[r, k])
            ax.imshow(plane.T, origin="lower", cmap="gray", vmin=0.0, vmax=1.4, extent=extent)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label if r == 0 else "", fontsize=9)
            if k == 0:
                ax.set_ylabel(name, fontsize=9)
        hist_ax.plot(0.5 * (bins[1:] + bins[:-1]), relative_histogram(image, lung, bins), label=name)
    hist_ax.set_xlabel("intensity / lung median")
    hist_ax.set_ylabel("density")
    hist_ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
