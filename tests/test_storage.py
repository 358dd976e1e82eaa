from __future__ import annotations

from pathlib import Path

import pytest

from p8utils import storage


def test_local_path_forms(tmp_path):
    assert storage.local_path("file:/a/Apple Red 1/x.jpg") == Path("/a/Apple Red 1/x.jpg")
    assert storage.local_path("file:///a/b") == Path("/a/b")
    assert storage.local_path("file:/a/b%20c") == Path("/a/b%20c"), "Spark paths are not percent-encoded"
    assert storage.is_local("/x") and storage.is_local("file:/x") and storage.is_local("rel/x")
    assert not storage.is_local("s3://bucket/x") and not storage.is_local("hdfs:///x")
    assert storage.join("s3://b/p/", "features") == "s3://b/p/features"
    assert storage.join(str(tmp_path), "a", "b") == str(tmp_path / "a" / "b")


def test_local_roundtrip(tmp_path):
    f = storage.join(str(tmp_path), "deep", "dir", "m.json")
    assert not storage.exists(f)
    storage.write_bytes(f, b"hello")
    assert storage.read_bytes(f) == b"hello" and storage.exists(f)
    assert list(storage.iter_files(str(tmp_path))) == [f]
    storage.delete(str(tmp_path / "deep"))
    assert not storage.exists(str(tmp_path / "deep"))
    storage.delete(str(tmp_path / "absent"))  # no error


