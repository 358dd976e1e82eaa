"""Listing image files once per run, reading them, and decoding them robustly with Pillow.

:func:`list_images` fixes the set of files a run reports on: one row per
listed file, whatever happens to the file afterwards. A local folder is
listed with ``os.scandir`` (names Hadoop cannot represent, broken links and
unreadable entries become rows with a reason); an ``s3://`` folder with the
S3 API (``ListObjectsV2``: one request per 1,000 objects, nothing per object);
another Hadoop URI (or any URI with the ``spark`` reader) with Spark's file
index. The label of an image is the name of its parent
folder, kept exactly as it is on disk (spaces, unicode, ``%``, ``#``).

Nothing here raises on bad data: :func:`read_file` and
:func:`decode_image` return either the bytes / a ``uint8`` array or a short
reason from :data:`ERROR_REASONS`.
"""

from __future__ import annotations

import datetime as _dt
import io
import itertools
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from p8utils import storage
from p8utils.errors import ParameterError
from p8utils.validation import check_choice

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "DEFAULT_EXTENSIONS",
    "DEFAULT_IMAGES_PER_PARTITION",
    "images_per_task",
    "DEFAULT_MAX_PIXELS",
    "ERROR_REASONS",
    "LISTING_COLUMNS",
    "READERS",
    "TRANSIENT_REASONS",
    "UNLISTED_REASONS",
    "Listing",
    "check_input",
    "decode_files",
    "decode_image",
    "extension_glob",
    "list_images",
    "load_images",
    "normalise_extensions",
    "FILE_LIST_SUFFIXES",
    "is_file_list",
    "load_listed",
    "read_file",
    "resolve_reader",
    "task_count",
]

#: File extensions that count as images by default (matched case-insensitively:
#: ``.jpg``, ``.JPG``, ``.jpeg``, ``.JPEG``, ``.Jpg`` …).
DEFAULT_EXTENSIONS: Tuple[str, ...] = ("jpg", "jpeg")

#: Images declaring more pixels than this are refused (``too_large``) before
#: their pixels are decoded: a decompression bomb costs a header read, not RAM.
#: 64 Mpx covers every real camera photo (a 4000×3000 photo is 12 Mpx).
DEFAULT_MAX_PIXELS: int = 64_000_000

#: Images per Spark task by default at 224 px: large enough to amortise a task's fixed
#: cost (measured, ``make bench``), small enough to spread over the cores. Smaller inputs
#: cost less per image, so their tasks hold more (:func:`images_per_task`).
DEFAULT_IMAGES_PER_PARTITION: int = 256


def images_per_task(image_size: int, images_per_partition: Optional[int] = None) -> int:
    """Images per Spark task: ``images_per_partition`` when given, else scaled to the input's pixels.

    The default keeps a task's duration about that of
    :data:`DEFAULT_IMAGES_PER_PARTITION` images at 224 px (the engine's cost
    grows with the pixels): 256 at 224, 784 at 128, 1,394 at 96. At 96 px on
    8,640 real photos (2 cores, one session) the featurize stage ran at 1,212-1,215
    img/s with 256 per task, 1,458-1,491 with 1,024 (README › Performance).

    Returns
    -------
    int
        At least 1.
    """
    if images_per_partition is not None:
        return int(images_per_partition)
    return max(1, round(DEFAULT_IMAGES_PER_PARTITION * (224 / int(image_size)) ** 2))

#: The fixed vocabulary of the ``error`` column (null when the image gave features).
#: Listing and reading: ``missing``, ``unreadable``, ``bad_name``, ``empty``;
#: decoding: the others.
ERROR_REASONS: Tuple[str, ...] = (
    "missing",  # listed, then gone before it was read (moved or deleted while the run ran)
    "unreadable",  # cannot be opened or read: permission, broken symbolic link, not a regular file, I/O error
    "bad_name",  # the name cannot be stored or addressed (not valid UTF-8); the path column holds it escaped
    "empty",  # zero-byte file
    "lfs_pointer",  # a Git LFS pointer instead of the image (run `git lfs pull`)
    "not_an_image",  # Pillow does not recognise the bytes as an image
    "too_large",  # declared size above max_pixels (decompression bomb guard)
    "truncated",  # image data ends early
    "decode_error",  # recognised but could not be decoded
)

#: Reasons that may go away by themselves: an incremental run reads such files again.
TRANSIENT_REASONS: Tuple[str, ...] = ("missing", "unreadable")

#: Ways to list and read the input: ``python`` lists a local folder with
#: ``os.scandir`` (an ``s3://`` folder with ``ListObjectsV2``) and reads each
#: file in the Python worker that decodes it (S3: one ``GetObject`` per
#: object); ``spark`` lists with Spark's file index and reads with its
#: ``binaryFile`` source (any Hadoop filesystem: ``s3://``, ``hdfs://``; on S3
#: about five requests per object); ``auto`` is ``python`` for local and S3
#: inputs and ``spark`` otherwise.
READERS: Tuple[str, ...] = ("auto", "python", "spark")

