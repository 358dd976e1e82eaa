"""The analysis settings: declared once (p8utils.notebook.settings), used by the functions and the notebooks."""

from __future__ import annotations

import ast
import inspect

import pytest

from p8utils.errors import ParameterError
from p8utils.notebook.settings import DEFAULTS, AnalysisSettings

from ..conftest import ROOT

NB_DIR = ROOT / "notebooks"

#: Where a notebook's parameter differs from the declared default, on purpose.
_NOTEBOOK_DEFAULTS = {
    "03_pca_analysis.ipynb": {"probe": True},  # the local analysis measures the probe; 02 on the cluster does not
}


def test_settings_are_checked():
    assert AnalysisSettings(thresholds=0.9).thresholds == (0.9,)
    assert AnalysisSettings(thresholds=[0.99, 0.9]).thresholds == (0.99, 0.9)  # the order given
    assert AnalysisSettings(top_n=None, probe_max_rows=None).top_n is None
    for bad in ({"thresholds": [0.9, 1.5]}, {"top_n": -1}, {"max_plot_points": 0}, {"seed": 1.5},
                {"n_show": True}, {"show_3d": "yes"}, {"probe": 1}, {"extreme_images": -1}, {"probe_max_rows": 1}):
        name = next(iter(bad))
        with pytest.raises(ParameterError, match=name):
            AnalysisSettings(**bad)
    with pytest.raises(ParameterError, match="not analysis settings"):
        DEFAULTS.replace(top=3)


def test_from_mapping_takes_the_setting_names_only():
    settings = AnalysisSettings.from_mapping({"top_n": 5, "k": 20, "input": "x", "seed": 3})
    assert (settings.top_n, settings.seed, settings.max_plot_points) == (5, 3, DEFAULTS.max_plot_points)
    assert set(AnalysisSettings.help_texts()) == set(AnalysisSettings.names())


def test_the_functions_take_their_defaults_from_the_settings():
    pytest.importorskip("matplotlib")
    from p8utils.notebook import analysis, explorer, plots, samples

    assert plots.DEFAULT_THRESHOLDS == DEFAULTS.thresholds
    assert explorer.MAX_POINTS == DEFAULTS.explorer_points
    assert analysis.PROBE_MAX_ROWS == DEFAULTS.probe_max_rows
    assert inspect.signature(samples.collect_scores).parameters["max_rows"].default == DEFAULTS.max_plot_points
    assert inspect.signature(samples.sample_images).parameters["n"].default == DEFAULTS.n_show
    assert inspect.signature(explorer.write_explorer).parameters["max_points"].default == DEFAULTS.explorer_points


def _cells(path):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(str(path), as_version=4)
    return [(c.source, "parameters" in c.metadata.get("tags", [])) for c in nb.cells if c.cell_type == "code"]


def _python(source: str) -> str:
    if source.lstrip().startswith("%%"):
        return ""
    return "\n".join("" if ln.lstrip().startswith(("%", "!")) else ln for ln in source.splitlines())


@pytest.mark.parametrize("path", sorted(NB_DIR.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_parameters_are_the_declared_settings(path):
    """A setting in a parameters cell: the declared default and help (papermill needs the literal there)."""
    declared = AnalysisSettings.help_texts()
    cells = _cells(path)
    params = next(src for src, tagged in cells if tagged)
    found = {}
    for line in filter(str.strip, params.splitlines()):
        stmt = ast.parse(line).body[0]
        name = stmt.target.id
        if name not in declared:
            continue
        value = ast.literal_eval(stmt.value)
        comment = line.partition("  # ")[2]
        assert comment == declared[name], f"{path.name}: {name}'s help is not AnalysisSettings'"
        expected = _NOTEBOOK_DEFAULTS.get(path.name, {}).get(name, getattr(DEFAULTS, name))
        assert (tuple(value) if isinstance(value, list) else value) == expected, f"{path.name}: {name} = {value!r}"
        found[name] = value
    if not found:
        return
    assert AnalysisSettings.from_mapping(found)  # valid
    code = [_python(src) for src, tagged in cells if not tagged]
    assert any("settings = AnalysisSettings.from_mapping(globals())" in src for src in code), path.name
    for src in code:  # past the parameters cell, the settings are read from `settings`, never by their names
        used = {n.id for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Name)} & set(found)
        assert not used, f"{path.name} uses {sorted(used)}: use settings.<name>"


def test_the_notebooks_declare_the_settings_they_share():
    names = {}
    for path in NB_DIR.glob("*.ipynb"):
        params = next(src for src, tagged in _cells(path) if tagged)
        declared = {ast.parse(ln).body[0].target.id for ln in filter(str.strip, params.splitlines())}
        names[path.name] = declared & set(DEFAULTS.names())
    assert names["01_local_sample.ipynb"] == {"n_show", "max_plot_points"}
    assert names["02_emr_full_run.ipynb"] == {"n_show", "max_plot_points", "thresholds", "top_n"}
    assert names["03_pca_analysis.ipynb"] == {"thresholds", "top_n", "max_plot_points", "show_3d", "probe", "seed"}
