#!/usr/bin/env python3
"""A small Apache Livy REST-protocol server, for tests only.

This is **not** Livy. It speaks enough of Livy's interactive-session REST API
(the part that sparkmagic's PySpark kernel uses) to run sparkmagic notebooks
headless, with papermill, against a real local Spark.

Design
------
* The HTTP side is the standard library's :class:`http.server.ThreadingHTTPServer`
  and :mod:`json`; it imports nothing else, so it runs under any Python >= 3.9.
* Every Livy session is one **worker subprocess** (this same file, run with
  ``--worker``), like Livy's ``fake_shell.py`` REPL process: it builds a real
  ``SparkSession`` from the session's conf (so ``spark.driver.memory``,
  ``spark.master``, Arrow settings ... take effect as in ``spark-submit``), binds
  ``spark``, ``sc`` and ``sqlContext`` and runs the statements one after the other
  in a single Python namespace. Deleting a session ends its process, its JVM and
  the JVM's Python workers, so a new session always starts from a fresh state.
* Statements are run the way ``fake_shell.py`` runs them: all top-level nodes
  but the last are ``exec``-ed, the last one runs in ``single`` mode (so the repr
  of a final expression is printed), stdout and stderr are captured and become
  ``text/plain``; a cell that does not parse is split into Python chunks and
  ``%magic`` lines (``%matplot``, ``%json``, ``%table``), which is how
  sparkmagic's ``%matplot plt`` ends up as an ``image/png`` output.

Usage
-----
From the command line (prints the URL on one line, serves until SIGTERM/SIGINT)::

    python tests/harness/livy_test_server.py --host 127.0.0.1 --port 0

From a pytest fixture::

    server = start("127.0.0.1", 0, python="/path/to/venv/bin/python")
    try:
        ...  # server.url
    finally:
        server.stop()

Endpoints: ``GET/POST /sessions``, ``GET/DELETE /sessions/{id}``,
``GET /sessions/{id}/state``, ``GET /sessions/{id}/log`` (``from``, ``size``),
``GET/POST /sessions/{id}/statements``, ``GET /sessions/{id}/statements/{sid}``,
``POST /sessions/{id}/statements/{sid}/cancel`` and ``POST /sessions/{id}/completion``.
"""

from __future__ import annotations

import argparse
import ast
import atexit
import base64
import builtins
import datetime
import decimal
import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple
from urllib.parse import parse_qs, urlsplit

__all__ = ["LivyTestServer", "start", "main"]

#: Fields Livy accepts in ``POST /sessions`` (``CreateInteractiveRequest``); others get a 400, as in Livy.
SESSION_REQUEST_FIELDS = (
    "kind",
    "proxyUser",
    "jars",
    "pyFiles",
    "files",
    "driverMemory",
    "driverCores",
    "executorMemory",
    "executorCores",
    "numExecutors",
    "archives",
    "queue",
    "name",
    "conf",
    "heartbeatTimeoutInSecond",
    "ttl",
    "idleTimeout",
)

#: How Livy turns request fields into Spark conf (they override the same keys in ``conf``).
FIELD_TO_SPARK_CONF = {
    "driverMemory": "spark.driver.memory",
    "driverCores": "spark.driver.cores",
    "executorMemory": "spark.executor.memory",
    "executorCores": "spark.executor.cores",
    "numExecutors": "spark.executor.instances",
    "queue": "spark.yarn.queue",
    "name": "spark.app.name",
    "jars": "spark.jars",
    "pyFiles": "spark.submit.pyFiles",
    "files": "spark.files",
    "archives": "spark.archives",
}

#: Session kinds Livy knows; this server runs Python only (``pyspark``, or ``shared`` with Python statements).
KNOWN_KINDS = ("spark", "pyspark", "sparkr", "sql", "shared")
PYTHON_KINDS = ("pyspark", "python", "shared")

#: Spark conf applied under every session's own conf unless overridden (keeps the log readable).
DEFAULT_CONF = {"spark.ui.showConsoleProgress": "false"}

#: Lines of worker output kept per session (Livy keeps ``livy.cache-log.size`` lines).
MAX_LOG_LINES = 20000

_JsonDict = Dict[str, Any]


# --------------------------------------------------------------------------------------------
# Worker side: runs inside the per-session subprocess (``--worker``); imports pyspark lazily.
# --------------------------------------------------------------------------------------------

_TOP_FRAME_REGEX = re.compile(r'\s*File "<stdin>".*in <module>')


class UnknownMagic(Exception):
    """A ``%name`` line whose name is not a known magic."""


