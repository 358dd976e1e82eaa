from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA as SkPCA

from p8utils import pipeline
from p8utils.errors import OutputExistsError, ParameterError

from .conftest import image_files


def _read(path):
    return pd.read_parquet(path).sort_values("path").reset_index(drop=True)


def test_outputs_one_row_per_input_file(sample_run, sample_dir):
    files = image_files(sample_dir)
    feats = _read(sample_run.features_path)
    assert list(feats.columns) == ["path", "label", "features", "error", "length", "modificationTime"]
    assert sorted(p.replace("file:", "") for p in feats.path) == sorted(str(f) for f in files)
    assert feats.path.is_unique
    assert list(feats.label) == [p.rsplit("/", 2)[-2] for p in feats.path]
    assert feats.error.isna().all()
    assert {len(v) for v in feats.features} == {1280}
    assert feats.features.iloc[0].dtype == np.float32

    pca = _read(sample_run.pca_path)
    assert list(pca.columns) == ["path", "label", "pca_features"]
    assert list(pca.path) == list(feats.path)
    assert {len(v) for v in pca.pca_features} == {sample_run.pca.k}


def test_pca_output_matches_sklearn(sample_run):
    feats = _read(sample_run.features_path)
    x = np.stack(feats.features).astype(np.float64)
    sk = SkPCA(svd_solver="full").fit(x)
    ev = sample_run.pca.explained_variance
    np.testing.assert_allclose(ev[: len(sk.explained_variance_ratio_)], sk.explained_variance_ratio_,
                               rtol=1e-6, atol=1e-12)
    k = sample_run.pca.k
    assert k == int(np.argmax(np.cumsum(sk.explained_variance_ratio_) >= 0.95)) + 1
    got = np.stack(_read(sample_run.pca_path).pca_features)
    ref = sk.transform(x)[:, :k]
    # components whose eigenvalue is isolated are defined up to sign: compare those
    ratios = sk.explained_variance_ratio_
    gaps = np.minimum(np.abs(np.diff(ratios, prepend=np.inf)), np.abs(np.diff(ratios, append=0)))[:k]
    keep = gaps > 1e-3 * ratios[0]
    assert keep[:5].all()
    got, ref = got[:, keep], ref[:, keep]
    got = got * np.sign(np.sum(got * ref, axis=0))
    rel = np.linalg.norm(got - ref, axis=0) / np.linalg.norm(ref, axis=0)
    assert rel.max() <= 1e-6, rel


def test_manifest(sample_run, sample_dir):
    m = json.loads(open(sample_run.manifest_path, encoding="utf-8").read())
    assert m == sample_run.manifest
    n = len(image_files(sample_dir))
    assert m["status"] == "complete"
    assert m["counts"] == {"total": n, "ok": n, "failed": 0, "failed_by_reason": {},
                           "featurized": n, "reused": 0, "removed": 0}
    assert m["pca"]["k"] == sample_run.pca.k and m["pca"]["explained_at_k"] >= 0.95
    assert len(m["pca"]["explained_variance"]) == 1280
    assert m["weights"]["source"] == "offline" and len(m["weights"]["sha256"]) == 64
    assert set(m["timings_s"]) == {"weights", "list_images", "featurize", "check", "pca_fit", "pca_transform"}
    for lib in ("pyspark", "tensorflow-cpu", "keras", "numpy", "pandas", "pyarrow", "pillow", "python"):
        assert m["versions"][lib], lib
    assert m["parameters"]["model"] == "mobilenet_v2" and m["parameters"]["variance"] == 0.95


