"""What the notebooks show and save: paths, bounded samples, tables, figure files, summaries.

The notebooks (``notebooks/01_local_sample.ipynb``, ``02_emr_full_run.ipynb``,
``03_pca_analysis.ipynb``) stay thin: every step that is more than one call
lives here or in the other modules.

* Paths: relative local paths in notebook parameters are taken from the
  project root (:func:`project_root`), so a notebook opened in JupyterLab (whose
  kernel starts in ``notebooks/``) and the same notebook run by papermill from
  the project root read and write the same folders.
* Bounded data on the driver: :func:`sample_images` and :func:`collect_scores`
  bring at most a fixed number of rows to the driver, never every feature
  vector, so the same notebook works on 80 images and on 90,000.
* Files: :func:`save_figure` and :func:`save_table` write to a local folder or
  any Hadoop URI (``s3://`` on EMR) through :mod:`p8utils.storage`.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from p8utils import storage
from p8utils.errors import ParameterError

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "FeaturesLocation",
    "analysis_summary",
    "ScoreSample",
    "bounded_sample",
    "collect_scores",
    "counts_table",
    "find_features",
    "latest_run",
    "new_run_dir",
    "preview",
    "project_root",
    "resolve_path",
    "run_summary",
    "sample_images",
    "save_figure",
    "save_figures",
    "save_table",
    "spark_path",
]

#: Files larger than this are not read for an image grid (shown as "cannot decode").
_MAX_GRID_BYTES = 20 * 1024 * 1024


# --------------------------------------------------------------------------
# paths
# --------------------------------------------------------------------------


def _is_project(folder: Path) -> bool:
    return (folder / "pyproject.toml").is_file() and (folder / "p8utils" / "__init__.py").is_file()


def project_root(start: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Return the folder that relative notebook paths are taken from.

    Parameters
    ----------
    start : str or os.PathLike, optional
        Where to start looking (default: the current directory).

    Returns
    -------
    pathlib.Path
        The nearest ancestor of ``start`` (itself included) holding both
        ``pyproject.toml`` and ``p8utils/`` (the project checkout); else the
        checkout this package is imported from (editable install); else the
        current directory.
    """
    here = Path(start if start is not None else os.getcwd()).expanduser().absolute()
    for folder in (here, *here.parents):
        if _is_project(folder):
            return folder
    package_parent = Path(__file__).resolve().parents[1]
    if _is_project(package_parent):
        return package_parent
    return Path(os.getcwd()).absolute()


def resolve_path(path: str, root: Optional[Union[str, os.PathLike]] = None) -> str:
    """Make a notebook path parameter absolute.

    Parameters
    ----------
    path : str
        A URI (``s3://…``, ``hdfs://…``, ``file:/…``: returned unchanged), an
        absolute path, ``~/…``, or a path relative to the project root.
    root : str or os.PathLike, optional
        Folder for relative paths (default: :func:`project_root`).

    Returns
    -------
    str
        The absolute path, or the URI unchanged.

    Raises
    ------
    ParameterError
        ``path`` is empty or not a string.
    """
    if not isinstance(path, str) or not path.strip():
        raise ParameterError(f"path={path!r} is empty. Fix: pass a folder (relative to the project root) or a URI.")
    path = path.strip()
    if not storage.is_local(path) or path.startswith("file:"):
        return path
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = Path(root) if root is not None else project_root()
        p = p / path
    return str(p.absolute())


def new_run_dir(base: str = "runs", root: Optional[Union[str, os.PathLike]] = None) -> str:
    """Name a new, not yet existing run folder ``<base>/<YYYYmmdd-HHMMSS>``.

    Parameters
    ----------
    base : str
        Parent folder, relative to ``root`` unless absolute.
    root : str or os.PathLike, optional
        Default: :func:`project_root`.

    Returns
    -------
    str
        Absolute path; ``-2``, ``-3`` … is appended if the name is taken.
        The folder is not created.
    """
    parent = Path(resolve_path(base, root))
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, i = parent / stamp, 1
    while candidate.exists():
        i += 1
        candidate = parent / f"{stamp}-{i}"
    return str(candidate)


