from __future__ import annotations

from pathlib import Path

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
    storage.rename(f, f + ".2")
    assert storage.read_bytes(f + ".2") == b"hello"
    storage.delete(str(tmp_path / "deep"))
    assert not storage.exists(str(tmp_path / "deep"))
    storage.delete(str(tmp_path / "absent"))  # no error


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
    storage.rename(f, f + ".2", spark)
    assert storage.read_bytes(f + ".2", spark) == b"\x00\x01hello"
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
