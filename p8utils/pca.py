"""PCA with Spark ML: one fit, every explained variance, centred scores.

:func:`fit_pca` fits Spark ML's ``PCA`` once with ``k = d`` (the feature
width), which yields the explained-variance ratio of *every* component; ``k``
is then either the one asked for or the smallest k whose cumulative explained
variance reaches a target. Spark's ``PCAModel.transform`` does not subtract
the mean, so :func:`transform` projects ``x - mean``: scores equal those of
scikit-learn's ``PCA`` up to the sign of each component.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import numpy as np
import pandas as pd

from p8utils.errors import ParameterError

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

__all__ = ["PCAResult", "check_pca_params", "choose_k", "fit_pca", "transform"]


@dataclass(frozen=True)
class PCAResult:
    """A fitted PCA.

    Attributes
    ----------
    k : int
        Number of components kept.
    variance_target : float or None
        Target that chose ``k`` (None when ``k`` was fixed).
    explained_variance : numpy.ndarray
        Shape ``(d,)``, float64: explained-variance ratio of every component,
        descending.
    cumulative_variance : numpy.ndarray
        Shape ``(d,)``, float64: running sum of ``explained_variance``.
    mean : numpy.ndarray
        Shape ``(d,)``, float64: mean feature vector of the fitted rows.
    components : numpy.ndarray
        Shape ``(d, k)``, float64: principal axes as columns.
    n_rows : int
        Rows the fit used (rows with non-null features).
    """

    k: int
    variance_target: Optional[float]
    explained_variance: np.ndarray = field(repr=False)
    cumulative_variance: np.ndarray = field(repr=False)
    mean: np.ndarray = field(repr=False)
    components: np.ndarray = field(repr=False)
    n_rows: int = 0

    @property
    def width(self) -> int:
        """Feature width ``d``."""
        return int(self.mean.shape[0])

    @property
    def explained_at_k(self) -> float:
        """Cumulative explained variance of the ``k`` kept components."""
        return float(self.cumulative_variance[self.k - 1])


def check_pca_params(k: Optional[int], variance: Optional[float], width: Optional[int] = None) -> None:
    """Validate the ``k`` / ``variance`` choice before any Spark job.

    Exactly one of ``k`` (``1 ≤ k ≤ width``) and ``variance`` (in ``(0, 1]``).

    Raises
    ------
    ParameterError
    """
    if (k is None) == (variance is None):
        raise ParameterError(
            f"k={k!r} and variance={variance!r}: give exactly one. Fix: pass k=<number of "
            "components> or variance=<target in (0, 1]>, e.g. variance=0.95."
        )
    if k is not None:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ParameterError(f"k={k!r} must be a positive integer. Fix: e.g. k=50.")
        if width is not None and k > width:
            raise ParameterError(
                f"k={k} is larger than the feature width {width}. Fix: use k <= {width}, "
                "or variance=<target> to choose k from the data."
            )
    if variance is not None:
        if isinstance(variance, bool) or not isinstance(variance, (int, float)) or not 0 < variance <= 1:
            raise ParameterError(
                f"variance={variance!r} is outside (0, 1]. Fix: pass a fraction of variance to keep, e.g. 0.95."
            )


def choose_k(explained: np.ndarray, variance: float) -> int:
    """Smallest k whose cumulative explained variance reaches ``variance``.

    Parameters
    ----------
    explained : numpy.ndarray
        Shape ``(d,)``: explained-variance ratios, descending.
    variance : float
        Target in ``(0, 1]``.

    Returns
    -------
    int
        In ``[1, d]`` (``d`` when the target is never reached numerically).
    """
    cumulative = np.cumsum(np.asarray(explained, dtype=np.float64))
    # Tolerate float round-off so a target of 1.0 is reachable.
    reached = np.nonzero(cumulative >= variance - 1e-12)[0]
    return int(reached[0]) + 1 if reached.size else int(cumulative.shape[0])


def fit_pca(
    df: DataFrame,
    *,
    k: Optional[int] = None,
    variance: Optional[float] = None,
    input_col: str = "features",
) -> PCAResult:
    """Fit Spark ML PCA once on the non-null rows of ``input_col``.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
        ``input_col`` is array<float|double> (or ml Vector) of constant width d.
        Rows where it is null (bad images) are ignored.
    k : int, optional
        Components to keep, ``1 ≤ k ≤ d``.
    variance : float, optional
        Keep the smallest k whose cumulative explained variance ≥ ``variance``.
        Exactly one of ``k`` and ``variance``.
    input_col : str
        Feature column.

    Returns
    -------
    PCAResult

    Raises
    ------
    ParameterError
        Bad ``k``/``variance``, or fewer than 2 rows with features.
    """
    from pyspark import StorageLevel
    from pyspark.ml.feature import PCA
    from pyspark.ml.functions import array_to_vector
    from pyspark.ml.stat import Summarizer
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType

    check_pca_params(k, variance)
    rows = df.where(F.col(input_col).isNotNull())
    if isinstance(df.schema[input_col].dataType, ArrayType):
        vec = rows.select(array_to_vector(F.col(input_col)).alias("_v"))
    else:
        vec = rows.select(F.col(input_col).alias("_v"))
    # The mean pass and the PCA fit (covariance + SVD) read the vectors twice:
    # keep them in memory (n × d doubles, spilled to disk if needed) meanwhile.
    vec = vec.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        summary = vec.select(Summarizer.metrics("mean", "count").summary(F.col("_v")).alias("s")).first()
        n_rows = int(summary.s["count"]) if summary is not None else 0
        if n_rows < 2:
            raise ParameterError(
                f"PCA needs at least 2 rows with features, found {n_rows}. Fix: check the input "
                "folder and the error column of the features (every image failed to decode?)."
            )
        mean = np.asarray(summary.s["mean"].toArray(), dtype=np.float64)
        d = int(mean.shape[0])
        check_pca_params(k, variance, d)
        model = PCA(k=d, inputCol="_v", outputCol="_pc").fit(vec)
    finally:
        vec.unpersist()
    explained = np.asarray(model.explainedVariance.toArray(), dtype=np.float64)
    chosen = int(k) if k is not None else choose_k(explained, float(variance))  # type: ignore[arg-type]
    components = np.asarray(model.pc.toArray(), dtype=np.float64)[:, :chosen]
    return PCAResult(
        k=chosen,
        variance_target=None if variance is None else float(variance),
        explained_variance=explained,
        cumulative_variance=np.cumsum(explained),
        mean=mean,
        components=np.ascontiguousarray(components),
        n_rows=n_rows,
    )


def transform(
    result: PCAResult,
    df: DataFrame,
    *,
    input_col: str = "features",
    output_col: str = "pca_features",
) -> DataFrame:
    """Project rows on the kept components, centred: ``(x - mean) @ components``.

    Parameters
    ----------
    result : PCAResult
    df : pyspark.sql.DataFrame
        Has ``input_col`` (array<float|double> of width d, may be null).
    input_col, output_col : str

    Returns
    -------
    pyspark.sql.DataFrame
        ``df`` without ``input_col``, plus ``output_col`` (array<double> of
        length k; null where the input was null).
    """
    from pyspark.sql import functions as F

    bc = df.sparkSession.sparkContext.broadcast((result.mean, result.components))

    @F.pandas_udf("array<double>")  # type: ignore[call-overload]
    def _project(features: pd.Series) -> pd.Series:
        return _project_series(features, *bc.value)

    others = [c for c in df.columns if c != input_col]
    return df.select(*others, _project(F.col(input_col)).alias(output_col))


def _project_series(features: pd.Series, mean: np.ndarray, components: np.ndarray) -> pd.Series:
    """Centre and project a Series of feature arrays (None stays None)."""
    out = [None] * len(features)
    idx = [i for i, v in enumerate(features) if v is not None]
    if idx:
        x = np.stack([np.asarray(features.iloc[i], dtype=np.float64) for i in idx])
        scores = (x - mean) @ components
        for j, i in enumerate(idx):
            out[i] = scores[j]
    return pd.Series(out, index=features.index, dtype=object)
