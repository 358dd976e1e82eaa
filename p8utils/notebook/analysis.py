"""The PCA analysis of a run, as one call: what notebook 03 shows, and notebook 02 on the cluster.

:func:`analyse_run` reads a run's ``features/``, fits the PCA once (every
component's explained variance), draws the scree + cumulative plot, the
``k`` → variance table, the class scatters and the images at both ends of
the first components, and writes them under ``<output>/figures/`` and
``<output>/variance_table.csv``, with the interactive explorer page
``<output>/explorer.html`` (:mod:`p8utils.notebook.explorer`; default
``<output>`` = ``<run>/analysis``), locally or on S3. Notebook 03 (local kernel) and notebook
02 (sparkmagic on EMR, where the run is on S3) both call it, so the analysis of
a cluster run is made on the cluster, with the cluster's filesystem.

Its thresholds and bounds are an :class:`~p8utils.notebook.settings.AnalysisSettings`
(the notebooks build theirs from their parameters): ``analyse_run(spark,
"runs/demo")`` uses the defaults, ``analyse_run(spark, "runs/demo", settings,
pyplot=True)`` a notebook's, and keyword arguments change single settings
(``analyse_run(spark, "runs/demo", probe=True)``). The result's ``figures``
holds the figures (``analysis.figures["scree_cumulative"]``) and
``summary()`` sums it up.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Dict, Optional, Sequence, Union

from p8utils import pca, runs, storage
from p8utils.notebook import explorer as explorer_page
from p8utils.notebook import figures, plots, samples, summaries
from p8utils.notebook.settings import DEFAULTS, AnalysisSettings
from p8utils.probe import DEFAULT_KS, ProbeSettings, probe_curve

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure
    from pyspark.sql import SparkSession

__all__ = ["PROBE_MAX_ROWS", "Analysis", "AnalysisSettings", "analyse_run"]

#: Components kept for the scatter plots (and the component-extremes figure, the explorer's tabs).
_PLOTTED_COMPONENTS = 3

#: Side in pixels of the images read for the component-extremes figure.
_EXTREME_IMAGE_PX = 160

#: Rows the linear probe of :func:`analyse_run` uses at most (the same number per class), so it stays cheap
#: (:attr:`.AnalysisSettings.probe_max_rows`).
PROBE_MAX_ROWS = DEFAULTS.probe_max_rows


@dataclass
class Analysis:
    """What :func:`analyse_run` made.

    Attributes
    ----------
    run : RunLayout
        The analysed run.
    output : str
        Folder the files were written to.
    fit : PCAResult
        The PCA fit (``explained_variance`` of shape ``(d,)``; 3 components kept).
    scores : ScoreSample
        The plotted sample of PC scores (``(n, 3)`` float64).
    table : pandas.DataFrame
        Cumulative explained variance at a few ``k`` and at each threshold.
    figures : dict of str to Figure
        ``scree_cumulative``, ``pc1_pc2``, ``pc1_pc3`` and, if drawn, ``pc1_pc2_pc3_3d`` and
        ``component_extremes`` (the images with the lowest and highest scores on PC1–PC3).
    files : dict of str to str
        Where each figure, the table and (``"explorer"``) the explorer page were written.
    thresholds : tuple of float
        The cumulative-variance targets marked.
    explorer : str or None
        Where the explorer page was written (``<output>/explorer.html``), None if not made.
    probe_curve : pandas.DataFrame or None
        With ``probe=True``: :func:`p8utils.probe.probe_curve` (held-out
        accuracy and macro-F1 per ``k``, cumulative variance, raw features).
    """

    run: runs.RunLayout
    output: str
    fit: pca.PCAResult = field(repr=False)
    scores: samples.ScoreSample = field(repr=False)
    table: pd.DataFrame = field(repr=False)
    figures: Dict[str, Figure] = field(repr=False)
    files: Dict[str, str] = field(default_factory=dict)
    thresholds: Sequence[float] = plots.DEFAULT_THRESHOLDS
    explorer: Optional[str] = None
    probe_curve: Optional[pd.DataFrame] = field(default=None, repr=False)

    def summary(self) -> str:
        """Sum the analysis up in a few lines: rows, width, k per threshold, files written."""
        return summaries.analysis_summary(self.fit, self.thresholds, self.files, self.scores)


def analyse_run(
    spark: SparkSession,
    run: Union[str, runs.RunLayout],
    output: Optional[str] = None,
    settings: Optional[AnalysisSettings] = None,
    *,
    pyplot: bool = False,
    explorer: bool = True,
    **changes: Any,
) -> Analysis:
    """Fit the PCA of a run's features once, draw the analysis figures and write them.

    Parameters
    ----------
    spark : pyspark.sql.SparkSession
    run : str or RunLayout
        The run folder (or its ``features/``), local or URI.
    output : str, optional
        Folder for ``figures/`` and ``variance_table.csv``; default ``<run>/analysis``.
    settings : AnalysisSettings, optional
        Thresholds and bounds (default: :data:`p8utils.notebook.settings.DEFAULTS`):
        the variance ``thresholds`` marked on the plot and in the table,
        ``top_n`` classes named in the scatter legends, at most
        ``max_plot_points`` images brought to the driver for the scatters,
        ``show_3d``, ``seed`` (the plotted sample, the probe's split),
        ``explorer_points``, ``extreme_images`` (images per end in the
        ``component_extremes`` figure, read on the driver: at most
        ``2 * extreme_images * 3`` files; 0: no such figure), ``probe`` and
        ``probe_max_rows`` (below).
    pyplot : bool
        Make the figures through pyplot (for sparkmagic's ``%matplot plt``).
    explorer : bool
        Also write the interactive explorer ``<output>/explorer.html``
        (:func:`p8utils.notebook.explorer.write_explorer`; needs Bokeh, else a
        warning and no page).
    **changes
        Settings that replace those of ``settings``, by name (e.g. ``probe=True``).
        With ``probe``, the linear probe (:func:`p8utils.probe.probe_curve`:
        Spark ML logistic regression on a stratified split of at most about
        ``probe_max_rows`` rows, seed ``seed``) runs on the centred scores at
        ``k`` in :data:`p8utils.probe.DEFAULT_KS` and on the raw features;
        figure ``probe_accuracy`` (accuracy vs ``k`` next to the cumulative
        variance), table ``<output>/probe_curve.csv``.

    Returns
    -------
    Analysis

    Raises
    ------
    ParameterError
        A bad setting, or a name in ``changes`` that is not a setting.
    """
    opts = (settings or DEFAULTS).replace(**changes)
    layout = run if isinstance(run, runs.RunLayout) else runs.find_run(run, spark)
    out = output or layout.analysis
    features = runs.read_features(layout, spark)
    if opts.probe:  # every component for the probe; the plots use the first ones of the same fit
        full = pca.fit_pca(features, variance=1.0)
        fit = replace(full, k=_PLOTTED_COMPONENTS, variance_target=None,
                      components=full.components[:, :_PLOTTED_COMPONENTS].copy())
    else:
        fit = pca.fit_pca(features, k=_PLOTTED_COMPONENTS)
    scores = samples.collect_scores(pca.transform(fit, features), opts.max_plot_points, seed=opts.seed)
    ev = fit.explained_variance
    drawn: Dict[str, Optional[Figure]] = {
        "scree_cumulative": plots.variance_plot(ev, opts.thresholds, pyplot=pyplot),
        "pc1_pc2": plots.scatter(scores.scores, scores.labels, dims=(0, 1), top_n=opts.top_n, explained=ev,
                                 title=f"PC1 vs PC2: {scores.describe()}", pyplot=pyplot),
        "pc1_pc3": plots.scatter(scores.scores, scores.labels, dims=(0, 2), top_n=opts.top_n, explained=ev,
                                 title=f"PC1 vs PC3: {scores.describe()}", pyplot=pyplot),
        "pc1_pc2_pc3_3d": plots.scatter_3d(scores.scores, scores.labels, top_n=opts.top_n, explained=ev,
                                           title=f"PC1, PC2, PC3: {scores.describe()}", pyplot=pyplot)
        if opts.show_3d else None,
        "component_extremes": _component_extremes(scores, ev, spark, opts.extreme_images, pyplot)
        if opts.extreme_images and scores.n >= 2 else None,
    }
    curve = None
    if opts.probe:
        curve = probe_curve(features, full, DEFAULT_KS, ProbeSettings(seed=opts.seed, max_rows=opts.probe_max_rows))
        drawn["probe_accuracy"] = plots.probe_plot(curve, ev, variance_target=pca.DEFAULT_VARIANCE, pyplot=pyplot)
    table = plots.variance_table(ev, opts.thresholds)
    files = figures.save_figures(drawn, storage.join(out, "figures"), spark)
    files["variance_table"] = figures.save_table(table, storage.join(out, "variance_table.csv"), spark)
    if curve is not None:
        files["probe_curve"] = figures.save_table(curve, storage.join(out, "probe_curve.csv"), spark)
    page = _write_explorer(spark, layout, storage.join(out, explorer_page.EXPLORER_FILE), scores, ev,
                           opts.explorer_points, opts.seed) if explorer else None
    if page:
        files["explorer"] = page
    return Analysis(layout, out, fit, scores, table, {k: v for k, v in drawn.items() if v is not None}, files,
                    opts.thresholds, page, curve)


def _component_extremes(
    scores: samples.ScoreSample, explained: np.ndarray, spark: SparkSession, n_images: int, pyplot: bool,
) -> Figure:
    """Draw the images with the lowest and highest scores on each plotted component (of the sample).

    Only those ``<= 2 * n_images * 3`` files are read, on the driver.
    """
    picked = plots.extreme_indices(scores.scores, n_images, _PLOTTED_COMPONENTS)  # (m, 2, p) int64
    thumbs = explorer_page.read_thumbnails([scores.paths[i] for i in picked.ravel()], spark,
                                           size=_EXTREME_IMAGE_PX, max_files=picked.size)
    images = [[[thumbs.get(scores.paths[i]) for i in end] for end in comp] for comp in picked]
    labels = [[[scores.labels[i] for i in end] for end in comp] for comp in picked]
    return plots.component_extremes([c[0] for c in images], [c[1] for c in images], [c[0] for c in labels],
                                    [c[1] for c in labels], explained=explained, pyplot=pyplot,
                                    title=f"Images at both ends of PC1–PC{picked.shape[0]} ({scores.describe()}): "
                                          "lowest scores (left), highest (right)")


def _write_explorer(spark: SparkSession, layout: runs.RunLayout, uri: str, scores: samples.ScoreSample,
                    explained: np.ndarray, max_points: int, seed: int) -> Optional[str]:
    """Write the explorer page from the plotted sample; None (with a warning) when Bokeh is missing."""
    try:
        import bokeh  # noqa: F401 - only checks that the notebook extras are there
    except ImportError:
        warnings.warn("analyse_run(explorer=True): Bokeh is not installed, so no explorer.html was written. "
                      "Fix: pip install 'p8utils[notebooks]' (or pass explorer=False).", stacklevel=3)
        return None
    return explorer_page.write_explorer(spark, layout, uri, scores=scores, explained=explained,
                                        max_points=max_points, seed=seed)
