"""The pipeline: list → featurize (full or incremental) → write → check → PCA → commit.

:func:`run` and :func:`project` share one skeleton (:func:`_execute`: lease, session and
weights, listing, featurization and staging, row check, PCA, manifest, commit); each step is a function of
:mod:`p8utils.images`, :mod:`p8utils.featurize`, :mod:`p8utils.pca` or of
the run protocol (:mod:`p8utils.runs`: lease, staging, row check, commit,
manifest). Every parameter is declared once, in :class:`p8utils.config.RunConfig`,
and checked before the first Spark job.

Examples
--------
>>> from p8utils import pipeline
>>> from p8utils.config import RunConfig
>>> result = pipeline.run(RunConfig(input="data_sample", output="runs/demo", weights="offline"))  # doctest: +SKIP
>>> result.manifest["counts"]["total"], result.pca.k                                            # doctest: +SKIP
(80, 56)
"""

from __future__ import annotations

import logging
import time
import zipfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    ContextManager,
    Dict,
    Iterator,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Tuple,
    Union,
)

import numpy as np

from p8utils import engines, images, runs, storage
from p8utils import pca as pca_mod
from p8utils.config import MODEL_PARAMETERS, FeatureIdentity, RunConfig
from p8utils.errors import DamagedRunFileError, ParameterError
from p8utils.featurize import FeaturizeSettings, featurize, featurize_to_files
from p8utils.models import WeightsBundle, load_weights
from p8utils.pca import Moments, PCAResult, arrow_moments, fit_moments, fit_pca, transform
from p8utils.runs import INCREMENTAL_KEY, IncrementalPlan, PartTally, RunOutcome, plan_incremental

if TYPE_CHECKING:  # pragma: no cover
    from pyspark import Accumulator
    from pyspark.sql import Column, DataFrame, SparkSession

__all__ = ["FEATURE_COLUMNS", "INCREMENTAL_KEY", "MODEL_PARAMETERS", "RunResult", "max_feature_files", "project", "run"]

log = logging.getLogger(__name__)

#: Columns of ``<output>/features``. ``length`` and ``modificationTime`` are
#: the file's, kept as the incremental-mode key with ``path``.
FEATURE_COLUMNS: Tuple[str, ...] = ("path", "label", "features", "error", "length", "modificationTime")

#: A full PCA fit of at most this many rows reads them on the driver (``pyarrow``; at d = 1280 about 100 MB
#: as float32) and adds their moments there: no Spark job. Above, Spark's tasks add them (:func:`fit_pca`).
DRIVER_FIT_ROWS = 20_000

Progress = Callable[[str, "SparkSession"], ContextManager[Any]]


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


def run(
    config: Union[RunConfig, str],
    output: Optional[str] = None,
    *,
    spark: Optional[SparkSession] = None,
    progress: Optional[Callable[[str, SparkSession], ContextManager[Any]]] = None,
    **parameters: Any,
) -> RunResult:
    """Run the whole pipeline and commit features, PCA and manifest into ``config.output``.

    Parameters
    ----------
    config : RunConfig or str
        The run's parameters; or, as a shorthand, the input folder, with
        ``output`` and ``parameters`` the other fields of :class:`RunConfig`.
    output : str, optional
        With the shorthand only.
    spark : pyspark.sql.SparkSession, optional
        Session to use; default the active one or a new local one
        (:func:`p8utils.spark.get_spark` with ``config.master``).
    progress : callable, optional
        ``progress(stage, spark)`` returns a context manager wrapped around
        each stage (``weights``, ``list_images``, ``featurize``, ``check``,
        ``pca_fit``, ``pca_transform``), e.g. a progress bar for ``featurize``.
    **parameters
        With the shorthand only: other :class:`RunConfig` fields.

    Returns
    -------
    RunResult

    Raises
    ------
    ParameterError
        A bad parameter or path, before any Spark job (before any JVM for local paths).
    OutputBusyError
        Another run holds the output folder; nothing was written.
    RunCheckError
        The staged rows do not match the listed files; the previous output is untouched.
    """
    config = config if isinstance(config, RunConfig) else RunConfig(input=config, output=output, **parameters)
    return _execute(config, spark, progress, _Batch())


