"""Figures for the PCA analysis: explained variance, score scatters, image grids, component extremes.

Every function is pure (no Spark) and returns a :class:`matplotlib.figure.Figure`.

Where figures show up
---------------------
By default the figures are *not* registered with :mod:`matplotlib.pyplot`: they
are plain ``Figure`` objects drawn by the Agg canvas. That works everywhere the
same way:

* headless (``spark-submit``, EMR steps, CI): nothing opens a window, nothing is
  kept in pyplot's figure list (no memory growth across a long run), and
  ``matplotlib.use`` is never called, so importing this module does not change
  the backend of the caller;
* local Jupyter (``%matplotlib inline``): make the figure the last expression of
  the cell, or call ``IPython.display.display(fig)``;
* saving: :func:`p8utils.notebook.figures.save_figure` (a PNG to a local path
  or any Hadoop URI, ``s3://`` on EMR) or
  :func:`p8utils.notebook.figures.figure_to_png` (the bytes).

sparkmagic's ``%matplot plt`` (EMR notebooks, PySpark kernel) renders the
*current pyplot figure* on the cluster, so there the figure must be managed by
pyplot. Either pass ``pyplot=True`` to the plotting function (the figure is then
created with :func:`matplotlib.pyplot.figure` and becomes the current figure),
or hand an existing figure over with :func:`to_pyplot`::

    fig = plots.variance_plot(explained, pyplot=True)
    %matplot plt

A pyplot-managed figure stays in pyplot's list until ``plt.close(fig)``; in a
local ``%matplotlib inline`` session it is also shown automatically at the end
of the cell, so end the line with ``;`` (or assign it) to avoid a second copy.

Text
----
Class names are data, not markup: ``$`` is escaped so that a label such as
``"Apple $1"`` is not parsed as mathtext, and legend entries are passed
explicitly so that a label starting with ``_`` is still listed. Accented Latin,
Greek and Cyrillic names render with matplotlib's bundled DejaVu Sans; scripts
that font lacks (CJK, emoji) need a font installed and listed in
``rcParams["font.sans-serif"]``.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from p8utils.errors import ParameterError
from p8utils.notebook import missing_extra
from p8utils.notebook._labels import axis_label, class_name, pct
from p8utils.notebook.settings import DEFAULTS
from p8utils.pca import VARIANCE_TOLERANCE, k_for_variance
from p8utils.probe import PLATEAU_TOLERANCE, plateau_k
from p8utils.validation import check_fraction, check_int

try:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import to_hex
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator, PercentFormatter
except ImportError as exc:  # pragma: no cover - the notebook extras are not installed
    raise missing_extra("matplotlib", "p8utils.notebook.plots") from exc

__all__ = [
    "DEFAULT_THRESHOLDS",
    "class_styles",
    "component_extremes",
    "extreme_indices",
    "image_grid",
    "k_for_thresholds",
    "probe_plot",
    "scatter",
    "scatter_3d",
    "to_pyplot",
    "variance_plot",
    "variance_table",
]

#: Cumulative explained-variance targets marked by default (:attr:`.AnalysisSettings.thresholds`).
DEFAULT_THRESHOLDS: tuple[float, ...] = DEFAULTS.thresholds

#: Colour of the points grouped as "other".
_OTHER_COLOUR = "#b0b0b0"

#: Colours of successive thresholds in :func:`variance_plot`.
_THRESHOLD_COLOURS = ("#d62728", "#9467bd", "#2ca02c", "#8c564b", "#e377c2", "#17becf")

#: Markers cycled every :data:`_HUES_PER_MARKER` classes, so that two classes
#: sharing a hue family (dark/light pair of tab20) never share a marker.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<")
_HUES_PER_MARKER = 9

# --------------------------------------------------------------------------
# figure plumbing
# --------------------------------------------------------------------------


def _new_figure(figsize: tuple[float, float], pyplot: bool) -> Figure:
    """Create an empty figure with constrained layout.

    Parameters
    ----------
    figsize : tuple of (float, float)
        Width and height in inches.
    pyplot : bool
        If True, create it through :func:`matplotlib.pyplot.figure` (it becomes
        pyplot's current figure, for sparkmagic's ``%matplot plt``). If False,
        create a standalone figure drawn by the Agg canvas.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if pyplot:
        import matplotlib.pyplot as plt  # lazy: importing pyplot selects a backend

        return plt.figure(figsize=figsize, layout="constrained")
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)  # explicit canvas: savefig works on any matplotlib version
    return fig


def to_pyplot(fig: Figure) -> Figure:
    """Register a standalone figure with pyplot and make it the current figure.

    Use it before sparkmagic's ``%matplot plt``, which shows pyplot's current
    figure, when the figure was made with ``pyplot=False`` (the default)::

        fig = plots.scatter(scores, labels)
        plots.to_pyplot(fig)
        %matplot plt

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        A figure returned by this module (or any root figure).

    Returns
    -------
    matplotlib.figure.Figure
        The same figure, now managed by pyplot (close it with ``plt.close(fig)``).

    Raises
    ------
    ParameterError
        If ``fig`` is not a :class:`~matplotlib.figure.Figure`, or if this
        matplotlib version cannot adopt an existing figure (then create the
        figure with ``pyplot=True`` instead).
    """
    import matplotlib.pyplot as plt

    if not isinstance(fig, Figure):
        raise ParameterError(
            f"fig={fig!r}: expected a matplotlib.figure.Figure, got {type(fig).__name__}; "
            "pass the object returned by a p8utils.notebook.plots function"
        )
    try:  # matplotlib >= 3.10: pyplot.figure adopts an unmanaged Figure
        return plt.figure(fig)
    except (TypeError, ValueError):
        pass
    try:  # matplotlib 3.7-3.9: the same steps through (private) pyplot internals
        from matplotlib import _pylab_helpers

        nums = plt.get_fignums()
        backend = plt._get_backend_mod()
        manager = backend.new_figure_manager_given_figure(max(nums, default=0) + 1, fig)
        _pylab_helpers.Gcf._set_new_active_manager(manager)
        return fig
    except Exception as exc:
        raise ParameterError(
            "to_pyplot(fig): this matplotlib version cannot register an existing figure "
            f"with pyplot ({exc}); create the figure with pyplot=True instead"
        ) from exc


# --------------------------------------------------------------------------
# explained variance
# --------------------------------------------------------------------------