#: An input ending like this is a file list (an input manifest, e.g. converted from S3 Inventory) instead of a
#: folder: one row per file, column ``path`` (local path or URI; relative local paths are taken from the
#: list's folder), optional ``label`` (default: the parent folder name).
FILE_LIST_SUFFIXES: Tuple[str, ...] = (".csv", ".csv.gz", ".parquet")

#: Columns of a listing (:func:`list_images`): one row per listed file.
LISTING_COLUMNS: Tuple[str, ...] = ("path", "label", "length", "modificationTime", "error")

#: Folder-level listing problems reported in the manifest's ``unlisted`` entries.
UNLISTED_REASONS: Tuple[str, ...] = (
    "unreadable_folder",  # a folder that cannot be listed (permission, I/O error)
    "symlink_loop",  # a symbolic link to a folder already listed (followed once only)
)

_LFS_MAGIC = b"version https://git-lfs"


def extension_glob(extensions: Sequence[str] = DEFAULT_EXTENSIONS) -> str:
    """Build a case-insensitive Hadoop glob matching the given extensions.

    Parameters
    ----------
    extensions : sequence of str
        Extensions without dot, e.g. ``("jpg", "jpeg")``.

    Returns
    -------
    str
        E.g. ``"*.{[jJ][pP][gG],[jJ][pP][eE][gG]}"``.
    """
    exts = normalise_extensions(extensions)
    parts = ["".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in e) for e in exts]
    return "*." + (parts[0] if len(parts) == 1 else "{" + ",".join(parts) + "}")


def normalise_extensions(extensions: Sequence[str]) -> Tuple[str, ...]:
    """Validate and lower-case extensions (``".JPG"`` → ``"jpg"``)."""
    if isinstance(extensions, str):
        extensions = [e for e in extensions.split(",")]
    exts = tuple(dict.fromkeys(e.strip().lstrip(".").lower() for e in extensions if e.strip()))
    bad = [e for e in exts if not e.isalnum()]
    if not exts or bad:
        raise ParameterError(
            f"extensions={list(extensions)!r} is not a list of file extensions. "
            "Fix: pass alphanumeric extensions without dot, e.g. ['jpg', 'jpeg']."
        )
    return exts


def _has_extension(name: str, exts: Tuple[str, ...]) -> bool:
    """Tell whether file ``name`` ends with one of ``exts`` (case-insensitive)."""
    return "." in name and name.rsplit(".", 1)[1].lower() in exts


def check_input(
    path: str,
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    spark: Optional[SparkSession] = None,
) -> None:
    """Fail fast when ``path`` is missing or holds no image; no Spark job runs.

    Parameters
    ----------
    path : str
        Local folder, ``s3://`` prefix (the S3 API answers) or other Hadoop
        URI (needs ``spark``: its JVM's ``FileSystem`` answers). Listing stops
        at the first image found.
    extensions : sequence of str
        Extensions that count as images.
    spark : SparkSession, optional
        Needed for non-local, non-S3 URIs only.

    Raises
    ------
    ParameterError
        Missing path (S3: no such bucket, or no object under the prefix), a
        path that is a file, or no image below it.
    """
    exts = normalise_extensions(extensions)
    if not path:
        raise ParameterError("input is empty. Fix: pass the folder of images (one sub-folder per class).")
    if is_file_list(path):
        if not storage.exists(path, spark):  # a file, or a folder of parquet files named like one
            raise ParameterError(f"input={path!r}: no such file list. Fix: pass an existing .csv or .parquet "
                                 "file with a 'path' column (see README, 'Big inputs').")
        return
    if storage.is_local(path):
        local = storage.local_path(path)
        if not local.exists():
            raise ParameterError(
                f"input={path!r} does not exist. Fix: pass an existing folder of images "
                "(one sub-folder per class), e.g. data_sample/."
            )
        if not local.is_dir():
            raise ParameterError(f"input={path!r} is a file. Fix: pass the folder that holds the class folders, "
                                 f"or a file list ({' / '.join(FILE_LIST_SUFFIXES)}) with a 'path' column.")
    elif storage.is_s3(path):
        _check_s3_input(path, exts)
        return
    elif not storage.exists(path, spark):
        raise ParameterError(f"input={path!r} does not exist. Fix: check the bucket/prefix (aws s3 ls {path}).")
    for name in storage.iter_files(path, spark):
        base = name.rsplit("/", 1)[-1]
        if _has_extension(base, exts) and not base.startswith((".", "_")):
            return
    raise ParameterError(
        f"input={path!r} holds no image with extension {'/'.join(exts)} (case-insensitive). "
        "Fix: point input at the folder holding one sub-folder per class of .jpg files, "
        "or pass extensions=[...] / --extensions to count other file types."
    )


