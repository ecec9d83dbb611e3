"""Topology review across methods (notebook 05): per-subject verdicts of label propagation, the
LP-only and LP+manual networks, fine-tuning without the classification term (the λ = 0 control) and
joint training; an expert review sheet and its agreement
(Cohen's kappa) with the verdicts. Rates, tests and figures are in :mod:`fetalcmr.review_report`.

Each test subject's label maps (truth where known, the LP baseline, each network's prediction)
are brought onto the prediction's grid and judged by :func:`fetalcmr.topology.topology_report`
against the subject's *true* class template (topology needs no ground-truth segmentation).
Methods are the :mod:`fetalcmr.methods` registry's (:data:`REVIEWED`); reports, tables and figures
name them by its ``short`` label. The networks' prediction folders come from the stage outputs of
notebooks 02 and 04 (:func:`network_dirs`).

Every method's maps are judged raw and after the largest-piece clean-up
(:mod:`fetalcmr.postprocess`) chosen on the validation split against the propagated labels
(:func:`choose_for_methods`); the anomaly class is also read from each post-processed map by the
topology rule (:func:`rule_table`, :mod:`fetalcmr.topology_rule`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fetalcmr.io import DataError, load_nifti, resample_labels
from fetalcmr.methods import METHODS
from fetalcmr.metrics import mean_dice
from fetalcmr.postprocess import PostProcessing, choose_postprocessing
from fetalcmr.topology import topology_report
from fetalcmr.topology_rule import classify_topology

#: The reviewed methods (registry ids), in display order: the truth, the LP baseline, the networks.
REVIEWED: tuple[str, ...] = ("truth", "lp", "net_lp", "net_lp_manual", "lambda0", "joint")
#: Name of the ground-truth "method" (a reference row: the checker must call every truth correct).
TRUTH: str = METHODS["truth"].short
#: Name of the label propagation baseline (oracle-class atlas for test subjects; read from the items' ``lp``).
LP: str = METHODS["lp"].short
#: Grades accepted in the review sheet's ``expert_correct`` column.
GRADE_VALUES: dict[str, bool] = {"1": True, "0": False, "yes": True, "no": False, "y": True, "n": False,
                                 "true": True, "false": False, "correct": True, "incorrect": False,
                                 "ok": True, "wrong": False}
SHEET_COLUMNS: tuple[str, ...] = ("subject", "class", "method", "expert_correct", "expert_notes")


# ----------------------------------------------------------------------------------------------
# Cases: the label maps of one subject on one grid


@dataclass
class ReviewCase:
    """One subject's label maps (``{method: [x, y, z] array}``, truth first when known) on one grid."""

    id: str
    cls: int
    spacing_mm: tuple[float, float, float]
    maps: dict[str, np.ndarray]
    trachea_mask: np.ndarray | None = None
    trachea_x_vox: float | None = None
    image: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def truth(self) -> np.ndarray | None:
        """The ground-truth label map, or None for a dataset without ``gt``."""
        return self.maps.get(TRUTH)


def review_order() -> tuple[str, ...]:
    """Return the review names (registry ``short`` labels) of :data:`REVIEWED`, in display order."""
    return tuple(METHODS[m].short for m in REVIEWED)


def network_dirs(prediction_dirs: Mapping[str, str | Path]) -> dict[str, Path]:
    """Return ``{review name: folder}`` of the reviewed networks among ``prediction_dirs``.

    ``prediction_dirs`` maps method ids to their label-map folders, as the stage outputs give them
    (:attr:`fetalcmr.segmentation.SegmentationOutputs.prediction_dirs` merged with
    :attr:`fetalcmr.joint.JointOutputs.prediction_dirs`). The truth and the LP baseline are not
    networks: they are read from each item's ``gt`` and ``lp``.
    """
    return {METHODS[m].short: Path(prediction_dirs[m]) for m in REVIEWED
            if m not in ("truth", "lp") and m in prediction_dirs}


