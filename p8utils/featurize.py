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

How features reach the table
----------------------------
:func:`featurize` returns a DataFrame: the features go back to the JVM
through Arrow (5 KB per image) and Spark encodes them to parquet. A run that
reads its files in Python uses :func:`featurize_to_files` instead: each task
writes its own parquet part file with pyarrow and returns one row naming it,
so only paths go to the Python workers and only file names come back (at 96 px
the JVM's share was 1.4 of 4.2 core-ms per image; README › Performance).
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd

from p8utils import storage
from p8utils.engines import DEFAULT_ENGINE, Predictor, calibration_digest, get_engine, payload
from p8utils.errors import ParameterError
from p8utils.images import DEFAULT_MAX_PIXELS, decode_image, read_file
from p8utils.models import ModelSpec, WeightsBundle
from p8utils.spark import skip_unchanged_zip_rescans, worker_long_lived
from p8utils.validation import check_int

if TYPE_CHECKING:  # pragma: no cover
    from pyspark import Accumulator
    from pyspark.sql import DataFrame

__all__ = ["DEFAULT_BATCH_SIZE", "FEATURES_TYPE", "FILES_TYPE", "FeaturizeSettings", "REMOTE_READS_AT_ONCE",
           "check_featurize_params", "featurize", "featurize_bytes", "featurize_to_files"]

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
        with worker_long_lived():  # in a Spark task: the engine and the modules it loaded leave the collector's scans
            _PREDICTORS.clear()
            predictor = get_engine(engine).build(spec, payload_fn(), threads)
            _PREDICTORS[key] = predictor
        if builds is not None:
            builds.add(1)
    return predictor


def _featurize_arrays(
    contents: Sequence[Optional[Union[bytes, str]]],
    spec: ModelSpec,
    predict: Predictor,
    batch_size: int,
    max_pixels: int,
    endpoint: Optional[str] = None,
    cores: int = 1,
) -> Tuple[np.ndarray, List[Optional[str]]]:
    """Read (when given paths), decode and featurize a sequence of images, ``batch_size`` at a time.

    With one core (a Spark task's usual share) the chunks are decoded and
    featurized in turn in the calling thread: Spark runs a task per core, so
    a decode thread beside the engine only makes two threads share the core
    (at 96 px, 8,640 real photos: the decode's CPU 0.44-0.50 ms per image
    against 0.35-0.37 in turn, the engine's 0.76-0.81 against 0.71-0.73, and
    the featurize stage 8 % slower; README › Performance). With more cores
    the engine has several threads and a decode thread prepares the next
    chunk meanwhile. Remote objects are fetched a chunk ahead either way, so
    a GET's latency overlaps the engine.

    Parameters
    ----------
    contents : sequence of bytes, str or None
        Encoded images, or paths of files to read (:func:`p8utils.images.read_file`).
    endpoint : str, optional
        S3 endpoint for ``s3://`` paths, captured on the driver (:func:`p8utils.storage.s3_endpoint`).
    cores : int
        CPU cores of the task (the engine's threads).

    Returns
    -------
    features : numpy.ndarray
        Float32, shape ``(len(contents), spec.width)``; the rows of failed images are zeros.
    errors : list of str or None
        ``len(contents)`` reasons, None for the images that were featurized.
    """
    n = len(contents)
    features = np.zeros((n, spec.width), dtype=np.float32)
    errors: List[Optional[str]] = [None] * n
    w, h = spec.input_size
    overlap = cores > 1
    # one buffer per chunk in flight: the engine's, and with a decode thread the one it fills meanwhile
    buffers = [(np.empty((batch_size, h, w, 3), dtype=np.uint8), np.empty((batch_size, h, w, 3), dtype=np.float32))
               for _ in range(2 if overlap else 1)]
    remote = any(isinstance(c, str) and not storage.is_local(c) for c in contents)

    def read(item: Union[str, bytes]) -> Tuple[Optional[bytes], Optional[str]]:
        return read_file(item, endpoint) if isinstance(item, str) else (item, None)

    def prefetch(start: int) -> Dict[int, Future[Tuple[Optional[bytes], Optional[str]]]]:
        """Start reading the remote objects of the chunk from item ``start`` (nothing for local files)."""
        ahead = range(start, min(n, start + batch_size)) if remote else range(0)
        return {j: readers.submit(read, contents[j]) for j in ahead}

    def prepare(start: int, slot: int, fetched: Dict[int, Future[Tuple[Optional[bytes], Optional[str]]]]
                ) -> Tuple[int, List[int]]:
        """Decode from item ``start`` until a chunk is full; return where it stopped and the rows it holds."""
        chunk, inputs = buffers[slot]
        rows: List[int] = []
        i = start
        while i < n and len(rows) < batch_size:
            data, reason = fetched.pop(i).result() if i in fetched else read(contents[i])
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

    with ThreadPoolExecutor(max_workers=REMOTE_READS_AT_ONCE, thread_name_prefix="p8utils-read") as readers, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="p8utils-decode") as decoder:
        if overlap:
            pending: Optional[Future[Tuple[int, List[int]]]] = decoder.submit(prepare, 0, 0, prefetch(0))
            slot = 0
            while pending is not None:
                stop, rows = pending.result()
                pending = decoder.submit(prepare, stop, 1 - slot, prefetch(stop)) if stop < n else None
                if rows:
                    features[rows] = predict(buffers[slot][1][:len(rows)])
                slot = 1 - slot
        else:
            stop, fetched = 0, prefetch(0)
            while stop < n:
                stop, rows = prepare(stop, 0, fetched)
                fetched = prefetch(stop) if stop < n else {}
                if rows:
                    features[rows] = predict(buffers[0][1][:len(rows)])
    return features, errors


