"""Engines behind one interface: payload on the driver, predictor in the worker."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from p8utils import engines
from p8utils.errors import ParameterError
from p8utils.models import load_weights

from .conftest import ROOT, image_files


def test_registry_and_the_unknown_engine():
    assert set(engines.ENGINES) >= {"keras", "tflite"} and engines.DEFAULT_ENGINE in engines.ENGINES
    for name, engine in engines.ENGINES.items():
        assert engine.name == name and engine.description
    with pytest.raises(ParameterError, match="engine='onnx' is not supported"):
        engines.get_engine("onnx")


def test_payload_is_prepared_once_per_weights(offline_bundle):
    first = engines.payload(offline_bundle, "tflite")
    assert isinstance(first, bytes) and engines.payload(offline_bundle, "tflite") is first
    assert engines.payload(offline_bundle, "keras") is offline_bundle.arrays


def test_predictors_of_every_engine_agree(sample_dir, offline_bundle):
    from PIL import Image

    spec = offline_bundle.spec
    batch = np.stack([np.asarray(Image.open(f).convert("RGB").resize(spec.input_size, Image.BICUBIC))
                      for f in image_files(sample_dir)[:5]])
    x = spec.preprocess(batch)
    out = {name: engines.get_engine(name).build(spec, engines.payload(offline_bundle, name), 1)(x)
           for name in ("keras", "tflite")}
    for name, feats in out.items():
        assert feats.shape == (5, spec.width) and feats.dtype == np.float32, name
    ref = out["keras"]
    assert np.abs(ref).mean() > 0.05
    rel = np.linalg.norm(out["tflite"] - ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert rel.max() <= 1e-4



def test_keras_predictor_equals_one_model_call_on_a_large_batch(sample_dir, offline_bundle):
    from PIL import Image

    from p8utils.models import build_model

    spec = offline_bundle.spec
    photos = np.stack([np.asarray(Image.open(f).convert("RGB").resize(spec.input_size, Image.BICUBIC))
                       for f in image_files(sample_dir)[:8]])
    batch = np.concatenate([photos, photos[:, ::-1], photos[:, :, ::-1], np.rot90(photos, axes=(1, 2)),
                            photos[:5, ::-1, ::-1]])  # 37 images: the predictor runs them in slices
    x = spec.preprocess(np.ascontiguousarray(batch))
    feats = engines.get_engine("keras").build(spec, offline_bundle.arrays, 1)(x)
    direct = build_model(spec, offline_bundle.arrays)(x, training=False).numpy()
    assert feats.shape == (37, spec.width) and feats.dtype == np.float32
    rel = np.linalg.norm(feats - direct, axis=1) / np.linalg.norm(direct, axis=1)
    assert np.abs(direct).mean() > 0.05 and rel.max() <= 1e-5

def test_tflite_runs_slices_that_fit_the_caches_and_never_resizes(sample_dir, offline_bundle, monkeypatch):
    """Slices of _tflite_rows rows, the rest one image at a time, two interpreters sized once: the same features."""
    from PIL import Image

    spec = offline_bundle.spec
    flatbuffer = engines.payload(offline_bundle, "tflite")
    interpreter_class = engines._tflite_interpreter_class()
    made, resized = [], []

    class Counting(interpreter_class):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            made.append(self)

        def resize_tensor_input(self, index, shape, **kwargs):
            resized.append(list(shape))
            return super().resize_tensor_input(index, shape, **kwargs)

    monkeypatch.setattr(engines, "_tflite_interpreter_class", lambda: Counting)
    x = spec.preprocess(np.stack([np.asarray(Image.open(f).convert("RGB").resize(spec.input_size, Image.BICUBIC))
                                  for f in image_files(sample_dir)[:5]]))
    # 224 px: the largest per-image tensor is the first expansion, 112 x 112 x 96
    assert engines._TFLITE_SLICE_ELEMENTS // (112 * 112 * 96) == 1
    predict = engines.get_engine("tflite").build(spec, flatbuffer, 2)
    assert engines._tflite_rows(Counting(model_content=flatbuffer), 2) == 2
    made.clear()
    got = [predict(x), predict(x[:3]), predict(x[:1])]  # 2 + 2 + 1, 2 + 1, 1
    assert len(made) == 2 and sorted(resized) == [[1, 224, 224, 3], [2, 224, 224, 3]]
    whole = interpreter_class(model_content=flatbuffer, num_threads=1)
    index = whole.get_input_details()[0]["index"]
    whole.resize_tensor_input(index, list(x.shape))
    whole.allocate_tensors()
    whole.set_tensor(index, x)
    whole.invoke()
    ref = whole.get_tensor(whole.get_output_details()[0]["index"])
    assert got[0].shape == (5, spec.width) and got[0].dtype == np.float32 and np.abs(ref).mean() > 0.05
    np.testing.assert_allclose(got[0], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[1], got[0][:3])
    np.testing.assert_array_equal(got[2], got[0][:1])


_WORKER = """
import json, sys
if sys.argv[2] == "block":  # EMR's Python 3.9 has no ai_edge_litert wheel
    sys.modules["ai_edge_litert"] = None
    sys.modules["ai_edge_litert.interpreter"] = None
