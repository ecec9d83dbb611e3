"""Claims as data: every finding the compendium states, rebuilt from the tables in a figures
folder, with its effect, interval, p-value and a verdict decided by a fixed rule.

Each claim is one row of ``tab06_claims`` (notebook ``06_claims``) and one line of the README's
results block (:func:`render_readme_block`, between ``<!-- claims:start -->`` and
``<!-- claims:end -->``). Nothing here holds a result: every number is read from the stage
tables (``tab02_tests``, ``tab03_balanced_accuracy``, ``tab04_paired_tests``,
``tab05_correct_rate``, ``tab05_mcnemar``); the only constants are the paper's own values
(``PAPER_BACC``) and the significance level. ``make verify`` rebuilds the claims of a
regenerated run and fails when a verdict changes (:func:`fetalcmr.verify.compare_claims`).

**Columns.** ``claim`` (a stable id), ``origin`` (``paper``: a claim of Ramirez Gilliland et al.,
MELBA 2023; ``compendium``: a finding of this re-implementation), ``text``, ``metric``,
``effect`` (signed so that a positive effect is the direction the claim states), ``ci_low`` /
``ci_high`` (its 95 % interval, blank where the source table holds a test but no interval), ``p``,
``rule``, ``verdict``, ``source`` (the tables read) and ``evidence`` (the numbers in words).

**Verdicts** — ``supported``, ``not distinguishable`` or ``contradicted`` — by one of three rules:

* ``paired test`` — the source table holds a paired test of the claim's comparison (Wilcoxon
  signed-rank on per-subject Dice, exact McNemar on per-subject topology verdicts): *supported*
  when p < ``ALPHA`` and the effect is positive, *contradicted* when p < ``ALPHA`` and the effect
  is negative, *not distinguishable* otherwise (including no pairs or an undefined p).
* ``intervals`` — the table holds an estimate per group with its interval (Wilson intervals of
  topology rates) or the numbers to form one (balanced accuracy: mean, sd and number of seeds give
  the t-interval mean ± t(0.975, n − 1) · sd / √n); no per-seed pairing is in the table, so no test
  is formed. The effect's interval is the range of differences both groups' intervals allow,
  [low_a − high_b, high_a − low_b]: *supported* when it lies above 0, i.e. the two intervals do
  not overlap in the claimed order, *contradicted* when it lies below 0, *not distinguishable*
  when the intervals overlap. Both intervals hold together with probability ≥ 90 % (Bonferroni),
  about 99 % for two independent means of equal spread, so *supported* is conservative. A claim
  about reaching the paper's level compares one interval with the point ``PAPER_LEVEL``. A single
  seed (no sd) gives no interval: *not distinguishable*.
* ``every subject`` — a check that must hold for every test subject (the topology checker accepts
  every ground truth): *supported* when it does, *contradicted* otherwise.

A claim whose source table or row is missing (e.g. a dataset without ground truth has no Dice
tests) is left out of the table and listed by :func:`not_evaluated`.

>>> verdict_from_test(0.015, 0.0007), verdict_from_test(0.015, 0.3), verdict_from_test(-0.01, 0.01)
('supported', 'not distinguishable', 'contradicted')
>>> verdict_from_interval(0.19, 0.40), verdict_from_interval(-0.06, 0.14)
('supported', 'not distinguishable')
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from scipy import stats as sps

from fetalcmr.atomic import write_text_atomic
from fetalcmr.methods import get
from fetalcmr.verify import parse_cell

#: Significance level of the paired-test rule.
ALPHA: float = 0.05
#: The paper's balanced accuracy of the softmax + image classifier, mean (sd) (Ramirez Gilliland et al. 2023).
PAPER_BACC: float = 0.99
PAPER_BACC_SD: float = 0.01
#: "Reaches the paper's level": at least the paper's mean minus two of its sds (notebook 04 uses the same).
PAPER_LEVEL: float = round(PAPER_BACC - 2 * PAPER_BACC_SD, 10)
#: Name of the table notebook 06 writes.
CLAIMS_TABLE = "tab06_claims"
VERDICTS: tuple[str, ...] = ("supported", "not distinguishable", "contradicted")
RULE_TEST, RULE_INTERVALS, RULE_ALL = "paired test", "intervals", "every subject"
COLUMNS: tuple[str, ...] = ("claim", "origin", "text", "metric", "effect", "ci_low", "ci_high", "p", "rule",
                            "verdict", "source", "evidence")
MARK_START, MARK_END = "<!-- claims:start -->", "<!-- claims:end -->"

NAN = math.nan


def _finite(*values: float) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def verdict_from_test(effect: float, p: float, alpha: float = ALPHA) -> str:
    """The ``paired test`` rule: the sign of ``effect`` decides when ``p < alpha``."""
    if not _finite(effect, p) or p >= alpha or effect == 0:
        return "not distinguishable"
    return "supported" if effect > 0 else "contradicted"


def verdict_from_interval(low: float, high: float) -> str:
    """The ``intervals`` rule: the effect's interval above 0, below 0, or across it."""
    if not _finite(low, high):
        return "not distinguishable"
    return "supported" if low > 0 else "contradicted" if high < 0 else "not distinguishable"


