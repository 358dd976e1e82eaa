"""Benchmark: engines and input sizes, raw and in the pipeline, their fidelity, PCA, memory (``make bench``).

Measured in one run, on the same images, the same Spark master and the same cores, for every
configuration ``engine:size`` (default: ``tflite`` and ``tflite-int8`` at every size of
:data:`p8utils.models.IMAGE_SIZES`, ``keras`` at 224):

1. **raw engine throughput**: the engine alone on pre-decoded, preprocessed batches, as one
   process using every core and as one single-threaded process per core (the better of the two is
   the engine's limit); with the decode's CPU cost, the **engine+decode limit** each pipeline
   figure is divided by, measured right before and right after that configuration's local runs
   (and again after its S3 runs: their limit is measured around them);
2. **pipeline throughput**: :func:`p8utils.pipeline.run` (list → read → decode → featurize →
   parquet → row check → PCA → commit); the headline figure is its ``featurize`` stage (read →
   features parquet, what the seeds' method does too), the whole run without the weight loading is
   reported next to it; with ``--s3`` also from an ``s3://`` copy of the input served by moto on
   this machine (its CPU measured apart), with ``--s3-uri`` from a prefix of a real bucket;
3. **fidelity** of each configuration's features to the fp32-224 ones (``tflite:224``) on the same
   files: per-image cosine similarity (median, 1st percentile, minimum), and for int8 also to fp32
   at the same size; a **linear probe** (:func:`p8utils.probe.linear_probe`: held-out accuracy and
   macro-F1, the mean over ``--probe-seeds`` stratified splits, on the distinct photos: repeated
   copies are left out so that no photo is in both parts);
4. **the seeds' method** as a reference point: model rebuilt in every task, ``model.predict`` per
   Arrow batch, ``repartition`` shuffling image bytes (Keras, 224);
5. **PCA fit** with both methods of :func:`p8utils.pca.fit_pca` on synthetic 1280-d tables of
   3,000 and 100,000 rows (low rank + noise), and on the pipeline's features;
6. **peak RSS** of the Python workers after each configuration (the workers are reused, so each
   figure is the peak so far), of the JVM driver and of the Python driver; the CPU cost of decoding.

Warm-up runs (``--warmups``, none with ``--quick``) are excluded; each time is the median of
``--repeats`` runs. Prints a table with every figure and the targets of the issue, and writes it all
as JSON (with the ratios). This is a benchmark, not a test: the test suite only runs it with
``--quick`` on a tiny input (``tests/test_bench.py``). It lives outside the package and uses only
p8utils' public API; it needs p8utils installed with its ``spark`` and ``tf`` extras (``make install``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import psutil

from p8utils import engines, images, models, pca, pipeline, probe
from p8utils.config import RunConfig
from p8utils.featurize import DEFAULT_BATCH_SIZE, FEATURES_TYPE
from p8utils.images import decode_image

__all__ = ["calibration_images", "cosine_stats", "engine_decode_limit", "limit_measure", "main", "pca_fit_times",
           "pipeline_throughput", "prepare_input", "probe_scores", "raw_throughput", "s3_input", "seeds_throughput",
           "synthetic_features", "upload_input"]

_ROOT = Path(__file__).resolve().parents[1]
_REPO_SAMPLE = _ROOT / "data_sample"
_REAL_PHOTOS = _ROOT.parent / "shared" / "fruits360"

#: The reference configuration: fp32 at 224 (the default engine; ``keras`` equals it within 1e-4).
_REFERENCE = ("tflite", 224)

#: The issue's targets.
_TARGETS = {"int8_pipeline_over_fp32": 2.0, "probe_points": 0.5, "fastest_over_seeds": 8.0,
            "moonshot_img_per_s": 400.0, "pca_100k_s": 10.0, "worker_rss_mb": 1.5 * 1024}


# --------------------------------------------------------------------------- input


def prepare_input(source: Path, min_images: int, workdir: Path) -> Path:
    """Return a folder with at least ``min_images`` images (``source`` repeated if needed).

    Copies are named ``<repeat>_<name>`` (``000_`` for the first) in the same class folders, so
    labels and byte sizes are those of the source; ``source`` is used as is when it is large enough.
    """
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"bench: no .jpg image below {source}")
    if len(files) >= min_images:
        return source
    target = workdir / "input"
    repeats = -(-min_images // len(files))
    for r in range(repeats):
        for f in files:
            dest = target / f.parent.name / f"{r:03d}_{f.name}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
    return target


#: The bucket and prefix of ``--s3``'s copy of the input on the emulator.
_S3_INPUT = "s3://p8-bench/input"


def upload_input(folder: Path, uri: str, client: Any = None) -> int:
    """Copy every file below ``folder`` under the S3 prefix ``uri`` (16 at a time); return how many were sent.

    Keys are ``<uri>/<path relative to folder>``; a key that exists with the same size is kept, so a
    second benchmark on the same prefix uploads nothing. ``client``: a boto3 S3 client (default: the
    usual AWS chain: environment, profile, an EC2/EMR node's instance profile).
    """
    from concurrent.futures import ThreadPoolExecutor

    import boto3

    client = client or boto3.client("s3")
    bucket, _, prefix = uri[len("s3://"):].rstrip("/").partition("/")
    base = f"{prefix}/" if prefix else ""
    there: Dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base):
        there.update((o["Key"], o["Size"]) for o in page.get("Contents", []))
    files = [(f, base + f.relative_to(folder).as_posix()) for f in sorted(folder.rglob("*")) if f.is_file()]
    todo = [(f, key) for f, key in files if there.get(key) != f.stat().st_size]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda item: client.put_object(Bucket=bucket, Key=item[1], Body=item[0].read_bytes()), todo))
    return len(todo)


def s3_input(folder: Path, uri: Optional[str], emulate: bool) -> contextlib.AbstractContextManager:
    """Return the context of the S3 input: ``--s3-uri`` (a real bucket), ``--s3`` (the emulator), or none.

    Entering it yields ``(uri, emulator)``: the input's ``s3://`` prefix (None without S3) and the
    emulator's process (None unless emulated).
    """
    if uri and emulate:
        raise SystemExit("bench: --s3 and --s3-uri exclude each other. Fix: --s3 for the emulator on this machine, "
                         "--s3-uri s3://bucket/prefix for a bucket of yours")
    if not uri:
        return s3_copy(folder) if emulate else contextlib.nullcontext((None, None))
    if not uri.startswith("s3://") or len(uri.rstrip("/")) <= len("s3://"):
        raise SystemExit(f"bench: --s3-uri {uri!r} is not an s3://bucket/prefix URI. Fix: e.g. --s3-uri "
                         "s3://my-bucket/p8bench/input (the benchmark uploads its input there)")
    try:
        sent = upload_input(folder, uri)
    except Exception as exc:  # noqa: BLE001 - no credentials, access denied, no such bucket: say so and stop
        raise SystemExit(f"bench: could not upload the input to {uri} ({type(exc).__name__}: {exc}). Fix: AWS "
                         "credentials that may list and write that prefix (an EMR node's instance profile, "
                         "AWS_PROFILE), and an existing bucket") from exc
    print(f"bench: input in {uri} ({sent} objects uploaded, the rest were there already)", flush=True)
    return contextlib.nullcontext((uri.rstrip("/"), None))


@contextlib.contextmanager
def s3_copy(folder: Path) -> Iterator[Tuple[str, psutil.Process]]:
    """Serve a copy of ``folder`` from moto's S3 server on 127.0.0.1 (``--s3``); yield its URI and the server.

    The server is a subprocess on this machine's cores (its CPU is measured apart). The AWS
    variables that point boto3 at it are set in this process for the duration, before Spark
    starts: its Python workers inherit them (credentials), and p8utils ships the endpoint.
    """
    import socket

    import boto3

    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL_S3": url, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    try:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError as exc:
        raise SystemExit(f"bench: --s3 could not start moto's server ({exc}). Fix: make install") from exc
    os.environ.update(env)
    try:
        bucket = _S3_INPUT[len("s3://"):].partition("/")[0]
        client = boto3.client("s3", endpoint_url=url, region_name=env["AWS_DEFAULT_REGION"])
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket=bucket)
                break
            except Exception:  # noqa: BLE001 - the server is still starting
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("bench: moto's server did not start. Fix: make install (moto[server])") from None
                time.sleep(0.2)
        upload_input(folder, _S3_INPUT, client)
        yield _S3_INPUT, psutil.Process(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


#: CPU flags that decide whether int8 kernels gain (XNNPACK's QS8 kernels: VNNI dot products, AMX tiles).
_INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
#: Flags reported next to them (the SIMD width the fp32 kernels use).
_SIMD_FLAGS = ("avx2", "avx512f", "avx512bw")


def cpu_int8(cpuinfo: Optional[str] = None) -> Dict[str, Any]:
    """Return the CPU's model and flags that say whether ``tflite-int8`` can gain here (Linux ``/proc/cpuinfo``).

    ``int8_can_gain`` is True with AVX-512 VNNI, AVX-VNNI or AMX (Intel Cascade Lake and later, AMD Zen 4), False
    without them (int8 then runs at fp32 speed and only halves the memory), None where the flags are unknown.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return {"cpu_model": platform.processor(), "cpu_flags": None, "int8_can_gain": None}
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    known = [f for f in (*_SIMD_FLAGS, *_INT8_FLAGS) if f in flags]
    return {"cpu_model": fields.get("model name", platform.processor()), "cpu_flags": known,
            "int8_can_gain": bool(flags & set(_INT8_FLAGS)) if flags else None}


def _cpu_s(process: psutil.Process) -> float:
    """User + system CPU seconds of a process so far."""
    times = process.cpu_times()
    return times.user + times.system


def sample_run(workdir: Path, weights: str) -> Dict[str, Any]:
    """Run the CLI on the repository's sample in a fresh process (``make run``'s job); return its stage timings.

    What every small or incremental run pays besides featurize and the weights: the
    sum of ``list_images``, ``check``, ``pca_fit`` and ``pca_transform``.
    """
    out = workdir / "sample-run"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "p8utils", "run", "--input", str(_REPO_SAMPLE), "--output", str(out),
                           "--weights", weights, "--no-explorer", "--mode", "overwrite"],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return {"error": (done.stderr or done.stdout)[-2000:], "wall_s": wall}
    timings = json.loads((out / "manifest.json").read_text())["timings_s"]
    fixed = _fixed_stages([timings])
    return {"timings_s": timings, "fixed_s": fixed, "fixed_sum_s": sum(fixed.values()), "wall_s": wall}


