"""p8utils: the Fruits! image-featurization pipeline (PySpark + MobileNetV2 + PCA).

Modules
-------
config      RunConfig: every run parameter, its default, help text and check (one home).
runs        The run protocol's public face: output layout, lease, staging, row check, commit, manifest.
protocol    The run protocol's jobs, one module each: folders, lease, commit, rowcheck, incremental, manifest.
spark       SparkSession: the active one (Livy, spark-submit) or a local one.
storage     Small file operations on local paths and URIs (s3://, hdfs://), the disk cache.
images      Listing images (Python scan, Spark, or a file list) and decoding them.
models      Model registry and weights sources (ImageNet, file, offline seeded).
engines     Inference engines: keras, tflite (fp32), tflite-int8 (calibrated).
featurize   The iterator pandas UDF turning image files into feature vectors.
pca         PCA fit (covariance or Spark ML), k choice, centred projection, class centroids.
probe       Linear probe (held-out logistic-regression accuracy) of a features table.
pipeline    ``run`` (list, featurize, check, PCA, commit) and ``project`` (new images on a run's PCA).
errors      ParameterError and the other errors the CLI maps to exit codes.
validation  Parameter checks with messages that say what to do.
notebook    Presentation (notebook extras): paths, samples, summaries, plots, figures, explorer, analysis.
cli         ``python -m p8utils run|project|check`` (also through ``spark-submit``).

Heavy dependencies (pyspark, tensorflow) are imported by the modules that need
them, not here, so ``import p8utils`` is cheap. ``p8utils.read_features(run, spark)``
and ``p8utils.read_pca(run, spark)`` read a run's committed tables (the files its
manifest names).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "read_features", "read_pca"]


def __getattr__(name: str) -> Any:
    """``p8utils.read_features`` / ``read_pca``: the readers of a run's committed tables (:mod:`p8utils.runs`)."""
    if name in ("read_features", "read_pca"):
        from p8utils import runs

        return getattr(runs, name)
    raise AttributeError(f"module 'p8utils' has no attribute {name!r}")
