"""The row check: the staged tables against the listing, before the commit (the manifest's counts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from p8utils.errors import RunCheckError

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

__all__ = ["DRIVER_CHECK_ROWS", "RowCheck", "check_pca_rows", "check_rows", "check_rows_arrow"]

#: Runs of at most this many listed files are checked on the driver (:func:`check_rows_arrow`, no Spark job).
DRIVER_CHECK_ROWS = 200_000

_UNCHANGED = ("The run stopped before its commit: output={root!r} is unchanged. Fix: run again; if it happens "
              "again, report it with this message.")


@dataclass(frozen=True)
class RowCheck:
    """The staged features against the listing: the manifest's counts (one attribute each)."""

    #: Files in the listing.
    listed: int
    #: Rows staged (equal to ``listed`` once the check passed).
    rows: int
    #: Rows with features.
    ok: int
    #: Rows with an error, by reason (sorted by reason).
    failed_by_reason: Dict[str, int] = field(default_factory=dict)
    #: Rows of each part file of the table (by file name).
    files: Dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        """Rows with an error."""
        return sum(self.failed_by_reason.values())


def check_rows(staged: DataFrame, listing: DataFrame, n_listed: int, root: str) -> RowCheck:
    """Check that ``staged`` holds exactly one row per listed file.

    Parameters
    ----------
    staged : pyspark.sql.DataFrame
        The features the run will commit (``path``, ``error``; read from parquet).
    listing : pyspark.sql.DataFrame
        The run's listing (``path``).
    n_listed : int
        Rows of ``listing``.
    root : str
        The run folder (named in the error).

    Returns
    -------
    RowCheck
        With the rows of each part file (the manifest's ``files``).

    Raises
    ------
    RunCheckError
        Rows missing, unexpected or duplicated; the message names a few.
    """
    from pyspark.sql import functions as F

    per_path = staged.groupBy("path").agg(F.count(F.lit(1)).alias("_n"))
    joined = listing.select("path", F.lit(1).alias("_listed")).join(per_path, "path", "full_outer")
    problems = joined.where(F.col("_listed").isNull() | F.col("_n").isNull() | (F.col("_n") > 1))
    bad = problems.select(
        "path",
        F.when(F.col("_n").isNull(), "no row").when(F.col("_listed").isNull(), "not listed")
        .otherwise(F.concat(F.col("_n").cast("string"), F.lit(" rows"))).alias("what"),
    ).limit(5).collect()
    groups = [(r["file"], r["error"], int(r["count"])) for r in
              staged.groupBy(F.col("_metadata.file_name").alias("file"), "error").count().collect()]
    return _verdict(groups, [(r["path"], r["what"]) for r in bad], lambda: problems.count(), n_listed, root)


def check_rows_arrow(staged: Any, listed: Any, n_listed: int, root: str) -> RowCheck:
    """:func:`check_rows` on the driver, for tables read whole with ``pyarrow`` (small runs: no Spark job).

    Parameters
    ----------
    staged : pyarrow.Table
        ``path``, ``error`` and ``file`` (the part file's name) of every staged row.
    listed : pyarrow.Array or pyarrow.ChunkedArray
        The listing's ``path`` column (one entry per listed file).
    n_listed, root
        As for :func:`check_rows`.

    Returns
    -------
    RowCheck

    Raises
    ------
    RunCheckError
        As :func:`check_rows`, on the same rows.
    """
    from collections import Counter

    per_path = Counter(staged.column("path").to_pylist())
    listed_paths = listed.to_pylist()
    listed_set = set(listed_paths)
    problems = [(p, "no row") for p in listed_paths if p not in per_path]
    problems += [(p, "not listed") for p in per_path if p not in listed_set]
    problems += [(p, f"{n} rows") for p, n in per_path.items() if n > 1 and p in listed_set]
    groups = Counter(zip(staged.column("file").to_pylist(), staged.column("error").to_pylist()))
    return _verdict([(f, e, n) for (f, e), n in groups.items()], sorted(problems)[:5], lambda: len(problems),
                    n_listed, root)


def _verdict(groups: List[Tuple[str, Optional[str], int]], bad: List[Tuple[str, str]], n_bad: Callable[[], int],
             n_listed: int, root: str) -> RowCheck:
    """Return the check from the rows per (file, error) and a few differing paths; raise if any differ."""
    by_error: Dict[Optional[str], int] = {}
    files: Dict[str, int] = {}
    for file, error, count in groups:
        by_error[error] = by_error.get(error, 0) + count
        files[file] = files.get(file, 0) + count
    ok = by_error.pop(None, 0)
    rows = ok + sum(by_error.values())
    if bad or rows != n_listed:
        shown = "; ".join(f"{path}: {what}" for path, what in bad)
        raise RunCheckError(
            f"the staged features hold {rows} rows for {n_listed} listed files ({n_bad() if bad else 0} paths "
            f"differ, e.g. {shown or 'none shown'}). " + _UNCHANGED.format(root=root)
        )
    return RowCheck(n_listed, rows, ok, dict(sorted(by_error.items())), dict(sorted(files.items())))  # type: ignore[arg-type]


def rows_per_file(frame: DataFrame) -> Dict[str, int]:
    """Rows of each parquet file of ``frame`` (read from parquet); files without rows are left out."""
    from pyspark.sql import functions as F

    return {r["file"]: int(r["count"]) for r in
            frame.groupBy(F.col("_metadata.file_name").alias("file")).count().collect()}


def check_pca_rows(rows: Dict[str, int], expected: int, root: str) -> None:
    """Check that the PCA scores (``rows`` per part file) hold one row per featurized file.

    Raises
    ------
    RunCheckError
        Another number of rows than ``expected``.
    """
    if sum(rows.values()) != expected:
        raise RunCheckError(f"the PCA scores hold {sum(rows.values())} rows for {expected} featurized files. "
                            + _UNCHANGED.format(root=root))
