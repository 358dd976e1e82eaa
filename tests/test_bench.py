"""Smoke tests of the benchmarks (benchmarks/bench.py, benchmarks/cost_curve.py) on tiny inputs.

Timings are never asserted (they are benchmarks); what is checked is that every figure the scripts report is the one
they measured: the JSON's keys exactly, each ratio and derived rate recomputed from the measured numbers, the targets'
verdicts from their values, and the printed table row by row against the JSON.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from .conftest import ROOT

BENCH = ROOT / "benchmarks" / "bench.py"
COST_CURVE = ROOT / "benchmarks" / "cost_curve.py"
QUICK_CONFIGS = ("tflite:224", "tflite:96", "tflite-int8:96")  # --quick, in the order they are measured
TINY_IMAGES, MIN_IMAGES, RUN_IMAGES = 16, 24, 32  # 16 photos repeated up to >= 24: two copies each


def _load_bench():
    """Import benchmarks/bench.py by path (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _close(a, b, rel=1e-9) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


def _line_starting(stdout: str, head: str) -> str:
    (line,) = [ln for ln in stdout.splitlines() if ln.startswith(head)]
    return line


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, sample_dir):
    tmp = tmp_path_factory.mktemp("bench")
    out, tiny = tmp / "bench.json", tmp / "tiny"
    for cls in sorted(p for p in sample_dir.iterdir() if p.is_dir()):
        (tiny / cls.name).mkdir(parents=True)
        for f in sorted(cls.glob("*.jpg"))[:2]:
            (tiny / cls.name / f.name).write_bytes(f.read_bytes())
    # the session's disk cache (tests/conftest.py: P8UTILS_CACHE) has the 224 px offline weights and TFLite model
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--input", str(tiny), "--min-images", str(MIN_IMAGES),
         "--batch-size", "8", "--s3", "--json", str(out)],
        capture_output=True, text=True, timeout=1800, env=env, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def _limit_between(result: dict, config: dict, first: str, second: str) -> float:
    """The engine+decode limit from the engine and the decode measured right before and right after some runs."""
    per_core = (config[first]["per_core"] + config[second]["per_core"]) / 2
    decode_s = (config["decode_ms"][first] + config["decode_ms"][second]) / 2 / 1000
    return result["cores"] / (result["cores"] / per_core + decode_s)


