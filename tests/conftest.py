"""Shared fixtures: one local Spark session and one offline model for the whole run.

Also sets two markers that ``make test-fast`` (``-m "not jvm and not heavy and not slow"``) leaves out:
``jvm`` on every test that needs a JVM, ``heavy`` on tests that need none but take seconds of CPU each
(a TensorFlow model, papermill or TensorFlow in a subprocess). A test gets them through the fixtures of
:data:`_MARK_BY_FIXTURE` (used directly or through other fixtures), by name in :data:`_MARK_BY_NAME`
(what the fixtures do not reveal), or from its own module (``@pytest.mark.heavy``).
"""

from __future__ import annotations

import os
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
        "test_bench.py::test_bench_runs_on_a_tiny_input",
        "test_bench.py::test_cost_curve_runs_on_a_tiny_input",
        "test_bootstrap.py::test_spark_submit_runs_the_pipeline_through_the_bootstrap_launcher",
        "test_bootstrap.py::test_run_notebook_on_master_headless_against_a_livy_endpoint",
        "test_cli.py::test_cli_run_end_to_end",
        "test_cli.py::test_cli_run_and_project_end_to_end_on_s3",
        "test_cluster.py",
        "test_livy.py",
        "test_notebooks.py::test_01_runs_headless_on_the_sample",
        "test_notebooks.py::test_03_analyses_the_features_of_01",
        "test_notebooks.py::test_02_code_cells_give_the_same_outputs_as_01",
        "test_reliability.py::test_task_retried_after_python_worker_dies",
    "test_reliability.py::test_files_deleted_during_featurization",
    "test_reliability.py::test_a_file_list_of_s3_objects_is_read_without_any_listing",
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


@pytest.hookimpl(tryfirst=True)  # before -m deselects: the markers must be there by then
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Add the ``jvm`` and ``heavy`` markers (see :data:`_MARK_BY_FIXTURE`, :data:`_MARK_BY_NAME`)."""
    here = Path(__file__).resolve().parent
    listed = {marker: _listed(marker) for marker in _MARK_BY_NAME}
    stale = set()
    for item in items:
        path = item.path.resolve()
        module = path.relative_to(here).as_posix() if here in path.parents else ""
        name = getattr(item, "originalname", item.name)
        for marker, fixtures in _MARK_BY_FIXTURE.items():
            names = listed[marker].get(module, set())
            stale.update((marker, module, n) for n in names if n and not hasattr(getattr(item, "module", None), n))
            if any(f in item.fixturenames for f in fixtures) or "" in names or name in names:
                item.add_marker(getattr(pytest.mark, marker))
    for marker, module, name in sorted(stale):
        warnings.warn(f"tests/conftest.py _MARK_BY_NAME[{marker!r}] lists {module}::{name}, which {module} does not "
                      "define: the test was renamed or removed. Fix: update the list.", pytest.PytestConfigWarning,
                      stacklevel=1)


@pytest.fixture(scope="session")
def spark():
    """The one local Spark session of the test process (with the S3A connector's jars when installed).

    The jars go on the driver's class path, which in local mode is the executors' too: ``spark.jars`` would
    also work, but copies the 185 MB AWS SDK bundle into every session's temporary folder (measured).
    """
    from p8utils.spark import get_spark

    conf = {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4", "spark.driver.memory": "3g"}
    if all(jar.is_file() for jar in S3A_JARS):
        conf["spark.driver.extraClassPath"] = os.pathsep.join(str(jar) for jar in S3A_JARS)
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
    conf = spark.sparkContext.getConf()
    jars = (conf.get("spark.driver.extraClassPath", "") or "") + (conf.get("spark.jars", "") or "")
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

    out = tmp_path_factory.mktemp("sample_run") / "run"
    return run(str(sample_dir), str(out), weights="offline", variance=0.95, spark=spark)
