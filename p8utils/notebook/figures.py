"""The one figure writer: figures as PNG and tables as CSV, to a local path or any Hadoop URI.

Files go through :func:`p8utils.storage.write_bytes`, so the same call writes
``runs/x/figures/variance.png`` on a laptop and ``s3://bucket/runs/x/figures/…``
on EMR (the driver writes them; no Spark job). Where a run keeps its figures is
:class:`p8utils.runs.RunLayout`'s business (``.figures``, ``.analysis``)::

    from p8utils.notebook import figures

    figures.save_figures({"variance": variance_fig, "pc1_pc2": scatter_fig}, layout.figures, spark)

matplotlib is imported by :func:`figure_to_png` only: :func:`save_table` works
without it.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Dict, Mapping, Optional, Union

from p8utils import storage
from p8utils.errors import ParameterError
from p8utils.notebook import missing_extra
from p8utils.validation import check_int

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure
    from pyspark.sql import SparkSession

__all__ = ["figure_to_png", "save_figure", "save_figures", "save_table"]


def figure_to_png(fig: Figure, dpi: int = 120) -> bytes:
    """Render a figure to PNG bytes.

    The whole figure is kept (``bbox_inches="tight"``, so a legend outside the
    axes is never cut) on a white background, whatever the notebook theme.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        Figure to render (e.g. from :mod:`p8utils.notebook.plots`).
    dpi : int, default 120
        Resolution in dots per inch, at least 1; a 9 x 5.5 in figure gives
        about 1080 x 660 px.

    Returns
    -------
    bytes
        The PNG file content (starting with the 8-byte PNG signature).

    Raises
    ------
    ParameterError
        ``fig`` is not a Figure, or a bad ``dpi``.
    ImportError
        matplotlib is not installed (the message gives the fix).
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - the notebook extras are not installed
        raise missing_extra("matplotlib", "p8utils.notebook.figures.figure_to_png") from exc

    if not isinstance(fig, Figure):
        raise ParameterError(
            f"fig={fig!r}: expected a matplotlib.figure.Figure, got {type(fig).__name__}. "
            "Fix: pass the object returned by a p8utils.notebook.plots function."
        )
    dpi = int(check_int("dpi", dpi, 1, example=120))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.15, facecolor="white")
    return buf.getvalue()


def _with_suffix(uri: Union[str, os.PathLike], suffix: str) -> str:
    """Return ``uri`` as text, ending with ``suffix`` (appended when missing)."""
    text = os.fspath(uri) if isinstance(uri, (str, os.PathLike)) else None
    if not isinstance(text, str) or not text.strip():
        raise ParameterError(f"uri={uri!r} is empty. Fix: pass a file path or URI, e.g. 'runs/x/figures/a{suffix}'.")
    return text if text.lower().endswith(suffix) else text + suffix


def save_figure(
    fig: Figure,
    uri: Union[str, os.PathLike],
    spark: Optional[SparkSession] = None,
    *,
    dpi: int = 120,
) -> str:
    """Write a figure as a PNG file, locally or to a Hadoop URI; parent folders are created.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        E.g. from :mod:`p8utils.notebook.plots`.
    uri : str or os.PathLike
        Destination: a local path (``~`` expanded, ``file:`` accepted; relative
        to the current directory, see :func:`p8utils.notebook.paths.resolve_path`
        for notebook paths) or a URI (``s3://bucket/runs/x/figures/variance.png``).
        ``.png`` is appended when missing.
    spark : pyspark.sql.SparkSession, optional
        Needed for non-local URIs.
    dpi : int, default 120
        Resolution in dots per inch.

    Returns
    -------
    str
        Where the file was written: an absolute local path, or the URI.

    Raises
    ------
    ParameterError
        Bad ``fig``, ``uri`` or ``dpi``.
    """
    target = storage.spark_path(_with_suffix(uri, ".png"))  # absolute local path, or the URI unchanged
    storage.write_bytes(target, figure_to_png(fig, dpi=dpi), spark)
    return target


def save_figures(
    figures: Mapping[str, Optional[Figure]],
    folder: str,
    spark: Optional[SparkSession] = None,
    dpi: int = 120,
) -> Dict[str, str]:
    """Write several figures with :func:`save_figure`, as ``<folder>/<name>.png`` each.

    Parameters
    ----------
    figures : mapping of str to Figure or None
        ``{"variance": fig, ...}``; a name is a plain file name (no ``/``),
        ``.png`` appended when missing. None values (a figure not drawn) are skipped.
    folder : str
        Destination folder, local or URI (e.g. ``runs.layout(output).figures``).
    spark, dpi
        As for :func:`save_figure`.

    Returns
    -------
    dict of str to str
        ``{name: where it was written}``, in the order given.

    Raises
    ------
    ParameterError
        A name that is not a plain file name, or as for :func:`save_figure`.
    """
    for name in figures:
        if not isinstance(name, str) or not name or "/" in name or "\\" in name:
            raise ParameterError(f"figure name={name!r} must be a plain file name. Fix: e.g. 'variance'.")
    return {name: save_figure(fig, storage.join(folder, name), spark, dpi=dpi)
            for name, fig in figures.items() if fig is not None}


def save_table(
    table: pd.DataFrame,
    uri: Union[str, os.PathLike],
    spark: Optional[SparkSession] = None,
    index: bool = False,
) -> str:
    """Write a small table as a CSV file (UTF-8), locally or to a Hadoop URI.

    Parameters
    ----------
    table : pandas.DataFrame
        E.g. :func:`p8utils.notebook.plots.variance_table`.
    uri : str or os.PathLike
        Destination, local or URI, as for :func:`save_figure`; ``.csv`` is
        appended when missing.
    spark : pyspark.sql.SparkSession, optional
        Needed for non-local URIs.
    index : bool, default False
        Write the index too.

    Returns
    -------
    str
        The absolute local path, or the URI, of the CSV file.

    Raises
    ------
    ParameterError
        Empty ``uri``.
    """
    target = storage.spark_path(_with_suffix(uri, ".csv"))
    storage.write_bytes(target, table.to_csv(index=index).encode("utf-8"), spark)
    return target
