"""Inference engines behind one interface: a payload made once on the driver, a predictor per worker.

An :class:`Engine` has two halves:

``prepare(bundle, calibration) -> payload``
    Runs on the driver, once per weights (cached here): what is broadcast to
    the executors. ``keras``: the weight arrays; ``tflite``: the flatbuffer of
    the model converted with TensorFlow's TFLite converter. An engine with
    ``calibrated=True`` receives ``calibration``, a batch of preprocessed input
    images (float32 ``(n, h, w, 3)``) chosen from the run's input; the others
    receive None.
``build(spec, payload, threads) -> predictor``
    Runs in a Python worker, once (:mod:`p8utils.featurize` caches the
    result per worker): a function from a preprocessed batch, float32
    ``(n, h, w, 3)``, to features, float32 ``(n, spec.width)``.

The featurization UDF, ``python -m p8utils check`` and the benchmark all go
through :func:`get_engine`, so they measure and run the same code. With
``bundle = models.load_weights("mobilenet_v2", "offline")``,
``get_engine("tflite").build(bundle.spec, payload(bundle, "tflite"), 2)`` is
a predictor mapping a float32 ``(4, 224, 224, 3)`` batch to ``(4, 1280)``
features (it builds a TensorFlow model: seconds, so not an example here).

Examples
--------
>>> from p8utils import engines
>>> list(engines.ENGINES), engines.DEFAULT_ENGINE
(['keras', 'tflite', 'tflite-int8'], 'tflite')
>>> [name for name, engine in engines.ENGINES.items() if engine.calibrated]
['tflite-int8']
>>> engines.get_engine("onnx")
Traceback (most recent call last):
    ...
p8utils.errors.ParameterError: engine='onnx' is not supported. Fix: use one of ['keras', 'tflite', 'tflite-int8'].
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from p8utils import storage
from p8utils.errors import ParameterError
from p8utils.models import ModelSpec, WeightsBundle, build_model, distribution_version

__all__ = ["CALIBRATION_IMAGES", "DEFAULT_ENGINE", "ENGINES", "Engine", "Predictor", "cache_dir", "calibration_digest",
           "get_engine", "payload"]

log = logging.getLogger(__name__)

#: ``predictor(batch)``: float32 ``(n, h, w, 3)`` preprocessed images → float32 ``(n, width)`` features.
Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Engine:
    """One way to run the feature extractor.

    Attributes
    ----------
    name : str
        Registry key (``--engine``).
    description : str
        One line for ``--help``.
    prepare : callable
        ``prepare(bundle, calibration) -> payload`` on the driver; the payload
        is pickled into a broadcast variable.
    build : callable
        ``build(spec, payload, threads) -> Predictor`` in a worker.
    calibrated : bool
        The engine needs calibration images from the input (e.g. int8
        quantization); :func:`payload` then requires them.
    """

    name: str
    description: str
    prepare: Callable[[WeightsBundle, Optional[np.ndarray]], object] = field(repr=False)
    build: Callable[[ModelSpec, object, int], Predictor] = field(repr=False)
    calibrated: bool = False


def _configure_tf_threads(threads: int) -> None:
    """Pin TensorFlow's thread pools to ``threads`` (before TF initialises)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TF already initialised in this process: keep its pools
        log.debug("TensorFlow threads already configured")


def _keras_prepare(bundle: WeightsBundle, calibration: Optional[np.ndarray] = None) -> object:
    return bundle.arrays


#: Images per call of the Keras model. TensorFlow holds a call's activations at once (about 11 MiB per 224 px
#: image for MobileNetV2): one call on 64 images peaked a worker at 1.5 GiB, slices of 16 at 1.0 GiB, and were
#: not slower on 2 CPU cores (36 vs 30-34 img/s, in-process). ``benchmarks/bench.py`` reports the workers' RSS.
_KERAS_SLICE = 16