def _labels(array: np.ndarray) -> np.ndarray:
    return np.rint(np.asarray(array)).astype(np.uint8)


def load_case(item: Mapping[str, Any], method_files: Mapping[str, str | Path], *,
              with_truth: bool = True) -> ReviewCase:
    """Return the :class:`ReviewCase` of one dataset item and its prediction files.

    ``method_files`` maps a method to its label-map file for this subject (the LP baseline is
    ``item["lp"]``; add it as ``{LP: item["lp"]}``). Every map, the truth (``item["gt"]``) and the
    trachea (``item["trachea"]``) are resampled onto the grid of the first method other than LP;
    ``meta["trachea_x_vox"]`` is moved onto it through the affines.
    """
    if not method_files:
        raise ValueError(f"load_case: no label maps given for subject {item.get('id')}")
    if item.get("label") is None:
        raise DataError(f"{item.get('image', item.get('id'))}: test item has no anomaly class 'label'; "
                        "the topology verdict needs the class whose template it checks")
    vols = {m: load_nifti(p) for m, p in method_files.items()}
    ref = vols[next((m for m in vols if m != LP), next(iter(vols)))]  # a network's grid when there is one
    maps: dict[str, np.ndarray] = {}
    if with_truth and item.get("gt"):
        maps[TRUTH] = _labels(resample_labels(load_nifti(item["gt"]), ref.affine, ref.array.shape))
    for m, vol in vols.items():
        maps[m] = _labels(resample_labels(vol, ref.affine, ref.array.shape))
    trachea = None
    if item.get("trachea"):
        trachea = resample_labels(load_nifti(item["trachea"]), ref.affine, ref.array.shape) > 0
    meta = dict(item.get("meta") or {})
    tx = meta.get("trachea_x_vox")
    if tx is not None and trachea is None:
        img = load_nifti(item["image"]) if item.get("image") else ref
        world = img.affine @ np.array([float(tx), 0.0, 0.0, 1.0])
        tx = float((np.linalg.inv(ref.affine) @ world)[0])
    spacing = tuple(float(s) for s in ref.spacing)
    return ReviewCase(id=str(item["id"]), cls=int(item["label"]), spacing_mm=spacing, maps=maps,  # type: ignore[arg-type]
                      trachea_mask=trachea, trachea_x_vox=None if tx is None else float(tx),
                      image=item.get("image"), meta=meta)


def load_cases(items: Sequence[Mapping[str, Any]], method_dirs: Mapping[str, str | Path], *, with_lp: bool = True,
               with_truth: bool = True, progress: bool = False) -> tuple[list[ReviewCase], list[str]]:
    """Return (cases, messages): one case per item with every method's ``<dir>/<id>.nii.gz``.

    The LP baseline comes from ``item["lp"]`` when ``with_lp``. A method missing a subject's file
    is left out of that case and named in ``messages`` (nothing is silently dropped).
    """
    from tqdm.std import tqdm

    cases, messages = [], []
    for item in tqdm(items, desc="load label maps", disable=not progress):
        sid = str(item["id"])
        files: dict[str, Path] = {}
        if with_lp and item.get("lp"):
            files[LP] = Path(item["lp"])
        for m, d in method_dirs.items():
            p = Path(d) / f"{sid}.nii.gz"
            if p.exists():
                files[m] = p
            else:
                messages.append(f"{sid}: no {m} prediction ({p})")
        if not files:
            messages.append(f"{sid}: no label maps to review")
            continue
        cases.append(load_case(item, files, with_truth=with_truth))
    return cases, messages


# ----------------------------------------------------------------------------------------------
# Reports


