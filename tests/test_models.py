from __future__ import annotations

import numpy as np
import pytest

from p8utils.errors import ParameterError, WeightsUnavailableError
from p8utils.models import MODELS, build_model, get_spec, load_weights, weights_digest


def test_registry_widths():
    assert MODELS["mobilenet_v2"].width == 1280
    assert MODELS["resnet50"].width == 2048
    with pytest.raises(ParameterError, match="Fix: use one of"):
        get_spec("vgg16")


@pytest.mark.parametrize("name,module", [("mobilenet_v2", "mobilenet_v2"), ("resnet50", "resnet50")])
def test_preprocess_equals_keras(name, module):
    import keras

    x = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    expected = getattr(keras.applications, module).preprocess_input(x.astype(np.float32).copy())
    np.testing.assert_allclose(get_spec(name).preprocess(x), expected, rtol=1e-6, atol=1e-5)


def test_build_model_is_layers_minus_two():
    import keras

    model = build_model(get_spec("mobilenet_v2"))
    assert tuple(model.output.shape) == (None, 1280)
    assert isinstance(model.layers[-1], keras.layers.GlobalAveragePooling2D)


def test_offline_weights_are_meaningful_and_deterministic(offline_bundle):
    again = load_weights("mobilenet_v2", "offline", seed=0)
    assert again.sha256 == offline_bundle.sha256
    other = load_weights("mobilenet_v2", "offline", seed=1)
    assert other.sha256 != offline_bundle.sha256
    assert offline_bundle.source == "offline" and offline_bundle.seed == 0
    assert weights_digest(offline_bundle.arrays) == offline_bundle.sha256
    # BatchNorm statistics were recalibrated: moving variances are not the init value 1.
    variances = [a for a in offline_bundle.arrays if a.ndim == 1]
    assert not all(np.allclose(v, 1.0) for v in variances)


def test_imagenet_unreachable_names_the_remedy(tmp_path, monkeypatch):
    # Empty Keras cache and a proxy that refuses connections: the download fails at once.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    with pytest.raises(WeightsUnavailableError) as info:
        load_weights("mobilenet_v2", "imagenet")
    msg = str(info.value)
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5" in msg
    assert str(tmp_path / "keras" / "models") in msg
    assert "weights='offline'" in msg


def test_auto_falls_back_loudly(tmp_path, monkeypatch, offline_bundle):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    bundle = load_weights("mobilenet_v2", "auto", seed=0)
    assert bundle.source == "offline" and bundle.sha256 == offline_bundle.sha256
    assert "OFFLINE SEEDED" in bundle.warning and "NOT ImageNet" in bundle.warning


def test_weights_from_file_roundtrip(tmp_path, offline_bundle):
    model = build_model(offline_bundle.spec, offline_bundle.arrays)
    path = tmp_path / "mine.weights.h5"
    model.save_weights(str(path))
    loaded = load_weights("mobilenet_v2", str(path))
    assert loaded.sha256 == offline_bundle.sha256 and loaded.source == str(path)


def test_weights_bad_file_and_missing_file(tmp_path):
    with pytest.raises(ParameterError, match="no such file"):
        load_weights("mobilenet_v2", str(tmp_path / "missing.h5"))
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(WeightsUnavailableError, match="could not be loaded"):
        load_weights("mobilenet_v2", str(bad))


@pytest.mark.parametrize("name,module", [("mobilenet_v2", "mobilenet_v2"), ("resnet50", "resnet50")])
def test_preprocess_into_buffer_is_bitwise_keras(name, module):
    import keras

    x = np.random.default_rng(1).integers(0, 256, (3, 5, 5, 3)).astype(np.uint8)
    out = np.full(x.shape, np.nan, np.float32)
    res = get_spec(name).preprocess(x, out=out)
    assert res is out
    np.testing.assert_array_equal(out, getattr(keras.applications, module).preprocess_input(x.astype(np.float32)))


# --------------------------------------------------------------------------- input sizes


def test_sizes_are_declared_once_and_each_names_its_imagenet_file():
    from p8utils.models import DEFAULT_IMAGE_SIZE, IMAGE_SIZES

    assert IMAGE_SIZES == (96, 128, 160, 192, 224) and DEFAULT_IMAGE_SIZE == 224
    assert get_spec("mobilenet_v2") == MODELS["mobilenet_v2"] and get_spec("mobilenet_v2").input_size == (224, 224)
    for size in IMAGE_SIZES:
        spec = get_spec("mobilenet_v2", size)
        assert spec.input_size == (size, size) and spec.image_size == size and spec.width == 1280
        assert spec.imagenet_file == f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{size}.h5"
    assert get_spec("resnet50").imagenet_file == "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    with pytest.raises(ParameterError, match=r"image_size=128 is not available for model='resnet50'.*\[224\]"):
        get_spec("resnet50", 128)
    for bad in (100, 0, "224", True):
        with pytest.raises(ParameterError, match="image_size=.*Fix: use one of"):
            get_spec("mobilenet_v2", bad)


