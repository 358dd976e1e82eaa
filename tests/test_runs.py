"""The run protocol: layout, lease (refusal, take-over, races, refresh), half-done commits, the row check."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p8utils import runs
from p8utils.errors import DamagedRunFileError, OutputBusyError, OutputExistsError, ParameterError, RunCheckError


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _fake_lease(out: Path, run_id: str, *, host: str | None = None, pid: int | None = None,
                refreshed_s_ago: float = 0.0) -> runs.LeaseHolder:
    now = dt.datetime.now(dt.timezone.utc)
    holder = runs.LeaseHolder(run_id, host or socket.gethostname(), pid if pid is not None else _dead_pid(), None,
                              (now - dt.timedelta(seconds=refreshed_s_ago + 5)).isoformat(),
                              (now - dt.timedelta(seconds=refreshed_s_ago)).isoformat(), runs.LEASE_EXPIRY_S,
                              "python -m p8utils run --fake")
    out.mkdir(parents=True, exist_ok=True)
    (out / "_lease.json").write_bytes(holder.to_bytes())
    return holder


def _complete_output(out: Path, tag: str, *, legacy: bool = False) -> None:
    """A minimal committed run: features/, pca/, manifest.json naming them, each holding ``tag``.

    ``legacy``: a manifest of p8utils < 0.2, which names no files (its folders are the tables).
    """
    for name in ("features", "pca"):
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / name / "part-0.parquet").write_text(f"{name} {tag}")
    files = {"features": [{"name": "part-0.parquet", "rows": 1}], "pca": [{"name": "part-0.parquet", "rows": 1}],
             "pca_model": None, "pca_moments": None}
    (out / "manifest.json").write_text(json.dumps({"status": "complete", "tag": tag,
                                                   **({} if legacy else {"files": files})}))


# --------------------------------------------------------------------------- layout


def test_layout_names_every_place(tmp_path):
    lay = runs.layout(str(tmp_path / "r"))
    assert lay.features == str(tmp_path / "r" / "features") and lay.manifest == str(tmp_path / "r" / "manifest.json")
    assert lay.staging("x") == str(tmp_path / "r" / "_staging" / "x")
    assert lay.file("pca", "_model-x.npz") == str(tmp_path / "r" / "pca" / "_model-x.npz")
    s3 = runs.layout("s3://b/runs/r1/")
    assert (s3.root, s3.pca, s3.lease) == ("s3://b/runs/r1", "s3://b/runs/r1/pca", "s3://b/runs/r1/_lease.json")


def test_find_and_latest_run(tmp_path):
    _complete_output(tmp_path / "20260101-000000", "a")
    time.sleep(0.02)
    _complete_output(tmp_path / "20260102-000000", "b")
    assert runs.latest_run(tmp_path) == str(tmp_path / "20260102-000000")
    assert runs.find_run(str(tmp_path / "20260101-000000")).root == str(tmp_path / "20260101-000000")
    assert runs.find_run(str(tmp_path / "20260101-000000" / "features")).root == str(tmp_path / "20260101-000000")
    with pytest.raises(ParameterError, match="holds no features"):
        runs.find_run(str(tmp_path / "nothing"))
    with pytest.raises(ParameterError, match="no complete run"):
        runs.latest_run(tmp_path / "nothing")
    assert not Path(runs.new_run_dir(tmp_path)).exists()


def test_output_inside_input_is_refused(tmp_path):
    with pytest.raises(ParameterError, match="inside input"):
        runs.check_output_location(str(tmp_path), str(tmp_path / "run"))
    runs.check_output_location(str(tmp_path / "in"), str(tmp_path / "out"))


# --------------------------------------------------------------------------- lease


def test_second_run_is_refused_while_the_first_holds_the_lease(tmp_path):
    out = tmp_path / "out"
    with runs.open_run(str(out), "overwrite") as first:
        lease_before = (out / "_lease.json").read_bytes()
        with pytest.raises(OutputBusyError) as info:
            with runs.open_run(str(out), "overwrite"):
                pytest.fail("a second run entered")
        msg = str(info.value)
        assert first.run_id in msg and f"pid {os.getpid()}" in msg and socket.gethostname() in msg
        assert str(out / "_lease.json") in msg and "Fix" in msg
        assert (out / "_lease.json").read_bytes() == lease_before, "the refused run touched the lease"
        assert sorted(p.name for p in out.iterdir()) == ["_lease.json"], "the refused run wrote something"
    assert not out.exists(), "a run that wrote nothing leaves no folder behind"


def test_refused_by_mode_error_releases_the_lease(tmp_path):
    out = tmp_path / "out"
    _complete_output(out, "a")
    with pytest.raises(OutputExistsError, match="mode='overwrite'"):
        with runs.open_run(str(out), "error"):
            pytest.fail("entered")
    assert sorted(p.name for p in out.iterdir()) == ["features", "manifest.json", "pca"]


@pytest.mark.parametrize("legacy", [False, True])
def test_gone_holder_on_this_host_is_taken_over_and_only_its_leftovers_go(tmp_path, legacy):
    out = tmp_path / "out"
    _complete_output(out, "previous", legacy=legacy)
    manifest = (out / "manifest.json").read_text()
    gone = _fake_lease(out, "20260101T000000-deadbeef")
    for run_id in ("20251231T000000-00000000", gone.run_id):  # an older dead run's leftovers, the holder's own
        (out / "_staging" / run_id / "listing").mkdir(parents=True)
    (out / "_trash" / "20251230T000000-00000000").mkdir(parents=True)  # an older p8utils's finished commit
    if not legacy:  # what the gone run wrote before its commit: part files, Spark's temporary files, a fit
        (out / "features" / "part-1-dead.parquet").write_text("uncommitted")
        (out / "features" / ".part-1-dead.parquet.crc").write_text("uncommitted")
        (out / "features" / "_temporary" / "0").mkdir(parents=True)
        (out / "pca" / f"_model-{gone.run_id}.npz").write_text("uncommitted")
    with runs.open_run(str(out), "overwrite") as active:
        assert active.replaced is not None and active.replaced.run_id == gone.run_id
        assert not (out / "_staging").exists() and not (out / "_trash").exists()
        assert json.loads((out / "_lease.json").read_text())["run_id"] == active.run_id
        for table in ("features", "pca"):
            assert sorted(p.name for p in (out / table).iterdir()) == ["part-0.parquet"]
        assert sorted(active.previous.features) == ["part-0.parquet"]
    assert (out / "manifest.json").read_text() == manifest
    assert not (out / "_lease.json").exists(), "released"


def test_live_holder_on_another_host_is_refused_until_it_expires(tmp_path):
    out = tmp_path / "out"
    live = _fake_lease(out, "20260101T000000-0000aaaa", host="emr-primary-node", pid=1, refreshed_s_ago=60)
    with pytest.raises(OutputBusyError, match="emr-primary-node"):
        with runs.open_run(str(out), "overwrite"):
            pass
    assert json.loads((out / "_lease.json").read_text())["run_id"] == live.run_id
    expired = _fake_lease(out, "20260101T000000-0000bbbb", host="emr-primary-node", pid=1,
                          refreshed_s_ago=runs.LEASE_EXPIRY_S + 60)
    with runs.open_run(str(out), "overwrite") as active:
        assert active.replaced.run_id == expired.run_id


def test_a_reused_pid_does_not_keep_a_lease_alive(tmp_path):
    out = tmp_path / "out"
    holder = _fake_lease(out, "20260101T000000-0000cccc", pid=os.getpid())  # our pid: alive ...
    (out / "_lease.json").write_bytes(runs.LeaseHolder(**{**holder.__dict__, "pid_start": 1}).to_bytes())
    with runs.open_run(str(out), "overwrite") as active:  # ... but another process's start time
        assert active.replaced.run_id == holder.run_id


def _contend(out: str, barrier, results) -> None:  # pragma: no cover - runs in child processes
    barrier.wait()
    try:
        with runs.open_run(out, "overwrite"):
            results.put("won")
            time.sleep(1.5)
    except OutputBusyError:
        results.put("busy")


@pytest.mark.parametrize("where", ["local", "s3"])
def test_simultaneous_runs_exactly_one_wins(tmp_path, request, where):
    """Six runs start at once: exactly one takes the lease (O_EXCL; on S3 a conditional PutObject)."""
    ctx = multiprocessing.get_context("fork")
    bucket = request.getfixturevalue("s3").bucket() if where == "s3" else None
    for attempt in range(3):
        out = str(tmp_path / f"out{attempt}") if bucket is None else f"s3://{bucket}/out{attempt}"
        barrier, results = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_contend, args=(out, barrier, results)) for _ in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        got = sorted(results.get(timeout=5) for _ in procs)
        assert got == ["busy"] * 5 + ["won"], got


def test_the_lease_is_refreshed_and_a_lost_lease_blocks_the_commit(tmp_path, monkeypatch):
    monkeypatch.setattr(runs.lease, "LEASE_REFRESH_S", 0.1)  # where the refresher reads it (runs is a package)
    out = tmp_path / "out"
    with pytest.raises(OutputBusyError, match="lost the lease"):
        with runs.open_run(str(out), "overwrite") as active:
            first = json.loads((out / "_lease.json").read_text())["refreshed_at"]
            time.sleep(0.6)
            assert json.loads((out / "_lease.json").read_text())["refreshed_at"] > first
            (out / "_lease.json").unlink()  # someone broke the lease by hand
            time.sleep(0.4)
            active.commit({"status": "complete"})
    assert not (out / "manifest.json").exists() and not (out / "features").exists()


def test_half_done_commit_of_an_older_p8utils_is_refused_not_dropped(tmp_path):
    """p8utils < 0.2 moved the previous manifest and folders into _trash/ during a commit: never vacuum them."""
    out = tmp_path / "out"
    _complete_output(out, "previous", legacy=True)
    gone = _fake_lease(out, "20260101T000000-0000dddd")
    trash = out / "_trash" / gone.run_id
    trash.mkdir(parents=True)
    (out / "manifest.json").rename(trash / "manifest.json")
    (out / "features").rename(trash / "features")
    with pytest.raises(DamagedRunFileError, match="half done") as info:
        with runs.open_run(str(out), "incremental"):
            pytest.fail("entered")
    assert "_trash" in str(info.value)
    assert (trash / "features" / "part-0.parquet").read_text() == "features previous"
    assert (out / "pca" / "part-0.parquet").read_text() == "pca previous"


@pytest.mark.parametrize("mode", ["error", "incremental", "overwrite"])
def test_a_damaged_manifest_is_named_and_never_drops_rows(tmp_path, mode):
    out = tmp_path / "out"
    _complete_output(out, "previous")
    (out / "manifest.json").write_text('{"status": "complete", "files": {"feat')  # truncated
    if mode == "overwrite":  # replaces it: the files of the damaged run go, like any previous table
        with runs.open_run(str(out), mode) as active:
            assert active.previous is None and not (out / "features").exists()
        return
    with pytest.raises(DamagedRunFileError, match="manifest.json is damaged") as info:
        with runs.open_run(str(out), mode):
            pytest.fail("entered")
    assert "mode='overwrite'" in str(info.value)
    assert (out / "features" / "part-0.parquet").read_text() == "features previous"
    assert not (out / "_lease.json").exists()


def test_a_damaged_lease_is_named_with_the_fix(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "_lease.json").write_text("{not json")
    with pytest.raises(DamagedRunFileError, match="_lease.json is damaged") as info:
        with runs.open_run(str(out), "overwrite"):
            pytest.fail("entered")
    assert "delete it" in str(info.value)


def test_a_failed_run_removes_its_staging_and_keeps_the_previous_output(tmp_path):
    out = tmp_path / "out"
    _complete_output(out, "previous")
    with pytest.raises(RuntimeError, match="boom"):
        with runs.open_run(str(out), "overwrite") as active:
            (Path(active.layout.staging(active.run_id)) / "listing").mkdir(parents=True)
            (out / "features" / "part-9-mine.parquet").write_text("not committed")
            active._written["features"].append("part-9-mine.parquet")
            raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["features", "manifest.json", "pca"]


# --------------------------------------------------------------------------- row check (Spark)


def _frames(spark, listed, staged, folder):
    """The listing, and the staged rows as the run reads them: from parquet (the check counts rows per file)."""
    listing = spark.createDataFrame([(p,) for p in listed], "path string")
    spark.createDataFrame(staged, "path string, error string").coalesce(1).write.parquet(str(folder))
    return listing, spark.read.parquet(str(folder))


@pytest.mark.parametrize("staged,problem", [
    ([("a", None), ("b", "empty")], "c: no row"),
    ([("a", None), ("b", None), ("c", None), ("c", None)], "c: 2 rows"),
    ([("a", None), ("b", None), ("c", None), ("x", None)], "x: not listed"),
])
def test_row_check_names_the_difference(spark, tmp_path, staged, problem):
    listing, table = _frames(spark, ["a", "b", "c"], staged, tmp_path / "staged")
    with runs.open_run(str(tmp_path / "o"), "overwrite") as active:
        with pytest.raises(RunCheckError) as info:
            active.check_rows(table, listing, 3)
    assert problem in str(info.value) and "unchanged" in str(info.value)


def test_row_check_counts_are_the_manifest_counts(spark, tmp_path):
    listing, table = _frames(spark, ["a", "b", "c", "d"], [("a", None), ("b", "empty"), ("c", None), ("d", "missing")],
                             tmp_path / "staged")
    with runs.open_run(str(tmp_path / "o"), "overwrite") as active:
        got = active.check_rows(table, listing, 4)
    assert (got.listed, got.rows, got.ok, got.failed) == (4, 4, 2, 2)
    assert got.failed_by_reason == {"empty": 1, "missing": 1}
    assert list(got.files.values()) == [4] and next(iter(got.files)).startswith("part-")


@pytest.mark.parametrize("listed,staged", [
    (["a", "b", "c", "d"], [("a", None), ("b", "empty"), ("c", None), ("d", "missing")]),
    (["a", "b", "c"], [("a", None), ("b", "empty")]),
    (["a", "b", "c"], [("a", None), ("b", None), ("c", None), ("c", None)]),
    (["a", "b", "c"], [("a", None), ("b", None), ("c", None), ("x", None)]),
    (["a", "b"], [("a", None), ("b", None), ("b", None), ("y", "empty")]),
])
def test_row_check_on_the_driver_equals_sparks(spark, tmp_path, listed, staged):
    """Small runs check on the driver (pyarrow, no Spark job): the same counts, files and refusals as Spark's."""
    import pyarrow.parquet as pq

    from p8utils.protocol.folders import read_parquet_arrow
    from p8utils.protocol.rowcheck import check_rows, check_rows_arrow

    listing, table = _frames(spark, listed, staged, tmp_path / "staged")
    files = sorted(str(f) for f in (tmp_path / "staged").glob("part-*.parquet"))
    arrow = read_parquet_arrow(files, ["path", "error"])
    assert arrow.column_names == ["path", "error", "file"] and arrow.num_rows == len(staged)
    listed_col = pq.read_table(_write_listing(tmp_path, listed)).column("path")
    outcomes = []
    for check in (lambda: check_rows(table, listing, len(listed), "ROOT"),
                  lambda: check_rows_arrow(arrow, listed_col, len(listed), "ROOT")):
        try:
            outcomes.append(check())
        except RunCheckError as exc:
            outcomes.append(str(exc))
    spark_got, driver_got = outcomes
    if isinstance(spark_got, str):  # the same numbers; the examples named may differ in order (Spark's is any)
        assert isinstance(driver_got, str) and driver_got.split("e.g.")[0] == spark_got.split("e.g.")[0]
        for example in driver_got.split("e.g. ")[1].split(")")[0].split("; "):
            assert example in spark_got
    else:
        assert driver_got == spark_got and sum(driver_got.files.values()) == len(staged)


