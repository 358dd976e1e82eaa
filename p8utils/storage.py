"""Small file operations on local paths, S3 URIs and other Hadoop URIs, driver and workers alike.

Three ways in, by the URI's scheme:

* local paths (no scheme, ``file:``): the standard library (no Spark needed, so parameters can be
  checked before any JVM starts);
* ``s3://``, ``s3a://``, ``s3n://``: the S3 API through boto3 (:func:`s3_client`, one client per
  process), on the driver and in the Python workers (:func:`read_object`);
* any other scheme (``hdfs://``, ``dbfs:``, ...): the Hadoop ``FileSystem`` of the session's JVM
  (driver-side metadata calls, not Spark jobs).

Why a store such as S3 is reached in two ways
---------------------------------------------
Spark's own readers and writers (``parquet``, ``binaryFile``) run in the JVM and need Hadoop's
connector: EMRFS for ``s3://`` on EMR, S3A locally (``fs.s3.impl``; the tests put ``hadoop-aws`` on
``spark.jars``). Every access made from Python (the driver's metadata, the run's lease and manifest,
the listing of an input folder, the workers' reads of image objects) goes through boto3 instead,
for two reasons:

* only the S3 API has conditional writes: ``PutObject`` with ``If-None-Match: *`` is an atomic
  create-if-absent (HTTP 412 when the key exists), which makes the run's lease safe
  (:func:`create_exclusive`); the Hadoop ``FileSystem.create(path, overwrite=False)`` of EMRFS/S3A is
  a ``HEAD`` then a ``PUT``, and two writers can both win;
* one request per operation: a read is one ``GetObject``, a write one ``PutObject``, a listing one
  ``ListObjectsV2`` per 1,000 keys, whereas the Hadoop connector probes with ``HEAD`` and ``LIST``
  requests on every call (``exists``, ``open``, ``create``; ``listFiles`` + ``binaryFile`` cost
  about five requests per file).

There is no rename here: on S3 a "rename" is a copy of every object then a delete, neither atomic nor
cheap. Write data under its final name and commit by writing one small object last (:mod:`p8utils.runs`).

Endpoint and credentials: the standard AWS configuration of the process (instance profile on EMR,
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL`` for an S3-compatible store or an emulator). The workers' environment is not the
driver's on a cluster, so code that reads from workers captures :func:`s3_endpoint` on the driver and
passes it to :func:`read_object`; credentials are never shipped, each node uses its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Set, Tuple
from urllib.parse import urlparse

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

__all__ = [
    "S3_SCHEMES",
    "Store",
    "is_local",
    "resolve_location",
    "is_s3",
    "s3_endpoint",
    "s3_client",
    "split_s3",
    "read_object",
    "stage_object",
    "publish_object",
    "abort_staged",
    "open_s3_object",
    "iter_s3_objects",
    "upload_file",
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
    "iter_files",
    "cache_dir",
    "read_cached",
    "write_cached",
]

log = logging.getLogger(__name__)


def resolve_location(name: str, uri: str) -> str:
    """Return the location a run uses for the ``input``/``output`` parameter ``name`` given as ``uri``.

    Databricks paths: ``dbfs:/Volumes/<catalog>/<schema>/<volume>/…`` is the Unity Catalog
    volume every node mounts at ``/Volumes/…``, so it becomes that local path (the run
    protocol's lease and manifest need a filesystem Python can write). Another ``dbfs:/…``
    works only on a Databricks cluster (its Hadoop FileSystem); elsewhere it is refused here,
    before any Spark job.

    Raises
    ------
    ParameterError
        ``dbfs:`` outside Databricks.
    """
    text = str(uri)
    if text.startswith("dbfs:/Volumes/"):
        return text[len("dbfs:"):]
    if text.startswith("dbfs:") and not os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        from p8utils.errors import ParameterError

        raise ParameterError(
            f"{name}={uri!r}: dbfs: exists only on a Databricks cluster. Fix: pass a Unity Catalog volume "
            "/Volumes/<catalog>/<schema>/<volume>/… (or its FUSE path /dbfs/… on a cluster), an s3:// URI, or, "
            "off Databricks, a local folder."
        )
    return text


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


# ------------------------------------------------------------------------------------------------
# S3 through boto3
# ------------------------------------------------------------------------------------------------
#: URI schemes served by the S3 API (boto3) on the Python side.
S3_SCHEMES: Tuple[str, ...] = ("s3", "s3a", "s3n")

_DELETE_BATCH = 1000  # keys per DeleteObjects request (the API's maximum)
_CLIENTS: Dict[Tuple[int, Optional[str]], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def is_s3(uri: str) -> bool:
    """Tell whether ``uri`` is an S3 URI (``s3://``, ``s3a://``, ``s3n://``)."""
    return urlparse(str(uri)).scheme.lower() in S3_SCHEMES and str(uri).split(":", 1)[1].startswith("//")


def split_s3(uri: str) -> Tuple[str, str, str]:
    """Split an S3 URI into ``(scheme, bucket, key)``; the key is kept verbatim.

    Keys are not percent-decoded and ``#`` or ``?`` are part of the key (Hadoop's
    ``Path`` strings, which Spark prints, are not URL-encoded), so
    ``s3://b/Apple Red/a#1.jpg`` gives ``("s3", "b", "Apple Red/a#1.jpg")``.

    Raises
    ------
    ValueError
        ``uri`` is not an S3 URI, or names no bucket.
    """
    text = str(uri)
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in S3_SCHEMES:
        raise ValueError(f"{text!r} is not an S3 URI (s3://bucket/key)")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{text!r} names no bucket. Fix: s3://bucket/prefix/")
    return scheme.lower(), bucket, key


def s3_endpoint() -> Optional[str]:
    """Return the S3 endpoint this process is configured for, or None for AWS's own.

    ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL`` (the variables boto3 >= 1.28 honours
    itself). Capture it on the driver and pass it to :func:`read_object` in the workers:
    their environment is not the driver's on a cluster.
    """
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_client(endpoint: Optional[str] = None) -> Any:
    """Return this process's boto3 S3 client for ``endpoint`` (created once, thread-safe).

    Parameters
    ----------
    endpoint : str, optional
        Endpoint URL; None: boto3's own configuration (environment, config file), which on
        the driver gives the same as :func:`s3_endpoint`.

    Returns
    -------
    botocore.client.S3
    """
    key = (os.getpid(), endpoint)  # a forked Python worker makes its own client
    client = _CLIENTS.get(key)
    if client is None:
        with _CLIENTS_LOCK:
            client = _CLIENTS.get(key)
            if client is None:
                import boto3  # imported here: `import p8utils.storage` stays cheap
                from botocore.config import Config

                # s3v4: presigned URLs too (botocore presigns with Signature Version 2 otherwise, which
                # regions opened since 2014 refuse)
                config = Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=32,
                                signature_version="s3v4")
                client = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
                _CLIENTS[key] = client
    return client


def _client_error(exc: Exception) -> Tuple[str, int]:
    """``(error code, HTTP status)`` of a botocore ``ClientError`` (``("", 0)`` for other errors)."""
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _is_missing(exc: Exception) -> bool:
    code, status = _client_error(exc)
    return code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound") or status == 404


def _os_error(exc: Exception, uri: str) -> OSError:
    """Translate a boto3 error about ``uri`` into FileNotFoundError, PermissionError or OSError."""
    code, status = _client_error(exc)
    if _is_missing(exc):
        return FileNotFoundError(f"{uri}: {code or 'not found'} ({exc})")
    if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled") or status == 403:
        return PermissionError(f"{uri}: access denied ({exc}). Fix: grant s3:GetObject/s3:ListBucket/"
                               "s3:PutObject on it to this role (on EMR: the EC2 instance profile)")
    return OSError(f"{uri}: {exc}")


def _s3_call(uri: str, call: Any, /, **kwargs: Any) -> Any:
    """Call a client method; botocore errors become OSError subclasses (see :func:`_os_error`)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call(**kwargs)
    except (ClientError, BotoCoreError) as exc:
        raise _os_error(exc, uri) from exc


def read_object(uri: str, endpoint: Optional[str] = None) -> bytes:
    """Read a whole S3 object with one ``GetObject`` (for the workers: pass the driver's endpoint).

    The request is a presigned URL sent on the client's HTTP session (:func:`_presigned_get`:
    1.3-1.7 ms of CPU per object against get_object's 1.9-2.2, 16 threads on moto); whatever
    that does not answer with the whole object (an error, a redirect) is asked again with
    ``get_object``, whose errors are raised.

    Parameters
    ----------
    uri : str
        ``s3://bucket/key`` (``s3a``/``s3n`` too).
    endpoint : str, optional
        The endpoint captured on the driver with :func:`s3_endpoint`.

    Returns
    -------
    bytes

    Raises
    ------
    FileNotFoundError
        No such key or bucket.
    PermissionError
        Access denied.
    OSError
        Any other failure (network, throttling after retries, ...).
    """
    _, bucket, key = split_s3(uri)
    client = s3_client(endpoint)
    if bucket not in _PRESIGNED_REFUSED:
        data = _presigned_get(client, bucket, key, uri)
        if data is not None:
            return data
    answer = _s3_call(uri, client.get_object, Bucket=bucket, Key=key)
    try:
        return answer["Body"].read()
    except Exception as exc:  # noqa: BLE001 - a connection broken mid-body
        raise OSError(f"{uri}: {exc}") from exc


#: Seconds a presigned ``GetObject`` URL of :func:`_presigned_get` stays valid (it is used at once).
_PRESIGNED_SECONDS = 300
#: Buckets whose presigned reads were redirected (a bucket in another region than the client's):
#: :func:`read_object` reads them with ``get_object``, which follows the redirect, from then on.
_PRESIGNED_REFUSED: Set[str] = set()


def _presigned_get(client: Any, bucket: str, key: str, uri: str) -> Optional[bytes]:
    """Return the object's bytes read through a presigned ``GetObject`` URL, or None: then use ``get_object``.

    A call of ``client.get_object`` costs about 2 ms of CPU in botocore (its event hooks,
    serializers, parsers) besides the request itself: more than decoding and featurizing a
    96 px photo. Here botocore still resolves the endpoint, region and credentials and signs
    (``generate_presigned_url``, ~0.2 ms), and the request goes through the client's own
    HTTP session (its pool, proxies and TLS settings); only a whole ``200`` answer is used.
    A ``404`` raises FileNotFoundError (a vanished photo costs one request too); anything else
    (an error status, a redirect, a broken or short body, a botocore without the session)
    returns None, and ``get_object``'s retries and errors take over.

    Raises
    ------
    FileNotFoundError
        No such key or bucket (``uri`` names it).
    """
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    if session is None:
        return None
    from botocore.awsrequest import AWSRequest

    try:
        url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                            ExpiresIn=_PRESIGNED_SECONDS)
        response = session.send(AWSRequest(method="GET", url=url).prepare())
        data = response.content  # read whole, even an error's body: the connection goes back to the pool
        expected = response.headers.get("content-length")
    except Exception:  # noqa: BLE001 - connection errors, timeouts: get_object retries
        return None
    if response.status_code == 404:
        code = re.search(rb"<Code>([^<]{1,64})</Code>", data)
        raise FileNotFoundError(f"{uri}: {code.group(1).decode(errors='replace') if code else 'not found'} (HTTP 404)")
    if response.status_code != 200:
        if response.status_code in (301, 307, 400):  # PermanentRedirect, TemporaryRedirect, region mismatch
            _PRESIGNED_REFUSED.add(bucket)
        return None
    if expected is not None and int(expected) != len(data):
        return None  # a connection closed mid-body (the session does not check the length)
    return data


def stage_object(uri: str, data: bytes, endpoint: Optional[str] = None) -> str:
    """Write ``data`` for ``uri`` where no reader sees it until :func:`publish_object` (for the workers).

    Hadoop's S3A "magic" committer's way on S3: the task uploads the object as
    a multipart upload it does not complete (one ``CreateMultipartUpload``,
    one ``UploadPart``); the driver completes it once the job succeeded, a
    request that copies nothing. On a local disk: a hidden file next to
    ``uri`` (``.<name>.pending``; Spark and pyarrow skip names starting with
    ``.``), renamed by :func:`publish_object`. What is never published is
    removed by :func:`abort_staged` (S3) or with the folder's unnamed files.

    Parameters
    ----------
    uri : str
        Where the object will be: a local path or ``s3://bucket/key``.
    data : bytes
        Its content (at most 5 GiB on S3: one part).
    endpoint : str, optional
        The S3 endpoint captured on the driver with :func:`s3_endpoint`.

    Returns
    -------
    str
        The token :func:`publish_object` takes (JSON on S3, the hidden name locally).

    Raises
    ------
    OSError
        The write failed; a full disk's error names the file.
    """
    if is_local(uri):
        target = local_path(uri)
        hidden = target.with_name(f".{target.name}.pending")
        try:
            hidden.parent.mkdir(parents=True, exist_ok=True)
            hidden.write_bytes(data)
        except OSError as exc:  # Python's write errors name no file: name it (the run's message says which device)
            hidden.unlink(missing_ok=True)  # what a full disk let through
            raise OSError(exc.errno, exc.strerror, str(hidden)) from exc
        return hidden.name
    _, bucket, key = split_s3(uri)
    client = s3_client(endpoint)
    upload = _s3_call(uri, client.create_multipart_upload, Bucket=bucket, Key=key)["UploadId"]
    part = _s3_call(uri, client.upload_part, Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=bytes(data))
    return json.dumps({"upload": upload, "etag": part["ETag"]})


def publish_object(uri: str, token: str) -> None:
    """Make the object :func:`stage_object` staged for ``uri`` visible, whole (on the driver).

    S3: one ``CompleteMultipartUpload`` (the object appears at once, nothing
    is copied); local: a rename.
    """
    if is_local(uri):
        target = local_path(uri)
        os.replace(target.with_name(token), target)
        return
    _, bucket, key = split_s3(uri)
    staged = json.loads(token)
    _s3_call(uri, s3_client(s3_endpoint()).complete_multipart_upload, Bucket=bucket, Key=key,
             UploadId=staged["upload"], MultipartUpload={"Parts": [{"ETag": staged["etag"], "PartNumber": 1}]})


def abort_staged(folder: str) -> None:
    """Abort the uploads :func:`stage_object` left unpublished under the S3 prefix ``folder`` (no-op elsewhere).

    One ``ListMultipartUploads`` per 1,000 uploads, one ``AbortMultipartUpload`` each.
    """
    if not is_s3(folder):
        return
    _, bucket, key = split_s3(folder)
    client = s3_client(s3_endpoint())
    prefix = key.rstrip("/") + "/"
    pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix)
    for page in _s3_call(folder, lambda: list(pages)):
        for upload in page.get("Uploads", []):
            _s3_call(folder, client.abort_multipart_upload, Bucket=bucket, Key=upload["Key"],
                     UploadId=upload["UploadId"])


#: The first request of :func:`open_s3_object` fetches this much of the object's end: a parquet file's footer
#: (pyarrow reads 64 KiB there first), and the whole object when it is no larger.
S3_TAIL_BYTES = 64 * 1024


class _S3Object(io.RawIOBase):
    """One S3 object as a seekable, read-only binary file.

    Its tail is fetched on opening; any other read is one ranged ``GetObject``, so a parquet reader fetches
    only the column chunks it needs.
    """

    def __init__(self, uri: str, endpoint: Optional[str]) -> None:
        super().__init__()
        _, self._bucket, self._key = split_s3(uri)
        self._uri, self._client, self._pos = uri, s3_client(endpoint), 0
        try:
            self._tail, size = self._get(f"bytes=-{S3_TAIL_BYTES}")
        except OSError as exc:
            if _client_error(exc.__cause__)[0] != "InvalidRange":
                raise
            self._tail, size = b"", 0  # S3 refuses any range of an empty object
        self._size = len(self._tail) if size is None else size
        self._tail_start = self._size - len(self._tail)

    def _get(self, byte_range: str) -> Tuple[bytes, Optional[int]]:
        """Return the bytes of ``byte_range`` and the object's size (None when the answer was the whole object)."""
        answer = _s3_call(self._uri, self._client.get_object, Bucket=self._bucket, Key=self._key, Range=byte_range)
        found = str(answer.get("ContentRange") or "")  # "bytes 0-99/1234"
        try:
            return answer["Body"].read(), int(found.rsplit("/", 1)[1]) if "/" in found else None
        except Exception as exc:  # noqa: BLE001 - a connection broken mid-body
            raise OSError(f"{self._uri}: {exc}") from exc

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        start, end = self._pos, min(self._pos + len(buffer), self._size)
        if end <= start:
            return 0
        if start >= self._tail_start:
            data = self._tail[start - self._tail_start:end - self._tail_start]
        else:
            data = self._get(f"bytes={start}-{end - 1}")[0]
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)


def open_s3_object(uri: str, endpoint: Optional[str] = None) -> io.RawIOBase:
    """Open an S3 object for reading parts of it: a parquet reader then fetches only what it reads.

    Opening costs one ranged ``GetObject`` for the last :data:`S3_TAIL_BYTES`
    (the whole object when it is smaller); every read outside that tail costs
    one more, of exactly the bytes read.

    Parameters
    ----------
    uri : str
        ``s3://bucket/key`` (``s3a``/``s3n`` too).
    endpoint : str, optional
        As for :func:`read_object`.

    Returns
    -------
    io.RawIOBase
        Seekable, read-only, binary.

    Raises
    ------
    FileNotFoundError, PermissionError, OSError
        As :func:`read_object`, on opening or on a read.
    """
    return _S3Object(uri, endpoint)


def upload_file(local: str, uri: str, spark: Optional[SparkSession] = None) -> None:
    """Copy the local file ``local`` to ``uri`` (S3: one PutObject, multipart above 8 MB)."""
    if is_local(uri):
        target = local_path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, target)
    elif is_s3(uri):
        _, bucket, key = split_s3(uri)
        client = s3_client(s3_endpoint())
        _s3_call(uri, client.upload_file, Filename=str(local), Bucket=bucket, Key=key)
    else:
        with open(local, "rb") as fh:
            write_bytes(uri, fh.read(), spark)