def _check_s3_input(path: str, exts: Tuple[str, ...]) -> None:
    """:func:`check_input` for an ``s3://`` folder: list until the first image (1 request per 1,000 keys)."""
    _s3_rows(path, exts)


def _s3_rows(path: str, exts: Tuple[str, ...]) -> Iterator[tuple]:
    """Start listing the S3 folder ``path``: return its listing rows once the first image is found.

    The listing itself is the check (no request beyond the ``ListObjectsV2`` pages), so a run
    costs one request per 1,000 keys in all.

    Raises
    ------
    ParameterError
        No such bucket, listing denied, nothing under the prefix (or the prefix is an object),
        or no image among the objects.
    """
    _, bucket, key = storage.split_s3(path)
    counts = {"objects": 0}
    rows = _scan_s3(path, exts, counts)
    try:
        first = next(rows, None)
    except FileNotFoundError as exc:
        raise ParameterError(f"input={path!r}: the bucket {bucket!r} does not exist (or is not visible from this "
                             f"account/endpoint). Fix: check the bucket name (aws s3 ls s3://{bucket}/).") from exc
    except PermissionError as exc:
        raise ParameterError(f"input={path!r} cannot be listed: access denied. Fix: grant s3:ListBucket on "
                             f"arn:aws:s3:::{bucket} to this role (on EMR: the instance profile).") from exc
    if first is not None:
        return itertools.chain([first], rows)
    if counts["objects"] == 0:
        if key.strip("/") and not key.endswith("/") and storage.exists(path):
            raise ParameterError(f"input={path!r} is an object, not a folder. Fix: pass the prefix that holds the "
                                 "class folders (s3://bucket/prefix/), or a file list "
                                 f"({' / '.join(FILE_LIST_SUFFIXES)}) with a 'path' column.")
        raise ParameterError(f"input={path!r} does not exist: no object under this prefix. Fix: check the prefix "
                             f"(aws s3 ls {path.rstrip('/')}/).")
    raise ParameterError(
        f"input={path!r} holds no image with extension {'/'.join(exts)} (case-insensitive). "
        "Fix: point input at the prefix holding one sub-folder per class of .jpg files, "
        "or pass extensions=[...] / --extensions to count other file types."
    )


@dataclass(frozen=True)
class Listing:
    """The files a run reads, fixed at the start of the run.

    Attributes
    ----------
    frame : pyspark.sql.DataFrame
        One row per listed file, columns :data:`LISTING_COLUMNS`: ``path``
        (string, Spark's form ``file:/…`` or the URI), ``label`` (string,
        parent folder name), ``length`` (long, bytes; null when unknown),
        ``modificationTime`` (timestamp, millisecond precision), ``error``
        (string: a reason of :data:`ERROR_REASONS` found while listing, else
        null). Materialised (parquet or checkpoint): every action sees the
        same files.
    n_files : int
        Rows of ``frame``.
    unlisted : list of dict
        Folders that could not be listed: ``{"path": str, "reason": str}``,
        reason in :data:`UNLISTED_REASONS`.
    reader : str
        ``"python"`` or ``"spark"``: how the files are read (see :data:`READERS`).
    """

    frame: DataFrame = field(repr=False)
    n_files: int
    unlisted: List[Dict[str, str]] = field(default_factory=list)
    reader: str = "python"


def is_file_list(path: str) -> bool:
    """Tell whether the input ``path`` names a file list (:data:`FILE_LIST_SUFFIXES`) rather than a folder."""
    return str(path).lower().rstrip("/").endswith(FILE_LIST_SUFFIXES)


def resolve_reader(reader: str, path: str) -> str:
    """Return the concrete reader (``"python"`` or ``"spark"``) for ``path``.

    ``auto`` is ``python`` for local folders, ``s3://`` folders (listed with
    the S3 API, each object read with one ``GetObject`` by the worker) and
    file lists, ``spark`` for other URIs.

    Raises
    ------
    ParameterError
        Unknown reader, or ``"python"`` for a folder URI other than S3.
    """
    check_choice("reader", reader, READERS)
    python_ok = storage.is_local(path) or storage.is_s3(path) or is_file_list(path)
    if reader == "auto":
        return "python" if python_ok else "spark"
    if reader == "python" and not python_ok:
        raise ParameterError(
            f"reader='python' lists local and s3:// folders only, input={path!r} is another folder URI. "
            "Fix: reader='auto' or 'spark' (or pass a file list of its images)."
        )
    return reader


