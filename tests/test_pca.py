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
