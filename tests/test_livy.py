"""Notebook 02 for real: sparkmagic's PySpark kernel, driven by papermill, against a Livy-protocol test server.

Apache Livy cannot be installed here, so ``tests/harness/livy_test_server.py`` plays it: one subprocess per Livy
session with a real local ``SparkSession`` (the project venv's Python, ``local[2]``). papermill runs
``notebooks/02_emr_full_run.ipynb`` unchanged with ``-k pysparkkernel`` (installed by ``make test``: the
``sparkmagic`` extra + the kernelspec), exactly as on the EMR primary node, on data_sample/ with offline
weights; notebook 01 runs on the same input with the same parameters in a plain Python kernel (the run
tests/test_notebooks.py checks: ``notebook01_run`` in tests/conftest.py). The two
runs must write the same results, 02's ``%matplot plt`` cells must give ``image/png`` outputs, and a
failing cell must fail the papermill run. See tests/sparkmagic/NOTES.md.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from .conftest import ROOT

nbformat = pytest.importorskip("nbformat")
papermill = pytest.importorskip("papermill")
sparkmagic = pytest.importorskip("sparkmagic", reason="the `sparkmagic` extra is not installed (make test does it)")

from .harness.livy_test_server import start  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.livy]

NB01 = ROOT / "notebooks" / "01_local_sample.ipynb"
NB02 = ROOT / "notebooks" / "02_emr_full_run.ipynb"
BIN = Path(sys.executable).parent
SAMPLE_IMAGES = 80
PNG = b"\x89PNG\r\n\x1a\n"
FIGURES = ["pc1_pc2.png", "sample_images.png", "variance.png"]
VARIANCE = 0.95
RUN_TIMEOUT = 600  # seconds for the papermill runs (together ~1.5 min here, on 2 busy cores)
# Every process these tests start carries this variable (papermill, kernels, Livy session workers, their
# JVMs and Python daemons), so the teardown finds them even if one was orphaned.
TOKEN_VAR = "P8UTILS_LIVY_TEST"


# ---- helpers -------------------------------------------------------------------------------------------


def _parameters(nb_path: Path) -> dict:
    """The notebook's parameters (papermill reads the ``parameters`` cell)."""
    return papermill.inspect_notebook(str(nb_path))


def _pick(params: dict, *names: str, notebook: Path = NB02) -> str:
    """The first of ``names`` that the notebook declares: a clear failure if its parameters are renamed."""
    for name in names:
        if name in params:
            return name
    raise AssertionError(f"{notebook.name} declares none of {names}; its parameters: {list(params)}")


def _cli_params(values: dict) -> list:
    """``-p name value`` pairs; papermill's CLI parses the value as YAML (numbers, None, strings)."""
    args = []
    for name, value in values.items():
        args += ["-p", name, "None" if value is None else str(value)]
    return args


def _token_processes(token: str) -> list:
    """PIDs of live processes whose environment holds ``TOKEN_VAR=token`` (Linux /proc)."""
    needle = f"{TOKEN_VAR}={token}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ and state != "Z":
            found.append(int(entry))
    return found


def _start_papermill(args: list, env: dict, log: Path) -> tuple:
    """Start the papermill CLI in its own process group, output to ``log``; return (process, start time)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / "papermill"), "--no-progress-bar", *map(str, args)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, time.monotonic()


def _lost_a_port(log: Path) -> bool:
    """Tell whether a papermill run failed because its kernel could not bind a port that it had been given."""
    text = log.read_text(errors="replace")
    return "Address already in use" in text and "Kernel died before replying to kernel_info" in text


def _finish_all(started: dict) -> dict:
    """Wait for papermill runs; return {name: (exit code, seconds)}. Kill a run's process group after RUN_TIMEOUT."""
    deadline = time.monotonic() + RUN_TIMEOUT
    results = {}
    while len(results) < len(started):
        for name, (proc, t0) in started.items():
            if name not in results and proc.poll() is not None:
                results[name] = (proc.returncode, time.monotonic() - t0)
        if time.monotonic() > deadline:
            for name, (proc, _) in started.items():
                if name not in results:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            raise AssertionError(f"papermill runs did not finish in {RUN_TIMEOUT} s: {set(started) - set(results)}")
        time.sleep(0.2)
    return {name: results[name] for name in started}


