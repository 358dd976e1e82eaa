"""The pipeline on a real multi-process Spark standalone cluster (issue: a real multi-process cluster).

A master and two 1-core workers on 127.0.0.1 are started from the pip ``pyspark``
package (:mod:`tests.harness.spark_cluster`); the pipeline runs through the CLI in a
separate driver process (``--master spark://…``) because this pytest process
already holds the local ``spark`` fixture (one SparkContext per process).

* The cluster output equals the local-mode output (``sample_run``).
* Losing a worker (its JVM, its executor and the executor's Python workers,
  SIGKILLed at once, as when a node dies) while featurization runs: the job
  finishes on the other worker with every input file exactly once.

Everything started here is stopped by PID (process trees found through
``/proc``), and the module fails if any of it is left running.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import pytest

from .conftest import ROOT, image_files
from .harness.spark_cluster import (
    StandaloneCluster,
    free_port,
    identity,
    is_alive,
    kill_tree,
    python_workers,
    stop_all,
    tail,
    tree,
    try_json,
    wait_for,
)

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process trees are read from Linux /proc"),
]

FEATURIZE = "p8utils: featurize"  # job description set by pipeline._stage
RUN_TIMEOUT = 600

# Driver logging: Spark's shell default (WARN to stderr) plus the task scheduler's INFO lines
# ("Starting task …", "Finished task …", executor loss), which prove where each task ran, and the
# port the UI really bound ("Successfully started service 'SparkUI' on port …").
# sc.setLogLevel("WARN") in p8utils.spark changes the root level only, so these stay.
DRIVER_LOG4J = """\
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss.SSS} %p %c{1}: %m%n%ex
logger.tsm.name = org.apache.spark.scheduler.TaskSetManager
logger.tsm.level = info
logger.tsi.name = org.apache.spark.scheduler.TaskSchedulerImpl
logger.tsi.level = info
logger.utils.name = org.apache.spark.util.Utils
logger.utils.level = info
"""


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Master + 2 workers × 1 core on 127.0.0.1; stopped by PID at the end of the module (asserts nothing is left)."""
    with StandaloneCluster(tmp_path_factory.mktemp("spark-cluster"), n_workers=2, cores=1, memory="3g") as c:
        yield c


class Driver:
    """``python -m p8utils run … --master spark://…`` in its own process group, logs to files.

    Leaving the context stops the driver's whole tree by PID (python, its
    spark-submit JVM) and asserts none of it survived.
    """

    def __init__(self, cluster: StandaloneCluster, args: list[str], logs: Path):
        self.cluster, self.ui_port = cluster, free_port()
        self.ui_bound: Optional[int] = None
        conf = logs / "conf"  # the driver's SPARK_CONF_DIR (the daemons keep Spark's default logging)
        conf.mkdir(parents=True, exist_ok=True)
        settings = {
            "spark.cores.max": "2",            # both workers' cores ...
            "spark.executor.cores": "1",       # ... as two 1-core executors, one per worker
            "spark.executor.memory": "2g",     # fits the 3g workers
            "spark.scheduler.minRegisteredResourcesRatio": "1.0",  # start once both executors registered
            "spark.pyspark.python": sys.executable,  # executors' Python: the venv with p8utils
            "spark.sql.shuffle.partitions": "4",
            "spark.ui.port": str(self.ui_port),  # REST API: which task runs where, during the run
        }
        (conf / "spark-defaults.conf").write_text("".join(f"{k} {v}\n" for k, v in settings.items()))
        (conf / "log4j2.properties").write_text(DRIVER_LOG4J)
        self.stdout, self.stderr = logs / "driver.out", logs / "driver.err"
        with open(self.stdout, "wb") as out, open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "p8utils", "run", *args, "--master", cluster.url],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=True,
                env=cluster.env(PYTHONPATH=str(ROOT), SPARK_CONF_DIR=str(conf)))
        self.ident = identity(self.proc.pid) or (self.proc.pid, -1)
        self.seen = tree(self.proc.pid) | {self.ident}

    def track(self) -> None:
        if is_alive(self.ident):  # never walk the tree of a PID reused by another process
            self.seen |= tree(self.proc.pid)
        self.cluster.track()

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        end = time.time() + timeout
        while self.proc.poll() is None:
            if time.time() > end:
                raise AssertionError(f"the driver did not finish in {timeout:.0f} s\n{self.logs()}")
            self.track()
            time.sleep(0.5)
        return self.proc.returncode

    def api(self, path: str) -> Any:
        """The driver's monitoring REST API (``/api/v1/…``), None while it is not up."""
        if self.ui_bound is None:  # the probed port may have been taken meanwhile: Spark then moves on
            found = re.search(r"started service 'SparkUI' on port (\d+)", self.stderr.read_text(errors="replace"))
            self.ui_bound = int(found[1]) if found else None
        return try_json(f"http://127.0.0.1:{self.ui_bound or self.ui_port}/api/v1/{path}")

    def logs(self, n: int = 60) -> str:
        return "\n".join([tail(self.stdout, n), tail(self.stderr, n), self.cluster.logs(20)])

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.track()
        stop_all(self.seen)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        left = {i[0] for i in self.seen if is_alive(i)}
        assert not left, f"driver processes survived: {left}"