def test_driver_reads_of_s3_part_files_fetch_only_the_columns_read(s3, tmp_path):
    """read_parquet_arrow on S3: the row check's path and error columns cost the footer's GET and the path chunk's,
    not the features' bytes; the table is the local file's."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from p8utils import storage
    from p8utils.protocol.folders import read_parquet_arrow

    from .test_storage import _requested_bytes

    n = 200
    features = np.random.default_rng(0).normal(size=(n, 1280)).astype(np.float32)
    local = tmp_path / "part-00000.parquet"
    pq.write_table(pa.table({"path": [f"s3://b/in/c/{i}.jpg" for i in range(n)], "label": ["c"] * n,
                             "features": pa.array(list(features), pa.list_(pa.float32())),
                             "error": [None] * (n - 1) + ["empty"]}), str(local))
    uri = f"s3://{s3.bucket()}/run/features/{local.name}"
    storage.upload_file(str(local), uri)
    mark = s3.mark()
    got = read_parquet_arrow([uri], ["path", "error"])
    gets = s3.requests(mark)
    assert [r["op"] for r in gets] == ["GetObject", "GetObject"], "the footer, then the path column's chunk"
    assert _requested_bytes(gets) < 0.1 * local.stat().st_size, (_requested_bytes(gets), local.stat().st_size)
    assert got.equals(read_parquet_arrow([str(local)], ["path", "error"]))
    whole = read_parquet_arrow([uri], ["features"])
    assert np.array_equal(np.stack(whole.column("features").to_numpy(zero_copy_only=False)), features)


def _write_listing(folder, listed):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = str(folder / "listing.parquet")
    pq.write_table(pa.table({"path": pa.array(listed, pa.string())}), path)
    return path


# --------------------------------------------------------------------------- commit: the manifest names the files


@pytest.fixture(params=["local", "s3"])
def target(request, tmp_path):
    """Where a test's output goes: a local folder, or a fresh bucket of the S3 emulator; and the Spark session."""
    if request.param == "local":
        return str(tmp_path / "out"), request.getfixturevalue("spark")
    s3 = request.getfixturevalue("s3")
    spark = request.getfixturevalue("s3_spark")
    return f"s3://{s3.bucket()}/runs/out", spark


