"""Mutation testing of the core scientific modules, dependency-free (``make mutation``).

Each target module is parsed with :mod:`ast`; small faults (mutants) are planted in its named
functions one at a time, and the mapped tests are run against every mutant in a private copy
of the package and tests (``PYTHONPATH``-style: the copy comes first on ``sys.path``, so the
editable install in ``.venv`` is shadowed; a canary mutant that breaks the import checks it).
A mutant is *killed* when a test fails (or collection fails), *survives* when they all pass,
and times out when the run exceeds its limit (``--timeout-factor`` × the traced duration of its
tests + ``--timeout-base``; counted as killed, reported apart). Kill rate = (killed + timeout) /
(killed + timeout + survived + uncovered); a mutant that does not compile is a bug of this tool,
reported and never counted.

Speed on a small shared machine: heavy third-party modules (torch, MONAI, SciPy, ...) are
imported once in this process, and each mutant runs ``pytest.main`` in a forked child; a first
traced run records which tests execute which lines of the target, and each mutant runs only
the tests that execute its lines (fastest first, ``-x``). A mutant on a line no test executes
survives without a run (``uncovered``). Hypothesis runs derandomised, without its example
database, so results are reproducible. Tests whose name contains ``speed`` are left out (they
time a budget on a shared machine, not the behaviour).

Operators: comparison flips (``<``↔``<=``, ``>``↔``>=``, ``==``↔``!=``, ``in``/``is`` negated),
arithmetic (``+``↔``-``, ``*``↔``/``, ``//``→``/``, ``**``→``*``, ``%``→``//``, ``&``↔``|``),
constants (``0``→``1``, ``1``→``0``/``2``, ``n``→``n±1``, floats ``x``→``x+1``, ``True``↔``False``),
``and``↔``or``, dropping a unary ``not``/``-``/``~``, negating a non-comparison condition,
``min``↔``max``-style name swaps, ``return x``→``return None``, statement deletion (calls,
augmented and re-binding assignments, ``raise``, ``continue``/``break``) and dropping a keyword
argument. Explicit skip rules (equivalent or message-only mutants): docstrings, annotations,
string constants, anything inside an f-string or a ``raise`` expression, duplicate mutants, and
the keywords in :data:`EQUIVALENT_KEYWORDS` (defaults of the pinned library versions).

Usage (from the repository root)::

    .venv/bin/python tests/mutation/mutate.py                      # every module, full run
    .venv/bin/python tests/mutation/mutate.py --modules metrics losses --sample 40 --seed 1
    .venv/bin/python tests/mutation/mutate.py --rev HEAD           # package and tests as committed
    .venv/bin/python tests/mutation/mutate.py --list --modules topology    # the mutants, no run
    .venv/bin/python tests/mutation/mutate.py --modules data --only data#61 data#64   # re-check a few

The report (JSON and Markdown) goes to ``data/mutation/`` (git-ignored) or ``--out``.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Target:
    """A module under mutation: its source, the functions mutated (None: all), its tests."""

    name: str
    source: str
    functions: tuple[str, ...] | None
    tests: tuple[str, ...]
    keyword: str | None = None


TARGETS: dict[str, Target] = {
    "topology": Target("topology", "fetalcmr/topology.py", None, ("tests/test_topology.py",)),
    "metrics": Target("metrics", "fetalcmr/metrics.py", None, ("tests/test_metrics.py",)),
    "losses": Target("losses", "fetalcmr/losses.py", None, ("tests/test_losses.py",)),
    "propagation": Target(
        "propagation", "fetalcmr/propagation.py",
        ("to_grid", "upsample_field", "warp", "warp_labels", "jacobian_determinant", "folding_stats",
         "affine_displacement", "full_displacement"),
        ("tests/test_propagation.py",),
        keyword=("identity_field or integer_translation or smooth_warp or upsampled_translation or coarse_grid "
                 "or jacobian or affine_displacement or warping"),
    ),
    "data": Target(
        "data", "fetalcmr/data.py",
        ("load_volume", "make_sample", "make_samples", "class_balanced_weights", "balanced_indices",
         "sample_seed", "EpochDataset.__init__", "EpochDataset.__len__", "EpochDataset.__getitem__"),
        ("tests/test_data.py",),
    ),
}

#: Keyword arguments whose removal cannot change a result (explicit equivalence rule):
#: ``(callee, keyword, value)`` as written in the source, ``None`` matching anything. A rule with
#: a value (the callee's default) only skips dropping the keyword; one without also skips
#: mutating the value (it cannot matter).
EQUIVALENT_KEYWORDS: dict[tuple[str | None, str, str | None], str] = {
    (None, "copy", None): "copy= only decides whether memory is shared",
    ("np.pad", "constant_values", "False"): "np.pad pads with 0 by default",
    ("np.pad", "constant_values", "0"): "np.pad pads with 0 by default",
    ("torch.meshgrid", "indexing", "'ij'"): "'ij' is torch.meshgrid's default",
    ("F.interpolate", "align_corners", "False"): "None means False for trilinear interpolation",
    ("spatial_transform", "isdisp", "True"): "voxelmorph 0.3.4 default",
    ("spatial_transform", "align_corners", "True"): "voxelmorph 0.3.4 default",
    ("spatial_transform", "padding_mode", "'zeros'"): "voxelmorph 0.3.4 default",
    ("warp", "mode", "'linear'"): "fetalcmr.propagation.warp's default",
    ("DiceLoss", "softmax", "False"): "MONAI 1.6.1 default",
}
#: Tests left out of every run (wall-clock budgets, flaky on a shared machine).
DESELECT_WORDS: tuple[str, ...] = ("speed",)

_CMP_SWAP: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
    ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}
_BIN_SWAP: dict[type[ast.operator], tuple[type[ast.operator], ...]] = {
    ast.Add: (ast.Sub,), ast.Sub: (ast.Add,), ast.Mult: (ast.Div,), ast.Div: (ast.Mult,),
    ast.FloorDiv: (ast.Div,), ast.Mod: (ast.FloorDiv,), ast.Pow: (ast.Mult,),
    ast.BitAnd: (ast.BitOr,), ast.BitOr: (ast.BitAnd,), ast.BitXor: (ast.BitOr,),
}
_NAME_SWAP: dict[str, str] = {
    "min": "max", "max": "min", "minimum": "maximum", "maximum": "minimum", "amin": "amax", "amax": "amin",
    "any": "all", "all": "any", "argmin": "argmax", "argmax": "argmin", "floor": "ceil", "ceil": "floor",
}


@dataclass
class Mutant:
    """One planted fault: where, what, and (after the run) what happened."""

    module: str
    index: int
    function: str
    line: int
    operator: str
    original: str
    mutated: str
    lines: tuple[int, ...]
    start: int = field(repr=False, default=0)
    end: int = field(repr=False, default=0)
    text: str = field(repr=False, default="")
    status: str = "pending"
    seconds: float = 0.0
    tests_run: int = 0

    @property
    def key(self) -> str:
        return f"{self.module}#{self.index}"


# ------------------------------------------------------------------------------------------------
# mutant generation


class _Source:
    """A module's text with byte offsets per line (``ast`` columns are UTF-8 byte offsets)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.data = text.encode()
        self.line_start = [0]
        for line in self.data.splitlines(keepends=True):
            self.line_start.append(self.line_start[-1] + len(line))

    def offset(self, line: int, col: int) -> int:
        return self.line_start[line - 1] + col

    def span(self, node: ast.AST) -> tuple[int, int]:
        return (self.offset(node.lineno, node.col_offset),  # type: ignore[attr-defined]
                self.offset(node.end_lineno, node.end_col_offset))  # type: ignore[attr-defined]

    def segment(self, node: ast.AST) -> str:
        a, b = self.span(node)
        return self.data[a:b].decode()

    def splice(self, start: int, end: int, text: str) -> str:
        return (self.data[:start] + text.encode() + self.data[end:]).decode()


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def _bound_names(func: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> set[str]:
    a = func.args
    names = {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs}
    names |= {x.arg for x in (a.vararg, a.kwarg) if x is not None}
    return names


def _names_of(target: ast.expr) -> list[str] | None:
    """Return the plain names bound by an assignment target, or None if it is not only names."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, ast.Tuple | ast.List):
        out: list[str] = []
        for elt in target.elts:
            sub = _names_of(elt)
            if sub is None:
                return None
            out += sub
        return out
    return None


class _Generator:
    """Walk the selected functions of one module and list their mutants in source order."""

    def __init__(self, module: str, text: str, functions: tuple[str, ...] | None) -> None:
        self.module = module
        self.src = _Source(text)
        self.tree = ast.parse(text)
        self.functions = functions
        self.mutants: list[Mutant] = []
        self._seen: set[tuple[int, int, str]] = set()
        self._func = ""
        self._stmt: ast.stmt | None = None

    # -- driver -----------------------------------------------------------------------------
    def run(self) -> list[Mutant]:
        self._scan(self.tree.body, "")
        return self.mutants

    def _scan(self, body: list[ast.stmt], prefix: str) -> None:
        for stmt in body:
            if isinstance(stmt, ast.ClassDef):
                self._scan(stmt.body, f"{prefix}{stmt.name}.")
            elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                qual = f"{prefix}{stmt.name}"
                if self.functions is None or qual in self.functions:
                    self._func = qual
                    self._body(stmt.body, _bound_names(stmt))

    def _body(self, body: list[ast.stmt], bound: set[str]) -> None:
        for i, stmt in enumerate(body):
            if i == 0 and _is_docstring(stmt):
                continue
            self._statement(stmt, bound)

    def _statement(self, stmt: ast.stmt, bound: set[str]) -> None:
        outer, self._stmt = self._stmt, stmt
        self._delete(stmt, bound)
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            self._body(stmt.body, bound | _bound_names(stmt))
        elif isinstance(stmt, ast.Raise):
            pass  # the exception's message and arguments: message-only mutants (rule)
        elif isinstance(stmt, ast.Return):
            if stmt.value is not None and not (isinstance(stmt.value, ast.Constant) and stmt.value.value is None):
                self._add(stmt, "return None", "return value → None", lines_of=stmt, statement=True)
                self._expr(stmt.value)
        elif isinstance(stmt, ast.If | ast.While):
            self._condition(stmt.test)
            self._expr(stmt.test)
            self._body(stmt.body, bound)
            self._body(stmt.orelse, bound)
        elif isinstance(stmt, ast.For):
            self._expr(stmt.iter)
            self._body(stmt.body, bound | set(_names_of(stmt.target) or []))
            self._body(stmt.orelse, bound)
        elif isinstance(stmt, ast.With):
            for item in stmt.items:
                self._expr(item.context_expr)
            self._body(stmt.body, bound)
        elif isinstance(stmt, ast.Try):
            self._body(stmt.body, bound)
            for handler in stmt.handlers:
                self._body(handler.body, bound)
            self._body(stmt.orelse, bound)
            self._body(stmt.finalbody, bound)
        elif isinstance(stmt, ast.AnnAssign):
            if stmt.value is not None:
                self._expr(stmt.value)
        else:
            for child in ast.iter_child_nodes(stmt):
                if isinstance(child, ast.expr) and not isinstance(getattr(child, "ctx", None), ast.Store | ast.Del):
                    self._expr(child)
                elif isinstance(child, ast.expr):  # subscript/attribute targets: mutate their index parts
                    for sub in ast.iter_child_nodes(child):
                        if isinstance(sub, ast.expr) and not isinstance(getattr(sub, "ctx", None), ast.Store):
                            self._expr(sub)
        self._stmt = outer
        # names bound by this statement are re-bindings for later deletions
        if isinstance(stmt, ast.Assign):
            for t in stmt.targets:
                bound.update(_names_of(t) or [])
        elif isinstance(stmt, ast.AnnAssign | ast.AugAssign) and isinstance(stmt.target, ast.Name):
            bound.add(stmt.target.id)

    # -- statement operators ------------------------------------------------------------------
    def _delete(self, stmt: ast.stmt, bound: set[str]) -> None:
        what = None
        if isinstance(stmt, ast.Expr) and not isinstance(stmt.value, ast.Constant):
            what = "delete call"
        elif isinstance(stmt, ast.AugAssign):
            what = "delete augmented assignment"
        elif isinstance(stmt, ast.Assign):
            names = [n for t in stmt.targets for n in (_names_of(t) or ["<complex>"])]
            if all(n in bound for n in names):
                what = "delete re-binding"
        elif isinstance(stmt, ast.Raise):
            what = "delete raise"
        elif isinstance(stmt, ast.Continue | ast.Break):
            what = f"delete {type(stmt).__name__.lower()}"
        if what:
            self._add(stmt, "pass", what, lines_of=stmt, statement=True)

    def _condition(self, test: ast.expr) -> None:
        if not isinstance(test, ast.Compare | ast.BoolOp) and not (
                isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not)):
            self._add(test, f"not ({ast.unparse(test)})", "negate condition")

    # -- expression operators -------------------------------------------------------------------
    def _expr(self, node: ast.expr) -> None:
        if isinstance(node, ast.JoinedStr):
            return  # f-string text: message-only mutants (rule)
        if isinstance(node, ast.Lambda):
            self._expr(node.body)
            return
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                swap = _CMP_SWAP.get(type(op))
                if swap is not None:
                    new = copy.deepcopy(node)
                    new.ops[i] = swap()
                    self._add(node, ast.unparse(new), f"compare {_op(op)} → {_op(swap())}")
        elif isinstance(node, ast.BinOp):
            for swap in _BIN_SWAP.get(type(node.op), ()):
                new = copy.deepcopy(node)
                new.op = swap()
                self._add(node, ast.unparse(new), f"arith {_op(node.op)} → {_op(swap())}")
        elif isinstance(node, ast.BoolOp):
            new = copy.deepcopy(node)
            new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            self._add(node, ast.unparse(new), f"bool {_op(node.op)} → {_op(new.op)}")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub | ast.Invert):
            self._add(node, ast.unparse(node.operand), f"drop unary {_op(node.op)}")
        elif isinstance(node, ast.Constant):
            for value in _constant_mutations(node.value):
                self._add(node, repr(value), f"constant {node.value!r} → {value!r}")
        elif isinstance(node, ast.Name) and node.id in _NAME_SWAP:
            self._add(node, _NAME_SWAP[node.id], f"name {node.id} → {_NAME_SWAP[node.id]}")
        elif isinstance(node, ast.Attribute) and node.attr in _NAME_SWAP and isinstance(node.ctx, ast.Load):
            new = copy.deepcopy(node)
            new.attr = _NAME_SWAP[node.attr]
            self._add(node, ast.unparse(new), f"name .{node.attr} → .{new.attr}")
        elif isinstance(node, ast.IfExp):
            self._condition(node.test)
        skip: list[ast.keyword] = []
        if isinstance(node, ast.Call):
            skip = [kw for kw in node.keywords if _equivalent_keyword(node, kw, any_value=True)]
            for i, kw in enumerate(node.keywords):
                if kw.arg is None or _equivalent_keyword(node, kw, any_value=False):
                    continue
                new = copy.deepcopy(node)
                del new.keywords[i]
                self._add(node, ast.unparse(new), f"drop keyword {kw.arg}=")
        for child in ast.iter_child_nodes(node):
            if any(child is kw for kw in skip):
                continue  # neither dropped nor changed (rule)
            if isinstance(child, ast.comprehension):
                self._expr(child.iter)
                for cond in child.ifs:
                    self._condition(cond)
                    self._expr(cond)
            elif isinstance(child, ast.expr) and not isinstance(getattr(child, "ctx", None), ast.Store | ast.Del):
                self._expr(child)
            elif isinstance(child, ast.keyword):
                self._expr(child.value)
            elif isinstance(child, ast.arguments):
                continue  # lambda defaults and annotations are not mutated

    # -- recording ------------------------------------------------------------------------------
    def _add(self, node: ast.AST, replacement: str, operator: str, *, lines_of: ast.AST | None = None,
             statement: bool = False) -> None:
        start, end = self.src.span(node)
        original = self.src.segment(node)
        pad = "\n" * (node.end_lineno - node.lineno)  # type: ignore[attr-defined]  # keeps later line numbers
        text = replacement + pad if statement else f"({replacement}{pad})"
        if (start, end, text) in self._seen or _same_code(original, replacement):
            return  # duplicate or no-op mutant (rule)
        self._seen.add((start, end, text))
        span = lines_of or node
        lines = set(range(span.lineno, span.end_lineno + 1))  # type: ignore[attr-defined]
        if self._stmt is not None and not isinstance(self._stmt, ast.If | ast.While | ast.For | ast.With):
            lines.add(self._stmt.lineno)
        self.mutants.append(Mutant(self.module, len(self.mutants), self._func, node.lineno,  # type: ignore[attr-defined]
                                   operator, _one_line(original), _one_line(replacement), tuple(sorted(lines)),
                                   start, end, text))


def _equivalent_keyword(call: ast.Call, kw: ast.keyword, *, any_value: bool) -> bool:
    """True when a rule says dropping ``kw`` (``any_value``: also changing its value) is equivalent."""
    if kw.arg is None:
        return False
    callee, value = ast.unparse(call.func), ast.unparse(kw.value)
    values = (None,) if any_value else (None, value)
    return any((c, kw.arg, v) in EQUIVALENT_KEYWORDS for c in (None, callee) for v in values)


def _op(op: ast.AST) -> str:
    symbols = {
        ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.In: "in",
        ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not", ast.Add: "+", ast.Sub: "-", ast.Mult: "*",
        ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**", ast.BitAnd: "&", ast.BitOr: "|",
        ast.BitXor: "^", ast.And: "and", ast.Or: "or", ast.Not: "not", ast.USub: "-", ast.Invert: "~",
    }
    return symbols.get(type(op), type(op).__name__)


def _constant_mutations(value: object) -> list[object]:
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [1] if value == 0 else [0, 2] if value == 1 else [value + 1, value - 1]
    if isinstance(value, float):
        return [1.0] if value == 0.0 else [value + 1.0]
    return []  # strings, bytes, None, Ellipsis: not mutated (rule)


def _same_code(a: str, b: str) -> bool:
    try:
        return ast.dump(ast.parse(a.strip(), mode="eval")) == ast.dump(ast.parse(b.strip(), mode="eval"))
    except SyntaxError:
        return a.strip() == b.strip()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def generate_mutants(target: Target, text: str) -> list[Mutant]:
    """Return the mutants of the target's functions in ``text``, in source order."""
    missing = [f for f in target.functions or () if f not in _defined(text)]
    if missing:
        raise SystemExit(f"{target.source}: functions not found: {missing}")
    mutants = _Generator(target.name, text, target.functions).run()
    valid = []
    for m in mutants:  # a mutant that does not compile or moves lines is a bug of this tool: say so, never count it
        source = mutated_source(text, m)
        try:
            compile(source, target.source, "exec")
        except SyntaxError as exc:
            print(f"warning: {m.key} ({target.source}:{m.line} {m.operator}) does not compile: {exc}", flush=True)
            continue
        if source.count("\n") != text.count("\n"):
            print(f"warning: {m.key} ({target.source}:{m.line} {m.operator}) changes the line count", flush=True)
            continue
        valid.append(m)
    return valid


def _defined(text: str) -> set[str]:
    out: set[str] = set()

    def walk(body: list[ast.stmt], prefix: str) -> None:
        for s in body:
            if isinstance(s, ast.ClassDef):
                walk(s.body, f"{prefix}{s.name}.")
            elif isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef):
                out.add(prefix + s.name)

    walk(ast.parse(text).body, "")
    return out


