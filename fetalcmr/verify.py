"""``make verify``: regenerate the tables from a clean run and compare them with the committed
ones, cell by cell within a tolerance derived from each number's own measured spread, and check
that every claim (:mod:`fetalcmr.claims`) keeps its verdict. Every difference is printed, the
claims first; the exit code is 1 when there is one.

The smoke profile has no committed results (its numbers are meaningless), so ``verify`` at smoke
compares two clean runs with each other: it checks that the pipeline is deterministic.

**Cells are read as written** (:func:`parse_cell`): ``0.68 (0.02)`` is a mean with its sd,
``0.62 [0.55, 0.70]`` an estimate with its interval, ``2/27`` a count out of a total,
``25 %`` a percentage, ``–``, ``n/a`` or an empty cell a missing value; anything else that is not
a number is text and must be equal.

**Tolerances** (:func:`tolerance`; ``docs/design.md`` §7). A regenerated number fails when it
differs from the committed one by more than the first rule that applies, taken from the committed
table:

1. run-time columns (``seconds…``, ``…_s``) are not compared;
2. p-values (``p``, ``p_value``) fail only when the decision at ``ALPHA`` flips: a p-value's size
   is not reproducible at these sample sizes, its side of α is what a reader takes from it;
3. sample sizes (``SIZE_COLUMNS``: ``n``, ``seeds``, ``support``…) must be equal, and so must
   the total of a ``k/n`` cell;
4. a cell with its own spread: ``K_SD`` × its sd (``m (s)``), or its interval's half-width
   (``m [lo, hi]``);
5. a count of subjects out of a total (``k/n`` cells and ``COUNT_OF`` columns such as
   ``subjects_improved`` of ``n_subjects``): the half-width of the 95 % Wilson interval of k/n,
   in subjects;
6. a column with a spread in its row: ``K_SD`` × the sibling sd column (``dice_sd`` for
   ``dice_mean`` and ``dice_CoA``, ``bacc_sd`` for ``bacc_mean``, ``recall SD`` for
   ``recall mean``); the half-width of the row's ``ci_low``/``ci_high`` for the estimate it
   brackets (``rate``, ``effect``) and for the bounds themselves;
7. an sd: ``K_SD`` × sd / √(2(n − 1)) (the standard error of a sample sd) with n from the row's
   size column, or the sd itself when the row has none (the value for n = 3 seeds);
8. a signed-rank statistic (``statistic``, ``wilcoxon_W``): ``K_SD`` × its sd under the null,
   √(n(n + 1)(2n + 1)/24);
9. any other number, which its table gives no spread for: ``atol + rtol × |committed|`` (the
   former global rule, ``--atol``/``--rtol``); the message names this rule.

Every tolerance is at least the resolution of the committed cell (half a unit of its last
written decimal for formatted cells; 5e-4 relative for the tables' four significant digits), so
two runs that round alike never differ. ``K_SD = 2`` is the normal 95 % quantile, rounded.

**Claims.** Both folders' claims are rebuilt from their tables with :func:`fetalcmr.claims.build_claims`
(so a stale or missing claims table cannot hide a change); a claim whose verdict differs, or that
can no longer be evaluated, is a failure naming the claim. A claims table present in a folder
must agree with the claims its tables give, and at the default profile the README's claims block
must be the one the committed tables render to.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fetalcmr.notebook import REPO_ROOT
from fetalcmr.stats import proportion_ci

#: Columns holding run times (``seconds…``, ``…_s``, ``…_s_…``): machine-dependent, not compared.
TIMING_COLUMN = re.compile(r"seconds|(^|_)s(_|$)")
#: Fallback tolerance (rule 9) for numbers whose table gives no spread.
RTOL: float = 0.05
ATOL: float = 0.02
#: Multiple of an sd that a regenerated value may differ by (≈ the normal 97.5 % quantile).
K_SD: float = 2.0
#: Significance level whose decision a regenerated p-value must keep.
ALPHA: float = 0.05
#: Sample sizes: a regenerated table must have the same.
SIZE_COLUMNS: frozenset[str] = frozenset({"n", "n_subjects", "subjects", "support", "seeds", "channels", "n_daa",
                                          "total", "training", "validation", "testing", "lambda"})
#: Counts of subjects and the column holding their total (rule 5).
COUNT_OF: Mapping[str, str] = {"subjects_improved": "n_subjects", "n_correct": "n", "only_a": "n", "only_b": "n",
                               "both_correct": "n", "both_wrong": "n", "n_daa_correct": "n_daa"}
#: Columns holding a p-value (rule 2) and a signed-rank statistic (rule 8).
P_COLUMN = re.compile(r"^(p|p_value|pvalue|p_.+|.+_p)$")
STATISTIC_COLUMNS: frozenset[str] = frozenset({"statistic", "wilcoxon_W"})
#: Estimates that a row's ``ci_low``/``ci_high`` bracket (rule 6).
ESTIMATE_COLUMNS: frozenset[str] = frozenset({"rate", "effect", "estimate", "ci_low", "ci_high"})
SD_COLUMN = re.compile(r"(^|[_ ])(sd|SD)$")
#: Written forms of a missing value.
MISSING: frozenset[str] = frozenset({"", "nan", "NaN", "NA", "n/a", "N/A", "None", "–", "—", "-"})

_NUM = r"[-+−]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_MEAN_SD = re.compile(rf"^({_NUM})\s*\(\s*({_NUM})\s*\)$")
_INTERVAL = re.compile(rf"^({_NUM})\s*[\[(]\s*({_NUM})\s*(?:,|;|–|—|\bto\b)\s*({_NUM})\s*[\])]$")
_FRACTION = re.compile(rf"^(\d+)\s*/\s*(\d+)(?:\s*\(\s*{_NUM}\s*%\s*\))?$")
_PERCENT = re.compile(rf"^({_NUM})\s*%$")


@dataclass(frozen=True)
class Cell:
    """A table cell read as a number: its value and whatever spread it was written with."""

    value: float  #: NaN for a missing value
    sd: float = math.nan  #: ``m (s)``
    low: float = math.nan  #: ``m [low, high]``
    high: float = math.nan
    total: int | None = None  #: ``k/total``; ``value`` is then k
    percent: bool = False  #: written as ``x %`` (``value`` is x)
    decimals: int | None = None  #: decimals of a formatted cell as written (its resolution)

    @property
    def missing(self) -> bool:
        """True for a missing value (NaN)."""
        return math.isnan(self.value)


def _float(text: str) -> float:
    return float(text.replace("−", "-"))


def _decimals(text: str) -> int:
    mantissa = re.split(r"[eE]", text)[0]
    return len(mantissa.split(".")[1]) if "." in mantissa else 0


def parse_cell(raw: object) -> Cell | None:
    """Read a table cell as a number with its spread; None when it is text.

    >>> parse_cell("0.68 (0.02)")
    Cell(value=0.68, sd=0.02, low=nan, high=nan, total=None, percent=False, decimals=2)
    >>> c = parse_cell("0.62 [0.55, 0.70]"); (c.value, c.low, c.high)
    (0.62, 0.55, 0.7)
    >>> parse_cell("2/27").value, parse_cell("2/27").total, parse_cell("12.5 %").value
    (2.0, 27, 12.5)
    >>> parse_cell("–").missing, parse_cell("6.332e-05").value, parse_cell("AO")
    (True, 6.332e-05, None)
    """
    if raw is None or (isinstance(raw, float) and math.isnan(raw)):
        return Cell(math.nan)
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        return Cell(float(raw))
    text = str(raw).strip()
    if text in MISSING:
        return Cell(math.nan)
    if m := _MEAN_SD.match(text):
        return Cell(_float(m[1]), sd=_float(m[2]), decimals=max(_decimals(m[1]), _decimals(m[2])))
    if m := _INTERVAL.match(text):
        return Cell(_float(m[1]), low=_float(m[2]), high=_float(m[3]),
                    decimals=max(_decimals(m[1]), _decimals(m[2]), _decimals(m[3])))
    if m := _FRACTION.match(text):
        return Cell(float(m[1]), total=int(m[2]), decimals=0)
    if m := _PERCENT.match(text):
        return Cell(_float(m[1]), percent=True, decimals=_decimals(m[1]))
    if text.lower() in {"inf", "+inf", "-inf", "−inf", "infinity", "-infinity"}:
        return Cell(_float(text.lower().replace("infinity", "inf")))
    if re.fullmatch(_NUM, text):
        return Cell(_float(text))
    return None


@dataclass(frozen=True)
class Tolerance:
    """How far a regenerated number may be from the committed one, and why."""

    value: float  #: allowed absolute difference (0: must be equal)
    rule: str  #: the rule that set it, for the message
    decision: bool = False  #: a p-value: only the decision at ``ALPHA`` is compared


def _resolution(cell: Cell) -> float:
    if cell.decimals is not None:
        return 0.5 * 10.0 ** -cell.decimals
    return 5e-4 * abs(cell.value) if math.isfinite(cell.value) else 0.0


def _sibling_sd(column: str, row: Mapping[str, Cell | None]) -> tuple[str, float] | None:
    candidates = [f"{column}_sd", f"{column} SD", f"{column} sd"]
    for suffix, sd_suffixes in (("_mean", ("_sd",)), (" mean", (" SD", " sd"))):
        if column.endswith(suffix):
            candidates += [column[: -len(suffix)] + s for s in sd_suffixes]
    stem = column.split("_")[0]
    if stem != column:
        candidates.append(f"{stem}_sd")
    for name in candidates:
        cell = row.get(name)
        if name != column and cell is not None and math.isfinite(cell.value):
            return name, cell.value
    return None


def _size_of(row: Mapping[str, Cell | None], names: tuple[str, ...] = ("n", "n_subjects", "subjects", "seeds")
             ) -> float | None:
    for name in names:
        cell = row.get(name)
        if cell is not None and math.isfinite(cell.value) and cell.value > 0:
            return cell.value
    return None


def _wilson_halfwidth(k: float, n: float) -> float:
    if not (math.isfinite(k) and math.isfinite(n)) or not 0 <= k <= n:
        return math.nan
    low, high = proportion_ci(int(round(k)), int(round(n)))
    return (high - low) / 2


def tolerance(column: str, cell: Cell, row: Mapping[str, Cell | None], *, k_sd: float = K_SD, rtol: float = RTOL,
              atol: float = ATOL) -> Tolerance:
    """Return the tolerance of the committed ``cell`` of ``column`` in ``row`` (parsed cells by column).

    >>> row = {"bacc_mean": Cell(0.68), "bacc_sd": Cell(0.024), "seeds": Cell(3.0)}
    >>> tolerance("bacc_mean", row["bacc_mean"], row)
    Tolerance(value=0.048, rule='2 × bacc_sd', decision=False)
    >>> tolerance("seeds", row["seeds"], row).value
    0.0
    """
    floor = _resolution(cell)

    def tol(value: float, rule: str) -> Tolerance:
        return Tolerance(max(value, floor) if math.isfinite(value) else floor, rule)

    if P_COLUMN.match(column):
        return Tolerance(0.0, f"same decision at α = {ALPHA:g}", decision=True)
    if column in SIZE_COLUMNS:
        return Tolerance(0.0, "a sample size: equal")
    if math.isfinite(cell.sd):
        return tol(k_sd * cell.sd, f"{k_sd:g} × the cell's sd")
    if math.isfinite(cell.low) and math.isfinite(cell.high):
        return tol((cell.high - cell.low) / 2, "the cell's interval half-width")
    if cell.total is not None:
        return tol(_wilson_halfwidth(cell.value, cell.total) * cell.total, "Wilson 95 % half-width of k/n, in counts")
    if column in COUNT_OF and (total := row.get(COUNT_OF[column])) is not None and total.value > 0:
        return tol(_wilson_halfwidth(cell.value, total.value) * total.value,
                   f"Wilson 95 % half-width of {column}/{COUNT_OF[column]}, in counts")
    if SD_COLUMN.search(column):
        n = _size_of(row)
        if n is not None and n > 1:
            return tol(k_sd * abs(cell.value) / math.sqrt(2 * (n - 1)), f"{k_sd:g} × the standard error of an sd")
        return tol(abs(cell.value), "the sd itself")
    if column in ESTIMATE_COLUMNS:
        low, high = row.get("ci_low"), row.get("ci_high")
        if low is not None and high is not None and math.isfinite(low.value) and math.isfinite(high.value):
            return tol((high.value - low.value) / 2, "half-width of the row's ci_low–ci_high")
    if sibling := _sibling_sd(column, row):
        name, sd = sibling
        return tol(k_sd * sd, f"{k_sd:g} × {name}")
    if column in STATISTIC_COLUMNS and (n := _size_of(row, ("n", "n_subjects"))) is not None:
        return tol(k_sd * math.sqrt(n * (n + 1) * (2 * n + 1) / 24), f"{k_sd:g} × the statistic's null sd")
    return tol(atol + rtol * abs(cell.value) if math.isfinite(cell.value) else 0.0,
               f"no spread in the table: atol {atol:g} + rtol {rtol:g}")


def cell_difference(ref: Cell, new: Cell, tol: Tolerance) -> str | None:
    """Why ``new`` does not reproduce ``ref`` within ``tol``; None when it does."""
    if ref.missing or new.missing:
        return None if ref.missing and new.missing else "missing in one run only"
    if tol.decision:
        return None if (ref.value < ALPHA) == (new.value < ALPHA) else f"the decision at α = {ALPHA:g} flips"
    if ref.total is not None and ref.total != new.total:
        return f"total {ref.total} vs {new.total}"
    if math.isinf(ref.value) or math.isinf(new.value):
        return None if ref.value == new.value else "infinite in one run only"
    delta = abs(new.value - ref.value)
    if delta <= tol.value * (1 + 1e-9):
        return None
    return f"|Δ| {delta:.3g} > {tol.value:.3g} ({tol.rule})"


@dataclass(frozen=True)
class Difference:
    """One table cell (or a whole table, row, column or claim) that did not reproduce."""

    table: str
    where: str
    reference: str
    regenerated: str
    reason: str = ""

    def __str__(self) -> str:
        text = f"{self.table} {self.where}: committed {self.reference} vs regenerated {self.regenerated}"
        return f"{text} ({self.reason})" if self.reason else text


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def compare_tables(reference: Path, regenerated: Path, *, rtol: float = RTOL, atol: float = ATOL,
                   k_sd: float = K_SD) -> list[Difference]:
    """Differences between two CSV tables (shape, columns, then cell by cell; run times skipped)."""
    name = reference.name
    if not regenerated.exists():
        return [Difference(name, "(file)", "present", "missing")]
    ref, new = _read(reference), _read(regenerated)
    if list(ref.columns) != list(new.columns):
        return [Difference(name, "(columns)", str(list(ref.columns)), str(list(new.columns)))]
    if len(ref) != len(new):
        return [Difference(name, "(rows)", str(len(ref)), str(len(new)))]
    diffs = []
    for i in range(len(ref)):
        raw_row = {str(c): ref.iat[i, j] for j, c in enumerate(ref.columns)}
        row = {c: parse_cell(v) for c, v in raw_row.items()}
        for j, col in enumerate(ref.columns):
            col = str(col)
            if TIMING_COLUMN.search(col):
                continue
            a, b = raw_row[col], new.iat[i, j]
            ca, cb = row[col], parse_cell(b)
            if ca is None or cb is None:
                reason = None if a.strip() == b.strip() else ("" if ca is None and cb is None else "text vs number")
            else:
                reason = cell_difference(ca, cb, tolerance(col, ca, row, k_sd=k_sd, rtol=rtol, atol=atol))
            if reason is not None:
                diffs.append(Difference(name, f"row {i + 1}, column {col!r}", a, b, reason))
    return diffs


def compare_claims(reference: Path, regenerated: Path) -> list[Difference]:
    """Claims whose verdict differs between two folders of tables (both rebuilt from their tables),
    claims one folder cannot evaluate, and claims tables out of date with their folder's tables."""
    from fetalcmr.claims import CLAIMS_TABLE, build_claims, not_evaluated

    table = f"{CLAIMS_TABLE}.csv"
    built = {}
    diffs: list[Difference] = []
    for which, folder in (("committed", reference), ("regenerated", regenerated)):
        claims = build_claims(folder)
        built[which] = claims.set_index("claim")
        stored = folder / table
        if stored.exists():
            on_disk = _read(stored).set_index("claim")["verdict"]
            for cid in sorted(set(on_disk.index) | set(built[which].index)):
                was, now = on_disk.get(cid, "absent"), built[which]["verdict"].get(cid, "not evaluated")
                if was != now:
                    diffs.append(Difference(table, f"claim {cid!r} in the {which} folder", f"file says {was}",
                                            f"its tables give {now}", f"{table} is out of date: re-run notebook 06"))
    ref, new = built["committed"], built["regenerated"]
    missing = dict(not_evaluated(regenerated))
    for cid in ref.index:
        text = ref.at[cid, "text"]
        if cid not in new.index:
            diffs.append(Difference("claims", f"claim {cid!r}", ref.at[cid, "verdict"], "not evaluated",
                                    f"{text!r}: {missing.get(cid, 'no evidence')}"))
        elif ref.at[cid, "verdict"] != new.at[cid, "verdict"]:
            diffs.append(Difference("claims", f"claim {cid!r}", ref.at[cid, "verdict"], new.at[cid, "verdict"],
                                    f"{text!r}; regenerated: {new.at[cid, 'evidence']}"))
    return diffs