def list_images(
    spark: SparkSession,
    path: str,
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    *,
    dest: Optional[str] = None,
    reader: str = "auto",
) -> Listing:
    """List the images below ``path`` once, recursively, and fix the list for the run.

    Parameters
    ----------
    spark : pyspark.sql.SparkSession
    path : str
        Local folder, ``s3://bucket/prefix/`` or other Hadoop URI.
    extensions : sequence of str
        File extensions that count as images, case-insensitive.
    dest : str, optional
        Where to write the listing (parquet, e.g. the run's staging folder).
        Default: held in Spark (a local checkpoint).
    reader : str
        One of :data:`READERS`.

    Returns
    -------
    Listing

    Raises
    ------
    ParameterError
        ``path`` is missing or holds no image (checked before any Spark job).

    Notes
    -----
    Names starting with ``_`` or ``.`` are skipped, files and folders alike
    (Spark's convention for metadata such as ``_SUCCESS``). With the
    ``python`` reader a local folder is listed with ``os.scandir``, streamed
    to ``dest`` in chunks (the driver never holds the whole list), so names
    that Hadoop's local filesystem cannot represent (``e:f.jpg``), broken
    links and unreadable entries are listed too; folder symbolic links are
    followed once; an ``s3://`` folder is listed with ``ListObjectsV2`` (one
    request per 1,000 objects; ``length`` is the object's size,
    ``modificationTime`` its ``LastModified``), into the same rows. With the
    ``spark`` reader the listing is Spark's file index (kept in the JVM), which
    also holds zero-byte files that its reader skips.
    """
    exts = normalise_extensions(extensions)
    if storage.is_s3(path) and not is_file_list(path) and resolve_reader(reader, path) == "python":
        # listed with ListObjectsV2 only: the listing is its own check_input (1 request per 1,000 keys in all)
        return _write_listing(spark, _s3_rows(path, exts), [], dest)
    check_input(path, extensions, spark)
    how = resolve_reader(reader, path)
    if is_file_list(path):
        return _file_list_listing(spark, path, exts, dest, how)
    if how == "python":
        return _python_listing(spark, storage.local_path(path), exts, dest)
    return _spark_listing(spark, path, exts, dest)


_LISTING_SCHEMA = "path string, label string, length long, modificationTime timestamp, error string"
_CHUNK = 10_000  # listing rows held in memory at a time


def _python_listing(spark: SparkSession, root: Path, exts: Tuple[str, ...], dest: Optional[str]) -> Listing:
    """List a local folder with ``os.scandir``; write the rows in chunks to ``dest``."""
    unlisted: List[Dict[str, str]] = []
    return _write_listing(spark, _scan(root, exts, unlisted), unlisted, dest)


