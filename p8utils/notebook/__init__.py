"""Presentation helpers for the notebooks: figures, progress, paths, bounded samples, summaries.

Installed with the notebook extras (``pip install 'p8utils[notebooks]'``, or
``make install``): matplotlib draws the figures, tqdm/ipywidgets the progress
bars. Importing this sub-package imports none of them; each module imports
what it needs, and a missing one is reported with the fix.

Modules
-------
paths       Notebook path rules (relative to the project root) and the run folders under ``<project>/runs``.
samples     Bounded data brought to the driver: the PCA scores of a random sample of rows, a few images.
summaries   Tables and text about a run or a PCA fit: counts, a readable preview, summaries.
plots       Figures: explained variance (scree + cumulative), score scatters (2-D, 3-D), image grids.
figures     The one figure writer: PNG bytes, figures and CSV tables to a local path or a Hadoop URI.
progress    Progress of the Spark jobs of a block (status tracker -> tqdm bar / text lines).
settings    The analysis settings (variance targets, classes named, points plotted …), declared once.
analysis    The PCA analysis of a run in one call (notebooks 02 and 03).
explorer    The interactive explorer page (Bokeh): PC scatters with image thumbnails on hover.
"""

from __future__ import annotations

__all__ = ["missing_extra"]


def missing_extra(package: str, needed_by: str) -> ImportError:
    """Build the error raised when a notebook dependency is not installed.

    Parameters
    ----------
    package : str
        The missing distribution, e.g. ``"matplotlib"``.
    needed_by : str
        What needs it, e.g. ``"p8utils.notebook.plots"``.

    Returns
    -------
    ImportError
        Its message names the package and the fix (``pip install 'p8utils[notebooks]'``
        or ``make install``); raise it ``from`` the original error.
    """
    return ImportError(
        f"{needed_by} needs {package}, which is not installed. Fix: pip install 'p8utils[notebooks]' "
        "(or `make install` in the project checkout)."
    )