def project(
    run_folder: str,
    input: str,
    output: str,
    *,
    spark: Optional[SparkSession] = None,
    progress: Optional[Callable[[str, SparkSession], ContextManager[Any]]] = None,
    **parameters: Any,
) -> RunResult:
    """Featurize new images with a run's model and weights, and project them on the run's PCA.

    This is the step a recognition app needs after the batch: new photos get
    PC scores comparable with the run's, and the classes of the run whose
    centroids (mean PC scores) are nearest.

    Parameters
    ----------
    run_folder : str
        A complete run (local or URI) written by this version of p8utils (it
        keeps its PCA fit in ``pca/_model-<run id>.npz``, named by its manifest).
    input, output : str
        The new images (folder or URI) and where to write their projection (a
        run folder of its own: same protocol, lease and row check).
    spark : pyspark.sql.SparkSession, optional
    progress : callable, optional
        As for :func:`run`.
    **parameters
        Other :class:`RunConfig` fields (``batch_size``, ``mode``, ``master`` …).
        :attr:`FeatureIdentity.PARAMETERS <p8utils.config.FeatureIdentity>` default to the run's; weights that give
        another SHA-256 than the run's are refused.

    Returns
    -------
    RunResult
        ``features/`` as for a run; ``pca/`` with ``path``, ``label``,
        ``pca_features`` (array<double>[k], the run's k), ``nearest_classes``
        (array<string>[3]) and ``nearest_distances`` (array<double>[3]); the
        manifest's ``projection`` entry has the run and, for new images whose
        folder name is a class of the run, the nearest-class accuracy.

    Raises
    ------
    ParameterError
        Not a complete run, a run without its PCA fit, or other weights.
    """
    source = runs.layout(run_folder)
    if not storage.is_local(source.root):
        spark = spark or _session(RunConfig(input=input, output=output, **parameters))
    made = runs.read_manifest(source, spark)
    fixed = FeatureIdentity.parameters_of(made["parameters"])
    config = RunConfig(input=input, output=output, **{**fixed, **parameters, "k": 1, "variance": None})
    return _execute(config, spark, progress, _Projection(source, made))


def _execute(config: RunConfig, spark: Optional[SparkSession], progress: Optional[Progress], job: _Job) -> RunResult:
    """Run the skeleton of :func:`run` and :func:`project`: lease, weights, list, featurize + stage, check, PCA, commit.

    Parameters
    ----------
    config : RunConfig
        The run's parameters (checked).
    spark : pyspark.sql.SparkSession or None
        The session, if the caller has one.
    progress : callable or None
        ``progress(stage, spark)``: a context manager around each stage.
    job : _Job
        What differs: the plan on the committed table and the PCA (fit, or a run's fit applied).

    Returns
    -------
    RunResult
    """
    spark, stage = _check_paths(config, spark), _Stages(progress)
    with runs.open_run(config.output, config.mode, spark) as active:
        spark, bundle = _session_and_weights(config, stage, spark)
        job.prepare(config, active, bundle, spark)
        listing = _list(config, active, stage, spark)
        plan = job.plan(config, listing)
        active.follow(plan)
        builds = spark.sparkContext.accumulator(0)
        with stage("featurize", spark):
            staged = _stage_features(config, active, listing, plan, job.previous, bundle, builds)
        with stage("check", spark):
            counts = active.check_rows(staged, listing.frame, listing.n_files)
        done = job.pca(config, counts, plan, active, staged, stage, spark)
        outcome = RunOutcome(done.config, bundle, counts, done.plan, done.fit, dict(stage.seconds),
                             list(listing.unlisted or []), builds.value, done.extra)
        manifest = active.commit(runs.build_manifest(active, outcome, spark))
    for warning in manifest["warnings"]:
        log.warning(warning)
    lay = runs.layout(config.output)
    return RunResult(config.output, lay.features, lay.pca, lay.manifest, manifest, outcome.fit)


class _PcaDone(NamedTuple):
    """What the PCA step of a job made: the fit, the plan as carried out, the parameters and entries to record."""

    fit: PCAResult
    plan: IncrementalPlan
    config: RunConfig
    extra: Mapping[str, Any] = MappingProxyType({})