def test_an_interrupted_local_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "m.npz"
    target.write_bytes(b"before")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(storage.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        storage.write_bytes(str(target), b"after")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"] and target.read_bytes() == b"before"


def test_hadoop_filesystem_branch(spark, tmp_path, monkeypatch):
    """The JVM FileSystem branch (what s3:// takes on EMR), exercised on file:// URIs."""
    monkeypatch.setattr(storage, "is_local", lambda uri: False)
    base = "file://" + str(tmp_path)
    f = base + "/deep/m.json"
    assert not storage.exists(f, spark)
    storage.write_bytes(f, b"\x00\x01hello", spark)
    assert (tmp_path / "deep" / "m.json").read_bytes() == b"\x00\x01hello"
    assert storage.read_bytes(f, spark) == b"\x00\x01hello" and storage.exists(f, spark)
    assert [u.replace("file:", "") for u in storage.iter_files(base, spark)] == [str(tmp_path / "deep" / "m.json")]
    storage.delete(base + "/deep", spark)
    assert not (tmp_path / "deep").exists()


def test_cached_files_are_trusted_only_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("P8UTILS_CACHE", str(tmp_path / "c"))
    where = storage.cache_dir("things")
    assert where == str(tmp_path / "c" / "things")
    path = f"{where}/x.bin"
    assert storage.read_cached(path) is None
    storage.write_cached(path, b"payload")
    assert storage.read_cached(path) == b"payload"
    with open(path, "wb") as fh:
        fh.write(b"payl")  # a partial write (a killed process) or another file: not trusted
    assert storage.read_cached(path) is None


# --------------------------------------------------------------------------- S3 (boto3), on the emulator


def test_s3_uris_are_recognised():
    assert storage.is_s3("s3://b/k") and storage.is_s3("s3a://b/k") and storage.is_s3("S3N://b/")
    assert not storage.is_s3("/s3/x") and not storage.is_s3("hdfs:///x") and not storage.is_s3("s3:x")
    assert storage.split_s3("s3a://b/Apple Red 1/a#1?.jpg") == ("s3a", "b", "Apple Red 1/a#1?.jpg")
    with pytest.raises(ValueError, match="no bucket"):
        storage.split_s3("s3:///key")


def test_s3_endpoint_is_the_standard_variables(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert storage.s3_endpoint() is None
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://all:1")
    assert storage.s3_endpoint() == "http://all:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3:2")
    assert storage.s3_endpoint() == "http://s3:2"


def test_s3_client_honours_the_endpoint_variable_itself(s3):
    """boto3 (>= 1.28) reads AWS_ENDPOINT_URL_S3 by itself: a client made without endpoint goes to the emulator."""
    import boto3

    assert boto3.session.Session().client("s3").meta.endpoint_url == s3.url
    assert storage.s3_client(storage.s3_endpoint()) is storage.s3_client(storage.s3_endpoint()), "one per process"


def test_s3_roundtrip_and_request_counts(s3):
    base = f"s3://{s3.bucket()}/run"
    mark = s3.mark()
    storage.write_bytes(base + "/manifest.json", b"{}")
    assert s3.calls(mark) == {"PutObject": 1}, "one PutObject, no HEAD/LIST probes"
    mark = s3.mark()
    assert storage.read_bytes(base + "/manifest.json") == b"{}"
    assert s3.calls(mark) == {"GetObject": 1}
    storage.write_bytes(base + "/features/part-0.parquet", b"a")
    storage.write_bytes(base + "/features/part-1.parquet", b"b")
    storage.write_bytes(base + "/features/sub/x", b"c")
    storage.write_bytes(base + "/empty/", b"")  # a "folder marker", as consoles create
    mark = s3.mark()
    assert storage.list_dir(base) == ["empty", "features", "manifest.json"]
    assert storage.list_dir(base + "/features/") == ["part-0.parquet", "part-1.parquet", "sub"]
    assert storage.list_dir(base + "/empty") == [] and storage.list_dir(base + "/absent") == []
    assert s3.calls(mark) == {"ListObjectsV2": 4}
    assert storage.exists(base + "/manifest.json") and storage.exists(base + "/features")
    assert not storage.exists(base + "/absent") and not storage.exists("s3://no-such-bucket-p8/x")
    assert list(storage.iter_files(base + "/features")) == [
        base + "/features/part-0.parquet", base + "/features/part-1.parquet", base + "/features/sub/x"]
    assert list(storage.iter_files(base + "/manifest.json")) == [base + "/manifest.json"]
    assert list(storage.iter_files(base + "/absent")) == []
    mark = s3.mark()
    storage.delete(base + "/features")
    assert s3.calls(mark) == {"ListObjectsV2": 1, "DeleteObjects": 1}
    storage.delete(base + "/manifest.json")
    storage.delete(base + "/absent")  # no error
    assert list(storage.iter_files(base)) == []
    with pytest.raises(ValueError, match="whole bucket"):
        storage.delete(base.rsplit("/", 1)[0])


def test_the_emulator_records_concurrent_requests_whole(s3):
    """Spark's S3A tasks send requests at once; each must come out of the emulator's log as one record
    (moto's recorder wrote a request in two appends, and parallel writers interleaved them)."""
    from concurrent.futures import ThreadPoolExecutor

    base, mark = f"s3://{s3.bucket()}/concurrent", s3.mark()
    bodies = {f"{base}/{i}": bytes([i]) * 300_000 for i in range(24)}
    with ThreadPoolExecutor(12) as pool:
        list(pool.map(lambda kv: storage.write_bytes(*kv), bodies.items()))
    puts = [r for r in s3.requests(mark) if r["op"] == "PutObject"]
    assert len(puts) == 24
    assert sorted(r["body"] for r in puts) == sorted(bodies.values())


def test_s3_delete_goes_by_batches(s3, monkeypatch):
    """DeleteObjects takes at most 1,000 keys; shown here with batches of 4 (10 objects: 3 requests)."""
    assert storage._DELETE_BATCH == 1000
    monkeypatch.setattr(storage, "_DELETE_BATCH", 4)
    bucket = s3.bucket()
    for i in range(10):
        s3.client.put_object(Bucket=bucket, Key=f"p/{i:05d}", Body=b"")
    s3.client.put_object(Bucket=bucket, Key="p-sibling", Body=b"")
    mark = s3.mark()
    storage.delete(f"s3://{bucket}/p")
    assert s3.calls(mark) == {"ListObjectsV2": 1, "DeleteObjects": 3}
    assert s3.keys(bucket) == ["p-sibling"], "a sibling sharing the prefix is not below the folder"


def test_s3_read_of_a_missing_key_raises_file_not_found(s3):
    bucket = s3.bucket()
    with pytest.raises(FileNotFoundError, match="absent.json"):
        storage.read_bytes(f"s3://{bucket}/absent.json")
    with pytest.raises(FileNotFoundError):
        storage.read_object("s3://no-such-bucket-p8/x.jpg", s3.url)


def test_s3_read_is_one_presigned_get_and_get_object_takes_over_what_it_does_not_answer(s3, monkeypatch):
    """read_object: one presigned GET per object, odd keys included, without botocore's get_object; a redirect
    (another region) sends the bucket to get_object for good, a short body or an error is asked again."""
    from botocore.awsrequest import AWSResponse

    bucket = s3.bucket()
    keys = ["in/Apple Red 1/r_0#1.jpg", "in/a+b %20 ü/x?y=1&z.jpg", "in/~tilde/'q'.jpg"]
    for i, k in enumerate(keys):
        s3.client.put_object(Bucket=bucket, Key=k, Body=bytes([i]) * 5000)
    client = storage.s3_client(s3.url)
    calls = []
    real_get_object = client.get_object
    monkeypatch.setattr(client, "get_object", lambda **kw: calls.append(kw) or real_get_object(**kw))
    mark = s3.mark()
    assert [storage.read_object(f"s3://{bucket}/{k}", s3.url) for k in keys] == [bytes([i]) * 5000 for i in range(3)]
    assert s3.calls(mark) == {"GetObject": 3} and calls == [], "presigned, one request each"
    assert all("X-Amz-Signature=" in r["query"] for r in s3.requests(mark)), "Signature Version 4"

    session = client._endpoint.http_session
    real_send = session.send
    answers = []  # what the next presigned requests get: a status, or a body shorter than its length

    def send(request):
        response = real_send(request)
        presigned = "X-Amz-Signature=" in request.url  # get_object's requests carry it in a header
        kind = answers.pop(0) if answers and presigned else None
        if kind == "short":
            return _short(response)
        if isinstance(kind, int):
            response.content  # noqa: B018 - read whole: the connection goes back to the pool
            fake = AWSResponse(response.url, kind, {}, None)
            fake._content = b"<Error><Code>Redirect or SlowDown</Code></Error>"
            return fake
        return response

    def _short(response):
        body = response.content
        fake = AWSResponse(response.url, 200, response.headers, None)
        fake._content = body[:-10]
        return fake

    monkeypatch.setattr(session, "send", send)
    answers[:] = ["short", 503]
    assert storage.read_object(f"s3://{bucket}/{keys[0]}", s3.url) == bytes([0]) * 5000
    assert storage.read_object(f"s3://{bucket}/{keys[1]}", s3.url) == bytes([1]) * 5000
    assert [c["Key"] for c in calls] == keys[:2] and bucket not in storage._PRESIGNED_REFUSED
    monkeypatch.setattr(storage, "_PRESIGNED_REFUSED", set())
    answers[:] = [301]
    assert storage.read_object(f"s3://{bucket}/{keys[2]}", s3.url) == bytes([2]) * 5000
    assert storage._PRESIGNED_REFUSED == {bucket}
    mark = s3.mark()
    assert storage.read_object(f"s3://{bucket}/{keys[0]}", s3.url) == bytes([0]) * 5000
    assert s3.calls(mark) == {"GetObject": 1} and len(calls) == 4, "the redirected bucket: get_object only"
    other, mark = s3.bucket(), s3.mark()
    with pytest.raises(FileNotFoundError, match="gone.jpg: NoSuchKey"):
        storage.read_object(f"s3://{other}/gone.jpg", s3.url)
    assert s3.calls(mark) == {"GetObject": 1} and len(calls) == 4, "a missing key: one request, no get_object"


def test_s3_create_exclusive_is_atomic(s3):
    lease = f"s3://{s3.bucket()}/out/_lease"
    mark = s3.mark()
    assert storage.create_exclusive(lease, b"first") is True
    assert storage.create_exclusive(lease, b"second") is False
    assert storage.read_bytes(lease) == b"first", "the loser does not overwrite the winner"
    puts = [r for r in s3.requests(mark) if r["op"] == "PutObject"]
    assert len(puts) == 2 and all(r["headers"].get("if-none-match") == "*" for r in puts)
    assert s3.calls(mark) == {"PutObject": 2, "GetObject": 1}, "no HEAD probe: the condition is the check"


def test_s3_create_exclusive_race_has_exactly_one_winner(s3):
    import threading

    bucket = s3.bucket()
    for round_ in range(5):
        lease = f"s3://{bucket}/race-{round_}/_lease"
        barrier = threading.Barrier(8)
        won = {}

        def take(i: int, lease: str = lease, barrier: threading.Barrier = barrier, won: dict = won) -> None:
            barrier.wait()
            won[i] = storage.create_exclusive(lease, f"writer {i}".encode())

        threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [i for i, ok in won.items() if ok]
        assert len(won) == 8 and len(winners) == 1, won
        assert storage.read_bytes(lease) == f"writer {winners[0]}".encode()


def test_spark_reads_and_writes_s3_through_the_s3a_connector(s3_spark, s3):
    """The test session's Spark has Hadoop's S3A connector for s3:// (EMR has EMRFS): parquet round trip."""
    bucket = s3.bucket()
    s3_spark.range(5).write.parquet(f"s3://{bucket}/x")
    assert sorted(r.id for r in s3_spark.read.parquet(f"s3://{bucket}/x").collect()) == [0, 1, 2, 3, 4]
    assert any(k.endswith(".parquet") for k in s3.keys(bucket, "x/"))
    assert storage.exists(f"s3://{bucket}/x/_SUCCESS")


def test_databricks_locations(monkeypatch):
    """dbfs:/Volumes/… is the volume's local path; other dbfs: URIs only on a Databricks cluster."""
    from p8utils.errors import ParameterError

    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    assert storage.resolve_location("input", "dbfs:/Volumes/main/fruits/raw/") == "/Volumes/main/fruits/raw/"
    assert storage.resolve_location("input", "s3://b/p") == "s3://b/p"
    with pytest.raises(ParameterError, match="/Volumes/<catalog>"):
        storage.resolve_location("output", "dbfs:/FileStore/runs")
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "15.4")
    assert storage.resolve_location("output", "dbfs:/FileStore/runs") == "dbfs:/FileStore/runs"


