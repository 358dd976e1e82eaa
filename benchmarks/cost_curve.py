"""The cost curve: the pipeline on 1k, 10k and 100k images, then incremental runs adding 1 % and 10 %.

``python benchmarks/cost_curve.py`` (``make bench-scale``) builds inputs from real photos repeated
(hard links: no extra disk), runs the pipeline through its command line in a fresh process for each
size (``python -m p8utils run``, the same code a user runs), and reports for each run:

* wall seconds and seconds per image, and the manifest's seconds per stage;
* the peak resident memory of the Python driver, the JVM and the Python workers (their process tree
  is polled every 0.2 s);
* for the largest size, the listing alone: seconds and the driver's memory growth for the
  ``os.scandir`` listing of every file (:func:`p8utils.images.list_images`), in this process.

Then, on the 10k input and on top of its full run's output: an incremental run after adding 1 % new
images, one after adding 10 %, and the full run of that final folder, so that "incremental +10 % / full" is measured
on the same files in one go. It prints a table and writes JSON. This is a benchmark, not a test; it
takes about 20 minutes on 2 cores (most of it the 100k run).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import psutil

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "fruits360"

__all__ = ["build_input", "main", "run_cli"]


def _images(source: Path) -> List[Path]:
    return sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg") and p.is_file())


def build_input(source: Path, n: int, dest: Path, start: int = 0) -> Path:
    """Fill ``dest`` with ``n`` images: the photos of ``source`` repeated, as hard links (copies if links fail).

    Files are named ``<repeat>_<name>`` in their class folder; ``start`` offsets the repeat numbers, so
    that a later call adds new files next to earlier ones.
    """
    photos = _images(source)
    for i in range(start, start + n):
        src = photos[i % len(photos)]
        target = dest / src.parent.name / f"{i // len(photos):05d}_{src.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, target)
        except OSError:
            shutil.copy(src, target)
    return dest


def _kind(process: psutil.Process) -> str:
    """Tell what a process of the run is: ``jvm``, ``python_worker``, ``python_driver`` or ``other``."""
    try:
        cmd = " ".join(process.cmdline())
    except psutil.Error:
        return "other"
    if "java" in cmd.split(" ")[0]:
        return "jvm"
    if "pyspark.daemon" in cmd or "pyspark/worker" in cmd:
        return "python_worker"
    if "-m p8utils" in cmd:
        return "python_driver"
    return "other"


def _rss_mb(process: psutil.Process) -> float:
    """Resident set size of a process now, MiB; 0 once it is gone."""
    try:
        return process.memory_info().rss / 2**20
    except psutil.Error:
        return 0.0


def run_cli(args: Sequence[str], log: Path) -> Dict[str, Any]:
    """Run ``python -m p8utils run ARGS``; return wall seconds, exit code and peak RSS (MiB) per process kind."""
    peaks: Dict[str, float] = {}
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "p8utils", "run", *args, "--no-explorer"], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        done = threading.Event()

        def poll() -> None:
            while not done.wait(0.2):
                try:
                    tree = [root] + root.children(recursive=True)
                except psutil.Error:  # the run has ended
                    continue
                for process in tree:
                    kind = _kind(process)
                    peaks[kind] = max(peaks.get(kind, 0.0), _rss_mb(process))

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        code = proc.wait()
        done.set()
        watcher.join()
    return {"seconds": time.perf_counter() - start, "exit_code": code,
            "peak_rss_mb": {k: round(v, 1) for k, v in sorted(peaks.items()) if k != "other"}}


def _listing_cost(folder: Path) -> Dict[str, float]:
    """Seconds and driver RSS growth of listing ``folder`` with p8utils' own listing (a local Spark session)."""
    from p8utils.images import list_images
    from p8utils.spark import get_spark

    spark = get_spark("local[2]", conf={"spark.ui.enabled": "false"})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            before = _rss_mb(psutil.Process())
            start = time.perf_counter()
            listing = list_images(spark, str(folder), dest=str(Path(tmp) / "listing"))
            seconds = time.perf_counter() - start
            after = _rss_mb(psutil.Process())
            return {"files": listing.n_files, "seconds": round(seconds, 2),
                    "driver_rss_growth_mb": round(after - before, 1)}
    finally:
        spark.stop()