def _tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _outputs(nb) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def _text(nb) -> str:
    """All text the cells showed: streams, text/plain results and error tracebacks."""
    parts = []
    for out in _outputs(nb):
        parts.append(out.get("text", ""))
        parts.append(out.get("data", {}).get("text/plain", ""))
        if out.output_type == "error":
            parts += [out.ename, out.evalue, *out.traceback]
    return "\n".join(parts)


def _assert_png(path: Path) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == PNG, path
    with Image.open(path) as img:
        img.load()
        assert img.size[0] >= 400 and img.size[1] >= 250, (path.name, img.size)
        assert np.asarray(img.convert("L"), dtype=np.float64).std() > 5, f"{path.name} looks blank"


def _sorted_table(folder: Path):
    import pyarrow.parquet as pq

    return pq.read_table(folder).to_pandas().sort_values("path").reset_index(drop=True)


def _wait_no_sessions(server, timeout: float = 30.0) -> list:
    """Wait until the server has no session left (sparkmagic deletes its session when the kernel exits)."""
    deadline = time.monotonic() + timeout
    while server.sessions() and time.monotonic() < deadline:
        time.sleep(0.2)
    return [(s.id, s.state) for s in server.sessions()]


# ---- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def token():
    """Marks every process started here; teardown: stop them by PID and assert none was left."""
    value = f"{os.getpid()}-{uuid.uuid4().hex}"
    yield value
    deadline = time.monotonic() + 15  # a JVM exits shortly after its Python parent (stdin EOF)
    while _token_processes(value) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _token_processes(value)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert not left, f"processes left running by tests/test_livy.py (now killed): {left}"


@pytest.fixture(scope="module")
def livy(token, tmp_path_factory):
    """The Livy test server; each session = a worker on this venv's Python with a local[2] SparkSession."""
    base = tmp_path_factory.mktemp("livy")
    (base / "cwd").mkdir()
    server = start(
        "127.0.0.1", 0,
        python=sys.executable,
        master="local[2]",
        default_conf={"spark.ui.enabled": "false"},
        env={TOKEN_VAR: token},
        cwd=str(base / "cwd"),  # spark-warehouse/, derby.log ... of the sessions
        log_dir=str(base / "logs"),
    )
    try:
        yield server
    finally:
        server.stop()  # stops every session by PID: worker, JVM, pyspark daemons


def _sparkmagic_env(livy, token: str, base: Path) -> dict:
    """Environment for one ``papermill -k pysparkkernel`` run: sparkmagic config pointing at the test server,
    Jupyter/IPython/matplotlib dirs and HOME under ``base`` (nothing written under ~)."""
    env = dict(os.environ, **livy.sparkmagic_env(str(base)))
    (base / "home").mkdir()
    env.update({TOKEN_VAR: token, "HOME": str(base / "home")})
    env.pop("JUPYTER_PATH", None)
    installed = BIN.parent / "share" / "jupyter" / "kernels" / "pysparkkernel" / "kernel.json"
    if not installed.exists():  # `make test` installs it (Makefile: $(SPARK_KERNEL)); plain pytest may not have
        source = Path(sparkmagic.__file__).parent / "kernels" / "pysparkkernel"
        shutil.copytree(source, Path(env["JUPYTER_DATA_DIR"]) / "kernels" / "pysparkkernel")
    return env


@pytest.fixture(scope="module")
def nb02_params():
    """02's own parameter names, read from its parameters cell."""
    params = _parameters(NB02)
    return {
        "input": _pick(params, "input_uri", "input_path", "input"),
        "output": _pick(params, "output_uri", "output_path", "output"),
        "weights": _pick(params, "weights"),
        "variance": _pick(params, "variance"),
        "k": _pick(params, "k"),
    }


