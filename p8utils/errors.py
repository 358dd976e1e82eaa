"""Exceptions raised by p8utils.

Every message names the parameter, the bad value and the fix, so that a user
reading a failed papermill run or an EMR step log knows what to change.
"""

from __future__ import annotations

import os
import re
from typing import List, Optional

__all__ = [
    "DamagedRunFileError",
    "Interrupted",
    "OutputBusyError",
    "OutputExistsError",
    "P8UtilsError",
    "ParameterError",
    "RunCheckError",
    "WeightsUnavailableError",
    "describe_failure",
    "failure_text",
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


class DamagedRunFileError(ParameterError):
    """A file of the run protocol (manifest, PCA model, moments, lease) cannot be read.

    The message names the file and the fix.
    """


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run (raised in the main thread by the command line's signal handler).

    A :class:`KeyboardInterrupt`, so that ``except Exception`` clauses let it
    through and Py4J closes the connection it interrupted, as for Ctrl-C;
    ``try/finally`` blocks (the run's cleanup) run on the way out.

    Parameters
    ----------
    signum : int
        The signal received (``signal.SIGINT`` or ``signal.SIGTERM``).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        import signal

        return f"stopped by {signal.Signals(self.signum).name}"


# --------------------------------------------------------------------------- failures of Spark jobs and storage

_URI = re.compile(r"\b(s3[an]?://[^\s'\"(),;<>]+)")
_WRITING = re.compile(r"Task failed while writing rows to ((?:file:|s3[an]?:|hdfs:)?/\S*?)\.?(?:\s|$)")
_NO_SPACE = re.compile(r"No space left on device|\[Errno 28\]|\bENOSPC\b|Disk quota exceeded|\[Errno 122\]")
_NO_SPACE_PATH = (re.compile(r"No space left on device: '([^']+)'"),  # Python's OSError
                  re.compile(r"(?:Exception|Error): ((?:file:)?/[^\s(]+) \((?:No space left on device|Disk quota "
                             r"exceeded)\)"),  # java.io.FileNotFoundException: /x/y (No space left on device)
                  _WRITING)  # the folder Spark was writing (Spark >= 3.4 names it)
_DENIED = re.compile(r"Permission denied|\[Errno 13\]|AccessControlException|java\.nio\.file\.AccessDeniedException|"
                     r"Operation not permitted|\[Errno 1\]")
_DENIED_PATH = (re.compile(r"(?:Permission denied|Operation not permitted): '([^']+)'"),  # Python's PermissionError
                re.compile(r"inode=\"([^\"]+)\""),  # HDFS AccessControlException
                re.compile(r"(?:Exception|Error): ((?:file:)?/[^\s(]+) \((?:Permission denied|Operation not "
                           r"permitted)\)"),  # java.io.FileNotFoundException: /x/y (Permission denied)
                re.compile(r"AccessDeniedException: ((?:file:)?/[^\s:]+)"),  # java.nio
                _WRITING)
_READ_ONLY = re.compile(r"Read-only file system|\[Errno 30\]|\bEROFS\b")
_READ_ONLY_PATH = (re.compile(r"Read-only file system: '([^']+)'"),
                   re.compile(r"(?:Exception|Error): ((?:file:)?/[^\s(]+) \(Read-only file system\)"))
_MKDIRS = re.compile(r"Mkdirs failed to create ((?:file:)?/[^\s(]+)")
_S3_DENIED = re.compile(r"Error Code: AccessDenied|\(AccessDenied\)|<Code>AccessDenied</Code>|AWS Error ACCESS_DENIED|"
                        r"AccessDeniedException: s3[an]?://|Access Denied \(Service: Amazon S3|"
                        r"Status Code: 403; Error Code: (?:AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch)")
_S3_NO_BUCKET = re.compile(r"NoSuchBucket|NO_SUCH_BUCKET|The specified bucket does not exist|"
                           r"Bucket \S+ does not exist|UnknownStoreException")
_S3_SLOW = re.compile(r"SlowDown|SLOW_DOWN|Please reduce your request rate|AWSServiceThrottledException|"
                      r"Status Code: 503|ThrottlingException")
_KEY = re.compile(r"key '([^']+)' in bucket '([^']+)'")
_BUCKET = (re.compile(r"[Bb]ucket '([^']+)'"), re.compile(r"<BucketName>([^<]+)</BucketName>"),
           re.compile(r"Bucket (\S+) does not exist"))


def failure_text(exc: BaseException) -> str:
    """Return the text of an exception and of every exception it was raised from or while handling.

    A ``Py4JJavaError``'s text is the Java stack trace with its ``Caused by:``
    lines; a PySpark ``CapturedException`` adds its JVM stack trace. Reading a
    ``Py4JJavaError``'s text asks the JVM: when that fails, the exception's
    own arguments stand in.

    Parameters
    ----------
    exc : BaseException

    Returns
    -------
    str
        The texts, one block per exception, outermost first.
    """
    parts: List[str] = []
    seen = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        try:
            text = str(current)
        except Exception:  # noqa: BLE001 - the JVM is gone: Py4JJavaError.__str__ asks it
            text = " ".join(str(a) for a in current.args)
        kind = type(current).__name__ if type(current).__module__ == "builtins" else \
            f"{type(current).__module__}.{type(current).__name__}"
        parts.append(f"{kind}: {text}")
        trace = getattr(current, "_stackTrace", None)  # pyspark.errors CapturedException
        if isinstance(trace, str):
            parts.append(trace)
        if isinstance(current, OSError) and current.filename is not None and str(current.filename) not in text:
            parts.append(f"path: {current.filename}")
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def _first(patterns: tuple, text: str) -> Optional[str]:
    for pattern in patterns:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


def _local(path: str) -> str:
    return path[len("file:"):] if path.startswith("file:") else path


def _folder_of(path: str, output: str) -> str:
    """Return the folder to name for ``path``: ``output`` when ``path`` is inside it, else the path's folder."""
    path, root = _local(path).rstrip("/"), _local(output).rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        return output
    return os.path.dirname(path) or path


def describe_failure(exc: BaseException, output: str) -> Optional[str]:
    """Say in words why a run failed, when the cause is a known storage fault.

    Looks through the whole exception chain (Python ``OSError``, Py4J's Java
    stack trace, Spark's ``Caused by:`` lines, a Python worker's traceback)
    for: a full device, a permission refused, a read-only file system, a folder
    that cannot be created, and S3's ``AccessDenied``, ``NoSuchBucket`` and
    ``SlowDown`` (throttling).

    Parameters
    ----------
    exc : BaseException
        What stopped the run.
    output : str
        The run's output folder or URI (named when the fault's own text names
        no path).

    Returns
    -------
    str or None
        A few lines: the cause, then ``Fix: …``; None when the cause is none
        of the above.
    """
    text = failure_text(exc)
    uri = _URI.search(text)
    key = _KEY.search(text)  # pyarrow's S3 filesystem names the key and the bucket apart
    where = (uri.group(1).rstrip(":.`'") if uri else f"s3://{key.group(2)}/{key.group(1)}" if key else output)
    if _S3_NO_BUCKET.search(text):
        bucket = _first(_BUCKET, text) or (where.split("/")[2] if where.startswith("s3") and "//" in where else None)
        return (f"S3 bucket {bucket or '(not named)'} does not exist (NoSuchBucket; while reading or writing {where})\n"
                "Fix: check the bucket name in --input/--output and that it is in the cluster's account and region.")
    if _S3_DENIED.search(text):
        return (f"S3 refused access (AccessDenied): {where}\n"
                "Fix: give the role of the cluster's nodes (the EC2 instance profile, e.g. EMR_EC2_DefaultRole) "
                "s3:ListBucket, s3:GetObject, s3:PutObject and s3:DeleteObject on that bucket and prefix; check the "
                "bucket policy and, with SSE-KMS, kms:Decrypt/GenerateDataKey.")
    if _S3_SLOW.search(text):
        return (f"S3 throttled the requests (SlowDown, HTTP 503) on {where}; the retries gave up\n"
                "Fix: run again later; or fewer concurrent requests (fewer executors or cores), more retries "
                "(EMRFS fs.s3.maxRetries, S3A fs.s3a.retry.throttle.limit), the objects spread over more prefixes.")
    if _NO_SPACE.search(text):
        path = _first(_NO_SPACE_PATH, text)
        if path is None:
            return (f"no space left on a device: the output's ({output}) or Spark's scratch folder's "
                    "(spark.local.dir, default /tmp)\n"
                    "Fix: free space there (df -h shows which is full), or write to a larger device.")
        return (f"no space left on the device of {_folder_of(path, output)}\n"
                "Fix: free space there (df -h), or write the run to a larger device (--output).")
    if _READ_ONLY.search(text):
        path = _first(_READ_ONLY_PATH, text)
        return (f"read-only file system: {_local(path) if path else output}\n"
                "Fix: write the run to a writable folder (--output).")
    if _DENIED.search(text):
        path = _first(_DENIED_PATH, text)
        return (f"permission denied: {_local(path) if path else output}\n"
                "Fix: give the user running p8utils (and Spark's executors) write access there, or choose another "
                "--output.")
    mkdirs = _MKDIRS.search(text)
    if mkdirs:
        return (f"could not create the folder {_local(mkdirs.group(1))} (no write access to its parent, or a file "
                "is in the way)\nFix: check the permissions of the folders above it, or choose another --output.")
    return None
