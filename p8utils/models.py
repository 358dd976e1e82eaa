"""Model registry and weights sources.

A feature extractor is the include-top Keras application cut before its
classifier (``layers[-2]``): MobileNetV2 gives 1280 features, ResNet50 2048.

Weights come from one of:

``"imagenet"``
    Keras' own download into its cache (``$KERAS_HOME/models`` or
    ``~/.keras/models``). If the file is neither cached nor downloadable a
    :class:`~p8utils.errors.WeightsUnavailableError` names the remedies; there is
    no silent fallback.
a path or URI
    A weights file (``.h5`` as Keras distributes them, include-top or no-top,
    or a ``.weights.h5`` saved by Keras 3), local or on any Hadoop filesystem.
``"offline"``
    Seeded random weights whose BatchNorm statistics are recalibrated on the
    project's synthetic fruit images, so features are O(1) (an untrained
    network gives ~1e-12). Deterministic for a given seed. For tests and demos
    without network: these are *not* ImageNet features.
``"auto"``
    ImageNet when obtainable, else ``"offline"`` with a loud warning (the demo's
    mode; real runs default to ``"imagenet"``).

Only the driver resolves weights. Executors receive the arrays by broadcast and
build the architecture with ``weights=None`` (see :mod:`p8utils.featurize`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple

import numpy as np

from p8utils import storage
from p8utils.errors import ParameterError, WeightsUnavailableError

if TYPE_CHECKING:  # pragma: no cover
    import keras
    from pyspark.sql import SparkSession

__all__ = [
    "ModelSpec",
    "WeightsBundle",
    "MODELS",
    "WEIGHT_MODES",
    "get_spec",
    "build_model",
    "load_weights",
    "weights_digest",
    "keras_cache_dir",
]

log = logging.getLogger(__name__)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _preprocess_tf(x: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Scale RGB ``[0, 255]`` to ``[-1, 1]`` (Keras ``mode="tf"``), into ``out`` if given."""
    out = np.empty(x.shape, np.float32) if out is None else out
    # a true float32 division, as Keras does: a multiplication by 1/127.5 differs in the last bit
    np.divide(x, np.float32(127.5), out=out, casting="unsafe")
    out -= np.float32(1.0)
    return out


