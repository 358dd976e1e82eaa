"""Progress of Spark jobs, for people watching a notebook cell run.

:func:`spark_progress` is a context manager: while its block runs, a daemon
thread polls ``spark.sparkContext.statusTracker()`` and counts the tasks of the
Spark jobs *started inside the block* (jobs of the calling thread's job group
that did not exist when the block began)::

    from p8utils.notebook import progress

    with progress.spark_progress(spark, "featurize + PCA"):
        result = pipeline.run(...)

What the user sees depends on where the code runs (``display="auto"``):

* Jupyter (IPython kernel, local or papermill) or a terminal: a ``tqdm.auto``
  bar of completed / total tasks (an ipywidgets bar when ipywidgets is
  installed, a text bar otherwise), then one summary line.
* Anywhere else (sparkmagic/Livy on EMR, ``spark-submit`` logs, CI): plain
  text lines, at most one per quarter of the tasks and one per ``log_every``
  seconds, then the summary line. Livy returns a statement's output only when
  the statement ends, so this keeps that output short instead of thousands of
  carriage-return-redrawn bars.
* Without tqdm: plain text, whatever the environment.

The total grows as Spark starts new jobs (it cannot know them in advance), and
stages that Spark skips (their output was cached) leave the total when their job
ends. The block's exception, if any, is re-raised unchanged after the thread has
stopped and the bar is closed.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterator, Optional, Set, TextIO, Tuple

from p8utils.errors import ParameterError
from p8utils.validation import check_choice

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

__all__ = ["DISPLAYS", "NOTEBOOK_CONF", "SparkProgress", "spark_progress"]

#: Accepted values of ``display``.
DISPLAYS = ("auto", "bar", "text", "off")

#: Spark settings for a notebook's own session (``get_spark(conf=NOTEBOOK_CONF)``):
#: :func:`spark_progress` replaces Spark's console progress bar, which the
#: IPython kernel would otherwise copy into the cell's output as dozens of
#: ``[Stage 5:==>  (1 + 2) / 5]`` lines.
NOTEBOOK_CONF: Dict[str, str] = {"spark.ui.showConsoleProgress": "false"}


@dataclass
class SparkProgress:
    """Counts of the Spark work done inside a :func:`spark_progress` block.

    Attributes
    ----------
    description : str
        Label shown with the bar and the summary.
    jobs_total, jobs_done : int
        Jobs started inside the block, and those that ended (succeeded or failed).
    jobs_failed : int
        Jobs that ended in failure.
    tasks_total, tasks_done : int
        Tasks of those jobs, and the completed ones.
    elapsed : float
        Seconds since the block started (final once the block has ended).
    display : str
        The display actually used: ``"bar"``, ``"text"`` or ``"off"``.
    failed : bool
        True if the block raised.
    """

    description: str
    jobs_total: int = 0
    jobs_done: int = 0
    jobs_failed: int = 0
    tasks_total: int = 0
    tasks_done: int = 0
    elapsed: float = 0.0
    display: str = "off"
    failed: bool = False

    def summary(self) -> str:
        """One line: tasks, jobs, seconds, and whether the block failed.

        Returns
        -------
        str
            E.g. ``"featurize: 12/12 tasks in 5 Spark jobs, 41.3 s"``.
        """
        jobs = f"{self.jobs_total} Spark job{'' if self.jobs_total == 1 else 's'}"
        text = f"{self.description}: {self.tasks_done}/{self.tasks_total} tasks in {jobs}, {self.elapsed:.1f} s"
        if self.jobs_failed:
            text += f", {self.jobs_failed} job(s) failed"
        if self.failed:
            text += " -- FAILED (see the error below)"
        return text


def _in_notebook() -> bool:
    """Tell whether the code runs in an IPython kernel (Jupyter, papermill)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # noqa: BLE001 - a broken IPython install means "no"
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _isatty(stream: Any) -> bool:
    """Tell whether ``stream`` is a terminal (False for closed or odd streams)."""
    try:
        return bool(stream.isatty())
    except Exception:  # noqa: BLE001 - Livy's replaced stdout, closed files
        return False


def _choose_display(display: str, file: Optional[TextIO]) -> str:
    """Resolve ``"auto"`` and fall back to text when tqdm is missing."""
    check_choice("display", display, DISPLAYS)
    if display in ("text", "off"):
        return display
    try:
        import tqdm.std  # noqa: F401
    except ImportError:
        return "text"
    if display == "bar":
        return "bar"
    interactive = _in_notebook() or _isatty(file if file is not None else sys.stderr)
    return "bar" if interactive else "text"


