"""Tests of p8utils.notebook.figures: the one figure writer (PNG, CSV; local paths and URIs)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("matplotlib")
from matplotlib.figure import Figure  # noqa: E402

from p8utils import storage  # noqa: E402
from p8utils.errors import ParameterError  # noqa: E402
from p8utils.notebook import figures, plots  # noqa: E402

from .conftest import PNG_SIGNATURE, png_size  # noqa: E402

SPECTRUM = [0.5, 0.3, 0.15, 0.05]


def _figure():
    fig = Figure(figsize=(4, 3))
    fig.add_subplot().plot([0, 1], [1, 0])
    return fig


def test_save_figure_creates_parents(tmp_path):
    fig = plots.variance_plot(SPECTRUM)
    out = figures.save_figure(fig, tmp_path / "run" / "figures" / "variance.png", dpi=80)
    assert out == str((tmp_path / "run" / "figures" / "variance.png").absolute())
    assert Path(out).read_bytes()[:8] == PNG_SIGNATURE
    out2 = figures.save_figure(fig, "file:" + str(tmp_path / "x" / "v.png"))
    assert Path(out2).is_file() and out2 == str(tmp_path / "x" / "v.png")
    assert figures.save_figure(fig, str(tmp_path / "noext")) == str(tmp_path / "noext.png")


def test_save_figure_writes_remote_uris_through_storage(monkeypatch):
    written = {}

    def fake_write_bytes(uri, data, spark=None):
        written[uri] = (data, spark)

    monkeypatch.setattr(storage, "write_bytes", fake_write_bytes)
    session = object()
    uri = figures.save_figure(plots.variance_plot(SPECTRUM), "s3://bucket/figures/v", session)
    assert uri == "s3://bucket/figures/v.png"
    data, spark = written[uri]
    assert spark is session and data[:8] == PNG_SIGNATURE


def test_save_figure_and_figures(tmp_path):
    uri = figures.save_figure(_figure(), storage.join(str(tmp_path / "run"), "figures", "variance"))
    assert uri == str(tmp_path / "run" / "figures" / "variance.png")
    data = Path(uri).read_bytes()
    assert data[:8] == PNG_SIGNATURE and png_size(data)[0] > 300
    out = figures.save_figures({"a": _figure(), "skipped": None, "b": _figure()}, str(tmp_path / "o"))
    assert out == {"a": str(tmp_path / "o" / "a.png"), "b": str(tmp_path / "o" / "b.png")}
    with pytest.raises(ParameterError, match="name"):
        figures.save_figures({"sub/x.png": _figure()}, str(tmp_path))
    with pytest.raises(ParameterError, match="empty"):
        figures.save_figure(_figure(), "")


def test_figure_to_png_dpi_scales_output():
    fig = plots.variance_plot(SPECTRUM)
    w1, h1 = png_size(figures.figure_to_png(fig, dpi=60))
    w2, h2 = png_size(figures.figure_to_png(fig, dpi=120))
    assert w2 == pytest.approx(2 * w1, rel=0.05) and h2 == pytest.approx(2 * h1, rel=0.05)


def test_figure_to_png_rejects_bad_input():
    with pytest.raises(ParameterError, match="Figure"):
        figures.figure_to_png("not a figure")
    with pytest.raises(ParameterError, match="dpi"):
        figures.figure_to_png(_figure(), dpi=0)


def test_save_table(tmp_path):
    uri = figures.save_table(pd.DataFrame({"k": [1, 2], "v": [0.5, 0.9]}), str(tmp_path / "t"))
    assert uri.endswith("t.csv")
    assert pd.read_csv(uri).to_dict("list") == {"k": [1, 2], "v": [0.5, 0.9]}
