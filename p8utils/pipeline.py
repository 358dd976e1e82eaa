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
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence

from p8utils import __version__, storage
from p8utils.errors import OutputExistsError, ParameterError
from p8utils.featurize import _validate as _validate_featurize
from p8utils.featurize import featurize
from p8utils.images import DEFAULT_EXTENSIONS, DEFAULT_MAX_PIXELS, _normalise_extensions, check_input, load_images
from p8utils.models import get_spec, load_weights
from p8utils.pca import PCAResult, check_pca_params, fit_pca, transform

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

__all__ = ["MODES", "RunResult", "run", "read_manifest", "validate_params"]

log = logging.getLogger(__name__)

#: What to do when the output folder already holds something.
MODES = ("error", "overwrite")

#: Variance target used when neither ``k`` nor ``variance`` is given.
DEFAULT_VARIANCE = 0.95

_MANIFEST = "manifest.json"


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
    engine: str = "keras",
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
    check_pca_params(k, variance, spec.width)
    _validate_featurize(batch_size, engine, None)
    _normalise_extensions(extensions)
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
            "Fix: pass a new output folder, or mode='overwrite' (--mode overwrite) to replace it."
        )


def _has_content(uri: str, spark: Optional[SparkSession]) -> bool:
    """Tell whether ``uri`` exists and holds at least one file."""
    if not storage.exists(uri, spark):
        return False
    return next(iter(storage.iter_files(uri, spark)), None) is not None


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
    engine: str = "keras",
    seed: int = 0,
    mode: str = "error",
    extensions: Sequence[str] = DEFAULT_EXTENSIONS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
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
    features_path = storage.join(output, "features")
    pca_path = storage.join(output, "pca")
    manifest_path = storage.join(output, _MANIFEST)
    spark_out = (lambda p: str(storage.local_path(p))) if storage.is_local(output) else (lambda p: p)

    if mode == "overwrite":
        storage.delete(manifest_path, spark)  # the old run is no longer complete

    with _stage(timings, "weights", spark):
        bundle = load_weights(model, weights, seed=seed, spark=spark)
    with _stage(timings, "list_images", spark):
        images = load_images(spark, input, extensions)
    with _stage(timings, "featurize", spark):
        feats = featurize(images, bundle, batch_size=batch_size, engine=engine, max_pixels=max_pixels)
        (feats.select("path", "label", "features", "error")
         .write.mode("overwrite").parquet(spark_out(features_path)))
    stored = spark.read.parquet(spark_out(features_path))
    with _stage(timings, "count", spark):
        by_error = {r["error"]: int(r["count"]) for r in stored.groupBy("error").count().collect()}
    ok = by_error.pop(None, 0)
    counts = {"total": ok + sum(by_error.values()), "ok": ok, "failed": sum(by_error.values()),
              "failed_by_reason": dict(sorted(by_error.items()))}
    with _stage(timings, "pca_fit", spark):
        pca = fit_pca(stored, k=k, variance=variance)
    with _stage(timings, "pca_transform", spark):
        (transform(pca, stored.where(F.col("features").isNotNull()).select("path", "label", "features"))
         .write.mode("overwrite").parquet(spark_out(pca_path)))

    warnings: List[str] = [bundle.warning] if bundle.warning else []
    if pca.k > pca.n_rows - 1:
        warnings.append(f"k={pca.k} exceeds the rank of the data ({pca.n_rows} rows): trailing scores are ~0.")
    manifest: Dict[str, Any] = {
        "status": "complete",
        "p8utils_version": __version__,
        "started_at": started.isoformat(),
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "parameters": {
            "input": input, "output": output, "model": model, "weights": weights, "engine": engine,
            "batch_size": batch_size, "k": k, "variance": variance, "seed": seed, "mode": mode,
            "extensions": list(_normalise_extensions(extensions)), "max_pixels": max_pixels,
            "master": spark.sparkContext.master,
        },
        "weights": {"source": bundle.source, "sha256": bundle.sha256, "seed": bundle.seed,
                    "warning": bundle.warning},
        "counts": counts,
        "pca": {
            "k": pca.k, "variance_target": pca.variance_target, "explained_at_k": pca.explained_at_k,
            "n_rows": pca.n_rows, "feature_width": pca.width,
            "explained_variance": [float(v) for v in pca.explained_variance],
            "cumulative_variance": [float(v) for v in pca.cumulative_variance],
        },
        "outputs": {"features": features_path, "pca": pca_path},
        "timings_s": timings,
        "versions": _versions(),
        "warnings": warnings,
        "argv": list(sys.argv),
    }
    storage.write_bytes(manifest_path, json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8"), spark)
    for w in warnings:
        log.warning(w)
    return RunResult(output, features_path, pca_path, manifest_path, manifest, pca)


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
