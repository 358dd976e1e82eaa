"""Small file operations on local paths and Hadoop URIs (``s3://``, ``hdfs://``).

Local paths are handled with the standard library (no Spark needed, so
parameters can be checked before any JVM starts). Other URIs go through the
Hadoop ``FileSystem`` of the session's JVM: on EMR that is EMRFS for ``s3://``.
These are driver-side metadata calls, not Spark jobs.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, List, Optional
from urllib.parse import urlparse

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

__all__ = [
    "is_local",
    "local_path",
    "spark_path",
    "join",
    "parent",
    "exists",
    "read_bytes",
    "write_bytes",
    "create_exclusive",
    "list_dir",
    "delete",
    "rename",
    "iter_files",
    "cache_dir",
    "read_cached",
    "write_cached",
]

log = logging.getLogger(__name__)


def is_local(uri: str) -> bool:
    """Tell whether ``uri`` is a local path (no scheme, or ``file:``)."""
    scheme = urlparse(str(uri)).scheme
    return scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt")


def local_path(uri: str) -> Path:
    """Return the absolute local :class:`~pathlib.Path` of a local ``uri``.

    Spark prints local paths as Hadoop ``Path`` strings, *not* percent-encoded:
    ``file:/a/Apple Red 1/x.jpg`` gives ``/a/Apple Red 1/x.jpg``, and a folder
    literally named ``a%20b`` stays ``a%20b``. ``file:///a`` gives ``/a``.
    """
    uri = str(uri)
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    elif uri.startswith("file:"):
        uri = uri[len("file:"):]
    return Path(uri).expanduser().absolute()


def spark_path(uri: str) -> str:
    """Return the string to give Spark's readers and writers for ``uri``.

    Local paths become absolute paths without scheme (what Spark prints back
    as ``file:/…``); other URIs are returned unchanged.
    """
    return str(local_path(uri)) if is_local(uri) else str(uri)


def join(base: str, *parts: str) -> str:
    """Join path segments onto a local path or a URI with ``/``."""
    base = str(base)
    if is_local(base) and not base.startswith("file:"):
        return str(Path(base).joinpath(*parts))
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def parent(uri: str) -> str:
    """Return the folder holding ``uri`` (local path or URI)."""
    uri = str(uri)
    if is_local(uri) and not uri.startswith("file:"):
        return str(Path(uri).parent)
    return uri.rstrip("/").rsplit("/", 1)[0]


def _hadoop_fs(spark: SparkSession, uri: str):  # noqa: ANN202 - py4j objects
    """Return ``(FileSystem, Path)`` JVM objects for ``uri``."""
    if spark is None:
        raise ValueError(f"a SparkSession is needed to access {uri!r}")
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path


def exists(uri: str, spark: Optional[SparkSession] = None) -> bool:
    """Tell whether a file or folder exists at ``uri``."""
    if is_local(uri):
        return local_path(uri).exists()
    fs, path = _hadoop_fs(spark, uri)
    return bool(fs.exists(path))


def read_bytes(uri: str, spark: Optional[SparkSession] = None) -> bytes:
    """Read a whole file (driver side; for small files such as manifests or weights)."""
    if is_local(uri):
        return local_path(uri).read_bytes()
    fs, path = _hadoop_fs(spark, uri)
    stream = fs.open(path)
    try:
        # py4j hands a Java byte[] return value over as Python bytes in one piece.
        return bytes(spark.sparkContext._jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
    finally:
        stream.close()


def write_bytes(uri: str, data: bytes, spark: Optional[SparkSession] = None) -> None:
    """Write ``data`` to ``uri``, replacing it; parent folders are created.

    Local files are written to a temporary name then renamed, so a reader never
    sees half a file.
    """
    if is_local(uri):
        target = local_path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return
    fs, path = _hadoop_fs(spark, uri)
    stream = fs.create(path, True)
    try:
        stream.write(bytearray(data))
    finally:
        stream.close()


def create_exclusive(uri: str, data: bytes, spark: Optional[SparkSession] = None) -> bool:
    """Create the file ``uri`` holding ``data`` only if it does not exist yet.

    Parent folders are created. Atomic on a local filesystem (``O_EXCL``) and
    on HDFS (``FileSystem.create`` without overwrite); on S3 the existence
    check and the write are separate requests, so two writers racing within
    milliseconds may both succeed: callers re-read the file to see who won.

    Returns
    -------
    bool
        True if this call created the file, False if it existed already.
    """
    if is_local(uri):
        target = local_path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        return True
    fs, path = _hadoop_fs(spark, uri)
    if fs.exists(path):
        return False
    try:
        stream = fs.create(path, False)
    except Exception as exc:  # noqa: BLE001 - py4j wraps FileAlreadyExistsException
        if "AlreadyExists" in str(exc):
            return False
        raise
    try:
        stream.write(bytearray(data))
    finally:
        stream.close()
    return True


def list_dir(uri: str, spark: Optional[SparkSession] = None) -> List[str]:
    """Return the names of the entries directly inside the folder ``uri`` (empty if absent), sorted."""
    if is_local(uri):
        folder = local_path(uri)
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    fs, path = _hadoop_fs(spark, uri)
    if not fs.exists(path):
        return []
    return sorted(str(st.getPath().getName()) for st in fs.listStatus(path))


def delete(uri: str, spark: Optional[SparkSession] = None) -> None:
    """Delete a file or a folder tree at ``uri`` (no error when absent)."""
    if is_local(uri):
        target = local_path(uri)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        return
    fs, path = _hadoop_fs(spark, uri)
    fs.delete(path, True)


def rename(src: str, dst: str, spark: Optional[SparkSession] = None) -> None:
    """Move ``src`` to ``dst`` (``dst`` must not exist; its parent is created).

    Atomic on a local filesystem and HDFS; on S3 a rename copies then deletes.
    """
    if is_local(src) and is_local(dst):
        target = local_path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(local_path(src), target)
        return
    fs, src_path = _hadoop_fs(spark, src)
    _, dst_path = _hadoop_fs(spark, dst)
    fs.mkdirs(dst_path.getParent())
    if not fs.rename(src_path, dst_path):
        raise OSError(f"could not rename {src} to {dst}")


def iter_files(uri: str, spark: Optional[SparkSession] = None) -> Iterator[str]:
    """Yield every file below ``uri``, recursively (lazily; stops when you stop).

    Local files are yielded as absolute paths, others as full URIs.
    """
    if is_local(uri):
        root = local_path(uri)
        if root.is_file():
            yield str(root)
            return
        for dirpath, _dirs, files in os.walk(root):
            for name in sorted(files):
                yield os.path.join(dirpath, name)
        return
    fs, path = _hadoop_fs(spark, uri)
    it = fs.listFiles(path, True)
    while it.hasNext():
        yield str(it.next().getPath().toString())


def cache_dir(kind: str) -> str:
    """Local folder of one kind of cached artefact: ``$P8UTILS_CACHE/<kind>``, default ``~/.cache/p8utils/<kind>``.

    Converted models and offline weights are kept there, keyed by what makes them,
    so a second run does not pay their preparation again.
    """
    root = os.environ.get("P8UTILS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "p8utils")
    return os.path.join(root, kind)


def read_cached(path: str) -> Optional[bytes]:
    """Return the cached file at ``path`` if whole (its SHA-256 equals the ``.sha256`` file next to it), else None."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        with open(path + ".sha256", encoding="ascii") as fh:
            expected = fh.read().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if hashlib.sha256(data).hexdigest() != expected:
        log.warning("ignoring a corrupt or partial cached file %s: it is rebuilt", path)
        return None
    return data


def _write_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_cached(path: str, data: bytes) -> None:
    """Store ``data`` at ``path`` with its SHA-256 next to it; a read-only cache is reported, never fatal.

    The data is written first: a reader trusts the pair only when they agree.
    """
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _write_atomically(path, data)
        _write_atomically(path + ".sha256", hashlib.sha256(data).hexdigest().encode("ascii"))
    except OSError as exc:
        log.warning("could not cache %s (%s): set P8UTILS_CACHE to a writable folder to keep it", path, exc)
