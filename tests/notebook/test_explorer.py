"""Tests of p8utils.notebook.explorer: the self-contained Bokeh page, its bounds, and a real headless browser.

The browser test needs Chromium and its WebDriver from Debian's packages (``make test`` installs them as root):
``apt-get install -y chromium chromium-driver``; without them it is skipped with that message.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bokeh")
from PIL import Image  # noqa: E402

from p8utils.errors import ParameterError  # noqa: E402
from p8utils.notebook import explorer  # noqa: E402
from p8utils.notebook.samples import ScoreSample  # noqa: E402

from ..conftest import image_files  # noqa: E402
from .conftest import png_size  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL = "apt-get install -y chromium chromium-driver"


def _sample(n: int = 60, n_classes: int = 4, k: int = 3, seed: int = 0, n_total: int | None = None) -> ScoreSample:
    rng = np.random.default_rng(seed)
    labels = [f"class {i % n_classes}" for i in range(n)]
    scores = rng.normal(size=(n, k)) + np.array([[3.0 * (i % n_classes)] * k for i in range(n)])
    paths = [f"file:/data/{labels[i].replace(' ', '_')}/img_{i:04d}.jpg" for i in range(n)]
    return ScoreSample(scores=scores, labels=labels, paths=paths, n_total=n if n_total is None else n_total)


def _jpeg(colour=(200, 30, 30), size=(100, 100)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def _tags(page: str) -> list[tuple[str, dict]]:
    """(tag, attributes) of every start tag of the HTML (script and style content is not parsed as tags)."""
    from html.parser import HTMLParser

    found: list[tuple[str, dict]] = []

    class _Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, dict(attrs)))

    _Parser().feed(page)
    return found


def _doc_json(page: str) -> dict:
    """The Bokeh document embedded in the page (``<script type="application/json">``)."""
    blocks = re.findall(r'<script type="application/json" id="[^"]+">\s*(.*?)\s*</script>', page, re.S)
    assert len(blocks) == 1
    docs = json.loads(html.unescape(blocks[0]))  # Bokeh HTML-escapes the JSON in the page
    assert len(docs) == 1
    return next(iter(docs.values()))


def _objects(node, name: str) -> list[dict]:
    """Every serialised Bokeh model called ``name`` below ``node``."""
    found = []
    if isinstance(node, dict):
        if node.get("type") == "object" and node.get("name") == name:
            found.append(node)
        for value in node.values():
            found += _objects(value, name)
    elif isinstance(node, list):
        for value in node:
            found += _objects(value, name)
    return found


def _renderers_by_plot(doc: dict) -> dict[str, list[str]]:
    """{figure name: names of its glyph renderers} (the classes drawn in each tab)."""
    return {fig["attributes"]["name"]: [r["attributes"]["name"] for r in _objects(fig["attributes"]["renderers"],
                                                                                   "GlyphRenderer")]
            for fig in _objects(doc, "Figure")}


def _points(doc: dict) -> list[dict]:
    """The data of every ColumnDataSource (one per class), as lists."""
    out = []
    for cds in _objects(doc, "ColumnDataSource"):
        data = cds["attributes"]["data"]
        entries = data["entries"] if isinstance(data, dict) and "entries" in data else data
        out.append(dict(entries))
    return out


# --------------------------------------------------------------------------
# the page, without a browser
# --------------------------------------------------------------------------


def test_page_is_self_contained_and_has_one_renderer_per_class_in_each_tab():
    sample = _sample(n=60, n_classes=4)
    thumbs = {p: explorer.make_thumbnail(_jpeg()) for p in sample.paths}
    page = explorer.explorer_html(sample, [0.4, 0.2, 0.1, 0.05], thumbs)
    assert page.lstrip().lower().startswith("<!doctype html>")
    # all JavaScript/CSS inline: no tag of the page loads anything (from the network or elsewhere)
    tags = _tags(page)
    assert [t for t, attrs in tags if "src" in attrs or "href" in attrs] == []
    assert [t for t, _ in tags].count("script") >= 2 and "style" in [t for t, _ in tags]
    styles = re.findall(r"<style[^>]*>(.*?)</style>", page, re.S)
    assert not [u for css in styles for u in re.findall(r"url\(\s*['\"]?(?:https?:)?//", css)]
    assert "Bokeh.embed.embed_items" in page and len(page) > 500_000  # Bokeh's JS itself is in the file
    doc = _doc_json(page)
    by_plot = _renderers_by_plot(doc)
    assert list(by_plot) == ["PC1-PC2", "PC1-PC3", "PC2-PC3"]
    for names in by_plot.values():
        assert names == ["class 0", "class 1", "class 2", "class 3"]
    tabs = [t["attributes"]["title"] for t in _objects(doc, "TabPanel")]
    assert tabs == ["PC1 – PC2", "PC1 – PC3", "PC2 – PC3"]
    legends = _objects(doc, "Legend")
    assert len(legends) == 3 and {lg["attributes"]["click_policy"] for lg in legends} == {"hide"}
    labels = [it["attributes"]["label"]["value"] for it in _objects(legends[0], "LegendItem")]
    assert labels == ["class 0 (15)", "class 1 (15)", "class 2 (15)", "class 3 (15)"]
    # axis labels carry the explained variance
    axis_labels = {a["attributes"].get("axis_label") for a in _objects(doc, "LinearAxis")}
    assert {"PC1 (40.0 % var.)", "PC2 (20.0 % var.)", "PC3 (10.0 % var.)"} <= axis_labels


def test_hover_shows_label_file_name_and_thumbnail():
    sample = _sample(n=12, n_classes=2)
    good = explorer.make_thumbnail(_jpeg())
    thumbs = {p: good for p in sample.paths[:-1]}  # the last image has no thumbnail
    doc = _doc_json(explorer.explorer_html(sample, None, thumbs))
    hovers = _objects(doc, "HoverTool")
    assert len(hovers) == 3
    template = hovers[0]["attributes"]["tooltips"]
    assert '<img src="@thumb"' in template and "@label" in template and "@name" in template
    assert "@pc1" in template and "@pc2" in template
    assert "@pc3" in hovers[1]["attributes"]["tooltips"]
    points = _points(doc)
    names = sorted(n for p in points for n in p["name"])
    assert names == sorted(p.rsplit("/", 1)[-1] for p in sample.paths)
    uris = [u for p in points for u in p["thumb"]]
    assert sum(u.startswith("data:image/jpeg;base64,") for u in uris) == 11
    assert sum(u.startswith("data:image/svg+xml;base64,") for u in uris) == 1  # "no image" placeholder
    jpeg = next(u for u in uris if u.startswith("data:image/jpeg"))
    assert base64.b64decode(jpeg.split(",", 1)[1]) == good


def test_point_bound_is_a_seeded_uniform_sample():
    sample = _sample(n=2500, n_classes=5, n_total=90000)
    doc = _doc_json(explorer.explorer_html(sample, max_points=300, seed=1, components=(0, 1)))
    points = _points(doc)
    assert sum(len(p["label"]) for p in points) == 300
    assert len(_objects(doc, "Figure")) == 1  # components=(0, 1): one tab
    # subsample: deterministic, rows kept in their order, n_total kept, every class still there
    a, b = explorer.subsample(sample, 300, seed=1), explorer.subsample(sample, 300, seed=1)
    order = [sample.paths.index(p) for p in a.paths]
    assert a.paths == b.paths and order == sorted(order) and a.n == 300 and a.n_total == 90000
    assert a.paths != explorer.subsample(sample, 300, seed=2).paths
    assert set(a.labels) == set(sample.labels)
    assert np.array_equal(a.scores, sample.scores[order])
    assert explorer.subsample(sample, 5000) is sample
    assert "300 of 90000 images" in explorer.explorer_html(sample, max_points=300, components=(0, 1))


def test_components_two_scores_labels_and_markup_in_names():
    sample = _sample(n=10, n_classes=2, k=2)
    sample = ScoreSample(sample.scores, ["<b>bold</b>", "Apple $1"] * 5, sample.paths, 10)
    page = explorer.explorer_html(sample, title="Run <x>")
    doc = _doc_json(page)
    assert list(_renderers_by_plot(doc)) == ["PC1-PC2"]  # k = 2: PC3 dropped
    assert "Run &lt;x&gt;" in page and "<title>Run &lt;x&gt;</title>" in page
    assert sorted(_renderers_by_plot(doc)["PC1-PC2"]) == ["<b>bold</b>", "Apple $1"]
    doc4 = _doc_json(explorer.explorer_html(_sample(n=10, k=4), components=(0, 1, 3)))
    assert list(_renderers_by_plot(doc4)) == ["PC1-PC2", "PC1-PC4", "PC2-PC4"]


@pytest.mark.parametrize("sample, kw, match", [
    (_sample(k=1), {}, "2 components"),
    (_sample(k=3), {"components": (0,)}, "at least two"),
    (_sample(k=3), {"components": (0, 7)}, "components"),
    (_sample(k=3), {"max_points": 0}, "max_points"),
])
def test_explorer_html_rejects_bad_input(sample, kw, match):
    with pytest.raises(ParameterError, match=match):
        explorer.explorer_html(sample, **kw)


def test_thumbnails_small_jpegs_bounded_reads_and_bad_files(tmp_path):
    thumb = explorer.make_thumbnail(_jpeg(size=(400, 300)))
    with Image.open(io.BytesIO(thumb)) as img:
        assert img.format == "JPEG" and img.size == (64, 64)
    assert len(thumb) < 3000
    assert explorer.make_thumbnail(b"not an image") is None and explorer.make_thumbnail(None) is None
    with pytest.raises(ParameterError, match="size"):
        explorer.make_thumbnail(_jpeg(), size=2)
    files = []
    for i in range(5):
        f = tmp_path / f"img_{i}.jpg"
        f.write_bytes(_jpeg((40 * i, 100, 100)))
        files.append(f"file:{f}")
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    paths = files + [f"file:{tmp_path / 'bad.jpg'}", f"file:{tmp_path / 'missing.jpg'}"]
    got = explorer.read_thumbnails(paths, size=32)
    assert list(got) == paths
    assert all(got[p] is not None for p in files) and got[paths[-2]] is None and got[paths[-1]] is None
    with Image.open(io.BytesIO(got[files[0]])) as img:
        assert img.size == (32, 32)
    assert list(explorer.read_thumbnails(paths + paths, max_files=3)) == paths[:3]  # bounded, deduplicated
    assert explorer.read_thumbnails([]) == {}
    with pytest.raises(ParameterError, match="max_files"):
        explorer.read_thumbnails(paths, max_files=0)


@pytest.mark.heavy  # builds a page of 2,000 points: seconds of CPU
def test_page_of_2000_real_thumbnails_stays_a_few_mb(sample_dir):
    photos = image_files(sample_dir)
    thumbs_by_file = [explorer.make_thumbnail(p.read_bytes()) for p in photos]
    sample = _sample(n=2600, n_classes=8, n_total=2600)
    thumbs = {p: thumbs_by_file[i % len(thumbs_by_file)] for i, p in enumerate(sample.paths)}
    page = explorer.explorer_html(sample, thumbnails=thumbs)
    assert sum(len(p["label"]) for p in _points(_doc_json(page))) == explorer.MAX_POINTS
    size_mb = len(page.encode("utf-8")) / 1e6
    assert 2.0 < size_mb < 8.0, size_mb


def test_write_explorer_of_a_run(spark, sample_run, sample_dir, tmp_path):
    out = explorer.write_explorer(spark, sample_run.output)
    assert out == str(Path(sample_run.output) / "explorer.html")
    doc = _doc_json(Path(out).read_text(encoding="utf-8"))
    by_plot = _renderers_by_plot(doc)
    n_classes = len({p.parent.name for p in image_files(sample_dir)})
    assert all(len(names) == n_classes for names in by_plot.values())
    uris = [u for p in _points(doc) for u in p["thumb"]]
    assert uris and all(u.startswith("data:image/jpeg;base64,") for u in uris)  # every photo was read
    # bounded: max_points files read at most
    small = explorer.write_explorer(spark, sample_run.output, str(tmp_path / "small.html"), max_points=10)
    assert sum(len(p["label"]) for p in _points(_doc_json(Path(small).read_text(encoding="utf-8")))) == 10
    with pytest.raises(ParameterError, match="pca/"):
        explorer.write_explorer(spark, str(tmp_path / "no_run"))


# --------------------------------------------------------------------------
# a real headless browser
# --------------------------------------------------------------------------


def _browser():
    """Headless Chromium through Selenium and Debian's chromedriver; skip with the install line if missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install selenium "
                                    "(the dev extra)")
    from selenium.webdriver.chrome.service import Service

    chromium = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    driver = CHROMEDRIVER if Path(CHROMEDRIVER).exists() else shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip(f"Chromium and its WebDriver are not installed. Fix (Debian/Ubuntu, as root): {INSTALL}")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars", "--window-size=1300,900", f"--user-data-dir={tempfile.mkdtemp()}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=opts)


