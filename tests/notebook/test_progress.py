"""Tests of p8utils.notebook.progress: Spark status-tracker polling, displays, clean stop."""

from __future__ import annotations

import io
import sys
import threading
from collections import namedtuple

import pytest

from p8utils.errors import ParameterError
from p8utils.notebook import progress
from p8utils.notebook.progress import SparkProgress, spark_progress

Job = namedtuple("Job", "jobId stageIds status")
Stage = namedtuple("Stage", "stageId currentAttemptId name numTasks numActiveTasks numCompletedTasks numFailedTasks")


def _alive_pollers() -> list:
    return [t for t in threading.enumerate() if t.name == "p8utils-spark-progress"]


def test_counts_the_jobs_started_inside_the_block(spark):
    sc = spark.sparkContext
    sc.parallelize(range(10), 5).count()  # before the block: must not be counted
    with spark_progress(spark, "three tasks", display="off", interval=0.05) as p:
        sc.parallelize(range(30), 3).map(lambda x: x * 2).count()
    assert (p.jobs_total, p.jobs_done, p.jobs_failed) == (1, 1, 0)
    assert (p.tasks_done, p.tasks_total) == (3, 3)
    assert not p.failed and p.elapsed > 0
    assert p.summary().startswith("three tasks: 3/3 tasks in 1 Spark job, ")
    assert not _alive_pollers()


def test_several_jobs_and_live_updates(spark):
    sc = spark.sparkContext
    seen = []
    with spark_progress(spark, "two jobs", display="off", interval=0.05) as p:
        sc.parallelize(range(8), 4).map(lambda x: (__import__("time").sleep(0.1), x)[1]).count()
        seen.append(p.tasks_done)
        spark.range(0, 1000, numPartitions=2).selectExpr("sum(id)").collect()
    assert p.jobs_total >= 2 and p.jobs_done == p.jobs_total
    assert p.tasks_done == p.tasks_total >= 6
    assert seen[0] <= p.tasks_done


def test_text_display_prints_coarse_lines_and_a_summary(spark):
    buf = io.StringIO()
    with spark_progress(spark, "text run", display="text", interval=0.05, file=buf) as p:
        spark.sparkContext.parallelize(range(4), 2).count()
    lines = buf.getvalue().strip().splitlines()
    assert p.display == "text"
    assert lines[-1] == p.summary() and "2/2 tasks in 1 Spark job" in lines[-1]
    assert len(lines) <= 4  # quarters at most, no redraw noise


def test_bar_display_uses_tqdm(spark):
    pytest.importorskip("tqdm")
    buf = io.StringIO()
    with spark_progress(spark, "bar run", display="bar", interval=0.05, file=buf) as p:
        spark.sparkContext.parallelize(range(4), 2).count()
    out = buf.getvalue()
    assert p.display == "bar"
    assert "bar run" in out and "2/2 tasks" in out
    assert out.rstrip().splitlines()[-1] == p.summary()


def test_exception_in_block_propagates_and_stops_the_thread(spark):
    buf = io.StringIO()
    boom = ValueError("boom")
    with pytest.raises(ValueError) as info:
        with spark_progress(spark, "failing", display="text", interval=0.05, file=buf) as p:
            spark.sparkContext.parallelize(range(4), 2).count()
            raise boom
    assert info.value is boom
    assert p.failed and "FAILED" in buf.getvalue()
    assert not _alive_pollers()


def test_failed_spark_job_is_counted(spark):
    with pytest.raises(Exception):  # noqa: B017 - py4j wraps the Python error of the task
        with spark_progress(spark, "failing job", display="off", interval=0.05) as p:
            spark.sparkContext.parallelize(range(4), 2).map(lambda x: 1 // 0).count()
    assert p.failed and p.jobs_failed == 1 and p.jobs_done == 1
    assert p.tasks_total == 2 and p.tasks_done < 2  # the tasks that never completed stay visible
    assert "1 job(s) failed" in p.summary()
    assert not _alive_pollers()


def test_auto_is_text_outside_jupyter_and_terminals():
    assert progress._choose_display("auto", io.StringIO()) == "text"
    assert progress._choose_display("off", None) == "off"


def test_without_tqdm_everything_degrades_to_text(monkeypatch, spark):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    assert progress._choose_display("bar", None) == "text"
    assert progress._choose_display("auto", None) == "text"
    buf = io.StringIO()
    with spark_progress(spark, "no tqdm", display="bar", interval=0.05, file=buf) as p:
        spark.sparkContext.parallelize(range(2), 1).count()
    assert p.display == "text" and buf.getvalue().strip().splitlines()[-1] == p.summary()


@pytest.mark.parametrize("kwargs", [{"display": "widget"}, {"interval": 0}, {"interval": "1"}])
def test_bad_parameters(spark, kwargs):
    with pytest.raises(ParameterError):
        with spark_progress(spark, **kwargs):
            pass


class _FakeTracker:
    def __init__(self, jobs, stages, before=()):
        self.jobs, self.stages, self.before = jobs, stages, list(before)

    def getJobIdsForGroup(self, group):  # noqa: N802 - PySpark's API
        return self.before + [j.jobId for j in self.jobs]

    def getJobInfo(self, jid):  # noqa: N802
        return next((j for j in self.jobs if j.jobId == jid), None)

    def getStageInfo(self, sid):  # noqa: N802
        return self.stages.get(sid)


def _poller(tracker):
    poller = progress._Poller.__new__(progress._Poller)
    poller._tracker, poller._group, poller._before, poller._finished = tracker, None, set(tracker.before), {}
    return poller


def test_poller_drops_skipped_stages_of_finished_jobs_and_freezes_them():
    stages = {
        1: Stage(1, 0, "map", 4, 0, 4, 0),
        2: Stage(2, 0, "skipped", 6, 0, 0, 0),  # never ran: its output was reused
        3: Stage(3, 0, "result", 2, 1, 1, 0),
    }
    tracker = _FakeTracker([Job(10, [1, 2], "SUCCEEDED"), Job(11, [3], "RUNNING")], stages, before=[7])
    poller, state = _poller(tracker), SparkProgress("x")
    poller.poll(state)
    assert (state.jobs_total, state.jobs_done) == (2, 1)
    assert (state.tasks_done, state.tasks_total) == (4 + 1, 4 + 2)
    tracker.stages = {3: Stage(3, 0, "result", 2, 0, 2, 0)}  # job 10's stages evicted from the UI store
    tracker.jobs[1] = Job(11, [3], "SUCCEEDED")
    poller.poll(state)
    assert (state.jobs_done, state.tasks_done, state.tasks_total) == (2, 6, 6)


def test_text_view_prints_quarters_only():
    buf = io.StringIO()
    view = progress._TextView(buf, log_every=1e9)
    state = SparkProgress("q", tasks_total=100)
    for done in range(101):
        state.tasks_done = done
        view.update(state)
    lines = buf.getvalue().splitlines()
    assert [ln.split(":")[1].split(",")[0].strip() for ln in lines] == ["25/100 tasks", "50/100 tasks", "75/100 tasks"]