def _as_frame(features: np.ndarray, errors: List[Optional[str]]) -> pd.DataFrame:
    """Make the UDF's result from :func:`_featurize_arrays`' ``(features, errors)``.

    Returns
    -------
    pandas.DataFrame
        ``len(errors)`` rows: ``features`` (float32 array of shape ``(width,)``
        or None) and ``error`` (str or None).
    """
    return pd.DataFrame({"features": [None if e else row for row, e in zip(features, errors)], "error": errors})


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
    cores = threads or _task_cpus()
    predict = _get_predictor(spec, payload_fn, version, engine, cores, builds)
    for contents in batches:
        yield _as_frame(*_featurize_arrays(contents.tolist(), spec, predict, batch_size, max_pixels, endpoint, cores))


#: Spark type of the rows :func:`featurize_to_files` returns: one per part file a task staged
#: (``token``: for :func:`p8utils.storage.publish_object`).
FILES_TYPE = "file string, rows long, token string"

#: Rows per row group of the part files the tasks write (8,192 rows of 1,280 floats: ~42 MB before compression).
#: Spark's own writer makes 128 MB row groups; a reader fetches one chunk per column and row group.
PART_ROW_GROUP_ROWS = 8192


@dataclass(frozen=True)
class FeaturizeSettings:
    """How images are featurized: :func:`featurize`'s keyword parameters of the same names, as one value.

    Checked when made (:class:`~p8utils.errors.ParameterError`).
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    engine: str = DEFAULT_ENGINE
    threads: Optional[int] = None
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        check_featurize_params(self.batch_size, self.engine, self.threads)


def featurize_to_files(
    df: DataFrame,
    bundle: WeightsBundle,
    folder: str,
    prefix: str,
    columns: Sequence[str],
    settings: FeaturizeSettings = FeaturizeSettings(),
    *,
    model_builds: Optional[Accumulator] = None,
    calibration: Optional[np.ndarray] = None,
) -> DataFrame:
    """Featurize listed files and write each task's rows as one parquet file, from the Python task itself.

    The features never travel back to the JVM: a task reads, decodes and
    featurizes its files (as :func:`featurize` does with ``input_col="path"``),
    stages its rows as ``<folder>/<prefix>-<partition>-<attempt>-<random>.snappy.parquet``
    with :func:`p8utils.storage.stage_object` (a hidden local file; on S3 an
    uncompleted multipart upload: no reader sees it, and nothing is ever
    copied), then hands Spark one row naming the file. Whoever collects the
    rows publishes those files (:func:`p8utils.storage.publish_object`; the
    run protocol: :meth:`p8utils.runs.ActiveRun.add_task_files`): the files of
    the successful attempts, one per task. A failed, killed or speculative
    attempt's file is never published.

    Parameters
    ----------
    df : pyspark.sql.DataFrame
        One row per file: ``path`` (string: a local path in Spark's form, or an
        ``s3://`` URI), ``error`` (string: rows with a reason are written as
        they are, unread) and the other ``columns`` but ``features``.
    bundle : WeightsBundle
        Resolved weights; broadcast once.
    folder : str
        Local folder (absolute) or ``s3://`` prefix the tasks write to.
    prefix : str
        Start of the part files' names (e.g. ``part-<run id>``).
    columns : sequence of str
        Columns of the files, in order: those of ``df`` plus ``features``
        (list<float> of length ``bundle.spec.width``, null where ``error`` is set).
    settings : FeaturizeSettings
        Batch size, engine, threads, maximum pixels.
    model_builds, calibration
        As for :func:`featurize`.

    Returns
    -------
    pyspark.sql.DataFrame
        Lazy, :data:`FILES_TYPE`: ``file`` (the part file's name in
        ``folder``), ``rows`` and ``token`` (for
        :func:`p8utils.storage.publish_object`), one row per task that had
        rows. Collect it to run the tasks.
    """
    if not isinstance(settings, FeaturizeSettings):
        raise ParameterError(f"settings={settings!r} is not a FeaturizeSettings. Fix: FeaturizeSettings(batch_size=…).")
    if not (storage.is_local(folder) or storage.is_s3(folder)):
        raise ParameterError(f"folder={folder!r}: the tasks write local folders and S3 only. "
                             "Fix: write it with Spark (featurize, then DataFrame.write).")
    missing = sorted({"path", "error", *columns} - {"features", *df.columns})
    if missing:
        raise ParameterError(f"columns {missing} are not columns of the DataFrame {df.columns}. Fix: pass a listing "
                             "(p8utils.images.list_images(...).frame) and name its columns, plus 'features'.")
    engine = settings.engine
    bc = df.sparkSession.sparkContext.broadcast(payload(bundle, engine, calibration))
    shipped = (bundle.spec, _version(bundle, engine, calibration), engine, settings.threads, settings.batch_size,
               settings.max_pixels, model_builds, storage.s3_endpoint())
    target = folder if storage.is_s3(folder) else str(storage.local_path(folder))
    fields = tuple(columns)

    def _task(batches: Iterator[Any]) -> Iterator[Any]:
        return _write_task(batches, lambda: bc.value, shipped, target, prefix, fields)

    return df.select(*[c for c in df.columns if c in {"path", "error", *fields}]).mapInArrow(_task, FILES_TYPE)


def _features_array(features: np.ndarray, errors: Sequence[Optional[str]]) -> Any:
    """Arrow ``list<float>`` of ``features``' rows, null where ``errors`` gives a reason (no per-row copy)."""
    import pyarrow as pa

    ok = np.fromiter((e is None for e in errors), dtype=bool, count=len(errors))
    width = features.shape[1]
    offsets = np.zeros(len(errors) + 1, dtype=np.int32)
    np.cumsum(np.where(ok, width, 0), out=offsets[1:])
    # a null offset makes its list null (pyarrow >= 10; ListArray.from_arrays' mask came later)
    return pa.ListArray.from_arrays(pa.array(offsets, mask=np.append(~ok, False)),
                                    pa.array(features[ok].ravel(), type=pa.float32()))


