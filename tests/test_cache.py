"""Cache keys: computed from the code a stage can reach, so they cannot go stale."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fetalcmr.cache import PACKAGE_DIR, VALUE_MODULES, code_version, content_key, module_closure
from fetalcmr.runner import list_notebooks, notebook_modules

#: the modules whose functions compute a stage's cache key with ``code_version(__name__)``
STAGE_MODULES = ("fetalcmr.synth.cohort", "fetalcmr.propagation", "fetalcmr.registration_baselines",
                 "fetalcmr.segmentation", "fetalcmr.classification", "fetalcmr.joint")


@pytest.fixture()
def package_copy(tmp_path: Path) -> Path:
    """A private copy of the package source, safe to edit."""
    dst = tmp_path / "fetalcmr"
    shutil.copytree(PACKAGE_DIR, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def _keys(package_dir: Path) -> dict[str, str]:
    return {m: code_version(m, package_dir=package_dir) for m in STAGE_MODULES}


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) >= 1, f"{path}: {old!r} not found"
    path.write_text(text.replace(old, new, 1))


def test_every_stage_module_computes_its_key_from_its_own_closure() -> None:
    for module in STAGE_MODULES:
        source = (PACKAGE_DIR / Path(*module.split(".")[1:])).with_suffix(".py").read_text()
        assert "code_version(__name__)" in source, f"{module} does not key on its own import closure"


def test_closure_follows_function_level_relative_and_package_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "fetalcmr"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from fetalcmr.b import g\n    return g\n")
    (pkg / "b.py").write_text("from . import c\n")
    (pkg / "c.py").write_text("import fetalcmr.sub.d\n")
    (pkg / "sub" / "__init__.py").write_text("from fetalcmr.sub import e\n")
    (pkg / "sub" / "d.py").write_text("x = 1\n")
    (pkg / "sub" / "e.py").write_text("from ..f import h\n")
    (pkg / "f.py").write_text("import numpy\n")
    (pkg / "unused.py").write_text("")
    closure = module_closure("a", package_dir=pkg)
    assert closure == sorted(["fetalcmr", "fetalcmr.a", "fetalcmr.b", "fetalcmr.c", "fetalcmr.sub",
                              "fetalcmr.sub.d", "fetalcmr.sub.e", "fetalcmr.f"])


def test_closure_of_the_real_package_is_what_the_stages_import() -> None:
    seg = module_closure("fetalcmr.segmentation")
    assert {"fetalcmr.train", "fetalcmr.losses", "fetalcmr.transforms", "fetalcmr.models"} <= set(seg)
    # the classifier and joint runs go through the same engine, so they see its losses and transforms
    for module in ("fetalcmr.classification", "fetalcmr.joint"):
        assert {"fetalcmr.train", "fetalcmr.losses", "fetalcmr.transforms"} <= set(module_closure(module))
    assert "fetalcmr.losses" not in module_closure("fetalcmr.propagation")


def test_editing_a_loss_invalidates_exactly_the_stages_that_train_with_it(package_copy: Path) -> None:
    before = _keys(package_copy)
    assert before == _keys(package_copy)  # stable
    _edit(package_copy / "losses.py", '"""', '"""Edited. ', )
    after = _keys(package_copy)
    changed = {m for m in STAGE_MODULES if before[m] != after[m]}
    assert changed == {"fetalcmr.segmentation", "fetalcmr.classification", "fetalcmr.joint"}


@pytest.mark.parametrize(("module", "expected"), [
    ("synth/vessels.py", {"fetalcmr.synth.cohort"}),
    ("transforms.py", {"fetalcmr.propagation", "fetalcmr.registration_baselines", "fetalcmr.segmentation",
                       "fetalcmr.classification", "fetalcmr.joint"}),
    ("joint.py", {"fetalcmr.joint"}),
    ("propagation.py", {"fetalcmr.propagation", "fetalcmr.registration_baselines"}),
])
def test_editing_a_module_invalidates_its_dependents_and_nothing_else(package_copy: Path, module: str,
                                                                       expected: set[str]) -> None:
    before = _keys(package_copy)
    (package_copy / module).write_text((package_copy / module).read_text() + "\n# edited\n")
    after = _keys(package_copy)
    assert {m for m in STAGE_MODULES if before[m] != after[m]} == expected


def test_value_modules_are_keyed_by_the_settings_stages_read(package_copy: Path) -> None:
    assert VALUE_MODULES == {"fetalcmr.config"}
    before = _keys(package_copy)
    _edit(package_copy / "config.py", '"""', '"""Edited. ')
    assert _keys(package_copy) == before


def test_whole_package_version_without_arguments(package_copy: Path) -> None:
    before = code_version(package_dir=package_copy)
    (package_copy / "gallery.py").write_text((package_copy / "gallery.py").read_text() + "\n# edited\n")
    assert code_version(package_dir=package_copy) != before


def test_unknown_module_is_named() -> None:
    with pytest.raises(ValueError, match="fetalcmr.nonexistent"):
        module_closure("nonexistent")


def test_notebooks_key_on_the_modules_they_import() -> None:
    modules = {nb.name[:2]: notebook_modules(nb) for nb in list_notebooks()}
    assert "fetalcmr.segmentation" in modules["02"]
    assert "fetalcmr.classification" in modules["03"]
    assert "fetalcmr.joint" in modules["04"]
    assert "fetalcmr.review" in modules["05"]
    # notebook 00 does not reach the training engine: a loss edit does not re-run it
    assert "fetalcmr.losses" not in module_closure(*modules["00"])
    assert "fetalcmr.losses" in module_closure(*modules["02"])


def test_content_key_depends_on_every_part() -> None:
    assert content_key("a", {"x": 1}) != content_key("a", {"x": 2})
    assert content_key({"x": 1, "y": 2}) == content_key({"y": 2, "x": 1})


#: modules that only turn stage outputs into tables, figures, renders or timings (docs/design.md §8)
REPORTING = ("curves", "render", "gallery", "stage_bench", "bench", "verify", "claims", "site")


def _reporting(module: str) -> bool:
    name = module.split(".")[-1]
    return name.endswith("_report") or name in REPORTING


def _layer_violations(package_dir: Path = PACKAGE_DIR) -> dict[str, list[str]]:
    """Per stage module (and the review), the reporting modules it reaches; empty when layered."""
    out = {}
    for module in (*STAGE_MODULES, "fetalcmr.review"):
        reached = [m for m in module_closure(module, package_dir=package_dir) if _reporting(m)]
        if reached:
            out[module] = reached
    return out


def test_stages_never_reach_reporting_modules() -> None:
    assert _layer_violations() == {}
    # each stage's tables and figures live in its own reporting module, which imports the stage
    for stage in ("propagation", "segmentation", "classification", "joint", "review"):
        assert f"fetalcmr.{stage}" in module_closure(f"{stage}_report"), stage


def test_layering_check_names_a_stage_that_imports_its_report(package_copy: Path) -> None:
    _edit(package_copy / "losses.py", "from __future__ import annotations\n",
          "from __future__ import annotations\n\nfrom fetalcmr.curves import plot_history  # noqa: F401\n")
    violations = _layer_violations(package_copy)
    # review reads the classification and segmentation stages (load_*), so it reaches losses too
    assert set(violations) == {"fetalcmr.segmentation", "fetalcmr.classification", "fetalcmr.joint", "fetalcmr.review"}
    assert all("fetalcmr.curves" in reached for reached in violations.values())
