from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from p8utils.spark import LOCAL_CONF, RECOMMENDED_CONF, get_spark


def test_returns_the_active_session(spark):
    assert get_spark() is spark
    assert get_spark(master="local[1]") is spark, "an existing session is never replaced"


def test_local_session_settings(spark):
    conf = spark.sparkContext.getConf()
    for key, value in RECOMMENDED_CONF.items():
        assert conf.get(key) == value, key
    assert spark.sparkContext.master == "local[2]"
    assert os.environ["PYSPARK_PYTHON"] == sys.executable


def test_a_local_sessions_jvm_compiles_with_c1_only(spark):
    """LOCAL_CONF reaches the JVM this process launched (not only Spark's conf)."""
    assert LOCAL_CONF["spark.driver.extraJavaOptions"] == "-XX:TieredStopAtLevel=1"
    args = list(spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
    assert "-XX:TieredStopAtLevel=1" in args, args


def test_workers_run_this_interpreter(spark):
    exe = spark.sparkContext.parallelize([0], 1).map(lambda _: __import__("sys").executable).collect()
    assert exe == [sys.executable]


_ZIP_RESCANS = """
import importlib, sys, zipfile, zipimport
archive = sys.argv[1]
def write(names):
    with zipfile.ZipFile(archive, "w") as z:
        for name in names:
            z.writestr(name + ".py", "VALUE = " + repr(name))
write(["first"])
sys.path.insert(0, archive)
import first
reads = []
real = zipimport._read_directory
zipimport._read_directory = lambda path: reads.append(path) or real(path)
from p8utils.spark import skip_unchanged_zip_rescans
skip_unchanged_zip_rescans()
skip_unchanged_zip_rescans()  # idempotent
importlib.invalidate_caches()  # the first one after the call reads, as before
first_reads = len(reads)
for _ in range(3):
    importlib.invalidate_caches()
unchanged_reads = len(reads) - first_reads
write(["first", "second"])  # the archive changes: the next invalidation reads it again
importlib.invalidate_caches()
import second
print(first_reads, unchanged_reads, len(reads) - first_reads - unchanged_reads, second.VALUE)
"""


@pytest.mark.skipif(not (3, 10) <= sys.version_info[:2] < (3, 12), reason="CPython 3.10/3.11 only (gh-103200)")
def test_unchanged_zip_archives_are_not_reread_at_each_invalidation(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _ZIP_RESCANS, str(tmp_path / "mods.zip")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first, unchanged, changed, value = proc.stdout.split()
    assert (int(unchanged), value) == (0, "second") and int(first) >= 1 and int(changed) >= 1


def test_worker_tasks_skip_the_rescans(spark):
    def probe(_):
        import importlib
        import zipimport

        from p8utils.spark import skip_unchanged_zip_rescans

        skip_unchanged_zip_rescans()
        importlib.invalidate_caches()
        reads = []
        real = zipimport._read_directory
        zipimport._read_directory = lambda path: reads.append(path) or real(path)
        try:
            importlib.invalidate_caches()
        finally:
            zipimport._read_directory = real
        yield len(reads)

    expected = 0 if (3, 10) <= sys.version_info[:2] < (3, 12) else None
    reads = spark.sparkContext.parallelize([0, 1], 2).mapPartitions(probe).collect()
    assert len(reads) == 2 and (expected is None or reads == [0, 0])


def test_worker_long_lived_objects_leave_the_collectors_scans_until_replaced(spark):
    """In a task: what is alive after the block is frozen (a full collection skips it, even a dead cycle of it);
    the next block unfreezes, so what it replaced is collected on leaving."""
    def probe(_):
        import gc
        import weakref

        from p8utils.spark import worker_long_lived

        class Engine:
            pass

        with worker_long_lived():
            engine = Engine()
            engine.me = engine  # a cycle: only the collector can free it
        frozen, listed = gc.get_freeze_count(), any(o is engine for o in gc.get_objects())
        ref = weakref.ref(engine)
        del engine
        gc.collect()
        kept = ref() is not None  # frozen: a full collection (PySpark's after each task) skips it
        with worker_long_lived():
            pass  # the engine is replaced by nothing: it must not stay frozen
        collected = ref() is None
        gc.unfreeze()
        yield frozen > 0, listed, kept, collected

    assert spark.sparkContext.parallelize([0], 1).mapPartitions(probe).collect() == [(True, False, True, True)]


@pytest.mark.parametrize("pyspark", ["loaded", "not installed"])
def test_worker_long_lived_freezes_nothing_outside_a_task(monkeypatch, pyspark):
    import gc

    from p8utils.spark import worker_long_lived

    if pyspark == "not installed":  # the bootstrap's `python -m p8utils check` runs without PySpark
        monkeypatch.setitem(sys.modules, "pyspark", None)
    before = gc.get_freeze_count()
    with worker_long_lived():
        made = [object()]
    assert gc.get_freeze_count() == before and made


def _slow_rows(spark, n: int = 40):
    """``n`` rows in 2 partitions, each taking 0.2 s in a Python UDF (tasks that take a while to kill)."""
    from pyspark.sql import functions as F

    slow = F.udf(lambda x: (__import__("time").sleep(0.2), x)[1], "long")
    return spark.range(0, n, numPartitions=2).select(slow("id").alias("id"))


def test_an_interrupted_write_has_ended_before_the_interruption_goes_on(spark, tmp_path):
    import signal
    import threading

    from p8utils.spark import _running_tasks, jobs_ended_on_exit

    dest = tmp_path / "out"
    frame = _slow_rows(spark)
    spark.sparkContext.setJobDescription("the caller's description")
    # Python's own handler: a KeyboardInterrupt, nothing cancelled (PySpark's handler cancels every job)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    main = threading.main_thread().ident
    timer = threading.Timer(2.0, signal.pthread_kill, (main, signal.SIGINT))  # Ctrl-C while the tasks run
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            jobs_ended_on_exit(spark, lambda: frame.write.parquet(str(dest)))
        running = _running_tasks(spark.sparkContext)
        shutil.rmtree(dest, ignore_errors=True)  # the run's clean-up (Spark may leave an empty _temporary/0/_temporary)
        time.sleep(3)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, handler)
        spark.sparkContext.setJobDescription(None)
    assert running == 0, "the cancelled tasks have ended"
    assert not dest.exists(), "nothing of the write came after the clean-up (it went on: part files, _SUCCESS)"


def test_jobs_ended_on_exit_returns_the_result_or_raises_the_failure(spark):
    from p8utils.spark import _running_tasks, jobs_ended_on_exit

    frame = _slow_rows(spark, 4)
    assert jobs_ended_on_exit(spark, frame.count) == 4
    spark.sparkContext.setLocalProperty("p8utils.test", "inherited")
    try:
        seen = jobs_ended_on_exit(spark, lambda: spark.sparkContext.getLocalProperty("p8utils.test"))
    finally:
        spark.sparkContext.setLocalProperty("p8utils.test", None)
    assert seen == "inherited", "the caller's local properties (job group, pool) hold in the call's thread"
    with pytest.raises(ZeroDivisionError):
        jobs_ended_on_exit(spark, lambda: 1 / 0)
    assert _running_tasks(spark.sparkContext) == 0