def test_same_result_twice_and_overwrite(spark, sample_run, sample_dir, tmp_path):
    out = tmp_path / "again"
    first = pipeline.run(str(sample_dir), str(out), weights="offline", k=5, spark=spark)
    with pytest.raises(OutputExistsError, match="mode='overwrite'"):
        pipeline.run(str(sample_dir), str(out), weights="offline", k=5, spark=spark)
    second = pipeline.run(str(sample_dir), str(out), weights="offline", k=5, mode="overwrite", spark=spark)
    assert first.manifest["weights"]["sha256"] == second.manifest["weights"]["sha256"]
    a = np.stack(_read(sample_run.features_path).features)
    b = np.stack(_read(second.features_path).features)
    assert np.array_equal(a, b), "same seed, same input: identical features"
    pa, pb = np.stack(_read(first.pca_path).pca_features), np.stack(_read(second.pca_path).pca_features)
    signs = np.sign(np.sum(pa * pb, axis=0))  # one sign per component (eigenvectors are defined up to sign)
    np.testing.assert_allclose(pa * signs, pb, rtol=1e-9, atol=1e-9 * np.abs(pb).max())
    assert pa.shape[1] == 5


def test_bad_file_counted_by_reason(spark, sample_dir, tmp_path):
    src = tmp_path / "in"
    for f in image_files(sample_dir)[:6]:
        (src / f.parent.name).mkdir(parents=True, exist_ok=True)
        (src / f.parent.name / f.name).write_bytes(f.read_bytes())
    (src / "Broken").mkdir()
    (src / "Broken" / "text.jpg").write_text("hello")
    (src / "Broken" / "zero.jpg").write_bytes(b"")
    res = pipeline.run(str(src), str(tmp_path / "out"), weights="offline", k=2, spark=spark)
    assert res.manifest["counts"] == {"total": 8, "ok": 6, "failed": 2,
                                      "failed_by_reason": {"empty": 1, "not_an_image": 1},
                                      "featurized": 8, "reused": 0, "removed": 0}
    feats = _read(res.features_path)
    assert feats.loc[feats.error.notna(), "features"].isna().all()
    assert len(_read(res.pca_path)) == 6


@pytest.fixture
def no_spark(monkeypatch):
    """Fail the test if anything tries to start Spark."""
    import p8utils.spark

    def _refuse(*a, **k):
        raise AssertionError("a Spark session was requested before parameters were checked")

    monkeypatch.setattr(p8utils.spark, "get_spark", _refuse)


@pytest.mark.parametrize("kwargs,match", [
    ({"input": "MISSING"}, "does not exist"),
    ({"input": "EMPTYDIR"}, "holds no image"),
    ({"k": 2000}, "larger than the feature width 1280"),
    ({"k": 0}, "positive integer"),
    ({"variance": 1.5}, r"outside \(0, 1\]"),
    ({"variance": 0}, r"outside \(0, 1\]"),
    ({"k": 3, "variance": 0.9}, "give exactly one"),
    ({"model": "vgg"}, "model='vgg' is not supported"),
    ({"mode": "append"}, "mode='append' is not valid"),
    ({"extensions": ["j?g"]}, "extensions"),
    ({"batch_size": -1}, "batch_size"),
    ({"output": "INSIDE"}, "inside input"),
])
def test_bad_parameters_fail_before_spark(no_spark, tmp_path, sample_dir, kwargs, match):
    (tmp_path / "empty" / "Class A").mkdir(parents=True)
    args = {"input": str(sample_dir), "output": str(tmp_path / "out"), "weights": "offline"}
    args.update(kwargs)
    args["input"] = {"MISSING": str(tmp_path / "missing"), "EMPTYDIR": str(tmp_path / "empty")}.get(
        args["input"], args["input"])
    if args["output"] == "INSIDE":
        args["output"] = str(sample_dir / "run")
    with pytest.raises(ParameterError, match=match) as info:
        pipeline.run(args.pop("input"), args.pop("output"), **args)
    assert "Fix" in str(info.value)


def test_existing_output_refused_before_spark(no_spark, tmp_path, sample_dir):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "something").write_text("x")
    with pytest.raises(OutputExistsError, match="already exists"):
        pipeline.run(str(sample_dir), str(tmp_path / "out"), weights="offline")


