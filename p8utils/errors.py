"""Exceptions raised by p8utils.

Every message names the parameter, the bad value and the fix, so that a user
reading a failed papermill run or an EMR step log knows what to change.
"""

from __future__ import annotations

__all__ = [
    "OutputBusyError",
    "OutputExistsError",
    "P8UtilsError",
    "ParameterError",
    "RunCheckError",
    "WeightsUnavailableError",
]


class P8UtilsError(Exception):
    """Base class of every error raised on purpose by p8utils."""


class ParameterError(P8UtilsError, ValueError):
    """A parameter is wrong; raised before any Spark job starts."""


class WeightsUnavailableError(P8UtilsError, RuntimeError):
    """Model weights could not be obtained (no network, missing file, bad file)."""


class OutputExistsError(ParameterError):
    """The output location already holds a run and the mode forbids replacing it."""


class OutputBusyError(P8UtilsError):
    """Another run holds the output folder's lease; nothing was written."""


class RunCheckError(P8UtilsError, RuntimeError):
    """A run's staged output broke an invariant (rows != listed files); the previous output is untouched."""