import numpy as np
from p8utils import engines
from p8utils.models import get_spec
spec = get_spec("mobilenet_v2")
predict = engines.get_engine("tflite").build(spec, open(sys.argv[1], "rb").read(), 1)
features = predict(np.load(sys.argv[3])).tolist()  # the interpreter is made at the first call
print(json.dumps({"tensorflow_imported": "tensorflow" in sys.modules, "features": features}))
"""


@pytest.mark.parametrize("litert", ["available", "block"])
def test_tflite_worker_imports_tensorflow_only_without_litert(tmp_path, sample_dir, offline_bundle, litert):
    """A worker runs the flatbuffer with LiteRT (no TensorFlow import), else falls back to tf.lite."""
    pytest.importorskip("ai_edge_litert") if litert == "available" else None
    from PIL import Image

    (tmp_path / "model.tflite").write_bytes(engines.payload(offline_bundle, "tflite"))
    spec = offline_bundle.spec
    x = spec.preprocess(np.stack([np.asarray(Image.open(f).convert("RGB").resize(spec.input_size, Image.BICUBIC))
                                  for f in image_files(sample_dir)[:3]]))
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run([sys.executable, "-c", _WORKER, str(tmp_path / "model.tflite"), litert,
                           str(tmp_path / "x.npy")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["tensorflow_imported"] is (litert == "block")
    ref = engines.get_engine("keras").build(spec, offline_bundle.arrays, 1)(x)
    got = np.asarray(out["features"], dtype=np.float32)
    assert (np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)).max() <= 1e-4


def test_weights_digest_changes_the_payload(offline_bundle):
    other = load_weights("mobilenet_v2", "offline", seed=1)
    assert engines.payload(other, "tflite") != engines.payload(offline_bundle, "tflite")


# --------------------------------------------------------------------------- input sizes


def _photos():
    """The real Fruits-360 photos when present (../shared/fruits360), else the synthetic sample."""
    from .conftest import REAL_DIR, SAMPLE_DIR

    return image_files(REAL_DIR if REAL_DIR.is_dir() else SAMPLE_DIR)


def _cosine(a, b):
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.slow
def test_engines_at_a_small_input_size(sample_dir):
    """At 128 × 128 every engine gives (n, 1280) features, and tflite still equals keras within 1e-4."""
    from p8utils import images

    bundle = load_weights("mobilenet_v2", "offline", seed=0, image_size=128)
    spec = bundle.spec
    x = spec.preprocess(images.decode_files([str(f) for f in image_files(sample_dir)[:6]], spec.input_size))
    assert x.shape == (6, 128, 128, 3)
    ref = engines.get_engine("keras").build(spec, engines.payload(bundle, "keras"), 1)(x)
    got = engines.get_engine("tflite").build(spec, engines.payload(bundle, "tflite"), 1)(x)
    assert ref.shape == got.shape == (6, 1280) and np.abs(ref).mean() > 0.05
    assert (np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)).max() <= 1e-4


# --------------------------------------------------------------------------- int8


#: Bounds on the per-image cosine of int8 to fp32 features at 224 (offline weights). Measured: median 0.968,
#: 1st percentile 0.959, minimum 0.957 on the 240 real photos; 0.964 / 0.956 / 0.956 on data_sample.
_INT8_COSINE_MEDIAN, _INT8_COSINE_MIN = 0.95, 0.93


@pytest.fixture(scope="module")
def int8_case(offline_bundle, tmp_path_factory):
    """An int8 model of the offline weights calibrated on 32 photos, converted once into a private disk cache."""
    from types import SimpleNamespace

    from p8utils import images

    cache = tmp_path_factory.mktemp("p8utils-cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("P8UTILS_CACHE", str(cache))
    spec = offline_bundle.spec
    x = spec.preprocess(images.decode_files([str(f) for f in _photos()], spec.input_size))
    calibration = x[:: max(1, len(x) // 32)][:32]
    flatbuffer = engines.payload(offline_bundle, "tflite-int8", calibration)
    yield SimpleNamespace(cache=cache / "tflite", x=x, calibration=calibration, flatbuffer=flatbuffer)
    patch.undo()


@pytest.mark.slow
def test_int8_features_are_close_to_fp32(int8_case, offline_bundle):
    spec = offline_bundle.spec
    got = engines.get_engine("tflite-int8").build(spec, int8_case.flatbuffer, 2)(int8_case.x)
    ref = engines.get_engine("keras").build(spec, offline_bundle.arrays, 2)(int8_case.x)
    assert got.shape == ref.shape == (len(int8_case.x), 1280) and got.dtype == np.float32
    cos = _cosine(got, ref)
    assert np.median(cos) >= _INT8_COSINE_MEDIAN and cos.min() >= _INT8_COSINE_MIN, (np.median(cos), cos.min())
    assert engines.get_engine("tflite-int8").calibrated and not engines.get_engine("tflite").calibrated


@pytest.mark.slow
def test_int8_model_is_cached_on_disk_and_rebuilt_when_corrupt(int8_case, offline_bundle, monkeypatch):
    import tensorflow as tf

    monkeypatch.setenv("P8UTILS_CACHE", str(int8_case.cache.parent))
    assert engines.cache_dir() == str(int8_case.cache)
    models_ = [f for f in int8_case.cache.glob("*.tflite") if f.read_bytes() == int8_case.flatbuffer]
    assert len(models_) == 1 and (int8_case.cache / (models_[0].name + ".sha256")).is_file()
    assert not list(int8_case.cache.glob(".tmp-*")), "temporary files are renamed or removed"
    prepare = engines.get_engine("tflite-int8").prepare

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again although the cache holds the model")

    with monkeypatch.context() as m:  # a new driver (no in-memory payload) reads the file, converts nothing
        m.setattr(tf.lite.TFLiteConverter, "from_keras_model", no_conversion)
        assert prepare(offline_bundle, int8_case.calibration) == int8_case.flatbuffer
    models_[0].write_bytes(int8_case.flatbuffer[: len(int8_case.flatbuffer) // 2])  # a partial file
    rebuilt = prepare(offline_bundle, int8_case.calibration)
    assert len(rebuilt) > len(int8_case.flatbuffer) // 2 and models_[0].read_bytes() == rebuilt
    spec = offline_bundle.spec
    x = int8_case.x[:8]
    a = engines.get_engine("tflite-int8").build(spec, rebuilt, 1)(x)
    b = engines.get_engine("tflite-int8").build(spec, int8_case.flatbuffer, 1)(x)
    assert _cosine(a, b).min() > 0.9999


def test_int8_needs_calibration_images_at_the_model_size(offline_bundle):
    with pytest.raises(ParameterError, match="needs calibration images"):
        engines.payload(offline_bundle, "tflite-int8")
    with pytest.raises(ParameterError, match=r"calibration has shape \(2, 96, 96, 3\).*\(n, 224, 224, 3\)"):
        engines.get_engine("tflite-int8").prepare(offline_bundle, np.zeros((2, 96, 96, 3), np.float32))


@pytest.mark.slow
def test_int8_and_small_size_through_the_pipeline(spark, sample_dir, tmp_path, monkeypatch):
    """The pipeline calibrates on input photos, broadcasts the int8 model and writes (n, 1280) features at 128 px."""
    import pandas as pd

    from p8utils.pipeline import run

    monkeypatch.setenv("P8UTILS_CACHE", str(tmp_path / "cache"))
    result = run(str(sample_dir), str(tmp_path / "int8"), weights="offline", engine="tflite-int8", image_size=128,
                 k=5, spark=spark)
    params = result.manifest["parameters"]
    assert params["image_size"] == 128 and params["engine"] == "tflite-int8"
    feats = pd.read_parquet(result.features_path)
    ok = feats[feats.error.isna()]
    assert len(feats) == len(image_files(sample_dir)) and len(ok) > 0.9 * len(feats)
    assert {len(f) for f in ok.features} == {1280} and np.stack(ok.features).mean() > 0.05
    assert list((tmp_path / "cache" / "tflite").glob("*.tflite")), "the int8 model is cached on disk"
