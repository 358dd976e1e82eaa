"""Failures end in words and an exit code, the stack trace only in the log (``p8utils.cli``, ``p8utils.errors``).

Interruptions (SIGINT to the process group as Ctrl-C sends it, SIGTERM to the process as schedulers send it), a
full disk (a real 300 KiB tmpfs when this process may mount one), storage faults recognised in Spark's and Python's
exception texts, and damaged run files (exit 2).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from p8utils import runs, storage
from p8utils.cli import _failure, _RunState, _Signals, main
from p8utils.errors import DamagedRunFileError, Interrupted, ParameterError, describe_failure
from p8utils.pca import Moments, PCAResult, fit_moments

from .conftest import ROOT, S3A_JARS, image_files
from .harness.targets import TARGETS, Target, part_files, tree

INTERRUPTED = "p8utils: interrupted: nothing was committed, the output is unchanged"


# --------------------------------------------------------------------------- texts of real failures

#: A full disk under the output (Spark 3.5.8, local[2], 300 KiB tmpfs): what str(Py4JJavaError) gives, abridged.
SPARK_FULL_DISK = """An error occurred while calling o113.parquet.
: org.apache.spark.SparkException: Job aborted due to stage failure: Task 1 in stage 3.0 failed 1 times, most recent \
failure: Lost task 1.0 in stage 3.0 (TID 3) (192.0.2.2 executor driver): org.apache.spark.SparkException: \
[TASK_WRITE_FAILED] Task failed while writing rows to file:/data/out/
\tat org.apache.spark.sql.errors.QueryExecutionErrors$.taskFailedWhileWritingRowsError(QueryExecutionErrors.scala:775)
\tat org.apache.spark.sql.execution.datasources.FileFormatWriter$.executeTask(FileFormatWriter.scala:420)
Caused by: org.apache.hadoop.fs.FSError: java.io.IOException: No space left on device
\tat org.apache.hadoop.fs.RawLocalFileSystem$LocalFSFileOutputStream.write(RawLocalFileSystem.java:425)
Caused by: java.io.IOException: No space left on device
\tat java.base/java.io.FileOutputStream.writeBytes(Native Method)
"""

SHUFFLE_FULL_DISK = """An error occurred while calling o88.collectToPython.
: org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 in stage 2.0 failed 1 times, most recent \
failure: Lost task 0.0 in stage 2.0 (TID 2) (10.0.0.5 executor 1): java.io.FileNotFoundException: \
/mnt/tmp/blockmgr-5f0c/0c/shuffle_0_0_0.data.1b2c (No space left on device)
\tat java.base/java.io.FileOutputStream.open0(Native Method)
"""

HDFS_DENIED = """An error occurred while calling o120.parquet.
: org.apache.hadoop.security.AccessControlException: Permission denied: user=livy, access=WRITE, \
inode="/user/hadoop/runs":hadoop:hdfsadmingroup:drwxr-xr-x
\tat org.apache.hadoop.hdfs.server.namenode.FSPermissionChecker.check(FSPermissionChecker.java:506)
"""

LOCAL_DENIED = """An error occurred while calling o113.parquet.
: org.apache.spark.SparkException: [TASK_WRITE_FAILED] Task failed while writing rows to file:/srv/runs/a/features.
Caused by: java.io.FileNotFoundException: /srv/runs/a/features/part-00000-1f.snappy.parquet (Permission denied)
"""

EMRFS_DENIED = """An error occurred while calling o97.parquet.
: java.nio.file.AccessDeniedException: s3://fruits-runs/2026-12-01/features/_temporary/0: \
com.amazonaws.services.s3.model.AmazonS3Exception: Access Denied (Service: Amazon S3; Status Code: 403; Error Code: \
AccessDenied; Request ID: 8Q1B7V; S3 Extended Request ID: a0Zq=; Proxy: null), S3 Extended Request ID: a0Zq=
"""

S3A_NO_BUCKET = """An error occurred while calling o61.binaryFile.
: org.apache.hadoop.fs.s3a.UnknownStoreException: `s3a://fruits-typo/Training': getFileStatus on \
s3a://fruits-typo/Training: com.amazonaws.services.s3.model.AmazonS3Exception: The specified bucket does not exist \
(Service: Amazon S3; Status Code: 404; Error Code: NoSuchBucket; Request ID: 17D3; Proxy: null), S3 Extended \
Request ID: abc=:NoSuchBucket
"""

EMRFS_SLOW_DOWN = """An error occurred while calling o140.parquet.
: org.apache.spark.SparkException: Job aborted due to stage failure: Task 17 in stage 4.0 failed 4 times, most recent \
failure: Lost task 17.3 in stage 4.0 (TID 210) (ip-10-0-1-12.ec2.internal executor 3): \
com.amazonaws.services.s3.model.AmazonS3Exception: Please reduce your request rate. (Service: Amazon S3; Status Code: \
503; Error Code: SlowDown; Request ID: 7YH2; S3 Extended Request ID: q1=; Proxy: null), S3 Extended Request ID: q1=
"""

#: a Python worker reading an object with pyarrow's S3 filesystem (PythonException text inside the Java trace)
PYARROW_DENIED = """An error occurred while calling o88.parquet.
: org.apache.spark.SparkException: Job aborted due to stage failure: Task 3 in stage 2.0 failed 4 times: \
org.apache.spark.api.python.PythonException: Traceback (most recent call last):
  File "/usr/local/lib/python3.9/site-packages/p8utils/images.py", line 412, in _read
OSError: When reading information for key 'Training/Apple/r_1.jpg' in bucket 'fruits': AWS Error ACCESS_DENIED \
during HeadObject operation: No response body.
"""


class FakePy4JJavaError(Exception):
    """Stands for py4j's Py4JJavaError: its text comes from the JVM (``fails``: the JVM is gone)."""

    def __init__(self, text: str, fails: bool = False) -> None:
        super().__init__("An error occurred while calling o1.parquet.\n")
        self.text, self.fails = text, fails

    def __str__(self) -> str:
        if self.fails:
            raise ConnectionError("Answer from Java side is empty")
        return self.text


@pytest.mark.parametrize("exc,output,first", [
    (FakePy4JJavaError(SPARK_FULL_DISK), "/data/out", "no space left on the device of /data/out"),
    (FakePy4JJavaError(SHUFFLE_FULL_DISK), "s3://b/out", "no space left on the device of /mnt/tmp/blockmgr-5f0c/0c"),
    (OSError(28, "No space left on device", "/data/out/_lease.json"), "/data/out",
     "no space left on the device of /data/out"),
    (FakePy4JJavaError(SPARK_FULL_DISK.replace("to file:/data/out/", "")), "/data/out",
     "no space left on a device: the output's (/data/out) or Spark's scratch folder's"),
    (PermissionError(13, "Permission denied", "/srv/runs/a/_lease.json"), "/srv/runs/a",
     "permission denied: /srv/runs/a/_lease.json"),
    (FakePy4JJavaError(LOCAL_DENIED), "/srv/runs/a", "permission denied: /srv/runs/a/features/part-00000-1f"),
    (FakePy4JJavaError(HDFS_DENIED), "hdfs:///user/hadoop/runs/x", "permission denied: /user/hadoop/runs"),
    (OSError(30, "Read-only file system", "/mnt/ro/out/_lease.json"), "/mnt/ro/out",
     "read-only file system: /mnt/ro/out/_lease.json"),
    (FakePy4JJavaError(EMRFS_DENIED), "s3://fruits-runs/2026-12-01",
     "S3 refused access (AccessDenied): s3://fruits-runs/2026-12-01/features/_temporary/0"),
    (FakePy4JJavaError(PYARROW_DENIED), "s3://fruits-runs/x",
     "S3 refused access (AccessDenied): s3://fruits/Training/Apple/r_1.jpg"),
    (FakePy4JJavaError(S3A_NO_BUCKET), "s3://fruits-runs/x", "S3 bucket fruits-typo does not exist (NoSuchBucket"),
    (FakePy4JJavaError(EMRFS_SLOW_DOWN), "s3://fruits-runs/x", "S3 throttled the requests (SlowDown, HTTP 503)"),
])
def test_describe_failure_names_the_cause_and_the_fix(exc, output, first):
    text = describe_failure(exc, output)
    assert text is not None
    lines = text.splitlines()
    assert lines[0].startswith(first) and not lines[0].endswith(":"), lines[0]
    assert lines[-1].startswith("Fix: ")


def test_describe_failure_reads_the_whole_chain_and_survives_a_dead_jvm():
    try:
        try:
            raise FakePy4JJavaError(SPARK_FULL_DISK)
        except FakePy4JJavaError as inner:
            raise RuntimeError("the featurize stage failed") from inner
    except RuntimeError as outer:
        assert describe_failure(outer, "/data/out").startswith("no space left on the device of /data/out")
    dead = FakePy4JJavaError(SPARK_FULL_DISK, fails=True)  # the text is lost with the JVM: not recognised, no crash
    assert describe_failure(dead, "/data/out") is None
    assert describe_failure(ValueError("a bug"), "/data/out") is None


def test_failure_prints_a_few_lines_and_logs_the_stack(tmp_path, capsys):
    log_file = tmp_path / "run.log"
    log_file.write_text("spark said things\n")
    try:
        raise FakePy4JJavaError(SPARK_FULL_DISK)
    except FakePy4JJavaError as exc:
        code = _failure(exc, _RunState("/data/out"), str(log_file))
    err = capsys.readouterr().err.splitlines()
    assert code == 1
    assert err[0] == "p8utils: failed: no space left on the device of /data/out"
    assert err[-2] == "p8utils: nothing was committed, the output is unchanged"
    assert err[-1] == f"p8utils: log: {log_file} (the stack trace)" and len(err) == 4
    logged = log_file.read_text()
    assert "Traceback" in logged and "No space left on device" in logged and "spark said things" in logged


# --------------------------------------------------------------------------- damaged run files


def _fit() -> PCAResult:
    x = np.random.default_rng(0).normal(size=(30, 6))
    mean = x.mean(axis=0)
    return fit_moments(Moments(30, mean, (x - mean).T @ (x - mean)), k=3)


@pytest.mark.parametrize("damage,reason", [
    (lambda b: b[: len(b) // 2], "not a .npz archive written by p8utils"),  # truncated (a copy that stopped)
    (lambda b: b"", "not a .npz archive written by p8utils"),
    (lambda b: b[:200] + bytes(64) + b[264:], "not a .npz archive written by p8utils"),  # bytes overwritten: CRC
    (lambda b: b"version https://git-lfs.github.com/spec/v1\n", "not a .npz archive written by p8utils"),
])
def test_damaged_pca_bytes_raise_damaged_run_file_error(damage, reason):
    fit = _fit()
    again = PCAResult.from_bytes(fit.to_bytes())
    assert again.k == 3 and np.array_equal(again.components, fit.components)
    with pytest.raises(DamagedRunFileError, match=reason) as info:
        PCAResult.from_bytes(damage(fit.to_bytes()))
    assert isinstance(info.value, ParameterError) and isinstance(info.value, ValueError)
    with pytest.raises(DamagedRunFileError, match=reason):
        Moments.from_bytes(damage(fit.moments.to_bytes()))


def test_pca_bytes_of_the_other_kind_or_wrong_shapes_are_refused():
    fit = _fit()
    with pytest.raises(DamagedRunFileError, match="arrays k, variance_target, .* missing"):
        PCAResult.from_bytes(fit.moments.to_bytes())
    with pytest.raises(DamagedRunFileError, match="arrays n, scatter missing"):
        Moments.from_bytes(fit.to_bytes())
    import io

    buf = io.BytesIO()
    np.savez(buf, n=30, mean=np.zeros(6), scatter=np.zeros((5, 5)))
    with pytest.raises(DamagedRunFileError, match="inconsistent shapes"):
        Moments.from_bytes(buf.getvalue())


def test_cli_exits_2_naming_a_damaged_manifest(tmp_path, sample_dir, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text('{"run_id": "2026120')  # truncated: the disk filled while copying it
    code = main(["project", "--run", str(run), "--input", str(sample_dir), "--output", str(tmp_path / "new")])
    err = capsys.readouterr().err.splitlines()
    assert code == 2, err
    assert err[0].startswith("p8utils: error: ") and "manifest.json is damaged" in err[0] and "Fix" in err[0]
    assert not (tmp_path / "new").exists()


# --------------------------------------------------------------------------- signals, in this process


def test_signal_handler_raises_interrupted_once_then_leaves_the_default_actions():
    if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():  # pragma: no cover
        pytest.skip("POSIX signals, handled in the main thread only (else SIGTERM would end pytest)")
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    guard = _Signals()
    guard.install()
    try:
        with pytest.raises(Interrupted) as info:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs in the main thread between bytecodes
        assert info.value.signum == signal.SIGTERM and isinstance(info.value, KeyboardInterrupt)
        assert str(info.value) == "stopped by SIGTERM"
        assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL, "a second signal ends the process at once"
        guard.install()  # after a signal: never again (the stages call it)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        guard.restore()  # after a signal the default actions stay, until the process ends
        assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGINT, before[1])
    quiet = _Signals()
    quiet.install()
    quiet.restore()  # no signal: the handlers found are put back
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


# --------------------------------------------------------------------------- for real: CLI subprocesses (JVM)


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    env = env or dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "p8utils", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT, start_new_session=True)


def _run_args(sample_dir, out, *more: str) -> list:
    return ["run", "--input", str(sample_dir), "--output", str(out), "--weights", "offline", "--no-explorer",
            "--master", "local[2]", *more]


def _descendants(pid: int) -> list:
    children: dict = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _wait_for_featurization(proc: subprocess.Popen, timeout: float = 300.0) -> None:
    """Wait until Spark's Python workers run (the featurization), then a few seconds more."""
    def cmdline(pid: int) -> str:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    deadline = time.monotonic() + timeout
    while not any("pyspark.daemon" in cmdline(p) for p in _descendants(proc.pid)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no Spark Python worker started"
        time.sleep(0.2)
    time.sleep(3)


def _tree(folder) -> dict:
    """{relative path: size} of every file below ``folder`` (a local path or an ``s3://`` prefix)."""
    return tree(str(folder))


@pytest.fixture(scope="module")
def committed(tmp_path_factory, sample_dir):
    """A run committed by the command line (what the interrupted runs must leave intact)."""
    out = tmp_path_factory.mktemp("failures") / "committed"
    proc = _cli(*_run_args(sample_dir, out, "--k", "3"))
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def on_s3(tmp_path_factory, s3, s3_spark, sample_dir) -> dict:
    """The S3 side, made once per module: a :class:`Target` (its bucket), the sample uploaded there (``input``), and
    ``committed``: a run of every 4th sample image committed there (in this process: a CLI run would cost another JVM
    start; the interrupted runs are CLI runs)."""
    from p8utils import pipeline

    target = Target("s3", tmp_path_factory.mktemp("failures-s3"), s3, pythonpath=str(ROOT), jars=S3A_JARS)
    files = image_files(sample_dir)
    sample = target.put("sample", files)
    out = target.out("committed")
    pipeline.run(target.put("small", files[::4]), out, weights="offline", k=3, spark=s3_spark)
    return {"target": target, "input": sample, "committed": out}


def _assert_cleaned(out) -> None:
    out = str(out)
    assert not storage.exists(storage.join(out, "_lease.json")), "the lease was released"
    assert not storage.exists(storage.join(out, "_staging")), "the run's staged files were removed"
    if storage.is_local(out):
        assert not list(Path(out).rglob("_temporary")), "no Spark task left files behind"
    else:
        assert not [k for k in _tree(out) if "_temporary" in k.split("/")], "no Spark task left files behind"
    named = runs.committed(out)
    for table in ("features", "pca"):
        assert sorted(part_files(storage.join(out, table))) == sorted(getattr(named, table)), \
            f"{table}/ holds exactly the part files the manifest names"


@pytest.mark.jvm
@pytest.mark.slow
@pytest.mark.parametrize("kind", TARGETS)
def test_ctrl_c_to_the_process_group_exits_130_and_keeps_the_previous_output(kind, request, sample_dir):
    if kind == "local":
        out, inp, env = request.getfixturevalue("committed"), sample_dir, None
    else:  # an S3 run (input and output): same exit, same line, the prefix as it was
        s3_side = request.getfixturevalue("on_s3")
        out, inp, env = s3_side["committed"], s3_side["input"], s3_side["target"].env()
    manifest_uri = storage.join(str(out), "manifest.json")
    before, manifest = _tree(out), storage.read_bytes(manifest_uri)
    proc = _cli(*_run_args(inp, out, "--mode", "overwrite"), env=env)
    _wait_for_featurization(proc)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: Python, the JVM, the Python workers
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    err = stderr.splitlines()
    assert len(err) == 1 and err[0].startswith(INTERRUPTED), stderr[-3000:]
    log_file = err[0].split("(log: ", 1)[1].rstrip(")")
    assert "Interrupted: stopped by SIGINT" in Path(log_file).read_text(errors="replace"), "the stack is in the log"
    _assert_cleaned(out)
    assert _tree(out) == before and storage.read_bytes(manifest_uri) == manifest


@pytest.mark.jvm
@pytest.mark.slow
def test_ctrl_c_while_the_pca_scores_are_written_keeps_the_previous_output(committed, sample_dir, tmp_path):
    """The signal lands in Spark's write of the PCA scores (its ``pca/_temporary`` exists): the write's job must have
    ended before the run cleans up, or it goes on in the JVM and leaves ``_temporary`` (CI, 2026-12-03)."""
    out = tmp_path / "committed"
    shutil.copytree(committed, out)
    before, manifest = _tree(out), (out / "manifest.json").read_bytes()
    proc = _cli(*_run_args(sample_dir, out, "--mode", "overwrite"))
    deadline = time.monotonic() + 300
    while not (out / "pca" / "_temporary").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the PCA scores were never written"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert stderr.splitlines()[-1].startswith(INTERRUPTED), stderr[-3000:]
    time.sleep(2)  # what a write still going on would leave behind by now
    _assert_cleaned(out)
    assert _tree(out) == before and (out / "manifest.json").read_bytes() == manifest


@pytest.mark.jvm
@pytest.mark.slow
@pytest.mark.parametrize("kind", TARGETS)
def test_sigterm_to_the_process_exits_143_and_leaves_nothing(kind, request, tmp_path, sample_dir):
    if kind == "local":
        out, inp, env = tmp_path / "new", sample_dir, None
    else:  # an S3 run into a new prefix
        s3_side = request.getfixturevalue("on_s3")
        out, inp, env = s3_side["target"].out(f"new-{tmp_path.name}"), s3_side["input"], s3_side["target"].env()
    proc = _cli(*_run_args(inp, out), env=env)
    _wait_for_featurization(proc)
    os.kill(proc.pid, signal.SIGTERM)  # a scheduler, `timeout`, `docker stop`, YARN: the driver process only
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-3000:]
    err = stderr.splitlines()
    assert len(err) == 1 and err[0].startswith(INTERRUPTED), stderr[-3000:]
    assert not storage.exists(str(out)), "a run that committed nothing into a new folder leaves no trace"
    assert _tree(out) == {}, "no object left under the output prefix"


@pytest.mark.jvm
@pytest.mark.slow
def test_project_on_a_damaged_pca_model_exits_2(committed, sample_dir, tmp_path):
    run = tmp_path / "damaged"
    shutil.copytree(committed, run)
    models = sorted((run / "pca").glob("_model*.npz"))
    assert models, sorted(p.name for p in (run / "pca").iterdir())
    for model in models:
        model.write_bytes(model.read_bytes()[:100])  # truncated
    proc = _cli("project", "--run", str(run), "--input", str(sample_dir / "Banana"), "--output", str(tmp_path / "p"),
                "--no-explorer")
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 2, stderr[-3000:]
    first = stderr.splitlines()[0]
    assert first.startswith("p8utils: error: ") and "damaged" in first and "Fix" in first, stderr[-3000:]
    assert "Traceback" not in stderr


@pytest.fixture
def small_disk(tmp_path):
    """A 300 KiB tmpfs (needs root and a kernel that lets this process mount); skip otherwise."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:  # the run's JVM may hold a file there for a moment after the CLI has exited
        for _ in range(50):
            if subprocess.run(["umount", str(mount)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        else:
            subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.jvm
@pytest.mark.slow
def test_full_disk_exits_1_naming_the_device(small_disk, sample_dir):
    out = small_disk / "out"
    proc = _cli(*_run_args(sample_dir, out))
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 1, stderr[-3000:]
    err = stderr.splitlines()
    assert err[0] == f"p8utils: failed: no space left on the device of {out}", stderr[-3000:]
    assert err[1].startswith("p8utils:   Fix: ") and "Traceback" not in stderr and len(err) <= 5, stderr[-3000:]
    assert err[-1].startswith("p8utils: log: ") and "No space left on device" in Path(
        err[-1].split("log: ", 1)[1].split(" (")[0]).read_text(errors="replace")
    assert not out.exists() or not any(out.iterdir()), sorted(map(str, out.rglob("*")))


def test_an_interruption_says_whether_the_run_was_committed(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text('{"run_id": "20261201T000000-old"}')
    state = _RunState(str(out))
    assert _failure(Interrupted(signal.SIGTERM), state, None) == 143  # before the first stage: no commit possible
    state.snapshot(None)  # the first stage begins: the run holds the lease
    assert _failure(Interrupted(signal.SIGINT), state, None) == 130
    (out / "manifest.json").write_text('{"run_id": "20261202T000000-new"}')  # the run's commit
    assert _failure(KeyboardInterrupt(), state, None) == 130  # PySpark's own SIGINT handler raises this one
    err = capsys.readouterr().err.splitlines()
    assert err[:2] == [INTERRUPTED, INTERRUPTED]
    assert err[2] == f"p8utils: interrupted after the commit: the run 20261202T000000-new is committed in {out}"