class _Job:
    """What a kind of run adds to :func:`_execute`'s skeleton (a batch run by default: no previous table)."""

    #: The committed features table an incremental run builds on (set by :meth:`prepare`).
    previous: Optional[DataFrame] = None

    def prepare(self, config: RunConfig, active: runs.ActiveRun, bundle: WeightsBundle, spark: SparkSession) -> None:
        """Read and check what the run builds on, once the weights are known (before any image is listed)."""

    def plan(self, config: RunConfig, listing: images.Listing) -> IncrementalPlan:
        """Decide what the run does with the committed features table: here, featurize every listed file."""
        return IncrementalPlan.full(listing.n_files)

    def pca(self, config: RunConfig, counts: runs.RowCheck, plan: IncrementalPlan, active: runs.ActiveRun,
            staged: DataFrame, stage: _Stages, spark: SparkSession) -> _PcaDone:
        """Fit or apply the PCA and write the scores (checked against ``counts.ok``)."""
        raise NotImplementedError


class _Batch(_Job):
    """:func:`run`: full or incremental featurization, the PCA fitted on the committed table."""

    def prepare(self, config: RunConfig, active: runs.ActiveRun, bundle: WeightsBundle, spark: SparkSession) -> None:
        self.previous = _previous_features(config, active, bundle, spark)

    def plan(self, config: RunConfig, listing: images.Listing) -> IncrementalPlan:
        if self.previous is None:
            return IncrementalPlan.full(listing.n_files, incremental=config.mode == "incremental")
        spark = listing.frame.sparkSession
        parallelism = spark.sparkContext.defaultParallelism
        plan = plan_incremental(_tallies(self.previous, listing), listing.n_files,
                                lambda n: images.task_count(n, config.task_images, parallelism),
                                max_feature_files(listing.n_files, config.task_images, parallelism))
        log.info("featurizing %d files, %d reused, %d removed, %d files rewritten%s", plan.featurized, plan.reused,
                 plan.removed, len(plan.rewritten_files), ", compacting" if plan.compacted else "")
        return plan

    def pca(self, config: RunConfig, counts: runs.RowCheck, plan: IncrementalPlan, active: runs.ActiveRun,
            staged: DataFrame, stage: _Stages, spark: SparkSession) -> _PcaDone:
        with stage("pca_fit", spark):
            fit, plan = _fit(config, active, staged, counts, plan, spark)
        with stage("pca_transform", spark):
            active.write_pca(transform(fit, _featurized(staged)), fit.to_bytes(),
                             fit.moments.to_bytes() if fit.moments is not None else None, expected_rows=counts.ok)
        return _PcaDone(fit, plan, config)


class _Projection(_Job):
    """:func:`project`: every listed file featurized, projected on a committed run's PCA."""

    def __init__(self, source: runs.RunLayout, made: Dict[str, Any]) -> None:
        self.source, self.made = source, made
        self.fit: Optional[PCAResult] = None

    def prepare(self, config: RunConfig, active: runs.ActiveRun, bundle: WeightsBundle, spark: SparkSession) -> None:
        self.fit = _run_fit(self.source, self.made, FeatureIdentity.from_config(config, bundle.sha256), bundle, spark)

    def pca(self, config: RunConfig, counts: runs.RowCheck, plan: IncrementalPlan, active: runs.ActiveRun,
            staged: DataFrame, stage: _Stages, spark: SparkSession) -> _PcaDone:
        from pyspark.sql import functions as F

        fit = self.fit
        assert fit is not None, "prepare() reads the run's fit"
        with stage("pca_transform", spark):
            centroids = pca_mod.class_centroids(runs.read_pca(self.source, spark))
            scores = pca_mod.nearest_classes(transform(fit, _featurized(staged)), centroids)
            active.write_pca(scores, fit.to_bytes(), expected_rows=counts.ok)
            hits = active.staged_pca(spark).where(F.col("label").isin(*centroids.labels)).agg(
                F.count(F.lit(1)).alias("n"), F.sum((F.col("label") == F.col("nearest_classes")[0]).cast("int")
                                                    ).alias("hits")).first()
        accuracy = None if not hits["n"] else float(hits["hits"]) / int(hits["n"])
        projection = {"run": self.source.root, "run_id": self.made["run_id"], "known_class_rows": int(hits["n"]),
                      "nearest_class_accuracy": accuracy, "classes": len(centroids.labels)}
        return _PcaDone(fit, plan, config.replace(k=fit.k), {"kind": "projection", "projection": projection})