def review_case(case: ReviewCase) -> list[dict[str, Any]]:
    """Return one report row per method of ``case`` (truth included when present).

    Columns: ``id, cls, method, correct, n_reasons`` plus :meth:`TopologyReport.as_row`'s, plus
    ``mean_dice`` over the truth's vessel labels (:func:`fetalcmr.metrics.mean_dice` with
    ``over="truth"``; NaN without truth) and ``seconds`` (time of the report).
    """
    rows = []
    for method, lm in case.maps.items():
        t0 = time.perf_counter()
        rep = topology_report(lm, case.cls, trachea_x_vox=case.trachea_x_vox, trachea_mask=case.trachea_mask)
        seconds = time.perf_counter() - t0
        dice = mean_dice(lm, case.truth, over="truth") if case.truth is not None and method != TRUTH else float("nan")
        rows.append({"id": case.id, "cls": case.cls, "method": method, **rep.as_row(),
                     "n_reasons": len(rep.reasons), "mean_dice": dice, "seconds": seconds})
    return rows


def _review_one(case: ReviewCase, _: None) -> list[dict[str, Any]]:
    return review_case(case)


def review_table(cases: Iterable[ReviewCase], *, progress: bool = False) -> pd.DataFrame:
    """Return the per-subject, per-method report table of ``cases`` (see :func:`review_case`); the
    cases are reviewed in parallel processes (:func:`fetalcmr.workers.map_items`)."""
    from fetalcmr.workers import map_items

    per_case = map_items(_review_one, list(cases), None, desc="topology reports", progress=progress)
    rows = [r for case_rows in per_case for r in case_rows]
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    order = {m: n for n, m in enumerate(review_order())}
    df["_o"] = df["method"].map(lambda m: order.get(m, len(order)))
    return df.sort_values(["id", "_o"], kind="stable").drop(columns="_o").reset_index(drop=True)


def review_both(cases: Sequence[ReviewCase], post_cases: Sequence[ReviewCase], *,
                progress: bool = False) -> pd.DataFrame:
    """Return :func:`review_table` of the raw ``cases`` and of ``post_cases`` (their post-processed
    copies) stacked, with a ``postprocessing`` column "raw" / "post" after ``method``."""
    parts = []
    for name, group in (("raw", cases), ("post", post_cases)):
        df = review_table(group, progress=progress)
        if not df.empty:
            df.insert(int(df.columns.get_loc("method")) + 1, "postprocessing", name)
        parts.append(df)
    return pd.concat(parts, ignore_index=True)


# ----------------------------------------------------------------------------------------------
# Post-processing chosen on validation


