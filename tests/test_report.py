"""Tests of p8utils.report: notebook paths, bounded samples, tables, figure files, summaries."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from p8utils import report
from p8utils.errors import ParameterError

from .conftest import ROOT

PNG = b"\x89PNG\r\n\x1a\n"


# ---- paths -------------------------------------------------------------------------------------


def test_project_root_from_anywhere(tmp_path):
    assert report.project_root(ROOT / "notebooks") == ROOT  # JupyterLab starts kernels in notebooks/
    assert report.project_root(ROOT) == ROOT
    assert report.project_root(tmp_path) == ROOT  # outside the checkout: the package's checkout (editable)


def test_resolve_path(tmp_path):
    assert report.resolve_path("data_sample") == str(ROOT / "data_sample")
    assert report.resolve_path("runs/x", root=tmp_path) == str(tmp_path / "runs" / "x")
    assert report.resolve_path(str(tmp_path / "a")) == str(tmp_path / "a")
    assert report.resolve_path("~/x") == str(Path.home() / "x")
    for uri in ("s3://bucket/fruits/", "hdfs:///data/x", "file:/tmp/x"):
        assert report.resolve_path(uri) == uri
    for bad in ("", "  ", None):
        with pytest.raises(ParameterError, match="empty"):
            report.resolve_path(bad)


def test_new_run_dir_is_new_and_unique(tmp_path):
    first = Path(report.new_run_dir(root=tmp_path))
    assert first.parent == tmp_path / "runs" and not first.exists()
    assert len(first.name) == len("20261121-120000")
    first.mkdir(parents=True)
    second = Path(report.new_run_dir(root=tmp_path))
    assert second != first and not second.exists()


def test_latest_run_and_find_features(tmp_path):
    with pytest.raises(ParameterError, match="no complete run"):
        report.latest_run(root=tmp_path)
    for i, name in enumerate(("old", "new")):
        (tmp_path / "runs" / name / "features").mkdir(parents=True)
        manifest = tmp_path / "runs" / name / "manifest.json"
        manifest.write_text("{}")
        os.utime(manifest, (time.time() - 100 + i * 50,) * 2)
    (tmp_path / "runs" / "incomplete" / "features").mkdir(parents=True)  # no manifest: ignored
    assert report.latest_run(root=tmp_path) == str(tmp_path / "runs" / "new")

    run = tmp_path / "runs" / "old"
    loc = report.find_features(str(run))
    assert loc == report.FeaturesLocation(features=str(run / "features"), run=str(run))
    assert report.find_features(str(run / "features")) == loc
    with pytest.raises(ParameterError, match="features_path"):
        report.find_features(str(tmp_path / "missing"))


def test_spark_path():
    assert report.spark_path("file:/tmp/a b") == "/tmp/a b"
    assert report.spark_path("s3://b/x") == "s3://b/x"


# ---- bounded samples (Spark) ---------------------------------------------------------------------


def _scores_df(spark, n=120, k=3, classes=4, null_every=10):
    rows = []
    for i in range(n):
        vec = None if i % null_every == 0 else [float(i), float(-i), float(i % 7)][:k]
        rows.append((f"/d/c{i % classes}/img_{i:04d}.jpg", f"c{i % classes}", vec))
    return spark.createDataFrame(rows, "path string, label string, pca_features array<double>")


def test_bounded_sample(spark):
    df = spark.range(500).repartition(3)
    small = report.bounded_sample(df, 50, seed=1).collect()
    assert 1 <= len(small) <= 50 and len({r.id for r in small}) == len(small)
    assert report.bounded_sample(df, 500) is df
    with pytest.raises(ParameterError, match="max_rows"):
        report.bounded_sample(df, 0)


def test_collect_scores(spark):
    df = _scores_df(spark)
    full = report.collect_scores(df, 1000)
    assert full.n == full.n_total == 108  # 12 null rows (bad images) left out
    assert full.scores.shape == (108, 3) and full.scores.dtype == np.float64
    assert full.paths == sorted(full.paths)
    i = full.paths.index("/d/c1/img_0001.jpg")
    assert full.labels[i] == "c1" and list(full.scores[i]) == [1.0, -1.0, 1.0]
    assert full.describe() == "108 images, 4 classes" and full.n_classes == 4

    part = report.collect_scores(df, 30, seed=3)
    assert 1 <= part.n <= 30 and part.n_total == 108
    assert part.describe() == f"{part.n} of 108 images (random sample), {part.n_classes} classes"
    assert set(part.paths) <= set(full.paths)


def test_collect_scores_errors(spark):
    df = _scores_df(spark, n=5)
    with pytest.raises(ParameterError, match="missing"):
        report.collect_scores(df.drop("label"))
    with pytest.raises(ParameterError, match="no row"):
        report.collect_scores(df.where("pca_features IS NULL"))


def test_sample_images_spreads_over_classes(spark, sample_dir):
    from p8utils.images import load_images

    imgs, labels = report.sample_images(load_images(spark, str(sample_dir)), 10)
    classes = sorted(p.name for p in sample_dir.iterdir() if p.is_dir())
    assert len(imgs) == len(labels) == 10
    assert labels[:8] == classes and set(labels[8:]) <= set(classes)  # one per class first
    for data in imgs:
        assert data[:2] == b"\xff\xd8"  # JPEG
    with pytest.raises(ParameterError):
        report.sample_images(load_images(spark, str(sample_dir)), 0)


# ---- tables and text ---------------------------------------------------------------------------------

MANIFEST = {
    "status": "complete",
    "parameters": {"output": "runs/x", "model": "mobilenet_v2", "weights": "offline"},
    "weights": {"source": "offline", "sha256": "ab" * 32},
    "counts": {"total": 10, "ok": 7, "failed": 3, "failed_by_reason": {"truncated": 1, "empty": 2}, "reused": 0},
    "pca": {"k": 4, "explained_at_k": 0.9512, "feature_width": 1280, "n_rows": 7},
    "timings_s": {"featurize": 3.0, "pca_fit": 1.5},
    "outputs": {"features": "runs/x/features", "pca": "runs/x/pca"},
    "warnings": ["offline weights"],
}


def test_counts_table():
    table = report.counts_table(MANIFEST)
    assert list(table.index) == ["total", "ok", "failed", "failed: empty", "failed: truncated", "reused"]
    assert table["images"].tolist() == [10, 7, 3, 2, 1, 0] and table["images"].dtype == np.int64


def test_run_summary():
    text = report.run_summary(SimpleNamespace(manifest=MANIFEST), {"variance": "runs/x/figures/variance.png"})
    assert "10 total, 7 ok, 3 failed (empty 2, truncated 1)" in text
    assert "k = 4 components keep 95.1 %" in text
    assert "runs/x/figures/variance.png" in text and "WARNING  : offline weights" in text
    assert report.run_summary(MANIFEST).splitlines()[0] == "Run complete: runs/x"


def test_preview(spark):
    df = spark.createDataFrame(
        [("file:/a/Apple/x.jpg", "Apple", [3.0, 4.0, 0.0, 0.0, 9.0], None),
         ("file:/a/B/y.jpg", "B", None, "truncated")],
        "path string, label string, features array<float>, error string")
    table = report.preview(df, 5, values=2)
    assert list(table.columns) == ["file", "label", "error", "dims", "first values", "norm"]
    assert table["file"].tolist() == ["x.jpg", "y.jpg"]
    assert table.loc[0, "first values"] == [3.0, 4.0] and table.loc[0, "dims"] == 5
    assert table.loc[1, "dims"] == 0 and np.isnan(table.loc[1, "norm"])


def test_analysis_summary():
    fit = SimpleNamespace(explained_variance=np.array([0.5, 0.3, 0.15, 0.05]), n_rows=9, width=4)
    scores = report.ScoreSample(np.zeros((3, 3)), ["a", "b", "a"], ["1", "2", "3"], n_total=9)
    text = report.analysis_summary(fit, (0.9, 0.95, 0.99), {"x": "out/figures/x.png"}, scores)
    assert "PC1 50.0 %, PC2 30.0 %, PC3 15.0 %" in text
    assert "95 % of the variance: k = 3" in text and "99 % of the variance: k = 4" in text
    assert "3 of 9 images (random sample), 2 classes" in text and "written: out/figures/x.png" in text


# ---- files -----------------------------------------------------------------------------------------------


def _figure():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3))
    fig.add_subplot().plot([0, 1], [1, 0])
    return fig


def test_save_figure_and_figures(tmp_path):
    uri = report.save_figure(_figure(), str(tmp_path / "run"), "variance")
    assert uri == str(tmp_path / "run" / "figures" / "variance.png")
    data = Path(uri).read_bytes()
    assert data[:8] == PNG and Image.open(io.BytesIO(data)).size[0] > 300
    out = report.save_figures({"a": _figure(), "skipped": None, "b": _figure()}, str(tmp_path / "o"), folder="")
    assert out == {"a": str(tmp_path / "o" / "a.png"), "b": str(tmp_path / "o" / "b.png")}
    with pytest.raises(ParameterError, match="name"):
        report.save_figure(_figure(), str(tmp_path), "sub/x.png")


def test_save_table(tmp_path):
    uri = report.save_table(pd.DataFrame({"k": [1, 2], "v": [0.5, 0.9]}), str(tmp_path), "t")
    assert uri.endswith("t.csv")
    assert pd.read_csv(uri).to_dict("list") == {"k": [1, 2], "v": [0.5, 0.9]}