def _featurized(staged: DataFrame) -> DataFrame:
    """Return the rows with features (``path``, ``label``, ``features``): what the PCA fits and scores."""
    return staged.where("features IS NOT NULL").select("path", "label", "features")


def _session_and_weights(config: RunConfig, stage: _Stages,
                         spark: Optional[SparkSession]) -> Tuple[SparkSession, WeightsBundle]:
    """Return the session (the given one, else the active or a new local one) and the resolved weights."""
    spark = spark or _session(config)
    with stage("weights", spark):
        return spark, load_weights(config.model, config.weights, seed=config.seed, spark=spark,
                                   image_size=config.image_size)


def _list(config: RunConfig, active: runs.ActiveRun, stage: _Stages, spark: SparkSession) -> images.Listing:
    """List the input once, into the run's staging folder."""
    with stage("list_images", spark):
        return images.list_images(spark, config.input, config.extensions, dest=active.listing_path,
                                  reader=config.reader)


def _run_fit(source: runs.RunLayout, made: Dict[str, Any], identity: FeatureIdentity, bundle: WeightsBundle,
             spark: SparkSession) -> PCAResult:
    """Read the run's PCA fit, once the weights just loaded (``identity``) are known to be the run's.

    Raises
    ------
    ParameterError
        Other weights than the run's, or a run without its fit.
    """
    if "weights sha256" in FeatureIdentity.from_manifest(made).differences(identity):
        raise ParameterError(
            f"weights={bundle.source!r} give sha256={bundle.sha256[:12]}…, but the run {source.root!r} was made "
            f"with sha256={made['weights']['sha256'][:12]}… ({made['weights']['source']}): its PCA means nothing for "
            "other features. Fix: pass the weights the run used (weights=<that file>, same seed), or re-run it."
        )
    found = runs.read_pca_file(source, "model", spark)
    if found is None:
        raise ParameterError(f"the run {source.root!r} has no PCA fit (pca/_model-*.npz): it was made by an older "
                             "p8utils. Fix: run it again (mode='overwrite') with this version, then project.")
    return _load(PCAResult, found, source, "model")


def _load(kind: type, found: Tuple[str, bytes], run: runs.RunLayout, what: str) -> Any:
    """``kind.from_bytes`` of the PCA file ``found`` (path, bytes) of ``run``; a damaged file is named, with the fix.

    Raises
    ------
    DamagedRunFileError
    """
    try:
        return kind.from_bytes(found[1])
    except (ValueError, OSError, KeyError, zipfile.BadZipFile) as exc:
        raise DamagedRunFileError(
            f"the PCA {what} {found[0]} of the run {run.root!r} (named in {run.manifest}) is damaged ({exc}). Fix: "
            "restore it, or write the run again with mode='overwrite' (--mode overwrite); nothing was changed."
        ) from None


def _fit(config: RunConfig, active: runs.ActiveRun, staged: DataFrame, counts: runs.RowCheck,
         plan: IncrementalPlan, spark: SparkSession) -> Tuple[PCAResult, IncrementalPlan]:
    """Fit the PCA on the whole table the run commits, as ``plan.pca_refit`` says when it can.

    A plan that keeps committed part files refits from moments: those of the
    previous table (``pca/_moments-<run id>.npz``), minus those of the rows
    leaving, plus those of the rows staged, so it reads only the rows that
    changed. The result is the fit of every row (up to rounding); it is used
    only when its row count equals the check's. Otherwise every row is read.

    Returns
    -------
    (PCAResult, IncrementalPlan)
        The fit, and the plan with the refit actually made (the manifest's
        ``incremental.pca_refit``; None without a previous table).
    """
    if plan.pca_refit == "moments":
        update, why = _moments_update(active, counts, spark)
        if update is not None:
            return fit_moments(update, k=config.k, variance=config.variance), plan
        log.info("refitting the PCA on every row: %s", why)
        plan = plan.refit("rows", why)
    small = active.staged_arrow(["features"]) if counts.ok <= DRIVER_FIT_ROWS else None
    if small is not None:  # read whole on the driver: no Spark job (the same moments as fit_pca's tasks)
        return fit_moments(arrow_moments(small.column("features")), k=config.k, variance=config.variance), plan
    return fit_pca(staged, k=config.k, variance=config.variance), plan


