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
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--input", str(tiny), "--min-images", "24",
         "--repeats", "1", "--raw-images", "8", "--batch-size", "8", "--engines", "tflite", "--json", str(out)],
        capture_output=True, text=True, timeout=900, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["raw"]) == {"tflite"} and set(result["pipeline"]) == {"tflite"}
    assert result["pipeline"]["tflite"]["images"] == 32  # 16 images repeated up to >= 24
    for r in result["raw"].values():
        assert r["best"] > 0 and r["one_process"] > 0 and r["per_core"] > 0
    assert result["seeds"]["img_per_s"] > 0 and result["speedup_vs_seeds"] > 0
    assert result["pca_fit_s"] > 0 and result["memory"]["python_worker_peak_mb"] > 0
    assert result["profile_ms_per_image_one_core"]["decode_resize_ms"] > 0
    assert "pipeline end-to-end, engine=tflite" in proc.stdout and "seeds method" in proc.stdout


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
    assert names == ["full_16", "incremental_base_16", "incremental_plus_1pct", "incremental_plus_10pct", "full_17"]
    runs = {r["name"]: r for r in result["runs"]}
    assert runs["incremental_plus_10pct"]["featurized"] == 1 and runs["full_17"]["featurized"] == 17
    assert result["listing"]["files"] == 16 and runs["full_16"]["peak_rss_mb"]["jvm"] > 0
    assert "incremental_plus_10pct_over_full" in result["ratios"]