def _features(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path / "features").sort_values("path").reset_index(drop=True)


def _rel(a, b) -> np.ndarray:
    """Per-row relative error ‖a − b‖ / ‖b‖ of two stacks of vectors."""
    a, b = np.stack(a).astype(np.float64), np.stack(b).astype(np.float64)
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


def _app_ids(cluster: StandaloneCluster) -> set[str]:
    state = wait_for(cluster.master_state, 60, "the master's state", cluster.logs)
    return {a["id"] for a in state.get("activeapps", []) + state.get("completedapps", [])}


def _app_executors(cluster: StandaloneCluster, app_id: str) -> dict[str, list[int]]:
    """Executor ids each live worker ran for ``app_id`` (running or finished)."""
    out = {}
    for w in cluster.workers:
        state = wait_for(lambda w=w: cluster.worker_state(w), 60, f"{w.name}'s state", cluster.logs)
        out[w.name] = sorted(e["id"] for e in state.get("executors", []) + state.get("finishedexecutors", [])
                             if e.get("appid") == app_id)
    return out


# --------------------------------------------------------------------------- tests


def test_cluster_run_equals_local_run(cluster, sample_run, sample_dir, tmp_path):
    cluster.ensure_workers()
    out = tmp_path / "out"
    args = ["--input", str(sample_dir), "--output", str(out), "--weights", "offline", "--variance", "0.95"]
    before = _app_ids(cluster)
    started = time.time()
    with Driver(cluster, args, tmp_path / "logs") as driver:
        rc = driver.wait()
        assert rc == 0, driver.logs()
        new = _app_ids(cluster) - before
        assert len(new) == 1, f"expected one new application on the master, got {new}"
        app_id = new.pop()
        # both workers ran an executor of this application (a real distributed run, not a local fallback)
        per_worker = _app_executors(cluster, app_id)
        assert all(len(ids) == 1 for ids in per_worker.values()) and len(per_worker) == 2, per_worker
    print(f"\ncluster run: {time.time() - started:.1f} s, app {app_id}, executors per worker {per_worker}")

    m = json.loads((out / "manifest.json").read_text())
    ref = sample_run.manifest
    assert m["parameters"]["master"] == cluster.url
    assert m["counts"] == ref["counts"]
    assert m["weights"]["sha256"] == ref["weights"]["sha256"]

    got, want = _features(out), _features(Path(sample_run.output))
    assert list(got.path) == list(want.path) and got.path.is_unique, "same rows"
    assert list(got.label) == list(want.label)
    assert got.error.isna().all() and want.error.isna().all()
    rel = _rel(got.features, want.features)
    assert rel.max() <= 1e-5, f"features differ: max relative error {rel.max():.3g}"

    assert m["pca"]["k"] == sample_run.pca.k
    np.testing.assert_allclose(m["pca"]["explained_variance"], sample_run.pca.explained_variance,
                               rtol=1e-6, atol=1e-12)
    # scores, up to the sign of each component whose eigenvalue is isolated (others are not unique)
    pg = pd.read_parquet(out / "pca").sort_values("path").reset_index(drop=True)
    pw = pd.read_parquet(sample_run.pca_path).sort_values("path").reset_index(drop=True)
    assert list(pg.path) == list(pw.path)
    ev = np.asarray(sample_run.pca.explained_variance)[: sample_run.pca.k]
    gaps = np.minimum(np.abs(np.diff(ev, prepend=np.inf)), np.abs(np.diff(ev, append=0)))
    keep = gaps > 1e-3 * ev[0]
    a, b = np.stack(pg.pca_features)[:, keep], np.stack(pw.pca_features)[:, keep]
    a = a * np.sign(np.sum(a * b, axis=0))
    err = np.linalg.norm(a - b, axis=0) / np.linalg.norm(b, axis=0)
    assert keep[:5].all() and err.max() <= 1e-6, err


