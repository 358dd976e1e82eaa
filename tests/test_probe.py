"""Linear probe: stratified split, Spark ML logistic regression equal to scikit-learn's, the curve over k."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from p8utils.errors import ParameterError
from p8utils.probe import (
    DEFAULT_REG_PARAM,
    SPLIT_COL,
    ProbeSettings,
    linear_probe,
    plateau_k,
    probe_curve,
    stratified_split,
)


def sklearn_c(reg_param: float, n_train: int) -> float:
    """Return the scikit-learn ``C`` giving the probe's objective: ``1 / (reg_param × n_train)`` (p8utils.probe)."""
    return 1.0 / (float(reg_param) * int(n_train))


def _clusters(n_classes=6, per_class=30, d=20, seed=0, spread=1.6):
    """Overlapping Gaussian classes (a probe that is neither trivial nor hopeless), float32 features."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, d))
    rows = []
    for c in range(n_classes):
        x = centres[c] + spread * rng.normal(size=(per_class, d))
        rows += [(f"/data/class_{c}/img_{i:03d}.jpg", f"class_{c}", x[i].astype(np.float32).tolist())
                 for i in range(per_class)]
    return rows


@pytest.fixture(params=["driver", "spark"])
def fit_on(request, monkeypatch):
    """Where the probes of the test are fit: "driver" (scikit-learn, the default for small tables) or "spark"
    (Spark ML, forced by DRIVER_PROBE_ROWS = 0); the other path raises if taken."""
    from p8utils import probe

    def refuse(*args, **kwargs):
        raise AssertionError(f"the probe took the wrong path: expected {request.param}")

    if request.param == "spark":
        monkeypatch.setattr(probe, "DRIVER_PROBE_ROWS", 0)
        monkeypatch.setattr(probe, "_probe_local", refuse)
    else:
        pytest.importorskip("sklearn")
        monkeypatch.setattr(probe, "_probe", refuse)
    return request.param


@pytest.fixture(scope="module")
def clusters(spark):
    return spark.createDataFrame(_clusters(), "path string, label string, features array<float>")


def _split_frame(df, **kw):
    return stratified_split(df, **kw).select("path", "label", "features", SPLIT_COL).toPandas().sort_values("path")


def test_split_is_stratified_and_deterministic(spark, clusters):
    a = _split_frame(clusters, seed=0)
    assert len(a) == 180
    per_class = a.groupby("label")[SPLIT_COL].agg(["sum", "count"])
    assert (per_class["sum"] == 9).all() and (per_class["count"] == 30).all()  # round(0.3 * 30) held out per class
    b = _split_frame(clusters.repartition(3).orderBy("features"), seed=0)  # other partitioning and row order
    assert list(a.path) == list(b.path) and list(a[SPLIT_COL]) == list(b[SPLIT_COL])
    c = _split_frame(clusters, seed=1)
    assert list(a[SPLIT_COL]) != list(c[SPLIT_COL])
    # small classes: every class with 2 rows or more is in both parts; a single row trains only
    small = spark.createDataFrame([("p1", "a"), ("p2", "a"), ("p3", "b"), ("p4", "b"), ("p5", "b"), ("p6", "c")],
                                  "path string, label string")
    got = stratified_split(small, test_fraction=0.5).toPandas().groupby("label")[SPLIT_COL].agg(["sum", "count"])
    assert got.loc["a"].tolist() == [1, 2] and got.loc["b"].tolist() == [2, 3] and got.loc["c"].tolist() == [0, 1]
    capped = stratified_split(clusters, max_rows=60).toPandas()
    assert len(capped) == 60 and (capped.groupby("label").size() == 10).all()


def test_probe_equals_scikit_learn_on_the_same_split(clusters, fit_on):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    result = linear_probe(clusters)
    split = _split_frame(clusters, seed=0)
    train, test = split[~split[SPLIT_COL]], split[split[SPLIT_COL]]
    assert (result.n_train, result.n_test, result.n_classes) == (len(train), len(test), 6) == (126, 54, 6)
    sk = LogisticRegression(C=sklearn_c(DEFAULT_REG_PARAM, len(train)), max_iter=10000, tol=1e-10)
    sk.fit(np.stack(train.features), train.label)
    pred = sk.predict(np.stack(test.features))
    sk_acc, sk_f1 = accuracy_score(test.label, pred), f1_score(test.label, pred, average="macro")
    assert 0.4 < sk_acc < 1.0, "the data must make the comparison meaningful (neither trivial nor chance)"
    assert abs(result.accuracy - sk_acc) <= 0.01, (result.accuracy, sk_acc)
    assert abs(result.macro_f1 - sk_f1) <= 0.02, (result.macro_f1, sk_f1)
    assert linear_probe(clusters) == result  # deterministic


def test_probe_reads_ml_vectors(clusters, fit_on):
    from pyspark.ml.functions import array_to_vector

    vectors = clusters.withColumn("features", array_to_vector("features"))
    assert linear_probe(vectors) == linear_probe(clusters)


def test_probe_curve_over_k(clusters, fit_on):
    from p8utils.pca import fit_pca

    fit = fit_pca(clusters, k=20)
    curve = probe_curve(clusters, fit, ks=(2, 5, 20, 50))
    assert list(curve.columns) == ["representation", "k", "accuracy", "macro_f1", "cumulative_variance", "n_train",
                                   "n_test"]
    assert list(curve.representation) == ["pca", "pca", "pca", "raw"] and list(curve.k) == [2, 5, 20, 20]
    np.testing.assert_allclose(curve.cumulative_variance[:3], fit.cumulative_variance[[1, 4, 19]], rtol=1e-12)
    assert curve.cumulative_variance.iloc[-1] == 1.0 and (curve.n_test == 54).all()
    assert curve.accuracy.iloc[0] < curve.accuracy.iloc[2]  # more components, more of what tells classes apart
    # all d centred scores are a rotation of the features: an L2 probe (intercept free) gives the same accuracy
    assert abs(curve.accuracy.iloc[2] - curve.accuracy.iloc[3]) <= 1 / 54 + 1e-12


@pytest.mark.parametrize("n_classes", [2, 6])
def test_driver_and_spark_fit_the_same_probe(spark, monkeypatch, n_classes):
    """The driver's scikit-learn fit and Spark ML's give the same curve on the same split (two classes: scikit-learn's
    binary model at twice C, the multinomial problem)."""
    from p8utils import probe
    from p8utils.pca import fit_pca

    df = spark.createDataFrame(_clusters(n_classes=n_classes, per_class=40, spread=2.2),
                               "path string, label string, features array<float>")
    fit = fit_pca(df, k=20)
    driver = probe_curve(df, fit, ks=(2, 5, 20))
    monkeypatch.setattr(probe, "DRIVER_PROBE_ROWS", 0)
    spark_ml = probe_curve(df, fit, ks=(2, 5, 20))
    assert list(driver.k) == list(spark_ml.k) and (driver.n_test == spark_ml.n_test).all()
    assert 0.4 < driver.accuracy.min() and driver.accuracy.max() < 1.0, driver  # neither trivial nor chance
    one_row = 1 / driver.n_test.iloc[0]
    assert (driver.accuracy - spark_ml.accuracy).abs().max() <= one_row + 1e-12, (driver, spark_ml)


def _with_columns(rows, extra):
    """``rows`` of :func:`_clusters` with ``extra(features) -> list`` appended to each feature vector."""
    return [(p, lab, f + [float(v) for v in extra(np.asarray(f, dtype=np.float64))]) for p, lab, f in rows]


def test_probe_ignores_columns_of_float_noise(spark, fit_on):
    """Columns with a std of ~1e-10 of the others made Spark's L-BFGS give up at its start (chance accuracy)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    rows = _with_columns(_clusters(), lambda f: 1e-10 * rng.normal(size=5))
    df = spark.createDataFrame(rows, "path string, label string, features array<double>")
    result = linear_probe(df)
    split = _split_frame(df, seed=0)
    train, test = split[~split[SPLIT_COL]], split[split[SPLIT_COL]]
    sk = LogisticRegression(C=sklearn_c(DEFAULT_REG_PARAM, len(train)), max_iter=10000, tol=1e-10)
    sk_acc = (sk.fit(np.stack(train.features), train.label).predict(np.stack(test.features)) == test.label).mean()
    assert sk_acc > 0.4 and abs(result.accuracy - sk_acc) <= 0.01, (result.accuracy, sk_acc)