def mutated_source(text: str, mutant: Mutant) -> str:
    """Return ``text`` with ``mutant`` applied (line numbers unchanged)."""
    return _Source(text).splice(mutant.start, mutant.end, mutant.text)


# ------------------------------------------------------------------------------------------------
# running tests in forked children


def _child_env() -> None:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    sys.dont_write_bytecode = True


_QUIET = ("-W", "ignore::DeprecationWarning", "-W", "ignore::pytest.PytestAssertRewriteWarning")


def _pytest_args(nodeids: Sequence[str]) -> list[str]:
    return [*nodeids, "-x", "-q", "-p", "no:cacheprovider", "--no-header", *_QUIET]


def _in_child(workdir: Path, log: Path, body: Callable[[], int]) -> None:
    """Body of a forked child: own session, output to ``log``, run ``body`` in ``workdir``; never returns."""
    code = 70
    try:
        os.setsid()
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.chdir(workdir)
        sys.path.insert(0, str(workdir))
        shutil.rmtree(workdir / ".hypothesis", ignore_errors=True)
        from hypothesis import settings

        settings.register_profile("mutation", derandomize=True, database=None, print_blob=False)
        settings.load_profile("mutation")
        code = int(body())
    except BaseException as exc:  # noqa: BLE001 - report anything, then leave the child
        print(f"mutation child failed: {exc!r}", flush=True)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def fork_pytest(workdir: Path, nodeids: Sequence[str], log: Path, plugins: Sequence[object] = ()) -> int:
    """Start ``pytest.main`` on ``nodeids`` in a forked child; return its pid."""
    pid = os.fork()
    if pid == 0:
        import pytest

        _in_child(workdir, log, lambda: pytest.main(_pytest_args(nodeids), plugins=list(plugins)))
    return pid