class _Poller:
    """Reads the status tracker; one instance per block, used by one thread at a time."""

    def __init__(self, spark: SparkSession) -> None:
        sc = spark.sparkContext
        self._tracker = sc.statusTracker()
        self._group = sc.getLocalProperty("spark.jobGroup.id")
        self._before: Set[int] = set(self._tracker.getJobIdsForGroup(self._group))
        self._finished: Dict[int, Tuple[int, int, bool]] = {}  # ended jobs: (done, total, failed), frozen

    def poll(self, state: SparkProgress) -> None:
        """Update ``state`` with the jobs of the block (Spark status, no job started)."""
        tracker = self._tracker
        ids = sorted(set(tracker.getJobIdsForGroup(self._group)) - self._before)
        done_tasks = total_tasks = done_jobs = failed_jobs = 0
        for jid in ids:
            if jid in self._finished:
                done, total, failed = self._finished[jid]
                done_tasks += done
                total_tasks += total
                done_jobs += 1
                failed_jobs += failed
                continue
            info = tracker.getJobInfo(jid)
            if info is None:
                continue
            stages = [s for s in (tracker.getStageInfo(sid) for sid in info.stageIds) if s is not None]
            done = sum(int(s.numCompletedTasks) for s in stages)
            total = max(done, sum(int(s.numTasks) for s in stages))
            status = str(info.status)
            if status in ("SUCCEEDED", "FAILED"):
                # Ended. Succeeded: stages that never ran (skipped) leave the total.
                # Failed: the tasks that will never run stay visible as not done.
                failed = status == "FAILED"
                self._finished[jid] = (done, total if failed else done, failed)
                done_jobs += 1
                failed_jobs += failed
                total = total if failed else done
            done_tasks += done
            total_tasks += total
        state.jobs_total = len(ids)
        state.jobs_done = done_jobs
        state.jobs_failed = failed_jobs
        state.tasks_done = done_tasks
        state.tasks_total = total_tasks


class _TextView:
    """Coarse plain-text progress: quarters of the tasks and a heartbeat."""

    def __init__(self, file: Optional[TextIO], log_every: float) -> None:
        self._file = file
        self._log_every = log_every
        self._last_quarter = 0
        self._last_time = time.monotonic()

    def _print(self, text: str) -> None:
        try:
            print(text, file=self._file if self._file is not None else sys.stdout, flush=True)
        except (ValueError, OSError):  # stdout closed/replaced (Livy): progress is optional
            pass

    def update(self, state: SparkProgress) -> None:
        now = time.monotonic()
        quarter = 4 * state.tasks_done // state.tasks_total if state.tasks_total else 0
        if (0 < quarter < 4 and quarter > self._last_quarter) or now - self._last_time >= self._log_every:
            self._print(f"{state.description}: {state.tasks_done}/{state.tasks_total} tasks, "
                        f"{state.jobs_done}/{state.jobs_total} jobs done, {state.elapsed:.0f} s")
            self._last_quarter = max(self._last_quarter, quarter)
            self._last_time = now

    def close(self, state: SparkProgress) -> None:
        self._print(state.summary())


def _is_notebook_tqdm(cls: Any) -> bool:
    """Tell whether a tqdm class draws an ipywidgets bar (``tqdm.auto`` in Jupyter)."""
    if "tqdm.notebook" not in sys.modules:  # never imported: the class cannot be its subclass
        return False
    try:
        from tqdm.notebook import tqdm as notebook_tqdm
    except ImportError:  # pragma: no cover - tqdm without its notebook module
        return False
    return isinstance(cls, type) and issubclass(cls, notebook_tqdm)