@pytest.mark.slow
def test_real_photos(spark, real_dir, tmp_path):
    res = pipeline.run(str(real_dir), str(tmp_path / "real"), weights="offline", variance=0.95, spark=spark)
    files = image_files(real_dir)
    feats = _read(res.features_path)
    assert len(feats) == len(files) == res.manifest["counts"]["ok"]
    assert set(feats.label) == {f.parent.name for f in files}
    x = np.stack(feats.features)
    assert 0.1 < x.mean() < 2.0, "offline features are O(1) on real photos"
    # classes are separated in PCA space: nearest class centroid (leave-one-out) beats chance by far
    z = np.stack(_read(res.pca_path).pca_features)[:, :10]
    labels = np.array(_read(res.pca_path).label)
    correct = 0
    for i in range(len(z)):
        mask = np.arange(len(z)) != i
        cents = {c: z[mask & (labels == c)].mean(axis=0) for c in set(labels)}
        correct += min(cents, key=lambda c: np.linalg.norm(z[i] - cents[c])) == labels[i]
    assert correct / len(z) > 3 / len(set(labels))


@pytest.mark.slow
def test_project_gives_a_runs_own_images_its_scores(spark, sample_run, sample_dir, tmp_path):
    res = pipeline.project(sample_run.output, str(sample_dir), str(tmp_path / "again"), spark=spark)
    ref, got = _read(sample_run.pca_path), _read(res.pca_path)
    assert list(got.path) == list(ref.path)
    assert list(got.columns) == ["path", "label", "pca_features", "nearest_classes", "nearest_distances"]
    a, b = np.stack(got.pca_features), np.stack(ref.pca_features)
    rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
    assert rel.max() <= 1e-6, rel.max()
    assert {len(v) for v in got.nearest_classes} == {3}
    proj = res.manifest["projection"]
    assert res.manifest["kind"] == "projection" and proj["run_id"] == sample_run.manifest["run_id"]
    hits = np.mean([n[0] == lb for n, lb in zip(got.nearest_classes, got.label)])
    assert proj["nearest_class_accuracy"] == pytest.approx(hits) and proj["known_class_rows"] == len(got)
    assert res.manifest["pca"]["k"] == sample_run.pca.k


@pytest.mark.slow
def test_project_held_out_images_and_refuse_other_weights(spark, sample_dir, tmp_path):
    files = image_files(sample_dir)
    train, held = tmp_path / "train", tmp_path / "held"
    for i, f in enumerate(files):  # sorted by class then name: every 4th image of each class is held out
        dest = held if i % 4 == 0 else train
        (dest / f.parent.name).mkdir(parents=True, exist_ok=True)
        (dest / f.parent.name / f.name).write_bytes(f.read_bytes())
    n_held = len(image_files(held))
    assert 0 < n_held < len(files)
    run = pipeline.run(str(train), str(tmp_path / "run"), weights="offline", k=10, spark=spark)
    res = pipeline.project(run.output, str(held), str(tmp_path / "proj"), spark=spark)
    proj = res.manifest["projection"]
    assert proj["known_class_rows"] == n_held and proj["classes"] == 8
    assert proj["nearest_class_accuracy"] > 2 / 8, proj  # well above chance (1/8), even with offline weights
    with pytest.raises(ParameterError, match="sha256=.*Fix: pass the weights the run used"):
        pipeline.project(run.output, str(held), str(tmp_path / "proj2"), weights="offline", seed=3, spark=spark)
    assert not (tmp_path / "proj2" / "manifest.json").exists()


# --------------------------------------------------------------------------- S3: what a run costs in requests


def _run_on_s3(s3, spark, sample_dir, n):
    """Run the pipeline S3 -> S3 on the first ``n`` sample photos; the requests it made, by operation and key."""
    from .conftest import image_files

    bucket = s3.bucket()
    s3.upload(sample_dir, f"s3://{bucket}/in", image_files(sample_dir)[:n])
    mark = s3.mark()
    result = pipeline.run(f"s3://{bucket}/in", f"s3://{bucket}/out", weights="offline", k=3, spark=spark,
                          images_per_partition=64)
    return result, s3.requests(mark)


