"""Image bytes → feature vectors, in an iterator pandas UDF.

How the model travels
---------------------
The driver resolves the weights once (:func:`p8utils.models.load_weights`) and
broadcasts the arrays. Each Python worker builds the architecture with
``weights=None``, sets the broadcast arrays and keeps the resulting predictor in
a module-level cache, so with ``spark.python.worker.reuse`` (the default) the
model is built once per worker and reused by every later task and batch, never
downloaded on an executor.

How batches flow
----------------
Spark hands the UDF Arrow batches of ``spark.sql.execution.arrow.maxRecordsPerBatch``
rows. Each batch is decoded and run through the model in chunks of
``batch_size`` images (a ``tf.function`` with a fixed input signature, not
``model.predict``), so the decoded tensor never exceeds
``batch_size × 224 × 224 × 3`` float32 whatever the Arrow batch size. A file
that cannot be decoded gives a row with null ``features`` and an ``error``
reason; it never fails the task.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from p8utils.errors import ParameterError
from p8utils.images import DEFAULT_MAX_PIXELS, decode_image
from p8utils.models import ModelSpec, WeightsBundle, build_model, get_spec

if TYPE_CHECKING:  # pragma: no cover
    from pyspark import Accumulator
    from pyspark.sql import DataFrame

__all__ = ["DEFAULT_ENGINE", "ENGINES", "FEATURES_TYPE", "check_featurize_params", "featurize", "featurize_bytes"]

log = logging.getLogger(__name__)

#: Inference engines. ``keras``: the Keras model in a compiled ``tf.function``.
#: ``tflite``: the same model converted on the driver with TensorFlow's TFLite
#: converter, the flatbuffer broadcast, run with the XNNPACK delegate (LiteRT's
#: ``ai_edge_litert`` when installed, else ``tf.lite.Interpreter``; the former
#: does not even import TensorFlow in the worker).
ENGINES: Tuple[str, ...] = ("keras", "tflite")

#: Engine used when none is given: tflite measured ~1.8x faster than keras here (make bench).
DEFAULT_ENGINE = "tflite"

#: Spark type of the UDF's result.
FEATURES_TYPE = "struct<features:array<float>,error:string>"

Predictor = Callable[[np.ndarray], np.ndarray]

# Per-Python-worker cache: {key: predictor}. Holds at most one model so a
# notebook that switches models does not pile them up in executor memory.
_PREDICTORS: Dict[Tuple[str, str, str, int], Predictor] = {}


def _configure_threads(threads: int) -> None:
    """Pin TensorFlow's thread pools to ``threads`` (before TF initialises)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TF already initialised in this process: keep its pools
        log.debug("TensorFlow threads already configured")


def _keras_predictor(spec: ModelSpec, arrays: List[np.ndarray], threads: int) -> Predictor:
    """Build the model once and return a compiled batch → features function."""
    _configure_threads(threads)
    import tensorflow as tf

    model = build_model(spec, arrays)
    w, h = spec.input_size
    fn = tf.function(
        lambda x: model(x, training=False),
        input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32)],
        reduce_retracing=True,
    )

    def predict(batch: np.ndarray) -> np.ndarray:
        return fn(tf.constant(batch)).numpy().astype(np.float32, copy=False)

    return predict