@pytest.fixture(scope="module")
def runs(request, livy, token, nb02_params, tmp_path_factory):
    """Two papermill runs of 02 at once and notebook 01, on data_sample/ with offline weights and the same k/variance.

    * 02 with ``-k pysparkkernel`` → Livy test server (a local[2] session per Livy session);
    * 02 again with an input folder that does not exist: it must fail;
    * 01 in a Python kernel (its own local[2] session): the run tests/test_notebooks.py checks too
      (``notebook01_run``, made once per session), made or awaited while the 02 runs go on.

    They overlap because most of a run is waiting (kernel, JVM and session start, sparkmagic's polling).
    """
    base = tmp_path_factory.mktemp("runs")
    sample = ROOT / "data_sample"
    assert sample.is_dir(), "data_sample/ is missing: run `make sample`"
    p = nb02_params
    declared01 = _parameters(NB01)
    for names in (("input", "input_path"), ("output", "output_path"), ("weights",), ("k",), ("variance",),
                  ("master",)):
        _pick(declared01, *names, notebook=NB01)  # 01 still takes the parameters its shared run is given
    params02 = {p["input"]: str(sample), p["output"]: base / "run02", p["weights"]: "offline", p["k"]: None,
                p["variance"]: VARIANCE}
    params_fail = dict(params02, **{p["input"]: base / "no-such-input", p["output"]: base / "run-fail"})
    jobs = {
        "02": (["-k", "pysparkkernel", NB02], params02),
        "02-fail": (["-k", "pysparkkernel", NB02], params_fail),
    }
    started, commands = {}, {}
    for name, (head, params) in jobs.items():
        (base / f"sm-{name}").mkdir()
        env = _sparkmagic_env(livy, token, base / f"sm-{name}")
        commands[name] = ([*head[:-1], "--cwd", base, head[-1], base / f"{name}.ipynb", *_cli_params(params)], env)
        started[name] = _start_papermill(*commands[name], base / f"{name}.log")
    start = time.monotonic()
    try:
        nb01, run01 = request.getfixturevalue("notebook01_run")
        (base / "01.ipynb").symlink_to(nb01)
        (base / "run01").symlink_to(run01, target_is_directory=True)
        result01 = (0, time.monotonic() - start)
    except Exception as exc:  # noqa: BLE001 - 01's failure fails the test that compares with it, not the others
        (base / "01.log").write_text(f"notebook01_run (tests/conftest.py) failed: {exc!r}")
        result01 = (1, time.monotonic() - start)
    results = {"01": result01, **_finish_all(started)}
    for name in [n for n in jobs if results[n][0] != 0 and _lost_a_port(base / f"{n}.log")]:
        # jupyter_client picks a kernel's ports before the kernel binds them: a process starting at the same time
        # can take one (ZMQ "Address already in use", the kernel dies before it answers). Not the notebook's doing:
        # that run once more, its first log kept beside
        (base / f"{name}.log").rename(base / f"{name}.lost-port.log")
        results.update(_finish_all({name: _start_papermill(*commands[name], base / f"{name}.log")}))
    print("\n[test_livy] papermill wall times (concurrent): "
          + ", ".join(f"{name} {secs:.1f} s (exit {code})" for name, (code, secs) in results.items()))
    return {"base": base, "results": results, "home": base / "sm-02" / "home", "livy_logs": livy.log_dir}


def _run_ok(runs, name: str):
    code, _ = runs["results"][name]
    log = runs["base"] / f"{name}.log"
    assert code == 0, f"notebook {name} failed:\n{_tail(log)}\nLivy session logs: {runs['livy_logs']}"
    return nbformat.read(str(runs["base"] / f"{name}.ipynb"), as_version=4)


# ---- tests ---------------------------------------------------------------------------------------------


def test_02_on_pysparkkernel_writes_what_01_writes(runs):
    _run_ok(runs, "01")
    _run_ok(runs, "02")
    run1, run2 = runs["base"] / "run01", runs["base"] / "run02"
    m1, m2 = (json.loads((r / "manifest.json").read_text()) for r in (run1, run2))
    assert m1["counts"]["total"] == m1["counts"]["ok"] == SAMPLE_IMAGES
    assert m2["counts"] == m1["counts"]
    assert m1["parameters"]["variance"] == m2["parameters"]["variance"] == VARIANCE  # 01's default, 02's given
    assert m2["pca"]["k"] == m1["pca"]["k"]
    # ratios (they sum to 1): rtol 1e-9; atol for the ~1e-17 round-off beyond the rank (80 images, 1280 features)
    np.testing.assert_allclose(m2["pca"]["explained_variance"], m1["pca"]["explained_variance"], rtol=1e-9,
                               atol=1e-12)

    f1, f2 = _sorted_table(run1 / "features"), _sorted_table(run2 / "features")
    assert f2["path"].tolist() == f1["path"].tolist()
    assert f2["label"].tolist() == f1["label"].tolist()
    assert f2["error"].tolist() == f1["error"].tolist()
    np.testing.assert_allclose(np.stack(f2["features"]), np.stack(f1["features"]), rtol=1e-5, atol=1e-7)

    s1, s2 = _sorted_table(run1 / "pca"), _sorted_table(run2 / "pca")
    assert s2["path"].tolist() == s1["path"].tolist()
    a, b = np.stack(s1["pca_features"]), np.stack(s2["pca_features"])
    assert a.shape == b.shape == (SAMPLE_IMAGES, m1["pca"]["k"])
    signs = np.where(np.sum(a * b, axis=0) < 0, -1.0, 1.0)  # a component's sign is arbitrary
    np.testing.assert_allclose(b * signs, a, rtol=1e-6, atol=1e-6 * np.abs(a).max())


