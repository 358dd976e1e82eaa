"""An interactive PCA explorer: one self-contained HTML file, PC scatters with image thumbnails on hover.

The page (made with `Bokeh <https://bokeh.org>`_) has one tab per pair of
components (PC1–PC2, PC1–PC3, PC2–PC3 by default) and, in each, one glyph
renderer per class with its own colour and marker (the colours of
:func:`p8utils.notebook.plots.class_styles`, as in the PNG scatters). Hovering a
point shows its class, its file name, its scores and a thumbnail of the image;
clicking a legend entry hides or shows that class (in that tab). Everything,
Bokeh's JavaScript included, is inline: the file opens offline, from a local
folder, in JupyterLab or straight from S3, with no CDN.

Why Bokeh: its ``HoverTool`` takes an HTML template (``<img src="@thumb">``) and
its legend toggles renderers (``click_policy="hide"``), both without any
JavaScript written here; Plotly's hover cannot show images without custom JS.

Size bound
----------
At most :data:`MAX_POINTS` points (2,000; a seeded uniform random sample beyond)
are drawn, each with a :data:`THUMBNAIL_PX`-pixel JPEG thumbnail (64 px,
quality 75, about 1.5–3 kB base64). Bokeh's inline JavaScript is about 1.6 MB,
so a page of 2,000 Fruits-360 photos weighs about 5–6 MB (measured: 2,000 points
of 131 classes, 5.5 MB), whatever the size of the dataset. Only the files of the
drawn points are read, on the driver (:func:`read_thumbnails`).

:func:`write_explorer` ``(spark, "runs/demo")`` writes the page of a run
(``runs/demo/explorer.html`` unless told where) and returns its location; :func:`explorer_html` returns
the page of a :class:`~p8utils.notebook.samples.ScoreSample` as a string, and
:func:`notebook_view` shows a written page in a notebook.

Examples
--------
The bounds, on a sample of 5 images:

>>> import io
>>> import numpy as np
>>> from PIL import Image
>>> from p8utils.notebook.explorer import make_thumbnail, subsample
>>> from p8utils.notebook.samples import ScoreSample
>>> sample = ScoreSample(np.arange(10.0).reshape(5, 2), list("aabbc"), [f"/d/{i}.jpg" for i in range(5)], 5)
>>> subsample(sample, max_points=3).describe()
'3 of 5 images (random sample), 2 classes'
>>> photo = io.BytesIO()
>>> Image.new("RGB", (100, 80), "red").save(photo, "JPEG")
>>> Image.open(io.BytesIO(make_thumbnail(photo.getvalue(), size=32))).size
(32, 32)
"""

from __future__ import annotations

import base64
import html
import io
import itertools
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from p8utils import runs, storage
from p8utils.errors import ParameterError
from p8utils.notebook import missing_extra
from p8utils.notebook._labels import axis_label, class_name
from p8utils.notebook.samples import ScoreSample, collect_scores
from p8utils.notebook.settings import DEFAULTS
from p8utils.validation import check_int

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

__all__ = [
    "EXPLORER_FILE",
    "MAX_POINTS",
    "THUMBNAIL_PX",
    "explorer_html",
    "make_thumbnail",
    "notebook_view",
    "read_thumbnails",
    "subsample",
    "write_explorer",
]

#: Most points drawn by the explorer (a seeded uniform random sample beyond): the page stays ~5–6 MB
#: (:attr:`.AnalysisSettings.explorer_points`).
MAX_POINTS = DEFAULTS.explorer_points

#: Side of the hover thumbnails, in pixels.
THUMBNAIL_PX = 64

#: File name of the explorer in a run folder (``<run>/explorer.html``).
EXPLORER_FILE = "explorer.html"

#: Files larger than this are not read for a thumbnail (shown without one).
_MAX_FILE_BYTES = 20 * 1024 * 1024

#: Components offered as tabs by default (every pair of them): PC1, PC2, PC3.
_DEFAULT_COMPONENTS = (0, 1, 2)

#: matplotlib markers of :func:`p8utils.notebook.plots.class_styles` -> Bokeh markers.
_BOKEH_MARKERS = {"o": "circle", "s": "square", "^": "triangle", "D": "diamond", "v": "inverted_triangle",
                  "P": "plus", "X": "hex", "<": "star"}

