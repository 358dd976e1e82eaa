from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA as SkPCA

from p8utils.errors import ParameterError
from p8utils.pca import check_pca_params, choose_k, fit_pca, transform


def _matrix(n=60, d=40, seed=0):
    """Low-rank-ish data with well separated eigenvalues (float32 like the features)."""
    rng = np.random.default_rng(seed)
    scales = np.geomspace(10.0, 0.01, d)
    x = rng.normal(size=(n, d)) * scales @ np.linalg.qr(rng.normal(size=(d, d)))[0] + 3.0
    return x.astype(np.float32)


def _df(spark, x, with_null=True):
    rows = [(f"p{i}", "c", [float(v) for v in row]) for i, row in enumerate(x)]
    if with_null:
        rows.append(("bad", "c", None))
    return spark.createDataFrame(rows, "path string, label string, features array<float>")


def _align_signs(a, b):
    signs = np.sign(np.sum(a * b, axis=0))
    signs[signs == 0] = 1
    return a * signs


def test_matches_sklearn_scores_and_variance(spark):
    x = _matrix()
    df = _df(spark, x)
    res = fit_pca(df, k=10)
    sk = SkPCA(n_components=10, svd_solver="full").fit(x.astype(np.float64))
    ref_ratio = SkPCA(svd_solver="full").fit(x.astype(np.float64)).explained_variance_ratio_
    assert res.explained_variance.shape == (40,) and res.n_rows == 60
    np.testing.assert_allclose(res.explained_variance[: len(ref_ratio)], ref_ratio, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(res.cumulative_variance[-1], 1.0, rtol=1e-9)
    np.testing.assert_allclose(res.mean, x.astype(np.float64).mean(axis=0), rtol=1e-9)

    out = transform(res, df).collect()
    assert [r.path for r in out][-1] == "bad" and out[-1].pca_features is None
    got = np.array([r.pca_features for r in out if r.pca_features is not None])
    ref = sk.transform(x.astype(np.float64))
    assert got.shape == ref.shape == (60, 10)
    got = _align_signs(got, ref)
    rel = np.linalg.norm(got - ref, axis=0) / np.linalg.norm(ref, axis=0)
    assert rel.max() <= 1e-6, rel
    # centred: scores have zero mean (Spark's PCAModel alone would not)
    assert np.abs(got.mean(axis=0)).max() < 1e-8 * np.abs(got).max()


def test_variance_target_picks_smallest_k(spark):
    x = _matrix()
    res = fit_pca(_df(spark, x, with_null=False), variance=0.95)
    cum = np.cumsum(SkPCA(svd_solver="full").fit(x.astype(np.float64)).explained_variance_ratio_)
    expected = int(np.argmax(cum >= 0.95)) + 1
    assert res.k == expected and res.components.shape == (40, expected)
    assert res.explained_at_k >= 0.95 and (expected == 1 or cum[expected - 2] < 0.95)


def test_choose_k():
    ev = np.array([0.5, 0.3, 0.15, 0.05])
    assert choose_k(ev, 0.5) == 1
    assert choose_k(ev, 0.9) == 3
    assert choose_k(ev, 1.0) == 4
    assert choose_k(ev, 0.81) == 3


@pytest.mark.parametrize("k,variance,width,match", [
    (None, None, None, "give exactly one"),
    (5, 0.9, None, "give exactly one"),
    (0, None, None, "positive integer"),
    (2000, None, 1280, "larger than the feature width 1280"),
    (None, 0.0, None, r"outside \(0, 1\]"),
    (None, 1.5, None, r"outside \(0, 1\]"),
])
def test_bad_parameters(k, variance, width, match):
    with pytest.raises(ParameterError, match=match):
        check_pca_params(k, variance, width)


def test_too_few_rows(spark):
    with pytest.raises(ParameterError, match="at least 2 rows"):
        fit_pca(_df(spark, _matrix(n=1), with_null=True), k=1)


# --------------------------------------------------------------------------- the two methods


def _align_columns(a, b):
    """Flip the sign of each column of ``a`` to match ``b``."""
    signs = np.sign(np.sum(a * b, axis=0))
    return a * np.where(signs == 0, 1.0, signs)


@pytest.mark.parametrize("n,partitions", [(300, 5), (25, 3)], ids=["tall", "fewer_rows_than_width"])
def test_covariance_method_equals_spark_ml(spark, n, partitions):
    """One pass + treeAggregate + eigh gives Spark ML's explained variance (1e-9) and axes (up to sign, 1e-6)."""
    x = _matrix(n=n, d=40, seed=3)
    df = _df(spark, x).repartition(partitions)
    cov = fit_pca(df, k=10, method="covariance")
    ml = fit_pca(df, k=10, method="spark_ml")
    assert cov.n_rows == ml.n_rows == n and cov.k == ml.k == 10
    np.testing.assert_allclose(cov.explained_variance, ml.explained_variance, rtol=0, atol=1e-9)
    np.testing.assert_allclose(cov.mean, ml.mean, rtol=1e-12, atol=1e-12)
    separated = min(n - 1, 10)  # axes are defined (up to sign) where the eigenvalues are distinct and non-zero
    np.testing.assert_allclose(_align_columns(cov.components, ml.components)[:, :separated],
                               ml.components[:, :separated], rtol=0, atol=1e-6)
    # deterministic signs: the largest entry of every axis is positive
    assert np.all(cov.components[np.abs(cov.components).argmax(axis=0), np.arange(10)] > 0)


def test_covariance_method_reads_vectors_and_doubles(spark):
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    x = _matrix(n=80, d=12, seed=5)
    df = _df(spark, x, with_null=False)
    ref = fit_pca(df, k=3)
    for other in (df.withColumn("features", F.col("features").cast("array<double>")),
                  df.withColumn("features", array_to_vector("features"))):
        got = fit_pca(other, k=3)
        np.testing.assert_allclose(got.explained_variance, ref.explained_variance, rtol=0, atol=1e-12)
        np.testing.assert_allclose(got.components, ref.components, rtol=0, atol=1e-9)


def test_unknown_method_and_ragged_rows(spark):
    df = _df(spark, _matrix(n=10, d=4))
    with pytest.raises(ParameterError, match=r"method='svd' is not valid. Fix: use one of \['covariance', "):
        fit_pca(df, k=2, method="svd")
    ragged = spark.createDataFrame([([1.0, 2.0],), ([1.0, 2.0, 3.0],), ([0.0, 1.0],)], "features array<float>")
    with pytest.raises(Exception, match="different widths"):
        fit_pca(ragged.coalesce(1), k=1)
