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
import sys
import tempfile
from contextlib import contextmanager, nullcontext
from typing import Any, Dict, Iterator, List, Optional, Sequence, TextIO, Tuple

from p8utils.errors import OutputBusyError, P8UtilsError, RunCheckError

__all__ = ["build_parser", "main"]

#: Exit codes: a wrong parameter or path, a folder held by another run, a run that failed its row check.
EXIT_PARAMETER, EXIT_BUSY, EXIT_FAILED = 2, 3, 1


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
        epilog=f"Exit codes: 0 done, {EXIT_PARAMETER} a wrong parameter or path (nothing started), {EXIT_BUSY} "
               f"the output is held by another run (nothing written), {EXIT_FAILED} a run that stopped before "
               "its commit (the previous output is untouched).",
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

    from p8utils.config import RunConfig
    from p8utils.pipeline import MODEL_PARAMETERS

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
    _add_parameters(project, [n for n in RunConfig.names() if n not in ("k", "variance")], MODEL_PARAMETERS)
    _add_console_options(project)

    check = sub.add_parser(
        "check",
        help="featurize one image without Spark (installation / node health check)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    check.add_argument("--image", required=True, help="local path of an image file")
    _add_parameters(check, ("model", "weights", "engine", "seed", "image_size"))
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
    copied into ``<output>/logs/`` at the end, unless ``--verbose``.
    """
    from p8utils import runs, storage
    from p8utils.config import RunConfig
    from p8utils.notebook.progress import spark_progress
    from p8utils.pipeline import project, run

    names = [n for n in RunConfig.names() if n in vars(args)]
    given = {n: getattr(args, n) for n in names}
    config = RunConfig.from_mapping(given) if args.command == "run" else None
    fd, log_file = tempfile.mkstemp(prefix="p8utils-run-", suffix=".log")
    os.close(fd)
    log_uri: Optional[str] = None

    def progress(stage: str, spark: Any) -> Any:
        return spark_progress(spark, "featurize", file=console) if stage == "featurize" else nullcontext()

    try:
        with _quiet(log_file, args.verbose) as console:
            if config is not None:
                for line in _header(config):
                    print(line, file=console)
                result = run(config, progress=progress)
            else:
                print(f"p8utils project: {args.input} on the run {args.run} -> {args.output}", file=console)
                others = {k: v for k, v in given.items() if k not in ("input", "output")}
                result = project(args.run, args.input, args.output, progress=progress, **others)
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
    except BaseException:
        if not args.verbose:
            print(f"p8utils: log: {log_file}", file=sys.stderr)
        raise
    else:
        os.unlink(log_file)
    return 0


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
    """Featurize one image in-process and print JSON (width, norm, error)."""
    import numpy as np

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
