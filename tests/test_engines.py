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