class _BarView:
    """A ``tqdm.auto`` bar of completed / total tasks."""

    def __init__(self, description: str, file: Optional[TextIO]) -> None:
        # tqdm.auto only in a kernel: at a terminal it would import IPython (and tqdm.notebook) to find out
        if _in_notebook():
            from tqdm.auto import tqdm
        else:
            from tqdm.std import tqdm

        kwargs: Dict[str, Any] = dict(
            total=0, desc=description, unit="task", file=file, leave=True,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} tasks [{elapsed}{postfix}]",
        )
        self._handle: Any = None
        if _is_notebook_tqdm(tqdm):
            # Display the widget ourselves, with a display id: at close the output is
            # replaced by the final state, so a saved notebook (papermill) shows the
            # final counts in its text/plain fallback rather than "0/0".
            from IPython.display import display

            self._bar = tqdm(display=False, **kwargs)
            self._handle = display(self._bar.container, display_id=True)
        else:
            self._bar = tqdm(**kwargs)
        self._file = file

    def update(self, state: SparkProgress) -> None:
        bar = self._bar
        if bar.total != state.tasks_total:
            bar.total = state.tasks_total
            container = getattr(bar, "container", None)  # tqdm.notebook: resize the widget too
            if container is not None:
                try:
                    container.children[1].max = max(state.tasks_total, 1)
                except Exception:  # noqa: BLE001 - widget layout differs across tqdm versions
                    pass
        bar.n = state.tasks_done
        bar.set_postfix_str(f"jobs {state.jobs_done}/{state.jobs_total}", refresh=False)
        bar.refresh()

    def close(self, state: SparkProgress) -> None:
        bar = self._bar
        if state.failed and hasattr(bar, "colour"):
            try:
                bar.colour = "red"
            except Exception:  # noqa: BLE001 - cosmetic only
                pass
        try:
            bar.close()
            if self._handle is not None:
                self._handle.update(bar.container)
        finally:
            try:
                print(state.summary(), file=self._file if self._file is not None else sys.stdout, flush=True)
            except (ValueError, OSError):
                pass


class _OffView:
    def update(self, state: SparkProgress) -> None:
        pass

    def close(self, state: SparkProgress) -> None:
        pass


@contextmanager
def spark_progress(
    spark: SparkSession,
    description: str = "Spark",
    *,
    display: str = "auto",
    interval: float = 0.5,
    log_every: float = 60.0,
    file: Optional[TextIO] = None,
) -> Iterator[SparkProgress]:
    """Show the progress of the Spark jobs started inside the ``with`` block.

    Parameters
    ----------
    spark : pyspark.sql.SparkSession
        The session whose jobs are followed (local, cluster or Livy's).
    description : str
        Label of the bar and of the summary line.
    display : {"auto", "bar", "text", "off"}
        ``"bar"``: a ``tqdm.auto`` bar (text if tqdm is missing). ``"text"``:
        coarse plain lines. ``"off"``: nothing shown, counts still kept.
        ``"auto"``: a bar in Jupyter or a terminal, text elsewhere (Livy,
        logs); see the module docstring.
    interval : float
        Seconds between two polls of the status tracker.
    log_every : float
        Text display: at most this many seconds between two lines.
    file : file-like, optional
        Where to write (default: tqdm's default for the bar, ``sys.stdout``
        for text and the summary).

    Yields
    ------
    SparkProgress
        Live counts; final when the block has ended.

    Raises
    ------
    ParameterError
        Bad ``display`` or ``interval``. The block's own exceptions propagate
        unchanged.
    """
    if not isinstance(interval, (int, float)) or not interval > 0:
        raise ParameterError(f"interval={interval!r} must be a positive number of seconds. Fix: e.g. 0.5.")
    chosen = _choose_display(display, file)
    state = SparkProgress(description=description, display=chosen)
    poller = _Poller(spark)
    view: Any
    if chosen == "bar":
        try:
            view = _BarView(description, file)
        except Exception:  # noqa: BLE001 - e.g. a broken ipywidgets: fall back, never fail the job
            state.display = "text"
            view = _TextView(file, log_every)
    elif chosen == "text":
        view = _TextView(file, log_every)
    else:
        view = _OffView()
    stop = threading.Event()
    lock = threading.Lock()
    start = time.monotonic()

    def _tick() -> None:
        with lock:
            state.elapsed = time.monotonic() - start
            poller.poll(state)
            view.update(state)

    def _loop() -> None:
        while not stop.wait(interval):
            try:
                _tick()
            except Exception:  # noqa: BLE001 - context stopped, py4j gone: stop polling quietly
                return

    thread = threading.Thread(target=_loop, name="p8utils-spark-progress", daemon=True)
    thread.start()
    try:
        yield state
    except BaseException:
        state.failed = True
        raise
    finally:
        stop.set()
        thread.join(timeout=max(5.0, 4 * interval))
        try:
            _tick()
        except Exception:  # noqa: BLE001 - a dead context: keep the last counts
            state.elapsed = time.monotonic() - start
        view.close(state)