COPIES = 4  # data_sample × 4 = 320 images, 12 featurization tasks (~1 s each once the model is built)


@pytest.fixture
def copied_input(sample_dir, tmp_path) -> tuple[Path, dict[str, Path]]:
    """The sample copied COPIES times under new names; maps each copy's Spark path to its original."""
    root = tmp_path / "in"
    origin = {}
    for i in range(COPIES):
        for f in image_files(sample_dir):
            dest = root / f.parent.name / f"copy{i}_{f.name}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dest)
            origin[f"file:{dest}"] = f
    return root, origin


def _featurize_running(cluster: StandaloneCluster, driver: Driver, seen: dict) -> Optional[dict]:
    """A worker whose executor has finished a featurization task and is running another one, with its ids.

    Killing at that moment loses one running task and the executor that holds
    committed output of an earlier one: both must end up exactly once.
    """
    if driver.proc.poll() is not None:
        raise AssertionError("the driver exited before the worker could be killed\n" + driver.logs())
    driver.track()
    apps = [a for a in (cluster.master_state() or {}).get("activeapps", []) if a["name"] == "p8utils"]
    if len(apps) != 1:
        return None
    app_id = apps[0]["id"]
    stages = driver.api(f"applications/{app_id}/stages?status=active") or []
    seen["stages"] = [(s.get("stageId"), s.get("description"), s.get("numActiveTasks")) for s in stages]
    for stage in stages:
        if stage.get("description") != FEATURIZE:
            continue
        sid, att = stage["stageId"], stage["attemptId"]
        tasks = driver.api(f"applications/{app_id}/stages/{sid}/{att}/taskList?length=10000") or []
        by_exec: dict[str, set] = {}
        for t in tasks:
            by_exec.setdefault(t["executorId"], set()).add(t["status"])
        seen["tasks"] = by_exec
        for eid, statuses in by_exec.items():
            if not {"RUNNING", "SUCCESS"} <= statuses:
                continue
            for w in cluster.workers:
                execs = (cluster.worker_state(w) or {}).get("executors", [])
                if any(e.get("appid") == app_id and str(e.get("id")) == eid for e in execs) and python_workers(w.pid):
                    done = sum(t["status"] == "SUCCESS" for t in tasks)
                    return {"app": app_id, "stage": sid, "attempt": att, "executor": eid, "worker": w,
                            "tasks": len(tasks), "done": done, "total": stage["numTasks"]}
    return None


# TaskSetManager's lines (Spark 3.5), {stage} = "<stage id>.<attempt>"
_STARTED = (r"Starting task (?P<index>\d+)\.\d+ in stage {stage} \(TID (?P<tid>\d+)\) "
            r"\([^,]+, executor (?P<executor>\w+),")
_FINISHED = (r"Finished task \d+\.\d+ in stage {stage} \(TID (?P<tid>\d+)\) in \d+ ms on \S+ "
             r"\(executor (?P<executor>\w+)\)")
_LOST = (r"(?:task \d+\.\d+ in stage {stage} \(TID (?P<tid>\d+)\) failed because while it was being computed, "
         r"its executor exited|Lost task \d+\.\d+ in stage {stage} \(TID (?P<tid2>\d+)\))")


def _task_log(stderr: str, stage: int, attempt: int) -> dict[int, dict]:
    """Tasks of one stage attempt from the driver's TaskSetManager log: TID -> index, executor, finished, lost."""
    st = re.escape(f"{stage}.{attempt}")
    tasks: dict[int, dict] = {}
    for m in re.finditer(_STARTED.format(stage=st), stderr):
        tasks[int(m["tid"])] = {"index": int(m["index"]), "executor": m["executor"], "finished": False, "lost": False}
    for m in re.finditer(_FINISHED.format(stage=st), stderr):
        tasks[int(m["tid"])]["finished"] = True
    for m in re.finditer(_LOST.format(stage=st), stderr):
        tasks[int(m["tid"] or m["tid2"])]["lost"] = True
    return tasks