def _s3_keys(uri: str, prefix: str) -> Iterator[Dict[str, Any]]:
    """Yield the ``Contents`` entries of every object under ``prefix`` of ``uri``'s bucket (1 LIST per 1,000)."""
    _, bucket, _ = split_s3(uri)
    client = s3_client(s3_endpoint())
    token = None
    while True:
        kwargs = {"Bucket": bucket, "Prefix": prefix}
        if token:
            kwargs["ContinuationToken"] = token
        page = _s3_call(uri, client.list_objects_v2, **kwargs)
        yield from page.get("Contents", [])
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            return


def iter_s3_objects(uri: str) -> Iterator[Dict[str, Any]]:
    """Yield every object below the S3 folder ``uri``: ``ListObjectsV2`` entries (``Key``, ``Size``, ``LastModified``).

    Paginated, lazy: one request per 1,000 keys, in key order; folder markers (keys ending
    in ``/``) are left out.

    Raises
    ------
    FileNotFoundError
        No such bucket.
    PermissionError
        Listing denied.
    """
    _, _, key = split_s3(uri)
    for entry in _s3_keys(uri, _s3_folder_prefix(key)):
        if not entry["Key"].endswith("/"):
            yield entry


def _s3_folder_prefix(key: str) -> str:
    """Return the listing prefix of the "folder" ``key``: ``a/b`` and ``a/b/`` give ``a/b/``, the root ``""``."""
    return key.rstrip("/") + "/" if key.strip("/") else ""


