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
import sys
from typing import List, Optional

from p8utils.errors import P8UtilsError

__all__ = ["build_parser", "main"]

_WEIGHTS_HELP = (
    "where the model weights come from: 'imagenet' (Keras download/cache; error with the remedy if "
    "unreachable), 'offline' (seeded weights with BatchNorm recalibrated on synthetic fruit images: "
    "deterministic, O(1) features, NOT ImageNet - tests/demos only), 'auto' (imagenet if reachable, "
    "else offline with a loud warning in the output and manifest), or a path/URI of a Keras .h5 "
    "weights file (local, hdfs://, s3://). Default: %(default)s"
)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser (``--help`` documents every option)."""
    from p8utils.featurize import DEFAULT_ENGINE, ENGINES
    from p8utils.images import DEFAULT_EXTENSIONS, DEFAULT_MAX_PIXELS
    from p8utils.models import MODELS
    from p8utils.pipeline import DEFAULT_VARIANCE, MODES

    parser = argparse.ArgumentParser(
        prog="python -m p8utils",
        description="Fruits! image pipeline: images -> CNN features -> PCA, on Spark.",
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
            "timings, versions, weights SHA-256). Bad images become rows with an error reason."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    run.add_argument("--input", required=True,
                     help="folder or URI (s3://bucket/prefix) holding one sub-folder of images per class")
    run.add_argument("--output", required=True, help="folder or URI to write the run to")
    run.add_argument("--model", default="mobilenet_v2", choices=sorted(MODELS),
                     help="feature extractor: mobilenet_v2 = 1280 features, resnet50 = 2048")
    run.add_argument("--weights", default="imagenet", help=_WEIGHTS_HELP)
    group = run.add_mutually_exclusive_group()
    group.add_argument("--k", type=int, default=None,
                       help="number of principal components to keep (1 <= k <= feature width)")
    group.add_argument("--variance", type=float, default=None,
                       help=f"keep the smallest k whose cumulative explained variance reaches this "
                            f"fraction in (0, 1]; used with {DEFAULT_VARIANCE} when --k is not given")
    run.add_argument("--batch-size", type=int, default=64, help="images per model call (memory ~ 0.6 MB/image)")
    run.add_argument("--engine", default=DEFAULT_ENGINE, choices=ENGINES,
                     help="inference engine: 'keras' (TensorFlow, compiled tf.function) or 'tflite' (the same "
                          "model converted once on the driver, run with TFLite/XNNPACK; features equal keras "
                          "within 1e-4 relative)")
    run.add_argument("--seed", type=int, default=0, help="seed of --weights offline/auto fallback")
    run.add_argument("--mode", default="error", choices=MODES,
                     help="if --output is not empty: 'error' refuses (safe default), 'overwrite' replaces it, "
                          "'incremental' featurizes only new or changed files (key: path + size + mtime) "
                          "and refits PCA on the whole table")
    run.add_argument("--extensions", default=",".join(DEFAULT_EXTENSIONS),
                     help="comma-separated file extensions that count as images, case-insensitive")
    run.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                     help="images declaring more pixels are reported as error 'too_large', not decoded")
    run.add_argument("--images-per-partition", type=int, default=256,
                     help="target images per Spark task: fewer, larger tasks amortize the per-task cost; "
                          "never fewer tasks than cores")
    run.add_argument("--master", default=None,
                     help="Spark master for a new session, e.g. local[2] or spark://host:7077 "
                          "(default local[*]; ignored under spark-submit/Livy, which set it)")
    run.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")

    check = sub.add_parser(
        "check",
        help="featurize one image without Spark (installation / node health check)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    check.add_argument("--image", required=True, help="local path of an image file")
    check.add_argument("--model", default="mobilenet_v2", choices=sorted(MODELS), help="feature extractor")
    check.add_argument("--weights", default="imagenet", help=_WEIGHTS_HELP)
    check.add_argument("--seed", type=int, default=0, help="seed of offline weights")
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    """Run the pipeline and print a summary."""
    from p8utils.pipeline import run

    result = run(
        args.input, args.output, model=args.model, weights=args.weights, k=args.k, variance=args.variance,
        batch_size=args.batch_size, engine=args.engine, seed=args.seed, mode=args.mode,
        extensions=[e for e in args.extensions.split(",") if e], max_pixels=args.max_pixels,
        images_per_partition=args.images_per_partition, master=args.master,
    )
    m = result.manifest
    c, p = m["counts"], m["pca"]
    print(f"p8utils: {c['total']} images, {c['ok']} ok, {c['failed']} failed {c['failed_by_reason'] or ''}")
    print(f"p8utils: PCA k={p['k']} keeps {p['explained_at_k']:.1%} of the variance "
          f"(width {p['feature_width']}, {p['n_rows']} rows)")
    print("p8utils: seconds per stage: " + ", ".join(f"{k}={v:.1f}" for k, v in m["timings_s"].items()))
    for w in m["warnings"]:
        print(f"p8utils: WARNING: {w}", file=sys.stderr)
    print(f"p8utils: features -> {result.features_path}")
    print(f"p8utils: pca      -> {result.pca_path}")
    print(f"p8utils: manifest -> {result.manifest_path}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    """Featurize one image in-process and print JSON (width, norm, error)."""
    import numpy as np

    from p8utils.featurize import featurize_bytes
    from p8utils.models import load_weights

    with open(args.image, "rb") as fh:
        data = fh.read()
    bundle = load_weights(args.model, args.weights, seed=args.seed)
    row = featurize_bytes([data], bundle).iloc[0]
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
    """Entry point; returns the process exit code (2 for a parameter error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return _cmd_run(args) if args.command == "run" else _cmd_check(args)
    except P8UtilsError as exc:
        print(f"p8utils: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # also the entry point of `spark-submit .../p8utils/cli.py run ...`
    sys.exit(main())