def _moments_update(active: runs.ActiveRun, counts: runs.RowCheck,
                    spark: SparkSession) -> Tuple[Optional[Moments], str]:
    """Moments of the committed table after the commit, from the previous ones; else None and why not."""
    leaving = active.leaving_features(spark)
    found = runs.read_pca_file(active.layout, "moments", spark) if leaving is not None else None
    if found is None:
        return None, "no previous moments (a run of an older p8utils, or not merging)"
    previous = _load(Moments, found, active.layout, "moments")
    removed = pca_mod.moments(leaving)
    if 2 * removed.n > previous.n:
        return None, "most rows replaced: taking them out would cost as much as reading all, less exactly"
    try:
        update = previous - removed + pca_mod.moments(active.staged_only(spark))
    except ValueError as exc:  # other widths: never for the same model, but never mix them either
        log.warning("refitting the PCA on every row: %s", exc)
        return None, str(exc)
    if update.n != counts.ok:
        log.warning("refitting the PCA on every row: the previous moments hold %d rows where %d were expected",
                    update.n, counts.ok)
        return None, f"the previous moments hold {update.n} rows where {counts.ok} were expected"
    return update, "moments updated"


def _check_paths(config: RunConfig, spark: Optional[SparkSession]) -> Optional[SparkSession]:
    """Check input and output before any Spark job; return the session if remote paths needed one."""
    if not config.is_local:
        spark = spark or _session(config)
    images.check_input(config.input, config.extensions, spark)
    runs.check_output_location(config.input, config.output)
    images.resolve_reader(config.reader, config.input)
    return spark


def _session(config: RunConfig) -> SparkSession:
    from p8utils.spark import get_spark

    return get_spark(config.master)


class _Stages:
    """Times each stage, labels its Spark jobs in the UI, and wraps it in the caller's progress context."""

    def __init__(self, progress: Optional[Callable[[str, SparkSession], ContextManager[Any]]]) -> None:
        self.seconds: Dict[str, float] = {}
        self._progress = progress

    @contextmanager
    def __call__(self, name: str, spark: SparkSession) -> Iterator[None]:
        spark.sparkContext.setJobDescription(f"p8utils: {name}")
        start = time.perf_counter()
        try:
            with self._progress(name, spark) if self._progress is not None else nullcontext():
                yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)
            spark.sparkContext.setJobDescription(None)  # type: ignore[arg-type]


def _previous_features(config: RunConfig, active: runs.ActiveRun, bundle: WeightsBundle,
                       spark: SparkSession) -> Optional[DataFrame]:
    """Return the committed features table that ``mode="incremental"`` builds on, if any.

    Raises
    ------
    ParameterError
        The previous run's :class:`~p8utils.config.FeatureIdentity` differs (another model, other
        weights, input size or engine precision): mixing them would give a table of incomparable features.
    """
    if config.mode != "incremental" or active.previous is None:
        return None
    used = FeatureIdentity.from_manifest(runs.read_manifest(active.layout))
    differ = used.differences(FeatureIdentity.from_config(config, bundle.sha256))
    if differ:
        shown = ", ".join(f"{k}={was!r} (now {now!r})" for k, (was, now) in differ.items())
        raise ParameterError(
            f"mode='incremental' but output={config.output!r} holds features made with {shown}: a table mixing "
            "them would hold incomparable features. Fix: use the same model, weights, image_size and engine "
            "precision, or mode='overwrite' to recompute everything, or a new output."
        )
    return runs.read_features(active.layout, spark)


