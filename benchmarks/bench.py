"""Benchmark: the pipeline against the raw model, in one run (``python benchmarks/bench.py``, ``make bench``).

Measured on the same images, the same Spark master and the same cores:

1. **raw engine throughput**: each engine alone on pre-decoded, preprocessed
   batches, both as one process using every core and as one single-threaded
   process per core (the better of the two is the engine's limit);
2. **end-to-end pipeline throughput**: read (``binaryFile``) → decode →
   featurize → parquet write, per engine;
3. **the seeds' method** as a reference point: model rebuilt in every task,
   ``model.predict`` per Arrow batch, ``repartition`` shuffling image bytes;
4. **PCA fit time** on the pipeline's features, and the **peak RSS** of the
   Python workers (after a half-size and a full-size run: no growth with input
   size), the Python driver and the JVM driver.

Warm-up runs are excluded; each figure is the median of ``--repeats`` runs.
Prints a table and writes it as JSON. This is a benchmark, not a test: the
test suite only checks that it runs on a tiny input (``tests/test_bench.py``).
It lives outside the package and uses only p8utils' public API (the engines
through :func:`p8utils.engines.get_engine`, as the featurization UDF does); it
needs p8utils installed with its ``spark`` and ``tf`` extras (``make install``).
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import pandas as pd

from p8utils import engines, images, models, pca
from p8utils.featurize import DEFAULT_BATCH_SIZE, FEATURES_TYPE, featurize
from p8utils.images import decode_image

__all__ = ["prepare_input", "raw_throughput", "pipeline_throughput", "seeds_throughput", "main"]

_REPO_SAMPLE = Path(__file__).resolve().parents[1] / "data_sample"


# --------------------------------------------------------------------------- input


def prepare_input(source: Path, min_images: int, workdir: Path) -> Path:
    """Return a folder with at least ``min_images`` images (``source`` repeated if needed).

    Copies are named ``<repeat>_<name>`` in the same class folders, so labels
    and byte sizes are those of the source; ``source`` is used as is when it is
    large enough.
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


def _preprocessed(files: Sequence[Path], spec: models.ModelSpec) -> np.ndarray:
    """Decode and preprocess files: float32 array ``(n, h, w, 3)``."""
    arrays = [decode_image(f.read_bytes(), spec.input_size)[0] for f in files]
    return spec.preprocess(np.stack([a for a in arrays if a is not None]))


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
    spec_name, payload, engine, x, batch_size, repeats, barrier = args
    spec = models.get_spec(spec_name)
    predict = engines.get_engine(engine).build(spec, payload, 1)
    predict(x[:batch_size])
    barrier.wait()
    return _time_predictor(predict, x, batch_size, repeats)


def raw_throughput(bundle: models.WeightsBundle, engine: str, x: np.ndarray, batch_size: int,
                   repeats: int, cores: int) -> Dict[str, float]:
    """Images/s of the engine alone on preprocessed batches ``x`` (n, h, w, 3).

    Returns
    -------
    dict
        ``one_process`` (one process, ``cores`` threads), ``per_core`` (``cores``
        single-threaded processes at once, aggregate), and ``best``.
    """
    payload = engines.payload(bundle, engine)
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(cores)
        with ctx.Pool(cores) as pool:
            per_proc = pool.map(_raw_worker, [(bundle.spec.name, payload, engine, x, batch_size, repeats, barrier)
                                              for _ in range(cores)])
    per_core = statistics.median(cores * len(x) / max(t[i] for t in per_proc) for i in range(repeats))
    # one process using every core: in a child too, so TF's thread pools are fresh
    with ctx.Pool(1) as pool:
        times = pool.apply(_one_process, (bundle.spec.name, payload, engine, x, batch_size, repeats, cores))
    one = statistics.median(len(x) / t for t in times)
    return {"one_process": one, "per_core": per_core, "best": max(one, per_core)}


def _one_process(spec_name: str, payload: Any, engine: str, x: np.ndarray, batch_size: int, repeats: int,
                 threads: int) -> List[float]:  # pragma: no cover - runs in a child process
    """Time one engine process with ``threads`` threads."""
    predict = engines.get_engine(engine).build(models.get_spec(spec_name), payload, threads)
    return _time_predictor(predict, x, batch_size, repeats)


# --------------------------------------------------------------------------- Spark runs