def test_02_saves_figures_and_shows_them_with_matplot(runs):
    nb = _run_ok(runs, "02")
    figures = runs["base"] / "run02" / "figures"
    assert sorted(p.name for p in figures.glob("*.png")) == FIGURES
    assert sorted(p.name for p in (runs["base"] / "run01" / "figures").glob("*.png")) == FIGURES, "what 01 saves"
    for name in FIGURES:
        _assert_png(figures / name)
    # notebook 03's analysis, run on the cluster's session at the end of 02, written next to the run
    analysis = runs["base"] / "run02" / "analysis"
    drawn = sorted(p.name for p in (analysis / "figures").glob("*.png"))
    assert {"scree_cumulative.png", "pc1_pc2.png", "pc1_pc3.png"} <= set(drawn), drawn
    for name in drawn:
        _assert_png(analysis / "figures" / name)
    assert (analysis / "variance_table.csv").stat().st_size > 0
    errors = [o for o in _outputs(nb) if o.output_type == "error"]
    assert not errors, errors
    matplot = [c for c in nb.cells if c.cell_type == "code" and c.source.strip() == "%matplot plt"]
    assert len(matplot) >= len(FIGURES), "every saved figure is also shown with %matplot plt"
    for cell in matplot:  # each %matplot plt cell shows the figure made in the Livy session
        images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
        assert len(images) == 1, cell.outputs
        assert base64.b64decode(images[0]["data"]["image/png"])[:8] == PNG
    text = _text(nb)
    assert f"{SAMPLE_IMAGES} total, {SAMPLE_IMAGES} ok, 0 failed" in text
    assert "on local[2]" in text  # the cells ran on the Livy session's Spark (the test server's master)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and 'weights = "offline"' in injected[0].source


def test_a_failing_cell_fails_the_papermill_run(runs):
    code, _ = runs["results"]["02-fail"]
    base = runs["base"]
    log = (base / "02-fail.log").read_text(errors="replace")
    assert code != 0, f"papermill exited 0 although a cell failed:\n{log[-3000:]}"
    assert "PapermillExecutionError" in log, log[-3000:]
    nb = nbformat.read(str(base / "02-fail.ipynb"), as_version=4)  # papermill still writes the executed notebook
    errors = [o for o in _outputs(nb) if o.output_type == "error"]
    assert len(errors) == 1 and errors[0].ename == "SparkStatementException", errors
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    failed_at = next(i for i, c in enumerate(code_cells) if any(o.output_type == "error" for o in c.outputs))
    assert all(c.execution_count is None and not c.outputs for c in code_cells[failed_at + 1:]), "ran on after"
    # the Livy session's exception and message reach the notebook
    missing = str(base / "no-such-input")
    assert missing in errors[0].evalue and "does not exist" in errors[0].evalue, errors[0].evalue
    assert "Fix:" in errors[0].evalue, "p8utils' ParameterError (with the fix), not Spark's PATH_NOT_FOUND"
    assert not (base / "run-fail").exists(), "nothing may be written by a run that failed on its input"


def test_no_session_or_file_left_behind(runs, livy):
    # cleanup_all_sessions_on_exit / shutdown_session_on_spark_statement_errors: sessions (and JVMs) are gone
    assert _wait_no_sessions(livy) == [], "sparkmagic left a Livy session behind"
    assert list(runs["home"].iterdir()) == [], "sparkmagic/Jupyter wrote under HOME"


def test_the_runs_used_the_kits_headless_sparkmagic_config(runs):
    """The config these runs used is the one bootstrap/run_notebook_on_master.sh writes on EMR (one generator:
    bootstrap/sparkmagic_config.py), so what passes here is what runs there."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("p8_sparkmagic_config", ROOT / "bootstrap" / "sparkmagic_config.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    for name in ("02", "02-fail"):
        config = json.loads((runs["base"] / f"sm-{name}" / "sparkmagic" / "config.json").read_text())
        assert {key: config.get(key) for key in generator.HEADLESS} == generator.HEADLESS