def wait_all(pids: dict[int, float]) -> Iterator[tuple[int, int | None]]:
    """Yield ``(pid, exit code or None for a timeout)`` as the children in ``{pid: deadline}`` end."""
    while pids:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid and pid in pids:
            del pids[pid]
            code = os.waitstatus_to_exitcode(status)
            yield pid, code if code >= 0 else 128 - code
            continue
        now = time.monotonic()
        for p, deadline in list(pids.items()):
            if now > deadline:
                try:
                    os.killpg(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                os.waitpid(p, 0)
                del pids[p]
                yield p, None
        time.sleep(0.05)


class _Tracer:
    """Pytest plugin recording, per test, the lines of one file it executes, and its duration."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.current = "<collection>"
        self.lines: dict[str, set[int]] = {}
        self.durations: dict[str, float] = {}

    def _global(self, frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename == self.filename:
            return self._local
        return None

    def _local(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "line":
            self.lines.setdefault(self.current, set()).add(frame.f_lineno)
        return self._local

    def pytest_sessionstart(self) -> None:
        import threading

        threading.settrace(self._global)
        sys.settrace(self._global)

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self.current = nodeid

    def pytest_runtest_logreport(self, report: Any) -> None:
        self.durations[report.nodeid] = self.durations.get(report.nodeid, 0.0) + report.duration


def trace_tests(workdir: Path, target: Target, log: Path, timeout: float) -> dict[str, Any]:
    """Run the target's tests once, unmutated and traced; return lines per test, durations, import path."""
    out = log.with_suffix(".json")
    filename = str(workdir / target.source)
    pid = os.fork()
    if pid == 0:
        import pytest

        def body() -> int:
            tracer = _Tracer(filename)
            args = [*target.tests, "-q", "-p", "no:cacheprovider", "--no-header", *_QUIET]
            words = " and ".join(f"not {w}" for w in DESELECT_WORDS)
            args += ["-k", f"({target.keyword}) and {words}" if target.keyword else words]
            rc = pytest.main(args, plugins=[tracer])
            sys.settrace(None)
            mod = sys.modules.get("fetalcmr." + Path(target.source).stem)
            out.write_text(json.dumps({
                "rc": int(rc), "imported_from": getattr(mod, "__file__", None),
                "lines": {k: sorted(v) for k, v in tracer.lines.items() if k != "<collection>"},
                "durations": tracer.durations,
            }))
            return int(rc)

        _in_child(workdir, log, body)
    for _, rc in wait_all({pid: time.monotonic() + timeout}):
        if rc is None:
            raise SystemExit(f"{target.name}: the traced unmutated run took over {timeout:.0f} s (see {log})")
    if not out.exists():
        raise SystemExit(f"{target.name}: the traced unmutated run failed (see {log})")
    return json.loads(out.read_text())


def preload(workdir: Path, targets: Sequence[Target], log: Path) -> int:
    """Import in this process every third-party module the targets' tests import; return how many.

    A forked child lists them after collecting the tests; nothing from the copy (``fetalcmr``,
    tests, conftest) is imported here, so every child imports the (mutated) package afresh.
    """
    listing = log.with_suffix(".json")
    pid = os.fork()
    if pid == 0:
        import pytest

        def body() -> int:
            rc = pytest.main([*sorted({t for tg in targets for t in tg.tests}), "--collect-only", "-q",
                              "-p", "no:cacheprovider"])
            names = [name for name, mod in list(sys.modules.items())
                     if not str(getattr(mod, "__file__", "") or "").startswith(str(workdir))]
            listing.write_text(json.dumps(names))
            return int(rc)

        _in_child(workdir, log, body)
    for _, rc in wait_all({pid: time.monotonic() + 900}):
        if rc != 0 or not listing.exists():
            raise SystemExit(f"collecting the tests failed (see {log})")
    count = 0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in json.loads(listing.read_text()):
            if name.split(".")[0] in ("fetalcmr", "conftest", "__main__") or name.startswith("test_"):
                continue
            if name not in sys.modules:
                try:
                    __import__(name)
                    count += 1
                except Exception:  # noqa: BLE001 - some listed names are aliases, not importable
                    continue
    if "fetalcmr" in sys.modules:
        raise SystemExit("preloading imported fetalcmr: mutants would not be re-imported")
    return count


# ------------------------------------------------------------------------------------------------
# the run


def make_copy(dest: Path, rev: str | None) -> None:
    """Copy ``fetalcmr/``, ``tests/`` and ``pyproject.toml`` from the working tree or from ``rev``."""
    dest.mkdir(parents=True)
    paths = ["fetalcmr", "tests", "pyproject.toml"]
    if rev is None:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", "mutation")
        for p in paths:
            src = REPO / p
            (shutil.copytree(src, dest / p, ignore=ignore) if src.is_dir() else shutil.copy2(src, dest / p))
        return
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, *paths], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)


