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
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from p8utils import storage
from p8utils.engines import DEFAULT_ENGINE, Predictor, calibration_digest, get_engine, payload
from p8utils.errors import ParameterError
from p8utils.images import DEFAULT_MAX_PIXELS, decode_image, read_file
from p8utils.models import ModelSpec, WeightsBundle
from p8utils.spark import skip_unchanged_zip_rescans
from p8utils.validation import check_int

if TYPE_CHECKING:  # pragma: no cover
    from pyspark import Accumulator
    from pyspark.sql import DataFrame

__all__ = ["DEFAULT_BATCH_SIZE", "FEATURES_TYPE", "REMOTE_READS_AT_ONCE", "check_featurize_params", "featurize",
           "featurize_bytes"]

log = logging.getLogger(__name__)

#: Spark type of the UDF's result.
FEATURES_TYPE = "struct<features:array<float>,error:string>"

#: Images per model call when none is given.
DEFAULT_BATCH_SIZE = 64

#: Remote objects (S3) a task reads at once, a chunk ahead of the engine: one GET's latency (~10-30 ms on AWS,
#: more than the engine spends on an image at 96-128 px) would otherwise be paid image after image. Local files
#: are read one by one (a read costs microseconds).
REMOTE_READS_AT_ONCE = 16

# Per-Python-worker cache: {key: predictor}. Holds at most one model so a
# notebook that switches models does not pile them up in executor memory.
_PREDICTORS: Dict[Tuple[ModelSpec, str, str, int], Predictor] = {}


def _get_predictor(spec: ModelSpec, payload_fn: Callable[[], object], version: str, engine: str,
                   threads: int, builds: Optional[Accumulator] = None) -> Predictor:
    """Return the cached predictor of this worker, building it on first use.

    ``version`` tells payloads apart: the weights' SHA-256 and, for a
    calibrated engine, the calibration digest.
    """
    key = (spec, version, engine, threads)
    predictor = _PREDICTORS.get(key)
    if predictor is None:
        _PREDICTORS.clear()
        predictor = get_engine(engine).build(spec, payload_fn(), threads)
        _PREDICTORS[key] = predictor
        if builds is not None:
            builds.add(1)
    return predictor