def test_image_size_is_a_run_parameter():
    from p8utils.config import RunConfig, parameters

    p = {q.name: q for q in parameters()}["image_size"]
    assert p.default == 224 and p.kind == "int" and p.choices == (96, 128, 160, 192, 224)
    assert RunConfig(input="in", output="out", image_size=128).image_size == 128
    with pytest.raises(ParameterError, match="image_size=100"):
        RunConfig(input="in", output="out", image_size=100)
    with pytest.raises(ParameterError, match="image_size=96 is not available for model='resnet50'"):
        RunConfig(input="in", output="out", model="resnet50", image_size=96)


def test_offline_weights_at_224_are_unchanged(offline_bundle):
    """Seed 0's offline weights are those of earlier runs (a size parameter must not change them).

    Not bitwise across CPUs: the BatchNorm calibration pass runs TensorFlow's float reductions, whose kernels
    differ between AVX2 and AVX-512 machines (SHA-256 17a8c4fd… on the 2026-12-01 AVX2 machines, f33279a1… on
    the 2026-12-02 AVX-512 ones, same code). The arrays' shapes are exact and their sums agree to 1e-5.
    """
    import numpy as np

    assert offline_bundle.spec.input_size == (224, 224)
    arrays = offline_bundle.arrays
    assert (len(arrays), sum(a.size for a in arrays)) == (260, 2_257_984)
    stats = [sum(float(np.sum(f(a), dtype=np.float64)) for a in arrays) for f in (lambda a: a, np.square, np.abs)]
    np.testing.assert_allclose(stats, [49575.280522193774, 193257.6619335688, 198320.63366774347], rtol=1e-5)


@pytest.mark.slow
def test_offline_weights_at_a_small_size_give_o1_features(sample_dir, offline_bundle):
    from PIL import Image

    from .conftest import image_files

    bundle = load_weights("mobilenet_v2", "offline", seed=0, image_size=96)
    assert bundle.spec.input_size == (96, 96) and bundle.sha256 != offline_bundle.sha256
    assert [a.shape for a in bundle.arrays] == [a.shape for a in offline_bundle.arrays]  # same network, other BN stats
    batch = np.stack([np.asarray(Image.open(f).convert("RGB").resize((96, 96), Image.BICUBIC))
                      for f in image_files(sample_dir)[:4]])
    feats = np.asarray(build_model(bundle.spec, bundle.arrays)(bundle.spec.preprocess(batch)))
    assert feats.shape == (4, 1280) and 0.05 < feats.mean() < 5  # O(1), not the ~1e-12 of an untrained net
    assert load_weights("mobilenet_v2", "offline", seed=0, image_size=96).sha256 == bundle.sha256


@pytest.mark.parametrize("size", [96, 160])
def test_imagenet_unreachable_names_the_file_of_the_size(tmp_path, monkeypatch, size):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    with pytest.raises(WeightsUnavailableError) as info:
        load_weights("mobilenet_v2", "imagenet", image_size=size)
    msg = str(info.value)
    assert f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{size}.h5" in msg and "_224.h5" not in msg
    assert str(tmp_path / "keras" / "models") in msg and "weights='offline'" in msg


def _save_legacy_h5(model, path):
    """Write ``model``'s weights in the legacy Keras ``.h5`` layout, as Keras distributes ImageNet weights."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as fh:
        legacy_h5_format.save_weights_to_hdf5_group(fh, model)


@pytest.mark.parametrize("include_top", [True, False], ids=["include_top", "no_top"])
def test_weights_from_a_keras_h5_file_with_or_without_top(tmp_path, offline_bundle, include_top):
    """Both files Keras distributes load: ``..._1.0_224.h5`` and ``..._1.0_224_no_top.h5``."""
    import keras

    if include_top:
        model = keras.applications.MobileNetV2(weights=None, include_top=True)
        model.set_weights(offline_bundle.arrays + [w.numpy() for w in model.layers[-1].weights])
        path = tmp_path / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
    else:
        model = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(224, 224, 3))
        model.set_weights(offline_bundle.arrays)  # the no-top network is the truncated one without the pooling
        path = tmp_path / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    _save_legacy_h5(model, path)
    loaded = load_weights("mobilenet_v2", str(path))
    assert loaded.source == str(path) and loaded.sha256 == offline_bundle.sha256
    small = load_weights("mobilenet_v2", str(path), image_size=128)  # a file's weights fit every size
    assert small.spec.input_size == (128, 128) and small.sha256 == offline_bundle.sha256


def test_offline_weights_come_from_the_disk_cache_the_second_time(tmp_path, monkeypatch, offline_bundle):
    import glob
    import os
    import subprocess
    import sys

    monkeypatch.setenv("P8UTILS_CACHE", str(tmp_path))
    first = load_weights("mobilenet_v2", "offline", seed=0)
    assert first.sha256 == offline_bundle.sha256, "cached or not, the same weights"
    files = glob.glob(str(tmp_path / "weights" / "*.npz"))
    assert len(files) == 1
    code = ("import sys; from p8utils.models import load_weights; b = load_weights('mobilenet_v2', 'offline'); "
            "print(b.sha256, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "P8UTILS_CACHE": str(tmp_path)}).stdout.split()
    assert out == [offline_bundle.sha256, "False"], "from the cache, without importing TensorFlow"
    with open(files[0], "r+b") as fh:  # corrupt it: rebuilt, same weights
        fh.write(b"junk")
    assert load_weights("mobilenet_v2", "offline", seed=0).sha256 == offline_bundle.sha256