def _commit_tiny_run(spark, out: str, tag: str, n: int = 6, mode: str = "overwrite") -> dict:
    """A run of ``n`` rows labelled ``tag`` through the protocol: write, check, PCA, commit; its manifest."""
    rows = [(f"{tag}/{i}.jpg", tag, None) for i in range(n)]
    table = spark.createDataFrame(rows, "path string, label string, error string").repartition(2)
    with runs.open_run(out, mode) as active:
        staged = active.write_features(table)
        check = active.check_rows(staged, staged.select("path"), n)
        active.write_pca(staged.select("path", "label"), b"model " + tag.encode(), b"moments", expected_rows=check.ok)
        return active.commit({"status": "complete", "tag": tag})


def _tags(spark, out: str) -> set:
    return {r["label"] for r in runs.read_features(out, spark).select("label").distinct().collect()}


def _names(folder: str) -> set:
    """The data files of a folder (no checksums, no hidden names), local or S3."""
    from p8utils import storage

    return {n for n in storage.list_dir(folder) if not n.startswith(".")}


def test_commit_names_the_files_and_deletes_what_it_no_longer_names(target):
    out, spark = target
    first = _commit_tiny_run(spark, out, "old")
    second = _commit_tiny_run(spark, out, "new", n=5)
    assert second["tag"] == "new" and _tags(spark, out) == {"new"}
    named = {t: {f["name"] for f in second["files"][t]} for t in ("features", "pca")}
    assert sum(f["rows"] for f in second["files"]["features"]) == 5 == runs.read_pca(out, spark).count()
    assert _names(out + "/features") == named["features"]
    assert not named["features"] & {f["name"] for f in first["files"]["features"]}, "a name reused"
    assert _names(out + "/pca") == named["pca"] | {second["files"]["pca_model"], second["files"]["pca_moments"]}
    assert runs.read_pca_file(out, "model")[1] == b"model new"
    assert spark.read.parquet(out + "/features").count() == 5, "a plain read equals the committed table"
    assert _names(out) == {"features", "manifest.json", "pca"}