#: Shown in the tooltip for a file that could not be read or decoded: a grey square saying "no image".
_NO_THUMBNAIL = "data:image/svg+xml;base64," + base64.b64encode(
    b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" height="64" fill="#ddd"/>'
    b'<text x="32" y="36" font-size="10" text-anchor="middle" fill="#555" font-family="sans-serif">no image</text>'
    b"</svg>").decode("ascii")

#: Legend rows per column before a new column starts.
_LEGEND_ROWS = 28


# --------------------------------------------------------------------------
# bounded data: points and thumbnails
# --------------------------------------------------------------------------


def subsample(scores: ScoreSample, max_points: int = MAX_POINTS, seed: int = 0) -> ScoreSample:
    """Keep at most ``max_points`` rows of a score sample: a seeded uniform random subset.

    Parameters
    ----------
    scores : ScoreSample
        ``scores`` of shape ``(n, k)``, float64.
    max_points : int
        Upper bound, at least 1.
    seed : int
        Seed of :func:`numpy.random.default_rng` (same sample and seed → same rows).

    Returns
    -------
    ScoreSample
        ``scores`` itself when ``n <= max_points``; otherwise ``max_points`` of its
        rows, in their original order (sorted by path), with the same ``n_total``.

    Raises
    ------
    ParameterError
        ``max_points`` is not a positive integer.
    """
    max_points = int(check_int("max_points", max_points, 1, example=MAX_POINTS))
    if scores.n <= max_points:
        return scores
    keep = np.sort(np.random.default_rng(seed).choice(scores.n, size=max_points, replace=False))
    return ScoreSample(scores=scores.scores[keep], labels=[scores.labels[i] for i in keep],
                       paths=[scores.paths[i] for i in keep], n_total=scores.n_total)


def make_thumbnail(data: Optional[bytes], size: int = THUMBNAIL_PX, quality: int = 75) -> Optional[bytes]:
    """Decode an image file's bytes and re-encode it as a small square JPEG.

    The image is decoded as the pipeline does (:func:`p8utils.images.decode_image`:
    any mode to RGB, transparency on white, EXIF orientation, bicubic resize),
    so the thumbnail shows what the model saw, at ``size`` × ``size`` pixels.

    Parameters
    ----------
    data : bytes or None
        The file's content (JPEG, PNG, …).
    size : int
        Side in pixels, at least 8.
    quality : int
        JPEG quality in [1, 95].

    Returns
    -------
    bytes or None
        The JPEG file (typically 1–3 kB at 64 px), or None when ``data`` cannot be decoded.
    """
    from PIL import Image

    from p8utils.images import decode_image

    size = int(check_int("size", size, 8, example=THUMBNAIL_PX))
    quality = int(check_int("quality", quality, 1, 95, example=75))
    arr, _ = decode_image(data, size=(size, size))
    if arr is None:
        return None
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def _read_one(path: str, spark: Optional[SparkSession], size: int, quality: int) -> Optional[bytes]:
    """Read one file and make its thumbnail; None when unreadable, too large or not an image."""
    try:
        data = storage.read_bytes(path, spark)
    except Exception:  # noqa: BLE001 - a vanished/unreadable file gets no thumbnail
        return None
    return make_thumbnail(data, size, quality) if len(data) <= _MAX_FILE_BYTES else None


