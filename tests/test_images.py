from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from p8utils.errors import ParameterError
from p8utils.images import (
    ERROR_REASONS,
    check_input,
    decode_image,
    extension_glob,
    list_images,
    load_images,
)

from .conftest import image_files


def _encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _fruit_rgb(size=(100, 100)) -> Image.Image:
    arr = np.full((size[1], size[0], 3), 255, np.uint8)
    arr[20:80, 30:70] = (200, 30, 40)
    return Image.fromarray(arr)


# --------------------------------------------------------------------------- listing


def test_extension_glob_is_case_insensitive():
    assert extension_glob(["jpg"]) == "*.[jJ][pP][gG]"
    assert extension_glob(["jpg", ".JPEG"]) == "*.{[jJ][pP][gG],[jJ][pP][eE][gG]}"
    with pytest.raises(ParameterError, match="extensions"):
        extension_glob(["j*g"])


def test_load_images_one_row_per_file_with_folder_labels(spark, sample_dir):
    df = load_images(spark, str(sample_dir))
    assert df.columns == ["path", "label", "content", "modificationTime", "length"]
    rows = df.select("path", "label", "length").collect()
    files = image_files(sample_dir)
    assert sorted(r.path.replace("file:", "") for r in rows) == sorted(str(p) for p in files)
    for r in rows:
        assert r.label == r.path.rsplit("/", 2)[-2]
    assert {r.label for r in rows} == {p.parent.name for p in files}
    assert any(" " in r.label for r in rows), "class names with spaces must survive"


@pytest.mark.parametrize("reader", ["python", "spark"])
def test_labels_survive_spaces_unicode_percent_hash(spark, tmp_path, sample_dir, reader):
    src = image_files(sample_dir)[0]
    names = ["Apple Red 1", "Pomme rôtie", "a%20b", "Kiwi #2", "草莓"]
    for name in names:
        (tmp_path / name).mkdir()
        shutil.copy(src, tmp_path / name / "r_0 x%#é.JPG")
        (tmp_path / name / "zero %20#.jpg").write_bytes(b"")
        (tmp_path / name / "notes.txt").write_text("not an image extension")
    listing = list_images(spark, str(tmp_path), reader=reader)
    rows = listing.frame.select("path", "label", "length", "error").collect()
    assert listing.n_files == len(rows) == 2 * len(names) and listing.reader == reader
    assert sorted(r.label for r in rows) == sorted(names * 2), "one row per file, zero-byte ones included"
    assert sorted(r.path for r in rows) == sorted(f"file:{tmp_path}/{n}/{f}" for n in names
                                                   for f in ("r_0 x%#é.JPG", "zero %20#.jpg"))
    assert sorted(r.length for r in rows)[: len(names)] == [0] * len(names)
    assert sorted(r.error or "" for r in rows) == [""] * len(names) + ["empty"] * len(names)


def test_check_input_errors(tmp_path):
    with pytest.raises(ParameterError, match="does not exist.*Fix"):
        check_input(str(tmp_path / "nope"))
    (tmp_path / "empty class").mkdir()
    (tmp_path / "empty class" / "notes.txt").write_text("x")
    with pytest.raises(ParameterError, match="holds no image"):
        check_input(str(tmp_path))
    f = tmp_path / "file.jpg"
    f.write_bytes(b"x")
    with pytest.raises(ParameterError, match="is a file"):
        check_input(str(f))
    check_input(str(tmp_path))  # the .jpg at the top level counts


# --------------------------------------------------------------------------- decoding


def test_decode_rgb_jpeg_resizes_bicubic():
    img = _fruit_rgb()
    data = _encode(img, quality=95)
    arr, err = decode_image(data, (224, 224))
    assert err is None and arr.dtype == np.uint8 and arr.shape == (224, 224, 3)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.BICUBIC))
    np.testing.assert_array_equal(arr, expected)


