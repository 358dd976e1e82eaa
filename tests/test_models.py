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