def verdict_every(k: int, n: int) -> str:
    """The ``every subject`` rule: ``k`` of ``n`` subjects pass."""
    return "not distinguishable" if n == 0 else "supported" if k == n else "contradicted"


def t_interval(mean: float, sd: float, n: float, level: float = 0.95) -> tuple[float, float]:
    """The t-interval of a mean of ``n`` values with sample sd ``sd``; NaNs when it cannot be formed.

    >>> tuple(round(v, 3) for v in t_interval(0.6806, 0.02406, 3))
    (0.621, 0.74)
    """
    if not _finite(mean, sd, n) or n < 2:
        return NAN, NAN
    half = float(sps.t.ppf(0.5 + level / 2, int(n) - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


class Unavailable(LookupError):
    """A claim's source table or row is not in the folder."""


@dataclass(frozen=True)
class Evidence:
    """What a claim's source tables say: the numbers, the rule that judges them, in words."""

    metric: str
    effect: float
    ci_low: float
    ci_high: float
    p: float
    rule: str
    evidence: str
    passed: tuple[int, int] | None = None  #: (k, n) for the ``every subject`` rule

    @property
    def verdict(self) -> str:
        """The verdict of :attr:`rule` on these numbers."""
        if self.rule == RULE_TEST:
            return verdict_from_test(self.effect, self.p)
        if self.rule == RULE_INTERVALS:
            return verdict_from_interval(self.ci_low, self.ci_high)
        k, n = self.passed or (0, 0)
        return verdict_every(k, n)


class Tables:
    """The CSV tables of one figures folder, read on first use."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._cache: dict[str, pd.DataFrame] = {}

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in self._cache:
            path = self.folder / f"{name}.csv"
            if not path.exists():
                raise Unavailable(f"{name}.csv not in {self.folder}")
            try:
                self._cache[name] = pd.read_csv(path)
            except pd.errors.EmptyDataError:  # a table written without rows or columns
                self._cache[name] = pd.DataFrame()
        return self._cache[name]

    def row(self, name: str, **match: str) -> pd.Series:
        """The one row of table ``name`` whose columns equal ``match``."""
        table = self[name]
        missing = [c for c in match if c not in table.columns]
        if missing:
            raise Unavailable(f"{name}.csv has no column {', '.join(missing)}")
        sel = table
        for col, value in match.items():
            sel = sel[sel[col].astype(str) == value]
        if len(sel) != 1:
            where = ", ".join(f"{c} = {v!r}" for c, v in match.items())
            raise Unavailable(f"{name}.csv: {len(sel)} rows with {where}")
        return sel.iloc[0]


def _num(row: pd.Series, column: str) -> float:
    if column not in row.index:
        raise Unavailable(f"no column {column}")
    cell = parse_cell(row[column])
    return cell.value if cell is not None else NAN


def _p(p: float) -> str:
    return f"p = {p:.3g}" if _finite(p) else "p undefined"


def _iv(low: float, high: float, digits: int) -> str:
    return f"[{low:.{digits}f}, {high:.{digits}f}]" if _finite(low, high) else "[no interval]"


# --- the claims' evaluations -------------------------------------------------------------------

def _segmentation(other: str) -> Callable[[Tables], Evidence]:
    def evaluate(t: Tables) -> Evidence:
        c, o = get("net_lp_manual"), get(other)
        row = t.row("tab02_tests", comparison=f"{c.label} vs {o.label}")
        mean_c, mean_o = _num(row, f"mean_dice_{c.letter}"), _num(row, "mean_dice_other")
        p, n, k = _num(row, "p_value"), _num(row, "n_subjects"), _num(row, "subjects_improved")
        return Evidence(f"per-subject mean vessel Dice, ({c.letter}) − ({o.letter})", mean_c - mean_o, NAN, NAN, p,
                        RULE_TEST, f"({c.letter}) {mean_c:.3f} vs ({o.letter}) {mean_o:.3f}; "
                                   f"{k:.0f}/{n:.0f} subjects better; Wilcoxon {_p(p)}")
    return evaluate


def _bacc(t: Tables, kind: str) -> tuple[float, float, float, float, float]:
    """Mean over seeds, sd, seeds and the 95 % interval (bootstrap over seeds and subjects when the
    table has it, else a t-interval over seeds) of one input type's balanced accuracy."""
    row = t.row("tab03_balanced_accuracy", input=kind)
    if "bacc_mean" in row.index:
        mean, sd = _num(row, "bacc_mean"), _num(row, "bacc_sd")
    elif "balanced_accuracy" in row.index:  # only the formatted "mean (sd)" cell
        cell = parse_cell(row["balanced_accuracy"])
        mean, sd = (cell.value, cell.sd) if cell is not None else (NAN, NAN)
    else:
        raise Unavailable("tab03_balanced_accuracy.csv has no balanced accuracy column")
    n = _num(row, "seeds")
    if "bacc_ci_low" in row.index:
        return mean, sd, n, _num(row, "bacc_ci_low"), _num(row, "bacc_ci_high")
    return (mean, sd, n, *t_interval(mean, sd, n))


_KIND_NAMES = {"softmax+image": "softmax + image", "softmax": "softmax", "image": "image"}


def _classifier_order(a: str, b: str) -> Callable[[Tables], Evidence]:
    def evaluate(t: Tables) -> Evidence:
        ma, _, na, la, ha = _bacc(t, a)
        mb, _, nb, lb, hb = _bacc(t, b)
        seeds = f"{na:.0f}" if na == nb else f"{na:.0f} and {nb:.0f}"
        what = f"balanced accuracy, mean over seeds, {_KIND_NAMES[a]} − {_KIND_NAMES[b]}"
        try:
            row, sign = t.row("tab03_paired", a=a, b=b), 1.0
        except Unavailable:
            try:
                row, sign = t.row("tab03_paired", a=b, b=a), -1.0
            except Unavailable:  # older tables: compare the two intervals
                return Evidence(what, ma - mb, la - hb, ha - lb, NAN, RULE_INTERVALS,
                                f"{_KIND_NAMES[a]} {ma:.2f} {_iv(la, ha, 2)} vs {_KIND_NAMES[b]} {mb:.2f} "
                                f"{_iv(lb, hb, 2)} (mean [95 % t-interval] over {seeds} seeds)")
        low, high = sorted((sign * _num(row, "ci_low"), sign * _num(row, "ci_high")))
        return Evidence(what, ma - mb, low, high, NAN, RULE_INTERVALS,
                        f"{_KIND_NAMES[a]} {ma:.2f} vs {_KIND_NAMES[b]} {mb:.2f} over {seeds} seeds on "
                        f"{_num(row, 'n'):.0f} test subjects; difference {_iv(low, high, 3)} (95 % bootstrap "
                        "over seeds and subjects, same subjects)")
    return evaluate


def _classifier_level(t: Tables) -> Evidence:
    mean, _, n, low, high = _bacc(t, "softmax+image")
    return Evidence(f"balanced accuracy of softmax + image, mean over seeds − {PAPER_LEVEL:g}", mean - PAPER_LEVEL,
                    low - PAPER_LEVEL, high - PAPER_LEVEL, NAN, RULE_INTERVALS,
                    f"balanced accuracy {mean:.2f} {_iv(low, high, 2)} over {n:.0f} seeds; "
                    f"paper {PAPER_BACC:g} ({PAPER_BACC_SD:g}), reached at ≥ {PAPER_LEVEL:g}")


def _joint_dice(a: str, b: str, subset: str) -> Callable[[Tables], Evidence]:
    def evaluate(t: Tables) -> Evidence:
        try:
            row, sign = t.row("tab04_paired_tests", a=a, b=b, subset=subset), 1.0
        except Unavailable:
            row, sign = t.row("tab04_paired_tests", a=b, b=a, subset=subset), -1.0
        n, p = _num(row, "n"), _num(row, "p")
        mean_a, mean_b = (_num(row, "mean_a"), _num(row, "mean_b"))[:: int(sign)]
        effect = sign * _num(row, "mean_diff")
        where = f"all {n:.0f} test subjects" if subset == "all" else f"the {n:.0f} {subset}"
        return Evidence(f"per-subject mean Dice, {get(a).short} − {get(b).short}, {subset}", effect, NAN, NAN, p,
                        RULE_TEST, f"mean Dice {mean_a:.3f} ({get(a).short}) vs {mean_b:.3f} ({get(b).short}) "
                                   f"on {where}; Wilcoxon {_p(p)}")
    return evaluate


def _stage(t: Tables, name: str, post: str) -> dict[str, str]:
    """Row filter for raw or post-processed maps (``post``), for tables that have the column."""
    return {"postprocessing": post} if "postprocessing" in t[name].columns else {}


def _maps(post: str) -> str:
    return "post-processed" if post == "post" else "raw"


def _joint_topology(subset: str, post: str = "raw", against: str = "net_lp_manual") -> Callable[[Tables], Evidence]:
    def evaluate(t: Tables) -> Evidence:
        sep, joint = get(against).short, get("joint").short
        row = t.row("tab05_mcnemar", subset=subset, a=sep, b=joint, **_stage(t, "tab05_mcnemar", post))
        n, p = _num(row, "n"), _num(row, "p_value")
        both, only_a, only_b = _num(row, "both_correct"), _num(row, "only_a"), _num(row, "only_b")
        effect = (only_b - only_a) / n if n > 0 else NAN
        return Evidence(f"share topologically correct ({_maps(post)} maps), {joint} − {sep}, {subset}", effect, NAN,
                        NAN, p, RULE_TEST,
                        f"correct: {joint} {both + only_b:.0f}/{n:.0f} vs {sep} {both + only_a:.0f}/{n:.0f}; "
                        f"discordant {only_b:.0f} vs {only_a:.0f}; exact McNemar {_p(p)}")
    return evaluate


def _rate(t: Tables, method: str, post: str = "raw") -> tuple[float, float, float, float, float]:
    row = t.row("tab05_correct_rate", method=get(method).short, **{"class": "all"},
                **_stage(t, "tab05_correct_rate", post))
    return (_num(row, "n_correct"), _num(row, "n"), _num(row, "rate"), _num(row, "ci_low"), _num(row, "ci_high"))


def _topology_rates(a: str, b: str, post_a: str = "raw", post_b: str = "raw") -> Callable[[Tables], Evidence]:
    def evaluate(t: Tables) -> Evidence:
        ka, na, ra, la, ha = _rate(t, a, post_a)
        kb, nb, rb, lb, hb = _rate(t, b, post_b)
        name_a = get(a).short + ("" if post_a == post_b else f" {_maps(post_a)}")
        name_b = get(b).short + ("" if post_a == post_b else f" {_maps(post_b)}")
        maps = f" ({_maps(post_a)} maps)" if post_a == post_b else ""
        return Evidence(f"share topologically correct{maps}, {name_a} − {name_b}", ra - rb, la - hb, ha - lb,
                        NAN, RULE_INTERVALS,
                        f"{name_a} {ka:.0f}/{na:.0f} {_iv(la, ha, 2)} vs {name_b} {kb:.0f}/{nb:.0f} "
                        f"{_iv(lb, hb, 2)} (Wilson 95 %)")
    return evaluate


def _topology_truth(t: Tables) -> Evidence:
    k, n, rate, low, high = _rate(t, "truth")
    return Evidence("share of ground-truth label maps called topologically correct", rate, low, high, NAN, RULE_ALL,
                    f"{k:.0f}/{n:.0f} ground-truth label maps called correct",
                    passed=(int(k), int(n)) if _finite(k, n) else (0, 0))


def _rule_level(method: str, trachea: str) -> Callable[[Tables], Evidence]:
    def evaluate(t: Tables) -> Evidence:
        row = t.row("tab05_rule_scores", classifier=f"rule on {get(method).short}", trachea=trachea)
        bacc, low, high = _num(row, "balanced_accuracy"), _num(row, "ci_low"), _num(row, "ci_high")
        k, n = _num(row, "n_correct"), _num(row, "n")
        return Evidence(f"balanced accuracy of the topology rule on {get(method).short} (trachea: {trachea}) − "
                        f"{PAPER_LEVEL:g}", bacc - PAPER_LEVEL, low - PAPER_LEVEL, high - PAPER_LEVEL, NAN,
                        RULE_INTERVALS, f"balanced accuracy {bacc:.2f} {_iv(low, high, 2)} (stratified bootstrap), "
                                        f"{k:.0f}/{n:.0f} correct; paper (DenseNet) {PAPER_BACC:g}")
    return evaluate


@dataclass(frozen=True)
class Claim:
    """A stated finding: what it says, where its numbers are, how they are read."""

    id: str
    origin: str  #: ``paper`` or ``compendium``
    text: str
    source: tuple[str, ...]
    evaluate: Callable[[Tables], Evidence]


CLAIMS: tuple[Claim, ...] = (
    Claim("seg-c-vs-a", "paper", "The segmenter trained on propagated labels plus manual masks (c) segments the "
          "vessels better than label propagation (a).", ("tab02_tests",), _segmentation("lp")),
    Claim("seg-c-vs-b", "paper", "The segmenter trained on propagated labels plus manual masks (c) segments the "
          "vessels better than the same network trained on propagated labels only (b).", ("tab02_tests",),
          _segmentation("net_lp")),
    Claim("cls-si-vs-s", "paper", "The softmax + image classifier is more accurate than the softmax-only one.",
          ("tab03_balanced_accuracy", "tab03_paired"), _classifier_order("softmax+image", "softmax")),
    Claim("cls-si-vs-image", "paper", "The softmax + image classifier is more accurate than the image-only one.",
          ("tab03_balanced_accuracy", "tab03_paired"), _classifier_order("softmax+image", "image")),
    Claim("cls-s-vs-image", "paper", "A classifier reading the segmenter's softmax is more accurate than one "
          "reading the image alone.", ("tab03_balanced_accuracy", "tab03_paired"),
          _classifier_order("softmax", "image")),
    Claim("cls-si-level", "paper", f"The softmax + image classifier reaches the paper's balanced accuracy "
          f"({PAPER_BACC:g}).", ("tab03_balanced_accuracy",), _classifier_level),
    Claim("joint-dice-daa", "paper", "Joint training improves the Dice of correctly classified double arches (DAA) "
          "over the separately trained pair.", ("tab04_paired_tests",),
          _joint_dice("joint", "separate", "DAA classified correctly")),
    Claim("joint-topology-daa", "paper", "Joint training makes more correctly classified DAA segmentations "
          "topologically correct than the separately trained pair.", ("tab05_mcnemar",),
          _joint_topology("DAA classified correctly (joint)")),
    Claim("joint-dice-all", "compendium", "Joint fine-tuning raises the mean Dice over the separately trained pair "
          "on all test subjects.", ("tab04_paired_tests",), _joint_dice("joint", "separate", "all")),
    Claim("lambda0-dice-all", "compendium", "Fine-tuning with the same steps but without the classification term "
          "(λ = 0) also raises the mean Dice over the separately trained pair.", ("tab04_paired_tests",),
          _joint_dice("lambda0", "separate", "all")),
    Claim("joint-vs-lambda0", "compendium", "The classification term itself raises the mean Dice: joint training "
          "beats the λ = 0 control with the same steps.", ("tab04_paired_tests",),
          _joint_dice("joint", "lambda0", "all")),
    Claim("joint-topology-all", "compendium", "Joint training makes more test segmentations topologically correct "
          "than the separately trained pair.", ("tab05_mcnemar",), _joint_topology("all")),
    Claim("joint-vs-lambda0-topology-post", "compendium", "The classification term itself makes more "
          "post-processed test segmentations topologically correct: joint training beats the λ = 0 control with "
          "the same steps.", ("tab05_mcnemar",), _joint_topology("all", "post", against="lambda0")),
    Claim("joint-vs-lambda0-topology-daa", "compendium", "The classification term itself makes more "
          "post-processed DAA segmentations topologically correct: joint training beats the λ = 0 control with "
          "the same steps on the DAA test subjects.", ("tab05_mcnemar",),
          _joint_topology("DAA", "post", against="lambda0")),
    Claim("topology-lp-vs-c", "compendium", "Label propagation is topologically correct more often than the "
          "network trained on it plus the manual masks (c).", ("tab05_correct_rate",),
          _topology_rates("lp", "net_lp_manual")),
    Claim("topology-truth", "compendium", "The automated topology check accepts every ground-truth label map.",
          ("tab05_correct_rate",), _topology_truth),
    Claim("postprocessing-topology", "compendium", "Keeping the largest piece of each label (chosen on the "
          "validation split) makes more LP+manual (c) segmentations topologically correct.",
          ("tab05_correct_rate",), _topology_rates("net_lp_manual", "net_lp_manual", "post", "raw")),
    Claim("joint-topology-all-post", "compendium", "After that clean-up, joint training still makes more test "
          "segmentations topologically correct than the separately trained pair.", ("tab05_mcnemar",),
          _joint_topology("all", "post")),
    Claim("rule-level", "compendium", f"The topology rule (a ring → DAA, else the arch's side of a trachea found "
          f"in the image) on the post-processed joint segmentations reaches the paper's balanced accuracy "
          f"({PAPER_BACC:g}).", ("tab05_rule_scores",), _rule_level("joint", "image")),
)


def _evaluate(folder: Path) -> tuple[list[dict[str, object]], list[tuple[str, str]]]:
    tables = Tables(Path(folder))
    rows, skipped = [], []
    for claim in CLAIMS:
        try:
            ev = claim.evaluate(tables)
        except Unavailable as err:
            skipped.append((claim.id, str(err)))
            continue
        rows.append({"claim": claim.id, "origin": claim.origin, "text": claim.text, "metric": ev.metric,
                     "effect": ev.effect, "ci_low": ev.ci_low, "ci_high": ev.ci_high, "p": ev.p, "rule": ev.rule,
                     "verdict": ev.verdict, "source": ", ".join(claim.source), "evidence": ev.evidence})
    return rows, skipped


def build_claims(folder: str | Path) -> pd.DataFrame:
    """Return the claims table of the tables in ``folder`` (one row per claim it can evaluate)."""
    rows, _ = _evaluate(Path(folder))
    return pd.DataFrame(rows, columns=list(COLUMNS)).astype({c: float for c in ("effect", "ci_low", "ci_high", "p")})


def not_evaluated(folder: str | Path) -> list[tuple[str, str]]:
    """Return ``(claim id, why)`` for every claim the tables in ``folder`` cannot evaluate."""
    return _evaluate(Path(folder))[1]


# --- the README block ----------------------------------------------------------------------------

def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _summary(claims: pd.DataFrame) -> str:
    counts = claims["verdict"].value_counts()
    parts = [f"{counts.get(v, 0)} {v}" for v in VERDICTS]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def render_readme_block(claims: pd.DataFrame) -> str:
    """Return the README's results block (markers included) for a claims table.

    Only the table's text columns are used, so the block is the same whether ``claims`` was built
    in memory or read back from ``tab06_claims.csv``.
    """
    lines = [MARK_START,
             "<!-- written by fetalcmr.claims from the tables in figures/ (notebook 06_claims); "
             "do not edit by hand -->"]
    for origin, title in (("paper", "The paper's claims"), ("compendium", "Further findings of this compendium")):
        part = claims[claims["origin"] == origin]
        if part.empty:
            continue
        lines += ["", f"**{title}** ({len(part)}: {_summary(part)}):", "",
                  "| claim | evidence (synthetic test subjects) | verdict | table |", "| --- | --- | --- | --- |"]
        lines += [f"| {_cell(r.text)} | {_cell(r.evidence)} | **{r.verdict}** | "
                  + ", ".join(f"`{s.strip()}`" for s in str(r.source).split(",")) + " |"
                  for r in part.itertuples(index=False)]
    if claims.empty:
        lines += ["", "No claim could be evaluated from these tables."]
    lines += ["", f"*Supported*: a paired test with p < {ALPHA:g} in the claimed direction, or 95 % intervals "
                  "that do not overlap in the claimed order; *contradicted*: the same in the opposite direction; "
                  "*not distinguishable*: neither; a check of every subject is *supported* only when every subject "
                  "passes. The rules and every claim are in `fetalcmr/claims.py` "
                  "([docs/design.md §7](docs/design.md)); the table is `figures/tab06_claims.csv`.",
              MARK_END]
    return "\n".join(lines)


def readme_block(text: str, mark_start: str = MARK_START, mark_end: str = MARK_END) -> str | None:
    """Return the block of a README's ``text`` between the markers (included; the claims block by
    default), or None without markers."""
    start, end = text.find(mark_start), text.find(mark_end)
    if start < 0 or end < start:
        return None
    return text[start:end + len(mark_end)]


def replace_readme_block(text: str, block: str, mark_start: str = MARK_START, mark_end: str = MARK_END) -> str:
    """Return ``text`` with its block between the markers replaced by ``block``; the markers must be there."""
    current = readme_block(text, mark_start, mark_end)
    if current is None:
        raise ValueError(f"no {mark_start} … {mark_end} markers in the README: add them where the block goes")
    return text.replace(current, block, 1)


def write_readme_block(readme: str | Path, block: str, mark_start: str = MARK_START, mark_end: str = MARK_END) -> bool:
    """Write ``block`` between its markers in ``readme`` (atomically); True when it changed."""
    path = Path(readme)
    text = path.read_text()
    new = replace_readme_block(text, block, mark_start, mark_end)
    if new == text:
        return False
    write_text_atomic(path, new)
    return True


def update_readme(readme: str | Path, claims: pd.DataFrame) -> bool:
    """Write the claims block of ``claims`` into ``readme`` (atomically); True when it changed."""
    return write_readme_block(readme, render_readme_block(claims))


def main(argv: list[str] | None = None) -> int:
    """Print the claims of a figures folder; optionally write or check the README's block."""
    from fetalcmr.notebook import REPO_ROOT

    parser = argparse.ArgumentParser(prog="python -m fetalcmr.claims", description=__doc__.split("\n\n")[0])
    parser.add_argument("--figures", type=Path, default=REPO_ROOT / "figures")
    parser.add_argument("--readme", type=Path, default=REPO_ROOT / "README.md")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write-readme", action="store_true", help="replace the README's claims block")
    action.add_argument("--check-readme", action="store_true", help="exit 1 when the README's block is out of date")
    args = parser.parse_args(argv)
    claims = build_claims(args.figures)
    print(claims[["claim", "verdict", "evidence"]].to_string(index=False))
    for cid, why in not_evaluated(args.figures):
        print(f"not evaluated: {cid} ({why})")
    if args.write_readme:
        print(f"{args.readme}: " + ("claims block updated" if update_readme(args.readme, claims) else "up to date"))
    elif args.check_readme:
        current = readme_block(args.readme.read_text())
        if current != render_readme_block(claims):
            print(f"{args.readme}: the claims block is out of date with {args.figures} (run with --write-readme)")
            return 1
        print(f"{args.readme}: claims block up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
