from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA as SkPCA

from p8utils.errors import ParameterError
from p8utils.pca import Moments, check_pca_params, choose_k, fit_moments, fit_pca, moments, transform


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
    np.testing.assert_allclose(cov.explained_variance, ml.explained_variance, rtol=1e-6,
                               atol=1e-12 * ml.explained_variance[0])  # relative: ratios go down to ~1e-7
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


def test_moments_add_and_subtract_to_the_moments_of_the_rows(spark):
    """previous - removed + added equals the moments of the rows that remain, read from Spark."""
    x = _matrix(n=90, d=30).astype(np.float64)
    whole, first, middle, last = (moments(_df(spark, part)) for part in (x, x[:40], x[40:70], x[70:]))
    assert (whole.n, whole.width) == (90, 30)
    centred = x - x.mean(axis=0)
    np.testing.assert_allclose(whole.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(whole.scatter, centred.T @ centred, rtol=1e-9, atol=1e-9 * np.abs(centred).max() ** 2)
    summed = first + middle + last
    np.testing.assert_allclose(summed.scatter, whole.scatter, rtol=1e-9, atol=1e-12 * np.abs(whole.scatter).max())
    rest = whole - middle
    kept = np.vstack([x[:40], x[70:]])
    np.testing.assert_allclose(rest.mean, kept.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(rest.scatter, (kept - kept.mean(0)).T @ (kept - kept.mean(0)), rtol=1e-9,
                               atol=1e-12 * np.abs(whole.scatter).max())
    assert (whole - whole).n == 0 and (Moments.empty() + first).n == 40
    with pytest.raises(ValueError, match="30-d and 29-d"):
        _ = whole + moments(_df(spark, x[:, :29]))
    back = Moments.from_bytes(whole.to_bytes())
    assert back.n == whole.n and np.array_equal(back.scatter, whole.scatter) and np.array_equal(back.mean, whole.mean)


def test_arrow_moments_on_the_driver_equal_sparks(spark, tmp_path, monkeypatch):
    """The driver's moments (pyarrow, small runs) are Spark's tasks' moments of the same parquet rows, nulls left
    out, across blocks and chunks; rows of different widths are refused the same way."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from p8utils import pca as pca_mod
    from p8utils.pca import arrow_moments

    monkeypatch.setattr(pca_mod, "_BLOCK_VALUES", 35 * 40)  # several blocks per chunk, a partial last one
    x = _matrix(n=250, d=40)
    _df(spark, x).repartition(3).write.parquet(str(tmp_path / "t"))
    table = pq.read_table(str(tmp_path / "t"), columns=["features"])
    driver, tasks = arrow_moments(table.column("features")), moments(spark.read.parquet(str(tmp_path / "t")))
    assert driver.n == tasks.n == 250 and table.column("features").num_chunks >= 2
    np.testing.assert_allclose(driver.mean, tasks.mean, rtol=1e-12)
    np.testing.assert_allclose(driver.scatter, tasks.scatter, rtol=1e-9, atol=1e-12 * np.abs(tasks.scatter).max())
    assert arrow_moments(pa.array([None], pa.list_(pa.float32()))).n == 0
    with pytest.raises(ValueError, match="different widths"):
        arrow_moments(pa.array([[1.0, 2.0], [1.0, 2.0, 3.0]]))


def test_fit_from_updated_moments_equals_a_refit_and_sklearn(spark):
    """The incremental refit: a fit from combined moments is the fit of all the rows."""
    x = _matrix(n=80, d=24, seed=3)
    old, gone, new = x[:60], x[10:20], _matrix(n=20, d=24, seed=4)
    now = np.vstack([old[:10], old[20:], new])
    updated = moments(_df(spark, old)) - moments(_df(spark, gone)) + moments(_df(spark, new))
    inc, full = fit_moments(updated, k=5), fit_pca(_df(spark, now), k=5)
    assert inc.n_rows == full.n_rows == 70 and inc.moments is updated and full.moments is not None
    np.testing.assert_allclose(inc.explained_variance, full.explained_variance, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(inc.components, full.components, atol=1e-8)  # same signs: same sign rule
    ref = SkPCA(svd_solver="full").fit(now.astype(np.float64))
    np.testing.assert_allclose(inc.explained_variance[:24], ref.explained_variance_ratio_, rtol=1e-6, atol=1e-12)
    with pytest.raises(ParameterError, match="at least 2 rows"):
        fit_moments(Moments.empty(), k=1)