def select_tests(mutant: Mutant, coverage: dict[str, list[int]], durations: dict[str, float]) -> list[str]:
    """Return the tests that execute any line of ``mutant``, fastest first."""
    lines = set(mutant.lines)
    hit = [t for t, ls in coverage.items() if lines.intersection(ls)]
    return sorted(hit, key=lambda t: (durations.get(t, 0.0), t))


def run_target(target: Target, slots: list[Path], logs: Path, args: argparse.Namespace) -> list[Mutant]:
    """Generate, filter and run the target's mutants on the copies in ``slots``; return them."""
    original = (slots[0] / target.source).read_text()
    mutants = generate_mutants(target, original)
    total = len(mutants)
    if args.sample is not None and args.sample < len(mutants):
        keep = set(random.Random(f"{args.seed}:{target.name}").sample(range(len(mutants)), args.sample))
        mutants = [m for m in mutants if m.index in keep]
    if args.only:
        mutants = [m for m in mutants if m.key in args.only]
    if args.limit is not None:
        mutants = mutants[:args.limit]
    print(f"\n== {target.name}: {len(mutants)} of {total} mutants ({target.source})", flush=True)
    if args.list:
        for m in mutants:
            print(f"  {m.key:16} {target.source}:{m.line} [{m.operator}] {m.original} → {m.mutated}")
        return mutants
    t0 = time.monotonic()
    traced = trace_tests(slots[0], target, logs / f"{target.name}-trace.log", args.trace_timeout)
    expected = str(slots[0] / target.source)
    if traced["rc"] != 0:
        raise SystemExit(f"{target.name}: the tests fail without mutants (rc {traced['rc']}); see "
                         f"{logs / (target.name + '-trace.log')}")
    if traced["imported_from"] != expected:
        raise SystemExit(f"{target.name}: tests imported {traced['imported_from']}, not the copy {expected}")
    coverage, durations = traced["lines"], traced["durations"]
    print(f"   traced {len(durations)} tests in {time.monotonic() - t0:.0f} s; package imported from the copy",
          flush=True)
    _canary(target, slots[0], original, list(coverage), logs)

    queue = list(mutants)
    running: dict[int, tuple[Mutant, int, float]] = {}
    deadlines: dict[int, float] = {}
    free = list(range(len(slots)))
    done = 0

    def start_next() -> None:
        while queue and free:
            m = queue.pop(0)
            tests = select_tests(m, coverage, durations)
            if not tests:
                m.status = "uncovered"
                report(m)
                continue
            slot = free.pop(0)
            (slots[slot] / target.source).write_text(mutated_source(original, m))
            budget = args.timeout_factor * sum(durations.get(t, 1.0) for t in tests) + args.timeout_base
            pid = fork_pytest(slots[slot], tests, logs / f"{target.name}-{m.index}.log")
            m.tests_run = len(tests)
            running[pid] = (m, slot, time.monotonic())
            deadlines[pid] = time.monotonic() + budget

    def finish(pid: int, rc: int | None) -> None:
        m, slot, started = running.pop(pid)
        m.seconds = time.monotonic() - started
        m.status = "timeout" if rc is None else "survived" if rc == 0 else "killed" if rc in (1, 2) or rc > 128 \
            else f"error({rc})"
        if not m.status.startswith("error") and not args.keep_logs:
            (logs / f"{target.name}-{m.index}.log").unlink(missing_ok=True)
        report(m)
        free.append(slot)

    def report(m: Mutant) -> None:
        nonlocal done
        done += 1
        print(f"   [{done}/{len(mutants)}] {m.key:15} {m.status:9} {target.source}:{m.line} [{m.operator}] "
              f"{m.original[:60]} → {m.mutated[:60]} ({m.seconds:.1f} s, {m.tests_run} tests)", flush=True)

    start_next()
    try:
        _drain(running, deadlines, finish, start_next)
    finally:
        for pid in running:  # interrupted: leave no child behind
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        for s in slots:
            (s / target.source).write_text(original)
    return mutants