def test_probe_curve_past_the_rank_of_the_features(spark, fit_on):
    """k beyond the rank (here 20 of 40 columns, like fewer images than dimensions) keeps the rank's accuracy."""
    from p8utils.pca import fit_pca

    df = spark.createDataFrame(_with_columns(_clusters(), lambda f: 0.5 * f[::-1]),
                               "path string, label string, features array<float>")
    fit = fit_pca(df, k=30)
    assert fit.explained_variance[20] < 1e-12 * fit.explained_variance[0]  # components 21-40: float noise
    curve = probe_curve(df, fit, ks=(20, 30))
    assert list(curve.k) == [20, 30, 40]
    assert curve.accuracy.min() > 0.4 and curve.accuracy.max() - curve.accuracy.min() <= 1 / 54 + 1e-12, curve


def test_plateau_k():
    curve = pd.DataFrame({"representation": ["pca"] * 4 + ["raw"], "k": [2, 10, 50, 100, 1280],
                          "accuracy": [0.6, 0.95, 0.998, 1.0, 1.0]})
    assert plateau_k(curve) == 50 and plateau_k(curve, tolerance=0.0) == 100 and plateau_k(curve, 0.1) == 10
    assert plateau_k(curve[curve.representation == "raw"]) is None


def test_bad_parameters(spark, clusters):
    with pytest.raises(ParameterError, match=r"test_fraction=1.5 is outside \(0, 1\)"):
        linear_probe(clusters, ProbeSettings(test_fraction=1.5))
    with pytest.raises(ParameterError, match="reg_param=0"):
        ProbeSettings(reg_param=0)
    with pytest.raises(ParameterError, match="is not a ProbeSettings"):
        linear_probe(clusters, {"seed": 1})
    with pytest.raises(ParameterError, match="max_iter"):
        ProbeSettings(max_iter=0)
    with pytest.raises(ParameterError, match="max_rows"):
        ProbeSettings(max_rows=1)
    with pytest.raises(ParameterError, match="features_col='feats' is not a column"):
        linear_probe(clusters, features_col="feats")
    one = spark.createDataFrame([("p1", "a", [1.0]), ("p2", "a", [2.0])], "path string, label string, features "
                                "array<float>")
    with pytest.raises(ParameterError, match="at least 2 classes"):
        linear_probe(one)


