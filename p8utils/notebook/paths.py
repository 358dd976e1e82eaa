"""Notebook path rules: relative paths are taken from the project root; run folders live under ``runs/``.

A notebook opened in JupyterLab (whose kernel starts in ``notebooks/``) and the
same notebook run by papermill from the project root must read and write the
same folders, so a relative local path in a notebook parameter is resolved
against :func:`project_root`, never against the current directory. URIs
(``s3://…``, ``hdfs://…``, ``file:/…``) are left as they are.

The layout of a run folder and how runs are found belong to
:mod:`p8utils.runs`; the functions here only add the notebook defaults:
``<project>/runs`` as the parent of new runs, and "empty = the newest complete
run there".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

from p8utils import runs, storage
from p8utils.errors import ParameterError

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

__all__ = ["RUNS", "new_run", "project_root", "resolve_path", "resolve_run", "runs_dir"]

#: Folder of the local runs, relative to the project root.
RUNS = "runs"


def _is_project(folder: Path) -> bool:
    """Tell whether ``folder`` is the project checkout (``pyproject.toml`` and ``p8utils/``)."""
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
    package_parent = Path(__file__).resolve().parents[2]
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
        p = (Path(root) if root is not None else project_root()) / path
    return str(p.absolute())


def runs_dir(root: Optional[Union[str, os.PathLike]] = None) -> str:
    """Return the folder of the local runs, ``<project>/runs``.

    Parameters
    ----------
    root : str or os.PathLike, optional
        Project root (default: :func:`project_root`).

    Returns
    -------
    str
        Absolute path (it may not exist yet).
    """
    return resolve_path(RUNS, root)


def new_run(root: Optional[Union[str, os.PathLike]] = None) -> str:
    """Name a new, not yet existing run folder ``<project>/runs/<YYYYmmdd-HHMMSS>``.

    The name comes from :func:`p8utils.runs.new_run_dir` in :func:`runs_dir`
    (``root`` as there): absolute, ``-2``, ``-3`` … appended if the name is
    taken. The folder is not created.

    Returns
    -------
    str
    """
    return runs.new_run_dir(runs_dir(root))


def resolve_run(
    path: str,
    spark: Optional[SparkSession] = None,
    *,
    root: Optional[Union[str, os.PathLike]] = None,
) -> runs.RunLayout:
    """Resolve a notebook's run parameter: a run folder, its ``features/``, or empty for the newest run.

    What :func:`resolve_path` is to a path, this is to a run: the notebook
    rules (relative to the project root; empty = the newest complete run under
    ``<project>/runs``) applied, then :func:`p8utils.runs.find_run`, which
    locates the run from an explicit folder or URI.

    Parameters
    ----------
    path : str
        A run folder holding ``features/`` (written by notebook 01, 02 or the
        CLI), the ``features/`` dataset itself (relative paths are taken from
        the project root), or ``""`` for the newest complete run under
        ``<project>/runs`` (:func:`p8utils.runs.latest_run`).
    spark : pyspark.sql.SparkSession, optional
        Needed for non-local URIs.
    root : str or os.PathLike, optional
        Project root (default: :func:`project_root`).

    Returns
    -------
    p8utils.runs.RunLayout
        The run folder's layout (``.features``, ``.pca``, ``.analysis`` …),
        from :func:`p8utils.runs.find_run`.

    Raises
    ------
    ParameterError
        No complete run under ``runs/`` (empty ``path``), or no features
        dataset at ``path``.
    """
    folder = runs.latest_run(runs_dir(root)) if not path else resolve_path(path, root)
    return runs.find_run(folder, spark)