_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def _preprocess_caffe(x: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """RGB → BGR and subtract the ImageNet mean (Keras ``mode="caffe"``), into ``out`` if given."""
    out = np.empty(x.shape, np.float32) if out is None else out
    np.subtract(x[..., ::-1], _CAFFE_MEAN_BGR, out=out, casting="unsafe")
    return out


@dataclass(frozen=True)
class ModelSpec:
    """What the pipeline needs to know about one feature extractor.

    Attributes
    ----------
    name : str
        Registry key, e.g. ``"mobilenet_v2"``.
    width : int
        Length of the feature vector (output of ``layers[-2]``).
    input_size : (int, int)
        ``(width, height)`` the images are resized to.
    application : str
        Name of the ``keras.applications`` constructor.
    preprocess : callable
        ``preprocess(x, out=None)``: ``uint8``/``float`` array ``(n, h, w, 3)``
        RGB → ``float32`` model input (written into ``out`` when given, one
        pass, no temporaries), same as ``keras.applications.<module>.preprocess_input``.
    imagenet_file : str
        File name Keras caches the include-top ImageNet weights under.
    """

    name: str
    width: int
    input_size: Tuple[int, int]
    application: str
    preprocess: Callable[..., np.ndarray] = field(repr=False)
    imagenet_file: str = ""


MODELS: Dict[str, ModelSpec] = {
    "mobilenet_v2": ModelSpec(
        "mobilenet_v2",
        1280,
        (224, 224),
        "MobileNetV2",
        _preprocess_tf,
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5",
    ),
    "resnet50": ModelSpec(
        "resnet50",
        2048,
        (224, 224),
        "ResNet50",
        _preprocess_caffe,
        "resnet50_weights_tf_dim_ordering_tf_kernels.h5",
    ),
}

#: Weight modes besides a path/URI to a weights file.
WEIGHT_MODES: Tuple[str, ...] = ("imagenet", "offline", "auto")


@dataclass(frozen=True)
class WeightsBundle:
    """Resolved weights of a feature extractor, ready to broadcast.

    Attributes
    ----------
    spec : ModelSpec
    source : str
        ``"imagenet"``, ``"offline"`` or the path/URI the weights came from.
    arrays : list of numpy.ndarray
        ``model.get_weights()`` of the truncated model (float32), in layer order.
    sha256 : str
        :func:`weights_digest` of ``arrays``.
    seed : int or None
        Seed of offline weights.
    warning : str or None
        Set when ``"auto"`` fell back to offline weights.
    """

    spec: ModelSpec
    source: str
    arrays: List[np.ndarray] = field(repr=False)
    sha256: str
    seed: Optional[int] = None
    warning: Optional[str] = None


def get_spec(model: str) -> ModelSpec:
    """Return the :class:`ModelSpec` registered under ``model``.

    Raises
    ------
    ParameterError
        Unknown model name (the message lists the known ones).
    """
    try:
        return MODELS[model]
    except (KeyError, TypeError):
        raise ParameterError(
            f"model={model!r} is not supported. Fix: use one of {sorted(MODELS)}."
        ) from None


def keras_cache_dir() -> str:
    """Folder where Keras caches downloaded weights (``$KERAS_HOME/models``)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models")


def weights_digest(arrays: List[np.ndarray]) -> str:
    """SHA-256 over the dtypes, shapes and bytes of ``arrays`` (hex string)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _application(spec: ModelSpec):  # noqa: ANN202 - a keras.applications constructor
    """Return the ``keras.applications`` constructor of ``spec``."""
    import keras

    return getattr(keras.applications, spec.application)


def _truncate(base: keras.Model) -> keras.Model:
    """Cut an include-top application before its classifier (``layers[-2]``)."""
    import keras

    return keras.Model(base.input, base.layers[-2].output, name=f"{base.name}_features")


def build_model(spec: ModelSpec, arrays: Optional[List[np.ndarray]] = None) -> keras.Model:
    """Build the feature extractor of ``spec`` without downloading anything.

    Parameters
    ----------
    spec : ModelSpec
    arrays : list of numpy.ndarray, optional
        Weights as returned by ``model.get_weights()`` (e.g. a broadcast value).

    Returns
    -------
    keras.Model
        Input ``(None, h, w, 3)`` float32, output ``(None, spec.width)`` float32.
    """
    model = _truncate(_application(spec)(weights=None, include_top=True))
    if arrays is not None:
        model.set_weights(arrays)
    return model


def load_weights(
    model: str = "mobilenet_v2",
    weights: str = "imagenet",
    seed: int = 0,
    spark: Optional[SparkSession] = None,
) -> WeightsBundle:
    """Resolve the weights of a feature extractor on the driver.

    Parameters
    ----------
    model : str
        Registry key (:data:`MODELS`).
    weights : str
        ``"imagenet"``, ``"offline"``, ``"auto"`` or a path/URI of a weights file.
    seed : int
        Seed of ``"offline"`` weights.
    spark : SparkSession, optional
        Needed to read a weights file from a Hadoop URI (``s3://``).

    Returns
    -------
    WeightsBundle

    Raises
    ------
    ParameterError
        Unknown model, or a weights file that does not exist.
    WeightsUnavailableError
        ImageNet weights neither cached nor downloadable, or an unreadable file.
    """
    spec = get_spec(model)
    if not isinstance(weights, str) or not weights:
        raise ParameterError(
            f"weights={weights!r} is not valid. Fix: pass one of {list(WEIGHT_MODES)} or a weights file path."
        )
    if weights == "imagenet":
        return _imagenet(spec)
    if weights == "offline":
        return _offline(spec, seed)
    if weights == "auto":
        try:
            return _imagenet(spec)
        except WeightsUnavailableError as exc:
            warning = (
                "ImageNet weights are unavailable on this machine, so OFFLINE SEEDED "
                "weights were used: features are NOT ImageNet features and are only good "
                f"for demos and tests. Cause: {exc}"
            )
            log.warning(warning)
            bundle = _offline(spec, seed)
            return WeightsBundle(spec, "offline", bundle.arrays, bundle.sha256, seed, warning)
    return _from_file(spec, weights, spark)


def _imagenet(spec: ModelSpec) -> WeightsBundle:
    """Load ImageNet weights through Keras (cache, else download)."""
    try:
        base = _application(spec)(weights="imagenet", include_top=True)
    except Exception as exc:  # noqa: BLE001 - Keras raises plain Exception on URL failure
        cached = os.path.join(keras_cache_dir(), spec.imagenet_file)
        raise WeightsUnavailableError(
            f"could not obtain ImageNet weights for model={spec.name!r} "
            f"({type(exc).__name__}: {exc}). Fix, one of: (1) run once with internet access "
            f"so Keras caches them; (2) copy {spec.imagenet_file} to {cached} (on EMR the "
            "bootstrap action can copy it from S3: --weights s3://…); (3) pass "
            "weights=<path or s3:// URI of the .h5 file>; (4) for tests and demos only, "
            "weights='offline' (seeded, not ImageNet) or 'auto'."
        ) from exc
    arrays = [np.asarray(a, dtype=np.float32) for a in _truncate(base).get_weights()]
    return WeightsBundle(spec, "imagenet", arrays, weights_digest(arrays))


def _from_file(spec: ModelSpec, uri: str, spark: Optional[SparkSession]) -> WeightsBundle:
    """Load weights from a local file or a Hadoop URI."""
    if not storage.is_local(uri) and spark is None:
        raise ParameterError(f"weights={uri!r} is a remote URI. Fix: pass the SparkSession (spark=...).")
    if not storage.exists(uri, spark):
        raise ParameterError(
            f"weights={uri!r}: no such file, and it is not one of {list(WEIGHT_MODES)}. "
            "Fix: pass an existing .h5 weights file, or 'imagenet'."
        )
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    suffix = ".weights.h5" if name.endswith(".weights.h5") else os.path.splitext(name)[1] or ".h5"
    with tempfile.TemporaryDirectory(prefix="p8utils-weights-") as tmp:
        local = os.path.join(tmp, "weights" + suffix)
        with open(local, "wb") as fh:
            fh.write(storage.read_bytes(uri, spark))
        base = _application(spec)(weights=None, include_top=True)
        errors = []
        # A .weights.h5 is saved from p8utils' truncated model; a Keras .h5 is include-top.
        truncated = _truncate(base)
        targets = (truncated, base) if suffix == ".weights.h5" else (base, truncated)
        for target in targets:
            try:
                target.load_weights(local)
                break
            except Exception as exc:  # noqa: BLE001 - h5py/Keras raise many types
                errors.append(f"{type(exc).__name__}: {exc}")
        else:
            raise WeightsUnavailableError(
                f"weights={uri!r} could not be loaded into {spec.application} "
                f"({'; '.join(errors)[:500]}). Fix: pass the Keras .h5 file of this model "
                f"(e.g. {spec.imagenet_file}) or a .weights.h5 saved from p8utils' model."
            )
    arrays = [np.asarray(a, dtype=np.float32) for a in _truncate(base).get_weights()]
    return WeightsBundle(spec, uri, arrays, weights_digest(arrays))


def _offline(spec: ModelSpec, seed: int, n_calibration: int = 16) -> WeightsBundle:
    """Seeded He-normal weights with BatchNorm statistics recalibrated on sample images.

    Kernels are drawn with NumPy (independent of the TensorFlow version), every
    BatchNormalization layer gets momentum 0 and one training-mode pass over
    ``n_calibration`` synthetic fruit images sets its moving statistics to
    those of the data, which makes the penultimate features O(1).
    """
    import keras

    from p8utils import sample

    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ParameterError(f"seed={seed!r} must be an integer. Fix: pass e.g. seed=0.")
    rng = np.random.default_rng(int(seed))
    model = build_model(spec)
    arrays = []
    for var in model.weights:
        shape = tuple(var.shape)
        leaf = var.path.rsplit("/", 1)[-1]
        if leaf in ("gamma", "moving_variance"):
            arrays.append(np.ones(shape, np.float32))
        elif leaf in ("beta", "moving_mean", "bias"):
            arrays.append(np.zeros(shape, np.float32))
        else:
            fan_in = int(np.prod(shape[:2])) if "depthwise" in leaf else int(np.prod(shape[:-1]))
            arrays.append(rng.normal(0.0, np.sqrt(2.0 / max(fan_in, 1)), shape).astype(np.float32))
    model.set_weights(arrays)

    from PIL import Image

    images = sample.calibration_images(n_calibration, seed=12345 + int(seed))
    batch = np.stack(
        [np.asarray(im.convert("RGB").resize(spec.input_size, Image.BICUBIC), dtype=np.uint8) for im in images]
    )
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(spec.preprocess(batch), training=True)
    arrays = [np.asarray(a, dtype=np.float32) for a in model.get_weights()]
    return WeightsBundle(spec, "offline", arrays, weights_digest(arrays), int(seed))