def _tflite_interpreter_class():  # noqa: ANN202 - an Interpreter class
    """LiteRT's interpreter if installed (no TensorFlow import), else TensorFlow's."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806
    return Interpreter


def _tflite_predictor(spec: ModelSpec, flatbuffer: bytes, threads: int) -> Predictor:
    """Create TFLite interpreters (XNNPACK, ``threads`` threads) for the flatbuffer.

    Resizing an interpreter's input re-plans the XNNPACK runtime, so one
    interpreter keeps the size of full batches and a second one serves the
    shorter last chunk of a partition.
    """
    import warnings

    w, h = spec.input_size
    interpreters: Dict[str, list] = {}

    def run(slot: str, batch: np.ndarray) -> np.ndarray:
        n = int(batch.shape[0])
        if slot not in interpreters:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
                it = _tflite_interpreter_class()(model_content=flatbuffer, num_threads=threads)
            interpreters[slot] = [it, it.get_input_details()[0]["index"], it.get_output_details()[0]["index"], -1]
        entry = interpreters[slot]
        it, inp, out, allocated = entry
        if allocated != n:
            it.resize_tensor_input(inp, [n, h, w, 3])
            it.allocate_tensors()
            entry[3] = n
        it.set_tensor(inp, np.ascontiguousarray(batch, dtype=np.float32))
        it.invoke()
        return it.get_tensor(out).copy()

    full = {"n": 0}

    def predict(batch: np.ndarray) -> np.ndarray:
        n = int(batch.shape[0])
        full["n"] = max(full["n"], n)
        return run("full" if n == full["n"] else "tail", batch)

    return predict


# Driver-side cache of converted models: {(sha256, engine): payload}.
_PAYLOADS: Dict[Tuple[str, str], object] = {}


def _engine_payload(bundle: WeightsBundle, engine: str) -> object:
    """Return what the driver broadcasts for ``engine``: weight arrays or a TFLite flatbuffer."""
    if engine == "keras":
        return bundle.arrays
    key = (bundle.sha256, engine)
    if key not in _PAYLOADS:
        import tensorflow as tf

        model = build_model(bundle.spec, bundle.arrays)
        _PAYLOADS.clear()
        _PAYLOADS[key] = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    return _PAYLOADS[key]


_BUILDERS: Dict[str, Callable[[ModelSpec, object, int], Predictor]] = {
    "keras": _keras_predictor,  # type: ignore[dict-item]
    "tflite": _tflite_predictor,  # type: ignore[dict-item]
}


def _get_predictor(spec: ModelSpec, payload_fn: Callable[[], object], sha256: str, engine: str,
                   threads: int, builds: Optional[Accumulator] = None) -> Predictor:
    """Return the cached predictor of this worker, building it on first use."""
    key = (spec.name, sha256, engine, threads)
    predictor = _PREDICTORS.get(key)
    if predictor is None:
        _PREDICTORS.clear()
        predictor = _BUILDERS[engine](spec, payload_fn(), threads)
        _PREDICTORS[key] = predictor
        if builds is not None:
            builds.add(1)
    return predictor


def _featurize_frame(
    contents: Sequence[Optional[bytes]],
    spec: ModelSpec,
    predict: Predictor,
    batch_size: int,
    max_pixels: int,
) -> pd.DataFrame:
    """Decode and featurize one Arrow batch, ``batch_size`` images at a time.

    Returns
    -------
    pandas.DataFrame
        ``len(contents)`` rows: ``features`` (float32 array of shape
        ``(spec.width,)`` or None) and ``error`` (str or None).
    """
    n = len(contents)
    features: List[Optional[np.ndarray]] = [None] * n
    errors: List[Optional[str]] = [None] * n
    w, h = spec.input_size
    chunk = np.empty((batch_size, h, w, 3), dtype=np.uint8)
    inputs = np.empty((batch_size, h, w, 3), dtype=np.float32)
    rows: List[int] = []

    def flush() -> None:
        n_rows = len(rows)
        out = predict(spec.preprocess(chunk[:n_rows], out=inputs[:n_rows]))
        for j, row in enumerate(rows):
            features[row] = out[j]
        rows.clear()

    for i, data in enumerate(contents):
        arr, reason = decode_image(data, (w, h), max_pixels)
        if arr is None:
            errors[i] = reason
            continue
        chunk[len(rows)] = arr
        rows.append(i)
        if len(rows) == batch_size:
            flush()
    if rows:
        flush()
    return pd.DataFrame({"features": features, "error": errors})


def _task_cpus() -> int:
    """CPU cores Spark gave this task (``spark.task.cpus``), 1 outside Spark."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    try:
        return max(1, int(ctx.cpus())) if ctx is not None else 1
    except Exception:  # noqa: BLE001 - older Spark without TaskContext.cpus
        return 1


