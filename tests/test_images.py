from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from p8utils.errors import ParameterError
from p8utils.images import (
    ERROR_REASONS,
    check_input,
    decode_image,
    extension_glob,
    list_images,
    load_images,
)

from .conftest import image_files


def _encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _fruit_rgb(size=(100, 100)) -> Image.Image:
    arr = np.full((size[1], size[0], 3), 255, np.uint8)
    arr[20:80, 30:70] = (200, 30, 40)
    return Image.fromarray(arr)


# --------------------------------------------------------------------------- listing


def test_extension_glob_is_case_insensitive():
    assert extension_glob(["jpg"]) == "*.[jJ][pP][gG]"
    assert extension_glob(["jpg", ".JPEG"]) == "*.{[jJ][pP][gG],[jJ][pP][eE][gG]}"
    with pytest.raises(ParameterError, match="extensions"):
        extension_glob(["j*g"])


def test_load_images_one_row_per_file_with_folder_labels(spark, sample_dir):
    df = load_images(spark, str(sample_dir))
    assert df.columns == ["path", "label", "content", "modificationTime", "length"]
    rows = df.select("path", "label", "length").collect()
    files = image_files(sample_dir)
    assert sorted(r.path.replace("file:", "") for r in rows) == sorted(str(p) for p in files)
    for r in rows:
        assert r.label == r.path.rsplit("/", 2)[-2]
    assert {r.label for r in rows} == {p.parent.name for p in files}
    assert any(" " in r.label for r in rows), "class names with spaces must survive"


@pytest.mark.parametrize("reader", ["python", "spark"])
def test_labels_survive_spaces_unicode_percent_hash(spark, tmp_path, sample_dir, reader):
    src = image_files(sample_dir)[0]
    names = ["Apple Red 1", "Pomme rôtie", "a%20b", "Kiwi #2", "草莓"]
    for name in names:
        (tmp_path / name).mkdir()
        shutil.copy(src, tmp_path / name / "r_0 x%#é.JPG")
        (tmp_path / name / "zero %20#.jpg").write_bytes(b"")
        (tmp_path / name / "notes.txt").write_text("not an image extension")
    listing = list_images(spark, str(tmp_path), reader=reader)
    rows = listing.frame.select("path", "label", "length", "error").collect()
    assert listing.n_files == len(rows) == 2 * len(names) and listing.reader == reader
    assert sorted(r.label for r in rows) == sorted(names * 2), "one row per file, zero-byte ones included"
    assert sorted(r.path for r in rows) == sorted(f"file:{tmp_path}/{n}/{f}" for n in names
                                                   for f in ("r_0 x%#é.JPG", "zero %20#.jpg"))
    assert sorted(r.length for r in rows)[: len(names)] == [0] * len(names)
    assert sorted(r.error or "" for r in rows) == [""] * len(names) + ["empty"] * len(names)


def test_check_input_errors(tmp_path):
    with pytest.raises(ParameterError, match="does not exist.*Fix"):
        check_input(str(tmp_path / "nope"))
    (tmp_path / "empty class").mkdir()
    (tmp_path / "empty class" / "notes.txt").write_text("x")
    with pytest.raises(ParameterError, match="holds no image"):
        check_input(str(tmp_path))
    f = tmp_path / "file.jpg"
    f.write_bytes(b"x")
    with pytest.raises(ParameterError, match="is a file"):
        check_input(str(f))
    check_input(str(tmp_path))  # the .jpg at the top level counts


# --------------------------------------------------------------------------- decoding


def test_decode_rgb_jpeg_resizes_bicubic():
    img = _fruit_rgb()
    data = _encode(img, quality=95)
    arr, err = decode_image(data, (224, 224))
    assert err is None and arr.dtype == np.uint8 and arr.shape == (224, 224, 3)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.BICUBIC))
    np.testing.assert_array_equal(arr, expected)