@pytest.mark.slow
def test_bench_json_has_every_figure_and_consistent_derived_values(bench_run):
    result, _ = bench_run
    assert set(result) == {"machine", "master", "cores", "images", "input", "batch_size", "repeats", "weights",
                           "reference", "probe_seeds", "probe_n_test", "probe_distinct_photos_only", "configs",
                           "fastest_within_probe", "profile_ms_per_image_one_core", "spark_io_noop", "pca", "memory",
                           "seeds", "ratios", "targets", "s3_input", "s3_emulated", "sample_run"}
    assert result["s3_input"] == "s3://p8-bench/input" and result["s3_emulated"] is True
    machine = result["machine"]
    assert {"cpus", "python", "platform", "cpu_model", "cpu_flags", "int8_can_gain"} <= set(machine)
    if machine["cpu_flags"]:  # Linux: the int8 verdict follows from the flags it read
        assert machine["int8_can_gain"] is bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(machine["cpu_flags"]))
    assert result["reference"] == "tflite:224" and result["repeats"] == 1 and result["batch_size"] == 8
    assert result["images"] == RUN_IMAGES and result["probe_distinct_photos_only"] is True
    configs = result["configs"]
    assert list(configs) == list(QUICK_CONFIGS)
    ref = configs["tflite:224"]
    for name, c in configs.items():
        int8 = c["engine"] == "tflite-int8"
        expected = {"engine", "size", "raw", "raw_between", "raw_after", "decode_ms", "pipeline", "pipeline_s3",
                    "python_worker_peak_mb", "probe"}
        expected |= {"int8_prepare_s", "int8_from_cache", "cosine_vs_fp32_same_size"} if int8 else set()
        expected |= {"cosine_vs_reference"} if name != "tflite:224" else set()
        assert set(c) == expected, name
        assert f"{c['engine']}:{c['size']}" == name
        raw, pipe, pr = c["raw"], c["pipeline"], c["probe"]
        for measure in (raw, c["raw_between"], c["raw_after"]):  # before the local runs, before the S3 runs, after
            assert set(measure) == {"one_process", "per_core", "best"}
            assert measure["best"] == max(measure["one_process"], measure["per_core"]) > 0
        assert set(c["decode_ms"]) == {"raw", "raw_between", "raw_after"} and min(c["decode_ms"].values()) > 0
        for run in (pipe, c["pipeline_s3"]):
            assert run["images"] == RUN_IMAGES and len(run["timings_s"]) == 1, name  # one timed run
            timings = run["timings_s"][0]
            assert _close(run["featurize_s"], timings["featurize"]) and run["featurize_s"] > 0
            assert _close(run["run_s"], sum(v for k, v in timings.items() if k != "weights"))
            assert _close(run["img_per_s"], RUN_IMAGES / run["featurize_s"])
            assert _close(run["run_img_per_s"], RUN_IMAGES / run["run_s"])
        assert pipe["features_path"] != c["pipeline_s3"]["features_path"]
        assert c["pipeline_s3"]["emulator_cpu_ms_per_image"] > 0  # the emulator served the input
        assert pr["max_iter"] == 20 and pr["seeds"] == [0] and pr["n_test"] == 8  # --quick; distinct photos only
        assert pr["n_train"] + pr["n_test"] == TINY_IMAGES and pr["n_classes"] == 8
        assert _close(pr["mean_accuracy"], sum(pr["accuracy"]) / len(pr["accuracy"])) and 0 <= pr["mean_accuracy"] <= 1
        assert 0 < c["python_worker_peak_mb"] <= result["memory"]["python_worker_peak_mb"]
    int8 = configs["tflite-int8:96"]
    for fid in (int8["cosine_vs_reference"], int8["cosine_vs_fp32_same_size"],
                configs["tflite:96"]["cosine_vs_reference"]):
        assert 0.5 < fid["min"] <= fid["p1"] <= fid["median"] <= 1.0 and fid["images"] == RUN_IMAGES
    assert isinstance(int8["int8_from_cache"], bool) and int8["int8_prepare_s"] >= 0

    # ratios: recomputed from the measured figures
    seeds = result["seeds"]
    assert seeds["images"] == RUN_IMAGES and seeds["partitions"] == 4 and len(seeds["seconds"]) == 1
    assert _close(seeds["img_per_s"], RUN_IMAGES / seeds["seconds"][0]) and seeds["python_worker_peak_mb"] > 0
    ratios = result["ratios"]
    assert set(ratios) == {*QUICK_CONFIGS, "fastest_within_probe"}  # no 100k PCA table in --quick
    for name, c in configs.items():
        pipe = c["pipeline"]["img_per_s"]
        assert set(ratios[name]) == {"pipeline_over_raw", "pipeline_over_fp32_224", "pipeline_over_seeds",
                                     "probe_points_vs_fp32_224", "engine_decode_limit_img_per_s",
                                     "pipeline_over_limit", "s3_engine_decode_limit_img_per_s",
                                     "s3_pipeline_over_limit", "s3_emulator_cores",
                                     "s3_pipeline_over_limit_on_cores_left"}
        limit, s3_limit = _limit_between(result, c, "raw", "raw_between"), _limit_between(result, c, "raw_between",
                                                                                           "raw_after")
        assert limit < (c["raw"]["per_core"] + c["raw_between"]["per_core"]) / 2  # the decode costs something
        assert _close(ratios[name]["engine_decode_limit_img_per_s"], limit)
        assert _close(ratios[name]["pipeline_over_limit"], pipe / limit)
        assert _close(ratios[name]["s3_engine_decode_limit_img_per_s"], s3_limit)
        s3, limit = c["pipeline_s3"], s3_limit
        emulator_cores = s3["emulator_cpu_ms_per_image"] * s3["img_per_s"] / 1000
        assert _close(ratios[name]["s3_pipeline_over_limit"], s3["img_per_s"] / limit)
        assert _close(ratios[name]["s3_emulator_cores"], emulator_cores)
        assert _close(ratios[name]["s3_pipeline_over_limit_on_cores_left"],
                      s3["img_per_s"] / (limit * max(result["cores"] - emulator_cores, 1e-9) / result["cores"]))
        assert _close(ratios[name]["pipeline_over_raw"], pipe / c["raw"]["best"])
        assert _close(ratios[name]["pipeline_over_fp32_224"], pipe / ref["pipeline"]["img_per_s"])
        assert _close(ratios[name]["pipeline_over_seeds"], pipe / seeds["img_per_s"])
        assert _close(ratios[name]["probe_points_vs_fp32_224"],
                      100 * (c["probe"]["mean_accuracy"] - ref["probe"]["mean_accuracy"]))
    ref_accuracy = ref["probe"]["mean_accuracy"]
    within = [n for n, c in configs.items() if 100 * (ref_accuracy - c["probe"]["mean_accuracy"]) <= 0.5]
    fastest = max(within, key=lambda n: configs[n]["pipeline"]["img_per_s"])  # tflite:224 is always within
    assert result["fastest_within_probe"] == fastest == ratios["fastest_within_probe"]["config"]
    assert _close(ratios["fastest_within_probe"]["over_seeds"], ratios[fastest]["pipeline_over_seeds"])

    # PCA: the pipeline's features (32 rows) and the two --quick synthetic tables
    assert set(result["pca"]) == {"pipeline features", "300", "1k"}
    for label, rows in (("pipeline features", RUN_IMAGES), ("300", 300), ("1k", 1000)):
        p = result["pca"][label]
        assert set(p) == {"rows", "covariance", "spark_ml", "speedup"} and p["rows"] == rows
        for method in ("covariance", "spark_ml"):
            assert p[method]["median_s"] == p[method]["seconds"][0] > 0 and len(p[method]["seconds"]) == 1
        assert _close(p["speedup"], p["spark_ml"]["median_s"] / p["covariance"]["median_s"])

    memory = result["memory"]
    assert set(memory) == {"python_worker_peak_mb", "python_workers", "jvm_driver_peak_mb", "python_driver_peak_mb"}
    assert memory["python_worker_peak_mb"] >= max(c["python_worker_peak_mb"] for c in configs.values())
    assert memory["jvm_driver_peak_mb"] > 0 and memory["python_driver_peak_mb"] > 0
    assert set(result["profile_ms_per_image_one_core"]) == {"224", "96"}
    for p in result["profile_ms_per_image_one_core"].values():
        assert set(p) == {"decode_resize_ms", "preprocess_ms"} and p["decode_resize_ms"] > 0 and p["preprocess_ms"] > 0
    assert result["spark_io_noop"]["images"] == RUN_IMAGES
    assert _close(result["spark_io_noop"]["img_per_s"], RUN_IMAGES / result["spark_io_noop"]["seconds"][0])

    # the targets: each value is the measured one, each verdict follows from it (None where --quick measures nothing)
    sample = result["sample_run"]  # python -m p8utils run on data_sample, in a fresh process
    assert set(sample) == {"timings_s", "fixed_s", "fixed_sum_s", "wall_s"}, sample.get("error")
    assert set(sample["fixed_s"]) == set(sample["timings_s"]) - {"featurize", "weights"} >= {"list_images", "check"}
    assert _close(sample["fixed_sum_s"], sum(sample["fixed_s"].values())) and sample["wall_s"] > sample["fixed_sum_s"]
    targets = result["targets"]
    assert len(targets) == 14 and all(set(t) == {"what", "value", "met", "raw_value"} for t in targets)
    expected = [
        (ref["pipeline"]["img_per_s"] / ref["raw"]["best"], lambda v: v >= 0.9),
        (None, None),  # int8 at 224: not in --quick
        (None, None),
        (configs[fastest]["pipeline"]["img_per_s"] / seeds["img_per_s"], lambda v: v >= 8.0),
        (configs[fastest]["pipeline"]["img_per_s"], lambda v: v >= 400.0),
        (None, None),  # PCA on 100k rows: not in --quick
        *[(value, lambda v: v >= 0.9) for name in configs
          for value in (ratios[name]["pipeline_over_limit"], ratios[name]["s3_pipeline_over_limit"])],
        (sample["fixed_sum_s"], lambda v: v <= 10.0),
        (memory["python_worker_peak_mb"], lambda v: v <= 1.5 * 1024),
    ]
    for target, (value, rule) in zip(targets, expected):
        if value is None:
            assert target["raw_value"] is None and target["met"] is None and target["value"] == "not measured", target
        else:
            assert _close(target["raw_value"], value) and target["met"] is rule(value), target
    assert fastest in targets[3]["what"]
    assert [t["what"] for t in targets[6:12]] == [
        f"{name} pipeline / engine+decode limit >= 0.9, {where}"
        for name in configs for where in ("a local folder", result["s3_input"])]