def _write_listing(spark: SparkSession, scan: Iterator[tuple], unlisted: List[Dict[str, str]],
                   dest: Optional[str]) -> Listing:
    """Write the rows of ``scan`` (``(path, label, length, mtime_ms, error)``) in chunks to ``dest`` (parquet).

    ``unlisted`` is read after ``scan`` is exhausted (the scan appends to it). A ``dest`` that is not local
    (an ``s3://`` staging folder) is written to a local temporary file first, then uploaded as one object.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("path", pa.string()), ("label", pa.string()), ("length", pa.int64()),
                        ("modificationTime", pa.timestamp("ms", tz="UTC")), ("error", pa.string())])
    n = 0
    if dest is None:
        rows: List[tuple] = []
        for row in scan:
            rows.append(row)
        frame = spark.createDataFrame(
            [(p, lb, ln, None if ms is None else _dt.datetime.fromtimestamp(ms / 1000, _dt.timezone.utc), e)
             for p, lb, ln, ms, e in rows], _LISTING_SCHEMA)
        return Listing(frame.localCheckpoint(eager=True), len(rows), unlisted, "python")
    import tempfile

    local = storage.is_local(dest)
    tmp = None if local else tempfile.TemporaryDirectory(prefix="p8utils-listing-")
    try:
        target = storage.local_path(dest) if local else Path(tmp.name)  # type: ignore[union-attr]
        target.mkdir(parents=True, exist_ok=True)
        with pq.ParquetWriter(str(target / "part-00000.parquet"), schema) as writer:
            chunk: List[tuple] = []
            for row in scan:
                chunk.append(row)
                n += 1
                if len(chunk) == _CHUNK:
                    writer.write_table(pa.Table.from_pylist([dict(zip(LISTING_COLUMNS, r)) for r in chunk], schema))
                    chunk.clear()
            if chunk:
                writer.write_table(pa.Table.from_pylist([dict(zip(LISTING_COLUMNS, r)) for r in chunk], schema))
        if not local:
            storage.upload_file(str(target / "part-00000.parquet"), storage.join(dest, "part-00000.parquet"), spark)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return Listing(spark.read.schema(_LISTING_SCHEMA).parquet(storage.spark_path(dest)), n, unlisted, "python")


def _scan_s3(uri: str, exts: Tuple[str, ...], counts: Optional[Dict[str, int]] = None) -> Iterator[tuple]:
    """Yield ``(path, label, length, mtime_ms, error)`` for every image object below the S3 folder ``uri``.

    One ``ListObjectsV2`` request per 1,000 keys, nothing per object. Rows as :func:`_scan`'s:
    ``path`` is ``scheme://bucket/key`` (the key verbatim, as Hadoop prints it), ``label`` the parent
    "folder", names (any segment below ``uri``) starting with ``_`` or ``.`` are skipped; in key order.
    ``counts["objects"]`` counts the objects seen, images or not.
    """
    scheme, bucket, key = storage.split_s3(uri)
    prefix = key.rstrip("/") + "/" if key.strip("/") else ""
    counts = {} if counts is None else counts
    counts.setdefault("objects", 0)
    for entry in storage.iter_s3_objects(uri):
        counts["objects"] += 1
        name = entry["Key"]
        rel = name[len(prefix):]
        parts = rel.split("/")
        if any(part.startswith((".", "_")) for part in parts) or not _has_extension(parts[-1], exts):
            continue
        path = f"{scheme}://{bucket}/{name}"
        size = int(entry["Size"])
        modified = entry["LastModified"]
        mtime_ms = int(round(modified.timestamp() * 1000)) if modified is not None else None
        yield path, path.rsplit("/", 2)[-2], size, mtime_ms, "empty" if size == 0 else None


def _scan(root: Path, exts: Tuple[str, ...], unlisted: List[Dict[str, str]]) -> Iterator[tuple]:
    """Yield ``(path, label, length, mtime_ms, error)`` for every image file below ``root``, sorted by name.

    Folder problems are appended to ``unlisted``.
    """
    seen = {os.path.realpath(root)}
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            unlisted.append({"path": _spark_local(folder)[0], "reason": "unreadable_folder", "detail": str(exc)})
            continue
        subfolders = []
        for entry in entries:
            name = entry.name
            if name.startswith((".", "_")):
                continue
            try:
                is_dir = entry.is_dir()  # follows symbolic links
            except OSError:
                is_dir = False
            if is_dir:
                real = os.path.realpath(entry.path)
                if real in seen:
                    unlisted.append({"path": _spark_local(entry.path)[0], "reason": "symlink_loop",
                                     "detail": f"links to {real}, listed already"})
                    continue
                seen.add(real)
                subfolders.append(entry.path)
                continue
            if _has_extension(name, exts):
                yield _file_row(entry.path)
        stack.extend(reversed(subfolders))


def _spark_local(path: str) -> Tuple[str, bool]:
    """Spark's ``path`` form of a local path (``file:/…``) and whether the name is valid UTF-8."""
    text = "file:" + os.path.abspath(path)
    try:
        text.encode("utf-8")
        return text, True
    except UnicodeEncodeError:  # undecodable bytes in the name (surrogate escapes)
        return os.fsencode(text).decode("utf-8", "backslashreplace"), False


def _file_row(path: str) -> tuple:
    """One listing row for the file at ``path`` (never raises)."""
    spark_path, ok = _spark_local(path)
    label = spark_path.rsplit("/", 2)[-2]
    if not ok:
        return spark_path, label, None, None, "bad_name"
    try:
        st = os.stat(path)  # follows a symbolic link: a broken one raises
    except OSError:
        return spark_path, label, None, None, "unreadable"
    if not stat.S_ISREG(st.st_mode):  # FIFO, socket, device: never opened
        return spark_path, label, None, None, "unreadable"
    return spark_path, label, int(st.st_size), st.st_mtime_ns // 1_000_000, "empty" if st.st_size == 0 else None


def _spark_listing(spark: SparkSession, path: str, exts: Tuple[str, ...], dest: Optional[str]) -> Listing:
    """Spark's file index of ``path`` (JVM-side, no per-file Python object) as a listing."""
    from pyspark.sql import DataFrame as SparkDataFrame
    from pyspark.sql import functions as F

    jvm = spark.sparkContext._jvm
    files = _binary_reader(spark, exts).load(storage.spark_path(path))
    uris = spark._jsparkSession.createDataset(
        jvm.scala.Predef.genericWrapArray(files._jdf.inputFiles()), jvm.org.apache.spark.sql.Encoders.STRING())
    index = SparkDataFrame(uris.toDF(), spark).withColumnRenamed("value", "uri")
    # inputFiles() percent-encodes (file:///a/b%20c.jpg); the path column is Hadoop's Path.toString (file:/a/b c.jpg)
    decoded = F.expr("reflect('java.net.URLDecoder', 'decode', replace(uri, '+', '%2B'), 'UTF-8')")
    index = index.select(F.regexp_replace(decoded, "^file:///", "file:/").alias("path"))
    meta = files.select("path", "length", "modificationTime")
    listed = index.join(meta, "path", "left")
    # Spark's reader makes no row for zero-byte files (nor for files gone since the index was made):
    # ask the filesystem about those few, on the driver
    odd = [r["path"] for r in listed.where(F.col("length").isNull()).select("path").limit(_MAX_STATUS).collect()]
    statuses = spark.createDataFrame([_hadoop_status(spark, p) for p in odd], _LISTING_SCHEMA)
    frame = listed.where(F.col("length").isNotNull()).select(
        "path",
        F.regexp_extract("path", r"([^/]*)/[^/]*$", 1).alias("label"),
        "length",
        "modificationTime",
        F.lit(None).cast("string").alias("error"),
    ).unionByName(statuses.select(
        "path", F.regexp_extract("path", r"([^/]*)/[^/]*$", 1).alias("label"), "length", "modificationTime", "error"))
    rest = listed.where(F.col("length").isNull()).join(statuses.select("path"), "path", "left_anti")
    frame = frame.unionByName(rest.select(  # beyond _MAX_STATUS odd files: not asked, reported missing
        "path", F.regexp_extract("path", r"([^/]*)/[^/]*$", 1).alias("label"), "length", "modificationTime",
        F.lit("missing").alias("error")))
    frame = _persist(frame, dest)
    return Listing(frame, frame.count(), [], "spark")