def _featurize_frame(
    contents: Sequence[Optional[Union[bytes, str]]],
    spec: ModelSpec,
    predict: Predictor,
    batch_size: int,
    max_pixels: int,
    endpoint: Optional[str] = None,
) -> pd.DataFrame:
    """Read (when given paths), decode and featurize one Arrow batch, ``batch_size`` images at a time.

    Parameters
    ----------
    contents : sequence of bytes, str or None
        Encoded images, or paths of files to read (:func:`p8utils.images.read_file`).
    endpoint : str, optional
        S3 endpoint for ``s3://`` paths, captured on the driver (:func:`p8utils.storage.s3_endpoint`).

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
    # two buffers: a thread reads, decodes and preprocesses the next chunk while the engine runs on this one
    # (Pillow and the engines release the GIL), so decoding costs the engine no time
    buffers = [(np.empty((batch_size, h, w, 3), dtype=np.uint8), np.empty((batch_size, h, w, 3), dtype=np.float32))
               for _ in range(2)]

    def read(item: Union[str, bytes]) -> Tuple[Optional[bytes], Optional[str]]:
        return read_file(item, endpoint) if isinstance(item, str) else (item, None)

    def prepare(start: int, slot: int) -> Tuple[int, List[int]]:
        """Decode from item ``start`` until a chunk is full; return where it stopped and the rows it holds."""
        chunk, inputs = buffers[slot]
        rows: List[int] = []
        ahead = range(start, min(n, start + batch_size))  # the chunk's remote objects: read all at once
        fetched = dict(zip(ahead, readers.map(read, [contents[j] for j in ahead]))) if remote else {}
        i = start
        while i < n and len(rows) < batch_size:
            item = contents[i]
            data, reason = fetched.pop(i) if i in fetched else read(item)
            arr, reason = (None, reason) if reason else decode_image(data, (w, h), max_pixels)
            if arr is None:
                errors[i] = reason
            else:
                chunk[len(rows)] = arr
                rows.append(i)
            i += 1
        if rows:
            spec.preprocess(chunk[:len(rows)], out=inputs[:len(rows)])
        return i, rows

    remote = any(isinstance(c, str) and not storage.is_local(c) for c in contents)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="p8utils-decode") as pool, \
            ThreadPoolExecutor(max_workers=REMOTE_READS_AT_ONCE if remote else 1,
                               thread_name_prefix="p8utils-read") as readers:
        pending = pool.submit(prepare, 0, 0)
        slot = 0
        while pending is not None:
            stop, rows = pending.result()
            pending = pool.submit(prepare, stop, 1 - slot) if stop < n else None
            if rows:
                out = predict(buffers[slot][1][:len(rows)])
                for j, row in enumerate(rows):
                    features[row] = out[j]
            slot = 1 - slot
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
    check_int("batch_size", batch_size, 1, 4096, example=DEFAULT_BATCH_SIZE)
    get_engine(engine)
    check_int("threads", threads, 1, optional=True)


def featurize(
    df: DataFrame,
    bundle: WeightsBundle,
    *,
    input_col: str = "content",
    batch_size: int = DEFAULT_BATCH_SIZE,
    engine: str = DEFAULT_ENGINE,
    threads: Optional[int] = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    model_builds: Optional[Accumulator] = None,
    calibration: Optional[np.ndarray] = None,
) -> DataFrame:
    """Add ``features`` and ``error`` columns computed from image bytes or local files.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
        Must have ``input_col``: binary (the encoded image, e.g. from
        :func:`p8utils.images.load_images`), or string (the path of a local
        file or an ``s3://`` object, e.g. a listing of
        :func:`p8utils.images.list_images`: each Python worker reads its files
        itself, an S3 object with one ``GetObject`` at the driver's endpoint,
        and a file that is gone or unreadable gets ``error = "missing"`` /
        ``"unreadable"``).
    bundle : WeightsBundle
        Resolved weights (:func:`p8utils.models.load_weights`); broadcast once.
    input_col : str
        Column holding the encoded image (binary) or the file's path (string).
    batch_size : int
        Images per model call.
    engine : str
        Inference engine, one of :data:`p8utils.engines.ENGINES`.
    threads : int, optional
        TensorFlow intra-op threads per Python worker; default: the task's
        ``spark.task.cpus`` so concurrent tasks do not oversubscribe cores.
    max_pixels : int
        Larger declared images get ``error = "too_large"``.
    model_builds : pyspark.Accumulator, optional
        Incremented each time a Python worker builds the model (diagnostics:
        with worker reuse it stays at most the number of concurrent workers).
    calibration : numpy.ndarray, optional
        Float32 ``(n, h, w, 3)`` preprocessed input images, for an engine that
        needs them (:attr:`p8utils.engines.Engine.calibrated`).

    Returns
    -------
    pyspark.sql.DataFrame
        ``df`` (without ``input_col`` when it is binary; without a previous
        ``error`` column), plus ``features`` (array<float> of length
        ``bundle.spec.width``, null for bad images) and ``error`` (string, null
        for good images). Lazy: nothing runs until an action, e.g.
        ``featurize(images.load_images(spark, "data_sample"), bundle).select("path", "features", "error").first()``.
    """
    from pyspark.sql import functions as F

    check_featurize_params(batch_size, engine, threads)
    from pyspark.sql.types import BinaryType, StringType

    if input_col not in df.columns:
        raise ParameterError(f"input_col={input_col!r} is not a column of the DataFrame {df.columns}.")
    kind = df.schema[input_col].dataType
    if not isinstance(kind, (BinaryType, StringType)):
        raise ParameterError(f"input_col={input_col!r} is {kind.simpleString()}. Fix: pass a binary column of "
                             "encoded images or a string column of local file paths.")
    spec = bundle.spec
    version = _version(bundle, engine, calibration)
    bc = df.sparkSession.sparkContext.broadcast(payload(bundle, engine, calibration))
    endpoint = storage.s3_endpoint()  # the driver's: the executors' environment may not name it

    @F.pandas_udf(FEATURES_TYPE)  # type: ignore[call-overload]
    def _features_udf(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        return _run_udf(batches, spec, lambda: bc.value, version, engine, threads, batch_size, max_pixels,
                        model_builds, endpoint)

    result = df.withColumn("_p8_features", _features_udf(F.col(input_col)))
    others = [c for c in df.columns if c != "error" and not (c == input_col and isinstance(kind, BinaryType))]
    return result.select(*others, "_p8_features.features", "_p8_features.error")


def _version(bundle: WeightsBundle, engine: str, calibration: Optional[np.ndarray]) -> str:
    """Name the payload for a worker's cache: the weights' SHA-256 and the calibration digest."""
    return bundle.sha256 + ":" + (calibration_digest(calibration) if get_engine(engine).calibrated else "")


def _run_udf(
    batches: Iterator[pd.Series],
    spec: ModelSpec,
    payload_fn: Callable[[], object],
    version: str,
    engine: str,
    threads: Optional[int],
    batch_size: int,
    max_pixels: int,
    builds: Optional[Accumulator] = None,
    endpoint: Optional[str] = None,
) -> Iterator[pd.DataFrame]:
    """Body of the pandas UDF (module level, so the worker's cache persists)."""
    skip_unchanged_zip_rescans()
    predict = _get_predictor(spec, payload_fn, version, engine, threads or _task_cpus(), builds)
    for contents in batches:
        yield _featurize_frame(contents.tolist(), spec, predict, batch_size, max_pixels, endpoint)


def featurize_bytes(
    contents: Sequence[Optional[Union[bytes, str]]],
    bundle: WeightsBundle,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    engine: str = DEFAULT_ENGINE,
    threads: Optional[int] = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    calibration: Optional[np.ndarray] = None,
) -> pd.DataFrame:
    """Featurize encoded images (or local files, given their paths) in this process, without Spark.

    Same code path as the UDF; used by ``python -m p8utils check`` and to
    compare engines.

    Returns
    -------
    pandas.DataFrame
        One row per input: ``features`` (float32 array ``(width,)`` or None),
        ``error`` (str or None).
    """
    check_featurize_params(batch_size, engine, threads)
    predict = _get_predictor(bundle.spec, lambda: payload(bundle, engine, calibration),
                             _version(bundle, engine, calibration), engine, threads or 1)
    return _featurize_frame(list(contents), bundle.spec, predict, batch_size, max_pixels, storage.s3_endpoint())