def _preprocessed(files: Sequence[Path], spec: models.ModelSpec) -> np.ndarray:
    """Decode and preprocess files: float32 array ``(n, h, w, 3)``."""
    arrays = [decode_image(f.read_bytes(), spec.input_size)[0] for f in files]
    return spec.preprocess(np.stack([a for a in arrays if a is not None]))


def calibration_images(spark, folder: Path, spec: models.ModelSpec) -> np.ndarray:
    """Return the calibration batch the pipeline uses for ``folder``: float32 ``(n, h, w, 3)``.

    :data:`p8utils.engines.CALIBRATION_IMAGES` listed files in the order of a hash of their path, as
    :func:`p8utils.pipeline.run` chooses them, so the raw measure and the pipeline share one int8
    model (and its disk cache).
    """
    from pyspark.sql import functions as F

    listing = images.list_images(spark, str(folder))
    chosen = (listing.frame.where(F.col("error").isNull()).orderBy(F.xxhash64("path"), "path")
              .select("path").limit(engines.CALIBRATION_IMAGES).collect())
    return spec.preprocess(images.decode_files([r["path"] for r in chosen], spec.input_size, spark))


# --------------------------------------------------------------------------- raw engine


def _time_predictor(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch_size: int,
                    repeats: int) -> List[float]:
    """Seconds per pass over ``x`` (after one warm-up batch)."""
    predict(x[:batch_size])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, len(x), batch_size):
            predict(x[i: i + batch_size])
        times.append(time.perf_counter() - start)
    return times


def _raw_worker(args: tuple) -> List[float]:  # pragma: no cover - runs in a child process
    """One single-threaded engine process: build, wait for the others, time."""
    spec, payload, engine, x, batch_size, repeats, barrier = args
    predict = engines.get_engine(engine).build(spec, payload, 1)
    predict(x[:batch_size])
    barrier.wait()
    return _time_predictor(predict, x, batch_size, repeats)


def raw_throughput(bundle: models.WeightsBundle, engine: str, x: np.ndarray, batch_size: int,
                   repeats: int, cores: int, calibration: Optional[np.ndarray] = None) -> Dict[str, float]:
    """Images/s of the engine alone on preprocessed batches ``x`` (n, h, w, 3) at ``bundle.spec``'s size.

    Returns
    -------
    dict
        ``one_process`` (one process, ``cores`` threads), ``per_core`` (``cores``
        single-threaded processes at once, aggregate), and ``best``.
    """
    payload = engines.payload(bundle, engine, calibration)
    spec = bundle.spec
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(cores)
        with ctx.Pool(cores) as pool:
            per_proc = pool.map(_raw_worker, [(spec, payload, engine, x, batch_size, repeats, barrier)
                                              for _ in range(cores)])
    per_core = statistics.median(cores * len(x) / max(t[i] for t in per_proc) for i in range(repeats))
    # one process using every core: in a child too, so TF's thread pools are fresh
    with ctx.Pool(1) as pool:
        times = pool.apply(_one_process, (spec, payload, engine, x, batch_size, repeats, cores))
    one = statistics.median(len(x) / t for t in times)
    return {"one_process": one, "per_core": per_core, "best": max(one, per_core)}


