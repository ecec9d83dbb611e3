"""pyproject.toml, constraints.txt and environment.yml describe the same pinned environment."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version.split("+")[0]
    return pins


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_direct_dependency_is_pinned_exactly_and_matches_the_lock() -> None:
    project = _pyproject()["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    lock = _constraints()
    for req in reqs:
        spec = str(req.specifier)
        assert spec.startswith("==") and "," not in spec, f"{req} is not an exact pin"
        name = canonicalize_name(req.name)
        assert name in lock, f"{req.name} missing from constraints.txt"
        assert lock[name] == spec[2:], f"{req.name}: pyproject {spec[2:]} vs constraints {lock[name]}"


def test_environment_yml_installs_the_same_pins() -> None:
    text = (ROOT / "environment.yml").read_text()
    python = re.search(r"python=(\d+\.\d+)", text)
    assert python, "environment.yml must pin python"
    assert f">={python.group(1)}" in _pyproject()["project"]["requires-python"]
    assert "-c constraints.txt" in text and "-e .[test]" in text


def test_makefile_installs_with_the_lock() -> None:
    assert "-c constraints.txt -e '.[test]'" in (ROOT / "Makefile").read_text()


def test_importing_the_package_first_keeps_monai_from_building_the_iri_grammar() -> None:
    """``import fetalcmr`` before monai leaves rfc3987-syntax unimported (a fresh interpreter)."""
    import subprocess
    import sys

    code = ("import sys, fetalcmr, monai, jsonschema; "
            "print(sys.modules.get('rfc3987_syntax') is None, 'lark' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False"], out
