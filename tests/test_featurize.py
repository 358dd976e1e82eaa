from __future__ import annotations

import numpy as np
import pytest

from p8utils import storage
from p8utils.errors import ParameterError
from p8utils.featurize import featurize, featurize_bytes
from p8utils.images import list_images, load_images
from p8utils.models import build_model, load_weights

from .conftest import image_files


def _keras_reference(files, bundle):
    """Features computed directly with Keras from the files (independent of p8utils' decoding)."""
    import keras

    model = build_model(bundle.spec, bundle.arrays)
    batch = np.stack([
        keras.utils.img_to_array(keras.utils.load_img(str(f), target_size=(224, 224), interpolation="bicubic"))
        for f in files
    ])
    return model.predict(keras.applications.mobilenet_v2.preprocess_input(batch), batch_size=32, verbose=0)


def _rel_err(a, b):
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


def test_spark_features_equal_direct_keras(spark, sample_dir, offline_bundle):
    files = image_files(sample_dir)
    df = featurize(load_images(spark, str(sample_dir)), offline_bundle, batch_size=16, engine="keras")
    assert df.columns == ["path", "label", "modificationTime", "length", "features", "error"]
    rows = {r.path.replace("file:", ""): r for r in df.select("path", "features", "error").collect()}
    assert len(rows) == len(files)
    got = np.array([rows[str(f)].features for f in files], dtype=np.float32)
    assert all(rows[str(f)].error is None for f in files)
    assert got.shape == (len(files), 1280)
    ref = _keras_reference(files, offline_bundle)
    # Not a trivially small signal: an untrained net would give ~1e-12.
    assert np.abs(ref).mean() > 0.05 and ref.std(axis=0).mean() > 1e-3
    assert _rel_err(got, ref).max() <= 1e-5


def test_bad_file_gives_error_row_not_failure(spark, tmp_path, sample_dir, offline_bundle):
    good = image_files(sample_dir)[:3]
    cls = tmp_path / "Mixed Class"
    cls.mkdir()
    for i, f in enumerate(good):
        (cls / f"g{i}.jpg").write_bytes(f.read_bytes())
    (cls / "broken.jpg").write_bytes(b"this is not a jpeg")
    (cls / "empty.jpg").write_bytes(b"")
    rows = featurize(list_images(spark, str(tmp_path)).frame, offline_bundle, input_col="path").collect()
    by_name = {r.path.rsplit("/", 1)[-1]: r for r in rows}
    assert len(rows) == 5
    # Spark's own reader gives no row for the zero-byte file (the run's listing has it): the bad one still gives its row
    from_bytes = featurize(load_images(spark, str(tmp_path)), offline_bundle).collect()
    assert {r.path.rsplit("/", 1)[-1]: r.error for r in from_bytes}["broken.jpg"] == "not_an_image"
    assert by_name["broken.jpg"].features is None and by_name["broken.jpg"].error == "not_an_image"
    assert by_name["empty.jpg"].features is None and by_name["empty.jpg"].error == "empty"
    clean = featurize_bytes([f.read_bytes() for f in good], offline_bundle)
    for i in range(3):
        got = np.asarray(by_name[f"g{i}.jpg"].features, np.float32)
        assert by_name[f"g{i}.jpg"].error is None
        np.testing.assert_allclose(got, clean.features[i], rtol=1e-5, atol=1e-6)


def test_batch_size_does_not_change_features(sample_dir, offline_bundle):
    data = [f.read_bytes() for f in image_files(sample_dir)[:9]]
    a = np.stack(featurize_bytes(data, offline_bundle, batch_size=4).features)
    b = np.stack(featurize_bytes(data, offline_bundle, batch_size=64).features)
    assert _rel_err(a, b).max() <= 1e-5


def test_resnet50_width(spark, sample_dir):
    bundle = load_weights("resnet50", "offline", seed=0)
    files = image_files(sample_dir)[:4]
    feats = featurize_bytes([f.read_bytes() for f in files], bundle)
    assert all(len(v) == 2048 for v in feats.features)
    assert np.abs(np.stack(feats.features)).mean() > 0.01


def test_resnet50_through_spark(spark, tmp_path, sample_dir):
    bundle = load_weights("resnet50", "offline", seed=0)
    (tmp_path / "A B").mkdir()
    for f in image_files(sample_dir)[:3]:
        (tmp_path / "A B" / f.name).write_bytes(f.read_bytes())
    rows = featurize(load_images(spark, str(tmp_path)), bundle).collect()
    assert len(rows) == 3 and all(len(r.features) == 2048 for r in rows)