def compare_folders(reference: Path, regenerated: Path, *, rtol: float = RTOL, atol: float = ATOL,
                    k_sd: float = K_SD, claims: bool = True) -> list[Difference]:
    """The claims that changed verdict, then the differences of every ``tab*.csv`` of ``reference``.

    The claims table itself is checked through its claims (:func:`compare_claims`), not cell by cell.
    """
    from fetalcmr.claims import CLAIMS_TABLE

    tables = sorted(reference.glob("tab*.csv"))
    if not tables:
        return [Difference(str(reference), "(folder)", "tables tab*.csv", "none found")]
    diffs: list[Difference] = compare_claims(reference, regenerated) if claims else []
    for table in tables:
        if table.stem != CLAIMS_TABLE:
            diffs += compare_tables(table, regenerated / table.name, rtol=rtol, atol=atol, k_sd=k_sd)
    return diffs


def check_readme(readme: Path, figures: Path) -> list[Difference]:
    """The README's claims block against the one ``figures``' tables render to (empty when current)."""
    from fetalcmr.claims import build_claims, readme_block, render_readme_block

    if not readme.exists():
        return []
    current = readme_block(readme.read_text())
    if current is None:
        return [Difference(readme.name, "claims block", "markers", "not found")]
    if current != render_readme_block(build_claims(figures)):
        return [Difference(readme.name, "claims block", "as in the README", "differs from the tables",
                           "run notebook 06 (or python -m fetalcmr.claims --write-readme)")]
    return []