def _task_file(out: str, name: str, tag: str, n: int) -> str:
    """Stage a part file as a Python task does (:func:`p8utils.featurize.featurize_to_files`); its token."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from p8utils import storage

    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"path": [f"{tag}/{i}.jpg" for i in range(n)], "label": [tag] * n,
                             "error": pa.nulls(n, pa.string())}), sink)
    return storage.stage_object(storage.join(out, "features", name), sink.getvalue().to_pybytes(),
                                storage.s3_endpoint())


def _unpublished(out: str) -> list:
    """What tasks staged and nobody published: hidden local files, or uncompleted S3 uploads."""
    from p8utils import storage

    folder = out + "/features"
    if storage.is_local(folder):
        return [n for n in storage.list_dir(folder) if n.endswith(".pending")]
    _, bucket, key = storage.split_s3(folder)
    answer = storage.s3_client(storage.s3_endpoint()).list_multipart_uploads(Bucket=bucket, Prefix=key)
    return [u["Key"] for u in answer.get("Uploads", [])]


@pytest.mark.parametrize("ends", ["commit", "fault", "kill"])
def test_task_staged_files_commit_only_what_the_tasks_name(target, ends):
    """Files the tasks staged are published and committed by name (the rows the successful attempts returned):
    another attempt's file with the run's prefix is never published nor committed, and is removed by the commit,
    when the run ends without one, or (after a kill -9, nothing published) by the next run."""
    from p8utils import storage

    out, spark = target
    _commit_tiny_run(spark, out, "old")
    before = _names(out + "/features")
    with pytest.raises(RuntimeError, match="fault|kill") if ends != "commit" else contextlib.nullcontext():
        with runs.open_run(out, "overwrite") as active:
            good, failed = f"{active.part_prefix}-00000-1-aaaa.snappy.parquet", f"{active.part_prefix}-00000-0-bbbb"
            token = _task_file(out, good, "new", 4)
            _task_file(out, failed + ".snappy.parquet", "new", 2)  # the first attempt's, staged, never named
            assert _names(out + "/features") == before, "nothing staged is visible"
            if ends == "kill":  # as if killed before the job's end: the process goes, its files stay staged
                active._abandon = lambda: None
                raise RuntimeError("kill")
            rows = spark.createDataFrame([(good, 4, token)], "file string, rows long, token string")
            assert active.add_task_files("features", rows) == [good]
            staged = active.staged_features(spark)
            check = active.check_rows(staged, staged.select("path"), 4)
            assert (check.ok, check.rows, check.files) == (4, 4, {good: 4})
            if ends == "fault":
                raise RuntimeError("fault")
            active.write_pca(staged.select("path", "label"), b"model", expected_rows=check.ok)
            manifest = active.commit({"status": "complete"})
    left = set(storage.list_dir(out + "/features"))
    if ends == "commit":
        assert [f["name"] for f in manifest["files"]["features"]] == [good]
        assert left == {good} and _tags(spark, out) == {"new"} and _unpublished(out) == []
        return
    assert _tags(spark, out) == {"old"} and _names(out + "/features") == before, "the committed table, alone"
    if ends == "fault":
        assert not [n for n in left if "aaaa" in n or "bbbb" in n] and _unpublished(out) == [], left
        return
    assert len(_unpublished(out)) == 2, "staged files survive a kill -9, unseen"
    _commit_tiny_run(spark, out, "next")  # the next run removes them when it starts
    assert _unpublished(out) == [] and _tags(spark, out) == {"next"}


@pytest.mark.parametrize("fail_at", [0, 1, 3, 6, 99])  # 99: past the last of the commit's storage calls
def test_a_commit_killed_at_any_step_shows_the_old_or_the_new_table(target, monkeypatch, fail_at):
    """Kill the commit before one of its storage writes and deletes: a reader sees one whole table."""
    from p8utils import storage

    out, spark = target
    _commit_tiny_run(spark, out, "old")
    calls = {"n": 0, "armed": False}

    class Killed(BaseException):
        pass

    def dying(real):
        def call(*args, **kwargs):
            if calls["armed"]:
                calls["n"] += 1
                if calls["n"] > fail_at:
                    raise Killed()
            return real(*args, **kwargs)
        return call

    for name in ("write_bytes", "delete"):
        monkeypatch.setattr(storage, name, dying(getattr(storage, name)))
    original_commit = runs.ActiveRun.commit

    def armed_commit(self, manifest):
        calls["armed"] = True
        return original_commit(self, manifest)

    monkeypatch.setattr(runs.ActiveRun, "commit", armed_commit)
    monkeypatch.setattr(runs.ActiveRun, "_abandon", lambda self: None)  # a killed process cleans nothing
    monkeypatch.setattr(runs.ActiveRun, "_release", lambda self: self._refresher and self._refresher.stop())
    try:
        _commit_tiny_run(spark, out, "new", n=5)
        finished = True
    except Killed:
        finished = False
    calls["armed"] = False
    monkeypatch.undo()
    tags = _tags(spark, out)
    assert tags == ({"old"} if fail_at == 0 else {"new"}), "the manifest write is the commit"
    assert runs.read_features(out, spark).count() == (6 if tags == {"old"} else 5)
    assert finished == (calls["n"] <= fail_at) and (finished or calls["n"] == fail_at + 1)
    assert finished or fail_at < 99
    if finished:
        return
    # the next run takes the dead run's lease over and deletes what no manifest names
    from p8utils import storage

    lease = out + "/_lease.json"
    storage.write_bytes(lease, runs.LeaseHolder(**{**json.loads(storage.read_bytes(lease)), "pid": _dead_pid(),
                                                   "pid_start": None}).to_bytes())
    third = _commit_tiny_run(spark, out, "third", n=4)
    assert _tags(spark, out) == {"third"}
    assert _names(out + "/features") == {f["name"] for f in third["files"]["features"]}
    assert _names(out) == {"features", "manifest.json", "pca"}


def test_versions_record_the_interpreter_and_the_emr_pin_set(tmp_path, monkeypatch):
    """On an EMR node of the kit the bootstrap's record names the pin set; elsewhere it is None."""
    assert runs._versions()["pin_set"] is None and runs._versions()["python_executable"] == sys.executable
    (tmp_path / runs.PYTHON_RECORD).write_text(json.dumps({"requirements": "requirements-emr.txt", "python": "3.11.9"}))
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    assert runs._versions()["pin_set"] == "requirements-emr.txt"