@pytest.mark.parametrize("kw,match", [
    ({"batch_size": 0}, "batch_size"), ({"batch_size": 2.5}, "batch_size"),
    ({"engine": "onnx"}, "engine"), ({"threads": 0}, "threads"),
])
def test_featurize_rejects_bad_parameters(spark, sample_dir, offline_bundle, kw, match):
    with pytest.raises(ParameterError, match=match):
        featurize(load_images(spark, str(sample_dir)), offline_bundle, **kw)


def test_tflite_engine_equals_keras(spark, sample_dir, offline_bundle):
    """The TFLite/XNNPACK engine gives the Keras features within 1e-4 relative, through Spark."""
    files = image_files(sample_dir)
    df = load_images(spark, str(sample_dir))
    got = {r.path: r for r in featurize(df, offline_bundle, engine="tflite", batch_size=24).collect()}
    ref = {r.path: r for r in featurize(df, offline_bundle, engine="keras").collect()}
    assert set(got) == set(ref) and len(got) == len(files)
    a = np.array([got[p].features for p in sorted(got)], dtype=np.float32)
    b = np.array([ref[p].features for p in sorted(ref)], dtype=np.float32)
    assert np.abs(b).mean() > 0.05
    assert _rel_err(a, b).max() <= 1e-4


def test_tflite_engine_in_process_handles_ragged_chunks(sample_dir, offline_bundle):
    data = [f.read_bytes() for f in image_files(sample_dir)[:11]] + [b"junk"]
    out = featurize_bytes(data, offline_bundle, engine="tflite", batch_size=4)  # chunks of 4, 4, 3
    ref = featurize_bytes(data, offline_bundle, engine="keras")
    assert out.error.tolist() == [None] * 11 + ["not_an_image"]
    assert _rel_err(np.stack(out.features[:11]), np.stack(ref.features[:11])).max() <= 1e-4


def test_model_built_once_per_worker_not_per_task(spark, tmp_path, sample_dir, offline_bundle):
    """With Python worker reuse the model is built by each worker once, then reused by later tasks/jobs."""
    src = tmp_path / "in"
    for i in range(3):  # 240 files -> several tasks per worker
        for f in image_files(sample_dir):
            (src / f.parent.name).mkdir(parents=True, exist_ok=True)
            (src / f.parent.name / f"{i}_{f.name}").write_bytes(f.read_bytes())
    images = list_images(spark, str(src)).frame.repartition(6)
    tasks = images.rdd.getNumPartitions()
    builds = spark.sparkContext.accumulator(0)
    out = featurize(images, offline_bundle, input_col="path", engine="tflite", model_builds=builds)
    assert out.where("error is null").count() == 240
    first = builds.value
    assert tasks == 6 and 1 <= first <= 2, (tasks, first)  # local[2]: two Python workers
    assert out.where("error is null").count() == 240  # a second job: the workers' models are reused
    assert builds.value == first