def _reuse_frames(previous: DataFrame, listing: images.Listing) -> Tuple[DataFrame, DataFrame, DataFrame]:
    """Return the previous table with its part file (``_file``), its keys, and the keys of the rows kept (lazy, no job).

    A row is kept when ``path``, ``length`` and ``modificationTime`` all equal
    those of a listed file and its error is not transient (``missing``/``unreadable``
    files are read again). The features are not read to decide.
    """
    from pyspark.sql import functions as F

    prev = previous.select(*FEATURE_COLUMNS, F.col("_metadata.file_name").alias("_file"))
    keys = prev.select(*INCREMENTAL_KEY, "error", "_file")
    same = [listing.frame[c].eqNullSafe(keys[c]) for c in INCREMENTAL_KEY]
    reusable = keys.where(F.col("error").isNull() | ~F.col("error").isin(*images.TRANSIENT_REASONS))
    kept = reusable.join(listing.frame.select(*INCREMENTAL_KEY), same, "left_semi")  # keys: cheap to recompute
    return prev, keys, kept


def _tallies(previous: DataFrame, listing: images.Listing) -> List[PartTally]:
    """Rows and kept rows of each committed part file (one Spark job on the keys)."""
    from pyspark.sql import functions as F

    _, keys, kept = _reuse_frames(previous, listing)
    per_file = keys.groupBy("_file").count().join(
        kept.groupBy("_file").agg(F.count(F.lit(1)).alias("kept")), "_file", "left").collect()
    return [PartTally(r["_file"], int(r["count"]), int(r["kept"] or 0)) for r in per_file]


def _stage_features(
    config: RunConfig,
    active: runs.ActiveRun,
    listing: images.Listing,
    plan: IncrementalPlan,
    previous: Optional[DataFrame],
    bundle: WeightsBundle,
    builds: Accumulator,
) -> DataFrame:
    """Write the rows this run stages, as ``plan`` says; unchanged rows stay where they are.

    Incremental runs are copy-on-write: the committed part files holding only
    unchanged rows stay untouched (:meth:`p8utils.runs.ActiveRun.follow`),
    those holding a row of a changed or deleted file are rewritten without it
    (by Spark), and new rows go to new files, so a run costs what is new. A
    compacting plan rewrites the whole table. Either way the committed table
    equals what a full run gives. The new rows are written by the Python tasks
    that featurize them (:func:`p8utils.featurize.featurize_to_files`: the
    features never go back through the JVM) when the files are read by Python
    and the run folder is local or on S3; by Spark otherwise.

    Returns
    -------
    pyspark.sql.DataFrame
        :data:`FEATURE_COLUMNS`: the table the run will commit (what it wrote,
        and the committed part files that stay).
    """
    from pyspark.sql import functions as F

    todo, n_todo = listing.frame, listing.n_files
    if previous is not None and plan.on_previous:
        prev, keys, kept = _reuse_frames(previous, listing)
        todo, n_todo = listing.frame.join(kept.select("path"), "path", "left_anti"), plan.featurized
        if plan.compacted:  # rewrite everything: the reused rows, read in full, and the new ones
            active.write_features(prev.join(kept.select("path", "_file"), ["path", "_file"], "left_semi")
                                  .select(*FEATURE_COLUMNS))
        elif plan.rewritten_files:  # copy-on-write: only the files that lose a row are rewritten, without it
            gone = keys.join(kept.select("path"), "path", "left_anti").select("path")
            active.write_features(prev.where(F.col("_file").isin(*plan.rewritten_files)).join(
                F.broadcast(gone), "path", "left_anti").select(*FEATURE_COLUMNS))
    spark = todo.sparkSession
    tasks = images.task_count(n_todo, config.task_images, spark.sparkContext.defaultParallelism)
    settings = FeaturizeSettings(config.batch_size, config.engine, None, config.max_pixels)
    extra = dict(model_builds=builds, calibration=_calibration(config, listing, bundle, spark))
    folder = active.layout.features
    if listing.reader == "python" and (storage.is_local(folder) or storage.is_s3(folder)):
        active.add_task_files("features", featurize_to_files(todo.repartition(tasks), bundle, folder,
                                                             active.part_prefix, FEATURE_COLUMNS, settings, **extra))
    else:
        args = {**{k: getattr(settings, k) for k in ("batch_size", "engine", "max_pixels")}, **extra}
        staged = active.write_features(_featurize_listed(config, listing, todo, tasks, bundle, args))
        if listing.reader == "spark":
            active.write_features(_unread_rows(listing, staged))
    if not active.written["features"]:  # nothing new and nothing rewritten: an empty file stands for the run
        active.write_features(_rows_without_features(todo.where(F.lit(False))))
    return active.staged_features(spark)


