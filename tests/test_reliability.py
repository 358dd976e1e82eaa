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
import pyarrow.parquet as pq
import pytest
from PIL import Image

from p8utils import pipeline, storage
from p8utils.errors import OutputBusyError, ParameterError
from p8utils.featurize import featurize_bytes

from .conftest import ROOT, S3A_JARS, image_files
from .harness.spark_cluster import children, cmdline, descendants
from .harness.targets import TARGETS, Target, part_files, read_folder, read_parquet

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
        pipeline.run(str(tmp_path / "only text"), str(tmp_path / "o"), weights="offline")
    with pytest.raises(ParameterError, match="does not exist"):
        pipeline.run(str(tmp_path / "nope"), str(tmp_path / "o"), weights="offline")
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- runs that do not lose data


def _copy_sample(sample_dir: Path, dest: Path, files) -> None:
    for f in files:
        (dest / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest / f.parent.name / f.name)


def _committed_table(out, table: str) -> pd.DataFrame:
    """The committed table as a reader following the manifest sees it (what ``runs.read_features`` reads)."""
    from p8utils import runs

    names = sorted(getattr(runs.committed(str(out)), table))
    return pd.concat([read_parquet(storage.join(str(out), table, n)) for n in names]).sort_values(
        "path").reset_index(drop=True)


def _snapshot(out) -> dict:
    return {"manifest": storage.read_bytes(storage.join(str(out), "manifest.json")),
            "features": _committed_table(out, "features"), "pca": _committed_table(out, "pca")}


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


def test_incremental_refuses_other_weights_size_or_precision(spark, sample_dir, tmp_path):
    out = tmp_path / "o"
    pipeline.run(str(sample_dir), str(out), weights="offline", k=2, spark=spark)
    with pytest.raises(ParameterError, match="mode='overwrite' to recompute everything"):
        pipeline.run(str(sample_dir), str(out), weights="offline", seed=7, k=2, mode="incremental", spark=spark)
    with pytest.raises(ParameterError, match=r"image_size=224 \(now 128\)"):
        pipeline.run(str(sample_dir), str(out), weights="offline", image_size=128, k=2, mode="incremental",
                     spark=spark)
    with pytest.raises(ParameterError, match=r"precision='float32' \(now 'int8 \(calibrated\)'\)"):
        pipeline.run(str(sample_dir), str(out), weights="offline", engine="tflite-int8", k=2, mode="incremental",
                     spark=spark)


def _cli(args, env=None, **kw):
    env = env or dict(os.environ, PYTHONPATH=str(ROOT))
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


def _staging(out) -> bool:
    """Whether a run stages into ``out`` (its ``_staging/`` exists: it holds the lease and has listed its input)."""
    return storage.exists(storage.join(str(out), "_staging"))


def _featurizing(proc, out) -> bool:
    return _staging(out) and any("pyspark.daemon" in cmdline(p) for p in descendants(proc.pid))


@pytest.fixture(scope="module")
def bigger_input(tmp_path_factory, sample_dir):
    """The sample copied 4 times (320 images): long enough to interrupt."""
    root = tmp_path_factory.mktemp("bigger") / "in"
    for i in range(4):
        for f in image_files(sample_dir):
            (root / f.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, root / f.parent.name / f"{i}_{f.name}")
    return root


@pytest.fixture(params=TARGETS)
def target(request, tmp_path) -> Target:
    """Where the test's runs read and write: ``local`` (below ``tmp_path``) or ``s3`` (a fresh emulator bucket;
    Spark of this process, if the test uses it, reaches it through ``s3_spark``'s S3A connector)."""
    if request.param == "local":
        return Target("local", tmp_path, pythonpath=str(ROOT))
    s3 = request.getfixturevalue("s3")
    if "spark" in request.fixturenames:
        request.getfixturevalue("s3_spark")  # the shared session, its S3A connector pointed at the emulator
    return Target("s3", tmp_path, s3, pythonpath=str(ROOT), jars=S3A_JARS)


