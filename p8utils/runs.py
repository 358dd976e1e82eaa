"""The run protocol: one module owns the output folder.

Layout of a run folder (local path or URI, ``s3://`` on EMR)::

    <output>/manifest.json    the commit: written last, it names the data files of the committed tables
    <output>/features/        parquet part files: one row per listed file (path, label, features, error,
                              length, modificationTime); the committed table is the files the manifest names
    <output>/pca/             parquet part files: path, label, pca_features (array<double>[k]);
                              _model-<run id>.npz: the fit, _moments-<run id>.npz: what it was fitted from
    <output>/figures/         PNGs of the notebooks (01 / 02)
    <output>/analysis/        notebook 03: figures/, variance_table.csv
    <output>/notebooks/       executed notebooks (scripts/run_notebooks.py)
    <output>/_lease.json      while a run holds the folder (see below)
    <output>/_staging/<run>/  the run's private scratch (its listing); never committed

The protocol (:func:`open_run`) never renames a data file: on an object store
a rename is a copy of every object plus a delete, and a reader of the folder
would see old and new files mixed meanwhile. It works like Delta Lake's log or
Hadoop's S3A committers:

1. **Lease.** Before it writes anything a run creates ``_lease.json``
   exclusively: ``O_EXCL`` on a local disk, a conditional PutObject
   (``If-None-Match: *``) on S3. It holds run id, host, pid, start time and is
   refreshed every :data:`LEASE_REFRESH_S` seconds. If the file exists and its
   holder lives, the run stops at once with :class:`~p8utils.errors.OutputBusyError`;
   no Spark job has run. A holder is *gone* when it ran on this host and its
   process no longer exists, or when its lease was not refreshed for
   :data:`LEASE_EXPIRY_S` seconds (a run on another host). Only then is the
   lease taken over; every file the committed manifest does not name (what the
   gone run wrote) is deleted.
2. **Write once.** The run's data files are written by Spark straight into
   ``features/`` and ``pca/`` under names no other run uses (Spark's part names
   carry the write's UUID; the PCA fit carries the run id). Until the commit no
   reader that follows the manifest sees them.
3. **Check.** The written features must hold exactly one row per listed file
   (same count, same distinct paths: :meth:`ActiveRun.check_rows`), and the PCA
   scores one row per featurized file; otherwise :class:`~p8utils.errors.RunCheckError`
   names the difference and the committed table stays as it was.
4. **Commit.** The lease is verified, then ``manifest.json`` is written: one
   small object (a single PUT on S3, a rename of a temporary file on a local
   disk) naming the files of the new ``features`` and ``pca`` tables with their
   row counts. That write is the commit. The files it no longer names (the
   previous table's, or the part files an incremental run replaced) are then
   deleted, the lease released. An incremental run keeps the committed part
   files it does not change and names them again next to its new ones.

Readers use :func:`read_features` and :func:`read_pca`, which read exactly the
committed files. A plain ``spark.read.parquet("<output>/features")`` equals the
committed table once a run has ended; while a run commits (from the moment
Spark's job commit publishes its files until the previous files are deleted) it
may see both.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
import sys
import threading
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

from p8utils import __version__, storage
from p8utils.errors import DamagedRunFileError, OutputBusyError, OutputExistsError, ParameterError, RunCheckError

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

    from p8utils.config import RunConfig
    from p8utils.models import WeightsBundle
    from p8utils.pca import PCAResult

__all__ = [
    "LEASE_EXPIRY_S",
    "LEASE_REFRESH_S",
    "ActiveRun",
    "Committed",
    "LeaseHolder",
    "RowCheck",
    "RunLayout",
    "check_output_location",
    "committed",
    "find_run",
    "latest_run",
    "layout",
    "new_run_dir",
    "build_manifest",
    "open_run",
    "read_features",
    "read_manifest",
    "read_pca",
    "read_pca_file",
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
#: The two tables of a run, each a folder of parquet part files named by the manifest.
TABLES: Tuple[str, ...] = ("features", "pca")
#: Files of the run protocol itself (not a run's content).
_PROTOCOL = (LEASE, STAGING, "_trash")


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

    features = _place("features", doc="The features table's folder (its committed files: :func:`read_features`).")
    pca = _place("pca", doc="The PCA scores table's folder (its committed files: :func:`read_pca`).")
    manifest = _place(MANIFEST, doc="The manifest, written last: the commit.")
    figures = _place("figures", doc="PNG figures of notebooks 01 / 02.")
    analysis = _place("analysis", doc="Notebook 03's folder (``figures/``, tables).")
    notebooks = _place("notebooks", doc="Executed notebooks.")
    lease = _place(LEASE, doc="The lock file of the run that holds the folder.")
    staging_root = _place(STAGING, doc="Parent of every run's scratch folder.")

    def staging(self, run_id: str) -> str:
        """``run_id``'s scratch folder (its listing; never committed)."""
        return self._sub(STAGING, run_id)

    def file(self, table: str, name: str) -> str:
        """Path of the file ``name`` of the table ``table`` (``features`` or ``pca``)."""
        return self._sub(table, name)