@pytest.mark.parametrize(
    "mode,fmt",
    [("L", "JPEG"), ("CMYK", "JPEG"), ("P", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"), ("I;16", "PNG"), ("1", "PNG")],
)
def test_decode_any_mode_to_rgb(mode, fmt):
    img = _fruit_rgb()
    if mode == "I;16":
        img = Image.fromarray((np.asarray(img.convert("L"), np.uint16) * 257).astype(np.uint16))
        assert img.mode.startswith("I;16")
    else:
        img = img.convert(mode)
    arr, err = decode_image(_encode(img, fmt), (64, 48))
    assert err is None, err
    assert arr.shape == (48, 64, 3) and arr.dtype == np.uint8
    assert arr[0, 0].min() > 200, "white background stays white"
    if mode in ("CMYK", "P", "RGBA"):
        assert arr[24, 32, 0] > 150 and arr[24, 32, 1] < 100, "red fruit stays red"


def test_decode_transparency_goes_on_white():
    rgba = np.zeros((10, 10, 4), np.uint8)  # fully transparent black
    arr, err = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"), (10, 10))
    assert err is None and arr.min() == 255


def test_decode_exif_orientation_applied():
    img = Image.new("RGB", (40, 20), "white")
    img.paste((255, 0, 0), (0, 0, 20, 20))  # red left half
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    arr, err = decode_image(_encode(img, "JPEG", exif=exif, quality=95), (20, 40))
    assert err is None
    assert arr[5, 10, 0] > 200 and arr[5, 10, 1] < 80, "top is red after rotation"
    assert arr[35, 10].min() > 200, "bottom is white after rotation"


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty"),
        (None, "empty"),
        (b"hello, I am a text file\n", "not_an_image"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 12\n", "lfs_pointer"),
    ],
)
def test_decode_bad_bytes(data, reason):
    assert decode_image(data) == (None, reason)


def test_decode_truncated_jpeg():
    data = _encode(_fruit_rgb((300, 300)), quality=95)
    assert decode_image(data[: len(data) // 2]) == (None, "truncated")


def test_decode_refuses_declared_huge_image_without_decoding():
    data = _encode(Image.new("L", (1000, 1000)), "PNG")
    arr, err = decode_image(data, max_pixels=999_999)
    assert (arr, err) == (None, "too_large")


def test_error_reasons_vocabulary():
    assert set(ERROR_REASONS) >= {"empty", "not_an_image", "truncated", "too_large", "lfs_pointer", "decode_error"}


def test_load_images_fails_fast_with_the_fix(spark, tmp_path):
    with pytest.raises(ParameterError, match="does not exist.*Fix"):
        load_images(spark, str(tmp_path / "missing"))
    (tmp_path / "Class A").mkdir()
    with pytest.raises(ParameterError, match="holds no image"):
        load_images(spark, str(tmp_path))


def test_a_file_list_is_an_input_too(spark, tmp_path, sample_dir):
    """An input manifest (CSV): one row per distinct listed image, labels from the list, paths relative to it."""
    files = image_files(sample_dir)[:4]
    rows = ["path,label"] + [f"{f},from list" for f in files[:2]]
    rows += [f"{files[2]},", f"{files[2]},", "gone/missing.jpg,Ghost", "notes.txt,x", "_hidden.jpg,Hidden", ""]
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "_hidden.jpg").write_bytes(files[3].read_bytes())
    (tmp_path / "lists" / "gone").mkdir()
    (tmp_path / "lists" / "inputs.csv").write_text("\n".join(rows) + "\n")
    listing = list_images(spark, str(tmp_path / "lists" / "inputs.csv"))
    got = {r.path: r for r in listing.frame.collect()}
    assert listing.n_files == 5 and listing.reader == "python", "duplicates collapsed, non-images left out"
    assert got[f"file:{tmp_path}/lists/_hidden.jpg"].label == "Hidden", "a listed '_' name is not skipped"
    assert {got[f"file:{f}"].label for f in files[:2]} == {"from list"}
    assert got[f"file:{files[2]}"].label == files[2].parent.name, "no label: the parent folder's name"
    assert got[f"file:{tmp_path}/lists/gone/missing.jpg"].label == "Ghost"
    with pytest.raises(ParameterError, match="no such file list"):
        list_images(spark, str(tmp_path / "nope.csv"))
    (tmp_path / "bad.csv").write_text("file\na.jpg\n")
    with pytest.raises(ParameterError, match="no 'path' column"):
        list_images(spark, str(tmp_path / "bad.csv"))


# --------------------------------------------------------------------------- S3 (boto3), on the emulator


def _s3_tree(root, sample_dir):
    """A folder with what a listing must keep and skip: odd names, a zero-byte image, metadata, other files."""
    src = image_files(sample_dir)
    for i, name in enumerate(["Apple Red 1", "Kiwi #2", "草莓", "a%20b"]):
        (root / name).mkdir(parents=True)
        shutil.copy(src[i], root / name / f"r_{i} x%#é.JPG")
        shutil.copy(src[i + 10], root / name / f"{i}.jpeg")
    (root / "Kiwi #2" / "zero.jpg").write_bytes(b"")
    (root / "Kiwi #2" / "notes.txt").write_text("not an image")
    (root / "_meta").mkdir()
    shutil.copy(src[0], root / "_meta" / "skipped.jpg")
    shutil.copy(src[0], root / "Kiwi #2" / ".hidden.jpg")
    shutil.copy(src[0], root / "Kiwi #2" / "_SUCCESS.jpg")
    (root / "top.jpg").write_bytes(src[1].read_bytes())
    return root


def _rows(listing, prefix):
    return sorted((r.path[len(prefix):], r.label, r.length, r.error)
                  for r in listing.frame.select("path", "label", "length", "error").collect())


def test_resolve_reader_python_for_s3():
    from p8utils.images import resolve_reader

    assert resolve_reader("auto", "s3://b/in/") == "python" and resolve_reader("auto", "s3a://b/in") == "python"
    assert resolve_reader("python", "s3://b/in/") == "python" and resolve_reader("spark", "s3://b/in/") == "spark"
    assert resolve_reader("auto", "hdfs:///in") == "spark"
    with pytest.raises(ParameterError, match="local and s3://"):
        resolve_reader("python", "hdfs:///in")


def test_s3_listing_equals_the_local_listing_with_one_request_per_1000_keys(s3_spark, s3, tmp_path, sample_dir):
    """An s3:// folder is listed with ListObjectsV2 only (nothing per object): the same rows as the local listing
    of the same files (path prefix aside; modificationTime is the object's LastModified)."""
    local = _s3_tree(tmp_path / "in", sample_dir)
    bucket = s3.bucket()
    uploaded = s3.upload(local, f"s3://{bucket}/data/in")
    expected = _rows(list_images(s3_spark, str(local)), f"file:{local}/")
    assert len(expected) == 10 and ("Kiwi #2/zero.jpg", "Kiwi #2", 0, "empty") in expected
    assert [r[:2] for r in expected if r[0] == "top.jpg"] == [("top.jpg", "in")], "a top-level image"

    for uri, dest in [(f"s3://{bucket}/data/in", None), (f"s3://{bucket}/data/in/", str(tmp_path / "listing")),
                      (f"s3a://{bucket}/data/in", f"s3://{bucket}/runs/r1/_staging/listing")]:
        mark = s3.mark()
        listing = list_images(s3_spark, uri, dest=dest)
        assert listing.reader == "python" and listing.n_files == len(expected)
        assert _rows(listing, f"{uri.split('://')[0]}://{bucket}/data/in/") == expected
        requests = s3.requests(mark)
        on_input = [r for r in requests if "/data/in/" in r["path"] or "prefix=data%2Fin" in r["query"]]
        assert [r["op"] for r in on_input] == ["ListObjectsV2"], "one LIST for 14 keys, nothing per object"
        if dest is None or not dest.startswith("s3://"):
            assert len(requests) == 1
        else:  # the listing's parquet: one PUT (Spark's S3A then reads it back)
            assert [r["op"] for r in requests if r["path"].endswith("/listing/part-00000.parquet")][0] == "PutObject"
    heads = {o["Key"]: o["LastModified"] for o in s3.client.list_objects_v2(Bucket=bucket, Prefix="data/")["Contents"]}
    for r in list_images(s3_spark, f"s3://{bucket}/data/in").frame.collect():
        key = r.path.split("/", 3)[3]
        assert abs(r.modificationTime.timestamp() - heads[key].timestamp()) < 1.0
    assert len(uploaded) == 14


def test_s3_listing_pages_by_1000_keys(s3_spark, s3, tmp_path):
    """1,001 objects: two ListObjectsV2 pages, no per-object request."""
    from concurrent.futures import ThreadPoolExecutor

    bucket = s3.bucket()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: s3.client.put_object(Bucket=bucket, Key=f"in/c{i % 3}/{i:04d}.jpg", Body=b"x"),
                      range(1001)))
    mark = s3.mark()
    listing = list_images(s3_spark, f"s3://{bucket}/in", dest=str(tmp_path / "listing"))
    assert listing.n_files == 1001
    assert s3.calls(mark) == {"ListObjectsV2": 2}


