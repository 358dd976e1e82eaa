"""The Databricks bundle (``databricks.yml`` + ``databricks/resources/``), checked without a workspace.

* The job definition is loaded from the YAML and validated with the bundle's own Python types
  (``databricks-bundles``: ``databricks.bundles.jobs.Job.from_dict`` refuses an unknown field at any depth,
  unlike ``databricks-sdk``'s ``JobSettings.from_dict``, which drops it silently).
* The wheel task is executed locally as the job calls it: its ``package_name``/``entry_point`` resolved through
  the installed distribution's entry points, the parameters with the bundle variables substituted (a
  ``/Volumes/...``-shaped temporary folder for input and output, ``--weights offline``), the function called in a
  fresh Python process with ``sys.argv = [package_name, *parameters]``.
* The path forms Databricks users pass: ``/Volumes/...`` (a local path on the cluster), ``dbfs:/...``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata

import pytest
import yaml

from p8utils import runs, storage

from .conftest import ROOT, image_files

BUNDLE = ROOT / "databricks.yml"
JOB_KEY = "p8utils_run"
VAR_REF = re.compile(r"\$\{var\.([A-Za-z0-9_]+)\}")
#: task types of the Jobs API: the job's task must be a wheel task and nothing else
TASK_TYPES = ("python_wheel_task", "notebook_task", "spark_python_task", "spark_jar_task", "spark_submit_task",
              "pipeline_task", "sql_task", "dbt_task", "run_job_task", "condition_task", "for_each_task")


# ------------------------------------------------------------------------------------------------
# the bundle, as the Databricks CLI reads it
# ------------------------------------------------------------------------------------------------
def load_bundle() -> dict:
    """``databricks.yml`` with its ``include`` globs merged in (resources by type and name)."""
    bundle = yaml.safe_load(BUNDLE.read_text(encoding="utf-8"))
    for pattern in bundle.get("include", []):
        files = sorted(ROOT.glob(pattern))
        assert files, f"include {pattern!r} matches no file"
        for path in files:
            part = yaml.safe_load(path.read_text(encoding="utf-8"))
            assert set(part) <= {"resources", "variables", "targets"}, f"{path}: {sorted(part)}"
            for kind, items in part.get("resources", {}).items():
                for name, value in items.items():
                    value = dict(value, _file=path)
                    bundle.setdefault("resources", {}).setdefault(kind, {})[name] = value
    return bundle


def job_definition(bundle: dict) -> dict:
    """A copy of the job as the Jobs API gets it (without the loader's own ``_file`` key)."""
    return copy.deepcopy({k: v for k, v in bundle["resources"]["jobs"][JOB_KEY].items() if k != "_file"})


def validate_job(job: dict):
    """Validate ``job`` with databricks-bundles' types, then check its single wheel task; return the ``Job``.

    Raises ``ValueError`` on an unknown field (the library's check) or on a task that is not exactly a
    ``python_wheel_task`` (this project's check: the library accepts every task type).
    """
    jobs = pytest.importorskip("databricks.bundles.jobs", reason="databricks-bundles (dev extra, Python >= 3.10)")
    parsed = jobs.Job.from_dict(copy.deepcopy(job))
    if len(parsed.tasks) != 1:
        raise ValueError(f"expected one task, got {len(parsed.tasks)}")
    task = parsed.tasks[0]
    kinds = [kind for kind in TASK_TYPES if getattr(task, kind, None) is not None]
    if kinds != ["python_wheel_task"]:
        raise ValueError(f"task {task.task_key!r} must be a python_wheel_task, got {kinds}")
    return parsed


def substitute(value, variables: dict):
    """Replace ``${var.name}`` as the bundle does (``variables``: name -> value)."""
    if isinstance(value, str):
        return VAR_REF.sub(lambda m: str(variables[m.group(1)]), value)
    if isinstance(value, list):
        return [substitute(v, variables) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, variables) for k, v in value.items()}
    return value


def defaults(bundle: dict) -> dict:
    return {name: spec["default"] for name, spec in bundle["variables"].items()}


@pytest.fixture(scope="module")
def bundle() -> dict:
    return load_bundle()


# ------------------------------------------------------------------------------------------------
# structure and validation (no JVM, no subprocess)
# ------------------------------------------------------------------------------------------------
def test_job_validates_with_the_bundle_types(bundle):
    job = job_definition(bundle)
    parsed = validate_job(job)
    task = parsed.tasks[0].python_wheel_task
    assert (task.package_name, task.entry_point) == ("p8utils", "p8utils")
    assert len(task.parameters) == len(job["tasks"][0]["python_wheel_task"]["parameters"])
    params = job["tasks"][0]["python_wheel_task"]["parameters"]  # as written (the parsed ones are Variable objects)
    assert params[0] == "run"
    for option, var in (("--input", "input"), ("--output", "output"), ("--weights", "weights"), ("--mode", "mode")):
        assert params[params.index(option) + 1] == f"${{var.{var}}}", option
    assert "${var.pca}" in params