@dataclass(frozen=True)
class Committed:
    """The files of a committed run, as its manifest names them.

    Attributes
    ----------
    features, pca : dict of str to int
        Part file name (in ``features/`` / ``pca/``) -> rows.
    pca_model, pca_moments : str or None
        File names in ``pca/`` of the PCA fit and of its moments.
    """

    features: Dict[str, int]
    pca: Dict[str, int]
    pca_model: Optional[str] = None
    pca_moments: Optional[str] = None

    def names(self, table: str) -> List[str]:
        """Every file of ``table`` the commit keeps (parts, and in ``pca`` the fit and moments)."""
        extra = [n for n in (self.pca_model, self.pca_moments) if n] if table == "pca" else []
        return sorted(getattr(self, table)) + extra

    def to_manifest(self) -> Dict[str, Any]:
        """Return the manifest's ``files`` entry."""
        return {"features": [{"name": n, "rows": r} for n, r in sorted(self.features.items())],
                "pca": [{"name": n, "rows": r} for n, r in sorted(self.pca.items())],
                "pca_model": self.pca_model, "pca_moments": self.pca_moments}


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
    if storage.exists(run.manifest, spark) or storage.exists(run.features, spark):
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


def read_manifest(output: Union[str, RunLayout], spark: Optional[SparkSession] = None) -> Dict[str, Any]:
    """Read ``<output>/manifest.json``.

    Raises
    ------
    ParameterError
        No manifest: the run is missing or did not complete.
    DamagedRunFileError
        The manifest is not valid JSON (truncated, overwritten by hand …).
    """
    lay = output if isinstance(output, RunLayout) else layout(output)
    try:
        data = storage.read_bytes(lay.manifest, spark)
    except FileNotFoundError:
        data = None
    if data is None:
        raise ParameterError(
            f"no {MANIFEST} in output={lay.root!r}: the run is missing or did not complete. "
            "Fix: run the pipeline (python -m p8utils run) into that folder first."
        )
    try:
        manifest = json.loads(data.decode("utf-8"))
        if not isinstance(manifest, dict):
            raise ValueError("not a JSON object")
        return manifest
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DamagedRunFileError(
            f"{lay.manifest} is damaged ({exc}): the run's commit record cannot be read, nothing was changed. "
            f"Fix: restore it, or write the run again with mode='overwrite' (--mode overwrite) or into a new output."
        ) from None


def committed(run: Union[str, RunLayout], spark: Optional[SparkSession] = None) -> Optional[Committed]:
    """Return the committed files of a run folder; None when it holds no manifest.

    A manifest written before manifests named their files (p8utils < 0.2)
    commits every part file of its folders and ``pca/_model.npz``.

    Raises
    ------
    DamagedRunFileError
        The manifest is damaged.
    """
    lay = run if isinstance(run, RunLayout) else layout(run)
    try:
        manifest = read_manifest(lay, spark)
    except DamagedRunFileError:
        raise
    except ParameterError:
        return None
    files = manifest.get("files")
    if files is None:  # legacy layout: whole folders, fixed names
        pca_names = storage.list_dir(lay.pca, spark)
        return Committed({n: -1 for n in _part_files(lay.features, spark)}, {n: -1 for n in pca_names
                                                                          if n.startswith("part-")},
                         "_model.npz" if "_model.npz" in pca_names else None,
                         "_moments.npz" if "_moments.npz" in pca_names else None)
    try:
        return Committed({f["name"]: int(f["rows"]) for f in files["features"]},
                         {f["name"]: int(f["rows"]) for f in files["pca"]}, files.get("pca_model"),
                         files.get("pca_moments"))
    except (KeyError, TypeError, ValueError) as exc:
        raise DamagedRunFileError(
            f"{lay.manifest} is damaged (its 'files' entry: {exc!r}). Fix: restore it, or write the run again "
            "with mode='overwrite' or into a new output."
        ) from None