_PC1_PC2_JS = """
const f = [...Bokeh.documents[0]._all_models.values()].find(m => m.type === 'Figure' && m.name === 'PC1-PC2');
"""

_ALL_ELEMENTS_JS = """
function all(root, out) {
  for (const el of root.querySelectorAll('*')) { out.push(el); if (el.shadowRoot) all(el.shadowRoot, out); }
  return out;
}
"""


_DRAWN_JS = """
    if (!(window.Bokeh && Bokeh.documents && Bokeh.documents.length)) return false;
    const figs = [...Bokeh.documents[0]._all_models.values()].filter(m => m.type === 'Figure');
    const view = figs.length ? Bokeh.index.find_one(figs[0].renderers[0]) : null;
    return !!(view && view.glyph && view.glyph.sx && view.glyph.sx.length);
"""


def _wait_until_drawn(driver, timeout: float = 60.0) -> None:
    """Wait until Bokeh has built the page and computed the first tab's screen coordinates."""
    deadline = time.monotonic() + timeout
    while not driver.execute_script(_DRAWN_JS):
        assert time.monotonic() < deadline, f"the Bokeh page was not drawn within {timeout:.0f} s"
        time.sleep(0.1)


@pytest.mark.heavy  # starts Chromium: seconds of CPU
def test_explorer_in_headless_chromium(sample_dir, tmp_path):
    photos = image_files(sample_dir)[:40]
    classes = sorted({p.parent.name for p in photos})
    rng = np.random.default_rng(0)
    labels = [p.parent.name for p in photos]
    scores = rng.normal(size=(len(photos), 3)) + np.array([[2.0 * classes.index(c)] * 3 for c in labels])
    sample = ScoreSample(scores, labels, [f"file:{p}" for p in photos], len(photos))
    thumbs = explorer.read_thumbnails(sample.paths)
    page = tmp_path / "explorer.html"
    page.write_text(explorer.explorer_html(sample, [0.3, 0.2, 0.1], thumbs), encoding="utf-8")

    from selenium.webdriver.common.action_chains import ActionChains

    started = time.monotonic()
    driver = _browser()
    try:
        driver.get(page.as_uri())
        _wait_until_drawn(driver)

        # one glyph renderer per class in each tab, read from the live Bokeh model graph
        counts = driver.execute_script("""
            const models = [...Bokeh.documents[0]._all_models.values()];
            return models.filter(m => m.type === 'Figure')
                         .map(f => [f.name, f.renderers.filter(r => r.type === 'GlyphRenderer').map(r => r.name)]);
        """)
        assert dict(counts) == {name: classes for name in ("PC1-PC2", "PC1-PC3", "PC2-PC3")}

        # hover a point of the first class: the tooltip shows its label, file name and decoded thumbnail
        point = driver.execute_script(_PC1_PC2_JS + """
            const r = f.renderers[0];
            const view = Bokeh.index.find_one(r);
            const box = view.plot_view.canvas_view.el.getBoundingClientRect();
            return [box.x + view.glyph.sx[0], box.y + view.glyph.sy[0], r.data_source.data.name[0]];
        """)
        ActionChains(driver).move_by_offset(int(point[0]), int(point[1])).perform()
        tooltip = None
        deadline = time.monotonic() + 10
        while tooltip is None and time.monotonic() < deadline:
            tooltip = driver.execute_script(_ALL_ELEMENTS_JS + """
                const tips = all(document, []).filter(e => e.classList.contains('bk-tooltip-content')
                                                           && e.textContent.trim());
                if (!tips.length) return null;
                const img = all(tips[0], []).find(e => e.tagName === 'IMG');
                return [tips[0].textContent, img ? img.naturalWidth : -1, img ? img.src.slice(0, 23) : ''];
            """)
            time.sleep(0.1)
        assert tooltip is not None, "no tooltip on hover"
        text, img_width, img_src = tooltip
        assert classes[0] in text and point[2] in text
        assert img_width == 64 and img_src == "data:image/jpeg;base64,"
        driver.save_screenshot(str(tmp_path / "hover.png"))

        # click the legend entry of the first class: its renderer (only) is hidden, a second click shows it
        legend_js = _ALL_ELEMENTS_JS + _PC1_PC2_JS + """
            const legend = Bokeh.index.find_one(f.center.concat(f.right, f.below).find(m => m.type === 'Legend'));
            return all(legend.el.shadowRoot || legend.el, []).filter(e => e.classList.contains('bk-item'));
        """
        items = driver.execute_script(legend_js)
        assert len(items) == len(classes)  # the visible tab's legend
        assert items[0].text.startswith(classes[0])
        visible_js = _PC1_PC2_JS + """
            return f.renderers.map(r => r.visible);
        """
        ActionChains(driver).move_to_element(items[0]).click().perform()
        time.sleep(0.3)
        assert driver.execute_script(visible_js) == [False] + [True] * (len(classes) - 1)
        ActionChains(driver).move_to_element(driver.execute_script(legend_js)[0]).click().perform()  # redrawn
        time.sleep(0.3)
        assert driver.execute_script(visible_js) == [True] * len(classes)

        # no console errors, no request leaving the file (self-contained)
        logs = driver.get_log("browser")
        assert [e for e in logs if e["level"] == "SEVERE"] == []
        urls = set()
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                urls.add(message["params"]["request"]["url"])
        assert page.as_uri() in urls
        assert not [u for u in urls if u.startswith(("http:", "https:", "ws:", "wss:"))]

        shot = tmp_path / "explorer.png"
        driver.save_screenshot(str(shot))

        # the notebook view: the same page inside an <iframe srcdoc> (what a JupyterLab cell output holds)
        wrapper = tmp_path / "notebook_output.html"
        wrapper.write_text(explorer.notebook_view(str(page)).data, encoding="utf-8")
        driver.get(wrapper.as_uri())
        driver.switch_to.frame(driver.find_element("css selector", "iframe"))
        _wait_until_drawn(driver)
        assert len(driver.execute_script(legend_js)) == len(classes)
        driver.switch_to.default_content()
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.quit()
    width, height = png_size(shot.read_bytes())
    assert width >= 800 and height >= 600
    with Image.open(shot) as img:
        arr = np.asarray(img.convert("RGB"))
    colours = np.unique(arr.reshape(-1, 3), axis=0)
    assert len(colours) > 50 and arr.std() > 10  # points, legend, text: not a blank page
    print(f"browser test: {time.monotonic() - started:.1f} s")


def test_notebook_view_embeds_the_page_in_an_iframe(tmp_path, recwarn):
    page = tmp_path / "explorer.html"
    page.write_text('<!DOCTYPE html><html><body><p class="x">"a" & <b>b</b></p></body></html>', encoding="utf-8")
    view = explorer.notebook_view(str(page), height=500)
    assert view.data.startswith('<div><iframe srcdoc="&lt;!DOCTYPE html&gt;')
    assert "&quot;a&quot; &amp; &lt;b&gt;" in view.data and "height:500px" in view.data
    assert html.unescape(re.search(r'srcdoc="([^"]*)"', view.data).group(1)) == page.read_text(encoding="utf-8")
    assert not [w for w in recwarn if "IFrame" in str(w.message)]