def _s3_exists(uri: str) -> bool:
    scheme, bucket, key = split_s3(uri)
    client = s3_client(s3_endpoint())
    from botocore.exceptions import ClientError

    if key and not key.endswith("/"):
        try:
            client.head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as exc:
            if not _is_missing(exc):
                raise _os_error(exc, uri) from exc
    try:
        page = client.list_objects_v2(Bucket=bucket, Prefix=_s3_folder_prefix(key), MaxKeys=1)
    except ClientError as exc:
        if _is_missing(exc):
            return False
        raise _os_error(exc, uri) from exc
    return bool(page.get("KeyCount") or page.get("Contents") or page.get("CommonPrefixes") or not key.strip("/"))


def _s3_create_exclusive(uri: str, data: bytes) -> bool:
    _, bucket, key = split_s3(uri)
    client = s3_client(s3_endpoint())
    from botocore.exceptions import ClientError

    try:
        client.put_object(Bucket=bucket, Key=key, Body=bytes(data), IfNoneMatch="*")
    except ClientError as exc:
        code, status = _client_error(exc)
        # 412: the key exists; 409: another conditional write to it is in flight (S3 asks to retry;
        # whoever retries then finds the key taken, so this writer has lost either way)
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
            return False
        raise _os_error(exc, uri) from exc
    return True


