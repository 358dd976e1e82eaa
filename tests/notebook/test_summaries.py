"""Tests of p8utils.notebook.summaries: counts table, preview, run and analysis summaries."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from p8utils import pca
from p8utils.errors import ParameterError
from p8utils.notebook import samples, summaries

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
    table = summaries.counts_table(MANIFEST)
    assert list(table.index) == ["total", "ok", "failed", "failed: empty", "failed: truncated", "reused"]
    assert table["images"].tolist() == [10, 7, 3, 2, 1, 0] and table["images"].dtype == np.int64


def test_run_summary():
    text = summaries.run_summary(SimpleNamespace(manifest=MANIFEST), {"variance": "runs/x/figures/variance.png"})
    assert "10 total, 7 ok, 3 failed (empty 2, truncated 1)" in text
    assert "k = 4 components keep 95.1 %" in text
    assert "runs/x/figures/variance.png" in text and "WARNING  : offline weights" in text
    assert summaries.run_summary(MANIFEST).splitlines()[0] == "Run complete: runs/x"
    assert "figure   : a.png" in summaries.run_summary(MANIFEST, ["a.png"])


def test_preview(spark):
    df = spark.createDataFrame(
        [("file:/a/Apple/x.jpg", "Apple", [3.0, 4.0, 0.0, 0.0, 9.0], None),
         ("file:/a/B/y.jpg", "B", None, "truncated")],
        "path string, label string, features array<float>, error string")
    table = summaries.preview(df, 5, values=2)
    assert list(table.columns) == ["file", "label", "error", "dims", "first values", "norm"]
    assert table["file"].tolist() == ["x.jpg", "y.jpg"]
    assert table.loc[0, "first values"] == [3.0, 4.0] and table.loc[0, "dims"] == 5
    assert table.loc[1, "dims"] == 0 and np.isnan(table.loc[1, "norm"])
    with pytest.raises(ParameterError, match="n=0"):
        summaries.preview(df, 0)


def test_analysis_summary():
    fit = SimpleNamespace(explained_variance=np.array([0.5, 0.3, 0.15, 0.05]), n_rows=9, width=4)
    scores = samples.ScoreSample(np.zeros((3, 3)), ["a", "b", "a"], ["1", "2", "3"], n_total=9)
    text = summaries.analysis_summary(fit, (0.9, 0.95, 0.99), {"x": "out/figures/x.png"}, scores)
    assert "PC1 50.0 %, PC2 30.0 %, PC3 15.0 %" in text
    assert "95 % of the variance: k = 3" in text and "99 % of the variance: k = 4" in text
    assert "3 of 9 images (random sample), 2 classes" in text and "written: out/figures/x.png" in text


def test_analysis_summary_uses_the_pipelines_k_choice():
    ev = np.full(10, 0.1)  # cumulative sum 0.9999999999999999: 100 % is reached at k = 10 within tolerance
    fit = SimpleNamespace(explained_variance=ev, n_rows=20, width=10)
    text = summaries.analysis_summary(fit, [1.0, 0.9, 0.9])
    assert f"100 % of the variance: k = {pca.choose_k(ev, 1.0)}" in text
    assert text.count("90 % of the variance: k = 9") == 1  # sorted, no duplicates
    assert text.index("90 %") < text.index("100 %")
    short = SimpleNamespace(explained_variance=np.array([0.5, 0.3]), n_rows=3, width=2)
    assert "95 % of the variance: not reached" in summaries.analysis_summary(short, [0.95])
    with pytest.raises(ParameterError, match="thresholds"):
        summaries.analysis_summary(fit, [95])
