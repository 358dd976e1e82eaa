"""Staging, commit and recovery: :func:`open_run` and the :class:`ActiveRun` it yields.

The run's data files are written once, under names no other run uses; the
commit is one small object written last (the manifest, naming the committed
files); files it no longer names are deleted after (:func:`vacuum`), and so is
what a gone run wrote before its commit.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

from p8utils import storage
from p8utils.errors import DamagedRunFileError, OutputBusyError, OutputExistsError
from p8utils.protocol.folders import (
    MANIFEST,
    PROTOCOL,
    TABLES,
    Committed,
    RunLayout,
    committed,
    layout,
    read_parquet_arrow,
    read_parts,
)
from p8utils.protocol.incremental import IncrementalPlan
from p8utils.protocol.lease import LeaseHolder, Refresher, lost_reason, new_run_id, take_lease, utc_now
from p8utils.protocol.rowcheck import (
    DRIVER_CHECK_ROWS,
    RowCheck,
    check_pca_rows,
    check_rows,
    check_rows_arrow,
    rows_per_file,
)
from p8utils.spark import jobs_ended_on_exit

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["ActiveRun", "open_run", "vacuum"]

log = logging.getLogger(__name__)


@dataclass
class ActiveRun:
    """A run that holds its output folder's lease (made by :func:`open_run`).

    Attributes
    ----------
    layout : RunLayout
        The output folder (and its store).
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
    plan : IncrementalPlan or None
        What the run does with the committed features table, once :meth:`follow` was called.
    """

    layout: RunLayout
    run_id: str
    spark: Optional[SparkSession]
    started: _dt.datetime
    replaced: Optional[LeaseHolder] = None
    previous: Optional[Committed] = None
    plan: Optional[IncrementalPlan] = None
    _refresher: Optional[Refresher] = field(default=None, repr=False)
    _mine: Optional[LeaseHolder] = field(default=None, repr=False)
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

    @property
    def _keep(self) -> Tuple[str, ...]:
        """Committed features part files that stay (the plan merges into the committed table)."""
        if self.plan is None or not self.plan.merges or self.previous is None:
            return ()
        return tuple(sorted(set(self.previous.features) - set(self.plan.rewritten_files)))

    def _write(self, table: str, frame: DataFrame) -> List[str]:
        """Append ``frame`` to the table's folder as new part files (Spark names them uniquely); return their names."""
        lay = self.layout.with_spark(frame.sparkSession)
        before = set(lay.part_files(table))
        writer = frame.write.mode("append").option("mapreduce.fileoutputcommitter.marksuccessfuljobs", "false")
        try:  # no _SUCCESS: the manifest is the mark of a complete table
            jobs_ended_on_exit(frame.sparkSession, lambda: writer.parquet(storage.spark_path(getattr(lay, table))))
        except BaseException:  # a write that completed while the run was being interrupted: the run deletes it too
            try:
                self._written[table].extend(sorted(set(lay.part_files(table)) - before))
            except Exception as exc:  # noqa: BLE001 - the write's own error goes on; the next run deletes them
                log.warning("could not list %s after the failed write: %s", getattr(lay, table), exc)
            raise
        new = sorted(set(lay.part_files(table)) - before)
        self._written[table].extend(new)
        return new

    @property
    def part_prefix(self) -> str:
        """Start of the names of the part files this run's tasks write themselves (:meth:`add_task_files`)."""
        return f"part-{self.run_id}"

    def add_task_files(self, table: str, files: DataFrame) -> List[str]:
        """Run the tasks that stage ``table``'s part files themselves; publish and stage the files they name.

        Parameters
        ----------
        table : str
            ``features`` or ``pca``.
        files : pyspark.sql.DataFrame
            Lazy, ``file`` and ``token``: one row per part file a successful
            task staged in the table's folder with
            :func:`p8utils.storage.stage_object`, named with :attr:`part_prefix`
            (:func:`p8utils.featurize.featurize_to_files`). Each is published
            (:func:`p8utils.storage.publish_object`: a rename, or on S3 the
            completion of its upload) once the job has succeeded. Files of
            failed, killed or speculative attempts, which no row names, are
            never published; they are removed when the run ends (or by the
            next run, after a ``kill -9``).

        Returns
        -------
        list of str
            The names staged.
        """
        from concurrent.futures import ThreadPoolExecutor

        found = jobs_ended_on_exit(files.sparkSession, files.select("file", "token").collect)
        named = sorted((row["file"], row["token"]) for row in found)
        self._written[table].extend(name for name, _ in named)  # before publishing: a failure deletes them
        folder = getattr(self.layout, table)
        with ThreadPoolExecutor(max_workers=16) as pool:  # S3: one request each
            list(pool.map(lambda item: storage.publish_object(storage.join(folder, item[0]), item[1]), named))
        return [name for name, _ in named]

    def _read(self, spark: SparkSession, table: str, names: Iterable[str]) -> DataFrame:
        return read_parts(self.layout, table, list(names), spark)

    def follow(self, plan: IncrementalPlan) -> None:
        """Carry out ``plan`` at the commit.

        When the plan merges (an incremental run on a committed table, not
        compacting), the new features are committed *next to* the committed
        ones: the part files of ``plan.rewritten_files`` leave at the commit,
        every other committed file stays as it is and is named again by the
        new manifest. The cost of a run is then that of its new rows.

        Parameters
        ----------
        plan : IncrementalPlan
        """
        self.plan = plan

    def write_features(self, table: DataFrame) -> DataFrame:
        """Write ``table`` as new part files of the features; return the features the run will commit.

        Returns
        -------
        pyspark.sql.DataFrame
            Every part file written by this run, plus, when the plan merges,
            the committed part files that stay.
        """
        self._write("features", table)
        return self.staged_features(table.sparkSession)

    def staged_features(self, spark: SparkSession) -> DataFrame:
        """Read the features the run will commit (its new part files, and the committed ones that stay)."""
        return self._read(spark, "features", [*self._keep, *self._written["features"]])

    def leaving_features(self, spark: SparkSession) -> Optional[DataFrame]:
        """Read the committed rows that leave at the commit: those of the part files the plan rewrites.

        Returns
        -------
        pyspark.sql.DataFrame or None
            None unless the run merges into the committed table (then the
            committed table is ``previous - leaving + staged``).
        """
        if self.plan is None or not self.plan.merges or self.previous is None:
            return None
        if not self.plan.rewritten_files:
            from pyspark.sql import functions as F

            return self.staged_only(spark).where(F.lit(False))
        return self._read(spark, "features", self.plan.rewritten_files)

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
                self._fit_files[kind] = name  # before the write: an interrupted write is deleted with the run
                self.layout.with_spark(spark).store.write_bytes(self.layout.file("pca", name), data)
        self._rows["pca"] = rows_per_file(self.staged_pca(spark))
        if expected_rows is not None:
            check_pca_rows(self._rows["pca"], expected_rows, self.layout.root)

    def staged_arrow(self, columns: List[str]) -> Optional[Any]:
        """Read ``columns`` of the features the run will commit on the driver (``pyarrow``, no Spark job).

        Returns
        -------
        pyarrow.Table or None
            ``columns`` + ``file``; None when the run folder is on a store
            other than a local disk or S3.
        """
        names = [*self._keep, *self._written["features"]]
        return read_parquet_arrow([self.layout.file("features", n) for n in names], columns)

    def check_rows(self, staged: DataFrame, listing: DataFrame, n_listed: int) -> RowCheck:
        """Check ``staged`` against the listing; its part files' rows are what commits.

        Up to :data:`~p8utils.protocol.rowcheck.DRIVER_CHECK_ROWS` listed
        files, the staged part files' ``path``/``error`` and the listing are
        read on the driver (:func:`~p8utils.protocol.rowcheck.check_rows_arrow`:
        no Spark job); above, or on another store, Spark checks them
        (:func:`~p8utils.protocol.rowcheck.check_rows`).
        """
        small = None
        if n_listed <= DRIVER_CHECK_ROWS:
            folder = self.listing_path
            listed = read_parquet_arrow(
                [storage.join(folder, n) for n in self.layout.store.list_dir(folder)
                 if n.endswith(".parquet") and not n.startswith(("_", "."))], ["path"])
            small = None if listed is None else (self.staged_arrow(["path", "error"]), listed.column("path"))
        if small is not None and small[0] is not None:
            counts = check_rows_arrow(small[0], small[1], n_listed, self.layout.root)
        else:
            counts = check_rows(staged, listing, n_listed, self.layout.root)
        self._rows["features"] = dict(counts.files)
        return counts

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
        self.layout.store.write_bytes(self.layout.manifest,
                                      json.dumps(final, indent=2, ensure_ascii=False).encode("utf-8"))
        self._committed = True
        vacuum(self.layout, files)
        return final

    def _abandon(self) -> None:
        """Delete what this run wrote (it did not commit): its part files, fit, Spark's temporary files, scratch."""
        if self._committed:
            return
        store = self.layout.store
        for table in TABLES:
            folder = getattr(self.layout, table)
            names = [*self._written[table], *(f for f in self._fit_files.values() if f and table == "pca")]
            names += [n for n in store.list_dir(folder) if n.lstrip(".").startswith(self.part_prefix)]  # tasks' others
            for name in [*names, *(f".{n}.crc" for n in names), "_temporary", "_SUCCESS"]:
                store.delete(storage.join(folder, name))
            _drop_if_empty(store, folder)
        storage.abort_staged(self.layout.features)
        store.delete(self.layout.staging(self.run_id))
        _drop_if_empty(store, self.layout.staging_root)

    def _verify_lease(self) -> None:
        lost = (self._refresher.lost if self._refresher is not None else None) or lost_reason(self.layout, self.run_id)
        if lost:
            raise OutputBusyError(
                f"this run ({self.run_id}) lost the lease of output={self.layout.root!r} ({lost}); "
                "nothing was committed. Fix: make sure one run at a time writes to a folder, then run again."
            )

    def _release(self) -> None:
        if self._refresher is not None:
            self._refresher.stop()
        try:
            holder = LeaseHolder.read(self.layout)
            if holder is not None and holder.run_id == self.run_id:
                self.layout.store.delete(self.layout.lease)
        except Exception as exc:  # noqa: BLE001 - never hide the run's own error behind this one
            log.warning("could not release the lease %s: %s", self.layout.lease, exc)