def machine_verdict(machine) -> str:
    return {True: "tflite-int8 can gain here", False: "tflite-int8 cannot gain here",
            None: "int8 flags unknown"}[machine["int8_can_gain"]]


def test_cpu_int8_reads_the_flags_that_decide_int8():
    bench = _load_bench()
    vnni = bench.cpu_int8("processor : 0\nmodel name : Intel Xeon Platinum 8375C\n"
                          "flags : fpu avx2 avx512f avx512_vnni\n")
    assert vnni == {"cpu_model": "Intel Xeon Platinum 8375C", "cpu_flags": ["avx2", "avx512f", "avx512_vnni"],
                    "int8_can_gain": True}
    avx2 = bench.cpu_int8("model name : AMD EPYC 7R32\nflags : fpu sse2 avx avx2 fma\n")
    assert avx2["cpu_flags"] == ["avx2"] and avx2["int8_can_gain"] is False
    assert bench.cpu_int8("")["int8_can_gain"] is None  # no flags line: unknown, not "cannot"


@pytest.mark.slow
def test_bench_table_prints_the_json(bench_run):
    """The printed table is the JSON: every configuration row, the seeds', PCA and target lines, number by number."""
    result, stdout = bench_run
    configs, seeds = result["configs"], result["seeds"]["img_per_s"]
    for name, c in configs.items():
        raw, pipe, pr = c["raw"], c["pipeline"], c["probe"]
        fid = c.get("cosine_vs_reference")
        want = [name, f"{raw['one_process']:.1f}", f"{raw['per_core']:.1f}", f"{pipe['img_per_s']:.1f}",
                f"{pipe['img_per_s'] / raw['best']:.2f}", f"{pipe['img_per_s'] / seeds:.1f}",
                f"{pipe['run_img_per_s']:.1f}"]
        want += [f"{fid[k]:.4f}" for k in ("median", "p1", "min")] if fid else []
        want += [f"{100 * pr['mean_accuracy']:.2f}", f"{100 * pr['mean_macro_f1']:.2f}",
                 f"{c['python_worker_peak_mb']:.0f}"]
        assert _line_starting(stdout, name + " ").split() == want, name
    int8 = configs["tflite-int8:96"]["cosine_vs_fp32_same_size"]
    assert (f"  tflite-int8:96: cosine to fp32 at the same size {int8['median']:.4f} / {int8['p1']:.4f} / "
            f"{int8['min']:.4f} (median / 1st pct / min)") in stdout
    for name in configs:
        r = result["ratios"][name]
        assert (f"  {name}: engine+decode limit {r['engine_decode_limit_img_per_s']:.1f} img/s ({result['cores']} "
                f"cores / (engine + decode) per image), pipeline / limit {r['pipeline_over_limit']:.2f}"
                ) in stdout.splitlines(), name
        s3 = configs[name]["pipeline_s3"]
        assert (f"  {name}: from {result['s3_input']} {s3['img_per_s']:.1f} img/s, / limit "
                f"{r['s3_pipeline_over_limit']:.2f} (limit {r['s3_engine_decode_limit_img_per_s']:.1f} img/s around "
                f"these runs); the emulator used {s3['emulator_cpu_ms_per_image']:.2f} CPU ms "
                f"per image ({r['s3_emulator_cores']:.2f} of the {result['cores']} cores): / the limit on the cores it "
                f"left {r['s3_pipeline_over_limit_on_cores_left']:.2f}") in stdout.splitlines(), name
        for key, where in (("pipeline", "local"), ("pipeline_s3", "s3")):
            stages = {k: v for k, v in configs[name][key]["timings_s"][0].items() if k not in ("featurize", "weights")}
            assert (f"  {name} ({where}): fixed-cost stages (median s) "
                    + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()) + f"; sum {sum(stages.values()):.2f}"
                    ) in stdout.splitlines(), (name, where)
    sample = result["sample_run"]
    assert _line_starting(stdout, "sample run (python -m p8utils run on data_sample").endswith(
        f"s; sum {sample['fixed_sum_s']:.2f} s (featurize {sample['timings_s']['featurize']:.2f}, weights "
        f"{sample['timings_s'].get('weights', 0):.2f}, whole command {sample['wall_s']:.1f} s)")
    cpu_line = _line_starting(stdout, "CPU: ")
    assert machine_verdict(result["machine"]) in cpu_line and str(result["machine"]["cpu_model"]) in cpu_line
    assert result["weights"] == "offline" and "probe on offline weights: it cannot judge input sizes" in stdout
    assert _line_starting(stdout, "seeds method").split()[-2:] == [f"{seeds:.1f}", "img/s"]
    for label, p in result["pca"].items():
        line = (f"PCA fit {label} ({p['rows']} x 1280): covariance {p['covariance']['median_s']:.2f} s, spark_ml "
                f"{p['spark_ml']['median_s']:.2f} s (spark_ml / covariance = {p['speedup']:.1f}x)")
        assert line in stdout.splitlines(), line
    marks = {True: "ok  ", False: "MISS", None: "n/a "}
    for t in result["targets"]:
        assert f"  [{marks[t['met']]}] {t['what']}: {t['value']}" in stdout.splitlines(), t