def validation_pairs(softmax_dir: str | Path, items: Sequence[Mapping[str, Any]]
                     ) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Return (predictions, references, ids) of the validation ``items`` with a stored softmax.

    The prediction is the argmax of ``<softmax_dir>/<id>.npz`` (notebook 02 stores the softmax of
    network (c) for every subject, :attr:`fetalcmr.segmentation.SegmentationOutputs.softmax_dir`);
    the reference is the item's propagated labels ``lp`` on the softmax's grid (weak supervision:
    never ``gt``). Items without either are skipped.
    """
    from fetalcmr.predict import load_softmax, softmax_file

    preds, refs, ids = [], [], []
    for item in items:
        path = softmax_file(softmax_dir, str(item["id"]))
        if not item.get("lp") or not path.exists():
            continue
        pred = np.argmax(load_softmax(path), axis=0).astype(np.uint8)
        with np.load(path) as z:
            affine = z["affine"]
        preds.append(pred)
        refs.append(_labels(resample_labels(load_nifti(item["lp"]), affine, pred.shape)))
        ids.append(str(item["id"]))
    return preds, refs, ids


@dataclass(frozen=True)
class Choice:
    """The post-processing of one method and the validation predictions it was chosen on."""

    postprocessing: PostProcessing
    chosen_on: str  # review name of the method whose validation predictions chose it ("" = none)


def choose_for_methods(validation: Mapping[str, tuple[Sequence[np.ndarray], Sequence[np.ndarray]]],
                       methods: Iterable[str], labels: Iterable[int], fallback: str) -> dict[str, Choice]:
    """Return ``{method: Choice}`` for each of ``methods`` (the truth is never post-processed).

    ``validation`` maps a method to its validation (predictions, references); a method with
    its own is chosen on them (:func:`fetalcmr.postprocess.choose_postprocessing`), any other
    takes the choice made on ``fallback``'s, or none when ``fallback`` has none either.
    """
    wanted = list(labels)
    chosen = {m: Choice(choose_postprocessing(p, r, wanted), m) for m, (p, r) in validation.items() if len(p)}
    none = Choice(PostProcessing(), "")
    return {m: chosen.get(m, chosen.get(fallback, none)) for m in methods if m != TRUTH}


def postprocessed(cases: Iterable[ReviewCase], choices: Mapping[str, Choice]) -> list[ReviewCase]:
    """Return copies of ``cases`` with every map of a method in ``choices`` post-processed."""
    return [replace(c, maps={m: choices[m].postprocessing.apply(lm) if m in choices else lm
                             for m, lm in c.maps.items()}) for c in cases]


# ----------------------------------------------------------------------------------------------
# The topology rule as a classifier


#: Columns of :func:`rule_table`.
RULE_COLUMNS: tuple[str, ...] = ("id", "cls", "method", "trachea", "rule_cls", "rule_class", "rule_loops",
                                 "rule_pieces", "rule_side", "rule_trachea", "rule_reason")


def rule_table(cases: Iterable[ReviewCase], *, from_image: bool = True, progress: bool = False) -> pd.DataFrame:
    """Return the topology rule's class for every map of ``cases`` (truth included).

    One row per case, method and trachea source: ``given`` (the dataset's trachea, where known)
    and ``image`` (found in the case's image by :func:`fetalcmr.topology_rule.trachea_from_image`,
    when ``from_image`` and the image is on the maps' grid). Columns ``id, cls, method, trachea``
    plus :meth:`RuleVerdict.as_row`'s (:data:`RULE_COLUMNS`). Cases go to parallel single-thread
    processes (:func:`fetalcmr.workers.map_items`).
    """
    from fetalcmr.workers import map_items

    per_case = map_items(_rule_one, list(cases), from_image, desc="topology rule", progress=progress)
    return pd.DataFrame([r for rows in per_case for r in rows], columns=RULE_COLUMNS)


def _rule_one(c: ReviewCase, from_image: bool) -> list[dict[str, Any]]:
    """The rule rows of one case (:func:`rule_table`; a :func:`fetalcmr.workers.map_items` function)."""
    sources: dict[str, dict[str, Any]] = {}
    if c.trachea_mask is not None or c.trachea_x_vox is not None:
        sources["given"] = {"trachea_mask": c.trachea_mask, "trachea_x_vox": c.trachea_x_vox}
    if from_image and c.image:
        img = load_nifti(c.image).array
        if img.shape == next(iter(c.maps.values())).shape:
            sources["image"] = {"image": img, "spacing_mm": float(c.spacing_mm[0])}
    return [{"id": c.id, "cls": c.cls, "method": method, "trachea": source,
             **classify_topology(lm, **kw).as_row()}
            for method, lm in c.maps.items() for source, kw in sources.items()]


# ----------------------------------------------------------------------------------------------
# Predicted classes (notebook 04: :attr:`fetalcmr.joint.JointOutputs.class_predictions`)


def correctly_classified(predictions: pd.DataFrame, method: str, cls: int | None = None) -> set[str]:
    """Return the ids whose class ``method`` predicted correctly (only true class ``cls`` if given)."""
    g = predictions[predictions["method"] == method]
    if cls is not None:
        g = g[g["label"] == cls]
    return set(g.loc[g["label"] == g["pred"], "id"].astype(str))


# ----------------------------------------------------------------------------------------------
# Review sheet and agreement


def filled_sheet_path(run_root: str | Path, repo_root: str | Path | None = None) -> Path:
    """Return where an expert's filled sheet of a run is looked for:
    ``data/review/<run folder name>/review_sheet_filled.csv`` under the repository root."""
    if repo_root is None:
        from fetalcmr.notebook import REPO_ROOT as repo_root
    return Path(repo_root) / "data" / "review" / Path(run_root).name / "review_sheet_filled.csv"


def review_sheet(reports: pd.DataFrame) -> pd.DataFrame:
    """Return the blank expert review sheet: one row per subject × method (truth excluded).

    Columns ``subject, class, method, expert_correct, expert_notes``. The expert writes 1 in
    ``expert_correct`` when the method's vessels are topologically right for the class (every
    vessel present and in one piece, arches and contacts as the anomaly has them), 0 when not,
    and leaves it blank when unsure. The automated verdicts are not in the sheet (no anchoring).
    """
    g = reports[reports["method"] != TRUTH]
    return pd.DataFrame({"subject": g["id"].astype(str).to_numpy(), "class": g["class"].to_numpy(),
                         "method": g["method"].to_numpy(), "expert_correct": "", "expert_notes": ""},
                        columns=list(SHEET_COLUMNS))


def write_review_sheet(path: str | Path, reports: pd.DataFrame) -> Path:
    """Write :func:`review_sheet` of ``reports`` to ``path`` (CSV, atomically) and return the path."""
    from fetalcmr.atomic import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        review_sheet(reports).to_csv(tmp, index=False)
    return path


def read_review_sheet(path: str | Path) -> pd.DataFrame:
    """Return a (possibly filled) review sheet with ``expert_correct`` as True/False/None.

    Accepted grades: 1/0, yes/no, true/false, correct/incorrect, ok/wrong (any case); blank is
    ungraded. Raises :class:`DataError` naming the file and row of anything else.
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read the review sheet ({exc})") from None
    missing = {"subject", "method", "expert_correct"} - set(df.columns)
    if missing:
        raise DataError(f"{path}: review sheet lacks column(s) {sorted(missing)}")
    grades: list[bool | None] = []
    for n, raw in enumerate(df["expert_correct"].str.strip().str.lower(), start=2):
        if raw in ("", "nan"):
            grades.append(None)
        elif raw in GRADE_VALUES:
            grades.append(GRADE_VALUES[raw])
        elif raw in ("1.0", "0.0"):  # a spreadsheet may write numbers as floats
            grades.append(raw == "1.0")
        else:
            raise DataError(f"{path}: line {n}: expert_correct {raw!r} is not one of 1/0, yes/no, "
                            "true/false, correct/incorrect (or blank)")
    df["expert_correct"] = pd.Series(grades, index=df.index, dtype=object)
    return df


def expert_agreement(sheet: pd.DataFrame, reports: pd.DataFrame) -> dict[str, Any]:
    """Return agreement of the graded sheet rows with the automated verdicts.

    Keys: ``n_graded``, ``n_unmatched`` (graded rows with no report), ``observed_agreement``,
    ``kappa`` (Cohen's, ``sklearn.metrics.cohen_kappa_score``; NaN when undefined: fewer than 2
    graded rows or a single category on both sides), ``expert_correct_rate``, ``auto_correct_rate``.
    """
    from sklearn.metrics import cohen_kappa_score

    graded = sheet[sheet["expert_correct"].notna()][["subject", "method", "expert_correct"]]
    auto = reports[["id", "method", "correct"]].rename(columns={"id": "subject"}).astype({"subject": str})
    merged = graded.astype({"subject": str}).merge(auto, on=["subject", "method"], how="inner")
    e = merged["expert_correct"].astype(bool).to_numpy()
    a = merged["correct"].astype(bool).to_numpy()
    n = int(e.size)
    out: dict[str, Any] = {"n_graded": int(len(graded)), "n_unmatched": int(len(graded) - n),
                           "observed_agreement": float(np.mean(e == a)) if n else float("nan"),
                           "kappa": float("nan"),
                           "expert_correct_rate": float(e.mean()) if n else float("nan"),
                           "auto_correct_rate": float(a.mean()) if n else float("nan")}
    if n >= 2 and len(set(e.tolist()) | set(a.tolist())) > 1:
        out["kappa"] = float(cohen_kappa_score(e, a))
    return out
