"""The manifest of a run: what it did, built from typed values (:class:`RunOutcome`), written last by the commit."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional

from p8utils import __version__
from p8utils.protocol.incremental import IncrementalPlan
from p8utils.protocol.lease import utc_now
from p8utils.protocol.rowcheck import RowCheck

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

    from p8utils.config import RunConfig
    from p8utils.models import WeightsBundle
    from p8utils.pca import PCAResult
    from p8utils.protocol.commit import ActiveRun

__all__ = ["PYTHON_RECORD", "RunOutcome", "build_manifest"]

#: Written by bootstrap/emr_bootstrap.sh next to the EMR nodes' venv Python (``sys.prefix``): the pin set it installed.
PYTHON_RECORD = "p8utils-python.json"


def _versions() -> Dict[str, Optional[str]]:
    """Versions of the libraries that shape the output, the driver's interpreter and, on EMR, its pin set."""
    import platform
    from importlib import metadata

    out: Dict[str, Optional[str]] = {"python": platform.python_version(), "p8utils": __version__,
                                     "python_executable": sys.executable, "pin_set": None}
    try:
        with open(os.path.join(sys.prefix, PYTHON_RECORD), encoding="utf-8") as fh:
            out["pin_set"] = json.load(fh).get("requirements")
    except (OSError, ValueError, AttributeError):
        pass  # not an EMR node of the kit
    for dist in ("pyspark", "tensorflow", "tensorflow-cpu", "keras", "ai-edge-litert", "numpy", "pandas", "pyarrow",
                 "pillow", "boto3"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


@dataclass(frozen=True)
class RunOutcome:
    """What a run made, as the manifest records it (one attribute each).

    :func:`build_manifest` turns it into the manifest's entries, with the run's
    id, times and lease from :class:`~p8utils.protocol.commit.ActiveRun`.

    Attributes
    ----------
    config : RunConfig
        The parameters (``parameters`` entry).
    bundle : WeightsBundle
        The weights (source, SHA-256, seed, warning).
    counts : RowCheck
        The row check: the only source of the image counts.
    plan : IncrementalPlan
        What the run did with the committed table (``counts.featurized/reused/removed``,
        ``incremental_key``, ``incremental``).
    fit : PCAResult
        The PCA fit (every explained variance, k).
    timings : mapping of str to float
        Seconds per stage.
    unlisted : list of dict
        Folders that could not be listed (``path``, ``reason``).
    model_builds : int
        Times a Python worker built the model.
    extra : mapping
        More entries (e.g. a projection's ``kind`` and ``projection``).
    """

    config: RunConfig
    bundle: WeightsBundle
    counts: RowCheck
    plan: IncrementalPlan
    fit: PCAResult
    timings: Mapping[str, float] = field(default_factory=dict)
    unlisted: List[Dict[str, str]] = field(default_factory=list)
    model_builds: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def warnings(self) -> List[str]:
        """Return the manifest's ``warnings``: offline weights, k past the rank, folders not listed."""
        bundle, fit, unlisted = self.bundle, self.fit, self.unlisted
        warnings = [bundle.warning] if bundle.warning else []
        if bundle.source == "offline" and not bundle.warning:
            warnings.append("weights='offline': seeded weights, NOT ImageNet features (for tests and demos only).")
        if fit.k > fit.n_rows - 1:
            warnings.append(f"k={fit.k} exceeds the rank of the data ({fit.n_rows} rows): trailing scores are ~0.")
        if unlisted:
            warnings.append(f"{len(unlisted)} folder(s) could not be listed, their files are not in the run: "
                            + "; ".join(f"{u['path']} ({u['reason']})" for u in unlisted[:5]))
        return warnings


def build_manifest(active: ActiveRun, outcome: RunOutcome, spark: SparkSession) -> Dict[str, Any]:
    """Build the manifest of a run (JSON-ready), written last by :meth:`ActiveRun.commit`.

    Parameters
    ----------
    active : ActiveRun
        The run (id, start time, layout, the lease it took over).
    outcome : RunOutcome
        What the run made.
    spark : pyspark.sql.SparkSession
        The session (master, version, application id).

    Returns
    -------
    dict
    """
    config, counts, fit, bundle, plan = outcome.config, outcome.counts, outcome.fit, outcome.bundle, outcome.plan
    sc = spark.sparkContext
    return {
        "status": "complete",
        "run_id": active.run_id,
        "p8utils_version": __version__,
        "started_at": active.started.isoformat(),
        "finished_at": utc_now().isoformat(),
        "parameters": config.to_manifest(),
        "spark": {"master": sc.master, "version": spark.version, "application_id": sc.applicationId,
                  "default_parallelism": sc.defaultParallelism},
        "weights": {"source": bundle.source, "sha256": bundle.sha256, "seed": bundle.seed, "warning": bundle.warning},
        "counts": {"total": counts.listed, "ok": counts.ok, "failed": counts.failed,
                   "failed_by_reason": dict(counts.failed_by_reason), **plan.manifest_counts()},
        "unlisted": list(outcome.unlisted),
        "incremental_key": None if plan.key is None else list(plan.key),
        "incremental": plan.manifest_incremental(),
        "pca": {
            "k": fit.k, "variance_target": fit.variance_target, "explained_at_k": fit.explained_at_k,
            "n_rows": fit.n_rows, "feature_width": fit.width,
            "explained_variance": [float(v) for v in fit.explained_variance],
            "cumulative_variance": [float(v) for v in fit.cumulative_variance],
        },
        "outputs": {"features": active.layout.features, "pca": active.layout.pca},
        "timings_s": dict(outcome.timings),
        "model_builds": outcome.model_builds,
        "lease": {"took_over": None if active.replaced is None else active.replaced.run_id},
        "versions": _versions(),
        "warnings": outcome.warnings(),
        "argv": list(sys.argv),
        **dict(outcome.extra),
    }
