"""The parameter checks every module uses: one integer check, one choice check, one fraction check.

Each raises :class:`~p8utils.errors.ParameterError` with a message naming the
parameter, the bad value and the fix, so that a failed papermill run or an
EMR step log says what to change.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from p8utils.errors import ParameterError

__all__ = ["check_choice", "check_fraction", "check_int"]


def check_int(
    name: str,
    value: Any,
    lo: Optional[int] = None,
    hi: Optional[int] = None,
    *,
    example: Optional[int] = None,
    optional: bool = False,
) -> Optional[int]:
    """Check that ``value`` is an integer in ``[lo, hi]`` (bounds optional).

    Parameters
    ----------
    name : str
        Parameter name, for the message.
    value : Any
        The value to check; ``bool`` is refused even though it is an ``int``.
    lo, hi : int, optional
        Inclusive bounds.
    example : int, optional
        A good value, shown in the fix (default ``lo`` or 1).
    optional : bool
        Accept ``None`` (returned unchanged).

    Returns
    -------
    int or None
        ``value`` as a Python ``int``.

    Raises
    ------
    ParameterError
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or \
            (lo is not None and value < lo) or (hi is not None and value > hi):
        if lo is not None and hi is not None:
            want = f"an integer in [{lo}, {hi}]"
        elif lo is not None:
            want = "a positive integer" if lo == 1 else f"an integer >= {lo}"
        elif hi is not None:
            want = f"an integer <= {hi}"
        else:
            want = "an integer"
        good = example if example is not None else (lo if lo is not None else 1)
        extra = " or None" if optional else ""
        raise ParameterError(f"{name}={value!r} is not valid: it must be {want}{extra}. Fix: e.g. {name}={good}.")
    return int(value)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """Check that ``value`` is one of ``choices``.

    Returns
    -------
    Any
        ``value``.

    Raises
    ------
    ParameterError
    """
    try:
        ok = value in tuple(choices)
    except TypeError:  # unhashable value compared with strings
        ok = False
    if not ok:
        raise ParameterError(f"{name}={value!r} is not valid. Fix: use one of {list(choices)}.")
    return value


def check_fraction(name: str, value: Any, *, optional: bool = False, example: float = 0.95) -> Optional[float]:
    """Check that ``value`` is a number in ``(0, 1]``.

    Returns
    -------
    float or None
        ``value`` as a float (None when ``optional`` and ``value`` is None).

    Raises
    ------
    ParameterError
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not 0 < value <= 1:
        raise ParameterError(f"{name}={value!r} is outside (0, 1]. Fix: pass a fraction, e.g. {name}={example}.")
    return float(value)