def _keras_build(spec: ModelSpec, arrays: object, threads: int) -> Predictor:
    """Build the Keras model once; a compiled ``tf.function`` with a fixed input signature.

    The predictor runs the model on slices of at most :data:`_KERAS_SLICE`
    images and concatenates the features (same values as one call).
    """
    _configure_tf_threads(threads)
    import tensorflow as tf

    model = build_model(spec, arrays)  # type: ignore[arg-type]
    w, h = spec.input_size
    fn = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32)],
        reduce_retracing=True,
    )

    def predict(batch: np.ndarray) -> np.ndarray:
        starts = range(0, max(len(batch), 1), _KERAS_SLICE)
        parts = [fn(tf.constant(batch[i: i + _KERAS_SLICE])).numpy() for i in starts]
        return np.concatenate(parts).astype(np.float32, copy=False)

    return predict


def _tflite_prepare(bundle: WeightsBundle, calibration: Optional[np.ndarray] = None) -> object:
    """Convert the Keras model to a TFLite flatbuffer (float32, TensorFlow's converter; disk cache first)."""
    return _converted(bundle, _FP32_RECIPE, None, lambda: _fp32_convert(bundle))


def _fp32_convert(bundle: WeightsBundle) -> bytes:
    import tensorflow as tf

    return _quietly(lambda: tf.lite.TFLiteConverter.from_keras_model(build_model(bundle.spec, bundle.arrays)).convert())


def _quietly(convert: Callable[[], bytes]) -> bytes:
    """Run a TFLite conversion with its console dump (hundreds of ``TensorSpec`` lines) sent to the log."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        flatbuffer = convert()
    log.debug("TFLite converter output:\n%s", printed.getvalue())
    return flatbuffer


def _tflite_interpreter_class():  # noqa: ANN202 - an Interpreter class
    """LiteRT's interpreter if installed (no TensorFlow import), else TensorFlow's."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806
    return Interpreter


#: Elements in one TFLite invocation's largest activation (its rows × that tensor's elements per image). XNNPACK
#: ran fastest per image on slices this size: two single-threaded processes on 2 AMD EPYC cores, ms per image at
#: 96 / 128 / 160 / 224 px (largest tensor 221 k / 393 k / 614 k / 1.2 M elements), fp32: 0.77 / 1.34 / 1.94 / 3.81 on
#: slices of 7 / 4 / 2 / 1 rows (or near them) against 0.99 / 2.02 / 2.72 / 5.36 on 64; int8: 0.32 / 0.55 / 0.89 / 1.78
#: against 0.35 / 0.62 / 1.02 / 2.02. Larger slices spill the activations out of the core's caches.
_TFLITE_SLICE_ELEMENTS = 3 << 19