def _write_task(batches: Iterator[Any], payload_fn: Callable[[], object], settings: Tuple[Any, ...], folder: str,
                prefix: str, columns: Tuple[str, ...]) -> Iterator[Any]:
    """Body of :func:`featurize_to_files`' tasks: featurize each Arrow batch, write one part file, name it."""
    import uuid

    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark import TaskContext

    spec, version, engine, threads, batch_size, max_pixels, builds, endpoint = settings
    skip_unchanged_zip_rescans()
    ctx = TaskContext.get()
    part, attempt = (ctx.partitionId(), ctx.attemptNumber()) if ctx is not None else (0, 0)
    name = f"{prefix}-{part:05d}-{attempt}-{uuid.uuid4().hex[:8]}.snappy.parquet"
    sink = pa.BufferOutputStream()
    writer, rows, predict = None, 0, None
    cores = threads or _task_cpus()
    held: List[Any] = []  # tables not yet written: one row group holds up to PART_ROW_GROUP_ROWS rows

    def flush() -> None:
        nonlocal writer
        if not held:
            return
        table = pa.concat_tables(held)
        held.clear()
        if writer is None:
            # no dictionary for the features: 1,280 distinct floats a row never fit one, and trying costs
            # (1,394 rows: 37 -> 20 ms to write, 6.5 -> 5.9 MB)
            writer = pq.ParquetWriter(sink, table.schema, compression="snappy", use_compliant_nested_type=True,
                                      use_dictionary=[c for c in columns if c != "features"])
        writer.write_table(table, row_group_size=table.num_rows)

    for batch in batches:
        listed = batch.column(batch.schema.get_field_index("error")).to_pylist()
        todo = [i for i, reason in enumerate(listed) if reason is None]
        features = np.zeros((batch.num_rows, spec.width), dtype=np.float32)
        errors = list(listed)
        if todo:
            if predict is None:
                predict = _get_predictor(spec, payload_fn, version, engine, cores, builds)
            paths = batch.column(batch.schema.get_field_index("path")).to_pylist()
            done, reasons = _featurize_arrays([paths[i] for i in todo], spec, predict, batch_size, max_pixels,
                                              endpoint, cores)
            features[todo] = done
            for i, reason in zip(todo, reasons):
                errors[i] = reason
        arrays = {"features": _features_array(features, errors), "error": pa.array(errors, pa.string())}
        held.append(pa.table([arrays[c] if c in arrays else batch.column(batch.schema.get_field_index(c))
                              for c in columns], names=list(columns)))
        rows += batch.num_rows
        if sum(t.num_rows for t in held) >= PART_ROW_GROUP_ROWS:
            flush()
    flush()
    if writer is None:
        return
    writer.close()
    # staged, not visible: the driver publishes the files of the successful attempts once the job is done
    token = storage.stage_object(storage.join(folder, name), sink.getvalue().to_pybytes(), endpoint)
    yield pa.RecordBatch.from_pydict({"file": [name], "rows": [rows], "token": [token]},
                                     schema=pa.schema([("file", pa.string()), ("rows", pa.int64()),
                                                       ("token", pa.string())]))


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
    return _as_frame(*_featurize_arrays(list(contents), bundle.spec, predict, batch_size, max_pixels,
                                        storage.s3_endpoint(), threads or 1))
