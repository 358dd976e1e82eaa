"""S3 for the tests: moto's server (:mod:`tests.harness.aws_emulator`) seen as an S3 endpoint.

:class:`S3Emulator` wraps a running emulator: fresh buckets with unique names, folder uploads, and the
S3 operations it received between two points (every request is recorded), so a test can assert what a
piece of code costs in requests::

    mark = s3.mark()
    storage.list_dir(uri)
    assert s3.calls(since=mark) == {"ListObjectsV2": 1}

The fixtures of ``tests/conftest.py`` build it: ``s3`` (this object; the process environment points boto3
at it) and ``s3_spark`` (the shared Spark session with the S3A connector pointed at it too).
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from . import aws_emulator

#: Throw-away credentials (moto accepts any).
ACCESS_KEY, SECRET_KEY = "AKIAEMULATOR0000TEST", "test"
REGION = aws_emulator.REGION

#: Hadoop settings that point S3A (and s3://, s3n:// through S3A) at an endpoint; ``{url}`` is replaced.
HADOOP_S3A = {
    "fs.s3a.endpoint": "{url}",
    "fs.s3a.path.style.access": "true",
    "fs.s3a.connection.ssl.enabled": "false",
    "fs.s3a.access.key": ACCESS_KEY,
    "fs.s3a.secret.key": SECRET_KEY,
    "fs.s3a.endpoint.region": REGION,
    "fs.s3a.aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
    "fs.s3a.change.detection.mode": "none",
    "fs.s3.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
    "fs.s3n.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
}

_counter = itertools.count()


def operation(request: Dict[str, Any]) -> str:
    """Name the S3 operation of one recorded request (``GetObject``, ``ListObjectsV2``, ...)."""
    method, query, headers = request["method"], request["query"], request["headers"]
    host = headers.get("host", "").split(":")[0]
    path = request["path"].lstrip("/")
    virtual = host.endswith(".localhost")  # virtual-host style: the bucket is in the host name
    key = path if virtual else path.partition("/")[2]
    params = {p.split("=", 1)[0] for p in query.split("&") if p}
    if not key:  # bucket-level
        if method == "GET":
            if "list-type" in params:
                return "ListObjectsV2"
            if "uploads" in params:
                return "ListMultipartUploads"
            return "ListObjects" if not params or params & {"prefix", "delimiter", "marker", "max-keys"} \
                else "GetBucket:" + ",".join(sorted(params))
        if method == "POST" and "delete" in params:
            return "DeleteObjects"
        return {"HEAD": "HeadBucket", "PUT": "CreateBucket", "DELETE": "DeleteBucket"}.get(method, method + " bucket")
    if method == "PUT":
        if "partNumber" in params:
            return "UploadPart"
        return "CopyObject" if "x-amz-copy-source" in headers else "PutObject"
    if method == "POST":
        if "uploads" in params:
            return "CreateMultipartUpload"
        return "CompleteMultipartUpload" if "uploadId" in params else "POST object"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in params else "DeleteObject"
    return {"GET": "GetObject", "HEAD": "HeadObject"}.get(method, method + " object")


class S3Emulator:
    """An S3 endpoint for tests: ``url``, ``client``, :meth:`bucket`, :meth:`upload`, :meth:`mark`, :meth:`calls`."""

    def __init__(self, emulator: aws_emulator.Emulator) -> None:
        import boto3

        self.emulator = emulator
        self.url = emulator.url
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=self.url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY)

    def env(self) -> Dict[str, str]:
        """The variables that point boto3 (and the aws CLI) in this process or a subprocess at the emulator."""
        return {"AWS_ENDPOINT_URL_S3": self.url, "AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION,
                "AWS_EC2_METADATA_DISABLED": "true"}

    def hadoop_conf(self) -> Dict[str, str]:
        """Hadoop settings for S3A (``s3://``, ``s3a://``, ``s3n://``) against the emulator."""
        return {k: v.format(url=self.url) for k, v in HADOOP_S3A.items()}

    def subprocess_env(self, jars: Iterable[Path], base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """Environment for a subprocess that runs Spark (``python -m p8utils run ...``) against the emulator.

        boto3's variables, the S3A ``jars`` appended to the driver's class path (``SPARK_DIST_CLASSPATH``, as
        for every test JVM: tests/conftest.py) and ``PYSPARK_SUBMIT_ARGS`` with :meth:`hadoop_conf` as
        ``spark.hadoop.*`` settings, so its new session's Spark reads and writes ``s3://`` here too.
        """
        env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("AWS_")}
        env.update(self.env())
        confs = " ".join(f"--conf spark.hadoop.{k}={v}" for k, v in self.hadoop_conf().items())
        env["SPARK_DIST_CLASSPATH"] = os.pathsep.join(str(j) for j in jars)
        env["PYSPARK_SUBMIT_ARGS"] = f"{confs} pyspark-shell"
        return env

    def bucket(self, prefix: str = "t") -> str:
        """Create a bucket with a fresh name (``<prefix>-<n>-<random>``) and return that name."""
        name = f"{prefix.lower()}-{next(_counter)}-{uuid.uuid4().hex[:8]}"[:63]
        self.client.create_bucket(Bucket=name)
        return name

    def upload(self, folder: Path, uri: str, files: Optional[Iterable[Path]] = None) -> List[str]:
        """Upload every file below ``folder`` (or only ``files``) under ``uri`` (``s3://bucket/prefix``),
        keeping their relative paths; return their URIs, in the order uploaded."""
        bucket, _, prefix = uri[len("s3://"):].partition("/") if uri.startswith("s3://") else ("", "", "")
        if not bucket:
            raise ValueError(f"{uri!r} is not an s3:// URI")
        folder = Path(folder)
        chosen = sorted(p for p in folder.rglob("*") if p.is_file()) if files is None else list(files)
        out = []
        for f in chosen:
            key = "/".join(x for x in (prefix.strip("/"), f.relative_to(folder).as_posix()) if x)
            self.client.put_object(Bucket=bucket, Key=key, Body=f.read_bytes())
            out.append(f"s3://{bucket}/{key}")
        return out

    def mark(self) -> int:
        """A point in the request log, for :meth:`requests` / :meth:`calls` ``since``."""
        return len(self.emulator.requests())

    def requests(self, since: int = 0) -> List[Dict[str, Any]]:
        """S3 requests received since ``mark`` (moto's own ``/moto-api/`` calls left out), each with ``op``."""
        out = []
        for r in self.emulator.requests()[since:]:
            if r["path"].startswith("/moto-api") or r["target"]:
                continue
            out.append(dict(r, op=operation(r)))
        return out

    def calls(self, since: int = 0, bucket: Optional[str] = None) -> Counter:
        """Count the S3 operations received since ``mark`` (optionally on one bucket only)."""
        return Counter(r["op"] for r in self.requests(since) if bucket is None or _bucket_of(r) == bucket)

    def keys(self, bucket: str, prefix: str = "") -> List[str]:
        """Every key of ``bucket`` under ``prefix`` (the emulator records these LISTs too: count before calling)."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _bucket_of(request: Dict[str, Any]) -> str:
    host = request["headers"].get("host", "").split(":")[0]
    if host.endswith(".localhost"):
        return host.split(".")[0]
    return request["path"].lstrip("/").partition("/")[0]


def set_environ(values: Dict[str, str]) -> Dict[str, Optional[str]]:
    """Set ``values`` in ``os.environ``; return the previous values (None: unset) for :func:`restore_environ`."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    return saved


def restore_environ(saved: Dict[str, Optional[str]]) -> None:
    """Undo :func:`set_environ`."""
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def split(uri: str) -> Tuple[str, str]:
    """``s3://bucket/key`` → ``(bucket, key)``."""
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    return bucket, key