def _s3_list_dir(uri: str) -> List[str]:
    _, bucket, key = split_s3(uri)
    client = s3_client(s3_endpoint())
    prefix = _s3_folder_prefix(key)
    names = set()
    token = None
    while True:
        kwargs = {"Bucket": bucket, "Prefix": prefix, "Delimiter": "/"}
        if token:
            kwargs["ContinuationToken"] = token
        try:
            page = client.list_objects_v2(**kwargs)
        except Exception as exc:  # noqa: BLE001 - botocore errors
            if _is_missing(exc):
                return []  # no such bucket: an absent folder, as on a filesystem
            raise _os_error(exc, uri) from exc
        names.update(p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", []))
        names.update(o["Key"][len(prefix):] for o in page.get("Contents", []))
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            break
    names.discard("")  # the folder's own marker object ("prefix/")
    return sorted(names)


def _s3_delete(uri: str) -> None:
    _, bucket, key = split_s3(uri)
    if not key.strip("/"):
        raise ValueError(f"refusing to delete the whole bucket {uri!r}: name a key or a prefix inside it")
    client = s3_client(s3_endpoint())
    prefix = _s3_folder_prefix(key)
    batch: List[str] = [] if key.endswith("/") else [key]  # the key itself, if an object, and the tree below it
    try:
        for entry in _s3_keys(uri, prefix):
            batch.append(entry["Key"])
            if len(batch) == _DELETE_BATCH:
                _s3_delete_batch(client, uri, bucket, batch)
                batch = []
    except FileNotFoundError:
        return  # no such bucket: nothing to delete
    if batch:
        _s3_delete_batch(client, uri, bucket, batch)


def _s3_delete_batch(client: Any, uri: str, bucket: str, keys: List[str]) -> None:
    answer = _s3_call(uri, client.delete_objects, Bucket=bucket,
                      Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
    errors = [e for e in answer.get("Errors", []) if e.get("Code") != "NoSuchKey"]
    if errors:
        raise OSError(f"{uri}: could not delete {len(errors)} object(s), e.g. s3://{bucket}/{errors[0].get('Key')}: "
                      f"{errors[0].get('Code')} {errors[0].get('Message', '')}")


def _s3_iter_files(uri: str) -> Iterator[str]:
    scheme, bucket, key = split_s3(uri)
    found = False
    for entry in iter_s3_objects(uri):
        found = True
        yield f"{scheme}://{bucket}/{entry['Key']}"
    if not found and key and not key.endswith("/"):
        try:  # a single object, as a filesystem lists a file
            s3_client(s3_endpoint()).head_object(Bucket=bucket, Key=key)
        except Exception as exc:  # noqa: BLE001 - botocore errors
            if _is_missing(exc):
                return
            raise _os_error(exc, uri) from exc
        yield f"{scheme}://{bucket}/{key}"


# ------------------------------------------------------------------------------------------------
# Other Hadoop filesystems, through the session's JVM
# ------------------------------------------------------------------------------------------------
def _hadoop_fs(spark: SparkSession, uri: str):  # noqa: ANN202 - py4j objects
    """Return ``(FileSystem, Path)`` JVM objects for ``uri``."""
    if spark is None:
        raise ValueError(f"a SparkSession is needed to access {uri!r}")
    jvm = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(uri)
    try:
        return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path
    except Exception as exc:  # noqa: BLE001 - py4j wraps Hadoop's UnsupportedFileSystemException
        if "No FileSystem for scheme" not in str(exc):
            raise
        from p8utils.errors import ParameterError

        raise ParameterError(f"{uri!r}: this Spark has no filesystem for the scheme {urlparse(uri).scheme!r}. Fix: "
                             "pass a local folder or an s3:// URI, or add that filesystem's connector to Spark."
                             ) from None


def exists(uri: str, spark: Optional[SparkSession] = None) -> bool:
    """Tell whether a file or folder exists at ``uri``."""
    if is_local(uri):
        return local_path(uri).exists()
    if is_s3(uri):
        return _s3_exists(uri)
    fs, path = _hadoop_fs(spark, uri)
    return bool(fs.exists(path))


def read_bytes(uri: str, spark: Optional[SparkSession] = None) -> bytes:
    """Read a whole file (driver side; for small files such as manifests or weights).

    Raises
    ------
    FileNotFoundError
        No such file (S3: no such key or bucket).
    """
    if is_local(uri):
        return local_path(uri).read_bytes()
    if is_s3(uri):
        return read_object(uri, s3_endpoint())
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
    sees half a file; an S3 object is written by one ``PutObject`` (S3 has no folders).
    """
    if is_local(uri):
        target = local_path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        except BaseException:  # a full disk, an interruption: no half-written temporary file left
            tmp.unlink(missing_ok=True)
            raise
        return
    if is_s3(uri):
        _, bucket, key = split_s3(uri)
        _s3_call(uri, s3_client(s3_endpoint()).put_object, Bucket=bucket, Key=key, Body=bytes(data))
        return
    fs, path = _hadoop_fs(spark, uri)
    stream = fs.create(path, True)
    try:
        stream.write(bytearray(data))
    finally:
        stream.close()


def create_exclusive(uri: str, data: bytes, spark: Optional[SparkSession] = None) -> bool:
    """Create the file ``uri`` holding ``data`` only if it does not exist yet.

    Parent folders are created. Atomic on a local filesystem (a hard link of a
    complete temporary file, which fails when the name exists), on
    S3 (one conditional ``PutObject`` with ``If-None-Match: *``: HTTP 412 when
    the key exists, 409 when another conditional write to it is in flight;
    both mean another writer won) and on HDFS (``FileSystem.create`` without
    overwrite). A retried S3 request whose first attempt did succeed also
    answers 412: callers that must know re-read the object to see whose it is.

    Returns
    -------
    bool
        True if this call created the file, False if it existed already.
    """
    if is_local(uri):
        target = local_path(uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.link(tmp, target)  # atomic create-if-absent of the whole content: a reader never sees it half written
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True
    if is_s3(uri):
        return _s3_create_exclusive(uri, data)
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
    """Return the names of the entries directly inside the folder ``uri`` (empty if absent), sorted.

    On S3: the objects and the "folders" (common prefixes) directly under ``uri/``
    (``ListObjectsV2`` with delimiter ``/``, one request per 1,000 entries).
    """
    if is_local(uri):
        folder = local_path(uri)
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if is_s3(uri):
        return _s3_list_dir(uri)
    fs, path = _hadoop_fs(spark, uri)
    if not fs.exists(path):
        return []
    return sorted(str(st.getPath().getName()) for st in fs.listStatus(path))


def delete(uri: str, spark: Optional[SparkSession] = None) -> None:
    """Delete a file or a folder tree at ``uri`` (no error when absent).

    On S3: the object ``uri`` and every object under ``uri/`` (listed, then
    ``DeleteObjects`` 1,000 keys at a time). A whole bucket is never deleted.
    """
    if is_local(uri):
        target = local_path(uri)
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        return
    if is_s3(uri):
        _s3_delete(uri)
        return
    fs, path = _hadoop_fs(spark, uri)
    fs.delete(path, True)


def iter_files(uri: str, spark: Optional[SparkSession] = None) -> Iterator[str]:
    """Yield every file below ``uri``, recursively (lazily; stops when you stop).

    Local files are yielded as absolute paths, others as full URIs. On S3: every
    object under ``uri/`` (``ListObjectsV2``, 1 request per 1,000 keys), or the
    object ``uri`` itself; FileNotFoundError when the bucket does not exist.
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
    if is_s3(uri):
        yield from _s3_iter_files(uri)
        return
    fs, path = _hadoop_fs(spark, uri)
    it = fs.listFiles(path, True)
    while it.hasNext():
        yield str(it.next().getPath().toString())


@dataclass(frozen=True)
class Store:
    """The file operations of one place (a run folder), with the session they may need, bound once.

    Local paths and S3 URIs need no session; other Hadoop URIs (``hdfs://``)
    use ``spark``'s JVM. Holders of a ``Store`` (:class:`p8utils.runs.RunLayout`)
    call ``store.exists(uri)`` instead of passing a session along every call.

    Attributes
    ----------
    spark : pyspark.sql.SparkSession or None
        The session for Hadoop URIs; None for local folders and S3.
    """

    spark: Optional[SparkSession] = None

    def exists(self, uri: str) -> bool:
        """:func:`exists` with this store's session."""
        return exists(uri, self.spark)

    def read_bytes(self, uri: str) -> bytes:
        """:func:`read_bytes` with this store's session (FileNotFoundError when absent)."""
        return read_bytes(uri, self.spark)

    def write_bytes(self, uri: str, data: bytes) -> None:
        """:func:`write_bytes` with this store's session."""
        write_bytes(uri, data, self.spark)

    def create_exclusive(self, uri: str, data: bytes) -> bool:
        """:func:`create_exclusive` with this store's session."""
        return create_exclusive(uri, data, self.spark)

    def list_dir(self, uri: str) -> List[str]:
        """:func:`list_dir` with this store's session."""
        return list_dir(uri, self.spark)

    def delete(self, uri: str) -> None:
        """:func:`delete` with this store's session."""
        delete(uri, self.spark)


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