@pytest.fixture(scope="module")
def s3_inputs(s3, sample_dir, bigger_input) -> dict:
    """The read-only inputs uploaded once per module: ``sample`` (data_sample/), ``small`` (every 4th sample image),
    ``bigger`` (:func:`bigger_input`); name -> ``s3://`` folder."""
    bucket = s3.bucket("inputs")
    out = {}
    for name, folder, files in (("sample", sample_dir, image_files(sample_dir)),
                                ("small", sample_dir, image_files(sample_dir)[::4]),
                                ("bigger", bigger_input, image_files(bigger_input))):
        out[name] = f"s3://{bucket}/{name}"
        s3.upload(folder, out[name], files)
    return out


def _input(request, target: Target, name: str) -> str:
    """The shared input ``name`` (``sample``, ``small``, ``bigger``) on the target (locally: the folder itself)."""
    if target.local:
        return {"sample": str(request.getfixturevalue("sample_dir")),
                "bigger": str(request.getfixturevalue("bigger_input"))}[name]
    return request.getfixturevalue("s3_inputs")[name]


def _n_images(request, name: str) -> int:
    """Images of the shared input ``name``."""
    sample = image_files(request.getfixturevalue("sample_dir"))
    if name == "bigger":
        return len(image_files(request.getfixturevalue("bigger_input")))
    return len(sample if name == "sample" else sample[::4])


@pytest.mark.slow
def test_killed_run_leaves_previous_output_intact(spark, request, target):
    """kill -9 of the process group during the featurization; on S3 too (the lease is an object there, its holder's
    pid on this host: the same takeover applies)."""
    out = target.out("o")
    # S3: a smaller committed run (every 4th sample image) keeps the variant short; locally the whole sample
    first = _input(request, target, "sample" if target.local else "small")
    pipeline.run(first, out, weights="offline", k=3, spark=spark)
    before = _snapshot(out)

    proc = _cli(["--input", _input(request, target, "bigger"), "--output", out, "--weights", "offline", "--k", "3",
                 "--mode", "overwrite", "--master", "local[2]", "--images-per-partition", "27"], env=target.env())
    try:
        _wait_for(lambda: _featurizing(proc, out), 240, "featurization to start")
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

    # the killed run's lease is still there; the next run takes it over, cleans its leftovers and completes
    assert _staging(out), "the killed run's scratch is left (the next run must clean it)"
    dead = json.loads(storage.read_bytes(storage.join(out, "_lease.json")))
    assert dead["pid"] == proc.pid
    res = pipeline.run(first, out, weights="offline", k=3, mode="overwrite", spark=spark)
    assert res.manifest["counts"]["total"] == _n_images(request, "sample" if target.local else "small")
    assert res.manifest["lease"]["took_over"] == dead["run_id"]
    assert storage.list_dir(out) == ["features", "manifest.json", "pca"], "no leftovers"
    _assert_manifest_matches_data(out)
    # the same input and parameters, overwritten: identical tables (was test_overwrite_twice_gives_identical_output)
    again = _snapshot(out)
    pd.testing.assert_frame_equal(again["features"], before["features"])
    pd.testing.assert_frame_equal(again["pca"], before["pca"])


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
    # Spark's messages go to the run's log file (the console stays quiet without --verbose)
    logged = stderr + "".join(p.read_text(errors="replace") for p in (out / "logs").glob("*.log"))
    assert "Python worker exited unexpectedly" in logged or "Lost task" in logged or "failed 1 times" in logged, \
        "the kill did not hit a running task (test would prove nothing)"
    feats = pd.read_parquet(out / "features")
    expected = {f"file:{p}" for p in image_files(bigger_input)}
    assert feats.path.is_unique and set(feats.path) == expected
    assert feats.error.isna().all()
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["total"] == m["counts"]["ok"] == len(expected)


# --------------------------------------------------------------------------- one row per listed file, always


def _rows(out) -> pd.DataFrame:
    return read_folder(storage.join(str(out), "features")).set_index("path")


