"""Tests of p8utils.notebook.samples: bounded data brought to the driver (Spark)."""

from __future__ import annotations

import numpy as np
import pytest

from p8utils.errors import ParameterError
from p8utils.notebook import samples
from p8utils.validation import check_int


def _scores_df(spark, n=120, k=3, classes=4, null_every=10):
    rows = []
    for i in range(n):
        vec = None if i % null_every == 0 else [float(i), float(-i), float(i % 7)][:k]
        rows.append((f"/d/c{i % classes}/img_{i:04d}.jpg", f"c{i % classes}", vec))
    return spark.createDataFrame(rows, "path string, label string, pca_features array<double>")


def bounded_sample(df, max_rows: int, seed: int = 0):
    """At most ``max_rows`` rows of ``df`` (``df`` itself when it has no more): the cut collect_scores makes."""
    max_rows = int(check_int("max_rows", max_rows, 1, example=5000))
    n = df.count()
    return df if n <= max_rows else samples._limited(df, n, max_rows, seed)


def test_bounded_sample(spark):
    df = spark.range(500).repartition(3)
    small = bounded_sample(df, 50, seed=1).collect()
    assert 1 <= len(small) <= 50 and len({r.id for r in small}) == len(small)
    assert bounded_sample(df, 500) is df
    with pytest.raises(ParameterError, match="max_rows"):
        bounded_sample(df, 0)


def test_collect_scores(spark):
    df = _scores_df(spark)
    full = samples.collect_scores(df, 1000)
    assert full.n == full.n_total == 108  # 12 null rows (bad images) left out
    assert full.scores.shape == (108, 3) and full.scores.dtype == np.float64
    assert full.paths == sorted(full.paths)
    i = full.paths.index("/d/c1/img_0001.jpg")
    assert full.labels[i] == "c1" and list(full.scores[i]) == [1.0, -1.0, 1.0]
    assert full.describe() == "108 images, 4 classes" and full.n_classes == 4

    part = samples.collect_scores(df, 30, seed=3)
    assert 1 <= part.n <= 30 and part.n_total == 108
    assert part.describe() == f"{part.n} of 108 images (random sample), {part.n_classes} classes"
    assert set(part.paths) <= set(full.paths)


def test_collect_scores_errors(spark):
    df = _scores_df(spark, n=5)
    with pytest.raises(ParameterError, match="missing"):
        samples.collect_scores(df.drop("label"))
    with pytest.raises(ParameterError, match="no row"):
        samples.collect_scores(df.where("pca_features IS NULL"))
    with pytest.raises(ParameterError, match="max_rows"):
        samples.collect_scores(df, True)


def test_score_sample_describe_without_spark():
    one = samples.ScoreSample(np.zeros((1, 2)), ["a"], ["p"], n_total=1)
    assert (one.n, one.n_classes, one.describe()) == (1, 1, "1 images, 1 class")


def test_sample_images_spreads_over_classes(spark, sample_dir):
    from p8utils.images import load_images

    imgs, labels = samples.sample_images(load_images(spark, str(sample_dir)), 10)
    classes = sorted(p.name for p in sample_dir.iterdir() if p.is_dir())
    assert len(imgs) == len(labels) == 10
    assert labels[:8] == classes and set(labels[8:]) <= set(classes)  # one per class first
    for data in imgs:
        assert data[:2] == b"\xff\xd8"  # JPEG
    with pytest.raises(ParameterError):
        samples.sample_images(load_images(spark, str(sample_dir)), 0)
