"""Tests of the project's synthetic images (scripts/fruit_renderer.py, scripts/make_sample.py, data_sample/,
and the offline weights' calibration images p8utils/data/calibration/)."""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import re
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from p8utils.errors import ParameterError

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
if str(SCRIPTS) not in sys.path:  # scripts/ is not a package: import the renderer the way make_sample.py does
    sys.path.insert(0, str(SCRIPTS))
sample = importlib.import_module("fruit_renderer")

DATA_SAMPLE = REPO / "data_sample"
DEFAULTS = {"n_per_class": 10, "seed": 0, "quality": 90}  # what data_sample/ was generated with
NAME_RE = re.compile(r"^r_\d+_100\.jpg$")


def _tree(root: Path) -> dict[str, bytes]:
    """Map 'class/file.jpg' -> bytes for every JPEG below root."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.glob("*/*.jpg"))}


def _pixels(path_or_image: Path | Image.Image) -> np.ndarray:
    img = path_or_image if isinstance(path_or_image, Image.Image) else Image.open(path_or_image)
    return np.asarray(img.convert("RGB"), dtype=np.float64)


def _fruit_mean(arr: np.ndarray) -> np.ndarray:
    """Mean RGB of the non-background pixels (distance from white > 60 in sum of channels)."""
    mask = (765.0 - arr.sum(axis=-1)) > 60.0
    return arr[mask].mean(axis=0)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fresh")
    sample.generate_sample(out, **DEFAULTS)
    return out


@pytest.fixture(scope="module")
def committed() -> Path:
    if not any(DATA_SAMPLE.glob("*/*.jpg")):
        pytest.fail("data_sample/ is missing or empty. Fix: python scripts/make_sample.py")
    return DATA_SAMPLE


# ---------------------------------------------------------------- API and determinism


def test_classes_are_fruits360_style_names() -> None:
    assert len(sample.CLASSES) >= 8
    assert len(set(sample.CLASSES)) == len(sample.CLASSES)
    assert any(" " in c for c in sample.CLASSES)
    for c in sample.CLASSES:
        assert c == c.strip() and "/" not in c
        assert all(word[0].isupper() or word[0].isdigit() for word in c.split(" "))


@pytest.mark.heavy  # renders the whole sample twice: seconds
def test_generation_is_deterministic(fresh: Path, tmp_path: Path) -> None:
    written = sample.generate_sample(tmp_path, **DEFAULTS)
    assert len(written) == len(sample.CLASSES) * DEFAULTS["n_per_class"]
    assert all(p.is_file() for p in written)
    first, second = _tree(fresh), _tree(tmp_path)
    assert sorted(first) == sorted(second)
    differing = [name for name in first if first[name] != second[name]]
    assert not differing, f"not byte-identical: {differing[:5]}"


def test_file_names_are_unique_fruits360_style() -> None:
    for n in (1, 7, 10, 360, 400):
        names = sample.sample_file_names(n)
        assert len(names) == n and len(set(names)) == n
        assert all(NAME_RE.match(name) for name in names)
    assert sample.sample_file_names(10)[:3] == ["r_0_100.jpg", "r_36_100.jpg", "r_72_100.jpg"]


@pytest.mark.heavy  # renders 32 images: seconds
def test_same_image_whatever_n_per_class_for_same_angle(tmp_path: Path) -> None:
    # image k of a class only depends on (seed, class, k) and its angle
    sample.generate_sample(tmp_path / "a", n_per_class=2, seed=3)
    sample.generate_sample(tmp_path / "b", n_per_class=2, seed=4)
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert sorted(a) == sorted(b)
    assert all(a[name] != b[name] for name in a), "another seed must give other images"


def test_draw_fruit_returns_rgb_image_of_requested_size() -> None:
    for i, cls in enumerate(sample.CLASSES):
        img = sample.draw_fruit(cls, np.random.default_rng(i), size=64)
        assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (64, 64)
        arr = np.asarray(img)
        assert arr.dtype == np.uint8
        assert arr[0].min() >= 250 and arr[-1].min() >= 250 and arr[:, 0].min() >= 250 and arr[:, -1].min() >= 250
        assert arr.min() < 200, f"{cls}: nothing drawn"
    again = sample.draw_fruit("Banana", np.random.default_rng(1), size=64, angle=30.0)
    assert np.array_equal(
        np.asarray(again), np.asarray(sample.draw_fruit("Banana", np.random.default_rng(1), 64, angle=30.0))
    )


def test_bad_parameters_name_the_parameter(tmp_path: Path) -> None:
    with pytest.raises(ParameterError, match="cls='Mango'"):
        sample.draw_fruit("Mango", np.random.default_rng(0))
    with pytest.raises(ParameterError, match="size=8"):
        sample.draw_fruit("Banana", np.random.default_rng(0), size=8)
    with pytest.raises(ParameterError, match="n_per_class=0"):
        sample.generate_sample(tmp_path, n_per_class=0)
    with pytest.raises(ParameterError, match="quality=100"):
        sample.generate_sample(tmp_path, quality=100)
    with pytest.raises(ParameterError, match="seed=-1"):
        sample.generate_sample(tmp_path, seed=-1)
    with pytest.raises(ParameterError, match="n=-1"):
        sample.calibration_images(-1)
    assert not any(tmp_path.iterdir()), "nothing may be written when a parameter is bad"


@pytest.mark.heavy  # renders ~60 images: seconds
def test_calibration_images_are_deterministic_and_cover_all_classes() -> None:
    n = len(sample.CLASSES) + 3
    first = sample.calibration_images(n, seed=7)
    second = sample.calibration_images(n, seed=7)
    assert len(first) == n and sample.calibration_images(0) == []
    for a, b in zip(first, second):
        assert a.mode == "RGB" and a.size == (100, 100)
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # image i only depends on (seed, i): a shorter list is a prefix
    prefix = sample.calibration_images(3, seed=7)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(prefix, first))
    other = sample.calibration_images(3, seed=8)
    assert not np.array_equal(np.asarray(other[0]), np.asarray(first[0]))
    # cycling through the classes: consecutive images have different dominant colours
    means = [_fruit_mean(_pixels(im)) for im in first[: len(sample.CLASSES)]]
    assert min(np.linalg.norm(a - b) for a, b in itertools.combinations(means, 2)) > 10.0
    assert len(sample.calibration_images()) == 32


# ---------------------------------------------------------------- the committed data_sample/


@pytest.mark.heavy  # renders the whole sample (fixture fresh): seconds
def test_committed_sample_matches_fresh_generation(committed: Path, fresh: Path) -> None:
    ours, theirs = _tree(committed), _tree(fresh)
    assert sorted(ours) == sorted(theirs), "file names differ. Fix: python scripts/make_sample.py"
    for name in sorted(ours):
        diff = np.abs(_pixels(committed / name) - _pixels(fresh / name)).mean()
        assert diff < 1.0, f"{name}: mean abs pixel difference {diff:.2f}. Fix: python scripts/make_sample.py"
    assert (committed / "README.md").is_file()


def test_committed_sample_layout_and_size(committed: Path) -> None:
    folders = sorted(p for p in committed.iterdir() if p.is_dir())
    assert [p.name for p in folders] == sorted(sample.CLASSES)
    assert len(folders) >= 6
    assert any(" " in p.name for p in folders), "class folders should have Fruits-360 names with spaces"
    for folder in folders:
        names = [p.name for p in folder.iterdir()]
        assert len(names) >= 10 and all(NAME_RE.match(n) for n in names), folder
    total = sum(p.stat().st_size for p in committed.rglob("*") if p.is_file())
    assert total <= 1_000_000, f"data_sample/ is {total} bytes"


def test_committed_images_are_100x100_rgb_jpeg_on_white(committed: Path) -> None:
    for path in sorted(committed.glob("*/*.jpg")):
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.mode == "RGB" and img.size == (100, 100), path
            assert "exif" not in img.info, path
            arr = np.asarray(img, dtype=np.float64)
        for corner in (arr[:5, :5], arr[:5, -5:], arr[-5:, :5], arr[-5:, -5:]):
            assert corner.min() >= 245, f"{path}: corner not white"
        assert 0.08 < ((765.0 - arr.sum(axis=-1)) > 60.0).mean() < 0.75, f"{path}: fruit too small or too big"


def test_classes_are_visually_distinct(committed: Path) -> None:
    means = {}
    for folder in sorted(p for p in committed.iterdir() if p.is_dir()):
        arrs = [_pixels(p) for p in sorted(folder.glob("*.jpg"))]
        means[folder.name] = _fruit_mean(np.stack(arrs))
    dists = {(a, b): float(np.linalg.norm(means[a] - means[b])) for a, b in itertools.combinations(means, 2)}
    far = [d > 25.0 for d in dists.values()]
    assert sum(far) >= 0.9 * len(far), sorted(dists.items(), key=lambda kv: kv[1])[:5]
    assert min(dists.values()) > 10.0, sorted(dists.items(), key=lambda kv: kv[1])[:3]


def test_images_vary_within_each_class(committed: Path) -> None:
    for folder in sorted(p for p in committed.iterdir() if p.is_dir()):
        arrs = [_pixels(p) for p in sorted(folder.glob("*.jpg"))]
        diffs = [np.abs(a - b).mean() for a, b in itertools.combinations(arrs, 2)]
        assert min(diffs) > 2.0, f"{folder.name}: two images are nearly identical"
        covers = [((765.0 - a.sum(axis=-1)) > 60.0).mean() for a in arrs]
        assert max(covers) - min(covers) > 0.02, f"{folder.name}: no variety of scale/pose"


# ---------------------------------------------------------------- scripts/make_sample.py


def _load_script():
    spec = importlib.util.spec_from_file_location("make_sample", REPO / "scripts" / "make_sample.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.mark.heavy  # renders 32 images: seconds
def test_make_sample_script_wipes_stale_images_and_writes_readme(tmp_path: Path) -> None:
    script = _load_script()
    out = tmp_path / "sample"
    stale = out / "Old Class" / "r_5_100.jpg"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    extra = out / "Banana" / "r_999_100.jpg"
    extra.parent.mkdir(parents=True)
    extra.write_bytes(b"old")
    assert script.main(["--out", str(out), "--per-class", "2", "--seed", "0"]) == 0
    assert not stale.exists() and not stale.parent.exists() and not extra.exists()
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("*/*.jpg")) == sorted(
        f"{c}/{n}" for c in sample.CLASSES for n in ("r_0_100.jpg", "r_180_100.jpg")
    )
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "synthetic" in readme.lower() and "licence" in readme.lower()
    assert "make_sample.py" in readme and "--per-class 2" in readme and "--seed 0" in readme
    assert all(c in readme for c in sample.CLASSES)
    # running it again on its own output is fine
    assert script.main(["--out", str(out), "--per-class", "2"]) == 0


def test_make_sample_script_refuses_foreign_content(tmp_path: Path) -> None:
    script = _load_script()
    out = tmp_path / "photos"
    keep = out / "Apple" / "notes.txt"
    keep.parent.mkdir(parents=True)
    keep.write_text("not an image")
    photo = out / "Apple" / "mine.jpg"
    photo.write_bytes(b"precious")
    with pytest.raises(SystemExit, match="Refusing"):
        script.main(["--out", str(out), "--per-class", "1"])
    assert keep.exists() and photo.read_bytes() == b"precious"
    with pytest.raises(SystemExit):
        script.main(["--out", str(tmp_path / "x"), "--per-class", "0"])
    assert not (tmp_path / "x").exists()


def test_shipped_calibration_images_are_what_the_script_writes(tmp_path: Path) -> None:
    script = _load_script()
    folder = resources.files("p8utils") / "data" / "calibration"
    shipped = {e.name: _pixels(Image.open(folder / e.name)) for e in folder.iterdir() if e.name.endswith(".png")}
    assert sorted(shipped) == [f"calibration_{i:02d}.png" for i in range(script.CALIBRATION_COUNT)]
    out = tmp_path / "calibration"
    assert script.main(["--calibration", "--out", str(out)]) == 0
    written = {p.name: _pixels(p) for p in sorted(out.iterdir())}
    assert sorted(written) == sorted(shipped)
    differing = [name for name in shipped if not np.array_equal(written[name], shipped[name])]
    assert not differing, f"{differing} differ. Fix: python scripts/make_sample.py --calibration"
    # again on its own output: stale calibration images go; any other file makes it refuse
    assert [p.name for p in script.write_calibration(out, n=2)] == ["calibration_00.png", "calibration_01.png"]
    assert sorted(p.name for p in out.iterdir()) == ["calibration_00.png", "calibration_01.png"]
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="Refusing"):
        script.main(["--calibration", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["calibration_00.png", "calibration_01.png", "notes.txt"]


def test_readme_of_committed_sample(committed: Path) -> None:
    readme = (committed / "README.md").read_text(encoding="utf-8")
    assert "python scripts/make_sample.py --out data_sample --per-class 10 --seed 0 --quality 90" in readme
    assert "not photographs" in readme.lower() or "synthetic" in readme.lower()
