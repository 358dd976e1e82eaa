"""The notebooks: committed clean and thin, parameters papermill can read, and they run headless.

The slow tests execute 01 and 03 with papermill on data_sample/ (offline weights, local[2]). 02 runs for real
(sparkmagic's kernel against a Livy test server) in tests/test_livy.py, where its outputs are compared with 01's
(the same 01 run as here: ``notebook01_run`` in tests/conftest.py).
"""

from __future__ import annotations

import ast
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .conftest import ROOT

nbformat = pytest.importorskip("nbformat")
papermill = pytest.importorskip("papermill")

NB_DIR = ROOT / "notebooks"
NB01, NB02, NB03 = (NB_DIR / f"{n}.ipynb" for n in ("01_local_sample", "02_emr_full_run", "03_pca_analysis"))
ALL = (NB01, NB02, NB03)
PNG = b"\x89PNG\r\n\x1a\n"
SAMPLE_IMAGES, SAMPLE_CLASSES = 80, 8
LIVY_SESSION_FIELDS = {"kind", "proxyUser", "jars", "pyFiles", "files", "driverMemory", "driverCores",
                       "executorMemory", "executorCores", "numExecutors", "archives", "queue", "name", "conf",
                       "heartbeatTimeoutInSecond", "ttl"}


def _read(path: Path):
    return nbformat.read(str(path), as_version=4)


def _code(cell) -> str:
    return cell.source if isinstance(cell.source, str) else "".join(cell.source)


def _python_only(source: str) -> str:
    """Cell source without IPython/sparkmagic magics (``%…``, ``%%…`` cells, ``!…``)."""
    if source.lstrip().startswith("%%"):
        return ""
    return "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in source.splitlines())


def _parameters_cell(nb):
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell must be tagged 'parameters'"
    return cells[0]


# ---- static checks (fast) ------------------------------------------------------------------------------


def test_the_three_notebooks_exist_and_are_valid():
    found = sorted(p.name for p in NB_DIR.glob("*.ipynb"))
    assert found == sorted(p.name for p in ALL)
    for path in ALL:
        nbformat.validate(_read(path))


@pytest.mark.parametrize("path", sorted(NB_DIR.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebooks_have_no_outputs(path):
    nb = _read(path)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs: run `make strip`"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count: `make strip`"
    assert "widgets" not in nb.metadata and "papermill" not in nb.metadata, "executed-notebook metadata"


def test_nbstripout_would_not_change_them():
    exe = Path(sys.executable).parent / "nbstripout"
    if not exe.exists():
        pytest.skip("nbstripout not installed")
    proc = subprocess.run([str(exe), "--verify", *map(str, sorted(NB_DIR.glob("*.ipynb")))],
                          capture_output=True, text=True)
    assert proc.returncode == 0, "run `make strip`:\n" + proc.stdout + proc.stderr


@pytest.mark.parametrize("path", sorted(NB_DIR.glob("*.ipynb")), ids=lambda p: p.name)
def test_no_function_or_class_definitions_in_code_cells(path):
    """Notebooks stay thin: logic lives in p8utils."""
    for i, cell in enumerate(_read(path).cells):
        if cell.cell_type != "code":
            continue
        tree = ast.parse(_python_only(_code(cell)))
        bad = [type(n).__name__ for n in ast.walk(tree)
               if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))]
        assert not bad, f"{path.name} cell {i} defines {bad}: move it to p8utils"


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_parameters_cell_is_commented_literals(path):
    """Each line ``name[: type] = literal  # help`` (DESIGN.md), and papermill reads them all."""
    cell = _parameters_cell(_read(path))
    names = []
    for line in _code(cell).splitlines():
        if not line.strip():
            continue
        stmt = ast.parse(line).body[0]
        assert isinstance(stmt, (ast.Assign, ast.AnnAssign)), line
        target = stmt.targets[0] if isinstance(stmt, ast.Assign) else stmt.target
        ast.literal_eval(stmt.value)  # a literal, nothing computed
        code, _, comment = line.partition("  # ")
        assert comment.strip(), f"no help comment: {line}"
        assert "=" not in comment, f"papermill skips a parameter whose comment has '=': {line}"
        names.append(target.id)
    params = papermill.inspect_notebook(str(path))
    assert list(params) == names
    assert all(p["help"] for p in params.values())
    assert all(p["inferred_type_name"] != "None" for p in params.values())


#: Where a notebook's default differs from RunConfig's, on purpose.
_NOTEBOOK_DEFAULTS = {
    NB01: {"input": "data_sample", "output": "", "weights": "auto", "master": "local[2]"},  # the sample demo
    NB02: {"input": "s3://YOUR-BUCKET/fruits-360/Training/", "output": "s3://YOUR-BUCKET/p8-runs/full-run/"},
}
_ANNOTATIONS = {"str": "str", "int": "int", "float": "float", "list": "List[str]"}


