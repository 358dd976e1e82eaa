"""The run protocol: one module owns the output folder.

Layout of a run folder (local path or Hadoop URI, ``s3://`` on EMR)::

    <output>/features/        parquet: one row per listed file (path, label, features, error, length, modificationTime)
    <output>/pca/             parquet: path, label, pca_features (array<double>[k]); _model.npz: the fit
                              and _moments.npz: what it was fitted from (for the next incremental run)
    <output>/manifest.json    written last: its presence marks a complete run
    <output>/figures/         PNGs of the notebooks (01 / 02)
    <output>/analysis/        notebook 03: figures/, variance_table.csv
    <output>/notebooks/       executed notebooks (scripts/run_notebooks.py)
    <output>/_lease.json      while a run holds the folder (see below)
    <output>/_staging/<run>/  what a run writes before its commit
    <output>/_trash/<run>/    the previous output during a commit

Spark skips names starting with ``_`` when it reads a dataset, and they are
never part of a complete run.

The protocol (:func:`open_run`)
-------------------------------
1. **Lease.** Before it writes anything a run creates ``_lease.json``
   exclusively (run id, host, pid, start time; refreshed every
   :data:`LEASE_REFRESH_S` seconds by a thread). If the file exists and its
   holder lives, the run stops at once with :class:`~p8utils.errors.OutputBusyError`
   naming the holder and the fix; no Spark job has run. A holder is *gone*
   when it ran on this host and its process no longer exists, or when its
   lease was not refreshed for :data:`LEASE_EXPIRY_S` seconds (a run on
   another host, e.g. a terminated EMR cluster). Only then is the lease taken
   over and the leftovers of that run (and of runs older than it) removed;
   a commit it left half done is rolled back to the previous output.
2. **Staging.** Everything is written below ``_staging/<run id>/``.
3. **Check.** Before the commit the staged features must hold exactly one
   row per listed file (same count, same distinct paths: :meth:`ActiveRun.check_rows`);
   otherwise :class:`~p8utils.errors.RunCheckError` names the difference and
   the previous output stays as it was. The manifest's counts are this check's.
4. **Commit.** The lease is verified, a journal of the moves is written to
   ``_trash/<run id>/``, the previous ``manifest.json``, ``features/``,
   ``pca/`` move there, the staged ones move in, the new manifest is written
   last, the trash is deleted, the lease released. An incremental run moves
   files instead of folders (:meth:`ActiveRun.merge_into_committed`): the
   committed part files it replaces go to the trash, its new ones join the
   others. On a local filesystem or HDFS each move is a rename; on S3 a rename
   copies (not atomic), but the manifest is still written last.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

from p8utils import __version__, storage
from p8utils.errors import OutputBusyError, OutputExistsError, ParameterError, RunCheckError

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

    from p8utils.config import RunConfig
    from p8utils.models import WeightsBundle
    from p8utils.pca import PCAResult

__all__ = [
    "LEASE_EXPIRY_S",
    "LEASE_REFRESH_S",
    "ActiveRun",
    "LeaseHolder",
    "RowCheck",
    "RunLayout",
    "check_output_location",
    "find_run",
    "latest_run",
    "layout",
    "new_run_dir",
    "build_manifest",
    "open_run",
    "read_manifest",
]

log = logging.getLogger(__name__)

#: Seconds between two refreshes of a live run's lease.
LEASE_REFRESH_S = 30.0

#: A lease not refreshed for this many seconds belongs to a run that is gone
#: (used for holders on other hosts; on the same host the process is checked).
LEASE_EXPIRY_S = 600.0

MANIFEST = "manifest.json"
LEASE = "_lease.json"
STAGING = "_staging"
TRASH = "_trash"


def _place(*parts: str, doc: str) -> property:
    """Make a :class:`RunLayout` property: the path ``<root>/<parts...>``."""
    return property(lambda layout: layout._sub(*parts), doc=doc)


@dataclass(frozen=True)
class RunLayout:
    """Where everything of one run folder is (nothing is created).

    Attributes
    ----------
    root : str
        The run folder (local absolute path or URI).
    """

    root: str

    def _sub(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    features = _place("features", doc="The features parquet dataset.")
    pca = _place("pca", doc="The PCA scores parquet dataset.")
    manifest = _place(MANIFEST, doc="The manifest, written last.")
    pca_model = _place("pca", "_model.npz", doc="The PCA fit (mean, components, explained variance; .npz).")
    pca_moments = _place("pca", "_moments.npz", doc="The moments the fit was made from (:class:`p8utils.pca.Moments`).")
    figures = _place("figures", doc="PNG figures of notebooks 01 / 02.")
    analysis = _place("analysis", doc="Notebook 03's folder (``figures/``, tables).")
    notebooks = _place("notebooks", doc="Executed notebooks.")
    lease = _place(LEASE, doc="The lock file of the run that holds the folder.")
    staging_root = _place(STAGING, doc="Parent of every run's staging folder.")
    trash_root = _place(TRASH, doc="Parent of every run's trash folder.")
    journal = _place("journal.json", doc="In a trash folder: the moves of a commit (for a run finding it half done).")

    def staging(self, run_id: str) -> RunLayout:
        """Layout of ``run_id``'s staging folder (same sub-folders as a run)."""
        return RunLayout(self._sub(STAGING, run_id))

    def trash(self, run_id: str) -> RunLayout:
        """Layout of ``run_id``'s trash folder (the previous output during its commit)."""
        return RunLayout(self._sub(TRASH, run_id))