def _assert_manifest_matches_data(out) -> dict:
    """The manifest's counts are the data's, and the folders hold exactly the files it names (a plain read agrees)."""
    from p8utils import runs

    out = str(out)
    m = runs.read_manifest(out)
    for table in ("features", "pca"):
        named = {f["name"]: f["rows"] for f in m["files"][table]}
        assert set(part_files(storage.join(out, table))) == set(named)
        assert all(len(read_parquet(storage.join(out, table, n))) == rows for n, rows in named.items())
    feats = read_folder(storage.join(out, "features"))
    assert feats.path.is_unique and len(feats) == m["counts"]["total"]
    assert int(feats.error.isna().sum()) == m["counts"]["ok"]
    assert feats.error.dropna().value_counts().to_dict() == m["counts"]["failed_by_reason"]
    assert len(read_folder(storage.join(out, "pca"))) == m["counts"]["ok"]
    return m


@pytest.mark.slow
@pytest.mark.parametrize("first", ["batch", "interactive"])
def test_two_runs_into_one_output_the_second_is_refused(spark, request, target, first):
    """A papermill/CLI batch and a notebook user on one output: whoever comes second is refused at once (on S3 the
    lease is one conditional PutObject, If-None-Match: *)."""
    import threading

    out = target.out("o")
    name = "bigger" if target.local else "sample"  # S3: the 80 sample images keep the variant short
    inp, n = _input(request, target, name), _n_images(request, name)
    args = ["--input", inp, "--output", out, "--weights", "offline", "--k", "3",
            "--master", "local[2]", "--images-per-partition", "27"]
    if first == "batch":
        proc = _cli(args, env=target.env())
        try:
            _wait_for(lambda: _staging(out), 240, "the batch run to start staging")
            started = time.time()
            with pytest.raises(OutputBusyError, match=f"pid {proc.pid}") as info:
                pipeline.run(inp, out, weights="offline", k=3, mode="overwrite", spark=spark)
            assert time.time() - started < 5, "the refusal must come before any Spark job"
            assert "Nothing was written" in str(info.value)
            _, stderr = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        assert proc.returncode == 0, stderr[-3000:]
    else:
        from contextlib import contextmanager

        box: dict = {}
        second_done = threading.Event()

        @contextmanager
        def hold_at_check(stage, _spark):  # the notebook run keeps its lease until the second run has ended
            if stage == "check":
                second_done.wait(300)
            yield

        thread = threading.Thread(target=lambda: box.update(result=pipeline.run(
            inp, out, weights="offline", k=3, images_per_partition=27, spark=spark, progress=hold_at_check)))
        thread.start()
        try:
            _wait_for(lambda: _staging(out), 240, "the notebook run to start staging")
            second = subprocess.run([sys.executable, "-m", "p8utils", "run", *args, "--mode", "overwrite"],
                                    capture_output=True, text=True, timeout=120, cwd=ROOT, env=target.env())
        finally:
            second_done.set()
            thread.join(600)
        assert second.returncode == 3, second.stderr[-2000:]
        assert "is in use by run" in second.stderr and f"pid {os.getpid()}" in second.stderr
        assert "at org.apache" not in second.stderr and "Traceback" not in second.stderr, "a raw stack trace"
        assert "result" in box, "the first run did not complete"
    m = _assert_manifest_matches_data(out)
    assert m["counts"]["total"] == m["counts"]["ok"] == n
    cli_files = ["explorer.html", "logs"] if first == "batch" else []  # the CLI's page and log, after the commit
    assert storage.list_dir(out) == sorted(["features", "manifest.json", "pca", *cli_files])