@pytest.mark.parametrize("path", [NB01, NB02], ids=lambda p: p.name)
def test_run_parameters_of_the_notebooks_are_runconfigs(path):
    """Run parameters in a notebook: RunConfig's names, types, help text and defaults (one declaration)."""
    from p8utils.config import REQUIRED, RunConfig, parameters

    declared = {p.name: p for p in parameters()}
    cell = _code(_parameters_cell(_read(path)))
    values = {}
    for line in cell.splitlines():
        stmt = ast.parse(line).body[0]
        name, value = stmt.target.id, ast.literal_eval(stmt.value)
        if name not in declared:
            continue
        p = declared[name]
        comment = line.partition("  # ")[2]
        assert comment == p.help or comment.startswith(p.help + "; "), f"{path.name}: {name}'s help is not RunConfig's"
        annotation = ast.literal_eval(stmt.annotation) if isinstance(stmt.annotation, ast.Constant) else \
            stmt.annotation.id
        want = _ANNOTATIONS[p.kind]
        assert annotation in (want, f"Optional[{want}]"), (name, annotation)
        expected = _NOTEBOOK_DEFAULTS[path].get(name, None if p.default is REQUIRED else p.default)
        assert value == expected, f"{path.name}: {name} = {value!r}, RunConfig says {p.default!r}"
        values[name] = value
    assert {"input", "output", "model", "weights", "engine", "batch_size", "k", "variance", "mode"} <= set(values)
    if path == NB01:
        values["output"] = "runs/x"
    RunConfig.from_mapping(values)  # the notebook's own defaults make a valid config


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_help_notebook_lists_every_parameter_with_its_comment(path):
    exe = Path(sys.executable).parent / "papermill"
    proc = subprocess.run([str(exe), "--help-notebook", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    flat = " ".join(proc.stdout.split())
    for name, p in papermill.inspect_notebook(str(path)).items():
        assert f"{name}: {p['inferred_type_name']} (default {p['default']})" in flat
        assert " ".join(p["help"].split()) in flat


def test_kernelspecs():
    for path in (NB01, NB03):
        meta = _read(path).metadata
        assert meta.kernelspec.name == "python3" and meta.kernelspec.language == "python"
    meta = _read(NB02).metadata
    assert meta.kernelspec.name == "pysparkkernel"
    # papermill picks the parameter translator by kernel name, then by language: both say Python.
    assert meta.kernelspec.language == "python" and meta.language_info.name == "python"


def test_02_is_a_sparkmagic_notebook():
    nb = _read(NB02)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    first = _code(nb.cells[0])
    assert nb.cells[0].cell_type == "code" and first.startswith("%%configure -f\n"), "%%configure -f must be first"
    body = json.loads(first.split("\n", 1)[1])
    assert set(body) <= LIVY_SESSION_FIELDS, set(body) - LIVY_SESSION_FIELDS
    assert {"driverMemory", "executorMemory", "executorCores", "numExecutors", "conf"} <= set(body)
    for key in ("spark.sql.execution.arrow.maxRecordsPerBatch", "spark.python.worker.reuse",
                "spark.executor.memoryOverhead"):
        assert key in body["conf"]
    assert all(isinstance(v, str) for v in body["conf"].values())
    sources = [_code(c) for c in cells]
    params_at = cells.index(_parameters_cell(nb))
    assert sources.index("%%info") < params_at, "%%info before the parameters"
    assert sum(s.strip() == "%matplot plt" for s in sources) == 4  # grid, variance, PC1-PC2, the cluster analysis
    code = "\n".join(sources)
    assert "get_spark" not in code and "SparkSession" not in code, "02 uses Livy's session, never its own"
    assert "import matplotlib.pyplot as plt" in code  # %matplot plt looks the name up in the session


@pytest.mark.parametrize("how", ["api", "cli"])
def test_02_parameters_are_injected_as_python_for_pysparkkernel(tmp_path, how):
    out = tmp_path / "02.ipynb"
    if how == "api":
        papermill.execute_notebook(str(NB02), str(out), kernel_name="pysparkkernel", prepare_only=True,
                                   parameters={"input": "s3://b/in/", "k": 20, "variance": None})
    else:
        exe = Path(sys.executable).parent / "papermill"
        proc = subprocess.run([str(exe), "--prepare-only", "-k", "pysparkkernel", str(NB02), str(out),
                               "-p", "input", "s3://b/in/", "-p", "k", "20", "-p", "variance", "None"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    nb = _read(out)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    at = next(i for i, t in enumerate(tags) if "injected-parameters" in t)
    assert "parameters" in tags[at - 1], "injected right after the parameters cell"
    assert _code(nb.cells[0]).startswith("%%configure -f"), "the configure cell stays first"
    injected = _code(nb.cells[at])
    assert 'input = "s3://b/in/"' in injected and "k = 20" in injected and "variance = None" in injected
    ast.parse(injected)  # Python, as the Livy session will run it


# ---- execution (slow) ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """A kernelspec running this interpreter, found through JUPYTER_PATH (no ~ pollution, no other python3)."""
    share = tmp_path_factory.mktemp("jupyter")
    spec = share / "kernels" / "p8utils-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "p8utils tests", "language": "python"}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(share))
        mp.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        yield "p8utils-test"


def _execute(src, out: Path, parameters: dict, kernel_name: str, cwd: Path) -> object:
    papermill.execute_notebook(str(src), str(out), parameters=parameters, kernel_name=kernel_name,
                               cwd=str(cwd), progress_bar=False, log_output=False)
    return _read(out)


def _outputs(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def _stdout(nb) -> str:
    return "".join(o.get("text", "") for o in _outputs(nb) if o.output_type == "stream" and o.name == "stdout")


def _assert_no_error(nb):
    errors = [o for o in _outputs(nb) if o.output_type == "error"]
    assert not errors, errors


def _assert_png(path: Path, min_size=(400, 250), max_size=(4000, 3000)):
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == PNG, path
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        w, h = img.size
        pixels = np.asarray(img.convert("L"), dtype=np.float64)
    assert min_size[0] <= w <= max_size[0] and min_size[1] <= h <= max_size[1], (path.name, w, h)
    assert pixels.std() > 5, f"{path.name} looks blank"


@pytest.fixture(scope="module")
def run01(notebook01_run):
    """01 with papermill on data_sample/ (a relative input, a foreign cwd; tests/conftest.py, shared with
    tests/test_livy.py)."""
    nb, run = notebook01_run
    return _read(nb), run


@pytest.mark.slow
def test_01_runs_headless_on_the_sample(run01):
    nb, run = run01
    _assert_no_error(nb)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["counts"]["total"] == manifest["counts"]["ok"] == SAMPLE_IMAGES
    assert manifest["counts"]["failed"] == 0
    assert manifest["parameters"]["input"] == str(ROOT / "data_sample")
    assert (run / "features").is_dir() and (run / "pca").is_dir()
    pngs = sorted(p.name for p in (run / "figures").glob("*.png"))
    assert pngs == ["pc1_pc2.png", "sample_images.png", "variance.png"]
    for name in pngs:
        _assert_png(run / "figures" / name)
    shown = [o for o in _outputs(nb) if "image/png" in o.get("data", {})]
    assert len(shown) == 3  # grid, variance, scatter displayed in the notebook
    out = _stdout(nb)
    assert re.search(r"featurize \+ PCA: (\d+)/\1 tasks in \d+ Spark jobs", out), out
    assert f"{SAMPLE_IMAGES} total, {SAMPLE_IMAGES} ok, 0 failed" in out
    assert "[Stage " not in "".join(o.get("text", "") for o in _outputs(nb)), "Spark console bar in the output"


@pytest.mark.slow
def test_03_analyses_the_features_of_01(run01, kernel_name, tmp_path):
    _, run = run01
    nb = _execute(NB03, tmp_path / "03.ipynb", {"features_path": str(run)}, kernel_name, tmp_path)
    _assert_no_error(nb)
    figures = run / "analysis" / "figures"
    names = sorted(p.name for p in figures.glob("*.png"))
    assert names == ["component_extremes.png", "pc1_pc2.png", "pc1_pc2_pc3_3d.png", "pc1_pc3.png",
                     "probe_accuracy.png", "scree_cumulative.png"]
    for name in names:
        _assert_png(figures / name)
    import pandas as pd

    curve = pd.read_csv(run / "analysis" / "probe_curve.csv")  # probe=True by default: accuracy per k, and raw
    assert curve["representation"].iloc[-1] == "raw" and curve["accuracy"].between(0, 1).all()
    assert curve["k"].iloc[:-1].is_monotonic_increasing and len(curve) >= 3

    table = pd.read_csv(run / "analysis" / "variance_table.csv")
    manifest = json.loads((run / "manifest.json").read_text())
    k95 = int(table.loc[table["threshold"] == 0.95, "k"].iloc[0])
    assert k95 == manifest["pca"]["k"]  # 01 used variance 0.95: same k from the same features
    np.testing.assert_allclose(table["cumulative_variance"],
                               [manifest["pca"]["cumulative_variance"][k - 1] for k in table["k"]], rtol=1e-6)
    out = _stdout(nb)
    assert f"PCA of {SAMPLE_IMAGES} images" in out and f"{SAMPLE_CLASSES} classes" in out
    assert f"95 % of the variance: k = {k95}" in out