def layout(output: str) -> RunLayout:
    """Return the :class:`RunLayout` of the run folder ``output``.

    Parameters
    ----------
    output : str
        Local path (made absolute) or URI.
    """
    if storage.is_local(output) and not str(output).startswith("file:"):
        return RunLayout(str(storage.local_path(output)))
    return RunLayout(str(output).rstrip("/"))


def new_run_dir(base: Union[str, os.PathLike]) -> str:
    """Name a new, not yet existing local run folder ``<base>/<YYYYmmdd-HHMMSS>``.

    Parameters
    ----------
    base : str or os.PathLike
        Parent folder (absolute, or relative to the current directory).

    Returns
    -------
    str
        Absolute path; ``-2``, ``-3`` … is appended if the name is taken.
        The folder is not created.
    """
    parent = storage.local_path(str(base))
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, i = parent / stamp, 1
    while candidate.exists():
        i += 1
        candidate = parent / f"{stamp}-{i}"
    return str(candidate)


def latest_run(base: Union[str, os.PathLike]) -> str:
    """Return the most recent complete local run below ``base``.

    Parameters
    ----------
    base : str or os.PathLike
        Folder holding run folders.

    Returns
    -------
    str
        Absolute path of the sub-folder whose ``manifest.json`` (the mark of a
        complete run) is the newest.

    Raises
    ------
    ParameterError
        No complete run there.
    """
    folder = Path(storage.local_path(str(base)))
    manifests = sorted(folder.glob(f"*/{MANIFEST}"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    if not manifests:
        raise ParameterError(
            f"no complete run (a folder with {MANIFEST}) in {str(folder)!r}. Fix: run "
            "notebooks/01_local_sample.ipynb or `python -m p8utils run` first, or pass the run folder."
        )
    return str(manifests[-1].parent)


def find_run(path: str, spark: Optional[SparkSession] = None) -> RunLayout:
    """Locate a run folder from what a user may pass: the run folder or its ``features/`` dataset.

    Parameters
    ----------
    path : str
        A run folder holding ``features/`` (written by notebook 01, 02 or the
        CLI), or the ``features/`` dataset itself (local path or URI).
    spark : pyspark.sql.SparkSession, optional
        Needed for non-local URIs.

    Returns
    -------
    RunLayout
        The run folder's layout (``.features`` is the dataset found).

    Raises
    ------
    ParameterError
        Nothing there.
    """
    run = layout(path)
    if storage.exists(run.features, spark):
        return run
    if storage.exists(run.root, spark) and run.root.rstrip("/").rsplit("/", 1)[-1] == "features":
        return layout(storage.parent(run.root))
    raise ParameterError(
        f"{path!r} holds no features/ dataset. Fix: pass a run folder written by notebook 01/02 or "
        "`python -m p8utils run` (it holds features/), or that features/ folder itself."
    )


# --------------------------------------------------------------------------- paths


def check_output_location(input: str, output: str) -> None:
    """Refuse an output folder inside the input folder (it would be read as input next time).

    Raises
    ------
    ParameterError
    """
    if storage.is_local(input) and storage.is_local(output):
        inp, out = storage.local_path(input), storage.local_path(output)
        if out == inp or inp in out.parents:
            raise ParameterError(
                f"output={output!r} is inside input={input!r}: outputs would be read as input next time. "
                "Fix: write the run somewhere else, e.g. runs/<name>."
            )


def read_manifest(output: str, spark: Optional[SparkSession] = None) -> Dict[str, Any]:
    """Read ``<output>/manifest.json``.

    Raises
    ------
    ParameterError
        No manifest: the run is missing or did not complete.
    """
    path = layout(output).manifest
    if not storage.exists(path, spark):
        raise ParameterError(
            f"no {MANIFEST} in output={output!r}: the run is missing or did not complete. "
            "Fix: run the pipeline (python -m p8utils run) into that folder first."
        )
    return json.loads(storage.read_bytes(path, spark).decode("utf-8"))


# --------------------------------------------------------------------------- lease


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _process_start(pid: int) -> Optional[int]:
    """Start time of process ``pid`` in clock ticks since boot (Linux), to tell it from a later one reusing the pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _process_alive(pid: int, start: Optional[int]) -> bool:
    """Tell whether process ``pid`` (started at ``start``, if known) still runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    if start is not None:
        now_start = _process_start(pid)
        if now_start is not None and now_start != start:
            return False  # the pid was reused by another process
    return True


@dataclass(frozen=True)
class LeaseHolder:
    """What ``_lease.json`` says about the run holding an output folder.

    Attributes
    ----------
    run_id : str
        ``<UTC start YYYYmmddTHHMMSS>-<8 hex>``: sorts by start time.
    host : str
        Host name of the driver.
    pid : int
        Process id of the driver (the Python process).
    pid_start : int or None
        The process's start time (clock ticks since boot, Linux), which tells
        it from a later process reusing the pid.
    started_at, refreshed_at : str
        ISO-8601 UTC times.
    expires_after_s : float
        Seconds without refresh after which the lease counts as abandoned.
    command : str
        The holder's command line, to recognise it.
    """

    run_id: str
    host: str
    pid: int
    pid_start: Optional[int]
    started_at: str
    refreshed_at: str
    expires_after_s: float = LEASE_EXPIRY_S
    command: str = ""

    @classmethod
    def for_this_process(cls, run_id: str) -> LeaseHolder:
        """Describe the lease this process writes for ``run_id``."""
        now = _now().isoformat()
        return cls(run_id, socket.gethostname(), os.getpid(), _process_start(os.getpid()), now, now,
                   LEASE_EXPIRY_S, " ".join(sys.argv)[:500])

    def refreshed(self) -> LeaseHolder:
        """Return the same lease with ``refreshed_at`` set to now."""
        return LeaseHolder(**{**asdict(self), "refreshed_at": _now().isoformat()})

    def to_bytes(self) -> bytes:
        """JSON encoding of the lease file."""
        return json.dumps(asdict(self), indent=2).encode("utf-8")

    @classmethod
    def read(cls, uri: str, spark: Optional[SparkSession] = None) -> Optional[LeaseHolder]:
        """Read a lease file; None when it does not exist (a lease that is not valid JSON is an error)."""
        try:
            data = storage.read_bytes(uri, spark)
        except FileNotFoundError:
            return None
        except Exception:  # noqa: BLE001 - Hadoop FileNotFoundException through py4j
            if not storage.exists(uri, spark):
                return None
            raise
        try:
            fields = json.loads(data.decode("utf-8"))
            return cls(**{k: fields[k] for k in asdict(cls("", "", 0, None, "", "")) if k in fields})
        except (ValueError, TypeError, KeyError) as exc:
            raise OutputBusyError(
                f"the lease file {uri} is not valid ({exc}). Fix: if no run is writing to this folder, delete it."
            ) from None

    def gone_reason(self, now: Optional[_dt.datetime] = None) -> Optional[str]:
        """Why the holder is provably gone, or None while it may be alive."""
        now = now or _now()
        if self.host == socket.gethostname() and not _process_alive(self.pid, self.pid_start):
            return f"process {self.pid} on {self.host} has ended"
        try:
            age = (now - _dt.datetime.fromisoformat(self.refreshed_at)).total_seconds()
        except ValueError:
            age = float("inf")
        if age > self.expires_after_s:
            return f"its lease was last refreshed {age:.0f} s ago (expiry {self.expires_after_s:.0f} s)"
        return None

    def describe(self) -> str:
        """One line naming the holder."""
        return (f"run {self.run_id} (host {self.host}, pid {self.pid}, started {self.started_at}, "
                f"lease refreshed {self.refreshed_at}; command: {self.command or '?'})")


def _busy(lay: RunLayout, holder: LeaseHolder) -> OutputBusyError:
    return OutputBusyError(
        f"output={lay.root!r} is in use by {holder.describe()}. Nothing was written. Fix: wait until that run "
        f"ends (its lease is refreshed every {LEASE_REFRESH_S:.0f} s and counts as abandoned "
        f"{holder.expires_after_s:.0f} s after the last refresh), write to another output, or, only if you "
        f"are sure that run is gone, delete {lay.lease}."
    )


def _take_lease(lay: RunLayout, mine: LeaseHolder, spark: Optional[SparkSession]) -> Optional[LeaseHolder]:
    """Create the lease of ``mine``; return the gone holder it replaced, if any.

    Raises
    ------
    OutputBusyError
        A live run holds the folder, or another run won a race for it.
    """
    replaced: Optional[LeaseHolder] = None
    for _ in range(5):
        if storage.create_exclusive(lay.lease, mine.to_bytes(), spark):
            if not storage.is_local(lay.lease):
                time.sleep(1.0)  # S3: both racers may "create"; the last writer wins, the other backs off
            now = LeaseHolder.read(lay.lease, spark)
            if now is None or now.run_id != mine.run_id:
                raise _busy(lay, now) if now is not None else OutputBusyError(
                    f"output={lay.root!r}: another run raced for its lease. Fix: run again.")
            return replaced
        holder = LeaseHolder.read(lay.lease, spark)
        if holder is None:
            continue  # released meanwhile: try again
        reason = holder.gone_reason()
        if reason is None:
            raise _busy(lay, holder)
        log.warning("taking over the lease of %s: %s", holder.describe(), reason)
        again = LeaseHolder.read(lay.lease, spark)
        if again is not None and again.run_id == holder.run_id:
            storage.delete(lay.lease, spark)
        replaced = holder
    raise OutputBusyError(f"output={lay.root!r}: could not take its lease (other runs keep racing). Fix: run again.")


class _Refresher(threading.Thread):
    """Rewrites the lease every ``LEASE_REFRESH_S`` seconds; notices when it was lost."""

    def __init__(self, lay: RunLayout, mine: LeaseHolder, spark: Optional[SparkSession]) -> None:
        super().__init__(name="p8utils-lease", daemon=True)
        self._lay, self._mine, self._spark = lay, mine, spark
        self._stop_event = threading.Event()
        self.lost: Optional[str] = None

    def run(self) -> None:
        while not self._stop_event.wait(LEASE_REFRESH_S):
            try:
                holder = LeaseHolder.read(self._lay.lease, self._spark)
                if holder is None or holder.run_id != self._mine.run_id:
                    self.lost = "the lease file is gone" if holder is None else f"now held by {holder.describe()}"
                    return
                storage.write_bytes(self._lay.lease, holder.refreshed().to_bytes(), self._spark)
            except Exception as exc:  # noqa: BLE001 - a transient I/O error: try again next time
                log.warning("could not refresh the lease %s: %s", self._lay.lease, exc)

    def stop(self) -> None:
        self._stop_event.set()


# --------------------------------------------------------------------------- the run


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

    @property
    def failed(self) -> int:
        """Rows with an error."""
        return sum(self.failed_by_reason.values())


def _run_id() -> str:
    return _now().strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


@dataclass
class ActiveRun:
    """A run that holds its output folder's lease (made by :func:`open_run`).

    Attributes
    ----------
    layout : RunLayout
        The output folder.
    run_id : str
        This run's id (names its staging and trash folders).
    staged : RunLayout
        The staging folder (``features``, ``pca``, ``listing`` …).
    spark : SparkSession or None
        Needed for non-local outputs.
    started : datetime.datetime
        UTC start time.
    replaced : LeaseHolder or None
        The gone run whose lease was taken over.
    """

    layout: RunLayout
    run_id: str
    staged: RunLayout
    spark: Optional[SparkSession]
    started: _dt.datetime
    replaced: Optional[LeaseHolder] = None
    _refresher: Optional[_Refresher] = field(default=None, repr=False)
    _mine: Optional[LeaseHolder] = field(default=None, repr=False)
    _drop: Optional[Tuple[str, ...]] = field(default=None, repr=False)

    @property
    def listing_path(self) -> str:
        """Where the run keeps its listing (parquet)."""
        return storage.join(self.staged.root, "listing")

    def write_features(self, table: DataFrame, *, append: bool = False) -> DataFrame:
        """Write ``table`` as the staged features (or add it to them); return the features the run will commit.

        Returns
        -------
        pyspark.sql.DataFrame
            The staged rows as written (read back), plus, after
            :meth:`merge_into_committed`, the committed rows that stay.
        """
        writer = table.write.mode("append") if append else table.write
        writer.parquet(storage.spark_path(self.staged.features))
        return self.staged_features(table.sparkSession)

    def merge_into_committed(self, drop: Iterable[str]) -> None:
        """Commit the staged features *next to* the committed ones instead of replacing them.

        For incremental runs: the committed part files named in ``drop``
        (those holding rows of changed, deleted or unread files) leave at the
        commit, every other committed file stays as it is, and the staged part
        files join them. The cost of a run is then that of its new rows.

        Parameters
        ----------
        drop : iterable of str
            File names (``part-…``) in ``<output>/features/``.
        """
        self._drop = tuple(sorted(set(drop)))

    def staged_features(self, spark: SparkSession) -> DataFrame:
        """Read the features the run will commit (staged rows, and the committed rows that stay)."""
        staged = self.staged_only(spark)
        if self._drop is None:
            return staged
        return self._committed_parts(spark, leaving=False).select(*staged.columns).unionByName(staged)

    def leaving_features(self, spark: SparkSession) -> Optional[DataFrame]:
        """Read the committed rows that leave at the commit: those of the part files :meth:`merge_into_committed` drops.

        Returns
        -------
        pyspark.sql.DataFrame or None
            None unless the run merges into the committed table (then the
            committed table is ``previous - leaving + staged``).
        """
        if self._drop is None or not storage.exists(self.layout.features, spark):
            return None
        return self._committed_parts(spark, leaving=True)

    def _committed_parts(self, spark: SparkSession, *, leaving: bool) -> DataFrame:
        """Read the committed rows of the part files that leave at the commit (or of those that stay)."""
        from pyspark.sql import functions as F

        dropped = F.col("_metadata.file_name").isin(*self._drop) if self._drop else F.lit(False)
        return spark.read.parquet(storage.spark_path(self.layout.features)).where(dropped if leaving else ~dropped)

    def staged_only(self, spark: SparkSession) -> DataFrame:
        """Read the rows this run staged (without the committed rows that stay)."""
        return spark.read.parquet(storage.spark_path(self.staged.features))

    def staged_pca(self, spark: SparkSession) -> DataFrame:
        """Read the staged PCA scores."""
        return spark.read.parquet(storage.spark_path(self.staged.pca))

    def write_pca(self, scores: DataFrame, model: bytes, moments: Optional[bytes] = None) -> None:
        """Write the staged PCA scores, the fit that made them and, if given, its moments (committed together)."""
        scores.write.parquet(storage.spark_path(self.staged.pca))
        storage.write_bytes(self.staged.pca_model, model, self.spark)
        if moments is not None:
            storage.write_bytes(self.staged.pca_moments, moments, self.spark)

    def check_rows(self, staged: DataFrame, listing: DataFrame, n_listed: int) -> RowCheck:
        """Check that ``staged`` holds exactly one row per listed file.

        Parameters
        ----------
        staged : pyspark.sql.DataFrame
            The staged features (``path``, ``error``).
        listing : pyspark.sql.DataFrame
            The run's listing (``path``).
        n_listed : int
            Rows of ``listing``.

        Returns
        -------
        RowCheck

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
        by_error = {r["error"]: int(r["count"]) for r in staged.groupBy("error").count().collect()}
        ok = by_error.pop(None, 0)
        rows = ok + sum(by_error.values())
        if bad or rows != n_listed:
            n_bad = problems.count() if bad else 0
            shown = "; ".join(f"{r['path']}: {r['what']}" for r in bad)
            raise RunCheckError(
                f"the staged features hold {rows} rows for {n_listed} listed files ({n_bad} paths differ, e.g. "
                f"{shown or 'none shown'}). The run stopped before its commit: output={self.layout.root!r} "
                "is unchanged. Fix: run again; if it happens again, report it with this message."
            )
        return RowCheck(n_listed, rows, ok, dict(sorted(by_error.items())))

    def commit(self, manifest: Mapping[str, Any]) -> None:
        """Swap the staged ``features/`` and ``pca/`` in, then write the manifest last.

        Raises
        ------
        OutputBusyError
            The lease was lost meanwhile (another run took the folder over):
            nothing is committed.
        """
        self._verify_lease()
        sp, lay, trash = self.spark, self.layout, self.layout.trash(self.run_id)
        merge = self._drop is not None and storage.exists(lay.features, sp)
        added = _part_files(self.staged.features, sp) if merge else []
        # what the commit is about to do, for a run that finds it half done (see _recover)
        storage.write_bytes(trash.journal, json.dumps({"merge": merge, "added": added,
                                                      "dropped": list(self._drop or ())}).encode("utf-8"), sp)
        if storage.exists(lay.manifest, sp):
            storage.rename(lay.manifest, trash.manifest, sp)
        if merge:
            _move_parts(lay.features, trash.features, self._drop or (), sp)
            _move_parts(self.staged.features, lay.features, added, sp)
        names = ("pca",) if merge else ("features", "pca")
        for name in names:
            final, staged = getattr(lay, name), getattr(self.staged, name)
            if not storage.exists(staged, sp):
                continue  # not staged: the committed one stays
            if storage.exists(final, sp):
                storage.rename(final, getattr(trash, name), sp)
            storage.rename(staged, final, sp)
        storage.write_bytes(lay.manifest, json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8"), sp)
        storage.delete(trash.root, sp)
        storage.delete(self.staged.root, sp)
        _drop_if_empty(lay.trash_root, sp)
        _drop_if_empty(lay.staging_root, sp)

    def _verify_lease(self) -> None:
        holder = LeaseHolder.read(self.layout.lease, self.spark)
        lost = self._refresher.lost if self._refresher is not None else None
        if lost or holder is None or holder.run_id != self.run_id:
            raise OutputBusyError(
                f"this run ({self.run_id}) lost the lease of output={self.layout.root!r} "
                f"({lost or ('the lease file is gone' if holder is None else 'now held by ' + holder.describe())}); "
                "nothing was committed. Fix: make sure one run at a time writes to a folder, then run again."
            )

    def _release(self) -> None:
        if self._refresher is not None:
            self._refresher.stop()
        try:
            holder = LeaseHolder.read(self.layout.lease, self.spark)
            if holder is not None and holder.run_id == self.run_id:
                storage.delete(self.layout.lease, self.spark)
        except Exception as exc:  # noqa: BLE001 - never hide the run's own error behind this one
            log.warning("could not release the lease %s: %s", self.layout.lease, exc)


def _has_content(lay: RunLayout, spark: Optional[SparkSession]) -> bool:
    """Tell whether the folder holds anything besides the run protocol's own files."""
    protocol = {LEASE, STAGING, TRASH}
    return any(name not in protocol for name in storage.list_dir(lay.root, spark))


def _recover(lay: RunLayout, gone: LeaseHolder, spark: Optional[SparkSession]) -> None:
    """Undo what a gone run left: a half-done commit is rolled back; its staging and trash go.

    Staging and trash folders of runs older than the gone one go too (they
    could only belong to runs gone before it).
    """
    trash = lay.trash(gone.run_id)
    if not storage.exists(lay.manifest, spark) and storage.exists(trash.manifest, spark):
        log.warning("run %s died during its commit: restoring the previous output", gone.run_id)
        journal = json.loads(storage.read_bytes(trash.journal, spark)) if storage.exists(trash.journal, spark) else {}
        if journal.get("merge"):
            for name in journal["added"]:
                for victim in (name, f".{name}.crc"):
                    storage.delete(storage.join(lay.features, victim), spark)
            _move_parts(trash.features, lay.features, journal["dropped"], spark)
        names = ("pca",) if journal.get("merge") else ("features", "pca")
        for name in names:
            if storage.exists(getattr(trash, name), spark):
                storage.delete(getattr(lay, name), spark)
                storage.rename(getattr(trash, name), getattr(lay, name), spark)
        storage.rename(trash.manifest, lay.manifest, spark)
    _remove_leftovers(lay, gone.run_id, spark)


def _remove_leftovers(lay: RunLayout, up_to: str, spark: Optional[SparkSession]) -> None:
    """Delete the staging and trash folders of runs whose id sorts at or before ``up_to``."""
    for parent in (lay.staging_root, lay.trash_root):
        for name in storage.list_dir(parent, spark):
            if name <= up_to:
                storage.delete(storage.join(parent, name), spark)
        _drop_if_empty(parent, spark)


def _part_files(folder: str, spark: Optional[SparkSession]) -> List[str]:
    """Names of the data files of a parquet folder (``part-…``; not ``_SUCCESS`` nor checksums)."""
    return [n for n in storage.list_dir(folder, spark) if n.startswith("part-")]


def _move_parts(src: str, dst: str, names: Iterable[str], spark: Optional[SparkSession]) -> None:
    """Move the part files ``names`` (and their ``.crc`` checksums, where present) from ``src`` to ``dst``."""
    for name in names:
        for moved in (name, f".{name}.crc"):
            source = storage.join(src, moved)
            if storage.exists(source, spark):
                storage.rename(source, storage.join(dst, moved), spark)


def _drop_if_empty(folder: str, spark: Optional[SparkSession]) -> None:
    """Delete ``folder`` if it exists and holds nothing."""
    if storage.exists(folder, spark) and not storage.list_dir(folder, spark):
        storage.delete(folder, spark)


@contextmanager
def open_run(output: str, mode: str, spark: Optional[SparkSession] = None) -> Iterator[ActiveRun]:
    """Take the lease of ``output`` and hold it for the ``with`` block.

    Parameters
    ----------
    output : str
        The run folder (local path or URI; URIs need ``spark``).
    mode : str
        ``"error"``: refuse a folder that holds anything (after a gone run's
        leftovers are removed); ``"overwrite"`` / ``"incremental"``: accept it.
    spark : pyspark.sql.SparkSession, optional
        Needed for non-local outputs. For local ones the lease is taken
        before any JVM exists.

    Yields
    ------
    ActiveRun

    Raises
    ------
    OutputBusyError
        A live run holds the folder (before anything is written).
    OutputExistsError
        ``mode="error"`` and the folder is not empty.
    """
    lay = layout(output)
    if not storage.is_local(lay.root) and spark is None:
        raise ParameterError(f"output={output!r} is a URI. Fix: pass the SparkSession (spark=...).")
    created_root = not storage.exists(lay.root, spark)
    run_id = _run_id()
    mine = LeaseHolder.for_this_process(run_id)
    replaced = _take_lease(lay, mine, spark)
    run = ActiveRun(lay, run_id, lay.staging(run_id), spark, _now(), replaced, None, mine, None)
    ok = False
    try:
        if replaced is not None:
            _recover(lay, replaced, spark)
        else:
            _remove_leftovers(lay, run_id, spark)  # folders of runs that died without a lease (older versions)
        if mode == "error" and _has_content(lay, spark):
            raise OutputExistsError(
                f"output={output!r} already exists and is not empty (mode='error', the safe default). "
                "Fix: pass a new output folder, mode='overwrite' (--mode overwrite) to replace it, or "
                "mode='incremental' to featurize only new or changed images."
            )
        run._refresher = _Refresher(lay, mine, spark)
        run._refresher.start()
        yield run
        ok = True
    finally:
        if not ok:
            storage.delete(run.staged.root, spark)
            _drop_if_empty(lay.staging_root, spark)
        run._release()
        if created_root and not storage.list_dir(lay.root, spark):
            storage.delete(lay.root, spark)  # a run that wrote nothing leaves no trace


# --------------------------------------------------------------------------- manifest


def _versions() -> Dict[str, Optional[str]]:
    """Versions of the libraries that shape the output."""
    import platform
    from importlib import metadata

    out: Dict[str, Optional[str]] = {"python": platform.python_version(), "p8utils": __version__}
    for dist in ("pyspark", "tensorflow", "tensorflow-cpu", "keras", "ai-edge-litert", "numpy", "pandas", "pyarrow",
                 "pillow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def build_manifest(
    config: RunConfig,
    active: ActiveRun,
    bundle: WeightsBundle,
    counts: RowCheck,
    fit: PCAResult,
    timings: Mapping[str, float],
    spark: SparkSession,
    *,
    reuse: Mapping[str, int],
    unlisted: Optional[List[Dict[str, str]]] = None,
    model_builds: int = 0,
    incremental_key: Optional[List[str]] = None,
    extra: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """Build the manifest of a run (JSON-ready), written last by :meth:`ActiveRun.commit`.

    Parameters
    ----------
    config : RunConfig
        The parameters (``parameters`` entry).
    active : ActiveRun
        The run (id, start time, layout).
    bundle : WeightsBundle
        The weights (source, SHA-256, seed, warning).
    counts : RowCheck
        The row check: the only source of the image counts.
    fit : PCAResult
        The PCA fit (every explained variance, k).
    timings : mapping of str to float
        Seconds per stage.
    spark : pyspark.sql.SparkSession
        The session (master, version, application id).
    reuse : mapping of str to int
        ``featurized`` (files featurized by this run), ``reused`` (rows kept
        from the previous table), ``removed`` (rows of the previous table
        dropped: files gone or changed).
    unlisted : list of dict, optional
        Folders that could not be listed (``path``, ``reason``).
    model_builds : int
        Times a Python worker built the model.
    incremental_key : list of str, optional
        The key that tells unchanged files (incremental mode).
    extra : mapping, optional
        More entries (e.g. a projection's ``kind`` and ``projected_from``).

    Returns
    -------
    dict
    """
    warnings = [bundle.warning] if bundle.warning else []
    if bundle.source == "offline" and not bundle.warning:
        warnings.append("weights='offline': seeded weights, NOT ImageNet features (for tests and demos only).")
    if fit.k > fit.n_rows - 1:
        warnings.append(f"k={fit.k} exceeds the rank of the data ({fit.n_rows} rows): trailing scores are ~0.")
    if unlisted:
        warnings.append(f"{len(unlisted)} folder(s) could not be listed, their files are not in the run: "
                        + "; ".join(f"{u['path']} ({u['reason']})" for u in unlisted[:5]))
    sc = spark.sparkContext
    return {
        "status": "complete",
        "run_id": active.run_id,
        "p8utils_version": __version__,
        "started_at": active.started.isoformat(),
        "finished_at": _now().isoformat(),
        "parameters": config.to_manifest(),
        "spark": {"master": sc.master, "version": spark.version, "application_id": sc.applicationId,
                  "default_parallelism": sc.defaultParallelism},
        "weights": {"source": bundle.source, "sha256": bundle.sha256, "seed": bundle.seed, "warning": bundle.warning},
        "counts": {"total": counts.listed, "ok": counts.ok, "failed": counts.failed,
                   "failed_by_reason": dict(counts.failed_by_reason), "featurized": int(reuse["featurized"]),
                   "reused": int(reuse.get("reused", 0)), "removed": int(reuse.get("removed", 0))},
        "unlisted": list(unlisted or []),
        "incremental_key": incremental_key,
        "incremental": {k: v for k, v in reuse.items() if k not in ("featurized", "reused", "removed")} or None,
        "pca": {
            "k": fit.k, "variance_target": fit.variance_target, "explained_at_k": fit.explained_at_k,
            "n_rows": fit.n_rows, "feature_width": fit.width,
            "explained_variance": [float(v) for v in fit.explained_variance],
            "cumulative_variance": [float(v) for v in fit.cumulative_variance],
        },
        "outputs": {"features": active.layout.features, "pca": active.layout.pca},
        "timings_s": dict(timings),
        "model_builds": model_builds,
        "lease": {"took_over": None if active.replaced is None else active.replaced.run_id},
        "versions": _versions(),
        "warnings": warnings,
        "argv": list(sys.argv),
        **dict(extra or {}),
    }