def read_thumbnails(
    paths: Sequence[str],
    spark: Optional[SparkSession] = None,
    *,
    size: int = THUMBNAIL_PX,
    quality: int = 75,
    max_files: int = MAX_POINTS,
    workers: int = 8,
) -> Dict[str, Optional[bytes]]:
    """Read a bounded number of image files on the driver and make their thumbnails.

    Parameters
    ----------
    paths : sequence of str
        Files, as in a features/pca dataset's ``path`` column (``file:/abs/x.jpg``,
        a local path, or a Hadoop URI such as ``s3://bucket/x.jpg``).
    spark : pyspark.sql.SparkSession, optional
        Needed for non-local URIs.
    size, quality : int
        As in :func:`make_thumbnail`.
    max_files : int
        At most this many files are read (the first ``max_files`` distinct paths).
    workers : int
        Files read at once (threads: reading S3 objects one by one is slow).

    Returns
    -------
    dict of str to bytes or None
        ``{path: JPEG thumbnail, or None when the file could not be read or decoded
        or exceeds 20 MB}``, for every path read.

    Raises
    ------
    ParameterError
        Bad ``max_files`` or ``workers`` (or ``size``/``quality``, as in :func:`make_thumbnail`).
    """
    max_files = int(check_int("max_files", max_files, 1, example=MAX_POINTS))
    workers = int(check_int("workers", workers, 1, example=8))
    check_int("size", size, 8, example=THUMBNAIL_PX)
    check_int("quality", quality, 1, 95, example=75)
    unique = list(dict.fromkeys(str(p) for p in paths))[:max_files]
    if not unique:
        return {}
    with ThreadPoolExecutor(max_workers=min(workers, len(unique))) as pool:
        thumbs = list(pool.map(lambda p: _read_one(p, spark, size, quality), unique))
    return dict(zip(unique, thumbs))


# --------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------


def _data_uri(data: Optional[bytes]) -> str:
    """``data:image/...;base64,...`` for an encoded image (PNG sniffed, else JPEG); a placeholder for None."""
    if not data:
        return _NO_THUMBNAIL
    mime = "image/png" if bytes(data[:8]) == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(bytes(data)).decode('ascii')}"


def _file_name(path: str) -> str:
    """Last part of a path or URI, percent-encoding of Spark's ``file:`` form left as is."""
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def _check_components(components: Sequence[int], k: int) -> Tuple[int, ...]:
    """Validate 0-based component indices (at least 2 distinct, each below ``k``)."""
    comps = tuple(dict.fromkeys(int(check_int("components", c, 0, k - 1, example=0)) for c in components))
    if len(comps) < 2:
        raise ParameterError(f"components={tuple(components)!r}: need at least two distinct 0-based components "
                             f"below k = {k}. Fix: e.g. components=(0, 1, 2).")
    return comps


def _tooltip(x: int, y: int) -> str:
    """HTML template of the hover tooltip for the tab showing PC``x+1`` against PC``y+1``.

    Bokeh fills ``@field`` from the point's data source and HTML-escapes it, so a
    class or file name is shown as text, never parsed as markup.
    """
    return (
        '<div style="max-width:230px;font-family:sans-serif">'
        '<img src="@thumb" width="64" height="64" alt="" '
        'style="display:block;margin:2px 0 4px 0;border:1px solid #ccc;image-rendering:auto">'
        '<div style="font-weight:bold;font-size:12px">@label</div>'
        '<div style="font-size:11px;color:#444;word-break:break-all">@name</div>'
        f'<div style="font-size:11px;color:#666">PC{x + 1} @pc{x + 1}{{0.000}} &middot; '
        f"PC{y + 1} @pc{y + 1}{{0.000}}</div></div>"
    )


def _class_sources(sample: ScoreSample, comps: Tuple[int, ...], thumbnails: Mapping[str, Optional[bytes]]) -> Dict[
        str, Any]:
    """One Bokeh ``ColumnDataSource`` per class (classes sorted by name), shared by every tab.

    Columns: ``pc<i+1>`` (float64) for each component shown, ``label``, ``name``
    (file name), ``path`` and ``thumb`` (a ``data:`` URI).
    """
    from bokeh.models import ColumnDataSource

    labels = np.asarray([class_name(v) for v in sample.labels], dtype=object)
    sources = {}
    for cls in sorted(set(labels.tolist()), key=lambda c: (c.casefold(), c)):
        idx = np.flatnonzero(labels == cls)
        data: Dict[str, Any] = {f"pc{c + 1}": sample.scores[idx, c] for c in comps}
        data["label"] = [cls] * idx.size
        data["path"] = [sample.paths[i] for i in idx]
        data["name"] = [_file_name(p) for p in data["path"]]
        data["thumb"] = [_data_uri(thumbnails.get(p)) for p in data["path"]]
        sources[cls] = ColumnDataSource(data, name=f"class {cls}")
    return sources


