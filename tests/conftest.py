"""Shared fixtures: one local Spark session and one offline model for the whole run.

Across xdist workers too: one disk cache per session (``P8UTILS_CACHE``, never ~/.cache; ``P8_TEST_CACHE`` keeps
one between sessions) filled once under a file lock; ``sample_run`` and ``notebook01_run`` made once per session
(:func:`shared_once`). Under xdist (``make test``) the test files run heaviest first (:func:`_balance`). With
``P8_REQUIRE_SYSTEM_PACKAGES=1`` (``make test``) a skip for lack of a system package ``make`` installs (Chromium,
shellcheck, Kerberos for sparkmagic) is a failure.

Also sets two markers that ``make test-fast`` (``-m "not jvm and not heavy and not slow"``) leaves out:
``jvm`` on every test that needs a JVM, ``heavy`` on tests that need none but take seconds of CPU each
(a TensorFlow model, papermill or TensorFlow in a subprocess). A test gets them through the fixtures of
:data:`_MARK_BY_FIXTURE` (used directly or through other fixtures), by name in :data:`_MARK_BY_NAME`
(what the fixtures do not reveal), or from its own module (``@pytest.mark.heavy``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = ROOT / "data_sample"
REAL_DIR = ROOT.parent / "shared" / "fruits360"
#: Hadoop's S3A connector for the local session (test only: EMR has EMRFS); `make install` extracts them.
S3A_JARS = tuple(ROOT / ".venv" / "s3a-jars" / name
                 for name in ("hadoop-aws-3.3.1.jar", "aws-java-sdk-bundle-1.11.901.jar"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: Every JVM of the test session (the shared session, CLI runs, notebooks, Livy sessions, spark-submit, the
#: standalone cluster) compiles with C1 only: they live seconds to minutes, where C2's compile threads cost more
#: CPU than they save. A CLI run on data_sample/ took 23.2-24.6 s wall with it, 27.6-29.3 s without; on the 240
#: real photos 23.2/22.8 s against 35.6/26.6 s (each pair alternated in one session).
#: The product does the same for the local sessions it launches (``p8utils.spark.LOCAL_CONF``); this variable also
#: covers the JVMs it does not (spark-submit, the standalone cluster, Livy sessions). The JVM notes the variable on
#: stderr, which the CLI sends to the run's log. An already set JAVA_TOOL_OPTIONS is kept.
JVM_TEST_OPTIONS = "-XX:TieredStopAtLevel=1"
os.environ.setdefault("JAVA_TOOL_OPTIONS", JVM_TEST_OPTIONS)
#: The S3A jars go on every test JVM's class path, appended (Spark's launcher reads ``SPARK_DIST_CLASSPATH``): the
#: shared session, CLI runs on the emulator and the others then have one class path, so one class-data archive
#: (:func:`_class_archive`) serves them all. An already set SPARK_DIST_CLASSPATH is kept.
if all(jar.is_file() for jar in S3A_JARS):
    os.environ.setdefault("SPARK_DIST_CLASSPATH", os.pathsep.join(str(jar) for jar in S3A_JARS))

#: marker -> fixtures: a test using one of them, directly or through another fixture, gets the marker.
_MARK_BY_FIXTURE = {
    "jvm": ("spark", "s3_spark"),
    "heavy": ("offline_bundle",),
}

#: marker -> tests that the fixtures do not reveal (Spark, JVMs, TensorFlow or papermill in a subprocess, or a
#: model built by the test itself): a module ("test_x.py", relative to tests/) or one test
#: ("test_x.py::test_name", every parametrization). A listed name that its module does not define gives a
#: warning, so the lists do not silently go stale when a test is renamed.
_MARK_BY_NAME = {
    "jvm": (
        "test_bench.py::test_bench_json_has_every_figure_and_consistent_derived_values",
        "test_bench.py::test_bench_table_prints_the_json",
        "test_bench.py::test_cost_curve_runs_on_a_tiny_input",
        "test_bootstrap.py::test_spark_submit_runs_the_pipeline_through_the_bootstrap_launcher",
        "test_bootstrap.py::test_run_notebook_on_master_headless_against_a_livy_endpoint",
        "test_cli.py::test_cli_run_end_to_end",
        "test_cli.py::test_cli_run_and_project_end_to_end_on_s3",
        "test_cluster.py",
        "test_livy.py",
        "test_notebooks.py::test_01_runs_headless_on_the_sample",
        "test_notebooks.py::test_03_analyses_the_features_of_01",
        "test_reliability.py::test_task_retried_after_python_worker_dies",
        "test_reliability.py::test_files_deleted_during_featurization",
        "test_reliability.py::test_a_file_list_of_s3_objects_is_read_without_any_listing",
        # their fixture `target` asks for `spark` / `s3_spark` at run time (request.getfixturevalue)
        "test_runs.py::test_commit_names_the_files_and_deletes_what_it_no_longer_names",
        "test_runs.py::test_a_commit_killed_at_any_step_shows_the_old_or_the_new_table",
        "test_runs.py::test_task_staged_files_commit_only_what_the_tasks_name",
    ),
    "heavy": (
        "test_cli.py::test_check_command",  # TensorFlow in a subprocess
        "test_models.py::test_preprocess_equals_keras",  # imports TensorFlow
        "test_models.py::test_preprocess_into_buffer_is_bitwise_keras",
        "test_models.py::test_build_model_is_layers_minus_two",
        "test_models.py::test_imagenet_unreachable_names_the_remedy",
        "test_models.py::test_imagenet_unreachable_names_the_file_of_the_size",
        "test_models.py::test_weights_bad_file_and_missing_file",
        "test_notebooks.py::test_nbstripout_would_not_change_them",  # papermill/nbstripout in subprocesses
        "test_notebooks.py::test_help_notebook_lists_every_parameter_with_its_comment",
        "test_notebooks.py::test_02_parameters_are_injected_as_python_for_pysparkkernel",
        "test_runs.py::test_simultaneous_runs_exactly_one_wins",  # six processes importing p8utils: 5-20 s
    ),
}


def image_files(folder: Path) -> list[Path]:
    """Every .jpg/.jpeg below ``folder`` (what the pipeline must read)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg")
                  and not p.name.startswith((".", "_")))