def latest_run(base: str = "runs", root: Optional[Union[str, os.PathLike]] = None) -> str:
    """Return the most recent complete local run below ``base``.

    Parameters
    ----------
    base : str
        Folder holding run folders (relative to the project root unless absolute).
    root : str or os.PathLike, optional
        Default: :func:`project_root`.

    Returns
    -------
    str
        Absolute path of the sub-folder whose ``manifest.json`` (the mark of a
        complete run) is the newest.

    Raises
    ------
    ParameterError
        No complete run there.
    """
    folder = Path(resolve_path(base, root))
    manifests = sorted(folder.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    if not manifests:
        raise ParameterError(
            f"no complete run (a folder with manifest.json) in {str(folder)!r}. Fix: run "
            "notebooks/01_local_sample.ipynb or `python -m p8utils run` first, or pass features_path."
        )
    return str(manifests[-1].parent)


@dataclass(frozen=True)
class FeaturesLocation:
    """Where a features dataset and its run folder are.

    Attributes
    ----------
    features : str
        The features parquet dataset (folder or URI).
    run : str
        The run folder holding it (``features``'s parent).
    """

    features: str
    run: str


def _parent(uri: str) -> str:
    if storage.is_local(uri) and not uri.startswith("file:"):
        return str(Path(uri).parent)
    return uri.rstrip("/").rsplit("/", 1)[0]


def find_features(path: str, spark: Optional[SparkSession] = None) -> FeaturesLocation:
    """Locate a features parquet from what a user may pass.

    Parameters
    ----------
    path : str
        A run folder holding ``features/`` (written by notebook 01, 02 or the
        CLI), the ``features/`` dataset itself, or ``""`` for the newest
        complete run under ``runs/`` (:func:`latest_run`). Relative paths are
        taken from the project root.
    spark : pyspark.sql.SparkSession, optional
        Needed for non-local URIs.

    Returns
    -------
    FeaturesLocation

    Raises
    ------
    ParameterError
        Nothing there.
    """
    base = latest_run() if not path else resolve_path(path)
    sub = storage.join(base, "features")
    if storage.exists(sub, spark):
        return FeaturesLocation(features=sub, run=base)
    if storage.exists(base, spark):
        return FeaturesLocation(features=base, run=_parent(base))
    raise ParameterError(
        f"features_path={path!r}: nothing at {base!r}. Fix: pass a run folder written by notebook 01/02 or "
        "`python -m p8utils run` (it holds features/), or the features parquet folder itself."
    )


def spark_path(uri: str) -> str:
    """Return the string to give Spark's readers for a path returned by this module."""
    return str(storage.local_path(uri)) if storage.is_local(uri) else uri


# --------------------------------------------------------------------------
# bounded samples
# --------------------------------------------------------------------------


def _fraction(n_total: int, max_rows: int) -> float:
    """Return a sampling fraction that yields about ``max_rows`` rows (a little more, cut by ``limit``)."""
    return min(1.0, (max_rows * 1.1 + 20) / max(n_total, 1))


def _check_max_rows(max_rows: int) -> None:
    if isinstance(max_rows, bool) or not isinstance(max_rows, (int, np.integer)) or max_rows < 1:
        raise ParameterError(f"max_rows={max_rows!r} must be a positive integer. Fix: e.g. 5000.")


def bounded_sample(df: DataFrame, max_rows: int, seed: int = 0) -> DataFrame:
    """At most ``max_rows`` rows of ``df``, a uniform random sample when it has more.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
        Any rows.
    max_rows : int
        Upper bound, at least 1.
    seed : int
        Sampling seed (same data and partitioning → same rows).

    Returns
    -------
    pyspark.sql.DataFrame
        ``df`` itself when it has at most ``max_rows`` rows (one ``count``
        job); otherwise a Bernoulli sample cut to ``max_rows`` rows.
    """
    _check_max_rows(max_rows)
    n = df.count()
    if n <= max_rows:
        return df
    return df.sample(withReplacement=False, fraction=_fraction(n, max_rows), seed=seed).limit(int(max_rows))


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
    max_rows: int = 5000,
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

    Raises
    ------
    ParameterError
        Missing column, or no row with scores.
    """
    from pyspark.sql import functions as F

    _check_max_rows(max_rows)
    missing = [c for c in ("path", label_col, col) if c not in df.columns]
    if missing:
        raise ParameterError(f"columns {missing} are missing from the DataFrame {df.columns}. "
                             "Fix: pass the pca/ parquet of a run, or pca.transform(fit, features).")
    rows_df = df.where(F.col(col).isNotNull()).select("path", label_col, col)
    n_total = rows_df.count()
    if n_total == 0:
        raise ParameterError(f"no row has {col!r}: every image failed? Fix: check the error column of the features.")
    if n_total > max_rows:
        rows_df = rows_df.sample(withReplacement=False, fraction=_fraction(n_total, max_rows), seed=seed)
        rows_df = rows_df.limit(int(max_rows))
    rows = sorted(rows_df.collect(), key=lambda r: r["path"])
    scores = np.asarray([np.asarray(r[col], dtype=np.float64) for r in rows], dtype=np.float64)
    return ScoreSample(scores=scores.reshape(len(rows), -1), labels=[str(r[label_col]) for r in rows],
                       paths=[str(r["path"]) for r in rows], n_total=int(n_total))


def sample_images(
    df: DataFrame,
    n: int = 16,
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
        Needed to read non-local URIs.

    Returns
    -------
    images : list of bytes or None
        Length ≤ n: encoded file content (None if unreadable or > 20 MB), for
        :func:`p8utils.plots.image_grid`.
    labels : list of str
        Same length: the class of each image.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ParameterError(f"n={n!r} must be a positive integer. Fix: e.g. 16.")
    rank = F.row_number().over(Window.partitionBy("label").orderBy("path"))
    rows = (df.select("path", "label").withColumn("_rank", rank)
            .orderBy("_rank", "label", "path").limit(int(n)).collect())
    spark = spark or df.sparkSession
    images: List[Optional[bytes]] = []
    for r in rows:
        try:
            data = storage.read_bytes(r["path"], spark)
            images.append(data if len(data) <= _MAX_GRID_BYTES else None)
        except Exception:  # noqa: BLE001 - a vanished/unreadable file shows as "cannot decode"
            images.append(None)
    return images, [str(r["label"]) for r in rows]


# --------------------------------------------------------------------------
# tables and text
# --------------------------------------------------------------------------


def counts_table(manifest: Mapping[str, Any]) -> pd.DataFrame:
    """Tabulate the image counts of a run (one column).

    Parameters
    ----------
    manifest : mapping
        A run's manifest (``RunResult.manifest`` or
        :func:`p8utils.pipeline.read_manifest`).

    Returns
    -------
    pandas.DataFrame
        Index: ``total``, ``ok``, ``failed``, one ``failed: <reason>`` row per
        error reason, then any other count the manifest has; column ``images``
        (int64).
    """
    counts = dict(manifest.get("counts", {}))
    rows: Dict[str, int] = {}
    for key in ("total", "ok", "failed"):
        if key in counts:
            rows[key] = int(counts.pop(key))
    for reason, value in sorted(dict(counts.pop("failed_by_reason", {}) or {}).items()):
        rows[f"failed: {reason}"] = int(value)
    for key, value in counts.items():
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            rows[key] = int(value)
    return pd.DataFrame({"images": pd.Series(rows, dtype="int64")})


def preview(df: DataFrame, n: int = 5, *, col: str = "features", values: int = 4) -> pd.DataFrame:
    """Show a few rows of a features (or pca) dataset, readable: vectors shortened.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
        Has ``path``, ``label`` and ``col`` (array, may be null); ``error`` is
        shown when present.
    n : int
        Rows (the first ``n`` Spark returns; only those are collected).
    col : str
        Vector column.
    values : int
        Leading values of the vector shown.

    Returns
    -------
    pandas.DataFrame
        Columns ``file`` (base name), ``label``, ``error`` (if present),
        ``dims`` (vector length, 0 when null), ``first values`` (rounded) and
        ``norm`` (L2 norm, NaN when null).
    """
    cols = ["path", "label", *(["error"] if "error" in df.columns else []), col]
    out = []
    for r in df.select(*cols).limit(int(n)).collect():
        vec = None if r[col] is None else np.asarray(r[col], dtype=np.float64)
        row: Dict[str, Any] = {"file": str(r["path"]).rstrip("/").rsplit("/", 1)[-1], "label": r["label"]}
        if "error" in df.columns:
            row["error"] = r["error"]
        row["dims"] = 0 if vec is None else int(vec.size)
        row["first values"] = None if vec is None else [round(float(v), 4) for v in vec[:values]]
        row["norm"] = float("nan") if vec is None else round(float(np.linalg.norm(vec)), 4)
        out.append(row)
    return pd.DataFrame(out)


def run_summary(result: Any, figures: Optional[Union[Mapping[str, str], Sequence[str]]] = None) -> str:
    """Tell in a few lines what a run did and where everything is.

    Parameters
    ----------
    result : RunResult or mapping
        :func:`p8utils.pipeline.run`'s result, or a run's manifest.
    figures : mapping or sequence of str, optional
        Figure files written (e.g. from :func:`save_figure`).

    Returns
    -------
    str
        Multi-line text, for ``print``.
    """
    manifest: Mapping[str, Any] = getattr(result, "manifest", result)
    params = manifest.get("parameters", {})
    counts = manifest.get("counts", {})
    pca = manifest.get("pca", {})
    weights = manifest.get("weights", {})
    lines = [f"Run {manifest.get('status', '?')}: {params.get('output', '?')}"]
    failed = ", ".join(f"{k} {v}" for k, v in sorted((counts.get("failed_by_reason") or {}).items()))
    lines.append(f"  images   : {counts.get('total', '?')} total, {counts.get('ok', '?')} ok, "
                 f"{counts.get('failed', '?')} failed" + (f" ({failed})" if failed else ""))
    lines.append(f"  model    : {params.get('model', '?')}, weights {weights.get('source', params.get('weights'))} "
                 f"(sha256 {str(weights.get('sha256', ''))[:12]}…)")
    if pca:
        at_k = pca.get("explained_at_k")
        lines.append(f"  PCA      : k = {pca.get('k')} components keep "
                     f"{'?' if at_k is None else f'{100 * at_k:.1f} %'} of the variance "
                     f"(width {pca.get('feature_width')}, {pca.get('n_rows')} rows)")
    timings = manifest.get("timings_s", {})
    if timings:
        lines.append("  seconds  : " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
                     + f" (total {sum(timings.values()):.1f})")
    outputs = dict(manifest.get("outputs", {}))
    for name, uri in outputs.items():
        lines.append(f"  {name:<9}: {uri}")
    if figures:
        items = figures.values() if isinstance(figures, Mapping) else figures
        for uri in items:
            lines.append(f"  figure   : {uri}")
    for warning in manifest.get("warnings", []) or []:
        lines.append(f"  WARNING  : {warning}")
    return "\n".join(lines)


def analysis_summary(
    fit: Any,
    thresholds: Sequence[float],
    files: Optional[Union[Mapping[str, str], Sequence[str]]] = None,
    scores: Optional[ScoreSample] = None,
) -> str:
    """Sum up a PCA fit in a few lines: rows, width, k per threshold, files written.

    Parameters
    ----------
    fit : PCAResult
        :func:`p8utils.pca.fit_pca`'s result.
    thresholds : sequence of float
        Cumulative-variance targets in (0, 1].
    files : mapping or sequence of str, optional
        Files written (figures, tables).
    scores : ScoreSample, optional
        The plotted sample (its size is reported).

    Returns
    -------
    str
        Multi-line text, for ``print``.
    """
    from p8utils.plots import k_for_thresholds

    ev = np.asarray(fit.explained_variance, dtype=np.float64)
    lines = [f"PCA of {fit.n_rows} images with features, feature width {fit.width}",
             f"  PC1 {100 * ev[0]:.1f} %, PC2 {100 * ev[1]:.1f} %, PC3 {100 * ev[2]:.1f} % of the variance"
             if ev.size >= 3 else f"  PC1 {100 * ev[0]:.1f} % of the variance"]
    for t, k in k_for_thresholds(ev, thresholds).items():
        lines.append(f"  {100 * t:g} % of the variance: " + (f"k = {k}" if k is not None else "not reached"))
    if scores is not None:
        lines.append(f"  scatter plots: {scores.describe()}")
    if files:
        for uri in (files.values() if isinstance(files, Mapping) else files):
            lines.append(f"  written: {uri}")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------


def save_figure(
    fig: Figure,
    output: str,
    name: str,
    spark: Optional[SparkSession] = None,
    *,
    folder: str = "figures",
    dpi: int = 120,
) -> str:
    """Write a figure as ``<output>/<folder>/<name>`` (PNG), locally or to a URI.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        E.g. from :mod:`p8utils.plots`.
    output : str
        Run folder or URI (``s3://bucket/runs/x``).
    name : str
        File name; ``.png`` is appended when missing.
    spark : pyspark.sql.SparkSession, optional
        Needed for non-local URIs.
    folder : str
        Sub-folder of ``output`` (``""`` for ``output`` itself).
    dpi : int
        Resolution.

    Returns
    -------
    str
        Where the file was written.
    """
    from p8utils.plots import figure_to_png

    if not name or "/" in name:
        raise ParameterError(f"name={name!r} must be a plain file name. Fix: e.g. 'variance.png'.")
    if not name.lower().endswith(".png"):
        name += ".png"
    uri = storage.join(output, *([folder] if folder else []), name)
    storage.write_bytes(uri, figure_to_png(fig, dpi=dpi), spark)
    return uri


def save_figures(
    figures: Mapping[str, Optional[Figure]],
    output: str,
    spark: Optional[SparkSession] = None,
    *,
    folder: str = "figures",
    dpi: int = 120,
) -> Dict[str, str]:
    """Write several figures with :func:`save_figure`, ``<name>.png`` each.

    Parameters
    ----------
    figures : mapping of str to Figure or None
        ``{"variance": fig, ...}``; None values (a figure not drawn) are skipped.
    output, spark, folder, dpi
        As for :func:`save_figure`.

    Returns
    -------
    dict of str to str
        ``{name: where it was written}``, in the order given.
    """
    return {name: save_figure(fig, output, f"{name}.png", spark, folder=folder, dpi=dpi)
            for name, fig in figures.items() if fig is not None}


def save_table(
    table: pd.DataFrame,
    output: str,
    name: str,
    spark: Optional[SparkSession] = None,
    *,
    folder: str = "",
    index: bool = False,
) -> str:
    """Write a small table as CSV (UTF-8) to ``<output>/<folder>/<name>``.

    Parameters
    ----------
    table : pandas.DataFrame
        E.g. :func:`p8utils.plots.variance_table`.
    output : str
        Folder or URI.
    name : str
        File name; ``.csv`` is appended when missing.
    spark : pyspark.sql.SparkSession, optional
        Needed for non-local URIs.
    folder : str
        Sub-folder of ``output``.
    index : bool
        Write the index too.

    Returns
    -------
    str
        Where the file was written.
    """
    if not name or "/" in name:
        raise ParameterError(f"name={name!r} must be a plain file name. Fix: e.g. 'variance_table.csv'.")
    if not name.lower().endswith(".csv"):
        name += ".csv"
    uri = storage.join(output, *([folder] if folder else []), name)
    storage.write_bytes(uri, table.to_csv(index=index).encode("utf-8"), spark)
    return uri