def _scatter_tab(sources: Mapping[str, Any], x: int, y: int, explained: Optional[np.ndarray], width: int,
                 height: int) -> Tuple[Any, List[Any]]:
    """One tab: the ``x``/``y`` scatter, a renderer per class, the hover tool and a legend that toggles classes.

    Each renderer is built with its glyph only (no hover/selection/muted glyph
    models): a page of 131 classes × 3 tabs then has ~2,000 models, which Bokeh
    serialises in seconds and the browser shows in a few. (A legend entry
    toggling the class in every tab, through shared legend items or
    ``js_link``, made that page take ~50 s to load in Chromium: not done.)

    Returns
    -------
    panel : bokeh.models.TabPanel
    renderers : list of bokeh.models.GlyphRenderer
        One per class, in ``sources`` (legend) order.
    """
    from bokeh.models import GlyphRenderer, HoverTool, LegendItem, Scatter, TabPanel
    from bokeh.plotting import figure

    from p8utils.notebook.plots import class_styles

    n_points = sum(len(s.data["label"]) for s in sources.values())
    size = float(np.clip(120.0 / np.sqrt(max(n_points, 1)), 4.0, 9.0))
    fig = figure(width=width, height=height, x_axis_label=axis_label(x, explained, trim=False),
                 y_axis_label=axis_label(y, explained, trim=False), tools="pan,wheel_zoom,box_zoom,reset,save",
                 active_scroll="wheel_zoom", name=f"PC{x + 1}-PC{y + 1}", toolbar_location="above")
    styles = class_styles(list(sources))
    renderers = []
    for cls, source in sources.items():
        colour, marker = styles[cls]
        glyph = Scatter(x=f"pc{x + 1}", y=f"pc{y + 1}", size=size, marker=_BOKEH_MARKERS.get(marker, "circle"),
                        fill_color=colour, line_color="#333333", line_width=0.4, fill_alpha=0.8)
        renderers.append(GlyphRenderer(data_source=source, glyph=glyph, name=cls, nonselection_glyph=None,
                                       muted_glyph=None))
    fig.renderers.extend(renderers)
    fig.add_tools(HoverTool(renderers=renderers, tooltips=_tooltip(x, y), point_policy="snap_to_data"))
    items = [LegendItem(label=f"{cls} ({len(source.data['label'])})", renderers=[r])
             for (cls, source), r in zip(sources.items(), renderers)]
    _add_legend(fig, items)
    return TabPanel(child=fig, title=f"PC{x + 1} – PC{y + 1}"), renderers


