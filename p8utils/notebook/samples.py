"""Bounded data brought to the driver: the PCA scores of a random sample of rows, a few images.

Every function here collects at most a fixed number of rows, never every
feature vector, so the same notebook works on 80 images and on 90,000.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional, Tuple

import numpy as np

from p8utils import storage
from p8utils.errors import ParameterError
from p8utils.notebook.settings import DEFAULTS
from p8utils.validation import check_int

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["ScoreSample", "collect_scores", "sample_images"]

#: Files larger than this are not read for an image grid (shown as "cannot decode").
_MAX_GRID_BYTES = 20 * 1024 * 1024


def _limited(df: DataFrame, n_total: int, max_rows: int, seed: int) -> DataFrame:
    """Cut ``df`` (``n_total`` rows) to at most ``max_rows``: a Bernoulli sample, then ``limit``.

    The sampling fraction asks for a little more than ``max_rows`` rows, so that
    ``limit`` rarely leaves fewer.
    """
    fraction = min(1.0, (max_rows * 1.1 + 20) / max(n_total, 1))
    return df.sample(withReplacement=False, fraction=fraction, seed=seed).limit(max_rows)


@dataclass(frozen=True)
class ScoreSample:
    """PCA scores of a bounded sample of images, on the driver.

    Attributes
    ----------
    scores : numpy.ndarray
        Shape ``(n, k)``, float64: one row per sampled image, sorted by path.
    labels : list of str
        Length n: class of each row.
    paths : list of str
        Length n: file of each row.
    n_total : int
        Rows with scores in the whole dataset (``n`` when nothing was left out).
    """

    scores: np.ndarray = field(repr=False)
    labels: List[str] = field(repr=False)
    paths: List[str] = field(repr=False)
    n_total: int = 0

    @property
    def n(self) -> int:
        """Number of sampled rows."""
        return int(self.scores.shape[0])

    @property
    def n_classes(self) -> int:
        """Number of distinct labels in the sample."""
        return len(set(self.labels))

    def describe(self) -> str:
        """Describe the sample for titles.

        Returns
        -------
        str
            ``"80 images, 8 classes"``, or ``"5000 of 90483 images (random
            sample), 131 classes"`` when rows were left out.
        """
        classes = f"{self.n_classes} class{'' if self.n_classes == 1 else 'es'}"
        if self.n >= self.n_total:
            return f"{self.n} images, {classes}"
        return f"{self.n} of {self.n_total} images (random sample), {classes}"


def collect_scores(
    df: DataFrame,
    max_rows: int = DEFAULTS.max_plot_points,
    *,
    seed: int = 0,
    col: str = "pca_features",
    label_col: str = "label",
) -> ScoreSample:
    """Bring the scores of at most ``max_rows`` images to the driver, for plotting.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
        Has ``path``, ``label_col`` and ``col`` (array<double>[k], e.g. the
        ``pca/`` parquet of a run or :func:`p8utils.pca.transform`'s output).
        Rows where ``col`` is null (bad images) are left out.
    max_rows : int
        At most this many rows are collected (uniform random sample beyond).
    seed : int
        Sampling seed.
    col, label_col : str
        Score and label columns.

    Returns
    -------
    ScoreSample
        ``scores`` of shape ``(n, k)``, float64, with ``n <= max_rows``.

    Raises
    ------
    ParameterError
        Bad ``max_rows``, a missing column, or no row with scores.
    """
    from pyspark.sql import functions as F

    max_rows = int(check_int("max_rows", max_rows, 1, example=DEFAULTS.max_plot_points))
    missing = [c for c in ("path", label_col, col) if c not in df.columns]
    if missing:
        raise ParameterError(f"columns {missing} are missing from the DataFrame {df.columns}. "
                             "Fix: pass the pca/ parquet of a run, or pca.transform(fit, features).")
    rows_df = df.where(F.col(col).isNotNull()).select("path", label_col, col)
    n_total = rows_df.count()
    if n_total == 0:
        raise ParameterError(f"no row has {col!r}: every image failed? Fix: check the error column of the features.")
    if n_total > max_rows:
        rows_df = _limited(rows_df, n_total, max_rows, seed)
    rows = sorted(rows_df.collect(), key=lambda r: r["path"])
    scores = np.asarray([np.asarray(r[col], dtype=np.float64) for r in rows], dtype=np.float64)
    return ScoreSample(scores=scores.reshape(len(rows), -1), labels=[str(r[label_col]) for r in rows],
                       paths=[str(r["path"]) for r in rows], n_total=int(n_total))


def sample_images(
    df: DataFrame,
    n: int = DEFAULTS.n_show,
    spark: Optional[SparkSession] = None,
) -> Tuple[List[Optional[bytes]], List[str]]:
    """Pick a few images spread over the classes: the first of each class, then the second, ….

    Only ``path`` and ``label`` go through Spark; the bytes of the ``n``
    chosen files are then read on the driver, so the content of the other
    files is never read.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
        Has ``path`` and ``label`` (e.g. :func:`p8utils.images.load_images`).
    n : int
        Number of images, at least 1.
    spark : pyspark.sql.SparkSession, optional
        Needed to read non-local URIs (default: ``df``'s session).

    Returns
    -------
    images : list of bytes or None
        Length ≤ n: encoded file content (None if unreadable or > 20 MB), for
        :func:`p8utils.notebook.plots.image_grid`.
    labels : list of str
        Same length: the class of each image.

    Raises
    ------
    ParameterError
        ``n`` is not a positive integer.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    n = int(check_int("n", n, 1, example=DEFAULTS.n_show))
    rank = F.row_number().over(Window.partitionBy("label").orderBy("path"))
    rows = (df.select("path", "label").withColumn("_rank", rank)
            .orderBy("_rank", "label", "path").limit(n).collect())
    spark = spark or df.sparkSession
    images: List[Optional[bytes]] = []
    for r in rows:
        try:
            data = storage.read_bytes(r["path"], spark)
            images.append(data if len(data) <= _MAX_GRID_BYTES else None)
        except Exception:  # noqa: BLE001 - a vanished/unreadable file shows as "cannot decode"
            images.append(None)
    return images, [str(r["label"]) for r in rows]
