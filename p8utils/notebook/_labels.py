"""Display text shared by the PNG figures (:mod:`.plots`) and the explorer page (:mod:`.explorer`).

Private to :mod:`p8utils.notebook`: class names, percentages and the ``PCn (x % var.)`` axis labels, so the
figures and the page name things the same way.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["axis_label", "class_name", "pct"]


def class_name(label: Any) -> str:
    """Return a class label as display text; ``None`` (or NaN) is ``"(no label)"``.

    Examples
    --------
    >>> class_name("Apple 6"), class_name(None), class_name(float("nan"))
    ('Apple 6', '(no label)', '(no label)')
    """
    if label is None or (isinstance(label, float) and math.isnan(label)):
        return "(no label)"
    return str(label)


def pct(fraction: float, decimals: int = 1, *, trim: bool = True) -> str:
    """Format a fraction as a percentage with ``decimals`` decimals.

    Parameters
    ----------
    fraction : float
        E.g. ``0.234``.
    decimals : int
        Decimals kept.
    trim : bool
        Drop trailing zeros (and the point), as the PNG figures do; the
        explorer page keeps them.

    Returns
    -------
    str

    Examples
    --------
    >>> pct(0.9), pct(0.995), pct(0.99949, 2)
    ('90 %', '99.5 %', '99.95 %')
    >>> pct(0.4, trim=False)
    '40.0 %'
    """
    text = f"{fraction * 100:.{decimals}f}"
    if trim:
        text = text.rstrip("0").rstrip(".")
    return f"{text} %"


def axis_label(dim: int, explained: Optional[np.ndarray], *, trim: bool = True) -> str:
    """Label the axis of the 0-based component ``dim``, with its share of the variance when known.

    Parameters
    ----------
    dim : int
        0-based component.
    explained : numpy.ndarray or None
        Explained-variance ratio of each component.
    trim : bool
        As for :func:`pct`.

    Returns
    -------
    str

    Examples
    --------
    >>> import numpy as np
    >>> axis_label(0, np.array([0.234, 0.08])), axis_label(1, np.array([0.234, 0.08]), trim=False)
    ('PC1 (23.4 % var.)', 'PC2 (8.0 % var.)')
    >>> axis_label(2, np.array([0.234, 0.08])), axis_label(0, None)
    ('PC3', 'PC1')
    """
    name = f"PC{dim + 1}"
    if explained is not None and dim < explained.size:
        name += f" ({pct(float(explained[dim]), trim=trim)} var.)"
    return name