def _add_legend(fig: Any, items: Sequence[Any]) -> None:
    """Add a legend that toggles classes: on the right (1–2 columns), below the axes in columns when long.

    The figure grows by the legend's size, so the plotting area keeps its size
    whatever the number of classes.
    """
    from bokeh.models import Legend

    longest = max((len(str(item.label.value)) for item in items), default=10)
    col_px = int(min(300, 6.5 * longest + 40))
    kw: Dict[str, Any] = {"items": list(items), "click_policy": "hide", "label_text_font_size": "9pt",
                          "glyph_height": 14, "glyph_width": 14, "spacing": 1, "title": "class (click: hide/show)",
                          "title_text_font_size": "9pt"}
    if len(items) <= 2 * _LEGEND_ROWS:
        ncols = 1 if len(items) <= _LEGEND_ROWS else 2
        fig.width += ncols * col_px
        fig.add_layout(Legend(ncols=ncols, **kw), "right")
        return
    ncols = max(1, (fig.width - 40) // col_px)
    nrows = -(-len(items) // ncols)
    fig.height += 15 * nrows + 40
    fig.add_layout(Legend(ncols=ncols, orientation="horizontal", **kw), "below")


def _require_bokeh() -> None:
    """Raise the notebook-extras ImportError (with its fix) when Bokeh is not installed."""
    try:
        import bokeh  # noqa: F401
    except ImportError as exc:  # pragma: no cover - the notebook extras are not installed
        raise missing_extra("bokeh", "p8utils.notebook.explorer") from exc


def explorer_html(
    scores: ScoreSample,
    explained: Optional[Sequence[float]] = None,
    thumbnails: Optional[Mapping[str, Optional[bytes]]] = None,
    *,
    components: Sequence[int] = _DEFAULT_COMPONENTS,
    max_points: int = MAX_POINTS,
    seed: int = 0,
    title: Optional[str] = None,
    width: int = 760,
    height: int = 600,
) -> str:
    """Build the explorer page: PC scatters (one tab per pair of components), thumbnails on hover.

    Parameters
    ----------
    scores : ScoreSample
        ``scores`` of shape ``(n, k)``, float64, ``k >= 2`` (e.g.
        :func:`p8utils.notebook.samples.collect_scores`, or ``Analysis.scores``).
    explained : array_like, shape (d,), float, optional
        Explained-variance ratio of each component, for the axis labels.
    thumbnails : mapping of str to bytes or None, optional
        ``{path: encoded image}`` (e.g. :func:`read_thumbnails`), shown on hover;
        a path missing or mapped to None shows a grey "no image" square.
        Pass small images (64 px): they are embedded as they are.
    components : sequence of int
        0-based components offered; one tab per pair (default PC1, PC2, PC3:
        PC1–PC2, PC1–PC3, PC2–PC3), those ``>= k`` dropped.
    max_points : int
        At most this many points are drawn (:func:`subsample` with ``seed``);
        see the module docstring for the resulting file size.
    seed : int
        Seed of that sample.
    title : str, optional
        Page title and heading; default ``"PCA explorer: <n> images, <c> classes"``.
    width, height : int
        Size of each scatter in pixels (the legend adds its own width).

    Returns
    -------
    str
        A complete HTML document, all JavaScript and CSS inline (no network
        needed), one ``GlyphRenderer`` per class in each tab.

    Raises
    ------
    ParameterError
        ``scores`` has fewer than 2 components or no row, bad ``components`` or ``max_points``.
    ImportError
        Bokeh is not installed (the message gives the fix).
    """
    _require_bokeh()
    from bokeh.embed import file_html
    from bokeh.layouts import column
    from bokeh.models import Div, Tabs
    from bokeh.resources import INLINE

    arr = np.asarray(scores.scores, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] < 2:
        raise ParameterError(f"scores.scores has shape {arr.shape}: the explorer needs at least one row and 2 "
                             "components. Fix: collect PCA scores with k >= 2 (e.g. Analysis.scores).")
    k = arr.shape[1]
    comps = _check_components([c for c in components if int(c) < k] or list(components), k)
    ratios = None if explained is None else np.asarray(explained, dtype=np.float64).ravel()
    sample = subsample(scores, max_points, seed)
    sources = _class_sources(sample, comps, thumbnails or {})
    width = int(check_int("width", width, 200, example=760))
    height = int(check_int("height", height, 200, example=600))
    panels = [_scatter_tab(sources, x, y, ratios, width, height)[0] for x, y in itertools.combinations(comps, 2)]
    heading = title or f"PCA explorer: {sample.describe()}"
    intro = Div(text=(
        f"<h2 style='margin:4px 0;font-family:sans-serif'>{html.escape(heading)}</h2>"
        "<p style='margin:2px 0 6px 0;font-family:sans-serif;font-size:13px;color:#444'>"
        "Hover a point for its class, file and image; click a legend entry to hide or show a class; "
        "the tabs choose the components; wheel to zoom, drag to pan.</p>"))
    doc_title = heading if title else "PCA explorer"
    return file_html(column(intro, Tabs(tabs=panels, name="components")), resources=INLINE, title=doc_title)


def _scores_of_run(run: runs.RunLayout, spark: SparkSession, max_points: int, seed: int,
                   ) -> Tuple[ScoreSample, Optional[np.ndarray]]:
    """Collect a bounded sample of a run's ``pca/`` scores; read its explained variance from the manifest."""
    sample = collect_scores(runs.read_pca(run, spark), max_points, seed=seed)
    try:
        manifest = runs.read_manifest(run, spark)
        explained = np.asarray(manifest["pca"]["explained_variance"], dtype=np.float64)
    except Exception:  # noqa: BLE001 - the axis labels then show no percentage
        explained = None
    return sample, explained


def write_explorer(
    spark: SparkSession,
    run: Union[str, runs.RunLayout],
    uri: Optional[str] = None,
    *,
    scores: Optional[ScoreSample] = None,
    explained: Optional[Sequence[float]] = None,
    max_points: int = MAX_POINTS,
    seed: int = 0,
    thumbnail_px: int = THUMBNAIL_PX,
    components: Sequence[int] = _DEFAULT_COMPONENTS,
) -> str:
    """Write a run's explorer page: a bounded sample of its scores, thumbnails read for those images only.

    Parameters
    ----------
    spark : pyspark.sql.SparkSession
    run : str or RunLayout
        The run folder (local or URI). Without ``scores``, its ``pca/`` scores
        (``pca_features``, k ≥ 2) are sampled and the axis labels take the
        explained variance from its ``manifest.json``: no PCA is fitted.
    uri : str, optional
        Where to write; default ``<run>/explorer.html``.
    scores : ScoreSample, optional
        Scores already on the driver (e.g. ``Analysis.scores``), used instead of ``pca/``.
    explained : array_like, shape (d,), float, optional
        Explained-variance ratios (default: the manifest's, when ``scores`` is not given).
    max_points : int
        At most this many points, hence files read (thumbnails), see :data:`MAX_POINTS`.
    seed : int
        Sampling seed.
    thumbnail_px : int
        Thumbnail side in pixels.
    components : sequence of int
        As in :func:`explorer_html`.

    Returns
    -------
    str
        The page's location (absolute local path or URI), to open in a browser or pass to :func:`notebook_view`.

    Raises
    ------
    ParameterError
        No ``pca/`` in the run, scores with fewer than 2 components, bad bounds.
    ImportError
        Bokeh is not installed (checked before anything is read).
    """
    _require_bokeh()
    layout = run if isinstance(run, runs.RunLayout) else runs.layout(str(run))
    max_points = int(check_int("max_points", max_points, 1, example=MAX_POINTS))
    if scores is None:
        if not storage.exists(layout.pca, spark):
            raise ParameterError(f"run={layout.root!r} has no pca/ dataset. Fix: pass a run folder written by "
                                 "`python -m p8utils run` or notebook 01/02, or pass scores=Analysis.scores.")
        scores, from_manifest = _scores_of_run(layout, spark, max_points, seed)
        explained = from_manifest if explained is None else explained
    sample = subsample(scores, max_points, seed)
    thumbs = read_thumbnails(sample.paths, spark, size=thumbnail_px, max_files=max_points)
    page = explorer_html(sample, explained, thumbs, components=components, max_points=max_points, seed=seed)
    target = storage.spark_path(uri or storage.join(layout.root, EXPLORER_FILE))
    storage.write_bytes(target, page.encode("utf-8"), spark)
    return target


def notebook_view(uri: str, spark: Optional[SparkSession] = None, *, height: int = 820) -> Any:
    """Show a written explorer page inside a notebook (JupyterLab, Jupyter, VS Code), from any filesystem.

    The page is read on the driver and embedded in an ``<iframe srcdoc=...>``,
    so it needs no file server and works for a page on S3 too; its JavaScript
    runs in the iframe, apart from the notebook's own.

    Parameters
    ----------
    uri : str
        The page, e.g. ``Analysis.explorer`` or :func:`write_explorer`'s result
        (local path or Hadoop URI).
    spark : pyspark.sql.SparkSession, optional
        Needed for non-local URIs.
    height : int
        Height of the frame in pixels.

    Returns
    -------
    IPython.display.HTML
        Make it the last expression of a cell, or pass it to ``display``.
        (The notebook keeps the whole page, ~5 MB for 2,000 points, in its output.)
    """
    from IPython.display import HTML

    height = int(check_int("height", height, 100, example=820))
    page = storage.read_bytes(storage.spark_path(uri), spark).decode("utf-8")
    # in a <div>: IPython warns about a bare <iframe> (its IFrame class needs a URL, which S3 pages lack)
    return HTML(f'<div><iframe srcdoc="{html.escape(page, quote=True)}" title="PCA explorer" '
                f'style="width:100%;height:{height}px;border:1px solid #ddd"></iframe></div>')