def _has_content(lay: RunLayout) -> bool:
    """Tell whether the folder holds anything besides the run protocol's own files."""
    return any(name not in PROTOCOL and not name.startswith(".") for name in lay.store.list_dir(lay.root))


def vacuum(lay: RunLayout, keep: Optional[Committed]) -> None:
    """Delete every file of the tables' folders that ``keep`` does not name, and every run's scratch folder.

    Called under the lease: after a commit (the previous table's files), and
    when a run starts (what a gone run wrote before it could commit: part
    files, Spark's ``_temporary``, a fit, the part files its tasks staged and
    never published: hidden local files, uncompleted S3 uploads). A file's
    ``.crc`` checksum goes with it.
    """
    store = lay.store
    for table in TABLES:
        folder = getattr(lay, table)
        names = set(keep.names(table)) if keep is not None else set()
        for name in store.list_dir(folder):
            base = name[1:-4] if name.startswith(".") and name.endswith(".crc") else name
            if base not in names:
                store.delete(storage.join(folder, name))
        _drop_if_empty(store, folder)
    storage.abort_staged(lay.features)  # what the tasks of a run killed before its commit staged on S3
    store.delete(lay.staging_root)


def _drop_if_empty(store: storage.Store, folder: str) -> None:
    """Delete ``folder`` if it exists and holds nothing."""
    if store.exists(folder) and not store.list_dir(folder):
        store.delete(folder)


