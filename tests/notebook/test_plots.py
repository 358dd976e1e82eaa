"""Tests of p8utils.notebook.plots: pure matplotlib, no Spark."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matplotlib")
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from p8utils import pca  # noqa: E402
from p8utils.errors import ParameterError  # noqa: E402
from p8utils.notebook import figures, plots  # noqa: E402

from ..conftest import ROOT  # noqa: E402
from .conftest import png_size as _png_size  # noqa: E402

SPECTRUM = [0.5, 0.3, 0.15, 0.05]


def _legend_texts(fig: Figure) -> list[str]:
    texts = []
    for legend in [*fig.legends, *(ax.get_legend() for ax in fig.axes)]:
        if legend is not None:
            texts += [t.get_text() for t in legend.get_texts()]
    return texts


def _decaying_spectrum(d: int = 60, scale: float = 6.0) -> np.ndarray:
    v = np.exp(-np.arange(1, d + 1) / scale)
    return v / v.sum()


def _clustered_scores(n_classes: int, rng: np.random.Generator, m: int = 4) -> tuple[np.ndarray, list[str]]:
    """Scores with class i having 10 + 2 * (n_classes - i) points (distinct frequencies)."""
    rows, labels = [], []
    for i in range(n_classes):
        n = 10 + 2 * (n_classes - i)
        rows.append(rng.normal(0, 5, size=m) + rng.normal(0, 1, size=(n, m)))
        labels += [f"Class {i:02d}"] * n
    return np.vstack(rows), labels


@pytest.fixture(autouse=True)
def _close_pyplot_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


# ---------------------------------------------------------------- k / table


def test_k_for_thresholds_exact_values():
    assert plots.k_for_thresholds(SPECTRUM, (0.9, 0.95, 0.99)) == {0.9: 3, 0.95: 3, 0.99: 4}


def test_k_for_thresholds_default_thresholds_and_float_rounding():
    # 0.6 + 0.3 == 0.8999999999999999 must still count as reaching 90 %
    assert plots.k_for_thresholds([0.6, 0.3, 0.1]) == {0.9: 2, 0.95: 3, 0.99: 3}
    assert plots.k_for_thresholds(np.array(SPECTRUM, dtype=np.float32), [1.0]) == {1.0: 4}


def test_k_for_thresholds_unreachable_is_none():
    assert plots.k_for_thresholds([0.5, 0.3], (0.5, 0.9)) == {0.5: 1, 0.9: None}


@pytest.mark.parametrize(
    "explained",
    [
        SPECTRUM,
        [0.6, 0.3, 0.1],  # cumulative 0.8999999999999999 at k = 2
        list(np.full(10, 0.1)),  # sums to 0.9999999999999999: 1.0 must still be reached at k = 10
        list(_decaying_spectrum(1280, scale=40.0)),  # width of MobileNetV2 features
        list(np.array(SPECTRUM, dtype=np.float32)),
    ],
)
def test_k_for_thresholds_agrees_with_pca_choose_k(explained):
    thresholds = (0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)
    ks = plots.k_for_thresholds(explained, thresholds)
    ev = np.asarray(explained, dtype=np.float64)
    assert ks == {t: pca.choose_k(ev, t) for t in thresholds}  # every target is reached here
    assert ks == {t: pca.k_for_variance(ev, t) for t in thresholds}
    assert ks[1.0] == pca.choose_k(ev, 1.0) <= ev.size


@pytest.mark.parametrize(
    ("explained", "thresholds"),
    [
        ([0.7, 0.6], (0.9,)),  # not ratios
        ([[0.5, 0.3]], (0.9,)),  # 2-D
        ([], (0.9,)),
        ([0.5, float("nan")], (0.9,)),
        (SPECTRUM, (0.0,)),
        (SPECTRUM, (95,)),  # percent instead of fraction
    ],
)
def test_k_for_thresholds_rejects_bad_input(explained, thresholds):
    with pytest.raises(ParameterError):
        plots.k_for_thresholds(explained, thresholds)


def test_variance_table_rows_and_columns():
    table = plots.variance_table(SPECTRUM, thresholds=(0.9, 0.95, 0.99), ks=[1, 2])
    assert list(table.columns) == ["k", "explained_variance", "cumulative_variance", "threshold"]
    assert str(table["k"].dtype) == "Int64"
    thr = table.dropna(subset=["threshold"]).set_index("threshold")
    assert thr.loc[0.9, "k"] == 3
    assert thr.loc[0.95, "k"] == 3
    assert thr.loc[0.99, "k"] == 4
    assert thr.loc[0.99, "cumulative_variance"] == pytest.approx(1.0)
    plain = table[table["threshold"].isna()]
    assert plain["k"].tolist() == [1, 2]
    assert plain["cumulative_variance"].tolist() == pytest.approx([0.5, 0.8])
    assert plain["explained_variance"].tolist() == pytest.approx([0.5, 0.3])
    assert table["k"].tolist() == sorted(table["k"].tolist())


def test_variance_table_default_ks_and_unreached_threshold():
    table = plots.variance_table([0.5, 0.3], thresholds=(0.99,))
    assert table["k"].iloc[:2].tolist() == [1, 2]  # default ks, capped at d
    last = table.iloc[-1]
    assert last["threshold"] == 0.99
    assert pd.isna(last["k"])
    assert last["cumulative_variance"] == pytest.approx(0.8)


def test_variance_table_rejects_k_out_of_range():
    with pytest.raises(ParameterError, match="ks"):
        plots.variance_table(SPECTRUM, ks=[0, 5])


# ---------------------------------------------------------------- variance plot


def test_variance_plot_labels_annotations_and_png():
    fig = plots.variance_plot(SPECTRUM, thresholds=(0.9, 0.95, 0.99))
    assert isinstance(fig, Figure)
    ax, ax_cum = fig.axes[:2]
    assert ax.get_xlabel() == "principal component"
    assert ax.get_ylabel() == "explained variance ratio"
    assert ax_cum.get_ylabel() == "cumulative explained variance"
    legend = _legend_texts(fig)
    assert "90 %: k = 3" in legend
    assert "95 %: k = 3" in legend
    assert "99 %: k = 4" in legend
    on_plot = [t.get_text() for t in ax_cum.texts]
    assert "k = 3" in on_plot and "k = 4" in on_plot
    width, height = _png_size(figures.figure_to_png(fig))
    assert width >= 600 and height >= 400


def test_variance_plot_threshold_not_reached():
    fig = plots.variance_plot([0.5, 0.3, 0.1], thresholds=(0.8, 0.95))
    legend = _legend_texts(fig)
    assert "80 %: k = 2" in legend
    assert any(t.startswith("95 %: not reached") and "90 %" in t for t in legend), legend
    _png_size(figures.figure_to_png(fig))


def test_variance_plot_default_and_explicit_x_range():
    explained = _decaying_spectrum(200)
    k99 = plots.k_for_thresholds(explained)[0.99]
    fig = plots.variance_plot(explained)
    lo, hi = fig.axes[0].get_xlim()
    assert k99 < hi < 200  # shows the largest threshold's k with a margin, not all 200
    fig = plots.variance_plot(explained, max_components=10, log_scale=True)
    assert fig.axes[0].get_xlim()[1] == pytest.approx(10.5)
    assert fig.axes[0].get_yscale() == "log"
    assert any("beyond x range" in t for t in _legend_texts(fig))
    fig = plots.variance_plot(explained, thresholds=())
    assert fig.axes[0].get_xlim()[1] == pytest.approx(200.5)
    with pytest.raises(ParameterError, match="max_components"):
        plots.variance_plot(explained, max_components=0)


def test_variance_plot_large_d_renders():
    v = 1.0 / np.arange(1, 1281) ** 1.1
    fig = plots.variance_plot(v / v.sum(), title="MobileNetV2 features")
    assert fig._suptitle.get_text() == "MobileNetV2 features"
    _png_size(figures.figure_to_png(fig, dpi=60))


# ---------------------------------------------------------------- scatter


def test_scatter_groups_extra_classes_as_other():
    rng = np.random.default_rng(0)
    scores, labels = _clustered_scores(30, rng)
    fig = plots.scatter(scores, labels, top_n=20)
    assert isinstance(fig, Figure)
    legend = _legend_texts(fig)
    assert len(legend) == 21
    assert legend[-1] == "other (10 classes)"
    # the 20 most frequent classes (Class 00..19) are named, the 10 rarest are not
    assert sorted(legend[:-1]) == [f"Class {i:02d}" for i in range(20)]
    assert fig._suptitle.get_text() == f"PC1 vs PC2 (n = {len(labels)} images, 30 classes)"
    width, height = _png_size(figures.figure_to_png(fig))
    assert width >= 600 and height >= 400


def test_scatter_all_classes_named_with_counts_and_distinct_styles():
    rng = np.random.default_rng(1)
    scores, labels = _clustered_scores(30, rng)
    fig = plots.scatter(scores, labels, top_n=None, show_counts=True)
    legend = _legend_texts(fig)
    assert len(legend) == 30
    assert "Class 00 (70)" in legend
    assert not any(t.startswith("other") for t in legend)
    styles = plots.class_styles([f"c{i}" for i in range(60)])
    assert len(set(styles.values())) == 60
    assert all(colour.lower() not in ("#7f7f7f", "#c7c7c7") for colour, _ in styles.values())


def test_scatter_axis_labels_with_explained_variance():
    rng = np.random.default_rng(2)
    scores, labels = _clustered_scores(3, rng)
    fig = plots.scatter(scores, labels, dims=(0, 2), explained=[0.234, 0.121, 0.08, 0.05])
    ax = fig.axes[0]
    assert ax.get_xlabel() == "PC1 (23.4 % var.)"
    assert ax.get_ylabel() == "PC3 (8 % var.)"
    fig = plots.scatter(scores, labels)
    assert fig.axes[0].get_xlabel() == "PC1"


def test_scatter_unicode_and_special_labels_render_without_warnings():
    rng = np.random.default_rng(3)
    names = ["Apple Red 1", "Pomme rôtie", "Груша", "Ξ fruit", "Apple $5 $ deal", "_underscore"]
    labels = [n for n in names for _ in range(15)]
    scores = rng.normal(size=(len(labels), 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plots.scatter(scores, labels)
        data = figures.figure_to_png(fig)
    _png_size(data)
    legend = _legend_texts(fig)
    assert "Pomme rôtie" in legend
    assert "_underscore" in legend  # not dropped although it starts with "_"
    assert r"Apple \$5 \$ deal" in legend  # escaped: shown literally, not as mathtext


def test_scatter_accepts_arrays_series_and_missing_labels():
    scores = np.arange(12, dtype=np.float32).reshape(6, 2)
    labels = pd.Series(["a", "b", None, "a", "b", "a"])
    fig = plots.scatter(scores, labels)
    assert "(no label)" in _legend_texts(fig)
    fig = plots.scatter(scores, np.array(["x"] * 6), top_n=0)
    assert _legend_texts(fig) == ["other (1 class)"]


@pytest.mark.parametrize(
    ("scores", "labels", "dims", "match"),
    [
        (np.zeros((4, 2)), ["a"] * 3, (0, 1), "labels"),
        (np.zeros((4, 2)), ["a"] * 4, (0, 2), "dims"),
        (np.zeros((4, 2)), ["a"] * 4, (1, 1), "dims"),
        (np.zeros(4), ["a"] * 4, (0, 1), "scores"),
    ],
)
def test_scatter_rejects_bad_input(scores, labels, dims, match):
    with pytest.raises(ParameterError, match=match):
        plots.scatter(scores, labels, dims=dims)


def test_scatter_3d():
    rng = np.random.default_rng(4)
    scores, labels = _clustered_scores(24, rng)
    fig = plots.scatter_3d(scores, labels, explained=[0.3, 0.2, 0.1, 0.05])
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.name == "3d"
    assert ax.get_zlabel() == "PC3 (10 % var.)"
    assert fig._suptitle.get_text() == f"PC1, PC2, PC3 (n = {len(labels)} images, 24 classes)"
    legend = _legend_texts(fig)
    assert len(legend) == 21 and legend[-1] == "other (4 classes)"
    _png_size(figures.figure_to_png(fig))
    with pytest.raises(ParameterError, match="dims"):
        plots.scatter_3d(scores, labels, dims=(0, 1))


# ---------------------------------------------------------------- image grid


def _jpeg_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (100, 80)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def test_image_grid_mixed_inputs_and_bad_bytes():
    images = [
        _jpeg_bytes((200, 30, 30)),
        bytearray(_jpeg_bytes((30, 200, 30))),  # what Spark's binaryFile content collects to
        np.full((64, 64, 3), 128, dtype=np.uint8),
        np.random.default_rng(0).random((32, 48)),  # float grey image in [0, 1]
        b"not an image",
        None,
    ]
    labels = ["Apple Red 1", "Pomme rôtie", "Kiwi", "Banana Lady Finger very long name", "broken", "missing"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plots.image_grid(images, labels, ncols=4)
        data = figures.figure_to_png(fig)
    assert isinstance(fig, Figure)
    visible = [ax for ax in fig.axes if ax.axison]
    assert len(visible) == 6
    assert [ax.get_title() for ax in visible[:3]] == labels[:3]
    assert sum(1 for ax in visible if ax.images) == 4
    assert all(any(t.get_text() == "cannot decode" for t in ax.texts) for ax in visible[4:])
    width, height = _png_size(data)
    assert width >= 600 and height >= 300


def test_image_grid_real_fruit_photos_if_present(real_dir):
    files = sorted(real_dir.glob("*/*.jpg"))[:6]
    if not files:
        pytest.skip("no sample fruit photos on this machine")
    fig = plots.image_grid([f.read_bytes() for f in files], [f.parent.name for f in files], ncols=3)
    assert sum(1 for ax in fig.axes if ax.images) == len(files)


def test_image_grid_rejects_mismatched_labels():
    with pytest.raises(ParameterError, match="labels"):
        plots.image_grid([_jpeg_bytes((0, 0, 0))], ["a", "b"])


# ---------------------------------------------------------------- pyplot integration


def test_default_figures_are_not_managed_by_pyplot():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig = plots.scatter(np.zeros((3, 2)), ["a", "b", "c"])
    assert plt.get_fignums() == before
    assert fig.canvas.manager is None


def test_pyplot_true_makes_the_current_figure():
    import matplotlib.pyplot as plt

    fig = plots.variance_plot(SPECTRUM, pyplot=True)
    assert plt.gcf() is fig  # what sparkmagic's %matplot plt renders


def test_to_pyplot_adopts_an_existing_figure():
    import matplotlib.pyplot as plt

    fig = plots.scatter(np.zeros((3, 2)), ["a", "b", "c"])
    assert plots.to_pyplot(fig) is fig
    assert plt.gcf() is fig
    _png_size(figures.figure_to_png(fig))


def test_to_pyplot_fallback_for_older_matplotlib(monkeypatch):
    import matplotlib.pyplot as plt

    real_figure = plt.figure

    def old_figure(num=None, *args, **kwargs):
        if isinstance(num, Figure):  # matplotlib < 3.10 refuses unmanaged figures
            raise ValueError("The passed figure is not managed by pyplot")
        return real_figure(num, *args, **kwargs)

    monkeypatch.setattr(plt, "figure", old_figure)
    fig = plots.image_grid([np.zeros((8, 8, 3), dtype=np.uint8)], ["black"])
    assert plots.to_pyplot(fig) is fig
    assert plt.gcf() is fig


def test_import_does_not_touch_pyplot_or_backend():
    # dict.__getitem__ reads the raw rcParam without resolving (and so setting) a backend
    code = (
        "import sys, matplotlib; b = dict.__getitem__(matplotlib.rcParams, 'backend'); "
        "import p8utils.notebook.plots; "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'; "
        "assert dict.__getitem__(matplotlib.rcParams, 'backend') is b, 'backend changed'"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)


def test_subpackage_import_is_light_and_missing_matplotlib_names_the_fix():
    code = (
        "import sys; import p8utils.notebook, p8utils.notebook.paths, p8utils.notebook.summaries; "
        "assert not {'matplotlib', 'tqdm'} & set(sys.modules), 'imported eagerly'; "
        "sys.modules['matplotlib'] = None\n"
        "try:\n    import p8utils.notebook.plots\n"
        "except ImportError as exc:\n    assert \"pip install 'p8utils[notebooks]'\" in str(exc), exc\n"
        "else:\n    raise AssertionError('no ImportError')"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)


# --------------------------------------------------------------------------
# component extremes: the images at both ends of each component
# --------------------------------------------------------------------------


def test_extreme_indices_pick_both_ends_of_each_component():
    scores = np.array([[0.0, 5.0, 1.0], [3.0, -1.0, 1.0], [-2.0, 0.0, 1.0], [1.0, 2.0, 1.0],
                       [-5.0, 9.0, 1.0], [4.0, -7.0, 1.0]])
    picked = plots.extreme_indices(scores, n_images=2, n_components=2)
    assert picked.shape == (2, 2, 2) and picked.dtype == np.int64
    assert picked[0, 0].tolist() == [4, 2] and picked[0, 1].tolist() == [5, 1]  # PC1: lowest first / highest first
    assert picked[1, 0].tolist() == [5, 1] and picked[1, 1].tolist() == [4, 0]
    # more components/images than there are: clipped; ties (column 3) keep row order, the ends never overlap
    tied = plots.extreme_indices(scores, n_images=10, n_components=9)
    assert tied.shape == (3, 2, 3)
    assert tied[2, 0].tolist() == [0, 1, 2] and tied[2, 1].tolist() == [5, 4, 3]


def test_extreme_indices_match_a_brute_force_choice_on_random_scores():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(500, 4))
    picked = plots.extreme_indices(scores, n_images=5, n_components=3)
    for j in range(3):
        assert set(picked[j, 0]) == set(np.argsort(scores[:, j])[:5])
        assert set(picked[j, 1]) == set(np.argsort(scores[:, j])[-5:])
        assert np.all(np.diff(scores[picked[j, 0], j]) >= 0) and np.all(np.diff(scores[picked[j, 1], j]) <= 0)


@pytest.mark.parametrize("scores, kw, match", [
    (np.zeros(5), {}, "shape"),
    (np.zeros((1, 3)), {}, "n >= 2"),
    (np.zeros((4, 3)), {"n_images": 0}, "n_images"),
    (np.zeros((4, 3)), {"n_components": 0}, "n_components"),
])
def test_extreme_indices_rejects_bad_input(scores, kw, match):
    with pytest.raises(ParameterError, match=match):
        plots.extreme_indices(scores, **kw)


def _tile(colour: tuple[int, int, int], size: int = 48) -> np.ndarray:
    img = np.full((size, size, 3), 255, dtype=np.uint8)
    img[8:-8, 8:-8] = colour
    return img


def test_component_extremes_grid_labels_and_png():
    m, p = 3, 4
    low = [[_tile((30 * i, 0, 200)) for i in range(p)] for _ in range(m)]
    high = [[_tile((200, 40 * i, 0)) for i in range(p)] for _ in range(m)]
    low[1][2] = b"not an image"  # shown as "cannot decode", never an error
    labels_low = [[f"low {j}-{i}" for i in range(p)] for j in range(m)]
    labels_high = [[f"high {j}-{i}" for i in range(p)] for j in range(m)]
    fig = plots.component_extremes(low, high, labels_low, labels_high, explained=SPECTRUM)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == m * 2 * p
    with_image = [ax for ax in fig.axes if ax.images]
    assert len(with_image) == m * 2 * p - 1
    assert any("cannot" in t.get_text() for ax in fig.axes for t in ax.texts)
    rows = [fig.axes[j * 2 * p].get_ylabel() for j in range(m)]
    assert rows == ["PC1\n(50 % var.)", "PC2\n(30 % var.)", "PC3\n(15 % var.)"]
    assert [ax.get_xlabel() for ax in fig.axes[:2 * p]] == labels_low[0] + labels_high[0]
    assert fig.axes[0].get_title(loc="left") == "lowest" and fig.axes[2 * p - 1].get_title(loc="right") == "highest"
    # low images sit left of the high ones, with a gap between the two ends
    x0 = [ax.get_position().x0 for ax in fig.axes[:2 * p]]
    assert x0 == sorted(x0) and x0[p] - x0[p - 1] > 1.2 * (x0[1] - x0[0])
    png = figures.figure_to_png(fig)
    w, h = _png_size(png)
    assert w > 600 and h > 300
    arr = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 20  # not blank: the tiles' colours are there


def test_component_extremes_without_labels_and_with_pyplot():
    import matplotlib.pyplot as plt

    fig = plots.component_extremes([[_tile((0, 128, 0))]], [[_tile((128, 0, 0))]], components=[4], pyplot=True)
    assert plt.gcf() is fig and len(fig.axes) == 2
    assert fig.axes[0].get_ylabel() == "PC5" and "PC5" in fig._suptitle.get_text()


@pytest.mark.parametrize("low, high, kw, match", [
    ([], [], {}, "one row"),
    ([[None]], [[None], [None]], {}, "one row"),
    ([[None, None]], [[None]], {}, "same number"),
    ([[None]], [[None]], {"labels_low": [["a", "b"]]}, "labels_low"),
    ([[None]], [[None]], {"components": [0, 1]}, "components"),
])
def test_component_extremes_rejects_bad_input(low, high, kw, match):
    with pytest.raises(ParameterError, match=match):
        plots.component_extremes(low, high, **kw)
