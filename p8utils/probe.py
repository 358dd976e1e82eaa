"""Linear probe: how well a linear classifier recognises the classes from features or PCA scores.

Explained variance says how much of the features' spread ``k`` components
keep, not how much of what tells the classes apart. The probe measures the
latter: :func:`linear_probe` trains Spark ML's multinomial
``LogisticRegression`` on a stratified split of a features table and reports
the held-out accuracy and macro-F1; :func:`probe_curve` does it on the
centred PCA scores at a grid of ``k`` (and on the raw features), next to the
cumulative explained variance, so ``k`` can be chosen by what it keeps for
recognition (:func:`plateau_k`). Notebook 03, ``make bench`` and the tests
use these functions.

The split
---------
:func:`stratified_split` ranks each class's rows by a hash of ``seed`` and the
row's ``path`` and puts the first ``round(test_fraction × n_class)`` (at least
1, at most ``n_class - 1``) in the test part: every class with two rows or
more is in both parts, and the split depends only on the seed and the paths
(not on partitioning or row order). A class with a single row is in the
training part only. ``max_rows`` bounds the rows used, the same number per
class (the first ones in the hash order), so a probe on a 90,000-image run
stays cheap.

The classifier and its scikit-learn equivalent
----------------------------------------------
Spark ML minimises ``(1/n) Σ loss + (reg_param / 2) ‖W‖²`` over the
``n = n_train`` training rows (``elasticNetParam=0``; intercepts not
penalised; ``standardization=False``: the features are used as they are; columns of
negligible spread, :data:`NEGLIGIBLE_STD`, are zeroed first).
scikit-learn's ``LogisticRegression`` minimises ``C Σ loss + ½ ‖W‖²``, the
same problem for ``C = 1 / (reg_param × n_train)`` (multinomial, lbfgs,
``fit_intercept=True``; with two classes scikit-learn fits the binary model,
whose equal problem has ``C = 2 / (reg_param × n_train)``).

Where it runs
-------------
A probe of at most :data:`DRIVER_PROBE_ROWS` rows is fit on the driver with
scikit-learn's ``newton-cg`` solver when scikit-learn is installed (the
``notebooks`` extra has it; ``max_iter`` then caps Newton steps): the split is
made by Spark as above, its rows collected once, and every probe of a curve
fits in memory, without a Spark job per L-BFGS iteration (the six probes of
notebook 03 on the 80-image sample: ~30 s with Spark ML). Larger tables, or
no scikit-learn, are fit by Spark ML. ``tests/test_probe.py`` checks that both
give the same accuracy within one point on the same split.

Examples
--------
With Spark, ``linear_probe(features)`` gives a :class:`ProbeResult`
(``.accuracy``, ``.macro_f1``) and ``probe_curve(features, pca.fit_pca(features,
k=200), ks=(10, 50, 100, 200))`` a table with one row per ``k``. Reading such
a table needs nothing more:

>>> import pandas as pd
>>> from p8utils.probe import plateau_k
>>> curve = pd.DataFrame({"representation": ["pca"] * 4 + ["raw"], "k": [10, 50, 100, 200, 1280],
...                       "accuracy": [0.80, 0.952, 0.955, 0.956, 0.96]})
>>> plateau_k(curve)  # the smallest k within 0.5 point of the best PCA accuracy
50
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from p8utils.errors import ParameterError
from p8utils.validation import check_int

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

    from p8utils.pca import PCAResult

__all__ = [
    "DEFAULT_KS",
    "DRIVER_PROBE_ROWS",
    "DEFAULT_MAX_ITER",
    "DEFAULT_REG_PARAM",
    "DEFAULT_TEST_FRACTION",
    "NEGLIGIBLE_STD",
    "PLATEAU_TOLERANCE",
    "SPLIT_COL",
    "ProbeResult",
    "ProbeSettings",
    "linear_probe",
    "plateau_k",
    "probe_curve",
    "stratified_split",
]

#: Held-out fraction of each class.
DEFAULT_TEST_FRACTION = 0.3

#: L2 strength of the probe (Spark's ``regParam``; scikit-learn's ``C = 1 / (reg_param × n_train)``).
DEFAULT_REG_PARAM = 1e-3

#: L-BFGS iterations of the probe.
DEFAULT_MAX_ITER = 200

#: Numbers of PCA components :func:`probe_curve` tries by default (those up to the fit's ``k``).
DEFAULT_KS: Tuple[int, ...] = (2, 5, 10, 20, 50, 100, 200, 500)

#: Accuracy within this of the best one counts as the plateau (0.5 point).
PLATEAU_TOLERANCE = 0.005

#: Feature columns whose training standard deviation is below this fraction of the largest one are set to 0
#: before the fit. Spark ML's logistic regression scales each column by 1 / std inside L-BFGS (even with
#: ``standardization=False``), so a column of float noise (std ~1e-15, e.g. the PCA components past the rank
#: of fewer images than dimensions) makes its line search fail: it gives up on the starting point, every
#: coefficient 0, chance accuracy. Measured on the sample's features: fine at a ratio of 1e-7, failed at 1e-8.
#: Under L2 such a column cannot move the fit (a coefficient of 1e6 or more is needed to use it).
NEGLIGIBLE_STD = 1e-6

#: A probe of at most this many rows (training and test) is fit on the driver with scikit-learn when it is
#: installed (at d = 1280 about 200 MB as float64); above, or without scikit-learn, Spark ML fits it.
DRIVER_PROBE_ROWS = 20_000

#: Boolean column :func:`stratified_split` adds: True for a held-out (test) row.
SPLIT_COL = "is_test"

# Columns added to the table while probing.
_LABEL_INDEX, _VECTOR = "_p8_y", "_p8_v"


@dataclass(frozen=True)
class ProbeResult:
    """Held-out scores of one linear probe.

    Attributes
    ----------
    accuracy : float
        Fraction of test rows whose predicted class is their label, in [0, 1].
    macro_f1 : float
        Unweighted mean over classes of F1 (classes in the labels or the
        predictions of the test part, as scikit-learn's ``f1_score(average="macro")``).
    n_train, n_test : int
        Rows in each part.
    n_classes : int
        Distinct labels in the probed rows.
    """

    accuracy: float
    macro_f1: float
    n_train: int
    n_test: int
    n_classes: int


def _check_split(test_fraction: float, max_rows: Optional[int]) -> None:
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ParameterError(f"test_fraction={test_fraction!r} is outside (0, 1). Fix: e.g. test_fraction=0.3.")
    check_int("max_rows", max_rows, 2, optional=True, example=20000)


@dataclass(frozen=True)
class ProbeSettings:
    """How a probe splits a table and fits it: the settings :func:`linear_probe` and :func:`probe_curve` share.

    Attributes
    ----------
    label_col, id_col, test_fraction, seed, max_rows
        The split, as in :func:`stratified_split`.
    reg_param : float
        L2 strength, > 0 (Spark's ``regParam``; scikit-learn ``C = 1 / (reg_param × n_train)``).
    max_iter : int
        Iterations of the optimiser, >= 1 (Spark ML's L-BFGS; on the driver, newton-cg's Newton steps).

    Raises
    ------
    ParameterError
        A value out of its range, when the settings are made.

    Examples
    --------
    >>> settings = ProbeSettings(seed=1, max_rows=20000)
    >>> settings.test_fraction, settings.reg_param, settings.max_iter
    (0.3, 0.001, 200)
    """

    label_col: str = "label"
    id_col: str = "path"
    test_fraction: float = DEFAULT_TEST_FRACTION
    seed: int = 0
    max_rows: Optional[int] = None
    reg_param: float = DEFAULT_REG_PARAM
    max_iter: int = DEFAULT_MAX_ITER

    def __post_init__(self) -> None:
        _check_split(self.test_fraction, self.max_rows)
        reg = self.reg_param
        if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not reg > 0:
            raise ParameterError(f"reg_param={reg!r} must be a positive number. Fix: e.g. reg_param=1e-3.")
        check_int("max_iter", self.max_iter, 1, example=DEFAULT_MAX_ITER)


def stratified_split(
    df: DataFrame,
    *,
    label_col: str = "label",
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
    id_col: str = "path",
    max_rows: Optional[int] = None,
) -> DataFrame:
    """Mark each row as train or test, stratified by class, deterministic for a seed.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
        Has ``label_col`` and ``id_col`` (a unique key per row, e.g. the path).
    label_col : str
        Class column.
    test_fraction : float
        In (0, 1): share of each class held out (rounded; at least one row and
        at least one left for training when the class has two rows or more).
    seed : int
        Seed of the per-class order.
    id_col : str
        Unique row key hashed with the seed.
    max_rows : int, optional
        Use at most about this many rows: ``ceil(max_rows / n_classes)`` per class.

    Returns
    -------
    pyspark.sql.DataFrame
        The rows used, with a boolean column :data:`SPLIT_COL` (``is_test``; True: held out).

    Raises
    ------
    ParameterError
        A missing column or a bad parameter.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    _check_split(test_fraction, max_rows)
    missing = [c for c in (label_col, id_col) if c not in df.columns]
    if missing:
        raise ParameterError(f"columns {missing} are missing from the DataFrame {df.columns}. Fix: pass a features "
                             "table of a run (path, label, features) or name the columns (label_col=, id_col=; for "
                             "a probe: ProbeSettings(label_col=, id_col=)).")
    by_class = Window.partitionBy(label_col)
    ranked = (df.withColumn("_p8_h", F.xxhash64(F.lit(int(seed)), F.col(id_col).cast("string")))
              .withColumn("_p8_rank", F.row_number().over(by_class.orderBy("_p8_h", id_col)))
              .withColumn("_p8_n", F.count(F.lit(1)).over(by_class)))
    n = F.col("_p8_n")
    if max_rows is not None:
        n_classes = max(1, df.select(label_col).distinct().count())
        cap = int(math.ceil(max_rows / n_classes))
        ranked = ranked.where(F.col("_p8_rank") <= cap)
        n = F.least(n, F.lit(cap))
    n_test = F.when(n < 2, F.lit(0)).otherwise(F.least(F.greatest(F.round(n * float(test_fraction)), F.lit(1)), n - 1))
    return ranked.withColumn(SPLIT_COL, F.col("_p8_rank") <= n_test).drop("_p8_h", "_p8_rank", "_p8_n")


def _as_vector(col: str, width: Optional[int] = None):  # noqa: ANN202 - a pyspark Column
    """Return the array column ``col`` as an ml Vector column, cut to its first ``width`` entries when given."""
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    c = F.col(col)
    return array_to_vector(c if width is None else F.slice(c, 1, int(width)))


def _indexed(df: DataFrame, label_col: str) -> Tuple[DataFrame, int]:
    """Add the label's index (labels sorted alphabetically); return the table and the number of classes."""
    from pyspark.sql import functions as F

    labels = sorted(r[0] for r in df.select(label_col).distinct().collect())
    mapping = F.create_map(*[x for i, lab in enumerate(labels) for x in (F.lit(lab), F.lit(float(i)))])
    return df.withColumn(_LABEL_INDEX, mapping[F.col(label_col)]), len(labels)


def _macro_f1(pairs: Sequence[Tuple[float, float, int]]) -> Tuple[float, float]:
    """Accuracy and macro-F1 from ``(label, prediction, count)`` triples."""
    tp: Dict[float, int] = {}
    fp: Dict[float, int] = {}
    fn: Dict[float, int] = {}
    total = correct = 0
    for y, p, c in pairs:
        total += c
        if y == p:
            correct += c
            tp[y] = tp.get(y, 0) + c
        else:
            fn[y] = fn.get(y, 0) + c
            fp[p] = fp.get(p, 0) + c
    classes = set(tp) | set(fp) | set(fn)
    f1 = [2 * tp.get(k, 0) / (2 * tp.get(k, 0) + fp.get(k, 0) + fn.get(k, 0)) for k in classes]
    return correct / max(total, 1), float(np.mean(f1)) if f1 else 0.0


def _probe(split: DataFrame, vector, n_classes: int, reg_param: float, max_iter: int,  # noqa: ANN001 - a Column
           n_train: int, n_test: int, std: Optional[np.ndarray] = None) -> ProbeResult:
    """Fit the multinomial logistic regression on the train rows of ``split``, score the test rows.

    ``std``: the training rows' standard deviation of each entry of ``vector`` when the caller has it
    (:func:`_train_std`), else computed here.
    """
    from pyspark.ml.classification import LogisticRegression
    from pyspark.sql import functions as F

    data = _without_negligible_columns(split.select(F.col(_LABEL_INDEX), F.col(SPLIT_COL), vector.alias(_VECTOR)),
                                       std)
    lr = LogisticRegression(featuresCol=_VECTOR, labelCol=_LABEL_INDEX, family="multinomial", regParam=float(reg_param),
                            elasticNetParam=0.0, maxIter=int(max_iter), tol=1e-8, standardization=False)
    model = lr.fit(data.where(F.col(SPLIT_COL) == F.lit(False)))
    counts = (model.transform(data.where(F.col(SPLIT_COL))).groupBy(_LABEL_INDEX, "prediction").count().collect())
    accuracy, macro_f1 = _macro_f1([(float(r[0]), float(r[1]), int(r[2])) for r in counts])
    return ProbeResult(float(accuracy), float(macro_f1), n_train, n_test, n_classes)


def _train_std(data: DataFrame, vector) -> Optional[np.ndarray]:  # noqa: ANN001 - a Column
    """Return the standard deviation of each entry of the Vector column ``vector`` over the training rows.

    Returns
    -------
    numpy.ndarray or None
        Float64 ``(width,)`` (NaN as 0); None without training rows.
    """
    from pyspark.ml.stat import Summarizer
    from pyspark.sql import functions as F

    row = data.where(~F.col(SPLIT_COL)).select(Summarizer.std(vector).alias("std")).first()
    return np.nan_to_num(np.asarray(row["std"].toArray(), dtype=np.float64)) if row and row["std"] is not None else None


def _without_negligible_columns(data: DataFrame, std: Optional[np.ndarray] = None) -> DataFrame:
    """Zero the vector entries whose training standard deviation is below :data:`NEGLIGIBLE_STD` × the largest.

    ``data`` has the ml Vector column ``_VECTOR`` and :data:`SPLIT_COL`; returned with the same columns.
    ``std``: those deviations (:func:`_train_std`), computed here when not given.
    """
    from pyspark.ml.feature import ElementwiseProduct
    from pyspark.ml.linalg import Vectors
    from pyspark.sql import functions as F

    if std is None:
        std = _train_std(data, F.col(_VECTOR))
    if std is None or std.size == 0:
        return data
    keep = std > NEGLIGIBLE_STD * std.max()
    if keep.all() or not keep.any():
        return data
    scaled = ElementwiseProduct(scalingVec=Vectors.dense(keep.astype(np.float64)), inputCol=_VECTOR,
                                outputCol="_p8_kept").transform(data)
    return scaled.select(_LABEL_INDEX, SPLIT_COL, F.col("_p8_kept").alias(_VECTOR))


def _on_driver(n_rows: int) -> bool:
    """Whether a probe of ``n_rows`` rows is fit on the driver (:data:`DRIVER_PROBE_ROWS`, scikit-learn installed)."""
    import importlib.util

    return n_rows <= DRIVER_PROBE_ROWS and importlib.util.find_spec("sklearn") is not None


def _collected(split: DataFrame, features_col: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Collect the rows of a prepared split on the driver.

    Returns
    -------
    x : numpy.ndarray
        Float64 ``(n, d)``: the features.
    y : numpy.ndarray
        Float64 ``(n,)``: the label indices.
    is_test : numpy.ndarray
        Bool ``(n,)``: the held-out rows.
    """
    table = split.select(_LABEL_INDEX, SPLIT_COL, features_col).toPandas()
    x = np.stack([np.asarray(v, dtype=np.float64) for v in table[features_col]])
    return x, table[_LABEL_INDEX].to_numpy(np.float64), table[SPLIT_COL].to_numpy(bool)


def _probe_local(x: np.ndarray, y: np.ndarray, is_test: np.ndarray, n_classes: int, reg_param: float, max_iter: int,
                 std: Optional[np.ndarray] = None) -> ProbeResult:
    """:func:`_probe` on the driver with scikit-learn: the same objective, columns and scores.

    ``x`` float64 ``(n, d)``, ``y`` float64 ``(n,)`` label indices, ``is_test`` bool ``(n,)``; ``std``: the
    training rows' standard deviation of each column when the caller has it, else computed here.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    train = ~is_test
    if std is None:
        std = x[train].std(axis=0, ddof=1) if train.sum() > 1 else np.zeros(x.shape[1])
    if std.size and std.max() > 0:
        x = np.where(std > NEGLIGIBLE_STD * std.max(), x, 0.0)  # as Spark's path (_without_negligible_columns)
    n_train = int(train.sum())
    binary = len(np.unique(y[train])) == 2  # scikit-learn's binary model: the multinomial problem at twice C
    # newton-cg, not lbfgs: on raw features (d > n_train) scikit-learn's L-BFGS, without the per-column scaling
    # Spark's applies inside, needed ~1,000 iterations (16 s) to reach the accuracy Spark ML's reaches in 200;
    # newton-cg reached it in 17 (0.4 s; 240 real photos, offline weights)
    model = LogisticRegression(C=(2.0 if binary else 1.0) / (float(reg_param) * n_train), max_iter=int(max_iter),
                               tol=1e-8, solver="newton-cg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # Spark ML stops at max_iter silently too
        model.fit(x[train], y[train])
    pairs: Dict[Tuple[float, float], int] = {}
    for label, predicted in zip(y[is_test], model.predict(x[is_test])):
        pairs[(float(label), float(predicted))] = pairs.get((float(label), float(predicted)), 0) + 1
    accuracy, macro_f1 = _macro_f1([(a, b, c) for (a, b), c in pairs.items()])
    return ProbeResult(float(accuracy), float(macro_f1), n_train, int(is_test.sum()), n_classes)


def _prepared(df: DataFrame, features_col: str, settings: ProbeSettings) -> Tuple[DataFrame, int, int, int]:
    """Rows with features, split and label-indexed, persisted; with n_classes, n_train, n_test."""
    from pyspark import StorageLevel
    from pyspark.ml.functions import vector_to_array
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType

    if not isinstance(settings, ProbeSettings):
        raise ParameterError(f"settings={settings!r} is not a ProbeSettings. Fix: e.g. ProbeSettings(seed=1).")
    if features_col not in df.columns:
        raise ParameterError(f"features_col={features_col!r} is not a column of the DataFrame {df.columns}.")
    rows = df.where(F.col(features_col).isNotNull() & F.col(settings.label_col).isNotNull())
    if not isinstance(df.schema[features_col].dataType, ArrayType):  # an ml Vector: as an array, like the others
        rows = rows.withColumn(features_col, vector_to_array(F.col(features_col)))
    split = stratified_split(rows, label_col=settings.label_col, test_fraction=settings.test_fraction,
                             seed=settings.seed, id_col=settings.id_col, max_rows=settings.max_rows)
    split, n_classes = _indexed(split, settings.label_col)
    # The per-class window leaves spark.sql.shuffle.partitions partitions (200 by default): every L-BFGS
    # iteration would run that many tasks on a few thousand rows. One partition per core is enough.
    cores = max(1, split.sparkSession.sparkContext.defaultParallelism)
    split = split.coalesce(cores).persist(StorageLevel.MEMORY_AND_DISK)
    sizes = {bool(r[0]): int(r[1]) for r in split.groupBy(SPLIT_COL).count().collect()}
    n_train, n_test = sizes.get(False, 0), sizes.get(True, 0)
    if n_classes < 2 or n_test == 0:
        split.unpersist()
        raise ParameterError(f"a linear probe needs at least 2 classes with 2 rows or more; found {n_classes} "
                             f"classes, {n_train} training and {n_test} test rows. Fix: probe a table with more "
                             "labelled images per class.")
    return split, n_classes, n_train, n_test


def linear_probe(df: DataFrame, settings: ProbeSettings = ProbeSettings(), *,
                 features_col: str = "features") -> ProbeResult:
    """Train a multinomial logistic regression on a stratified split; score the held-out part.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
        A features table: ``features_col`` (array<float|double>[d] or ml
        Vector; null rows are left out), ``settings.label_col``, ``settings.id_col``.
    settings : ProbeSettings
        The split and the fit.
    features_col : str
        Feature column.

    Returns
    -------
    ProbeResult

    Raises
    ------
    ParameterError
        Missing columns, or fewer than 2 classes with 2 rows.
    """
    split, n_classes, n_train, n_test = _prepared(df, features_col, settings)
    try:
        if _on_driver(n_train + n_test):
            x, y, is_test = _collected(split, features_col)
            return _probe_local(x, y, is_test, n_classes, settings.reg_param, settings.max_iter)
        return _probe(split, _as_vector(features_col), n_classes, settings.reg_param, settings.max_iter, n_train,
                      n_test)
    finally:
        split.unpersist()


def probe_curve(
    features_df: DataFrame,
    fit: PCAResult,
    ks: Sequence[int] = DEFAULT_KS,
    settings: ProbeSettings = ProbeSettings(),
    *,
    features_col: str = "features",
    raw: bool = True,
) -> pd.DataFrame:
    """Held-out probe accuracy on the first ``k`` centred PCA scores for each ``k``, and on the raw features.

    One split for every row of the curve (same rows, same seed), so the rows
    differ only by the representation.

    Parameters
    ----------
    features_df : pyspark.sql.DataFrame
        A features table (see :func:`linear_probe`).
    fit : PCAResult
        A PCA of these features (:func:`p8utils.pca.fit_pca`), with ``fit.k``
        at least the largest ``k`` wanted (``ks`` beyond ``fit.k`` are left out).
    ks : sequence of int
        Numbers of leading components to probe.
    settings : ProbeSettings
        The split and the fits.
    features_col : str
        Feature column.
    raw : bool
        Also probe the raw features (the last row, ``representation="raw"``,
        ``k`` = the feature width, ``cumulative_variance`` = 1).

    Returns
    -------
    pandas.DataFrame
        One row per probe: ``representation`` (``"pca"`` or ``"raw"``), ``k``
        (int), ``accuracy``, ``macro_f1``, ``cumulative_variance`` (floats),
        ``n_train``, ``n_test`` (ints); PCA rows by increasing ``k``.

    Raises
    ------
    ParameterError
        No ``k`` in ``[1, fit.k]``, and the errors of :func:`linear_probe`.
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from p8utils.pca import project_rows, transform

    wanted = sorted({int(check_int("k", k, 1, example=50)) for k in ks})  # type: ignore[arg-type]
    chosen = [k for k in wanted if k <= fit.k]
    if not chosen and not raw:
        raise ParameterError(f"ks={list(ks)}: none is in [1, fit.k={fit.k}]. Fix: fit the PCA with k=max(ks), "
                             f"e.g. pca.fit_pca(features, k={max(wanted) if wanted else 50}).")
    split, n_classes, n_train, n_test = _prepared(features_df, features_col, settings)
    reg_param, max_iter = settings.reg_param, settings.max_iter
    if _on_driver(n_train + n_test):
        try:
            x, y, is_test = _collected(split, features_col)
        finally:
            split.unpersist()
        scores = project_rows(fit, x)
        spreads = scores[~is_test].std(axis=0, ddof=1) if (~is_test).sum() > 1 else None
        return _curve(fit, chosen, raw, lambda k: _probe_local(
            x if k is None else scores[:, :k], y, is_test, n_classes, reg_param, max_iter,
            None if k is None or spreads is None else spreads[:k]))
    # every probe reads the scores twice (fit, test rows), after one pass for their spreads: project them once
    scored = transform(fit, split.withColumn("_p8_raw", F.col(features_col)), input_col=features_col,
                       output_col="_p8_scores").persist(StorageLevel.MEMORY_AND_DISK)
    try:
        spark_spreads = _train_std(scored, _as_vector("_p8_scores"))  # once; each k takes its first k entries
        return _curve(fit, chosen, raw, lambda k: _probe(
            scored, _as_vector("_p8_raw" if k is None else "_p8_scores", k), n_classes, reg_param, max_iter,
            n_train, n_test, None if k is None or spark_spreads is None else spark_spreads[:k]))
    finally:
        scored.unpersist()
        split.unpersist()


def _curve(fit: PCAResult, ks: Sequence[int], raw: bool, probe_k: Callable[[Optional[int]], ProbeResult]
           ) -> pd.DataFrame:
    """:func:`probe_curve`'s table from ``probe_k(k)`` (the first ``k`` scores; None: the raw features)."""
    rows: List[Dict[str, object]] = []
    for k in [*ks, *([None] if raw else [])]:
        r = probe_k(k)
        rows.append({"representation": "raw" if k is None else "pca", "k": fit.width if k is None else k,
                     "accuracy": r.accuracy, "macro_f1": r.macro_f1,
                     "cumulative_variance": 1.0 if k is None else float(fit.cumulative_variance[k - 1]),
                     "n_train": r.n_train, "n_test": r.n_test})
    return pd.DataFrame(rows, columns=["representation", "k", "accuracy", "macro_f1", "cumulative_variance",
                                       "n_train", "n_test"])


def plateau_k(curve: pd.DataFrame, tolerance: float = PLATEAU_TOLERANCE) -> Optional[int]:
    """Smallest probed ``k`` whose accuracy is within ``tolerance`` of the best PCA accuracy of ``curve``.

    Parameters
    ----------
    curve : pandas.DataFrame
        :func:`probe_curve`'s output.
    tolerance : float
        Accuracy (fraction) below the best that still counts as the plateau.

    Returns
    -------
    int or None
        None when the curve has no PCA row.
    """
    pcs = curve[curve["representation"] == "pca"].sort_values("k")
    if pcs.empty:
        return None
    best = float(pcs["accuracy"].max())
    return int(pcs[pcs["accuracy"] >= best - tolerance]["k"].iloc[0])