def _descendants(pid: int) -> List[int]:
    """PIDs of every descendant process of ``pid`` (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def _peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a process, MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cmd(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def memory_snapshot() -> Dict[str, float]:
    """Peak RSS (MiB) of the Python workers (max), the JVM driver and this Python driver."""
    procs = _descendants(os.getpid())
    workers = [p for p in procs if "pyspark.daemon" in _cmd(p) or "pyspark.worker" in _cmd(p)]
    jvms = [p for p in procs if "java" in _cmd(p).split(" ")[0]]
    return {
        "python_worker_peak_mb": max((_peak_rss_mb(p) for p in workers), default=0.0),
        "python_workers": len(workers),
        "jvm_driver_peak_mb": max((_peak_rss_mb(p) for p in jvms), default=0.0),
        "python_driver_peak_mb": _peak_rss_mb(os.getpid()),
    }


def _timed_runs(run: Callable[[], None], repeats: int, warmup: int = 1) -> List[float]:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def pipeline_throughput(spark, folder: Path, bundle: models.WeightsBundle, engine: str, batch_size: int,
                        out: Path, repeats: int) -> Dict[str, Any]:
    """End-to-end images/s: ``binaryFile`` read → decode → featurize → parquet write."""
    n = images.load_images(spark, str(folder)).count()

    def run() -> None:
        df = featurize(images.load_images(spark, str(folder)), bundle, batch_size=batch_size, engine=engine)
        df.select("path", "label", "features", "error").write.mode("overwrite").parquet(str(out))

    times = _timed_runs(run, repeats)
    return {"images": n, "seconds": times, "img_per_s": n / statistics.median(times)}


def _seeds_udf_body(batches: Iterator[pd.Series], spec_name: str, arrays_fn: Callable[[], list]
                    ) -> Iterator[pd.Series]:  # pragma: no cover - runs in Spark workers
    """Run the seeds' UDF: build the model for every task, ``model.predict`` every batch."""
    import keras
    from PIL import Image

    spec = models.get_spec(spec_name)
    model = models.build_model(spec, arrays_fn())  # rebuilt per task, as they did
    for content in batches:
        arrays = [keras.utils.img_to_array(Image.open(io.BytesIO(c)).convert("RGB").resize(spec.input_size))
                  for c in content]
        preds = model.predict(spec.preprocess(np.stack(arrays)), verbose=0)
        yield pd.Series([p.flatten() for p in preds])