@pytest.mark.slow
def test_a_real_bucket_has_no_emulator_figures(bench_run):
    """--s3-uri: the same S3 runs without the emulator's CPU: the ratio to the limit only, in the JSON and the table."""
    bench = _load_bench()
    result, _ = bench_run
    result = json.loads(json.dumps(result))
    result["s3_input"], result["s3_emulated"] = "s3://my-bucket/p8bench/input", False
    for c in result["configs"].values():
        del c["pipeline_s3"]["emulator_cpu_ms_per_image"]
    result["ratios"] = bench._ratios(result)
    result["targets"] = bench._targets(result)
    lines = bench._table(result).splitlines()
    for name in QUICK_CONFIGS:
        r, s3 = result["ratios"][name], result["configs"][name]["pipeline_s3"]
        assert {"s3_emulator_cores", "s3_pipeline_over_limit_on_cores_left"}.isdisjoint(r)
        assert _close(r["s3_pipeline_over_limit"], s3["img_per_s"] / r["s3_engine_decode_limit_img_per_s"])
        assert (f"  {name}: from s3://my-bucket/p8bench/input {s3['img_per_s']:.1f} img/s, / limit "
                f"{r['s3_pipeline_over_limit']:.2f} (limit {r['s3_engine_decode_limit_img_per_s']:.1f} img/s around "
                "these runs)") in lines, name
        assert any(t["what"] == f"{name} pipeline / engine+decode limit >= 0.9, s3://my-bucket/p8bench/input"
                   for t in result["targets"])
    assert not any("emulator" in line for line in lines)