def _fresh_run(profile: str, root: Path, seed: int) -> Path:
    from fetalcmr.runner import run_pipeline

    if root.exists():
        shutil.rmtree(root)
    figures = root / "figures"
    run_pipeline(profile, seed=seed, run_dir=str(root / "run"), figures_dir=str(figures))
    return figures


def verify(profile: str = "default", *, seed: int = 0, reference: Path | None = None,
           regenerated: Path | None = None, work_dir: Path | None = None, rtol: float = RTOL,
           atol: float = ATOL, k_sd: float = K_SD) -> list[Difference]:
    """Regenerate ``profile`` from scratch in ``work_dir`` and compare its tables with ``reference``.

    ``reference`` defaults to the committed ``figures/`` for the default profile (whose README
    claims block is checked too); for other profiles a second clean run is the reference.
    ``regenerated`` compares an existing folder (e.g. the ``figures_dir`` of an earlier
    ``make reproduce``) instead of running again.
    """
    work = work_dir or REPO_ROOT / "data" / "runs" / f"verify-{profile}"
    committed = reference is None and profile == "default"
    if reference is None:
        reference = REPO_ROOT / "figures" if profile == "default" else _fresh_run(profile, work / "first", seed)
    if regenerated is None:
        regenerated = _fresh_run(profile, work / "second", seed)
    diffs = compare_folders(reference, regenerated, rtol=rtol, atol=atol, k_sd=k_sd)
    if committed:
        diffs += check_readme(REPO_ROOT / "README.md", reference)
    return diffs


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: exit 0 when every table and claim reproduces, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="python -m fetalcmr.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reference", type=Path, default=None, help="folder of committed tables")
    parser.add_argument("--regenerated", type=Path, default=None,
                        help="compare this folder of tables instead of regenerating them")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the clean runs go (default data/runs/verify-PROFILE)")
    parser.add_argument("--k-sd", type=float, default=K_SD, help="multiple of a measured sd a value may move")
    parser.add_argument("--rtol", type=float, default=RTOL, help="fallback for numbers without a spread")
    parser.add_argument("--atol", type=float, default=ATOL, help="fallback for numbers without a spread")
    args = parser.parse_args(argv)
    diffs = verify(args.profile, seed=args.seed, reference=args.reference, regenerated=args.regenerated,
                   work_dir=args.work_dir, rtol=args.rtol, atol=args.atol, k_sd=args.k_sd)
    if diffs:
        claims = [d for d in diffs if d.where.startswith("claim ")]
        print(f"verify: {len(diffs)} difference(s) beyond the measured spread"
              + (f", {len(claims)} of them claim(s)" if claims else "") + ":")
        for d in diffs:
            print(f"  {d}")
        return 1
    print(f"verify: every table reproduced within its measured spread (k = {args.k_sd:g} sd; "
          f"fallback rtol={args.rtol}, atol={args.atol}) and every claim kept its verdict")
    return 0


if __name__ == "__main__":
    sys.exit(main())