def _as_explained(explained: Any) -> np.ndarray:
    """Validate explained-variance ratios.

    Parameters
    ----------
    explained : array_like, shape (d,)
        Explained-variance ratio of each principal component (a list, a NumPy
        array or a Spark ML ``DenseVector``).

    Returns
    -------
    numpy.ndarray, shape (d,), dtype float64
    """
    arr = np.asarray(explained, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ParameterError(
            f"explained has shape {arr.shape}: expected a non-empty 1-D array of "
            "explained-variance ratios, one per component (e.g. PCAModel.explainedVariance)"
        )
    if not np.all(np.isfinite(arr)) or np.any(arr < -VARIANCE_TOLERANCE):
        raise ParameterError(
            "explained contains negative, NaN or infinite values: expected ratios in [0, 1]"
        )
    total = float(arr.sum())
    if total > 1.0 + 1e-6:
        raise ParameterError(
            f"explained sums to {total:.6g} > 1: expected explained-variance *ratios*; "
            "divide the per-component variances by the total variance"
        )
    return np.clip(arr, 0.0, None)


def _as_thresholds(thresholds: Sequence[float]) -> list[float]:
    """Validate thresholds and return them sorted, without duplicates.

    Parameters
    ----------
    thresholds : sequence of float
        Cumulative explained-variance targets, each in (0, 1].

    Returns
    -------
    list of float
        Ascending.
    """
    if isinstance(thresholds, (int, float)):
        thresholds = [thresholds]
    return sorted({float(check_fraction("thresholds", t)) for t in thresholds})


def k_for_thresholds(
    explained: Sequence[float],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict[float, int | None]:
    """Smallest number of components reaching each cumulative-variance threshold.

    Parameters
    ----------
    explained : array_like, shape (d,), float
        Explained-variance ratio of each component, in component order (sums to
        at most 1).
    thresholds : sequence of float, default (0.90, 0.95, 0.99)
        Targets in (0, 1].

    Returns
    -------
    dict of float to int or None
        ``{threshold: k}`` in ascending threshold order; ``k`` counts components
        (1-based: ``k = 3`` means PC1..PC3) and is None when even all ``d``
        components do not reach the threshold. Each ``k`` is
        :func:`p8utils.pca.k_for_variance`'s (the pipeline's k choice, same
        tolerance :data:`p8utils.pca.VARIANCE_TOLERANCE`).

    Examples
    --------
    >>> k_for_thresholds([0.5, 0.3, 0.15, 0.05], (0.9, 0.95, 0.99))
    {0.9: 3, 0.95: 3, 0.99: 4}
    """
    ratios = _as_explained(explained)
    return {t: k_for_variance(ratios, t) for t in _as_thresholds(thresholds)}


def variance_table(
    explained: Sequence[float],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    ks: Sequence[int] | None = None,
) -> pd.DataFrame:
    """Cumulative explained variance at chosen numbers of components.

    Parameters
    ----------
    explained : array_like, shape (d,), float
        Explained-variance ratio of each component.
    thresholds : sequence of float, default (0.90, 0.95, 0.99)
        Targets in (0, 1]; each adds one row at its smallest ``k``.
    ks : sequence of int, optional
        Numbers of components to list (each in 1..d). Default: 1, 2, 5, 10,
        20, 50, 100, 200, 500, 1000 (those <= d) and d.

    Returns
    -------
    pandas.DataFrame
        One row per requested ``k`` and one per threshold, sorted by ``k``;
        columns:

        ``k`` (Int64)
            Number of components; <NA> for a threshold never reached.
        ``explained_variance`` (float64)
            Ratio of component ``k`` alone.
        ``cumulative_variance`` (float64)
            Ratio of components 1..k together (for an unreached threshold: of
            all d components).
        ``threshold`` (float64)
            The target whose smallest ``k`` this row is; NaN for rows from ``ks``.
            Filter threshold rows with ``df.dropna(subset=["threshold"])``.
    """
    ratios = _as_explained(explained)
    cumulative = np.cumsum(ratios)
    d = ratios.size
    if ks is None:
        ks_list = [k for k in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if k <= d] + [d]
    else:
        ks_list = [int(k) for k in ks]
        bad = [k for k in ks_list if not 1 <= k <= d]
        if bad:
            raise ParameterError(
                f"ks contains {bad}: each k is a number of components in 1..{d} (d = len(explained))"
            )
    rows: list[dict[str, Any]] = []
    for k in sorted(set(ks_list)):
        rows.append({"k": k, "threshold": np.nan})
    for t in _as_thresholds(thresholds):
        rows.append({"k": k_for_variance(ratios, t), "threshold": t})
    for row in rows:
        k = row["k"]
        row["explained_variance"] = float(ratios[k - 1]) if k is not None else np.nan
        row["cumulative_variance"] = float(cumulative[(k or d) - 1])
    table = pd.DataFrame(rows, columns=["k", "explained_variance", "cumulative_variance", "threshold"])
    table["k"] = table["k"].astype("Int64")
    table = table.sort_values(["k", "threshold"], na_position="last", kind="mergesort")
    return table.reset_index(drop=True)


def _mark_threshold(ax: Any, k: int, cum: float, m: int, colour: str, label: bool = True) -> None:
    """Dotted vertical line, dot and ``"k = ..."`` label where the curve reaches a threshold.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        The cumulative (right, 0-1) axes.
    k : int
        Smallest number of components reaching the threshold (1-based x).
    cum : float
        Cumulative ratio at ``k``.
    m : int
        Number of components shown (x range 1..m).
    colour : str
        Colour of this threshold.
    label : bool, default True
        Write ``"k = ..."`` next to the dot (False when an earlier threshold
        with the same ``k`` already did).
    """
    ax.plot([k, k], [0.0, cum], color=colour, linestyle=":", linewidth=1.4, zorder=1)
    ax.plot([k], [cum], marker="o", markersize=7, color=colour, markeredgecolor="white",
            zorder=4)
    # Up-left of the dot is free: the curve is below it (cumulative < threshold
    # before k) and vertical markers of lower thresholds stop lower. Near the
    # left edge there is no room, so go down-right (below the curve) instead.
    if not label:
        return
    left = (k - 0.5) / max(m, 1) > 0.15
    ax.annotate(
        f"k = {k}", xy=(k, cum), xytext=(-5, 3) if left else (5, -4),
        textcoords="offset points", ha="right" if left else "left",
        va="bottom" if left else "top", fontsize="small", color=colour, fontweight="bold",
        bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none",
              "alpha": 0.85},
        zorder=5,
    )


def variance_plot(
    explained: Sequence[float],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    max_components: int | None = None,
    title: str | None = None,
    *,
    log_scale: bool = False,
    figsize: tuple[float, float] = (9.0, 5.5),
    pyplot: bool = False,
) -> Figure:
    """Scree plot with the cumulative explained variance and threshold markers.

    Bars (left axis) give each component's explained-variance ratio; the line
    (right axis, 0-100 %) gives the cumulative ratio. Each threshold is a
    dashed horizontal line, and the smallest ``k`` reaching it gets a dotted
    vertical line and a dot on the curve labelled ``"k = 12"``. The legend,
    in one or two rows above the axes (never over the data), has one entry per
    threshold, ``"90 %: k = 12"``; a threshold never reached is still drawn
    and its entry says ``"99 %: not reached (all 20 give 97 %)"``.

    Parameters
    ----------
    explained : array_like, shape (d,), float
        Explained-variance ratio of each component, in component order (sums to
        at most 1), e.g. ``PCAModel.explainedVariance``.
    thresholds : sequence of float, default (0.90, 0.95, 0.99)
        Cumulative targets in (0, 1]; may be empty.
    max_components : int, optional
        Show components 1..max_components. Default: the largest reached
        threshold's ``k`` plus 15 % margin (all ``d`` if a threshold is not
        reached or none is given), capped at ``d``.
    title : str, optional
        Figure title. Default: ``"Explained variance (d = <d> components)"``.
    log_scale : bool, default False
        Logarithmic left axis for the individual ratios: with d = 1280 image
        features they span several orders of magnitude and most bars are
        invisible on a linear axis.
    figsize : tuple of (float, float), default (9.0, 5.5)
        Width and height in inches.
    pyplot : bool, default False
        Create the figure through pyplot (for sparkmagic ``%matplot plt``); see
        the module docstring.

    Returns
    -------
    matplotlib.figure.Figure
        ``fig.axes[0]`` holds the bars (left axis), ``fig.axes[1]`` the
        cumulative curve, the threshold lines, the ``"k = ..."`` texts and the
        legend.
    """
    ratios = _as_explained(explained)
    d = ratios.size
    cumulative = np.cumsum(ratios)
    ts = _as_thresholds(thresholds)
    ks = {t: k_for_variance(ratios, t) for t in ts}

    if max_components is None:
        reached = [k for k in ks.values() if k is not None]
        if ts and len(reached) == len(ts):
            m = min(d, max(max(reached) + max(2, math.ceil(0.15 * max(reached))), 10))
        else:
            m = d
    else:
        m = min(int(check_int("max_components", max_components, 1, example=50)), d)

    fig = _new_figure(figsize, pyplot)
    ax = fig.add_subplot()
    ax_cum = ax.twinx()

    x = np.arange(1, m + 1)
    bar_width = 0.8 if m <= 150 else 1.0
    ax.bar(x, ratios[:m], width=bar_width, color="#7fa8d1", linewidth=0, zorder=2)
    ax.set_xlim(0.5 if m > 1 else 0.0, m + 0.5 if m > 1 else 2.0)
    top = max(float(ratios[:m].max()), 1e-12)
    positive = ratios[:m][ratios[:m] > 0]
    if log_scale:
        ax.set_yscale("log")
        ax.set_ylim(float(positive.min()) * 0.7 if positive.size else top / 10.0, top * 1.6)
    else:
        ax.set_ylim(0.0, top * 1.08)
    ax.set_xlabel("principal component")
    ax.set_ylabel("explained variance ratio", color="#3b6e9e")
    ax.tick_params(axis="y", colors="#3b6e9e")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(axis="x", color="0.92", zorder=0)

    ax_cum.plot(
        x, cumulative[:m], color="black", linewidth=1.8, marker="." if m <= 60 else None,
        markersize=5, zorder=3,
    )
    ax_cum.set_ylim(0.0, 1.05)
    ax_cum.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0, symbol=" %"))
    ax_cum.set_ylabel("cumulative explained variance")

    handles: list[Any] = [
        Patch(color="#7fa8d1", label="individual ratio (left axis)"),
        Line2D([], [], color="black", linewidth=1.8, label="cumulative (right axis)"),
    ]
    marked: set[int] = set()  # thresholds sharing a k get one "k = ..." label
    for i, t in enumerate(ts):
        colour = _THRESHOLD_COLOURS[i % len(_THRESHOLD_COLOURS)]
        k = ks[t]
        ax_cum.axhline(t, color=colour, linestyle="--", linewidth=1.1, zorder=1)
        if k is None:
            text = f"{pct(t)}: not reached (all {d} give {pct(float(cumulative[-1]), 2)})"
        else:
            text = f"{pct(t)}: k = {k}"
            if k <= m:
                _mark_threshold(ax_cum, k, float(cumulative[k - 1]), m, colour, label=k not in marked)
                marked.add(k)
            else:
                text += " (beyond x range)"
        handles.append(Line2D([], [], color=colour, linestyle="--", marker="o" if k else None,
                              markeredgecolor="white", label=text))
    # legend above the axes, outside: nothing drawn inside can hide it or be hidden
    ncol = len(handles)
    if sum(len(h.get_label()) for h in handles) > 90:
        ncol = max(2, math.ceil(len(handles) / 2))
    ax_cum.legend(
        handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.01), ncol=ncol,
        fontsize="small", frameon=False, handlelength=2.2, columnspacing=1.4,
    )
    ax.set_zorder(ax_cum.get_zorder() - 1)  # keep the twin (curve, legend) above the bars
    ax_cum.patch.set_visible(False)

    if title is None:
        title = f"Explained variance (d = {d} components"
        title += f", first {m} shown)" if m < d else ")"
    fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------