@pytest.mark.parametrize("reader", ["python", "spark"])
def test_files_that_vanish_after_listing_become_missing_rows(spark, sample_dir, tmp_path, monkeypatch, reader):
    from p8utils import images

    src = tmp_path / "in"
    _copy_sample(sample_dir, src, image_files(sample_dir)[:24])
    doomed = sorted(src.rglob("*.jpg"))[::4]
    original = images.list_images

    def list_then_clean(*args, **kwargs):  # an ingestion job cleaning its landing folder right after our listing
        listing = original(*args, **kwargs)
        for f in doomed:
            f.unlink()
        return listing

    monkeypatch.setattr(images, "list_images", list_then_clean)
    res = pipeline.run(str(src), str(tmp_path / "out"), weights="offline", k=3, reader=reader, spark=spark)
    rows = _rows(tmp_path / "out")
    assert len(rows) == 24
    for f in doomed:
        assert rows.loc[f"file:{f}"].error == "missing" and rows.loc[f"file:{f}"].features is None
    assert res.manifest["counts"]["failed_by_reason"] == {"missing": len(doomed)}
    _assert_manifest_matches_data(tmp_path / "out")


@pytest.mark.slow
def test_files_deleted_during_featurization(bigger_input, sample_dir, tmp_path, target):
    """A real concurrent delete while the Python workers featurize: exit 0, one row per listed file (on S3: objects
    deleted while the workers GET them)."""
    if target.local:
        src = tmp_path / "in"
        shutil.copytree(bigger_input, src)
        files = [str(f) for f in sorted(src.rglob("*.jpg"))]
        src, per_partition = str(src), "27"
    else:  # the 80 sample images in small partitions: most are still unread when the deletes come
        src, per_partition = target.put("in", image_files(sample_dir)), "8"
        files = sorted(storage.iter_files(src))
    out = target.out("o")
    proc = _cli(["--input", src, "--output", out, "--weights", "offline", "--k", "3",
                 "--master", "local[2]", "--images-per-partition", per_partition], env=target.env())
    try:
        _wait_for(lambda: _featurizing(proc, out), 240, "featurization to start")
        time.sleep(1)
        deleted = files[1::2]
        for f in deleted:
            storage.delete(f)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert proc.returncode == 0, stderr[-3000:]
    rows = _rows(out)
    assert set(rows.index) == {target.row_path(f) for f in files}, "every listed file has its row"
    for f in deleted:
        row = rows.loc[target.row_path(f)]
        assert row.error == "missing" or (row.error is None and len(row.features) == 1280), row.error
    m = _assert_manifest_matches_data(out)
    assert m["counts"]["failed_by_reason"].get("missing", 0) > 0, "no delete hit an unread file: test proves nothing"
    assert "SparkFileNotFoundException" not in stderr


