"""A throw-away Spark standalone cluster (master + workers on 127.0.0.1) for tests.

Started from the pip ``pyspark`` package (``$SPARK_HOME/bin/spark-class``), one
process group per daemon, everything under one temporary folder (logs, work
dirs, conf). Stopped by PID: the daemons, the executor JVMs the workers
launched and their Python workers (descendants found through ``/proc``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pyspark

SPARK_HOME = Path(pyspark.__file__).resolve().parent


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (the daemons refuse to drift: spark.port.maxRetries=0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (none once it has exited: its /proc entry may vanish while being read)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    kids: list[int] = []
    for task in threads:
        try:
            kids += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return kids


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        out += kids
        todo += kids
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _stat(pid: int) -> Optional[list[str]]:
    """Fields of /proc/<pid>/stat after the command name (state is [0], pgrp [2], start time [19])."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def identity(pid: int) -> Optional[tuple[int, int]]:
    """``(pid, start time)``: tells a process from a later one that reuses its PID (pid_max may be 32768)."""
    st = _stat(pid)
    return (pid, int(st[19])) if st and st[0] != "Z" else None


def is_alive(ident: tuple[int, int]) -> bool:
    """True while the process ``ident`` (from :func:`identity`) runs (not a zombie, PID not reused)."""
    return identity(ident[0]) == ident


def tree(pid: int) -> set[tuple[int, int]]:
    """Identities of ``pid`` and its live descendants."""
    return {i for i in (identity(p) for p in (pid, *descendants(pid))) if i}


def python_workers(pid: int) -> list[int]:
    """PySpark Python processes (daemon and forked workers) below ``pid``."""
    return [p for p in descendants(pid) if "pyspark.daemon" in cmdline(p) or "pyspark.worker" in cmdline(p)]


def signal_all(idents: set[tuple[int, int]], sig: int) -> None:
    """Send ``sig`` to each process still alive (checked by identity, so a reused PID is never hit)."""
    for ident in idents:
        if is_alive(ident):
            try:
                os.kill(ident[0], sig)
            except ProcessLookupError:
                pass


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> set[tuple[int, int]]:
    """Send ``sig`` to ``pid`` and every descendant (collected first, then signalled). Returns their identities."""
    idents = tree(pid)
    signal_all(idents, sig)
    return idents


def stop_all(idents: set[tuple[int, int]], timeout: float = 15) -> None:
    """SIGTERM the processes and their descendants, SIGKILL whatever is left after ``timeout``."""
    seen = set(idents)
    for i in list(seen):
        if is_alive(i):
            seen |= tree(i[0])
    signal_all(seen, signal.SIGTERM)
    end = time.time() + timeout
    while time.time() < end and any(is_alive(i) for i in seen):
        for i in list(seen):  # children forked while stopping (e.g. a worker relaunching an executor)
            if is_alive(i):
                seen |= tree(i[0])
        time.sleep(0.2)
    for i in list(seen):
        if is_alive(i):
            seen |= tree(i[0])
    signal_all(seen, signal.SIGKILL)
    end = time.time() + 10
    while time.time() < end and any(is_alive(i) for i in seen):
        time.sleep(0.1)
    idents |= seen


def wait_for(cond: Callable[[], Any], timeout: float, what: str, on_timeout: Callable[[], str] = lambda: "",
              interval: float = 0.2) -> Any:
    end = time.time() + timeout
    while time.time() < end:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{on_timeout()}")


def get_json(url: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - 127.0.0.1 only
        return json.loads(r.read().decode("utf-8"))


def try_json(url: str) -> Any:
    try:
        return get_json(url)
    except (OSError, ValueError):
        return None


def tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path}: unreadable)"
    return f"--- {path} (last {min(n, len(lines))} lines)\n" + "\n".join(lines[-n:])


# --------------------------------------------------------------------------- cluster


@dataclass
class Daemon:
    name: str
    proc: subprocess.Popen
    log: Path
    webui: int
    ident: tuple[int, int]
    seen: set[tuple[int, int]] = field(default_factory=set)  # every process observed in its tree

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return is_alive(self.ident)

    def track(self) -> None:
        if self.alive():
            self.seen |= tree(self.pid)