# score scatters
# --------------------------------------------------------------------------


def _palette() -> list[str]:
    """Qualitative colours for classes, grey excluded (reserved for "other").

    Returns
    -------
    list of str
        54 hex colours: the 9 strong tab20 hues, their 9 light partners, then
        tab20b and tab20c (without its greys) taken one shade per hue group at a
        time, so that consecutive colours always differ in hue.
    """
    from matplotlib import colormaps

    tab20 = [to_hex(c) for c in colormaps["tab20"].colors]
    dark = [c for i, c in enumerate(tab20[0::2]) if i != 7]  # index 7: grey pair
    light = [c for i, c in enumerate(tab20[1::2]) if i != 7]
    tab20b = [to_hex(c) for c in colormaps["tab20b"].colors]  # 5 hues x 4 shades
    tab20c = [to_hex(c) for c in colormaps["tab20c"].colors][:16]  # 4 hues x 4 shades
    by_shade_b = [tab20b[hue * 4 + shade] for shade in range(4) for hue in range(5)]
    by_shade_c = [tab20c[hue * 4 + shade] for shade in range(4) for hue in range(4)]
    return dark + light + by_shade_b + by_shade_c


def class_styles(classes: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Colour and marker of each class, as used by :func:`scatter`.

    Colours cycle through a 54-colour qualitative palette; markers change every
    9 classes, so ``(colour, marker)`` pairs are unique for up to 216 classes.

    Parameters
    ----------
    classes : sequence of str
        Class names in legend order.

    Returns
    -------
    dict of str to (str, str)
        ``{class: (hex colour, matplotlib marker)}``.
    """
    palette = _palette()
    return {
        c: (palette[i % len(palette)], _MARKERS[(i // _HUES_PER_MARKER) % len(_MARKERS)])
        for i, c in enumerate(classes)
    }


def _escape(text: str) -> str:
    """Escape ``$`` so that matplotlib does not parse data as mathtext."""
    return text.replace("$", r"\$")


def _group_classes(
    labels: Sequence[Any], top_n: int | None
) -> tuple[list[str], list[str], Counter]:
    """Split classes into the ``top_n`` most frequent and the rest.

    Parameters
    ----------
    labels : sequence, length n
        Class of each point (converted with :func:`class_name`).
    top_n : int or None
        Number of classes shown by name; None for all.

    Returns
    -------
    shown : list of str
        Named classes, sorted by name (case-insensitive) for the legend.
    others : list of str
        Classes grouped as "other".
    counts : collections.Counter
        Number of points per class.
    """
    counts = Counter(labels)
    by_freq = sorted(counts, key=lambda c: (-counts[c], c))
    n_shown = len(by_freq) if top_n is None else top_n
    shown = sorted(by_freq[:n_shown], key=lambda c: (c.casefold(), c))
    others = by_freq[n_shown:]
    return shown, others, counts


def _check_scores(
    scores: Any, labels: Sequence[Any], dims: Sequence[int], top_n: int | None
) -> tuple[np.ndarray, list[str], tuple[int, ...]]:
    """Validate scatter inputs.

    Parameters
    ----------
    scores : array_like, shape (n, m), float
        PCA scores.
    labels : sequence, length n
        Class of each row.
    dims : sequence of int
        0-based score columns to plot.
    top_n : int or None
        Number of named classes.

    Returns
    -------
    scores : numpy.ndarray, shape (n, m), dtype float64
    labels : list of str, length n
    dims : tuple of int
    """
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 2:
        raise ParameterError(
            f"scores has shape {arr.shape}: expected a 2-D array (n images, m components), "
            "e.g. np.stack(df['pca_features'])"
        )
    text = [class_name(v) for v in labels]
    if len(text) != arr.shape[0]:
        raise ParameterError(
            f"labels has {len(text)} entries but scores has {arr.shape[0]} rows: "
            "pass one label per row of scores"
        )
    dims_t = tuple(int(i) for i in dims)
    if len(set(dims_t)) != len(dims_t) or any(not 0 <= i < arr.shape[1] for i in dims_t):
        raise ParameterError(
            f"dims={tuple(dims)!r}: expected distinct 0-based component indices below "
            f"m = {arr.shape[1]} (scores has shape {arr.shape}); e.g. dims=(0, 1) for PC1/PC2"
        )
    check_int("top_n", top_n, 0, example=20, optional=True)
    return arr, text, dims_t


def _point_size(n: int) -> float:
    """Marker area (pt^2) shrinking with the number of points."""
    return float(np.clip(20000.0 / max(n, 1), 8.0, 40.0))


def _draw_classes(
    ax: Any,
    arr: np.ndarray,
    text: list[str],
    dims: tuple[int, ...],
    top_n: int | None,
    show_counts: bool,
    point_size: float | None,
    alpha: float,
) -> tuple[list[Any], list[str], int, int]:
    """Draw the points of every class on ``ax`` and build legend entries.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
        2-D or 3-D axes.
    arr : numpy.ndarray, shape (n, m), dtype float64
        Scores.
    text : list of str, length n
        Class of each row.
    dims : tuple of int
        Score columns, one per axis of ``ax``.
    top_n, show_counts, point_size, alpha
        As in :func:`scatter`.

    Returns
    -------
    handles : list of matplotlib.lines.Line2D
        Legend handles (larger, opaque markers).
    names : list of str
        Legend labels (escaped).
    n_classes : int
        Number of distinct classes.
    n_points : int
        Number of points.
    """
    shown, others, counts = _group_classes(text, top_n)
    styles = class_styles(shown)
    labels_arr = np.asarray(text, dtype=object)
    size = _point_size(arr.shape[0]) if point_size is None else float(point_size)
    # 3-D: no depth shading, it fades colours until classes cannot be told apart
    extra: dict[str, Any] = {"depthshade": False} if len(dims) == 3 else {}
    handles: list[Any] = []
    names: list[str] = []

    if others:
        mask = np.isin(labels_arr, np.asarray(others, dtype=object))
        cols = [arr[mask, i] for i in dims]
        ax.scatter(*cols, s=size * 0.7, c=_OTHER_COLOUR, marker="o", alpha=min(alpha, 0.5),
                   linewidths=0, zorder=1, **extra)

    # big classes first, so that small ones stay visible on top
    for cls in sorted(shown, key=lambda c: (-counts[c], c)):
        colour, marker = styles[cls]
        mask = labels_arr == cls
        cols = [arr[mask, i] for i in dims]
        ax.scatter(*cols, s=size, c=colour, marker=marker, alpha=alpha,
                   edgecolors="0.2", linewidths=0.25, zorder=2, **extra)

    for cls in shown:
        colour, marker = styles[cls]
        handles.append(Line2D([], [], linestyle="none", marker=marker, markersize=7,
                              markerfacecolor=colour, markeredgecolor="0.2",
                              markeredgewidth=0.4))
        name = _escape(cls)
        names.append(f"{name} ({counts[cls]})" if show_counts else name)
    if others:
        n_other = sum(counts[c] for c in others)
        name = f"other ({len(others)} class{'es' if len(others) > 1 else ''}"
        name += f", {n_other} points)" if show_counts else ")"
        handles.append(Line2D([], [], linestyle="none", marker="o", markersize=7,
                              markerfacecolor=_OTHER_COLOUR, markeredgecolor="none"))
        names.append(name)
    return handles, names, len(counts), arr.shape[0]


def _class_scatter(
    scores: Any,
    labels: Sequence[str],
    dims: Sequence[int],
    top_n: int | None,
    explained: Sequence[float] | None,
    style: tuple[bool, float | None, float],
    *,
    legend_rows: int,
    figsize: tuple[float, float] | None,
    base_size: tuple[float, float],
    projection: str | None,
    pyplot: bool,
) -> tuple[Figure, Any, list[Any], list[str], str]:
    """Check the inputs, make the figure and draw every class: the part :func:`scatter` and :func:`scatter_3d` share.

    Parameters
    ----------
    scores, labels, dims, top_n, explained
        As in :func:`scatter` (``dims`` has one index per axis).
    style : tuple of (bool, float or None, float)
        ``(show_counts, point_size, alpha)``, as in :func:`scatter`.
    legend_rows : int
        Legend entries per column (the default width grows with the columns).
    figsize : tuple of (float, float) or None
        Explicit size in inches; None for ``base_size`` widened by 2.5 in per legend column.
    base_size : tuple of (float, float)
        Width and height in inches before the legend columns.
    projection : str or None
        ``None`` (2-D) or ``"3d"``.
    pyplot : bool
        Create the figure through pyplot.

    Returns
    -------
    fig : matplotlib.figure.Figure
    ax : matplotlib.axes.Axes
        The axes, its axis labels set (``"PC1 (23.4 % var.)"``).
    handles : list of matplotlib.lines.Line2D
        Legend handles.
    names : list of str
        Legend labels.
    title : str
        The default title: ``"PC1 vs PC2 (n = … images, … classes)"`` (2-D) or
        ``"PC1, PC2, PC3 (n = …)"`` (3-D).
    """
    arr, text, dims_t = _check_scores(scores, labels, dims, top_n)
    ratios = None if explained is None else _as_explained(explained)
    n_entries = min(len(set(text)), (top_n if top_n is not None else len(text)) + 1)
    ncol = max(1, math.ceil(n_entries / legend_rows))
    fig = _new_figure(figsize or (base_size[0] + 2.5 * ncol, base_size[1]), pyplot)
    ax = fig.add_subplot(projection=projection)
    handles, names, n_classes, n = _draw_classes(ax, arr, text, dims_t, top_n, *style)
    setters = (ax.set_xlabel, ax.set_ylabel, getattr(ax, "set_zlabel", None))
    for set_label, dim in zip(setters, dims_t):
        set_label(axis_label(dim, ratios))
    axes = (" vs " if len(dims_t) == 2 else ", ").join(f"PC{i + 1}" for i in dims_t)
    return fig, ax, handles, names, f"{axes} (n = {n} images, {n_classes} classes)"


def _outside_legend(ax: Any, handles: list[Any], names: list[str], rows: int) -> Any:
    """Legend to the right of ``ax``, in columns of at most ``rows`` entries."""
    ncol = max(1, math.ceil(len(names) / rows))
    return ax.legend(
        handles, names, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
        fontsize="small", ncol=ncol, frameon=False, handletextpad=0.3, columnspacing=1.0,
        title="class", title_fontsize="small",
    )


def scatter(
    scores: Any,
    labels: Sequence[str],
    dims: tuple[int, int] = (0, 1),
    top_n: int | None = 20,
    title: str | None = None,
    explained: Sequence[float] | None = None,
    *,
    show_counts: bool = False,
    point_size: float | None = None,
    alpha: float = 0.8,
    legend_rows: int = 26,
    figsize: tuple[float, float] | None = None,
    pyplot: bool = False,
) -> Figure:
    """2-D scatter of PCA scores coloured by class, legend outside on the right.

    The ``top_n`` most frequent classes (ties broken by name) are drawn with
    their own colour/marker pair and listed by name (sorted alphabetically);
    the remaining classes are drawn underneath in grey and listed once as
    ``"other (N classes)"``. Colours come from tab20 (strong hues first, then
    their light partners), then tab20b/tab20c, and the marker changes every 9
    classes, so 20-60 classes stay distinguishable.

    Parameters
    ----------
    scores : array_like, shape (n, m), float
        PCA scores, one row per image; ``m >= max(dims) + 1``.
    labels : sequence of str, length n
        Class of each row (any objects: converted with ``str``; None shows as
        ``"(no label)"``). Spaces, unicode and ``$`` are fine.
    dims : tuple of (int, int), default (0, 1)
        0-based score columns for the x and y axes (``(0, 1)`` = PC1 vs PC2).
    top_n : int or None, default 20
        Number of classes named in the legend; None names every class.
    title : str, optional
        Figure title. Default: ``"PC1 vs PC2 (n = <n> images, <c> classes)"``.
    explained : array_like, shape (d,), float, optional
        Explained-variance ratios; when given, axes read ``"PC1 (23.4 % var.)"``.
    show_counts : bool, default False
        Append the number of points to each legend entry.
    point_size : float, optional
        Marker area in pt^2. Default: from 40 (few points) down to 8 (many).
    alpha : float, default 0.8
        Opacity of the named classes' points.
    legend_rows : int, default 26
        Legend entries per column before a new column starts.
    figsize : tuple of (float, float), optional
        Width and height in inches. Default: 10.5 x 6.5, wider when the legend
        needs several columns.
    pyplot : bool, default False
        Create the figure through pyplot (for sparkmagic ``%matplot plt``).

    Returns
    -------
    matplotlib.figure.Figure
        One axes; its legend has one entry per named class plus at most one
        ``"other (N classes)"`` entry.
    """
    if len(dims) != 2:
        raise ParameterError(f"dims={tuple(dims)!r}: scatter needs two dims, e.g. (0, 1)")
    fig, ax, handles, names, default_title = _class_scatter(
        scores, labels, dims, top_n, explained, (show_counts, point_size, alpha),
        legend_rows=legend_rows, figsize=figsize, base_size=(8.0, 6.5), projection=None, pyplot=pyplot,
    )
    ax.axhline(0.0, color="0.85", linewidth=0.8, zorder=0)
    ax.axvline(0.0, color="0.85", linewidth=0.8, zorder=0)
    ax.grid(color="0.95", zorder=0)
    _outside_legend(ax, handles, names, legend_rows)
    fig.suptitle(default_title if title is None else title)
    return fig


def scatter_3d(
    scores: Any,
    labels: Sequence[str],
    dims: tuple[int, int, int] = (0, 1, 2),
    top_n: int | None = 20,
    title: str | None = None,
    explained: Sequence[float] | None = None,
    *,
    show_counts: bool = False,
    elev: float = 20.0,
    point_size: float | None = None,
    azim: float = -60.0,
    alpha: float = 0.8,
    legend_rows: int = 26,
    figsize: tuple[float, float] | None = None,
    pyplot: bool = False,
) -> Figure:
    """3-D scatter of PCA scores coloured by class (``mpl_toolkits.mplot3d``).

    Same class grouping, colours and legend as :func:`scatter`.

    Parameters
    ----------
    scores : array_like, shape (n, m), float
        PCA scores; ``m >= max(dims) + 1``.
    labels : sequence of str, length n
        Class of each row.
    dims : tuple of (int, int, int), default (0, 1, 2)
        0-based score columns for the x, y and z axes.
    top_n : int or None, default 20
        Number of classes named in the legend; None names every class.
    title : str, optional
        Figure title. Default: ``"PC1, PC2, PC3 (n = <n> images, <c> classes)"``.
    explained : array_like, shape (d,), float, optional
        Explained-variance ratios, for the axis labels.
    elev, azim : float, default 20, -60
        Viewing angles in degrees (see ``Axes3D.view_init``).
    show_counts, point_size, alpha, legend_rows, figsize, pyplot
        As in :func:`scatter`.

    Returns
    -------
    matplotlib.figure.Figure
        One 3-D axes with the legend on its right.
    """
    from mpl_toolkits.mplot3d import Axes3D  # noqa: F401 - registers "3d" on old versions

    if len(dims) != 3:
        raise ParameterError(f"dims={tuple(dims)!r}: scatter_3d needs three dims, e.g. (0, 1, 2)")
    fig, ax, handles, names, default_title = _class_scatter(
        scores, labels, dims, top_n, explained, (show_counts, point_size, alpha),
        legend_rows=legend_rows, figsize=figsize, base_size=(7.5, 7.0), projection="3d", pyplot=pyplot,
    )
    ax.view_init(elev=elev, azim=azim)
    # A figure legend placed "outside" gets its own column from the constrained
    # layout, clear of the z-axis label (an axes legend would overlap it).
    ncol = max(1, math.ceil(len(names) / legend_rows))
    legend_kw: dict[str, Any] = {
        "fontsize": "small", "ncol": ncol, "frameon": False, "handletextpad": 0.3,
        "columnspacing": 1.0, "title": "class", "title_fontsize": "small",
    }
    try:  # matplotlib >= 3.7
        fig.legend(handles, names, loc="outside right upper", **legend_kw)
    except ValueError:
        fig.legend(handles, names, loc="upper left", bbox_to_anchor=(0.8, 0.95), **legend_kw)
    fig.suptitle(default_title if title is None else title)
    return fig


# --------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------


def _to_rgb_array(image: np.ndarray | bytes | bytearray | memoryview | None) -> np.ndarray | None:
    """Decode or normalise one image for ``imshow``.

    Parameters
    ----------
    image : numpy.ndarray or bytes-like or None
        ``uint8`` array of shape (H, W, 3), (H, W, 4) or (H, W); float array in
        [0, 1] or [0, 255]; or encoded file bytes (JPEG, PNG, ... as read by
        Spark's ``binaryFile``, which gives ``bytearray``).

    Returns
    -------
    numpy.ndarray, shape (H, W, 3) or (H, W, 4), dtype uint8, or None
        None when the image cannot be decoded or has an unusable shape.
    """
    if image is None:
        return None
    if isinstance(image, (bytes, bytearray, memoryview)):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(bytes(image))) as img:
                return np.asarray(img.convert("RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError):
            return None
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4) or arr.size == 0:
        return None
    if arr.dtype != np.uint8:
        arr = arr.astype(np.float64)
        if not np.all(np.isfinite(arr)):
            return None
        if arr.max(initial=0.0) <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return arr


def _draw_image(ax: Any, image: Any, placeholder: str, fontsize: str) -> None:
    """Show ``image`` (array or encoded bytes) in ``ax``; a grey cell saying ``placeholder`` if it cannot decode."""
    arr = _to_rgb_array(image)
    if arr is None:
        ax.set_facecolor("0.9")
        ax.text(0.5, 0.5, placeholder, ha="center", va="center", color="#b22222", transform=ax.transAxes,
                fontsize=fontsize)
    else:
        ax.imshow(arr, interpolation="antialiased")


def _wrap_title(text: str, width: int, max_lines: int = 2) -> str:
    """Wrap ``text`` to ``width`` characters, at most ``max_lines`` lines, "…" if cut."""
    lines = textwrap.wrap(text, max(width, 4)) or [" "]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(width, 4) - 1].rstrip() + "\u2026"
    return "\n".join(lines)


def image_grid(
    images: Sequence[np.ndarray | bytes | bytearray | memoryview | None],
    labels: Sequence[str],
    ncols: int = 6,
    title: str | None = None,
    *,
    cell_size: float = 2.0,
    max_label_chars: int = 22,
    pyplot: bool = False,
) -> Figure:
    """Show images in a grid with their labels as titles.

    An image that cannot be decoded is shown as a grey tile marked
    "cannot decode" (the pipeline keeps such rows with a null feature vector),
    so a bad file never breaks the notebook step.

    Parameters
    ----------
    images : sequence of numpy.ndarray or bytes-like, length n
        ``uint8`` arrays of shape (H, W, 3) (also (H, W) or (H, W, 4), or
        floats in [0, 1]), or raw encoded bytes (JPEG/PNG; ``bytes``,
        ``bytearray`` or ``memoryview``) decoded with Pillow. Sizes may differ.
    labels : sequence of str, length n
        Title of each image (long names are wrapped).
    ncols : int, default 6
        Number of columns; fewer when there are fewer images.
    title : str, optional
        Figure title.
    cell_size : float, default 2.0
        Size of one grid cell in inches.
    max_label_chars : int, default 22
        Wrap width of the titles, in characters.
    pyplot : bool, default False
        Create the figure through pyplot (for sparkmagic ``%matplot plt``).

    Returns
    -------
    matplotlib.figure.Figure
        One axes per image (ticks hidden).
    """
    images = list(images)
    names = [class_name(v) for v in labels]
    if not images:
        raise ParameterError("images is empty: pass at least one image (array or file bytes)")
    if len(names) != len(images):
        raise ParameterError(
            f"labels has {len(names)} entries but images has {len(images)}: "
            "pass one label per image"
        )
    ncols = min(int(check_int("ncols", ncols, 1, example=6)), len(images))
    nrows = math.ceil(len(images) / ncols)
    fig = _new_figure((cell_size * ncols, cell_size * 1.15 * nrows + (0.4 if title else 0.0)),
                      pyplot)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for idx, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if idx >= len(images):
            ax.set_axis_off()
            continue
        _draw_image(ax, images[idx], "cannot decode", "small")
        ax.set_title(_wrap_title(_escape(names[idx]), max_label_chars), fontsize="small")
        for spine in ax.spines.values():
            spine.set_visible(False)
    if title:
        fig.suptitle(title)
    return fig


# --------------------------------------------------------------------------
# what a component means: the images at both ends
# --------------------------------------------------------------------------


def extreme_indices(scores: Any, n_images: int = 5, n_components: int = 3) -> np.ndarray:
    """Rows with the lowest and the highest scores on each of the first components.

    Parameters
    ----------
    scores : array_like, shape (n, k), float
        PCA scores (e.g. ``ScoreSample.scores``; a bounded sample of the images).
    n_images : int, default 5
        Images per end, at least 1; fewer when ``n < 2 * n_images`` (the two
        ends never share a row).
    n_components : int, default 3
        Components, from PC1; at most ``k``.

    Returns
    -------
    numpy.ndarray, shape (m, 2, p), dtype int64
        ``m = min(n_components, k)``, ``p = min(n_images, n // 2)``:
        ``[j, 0]`` the rows of the ``p`` lowest scores on component ``j``,
        lowest first; ``[j, 1]`` the ``p`` highest, highest first. Tied
        scores are ordered by row (stable sort): earlier rows count as lower.

    Raises
    ------
    ParameterError
        ``scores`` is not 2-D with at least 2 rows, or a bad count.

    Examples
    --------
    >>> extreme_indices([[0.0], [3.0], [-2.0], [1.0]], n_images=1, n_components=1).tolist()
    [[[2], [1]]]
    """
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] < 2 or arr.shape[1] < 1:
        raise ParameterError(
            f"scores has shape {arr.shape}: expected (n images, k components) with n >= 2 and k >= 1, "
            "e.g. ScoreSample.scores"
        )
    p = min(int(check_int("n_images", n_images, 1, example=5)), arr.shape[0] // 2)
    m = min(int(check_int("n_components", n_components, 1, example=3)), arr.shape[1])
    out = np.empty((m, 2, p), dtype=np.int64)
    for j in range(m):
        order = np.argsort(arr[:, j], kind="stable")
        out[j, 0] = order[:p]
        out[j, 1] = order[::-1][:p]
    return out


def component_extremes(
    images_low: Sequence[Sequence[np.ndarray | bytes | bytearray | memoryview | None]],
    images_high: Sequence[Sequence[np.ndarray | bytes | bytearray | memoryview | None]],
    labels_low: Sequence[Sequence[str]] | None = None,
    labels_high: Sequence[Sequence[str]] | None = None,
    *,
    explained: Sequence[float] | None = None,
    components: Sequence[int] | None = None,
    title: str | None = None,
    cell_size: float = 1.35,
    max_label_chars: int = 20,
    pyplot: bool = False,
) -> Figure:
    """Show, for each component, the images with the lowest and the highest scores, side by side.

    One row per component: its ``p`` lowest-scoring images on the left (lowest
    first, from the left edge), then its ``p`` highest on the right (highest at
    the right edge), so what changes from one end to the other is what the
    component measures. Pick the images with :func:`extreme_indices`.

    Parameters
    ----------
    images_low, images_high : sequence of m sequences of p images
        Per component, the images at each end (``uint8`` arrays or encoded
        file bytes, as in :func:`image_grid`; None shows "cannot decode").
        Every row has the same ``p`` on both sides.
    labels_low, labels_high : sequence of m sequences of p str, optional
        Class of each image, shown under it.
    explained : array_like, shape (d,), float, optional
        Explained-variance ratios, for the row names (``"PC1 (12.3 % var.)"``).
    components : sequence of int, optional
        0-based component of each row (default ``0 .. m-1``).
    title : str, optional
        Figure title; default names the two ends.
    cell_size : float, default 1.35
        Inches per image, horizontally and vertically.
    max_label_chars : int, default 20
        Labels longer than this many characters are wrapped.
    pyplot : bool, default False
        Whether pyplot manages the figure (sparkmagic's ``%matplot plt`` shows pyplot's current figure).

    Returns
    -------
    matplotlib.figure.Figure
        ``m * 2p`` image axes (ticks hidden), row by row: low images then high
        images; the first axes of each row is labelled with the component.

    Raises
    ------
    ParameterError
        No component, rows of different lengths, or labels not matching the images.
    """
    low = [list(row) for row in images_low]
    high = [list(row) for row in images_high]
    if not low or len(low) != len(high):
        raise ParameterError(
            f"images_low has {len(low)} rows and images_high {len(high)}: pass one row of images per "
            "component on each side (at least one), e.g. from extreme_indices"
        )
    p = len(low[0])
    if p == 0 or any(len(row) != p for row in low + high):
        raise ParameterError(
            "every row of images_low and images_high must hold the same number (>= 1) of images; "
            f"got {[len(r) for r in low]} and {[len(r) for r in high]}"
        )
    m = len(low)

    def _labels(given: Sequence[Sequence[str]] | None, side: str) -> list[list[str]]:
        if given is None:
            return [[""] * p for _ in range(m)]
        rows = [[class_name(v) for v in row] for row in given]
        if len(rows) != m or any(len(row) != p for row in rows):
            raise ParameterError(f"labels_{side} must have the shape of images_{side}: {m} rows of {p}")
        return rows

    names_low, names_high = _labels(labels_low, "low"), _labels(labels_high, "high")
    comps = list(range(m)) if components is None else [int(c) for c in components]
    if len(comps) != m:
        raise ParameterError(f"components has {len(comps)} entries for {m} rows: pass one per row")
    ratios = None if explained is None else _as_explained(explained)
    with_labels = labels_low is not None or labels_high is not None
    gap = 0.35
    fig = _new_figure((cell_size * (2 * p + gap) + 1.0,
                       cell_size * (1.25 if with_labels else 1.05) * m + 0.6), pyplot)
    grid = fig.add_gridspec(m, 2 * p + 1, width_ratios=[1.0] * p + [gap] + [1.0] * p)
    for j in range(m):
        row = [(low[j][i], names_low[j][i], grid[j, i]) for i in range(p)]
        row += [(high[j][i], names_high[j][i], grid[j, p + 1 + i]) for i in range(p)]
        for col, (image, name, cell) in enumerate(row):
            ax = fig.add_subplot(cell)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            _draw_image(ax, image, "cannot\ndecode", "x-small")
            if name:
                ax.set_xlabel(_wrap_title(_escape(name), max_label_chars), fontsize="x-small")
            if col == 0:
                ax.set_ylabel(axis_label(comps[j], ratios).replace(" (", "\n("), fontsize="small")
            if j == 0 and col in (0, 2 * p - 1):
                ax.set_title("lowest" if col == 0 else "highest", fontsize="small", loc="left" if col == 0
                             else "right", color="#555555")
    fig.suptitle(title if title is not None else
                 f"Images at both ends of PC{comps[0] + 1}" + (f"–PC{comps[-1] + 1}" if m > 1 else "")
                 + f": {p} lowest scores (left), {p} highest (right)")
    return fig


# --------------------------------------------------------------------------
# linear probe
# --------------------------------------------------------------------------


def probe_plot(
    curve: pd.DataFrame,
    explained: Sequence[float],
    *,
    variance_target: float = 0.95,
    tolerance: float | None = None,
    title: str | None = None,
    figsize: tuple[float, float] = (9.0, 5.5),
    pyplot: bool = False,
) -> Figure:
    """Held-out probe accuracy against ``k``, with the cumulative explained variance on the same ``k`` axis.

    Shows what ``k`` components keep for recognition next to what they keep
    of the variance: a variance target can need many more components than
    the accuracy plateau. The smallest ``k`` reaching ``variance_target`` and
    the plateau (:func:`p8utils.probe.plateau_k`: the smallest ``k`` within
    ``tolerance`` of the best accuracy) get a vertical line each; the raw
    features' accuracy, when the curve has it, is a dashed horizontal line.

    Parameters
    ----------
    curve : pandas.DataFrame
        :func:`p8utils.probe.probe_curve`'s output: ``representation``, ``k``,
        ``accuracy`` (fractions) and ``macro_f1``.
    explained : array_like, shape (d,), float
        Explained-variance ratio of every component (``PCAResult.explained_variance``).
    variance_target : float, default 0.95
        Cumulative variance in (0, 1] whose ``k`` is marked.
    tolerance : float, optional
        Accuracy below the best that counts as the plateau (default
        :data:`p8utils.probe.PLATEAU_TOLERANCE`, 0.5 point).
    title : str, optional
        Figure title.
    figsize : tuple of (float, float), default (9.0, 5.5)
        Width and height in inches.
    pyplot : bool, default False
        Create the figure through pyplot (for sparkmagic ``%matplot plt``).

    Returns
    -------
    matplotlib.figure.Figure
        ``fig.axes[0]``: accuracy and macro-F1 (left, %), the markers and the
        legend; ``fig.axes[1]``: cumulative explained variance (right, %);
        log-scaled ``k`` axis.

    Raises
    ------
    ParameterError
        A curve without PCA rows or without the columns above.
    """
    missing = [c for c in ("representation", "k", "accuracy", "macro_f1") if c not in getattr(curve, "columns", ())]
    if missing:
        raise ParameterError(f"curve lacks the columns {missing}: pass the DataFrame of p8utils.probe.probe_curve")
    pcs = curve[curve["representation"] == "pca"].sort_values("k")
    if pcs.empty:
        raise ParameterError("curve has no PCA row: call probe_curve with ks within [1, fit.k]")
    ratios = _as_explained(explained)
    target = float(check_fraction("variance_target", variance_target))
    tol = PLATEAU_TOLERANCE if tolerance is None else float(tolerance)
    cumulative = np.cumsum(ratios)
    k_var = k_for_variance(ratios, target)
    k_flat = plateau_k(curve, tol)
    best = float(pcs["accuracy"].max())

    fig = _new_figure(figsize, pyplot)
    ax = fig.add_subplot()
    ax_var = ax.twinx()
    ks = pcs["k"].to_numpy(dtype=int)
    right = max(int(ks.max()), k_var or 1) * 1.25
    x = np.arange(1, ratios.size + 1)
    shown = x <= right
    ax_var.plot(x[shown], cumulative[shown], color="0.45", linewidth=1.6, zorder=2)
    ax_var.set_ylim(0.0, 1.05)
    ax_var.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0, symbol=" %"))
    ax_var.set_ylabel("cumulative explained variance", color="0.35")

    ax.plot(ks, pcs["accuracy"], color="#1f77b4", marker="o", linewidth=2.0, zorder=4)
    ax.plot(ks, pcs["macro_f1"], color="#ff7f0e", marker=".", linewidth=1.2, linestyle="-.", zorder=3)
    ax.set_xscale("log")
    ax.set_xlim(0.8, right)
    ax.set_xlabel("k (principal components, log scale)")
    ax.set_ylabel("held-out score (linear probe)", color="#1f77b4")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0, symbol=" %"))
    low = float(min(pcs["accuracy"].min(), pcs["macro_f1"].min()))
    ax.set_ylim(max(0.0, low - 0.05), min(1.0, best + 0.05) + 0.01)
    ax.grid(color="0.92", zorder=0)

    n_test = int(pcs["n_test"].iloc[0]) if "n_test" in pcs.columns else None
    handles: list[Any] = [
        Line2D([], [], color="#1f77b4", marker="o", linewidth=2.0,
               label="accuracy" + (f" ({n_test} held-out images)" if n_test else "")),
        Line2D([], [], color="#ff7f0e", marker=".", linestyle="-.", label="macro-F1"),
        Line2D([], [], color="0.45", linewidth=1.6, label="cumulative variance (right axis)"),
    ]
    raw = curve[curve["representation"] == "raw"]
    if not raw.empty:
        acc = float(raw["accuracy"].iloc[0])
        ax.axhline(acc, color="#1f77b4", linestyle="--", linewidth=1.0, zorder=1)
        handles.append(Line2D([], [], color="#1f77b4", linestyle="--",
                              label=f"raw features ({int(raw['k'].iloc[0])}-d): {pct(acc)}"))
    if k_flat is not None:
        acc = float(pcs.loc[pcs["k"] == k_flat, "accuracy"].iloc[0])
        ax.axvline(k_flat, color="#2ca02c", linestyle=":", linewidth=1.6, zorder=1)
        handles.append(Line2D([], [], color="#2ca02c", linestyle=":", linewidth=1.6,
                              label=f"accuracy plateau (within {tol * 100:g} pt of the best): k = {k_flat}, "
                                    f"{pct(acc)}"))
    if k_var is not None:
        ax.axvline(k_var, color="#d62728", linestyle=":", linewidth=1.6, zorder=1)
        handles.append(Line2D([], [], color="#d62728", linestyle=":", linewidth=1.6,
                              label=f"{pct(target)} of the variance: k = {k_var}"))
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.01), ncol=2, fontsize="small",
              frameon=False)
    ax.set_zorder(ax_var.get_zorder() + 1)  # the probe curves and the legend above the variance curve
    ax.patch.set_visible(False)
    fig.suptitle(title if title is not None else "What k components keep: recognition (linear probe) vs variance")
    return fig