def _drain(running: dict[int, Any], deadlines: dict[int, float], finish: Callable[[int, int | None], None],
           start_next: Callable[[], None]) -> None:
    """Wait for the running children, hand each result to ``finish`` and refill with ``start_next``."""
    while running:
        for pid, rc in wait_all(deadlines):
            finish(pid, rc)
            start_next()
            break


def _canary(target: Target, workdir: Path, original: str, tests: list[str], logs: Path) -> None:
    """Check that a mutant of the copy is what the tests import: a module that cannot import must fail."""
    (workdir / target.source).write_text('raise ImportError("mutation canary")\n' + original)
    try:
        pid = fork_pytest(workdir, tests[:1], logs / f"{target.name}-canary.log")
        for _, rc in wait_all({pid: time.monotonic() + 600}):
            if rc == 0:
                raise SystemExit(f"{target.name}: the canary mutant passed: the tests do not import the copy")
    finally:
        (workdir / target.source).write_text(original)


# ------------------------------------------------------------------------------------------------
# reporting


def summarise(results: dict[str, list[Mutant]]) -> list[dict[str, Any]]:
    """Return one row per module: mutants, killed, timeout, survived (uncovered), errors, kill rate."""
    rows = []
    for name, mutants in results.items():
        count = {s: sum(m.status == s for m in mutants) for s in ("killed", "timeout", "survived", "uncovered")}
        errors = sum(m.status.startswith("error") for m in mutants)
        decided = count["killed"] + count["timeout"] + count["survived"] + count["uncovered"]
        rate = (count["killed"] + count["timeout"]) / decided if decided else float("nan")
        rows.append({"module": name, "mutants": len(mutants), **count, "errors": errors, "kill_rate": rate})
    return rows