def test_links_colons_odd_names_and_folders_spark_cannot_list(spark, sample_dir, tmp_path):
    src = tmp_path / "in"
    good = image_files(sample_dir)[:6]
    _copy_sample(sample_dir, src, good)
    cls = src / good[0].parent.name
    (cls / "e:f.jpg").write_bytes(good[0].read_bytes())  # Hadoop: "Relative path in absolute URI"
    (cls / "broken link.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (cls / "good link.jpg").symlink_to(good[1])
    os.mkfifo(cls / "a fifo.jpg")  # never opened: it would block
    (cls / "folder.jpg").mkdir()  # a folder named like an image is a folder
    undecodable = os.fsencode(str(cls)) + b"/caf\xe9.jpg"
    with open(undecodable, "wb") as fh:
        fh.write(good[2].read_bytes())
    (src / "Loop").mkdir()
    (src / "Loop" / "again").symlink_to(src, target_is_directory=True)
    res = pipeline.run(str(src), str(tmp_path / "out"), weights="offline", k=3, spark=spark)
    rows = _rows(tmp_path / "out")
    assert rows.loc[f"file:{cls}/e:f.jpg"].error is None and len(rows.loc[f"file:{cls}/e:f.jpg"].features) == 1280
    np.testing.assert_allclose(rows.loc[f"file:{cls}/e:f.jpg"].features,
                               rows.loc[f"file:{cls}/{good[0].name}"].features, rtol=1e-5, atol=1e-6)
    assert rows.loc[f"file:{cls}/good link.jpg"].error is None
    assert rows.loc[f"file:{cls}/broken link.jpg"].error == "unreadable"
    assert rows.loc[f"file:{cls}/a fifo.jpg"].error == "unreadable"
    assert rows.loc[f"file:{cls}/caf\\xe9.jpg"].error == "bad_name"
    assert len(rows) == 6 + 5
    m = _assert_manifest_matches_data(tmp_path / "out")
    assert m["counts"]["failed_by_reason"] == {"bad_name": 1, "unreadable": 2}
    assert [u["reason"] for u in m["unlisted"]] == ["symlink_loop"] and m["unlisted"][0]["path"].endswith("/again")
    assert any("could not be listed" in w for w in res.manifest["warnings"])


@pytest.mark.parametrize("reader,staging", [("python", "add_task_files"), ("spark", "write_features")])
def test_a_row_lost_between_write_and_commit_is_caught(spark, sample_dir, tmp_path, monkeypatch, reader, staging):
    """Part files written by the Python tasks (reader python) or by Spark (reader spark): a row lost after the
    write is caught by the row check, and the committed table stays as it was."""
    from p8utils import runs
    from p8utils.errors import RunCheckError

    out = tmp_path / "o"
    pipeline.run(str(sample_dir), str(out), weights="offline", k=3, spark=spark)
    before = _snapshot(out)
    original = getattr(runs.ActiveRun, staging)

    def lossy(self, *args):
        result = original(self, *args)
        victim = Path(self.layout.features) / self.written["features"][0]
        data = pq.read_table(victim)
        victim.unlink()  # e.g. a storage layer that lost a row of an object
        (victim.parent / f".{victim.name}.crc").unlink(missing_ok=True)
        pq.write_table(data.slice(1), victim)
        return result

    monkeypatch.setattr(runs.ActiveRun, staging, lossy)
    with pytest.raises(RunCheckError, match="listed files") as info:
        pipeline.run(str(sample_dir), str(out), weights="offline", k=3, mode="overwrite", spark=spark,
                     reader=reader)
    assert "no row" in str(info.value) and "unchanged" in str(info.value)
    after = _snapshot(out)
    assert after["manifest"] == before["manifest"]
    pd.testing.assert_frame_equal(after["features"], before["features"])
    assert sorted(p.name for p in out.iterdir()) == ["features", "manifest.json", "pca"], "no leftovers, no lease"


# --------------------------------------------------------------------------- incremental runs cost what is new


def _parts(out) -> dict:
    """{part file name: (inode, mtime_ns)} of the committed features; on S3 {name: (ETag, LastModified)}."""
    folder = storage.join(str(out), "features")
    if storage.is_local(folder):
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in Path(folder).glob("part-*")}
    return {name: (o["ETag"], o["LastModified"]) for o in storage.iter_s3_objects(folder)
            for name in [o["Key"].rsplit("/", 1)[-1]] if name.startswith("part-")}


def _table_of(out) -> pd.DataFrame:
    return read_folder(storage.join(str(out), "features")).sort_values("path").reset_index(drop=True)


def _assert_same_table(inc: pd.DataFrame, full: pd.DataFrame) -> None:
    assert list(inc.path) == list(full.path) and inc.path.is_unique
    assert list(inc.error.fillna("")) == list(full.error.fillna(""))
    for a, b, p in zip(inc.features, full.features, inc.path):
        assert (a is None and b is None) or np.array_equal(a, b), p


def _assert_same_scores(inc_out, full_out) -> None:
    """The PCA scores of two runs agree per path, up to the sign of each component, to 1e-6 of their range."""
    a, b = (read_folder(storage.join(str(o), "pca")).sort_values("path").reset_index(drop=True)
            for o in (inc_out, full_out))
    assert list(a.path) == list(b.path)
    x, y = np.stack(a.pca_features), np.stack(b.pca_features)
    signs = np.sign(np.sum(x * y, axis=0))
    np.testing.assert_allclose(x * signs, y, rtol=0, atol=1e-6 * np.abs(y).max())


