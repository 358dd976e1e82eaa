from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from p8utils.cli import build_parser, main

from .conftest import ROOT, S3A_JARS, image_files


def _run(*args, timeout=600, base_env=None, **env_vars):
    env = dict(os.environ if base_env is None else base_env, PYTHONPATH=str(ROOT), **env_vars)
    return subprocess.run([sys.executable, "-m", "p8utils", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def test_help_explains_every_option():
    text = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    for opt in ("--input", "--output", "--model", "--weights", "--k", "--variance", "--batch-size",
                "--engine", "--seed", "--mode", "--extensions", "--max-pixels", "--master"):
        assert opt in text, opt
    assert "imagenet" in text and "offline" in text and "auto" in text
    flat = " ".join(text.split())
    assert "(default: error)" in flat and "incremental" in flat


@pytest.mark.slow
def test_cli_run_end_to_end(tmp_path, sample_dir):
    out = tmp_path / "cli run"
    # a fresh cache: the offline weights and the TFLite model are made (and the converter's dump logged) here
    proc = _run("run", "--input", str(sample_dir), "--output", str(out), "--weights", "offline",
                "--variance", "0.9", "--master", "local[2]", P8UTILS_CACHE=str(tmp_path / "cache"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"manifest -> {out}/manifest.json" in proc.stdout
    m = json.loads((out / "manifest.json").read_text())
    n = len(image_files(sample_dir))
    assert m["counts"]["total"] == m["counts"]["ok"] == n
    assert m["parameters"]["variance"] == 0.9 and m["pca"]["explained_at_k"] >= 0.9
    assert (out / "features").is_dir() and (out / "pca").is_dir()
    console = (proc.stdout + proc.stderr).splitlines()
    assert len(console) <= 40, "\n".join(console)
    assert not any("TensorSpec" in ln or " WARN " in ln or "[Stage " in ln for ln in console), "\n".join(console)
    assert "featurize: " in proc.stdout and "NOT ImageNet" in proc.stdout, "progress and the offline warning shown"
    log = next(ln.split("log      -> ", 1)[1] for ln in proc.stdout.splitlines() if "log      -> " in ln)
    assert log.startswith(str(out / "logs")) and "TensorSpec" in open(log, encoding="utf-8").read(), \
        "the converter's dump went to the run's log file"


def test_cli_run_and_project_end_to_end_on_s3(s3, sample_dir):
    """``--input s3://… --output s3://…`` as a user runs it: Spark's connector and endpoint through
    SPARK_DIST_CLASSPATH (the jars) and PYSPARK_SUBMIT_ARGS (``spark.hadoop.fs.s3a.*``), boto3's through
    AWS_ENDPOINT_URL_S3."""
    from p8utils import runs, storage

    files = image_files(sample_dir)
    bucket = s3.bucket()
    s3.upload(sample_dir, f"s3://{bucket}/fruits", [f for i, f in enumerate(files) if i % 4])  # 60, every class
    s3.upload(sample_dir, f"s3://{bucket}/new", files[::4])
    env = s3.subprocess_env(S3A_JARS)
    out, projected = f"s3://{bucket}/runs/x", f"s3://{bucket}/runs/x-new"
    proc = _run("run", "--input", f"s3://{bucket}/fruits", "--output", out, "--weights", "offline", "--k", "3",
                "--master", "local[2]", "--no-explorer", base_env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"manifest -> {out}/manifest.json" in proc.stdout
    m = runs.read_manifest(out)
    assert m["counts"]["total"] == m["counts"]["ok"] == 60 and m["parameters"]["reader"] in ("auto", "python")
    for table in ("features", "pca"):  # the output holds exactly the files the manifest names
        named = {f["name"] for f in m["files"][table]}
        assert {n for n in storage.list_dir(f"{out}/{table}") if n.startswith("part-")} == named
    assert sorted(storage.list_dir(out)) == ["features", "logs", "manifest.json", "pca"]
    proc = _run("project", "--run", out, "--input", f"s3://{bucket}/new", "--output", projected,
                "--master", "local[2]", "--no-explorer", base_env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    p = runs.read_manifest(projected)
    assert p["counts"]["total"] == len(files) - 60 and p["projection"]["run_id"] == m["run_id"]
    assert p["projection"]["known_class_rows"] == len(files) - 60 and p["projection"]["classes"] == 8


@pytest.mark.parametrize("args,match", [
    (["--input", "/nonexistent/x"], "does not exist"),
    (["--k", "5000"], "larger than the feature width"),
    (["--variance", "2"], "outside (0, 1]"),
])
def test_cli_bad_parameters_exit_2_with_message(tmp_path, sample_dir, capsys, args, match):
    base = {"--input": str(sample_dir), "--output": str(tmp_path / "o")}
    argv = ["run", "--weights", "offline"]
    for k, v in base.items():
        if k not in args:
            argv += [k, v]
    assert main(argv + args) == 2
    err = capsys.readouterr().err
    assert match in err and "Fix" in err


def test_cli_k_and_variance_exclusive(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--input", "a", "--output", "b", "--k", "3", "--variance", "0.9"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_check_command(sample_dir):
    img = image_files(sample_dir)[0]
    proc = _run("check", "--image", str(img), "--weights", "offline")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["width"] == 1280 and out["norm"] > 1.0 and out["error"] is None
    assert out["identity"] == {"model": "mobilenet_v2", "weights_sha256": out["sha256"], "image_size": 224,
                               "precision": "float32"}


def test_cli_incremental_over_a_damaged_manifest_exits_2_and_keeps_every_row(tmp_path, sample_dir, capsys):
    """Before: a raw JSONDecodeError (exit 1, 34 lines). Now exit 2 naming the file; nothing is dropped."""
    run = tmp_path / "run"
    (run / "features").mkdir(parents=True)
    (run / "features" / "part-0.parquet").write_bytes(b"committed rows")
    (run / "manifest.json").write_text('{"status": "complete", "files": {"feat')  # truncated
    code = main(["run", "--input", str(sample_dir), "--output", str(run), "--weights", "offline",
                 "--mode", "incremental", "--no-explorer"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2, err
    assert err[0].startswith("p8utils: error: ") and "manifest.json is damaged" in err[0], err
    assert "mode='overwrite'" in " ".join(err)
    assert (run / "features" / "part-0.parquet").read_bytes() == b"committed rows"
    assert sorted(p.name for p in run.iterdir()) == ["features", "manifest.json"], "no lease, no scratch left"


_NO_DISPLAY_STACK = r'''
import json, sys, types
from p8utils import cli, pipeline

class _Tracker:  # what spark_progress polls: no job ever
    def getJobIdsForGroup(self, group):
        return []

class _Context:
    def statusTracker(self):
        return _Tracker()

    def getLocalProperty(self, key):
        return None

def fake_run(config, progress=None, **kw):  # the pipeline's stages, without Spark: the CLI's own code path
    spark = types.SimpleNamespace(sparkContext=_Context())
    for stage in ("weights", "list_images", "featurize", "check", "pca_fit", "pca_transform"):
        with progress(stage, spark):
            pass
    manifest = {"run_id": "r", "counts": {"total": 0, "ok": 0, "failed": 0, "failed_by_reason": {}},
                "parameters": {"mode": "error"}, "pca": {"k": 1, "explained_at_k": 1.0, "feature_width": 1280,
                                                         "n_rows": 0},
                "timings_s": {}, "warnings": [], "unlisted": []}
    return pipeline.RunResult(config.output, config.output + "/features", config.output + "/pca",
                              config.output + "/manifest.json", manifest, None)

pipeline.run = fake_run
code = cli.main(["run", "--input", sys.argv[1], "--output", sys.argv[2], "--weights", "offline", "--no-explorer"])
loaded = [m for m in ("matplotlib", "bokeh", "tqdm.notebook", "ipywidgets", "IPython") if m in sys.modules]
with open(sys.argv[3], "w") as fh:
    json.dump({"code": code, "loaded": loaded}, fh)
'''


def test_cli_run_without_explorer_imports_no_notebook_display_stack(tmp_path, sample_dir):
    """``run --no-explorer`` at a terminal (the console a pty, where a progress bar would be drawn) imports
    neither matplotlib, bokeh, tqdm's notebook module nor ipywidgets: the command line needs no notebook extras."""
    import pty

    report = tmp_path / "report.json"
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([sys.executable, "-c", _NO_DISPLAY_STACK, str(sample_dir), str(tmp_path / "o"),
                               str(report)], stdout=follower, stderr=subprocess.PIPE, text=True, timeout=300,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)
    finally:
        os.close(follower)
        os.close(leader)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(report.read_text())
    assert got["code"] == 0, proc.stderr[-3000:]
    assert got["loaded"] == [], f"the command line imported {got['loaded']}"
