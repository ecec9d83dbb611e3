"""Tests of the topology review: correct rates, the McNemar table, the review sheet and kappa,
and the review table built from label-map files with a constructed broken prediction."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fetalcmr import review as rv
from fetalcmr import review_report as rr
from fetalcmr.anatomy import LABEL_INDEX
from fetalcmr.io import DataError, save_nifti
from fetalcmr.stats import proportion_ci
from fetalcmr.workers import WORKERS_ENV


def _reports(rows: list[tuple[str, int, str, bool]]) -> pd.DataFrame:
    names = {0: "CoA", 1: "RAA", 2: "DAA"}
    return pd.DataFrame([{"id": i, "cls": c, "class": names[c], "method": m, "correct": ok,
                          "n_reasons": 0 if ok else 1} for i, c, m, ok in rows])


def test_correct_rates_on_hand_made_verdicts() -> None:
    rows = [("a", 2, "joint", True), ("b", 2, "joint", True), ("c", 2, "joint", False),
            ("d", 0, "joint", True), ("a", 2, "LP", False), ("b", 2, "LP", False),
            ("c", 2, "LP", False), ("d", 0, "LP", True)]
    rates = rr.correct_rates(_reports(rows)).set_index(["method", "class"])
    assert list(dict.fromkeys(rates.index.get_level_values(0))) == ["LP", "joint"]  # METHOD_ORDER
    daa = rates.loc[("joint", "DAA")]
    assert (daa["n"], daa["n_correct"]) == (3, 2)
    assert daa["rate"] == pytest.approx(2 / 3)
    assert (daa["ci_low"], daa["ci_high"]) == pytest.approx(proportion_ci(2, 3))
    assert rates.loc[("joint", "all"), "n"] == 4 and rates.loc[("LP", "all"), "n_correct"] == 1
    assert rates.loc[("LP", "RAA"), "n"] == 0 and math.isnan(rates.loc[("LP", "RAA"), "rate"])


def test_mcnemar_table_subsets() -> None:
    rows = [(s, 2, m, ok) for s, (x, y) in {"a": (False, True), "b": (False, True), "c": (True, True)}.items()
            for m, ok in (("LP+manual", x), ("joint", y))]
    rows += [("d", 0, "LP+manual", True), ("d", 0, "joint", False)]
    t = rr.mcnemar_table(_reports(rows), "LP+manual", "joint",
                         {"DAA": ["a", "b", "c"], "all": ["a", "b", "c", "d"], "none": []}).set_index("subset")
    assert (t.loc["DAA", "only_b"], t.loc["DAA", "only_a"], t.loc["DAA", "n"]) == (2, 0, 3)
    assert t.loc["DAA", "p_value"] == pytest.approx(0.5)  # 2 of 2 discordant: 2 * 1/4
    assert t.loc["DAA", "rate_b"] == 1.0 and t.loc["DAA", "rate_a"] == pytest.approx(1 / 3)
    assert (t.loc["all", "only_a"], t.loc["all", "only_b"]) == (1, 2)
    assert t.loc["none", "n"] == 0


def test_review_sheet_round_trip_and_kappa(tmp_path: Path) -> None:
    rows = [("a", 2, "truth", True), ("a", 2, "LP+manual", True), ("a", 2, "joint", True),
            ("b", 2, "LP+manual", False), ("b", 2, "joint", False)]
    reports = _reports(rows)
    path = rv.write_review_sheet(tmp_path / "review_sheet.csv", reports)
    blank = rv.read_review_sheet(path)
    assert list(blank.columns) == list(rv.SHEET_COLUMNS)
    assert len(blank) == 4 and "truth" not in set(blank["method"])  # truth is not graded
    assert "correct" not in blank.columns  # the automated verdict is not shown to the expert
    assert blank["expert_correct"].isna().all()
    assert math.isnan(rv.expert_agreement(blank, reports)["kappa"])
    # expert: a/LP+manual 1, a/joint 0, b/LP+manual 0, b/joint blank (ungraded)
    filled = pd.read_csv(path, dtype=str, keep_default_na=False)
    filled["expert_correct"] = ["1", "No", "0", ""]
    filled.to_csv(tmp_path / "filled.csv", index=False)
    agree = rv.expert_agreement(rv.read_review_sheet(tmp_path / "filled.csv"), reports)
    # auto (T, T, F) vs expert (T, F, F): po = 2/3, pe = 2/3*1/3 + 1/3*2/3 = 4/9, kappa = (2/9)/(5/9)
    assert agree["n_graded"] == 3 and agree["n_unmatched"] == 0
    assert agree["observed_agreement"] == pytest.approx(2 / 3)
    assert agree["kappa"] == pytest.approx(0.4)
    filled["expert_correct"] = ["1", "maybe", "0", ""]
    filled.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=r"bad\.csv: line 3: expert_correct 'maybe'"):
        rv.read_review_sheet(tmp_path / "bad.csv")


def test_worst_cases_rank_by_reasons() -> None:
    df = _reports([("a", 0, "truth", True), ("a", 0, "joint", False), ("b", 0, "joint", True),
                   ("c", 0, "LP", False), ("c", 0, "joint", False)])
    assert rr.worst_cases(df, 5) == ["c", "a"]


# ----------------------------------------------------------------------------------------------
# Review table from label-map files


@pytest.fixture(scope="module")
def daa_subject() -> Any:
    synth = pytest.importorskip("fetalcmr.synth")
    return synth.generate_subject(2, seed=1, grid=32, spacing_mm=52.0 / 32)


def test_review_table_flags_broken_prediction(tmp_path: Path, daa_subject: Any) -> None:
    sub = daa_subject
    paths = {k: tmp_path / f"sub-001_{k}.nii.gz" for k in ("image", "gt", "trachea", "lp")}
    save_nifti(paths["image"], sub.image, sub.affine)
    save_nifti(paths["gt"], sub.gt, sub.affine)
    save_nifti(paths["trachea"], sub.trachea, sub.affine)
    save_nifti(paths["lp"], sub.gt, sub.affine)
    broken = sub.gt.copy()
    broken[broken == LABEL_INDEX["LSA"]] = 0
    save_nifti(tmp_path / "pred" / "net_lp_manual" / "sub-001.nii.gz", sub.gt, sub.affine)  # notebook 02's folder
    save_nifti(tmp_path / "pred" / "joint" / "sub-001.nii.gz", broken, sub.affine)
    save_nifti(tmp_path / "pred" / "lp" / "sub-001.nii.gz", sub.gt, sub.affine)  # LP baseline: not a network
    # the stage outputs' prediction folders (method id -> folder): the reviewed networks, by review name
    outputs = {m: tmp_path / "pred" / m for m in ("lp", "net_lp_manual", "net_manual", "joint")}
    dirs = rv.network_dirs(outputs)
    assert dirs == {"LP+manual": tmp_path / "pred" / "net_lp_manual", "joint": tmp_path / "pred" / "joint"}
    assert list(dirs) == ["LP+manual", "joint"] and rv.network_dirs({}) == {}
    item = {"id": "sub-001", "label": 2, "meta": dict(sub.meta), **{k: str(p) for k, p in paths.items()}}
    item2 = {**item, "id": "sub-002"}  # no predictions of its own: named in the messages
    cases, messages = rv.load_cases([item, item2], dirs)
    assert [c.id for c in cases] == ["sub-001", "sub-002"]
    assert set(cases[1].maps) == {"truth", "LP"}
    assert any("sub-002: no joint prediction" in m for m in messages)
    reports = rv.review_table(cases[:1])
    assert list(reports["method"]) == ["truth", "LP", "LP+manual", "joint"]
    by = reports.set_index("method")
    assert by.loc["truth", "correct"] and by.loc["LP+manual", "correct"] and by.loc["LP", "correct"]
    assert not by.loc["joint", "correct"]
    assert "LSA missing" in by.loc["joint", "reasons"] and by.loc["joint", "n_reasons"] >= 1
    assert by.loc["LP+manual", "mean_dice"] == pytest.approx(1.0)
    assert by.loc["joint", "mean_dice"] < 1.0 and math.isnan(by.loc["truth", "mean_dice"])
    assert by.loc["truth", "arch_side"] == "both"
    # in two spawned worker processes (the default profile's 150 subjects): the same table
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("fetalcmr.workers.MIN_ITEMS", 1)
        mp.setenv(WORKERS_ENV, "2")
        spawned = rv.review_table(cases)
    same = spawned[spawned["id"] == "sub-001"].reset_index(drop=True)
    pd.testing.assert_frame_equal(same.drop(columns="seconds"), reports.drop(columns="seconds"))
    # without truth (a real dataset without gt): no truth row, the verdicts remain
    no_gt, _ = rv.load_cases([item], dirs, with_truth=False)
    rep2 = rv.review_table(no_gt)
    assert "truth" not in set(rep2["method"]) and not rep2.set_index("method").loc["joint", "correct"]
    # gallery cases carry every map and the verdicts
    g = rr.gallery_cases(cases[:1], reports)[0]
    assert list(g["labelmaps"]) == ["truth", "LP", "LP+manual", "joint"]
    assert g["summary"]["joint"].startswith("WRONG") and g["summary"]["LP+manual"] == "correct"


def test_load_case_resamples_onto_prediction_grid(tmp_path: Path, daa_subject: Any) -> None:
    """A prediction on a half-resolution grid: truth and trachea are brought onto it."""
    sub = daa_subject
    save_nifti(tmp_path / "gt.nii.gz", sub.gt, sub.affine)
    coarse_affine = sub.affine.copy()
    coarse_affine[:3, :3] *= 2
    coarse = sub.gt[::2, ::2, ::2]
    save_nifti(tmp_path / "pred.nii.gz", coarse, coarse_affine)
    item = {"id": "s", "label": 2, "gt": str(tmp_path / "gt.nii.gz"), "image": str(tmp_path / "gt.nii.gz"),
            "meta": {"trachea_x_vox": 10.0}}
    case = rv.load_case(item, {"joint": tmp_path / "pred.nii.gz"})
    assert case.maps["truth"].shape == coarse.shape
    np.testing.assert_array_equal(case.maps["truth"], coarse)
    assert case.trachea_x_vox == pytest.approx(5.0)
    assert case.spacing_mm == pytest.approx((2 * 52.0 / 32,) * 3)


def test_docstring_examples() -> None:
    import doctest

    assert doctest.testmod(rv, raise_on_error=False).failed == 0


def test_correctly_classified_subsets() -> None:
    rows = [("joint", "a", 2, 2), ("joint", "b", 2, 1), ("joint", "c", 0, 0), ("separate", "b", 2, 2)]
    preds = pd.DataFrame(rows, columns=["method", "id", "label", "pred"])
    assert rv.correctly_classified(preds, "joint") == {"a", "c"}
    assert rv.correctly_classified(preds, "joint", cls=2) == {"a"}
    assert rv.correctly_classified(preds, "separate", cls=2) == {"b"}


def test_review_names_and_colours_come_from_the_registry() -> None:
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    from fetalcmr.methods import METHODS

    assert rv.review_order() == ("truth", "LP", "LP-only", "LP+manual", "λ = 0", "joint")  # the tables' method names
    assert (rv.TRUTH, rv.LP) == (METHODS["truth"].short, METHODS["lp"].short)
    rates = rr.correct_rates(_reports([("a", 2, "LP+manual", True), ("a", 2, "joint", False)]))
    fig, ax = plt.subplots()
    rr.plot_correct_rates(rates, ax)
    colours = {t.get_text(): h.get_facecolor() for t, h in zip(ax.get_legend().get_texts(),
                                                                ax.get_legend().legend_handles, strict=True)}
    plt.close(fig)
    assert colours == {"LP+manual": to_rgba(METHODS["net_lp_manual"].colour),
                       "joint": to_rgba(METHODS["joint"].colour)}


def test_plot_correct_rates_bars_match_table() -> None:
    import matplotlib.pyplot as plt

    rows = [("a", 2, "LP", True), ("b", 0, "LP", False), ("a", 2, "joint", True), ("b", 0, "joint", True)]
    rates = rr.correct_rates(_reports(rows))
    fig, ax = plt.subplots()
    rr.plot_correct_rates(rates, ax)
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == len(rates)  # one bar per method × class (NaN rates drawn at 0)
    assert heights == pytest.approx(rates["rate"].fillna(0).tolist())
    plt.close(fig)


def test_render_cases_one_row_per_map_with_verdicts(daa_subject: Any) -> None:
    import matplotlib.pyplot as plt

    broken = daa_subject.gt.copy()
    broken[broken == LABEL_INDEX["LSA"]] = 0
    case = rv.ReviewCase("s1", 2, (52.0 / 32,) * 3, {"truth": daa_subject.gt, "joint": broken},
                         trachea_mask=daa_subject.trachea > 0)
    reports = rv.review_table([case])
    fig = rr.render_cases([case], reports, ["truth", "LP+manual", "joint"], views=("superior",))
    labels = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert len(fig.axes) == 2  # LP+manual absent: truth and joint rows only
    assert any("s1 truth\ncorrect" in t for t in labels) and any("s1 joint\nWRONG" in t for t in labels)
    plt.close(fig)
    fig = rr.render_cases([case], reports, {"s1": ["joint"]}, views=("superior",))
    assert len(fig.axes) == 1
    plt.close(fig)
    with pytest.raises(ValueError, match="none of the cases"):
        rr.render_cases([case], reports, ["LP"])


def test_render_detail_coarser_for_huge_maps() -> None:
    small, huge = np.zeros((40, 40, 40), np.uint8), np.ones((40, 40, 40), np.uint8)
    small[5:10, 5:10, 5:10] = 4
    assert rr.render_detail([small]) == (1, 1.25)
    assert rr.render_detail([small, huge]) == (3, 3.0)  # 64 000 voxels: coarsest tier
    assert rr.render_detail([]) == (1, 1.25)


def test_worst_method() -> None:
    df = _reports([("a", 0, "truth", True), ("a", 0, "LP", False), ("a", 0, "joint", False), ("b", 0, "LP", True)])
    df.loc[df["method"] == "joint", "n_reasons"] = 3
    assert rr.worst_method(df, "a") == "joint" and rr.worst_method(df, "b") is None


def test_load_case_needs_a_class(tmp_path: Path) -> None:
    save_nifti(tmp_path / "p.nii.gz", np.zeros((4, 4, 4), np.uint8), np.eye(4))
    with pytest.raises(DataError, match="no anomaly class 'label'"):
        rv.load_case({"id": "s", "image": "img.nii.gz"}, {"joint": tmp_path / "p.nii.gz"})


def test_gallery_cases_write_with_coarse_detail(tmp_path: Path, daa_subject: Any) -> None:
    from fetalcmr.gallery import write_gallery

    huge = np.full_like(daa_subject.gt, LABEL_INDEX["AO"])
    huge[::3] = LABEL_INDEX["DAO"]
    case = rv.ReviewCase("s1", 2, (52.0 / 32,) * 3, {"truth": daa_subject.gt, "joint": daa_subject.gt})
    reports = rv.review_table([case])
    fine = rr.gallery_cases([case], reports)[0]
    assert fine["step_size"] == {"truth": 1, "joint": 1} and fine["decimate"] == {"truth": 1.25, "joint": 1.25}
    write_gallery(tmp_path / "fine", [fine])
    write_gallery(tmp_path / "coarse", [{**fine, "step_size": 3, "decimate": 3.0}])
    write_gallery(tmp_path / "half", [{**fine, "step_size": {"joint": 3}, "decimate": {"joint": 3.0}}])
    size = lambda d: (tmp_path / d / "case_s1.html").stat().st_size  # noqa: E731
    assert size("coarse") < 0.6 * size("fine")  # the case's detail reaches the surfaces
    assert size("coarse") < size("half") < size("fine")  # per-map detail: only joint coarser
    case.maps["joint"] = huge
    detail = rr.gallery_cases([case], rv.review_table([case]))[0]["step_size"]
    assert detail["truth"] == 1 and detail["joint"] > 1  # only the huge map is drawn coarser


def test_detail_per_map_names_each_map() -> None:
    small = np.zeros((40, 40, 40), np.uint8)
    small[:2, :2, :2] = 1
    huge = np.ones((40, 40, 40), np.uint8)
    assert rr.detail_per_map({"truth": small, "net": huge}) == {
        "step_size": {"truth": 1, "net": 3}, "decimate": {"truth": 1.25, "net": 3.0}}


# ----------------------------------------------------------------------------------------------
# Raw and post-processed; post-processing chosen on validation; the topology rule


def test_rates_and_mcnemar_per_postprocessing() -> None:
    rows = [("a", 2, "LP+manual", False), ("a", 2, "joint", True), ("b", 0, "LP+manual", True), ("b", 0, "joint", True)]
    raw = _reports(rows).assign(postprocessing="raw")
    post = _reports([(i, c, m, True) for i, c, m, _ in rows]).assign(postprocessing="post")
    reports = pd.concat([post, raw], ignore_index=True)  # "raw" is listed first whatever the order
    rates = rr.correct_rates(reports)
    assert list(rates.columns[:3]) == ["method", "postprocessing", "class"]
    assert list(dict.fromkeys(rates["postprocessing"])) == ["raw", "post"]
    by = rates.set_index(["method", "postprocessing", "class"])
    assert by.loc[("LP+manual", "raw", "all"), "n_correct"] == 1
    assert by.loc[("LP+manual", "post", "all"), "n_correct"] == 2
    assert (by.loc[("joint", "post", "all"), "ci_low"], by.loc[("joint", "post", "all"), "ci_high"]) == \
        pytest.approx(proportion_ci(2, 2))
    mc = rr.mcnemar_table(reports, "LP+manual", "joint", {"all": ["a", "b"]}).set_index("postprocessing")
    assert (mc.loc["raw", "only_b"], mc.loc["post", "only_b"]) == (1, 0) and mc.loc["post", "both_correct"] == 2
    assert "postprocessing" not in rr.correct_rates(raw.drop(columns="postprocessing")).columns


def _noisy(gt: np.ndarray) -> np.ndarray:
    pred = gt.copy()
    pred[0:2, 0:2, 0:2] = LABEL_INDEX["AO"]  # a stray piece of AO far from the arch
    return pred


def test_postprocessing_chosen_on_validation_softmax_and_applied(tmp_path: Path, daa_subject: Any) -> None:
    from fetalcmr.predict import save_softmax, softmax_file

    sub = daa_subject
    save_nifti(tmp_path / "lp.nii.gz", sub.gt, sub.affine)
    onehot = np.eye(12, dtype=np.float32)[_noisy(sub.gt)].transpose(3, 0, 1, 2)
    save_softmax(softmax_file(tmp_path / "softmax", "v1"), onehot, sub.affine)
    items = [{"id": "v1", "lp": str(tmp_path / "lp.nii.gz")}, {"id": "v2", "lp": str(tmp_path / "lp.nii.gz")},
             {"id": "v1-no-lp"}]
    preds, refs, ids = rv.validation_pairs(tmp_path / "softmax", items)
    assert ids == ["v1"]  # v2 has no softmax, the third no lp
    np.testing.assert_array_equal(preds[0], _noisy(sub.gt))
    np.testing.assert_array_equal(refs[0], sub.gt)
    choices = rv.choose_for_methods({"LP+manual": (preds, refs)}, rv.review_order(), range(1, 12),
                                    fallback="LP+manual")
    assert set(choices) == {"LP", "LP-only", "LP+manual", "λ = 0", "joint"}  # the truth is never post-processed
    assert LABEL_INDEX["AO"] in choices["LP+manual"].postprocessing.labels
    assert choices["joint"].chosen_on == "LP+manual" and choices["joint"] == choices["LP+manual"]
    none = rv.choose_for_methods({}, ["joint"], [4], fallback="LP+manual")["joint"]
    assert none.postprocessing.labels == () and none.chosen_on == ""
    table = rr.postprocessing_table({**choices, "x": none}).set_index("method")
    assert "AO" in table.loc["joint", "keep_largest"].split(";") and table.loc["joint", "chosen_on"] == "LP+manual"
    assert table.loc["LP+manual", "validation_subjects"] == 1
    assert (table.loc["x", "chosen_on"], table.loc["x", "keep_largest"]) == ("none", "")
    evidence = rr.postprocessing_evidence(choices).set_index(["chosen_on", "name"])
    assert set(evidence.index.get_level_values(0)) == {"LP+manual"}  # once, though four methods use it
    ao = evidence.loc[("LP+manual", "AO")]
    assert ao["keep_largest"] and ao["dice_largest"] == 1.0 > ao["dice_raw"] and ao["subjects"] == 1
    case = rv.ReviewCase("t", 2, (1.0,) * 3, {"truth": _noisy(sub.gt), "joint": _noisy(sub.gt)})
    post = rv.postprocessed([case], choices)[0]
    np.testing.assert_array_equal(post.maps["joint"], sub.gt)
    np.testing.assert_array_equal(post.maps["truth"], case.maps["truth"])  # the reference is left alone
    both = rv.review_both([case], [post]).set_index(["method", "postprocessing"])
    assert not both.loc[("joint", "raw"), "correct"] and both.loc[("joint", "post"), "correct"]


def test_rule_table_scores_and_confusion(tmp_path: Path, daa_subject: Any) -> None:
    sub = daa_subject
    save_nifti(tmp_path / "image.nii.gz", sub.image, sub.affine)
    no_ring = sub.gt.copy()
    no_ring[no_ring == LABEL_INDEX["AO"]] = 0  # no arch: undetermined
    case = rv.ReviewCase("s1", 2, (52.0 / 32,) * 3, {"truth": sub.gt, "joint": no_ring},
                         trachea_mask=sub.trachea > 0, image=str(tmp_path / "image.nii.gz"))
    rules = rv.rule_table([case])
    assert set(zip(rules["method"], rules["trachea"], strict=True)) == \
        {(m, t) for m in ("truth", "joint") for t in ("given", "image")}
    by = rules.set_index(["method", "trachea"])
    assert (by.loc[("truth", "given"), "rule_class"], by.loc[("truth", "image"), "rule_class"]) == ("DAA", "DAA")
    assert by.loc[("joint", "given"), "rule_cls"] == -1
    assert set(rv.rule_table([case], from_image=False)["trachea"]) == {"given"}
    blind = rv.rule_table([rv.ReviewCase("s2", 2, (1.0,) * 3, {"joint": no_ring})])  # no trachea, no image
    assert blind.empty and list(blind.columns) == list(rv.RULE_COLUMNS)
    assert rr.rule_scores(blind).empty and rr.rule_confusion(blind).empty
    preds = pd.DataFrame({"kind": "image", "seed": 0, "id": ["s1"], "label": [2], "pred": [1]})
    pairs = pd.DataFrame({"method": "joint", "id": ["s1"], "label": [2], "pred": [2]})
    networks = rr.network_classes(preds, pairs)
    assert list(networks["classifier"]) == ["DenseNet image seed 0", "pair joint"]
    assert rr.network_classes(None, None).empty
    scores = rr.rule_scores(rules, networks).set_index(["classifier", "trachea"])
    assert list(scores.index.get_level_values(0)[:2]) == ["rule on truth"] * 2  # review order
    assert scores.loc[("rule on truth", "image"), "balanced_accuracy"] == 1.0
    assert scores.loc[("rule on joint", "given"), "undetermined"] == 1
    assert scores.loc[("DenseNet image seed 0", ""), "n_correct"] == 0
    assert scores.loc[("pair joint", ""), "accuracy"] == 1.0
    conf = rr.rule_confusion(rules).set_index(["method", "trachea", "true"])
    assert conf.loc[("joint", "given", "DAA"), "undetermined"] == 1 and conf.loc[("truth", "image", "DAA"), "DAA"] == 1
    assert conf.loc[("truth", "image", "CoA")].sum() == 0