# --------------------------------------------------------------------------- notebook 03's figure


def _curve():
    ks = [2, 5, 10, 50, 100, 200]
    acc = [0.5, 0.8, 0.9, 0.996, 0.999, 1.0]
    return pd.DataFrame({"representation": ["pca"] * 6 + ["raw"], "k": ks + [1280], "accuracy": acc + [0.998],
                         "macro_f1": [a - 0.01 for a in acc] + [0.997], "cumulative_variance": np.nan,
                         "n_train": 700, "n_test": 300})


def test_probe_plot_marks_the_plateau_and_the_variance_target():
    pytest.importorskip("matplotlib")
    from p8utils.notebook.plots import probe_plot

    explained = np.geomspace(1.0, 1e-4, 1280)
    explained /= explained.sum()
    fig = probe_plot(_curve(), explained)
    ax, ax_var = fig.axes
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    k95 = int(np.argmax(np.cumsum(explained) >= 0.95)) + 1
    assert any(t.startswith("accuracy plateau") and "k = 50" in t for t in legend), legend
    assert any(t == f"95 % of the variance: k = {k95}" for t in legend), legend
    assert any(t.startswith("raw features (1280-d)") for t in legend) and "300 held-out" in legend[0]
    assert ax.get_xscale() == "log" and ax_var.get_ylim() == (0.0, 1.05)
    with pytest.raises(ParameterError, match="no PCA row"):
        probe_plot(_curve()[lambda c: c.representation == "raw"], explained)


@pytest.mark.slow
def test_analyse_run_with_the_probe(spark, sample_run, tmp_path):
    pytest.importorskip("matplotlib")
    from p8utils.notebook.analysis import analyse_run

    result = analyse_run(spark, sample_run.output, str(tmp_path / "analysis"), probe=True, explorer=False,
                         extreme_images=0, show_3d=False)
    curve = result.probe_curve
    assert curve is not None and curve.representation.iloc[-1] == "raw" and len(curve) >= 3
    assert curve.accuracy.between(0, 1).all() and curve.k.iloc[-1] == 1280
    assert (tmp_path / "analysis" / "figures" / "probe_accuracy.png").stat().st_size > 0
    table = pd.read_csv(tmp_path / "analysis" / "probe_curve.csv")
    assert list(table.k) == list(curve.k) and "probe_accuracy" in result.figures
    assert result.fit.k == 3 and result.fit.components.shape == (1280, 3)