@pytest.mark.slow
def test_incremental_runs_append_replace_delete_and_compact(spark, sample_dir, target, monkeypatch):
    """Several successive incremental runs, then a compaction: always exactly the full run's table.

    On S3 a changed file is a re-upload of other bytes (its size and LastModified change), a kept part file one whose
    ETag and LastModified stay; the S3 variant stops before the compaction.
    """
    from p8utils import pipeline as pl

    files = image_files(sample_dir)
    src, out = target.put("in", files[:40]), target.out("out")
    args = dict(weights="offline", k=3, mode="incremental", images_per_partition=8, spark=spark)
    pipeline.run(src, out, **args)
    first = _parts(out)

    # 1. append 8 files: every committed file stays untouched, new files join them
    target.put("in", files[40:48])
    r = pipeline.run(src, out, **args)
    assert (r.manifest["counts"]["featurized"], r.manifest["counts"]["reused"]) == (8, 40)
    assert r.manifest["incremental"] == {"files_kept": len(first), "files_rewritten": 0, "compacted": False,
                                         "pca_refit": "moments"}
    now = _parts(out)
    assert {k: now[k] for k in first} == first, "kept part files were rewritten"
    assert len(now) > len(first)

    # 2. replace one file's content and delete two: only the files holding their rows are rewritten
    changed = storage.join(src, files[0].parent.name, files[0].name)
    assert files[-1].stat().st_size != files[0].stat().st_size  # on S3 the size tells the change too
    target.write(changed, files[-1])
    if target.local:
        os.utime(changed, (time.time() + 5, time.time() + 5))
    for f in files[5:7]:
        storage.delete(storage.join(src, f.parent.name, f.name))
    before = _parts(out)
    r = pipeline.run(src, out, **args)
    c = r.manifest["counts"]
    assert (c["total"], c["featurized"], c["reused"], c["removed"]) == (46, 1, 45, 3)
    rewritten = r.manifest["incremental"]["files_rewritten"]
    assert 1 <= rewritten <= 3 and len(set(before) - set(_parts(out))) == rewritten
    assert r.manifest["incremental"]["pca_refit"] == "moments"
    full_out = target.out("full")
    full = pipeline.run(src, full_out, weights="offline", k=3, spark=spark)
    _assert_same_table(_table_of(out), _table_of(full_out))
    # the PCA refit from moments (previous - leaving rows + staged rows) is the fit of every row
    assert r.pca.n_rows == full.pca.n_rows
    top = full.pca.explained_variance > 1e-6 * full.pca.explained_variance[0]
    np.testing.assert_allclose(r.pca.explained_variance[top], full.pca.explained_variance[top], rtol=1e-7)
    np.testing.assert_allclose(r.pca.mean, full.pca.mean, rtol=1e-9, atol=1e-9 * np.abs(full.pca.mean).max())
    np.testing.assert_allclose(np.abs(np.sum(r.pca.components * full.pca.components, axis=0)), 1.0, atol=1e-7)
    _assert_same_scores(out, full_out)
    if not target.local:  # the compaction below passes on S3 too, but doubles the variant's time (measured: 56 s)
        _assert_manifest_matches_data(out)
        return

    # 3. past the file-count bound the next run compacts: a full rewrite, same table
    monkeypatch.setattr(pl, "max_feature_files", lambda *a: 1)
    target.put("in", files[48:50])
    r = pipeline.run(src, out, **args)
    assert r.manifest["incremental"]["compacted"] is True and r.manifest["incremental"]["pca_refit"] == "rows"
    assert len(_parts(out)) <= max(2, -(-48 // 8)) + 2
    full = pipeline.run(src, full_out, weights="offline", k=3, mode="overwrite", spark=spark)
    _assert_same_table(_table_of(out), _table_of(full_out))
    _assert_manifest_matches_data(out)


@pytest.mark.slow
def test_killed_incremental_run_leaves_the_previous_output_intact(spark, sample_dir, bigger_input, target):
    """kill -9 of an incremental run during its featurization; the next run takes the lease over (on S3 too)."""
    out = target.out("o")
    # S3: every 4th sample image committed, 64 new ones to kill the run in the middle of (locally 80 and 320)
    committed_files = image_files(sample_dir) if target.local else image_files(sample_dir)[::4]
    # locally the whole bigger input: 160 new photos were featurized and committed within 2 s on a fast VM
    n_new, per_partition = (320, "16") if target.local else (64, "8")
    src = target.put("in", committed_files)
    pipeline.run(src, out, weights="offline", k=3, mode="incremental", spark=spark)
    before = _snapshot(out)
    parts = _parts(out)
    target.put("in", image_files(bigger_input)[:n_new], rename="new_")  # enough new work to be killed in the middle of
    proc = _cli(["--input", src, "--output", out, "--weights", "offline", "--k", "3",
                 "--mode", "incremental", "--master", "local[2]", "--images-per-partition", per_partition],
                env=target.env())
    try:
        _wait_for(lambda: _featurizing(proc, out), 240, "featurization to start")
        time.sleep(0.5)  # into the featurization, well before its end (a fresh clone ran 160 photos in < 2 s)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    after = _snapshot(out)
    assert after["manifest"] == before["manifest"] and _parts(out) == parts
    pd.testing.assert_frame_equal(after["features"], before["features"])
    assert _staging(out), "the killed run's scratch is left (the next run must clean it)"
    r = pipeline.run(src, out, weights="offline", k=3, mode="incremental", spark=spark)
    assert r.manifest["counts"]["featurized"] == n_new and r.manifest["lease"]["took_over"]
    assert storage.list_dir(out) == ["features", "manifest.json", "pca"]
    _assert_manifest_matches_data(out)


# --------------------------------------------------------------------------- big inputs: a file list, no listing


@pytest.mark.slow
def test_a_file_list_of_s3_objects_is_read_without_any_listing(sample_dir, tmp_path):
    """An input manifest of s3:// paths (as from S3 Inventory): the workers read the objects (pyarrow), a key
    that is gone gives its row; run against a local S3 API emulator (moto server)."""
    pytest.importorskip("moto", reason="moto[server] is not installed (the dev extra; make install does it)")
    import boto3

    from .harness import aws_emulator

    emulator = aws_emulator.start(tmp_path / "aws")
    try:
        env = emulator.env(dict(os.environ, PYTHONPATH=str(ROOT)))
        s3 = boto3.client("s3", endpoint_url=emulator.url, region_name=aws_emulator.REGION,
                          aws_access_key_id="x", aws_secret_access_key="x")
        s3.create_bucket(Bucket="landing")
        files = image_files(sample_dir)[::7]
        lines = ["path,size,last_modified_date"]
        for f in files:
            key = f"fruits/{f.parent.name}/{f.name}"
            s3.put_object(Bucket="landing", Key=key, Body=f.read_bytes())
            lines.append(f"s3://landing/{key},{f.stat().st_size},2026-11-30T10:00:00.000Z")
        lines.append("s3://landing/fruits/Banana/deleted by a lifecycle rule.jpg,1234,2026-11-30T10:00:00.000Z")
        (tmp_path / "inventory.csv").write_text("\n".join(lines) + "\n")
        out = tmp_path / "out"
        proc = subprocess.run([sys.executable, "-m", "p8utils", "run", "--input", str(tmp_path / "inventory.csv"),
                               "--output", str(out), "--weights", "offline", "--k", "2", "--master", "local[2]",
                               "--no-explorer"], capture_output=True, text=True, timeout=900, cwd=ROOT, env=env)
    finally:
        emulator.stop()
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = _rows(out)
    assert len(rows) == len(files) + 1
    gone = rows.loc["s3://landing/fruits/Banana/deleted by a lifecycle rule.jpg"]
    assert gone.error == "missing" and gone.label == "Banana"
    ok = rows[rows.error.isna()]
    assert len(ok) == len(files) and set(ok.label) == {f.parent.name for f in files}
    assert sorted(ok.length) == sorted(f.stat().st_size for f in files), "the inventory's sizes, row by row"
    m = _assert_manifest_matches_data(out)
    assert m["counts"]["failed_by_reason"] == {"missing": 1}