def test_s3_run_costs_one_get_per_photo_and_a_fixed_number_besides(s3_spark, s3, sample_dir):
    """The request count of a run on S3 (a regression test): per photo its GET, plus what listing costs, plus a
    number per run that does not grow with the photos; no COPY of data files by the run's commit."""
    from collections import Counter

    costs = {}
    for n in (40, 80):
        result, requests = _run_on_s3(s3, s3_spark, sample_dir, n)
        assert result.manifest["counts"]["total"] == n == result.manifest["counts"]["ok"]
        on_input = [r for r in requests if "/in/" in r["path"] and r["op"] != "ListObjectsV2"]
        assert Counter(r["op"] for r in on_input) == {"GetObject": n}, "one GET per photo, no HEAD"
        assert len({r["path"] for r in on_input}) == n
        costs[n] = Counter(r["op"] for r in requests)
        copies = [r["headers"].get("x-amz-copy-source", "") for r in requests if r["op"] == "CopyObject"]
        assert all("/_temporary/" in c for c in copies), f"only Spark's write renames its task files: {copies}"
        assert not [c for c in copies if "/features/" in c], "the tasks PUT the features' part files at their keys"
        parts = sorted(f["name"] for f in result.manifest["files"]["features"])
        for op in ("CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"):  # staged, then published
            done = [r["path"].rsplit("/", 1)[-1] for r in requests if r["op"] == op and "/out/features/" in r["path"]]
            assert sorted(done) == parts, (op, done)
        assert not [r for r in requests if r["op"] == "PutObject" and "/out/features/" in r["path"]]
    assert costs[80]["ListObjectsV2"] == costs[40]["ListObjectsV2"], "listing 80 keys costs what 40 do"
    grown = sum(costs[80].values()) - sum(costs[40].values())
    assert grown <= 40 * 2, (grown, costs)
    assert sum(costs[80].values()) <= 2 * 80 + 400, costs  # measured 2026-12-02: 443 (125 GET, 152 HEAD, 103 LIST)


def test_small_runs_check_and_fit_on_the_driver_large_ones_with_spark(spark, tmp_path, monkeypatch, sample_dir):
    """A run under the driver limits checks its rows and fits its PCA without a Spark job; over them, with Spark's
    jobs; the manifests agree (counts, files, explained variance)."""
    from p8utils.protocol import commit as commit_mod
    from p8utils.protocol import rowcheck

    called = {"spark_check": 0, "spark_fit": 0}
    spark_check, spark_fit = rowcheck.check_rows, pipeline.fit_pca

    def counting_check(*a, **k):
        called["spark_check"] += 1
        return spark_check(*a, **k)

    def counting_fit(*a, **k):
        called["spark_fit"] += 1
        return spark_fit(*a, **k)

    monkeypatch.setattr(commit_mod, "check_rows", counting_check)
    monkeypatch.setattr(pipeline, "fit_pca", counting_fit)
    small = pipeline.run(str(sample_dir), str(tmp_path / "small"), weights="offline", k=5, spark=spark)
    assert called == {"spark_check": 0, "spark_fit": 0}
    monkeypatch.setattr(commit_mod, "DRIVER_CHECK_ROWS", 0)
    monkeypatch.setattr(pipeline, "DRIVER_FIT_ROWS", 0)
    large = pipeline.run(str(sample_dir), str(tmp_path / "large"), weights="offline", k=5, spark=spark)
    assert called == {"spark_check": 1, "spark_fit": 1}
    assert small.manifest["counts"] == large.manifest["counts"]
    np.testing.assert_allclose(small.pca.explained_variance, large.pca.explained_variance, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(small.pca.mean, large.pca.mean, rtol=1e-6, atol=1e-7)
