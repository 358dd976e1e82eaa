"""Smoke test of the benchmark (benchmarks/bench.py) on a tiny input (no timing assertions: it is a benchmark)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from .conftest import ROOT

BENCH = ROOT / "benchmarks" / "bench.py"


def _load_bench():
    """Import benchmarks/bench.py by path (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_bench_runs_on_a_tiny_input(tmp_path, sample_dir):
    out = tmp_path / "bench.json"
    tiny = tmp_path / "tiny"
    for cls in sorted(p for p in sample_dir.iterdir() if p.is_dir()):
        (tiny / cls.name).mkdir(parents=True)
        for f in sorted(cls.glob("*.jpg"))[:2]:
            (tiny / cls.name / f.name).write_bytes(f.read_bytes())
    # the disk cache the other tests fill (offline weights at 224 and 96 px): the smoke test times nothing
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--input", str(tiny), "--min-images", "24", "--batch-size", "8",
         "--json", str(out)],
        capture_output=True, text=True, timeout=1800, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    configs = result["configs"]
    assert set(configs) == {"tflite:224", "tflite-int8:96", "tflite:96"} and result["reference"] == "tflite:224"
    for name, c in configs.items():
        assert c["pipeline"]["images"] == 32, name  # 16 images repeated up to >= 24
        assert c["raw"]["best"] > 0 and c["raw"]["one_process"] > 0 and c["raw"]["per_core"] > 0
        assert c["pipeline"]["img_per_s"] > 0 and c["pipeline"]["run_img_per_s"] > 0
        assert 0 <= c["probe"]["mean_accuracy"] <= 1 and c["probe"]["n_test"] == 8  # distinct photos only
        assert c["probe"]["max_iter"] == 20  # --quick
        assert c["python_worker_peak_mb"] > 0
    int8 = configs["tflite-int8:96"]
    for fid in (int8["cosine_vs_reference"], int8["cosine_vs_fp32_same_size"]):
        assert 0.5 < fid["min"] <= fid["p1"] <= fid["median"] <= 1.0 and fid["images"] == 32
    assert "cosine_vs_reference" not in configs["tflite:224"]
    assert set(result["pca"]) == {"pipeline features", "300", "1k"}
    for p in result["pca"].values():
        assert p["covariance"]["median_s"] > 0 and p["spark_ml"]["median_s"] > 0 and p["speedup"] > 0
    assert result["seeds"]["img_per_s"] > 0 and result["ratios"]["tflite:96"]["pipeline_over_seeds"] > 0
    assert result["seeds"]["python_worker_peak_mb"] > 0  # apart: the RSS target is about the engines
    assert result["memory"]["python_worker_peak_mb"] > 0 and result["fastest_within_probe"] in configs
    assert set(result["profile_ms_per_image_one_core"]) == {"224", "96"}
    assert {t["met"] for t in result["targets"]} <= {True, False, None} and len(result["targets"]) == 7
    for text in ("tflite-int8:96", "seeds method", "PCA fit 1k (1000 x 1280)", "targets (2 cores", "cos med"):
        assert text in proc.stdout, text


def test_prepare_input_repeats_to_the_minimum(tmp_path, sample_dir):
    prepare_input = _load_bench().prepare_input

    folder = prepare_input(sample_dir, 200, tmp_path)
    files = list(folder.rglob("*.jpg"))
    assert len(files) == 240 and {f.parent.name for f in files} == {p.name for p in sample_dir.iterdir() if p.is_dir()}
    assert prepare_input(sample_dir, 10, tmp_path / "x") == sample_dir


@pytest.mark.slow
def test_cost_curve_runs_on_a_tiny_input(tmp_path, sample_dir):
    """The scale benchmark's whole sequence on 16 images (timings are never asserted)."""
    out = tmp_path / "curve.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cost_curve.py"), "--source", str(sample_dir),
                           "--sizes", "16", "--incremental-base", "16", "--workdir", str(tmp_path / "w"),
                           "--json", str(out)], capture_output=True, text=True, timeout=1500, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    names = [r["name"] for r in result["runs"]]
    assert names == ["full_16", "incremental_plus_1pct", "incremental_plus_10pct", "full_17"]  # full_16: the base
    runs = {r["name"]: r for r in result["runs"]}
    assert runs["incremental_plus_10pct"]["featurized"] == 1 and runs["full_17"]["featurized"] == 17
    assert result["listing"]["files"] == 16 and runs["full_16"]["peak_rss_mb"]["jvm"] > 0
    assert "incremental_plus_10pct_over_full" in result["ratios"]