class _MagicFailedError(Exception):
    """A magic that failed; carries the original exception information."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.exc = exc


class _CaptureIO(io.StringIO):
    """``sys.stdout``/``sys.stderr`` replacement that also accepts bytes (as Livy's does)."""

    def write(self, s: Any) -> int:
        """Write text, decoding bytes as UTF-8.

        Parameters
        ----------
        s : str or bytes
            What to write.

        Returns
        -------
        int
            Number of characters written.
        """
        if isinstance(s, (bytes, bytearray)):
            s = bytes(s).decode("utf-8", "replace")
        return super().write(s)


def _format_error(exc: BaseException, with_traceback: bool = True) -> _JsonDict:
    """Build an error ``output`` like ``fake_shell.execute_reply_error``.

    Parameters
    ----------
    exc : BaseException
        The exception raised by user code.
    with_traceback : bool, optional
        Whether to format the traceback frames (``False`` for syntax errors and magics).

    Returns
    -------
    dict
        ``{"status": "error", "ename": ..., "evalue": ..., "traceback": [...]}``.
    """
    tb = exc.__traceback__ if with_traceback else None
    lines = traceback.format_exception(type(exc), exc, tb, chain=False)
    # Like fake_shell: keep the header, drop every frame up to and including the <stdin> <module> one.
    for i, line in enumerate(lines):
        if _TOP_FRAME_REGEX.match(line):
            lines = lines[:1] + lines[i + 1 :]
            break
    return {"status": "error", "ename": type(exc).__name__, "evalue": str(exc), "traceback": lines}


def _table_convert(value: Any) -> Tuple[str, Any]:
    """Convert one value for the ``%table`` magic (``magic_table_convert`` in Livy).

    Parameters
    ----------
    value : object
        A cell value.

    Returns
    -------
    tuple of (str, object)
        The Livy type name and the JSON-able value.
    """
    if value is None:
        return "NULL_TYPE", None
    if isinstance(value, bool):
        return "BOOLEAN_TYPE", value
    if isinstance(value, int):
        return "INT_TYPE", value
    if isinstance(value, float):
        return "DOUBLE_TYPE", value
    if isinstance(value, datetime.datetime):
        return "TIMESTAMP_TYPE", str(value)
    if isinstance(value, datetime.date):
        return "DATE_TYPE", str(value)
    if isinstance(value, decimal.Decimal):
        return "DECIMAL_TYPE", str(value)
    if isinstance(value, (list, tuple)):
        types = set()
        items = []
        for item in value:
            item_type, item = _table_convert(item)
            types.add(item_type)
            items.append(item)
        if len(types) > 1:
            raise ValueError("value has inconsistent types")
        return "ARRAY_TYPE", items
    if isinstance(value, dict):
        return "MAP_TYPE", {str(k): _table_convert(v)[1] for k, v in value.items()}
    return "STRING_TYPE", str(value)


class _Worker:
    """The REPL of one session: a SparkSession plus one Python namespace.

    Protocol: JSON lines on stdin (``init`` first, then ``execute_request``, ``cancel``,
    ``completion``, ``shutdown_request``); JSON lines to the server on the file descriptor
    given by ``--out-fd`` (``ready``/``startup_error``, ``started``, ``progress``, ``result``,
    ``completion``). The process's own stdout/stderr (JVM and native output) go to the session log.

    Parameters
    ----------
    out : typing.IO
        Text stream to the server (the ``--out-fd`` pipe).
    """

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._out_lock = threading.Lock()
        self._queue: queue.Queue[Optional[_JsonDict]] = queue.Queue()
        self._state_lock = threading.Lock()
        self._current: Optional[int] = None
        self._cancelled: Set[int] = set()
        self._interruptible = False
        self._ns: Dict[str, Any] = {}
        self._capture = _CaptureIO()
        self._spark: Any = None
        self._sc: Any = None

    # -- plumbing -------------------------------------------------------------------------
    def _send(self, message: _JsonDict) -> None:
        """Send one JSON message to the server.

        Parameters
        ----------
        message : dict
            The message; values that are not JSON become strings.
        """
        line = json.dumps(message, default=str)
        with self._out_lock:
            try:
                self._out.write(line + "\n")
                self._out.flush()
            except (OSError, ValueError):
                pass  # the server is gone; stdin reaches EOF next and the worker exits

    @staticmethod
    def _log(text: str) -> None:
        """Write a line to the session log (the real stderr).

        Parameters
        ----------
        text : str
            The line.
        """
        sys.__stderr__.write(f"[livy-test-worker] {text}\n")
        sys.__stderr__.flush()

    # -- lifecycle ------------------------------------------------------------------------
    def run(self) -> int:
        """Start Spark, then serve statements until ``shutdown_request`` or end of input.

        Returns
        -------
        int
            The process exit code.
        """
        first = sys.stdin.readline()
        if not first:
            return 1
        init = json.loads(first)
        sys.stdout = self._capture
        sys.stderr = self._capture
        try:
            self._start_spark(init.get("conf", {}))
        except BaseException as exc:  # noqa: BLE001 - reported to the server, then exit
            startup_output = self._capture.getvalue()
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
            self._log(startup_output)
            self._send({"type": "startup_error", "error": "".join(traceback.format_exception(type(exc), exc, None))})
            self._log("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
            return 1
        startup_output = self._capture.getvalue()
        if startup_output.strip():
            self._log(startup_output.rstrip())
        self._reset_capture()
        sc = self._sc
        self._send(
            {
                "type": "ready",
                "appId": sc.applicationId,
                "sparkUiUrl": sc.uiWebUrl,
                "master": sc.master,
                "pid": os.getpid(),
                "sparkConf": dict(sc.getConf().getAll()),
            }
        )
        signal.signal(signal.SIGINT, self._on_sigint)
        threading.Thread(target=self._read_commands, name="livy-test-reader", daemon=True).start()
        threading.Thread(target=self._report_progress, name="livy-test-progress", daemon=True).start()
        try:
            while True:
                message = self._queue.get()
                if message is None:
                    break
                self._run_statement(int(message["id"]), str(message.get("code", "")))
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
            try:
                self._spark.stop()
            except Exception as exc:  # noqa: BLE001 - best effort at exit
                self._log(f"spark.stop() failed: {exc!r}")
        return 0

    def _start_spark(self, conf: Mapping[str, str]) -> None:
        """Build the SparkSession and the namespace, like Livy's PySpark REPL.

        Parameters
        ----------
        conf : Mapping[str, str]
            Spark conf (including ``spark.master`` and ``spark.app.name``).
        """
        import warnings

        from pyspark.sql import SparkSession, SQLContext

        builder = SparkSession.builder
        for key, value in conf.items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        sc = spark.sparkContext
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sql_context = SQLContext(sc, spark)
        self._spark, self._sc = spark, sc
        self._ns.update(
            {"__name__": "__main__", "__builtins__": builtins, "spark": spark, "sc": sc, "sqlContext": sql_context}
        )

    def _read_commands(self) -> None:
        """Read commands from stdin (runs in a thread); statements are queued for the main thread."""
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                message = json.loads(line)
            except ValueError:
                self._log(f"bad message: {line!r}")
                continue
            kind = message.get("msg_type")
            if kind == "execute_request":
                self._queue.put(message)
            elif kind == "cancel":
                self._cancel(int(message["id"]))
            elif kind == "completion":
                self._send(
                    {
                        "type": "completion",
                        "req": message["req"],
                        "candidates": self._complete(str(message.get("code", "")), message.get("cursor")),
                    }
                )
            elif kind == "shutdown_request":
                break
        self._queue.put(None)
        with self._state_lock:
            current = self._current
        if current is not None:
            self._cancel(current)

    def _cancel(self, statement_id: int) -> None:
        """Cancel a waiting or running statement (Spark job group + KeyboardInterrupt).

        Parameters
        ----------
        statement_id : int
            The statement to cancel.
        """
        with self._state_lock:
            self._cancelled.add(statement_id)
            running = self._current == statement_id
        if running:
            try:
                self._sc.cancelJobGroup(str(statement_id))
            except Exception as exc:  # noqa: BLE001 - the interrupt below still applies
                self._log(f"cancelJobGroup failed: {exc!r}")
            os.kill(os.getpid(), signal.SIGINT)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        """Turn SIGINT into KeyboardInterrupt only while user code runs.

        Parameters
        ----------
        signum : int
            The signal number.
        frame : frame or None
            The interrupted frame.
        """
        if self._interruptible:
            raise KeyboardInterrupt("statement cancelled")

    def _report_progress(self) -> None:
        """Send the running statement's Spark task progress every half second (runs in a thread)."""
        last: Tuple[Optional[int], float] = (None, -1.0)
        while True:
            time.sleep(0.5)
            with self._state_lock:
                current = self._current
            if current is None:
                continue
            try:
                progress = self._progress(current)
            except Exception:  # noqa: BLE001 - progress is cosmetic
                continue
            if (current, progress) != last:
                last = (current, progress)
                self._send({"type": "progress", "id": current, "progress": progress})

    def _progress(self, statement_id: int) -> float:
        """Fraction of completed tasks over the statement's Spark jobs.

        Parameters
        ----------
        statement_id : int
            The statement (its Spark job group has the same name).

        Returns
        -------
        float
            Between 0 and 1 (0 when no job has started).
        """
        tracker = self._sc.statusTracker()
        done = total = 0
        for job_id in tracker.getJobIdsForGroup(str(statement_id)):
            job = tracker.getJobInfo(job_id)
            if job is None:
                continue
            for stage_id in job.stageIds:
                stage = tracker.getStageInfo(stage_id)
                if stage is not None:
                    done += stage.numCompletedTasks
                    total += stage.numTasks
        return round(done / total, 4) if total else 0.0

    def _complete(self, code: str, cursor: Any) -> List[str]:
        """Completion candidates for the name before ``cursor``.

        Parameters
        ----------
        code : str
            The code being typed.
        cursor : int or None
            Cursor position in ``code`` (end of code when missing).

        Returns
        -------
        list of str
            Candidate completions.
        """
        import rlcompleter

        end = len(code) if cursor is None else int(cursor)
        match = re.search(r"[\w.]*$", code[:end])
        text = match.group(0) if match else ""
        completer = rlcompleter.Completer(self._ns)
        candidates: List[str] = []
        for state in range(200):
            try:
                candidate = completer.complete(text, state)
            except Exception:  # noqa: BLE001 - attribute lookups may raise anything
                break
            if candidate is None:
                break
            candidates.append(candidate.rstrip("("))
        return sorted(set(candidates))

    # -- statements -------------------------------------------------------------------------
    def _reset_capture(self) -> None:
        """Empty the shared capture buffer (kept open: handlers created earlier still work)."""
        self._capture.seek(0)
        self._capture.truncate()

    def _run_statement(self, statement_id: int, code: str) -> None:
        """Run one statement and send its result.

        Parameters
        ----------
        statement_id : int
            The statement id (also its Spark job group and execution count).
        code : str
            The code.
        """
        with self._state_lock:
            if statement_id in self._cancelled:
                self._send({"type": "result", "id": statement_id, "state": "cancelled", "output": None})
                return
            self._current = statement_id
        self._send({"type": "started", "id": statement_id})
        self._reset_capture()
        try:
            self._sc.setJobGroup(str(statement_id), f"Job group for statement {statement_id}")
        except Exception as exc:  # noqa: BLE001 - only progress and cancel depend on it
            self._log(f"setJobGroup failed: {exc!r}")
        output: Optional[_JsonDict]
        try:
            try:
                self._interruptible = True
                output = self._execute(code)
            finally:
                self._interruptible = False
        except BaseException as exc:  # noqa: BLE001 - a late KeyboardInterrupt
            output = _format_error(exc)
        with self._state_lock:
            self._current = None
            cancelled = statement_id in self._cancelled
        self._reset_capture()
        if cancelled:
            self._send({"type": "result", "id": statement_id, "state": "cancelled", "output": None})
        else:
            self._send({"type": "result", "id": statement_id, "state": "available", "output": output})

    def _execute(self, code: str) -> _JsonDict:
        """Execute code the way ``fake_shell.execute_request`` does.

        Parameters
        ----------
        code : str
            The statement code.

        Returns
        -------
        dict
            ``{"status": "ok", "data": {...}}`` or an error output.
        """
        try:
            chunks = self._parse(code)
        except SyntaxError as exc:
            return _format_error(exc, with_traceback=False)
        result: Optional[Dict[str, Any]] = None
        try:
            for chunk in chunks:
                result = chunk()
        except UnknownMagic as exc:
            return _format_error(exc, with_traceback=False)
        except _MagicFailedError as exc:
            return _format_error(exc.exc, with_traceback=False)
        except BaseException as exc:  # noqa: BLE001 - user code may raise anything, SystemExit included
            return _format_error(exc)
        data: Dict[str, Any] = dict(result or {})
        text = str(data.pop("text/plain", "")) + self._capture.getvalue()
        text = text.rstrip()
        if text or not data:
            data["text/plain"] = text
        return {"status": "ok", "data": data}

    def _parse(self, code: str) -> List[Callable[[], Optional[Dict[str, Any]]]]:
        """Split code into runnable chunks: Python code and ``%magic`` lines.

        Parameters
        ----------
        code : str
            The statement code.

        Returns
        -------
        list of callable
            Each returns ``None`` (Python code) or a mime bundle (magics).

        Raises
        ------
        SyntaxError
            When a Python chunk does not parse.
        """
        try:
            return [self._python_chunk(code)]
        except SyntaxError:
            pass
        chunks: List[Callable[[], Optional[Dict[str, Any]]]] = []
        normal: List[str] = []
        for line in code.rstrip().split("\n"):
            if line.startswith("%"):
                if normal:
                    chunks.append(self._python_chunk("\n".join(normal)))
                    normal = []
                chunks.append(self._magic_chunk(line))
            else:
                normal.append(line)
        if normal:
            chunks.append(self._python_chunk("\n".join(normal)))
        return chunks

    def _python_chunk(self, code: str) -> Callable[[], None]:
        """Compile Python code: all nodes in ``exec`` mode but the last, which runs in ``single`` mode.

        Parameters
        ----------
        code : str
            Python source.

        Returns
        -------
        callable
            Runs the code in the session namespace.
        """
        tree = compile(code, "<stdin>", "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
        body = list(getattr(tree, "body", []))
        compiled = [
            compile(ast.Module(body=[node], type_ignores=[]), "<stdin>", "exec", dont_inherit=True)
            for node in body[:-1]
        ]
        compiled += [
            compile(ast.Interactive(body=[node]), "<stdin>", "single", dont_inherit=True) for node in body[-1:]
        ]

        def run() -> None:
            for item in compiled:
                exec(item, self._ns)  # noqa: S102 - this is a REPL

        return run

    def _magic_chunk(self, line: str) -> Callable[[], Dict[str, Any]]:
        """Bind a ``%name args`` line to its handler.

        Parameters
        ----------
        line : str
            The magic line.

        Returns
        -------
        callable
            Runs the magic and returns its mime bundle.
        """
        parts = line[1:].split(" ", 1)
        name, args = parts[0], parts[1:]
        handlers = {"matplot": self._magic_matplot, "json": self._magic_json, "table": self._magic_table}

        def run() -> Dict[str, Any]:
            if not name:
                raise UnknownMagic("magic command not specified")
            if name not in handlers:
                raise UnknownMagic(f"unknown magic command '{name}'")
            try:
                return handlers[name](*[a.strip() for a in args])
            except Exception as exc:  # noqa: BLE001 - reported as the statement's error
                raise _MagicFailedError(exc) from exc

        return run

    def _magic_matplot(self, name: str) -> Dict[str, Any]:
        """``%matplot plt``: the current figure of ``name`` (pyplot) as a PNG.

        Parameters
        ----------
        name : str
            Variable holding ``matplotlib.pyplot`` (or anything with ``gcf()``).

        Returns
        -------
        dict
            ``{"image/png": base64, "text/plain": ""}``.
        """
        fig = self._ns[name].gcf()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return {"image/png": base64.b64encode(buffer.getvalue()).decode("ascii"), "text/plain": ""}

    def _magic_json(self, name: str) -> Dict[str, Any]:
        """``%json name``: the variable as ``application/json``.

        Parameters
        ----------
        name : str
            Variable name.

        Returns
        -------
        dict
            ``{"application/json": value}``.
        """
        value = self._ns[name]
        json.dumps(value)  # fail here, not when the reply is serialised
        return {"application/json": value}

    def _magic_table(self, name: str) -> Dict[str, Any]:
        """``%table name``: rows (lists, tuples, dicts or Rows) as Livy's table mime type.

        Parameters
        ----------
        name : str
            Variable name.

        Returns
        -------
        dict
            ``{"application/vnd.livy.table.v1+json": {"headers": [...], "data": [...]}}``.
        """
        value = self._ns[name]
        rows = value if isinstance(value, (list, tuple)) else [value]
        headers: Dict[Any, Dict[str, str]] = {}
        data = []
        for row in rows:
            if type(row).__name__ == "Row":
                row = row.asDict()
            if not isinstance(row, (list, tuple, dict)):
                row = [row]
            items = sorted(row.items()) if isinstance(row, dict) else list(enumerate(row))
            cols = []
            for key, col in items:
                col_type, col = _table_convert(col)
                header = headers.setdefault(key, {"name": str(key), "type": col_type})
                if col_type != "NULL_TYPE" and header["type"] != col_type:
                    if header["type"] != "NULL_TYPE":
                        raise ValueError("table rows have different types")
                    header["type"] = col_type
                cols.append(col)
            data.append(cols)
        ordered = [headers[k] for k in sorted(headers, key=str)]
        return {"application/vnd.livy.table.v1+json": {"headers": ordered, "data": data}}


def _worker_main(out_fd: int) -> int:
    """Entry point of a session's worker process.

    Parameters
    ----------
    out_fd : int
        Inherited file descriptor for messages to the server.

    Returns
    -------
    int
        Exit code.
    """
    out = os.fdopen(out_fd, "w", encoding="utf-8")
    return _Worker(out).run()


# --------------------------------------------------------------------------------------------
# Server side (standard library only)
# --------------------------------------------------------------------------------------------


def _sparkmagic_config_module() -> Any:
    """The kit's sparkmagic config generator, ``bootstrap/sparkmagic_config.py``, loaded by path."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bootstrap", "sparkmagic_config.py")
    spec = importlib.util.spec_from_file_location("p8_sparkmagic_config", os.path.normpath(path))
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _now_ms() -> int:
    """Milliseconds since the epoch (Livy's timestamps).

    Returns
    -------
    int
        Current time in ms.
    """
    return int(time.time() * 1000)


def _proc_start_time(pid: int) -> Optional[str]:
    """Start time of a process from ``/proc`` (guards against pid reuse).

    Parameters
    ----------
    pid : int
        Process id.

    Returns
    -------
    str or None
        Field 22 of ``/proc/<pid>/stat``, or ``None`` if the process is gone.
    """
    try:
        with open(f"/proc/{pid}/stat") as handle:
            stat = handle.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _descendants(root: int) -> List[Tuple[int, str]]:
    """All descendants of a process, read from ``/proc`` (Linux).

    Parameters
    ----------
    root : int
        Ancestor process id.

    Returns
    -------
    list of (int, str)
        ``(pid, start time)`` of every descendant.
    """
    children: Dict[int, List[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found: List[Tuple[int, str]] = []
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        start_time = _proc_start_time(pid)
        if start_time is not None:
            found.append((pid, start_time))
        todo.extend(children.get(pid, []))
    return found


def _kill_processes(processes: Sequence[Tuple[int, str]], grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds, the processes that are still the same ones.

    Parameters
    ----------
    processes : sequence of (int, str)
        ``(pid, start time)`` pairs from :func:`_descendants`.
    grace : float
        Seconds between SIGTERM and SIGKILL.
    """

    def alive() -> List[int]:
        return [pid for pid, started in processes if _proc_start_time(pid) == started and not _is_zombie(pid)]

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        pids = alive()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and alive():
            time.sleep(0.05)


def _is_zombie(pid: int) -> bool:
    """Whether a process is a zombie (exited, not yet reaped).

    Parameters
    ----------
    pid : int
        Process id.

    Returns
    -------
    bool
        ``True`` for a zombie or a vanished process.
    """
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


class _BadRequest(Exception):
    """Raised by request handling to answer with an HTTP error and ``{"msg": ...}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Statement:
    """One statement of a session, in Livy's JSON shape.

    Parameters
    ----------
    statement_id : int
        Id within the session (0, 1, ...).
    code : str
        The code.
    """

    def __init__(self, statement_id: int, code: str) -> None:
        self.id = statement_id
        self.code = code
        self.state = "waiting"
        self.output: Optional[_JsonDict] = None
        self.progress = 0.0
        self.started = 0
        self.completed = 0

    def to_json(self) -> _JsonDict:
        """Livy's statement JSON.

        Returns
        -------
        dict
            ``id, code, state, output, progress, started, completed``.
        """
        return {
            "id": self.id,
            "code": self.code,
            "state": self.state,
            "output": self.output,
            "progress": self.progress,
            "started": self.started,
            "completed": self.completed,
        }


class _Session:
    """One Livy interactive session backed by a worker subprocess.

    Parameters
    ----------
    session_id : int
        The session id.
    request : dict
        The validated ``POST /sessions`` body.
    server : LivyTestServer
        The owning server (for its settings).
    """

    def __init__(self, session_id: int, request: _JsonDict, server: LivyTestServer) -> None:
        self.id = session_id
        self.request = request
        self.kind = str(request.get("kind") or "shared")
        self.name: Optional[str] = request.get("name")
        self.proxy_user: Optional[str] = request.get("proxyUser")
        self.heartbeat_timeout = int(request.get("heartbeatTimeoutInSecond") or 0)
        self.server = server
        self.lock = threading.RLock()
        self.phase = "starting"  # starting, running, shutting_down, dead, killed
        self.app_id: Optional[str] = None
        self.spark_ui_url: Optional[str] = None
        self.spark_conf: Dict[str, str] = {}
        self.log: List[str] = []
        self.log_offset = 0  # number of lines dropped from the front of self.log
        self.statements: List[_Statement] = []
        self.last_activity = time.monotonic()
        self.created = time.monotonic()
        self.ready_at: Optional[float] = None
        self.conf = self._spark_conf(request, server)
        self.python = self.conf.get("spark.pyspark.python") or server.python
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._events: Dict[int, Tuple[threading.Event, List[Any]]] = {}
        self._next_req = 0
        self._stdin_lock = threading.Lock()
        self._log_file: Optional[IO[str]] = None

    @staticmethod
    def _spark_conf(request: _JsonDict, server: LivyTestServer) -> Dict[str, str]:
        """Merge server defaults, the request's ``conf`` and its Livy fields into Spark conf.

        Parameters
        ----------
        request : dict
            The ``POST /sessions`` body.
        server : LivyTestServer
            Source of the default master and conf.

        Returns
        -------
        dict
            Spark conf for the worker's builder.
        """
        conf = {"spark.master": server.master, "spark.app.name": "livy-session"}
        conf.update(server.default_conf)
        conf.update(request.get("conf") or {})
        for field, key in FIELD_TO_SPARK_CONF.items():
            value = request.get(field)
            if value is None or value == []:
                continue
            conf[key] = ",".join(value) if isinstance(value, list) else str(value)
        return conf

    # -- process --------------------------------------------------------------------------
    def start(self) -> None:
        """Spawn the worker and the threads that read its output."""
        server = self.server
        if server.log_dir:
            os.makedirs(server.log_dir, exist_ok=True)
            self._log_file = open(os.path.join(server.log_dir, f"session-{self.id}.log"), "a", encoding="utf-8")
        env = dict(os.environ)
        env.update(server.env)
        env.setdefault("PYSPARK_PYTHON", self.python)
        env.setdefault("MPLBACKEND", "Agg")
        env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("PYSPARK_DRIVER_PYTHON", None)
        read_fd, write_fd = os.pipe()
        try:
            self.proc = subprocess.Popen(  # noqa: S603 - fixed command line
                [self.python, os.path.abspath(__file__), "--worker", "--out-fd", str(write_fd)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(write_fd,),
                env=env,
                cwd=server.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            os.close(read_fd)
            self._append_log(f"could not start the session's Python ({self.python}): {exc}")
            self.phase = "dead"
            return
        finally:
            os.close(write_fd)
        self._write({"msg_type": "init", "conf": self.conf})
        self._append_log(f"started worker pid {self.proc.pid} with {self.python}")
        threading.Thread(target=self._pump_log, name=f"livy-log-{self.id}", daemon=True).start()
        reader = os.fdopen(read_fd, "r", encoding="utf-8")
        threading.Thread(target=self._pump_messages, args=(reader,), name=f"livy-msg-{self.id}", daemon=True).start()

    def _write(self, message: _JsonDict) -> bool:
        """Send one JSON line to the worker's stdin.

        Parameters
        ----------
        message : dict
            The message.

        Returns
        -------
        bool
            ``False`` if the worker is gone.
        """
        proc = self.proc
        if proc is None or proc.stdin is None:
            return False
        data = (json.dumps(message) + "\n").encode("utf-8")
        with self._stdin_lock:
            try:
                proc.stdin.write(data)
                proc.stdin.flush()
            except (OSError, ValueError):
                return False
        return True

    def _append_log(self, line: str) -> None:
        """Add a line to the session log.

        Parameters
        ----------
        line : str
            The line (without newline).
        """
        with self.lock:
            self.log.append(line)
            if len(self.log) > MAX_LOG_LINES:
                drop = len(self.log) - MAX_LOG_LINES
                del self.log[:drop]
                self.log_offset += drop
            if self._log_file is not None:
                self._log_file.write(line + "\n")
                self._log_file.flush()

    def _pump_log(self) -> None:
        """Copy the worker's stdout/stderr (Python, JVM, native) into the log (runs in a thread)."""
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        for raw in proc.stdout:
            self._append_log(raw.decode("utf-8", "replace").rstrip("\n"))

    def _pump_messages(self, reader: IO[str]) -> None:
        """Apply the worker's protocol messages (runs in a thread).

        Parameters
        ----------
        reader : typing.IO
            The read end of the worker's ``--out-fd`` pipe.
        """
        for line in reader:
            try:
                message = json.loads(line)
            except ValueError:
                self._append_log(f"bad worker message: {line!r}")
                continue
            self._on_message(message)
        reader.close()
        proc = self.proc
        code = proc.wait() if proc is not None else None
        with self.lock:
            if self.phase in ("starting", "running"):
                self.phase = "dead"
                self._append_log(f"session worker exited unexpectedly (exit code {code})")
            for statement in self.statements:
                if statement.state in ("waiting", "running", "cancelling"):
                    statement.output = {
                        "status": "error",
                        "execution_count": statement.id,
                        "ename": "SessionDead",
                        "evalue": f"Session {self.id} ended while the statement was {statement.state}.",
                        "traceback": [],
                    }
                    statement.state = "error"
                    statement.completed = _now_ms()
            events = list(self._events.values())
        for event, _ in events:
            event.set()
        if self._log_file is not None:
            self._log_file.close()

    def _on_message(self, message: _JsonDict) -> None:
        """Apply one worker message.

        Parameters
        ----------
        message : dict
            A ``ready``, ``startup_error``, ``started``, ``progress``, ``result`` or ``completion`` message.
        """
        kind = message.get("type")
        with self.lock:
            if kind == "ready":
                self.app_id = message.get("appId")
                self.spark_ui_url = message.get("sparkUiUrl")
                self.spark_conf = dict(message.get("sparkConf") or {})
                self.ready_at = time.monotonic()
                if self.phase == "starting":
                    self.phase = "running"
                self._append_log(
                    f"Spark ready: appId={self.app_id} master={message.get('master')} "
                    f"in {self.ready_at - self.created:.1f} s"
                )
            elif kind == "startup_error":
                self.phase = "dead"
                for line in str(message.get("error", "")).splitlines():
                    self._append_log(line)
            elif kind in ("started", "progress", "result"):
                index = int(message["id"])
                if not 0 <= index < len(self.statements):
                    return
                statement = self.statements[index]
                if kind == "started":
                    if statement.state == "waiting":
                        statement.state = "running"
                    statement.started = _now_ms()
                elif kind == "progress":
                    statement.progress = float(message["progress"])
                else:
                    statement.state = str(message["state"])
                    statement.completed = _now_ms()
                    output = message.get("output")
                    if isinstance(output, dict):
                        output = dict(output, execution_count=statement.id)
                        statement.progress = 1.0
                    statement.output = output
            elif kind == "completion":
                waiter = self._events.get(int(message["req"]))
                if waiter is not None:
                    waiter[1].append(message.get("candidates", []))
                    waiter[0].set()

    # -- API ----------------------------------------------------------------------------------
    def state(self) -> str:
        """Livy session state.

        Returns
        -------
        str
            ``starting``, ``idle``, ``busy``, ``shutting_down``, ``dead`` or ``killed``.
        """
        with self.lock:
            if self.phase != "running":
                return self.phase
            busy = any(s.state in ("waiting", "running", "cancelling") for s in self.statements)
            return "busy" if busy else "idle"

    def to_json(self) -> _JsonDict:
        """Livy's session JSON (``SessionInfo``).

        Returns
        -------
        dict
            The session, with the last 10 log lines.
        """
        request = self.request
        with self.lock:
            return {
                "id": self.id,
                "name": self.name,
                "appId": self.app_id,
                "owner": None,
                "proxyUser": self.proxy_user,
                "state": self.state(),
                "kind": self.kind,
                "appInfo": {
                    "driverLogUrl": f"{self.server.url}/sessions/{self.id}/log?from=0&size=-1",
                    "sparkUiUrl": self.spark_ui_url,
                },
                "log": self.log[-10:],
                "ttl": request.get("ttl"),
                "idleTimeout": request.get("idleTimeout"),
                "driverMemory": request.get("driverMemory"),
                "driverCores": request.get("driverCores") or 0,
                "executorMemory": request.get("executorMemory"),
                "executorCores": request.get("executorCores") or 0,
                "conf": request.get("conf") or {},
                "archives": request.get("archives") or [],
                "files": request.get("files") or [],
                "heartbeatTimeoutInSecond": self.heartbeat_timeout,
                "jars": request.get("jars") or [],
                "numExecutors": request.get("numExecutors") or 0,
                "pyFiles": request.get("pyFiles") or [],
                "queue": request.get("queue"),
            }

    def submit(self, code: str) -> _Statement:
        """Queue a statement.

        Parameters
        ----------
        code : str
            The code.

        Returns
        -------
        _Statement
            The new statement (state ``waiting``).

        Raises
        ------
        _BadRequest
            When the session is not running or starting.
        """
        with self.lock:
            if self.phase not in ("starting", "running"):
                raise _BadRequest(400, f"Session {self.id} is {self.phase}, cannot run statements.")
            statement = _Statement(len(self.statements), code)
            self.statements.append(statement)
        self._write({"msg_type": "execute_request", "id": statement.id, "code": code})
        return statement

    def cancel(self, statement_id: int) -> None:
        """Cancel a statement (waiting ones never run; running ones get their jobs cancelled).

        Parameters
        ----------
        statement_id : int
            The statement.
        """
        with self.lock:
            statement = self.statements[statement_id]
            if statement.state in ("waiting", "running"):
                statement.state = "cancelling"
            else:
                return
        self._write({"msg_type": "cancel", "id": statement_id})

    def complete(self, code: str, cursor: Any, timeout: float = 5.0) -> List[str]:
        """Ask the worker for completions.

        Parameters
        ----------
        code : str
            Code typed so far.
        cursor : int or None
            Cursor position.
        timeout : float, optional
            Seconds to wait for the worker.

        Returns
        -------
        list of str
            Candidates (empty when the worker does not answer in time).
        """
        with self.lock:
            if self.phase != "running":
                return []
            req = self._next_req
            self._next_req += 1
            waiter: Tuple[threading.Event, List[Any]] = (threading.Event(), [])
            self._events[req] = waiter
        try:
            self._write({"msg_type": "completion", "req": req, "code": code, "cursor": cursor})
            waiter[0].wait(timeout)
            return list(waiter[1][0]) if waiter[1] else []
        finally:
            with self.lock:
                self._events.pop(req, None)

    def stop(self, grace: float = 10.0, final_phase: str = "dead") -> None:
        """End the worker, its JVM and every process below it.

        Parameters
        ----------
        grace : float, optional
            Seconds the worker gets to stop Spark cleanly before it is killed.
        final_phase : str, optional
            Phase to report afterwards (``dead`` or ``killed``).
        """
        with self.lock:
            if self.phase in ("starting", "running"):
                self.phase = "shutting_down"
        proc = self.proc
        if proc is not None:
            tree = _descendants(proc.pid)
            self._write({"msg_type": "shutdown_request"})
            if proc.stdin is not None:
                with self._stdin_lock:
                    try:
                        proc.stdin.close()
                    except OSError:
                        pass
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                proc.wait()
            # The JVM exits when its stdin (from the worker) closes; the Python daemons when the JVM goes.
            # Wait a little for that, then kill whatever of the recorded tree is left.
            _kill_processes(tree + _descendants(proc.pid), grace=3.0)
        with self.lock:
            self.phase = final_phase


class LivyTestServer:
    """Handle on a running test Livy server.

    Parameters
    ----------
    host : str
        Interface to bind (keep it on loopback).
    port : int
        Port; 0 picks a free one.
    python : str, optional
        Python executable for the session workers (needs pyspark); default: this interpreter.
        A session's ``spark.pyspark.python`` conf overrides it, as in Livy.
    master : str, optional
        Default ``spark.master`` for sessions that do not set one.
    default_conf : Mapping[str, str], optional
        Spark conf applied under each session's own conf.
    env : Mapping[str, str], optional
        Extra environment variables for the workers (e.g. ``JAVA_HOME``, ``PYTHONPATH``).
    cwd : str, optional
        Working directory of the workers (default: the current one).
    log_dir : str, optional
        If set, each session's full log is also written to ``<log_dir>/session-<id>.log``.
    stop_grace : float, optional
        Seconds a worker gets to stop Spark cleanly on delete/stop before it is killed.
    heartbeat_cap : float, optional
        Test only: a session's heartbeat expires after ``min(heartbeatTimeoutInSecond, heartbeat_cap)`` seconds
        without a request (a session that asked for none never expires, as in Livy). The session keeps
        the value it asked for (``heartbeat_timeout``). Default: no cap.

    Attributes
    ----------
    url : str
        Base URL, e.g. ``http://127.0.0.1:41234``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        python: Optional[str] = None,
        master: str = "local[*]",
        default_conf: Optional[Mapping[str, str]] = None,
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        log_dir: Optional[str] = None,
        stop_grace: float = 10.0,
        heartbeat_cap: Optional[float] = None,
    ) -> None:
        self.python = python or sys.executable
        self.heartbeat_cap = heartbeat_cap
        self.master = master
        self.default_conf: Dict[str, str] = dict(DEFAULT_CONF)
        self.default_conf.update({k: str(v) for k, v in (default_conf or {}).items()})
        self.env: Dict[str, str] = dict(env or {})
        self.cwd = cwd
        self.log_dir = log_dir
        self.stop_grace = stop_grace
        self._sessions: Dict[int, _Session] = {}
        self._next_id = 0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self._httpd.daemon_threads = True
        bound_host, bound_port = self._httpd.server_address[:2]
        url_host = f"[{bound_host}]" if ":" in str(bound_host) else str(bound_host)
        self.url = f"http://{url_host}:{bound_port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="livy-test-http", daemon=True)
        self._reaper = threading.Thread(target=self._reap, name="livy-test-reaper", daemon=True)

    def serve_in_background(self) -> LivyTestServer:
        """Start serving in daemon threads.

        Returns
        -------
        LivyTestServer
            ``self``.
        """
        self._thread.start()
        self._reaper.start()
        atexit.register(self.stop)
        return self

    def sparkmagic_env(self, directory: str, base: Optional[str] = None) -> Dict[str, str]:
        """Write a sparkmagic config for this server and return the environment to run papermill with.

        Everything goes under ``directory`` (nothing under ``~``): ``sparkmagic/config.json`` and the
        sparkmagic logs, the Jupyter runtime, config and data dirs, the IPython dir and the matplotlib cache.
        The config is made by the kit's own generator, ``bootstrap/sparkmagic_config.py`` (``headless``),
        as ``run_notebook_on_master.sh`` makes it on EMR: the tests run with the settings EMR runs with.

        Parameters
        ----------
        directory : str
            Folder to write into (created if needed).
        base : str, optional
            Base config the headless settings are laid over; default ``tests/sparkmagic/base_config.json``
            (on EMR the base is JupyterHub's ``/etc/jupyter/conf/config.json``).

        Returns
        -------
        dict
            ``SPARKMAGIC_CONF_DIR``, ``JUPYTER_RUNTIME_DIR``, ``JUPYTER_CONFIG_DIR``, ``JUPYTER_DATA_DIR``,
            ``IPYTHONDIR`` and ``MPLCONFIGDIR``;
            merge into ``os.environ`` for the papermill subprocess.
        """
        generator = _sparkmagic_config_module()
        tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        base = base or os.path.join(tests_dir, "sparkmagic", "base_config.json")
        with open(base, encoding="utf-8") as handle:
            config = generator.headless_config(json.load(handle), livy_url=self.url, startup_timeout=180)
        env = {
            "SPARKMAGIC_CONF_DIR": os.path.join(directory, "sparkmagic"),
            "JUPYTER_RUNTIME_DIR": os.path.join(directory, "jupyter-runtime"),
            "IPYTHONDIR": os.path.join(directory, "ipython"),
            "MPLCONFIGDIR": os.path.join(directory, "matplotlib"),
            "JUPYTER_CONFIG_DIR": os.path.join(directory, "jupyter-config"),
            "JUPYTER_DATA_DIR": os.path.join(directory, "jupyter-data"),
        }
        for path in env.values():
            os.makedirs(path, exist_ok=True)
        with open(os.path.join(env["SPARKMAGIC_CONF_DIR"], "config.json"), "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2, sort_keys=True)
        return env

    def __enter__(self) -> LivyTestServer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    # -- sessions -------------------------------------------------------------------------
    def sessions(self) -> List[_Session]:
        """Return the current sessions, by id.

        Returns
        -------
        list
            The live session objects.
        """
        with self._lock:
            return [self._sessions[k] for k in sorted(self._sessions)]

    def get(self, session_id: int) -> _Session:
        """Look a session up.

        Parameters
        ----------
        session_id : int
            The id.

        Returns
        -------
        _Session
            The session.

        Raises
        ------
        _BadRequest
            404 when there is no such session.
        """
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise _BadRequest(404, f"Session '{session_id}' not found.")
        session.last_activity = time.monotonic()
        return session

    def create(self, request: _JsonDict) -> _Session:
        """Validate a ``POST /sessions`` body and start the session.

        Parameters
        ----------
        request : dict
            The body.

        Returns
        -------
        _Session
            The new session (state ``starting``).

        Raises
        ------
        _BadRequest
            400 for unknown fields, bad types or an unsupported kind.
        """
        if not isinstance(request, dict):
            raise _BadRequest(400, "The request body must be a JSON object.")
        unknown = sorted(set(request) - set(SESSION_REQUEST_FIELDS))
        if unknown:
            raise _BadRequest(
                400, f"Unrecognized field(s) {unknown}; known fields: {', '.join(SESSION_REQUEST_FIELDS)}."
            )
        kind = request.get("kind") or "shared"
        if kind not in KNOWN_KINDS:
            raise _BadRequest(400, f"Invalid kind '{kind}'; Livy kinds: {', '.join(KNOWN_KINDS)}.")
        if kind not in PYTHON_KINDS:
            raise _BadRequest(400, f"Session kind '{kind}' is not supported by this test server (Python only).")
        conf = request.get("conf") or {}
        if not isinstance(conf, dict) or any(isinstance(v, (dict, list)) for v in conf.values()):
            raise _BadRequest(400, "'conf' must be an object of string values.")
        request = dict(request)
        request["conf"] = {
            str(k): (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in conf.items() if v is not None
        }
        for field in ("jars", "pyFiles", "files", "archives"):
            value = request.get(field)
            if value is not None and not (isinstance(value, list) and all(isinstance(x, str) for x in value)):
                raise _BadRequest(400, f"'{field}' must be a list of strings.")
        for field in ("driverCores", "executorCores", "numExecutors", "heartbeatTimeoutInSecond"):
            value = request.get(field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise _BadRequest(400, f"'{field}' must be an integer, got {value!r}.")
        with self._lock:
            name = request.get("name")
            if name is not None and any(s.name == name for s in self._sessions.values()):
                raise _BadRequest(400, f"Duplicate session name: {name}")
            session = _Session(self._next_id, request, self)
            self._next_id += 1
            self._sessions[session.id] = session
        session.start()
        return session

    def delete(self, session_id: int, final_phase: str = "dead") -> None:
        """Stop a session and forget it.

        Parameters
        ----------
        session_id : int
            The id.
        final_phase : str, optional
            Phase recorded on the stopped session object.
        """
        session = self.get(session_id)
        session.stop(self.stop_grace, final_phase)
        with self._lock:
            self._sessions.pop(session_id, None)

    def _reap(self) -> None:
        """Delete sessions whose heartbeat expired, as Livy does (runs in a thread)."""
        while not self._stopped.wait(1.0):
            now = time.monotonic()
            for session in self.sessions():
                timeout = session.heartbeat_timeout
                if timeout > 0 and self.heartbeat_cap is not None:
                    timeout = min(timeout, self.heartbeat_cap)
                if timeout > 0 and now - session.last_activity > timeout:
                    session._append_log(f"heartbeat expired ({timeout} s without a request): deleting the session")
                    try:
                        self.delete(session.id, final_phase="killed")
                    except _BadRequest:
                        pass

    def stop(self) -> None:
        """Stop every session (and all their processes), then the HTTP server. Idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        try:
            atexit.unregister(self.stop)
        except Exception:  # noqa: BLE001 - interpreter shutting down
            pass
        threads = []
        for session in self.sessions():
            thread = threading.Thread(target=session.stop, args=(self.stop_grace,), daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()
        with self._lock:
            self._sessions.clear()
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()


def _make_handler(server: LivyTestServer) -> type:
    """Build the request handler class bound to ``server``.

    Parameters
    ----------
    server : LivyTestServer
        The server state.

    Returns
    -------
    type
        A :class:`~http.server.BaseHTTPRequestHandler` subclass.
    """
    routes: List[Tuple[str, re.Pattern[str], str]] = [
        ("GET", re.compile(r"/sessions"), "list_sessions"),
        ("POST", re.compile(r"/sessions"), "create_session"),
        ("GET", re.compile(r"/sessions/(\d+)"), "get_session"),
        ("DELETE", re.compile(r"/sessions/(\d+)"), "delete_session"),
        ("GET", re.compile(r"/sessions/(\d+)/state"), "get_state"),
        ("GET", re.compile(r"/sessions/(\d+)/log"), "get_log"),
        ("GET", re.compile(r"/sessions/(\d+)/statements"), "list_statements"),
        ("POST", re.compile(r"/sessions/(\d+)/statements"), "create_statement"),
        ("GET", re.compile(r"/sessions/(\d+)/statements/(\d+)"), "get_statement"),
        ("POST", re.compile(r"/sessions/(\d+)/statements/(\d+)/cancel"), "cancel_statement"),
        ("POST", re.compile(r"/sessions/(\d+)/completion"), "completion"),
    ]

    class Handler(BaseHTTPRequestHandler):
        """Livy REST routes."""

        protocol_version = "HTTP/1.1"
        server_version = "LivyTestServer/1.0"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class signature
            """Silence per-request logging."""

        def do_GET(self) -> None:
            """Dispatch GET."""
            self._dispatch("GET")

        def do_POST(self) -> None:
            """Dispatch POST."""
            self._dispatch("POST")

        def do_DELETE(self) -> None:
            """Dispatch DELETE."""
            self._dispatch("DELETE")

        # -- helpers ---------------------------------------------------------------------
        def _dispatch(self, method: str) -> None:
            parts = urlsplit(self.path)
            path = parts.path.rstrip("/") or "/"
            self._query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                self._body: Any = json.loads(raw) if raw.strip() else {}
            except ValueError as exc:
                self._reply(400, {"msg": f"Invalid JSON body: {exc}"})
                return
            path_matched = False
            for route_method, pattern, name in routes:
                match = pattern.fullmatch(path)
                if match is None:
                    continue
                path_matched = True
                if route_method != method:
                    continue
                try:
                    status, payload, headers = getattr(self, name)(*[int(g) for g in match.groups()])
                except _BadRequest as exc:
                    self._reply(exc.status, {"msg": exc.message})
                except Exception as exc:  # noqa: BLE001 - answer 500 rather than drop the connection
                    self._reply(500, {"msg": f"{type(exc).__name__}: {exc}"})
                else:
                    self._reply(status, payload, headers)
                return
            self._reply(405 if path_matched else 404, {"msg": f"No route for {method} {path}"})

        def _reply(self, status: int, payload: Any, headers: Optional[Mapping[str, str]] = None) -> None:
            data = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json;charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            try:
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                # The client left before the answer, e.g. sparkmagic's DELETE on kernel exit while papermill
                # already stops the kernel. The request was served; only the reply is lost, as with Livy.
                self.close_connection = True

        def _int_param(self, name: str, default: int) -> int:
            try:
                return int(self._query.get(name, default))
            except ValueError as exc:
                raise _BadRequest(400, f"Query parameter '{name}' must be an integer.") from exc

        # -- routes ------------------------------------------------------------------------
        def list_sessions(self) -> Tuple[int, Any, Dict[str, str]]:
            start = self._int_param("from", 0)
            size = self._int_param("size", 100)
            sessions = server.sessions()
            for session in sessions:
                session.last_activity = time.monotonic()
            return (
                200,
                {
                    "from": start,
                    "total": len(sessions),
                    "sessions": [s.to_json() for s in sessions[start : start + size]],
                },
                {},
            )

        def create_session(self) -> Tuple[int, Any, Dict[str, str]]:
            session = server.create(self._body)
            return 201, session.to_json(), {"Location": f"/sessions/{session.id}"}

        def get_session(self, session_id: int) -> Tuple[int, Any, Dict[str, str]]:
            return 200, server.get(session_id).to_json(), {}

        def delete_session(self, session_id: int) -> Tuple[int, Any, Dict[str, str]]:
            server.delete(session_id)
            return 200, {"msg": "deleted"}, {}

        def get_state(self, session_id: int) -> Tuple[int, Any, Dict[str, str]]:
            session = server.get(session_id)
            return 200, {"id": session.id, "state": session.state()}, {}

        def get_log(self, session_id: int) -> Tuple[int, Any, Dict[str, str]]:
            session = server.get(session_id)
            size = self._int_param("size", 100)
            start = self._int_param("from", -1)
            with session.lock:
                lines = list(session.log)
            if size < 0:
                size = len(lines)
            if start < 0:
                start = max(0, len(lines) - size)
            return 200, {"id": session.id, "from": start, "total": len(lines), "log": lines[start : start + size]}, {}

        def list_statements(self, session_id: int) -> Tuple[int, Any, Dict[str, str]]:
            session = server.get(session_id)
            with session.lock:
                statements = [s.to_json() for s in session.statements]
            start = self._int_param("from", 0)
            size = self._int_param("size", len(statements))
            return 200, {"total_statements": len(statements), "statements": statements[start : start + size]}, {}

        def create_statement(self, session_id: int) -> Tuple[int, Any, Dict[str, str]]:
            session = server.get(session_id)
            body = self._body
            if not isinstance(body, dict) or not isinstance(body.get("code"), str):
                raise _BadRequest(400, "The body must be {'code': str, 'kind': optional str}.")
            unknown = sorted(set(body) - {"code", "kind"})
            if unknown:
                raise _BadRequest(400, f"Unrecognized field(s) {unknown} in statement request.")
            kind = body.get("kind") or (session.kind if session.kind != "shared" else "pyspark")
            if kind not in PYTHON_KINDS:
                raise _BadRequest(400, f"Statement kind '{kind}' is not supported by this test server (Python only).")
            statement = session.submit(body["code"])
            with session.lock:
                payload = statement.to_json()
            return 201, payload, {"Location": f"/sessions/{session.id}/statements/{statement.id}"}

        def get_statement(self, session_id: int, statement_id: int) -> Tuple[int, Any, Dict[str, str]]:
            session = server.get(session_id)
            with session.lock:
                if not 0 <= statement_id < len(session.statements):
                    raise _BadRequest(404, "Statement not found")
                return 200, session.statements[statement_id].to_json(), {}

        def cancel_statement(self, session_id: int, statement_id: int) -> Tuple[int, Any, Dict[str, str]]:
            session = server.get(session_id)
            with session.lock:
                if not 0 <= statement_id < len(session.statements):
                    raise _BadRequest(404, "Statement not found")
            session.cancel(statement_id)
            return 200, {"msg": "canceled"}, {}

        def completion(self, session_id: int) -> Tuple[int, Any, Dict[str, str]]:
            session = server.get(session_id)
            body = self._body if isinstance(self._body, dict) else {}
            code = str(body.get("code", ""))
            candidates = session.complete(code, body.get("cursor"))
            return 200, {"candidates": candidates}, {}

    return Handler


def start(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    python: Optional[str] = None,
    master: str = "local[*]",
    default_conf: Optional[Mapping[str, str]] = None,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[str] = None,
    log_dir: Optional[str] = None,
    stop_grace: float = 10.0,
    heartbeat_cap: Optional[float] = None,
) -> LivyTestServer:
    """Start a test Livy server in background threads of this process.

    Sessions run in subprocesses; this process never starts a JVM.

    Parameters
    ----------
    host : str, optional
        Interface to bind (default loopback).
    port : int, optional
        Port; 0 (default) picks a free one.
    python : str, optional
        Python executable of the session workers; default ``sys.executable``.
    master : str, optional
        Default ``spark.master`` of sessions (default ``local[*]``).
    default_conf : Mapping[str, str], optional
        Spark conf under every session's conf.
    env : Mapping[str, str], optional
        Extra environment for the workers.
    cwd : str, optional
        Working directory of the workers.
    log_dir : str, optional
        Folder for full per-session logs.
    stop_grace : float, optional
        Seconds a worker gets to stop cleanly before being killed.
    heartbeat_cap : float, optional
        Test only: expire heartbeats after at most this many seconds (see :class:`LivyTestServer`).

    Returns
    -------
    LivyTestServer
        Handle with ``.url`` and ``.stop()``; also a context manager.
    """
    server = LivyTestServer(
        host,
        port,
        python=python,
        master=master,
        default_conf=default_conf,
        env=env,
        cwd=cwd,
        log_dir=log_dir,
        stop_grace=stop_grace,
        heartbeat_cap=heartbeat_cap,
    )
    return server.serve_in_background()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: serve until SIGTERM/SIGINT, printing the URL first.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit code.
    """
    parser = argparse.ArgumentParser(description="Apache Livy REST-protocol TEST server (sessions = local Spark).")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    parser.add_argument("--python", default=None, help="Python of the session workers (needs pyspark)")
    parser.add_argument("--master", default="local[*]", help="default spark.master (default local[*])")
    parser.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="default Spark conf")
    parser.add_argument("--cwd", default=None, help="working directory of the session workers")
    parser.add_argument("--log-dir", default=None, help="write each session's full log to this folder")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out-fd", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        if args.out_fd is None:
            parser.error("--worker needs --out-fd")
        return _worker_main(args.out_fd)
    default_conf = {}
    for item in args.conf:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--conf expects KEY=VALUE, got {item!r}")
        default_conf[key] = value
    server = start(
        args.host,
        args.port,
        python=args.python,
        master=args.master,
        default_conf=default_conf,
        cwd=args.cwd,
        log_dir=args.log_dir,
    )
    done = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(server.url, flush=True)
    try:
        while not done.wait(3600):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
