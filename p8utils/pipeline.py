"""End-to-end run: images → features → PCA, with output layout and manifest.

Output layout of a run::

    <output>/features/      parquet: path, label, features (array<float>), error
    <output>/pca/           parquet: path, label, pca_features (array<double>[k])
    <output>/manifest.json  written last: its presence marks a complete run

Every parameter is checked before the first Spark job; a bad one raises
:class:`~p8utils.errors.ParameterError` naming the fix.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import platform
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple

from p8utils import __version__, storage
from p8utils.errors import OutputExistsError, ParameterError
from p8utils.featurize import DEFAULT_ENGINE, check_featurize_params, featurize
from p8utils.images import DEFAULT_EXTENSIONS, DEFAULT_MAX_PIXELS, check_input, load_images, normalise_extensions
from p8utils.models import get_spec, load_weights
from p8utils.pca import PCAResult, check_pca_params, fit_pca, transform

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["MODES", "RunResult", "run", "read_manifest", "validate_params"]

log = logging.getLogger(__name__)

#: What to do when the output folder already holds something: refuse, replace
#: it, or featurize only the files that are new or changed since that run.
MODES = ("error", "overwrite", "incremental")

#: Variance target used when neither ``k`` nor ``variance`` is given.
DEFAULT_VARIANCE = 0.95

_MANIFEST = "manifest.json"
_STAGING = "_staging"  # a run writes here first, then commits (see _commit)
_TRASH = "_trash"

#: Columns of ``<output>/features``. ``length`` and ``modificationTime`` are
#: the file's, kept as the incremental-mode key with ``path``.
_FEATURE_COLUMNS = ("path", "label", "features", "error", "length", "modificationTime")
_KEY = ("path", "length", "modificationTime")


@dataclass
class RunResult:
    """What :func:`run` produced.

    Attributes
    ----------
    output : str
        The run's output folder/URI.
    features_path, pca_path, manifest_path : str
        Locations of the two parquet datasets and of the manifest.
    manifest : dict
        The manifest as written.
    pca : PCAResult
        The fitted PCA (explained variance of every component, kept axes).
    """

    output: str
    features_path: str
    pca_path: str
    manifest_path: str
    manifest: Dict[str, Any] = field(repr=False)
    pca: PCAResult = field(repr=False)


def validate_params(
    input: str,
    output: str,
    *,
    model: str = "mobilenet_v2",
    weights: str = "imagenet",
    k: Optional[int] = None,
    variance: Optional[float] = None,
    batch_size: int = 64,
    engine: str = DEFAULT_ENGINE,
    mode: str = "error",
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    spark: Optional[SparkSession] = None,
) -> None:
    """Check every parameter of :func:`run`; no Spark job is started.

    Local paths are checked without Spark; Hadoop URIs need ``spark``.

    Raises
    ------
    ParameterError
        The message names the parameter, the bad value and the fix.
    """
    spec = get_spec(model)
    if k is None and variance is None:
        variance = DEFAULT_VARIANCE
    check_pca_params(k, variance, spec.width)
    check_featurize_params(batch_size, engine, None)
    normalise_extensions(extensions)
    if mode not in MODES:
        raise ParameterError(f"mode={mode!r} is not valid. Fix: use one of {list(MODES)}.")
    if not output:
        raise ParameterError("output is empty. Fix: pass the folder (or s3:// prefix) to write the run to.")
    if not isinstance(weights, str) or not weights:
        raise ParameterError(f"weights={weights!r} is not valid. Fix: 'imagenet', 'offline', 'auto' or a file path.")
    local_ok = storage.is_local(input) and storage.is_local(output)
    if spark is None and not local_ok:
        return  # remote URIs are checked once the session exists
    check_input(input, extensions, spark)
    if storage.is_local(input) and storage.is_local(output):
        inp, out = storage.local_path(input), storage.local_path(output)
        if out == inp or inp in out.parents:
            raise ParameterError(
                f"output={output!r} is inside input={input!r}: outputs would be read as input next time. "
                "Fix: write the run somewhere else, e.g. runs/<name>."
            )
    if mode == "error" and _has_content(output, spark):
        raise OutputExistsError(
            f"output={output!r} already exists and is not empty (mode='error', the safe default). "
            "Fix: pass a new output folder, mode='overwrite' (--mode overwrite) to replace it, or "
            "mode='incremental' to featurize only new or changed images."
        )


def _has_content(uri: str, spark: Optional[SparkSession]) -> bool:
    """Tell whether ``uri`` holds a file other than leftovers of a killed run."""
    if not storage.exists(uri, spark):
        return False
    base = uri.rstrip("/") + "/"
    leftovers = tuple(base + d + "/" for d in (_STAGING, _TRASH))
    local = storage.is_local(uri)
    for f in storage.iter_files(uri, spark):
        rel = str(f) if local else f
        if not (rel.startswith(leftovers) or rel.replace("file:", "", 1).startswith(leftovers)):
            return True
    return False


@contextmanager
def _stage(timings: Dict[str, float], name: str, spark: SparkSession) -> Iterator[None]:
    """Time a stage and label its Spark jobs in the UI."""
    spark.sparkContext.setJobDescription(f"p8utils: {name}")
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - start, 3)
        spark.sparkContext.setJobDescription(None)  # type: ignore[arg-type]


def _versions() -> Dict[str, Optional[str]]:
    """Versions of the libraries that shape the output."""
    from importlib import metadata

    out: Dict[str, Optional[str]] = {"python": platform.python_version(), "p8utils": __version__}
    for dist in ("pyspark", "tensorflow", "tensorflow-cpu", "keras", "numpy", "pandas", "pyarrow", "pillow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def run(
    input: str,
    output: str,
    *,
    model: str = "mobilenet_v2",
    weights: str = "imagenet",
    k: Optional[int] = None,
    variance: Optional[float] = None,
    batch_size: int = 64,
    engine: str = DEFAULT_ENGINE,
    seed: int = 0,
    mode: str = "error",
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    images_per_partition: int = 256,
    master: Optional[str] = None,
    spark: Optional[SparkSession] = None,
) -> RunResult:
    """Run the whole pipeline and write features, PCA and manifest.

    Parameters
    ----------
    input : str
        Folder or URI of images, one sub-folder per class (label = folder name).
    output : str
        Folder or URI to write the run to.
    model : str
        ``"mobilenet_v2"`` (1280 features) or ``"resnet50"`` (2048).
    weights : str
        ``"imagenet"`` (default; error when unreachable), ``"offline"``,
        ``"auto"`` or a weights file path/URI.
    k : int, optional
        Number of principal components to keep.
    variance : float, optional
        Keep the smallest k reaching this explained variance. When neither
        ``k`` nor ``variance`` is given, ``variance=0.95``.
    batch_size : int
        Images per model call.
    engine : str
        Inference engine (:data:`p8utils.featurize.ENGINES`).
    seed : int
        Seed of offline weights.
    mode : str
        ``"error"`` (default: refuse a non-empty output) or ``"overwrite"``.
    extensions : sequence of str
        File extensions that count as images, case-insensitive.
    max_pixels : int
        Images declaring more pixels are reported as ``too_large``.
    images_per_partition : int
        Target images per Spark task (see :func:`p8utils.images.load_images`).
    master : str, optional
        Spark master for a new local session (ignored if a session exists).
    spark : SparkSession, optional
        Session to use; default :func:`p8utils.spark.get_spark`.

    Returns
    -------
    RunResult
    """
    from pyspark.sql import functions as F

    from p8utils.spark import get_spark

    if k is None and variance is None:
        variance = DEFAULT_VARIANCE
    params = dict(model=model, weights=weights, k=k, variance=variance, batch_size=batch_size,
                  engine=engine, mode=mode, extensions=extensions)
    validate_params(input, output, **params)  # local checks, before any JVM
    spark = spark or get_spark(master)
    if not (storage.is_local(input) and storage.is_local(output)):
        validate_params(input, output, spark=spark, **params)  # URIs need the JVM's FileSystem

    timings: Dict[str, float] = {}
    started = _dt.datetime.now(_dt.timezone.utc)
    run_id = started.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
    features_path = storage.join(output, "features")
    pca_path = storage.join(output, "pca")
    manifest_path = storage.join(output, _MANIFEST)
    staging = storage.join(output, _STAGING, run_id)
    spark_path = (lambda p: str(storage.local_path(p))) if storage.is_local(output) else (lambda p: p)
    for leftover in (_STAGING, _TRASH):  # from runs that were killed
        storage.delete(storage.join(output, leftover), spark)

    with _stage(timings, "weights", spark):
        bundle = load_weights(model, weights, seed=seed, spark=spark)
    previous = _previous_run(output, mode, model, bundle.sha256, spark)

    with _stage(timings, "list_images", spark):
        images = load_images(spark, input, extensions, images_per_partition=images_per_partition)
    builds = spark.sparkContext.accumulator(0)
    feature_args = dict(batch_size=batch_size, engine=engine, max_pixels=max_pixels, model_builds=builds)
    with _stage(timings, "featurize", spark):
        if previous is None:
            table = featurize(images, bundle, **feature_args).select(*_FEATURE_COLUMNS)
            reuse: Dict[str, int] = {"reused": 0, "removed": 0}
        else:
            table, reuse = _incremental(spark, images, spark.read.parquet(spark_path(features_path)),
                                        bundle, extensions, feature_args)
        table.write.parquet(spark_path(storage.join(staging, "features")))
    stored = spark.read.parquet(spark_path(storage.join(staging, "features")))
    with _stage(timings, "count", spark):
        by_error = {r["error"]: int(r["count"]) for r in stored.groupBy("error").count().collect()}
    ok = by_error.pop(None, 0)
    total = ok + sum(by_error.values())
    counts = {"total": total, "ok": ok, "failed": sum(by_error.values()),
              "failed_by_reason": dict(sorted(by_error.items())),
              "featurized": total - reuse["reused"], **reuse}
    with _stage(timings, "pca_fit", spark):
        pca = fit_pca(stored, k=k, variance=variance)
    with _stage(timings, "pca_transform", spark):
        (transform(pca, stored.where(F.col("features").isNotNull()).select("path", "label", "features"))
         .write.parquet(spark_path(storage.join(staging, "pca"))))

    warnings: List[str] = [bundle.warning] if bundle.warning else []
    if pca.k > pca.n_rows - 1:
        warnings.append(f"k={pca.k} exceeds the rank of the data ({pca.n_rows} rows): trailing scores are ~0.")
    manifest: Dict[str, Any] = {
        "status": "complete",
        "run_id": run_id,
        "p8utils_version": __version__,
        "started_at": started.isoformat(),
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "parameters": {
            "input": input, "output": output, "model": model, "weights": weights, "engine": engine,
            "batch_size": batch_size, "k": k, "variance": variance, "seed": seed, "mode": mode,
            "extensions": list(normalise_extensions(extensions)), "max_pixels": max_pixels,
            "images_per_partition": images_per_partition,
            "master": spark.sparkContext.master,
        },
        "weights": {"source": bundle.source, "sha256": bundle.sha256, "seed": bundle.seed,
                    "warning": bundle.warning},
        "counts": counts,
        "incremental_key": list(_KEY) if mode == "incremental" else None,
        "pca": {
            "k": pca.k, "variance_target": pca.variance_target, "explained_at_k": pca.explained_at_k,
            "n_rows": pca.n_rows, "feature_width": pca.width,
            "explained_variance": [float(v) for v in pca.explained_variance],
            "cumulative_variance": [float(v) for v in pca.cumulative_variance],
        },
        "outputs": {"features": features_path, "pca": pca_path},
        "timings_s": timings,
        "model_builds": builds.value,
        "versions": _versions(),
        "warnings": warnings,
        "argv": list(sys.argv),
    }
    _commit(output, staging, json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8"), spark)
    for w in warnings:
        log.warning(w)
    return RunResult(output, features_path, pca_path, manifest_path, manifest, pca)


def _previous_run(output: str, mode: str, model: str, sha256: str, spark: SparkSession) -> Optional[Dict[str, Any]]:
    """Return the manifest of the complete run that ``mode="incremental"`` builds on, if any.

    Raises
    ------
    ParameterError
        The previous run used another model or other weights: mixing them
        would give a table of incomparable features.
    """
    if mode != "incremental" or not storage.exists(storage.join(output, _MANIFEST), spark):
        return None
    previous = read_manifest(output, spark)
    used = (previous["parameters"]["model"], previous["weights"]["sha256"])
    if used != (model, sha256):
        raise ParameterError(
            f"mode='incremental' but output={output!r} holds features of model={used[0]!r} with weights "
            f"sha256={used[1][:12]}…, not model={model!r} sha256={sha256[:12]}…. Fix: use the same "
            "model and weights, or mode='overwrite' to recompute everything, or a new output."
        )
    return previous


def _incremental(
    spark: SparkSession,
    images: DataFrame,
    previous: DataFrame,
    bundle: Any,
    extensions: Sequence[str],
    feature_args: Dict[str, Any],
) -> Tuple[DataFrame, Dict[str, int]]:
    """Featurize only new or changed files; keep the rows of unchanged ones.

    A file is unchanged when ``path``, ``length`` and ``modificationTime`` all
    equal those of its previous row (no content is read to decide). Rows of
    files that are gone from the input are dropped, so the table always
    equals what a full run would produce.

    Returns
    -------
    (DataFrame, dict)
        The whole new features table (lazy) and ``{"reused": n, "removed": n}``.
    """
    listing = images.select("path", *_KEY[1:]).cache()
    try:
        same = [listing[c].eqNullSafe(previous[c]) for c in _KEY]
        todo = [r.path for r in listing.join(previous, same, "left_anti").select("path").collect()]
        kept = previous.join(listing, same, "left_semi").select(*_FEATURE_COLUMNS).cache()
        reused = kept.count()
        removed = previous.count() - reused
    finally:
        listing.unpersist()
    log.info("incremental: %d files to featurize, %d reused, %d removed", len(todo), reused, removed)
    fresh = featurize(load_images(spark, files=todo, extensions=extensions), bundle, **feature_args)
    return kept.unionByName(fresh.select(*_FEATURE_COLUMNS)), {"reused": reused, "removed": removed}


def _commit(output: str, staging: str, manifest: bytes, spark: SparkSession) -> None:
    """Swap the staged ``features/`` and ``pca/`` in, then write the manifest last.

    Until this point the previous run is untouched. The manifest is removed
    first and written last, so a reader that finds ``manifest.json`` always
    sees a complete run; a crash inside this short window leaves no manifest
    (the run is visibly incomplete) and the previous data under ``_trash/``.
    """
    manifest_path = storage.join(output, _MANIFEST)
    trash = storage.join(output, _TRASH, staging.rstrip("/").rsplit("/", 1)[-1])
    storage.delete(manifest_path, spark)
    for name in ("features", "pca"):
        final = storage.join(output, name)
        if storage.exists(final, spark):
            storage.rename(final, storage.join(trash, name), spark)
        storage.rename(storage.join(staging, name), final, spark)
    storage.write_bytes(manifest_path, manifest, spark)
    storage.delete(storage.join(output, _TRASH), spark)
    storage.delete(storage.join(output, _STAGING), spark)


def read_manifest(output: str, spark: Optional[SparkSession] = None) -> Dict[str, Any]:
    """Read ``<output>/manifest.json``.

    Raises
    ------
    ParameterError
        No manifest: the run is missing or did not complete.
    """
    path = storage.join(output, _MANIFEST)
    if not storage.exists(path, spark):
        raise ParameterError(
            f"no {_MANIFEST} in output={output!r}: the run is missing or did not complete. "
            "Fix: run the pipeline (python -m p8utils run) into that folder first."
        )
    return json.loads(storage.read_bytes(path, spark).decode("utf-8"))