def _tflite_rows(interpreter: object, threads: int) -> int:
    """Rows per invocation: :data:`_TFLITE_SLICE_ELEMENTS` over the largest per-image tensor, times ``threads``.

    The per-image tensors are those whose shape signature has a free batch
    dimension (-1); the weights have none. XNNPACK splits an invocation
    across ``threads``, so each thread gets about one slice's worth (one
    process with 2 threads at 96 px: 2,324 img/s on 14 rows, 1,796 on 64).
    """
    sizes = [int(np.prod(d["shape_signature"][1:])) for d in interpreter.get_tensor_details()  # type: ignore[attr-defined]
             if len(d["shape_signature"]) and d["shape_signature"][0] == -1]
    return max(1, _TFLITE_SLICE_ELEMENTS // max(sizes, default=1)) * max(1, threads)


def _tflite_build(spec: ModelSpec, flatbuffer: object, threads: int) -> Predictor:
    """TFLite interpreters (XNNPACK, ``threads`` threads) for the flatbuffer.

    A batch runs in slices of :func:`_tflite_rows` rows on one interpreter
    sized for them, and what is left (fewer rows) one image at a time on a
    second one: resizing an interpreter's input re-plans the XNNPACK runtime
    (up to 50 ms at 96 px), so neither is ever resized after its first use.
    """
    w, h = spec.input_size
    interpreters: Dict[int, Tuple[object, int, int]] = {}
    rows = {"slice": 0}

    def interpreter(n: int) -> Tuple[object, int, int]:
        if n not in interpreters:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
                it = _tflite_interpreter_class()(model_content=flatbuffer, num_threads=threads)
            inp = it.get_input_details()[0]["index"]
            it.resize_tensor_input(inp, [n, h, w, 3])
            it.allocate_tensors()
            interpreters[n] = (it, inp, it.get_output_details()[0]["index"])
        return interpreters[n]

    def predict(batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if not rows["slice"]:
            rows["slice"] = _tflite_rows(interpreter(1)[0], threads)
        out = np.empty((len(batch), spec.width), dtype=np.float32)
        start = 0
        while start < len(batch):
            n = rows["slice"] if len(batch) - start >= rows["slice"] else 1
            it, inp, res = interpreter(n)
            it.set_tensor(inp, batch[start: start + n])  # type: ignore[attr-defined]
            it.invoke()  # type: ignore[attr-defined]
            out[start: start + n] = it.get_tensor(res)  # type: ignore[attr-defined]
            start += n
        return out

    return predict


#: Converter recipes, part of the disk-cache key of converted models: change one when its conversion changes.
_INT8_RECIPE = "int8-ptq/per-channel/builtins-int8/float-io/v1"
_FP32_RECIPE = "fp32/from-keras/v1"


def cache_dir() -> str:
    """Folder of converted TFLite models: ``$P8UTILS_CACHE/tflite``, default ``~/.cache/p8utils/tflite``."""
    return storage.cache_dir("tflite")


def _cache_path(bundle: WeightsBundle, recipe: str, calibration: Optional[np.ndarray], tf_version: str) -> str:
    """Cache file of a converted model: SHA-256 of weights, input size, calibration set, TensorFlow version, recipe."""
    w, h = bundle.spec.input_size
    key = "\n".join([bundle.sha256, bundle.spec.name, f"{w}x{h}", calibration_digest(calibration), tf_version, recipe])
    return os.path.join(cache_dir(), hashlib.sha256(key.encode()).hexdigest() + ".tflite")


def _converted(bundle: WeightsBundle, recipe: str, calibration: Optional[np.ndarray],
               convert: Callable[[], bytes]) -> bytes:
    """Return the flatbuffer from the disk cache when it is there and whole, else convert it and cache it."""
    path = _cache_path(bundle, recipe, calibration, distribution_version("tensorflow-cpu", "tensorflow"))
    cached = storage.read_cached(path)
    if cached is not None and cached[4:8] == b"TFL3":
        log.info("converted model from the cache: %s", path)
        return cached
    log.info("converting (%s; cached as %s)", recipe, path)
    flatbuffer = convert()
    storage.write_cached(path, flatbuffer)
    return flatbuffer


def _int8_convert(bundle: WeightsBundle, calibration: np.ndarray) -> bytes:
    """Full-integer post-training quantization with TensorFlow's converter.

    Weights int8 per output channel, activations int8 with ranges measured on
    ``calibration`` (one image per step), int8 kernels only
    (``TFLITE_BUILTINS_INT8``); the input and output tensors stay float32 (the
    model quantizes its input and dequantizes its features itself).
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(build_model(bundle.spec, bundle.arrays))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([calibration[i: i + 1]] for i in range(len(calibration)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with warnings.catch_warnings():  # "Statistics for quantized inputs were expected": the input is float, on purpose
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs", category=UserWarning)
        return _quietly(converter.convert)


def _int8_prepare(bundle: WeightsBundle, calibration: Optional[np.ndarray] = None) -> object:
    """Return the int8 flatbuffer of ``bundle`` calibrated on ``calibration`` (disk cache, else convert and cache).

    Parameters
    ----------
    bundle : WeightsBundle
    calibration : numpy.ndarray
        Float32 ``(n, h, w, 3)`` preprocessed images at ``bundle.spec.input_size``.

    Returns
    -------
    bytes
        The flatbuffer (float32 input ``(n, h, w, 3)``, float32 output ``(n, width)``).

    Raises
    ------
    ParameterError
        ``calibration`` is missing, empty or not at the model's input size.
    """
    w, h = bundle.spec.input_size
    calibration = None if calibration is None else np.ascontiguousarray(calibration, dtype=np.float32)
    if calibration is None or calibration.ndim != 4 or calibration.shape[1:] != (h, w, 3) or len(calibration) == 0:
        got = None if calibration is None else calibration.shape
        raise ParameterError(f"calibration has shape {got}: engine='tflite-int8' needs preprocessed images of shape "
                             f"(n, {h}, {w}, 3), n >= 1. Fix: decode images at the model's input size and pass "
                             "spec.preprocess(images).")
    return _converted(bundle, _INT8_RECIPE, calibration, lambda: _int8_convert(bundle, calibration))


#: The registered engines.
ENGINES: Dict[str, Engine] = {
    "keras": Engine("keras", "the Keras model in a compiled tf.function (TensorFlow in every worker)",
                    _keras_prepare, _keras_build),
    "tflite": Engine("tflite", "the same model converted once on the driver with TensorFlow's TFLite converter, "
                               "run with XNNPACK (LiteRT when installed); equal to keras within 1e-4 relative",
                     _tflite_prepare, _tflite_build),
    "tflite-int8": Engine("tflite-int8", "full-integer post-training quantization (int8 weights and activations, "
                                         "float input/output) calibrated on input images, converted once on the "
                                         "driver and cached on disk, run with XNNPACK's quantized kernels",
                          _int8_prepare, _tflite_build, calibrated=True),
}

#: Input images a calibrated engine receives (chosen deterministically from the listing by the pipeline).
CALIBRATION_IMAGES = 200

#: Engine used when none is given: tflite measured ~1.8x faster than keras here (``make bench``).
DEFAULT_ENGINE = "tflite"


def get_engine(name: str) -> Engine:
    """Return the engine registered under ``name``.

    Raises
    ------
    ParameterError
        Unknown engine (the message lists the known ones).
    """
    try:
        return ENGINES[name]
    except (KeyError, TypeError):
        raise ParameterError(f"engine={name!r} is not supported. Fix: use one of {list(ENGINES)}.") from None


# Driver-side cache of prepared payloads: {(sha256, input size, engine, calibration digest): payload}; one entry,
# the latest. The input size is part of the key: a weights file gives the same arrays at every size.
_PAYLOADS: Dict[Tuple[str, Tuple[int, int], str, str], object] = {}


def calibration_digest(calibration: Optional[np.ndarray]) -> str:
    """SHA-256 of a calibration batch (dtype, shape and bytes); ``""`` for None."""
    if calibration is None:
        return ""
    arr = np.ascontiguousarray(calibration)
    return hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode() + arr.tobytes()).hexdigest()


def payload(bundle: WeightsBundle, engine: str, calibration: Optional[np.ndarray] = None) -> object:
    """Return ``engine``'s payload for ``bundle``, prepared once per weights on this driver.

    Parameters
    ----------
    bundle : WeightsBundle
        Resolved weights (:func:`p8utils.models.load_weights`).
    engine : str
        Key of :data:`ENGINES`.
    calibration : numpy.ndarray, optional
        Float32 ``(n, h, w, 3)`` preprocessed images for a calibrated engine
        (ignored by the others).

    Returns
    -------
    object
        What to broadcast (weight arrays, or TFLite flatbuffer bytes).

    Raises
    ------
    ParameterError
        A calibrated engine without calibration images.
    """
    spec = get_engine(engine)
    if spec.calibrated and calibration is None:
        raise ParameterError(f"engine={engine!r} needs calibration images from the input. Fix: run it through "
                             "p8utils.pipeline.run, or pass calibration=<float32 array (n, h, w, 3)>.")
    key = (bundle.sha256, bundle.spec.input_size, engine, calibration_digest(calibration) if spec.calibrated else "")
    if key not in _PAYLOADS:
        prepared = spec.prepare(bundle, calibration if spec.calibrated else None)
        _PAYLOADS.clear()
        _PAYLOADS[key] = prepared
    return _PAYLOADS[key]