def _read_table(run: Union[str, RunLayout], table: str, spark: SparkSession) -> DataFrame:
    lay = run if isinstance(run, RunLayout) else find_run(str(run), spark)
    files = committed(lay, spark)
    if files is None:
        raise ParameterError(f"no {MANIFEST} in {lay.root!r}: it holds no complete run. Fix: pass a run folder "
                             "written by notebook 01/02 or `python -m p8utils run`, once that run has ended.")
    names = sorted(getattr(files, table))
    if not names:  # an empty table (e.g. no image could be featurized): its schema, no rows
        return spark.read.parquet(storage.spark_path(getattr(lay, table))).limit(0)
    return spark.read.parquet(*[storage.spark_path(lay.file(table, n)) for n in names])


def read_features(run: Union[str, RunLayout], spark: SparkSession) -> DataFrame:
    """Read the committed ``features`` table of a run: exactly the files its manifest names.

    Parameters
    ----------
    run : str or RunLayout
        The run folder (local path or URI) or its ``features/`` folder.
    spark : pyspark.sql.SparkSession

    Returns
    -------
    pyspark.sql.DataFrame
        ``path``, ``label``, ``features`` (array<float>[n], null on error), ``error``, ``length``,
        ``modificationTime``: one row per listed file. A run being committed meanwhile does not change
        what this returns (the previous table or the new one, never a mix).
    """
    return _read_table(run, "features", spark)


def read_pca(run: Union[str, RunLayout], spark: SparkSession) -> DataFrame:
    """Read the committed ``pca`` table of a run (``path``, ``label``, ``pca_features`` array<double>[k], …)."""
    return _read_table(run, "pca", spark)