@pytest.mark.parametrize("mutation, match", [
    (lambda job: job["tasks"][0].__setitem__("python_wheel_tsk", job["tasks"][0].pop("python_wheel_task")),
     "Unexpected field 'python_wheel_tsk'"),
    (lambda job: job["tasks"][0]["python_wheel_task"].__setitem__("entrypoint", "p8utils"),
     "Unexpected field 'entrypoint'"),
    (lambda job: job["job_clusters"][0]["new_cluster"].__setitem__("spark_verison", "15.4.x-scala2.12"),
     "Unexpected field 'spark_verison'"),
    (lambda job: job["job_clusters"][0]["new_cluster"]["aws_attributes"].__setitem__("instance_profile", "x"),
     "Unexpected field 'instance_profile'"),
    (lambda job: job["tasks"][0].__setitem__("spark_python_task", {"python_file": "p8utils/cli.py"}),
     "must be a python_wheel_task"),
    (lambda job: job["tasks"][0].__setitem__("notebook_task", job["tasks"][0].pop("python_wheel_task") and
                                             {"notebook_path": "notebooks/01_local_sample.ipynb"}),
     "must be a python_wheel_task"),
    (lambda job: job["tasks"][0]["python_wheel_task"].__setitem__("parameters", "run --input x"),
     "Unexpected type"),
], ids=["task-type-misspelled", "entry-point-misspelled", "cluster-field-misspelled", "aws-field-misspelled",
        "second-task-type", "notebook-task", "parameters-not-a-list"])
def test_a_bad_job_definition_is_refused(bundle, mutation, match):
    job = job_definition(bundle)
    mutation(job)
    with pytest.raises(ValueError, match=match):
        validate_job(job)


def test_variables_declared_and_used(bundle):
    declared = set(bundle["variables"])
    text = BUNDLE.read_text(encoding="utf-8") + "".join(
        p.read_text(encoding="utf-8") for pattern in bundle["include"] for p in ROOT.glob(pattern))
    used = set(VAR_REF.findall(text))
    assert used <= declared, f"undeclared: {sorted(used - declared)}"
    assert declared <= used, f"declared, never used: {sorted(declared - used)}"
    for name, spec in bundle["variables"].items():
        assert spec.get("description") and "default" in spec, name


def test_cluster_runtime_region_and_libraries(bundle):
    from p8utils.spark import RECOMMENDED_CONF

    values = defaults(bundle)
    job = job_definition(bundle)
    cluster = substitute(job["job_clusters"][0]["new_cluster"], values)
    # 15.4 LTS: Spark 3.5, Python 3.11 (TensorFlow from the task's libraries)
    assert cluster["spark_version"] == "15.4.x-scala2.12"
    assert re.fullmatch(r"m(5|5d|6i|6id)\.\w+", cluster["node_type_id"]), cluster["node_type_id"]
    assert cluster["aws_attributes"]["instance_profile_arn"] == values["instance_profile_arn"]
    assert cluster["spark_env_vars"]["AWS_DEFAULT_REGION"] == "eu-central-1"
    assert cluster["data_security_mode"] == "SINGLE_USER", "p8utils needs the SparkContext (no shared access mode)"
    for key, value in RECOMMENDED_CONF.items():
        if key != "spark.ui.showConsoleProgress":
            assert str(cluster["spark_conf"][key]) == value, key
    assert job["tasks"][0]["job_cluster_key"] == job["job_clusters"][0]["job_cluster_key"]

    libraries = job["tasks"][0]["libraries"]
    wheel = next(lib["whl"] for lib in libraries if "whl" in lib)
    job_file = bundle["resources"]["jobs"][JOB_KEY]["_file"]
    artifact = bundle["artifacts"]["p8utils_wheel"]
    assert (ROOT / artifact["path"]).resolve() == ROOT and (ROOT / "pyproject.toml").is_file()
    built = (ROOT / artifact["path"] / artifact["files"][0]["source"]).resolve()
    assert (job_file.parent / wheel).resolve() == built, "the task installs the artifact the bundle builds"
    # the EMR kit's set for Spark 3.5 on Python >= 3.10: the same features on both clusters
    emr = ROOT / "bootstrap" / "requirements-emr.txt"
    pins = dict(line.split("#")[0].strip().split("==") for line in emr.read_text().splitlines()
                if "==" in line.split("#")[0])
    pypi = dict(lib["pypi"]["package"].split("==") for lib in libraries if "pypi" in lib)
    for name, version in pypi.items():
        assert pins.get(name) == version, f"{name}: pin it as {emr.name} does ({pins.get(name)})"
    assert {"numpy", "tensorflow-cpu", "keras", "boto3"} <= set(pypi), "what the runtime lacks or has too old"


@pytest.mark.parametrize("pca, expected", [("--variance=0.95", {"variance": 0.95, "k": None}),
                                           ("--k=50", {"k": 50, "variance": None})])
