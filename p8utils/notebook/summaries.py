"""Tables and text about a run or a PCA fit: image counts, a readable preview, summaries for ``print``.

Nothing here needs matplotlib; :func:`preview` collects ``n`` rows, the other
functions read only the driver-side objects they are given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd

from p8utils.pca import k_for_variance
from p8utils.validation import check_fraction, check_int

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

    from p8utils.notebook.samples import ScoreSample

__all__ = ["analysis_summary", "counts_table", "preview", "run_summary"]


def counts_table(manifest: Mapping[str, Any]) -> pd.DataFrame:
    """Tabulate the image counts of a run (one column).

    Parameters
    ----------
    manifest : mapping
        A run's manifest (``RunResult.manifest`` or the parsed
        ``manifest.json`` of a run folder).

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
        Rows (the first ``n`` Spark returns; only those are collected), at least 1.
    col : str
        Vector column.
    values : int
        Leading values of the vector shown, at least 0.

    Returns
    -------
    pandas.DataFrame
        Columns ``file`` (base name), ``label``, ``error`` (if present),
        ``dims`` (vector length, 0 when null), ``first values`` (list of
        ``values`` floats, rounded to 4 decimals; None when null) and ``norm``
        (L2 norm, float; NaN when null).

    Raises
    ------
    ParameterError
        ``n`` or ``values`` is not a valid integer.
    """
    n = int(check_int("n", n, 1, example=5))
    values = int(check_int("values", values, 0, example=4))
    cols = ["path", "label", *(["error"] if "error" in df.columns else []), col]
    out = []
    for r in df.select(*cols).limit(n).collect():
        vec = None if r[col] is None else np.asarray(r[col], dtype=np.float64)
        row: Dict[str, Any] = {"file": str(r["path"]).rstrip("/").rsplit("/", 1)[-1], "label": r["label"]}
        if "error" in df.columns:
            row["error"] = r["error"]
        row["dims"] = 0 if vec is None else int(vec.size)
        row["first values"] = None if vec is None else [round(float(v), 4) for v in vec[:values]]
        row["norm"] = float("nan") if vec is None else round(float(np.linalg.norm(vec)), 4)
        out.append(row)
    return pd.DataFrame(out)


def _listed(files: Optional[Union[Mapping[str, str], Sequence[str]]]) -> Sequence[str]:
    """Return the locations of ``files`` (a ``{name: uri}`` mapping or a sequence of URIs)."""
    if not files:
        return []
    return list(files.values()) if isinstance(files, Mapping) else list(files)


def run_summary(result: Any, figures: Optional[Union[Mapping[str, str], Sequence[str]]] = None) -> str:
    """Tell in a few lines what a run did and where everything is.

    Parameters
    ----------
    result : RunResult or mapping
        :func:`p8utils.pipeline.run`'s result, or a run's manifest.
    figures : mapping or sequence of str, optional
        Figure files written (e.g. from :func:`p8utils.notebook.figures.save_figures`).

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
    for name, uri in dict(manifest.get("outputs", {})).items():
        lines.append(f"  {name:<9}: {uri}")
    lines += [f"  figure   : {uri}" for uri in _listed(figures)]
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
        :func:`p8utils.pca.fit_pca`'s result (``explained_variance`` of shape
        ``(d,)``, ``n_rows``, ``width``).
    thresholds : sequence of float
        Cumulative-variance targets in (0, 1]; each k is
        :func:`p8utils.pca.k_for_variance`'s, the pipeline's own choice.
    files : mapping or sequence of str, optional
        Files written (figures, tables).
    scores : ScoreSample, optional
        The plotted sample (its size is reported).

    Returns
    -------
    str
        Multi-line text, for ``print``.

    Raises
    ------
    ParameterError
        A threshold outside (0, 1].
    """
    ev = np.asarray(fit.explained_variance, dtype=np.float64)
    targets = sorted({float(check_fraction("thresholds", t)) for t in thresholds})
    lines = [f"PCA of {fit.n_rows} images with features, feature width {fit.width}",
             f"  PC1 {100 * ev[0]:.1f} %, PC2 {100 * ev[1]:.1f} %, PC3 {100 * ev[2]:.1f} % of the variance"
             if ev.size >= 3 else f"  PC1 {100 * ev[0]:.1f} % of the variance"]
    for t in targets:
        k = k_for_variance(ev, t)
        lines.append(f"  {100 * t:g} % of the variance: " + (f"k = {k}" if k is not None else "not reached"))
    if scores is not None:
        lines.append(f"  scatter plots: {scores.describe()}")
    lines += [f"  written: {uri}" for uri in _listed(files)]
    return "\n".join(lines)