# --------------------------------------------------------------------------- incremental plan


def test_incremental_plan_keeps_untouched_files_and_rewrites_the_others():
    parts = [runs.PartTally("part-a", 10, 10), runs.PartTally("part-b", 10, 7), runs.PartTally("part-c", 5, 5)]
    plan = runs.plan_incremental(parts, listed=30, new_files=lambda n: 1, max_files=100)
    assert (plan.featurized, plan.reused, plan.removed) == (8, 22, 3)
    assert plan.kept_files == ("part-a", "part-c") and plan.rewritten_files == ("part-b",)
    assert plan.merges and not plan.compacted and plan.key == runs.INCREMENTAL_KEY and plan.pca_refit == "moments"
    assert plan.manifest_counts() == {"featurized": 8, "reused": 22, "removed": 3}
    assert plan.manifest_incremental() == {"files_kept": 2, "files_rewritten": 1, "compacted": False,
                                           "pca_refit": "moments"}
    fallback = plan.refit("rows", "the previous moments are gone")
    assert fallback.manifest_incremental()["pca_refit"] == "rows" and plan.pca_refit == "moments", "frozen"


def test_incremental_plan_compacts_past_the_file_bound_and_full_plans_record_nothing():
    parts = [runs.PartTally(f"part-{i}", 4, 4) for i in range(5)]
    plan = runs.plan_incremental(parts, listed=24, new_files=lambda n: 2, max_files=6)
    assert plan.compacted and not plan.merges and plan.kept_files == ()
    assert plan.rewritten_files == tuple(p.name for p in parts) and plan.pca_refit == "rows"
    assert plan.manifest_incremental() == {"files_kept": 0, "files_rewritten": 5, "compacted": True,
                                           "pca_refit": "rows"}
    full = runs.IncrementalPlan.full(12, incremental=True)
    assert full.manifest_counts() == {"featurized": 12, "reused": 0, "removed": 0}
    assert full.manifest_incremental() is None and full.key == runs.INCREMENTAL_KEY and not full.merges
    assert runs.IncrementalPlan.full(12).key is None and full.refit("rows", "no table").pca_refit is None


def test_layout_carries_its_store(tmp_path):
    lay = runs.layout(str(tmp_path / "r"))
    assert lay.store.spark is None and runs.layout(lay) is lay
    assert lay == runs.layout(str(tmp_path / "r"), spark=None), "the store is not part of equality"
    lay.store.write_bytes(lay.manifest, b"{}")
    assert lay.store.exists(lay.manifest) and lay.store.list_dir(lay.root) == ["manifest.json"]
