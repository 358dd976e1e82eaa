"""Bad input, atomic/idempotent/incremental runs, task retries (issue: reliability).

Every bad file is generated here; nothing large is committed.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from p8utils import pipeline
from p8utils.errors import ParameterError
from p8utils.featurize import featurize_bytes

from .conftest import ROOT, image_files
from .spark_cluster import children, cmdline, descendants

EXTS = ("jpg", "jpeg", "png")


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header declares ``width × height`` pixels."""
    data = bytearray(_png(Image.new("L", (1, 1), 255)))
    ihdr = 8 + 4  # signature + chunk length
    data[ihdr + 4: ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17: ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr: ihdr + 17])) & 0xFFFFFFFF)
    return bytes(data)


def _fruit(size=(100, 100), colour=(220, 40, 40)) -> Image.Image:
    img = Image.new("RGB", size, "white")
    w, h = size
    arr = np.asarray(img).copy()
    arr[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = colour
    return Image.fromarray(arr)


def _photo(size=(4000, 3000)) -> Image.Image:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.BILINEAR)


# name -> (bytes, expected error or None)
def _bad_cases() -> dict[str, tuple[bytes, str | None]]:
    good = _jpeg(_fruit())
    exif = Image.Exif()
    exif[0x0112] = 6
    lfs = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 4711\n"
    rgba = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    rgba.paste((10, 200, 10, 255), (30, 30, 70, 70))
    gif = io.BytesIO()
    _fruit().convert("P", palette=Image.ADAPTIVE).save(gif, format="GIF")
    png16 = Image.fromarray((np.asarray(_fruit().convert("L"), np.uint16) * 257).astype(np.uint16))
    return {
        "Bad Stuff/zero bytes.jpg": (b"", "empty"),
        "Bad Stuff/truncated.jpg": (_jpeg(_photo((400, 300)))[:3000], "truncated"),
        "Bad Stuff/text.jpg": (b"this is a text file, not a photo\n" * 3, "not_an_image"),
        "Bad Stuff/lfs pointer.jpg": (lfs, "lfs_pointer"),
        "Bad Stuff/bomb.png": (_png_bomb(), "too_large"),
        "Odd Ones/alpha png named.jpg": (_png(rgba), None),
        "Odd Ones/grey.jpg": (_jpeg(_fruit().convert("L")), None),
        "Odd Ones/cmyk.jpg": (_jpeg(_fruit().convert("CMYK")), None),
        "Odd Ones/sixteen bit.png": (_png(png16), None),
        "Odd Ones/palette gif named.jpg": (gif.getvalue(), None),
        "Odd Ones/big photo 4000x3000.jpg": (_jpeg(_photo()), None),
        "Odd Ones/one pixel.jpg": (_jpeg(Image.new("RGB", (1, 1), (200, 0, 0))), None),
        "Odd Ones/37x1000.jpg": (_jpeg(_fruit((37, 1000))), None),
        "Odd Ones/exif rotated.jpg": (_jpeg(_fruit((60, 100)), exif=exif), None),
        "Odd Ones/UPPER.JPG": (good, None),
        "Odd Ones/other.jpeg": (good, None),
        "Odd Ones/Mixed.JpEg": (good, None),
        "Pomme rôtie 100% #1/r_0 é%#.jpg": (good, None),
    }


@pytest.fixture(scope="module")
def messy(tmp_path_factory, sample_dir):
    """A folder with every kind of bad/odd file plus good sample images."""
    root = tmp_path_factory.mktemp("messy") / "in"
    for rel, (data, _) in _bad_cases().items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "Empty Class").mkdir()
    good = image_files(sample_dir)[::8]
    for f in good:
        (root / f.parent.name).mkdir(exist_ok=True)
        shutil.copy(f, root / f.parent.name / f.name)
    return root, good


def _table(path) -> pd.DataFrame:
    df = pd.read_parquet(path)
    df["name"] = [p.split("/in/", 1)[-1] for p in df.path]
    return df.set_index("name")


def test_every_bad_input_survives_and_is_reported(spark, messy, sample_dir, tmp_path):
    root, good = messy
    res = pipeline.run(str(root), str(tmp_path / "out"), weights="offline", k=3, extensions=EXTS, spark=spark)
    table = _table(res.features_path)
    cases = _bad_cases()
    expected_names = set(cases) | {f"{f.parent.name}/{f.name}" for f in good}
    assert table.index.is_unique and set(table.index) == expected_names, "exactly one row per file"
    for name, (_, reason) in cases.items():
        row = table.loc[name]
        assert row.error == reason, name
        if reason is None:
            assert len(row.features) == 1280 and np.isfinite(row.features).all(), name
        else:
            assert row.features is None, name
    c = res.manifest["counts"]
    assert c["failed_by_reason"] == {"empty": 1, "truncated": 1, "not_an_image": 1, "lfs_pointer": 1,
                                     "too_large": 1}
    assert c["total"] == len(expected_names) and c["ok"] == c["total"] - 5
    assert table.loc["Pomme rôtie 100% #1/r_0 é%#.jpg"].label == "Pomme rôtie 100% #1"

    # good images get exactly the features of a clean run of them alone
    clean_dir = tmp_path / "clean" / "in"
    for f in good:
        (clean_dir / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, clean_dir / f.parent.name / f.name)
    clean = _table(pipeline.run(str(clean_dir), str(tmp_path / "clean_out"), weights="offline", k=3,
                                spark=spark).features_path)
    for name in clean.index:
        assert np.array_equal(table.loc[name].features, clean.loc[name].features), name


