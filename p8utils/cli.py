r"""Command line: ``python -m p8utils run …`` (also through ``spark-submit``).

Examples
--------
Local run on the bundled sample::

    python -m p8utils run --input data_sample --output runs/demo --weights auto

On EMR, as a step or from the master node::

    spark-submit --deploy-mode client /opt/p8utils/cli.py run \
        --input s3://bucket/fruits/Training --output s3://bucket/runs/2026-11-21

A node health check that featurizes one image without Spark::

    python -m p8utils check --image some.jpg --weights offline
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import threading
from contextlib import contextmanager, nullcontext
from typing import Any, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple

from p8utils.errors import Interrupted, OutputBusyError, P8UtilsError, RunCheckError, describe_failure, failure_text

__all__ = ["build_parser", "console_main", "main"]

log = logging.getLogger(__name__)

#: Exit codes: a wrong parameter or path (a damaged run file among them), a folder held by another run, a run that
#: failed (its row check, a Spark job, the storage); 128 + the signal for SIGINT (130) and SIGTERM (143).
EXIT_PARAMETER, EXIT_BUSY, EXIT_FAILED, EXIT_INTERRUPTED = 2, 3, 1, 128


def _comma_list(text: str) -> Tuple[str, ...]:
    return tuple(e for e in text.split(",") if e.strip())


def _add_parameters(parser: argparse.ArgumentParser, names: Optional[Sequence[str]] = None,
                    inherited: Sequence[str] = ()) -> None:
    """Add one option per run parameter of :class:`p8utils.config.RunConfig` (or the ``names`` given).

    ``inherited`` parameters have no default of their own (another run's apply).
    """
    from p8utils.config import parameters

    groups: Dict[str, Any] = {}
    for p in parameters():
        if names is not None and p.name not in names:
            continue
        if p.name in inherited:
            parser.add_argument("--" + p.name.replace("_", "-"), dest=p.name, default=argparse.SUPPRESS,
                                choices=p.choices, type={"int": int, "float": float}.get(p.kind, str),
                                help=p.help + " (default: the run's)")
            continue
        target: Any = parser
        if p.group is not None:
            if p.group not in groups:
                groups[p.group] = parser.add_mutually_exclusive_group()
            target = groups[p.group]
        kwargs: Dict[str, Any] = {"help": p.help, "choices": p.choices}
        kwargs["type"] = {"int": int, "float": float, "list": _comma_list}.get(p.kind, str)
        if p.required:
            kwargs.update(required=True, default=argparse.SUPPRESS)
        else:
            kwargs["default"] = ",".join(p.default) if p.kind == "list" else p.default
        target.add_argument("--" + p.name.replace("_", "-"), dest=p.name, **kwargs)


def _add_console_options(parser: argparse.ArgumentParser) -> None:
    """Options of what a run shows and writes besides its data (not run parameters)."""
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log at INFO level on the console instead of into <output>/logs/")
    parser.add_argument("--no-explorer", dest="explorer", action="store_false",
                        help="do not write <output>/explorer.html (the interactive PC scatter; needs the notebook "
                             "extras)")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser; the ``run`` options are generated from :class:`p8utils.config.RunConfig`."""
    parser = argparse.ArgumentParser(
        prog="python -m p8utils",
        description="Fruits! image pipeline: images -> CNN features -> PCA, on Spark.",
        epilog=f"Exit codes: 0 done, {EXIT_PARAMETER} a wrong parameter or path, or a damaged run file (nothing "
               f"changed), {EXIT_BUSY} "
               f"the output is held by another run (nothing written), {EXIT_FAILED} a run that stopped before "
               "its commit: a Spark job or the storage failed (the previous output is untouched), "
               f"{EXIT_INTERRUPTED + 2} / {EXIT_INTERRUPTED + 15} interrupted by SIGINT (Ctrl-C) / SIGTERM (this "
               "run's files removed, the lease released, nothing committed).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="featurize a folder of images and reduce the features with PCA",
        description=(
            "Read every image below --input (one sub-folder per class; the label is the folder name), "
            "compute CNN features, fit PCA, and write <output>/features/ and <output>/pca/ (parquet) "
            "and <output>/manifest.json (written last: parameters, counts, explained variance, "
            "timings, versions, weights SHA-256). Every listed file gives one row: bad or vanished files "
            "become rows with an error reason."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_parameters(run)
    _add_console_options(run)

    from p8utils.config import FeatureIdentity, RunConfig

    project = sub.add_parser(
        "project",
        help="featurize new images with a run's model and weights and project them on its PCA",
        description=("Featurize the images below --input with the model, weights and engine of the run --run "
                     "(refused if the weights differ), project them on the run's PCA, and write <output>/features/, "
                     "<output>/pca/ (pca_features plus the 3 nearest classes of the run by distance to the class "
                     "centroids in PC space) and <output>/manifest.json (with the nearest-class accuracy of the "
                     "images whose folder is a class of the run)."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    project.add_argument("--run", required=True, default=argparse.SUPPRESS, help="the run folder or URI to project on")
    _add_parameters(project, [n for n in RunConfig.names() if n not in ("k", "variance")], FeatureIdentity.PARAMETERS)
    _add_console_options(project)

    check = sub.add_parser(
        "check",
        help="featurize one image without Spark (installation / node health check)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    check.add_argument("--image", required=True, help="local path of an image file")
    _add_parameters(check, FeatureIdentity.PARAMETERS)  # what makes features what they are
    return parser


@contextmanager
def _quiet(log_file: str, verbose: bool) -> Iterator[TextIO]:
    """Send what this process and its children print (JVM, TensorFlow, Spark) to ``log_file``; yield the console.

    With ``verbose`` nothing is redirected and the console is ``sys.stdout``.
    """
    if verbose:
        yield sys.stdout
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    target = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    console = os.fdopen(os.dup(saved[0]), "w", buffering=1, encoding="utf-8", errors="replace")
    os.dup2(target, 1)
    os.dup2(target, 2)
    try:
        yield console
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)
        console.close()


def _header(config: Any) -> List[str]:
    """List the parameters of a run in a few lines."""
    pca = f"k={config.k}" if config.k is not None else f"variance {config.variance}"
    return [f"p8utils run: {config.input} -> {config.output} (mode {config.mode})",
            f"  model {config.model} at {config.image_size} px, weights {config.weights}, engine {config.engine}, "
            f"batch {config.batch_size}, PCA {pca}, reader {config.reader}"]


def _summary(result: Any, log_uri: Optional[str]) -> List[str]:
    """Say what a run did, where everything is, and what the user must see."""
    m = result.manifest
    c, p = m["counts"], m["pca"]
    failed = ", ".join(f"{k} {v}" for k, v in c["failed_by_reason"].items())
    lines = [f"p8utils: {c['total']} images, {c['ok']} ok, {c['failed']} failed" + (f" ({failed})" if failed else "")
             + (f"; {c['featurized']} featurized, {c['reused']} reused, {c['removed']} removed"
                if m["parameters"]["mode"] == "incremental" else "")]
    lines += [f"p8utils: not listed: {u['path']} ({u['reason']})" for u in m.get("unlisted", [])[:10]]
    lines.append(f"p8utils: PCA k={p['k']} keeps {p['explained_at_k']:.1%} of the variance "
                 f"(width {p['feature_width']}, {p['n_rows']} rows)")
    lines.append("p8utils: seconds per stage: " + ", ".join(f"{k}={v:.1f}" for k, v in m["timings_s"].items()))
    lines += [f"p8utils: WARNING: {w}" for w in m["warnings"]]
    lines += [f"p8utils: features -> {result.features_path}", f"p8utils: pca      -> {result.pca_path}",
              f"p8utils: manifest -> {result.manifest_path}"]
    projection = m.get("projection")
    if projection:
        acc = projection["nearest_class_accuracy"]
        lines.append(f"p8utils: projected on {projection['run']} ({projection['classes']} classes); nearest-class "
                     f"accuracy " + ("n/a (no image of a known class)" if acc is None else
                                     f"{acc:.1%} on {projection['known_class_rows']} images of known classes"))
    if log_uri:
        lines.append(f"p8utils: log      -> {log_uri}")
    return lines


def _cmd_run(args: argparse.Namespace) -> int:
    """Run the pipeline (or a projection): parameters, one progress bar over the featurization, warnings, summary.

    Everything else (Spark's log, TensorFlow's messages) goes to a log file,
    copied into ``<output>/logs/`` at the end, unless ``--verbose``. A failure
    or an interruption ends with a few lines and an exit code (see
    :func:`_failure`); its stack trace goes to that log file.
    """
    from p8utils import runs, storage
    from p8utils.config import RunConfig
    from p8utils.notebook.progress import spark_progress
    from p8utils.pipeline import project, run

    names = [n for n in RunConfig.names() if n in vars(args)]
    given = {n: getattr(args, n) for n in names}
    fd, log_file = tempfile.mkstemp(prefix="p8utils-run-", suffix=".log")
    os.close(fd)
    log_uri: Optional[str] = None
    state = _RunState(args.output)
    signals = _Signals()
    signals.install()

    def progress(stage: str, spark: Any) -> Any:
        signals.install()  # again: creating the SparkContext replaced the SIGINT handler with PySpark's
        state.snapshot(spark)
        # a bar at a terminal (tqdm.std), text lines otherwise; nothing of the notebook display stack is imported
        return spark_progress(spark, "featurize", file=console) if stage == "featurize" else nullcontext()

    try:
        with _quiet(log_file, args.verbose) as console:
            config = RunConfig.from_mapping(given) if args.command == "run" else None
            paths = (config.input, config.output) if config is not None else (args.run, args.input, args.output)
            if not all(storage.is_local(p) for p in paths):  # the pipeline's first step: a session for the URIs
                from p8utils.spark import get_spark

                get_spark(given.get("master"))
                signals.install()  # before the lease and the checks, not only from the first stage on
            if config is not None:
                for line in _header(config):
                    print(line, file=console)
                result = run(config, progress=progress)
            else:
                print(f"p8utils project: {args.input} on the run {args.run} -> {args.output}", file=console)
                others = {k: v for k, v in given.items() if k not in ("input", "output")}
                result = project(args.run, args.input, args.output, progress=progress, **others)
            state.result = result
            page = _explorer(result.output) if args.explorer else None
            if not args.verbose:
                log_uri = storage.join(runs.layout(result.output).root, "logs",
                                       f"{result.manifest['run_id']}.log")
                storage.write_bytes(log_uri, open(log_file, "rb").read(), _active_spark())
            for line in _summary(result, log_uri):
                print(line, file=console)
            if args.explorer:
                print(f"p8utils: explorer -> {page}" if page and not page.startswith("(") else
                      f"p8utils: no explorer.html {page}", file=console)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - every failure ends in words and an exit code
        return _failure(exc, state, None if args.verbose else log_file)
    finally:
        signals.restore()
    os.unlink(log_file)
    return 0


class _Signals:
    """Turn the first SIGINT or SIGTERM into :class:`~p8utils.errors.Interrupted` in the main thread.

    The handler first cancels the Spark jobs and waits a few seconds for their
    tasks to stop (from another thread: Py4J's connection of the main thread
    is busy with the call the signal interrupted), so that the run's cleanup
    (``runs.open_run``'s ``finally``) does not race with tasks still writing.
    A second signal ends the process at once (the default action): a run
    that died that way leaves its lease, which the next run takes over.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._previous: Dict[int, Any] = {}
        self.received: Optional[int] = None

    def install(self) -> None:
        """Install the handler (again, if something replaced it), unless a signal was received already."""
        if self.received is not None or threading.current_thread() is not threading.main_thread():
            return
        for signum in self.SIGNALS:
            current = signal.getsignal(signum)
            if current != self._handle:
                signal.signal(signum, self._handle)
                self._previous.setdefault(signum, current)

    def restore(self) -> None:
        """Put back the handlers found by the first :meth:`install`, unless a signal was received.

        After a signal the default actions stay: a second Ctrl-C while the
        process ends (Spark's shutdown) ends it at once.
        """
        if self.received is not None or threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        for other in self.SIGNALS:
            signal.signal(other, signal.SIG_DFL)
        _stop_spark_jobs()
        raise Interrupted(signum)


def _stop_spark_jobs(wait_s: float = 10.0) -> None:
    """Cancel every Spark job of this process and wait up to ``wait_s`` for their tasks to end.

    Runs in a thread of its own (its own Py4J connection). Nothing happens
    without a SparkContext.
    """
    if "pyspark" not in sys.modules:
        return
    from pyspark import SparkContext

    from p8utils.spark import wait_for_running_tasks

    sc = SparkContext._active_spark_context
    if sc is None:
        return

    def stop() -> None:
        try:
            sc.cancelAllJobs()
        except Exception as exc:  # noqa: BLE001 - a context being stopped: nothing left to cancel
            log.warning("could not cancel the Spark jobs: %s", exc)
            return
        if not wait_for_running_tasks(sc, wait_s):
            log.warning("Spark tasks still running %.0f s after the jobs were cancelled", wait_s)

    thread = threading.Thread(target=stop, name="p8utils-cancel-jobs", daemon=True)
    thread.start()
    thread.join(wait_s + 5.0)


class _RunState:
    """What the command line knows of a run's commit, to say afterwards whether it happened.

    :meth:`snapshot` reads the output's manifest when the run's first stage
    begins (the run holds the output's lease by then, so only this run can
    commit it); a manifest that differs afterwards is this run's commit.
    """

    def __init__(self, output: str) -> None:
        self.output = output
        self.result: Any = None
        self._spark: Any = None
        self._before: Optional[bytes] = None
        self._taken = False

    def _manifest(self) -> Optional[bytes]:
        from p8utils import runs, storage

        uri = runs.layout(self.output).manifest
        return storage.read_bytes(uri, self._spark) if storage.exists(uri, self._spark) else None

    def snapshot(self, spark: Any) -> None:
        """Read the manifest once, at the first stage."""
        if self._taken:
            return
        self._spark = spark
        try:
            self._before = self._manifest()
            self._taken = True
        except Exception as exc:  # noqa: BLE001 - unreadable now: the commit cannot be told afterwards
            log.warning("could not read the manifest of %s: %s", self.output, exc)

    def commit(self) -> Tuple[Optional[bool], Optional[str]]:
        """Return (committed, run id): (False, None) before any stage, (None, None) when it cannot be told."""
        if self.result is not None:
            return True, self.result.manifest.get("run_id")
        if not self._taken:
            return False, None
        try:
            after = self._manifest()
        except Exception as exc:  # noqa: BLE001 - say that it cannot be told
            log.warning("could not read the manifest of %s: %s", self.output, exc)
            return None, None
        if after is None or after == self._before:
            return False, None
        try:
            return True, json.loads(after.decode("utf-8")).get("run_id")
        except ValueError:
            return True, None


def _failure(exc: BaseException, state: _RunState, log_file: Optional[str]) -> int:
    """Report why a run stopped, in a few lines on stderr; put the stack trace into ``log_file``.

    Parameters
    ----------
    exc : BaseException
        What ended the run.
    state : _RunState
        Tells whether the run was committed.
    log_file : str or None
        The run's log file; None with ``--verbose`` (the stack trace then goes
        to stderr, except for interruptions and parameter errors).

    Returns
    -------
    int
        The exit code: :data:`EXIT_INTERRUPTED` + the signal (130, 143),
        :data:`EXIT_BUSY`, :data:`EXIT_PARAMETER` (:class:`P8UtilsError`,
        :class:`~p8utils.errors.DamagedRunFileError` among them) or
        :data:`EXIT_FAILED`.
    """
    import traceback

    trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    logged = False
    if log_file is not None and (not isinstance(exc, P8UtilsError) or os.path.getsize(log_file)):
        with open(log_file, "a", encoding="utf-8", errors="replace") as fh:
            fh.write("\n" + trace)
        logged = True
    elif log_file is not None:
        os.unlink(log_file)  # a parameter refused before anything ran: nothing to read there
    where = f" (log: {log_file})" if logged else ""
    if isinstance(exc, KeyboardInterrupt):
        signum = getattr(exc, "signum", signal.SIGINT)
        committed, run_id = state.commit()
        if committed:
            what = f"interrupted after the commit: the run {run_id or ''} is committed in {state.output}"
        elif committed is None:
            what = f"interrupted: whether the run was committed could not be told; check {state.output}/manifest.json"
        else:
            what = "interrupted: nothing was committed, the output is unchanged"
        print(f"p8utils: {what}{where}", file=sys.stderr)
        return EXIT_INTERRUPTED + signum
    if isinstance(exc, OutputBusyError):
        print(f"p8utils: busy: {exc}", file=sys.stderr)
        return EXIT_BUSY
    if isinstance(exc, RunCheckError):
        lines, code = [f"failed: {exc}"], EXIT_FAILED
    elif isinstance(exc, P8UtilsError):
        lines, code = [f"error: {exc}"], EXIT_PARAMETER
    else:
        described = describe_failure(exc, state.output)
        lines = [f"failed: {ln}" if i == 0 else f"  {ln}" for i, ln in
                 enumerate((described or _last_cause(exc)).splitlines())]
        committed, run_id = state.commit()
        lines.append(f"the run {run_id or ''} was committed in {state.output} before the failure" if committed else
                     "nothing was committed, the output is unchanged" if committed is False else
                     f"whether the run was committed could not be told; check {state.output}/manifest.json")
        code = EXIT_FAILED
        if log_file is None:
            print(trace, file=sys.stderr, end="")
    if logged:
        lines.append(f"log: {log_file} (the stack trace)")
    for line in lines:
        print(f"p8utils: {line}", file=sys.stderr)
    return code


def _last_cause(exc: BaseException) -> str:
    """Return the innermost ``Caused by:`` of a Java stack trace, else the first line of the exception."""
    text = failure_text(exc)
    causes = [ln.split("Caused by: ", 1)[1] for ln in text.splitlines() if ln.startswith("Caused by: ")]
    first = causes[-1] if causes else next((ln for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    return first[:300]


def _explorer(output: str) -> str:
    """Write ``<output>/explorer.html`` (the interactive PC scatter); return its path, or why not in brackets."""
    from p8utils.errors import ParameterError

    try:
        from p8utils.notebook import explorer

        return explorer.write_explorer(_active_spark(), output)
    except (ImportError, ParameterError) as exc:  # no Bokeh (runtime-only install), or fewer than 2 components
        return f"({exc})"


def _active_spark() -> Any:
    from pyspark.sql import SparkSession

    return SparkSession.getActiveSession()


def _cmd_check(args: argparse.Namespace) -> int:
    """Featurize one image in-process and print JSON (width, norm, error, and the features' identity)."""
    import dataclasses

    import numpy as np

    from p8utils.config import FeatureIdentity
    from p8utils.engines import get_engine
    from p8utils.featurize import featurize_bytes
    from p8utils.images import decode_image
    from p8utils.models import load_weights

    with open(args.image, "rb") as fh:
        data = fh.read()
    bundle = load_weights(args.model, args.weights, seed=args.seed, image_size=args.image_size)
    calibration = None
    if get_engine(args.engine).calibrated:  # int8: activation ranges from the one image checked
        pixels, _ = decode_image(data, bundle.spec.input_size)
        calibration = None if pixels is None else bundle.spec.preprocess(pixels[None])
    row = featurize_bytes([data], bundle, engine=args.engine, calibration=calibration).iloc[0]
    feats = row["features"]
    out = {
        "image": args.image, "model": args.model, "weights": bundle.source, "sha256": bundle.sha256,
        "width": None if feats is None else int(len(feats)),
        "norm": None if feats is None else float(np.linalg.norm(feats)),
        "error": row["error"],
        # what makes these features what they are: equal identities give comparable features (runs, projections)
        "identity": dataclasses.asdict(FeatureIdentity.from_parameters(vars(args), bundle.sha256)),
    }
    print(json.dumps(out))
    return 0 if feats is not None else 1


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the process exit code (see :data:`EXIT_PARAMETER` and the others)."""
    args = build_parser().parse_args(argv)
    # --verbose: INFO on the console. Otherwise the console shows only the CLI's own lines and the log file
    # (see _quiet) gets p8utils' INFO/DEBUG records (the TFLite converter's dump among them) and others' WARNINGs.
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("p8utils").setLevel(logging.DEBUG)
    try:
        return _cmd_check(args) if args.command == "check" else _cmd_run(args)
    except OutputBusyError as exc:
        print(f"p8utils: busy: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except RunCheckError as exc:
        print(f"p8utils: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except P8UtilsError as exc:
        print(f"p8utils: error: {exc}", file=sys.stderr)
        return EXIT_PARAMETER


if __name__ == "__main__":  # also the entry point of `spark-submit .../p8utils/cli.py run ...`
    sys.exit(main())


def console_main() -> None:
    """Entry point of the ``p8utils`` console script and of a Databricks ``python_wheel_task``.

    Raises
    ------
    SystemExit
        With :func:`main`'s exit code when it is not 0: a wheel task calls the
        entry point as a function and ignores its return value, so a failed run
        must raise to fail the task.
    """
    code = main()
    if code:
        raise SystemExit(code)