def test_task_parameters_parse_as_the_cli_reads_them(bundle, pca, expected):
    from p8utils.cli import build_parser

    values = dict(defaults(bundle), pca=pca)
    task = job_definition(bundle)["tasks"][0]["python_wheel_task"]
    args = vars(build_parser().parse_args(substitute(task["parameters"], values)))
    assert args["command"] == "run"
    for name in ("input", "output", "weights", "mode"):
        assert args[name] == values[name], name
    assert {name: args[name] for name in expected} == expected


def test_wheel_entry_point_is_the_cli():
    """``package_name``/``entry_point`` resolve in the installed distribution, as on the cluster."""
    eps = [ep for ep in metadata.distribution("p8utils").entry_points if ep.name == "p8utils"]
    assert len(eps) == 1 and eps[0].group == "console_scripts"
    assert eps[0].value.startswith("p8utils.cli:") and callable(eps[0].load())


def test_path_forms_as_p8utils_parses_them():
    """What p8utils makes of the three forms today (no JVM): ``/Volumes`` is local, ``dbfs:`` a Hadoop URI."""
    vol = "/Volumes/main/fruits/raw/fruits-360"
    assert storage.is_local(vol) and not storage.is_s3(vol)
    assert runs.layout(vol + "/").root == vol
    assert storage.is_s3("s3://bucket/fruits/")
    for uri in ("dbfs:/FileStore/fruits", "dbfs:/Volumes/main/fruits/raw"):
        assert not storage.is_local(uri) and not storage.is_s3(uri)
        assert runs.layout(uri + "/").root == uri  # left to the JVM's Hadoop FileSystem (exists on Databricks only)
        assert storage.spark_path(uri) == uri


# ------------------------------------------------------------------------------------------------
# the wheel task, executed as the job calls it
# ------------------------------------------------------------------------------------------------
#: what a python_wheel_task does with the wheel: find the entry point in the package's metadata, set sys.argv,
#: call the function. Its return value is not an exit status: only an exception (SystemExit != 0 included)
#: fails the task.
WHEEL_TASK = """
import sys
from importlib import metadata
package, entry_point, params = sys.argv[1], sys.argv[2], sys.argv[3:]
eps = [ep for ep in metadata.distribution(package).entry_points if ep.name == entry_point]
assert len(eps) == 1, eps
sys.argv = [package, *params]
returned = eps[0].load()()
print(f"wheel task: the entry point returned {returned!r}", file=sys.stderr)
"""


def run_wheel_task(bundle: dict, variables: dict, extra: tuple = (), timeout: int = 900):
    task = job_definition(bundle)["tasks"][0]["python_wheel_task"]
    params = substitute(task["parameters"], dict(defaults(bundle), **variables)) + list(extra)
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", WHEEL_TASK, task["package_name"], task["entry_point"], *params],
                          capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)
    return params, proc


@pytest.mark.jvm
@pytest.mark.slow
def test_wheel_task_runs_on_a_volume_path(bundle, tmp_path, sample_dir):
    """``/Volumes/<catalog>/<schema>/<volume>/...`` is a local path on the cluster: the run protocol works on it."""
    volumes = tmp_path / "Volumes" / "main" / "fruits"
    source = volumes / "raw" / "fruits-360"
    shutil.copytree(sample_dir, source)
    out = volumes / "runs" / "2026-12-02"
    params, proc = run_wheel_task(bundle, {"input": str(source), "output": str(out), "weights": "offline"},
                                  extra=("--no-explorer",))
    assert params[:5] == ["run", "--input", str(source), "--output", str(out)]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"the entry point returned (0|None)$", proc.stderr, re.M), proc.stderr[-2000:]
    assert f"manifest -> {out}/manifest.json" in proc.stdout
    m = json.loads((out / "manifest.json").read_text())
    n = len(image_files(sample_dir))
    assert n == 80
    assert m["counts"]["total"] == m["counts"]["ok"] == n and m["counts"]["failed"] == 0
    assert m["parameters"]["input"].endswith("Volumes/main/fruits/raw/fruits-360")
    assert m["parameters"]["variance"] == 0.95 and m["parameters"]["mode"] == "error"
    assert (out / "features").is_dir() and (out / "pca").is_dir()


@pytest.mark.jvm
@pytest.mark.slow
def test_a_failed_run_fails_the_wheel_task(bundle, tmp_path):
    _, proc = run_wheel_task(bundle, {"input": str(tmp_path / "Volumes" / "missing"),
                                      "output": str(tmp_path / "out"), "weights": "offline"},
                             extra=("--no-explorer",), timeout=300)
    assert "does not exist" in proc.stderr
    assert proc.returncode == 2


@pytest.mark.jvm
@pytest.mark.slow
def test_dbfs_input_off_databricks_is_refused_with_the_fix(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "p8utils", "run", "--input", "dbfs:/FileStore/fruits-360/",
                           "--output", str(tmp_path / "out"), "--weights", "offline", "--no-explorer"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "/Volumes/" in proc.stderr and "/dbfs/" in proc.stderr
    assert not (tmp_path / "out").exists()