def seeds_throughput(spark, folder: Path, bundle: models.WeightsBundle, out: Path, repeats: int,
                     partitions: int = 20) -> Dict[str, Any]:
    """Images/s of the seeds' notebook method on the same images (Keras engine)."""
    from pyspark.sql import functions as F

    bc = spark.sparkContext.broadcast(bundle.arrays)
    spec_name = bundle.spec.name

    @F.pandas_udf("array<float>")  # type: ignore[call-overload]
    def seeds_udf(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        return _seeds_udf_body(batches, spec_name, lambda: bc.value)

    n = images.load_images(spark, str(folder)).count()

    def run() -> None:
        df = images.load_images(spark, str(folder)).repartition(partitions)
        df.select("path", "label", seeds_udf("content").alias("features")).write.mode("overwrite").parquet(str(out))

    times = _timed_runs(run, repeats)
    return {"images": n, "seconds": times, "img_per_s": n / statistics.median(times), "partitions": partitions}


def _noop_udf_body(batches: Iterator[pd.Series], width: int) -> Iterator[pd.DataFrame]:  # pragma: no cover
    """Return zero features without decoding anything (measures Spark I/O alone)."""
    zeros = np.zeros(width, np.float32)
    for content in batches:
        yield pd.DataFrame({"features": [zeros] * len(content), "error": [None] * len(content)})


def spark_io_throughput(spark, folder: Path, width: int, out: Path, repeats: int) -> Dict[str, Any]:
    """Images/s of read → Arrow → no-op UDF → Arrow → parquet write (the pipeline minus the work)."""
    from pyspark.sql import functions as F

    @F.pandas_udf(FEATURES_TYPE)  # type: ignore[call-overload]
    def noop(batches: Iterator[pd.Series]) -> Iterator[pd.DataFrame]:
        return _noop_udf_body(batches, width)

    n = images.load_images(spark, str(folder)).count()

    def run() -> None:
        df = images.load_images(spark, str(folder)).withColumn("r", noop("content"))
        df.select("path", "label", "r.features", "r.error").write.mode("overwrite").parquet(str(out))

    times = _timed_runs(run, repeats)
    return {"images": n, "seconds": times, "img_per_s": n / statistics.median(times)}


def cpu_profile(files: Sequence[Path], spec: models.ModelSpec, batch_size: int, repeats: int) -> Dict[str, float]:
    """Single-core milliseconds per image of decode+resize and of preprocessing (as the UDF does them)."""
    data = [f.read_bytes() for f in files]
    w, h = spec.input_size
    chunk = np.empty((batch_size, h, w, 3), np.uint8)
    buf = np.empty((batch_size, h, w, 3), np.float32)
    decode, prep = [], []
    for _ in range(repeats + 1):
        td = tp = 0.0
        for i in range(0, len(data), batch_size):
            part = data[i: i + batch_size]
            t0 = time.perf_counter()
            for j, d in enumerate(part):
                arr, _ = decode_image(d, (w, h))
                if arr is not None:
                    chunk[j] = arr
            t1 = time.perf_counter()
            spec.preprocess(chunk[: len(part)], out=buf[: len(part)])
            tp += time.perf_counter() - t1
            td += t1 - t0
        decode.append(1000 * td / len(data))
        prep.append(1000 * tp / len(data))
    return {"decode_resize_ms": statistics.median(decode[1:]), "preprocess_ms": statistics.median(prep[1:])}


def pca_fit_seconds(spark, features_path: Path, repeats: int) -> List[float]:
    """Seconds of :func:`p8utils.pca.fit_pca` (variance 0.95) on a features parquet."""
    df = spark.read.parquet(str(features_path))
    return _timed_runs(lambda: pca.fit_pca(df, variance=0.95), repeats)


# --------------------------------------------------------------------------- report


def _table(result: Dict[str, Any]) -> str:
    """Human-readable table of a benchmark result."""
    lines = []
    best_raw = result["raw_best_img_per_s"]
    seeds = result.get("seeds", {}).get("img_per_s")
    lines.append(f"{'measure':46} {'img/s':>8} {'÷ raw best':>10} {'× seeds':>8}")
    for engine, r in result["raw"].items():
        lines.append(f"{'raw ' + engine + ', 1 process × ' + str(result['cores']) + ' threads':46} "
                     f"{r['one_process']:8.1f}")
        lines.append(f"{'raw ' + engine + ', ' + str(result['cores']) + ' processes × 1 thread':46} "
                     f"{r['per_core']:8.1f}")
    for engine, r in result["pipeline"].items():
        ratio = r["img_per_s"] / best_raw
        speed = f"{r['img_per_s'] / seeds:8.1f}" if seeds else ""
        lines.append(f"{'pipeline end-to-end, engine=' + engine:46} {r['img_per_s']:8.1f} {ratio:10.2f} {speed}")
    if seeds:
        lines.append(f"{'seeds method (rebuild/task, predict, repartition)':46} {seeds:8.1f} "
                     f"{seeds / best_raw:10.2f} {1.0:8.1f}")
    m = result["memory"]
    p = result["profile_ms_per_image_one_core"]
    lines.append("")
    lines.append(f"per image on one core: decode+resize {p['decode_resize_ms']:.2f} ms, preprocess "
                 f"{p['preprocess_ms']:.2f} ms; inference at the raw best {1000 * result['cores'] / best_raw:.2f} ms; "
                 f"Spark read+Arrow+parquet with a no-op UDF: {result['spark_io_noop']['img_per_s']:.0f} img/s")
    lines.append(f"PCA fit (1280-d, {result['images']} rows): median {result['pca_fit_s']:.2f} s = "
                 f"{result['pca_fit_share']:.0%} of featurization time ({result['featurize_s']:.1f} s)")
    for engine, mb in result["python_worker_peak_mb_by_engine"].items():
        lines.append(f"peak RSS of Python workers up to engine={engine}: {mb['after_half_input']:.0f} MiB after "
                     f"half the input, {mb['after_full_input']:.0f} MiB after all of it")
    lines.append(f"peak RSS: JVM driver {m['jvm_driver_peak_mb']:.0f} MiB, Python driver "
                 f"{m['python_driver_peak_mb']:.0f} MiB")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the benchmark; print the table and write the JSON."""
    parser = argparse.ArgumentParser(prog="python benchmarks/bench.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--input", type=Path, default=_REPO_SAMPLE,
                        help="image folder (one sub-folder per class), repeated up to --min-images")
    parser.add_argument("--min-images", type=int, default=2000, help="images to benchmark on")
    parser.add_argument("--master", default="local[2]", help="Spark master")
    default_engines = sorted(engines.ENGINES, key=lambda e: e != engines.DEFAULT_ENGINE)
    parser.add_argument("--engines", default=",".join(default_engines),
                        help="comma-separated engines (the default engine first: worker memory is per engine)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="model batch size")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measure (median reported)")
    parser.add_argument("--raw-images", type=int, default=256, help="images for the raw engine measure")
    parser.add_argument("--weights", default="offline",
                        help="weights (offline: same architecture and cost as imagenet, no download)")
    parser.add_argument("--skip-seeds", action="store_true", help="do not run the seeds' method")
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON (default runs/bench-*.json)")
    args = parser.parse_args(argv)

    from p8utils.spark import get_spark

    chosen = [e for e in args.engines.split(",") if e]
    work = Path(tempfile.mkdtemp(prefix="p8bench-"))
    try:
        folder = prepare_input(args.input, args.min_images, work)
        half = prepare_input(args.input, max(1, args.min_images // 2), work / "half")
        spark = get_spark(args.master, app_name="p8utils-bench", conf={"spark.ui.enabled": "false"})
        cores = spark.sparkContext.defaultParallelism
        bundle = models.load_weights("mobilenet_v2", args.weights, spark=spark)
        files = sorted(p for p in folder.rglob("*.jpg"))[: args.raw_images]
        x = _preprocessed(files, bundle.spec)
        print(f"bench: {len(list(folder.rglob('*.jpg')))} images, master {args.master} ({cores} cores), "
              f"batch {args.batch_size}, repeats {args.repeats}", flush=True)

        raw = {e: raw_throughput(bundle, e, x, args.batch_size, args.repeats, cores) for e in chosen}
        print("bench: raw done", {e: round(r["best"], 1) for e, r in raw.items()}, flush=True)
        profile = cpu_profile(files, bundle.spec, args.batch_size, args.repeats)
        io_run = spark_io_throughput(spark, folder, bundle.spec.width, work / "noop", args.repeats)
        pipe: Dict[str, Any] = {}
        worker_mb: Dict[str, Dict[str, float]] = {}
        for e in chosen:  # Python workers are reused: VmHWM after an engine's runs = max so far
            pipeline_throughput(spark, half, bundle, e, args.batch_size, work / f"half-{e}", 1)
            half_mb = memory_snapshot()["python_worker_peak_mb"]
            pipe[e] = pipeline_throughput(spark, folder, bundle, e, args.batch_size, work / f"out-{e}", args.repeats)
            worker_mb[e] = {"after_half_input": half_mb, "after_full_input": memory_snapshot()["python_worker_peak_mb"]}
            print(f"bench: pipeline {e} {pipe[e]['img_per_s']:.1f} img/s", flush=True)
        best_engine = max(pipe, key=lambda e: pipe[e]["img_per_s"])
        memory = memory_snapshot()
        pca_times = pca_fit_seconds(spark, work / f"out-{best_engine}", args.repeats)
        result: Dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform()},
            "master": args.master, "cores": cores, "images": pipe[best_engine]["images"],
            "batch_size": args.batch_size, "repeats": args.repeats, "weights": bundle.source,
            "raw": raw, "raw_best_img_per_s": max(r["best"] for r in raw.values()),
            "pipeline": pipe, "best_engine": best_engine,
            "profile_ms_per_image_one_core": profile, "spark_io_noop": io_run,
            "pca_fit_seconds": pca_times, "pca_fit_s": statistics.median(pca_times),
            "featurize_s": pipe[best_engine]["images"] / pipe[best_engine]["img_per_s"],
            "memory": memory, "python_worker_peak_mb_by_engine": worker_mb,
        }
        result["pca_fit_share"] = result["pca_fit_s"] / result["featurize_s"]
        if not args.skip_seeds:
            result["seeds"] = seeds_throughput(spark, folder, bundle, work / "seeds", max(1, args.repeats - 1))
            result["memory"] = memory_snapshot()
        result["ratio_pipeline_to_raw"] = pipe[best_engine]["img_per_s"] / result["raw_best_img_per_s"]
        if "seeds" in result:
            result["speedup_vs_seeds"] = pipe[best_engine]["img_per_s"] / result["seeds"]["img_per_s"]
        print(_table(result))
        target = args.json or Path("runs") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(result, indent=2))
        print(f"bench: JSON -> {target}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