class StandaloneCluster:
    """Master + ``n_workers`` workers of ``cores`` cores each, all on 127.0.0.1, under ``base``.

    Use as a context manager: leaving it stops every process started (daemons,
    executors, Python workers), by PID, and raises if one survived.
    """

    def __init__(self, base: Path, n_workers: int = 2, cores: int = 1, memory: str = "3g"):
        self.base = Path(base)
        self.n_workers, self.cores, self.memory = n_workers, cores, memory
        self.master: Optional[Daemon] = None
        self.workers: list[Daemon] = []
        self.retired: list[Daemon] = []  # dead daemons (killed worker, master that failed to bind)
        self.started = 0
        self.port = 0
        self.conf_dir = self.base / "conf"
        for d in ("conf", "logs", "work", "pids"):
            (self.base / d).mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------------- env

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for the daemons and for drivers talking to them."""
        env = dict(os.environ)
        env.update(
            SPARK_HOME=str(SPARK_HOME),
            SPARK_LOCAL_IP="127.0.0.1",
            SPARK_LOG_DIR=str(self.base / "logs"),
            SPARK_WORKER_DIR=str(self.base / "work"),
            SPARK_PID_DIR=str(self.base / "pids"),
            SPARK_CONF_DIR=str(self.conf_dir),
            PYSPARK_PYTHON=sys.executable,
            PYSPARK_DRIVER_PYTHON=sys.executable,
            TF_CPP_MIN_LOG_LEVEL="2",
        )
        env.pop("PYSPARK_SUBMIT_ARGS", None)
        if not env.get("JAVA_HOME") and not shutil.which("java"):
            from p8utils.spark import ensure_java

            env["JAVA_HOME"] = ensure_java() or ""
        env.update(extra)
        return env

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    # ----------------------------------------------------------------- start

    def _spawn(self, name: str, args: list[str], webui: int, opts_var: str) -> Daemon:
        log = self.base / "logs" / f"{name}.log"
        # spark.port.maxRetries=0: a daemon whose port was taken fails instead of drifting to another port
        env = self.env(**{opts_var: "-Dspark.port.maxRetries=0"})
        with open(log, "ab") as fh:
            proc = subprocess.Popen([str(SPARK_HOME / "bin" / "spark-class"), *args], stdout=fh,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.base,
                                    start_new_session=True)
        daemon = Daemon(name, proc, log, webui, identity(proc.pid) or (proc.pid, -1))
        daemon.track()
        return daemon

    def start(self, timeout: float = 120) -> StandaloneCluster:
        for attempt in range(3):  # a probed port can be taken before the master binds it: retry
            self.port, webui = free_port(), free_port()
            self.master = self._spawn(
                "master" if not attempt else f"master{attempt}",
                ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(self.port),
                 "--webui-port", str(webui)],
                webui, "SPARK_MASTER_OPTS")
            up = wait_for(lambda: self.master_state() or self.master.proc.poll() is not None, timeout,
                          "the master's JSON endpoint", self.logs)
            if isinstance(up, dict):
                break
            self.retired.append(self.master)
            self.master = None
        else:
            raise AssertionError("the Spark master exited at start (3 attempts)\n" + self.logs())
        for _ in range(self.n_workers):
            self.start_worker()
        self.wait_alive_workers(self.n_workers, timeout)
        return self

    def start_worker(self) -> Daemon:
        i, webui = self.started, free_port()
        self.started += 1
        worker = self._spawn(
            f"worker{i}",
            ["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", str(self.cores),
             "--memory", self.memory, "--webui-port", str(webui), "--work-dir", str(self.base / "work" / f"w{i}"),
             self.url],
            webui, "SPARK_WORKER_OPTS")
        self.workers.append(worker)
        return worker

    def master_state(self) -> Optional[dict]:
        return try_json(f"http://127.0.0.1:{self.master.webui}/json/") if self.master else None

    @staticmethod
    def worker_state(worker: Daemon) -> Optional[dict]:
        return try_json(f"http://127.0.0.1:{worker.webui}/json/")

    def alive_workers(self) -> list[dict]:
        state = self.master_state() or {}
        return [w for w in state.get("workers", []) if w.get("state") == "ALIVE"]

    def wait_alive_workers(self, n: int, timeout: float = 120) -> None:
        def ready() -> bool:
            for w in self.workers:
                if not w.alive():
                    raise AssertionError(f"{w.name} exited at start\n" + self.logs())
            return len(self.alive_workers()) == n and all(self.worker_state(w) for w in self.workers)

        wait_for(ready, timeout, f"{n} ALIVE workers registered with the master", self.logs)

    def ensure_workers(self, timeout: float = 120) -> None:
        """Replace dead workers (e.g. killed by a fault test) so the cluster is whole again."""
        dead = [w for w in self.workers if not w.alive()]
        for w in dead:
            self.workers.remove(w)
            self.retired.append(w)
            self.start_worker()
        if dead:  # the master drops a dead worker when its connection closes; wait for that too
            wait_for(lambda: len(self.alive_workers()) <= len(self.workers), timeout, "the master to drop dead workers",
                     self.logs)
        self.wait_alive_workers(self.n_workers, timeout)

    # ----------------------------------------------------------------- observe

    def daemons(self) -> list[Daemon]:
        return [d for d in (self.master, *self.workers, *self.retired) if d is not None]

    def track(self) -> None:
        """Record every process currently in the daemons' trees (executor JVMs, Python workers)."""
        for d in self.daemons():
            d.track()

    def all_processes(self) -> set[tuple[int, int]]:
        self.track()
        return {i for d in self.daemons() for i in (d.ident, *d.seen)}

    def survivors(self) -> dict[int, str]:
        return {i[0]: cmdline(i[0])[:300] for i in self.all_processes() if is_alive(i)}

    def logs(self, n: int = 40) -> str:
        files = [d.log for d in self.daemons()]
        files += sorted((self.base / "work").glob("*/app-*/*/stderr"))
        return "\n".join(tail(f, n) for f in files)

    # ----------------------------------------------------------------- stop

    def stop(self) -> None:
        """Stop workers (with their executors) then the master, by PID; raise if any process survived."""
        self.track()
        for d in [*self.workers, *self.retired, self.master]:
            if d is None:
                continue
            procs = {d.ident, *d.seen}
            stop_all(procs)
            d.seen |= procs
            try:
                d.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        left = {i[0]: cmdline(i[0])[:300] for d in self.daemons() for i in (d.ident, *d.seen) if is_alive(i)}
        assert not left, f"processes started for the test cluster survived: {left}"

    def __enter__(self) -> StandaloneCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
