"""Folder layout of a run and run discovery: where everything is, what the manifest commits, reading it.

Nothing here writes: the lease is :mod:`p8utils.protocol.lease`, the commit
:mod:`p8utils.protocol.commit`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

from p8utils import storage
from p8utils.errors import DamagedRunFileError, ParameterError

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

# Public names: re-exported by p8utils.runs, the protocol's public face (its __all__ lists them).

MANIFEST = "manifest.json"
LEASE = "_lease.json"
STAGING = "_staging"
#: The two tables of a run, each a folder of parquet part files named by the manifest.
TABLES: Tuple[str, ...] = ("features", "pca")
#: Files of the run protocol itself (not a run's content).
PROTOCOL = (LEASE, STAGING, "_trash")


def _place(*parts: str, doc: str) -> property:
    """Make a :class:`RunLayout` property: the path ``<root>/<parts...>``."""
    return property(lambda layout: layout._sub(*parts), doc=doc)


@dataclass(frozen=True)
class RunLayout:
    """Where everything of one run folder is, and the store that reaches it (nothing is created).

    Attributes
    ----------
    root : str
        The run folder (local absolute path or URI).
    store : p8utils.storage.Store
        The folder's file operations, bound once to the session a Hadoop URI
        needs (none for local folders and S3). Not part of equality.
    """

    root: str
    store: storage.Store = field(default_factory=storage.Store, compare=False, repr=False)

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

    def with_spark(self, spark: Optional[SparkSession]) -> RunLayout:
        """Return this layout whose store uses ``spark`` (unchanged when ``spark`` is None or already bound)."""
        if spark is None or self.store.spark is not None:
            return self
        return RunLayout(self.root, storage.Store(spark))

    def part_files(self, table: str) -> List[str]:
        """Names of the data files in ``table``'s folder (``part-…``; not ``_SUCCESS`` nor checksums)."""
        return [n for n in self.store.list_dir(getattr(self, table)) if n.startswith("part-")]


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


def layout(output: Union[str, RunLayout], spark: Optional[SparkSession] = None) -> RunLayout:
    """Return the :class:`RunLayout` of the run folder ``output``.

    Parameters
    ----------
    output : str or RunLayout
        Local path (made absolute) or URI; a layout is returned as it is
        (bound to ``spark`` if it had no session).
    spark : pyspark.sql.SparkSession, optional
        Bound into the layout's store; needed for Hadoop URIs other than S3.
    """
    if isinstance(output, RunLayout):
        return output.with_spark(spark)
    if storage.is_local(output) and not str(output).startswith("file:"):
        return RunLayout(str(storage.local_path(output)), storage.Store(spark))
    return RunLayout(str(output).rstrip("/"), storage.Store(spark))


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
    run = layout(path, spark)
    if run.store.exists(run.manifest) or run.store.exists(run.features):
        return run
    if run.store.exists(run.root) and run.root.rstrip("/").rsplit("/", 1)[-1] == "features":
        return layout(storage.parent(run.root), spark)
    raise ParameterError(
        f"{path!r} holds no features/ dataset. Fix: pass a run folder written by notebook 01/02 or "
        "`python -m p8utils run` (it holds features/), or that features/ folder itself."
    )


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

    Returns
    -------
    dict
        The manifest (a JSON object).

    Raises
    ------
    ParameterError
        No manifest: the run is missing or did not complete.
    DamagedRunFileError
        The manifest is not valid JSON (truncated, overwritten by hand …).
    """
    lay = layout(output, spark)
    try:
        data = lay.store.read_bytes(lay.manifest)
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
    lay = layout(run, spark)
    try:
        manifest = read_manifest(lay)
    except DamagedRunFileError:
        raise
    except ParameterError:
        return None
    files = manifest.get("files")
    if files is None:  # legacy layout: whole folders, fixed names
        pca_names = lay.store.list_dir(lay.pca)
        return Committed({n: -1 for n in lay.part_files("features")}, {n: -1 for n in pca_names
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


def read_parts(lay: RunLayout, table: str, names: List[str], spark: SparkSession) -> DataFrame:
    """Read the part files ``names`` of ``table`` (at least one) as one DataFrame."""
    return spark.read.parquet(*[storage.spark_path(lay.file(table, n)) for n in names])


def read_parquet_arrow(uris: List[str], columns: List[str]) -> Optional[Any]:
    """Read parquet files on the driver, without Spark: local files, or S3 objects by ranged GETs.

    An S3 object costs one GET for its footer (the whole object when it is
    under 64 KiB, :func:`p8utils.storage.open_s3_object`) and one per column
    chunk read beyond it: the row check reads ``path`` and ``error``, not the
    features.

    For tables small enough to hold on the driver (the row check and the PCA
    fit of small runs: no Spark job, no JVM round trip).

    Parameters
    ----------
    uris : list of str
        Parquet files (local paths or ``s3://``/``s3a://`` URIs).
    columns : list of str
        Columns to read; a ``file`` column (str, the file's name) is added.

    Returns
    -------
    pyarrow.Table or None
        ``columns`` + ``file``, one row per parquet row, in file order; None
        when a file is on another store (``hdfs://``: read it with Spark).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not all(storage.is_local(u) or storage.is_s3(u) for u in uris):
        return None
    parts = []
    for uri in uris:
        if storage.is_local(uri):
            part = pq.read_table(str(storage.local_path(uri)), columns=columns)
        else:
            with storage.open_s3_object(uri, storage.s3_endpoint()) as source:
                part = pq.read_table(source, columns=columns)
        part = part.append_column("file", pa.array([uri.rstrip("/").rsplit("/", 1)[-1]] * part.num_rows, pa.string()))
        # Spark marks a column "not null" in the files where no row could be null (e.g. error rows of unread files)
        parts.append(part.cast(pa.schema([f.with_nullable(True) for f in part.schema])))
    return pa.concat_tables(parts) if parts else None


def _read_table(run: Union[str, RunLayout], table: str, spark: SparkSession) -> DataFrame:
    lay = layout(run, spark) if isinstance(run, RunLayout) else find_run(str(run), spark)
    files = committed(lay)
    if files is None:
        raise ParameterError(f"no {MANIFEST} in {lay.root!r}: it holds no complete run. Fix: pass a run folder "
                             "written by notebook 01/02 or `python -m p8utils run`, once that run has ended.")
    names = sorted(getattr(files, table))
    if not names:  # an empty table (e.g. no image could be featurized): its schema, no rows
        return spark.read.parquet(storage.spark_path(getattr(lay, table))).limit(0)
    return read_parts(lay, table, names, spark)


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
    lay = layout(run, spark)
    files = committed(lay)
    name = None if files is None else getattr(files, f"pca_{kind}")
    if name is None:
        return None
    try:
        return lay.file("pca", name), lay.store.read_bytes(lay.file("pca", name))
    except FileNotFoundError:
        raise DamagedRunFileError(f"{lay.manifest} names {lay.file('pca', name)}, which is gone. Fix: write the run "
                                  "again with mode='overwrite'.") from None