def check_featurize_params(batch_size: int, engine: str, threads: Optional[int]) -> None:
    """Check featurization parameters (raises :class:`ParameterError`)."""
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or not 1 <= batch_size <= 4096:
        raise ParameterError(f"batch_size={batch_size!r} is out of range. Fix: use an integer in [1, 4096], e.g. 64.")
    if engine not in ENGINES:
        raise ParameterError(f"engine={engine!r} is not supported. Fix: use one of {list(ENGINES)}.")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ParameterError(f"threads={threads!r} must be a positive integer or None (= the task's cores).")


def featurize(
    df: DataFrame,
    bundle: WeightsBundle,
    *,
    input_col: str = "content",
    batch_size: int = 64,
    engine: str = DEFAULT_ENGINE,
    threads: Optional[int] = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    model_builds: Optional[Accumulator] = None,
) -> DataFrame:
    """Add ``features`` and ``error`` columns computed from image bytes.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
        Must have ``input_col`` (binary), e.g. from :func:`p8utils.images.load_images`.
    bundle : WeightsBundle
        Resolved weights (:func:`p8utils.models.load_weights`); broadcast once.
    input_col : str
        Binary column holding the encoded image.
    batch_size : int
        Images per model call.
    engine : str
        Inference engine, one of :data:`ENGINES`.
    threads : int, optional
        TensorFlow intra-op threads per Python worker; default: the task's
        ``spark.task.cpus`` so concurrent tasks do not oversubscribe cores.
    max_pixels : int
        Larger declared images get ``error = "too_large"``.
    model_builds : pyspark.Accumulator, optional
        Incremented each time a Python worker builds the model (diagnostics:
        with worker reuse it stays at most the number of concurrent workers).

    Returns
    -------
    pyspark.sql.DataFrame
        ``df`` without ``input_col``, plus ``features`` (array<float> of length
        ``bundle.spec.width``, null for bad images) and ``error`` (string, null
        for good images). Lazy: nothing runs until an action.
    """
    from pyspark.sql import functions as F

    check_featurize_params(batch_size, engine, threads)
    if input_col not in df.columns:
        raise ParameterError(f"input_col={input_col!r} is not a column of the DataFrame {df.columns}.")
    spec_name = bundle.spec.name
    sha256 = bundle.sha256
    bc = df.sparkSession.sparkContext.broadcast(_engine_payload(bundle, engine))

    @F.pandas_udf(FEATURES_TYPE)  # type: ignore[call-overload]
    def _features_udf(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        return _run_udf(batches, spec_name, lambda: bc.value, sha256, engine, threads, batch_size, max_pixels,
                        model_builds)

    result = df.withColumn("_p8_features", _features_udf(F.col(input_col)))
    others = [c for c in df.columns if c != input_col]
    return result.select(*others, "_p8_features.features", "_p8_features.error")


def _run_udf(
    batches: Iterator[pd.Series],
    spec_name: str,
    payload_fn: Callable[[], object],
    sha256: str,
    engine: str,
    threads: Optional[int],
    batch_size: int,
    max_pixels: int,
    builds: Optional[Accumulator] = None,
) -> Iterator[pd.DataFrame]:
    """Body of the pandas UDF (module level, so the worker's cache persists)."""
    spec = get_spec(spec_name)
    predict = _get_predictor(spec, payload_fn, sha256, engine, threads or _task_cpus(), builds)
    for contents in batches:
        yield _featurize_frame(contents.tolist(), spec, predict, batch_size, max_pixels)


def featurize_bytes(
    contents: Sequence[Optional[bytes]],
    bundle: WeightsBundle,
    *,
    batch_size: int = 64,
    engine: str = DEFAULT_ENGINE,
    threads: Optional[int] = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> pd.DataFrame:
    """Featurize encoded images in this process, without Spark.

    Same code path as the UDF; used by ``python -m p8utils check`` and to
    compare engines.

    Returns
    -------
    pandas.DataFrame
        One row per input: ``features`` (float32 array ``(width,)`` or None),
        ``error`` (str or None).
    """
    check_featurize_params(batch_size, engine, threads)
    predict = _get_predictor(bundle.spec, lambda: _engine_payload(bundle, engine), bundle.sha256, engine,
                             threads or 1)
    return _featurize_frame(list(contents), bundle.spec, predict, batch_size, max_pixels)