def test_default_extensions_are_jpg_and_jpeg_any_case(spark, messy, tmp_path):
    root, good = messy
    res = pipeline.run(str(root), str(tmp_path / "o"), weights="offline", k=2, spark=spark)
    names = set(_table(res.features_path).index)
    assert "Odd Ones/UPPER.JPG" in names and "Odd Ones/Mixed.JpEg" in names
    assert not any(n.endswith(".png") for n in names)


def test_decoding_memory_is_bounded_on_bomb_and_big_photos(tmp_path):
    """Peak RSS of a process decoding a 4000×3000 JPEG and a declared 10^10-pixel PNG."""
    (tmp_path / "big.jpg").write_bytes(_jpeg(_photo()))
    (tmp_path / "bomb.png").write_bytes(_png_bomb())
    code = f"""
import resource, sys
from p8utils.images import decode_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for name in ("big.jpg", "bomb.png", "big.jpg"):
    arr, err = decode_image(open({str(tmp_path)!r} + "/" + name, "rb").read())
    print(name, None if arr is None else arr.shape, err)
print("delta_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "big.jpg (224, 224, 3) None" in out and "bomb.png None too_large" in out
    delta_mb = int(out.split("delta_kb")[1]) / 1024
    # A full decode of the photo alone is 36 MB; the bomb would be 30 GB.
    assert delta_mb < 30, f"decoding grew RSS by {delta_mb:.0f} MB"


def test_no_images_and_missing_input_fail_fast(tmp_path):
    (tmp_path / "only text" / "Class").mkdir(parents=True)
    (tmp_path / "only text" / "Class" / "a.txt").write_text("x")
    with pytest.raises(ParameterError, match="holds no image"):
        pipeline.validate_params(str(tmp_path / "only text"), str(tmp_path / "o"), weights="offline")
    with pytest.raises(ParameterError, match="does not exist"):
        pipeline.validate_params(str(tmp_path / "nope"), str(tmp_path / "o"), weights="offline")


# --------------------------------------------------------------------------- runs that do not lose data


def _copy_sample(sample_dir: Path, dest: Path, files) -> None:
    for f in files:
        (dest / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest / f.parent.name / f.name)


def _snapshot(out: Path) -> dict:
    feats = pd.read_parquet(out / "features").sort_values("path").reset_index(drop=True)
    pca = pd.read_parquet(out / "pca").sort_values("path").reset_index(drop=True)
    return {"manifest": (out / "manifest.json").read_bytes(), "features": feats, "pca": pca}


def test_overwrite_twice_gives_identical_output(spark, sample_dir, tmp_path):
    out = tmp_path / "o"
    pipeline.run(str(sample_dir), str(out), weights="offline", k=4, spark=spark)
    a = _snapshot(out)
    pipeline.run(str(sample_dir), str(out), weights="offline", k=4, mode="overwrite", spark=spark)
    b = _snapshot(out)
    pd.testing.assert_frame_equal(a["features"], b["features"])
    pd.testing.assert_frame_equal(a["pca"], b["pca"])
    assert sorted(p.name for p in out.iterdir()) == ["features", "manifest.json", "pca"], "no leftovers"


def test_incremental_featurizes_only_new_and_changed(spark, sample_dir, tmp_path, offline_bundle):
    files = image_files(sample_dir)
    first, later = files[:30], files[30:40]
    src, out = tmp_path / "in", tmp_path / "out"
    _copy_sample(sample_dir, src, first)

    r1 = pipeline.run(str(src), str(out), weights="offline", k=3, mode="incremental", spark=spark)
    assert r1.manifest["counts"]["featurized"] == 30 and r1.manifest["incremental_key"] == [
        "path", "length", "modificationTime"]

    _copy_sample(sample_dir, src, later)
    r2 = pipeline.run(str(src), str(out), weights="offline", k=3, mode="incremental", spark=spark)
    assert {k: r2.manifest["counts"][k] for k in ("total", "featurized", "reused", "removed")} == {
        "total": 40, "featurized": 10, "reused": 30, "removed": 0}
    feats = pd.read_parquet(out / "features")
    assert feats.path.is_unique and len(feats) == 40

    r3 = pipeline.run(str(src), str(out), weights="offline", k=3, mode="incremental", spark=spark)
    assert r3.manifest["counts"]["featurized"] == 0 and r3.manifest["counts"]["total"] == 40

    # the incremental table equals a full run on the same folder
    full = pipeline.run(str(src), str(tmp_path / "full"), weights="offline", k=3, spark=spark)
    inc = pd.read_parquet(out / "features").sort_values("path").reset_index(drop=True)
    ref = pd.read_parquet(full.features_path).sort_values("path").reset_index(drop=True)
    assert list(inc.path) == list(ref.path)
    assert all(np.array_equal(a, b) for a, b in zip(inc.features, ref.features))
    np.testing.assert_allclose(r3.pca.explained_variance, full.pca.explained_variance, rtol=1e-9, atol=1e-15)

    # a changed file is re-featurized and replaces its row; a deleted one is dropped
    changed = src / first[0].parent.name / first[0].name
    changed.write_bytes(files[-1].read_bytes())
    os.utime(changed, (time.time() + 5, time.time() + 5))
    gone = src / first[1].parent.name / first[1].name
    gone.unlink()
    r4 = pipeline.run(str(src), str(out), weights="offline", k=3, mode="incremental", spark=spark)
    c = r4.manifest["counts"]
    assert (c["total"], c["featurized"], c["reused"], c["removed"]) == (39, 1, 38, 2)
    feats = pd.read_parquet(out / "features").set_index("path")
    assert feats.index.is_unique and f"file:{gone}" not in feats.index
    new_row = feats.loc[f"file:{changed}"]
    want = featurize_bytes([files[-1].read_bytes()], offline_bundle).features[0]
    # (computed in this process, with other TF thread pools than a Spark worker: float-level tolerance)
    rel = np.linalg.norm(new_row.features - want) / np.linalg.norm(want)
    assert rel < 1e-5, "the changed file's row holds its new content's features"
    assert new_row.length == len(files[-1].read_bytes())


def test_incremental_refuses_other_weights(spark, sample_dir, tmp_path):
    out = tmp_path / "o"
    pipeline.run(str(sample_dir), str(out), weights="offline", k=2, spark=spark)
    with pytest.raises(ParameterError, match="mode='overwrite' to recompute everything"):
        pipeline.run(str(sample_dir), str(out), weights="offline", seed=7, k=2, mode="incremental", spark=spark)


def _cli(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "p8utils", "run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, start_new_session=True, **kw)


def _wait_for(cond, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def bigger_input(tmp_path_factory, sample_dir):
    """The sample copied 4 times (320 images): long enough to interrupt."""
    root = tmp_path_factory.mktemp("bigger") / "in"
    for i in range(4):
        for f in image_files(sample_dir):
            (root / f.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, root / f.parent.name / f"{i}_{f.name}")
    return root


@pytest.mark.slow
def test_killed_run_leaves_previous_output_intact(spark, sample_dir, bigger_input, tmp_path):
    out = tmp_path / "o"
    pipeline.run(str(sample_dir), str(out), weights="offline", k=3, spark=spark)
    before = _snapshot(out)

    proc = _cli(["--input", str(bigger_input), "--output", str(out), "--weights", "offline", "--k", "3",
                 "--mode", "overwrite", "--master", "local[2]", "--images-per-partition", "27"])
    try:
        _wait_for(lambda: (out / "_staging").exists() and any(
            "pyspark.daemon" in cmdline(p) for p in descendants(proc.pid)), 240, "featurization to start")
        time.sleep(2)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    after = _snapshot(out)
    assert after["manifest"] == before["manifest"]
    pd.testing.assert_frame_equal(after["features"], before["features"])
    pd.testing.assert_frame_equal(after["pca"], before["pca"])

    # the next run cleans the leftovers and completes
    res = pipeline.run(str(sample_dir), str(out), weights="offline", k=3, mode="overwrite", spark=spark)
    assert res.manifest["counts"]["total"] == len(image_files(sample_dir))
    assert sorted(p.name for p in out.iterdir()) == ["features", "manifest.json", "pca"]


@pytest.mark.slow
def test_task_retried_after_python_worker_dies(bigger_input, tmp_path):
    """Kill a Python worker mid-featurization: Spark retries the task, every file appears once."""
    out = tmp_path / "o"
    proc = _cli(["--input", str(bigger_input), "--output", str(out), "--weights", "offline", "--k", "3",
                 "--master", "local[2,4]", "--images-per-partition", "27"])
    killed = None
    try:
        def busy_worker():
            daemons = [p for p in descendants(proc.pid) if "pyspark.daemon" in cmdline(p)]
            workers = [w for d in daemons for w in children(d)]
            return workers if (out / "_staging").exists() and workers else None

        workers = _wait_for(busy_worker, 240, "a Python worker featurizing")
        time.sleep(3)  # let it load the model and start on its partition
        killed = workers[0]
        os.kill(killed, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert proc.returncode == 0, stderr[-3000:]
    assert "Python worker exited unexpectedly" in stderr or "Lost task" in stderr or "failed 1 times" in stderr, \
        "the kill did not hit a running task (test would prove nothing)"
    feats = pd.read_parquet(out / "features")
    expected = {f"file:{p}" for p in image_files(bigger_input)}
    assert feats.path.is_unique and set(feats.path) == expected
    assert feats.error.isna().all()
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["total"] == m["counts"]["ok"] == len(expected)