def test_check_input_on_s3_names_the_fix(s3):
    bucket = s3.bucket()
    with pytest.raises(ParameterError, match="bucket 'no-such-bucket-p8' does not exist.*Fix"):
        check_input("s3://no-such-bucket-p8/in")
    with pytest.raises(ParameterError, match="no object under this prefix.*Fix"):
        check_input(f"s3://{bucket}/in")
    s3.client.put_object(Bucket=bucket, Key="in/a/notes.txt", Body=b"x")
    s3.client.put_object(Bucket=bucket, Key="in/_meta/x.jpg", Body=b"x")
    with pytest.raises(ParameterError, match="holds no image.*Fix"):
        check_input(f"s3://{bucket}/in")
    s3.client.put_object(Bucket=bucket, Key="in/a/x.JPG", Body=b"x")
    mark = s3.mark()
    check_input(f"s3://{bucket}/in/")
    assert s3.calls(mark) == {"ListObjectsV2": 1}
    with pytest.raises(ParameterError, match="is an object, not a folder"):
        check_input(f"s3://{bucket}/in/a/x.JPG")


def test_workers_read_each_s3_object_with_one_get(s3_spark, s3, sample_dir):
    """read_file in the Spark workers: one GetObject per object at the driver's endpoint; a gone key is
    'missing', a bucket without access 'unreadable'."""
    from pyspark.sql import functions as F

    from p8utils import storage
    from p8utils.images import read_file

    bucket = s3.bucket()
    files = image_files(sample_dir)[:6]
    uris = s3.upload(sample_dir, f"s3://{bucket}/in", files)
    endpoint = storage.s3_endpoint()
    assert endpoint == s3.url

    @F.udf("struct<n:long,error:string>")
    def read(path):
        data, error = read_file(path, endpoint)
        return (None if data is None else len(data), error)

    paths = [*uris, f"s3://{bucket}/in/Kiwi/gone.jpg"]
    mark = s3.mark()
    rows = {r.path: r.r for r in s3_spark.createDataFrame([(p,) for p in paths], "path string")
            .repartition(2).select("path", read("path").alias("r")).collect()}
    assert s3.calls(mark) == {"GetObject": len(paths)}, "exactly one GET per object, no HEAD"
    for uri, f in zip(uris, files):
        assert rows[uri].n == f.stat().st_size and rows[uri].error is None
    assert rows[paths[-1]].n is None and rows[paths[-1]].error == "missing"
    assert read_file(f"s3://{bucket}/in/Kiwi/gone.jpg", endpoint) == (None, "missing")
    assert read_file("s3://no-such-bucket-p8/x.jpg", endpoint) == (None, "missing")
    assert read_file("s3://b/x.jpg", "http://127.0.0.1:9") == (None, "unreadable"), "nothing listens there"
    assert read_file("hdfs:///x.jpg") == (None, "unreadable")