def max_feature_files(n_rows: int, images_per_partition: int, parallelism: int) -> int:
    """Most part files ``features/`` may hold before an incremental run rewrites it whole (compaction).

    Twice the files a full run would write, plus 16: successive small
    incremental runs add a few files each; past this bound the next run
    compacts them.

    Returns
    -------
    int
    """
    return 2 * images.task_count(n_rows, images_per_partition, parallelism) + 16


def _featurize_listed(config: RunConfig, listing: images.Listing, todo: DataFrame, tasks: int,
                      bundle: WeightsBundle, args: Mapping[str, Any]) -> DataFrame:
    """Featurize the listed files of ``todo`` in ``tasks`` tasks (for Spark to write); listing errors pass through."""
    from pyspark.sql import functions as F

    spark = todo.sparkSession
    failed = _rows_without_features(todo.where(F.col("error").isNotNull()))
    good = todo.where(F.col("error").isNull())
    if listing.reader == "python":  # each Python worker reads its files: only paths travel
        feats = featurize(good.drop("error").repartition(tasks), bundle, input_col="path", **args)
    else:  # Spark's binaryFile reads the bytes; files added after the listing are left out
        content = (images.load_listed(spark, good) if images.is_file_list(config.input) else
                   images.load_images(spark, config.input, config.extensions)).join(good.select("path"), "path",
                                                                                     "left_semi")
        if tasks < content.rdd.getNumPartitions():
            content = content.coalesce(tasks)  # narrow: image bytes are never shuffled
        feats = featurize(content, bundle, input_col="content", **args)
    return feats.select(*FEATURE_COLUMNS).unionByName(failed)


def _calibration(config: RunConfig, listing: images.Listing, bundle: WeightsBundle,
                 spark: SparkSession) -> Optional[np.ndarray]:
    """Preprocessed input images for an engine that calibrates on them; None for the others.

    :data:`p8utils.engines.CALIBRATION_IMAGES` listed files, chosen by a hash of
    their path (deterministic, spread over the classes), read on the driver.
    """
    from pyspark.sql import functions as F

    if not engines.get_engine(config.engine).calibrated:
        return None
    chosen = (listing.frame.where(F.col("error").isNull()).orderBy(F.xxhash64("path"), "path")
              .select("path").limit(engines.CALIBRATION_IMAGES).collect())
    decoded = images.decode_files([r["path"] for r in chosen], bundle.spec.input_size, spark, config.max_pixels)
    if len(decoded) == 0:
        raise ParameterError(f"engine={config.engine!r} calibrates on input images, but none of the "
                             f"{len(chosen)} chosen could be decoded. Fix: check the input, or use engine='tflite'.")
    return bundle.spec.preprocess(decoded)


def _unread_rows(listing: images.Listing, staged: DataFrame) -> DataFrame:
    """Rows for listed files that Spark's reader gave no row: zero-byte (``empty``) or gone (``missing``)."""
    from pyspark.sql import functions as F

    absent = listing.frame.join(staged.select("path"), "path", "left_anti")
    return _rows_without_features(absent, F.when(F.col("length") == 0, "empty").otherwise("missing"))


def _rows_without_features(listed: DataFrame, error: Optional[Column] = None) -> DataFrame:
    """Project listed files to :data:`FEATURE_COLUMNS` with null features: rows for files that were not featurized.

    Parameters
    ----------
    listed : pyspark.sql.DataFrame
        ``path``, ``label``, ``length``, ``modificationTime`` and, unless
        ``error`` is given, ``error``.
    error : pyspark.sql.Column, optional
        The reason of each row (default: the ``error`` column).
    """
    from pyspark.sql import functions as F

    return listed.select("path", "label", F.lit(None).cast("array<float>").alias("features"),
                         (F.col("error") if error is None else error).alias("error"), "length", "modificationTime")