def limit_measure(bundle: models.WeightsBundle, engine: str, x: np.ndarray, files: Sequence[Path], batch_size: int,
                  repeats: int, cores: int, calibration: Optional[np.ndarray] = None) -> Tuple[Dict[str, float], float]:
    """Measure both sides of the engine+decode limit now.

    Returns
    -------
    (dict, float)
        :func:`raw_throughput` on ``x``, and the decode + resize + preprocess
        milliseconds per image on one core (:func:`cpu_profile` of ``files``).
    """
    raw = raw_throughput(bundle, engine, x, batch_size, repeats, cores, calibration)
    profile = cpu_profile(files, bundle.spec, batch_size, repeats)
    return raw, profile["decode_resize_ms"] + profile["preprocess_ms"]


def _one_process(spec: models.ModelSpec, payload: Any, engine: str, x: np.ndarray, batch_size: int, repeats: int,
                 threads: int) -> List[float]:  # pragma: no cover - runs in a child process
    """Time one engine process with ``threads`` threads."""
    predict = engines.get_engine(engine).build(spec, payload, threads)
    return _time_predictor(predict, x, batch_size, repeats)


# --------------------------------------------------------------------------- memory


def _peak_rss_mb(process: psutil.Process) -> float:
    """Peak resident set size (VmHWM, which psutil does not report) of a process, MiB; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cmdline(process: psutil.Process) -> str:
    """Return the command line of a process, "" once it is gone."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def memory_snapshot() -> Dict[str, float]:
    """Peak RSS (MiB) of the Python workers (max), the JVM driver and this Python driver."""
    me = psutil.Process()
    commands = {p: _cmdline(p) for p in me.children(recursive=True)}
    workers = [p for p, cmd in commands.items() if "pyspark.daemon" in cmd or "pyspark.worker" in cmd]
    jvms = [p for p, cmd in commands.items() if "java" in cmd.split(" ")[0]]
    return {
        "python_worker_peak_mb": max((_peak_rss_mb(p) for p in workers), default=0.0),
        "python_workers": len(workers),
        "jvm_driver_peak_mb": max((_peak_rss_mb(p) for p in jvms), default=0.0),
        "python_driver_peak_mb": _peak_rss_mb(me),
    }


# --------------------------------------------------------------------------- Spark runs


def _timed_runs(run: Callable[[], None], repeats: int, warmup: int = 1) -> List[float]:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def pipeline_throughput(spark, folder: Union[Path, str], out: Path, repeats: int, warmup: int = 1,
                        **parameters: Any) -> Dict[str, Any]:
    """Images/s of :func:`p8utils.pipeline.run` on ``folder`` (``mode="overwrite"``, other ``RunConfig`` fields).

    Returns
    -------
    dict
        ``img_per_s`` (the featurize stage: read → features parquet), ``run_img_per_s`` (the whole
        run less the weight loading), the medians of both in seconds, each run's stage timings and
        the ``features_path`` of the last run.
    """
    config = RunConfig(input=str(folder), output=str(out), mode="overwrite", **parameters)
    results: List[pipeline.RunResult] = []
    _timed_runs(lambda: results.append(pipeline.run(config, spark=spark)), repeats, warmup)
    timed = results[warmup:]
    n = int(timed[-1].manifest["counts"]["total"])
    featurize_s = statistics.median(r.manifest["timings_s"]["featurize"] for r in timed)
    run_s = statistics.median(sum(v for k, v in r.manifest["timings_s"].items() if k != "weights") for r in timed)
    return {"images": n, "featurize_s": featurize_s, "img_per_s": n / featurize_s, "run_s": run_s,
            "run_img_per_s": n / run_s, "timings_s": [r.manifest["timings_s"] for r in timed],
            "features_path": timed[-1].features_path}


def _seeds_udf_body(batches: Iterator[pd.Series], spec: models.ModelSpec, arrays_fn: Callable[[], list]
                    ) -> Iterator[pd.Series]:  # pragma: no cover - runs in Spark workers
    """Run the seeds' UDF: build the model for every task, ``model.predict`` every batch."""
    import keras
    from PIL import Image

    model = models.build_model(spec, arrays_fn())  # rebuilt per task, as they did
    for content in batches:
        arrays = [keras.utils.img_to_array(Image.open(io.BytesIO(c)).convert("RGB").resize(spec.input_size))
                  for c in content]
        preds = model.predict(spec.preprocess(np.stack(arrays)), verbose=0)
        yield pd.Series([p.flatten() for p in preds])