def test_upload_input_sends_only_what_the_prefix_lacks(s3, tmp_path, sample_dir):
    import boto3

    bench = _load_bench()
    folder = tmp_path / "in"
    files = sorted(sample_dir.rglob("*.jpg"))[:5]
    for f in files:
        (folder / f.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / f.parent.name / f.name).write_bytes(f.read_bytes())
    bucket = s3.bucket()
    uri = f"s3://{bucket}/bench/input/"
    assert bench.upload_input(folder, uri) == 5
    client = boto3.client("s3")
    keys = {o["Key"]: o["Size"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {f"bench/input/{f.parent.name}/{f.name}": f.stat().st_size for f in files}
    assert bench.upload_input(folder, uri) == 0, "a second run on the same prefix uploads nothing"
    changed = folder / files[0].parent.name / files[0].name
    changed.write_bytes(b"other")
    assert bench.upload_input(folder, uri) == 1
    assert client.get_object(Bucket=bucket, Key=f"bench/input/{files[0].parent.name}/{files[0].name}")[
        "Body"].read() == b"other"


@pytest.mark.parametrize("uri, emulate, says", [
    ("s3://b/p", True, "--s3 and --s3-uri exclude each other"),
    ("/data/fruits", False, "is not an s3://bucket/prefix URI"),
    ("s3://", False, "is not an s3://bucket/prefix URI"),
])
def test_s3_input_refuses_what_it_cannot_use(tmp_path, uri, emulate, says):
    bench = _load_bench()
    with pytest.raises(SystemExit, match=says) as err:
        bench.s3_input(tmp_path, uri, emulate)
    assert "Fix:" in str(err.value)


def test_prepare_input_repeats_to_the_minimum(tmp_path, sample_dir):
    prepare_input = _load_bench().prepare_input

    folder = prepare_input(sample_dir, 200, tmp_path)
    files = list(folder.rglob("*.jpg"))
    assert len(files) == 240 and {f.parent.name for f in files} == {p.name for p in sample_dir.iterdir() if p.is_dir()}
    assert prepare_input(sample_dir, 10, tmp_path / "x") == sample_dir


def test_probe_scores_do_not_depend_on_where_the_input_was_copied(spark, tmp_path):
    """The benchmark copies its input into a fresh temporary folder each run: the same photos and features must get
    the same split and probe, so runs compare."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    rows = [(c, i, (centres[c] + 2.0 * rng.normal(size=16)).astype(np.float32)) for c in range(4) for i in range(12)]
    scores = []
    for run in ("p8bench-a1b2c3", "p8bench-z9y8x7"):
        table = pd.DataFrame({"path": [f"file:/tmp/{run}/input/class_{c}/000_img_{i}.jpg" for c, i, _ in rows],
                              "label": [f"class_{c}" for c, _, _ in rows], "features": [f for _, _, f in rows]})
        path = tmp_path / run
        spark.createDataFrame(table, "path string, label string, features array<float>").write.parquet(str(path))
        scores.append(_load_bench().probe_scores(spark, str(path), [0, 1], distinct_only=True, max_iter=50))
    assert scores[0]["accuracy"] == scores[1]["accuracy"] and scores[0]["n_test"] == scores[1]["n_test"] > 0


@pytest.mark.slow
def test_cost_curve_runs_on_a_tiny_input(tmp_path, sample_dir):
    """The scale benchmark's whole sequence on 16 images (timings are never asserted, only derived from)."""
    out = tmp_path / "curve.json"
    proc = subprocess.run([sys.executable, str(COST_CURVE), "--source", str(sample_dir),
                           "--sizes", "16", "--incremental-base", "16", "--workdir", str(tmp_path / "w"),
                           "--json", str(out)], capture_output=True, text=True, timeout=1500, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result) == {"source", "cores", "run_args", "runs", "listing", "ratios"}
    assert result["source"] == str(sample_dir) and result["run_args"] == []
    names = [r["name"] for r in result["runs"]]
    assert names == ["full_16", "incremental_plus_1pct", "incremental_plus_10pct", "full_17"]  # full_16: the base
    runs = {r["name"]: r for r in result["runs"]}
    # images in the folder / featurized by the run: +1 % of 16 adds no file, +10 % one; the last run is a full one
    expected = {"full_16": (16, 16), "incremental_plus_1pct": (16, 0), "incremental_plus_10pct": (17, 1),
                "full_17": (17, 17)}
    for name, r in runs.items():
        assert (r["images"], r["featurized"]) == expected[name], r
        assert r["exit_code"] == 0 and r["seconds"] > 0 and _close(r["seconds_per_image"], r["seconds"] / r["images"])
        assert set(r["peak_rss_mb"]) <= {"jvm", "python_driver", "python_worker"}, r["peak_rss_mb"]
        assert r["peak_rss_mb"]["jvm"] > 0 and r["peak_rss_mb"]["python_driver"] > 0, r["peak_rss_mb"]
        assert "featurize" in r["timings_s"], r["timings_s"]
    assert result["listing"]["files"] == 16 and result["listing"]["seconds"] >= 0
    assert set(result["ratios"]) == {"incremental_plus_10pct_over_full", "incremental_plus_1pct_over_full"}
    for share in (1, 10):
        assert _close(result["ratios"][f"incremental_plus_{share}pct_over_full"],
                      runs[f"incremental_plus_{share}pct"]["seconds"] / runs["full_17"]["seconds"])
    for r in result["runs"]:  # the printed table is the JSON
        rss = r["peak_rss_mb"]
        assert (f"| {r['name']} | {r['images']} | {r['featurized']} | {r['seconds']:.1f} | "
                f"{1000 * r['seconds_per_image']:.2f} | {rss.get('python_driver', 0):.0f} / {rss.get('jvm', 0):.0f} / "
                f"{rss.get('python_worker', 0):.0f} |") in proc.stdout.splitlines()
