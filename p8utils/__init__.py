"""p8utils: the Fruits! image-featurization pipeline (PySpark + MobileNetV2 + PCA).

Modules
-------
spark       SparkSession: the active one (Livy, spark-submit) or a local one.
storage     Small file operations on local paths and Hadoop URIs (s3://, hdfs://).
images      Listing images with Spark's ``binaryFile`` source and decoding them.
models      Model registry and weights sources (ImageNet, file, offline seeded).
featurize   The iterator pandas UDF turning image bytes into feature vectors.
pca         One Spark ML PCA fit, k choice, centred projection.
pipeline    End-to-end run with output layout and manifest.
notebook    Presentation (notebook extras): paths, samples, summaries, plots, figures, progress.
sample      The generated synthetic sample (``data_sample/``).
cli         ``python -m p8utils run …`` (also through ``spark-submit``).

Heavy dependencies (pyspark, tensorflow) are imported by the modules that need
them, not here, so ``import p8utils`` is cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
