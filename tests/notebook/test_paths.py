"""Tests of p8utils.notebook.paths: notebook path rules and the run folders under <project>/runs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from p8utils import runs, storage
from p8utils.errors import ParameterError
from p8utils.notebook import paths

from ..conftest import ROOT


def test_project_root_from_anywhere(tmp_path):
    assert paths.project_root(ROOT / "notebooks") == ROOT  # JupyterLab starts kernels in notebooks/
    assert paths.project_root(ROOT) == ROOT
    assert paths.project_root(tmp_path) == ROOT  # outside the checkout: the package's checkout (editable)


def test_resolve_path(tmp_path):
    assert paths.resolve_path("data_sample") == str(ROOT / "data_sample")
    assert paths.resolve_path("runs/x", root=tmp_path) == str(tmp_path / "runs" / "x")
    assert paths.resolve_path(str(tmp_path / "a")) == str(tmp_path / "a")
    assert paths.resolve_path("~/x") == str(Path.home() / "x")
    for uri in ("s3://bucket/fruits/", "hdfs:///data/x", "file:/tmp/x"):
        assert paths.resolve_path(uri) == uri
    for bad in ("", "  ", None):
        with pytest.raises(ParameterError, match="empty"):
            paths.resolve_path(bad)


def test_runs_dir():
    assert paths.runs_dir() == str(ROOT / "runs")


def test_new_run_is_new_and_unique(tmp_path):
    first = Path(paths.new_run(root=tmp_path))
    assert first.parent == tmp_path / "runs" and not first.exists()
    assert len(first.name) == len("20261121-120000")
    first.mkdir(parents=True)
    second = Path(paths.new_run(root=tmp_path))
    assert second != first and not second.exists()


def test_resolve_run_latest_or_given(tmp_path):
    with pytest.raises(ParameterError, match="no complete run"):
        paths.resolve_run("", root=tmp_path)
    for i, name in enumerate(("old", "new")):
        (tmp_path / "runs" / name / "features").mkdir(parents=True)
        manifest = tmp_path / "runs" / name / "manifest.json"
        manifest.write_text("{}")
        os.utime(manifest, (time.time() - 100 + i * 50,) * 2)
    (tmp_path / "runs" / "incomplete" / "features").mkdir(parents=True)  # no manifest: ignored
    assert paths.resolve_run("", root=tmp_path) == runs.layout(str(tmp_path / "runs" / "new"))

    run = tmp_path / "runs" / "old"
    loc = paths.resolve_run(str(run))
    assert loc == runs.layout(str(run))
    assert (loc.features, loc.root) == (str(run / "features"), str(run))
    assert paths.resolve_run(str(run / "features")) == loc
    assert paths.resolve_run("runs/old", root=tmp_path) == loc  # relative: from the project root
    with pytest.raises(ParameterError, match="holds no features"):
        paths.resolve_run(str(tmp_path / "missing"))
    assert not hasattr(paths, "find_run")  # one find_run: p8utils.runs.find_run, which resolve_run builds on


def test_spark_path():
    # report.spark_path is gone: notebooks hand paths to Spark's readers through storage.spark_path
    assert storage.spark_path("file:/tmp/a b") == "/tmp/a b"
    assert storage.spark_path("s3://b/x") == "s3://b/x"