def markdown(rows: list[dict[str, Any]], results: dict[str, list[Mutant]], meta: dict[str, Any]) -> str:
    """Return the report as Markdown: the table, then every survivor (file:line, original → mutant)."""
    out = ["# Mutation testing report", "", ", ".join(f"{k}: {v}" for k, v in meta.items()), "",
           "| module | mutants | killed | timeout | survived | uncovered | errors | kill rate |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['module']} | {r['mutants']} | {r['killed']} | {r['timeout']} | {r['survived']} | "
                   f"{r['uncovered']} | {r['errors']} | {r['kill_rate']:.1%} |")
    out += ["", "Kill rate = (killed + timeout) / (killed + timeout + survived + uncovered).", "",
            "## Survivors", ""]
    for name, mutants in results.items():
        for m in mutants:
            if m.status in ("survived", "uncovered") or m.status.startswith("error"):
                out.append(f"- {m.key} `{TARGETS[name].source}:{m.line}` ({m.function}, {m.status}) [{m.operator}] "
                           f"`{m.original}` → `{m.mutated}`")
    return "\n".join(out) + "\n"


def print_table(rows: list[dict[str, Any]]) -> None:
    head = f"{'module':12} {'mutants':>8} {'killed':>7} {'timeout':>8} {'survived':>9} {'uncovered':>10} " \
           f"{'errors':>7} {'kill rate':>10}"
    print("\n" + head)
    for r in rows:
        print(f"{r['module']:12} {r['mutants']:8} {r['killed']:7} {r['timeout']:8} {r['survived']:9} "
              f"{r['uncovered']:10} {r['errors']:7} {r['kill_rate']:10.1%}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0, or 1 when a module's kill rate is under ``--fail-under``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modules", nargs="+", choices=sorted(TARGETS), default=list(TARGETS))
    ap.add_argument("--rev", help="take fetalcmr/, tests/ and pyproject.toml from this git revision "
                                  "(default: the working tree)")
    ap.add_argument("--sample", type=int, help="run a random sample of N mutants per module")
    ap.add_argument("--seed", type=int, default=0, help="seed of --sample")
    ap.add_argument("--limit", type=int, help="run only the first N mutants per module")
    ap.add_argument("--only", nargs="+", metavar="KEY", help="run only these mutants (keys as listed, e.g. metrics#12)")
    ap.add_argument("--jobs", type=int, default=1, help="mutants run in parallel (each its own copy)")
    ap.add_argument("--timeout-factor", type=float, default=4.0,
                    help="a mutant's limit: factor × the traced duration of its tests + --timeout-base")
    ap.add_argument("--timeout-base", type=float, default=30.0)
    ap.add_argument("--trace-timeout", type=float, default=1800.0)
    ap.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    ap.add_argument("--out", type=Path, default=REPO / "data" / "mutation", help="report folder")
    ap.add_argument("--keep-logs", action="store_true", help="keep every mutant's pytest log")
    ap.add_argument("--fail-under", type=float, help="exit 1 when a module's kill rate is below this (0..1)")
    args = ap.parse_args(argv)
    targets = [TARGETS[m] for m in args.modules]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the copies and children on kill
    _child_env()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fetalcmr-mutation-") as tmp:
        root = Path(tmp)
        slots = [root / f"copy{i}" for i in range(max(1, args.jobs))]
        for s in slots:
            make_copy(s, args.rev)
        logs = args.out / "logs"
        if not args.list:
            logs.mkdir(parents=True, exist_ok=True)
            n = preload(slots[0], targets, logs / "preload.log")
            print(f"preloaded {n} modules in {time.monotonic() - started:.0f} s", flush=True)
        results = {t.name: run_target(t, slots, logs, args) for t in targets}
    if args.list:
        return 0
    elapsed = time.monotonic() - started
    rows = summarise(results)
    print_table(rows)
    meta = {"rev": args.rev or "working tree", "sample": args.sample, "seed": args.seed, "limit": args.limit,
            "jobs": args.jobs, "seconds": round(elapsed, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(
        {"meta": meta, "summary": rows,
         "mutants": {k: [{key: val for key, val in asdict(m).items() if key not in ("start", "end", "text")}
                         for m in v]
                     for k, v in results.items()}}, indent=1))
    (args.out / "report.md").write_text(markdown(rows, results, meta))
    survivors = [m for v in results.values() for m in v if m.status in ("survived", "uncovered")]
    print(f"\n{len(survivors)} survivors:")
    for m in survivors:
        print(f"  {m.key:15} {TARGETS[m.module].source}:{m.line} [{m.operator}] {m.original} → {m.mutated} "
              f"({m.status})")
    print(f"\ntotal {elapsed:.0f} s; report: {args.out / 'report.md'}")
    if args.fail_under is not None and any(r["kill_rate"] < args.fail_under for r in rows):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