def test_workers_featurize_s3_objects_at_the_drivers_endpoint(s3_spark, s3, sample_dir, offline_bundle):
    """An s3:// listing featurized from paths: each worker GETs its objects once, at the endpoint the driver
    captured (the workers' environment does not name it); a key deleted after listing gives 'missing'."""
    files = image_files(sample_dir)[:5]
    bucket = s3.bucket()
    s3.upload(sample_dir, f"s3://{bucket}/in", files)
    s3.client.put_object(Bucket=bucket, Key="in/Kiwi/deleted.jpg", Body=files[0].read_bytes())
    listing = list_images(s3_spark, f"s3://{bucket}/in")
    s3.client.delete_object(Bucket=bucket, Key="in/Kiwi/deleted.jpg")
    mark = s3.mark()
    rows = {r.path: r for r in featurize(listing.frame, offline_bundle, input_col="path", engine="tflite").collect()}
    assert s3.calls(mark) == {"GetObject": len(files) + 1}, "one GET per object, nothing else"
    assert rows[f"s3://{bucket}/in/Kiwi/deleted.jpg"].error == "missing"
    clean = featurize_bytes([f.read_bytes() for f in files], offline_bundle, engine="tflite")
    for i, f in enumerate(files):
        row = rows[f"s3://{bucket}/in/{f.parent.name}/{f.name}"]
        assert row.error is None and row.label == f.parent.name
        np.testing.assert_allclose(np.asarray(row.features, np.float32), clean.features[i], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cores", [1, 2])
@pytest.mark.parametrize("prefix,remote", [("s3://b/in/Kiwi/", True), ("/data/in/Kiwi/", False)])
def test_remote_objects_are_read_many_at_once_local_files_one_by_one(monkeypatch, sample_dir, prefix, remote, cores):
    """A task reads a chunk's S3 objects REMOTE_READS_AT_ONCE at a time, the next chunk's while the engine runs (a
    GET's latency is not paid image after image), local files one by one; with one core the files are decoded in
    the task's thread, with more in a decode thread while the engine runs; every row gets its own file's features,
    in order."""
    import threading
    import time

    from p8utils import featurize as featurize_module
    from p8utils.images import DEFAULT_MAX_PIXELS
    from p8utils.models import get_spec

    photos = [f.read_bytes() for f in image_files(sample_dir)[:4]]
    lock, state = threading.Lock(), {"now": 0, "most": 0, "started": 0}

    def slow_read(path, endpoint=None):
        with lock:
            state["started"] += 1
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.02)  # a GET's latency
        with lock:
            state["now"] -= 1
        return photos[int(path.rsplit("/", 1)[1].split(".")[0]) % 4], None

    monkeypatch.setattr(featurize_module, "read_file", slow_read)
    spec = get_spec("mobilenet_v2", 96)
    seen, started_by_predict_end, decoders = [], [], set()
    real_decode = featurize_module.decode_image

    def decode(*args, **kwargs):
        decoders.add(threading.current_thread().name)
        return real_decode(*args, **kwargs)

    def predict(batch):
        time.sleep(0.03)  # the engine's time: the next chunk's reads overlap it
        started_by_predict_end.append(state["started"])
        seen.extend(batch.mean(axis=(1, 2, 3)).tolist())
        return np.repeat(batch.mean(axis=(1, 2, 3))[:, None], spec.width, axis=1).astype(np.float32)

    monkeypatch.setattr(featurize_module, "decode_image", decode)
    features, errors = featurize_module._featurize_arrays([f"{prefix}{i}.jpg" for i in range(40)], spec, predict, 32,
                                                          DEFAULT_MAX_PIXELS, cores=cores)
    assert errors == [None] * 40 and features.shape == (40, spec.width)
    means = [float(v[0]) for v in features]
    assert means[:4] == means[4:8] and len(set(means[:4])) == 4, "row i has photo i % 4's features"
    if remote:
        assert featurize_module.REMOTE_READS_AT_ONCE // 2 <= state["most"] <= featurize_module.REMOTE_READS_AT_ONCE
        assert started_by_predict_end[0] == 40, "the second chunk's objects are read while the engine runs on the first"
    else:
        assert state["most"] == 1
    if cores == 1:
        assert decoders == {threading.current_thread().name}
    else:
        assert len(decoders) == 1 and decoders.isdisjoint({threading.current_thread().name})


def _listing_with_bad_files(spark, tmp_path, sample_dir, n_good=5):
    """A listing of ``n_good`` sample photos, a broken file and an empty one (listed with error 'empty')."""
    cls = tmp_path / "in" / "Mixed Class"
    cls.mkdir(parents=True)
    good = image_files(sample_dir)[:n_good]
    for i, f in enumerate(good):
        (cls / f"g{i}.jpg").write_bytes(f.read_bytes())
    (cls / "broken.jpg").write_bytes(b"this is not a jpeg")
    (cls / "empty.jpg").write_bytes(b"")
    return good, list_images(spark, str(tmp_path / "in"))


def test_tasks_write_their_part_files_with_the_udfs_rows(spark, tmp_path, sample_dir, offline_bundle):
    """featurize_to_files: each task stages one parquet file itself (hidden until published), named by the row it
    returns; read back with Spark, the files hold the UDF's rows (same features, errors, listing columns, types)."""
    from p8utils.featurize import FeaturizeSettings, featurize_to_files
    from p8utils.pipeline import FEATURE_COLUMNS

    good, listing = _listing_with_bad_files(spark, tmp_path, sample_dir)
    folder = tmp_path / "features"
    named = featurize_to_files(listing.frame.repartition(3), offline_bundle, str(folder), "part-test", FEATURE_COLUMNS,
                               FeaturizeSettings(batch_size=2, engine="tflite")).collect()
    assert sorted(p.name for p in folder.iterdir()) == sorted(f".{r.file}.pending" for r in named), "staged, hidden"
    for r in named:
        storage.publish_object(str(folder / r.file), r.token)
    assert sorted(p.name for p in folder.iterdir()) == sorted(r.file for r in named)
    assert all(r.file.startswith("part-test-") and r.file.endswith(".snappy.parquet") for r in named)
    assert sum(r.rows for r in named) == 7 and len(named) <= 3
    table = spark.read.parquet(*[str(folder / r.file) for r in named])
    assert table.columns == list(FEATURE_COLUMNS)
    expected = featurize(listing.frame.where("error is null").drop("error"), offline_bundle, input_col="path",
                         engine="tflite")
    types = dict(expected.dtypes)
    assert dict(table.dtypes) == {**types, "error": "string"}, "the types a Spark-written table has"
    rows = {r.path.rsplit("/", 1)[-1]: r for r in table.collect()}
    want = {r.path.rsplit("/", 1)[-1]: r for r in expected.collect()}
    assert rows["empty.jpg"].error == "empty" and rows["empty.jpg"].features is None
    assert rows["broken.jpg"].error == "not_an_image" and rows["broken.jpg"].features is None
    listed = {r.path.rsplit("/", 1)[-1]: r for r in listing.frame.collect()}
    for i in range(len(good)):
        name = f"g{i}.jpg"
        assert rows[name].error is None and rows[name].label == "Mixed Class"
        assert (rows[name].length, rows[name].modificationTime) == (listed[name].length, listed[name].modificationTime)
        np.testing.assert_allclose(np.asarray(rows[name].features, np.float32),
                                   np.asarray(want[name].features, np.float32), rtol=1e-6, atol=1e-7)