@pytest.mark.parametrize(
    "mode,fmt",
    [("L", "JPEG"), ("CMYK", "JPEG"), ("P", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"), ("I;16", "PNG"), ("1", "PNG")],
)
def test_decode_any_mode_to_rgb(mode, fmt):
    img = _fruit_rgb()
    if mode == "I;16":
        img = Image.fromarray((np.asarray(img.convert("L"), np.uint16) * 257).astype(np.uint16))
        assert img.mode.startswith("I;16")
    else:
        img = img.convert(mode)
    arr, err = decode_image(_encode(img, fmt), (64, 48))
    assert err is None, err
    assert arr.shape == (48, 64, 3) and arr.dtype == np.uint8
    assert arr[0, 0].min() > 200, "white background stays white"
    if mode in ("CMYK", "P", "RGBA"):
        assert arr[24, 32, 0] > 150 and arr[24, 32, 1] < 100, "red fruit stays red"


def test_decode_transparency_goes_on_white():
    rgba = np.zeros((10, 10, 4), np.uint8)  # fully transparent black
    arr, err = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"), (10, 10))
    assert err is None and arr.min() == 255


def test_decode_exif_orientation_applied():
    img = Image.new("RGB", (40, 20), "white")
    img.paste((255, 0, 0), (0, 0, 20, 20))  # red left half
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    arr, err = decode_image(_encode(img, "JPEG", exif=exif, quality=95), (20, 40))
    assert err is None
    assert arr[5, 10, 0] > 200 and arr[5, 10, 1] < 80, "top is red after rotation"
    assert arr[35, 10].min() > 200, "bottom is white after rotation"


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty"),
        (None, "empty"),
        (b"hello, I am a text file\n", "not_an_image"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 12\n", "lfs_pointer"),
    ],
)
def test_decode_bad_bytes(data, reason):
    assert decode_image(data) == (None, reason)


def test_decode_truncated_jpeg():
    data = _encode(_fruit_rgb((300, 300)), quality=95)
    assert decode_image(data[: len(data) // 2]) == (None, "truncated")


def test_decode_refuses_declared_huge_image_without_decoding():
    data = _encode(Image.new("L", (1000, 1000)), "PNG")
    arr, err = decode_image(data, max_pixels=999_999)
    assert (arr, err) == (None, "too_large")


def test_error_reasons_vocabulary():
    assert set(ERROR_REASONS) >= {"empty", "not_an_image", "truncated", "too_large", "lfs_pointer", "decode_error"}


def test_load_images_fails_fast_with_the_fix(spark, tmp_path):
    with pytest.raises(ParameterError, match="does not exist.*Fix"):
        load_images(spark, str(tmp_path / "missing"))
    (tmp_path / "Class A").mkdir()
    with pytest.raises(ParameterError, match="holds no image"):
        load_images(spark, str(tmp_path))


def test_a_file_list_is_an_input_too(spark, tmp_path, sample_dir):
    """An input manifest (CSV): one row per distinct listed image, labels from the list, paths relative to it."""
    files = image_files(sample_dir)[:4]
    rows = ["path,label"] + [f"{f},from list" for f in files[:2]]
    rows += [f"{files[2]},", f"{files[2]},", "gone/missing.jpg,Ghost", "notes.txt,x", "_hidden.jpg,Hidden", ""]
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "_hidden.jpg").write_bytes(files[3].read_bytes())
    (tmp_path / "lists" / "gone").mkdir()
    (tmp_path / "lists" / "inputs.csv").write_text("\n".join(rows) + "\n")
    listing = list_images(spark, str(tmp_path / "lists" / "inputs.csv"))
    got = {r.path: r for r in listing.frame.collect()}
    assert listing.n_files == 5 and listing.reader == "python", "duplicates collapsed, non-images left out"
    assert got[f"file:{tmp_path}/lists/_hidden.jpg"].label == "Hidden", "a listed '_' name is not skipped"
    assert {got[f"file:{f}"].label for f in files[:2]} == {"from list"}
    assert got[f"file:{files[2]}"].label == files[2].parent.name, "no label: the parent folder's name"
    assert got[f"file:{tmp_path}/lists/gone/missing.jpg"].label == "Ghost"
    with pytest.raises(ParameterError, match="no such file list"):
        list_images(spark, str(tmp_path / "nope.csv"))
    (tmp_path / "bad.csv").write_text("file\na.jpg\n")
    with pytest.raises(ParameterError, match="no 'path' column"):
        list_images(spark, str(tmp_path / "bad.csv"))