def read_pca_file(run: Union[str, RunLayout], kind: str,
                  spark: Optional[SparkSession] = None) -> Optional[Tuple[str, bytes]]:
    """Return the path and bytes of the committed PCA fit (``kind="model"``) or its moments (``"moments"``).

    None when the run has none.
    """
    lay = run if isinstance(run, RunLayout) else layout(run)
    files = committed(lay, spark)
    name = None if files is None else getattr(files, f"pca_{kind}")
    if name is None:
        return None
    try:
        return lay.file("pca", name), storage.read_bytes(lay.file("pca", name), spark)
    except FileNotFoundError:
        raise DamagedRunFileError(f"{lay.manifest} names {lay.file('pca', name)}, which is gone. Fix: write the run "
                                  "again with mode='overwrite'.") from None


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
            raise DamagedRunFileError(
                f"the lease file {uri} is damaged ({exc!r}). Fix: if no run is writing to this folder, delete it; "
                "then run again."
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
        if storage.create_exclusive(lay.lease, mine.to_bytes(), spark):  # atomic: O_EXCL, If-None-Match on S3
            return replaced
        holder = LeaseHolder.read(lay.lease, spark)
        if holder is None:
            continue  # released meanwhile: try again
        if holder.run_id == mine.run_id:
            return replaced  # a retried request whose first attempt had created it (S3 answers 412 to the retry)
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
    #: Rows of each part file of the table (by file name).
    files: Dict[str, int] = field(default_factory=dict)

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
        This run's id (names its scratch folder and its PCA fit).
    spark : SparkSession or None
        Needed for Hadoop URIs other than S3 (``hdfs://``); None for local folders and S3.
    started : datetime.datetime
        UTC start time.
    replaced : LeaseHolder or None
        The gone run whose lease was taken over.
    previous : Committed or None
        The committed files when this run took the lease (None: nothing committed).
    """

    layout: RunLayout
    run_id: str
    spark: Optional[SparkSession]
    started: _dt.datetime
    replaced: Optional[LeaseHolder] = None
    previous: Optional[Committed] = None
    _refresher: Optional[_Refresher] = field(default=None, repr=False)
    _mine: Optional[LeaseHolder] = field(default=None, repr=False)
    _drop: Optional[Tuple[str, ...]] = field(default=None, repr=False)
    _keep: Tuple[str, ...] = field(default=(), repr=False)
    _written: Dict[str, List[str]] = field(default_factory=lambda: {t: [] for t in TABLES}, repr=False)
    _rows: Dict[str, Dict[str, int]] = field(default_factory=lambda: {t: {} for t in TABLES}, repr=False)
    _fit_files: Dict[str, Optional[str]] = field(default_factory=lambda: {"model": None, "moments": None},
                                                 repr=False)
    _committed: bool = field(default=False, repr=False)

    @property
    def listing_path(self) -> str:
        """Where the run keeps its listing (parquet, in its scratch folder)."""
        return storage.join(self.layout.staging(self.run_id), "listing")

    @property
    def written(self) -> Dict[str, List[str]]:
        """The part files this run wrote so far, per table (not committed before :meth:`commit`)."""
        return {t: list(v) for t, v in self._written.items()}

    def _write(self, table: str, frame: DataFrame) -> List[str]:
        """Append ``frame`` to the table's folder as new part files (Spark names them uniquely); return their names."""
        folder, fs = getattr(self.layout, table), self.spark or frame.sparkSession
        before = set(_part_files(folder, fs))
        frame.write.mode("append").option("mapreduce.fileoutputcommitter.marksuccessfuljobs", "false").parquet(
            storage.spark_path(folder))  # no _SUCCESS: the manifest is the mark of a complete table
        new = sorted(set(_part_files(folder, fs)) - before)
        self._written[table].extend(new)
        return new

    def _read(self, spark: SparkSession, table: str, names: Iterable[str]) -> DataFrame:
        return spark.read.parquet(*[storage.spark_path(self.layout.file(table, n)) for n in names])

    def write_features(self, table: DataFrame) -> DataFrame:
        """Write ``table`` as new part files of the features; return the features the run will commit.

        Returns
        -------
        pyspark.sql.DataFrame
            Every part file written by this run, plus, after :meth:`merge_into_committed`,
            the committed part files that stay.
        """
        self._write("features", table)
        return self.staged_features(table.sparkSession)

    def merge_into_committed(self, drop: Iterable[str]) -> None:
        """Commit the new features *next to* the committed ones instead of replacing them.

        For incremental runs: the committed part files named in ``drop``
        (those holding rows of changed, deleted or unread files) leave at the
        commit, every other committed file stays as it is and is named again
        by the new manifest. The cost of a run is then that of its new rows.

        Parameters
        ----------
        drop : iterable of str
            Part file names of the committed ``features`` table.
        """
        self._drop = tuple(sorted(set(drop)))
        self._keep = tuple(sorted(set(self.previous.features if self.previous else ()) - set(self._drop)))

    def staged_features(self, spark: SparkSession) -> DataFrame:
        """Read the features the run will commit (its new part files, and the committed ones that stay)."""
        return self._read(spark, "features", [*self._keep, *self._written["features"]])

    def leaving_features(self, spark: SparkSession) -> Optional[DataFrame]:
        """Read the committed rows that leave at the commit: those of the part files :meth:`merge_into_committed` drops.

        Returns
        -------
        pyspark.sql.DataFrame or None
            None unless the run merges into the committed table (then the
            committed table is ``previous - leaving + staged``).
        """
        if self._drop is None or self.previous is None:
            return None
        if not self._drop:
            from pyspark.sql import functions as F

            return self.staged_only(spark).where(F.lit(False))
        return self._read(spark, "features", self._drop)

    def staged_only(self, spark: SparkSession) -> DataFrame:
        """Read the rows this run wrote (without the committed rows that stay)."""
        return self._read(spark, "features", self._written["features"])

    def staged_pca(self, spark: SparkSession) -> DataFrame:
        """Read the PCA scores this run wrote."""
        return self._read(spark, "pca", self._written["pca"])

    def write_pca(self, scores: DataFrame, model: bytes, moments: Optional[bytes] = None, *,
                  expected_rows: Optional[int] = None) -> None:
        """Write the PCA scores, the fit that made them and, if given, its moments (committed together).

        Raises
        ------
        RunCheckError
            ``expected_rows`` given and the scores hold another number of rows.
        """
        spark = scores.sparkSession
        self._write("pca", scores)
        for kind, data in (("model", model), ("moments", moments)):
            if data is not None:
                name = f"_{kind}-{self.run_id}.npz"
                storage.write_bytes(self.layout.file("pca", name), data, self.spark or spark)
                self._fit_files[kind] = name
        self._rows["pca"] = _rows_per_file(self.staged_pca(spark))
        if expected_rows is not None and sum(self._rows["pca"].values()) != expected_rows:
            raise RunCheckError(
                f"the PCA scores hold {sum(self._rows['pca'].values())} rows for {expected_rows} featurized files. "
                f"The run stopped before its commit: output={self.layout.root!r} is unchanged. Fix: run again; "
                "if it happens again, report it with this message."
            )

    def check_rows(self, staged: DataFrame, listing: DataFrame, n_listed: int) -> RowCheck:
        """Check that ``staged`` holds exactly one row per listed file.

        Parameters
        ----------
        staged : pyspark.sql.DataFrame
            The features the run will commit (``path``, ``error``; read from parquet).
        listing : pyspark.sql.DataFrame
            The run's listing (``path``).
        n_listed : int
            Rows of ``listing``.

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
        by_error: Dict[Optional[str], int] = {}
        files: Dict[str, int] = {}
        for r in staged.groupBy(F.col("_metadata.file_name").alias("file"), "error").count().collect():
            by_error[r["error"]] = by_error.get(r["error"], 0) + int(r["count"])
            files[r["file"]] = files.get(r["file"], 0) + int(r["count"])
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
        self._rows["features"] = files
        return RowCheck(n_listed, rows, ok, dict(sorted(by_error.items())), dict(sorted(files.items())))

    def commit(self, manifest: Mapping[str, Any]) -> Dict[str, Any]:
        """Write the manifest naming the new tables' files (the commit), then delete the files it no longer names.

        Returns
        -------
        dict
            The manifest as written (``manifest`` plus its ``files`` entry).

        Raises
        ------
        OutputBusyError
            The lease was lost meanwhile (another run took the folder over):
            nothing is committed.
        """
        self._verify_lease()
        files = Committed(*(self._rows[t] or {self._written[t][0]: 0} for t in TABLES),
                          self._fit_files["model"], self._fit_files["moments"])
        final = {**manifest, "files": files.to_manifest()}
        storage.write_bytes(self.layout.manifest, json.dumps(final, indent=2, ensure_ascii=False).encode("utf-8"),
                            self.spark)
        self._committed = True
        _vacuum(self.layout, files, self.spark)
        return final

    def _abandon(self) -> None:
        """Delete what this run wrote (it did not commit): its part files, fit, Spark's temporary files, scratch."""
        if self._committed:
            return
        for table in TABLES:
            folder = getattr(self.layout, table)
            names = [*self._written[table], *(f for f in self._fit_files.values() if f and table == "pca")]
            for name in [*names, *(f".{n}.crc" for n in names), "_temporary", "_SUCCESS"]:
                storage.delete(storage.join(folder, name), self.spark)
            _drop_if_empty(folder, self.spark)
        storage.delete(self.layout.staging(self.run_id), self.spark)
        _drop_if_empty(self.layout.staging_root, self.spark)

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


def _rows_per_file(frame: DataFrame) -> Dict[str, int]:
    """Rows of each parquet file of ``frame`` (read from parquet); files without rows are left out."""
    from pyspark.sql import functions as F

    return {r["file"]: int(r["count"]) for r in
            frame.groupBy(F.col("_metadata.file_name").alias("file")).count().collect()}


def _has_content(lay: RunLayout, spark: Optional[SparkSession]) -> bool:
    """Tell whether the folder holds anything besides the run protocol's own files."""
    return any(name not in _PROTOCOL and not name.startswith(".") for name in storage.list_dir(lay.root, spark))


def _vacuum(lay: RunLayout, keep: Optional[Committed], spark: Optional[SparkSession]) -> None:
    """Delete every file of the tables' folders that ``keep`` does not name, and every run's scratch folder.

    Called under the lease: after a commit (the previous table's files), and
    when a run starts (what a gone run wrote before it could commit: part
    files, Spark's ``_temporary``, a fit). A file's ``.crc`` checksum goes
    with it.
    """
    for table in TABLES:
        folder = getattr(lay, table)
        names = set(keep.names(table)) if keep is not None else set()
        for name in storage.list_dir(folder, spark):
            base = name[1:-4] if name.startswith(".") and name.endswith(".crc") else name
            if base not in names:
                storage.delete(storage.join(folder, name), spark)
        _drop_if_empty(folder, spark)
    storage.delete(lay.staging_root, spark)


def _part_files(folder: str, spark: Optional[SparkSession]) -> List[str]:
    """Names of the data files of a parquet folder (``part-…``; not ``_SUCCESS`` nor checksums)."""
    return [n for n in storage.list_dir(folder, spark) if n.startswith("part-")]


def _drop_if_empty(folder: str, spark: Optional[SparkSession]) -> None:
    """Delete ``folder`` if it exists and holds nothing."""
    if storage.exists(folder, spark) and not storage.list_dir(folder, spark):
        storage.delete(folder, spark)


def _previous(lay: RunLayout, mode: str, spark: Optional[SparkSession]) -> Optional[Committed]:
    """Return the committed files of ``lay``; a damaged manifest is refused, except by ``mode="overwrite"``.

    Raises
    ------
    DamagedRunFileError
        The manifest is damaged and ``mode`` is not ``"overwrite"`` (an
        incremental run would otherwise drop the rows it cannot name).
    """
    try:
        return committed(lay, spark)
    except DamagedRunFileError as exc:
        if mode != "overwrite":
            raise
        log.warning("%s: mode='overwrite' replaces it and every file of the folders features/ and pca/", exc)
        return None


@contextmanager
def open_run(output: str, mode: str, spark: Optional[SparkSession] = None) -> Iterator[ActiveRun]:
    """Take the lease of ``output`` and hold it for the ``with`` block.

    Parameters
    ----------
    output : str
        The run folder (local path or URI; Hadoop URIs other than S3 need ``spark``).
    mode : str
        ``"error"``: refuse a folder that holds anything (after a gone run's
        leftovers are removed); ``"overwrite"`` / ``"incremental"``: accept it.
    spark : pyspark.sql.SparkSession, optional
        Needed for ``hdfs://``-like outputs. For local and S3 ones the lease
        is taken before any JVM exists.

    Yields
    ------
    ActiveRun

    Raises
    ------
    OutputBusyError
        A live run holds the folder (before anything is written).
    OutputExistsError
        ``mode="error"`` and the folder is not empty.
    DamagedRunFileError
        The folder's manifest is damaged (except with ``mode="overwrite"``).
    """
    lay = layout(output)
    created_root = not storage.exists(lay.root, spark)
    run_id = _run_id()
    mine = LeaseHolder.for_this_process(run_id)
    replaced = _take_lease(lay, mine, spark)
    run = ActiveRun(lay, run_id, spark, _now(), replaced, _mine=mine)
    ok = False
    try:
        trash = storage.join(lay.root, "_trash")  # p8utils < 0.2 moved the previous output there during a commit
        if storage.exists(trash, spark) and not storage.exists(lay.manifest, spark):
            raise DamagedRunFileError(
                f"{lay.root!r} holds a commit that an older p8utils left half done (_trash/, no {MANIFEST}). "
                f"Fix: move {storage.join(lay.root, '_trash', '<run id>', '*')} back into the folder, or delete the "
                "folder and run again."
            )
        storage.delete(trash, spark)  # with a manifest there, that commit had finished or not begun
        run.previous = _previous(lay, mode, spark)
        _vacuum(lay, run.previous, spark)  # what runs that died before their commit wrote
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
            run._abandon()
        run._release()
        if created_root and not storage.list_dir(lay.root, spark):
            storage.delete(lay.root, spark)  # a run that wrote nothing leaves no trace


# --------------------------------------------------------------------------- manifest


#: Written by bootstrap/emr_bootstrap.sh next to the EMR nodes' venv Python (``sys.prefix``): the pin set it installed.
PYTHON_RECORD = "p8utils-python.json"


def _versions() -> Dict[str, Optional[str]]:
    """Versions of the libraries that shape the output, the driver's interpreter and, on EMR, its pin set."""
    import platform
    from importlib import metadata

    out: Dict[str, Optional[str]] = {"python": platform.python_version(), "p8utils": __version__,
                                     "python_executable": sys.executable, "pin_set": None}
    try:
        with open(os.path.join(sys.prefix, PYTHON_RECORD), encoding="utf-8") as fh:
            out["pin_set"] = json.load(fh).get("requirements")
    except (OSError, ValueError, AttributeError):
        pass  # not an EMR node of the kit
    for dist in ("pyspark", "tensorflow", "tensorflow-cpu", "keras", "ai-edge-litert", "numpy", "pandas", "pyarrow",
                 "pillow", "boto3"):
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