def test_tasks_write_their_part_files_to_s3_with_one_put_each(s3_spark, s3, tmp_path, sample_dir, offline_bundle):
    """On S3 a task stages its part file as an uncompleted multipart upload at its final key (invisible; no
    temporary key, no copy), at the driver's endpoint; publishing completes it; its rows equal the local files'."""
    from p8utils.featurize import FeaturizeSettings, featurize_to_files
    from p8utils.pipeline import FEATURE_COLUMNS

    files = image_files(sample_dir)[:6]
    bucket = s3.bucket()
    s3.upload(sample_dir, f"s3://{bucket}/in", files)
    listing = list_images(s3_spark, f"s3://{bucket}/in")
    mark = s3.mark()
    named = featurize_to_files(listing.frame.repartition(2), offline_bundle, f"s3://{bucket}/out/features",
                               "part-s3", FEATURE_COLUMNS, FeaturizeSettings(engine="tflite")).collect()
    assert s3.calls(mark) == {"GetObject": len(files), "CreateMultipartUpload": len(named),
                              "UploadPart": len(named)}
    assert s3.keys(bucket, "out/") == [], "staged: no reader sees an uploaded part before it is published"
    mark = s3.mark()
    for r in named:
        storage.publish_object(f"s3://{bucket}/out/features/{r.file}", r.token)
    assert s3.calls(mark) == {"CompleteMultipartUpload": len(named)}, "publishing copies nothing"
    assert s3.keys(bucket, "out/") == sorted(f"out/features/{r.file}" for r in named)
    table = s3_spark.read.parquet(*[f"s3a://{bucket}/out/features/{r.file}" for r in named])
    rows = {r.path.rsplit("/", 1)[-1]: r for r in table.collect()}
    clean = featurize_bytes([f.read_bytes() for f in files], offline_bundle, engine="tflite")
    for i, f in enumerate(files):
        np.testing.assert_allclose(np.asarray(rows[f.name].features, np.float32), clean.features[i], rtol=1e-5,
                                   atol=1e-6)


def test_featurize_to_files_refuses_other_stores_and_missing_columns(spark, sample_dir, offline_bundle):
    from p8utils.featurize import FeaturizeSettings, featurize_to_files

    frame = list_images(spark, str(sample_dir)).frame
    with pytest.raises(ParameterError, match="local folders and S3 only"):
        featurize_to_files(frame, offline_bundle, "hdfs://nn/out", "part-x", ["path", "features", "error"])
    with pytest.raises(ParameterError, match=r"\['size'\] are not columns"):
        featurize_to_files(frame, offline_bundle, "/tmp/x", "part-x", ["path", "size", "features", "error"])
    with pytest.raises(ParameterError, match="is not a FeaturizeSettings"):
        featurize_to_files(frame, offline_bundle, "/tmp/x", "part-x", ["path", "features", "error"], {"engine": "x"})
    with pytest.raises(ParameterError, match="batch_size"):
        FeaturizeSettings(batch_size=0)


def test_a_workers_engine_is_built_as_long_lived(monkeypatch):
    """_get_predictor builds the engine inside worker_long_lived (frozen for the collector in a Spark task), once."""
    import contextlib

    from p8utils import featurize as module

    inside, built = [], []

    @contextlib.contextmanager
    def long_lived():
        inside.append(True)
        yield
        inside.append(False)

    class Stub:
        def build(self, spec, payload, threads):
            built.append(inside[-1])
            return lambda x: x

    monkeypatch.setattr(module, "worker_long_lived", long_lived)
    monkeypatch.setattr(module, "get_engine", lambda name: Stub())
    monkeypatch.setattr(module, "_PREDICTORS", {})
    first = module._get_predictor("spec", lambda: b"", "v1", "stub", 1)
    assert module._get_predictor("spec", lambda: b"", "v1", "stub", 1) is first  # cached: no second build
    module._get_predictor("spec", lambda: b"", "v2", "stub", 1)
    assert built == [True, True] and inside == [True, False, True, False]