def test_job_survives_losing_a_worker_during_featurization(cluster, sample_run, copied_input, tmp_path):
    cluster.ensure_workers()
    src, origin = copied_input
    out = tmp_path / "out"
    args = ["--input", str(src), "--output", str(out), "--weights", "offline", "--k", "5",
            "--images-per-partition", "27",  # 12 tasks: a worker can be lost mid-stage
            "--verbose"]  # Spark's scheduler log on stderr (not only in the run's log file): read below
    started = time.time()
    seen: dict = {}
    with Driver(cluster, args, tmp_path / "logs") as driver:
        hit = wait_for(lambda: _featurize_running(cluster, driver, seen), 300,
                       "an executor running its second featurization task",
                       lambda: f"last seen: {seen}\n{driver.logs()}", interval=0.25)
        victim = hit["worker"]
        assert not (out / "manifest.json").exists() and (out / "_staging").is_dir()
        # a node dies: its worker JVM, the executor it launched and the executor's Python workers, at once
        killed = kill_tree(victim.pid, signal.SIGKILL)
        killed_at = time.time() - started
        victim.seen |= killed
        wait_for(lambda: not any(is_alive(i) for i in killed), 30, "the killed processes to be gone")
        rc = driver.wait()
        finished_at = time.time() - started
        assert rc == 0, driver.logs()
        stderr = driver.stderr.read_text(errors="replace")

        def completed():  # noqa: ANN202 - the state, or None until then
            """The master's state once it lists the application as completed (it notices the driver's exit later)."""
            state = cluster.master_state()
            return state if state and any(a["id"] == hit["app"] for a in state.get("completedapps", [])) else None

        master = wait_for(completed, 60, "the master to list the application as completed", cluster.logs)
    print(f"\nfault run: killed {victim.name} (pid {victim.pid}, executor {hit['executor']}, "
          f"{len(killed)} processes) at {killed_at:.1f} s with featurization stage {hit['stage']} at "
          f"{hit['done']}/{hit['total']} tasks done; run finished at {finished_at:.1f} s")

    # the kill hit featurization: from the driver's scheduler log, the victim executor had finished a task of
    # the featurization stage, lost the one it was running, and that partition was redone on the other executor
    tasks = _task_log(stderr, hit["stage"], hit["attempt"])
    victim_tasks = {tid: t for tid, t in tasks.items() if t["executor"] == hit["executor"]}
    lost = {tid: t for tid, t in victim_tasks.items() if t["lost"]}
    assert lost and all(not t["finished"] for t in lost.values()), \
        f"no running featurization task was lost with executor {hit['executor']}: the kill proved nothing\n" \
        + tail(driver.stderr, 80)
    assert any(t["finished"] for t in victim_tasks.values()), "the victim had committed no task before the kill"
    for t in lost.values():
        redone = [o for o in tasks.values() if o["index"] == t["index"] and o["finished"]]
        assert len(redone) == 1 and redone[0]["executor"] != hit["executor"], (t, redone)
    assert re.search(rf"ERROR TaskSchedulerImpl: Lost executor {hit['executor']} on ", stderr)
    assert hit["done"] < hit["total"]
    # the master saw the worker die, and the application still completed
    states = {w["id"]: w["state"] for w in master.get("workers", [])}
    assert sorted(states.values()) == ["ALIVE", "DEAD"], master.get("workers")
    assert [a["state"] for a in master.get("completedapps", []) if a["id"] == hit["app"]] == ["FINISHED"], \
        master.get("completedapps")

    # every input file exactly once, no error, and the right features for its content
    feats = _features(out)
    assert feats.path.is_unique, feats.path[feats.path.duplicated()].tolist()
    assert set(feats.path) == set(origin) == {f"file:{p}" for p in image_files(src)}
    assert feats.error.isna().all()
    ref = _features(Path(sample_run.output)).set_index("path")
    want = [ref.loc[f"file:{origin[p]}", "features"] for p in feats.path]
    assert _rel(feats.features, want).max() <= 1e-5
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["total"] == m["counts"]["ok"] == len(origin) and m["counts"]["failed"] == 0
    assert len(pd.read_parquet(out / "pca")) == len(origin)
    # the run's files, and the explorer page the CLI writes after the commit (--verbose: no log copy)
    assert sorted(p.name for p in out.iterdir()) == ["explorer.html", "features", "manifest.json", "pca"]