def _requested_bytes(requests) -> int:
    """Bytes asked for by the ranged GETs among ``requests`` (the emulator's log)."""
    total = 0
    for r in requests:
        first, _, last = r["headers"]["range"].split("=", 1)[1].partition("-")
        total += int(last) - int(first) + 1 if first else int(last)
    return total


def test_s3_object_opened_for_parts_fetches_only_what_is_read(s3):
    """open_s3_object: one ranged GET for the tail on opening, reads inside it free, any other read one ranged GET
    of exactly its bytes; the bytes are the object's; an empty object and a missing key."""
    import os

    data = os.urandom(300_000)
    base = f"s3://{s3.bucket()}/o"
    storage.write_bytes(base + "/big", data)
    storage.write_bytes(base + "/small", data[:100])
    storage.write_bytes(base + "/empty", b"")
    mark = s3.mark()
    with storage.open_s3_object(base + "/big") as f:
        assert s3.calls(mark) == {"GetObject": 1}
        assert f.seek(0, os.SEEK_END) == len(data)
        f.seek(len(data) - 1000)
        assert f.read(1000) == data[-1000:] and s3.calls(mark) == {"GetObject": 1}, "the tail: no request"
        f.seek(10)
        assert f.read(500) == data[10:510] and s3.calls(mark) == {"GetObject": 2}
        f.seek(len(data) - storage.S3_TAIL_BYTES - 5)
        assert f.read(10) == data[-storage.S3_TAIL_BYTES - 5:-storage.S3_TAIL_BYTES + 5]
        f.seek(0)
        assert f.read() == data
    gets = s3.requests(mark)
    assert _requested_bytes(gets[:3]) == storage.S3_TAIL_BYTES + 500 + 10
    mark = s3.mark()
    with storage.open_s3_object(base + "/small") as f:
        assert f.read() == data[:100] and f.read() == b""
    with storage.open_s3_object(base + "/empty") as f:
        assert f.read() == b"" and f.seek(0, os.SEEK_END) == 0
    assert s3.calls(mark) == {"GetObject": 2}, "a small object: one GET; an empty one: one refused range"
    with pytest.raises(FileNotFoundError):
        storage.open_s3_object(base + "/absent")
