"""The settings of the PCA analysis and of the notebooks' figures, declared once.

:class:`AnalysisSettings` holds every threshold and bound of what the
notebooks draw (variance targets, classes named in the legends, points
plotted, images in the grid, the probe, the explorer). Its defaults are the
defaults of :func:`p8utils.notebook.analysis.analyse_run` and of the functions
it calls (:data:`p8utils.notebook.plots.DEFAULT_THRESHOLDS`,
:data:`p8utils.notebook.explorer.MAX_POINTS`,
:func:`p8utils.notebook.samples.collect_scores` …), which take them from here.

The notebooks (01, 02, 03) build one with
``AnalysisSettings.from_mapping(globals())`` after their parameters cell.
papermill needs literals in that cell, so it repeats the defaults and help
texts declared here, as it does :class:`p8utils.config.RunConfig`'s;
``tests/notebook/test_settings.py`` checks that they agree. Help texts are
single lines without ``=`` or ``#`` for the same reason.

This module imports neither matplotlib nor Spark.

Examples
--------
>>> from p8utils.notebook.settings import AnalysisSettings
>>> settings = AnalysisSettings.from_mapping({"top_n": 10, "thresholds": [0.8, 0.9], "other": 1})
>>> settings.top_n, settings.thresholds, settings.max_plot_points
(10, (0.8, 0.9), 5000)
>>> settings.replace(n_show=0)
Traceback (most recent call last):
    ...
p8utils.errors.ParameterError: n_show=0 is not valid: it must be a positive integer. Fix: e.g. n_show=16.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Dict, Mapping, Optional, Tuple

from p8utils.errors import ParameterError
from p8utils.validation import check_fraction, check_int

__all__ = ["DEFAULTS", "AnalysisSettings"]


def _setting(help: str) -> Dict[str, Any]:
    """Field metadata of a setting: its help text (also the comment of the notebooks' parameters cells)."""
    return {"help": help}


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ParameterError(f"{name}={value!r} is not a boolean. Fix: {name}=True or {name}=False.")
    return value


@dataclass(frozen=True)
class AnalysisSettings:
    """Thresholds and bounds of the PCA analysis and of the notebooks' figures, checked when made.

    Attributes
    ----------
    thresholds : tuple of float
        Cumulative explained-variance targets in (0, 1], in the given order.
    top_n : int or None
        Classes named in the scatter legends (the others grey); None: every class.
    max_plot_points : int
        At most this many images are brought to the driver for the scatters.
    show_3d : bool
        Also draw PC1–PC3 in 3-D.
    probe : bool
        Also run the linear probe (:func:`p8utils.probe.probe_curve`).
    seed : int
        Seed of the plotted sample, of the explorer's sample and of the probe's split.
    n_show : int
        Images in the notebooks' sample grid.
    explorer_points : int
        At most this many points (and thumbnails read) in the explorer page.
    extreme_images : int
        Images per end of each component in the ``component_extremes`` figure; 0: no such figure.
    probe_max_rows : int or None
        The probe uses at most about this many rows, the same number per class; None: every row.

    Raises
    ------
    ParameterError
        A setting is wrong; the message names it, the bad value and the fix.
    """

    thresholds: Tuple[float, ...] = field(default=(0.90, 0.95, 0.99), metadata=_setting(
        "cumulative explained-variance targets marked on the plot, fractions in (0, 1]"))
    top_n: Optional[int] = field(default=30, metadata=_setting(
        "classes named in the scatter legends (the others drawn in grey), or None for every class"))
    max_plot_points: int = field(default=5000, metadata=_setting(
        "at most this many images in the scatter plots (random sample beyond that)"))
    show_3d: bool = field(default=True, metadata=_setting("also draw a 3-D view of PC1, PC2, PC3"))
    probe: bool = field(default=False, metadata=_setting(
        "also measure the held-out accuracy of a linear probe (logistic regression) at a grid of k, to choose k "
        "by what it keeps for recognition"))
    seed: int = field(default=0, metadata=_setting(
        "seed of the random sample of plotted images (and of the probe's split)"))
    n_show: int = field(default=16, metadata=_setting("number of images shown in the sample grid"))
    explorer_points: int = field(default=2000, metadata=_setting(
        "at most this many points in the explorer page (a random sample beyond that): the page stays about 5 MB"))
    extreme_images: int = field(default=5, metadata=_setting(
        "images at each end of PC1, PC2, PC3 in the component extremes figure (0: no such figure)"))
    probe_max_rows: Optional[int] = field(default=20_000, metadata=_setting(
        "rows the linear probe uses at most, the same number per class, so that it stays cheap"))

    def __post_init__(self) -> None:
        given = self.thresholds
        listed = (given,) if isinstance(given, Real) else tuple(given)
        object.__setattr__(self, "thresholds", tuple(check_fraction("thresholds", t) for t in listed))
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name, lo, optional in (("top_n", 0, True), ("max_plot_points", 1, False), ("seed", None, False),
                                   ("n_show", 1, False), ("explorer_points", 1, False), ("extreme_images", 0, False),
                                   ("probe_max_rows", 2, True)):
            object.__setattr__(self, name, check_int(name, getattr(self, name), lo, optional=optional,
                                                     example=defaults[name]))
        _check_bool("show_3d", self.show_3d)
        _check_bool("probe", self.probe)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> AnalysisSettings:
        """Build the settings from the entries of ``values`` that are setting names (e.g. a notebook's ``globals()``).

        Other keys are ignored; a setting missing from ``values`` takes its default.
        """
        return cls(**{name: values[name] for name in cls.names() if name in values})

    def replace(self, **changes: Any) -> AnalysisSettings:
        """Return a copy with ``changes`` applied (checked again).

        Raises
        ------
        ParameterError
            A name that is not a setting, or a bad value.
        """
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise ParameterError(f"{unknown} are not analysis settings. Fix: use some of {list(self.names())}.")
        return dataclasses.replace(self, **changes)

    @classmethod
    def names(cls) -> Tuple[str, ...]:
        """Return the setting names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def help_texts(cls) -> Dict[str, str]:
        """Return each setting's help text (one line, the comment of the notebooks' parameters cells)."""
        return {f.name: f.metadata["help"] for f in dataclasses.fields(cls)}


#: The default settings (what :func:`p8utils.notebook.analysis.analyse_run` uses when given none).
DEFAULTS = AnalysisSettings()
