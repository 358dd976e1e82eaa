"""The run protocol: one module owns the output folder (its jobs live in :mod:`p8utils.protocol`).

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

This module is the protocol's public face; each job is a module of :mod:`p8utils.protocol`:
``folders`` (layout with its store, discovery, readers), ``lease``, ``commit`` (staging, commit,
recovery), ``rowcheck``, ``incremental`` (:class:`IncrementalPlan`), ``manifest`` (:class:`RunOutcome`,
:func:`build_manifest`).
"""

from __future__ import annotations

from p8utils.protocol import lease  # noqa: F401 - runs.lease: the module (LEASE_REFRESH_S is read there)
from p8utils.protocol.commit import ActiveRun, open_run
from p8utils.protocol.folders import (
    MANIFEST,
    TABLES,
    Committed,
    RunLayout,
    check_output_location,
    committed,
    find_run,
    latest_run,
    layout,
    new_run_dir,
    read_features,
    read_manifest,
    read_pca,
    read_pca_file,
)
from p8utils.protocol.incremental import INCREMENTAL_KEY, IncrementalPlan, PartTally, plan_incremental
from p8utils.protocol.lease import LEASE_EXPIRY_S, LEASE_REFRESH_S, LeaseHolder
from p8utils.protocol.manifest import PYTHON_RECORD, RunOutcome, _versions, build_manifest  # noqa: F401 - _versions: tests
from p8utils.protocol.rowcheck import RowCheck

__all__ = [
    "INCREMENTAL_KEY",
    "LEASE_EXPIRY_S",
    "LEASE_REFRESH_S",
    "MANIFEST",
    "PYTHON_RECORD",
    "TABLES",
    "ActiveRun",
    "Committed",
    "IncrementalPlan",
    "LeaseHolder",
    "PartTally",
    "RowCheck",
    "RunLayout",
    "RunOutcome",
    "build_manifest",
    "check_output_location",
    "committed",
    "find_run",
    "latest_run",
    "layout",
    "new_run_dir",
    "open_run",
    "plan_incremental",
    "read_features",
    "read_manifest",
    "read_pca",
    "read_pca_file",
]