def _persist(frame: DataFrame, dest: Optional[str]) -> DataFrame:
    """Compute a listing once: into parquet at ``dest``, else checkpointed in the executors.

    The write's jobs have ended before an interruption or a failure goes on
    (the run then deletes ``dest``).
    """
    from p8utils.spark import jobs_ended_on_exit

    if dest is None:
        return frame.localCheckpoint(eager=True)
    spark = frame.sparkSession
    jobs_ended_on_exit(spark, lambda: frame.write.parquet(storage.spark_path(dest)))
    return spark.read.parquet(storage.spark_path(dest))


_MAX_STATUS = 10_000  # odd files of a Spark listing whose status is asked one by one on the driver


def _hadoop_status(spark: SparkSession, path: str) -> tuple:
    """``(path, label, length, modificationTime, error)`` of one file, from its Hadoop FileSystem status."""
    label = path.rsplit("/", 2)[-2] if path.count("/") >= 2 else ""
    try:
        jvm = spark.sparkContext._jvm
        hpath = jvm.org.apache.hadoop.fs.Path(path)
        st = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()).getFileStatus(hpath)
    except Exception as exc:  # noqa: BLE001 - py4j wraps FileNotFoundException / AccessControlException
        return path, label, None, None, "missing" if "FileNotFound" in str(exc) else "unreadable"
    length = int(st.getLen())
    mtime = _dt.datetime.fromtimestamp(int(st.getModificationTime()) / 1000, _dt.timezone.utc)
    return path, label, length, mtime, "empty" if length == 0 else "unreadable"


