"""The run protocol: layout, lease (refusal, take-over, races, refresh), half-done commits, the row check."""

from __future__ import annotations

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
from p8utils.errors import OutputBusyError, OutputExistsError, ParameterError, RunCheckError


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


def _complete_output(out: Path, tag: str) -> None:
    """A minimal committed run: features/, pca/, manifest.json, each holding ``tag``."""
    for name in ("features", "pca"):
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / name / "part-0.parquet").write_text(f"{name} {tag}")
    (out / "manifest.json").write_text(json.dumps({"status": "complete", "tag": tag}))


# --------------------------------------------------------------------------- layout


def test_layout_names_every_place(tmp_path):
    lay = runs.layout(str(tmp_path / "r"))
    assert lay.features == str(tmp_path / "r" / "features") and lay.manifest == str(tmp_path / "r" / "manifest.json")
    assert lay.staging("x").features == str(tmp_path / "r" / "_staging" / "x" / "features")
    assert lay.trash("x").manifest == str(tmp_path / "r" / "_trash" / "x" / "manifest.json")
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


def test_gone_holder_on_this_host_is_taken_over_and_only_its_leftovers_go(tmp_path):
    out = tmp_path / "out"
    _complete_output(out, "previous")
    gone = _fake_lease(out, "20260101T000000-deadbeef")
    for run_id in ("20251231T000000-00000000", gone.run_id):  # an older dead run's leftovers, the holder's own
        (out / "_staging" / run_id / "features").mkdir(parents=True)
        (out / "_trash" / run_id).mkdir(parents=True)
    with runs.open_run(str(out), "overwrite") as active:
        assert active.replaced is not None and active.replaced.run_id == gone.run_id
        assert not (out / "_staging").exists() and not (out / "_trash").exists()
        assert json.loads((out / "_lease.json").read_text())["run_id"] == active.run_id
    assert (out / "manifest.json").read_text() == json.dumps({"status": "complete", "tag": "previous"})
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


def test_simultaneous_runs_exactly_one_wins(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for attempt in range(3):
        out = str(tmp_path / f"out{attempt}")
        barrier, results = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_contend, args=(out, barrier, results)) for _ in range(6)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        got = sorted(results.get(timeout=5) for _ in procs)
        assert got == ["busy"] * 5 + ["won"], got


def test_the_lease_is_refreshed_and_a_lost_lease_blocks_the_commit(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "LEASE_REFRESH_S", 0.1)
    out = tmp_path / "out"
    with pytest.raises(OutputBusyError, match="lost the lease"):
        with runs.open_run(str(out), "overwrite") as active:
            first = json.loads((out / "_lease.json").read_text())["refreshed_at"]
            time.sleep(0.6)
            assert json.loads((out / "_lease.json").read_text())["refreshed_at"] > first
            (out / "_lease.json").unlink()  # someone broke the lease by hand
            time.sleep(0.4)
            (out / "_staging" / active.run_id / "features").mkdir(parents=True)
            (out / "_staging" / active.run_id / "pca").mkdir(parents=True)
            active.commit({"status": "complete"})
    assert not (out / "manifest.json").exists() and not (out / "features").exists()


def test_half_done_commit_of_a_gone_run_is_rolled_back(tmp_path):
    out = tmp_path / "out"
    _complete_output(out, "previous")
    gone = _fake_lease(out, "20260101T000000-0000dddd")
    trash = out / "_trash" / gone.run_id
    trash.mkdir(parents=True)
    # the gone run had moved the old manifest and features aside and its own features in, then died
    (out / "manifest.json").rename(trash / "manifest.json")
    (out / "features").rename(trash / "features")
    (out / "features").mkdir()
    (out / "features" / "part-0.parquet").write_text("features of the dead run")
    with runs.open_run(str(out), "incremental"):
        assert (out / "manifest.json").read_text() == json.dumps({"status": "complete", "tag": "previous"})
        assert (out / "features" / "part-0.parquet").read_text() == "features previous"
        assert (out / "pca" / "part-0.parquet").read_text() == "pca previous"
        assert not (out / "_trash").exists()


def test_commit_swaps_in_and_writes_the_manifest_last(tmp_path):
    out = tmp_path / "out"
    _complete_output(out, "previous")
    with runs.open_run(str(out), "overwrite") as active:
        for name in ("features", "pca"):
            (Path(active.staged.root) / name).mkdir(parents=True)
            (Path(active.staged.root) / name / "part-0.parquet").write_text(f"{name} new")
        active.commit({"status": "complete", "tag": "new"})
    assert sorted(p.name for p in out.iterdir()) == ["features", "manifest.json", "pca"]
    assert json.loads((out / "manifest.json").read_text())["tag"] == "new"
    assert (out / "features" / "part-0.parquet").read_text() == "features new"


def test_a_failed_run_removes_its_staging_and_keeps_the_previous_output(tmp_path):
    out = tmp_path / "out"
    _complete_output(out, "previous")
    with pytest.raises(RuntimeError, match="boom"):
        with runs.open_run(str(out), "overwrite") as active:
            (Path(active.staged.root) / "features").mkdir(parents=True)
            raise RuntimeError("boom")
    assert sorted(p.name for p in out.iterdir()) == ["features", "manifest.json", "pca"]


# --------------------------------------------------------------------------- row check (Spark)


def _frames(spark, listed, staged):
    listing = spark.createDataFrame([(p,) for p in listed], "path string")
    table = spark.createDataFrame(staged, "path string, error string")
    return listing, table


@pytest.mark.parametrize("staged,problem", [
    ([("a", None), ("b", "empty")], "c: no row"),
    ([("a", None), ("b", None), ("c", None), ("c", None)], "c: 2 rows"),
    ([("a", None), ("b", None), ("c", None), ("x", None)], "x: not listed"),
])
def test_row_check_names_the_difference(spark, tmp_path, staged, problem):
    listing, table = _frames(spark, ["a", "b", "c"], staged)
    with runs.open_run(str(tmp_path / "o"), "overwrite") as active:
        with pytest.raises(RunCheckError) as info:
            active.check_rows(table, listing, 3)
    assert problem in str(info.value) and "unchanged" in str(info.value)


def test_row_check_counts_are_the_manifest_counts(spark, tmp_path):
    listing, table = _frames(spark, ["a", "b", "c", "d"], [("a", None), ("b", "empty"), ("c", None), ("d", "missing")])
    with runs.open_run(str(tmp_path / "o"), "overwrite") as active:
        got = active.check_rows(table, listing, 4)
    assert (got.listed, got.rows, got.ok, got.failed) == (4, 4, 2, 2)
    assert got.failed_by_reason == {"empty": 1, "missing": 1}