def test_a_worker_denied_access_reports_unreadable(monkeypatch):
    from botocore.exceptions import ClientError

    from p8utils import storage
    from p8utils.images import read_file

    class Denied:
        def get_object(self, **kw):
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"},
                               "ResponseMetadata": {"HTTPStatusCode": 403}}, "GetObject")

    monkeypatch.setattr(storage, "s3_client", lambda endpoint=None: Denied())
    assert read_file("s3://b/x.jpg") == (None, "unreadable")
    with pytest.raises(PermissionError, match="access denied"):
        storage.read_object("s3://b/x.jpg")


def test_s3_spark_reader_still_lists_through_hadoop(s3_spark, s3, sample_dir):
    """reader='spark' keeps Spark's file index (S3A here, EMRFS on EMR): same files, many more requests."""
    files = image_files(sample_dir)[:8]
    bucket = s3.bucket()
    s3.upload(sample_dir, f"s3://{bucket}/in", files)
    s3.client.put_object(Bucket=bucket, Key="in/Kiwi/zero.jpg", Body=b"")
    mark = s3.mark()
    spark_listing = list_images(s3_spark, f"s3://{bucket}/in", reader="spark")
    rows = _rows(spark_listing, f"s3://{bucket}/in/")
    jvm_calls = s3.calls(mark)
    assert spark_listing.reader == "spark"
    assert rows == _rows(list_images(s3_spark, f"s3://{bucket}/in"), f"s3://{bucket}/in/")
    assert ("Kiwi/zero.jpg", "Kiwi", 0, "empty") in rows
    assert sum(jvm_calls.values()) > len(files), f"Hadoop's connector probes per file: {dict(jvm_calls)}"