def _run(name: str, folder: Path, out: Path, work: Path, n: int, extra: Sequence[str] = ()) -> Dict[str, Any]:
    args = ["--input", str(folder), "--output", str(out), "--weights", "offline", "--master", "local[2]",
            "--k", "50", *extra]
    print(f"== {name}: {n} images", flush=True)
    res = run_cli(args, work / f"{name}.log")
    if res["exit_code"] != 0:
        raise SystemExit(f"{name} failed, see {work / (name + '.log')}")
    manifest = json.loads((out / "manifest.json").read_text())
    res.update(name=name, images=n, seconds_per_image=res["seconds"] / max(n, 1),
               featurized=manifest["counts"]["featurized"], timings_s=manifest["timings_s"],
               incremental=manifest.get("incremental"))
    print(f"   {res['seconds']:.1f} s, {1000 * res['seconds_per_image']:.2f} ms/image, peak RSS {res['peak_rss_mb']}",
          flush=True)
    return res


def main(argv: Optional[List[str]] = None) -> int:
    """Build the inputs, run every size and the incremental runs, print the table, write JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", type=Path, default=REAL if REAL.is_dir() else ROOT / "data_sample")
    p.add_argument("--sizes", default="1000,10000,100000", help="comma-separated image counts")
    p.add_argument("--incremental-base", type=int, default=10000, help="size of the incremental runs' base")
    p.add_argument("--workdir", type=Path, default=None, help="where inputs and runs go (default: a temp folder)")
    p.add_argument("--json", type=Path, default=ROOT / "runs" / f"cost-curve-{time.strftime('%Y%m%d-%H%M%S')}.json")
    p.add_argument("--run-args", default="", help="more `p8utils run` options for every run, e.g. '--image-size 96' "
                   "(the curve's shape is the pipeline's; a faster model gets there sooner)")
    args = p.parse_args(argv)
    common = shlex.split(args.run_args)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="p8utils-cost-"))
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    result: Dict[str, Any] = {"source": str(args.source), "cores": os.cpu_count(), "run_args": common, "runs": []}
    for n in sizes:
        folder = build_input(args.source, n, work / f"in_{n}")
        if n == max(sizes):
            result["listing"] = _listing_cost(folder)
            print(f"== listing {n} files: {result['listing']}", flush=True)
        result["runs"].append(_run(f"full_{n}", folder, work / f"out_{n}", work, n, common))
        if n != args.incremental_base:
            shutil.rmtree(work / f"out_{n}", ignore_errors=True)
            shutil.rmtree(folder, ignore_errors=True)
    base = args.incremental_base
    if base in sizes:  # the full run of that size is the base: incremental runs go on top of its output
        folder, out = work / f"in_{base}", work / f"out_{base}"
    else:
        folder, out = work / "inc_in", work / "inc_out"
        build_input(args.source, base, folder)
        result["runs"].append(_run(f"incremental_base_{base}", folder, out, work, base,
                                   [*common, "--mode", "incremental"]))
    added = 0
    for share in (0.01, 0.10):
        more = int(base * share) - added
        build_input(args.source, more, folder, start=base + added)
        added += more
        result["runs"].append(_run(f"incremental_plus_{int(share * 100)}pct", folder, out, work, base + added,
                                   [*common, "--mode", "incremental"]))
    result["runs"].append(_run(f"full_{base + added}", folder, work / "inc_full", work, base + added, common))
    runs = {r["name"]: r for r in result["runs"]}
    full_final = runs[f"full_{base + added}"]["seconds"]
    result["ratios"] = {
        "incremental_plus_10pct_over_full": runs["incremental_plus_10pct"]["seconds"] / full_final,
        "incremental_plus_1pct_over_full": runs["incremental_plus_1pct"]["seconds"] / full_final,
    }
    per_image = {r["images"]: r["seconds_per_image"] for r in result["runs"] if r["name"].startswith("full_")}
    if 10000 in per_image and 100000 in per_image:
        result["ratios"]["seconds_per_image_100k_over_10k"] = per_image[100000] / per_image[10000]
    print("\n| run | images | featurized | seconds | ms/image | peak RSS MiB (driver / JVM / worker) |")
    print("|---|---:|---:|---:|---:|---|")
    for r in result["runs"]:
        rss = r["peak_rss_mb"]
        print(f"| {r['name']} | {r['images']} | {r['featurized']} | {r['seconds']:.1f} | "
              f"{1000 * r['seconds_per_image']:.2f} | {rss.get('python_driver', 0):.0f} / {rss.get('jvm', 0):.0f} / "
              f"{rss.get('python_worker', 0):.0f} |")
    print(f"\nlisting: {result.get('listing')}")
    print("ratios: " + ", ".join(f"{k} = {v:.3f}" for k, v in result["ratios"].items()))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"JSON -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