def seeds_throughput(spark, folder: Path, bundle: models.WeightsBundle, out: Path, repeats: int,
                     partitions: int = 20, warmup: int = 1) -> Dict[str, Any]:
    """Images/s of the seeds' notebook method on the same images (Keras engine)."""
    from pyspark.sql import functions as F

    bc = spark.sparkContext.broadcast(bundle.arrays)
    spec = bundle.spec

    @F.pandas_udf("array<float>")  # type: ignore[call-overload]
    def seeds_udf(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        return _seeds_udf_body(batches, spec, lambda: bc.value)

    n = images.load_images(spark, str(folder)).count()

    def run() -> None:
        df = images.load_images(spark, str(folder)).repartition(partitions)
        df.select("path", "label", seeds_udf("content").alias("features")).write.mode("overwrite").parquet(str(out))

    times = _timed_runs(run, repeats, warmup)
    return {"images": n, "seconds": times, "img_per_s": n / statistics.median(times), "partitions": partitions}


def _noop_udf_body(batches: Iterator[pd.Series], width: int) -> Iterator[pd.DataFrame]:  # pragma: no cover
    """Return zero features without decoding anything (measures Spark I/O alone)."""
    zeros = np.zeros(width, np.float32)
    for content in batches:
        yield pd.DataFrame({"features": [zeros] * len(content), "error": [None] * len(content)})


def spark_io_throughput(spark, folder: Path, width: int, out: Path, repeats: int, warmup: int = 1) -> Dict[str, Any]:
    """Images/s of read → Arrow → no-op UDF → Arrow → parquet write (the pipeline minus the work)."""
    from pyspark.sql import functions as F

    @F.pandas_udf(FEATURES_TYPE)  # type: ignore[call-overload]
    def noop(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        return _noop_udf_body(batches, width)

    n = images.load_images(spark, str(folder)).count()

    def run() -> None:
        df = images.load_images(spark, str(folder)).withColumn("r", noop("content"))
        df.select("path", "label", "r.features", "r.error").write.mode("overwrite").parquet(str(out))

    times = _timed_runs(run, repeats, warmup)
    return {"images": n, "seconds": times, "img_per_s": n / statistics.median(times)}


def cpu_profile(files: Sequence[Path], spec: models.ModelSpec, batch_size: int, repeats: int) -> Dict[str, float]:
    """Single-core milliseconds per image of decode+resize and of preprocessing (as the UDF does them).

    CPU time of this thread (``time.thread_time``), not wall time: the JVM started just before
    (its JIT compilers) or the S3 emulator must not make the decode look dearer than it is,
    which would lower the engine+decode limit and flatter the pipeline's ratio to it.
    """
    data = [f.read_bytes() for f in files]
    w, h = spec.input_size
    chunk = np.empty((batch_size, h, w, 3), np.uint8)
    buf = np.empty((batch_size, h, w, 3), np.float32)
    decode, prep = [], []
    for _ in range(repeats + 1):
        td = tp = 0.0
        for i in range(0, len(data), batch_size):
            part = data[i: i + batch_size]
            t0 = time.thread_time()
            for j, d in enumerate(part):
                arr, _ = decode_image(d, (w, h))
                if arr is not None:
                    chunk[j] = arr
            t1 = time.thread_time()
            spec.preprocess(chunk[: len(part)], out=buf[: len(part)])
            tp += time.thread_time() - t1
            td += t1 - t0
        decode.append(1000 * td / len(data))
        prep.append(1000 * tp / len(data))
    return {"decode_resize_ms": statistics.median(decode[1:]), "preprocess_ms": statistics.median(prep[1:])}


# --------------------------------------------------------------------------- fidelity


def _features_by_path(path: str) -> pd.Series:
    """Read the non-null feature vectors of a features parquet, float64, indexed by path."""
    table = pd.read_parquet(path, columns=["path", "features"])
    table = table[table["features"].notna()]
    return pd.Series([np.asarray(f, dtype=np.float64) for f in table["features"]], index=table["path"])


def cosine_stats(reference: str, other: str) -> Dict[str, float]:
    """Per-image cosine similarity of two features tables on the files they share: median, 1st percentile, min."""
    a, b = _features_by_path(reference), _features_by_path(other)
    common = a.index.intersection(b.index)
    x, y = np.stack(a[common].to_numpy()), np.stack(b[common].to_numpy())
    cos = np.sum(x * y, axis=1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    return {"median": float(np.median(cos)), "p1": float(np.percentile(cos, 1)), "min": float(cos.min()),
            "images": int(len(common))}


def probe_scores(spark, features_path: str, seeds: Sequence[int], distinct_only: bool,
                 max_iter: int = probe.DEFAULT_MAX_ITER) -> Dict[str, Any]:
    """Linear probe of a features table: accuracy and macro-F1 per split seed and their means.

    With ``distinct_only`` only the first copy of each photo (``000_*``) is probed, so that no photo
    is both trained on and tested.
    """
    from pyspark.sql import functions as F

    df = spark.read.parquet(features_path)
    if distinct_only:
        df = df.where(F.col("path").rlike("/000_[^/]*$"))
    # the split hashes each row's id: "<class>/<file>", not the path, which holds this run's random temporary
    # folder (with it, two runs on the same photos and features split them differently)
    df = df.withColumn("_bench_id", F.regexp_extract("path", r"([^/]+/[^/]+)$", 1))
    runs = [probe.linear_probe(df, probe.ProbeSettings(seed=int(s), max_iter=max_iter, id_col="_bench_id"))
            for s in seeds]
    return {"seeds": list(seeds), "max_iter": int(max_iter), "accuracy": [r.accuracy for r in runs],
            "macro_f1": [r.macro_f1 for r in runs],
            "mean_accuracy": float(np.mean([r.accuracy for r in runs])),
            "mean_macro_f1": float(np.mean([r.macro_f1 for r in runs])),
            "n_train": runs[0].n_train, "n_test": runs[0].n_test, "n_classes": runs[0].n_classes}


# --------------------------------------------------------------------------- PCA at scale


def synthetic_features(folder: Path, n: int, d: int = 1280, seed: int = 0, files: int = 8) -> Path:
    """Write an ``n × d`` features table (parquet, ``features`` array<float>): rank 64 + noise, mean 0.4."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    basis = np.random.default_rng(12345).normal(size=(64, d)) / 8
    scales = np.geomspace(3.0, 0.1, 64)
    for i, rows in enumerate(np.array_split(np.arange(n), files)):
        rng = np.random.default_rng([seed, i])
        x = (rng.normal(size=(len(rows), 64)) * scales) @ basis + 0.05 * rng.normal(size=(len(rows), d)) + 0.4
        values = pa.array(x.astype(np.float32).ravel())
        offsets = pa.array(np.arange(0, len(rows) * d + 1, d, dtype=np.int32))
        table = pa.table({"path": [f"row_{j}" for j in rows], "features": pa.ListArray.from_arrays(offsets, values)})
        pq.write_table(table, folder / f"part-{i:03d}.parquet")
    return folder


def pca_fit_times(spark, path: Path, repeats: Dict[str, int], warmup: int = 1) -> Dict[str, Any]:
    """Seconds of :func:`p8utils.pca.fit_pca` (variance 0.95) per method on a features parquet (median)."""
    df = spark.read.parquet(str(path))
    rows = df.count()
    out: Dict[str, Any] = {"rows": rows}
    for method, n in repeats.items():
        times = _timed_runs(lambda m=method: pca.fit_pca(df, variance=0.95, method=m), n, warmup)
        out[method] = {"seconds": times, "median_s": statistics.median(times)}
    if "covariance" in out and "spark_ml" in out:
        out["speedup"] = out["spark_ml"]["median_s"] / out["covariance"]["median_s"]
    return out


# --------------------------------------------------------------------------- report


def _name(engine: str, size: int) -> str:
    return f"{engine}:{size}"


def _fmt(value: Optional[float], width: int, decimals: int = 1, scale: float = 1.0) -> str:
    """``value * scale`` right-aligned in ``width`` characters, or blanks when it was not measured."""
    return f"{value * scale:{width}.{decimals}f}" if value is not None else " " * width


def _table(result: Dict[str, Any]) -> str:
    """Human-readable table of every figure of a benchmark result."""
    seeds = result.get("seeds", {}).get("img_per_s")
    cores = result["cores"]
    lines = [f"{'configuration':16} {f'raw 1x{cores}thr':>10} {f'raw {cores}x1':>8} {'pipeline':>9} {'/raw':>5} "
             f"{'xseeds':>6} {'whole run':>9} {'cos med':>8} {'cos p1':>7} {'cos min':>7} {'probe %':>8} "
             f"{'F1 %':>6} {'workers MiB':>11}"]
    for name, c in result["configs"].items():
        raw, pipe, pr = c["raw"], c["pipeline"], c["probe"]
        fid = c.get("cosine_vs_reference") or {}
        lines.append(
            f"{name:16} {raw['one_process']:10.1f} {raw['per_core']:8.1f} {pipe['img_per_s']:9.1f} "
            f"{pipe['img_per_s'] / raw['best']:5.2f} {_fmt(pipe['img_per_s'] / seeds if seeds else None, 6)} "
            f"{pipe['run_img_per_s']:9.1f} {_fmt(fid.get('median'), 8, 4)} {_fmt(fid.get('p1'), 7, 4)} "
            f"{_fmt(fid.get('min'), 7, 4)} {_fmt(pr['mean_accuracy'], 8, 2, 100)} "
            f"{_fmt(pr['mean_macro_f1'], 6, 2, 100)} {c['python_worker_peak_mb']:11.0f}")
    lines.append("  raw: img/s of the engine alone; pipeline: img/s of pipeline.run's featurize stage (read -> "
                 "features parquet); whole run: every stage but the weight loading")
    lines.append(f"  cosine: per image, to {_name(*_REFERENCE)} on the same files; probe: mean held-out accuracy over "
                 f"{len(result['probe_seeds'])} split(s), {result.get('probe_n_test', '?')} test images each")
    for name, c in result["configs"].items():
        if c.get("cosine_vs_fp32_same_size"):
            f = c["cosine_vs_fp32_same_size"]
            lines.append(f"  {name}: cosine to fp32 at the same size {f['median']:.4f} / {f['p1']:.4f} / "
                         f"{f['min']:.4f} (median / 1st pct / min); int8 model prepared in "
                         f"{c.get('int8_prepare_s', 0):.1f} s{' (disk cache)' if c.get('int8_from_cache') else ''}")
    if any(c["size"] != _REFERENCE[1] for c in result["configs"].values()):
        lines.append(f"  sizes other than 224 use other weights ({result['weights']}: "
                     + ("BatchNorm recalibrated at that size" if result["weights"] == "offline" else
                        "Keras' file for that size") + "), so their cosine to 224 measures more than resolution")
    for name, r in result.get("ratios", {}).items():
        if "pipeline_over_limit" in r:
            lines.append(f"  {name}: engine+decode limit {r['engine_decode_limit_img_per_s']:.1f} img/s "
                         f"({result['cores']} cores / (engine + decode) per image), pipeline / limit "
                         f"{r['pipeline_over_limit']:.2f}")
            if "s3_pipeline_over_limit" in r:
                s3 = result["configs"][name]["pipeline_s3"]
                line = (f"  {name}: from {result['s3_input']} {s3['img_per_s']:.1f} img/s, / limit "
                        f"{r['s3_pipeline_over_limit']:.2f} (limit {r['s3_engine_decode_limit_img_per_s']:.1f} img/s "
                        "around these runs)")
                if "s3_emulator_cores" in r:  # --s3: the emulator shared the cores
                    line += (f"; the emulator used {s3['emulator_cpu_ms_per_image']:.2f} CPU ms per image "
                             f"({r['s3_emulator_cores']:.2f} of the {result['cores']} cores): / the "
                             f"limit on the cores it left {r['s3_pipeline_over_limit_on_cores_left']:.2f}")
                lines.append(line)
    for name, c in result["configs"].items():
        for key, where in (("pipeline", "local"), ("pipeline_s3", "s3")):
            if key in c:
                stages = _fixed_stages(c[key]["timings_s"])
                lines.append(f"  {name} ({where}): fixed-cost stages (median s) "
                             + ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
                             + f"; sum {sum(stages.values()):.2f}")
    sample = result.get("sample_run", {})
    if "fixed_s" in sample:
        lines.append("sample run (python -m p8utils run on data_sample, a fresh process): stages besides featurize and "
                     "weights " + ", ".join(f"{k} {v:.2f}" for k, v in sample["fixed_s"].items())
                     + f" s; sum {sample['fixed_sum_s']:.2f} s (featurize {sample['timings_s']['featurize']:.2f}, "
                     f"weights {sample['timings_s'].get('weights', 0):.2f}, whole command {sample['wall_s']:.1f} s)")
    elif sample:
        lines.append(f"sample run failed: {sample.get('error', '')[-300:]}")
    if result["weights"] == "offline":
        lines.append("  probe on offline weights: it cannot judge input sizes or engines (ImageNet weights keep 100 % "
                     "at 96-224 px on Fruits-360, README > Performance); run with --weights imagenet to judge them")
    if seeds:
        lines.append(f"{'seeds method (keras:224, rebuild/task, predict, repartition)':62} {seeds:8.1f} img/s")
    machine = result["machine"]
    verdict = {True: "tflite-int8 can gain here (VNNI/AMX int8 kernels)",
               False: "tflite-int8 cannot gain here: no " + "/".join(_INT8_FLAGS) + " (int8 runs at fp32 speed, "
                      "half the memory)",
               None: "int8 flags unknown on this platform"}[machine.get("int8_can_gain")]
    lines.append(f"CPU: {machine.get('cpu_model')}; flags {', '.join(machine.get('cpu_flags') or []) or 'unknown'}: "
                 + verdict)
    lines.append(f"Spark read+Arrow+parquet with a no-op UDF: {result['spark_io_noop']['img_per_s']:.0f} img/s")
    for size, p in result["profile_ms_per_image_one_core"].items():
        lines.append(f"per image on one core at {size}: decode+resize {p['decode_resize_ms']:.2f} ms, "
                     f"preprocess {p['preprocess_ms']:.2f} ms")
    for label, p in result["pca"].items():
        parts = [f"{m} {p[m]['median_s']:.2f} s" for m in pca.PCA_METHODS if m in p]
        extra = f" (spark_ml / covariance = {p['speedup']:.1f}x)" if "speedup" in p else ""
        lines.append(f"PCA fit {label} ({p['rows']} x 1280): " + ", ".join(parts) + extra)
    m = result["memory"]
    seeds_rss = result.get("seeds", {}).get("python_worker_peak_mb")
    lines.append(f"peak RSS: Python workers {m['python_worker_peak_mb']:.0f} MiB (max over the engines and the PCA)"
                 + (f", {seeds_rss:.0f} MiB in the seeds' method" if seeds_rss is not None else "")
                 + f", JVM driver {m['jvm_driver_peak_mb']:.0f} MiB, "
                 f"Python driver {m['python_driver_peak_mb']:.0f} MiB")
    lines.append("")
    lines.append("targets (2 cores, same run):")
    for t in result["targets"]:
        mark = {True: "ok  ", False: "MISS", None: "n/a "}[t["met"]]
        lines.append(f"  [{mark}] {t['what']}: {t['value']}")
    return "\n".join(lines)


#: The stages whose cost grows with the run (or that a warm cache skips); every other stage is a fixed cost.
_SIZE_STAGES = ("featurize", "weights")


def _fixed_stages(timings: Sequence[Dict[str, float]]) -> Dict[str, float]:
    """Median seconds of each stage a run pays whatever its size (all but ``featurize`` and ``weights``)."""
    names = [k for k in timings[0] if k not in _SIZE_STAGES]
    return {k: statistics.median(t.get(k, 0.0) for t in timings) for k in names}


def _targets(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    """List the issue's targets, each with its measured value and whether it is met (None: not measured)."""
    configs = result["configs"]
    ref = configs.get(_name(*_REFERENCE))
    int8 = configs.get(_name("tflite-int8", 224))
    seeds = result.get("seeds", {}).get("img_per_s")
    out: List[Dict[str, Any]] = []

    def add(what: str, value: Optional[float], met: Optional[bool], fmt: str = "{:.2f}") -> None:
        out.append({"what": what, "value": "not measured" if value is None else fmt.format(value), "met": met,
                    "raw_value": value})

    fp32 = ref["pipeline"]["img_per_s"] / ref["raw"]["best"] if ref else None
    add("fp32-224 pipeline / raw fp32-224 engine (best of 1x2 and 2x1) >= 0.9", fp32,
        None if fp32 is None else fp32 >= 0.9)
    ratio = int8["pipeline"]["img_per_s"] / ref["pipeline"]["img_per_s"] if ref and int8 else None
    add("int8-224 pipeline / fp32-224 pipeline >= 2", ratio, None if ratio is None else ratio >= 2.0)
    ok_probe = bool(ref and ref.get("probe"))
    delta = (100 * (int8["probe"]["mean_accuracy"] - ref["probe"]["mean_accuracy"])
             if ok_probe and int8 and int8.get("probe") else None)
    add("int8-224 probe accuracy - fp32-224, points (within 0.5)", delta,
        None if delta is None else abs(delta) <= _TARGETS["probe_points"], "{:+.2f}")
    fastest = result.get("fastest_within_probe")
    speed = configs[fastest]["pipeline"]["img_per_s"] if fastest else None
    add(f"fastest configuration within 0.5 point of fp32-224 ({fastest}) x seeds >= 8",
        speed / seeds if speed and seeds else None, None if not (speed and seeds) else speed / seeds >= 8.0, "{:.1f}")
    add("moonshot: that configuration >= 400 img/s end to end (featurize stage)", speed,
        None if speed is None else speed >= _TARGETS["moonshot_img_per_s"], "{:.0f}")
    big = result["pca"].get("100k")
    cov = big["covariance"]["median_s"] if big and "covariance" in big else None
    add("PCA fit on 100,000 x 1280 <= 10 s (covariance, the default)", cov, None if cov is None else cov <= 10.0)
    for name, r in result.get("ratios", {}).items():
        for key, where in (("pipeline_over_limit", "a local folder"),
                           ("s3_pipeline_over_limit", result.get("s3_input"))):
            if key in r:
                add(f"{name} pipeline / engine+decode limit >= 0.9, {where}", r[key], r[key] >= 0.9)
    sample = result.get("sample_run", {})
    fixed = sample.get("fixed_sum_s")
    add("sample run's stages besides featurize and weights <= 10 s", fixed,
        None if fixed is None else fixed <= 10.0, "{:.2f} s")
    rss = result["memory"]["python_worker_peak_mb"]
    add("Python worker peak RSS <= 1.5 GiB with any engine (MiB)", rss, rss <= _TARGETS["worker_rss_mb"], "{:.0f}")
    return out


def _configs(text: str) -> List[Tuple[str, int]]:
    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        engine, _, size = item.partition(":")
        engines.get_engine(engine)
        out.append((engine, int(size or 224)))
    return out


def _default_configs() -> str:
    grid = [_name(e, s) for e in ("tflite", "tflite-int8") for s in sorted(models.IMAGE_SIZES, reverse=True)]
    return ",".join(grid + [_name("keras", models.DEFAULT_IMAGE_SIZE)])


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark; print the table and write the JSON."""
    parser = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--input", type=Path, default=_REAL_PHOTOS if _REAL_PHOTOS.is_dir() else _REPO_SAMPLE,
                        help="image folder (one sub-folder per class), repeated up to --min-images")
    parser.add_argument("--min-images", type=int, default=2000, help="images to benchmark on")
    parser.add_argument("--master", default="local[2]", help="Spark master")
    parser.add_argument("--configs", default=_default_configs(),
                        help="comma-separated engine:size to measure (tflite:224, the reference, is always added)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="model batch size")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measure (median reported)")
    parser.add_argument("--warmups", type=int, default=1, help="untimed runs before each measure's timed ones")
    parser.add_argument("--raw-images", type=int, default=256,
                        help="images for the raw engine measure and the decode profile (spread over the input)")
    parser.add_argument("--weights", default="offline",
                        help="weights (offline: same architecture and cost as imagenet, no download)")
    parser.add_argument("--probe-seeds", type=int, default=3, help="stratified splits the probe is averaged over")
    parser.add_argument("--probe-max-iter", type=int, default=probe.DEFAULT_MAX_ITER,
                        help="L-BFGS iterations of each probe (p8utils.probe's default; 20 with --quick)")
    parser.add_argument("--pca-rows", default="3000,100000", help="rows of the two synthetic PCA tables")
    parser.add_argument("--skip-seeds", action="store_true", help="do not run the seeds' method")
    parser.add_argument("--seeds-partitions", type=int, default=20,
                        help="partitions of the seeds' method (their notebook's repartition(20))")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: tflite at 224 and 96, tflite-int8 at 96, one repeat, no warm-up, "
                        "small measures, 20 probe iterations")
    parser.add_argument("--s3", action="store_true",
                        help="also run each configuration's pipeline on an s3:// copy of the input, served by moto's "
                        "S3 server on this machine (its CPU is measured and reported apart)")
    parser.add_argument("--s3-uri", default=None,
                        help="also run each configuration's pipeline from this S3 prefix (s3://bucket/prefix) of a "
                        "real bucket: the input is uploaded there (objects already there with the same size are "
                        "kept), with this machine's AWS credentials (on EMR, the node's instance profile)")
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON (default runs/bench-*.json)")
    args = parser.parse_args(argv)
    if args.quick:
        args.configs, args.repeats, args.raw_images = "tflite:224,tflite-int8:96,tflite:96", 1, 8
        args.probe_seeds, args.pca_rows, args.seeds_partitions, args.warmups = 1, "300,1000", 4, 0
        args.probe_max_iter = 20
    configs = _configs(args.configs)
    if _REFERENCE not in configs:
        configs.insert(0, _REFERENCE)
    pca_rows = [int(r) for r in args.pca_rows.split(",") if r]

    from p8utils.spark import get_spark

    work = Path(tempfile.mkdtemp(prefix="p8bench-"))
    stack = contextlib.ExitStack()
    try:
        folder = prepare_input(args.input, args.min_images, work)
        distinct_only = folder != args.input  # repeated copies: probe the first copy of each photo only
        s3_uri, emulator = stack.enter_context(s3_input(folder, args.s3_uri, args.s3))
        spark = get_spark(args.master, app_name="p8utils-bench",
                          conf={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"})
        cores = spark.sparkContext.defaultParallelism
        files = sorted(p for p in folder.rglob("*.jpg"))
        # the engine's and the decode's images: spread over the input (every class), not its first class's few photos
        # (the first 256 of the repeated input were 20 apple photos, 14 % smaller than the average: a cheaper decode)
        measured = files[:: max(1, len(files) // args.raw_images)][: args.raw_images]
        print(f"bench: {len(files)} images ({args.input}), master {args.master} ({cores} cores), batch "
              f"{args.batch_size}, repeats {args.repeats}, configurations {[_name(*c) for c in configs]}", flush=True)
        sizes = sorted({s for _, s in configs}, reverse=True)
        bundles = {s: models.load_weights("mobilenet_v2", args.weights, spark=spark, image_size=s) for s in sizes}
        profile = {str(s): cpu_profile(measured, bundles[s].spec, args.batch_size, args.repeats)
                   for s in sizes}
        io_run = spark_io_throughput(spark, folder, bundles[sizes[0]].spec.width, work / "noop", args.repeats,
                                     args.warmups)
        # the reference first, then by engine (worker memory is the peak so far), keras last (TensorFlow in workers)
        order = sorted(configs, key=lambda c: (c != _REFERENCE, c[0] == "keras", c[0], -c[1]))
        results: Dict[str, Dict[str, Any]] = {}
        for engine, size in order:
            name = _name(engine, size)
            bundle = bundles[size]
            entry: Dict[str, Any] = {"engine": engine, "size": size}
            calibration = None
            if engines.get_engine(engine).calibrated:
                calibration = calibration_images(spark, folder, bundle.spec)
                before = set(os.listdir(engines.cache_dir())) if os.path.isdir(engines.cache_dir()) else set()
                start = time.perf_counter()
                engines.payload(bundle, engine, calibration)
                entry["int8_prepare_s"] = time.perf_counter() - start
                entry["int8_from_cache"] = set(os.listdir(engines.cache_dir())) == before
            x = _preprocessed(measured, bundle.spec)
            entry["decode_ms"] = {}
            # the engine and the decode right before and after each set of runs (_LIMIT_MEASURES): this VM's speed
            # drifts by up to a quarter within one size's runs
            limit_args = (bundle, engine, x, measured, args.batch_size, args.repeats, cores,
                          calibration)
            entry["raw"], entry["decode_ms"]["raw"] = limit_measure(*limit_args)
            run_params = dict(weights=args.weights, engine=engine, image_size=size, batch_size=args.batch_size, k=10)
            entry["pipeline"] = pipeline_throughput(spark, folder, work / "runs" / name.replace(":", "-"),
                                                    args.repeats, args.warmups, **run_params)
            if s3_uri is not None:
                entry["raw_between"], entry["decode_ms"]["raw_between"] = limit_measure(*limit_args)
                before = _cpu_s(emulator) if emulator is not None else 0.0
                s3_out = work / "runs" / (name.replace(":", "-") + "-s3")
                entry["pipeline_s3"] = pipeline_throughput(spark, s3_uri, s3_out, args.repeats, args.warmups,
                                                           **run_params)
                if emulator is not None:
                    runs_done = entry["pipeline_s3"]["images"] * (args.repeats + args.warmups)
                    entry["pipeline_s3"]["emulator_cpu_ms_per_image"] = 1000 * (_cpu_s(emulator) - before) / runs_done
            entry["raw_after"], entry["decode_ms"]["raw_after"] = limit_measure(*limit_args)
            entry["python_worker_peak_mb"] = memory_snapshot()["python_worker_peak_mb"]
            results[name] = entry
            print(f"bench: {name}: raw " + " / ".join(f"{entry[k]['best']:.1f}" for k in _LIMIT_MEASURES if k in entry)
                  + f" ({' / '.join(w for k, w in _LIMIT_MEASURES.items() if k in entry)}), "
                  f"pipeline {entry['pipeline']['img_per_s']:.1f} img/s"
                  + (f", from s3:// {entry['pipeline_s3']['img_per_s']:.1f}" if "pipeline_s3" in entry else ""),
                  flush=True)
        ref_path = results[_name(*_REFERENCE)]["pipeline"]["features_path"]
        seeds_list = list(range(args.probe_seeds))
        for name, entry in results.items():
            if name != _name(*_REFERENCE):
                entry["cosine_vs_reference"] = cosine_stats(ref_path, entry["pipeline"]["features_path"])
            if entry["engine"] == "tflite-int8" and _name("tflite", entry["size"]) in results:
                entry["cosine_vs_fp32_same_size"] = cosine_stats(
                    results[_name("tflite", entry["size"])]["pipeline"]["features_path"],
                    entry["pipeline"]["features_path"])
            entry["probe"] = probe_scores(spark, entry["pipeline"]["features_path"], seeds_list, distinct_only,
                                          args.probe_max_iter)
            print(f"bench: {name}: probe {100 * entry['probe']['mean_accuracy']:.2f} %", flush=True)
        ref = results[_name(*_REFERENCE)]
        within = [n for n, e in results.items()
                  if 100 * (ref["probe"]["mean_accuracy"] - e["probe"]["mean_accuracy"]) <= _TARGETS["probe_points"]]
        fastest = max(within, key=lambda n: results[n]["pipeline"]["img_per_s"]) if within else None

        pca_result: Dict[str, Any] = {"pipeline features": pca_fit_times(
            spark, Path(ref_path), {"covariance": args.repeats, "spark_ml": max(1, args.repeats - 1)}, args.warmups)}
        for n_rows in pca_rows:
            label = f"{n_rows // 1000}k" if n_rows % 1000 == 0 else str(n_rows)
            table = synthetic_features(work / f"pca-{n_rows}", n_rows)
            pca_result[label] = pca_fit_times(spark, table, {"covariance": args.repeats, "spark_ml": 1}, args.warmups)
            print(f"bench: PCA {label}: " + ", ".join(f"{m} {pca_result[label][m]['median_s']:.1f} s"
                                                      for m in pca.PCA_METHODS), flush=True)
        result: Dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform(), **cpu_int8()},
            "master": args.master, "cores": cores, "s3_input": s3_uri, "s3_emulated": emulator is not None,
            "images": ref["pipeline"]["images"], "input": str(args.input),
            "batch_size": args.batch_size, "repeats": args.repeats, "weights": bundles[sizes[0]].source,
            "reference": _name(*_REFERENCE), "probe_seeds": seeds_list, "probe_n_test": ref["probe"]["n_test"],
            "probe_distinct_photos_only": distinct_only,
            "configs": results, "fastest_within_probe": fastest,
            "profile_ms_per_image_one_core": profile, "spark_io_noop": io_run, "pca": pca_result,
            "memory": memory_snapshot(),
        }
        # Python workers come and go (idle ones are stopped): the peak is the largest seen after any configuration
        result["memory"]["python_worker_peak_mb"] = max(
            [result["memory"]["python_worker_peak_mb"]] + [c["python_worker_peak_mb"] for c in results.values()])
        result["sample_run"] = sample_run(work, args.weights)
        if not args.skip_seeds:  # last, and its workers' peak apart: the seeds' method is not one of the engines
            result["seeds"] = seeds_throughput(spark, folder, bundles[_REFERENCE[1]], work / "seeds",
                                               max(1, args.repeats - 1), args.seeds_partitions, args.warmups)
            after = memory_snapshot()
            result["seeds"]["python_worker_peak_mb"] = after.pop("python_worker_peak_mb")
            result["memory"].update(after)  # the JVM's and this driver's peaks over the whole run
        result["ratios"] = _ratios(result)
        result["targets"] = _targets(result)
        print(_table(result))
        target = args.json or Path("runs") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(result, indent=2, default=str))
        print(f"bench: JSON -> {target}")
        return 0
    finally:
        stack.close()
        shutil.rmtree(work, ignore_errors=True)


#: When a configuration's engine and decode are measured: before its local runs, between them and its S3 runs
#: (with an S3 input), after its last runs.
_LIMIT_MEASURES = {"raw": "before", "raw_between": "between", "raw_after": "after"}


def engine_decode_limit(result: Dict[str, Any], config: Dict[str, Any], runs: str = "pipeline") -> float:
    """Return what the cores can do if only the engine and the decode ran, img/s: cores / (engine + decode s).

    The engine's seconds per image on one core come from its ``cores`` × 1
    thread measure (``cores / per_core``), the decode's (decode + resize +
    preprocess) from a one-core profile at its size, each the mean of the
    measures taken right before and right after ``runs`` (``"pipeline"``, the
    local runs, or ``"pipeline_s3"``): ``raw`` and ``raw_between`` for the local
    runs when S3 runs followed them (else ``raw_after``), ``raw_between`` and
    ``raw_after`` for the S3 runs. A JSON of before 2026-12-03 (no
    ``raw_between``, no ``decode_ms``): ``raw`` and ``raw_after``, and the
    benchmark's one profile at that size.
    """
    cores = result["cores"]
    around = {"pipeline": ("raw", "raw_between" if "raw_between" in config else "raw_after"),
              "pipeline_s3": ("raw_between" if "raw_between" in config else "raw", "raw_after")}[runs]
    per_core = statistics.mean(config[k]["per_core"] for k in around if k in config)
    if "decode_ms" in config:
        decode_ms = statistics.mean(config["decode_ms"][k] for k in around if k in config["decode_ms"])
    else:
        p = result["profile_ms_per_image_one_core"][str(config["size"])]
        decode_ms = p["decode_resize_ms"] + p["preprocess_ms"]
    return cores / (cores / per_core + decode_ms / 1000)


def _ratios(result: Dict[str, Any]) -> Dict[str, Any]:
    """Compute the ratios the issue asks about, by configuration: pipeline / raw, / fp32-224, / seeds."""
    configs = result["configs"]
    ref = configs[result["reference"]]["pipeline"]["img_per_s"]
    seeds = result.get("seeds", {}).get("img_per_s")
    out: Dict[str, Any] = {}
    for name, c in configs.items():
        pipe, limit = c["pipeline"]["img_per_s"], engine_decode_limit(result, c)
        out[name] = {"pipeline_over_raw": pipe / c["raw"]["best"], "pipeline_over_fp32_224": pipe / ref,
                     "pipeline_over_seeds": pipe / seeds if seeds else None,
                     "probe_points_vs_fp32_224": 100 * (c["probe"]["mean_accuracy"]
                                                        - configs[result["reference"]]["probe"]["mean_accuracy"]),
                     "engine_decode_limit_img_per_s": limit, "pipeline_over_limit": pipe / limit}
        if "pipeline_s3" in c:
            s3, s3_limit = c["pipeline_s3"], engine_decode_limit(result, c, "pipeline_s3")
            out[name].update(s3_engine_decode_limit_img_per_s=s3_limit,
                             s3_pipeline_over_limit=s3["img_per_s"] / s3_limit)
            if "emulator_cpu_ms_per_image" not in s3:  # a real bucket: its servers are not on these cores
                continue
            # the emulator serves its GETs on the same cores: what it used, it took from the pipeline
            emulator_cores = s3["emulator_cpu_ms_per_image"] * s3["img_per_s"] / 1000
            out[name].update(s3_emulator_cores=emulator_cores,
                             s3_pipeline_over_limit_on_cores_left=s3["img_per_s"] / (
                                 s3_limit * max(result["cores"] - emulator_cores, 1e-9) / result["cores"]))
    fastest = result.get("fastest_within_probe")
    out["fastest_within_probe"] = {"config": fastest, "over_seeds": out[fastest]["pipeline_over_seeds"]
                                   if fastest else None}
    big = result["pca"].get("100k")
    if big and "speedup" in big:
        out["pca_100k_spark_ml_over_covariance"] = big["speedup"]
    return out


if __name__ == "__main__":
    sys.exit(main())