def _previous(lay: RunLayout, mode: str) -> Optional[Committed]:
    """Return the committed files of ``lay``; a damaged manifest is refused, except by ``mode="overwrite"``.

    Raises
    ------
    DamagedRunFileError
        The manifest is damaged and ``mode`` is not ``"overwrite"`` (an
        incremental run would otherwise drop the rows it cannot name).
    """
    try:
        return committed(lay)
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
    lay = layout(output, spark)
    store = lay.store
    created_root = not store.exists(lay.root)
    run_id = new_run_id()
    mine = LeaseHolder.for_this_process(run_id)
    replaced = take_lease(lay, mine)
    run = ActiveRun(lay, run_id, spark, utc_now(), replaced, _mine=mine)
    ok = False
    try:
        trash = storage.join(lay.root, "_trash")  # p8utils < 0.2 moved the previous output there during a commit
        if store.exists(trash) and not store.exists(lay.manifest):
            raise DamagedRunFileError(
                f"{lay.root!r} holds a commit that an older p8utils left half done (_trash/, no {MANIFEST}). "
                f"Fix: move {storage.join(lay.root, '_trash', '<run id>', '*')} back into the folder, or delete the "
                "folder and run again."
            )
        store.delete(trash)  # with a manifest there, that commit had finished or not begun
        run.previous = _previous(lay, mode)
        vacuum(lay, run.previous)  # what runs that died before their commit wrote
        if mode == "error" and _has_content(lay):
            raise OutputExistsError(
                f"output={output!r} already exists and is not empty (mode='error', the safe default). "
                "Fix: pass a new output folder, mode='overwrite' (--mode overwrite) to replace it, or "
                "mode='incremental' to featurize only new or changed images."
            )
        run._refresher = Refresher(lay, mine)
        run._refresher.start()
        yield run
        ok = True
    finally:
        if not ok:
            run._abandon()
        run._release()
        if created_root and not store.list_dir(lay.root):
            store.delete(lay.root)  # a run that wrote nothing leaves no trace