def _file_list_listing(spark: SparkSession, path: str, exts: Tuple[str, ...], dest: Optional[str],
                       how: str) -> Listing:
    """Make the listing of a file list: Spark reads it (nothing per file on the driver); each path once."""
    from pyspark.sql import functions as F

    where = storage.spark_path(path)
    table = spark.read.parquet(where) if path.lower().endswith(".parquet") else \
        spark.read.option("header", "true").option("escape", '"').csv(where)
    if "path" not in table.columns:
        raise ParameterError(f"input={path!r} has no 'path' column (columns: {table.columns}). Fix: one row per "
                             "file, a 'path' column of local paths or URIs, optionally a 'label' column.")
    base = storage.parent(storage.spark_path(path))
    raw = F.trim(F.col("path").cast("string"))
    local = ~raw.rlike(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # no scheme: a local path, relative to the list's folder
    absolute = F.when(raw.startswith("/"), raw).otherwise(F.concat(F.lit(base.rstrip("/") + "/"), raw))
    norm = F.when(local, F.concat(F.lit("file:"), absolute)).otherwise(
        F.regexp_replace(raw, "^file:///", "file:/"))
    # Every listed image counts, names starting with "_" or "." too: the list names them explicitly (a folder
    # listing skips them, the Hadoop convention for metadata files), and the workers read them themselves.
    name_ok = F.lower(F.regexp_extract(norm, r"\.([^./]*)$", 1)).isin(*exts)
    label = F.col("label").cast("string") if "label" in table.columns else F.lit(None).cast("string")
    frame = (table.where(raw.isNotNull() & (raw != "")).select(norm.alias("path"), label.alias("label"))
             .where(name_ok).groupBy("path").agg(F.first("label", ignorenulls=True).alias("label")))
    frame = frame.join(_file_list_stats(table, raw, norm), "path", "left").select(
        "path",
        F.coalesce("label", F.regexp_extract("path", r"([^/]*)/[^/]*$", 1)).alias("label"),
        "length",
        "modificationTime",
        F.lit(None).cast("string").alias("error"),
    )
    frame = _persist(frame, dest)
    n = frame.count()
    if n == 0:
        raise ParameterError(f"input={path!r} lists no file with extension {'/'.join(exts)}. Fix: check its 'path' "
                             "column, or pass extensions=[...] / --extensions.")
    return Listing(frame, n, [], how)


def _file_list_stats(table: DataFrame, raw, norm) -> DataFrame:  # noqa: ANN001 - Spark columns
    """Take ``length`` and ``modificationTime`` from a file list's own columns, where it has them.

    Columns ``length`` or ``size``, ``modificationTime`` or ``last_modified_date``
    (S3 Inventory's names); null otherwise. With them an incremental run tells
    changed files from unchanged ones; without them, by path only.
    """
    from pyspark.sql import functions as F

    size = next((c for c in ("length", "size") if c in table.columns), None)
    mtime = next((c for c in ("modificationTime", "last_modified_date") if c in table.columns), None)
    return table.where(raw.isNotNull() & (raw != "")).select(
        norm.alias("path"),
        (F.col(size).cast("long") if size else F.lit(None).cast("long")).alias("length"),
        (F.date_trunc("second", F.col(mtime).cast("timestamp")) if mtime else F.lit(None).cast("timestamp"))
        .alias("modificationTime"),
    ).dropDuplicates(["path"])


def _binary_reader(spark: SparkSession, exts: Tuple[str, ...]):  # noqa: ANN202 - a DataFrameReader
    """Spark's ``binaryFile`` reader: recursive, case-insensitive extensions, vanished files skipped."""
    return (
        spark.read.format("binaryFile")
        .option("pathGlobFilter", extension_glob(exts))
        .option("recursiveFileLookup", "true")
        # a file that vanishes or breaks after listing is skipped, not a failed job: the run then
        # gives it a row with error "missing"/"unreadable" (see p8utils.pipeline)
        .option("ignoreMissingFiles", "true")
        .option("ignoreCorruptFiles", "true")
    )


def task_count(n_files: int, images_per_partition: int, parallelism: int) -> int:
    """Choose the number of Spark tasks for ``n_files`` images: about ``images_per_partition`` each.

    Never fewer than ``parallelism`` (every core busy), and a multiple of it,
    so that the last wave of tasks keeps every core busy too.

    Returns
    -------
    int
        At least 1.
    """
    parallelism = max(1, int(parallelism))
    wanted = max(1, -(-int(n_files) // max(1, int(images_per_partition))))
    return parallelism * -(-wanted // parallelism)


def load_images(
    spark: SparkSession,
    path: str,
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
) -> DataFrame:
    """Read the images below ``path`` lazily with Spark's ``binaryFile`` source.

    For a quick look (a notebook's image grid) or for the ``spark`` reader;
    a run lists its input once with :func:`list_images` instead, so that the
    files it reports are exactly the files it listed.

    Parameters
    ----------
    spark : pyspark.sql.SparkSession
    path : str
        Local folder or Hadoop URI, searched recursively.
    extensions : sequence of str
        File extensions that count as images, case-insensitive.

    Returns
    -------
    pyspark.sql.DataFrame
        Columns ``path`` (string), ``label`` (string, parent folder name),
        ``content`` (binary), ``modificationTime`` (timestamp), ``length``
        (long). Zero-byte files and files that vanish before they are read
        have no row.

    Raises
    ------
    ParameterError
        ``path`` is missing or holds no image (checked before any Spark job).
    """
    from pyspark.sql import functions as F

    check_input(path, extensions, spark)  # a clear ParameterError, not Spark's PATH_NOT_FOUND
    raw = _binary_reader(spark, normalise_extensions(extensions)).load(storage.spark_path(path))
    return raw.select(
        "path",
        F.regexp_extract("path", r"([^/]*)/[^/]*$", 1).alias("label"),
        "content",
        "modificationTime",
        "length",
    )


def decode_files(
    paths: Sequence[str],
    size: Tuple[int, int],
    spark: Optional[SparkSession] = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Read and decode a few files on the driver (e.g. calibration images); bad ones are left out.

    Parameters
    ----------
    paths : sequence of str
        Local paths (``file:`` form accepted) or URIs (need ``spark``).
    size : (int, int)
        ``(width, height)`` to resize to.
    spark : pyspark.sql.SparkSession, optional
        Needed for non-local URIs.
    max_pixels : int
        As for :func:`decode_image`.

    Returns
    -------
    numpy.ndarray
        ``(m, height, width, 3)`` uint8, ``m <= len(paths)``: the files that decoded, in order.
    """
    out = []
    for path in paths:
        try:
            data = storage.read_bytes(path, spark)
        except Exception:  # noqa: BLE001 - gone or unreadable: not a calibration image
            continue
        arr, _ = decode_image(data, size, max_pixels)
        if arr is not None:
            out.append(arr)
    return np.stack(out) if out else np.empty((0, size[1], size[0], 3), np.uint8)


def load_listed(spark: SparkSession, listing: DataFrame) -> DataFrame:
    """Read the files of a listing (e.g. from a file list) with Spark's ``binaryFile`` source.

    The paths are collected on the driver and passed to the reader (glob
    characters escaped): for the ``spark`` reader of a file list. The
    ``python`` reader needs no such collection.

    Returns
    -------
    pyspark.sql.DataFrame
        As :func:`load_images`; files gone or unreadable have no row.
    """
    import re

    from pyspark.sql import functions as F

    paths = [re.sub(r"([\\*?\[\]{}])", r"\\\1", r["path"]) for r in listing.select("path").collect()]
    raw = (spark.read.format("binaryFile").option("ignoreMissingFiles", "true").option("ignoreCorruptFiles", "true")
           .load(paths))
    return raw.select("path", F.regexp_extract("path", r"([^/]*)/[^/]*$", 1).alias("label"), "content",
                      "modificationTime", "length")


def read_file(path: str, endpoint: Optional[str] = None) -> Tuple[Optional[bytes], Optional[str]]:
    """Read a listed file in the Python process (a local path, or an S3 object); never raises.

    Parameters
    ----------
    path : str
        Spark's form of a local path (``file:/…``), a plain path, or an
        ``s3://`` / ``s3a://`` / ``s3n://`` URI (one ``GetObject`` with boto3:
        the usual AWS credential chain, e.g. an EMR node's instance profile).
    endpoint : str, optional
        S3 endpoint URL, as :func:`p8utils.storage.s3_endpoint` gave it on the
        driver (a worker's environment is not the driver's); None: AWS's own.

    Returns
    -------
    (bytes or None, str or None)
        ``(content, None)``, or ``(None, "missing")`` when the file is gone,
        ``(None, "unreadable")`` when it cannot be opened or read.
    """
    if not storage.is_local(path):
        return _read_remote(path, endpoint)
    try:
        with open(storage.local_path(path), "rb") as fh:
            return fh.read(), None
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError):  # permission, is a directory, I/O error, NUL in the name
        return None, "unreadable"


def _read_remote(uri: str, endpoint: Optional[str] = None) -> Tuple[Optional[bytes], Optional[str]]:
    """Read an S3 object with one ``GetObject`` (:func:`p8utils.storage.read_object`); never raises."""
    if not storage.is_s3(uri):
        return None, "unreadable"  # the Python reader reads local files and S3; others go through Spark
    try:
        return storage.read_object(uri, endpoint), None
    except FileNotFoundError:  # NoSuchKey (404), or the bucket is gone
        return None, "missing"
    except Exception:  # noqa: BLE001 - access denied (403), network, throttling after retries
        return None, "unreadable"


def decode_image(
    data: Optional[bytes],
    size: Tuple[int, int] = (224, 224),
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """Decode image bytes to an RGB ``uint8`` array of the model's input size.

    Any source mode is converted to RGB (grayscale, palette, CMYK, 16-bit);
    transparency is composited on white (the Fruits-360 background); EXIF
    orientation is applied; the image is resized with bicubic interpolation
    (Pillow's default for RGB, as the earlier notebooks did). Large JPEGs are
    decoded at a reduced scale first (Pillow ``draft``), which bounds memory.

    Parameters
    ----------
    data : bytes or None
        The file's content.
    size : (int, int)
        Output ``(width, height)``.
    max_pixels : int
        Images declaring more pixels are refused with ``too_large``.

    Returns
    -------
    (numpy.ndarray or None, str or None)
        ``(array of shape (height, width, 3), dtype uint8, None)`` on success,
        ``(None, reason)`` otherwise, reason in :data:`ERROR_REASONS`.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if data is None or len(data) == 0:
        return None, "empty"
    data = bytes(data)
    if data.startswith(_LFS_MAGIC):
        return None, "lfs_pointer"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            return None, "too_large"
        except (UnidentifiedImageError, ValueError, TypeError):
            return None, "not_an_image"
        except (OSError, SyntaxError, EOFError):
            return None, "decode_error"
        try:
            width, height = img.size
            if width * height > max_pixels:
                return None, "too_large"
            if width < 1 or height < 1:
                return None, "decode_error"
            if img.format == "JPEG":
                img.draft("RGB", size)
            img = ImageOps.exif_transpose(img)
            img = _to_rgb(img)
            if img.size != tuple(size):
                img = img.resize(tuple(size), Image.BICUBIC)
            arr = np.asarray(img, dtype=np.uint8)
        except Image.DecompressionBombError:
            return None, "too_large"
        except OSError as exc:
            return None, "truncated" if "truncat" in str(exc).lower() else "decode_error"
        except (SyntaxError, ValueError, EOFError, IndexError, TypeError, ZeroDivisionError):
            return None, "decode_error"
    if arr.shape != (size[1], size[0], 3):  # pragma: no cover - defensive
        return None, "decode_error"
    return arr, None


def _to_rgb(img):  # noqa: ANN001, ANN202 - PIL.Image in, PIL.Image out
    """Convert any Pillow mode to RGB; transparency goes on a white background."""
    from PIL import Image

    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr * (255.0 / peak), 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "RGBX"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