def _listed(marker: str) -> dict[str, set[str]]:
    """``_MARK_BY_NAME[marker]`` as {module: {test names, "" for the whole module}}."""
    listed: dict[str, set[str]] = {}
    for entry in _MARK_BY_NAME[marker]:
        module, _, name = entry.partition("::")
        listed.setdefault(module, set()).add(name)
    return listed


def _module_of(item: pytest.Item, here: Path) -> str:
    path = item.path.resolve()
    return path.relative_to(here).as_posix() if here in path.parents else ""


@pytest.hookimpl(tryfirst=True)  # before -m deselects: the markers must be there by then
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Add the ``jvm`` and ``heavy`` markers (see :data:`_MARK_BY_FIXTURE`, :data:`_MARK_BY_NAME`)."""
    here = Path(__file__).resolve().parent
    listed = {marker: _listed(marker) for marker in _MARK_BY_NAME}
    stale = set()
    for item in items:
        module = _module_of(item, here)
        name = getattr(item, "originalname", item.name)
        for marker, fixtures in _MARK_BY_FIXTURE.items():
            names = listed[marker].get(module, set())
            stale.update((marker, module, n) for n in names if n and not hasattr(getattr(item, "module", None), n))
            if any(f in item.fixturenames for f in fixtures) or "" in names or name in names:
                item.add_marker(getattr(pytest.mark, marker))
    _balance(config, items, [_module_of(item, here) for item in items])
    for marker, module, name in sorted(stale):
        warnings.warn(f"tests/conftest.py _MARK_BY_NAME[{marker!r}] lists {module}::{name}, which {module} does not "
                      "define: the test was renamed or removed. Fix: update the list.", pytest.PytestConfigWarning,
                      stacklevel=1)


# ---- one disk cache per test session (offline weights, converted models), never ~/.cache ----------------------

#: Set this to a folder to keep the tests' disk cache between sessions (a quicker edit-test loop); by default each
#: session fills a fresh one, removed at its end.
TEST_CACHE_VAR = "P8_TEST_CACHE"
_SESSION_CACHE: list[str] = []  # [the session's P8UTILS_CACHE] once pytest_configure has run


def pytest_configure(config: pytest.Config) -> None:
    """Point ``P8UTILS_CACHE`` at the session's cache before any test (and any xdist worker) starts.

    On the controller (or the only process): xdist starts its workers later, from this environment, so every
    worker and every subprocess of a test (CLI runs, notebooks, spark-submit) shares the one cache.
    """
    if not hasattr(config, "workerinput"):
        keep = os.environ.get(TEST_CACHE_VAR)
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            cache = keep
        else:
            cache = tempfile.mkdtemp(prefix="p8utils-test-cache-")
            config._p8_cache_made = cache  # type: ignore[attr-defined]
        os.environ["P8UTILS_CACHE"] = cache
    _SESSION_CACHE[:] = [os.environ.get("P8UTILS_CACHE", "")]


def pytest_unconfigure(config: pytest.Config) -> None:
    made = getattr(config, "_p8_cache_made", None)
    if made:
        shutil.rmtree(made, ignore_errors=True)


@contextlib.contextmanager
def locked(path: Path):
    """Hold an exclusive lock on ``path`` (a lock file), across the processes of the session (xdist workers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_WARM: list[bool] = []


#: What every pipeline run at the defaults needs first: the offline weights (224 px, seed 0) and their fp32 TFLite
#: conversion (the default engine). In a subprocess: no TensorFlow in the test process for it.
_WARM_CODE = ("from p8utils import engines, models\n"
              "engines.payload(models.load_weights('mobilenet_v2', 'offline', seed=0), 'tflite')\n")


def _warm_cache() -> None:
    """Fill the session cache once: the first process computes (:data:`_WARM_CODE`, then :func:`_class_archive`),
    the others wait for it on a lock, then find it there, as do the CLI runs, notebooks and spark-submit runs the
    tests start. Every process then points its JVMs at the class-data archive (:data:`JVM_TEST_OPTIONS` plus
    ``-XX:SharedArchiveFile``), unless JAVA_TOOL_OPTIONS was set before the session."""
    if _WARM or not _SESSION_CACHE or not _SESSION_CACHE[0]:
        return
    import subprocess
    import sys

    cache = _SESSION_CACHE[0]
    with locked(Path(cache) / ".warm.lock"):
        done = Path(cache) / ".warm.done"
        if not done.is_file():
            proc = subprocess.run([sys.executable, "-c", _WARM_CODE], capture_output=True, text=True,
                                  env=_cache_env(cache), cwd=ROOT, timeout=900)
            assert proc.returncode == 0, f"filling the test cache {cache} failed:\n{proc.stderr[-3000:]}"
            done.touch()
        archive = _class_archive(Path(cache))
    if archive is not None and os.environ.get("JAVA_TOOL_OPTIONS") == JVM_TEST_OPTIONS:
        os.environ["JAVA_TOOL_OPTIONS"] = f"{JVM_TEST_OPTIONS} -XX:SharedArchiveFile={archive} -Xlog:cds*=off"
    _WARM.append(True)


def _cache_env(cache: str) -> dict[str, str]:
    """The environment of a subprocess that fills the session cache ``cache``."""
    return dict(os.environ, P8UTILS_CACHE=cache, TF_CPP_MIN_LOG_LEVEL="2",
                PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


#: Class-data sharing (the JDK's AppCDS): the Spark, Hadoop and Scala classes a pipeline run loads, parsed and
#: verified once per session into an archive that every later test JVM maps instead of loading them again. A CLI
#: run on data_sample/ (C1, fresh process) took 14.1/14.4 s wall with it against 22.5/18.5 s without; on the 240
#: real photos 17.3/15.3 s against 24.9/23.9 s (alternated, one session). A JVM whose class path differs from the
#: archive's (the launcher's own, a standalone worker's) ignores it; ``-Xlog:cds*=off`` keeps that quiet.
CLASS_ARCHIVE_TIMEOUT_S = 600


def _class_archive(cache: Path) -> Path | None:
    """Return the session's class-data archive, made on first call by a CLI run on 8 sample images whose JVM dumps
    the classes it loaded as it exits (``-XX:ArchiveClassesAtExit``); None, with a warning, if that fails (the
    tests then run without it, slower). Called under the cache's lock."""
    import subprocess
    import sys
    import time

    archive = cache / "jvm" / "spark-classes.jsa"
    failed = cache / "jvm" / "failed.txt"
    if archive.is_file() or failed.is_file():
        return archive if archive.is_file() else None
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(f"dumping-{os.getpid()}.jsa")
    work = Path(tempfile.mkdtemp(prefix="p8utils-class-archive-"))
    why = ""
    try:
        for f in image_files(SAMPLE_DIR)[::10]:
            (work / "in" / f.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, work / "in" / f.parent.name / f.name)
        env = _cache_env(str(cache))
        env["PYSPARK_SUBMIT_ARGS"] = f"--driver-java-options -XX:ArchiveClassesAtExit={partial} pyspark-shell"
        proc = subprocess.run([sys.executable, "-m", "p8utils", "run", "--input", str(work / "in"), "--output",
                               str(work / "out"), "--weights", "offline", "--k", "2", "--no-explorer"],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=CLASS_ARCHIVE_TIMEOUT_S)
        # the JVM outlives the command by a moment: it writes the archive as it exits
        deadline = time.monotonic() + 120
        while _processes_naming(str(partial)) and time.monotonic() < deadline:
            time.sleep(0.2)
        if proc.returncode != 0:
            why = f"the run exited {proc.returncode}:\n{proc.stderr[-2000:]}"
        elif _processes_naming(str(partial)) or not partial.is_file():
            why = "its JVM wrote no archive within 120 s"
        else:
            os.replace(partial, archive)
            return archive
    finally:
        shutil.rmtree(work, ignore_errors=True)
        partial.unlink(missing_ok=True)
    failed.write_text(why)
    warnings.warn(f"no class-data archive for the test JVMs (they start slower): {why}", stacklevel=1)
    return None


def _processes_naming(text: str) -> list[int]:
    """The processes whose command line holds ``text`` (Linux: ``/proc``)."""
    from .harness.spark_cluster import cmdline

    return [int(entry.name) for entry in Path("/proc").glob("[0-9]*") if text in cmdline(int(entry.name))]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before the first test of this process that needs a model (marked ``jvm`` or ``heavy``), ahead of its fixtures
    of any scope: fill the session cache (:func:`_warm_cache`; ``make test-fast`` selects no such test). Not before
    the others: while one xdist worker fills the cache (~1 min on one core), the other runs the tests that need
    none (e.g. test_bootstrap's first seventy) instead of waiting on the lock."""
    if item.get_closest_marker("jvm") or item.get_closest_marker("heavy"):
        _warm_cache()


def _shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's base temporary folder, shared by the xdist workers (each has its own below it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def shared_once(tmp_path_factory: pytest.TempPathFactory, name: str, build):
    """``build(folder)`` once per test session across xdist workers; its (pickled) result for every caller.

    The first process to ask builds under a lock (the others wait, then read the result); a failed build is not
    recorded, so a later caller tries again and fails the same way.
    """
    root = _shared_root(tmp_path_factory) / f"p8-shared-{name}"
    result = root / "result.pickle"
    with locked(root.parent / f"p8-shared-{name}.lock"):
        if result.is_file():
            with contextlib.suppress(Exception):
                return pickle.loads(result.read_bytes())
        folder = root / "data"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        value = build(folder)
        with contextlib.suppress(Exception):
            result.write_bytes(pickle.dumps(value))
        return value


# ---- a skipped test that needs a system package `make test` installs is a failure there ---------------------

#: Set by ``make test`` (which installs them): a skip naming one of these packages fails the test instead.
REQUIRE_VAR = "P8_REQUIRE_SYSTEM_PACKAGES"
_SYSTEM_PACKAGE_SKIP = re.compile(r"chromium|chromedriver|webdriver|shellcheck|gssapi|kerberos|krb5|sparkmagic",
                                  re.IGNORECASE)


def _required_skip(report) -> str:
    """The skip reason if ``report`` is a skip that :data:`REQUIRE_VAR` turns into a failure, else ``""``."""
    if os.environ.get(REQUIRE_VAR) != "1" or not report.skipped or hasattr(report, "wasxfail"):
        return ""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason if _SYSTEM_PACKAGE_SKIP.search(reason) else ""


def _fail_instead(report, reason: str) -> None:
    report.outcome = "failed"
    report.longrepr = (f"{REQUIRE_VAR}=1 (make test installs the system packages): this test may not skip. "
                       f"Skip reason: {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    report = outcome.get_result()
    reason = _required_skip(report)
    if reason:
        _fail_instead(report, reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    reason = _required_skip(report)
    if reason:  # a module-level importorskip (e.g. sparkmagic in test_livy.py)
        _fail_instead(report, reason)


# ---- balance: the test files heaviest first (--dist loadfile --no-loadscope-reorder) -----------------------------

#: Seconds of the slowest tests at the last full run (2 busy cores); any other test is guessed from its markers
#: (see :func:`_cost`). Only the order of the files depends on them: a stale figure costs balance, not correctness.
_KNOWN_COST_S = {
    "test_bench.py::test_bench_json_has_every_figure_and_consistent_derived_values": 170,  # its fixture's bench (--s3)
    "test_bench.py::test_bench_table_prints_the_json": 1,
    "test_bench.py::test_cost_curve_runs_on_a_tiny_input": 85,
    "test_cli.py::test_cli_run_and_project_end_to_end_on_s3": 90,
    "test_bootstrap.py::test_a_killed_run_leaves_no_livy_session_behind": 45,
    "test_bootstrap.py::test_run_notebook_on_master_headless_against_a_livy_endpoint": 55,
    "test_bootstrap.py::test_bootstrap_installs_pins_and_p8utils_into_a_fresh_venv": 80,  # the fixture's install
    "test_livy.py::test_02_on_pysparkkernel_writes_what_01_writes": 85,  # the fixture's runs
}


def _cost(item: pytest.Item, module: str) -> float:
    name = getattr(item, "originalname", item.name)
    known = _KNOWN_COST_S.get(f"{module}::{name}")
    if known is not None:
        return known
    if item.get_closest_marker("slow"):
        return 40.0
    if item.get_closest_marker("jvm") or item.get_closest_marker("heavy"):
        return 6.0
    return 0.3


def _balance(config: pytest.Config, items: list[pytest.Item], modules: list[str]) -> None:
    """On an xdist worker: the test files ordered by estimated cost, heaviest first (each file's tests in their
    order). ``--dist loadfile --no-loadscope-reorder`` (``make test``) hands the files out in that order, so the
    long ones start first instead of ending alone on one worker (xdist's own reorder goes by the number of tests:
    the few-but-long files came last). Not ``--dist loadgroup``: pytest-xdist 3.8 marks a group by rewriting
    ``item._nodeid``, which pytest 9 no longer reads, so every test became its own unit (module fixtures made on
    both workers)."""
    if not hasattr(config, "workerinput"):
        return
    cost: dict[str, float] = {}
    first: dict[str, int] = {}
    for i, (item, module) in enumerate(zip(items, modules)):
        key = item.nodeid.split("::", 1)[0]  # loadfile's unit
        cost[key] = cost.get(key, 0.0) + _cost(item, module)
        first.setdefault(key, i)
    keys = [item.nodeid.split("::", 1)[0] for item in items]
    order = sorted(range(len(items)), key=lambda i: (-cost[keys[i]], first[keys[i]], i))
    items[:] = [items[i] for i in order]


@pytest.hookimpl(tryfirst=True)
def pytest_fixture_setup(fixturedef, request) -> None:
    """A test that starts the shared Spark session must be marked ``jvm`` (else ``make test-fast`` starts a JVM):
    a fixture asking for ``spark`` at run time (``request.getfixturevalue``) hides it from the marking."""
    item = getattr(request, "_pyfuncitem", None)
    if fixturedef.argname == "spark" and item is not None and item.get_closest_marker("jvm") is None:
        pytest.fail(f"{item.nodeid} starts the Spark session but is not marked jvm. Fix: list it in "
                    "tests/conftest.py _MARK_BY_NAME['jvm'].", pytrace=False)


@pytest.fixture(scope="session")
def spark():
    """The one local Spark session of the test process (with the S3A connector's jars when installed).

    The jars are on the driver's class path (``SPARK_DIST_CLASSPATH``, above), which in local mode is the
    executors' too: ``spark.jars`` would also work, but copies the 185 MB AWS SDK bundle into every session's
    temporary folder (measured).
    """
    from p8utils.spark import get_spark

    conf = {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4", "spark.driver.memory": "3g"}
    session = get_spark("local[2]", app_name="p8utils-tests", conf=conf)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """An S3 endpoint (moto's server, every request recorded) that boto3 in this process uses.

    Sets ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, throw-away credentials and ``AWS_DEFAULT_REGION``
    in ``os.environ`` for the rest of the session (restored at its end). Returns a
    :class:`tests.harness.s3_emulator.S3Emulator`: ``s3.bucket()`` makes a fresh bucket, ``s3.upload(folder,
    "s3://b/p")`` copies a folder, ``s3.mark()`` / ``s3.calls(since=mark)`` count the S3 operations received.
    """
    try:
        import moto.server  # noqa: F401 - the emulator's subprocess needs it
    except ImportError:
        pytest.fail("moto[server] is not installed (the dev extra). Fix: make install")
    from p8utils import storage

    from .harness import aws_emulator, s3_emulator

    emulator = aws_emulator.start(tmp_path_factory.mktemp("s3-emulator"))
    endpoint = s3_emulator.S3Emulator(emulator)
    saved = s3_emulator.set_environ(endpoint.env())
    try:
        yield endpoint
    finally:
        s3_emulator.restore_environ(saved)
        storage._CLIENTS.clear()  # clients made for the emulator's endpoint
        emulator.stop()


@pytest.fixture(scope="session")
def s3_spark(spark, s3):
    """The shared Spark session, its S3A connector (``s3://``, ``s3a://``, ``s3n://``) pointed at the ``s3`` emulator.

    Spark's readers and writers then work on ``s3://`` URIs (``spark.range(3).write.parquet("s3://b/x")``),
    and the Python workers get the emulator's credentials but not its endpoint (``SparkContext.environment``:
    the JVM, hence its Python daemon, started before ``s3`` set them; p8utils passes the driver's endpoint
    to the workers itself, as on a cluster). Fails (does not skip) when the connector's jars
    are missing: ``make install`` extracts them.
    """
    missing = [str(jar) for jar in S3A_JARS if not jar.is_file()]
    if missing:
        pytest.fail(f"the S3A connector's jars are missing ({', '.join(missing)}). Fix: make install")
    jars = str(spark._jvm.System.getProperty("java.class.path")) + (spark.sparkContext.getConf().get("spark.jars")
                                                                     or "")
    if not all(str(jar) in jars for jar in S3A_JARS):
        pytest.fail(f"the Spark session was started without the S3A jars ({jars!r}): another fixture or test made "
                    "it first. Fix: let tests/conftest.py's `spark` fixture create the session.")
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    settings = s3.hadoop_conf()
    saved_conf = {k: hadoop.get(k) for k in settings}
    for key, value in settings.items():
        hadoop.set(key, value)
    # the workers' credentials (on EMR: the instance profile), not the endpoint: p8utils ships the driver's
    env = spark.sparkContext.environment
    workers = {k: v for k, v in s3.env().items() if not k.startswith("AWS_ENDPOINT_URL")}
    saved_env = {k: env.get(k) for k in workers}
    env.update(workers)
    try:
        yield spark
    finally:
        for key, value in saved_conf.items():
            if value is None:
                hadoop.unset(key)
            else:
                hadoop.set(key, value)
        for key, value in saved_env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value


@pytest.fixture(scope="session")
def offline_bundle():
    """MobileNetV2 with offline seeded, BatchNorm-recalibrated weights (seed 0)."""
    from p8utils.models import load_weights

    return load_weights("mobilenet_v2", "offline", seed=0)


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    assert SAMPLE_DIR.is_dir(), "data_sample/ is missing: run `make sample`"
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def real_dir() -> Path:
    if not REAL_DIR.is_dir():
        pytest.skip(f"real Fruits-360 photos not found at {REAL_DIR}")
    return REAL_DIR


@pytest.fixture(scope="session")
def sample_run(spark, sample_dir, tmp_path_factory):
    """One end-to-end pipeline run on data_sample/ with offline weights, shared by tests."""
    from p8utils.pipeline import run

    return shared_once(tmp_path_factory, "sample_run", lambda folder: run(
        str(sample_dir), str(folder / "run"), weights="offline", variance=0.95, spark=spark))


@pytest.fixture(scope="session")
def notebook01_run(tmp_path_factory) -> tuple[Path, Path]:
    """Notebook 01 run once by papermill (data_sample/, offline weights, local[2]; a relative input and a foreign
    cwd), shared by tests/test_notebooks.py and tests/test_livy.py across workers: (executed notebook, run folder).
    Raises papermill's error if a cell fails."""
    import json
    import sys

    import papermill

    def build(folder: Path) -> tuple[Path, Path]:
        spec = folder / "jupyter" / "kernels" / "p8utils-nb01"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "p8utils tests", "language": "python"}))
        run, executed = folder / "run", folder / "01.ipynb"
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("JUPYTER_PATH", str(folder / "jupyter"))
            mp.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
            papermill.execute_notebook(str(ROOT / "notebooks" / "01_local_sample.ipynb"), str(executed),
                                       parameters={"input": "data_sample", "output": str(run), "weights": "offline",
                                                   "master": "local[2]"},
                                       kernel_name="p8utils-nb01", cwd=str(folder), progress_bar=False,
                                       log_output=False)
        return executed, run

    return shared_once(tmp_path_factory, "notebook01", build)
