"""Shared fixtures: one local Spark session and one offline model for the whole run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = ROOT / "data_sample"
REAL_DIR = ROOT.parent / "shared" / "fruits360"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def image_files(folder: Path) -> list[Path]:
    """Every .jpg/.jpeg below ``folder`` (what the pipeline must read)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg")
                  and not p.name.startswith((".", "_")))


@pytest.fixture(scope="session")
def spark():
    from p8utils.spark import get_spark

    session = get_spark(
        "local[2]",
        app_name="p8utils-tests",
        conf={"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4", "spark.driver.memory": "3g"},
    )
    yield session
    session.stop()


@pytest.fixture(scope="session")
def offline_bundle():
    """MobileNetV2 with offline seeded, BatchNorm-recalibrated weights (seed 0)."""
    from p8utils.models import load_weights

    return load_weights("mobilenet_v2", "offline", seed=0)


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    assert SAMPLE_DIR.is_dir(), "data_sample/ is missing: run `make sample`"
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def real_dir() -> Path:
    if not REAL_DIR.is_dir():
        pytest.skip(f"real Fruits-360 photos not found at {REAL_DIR}")
    return REAL_DIR


@pytest.fixture(scope="session")
def sample_run(spark, sample_dir, tmp_path_factory):
    """One end-to-end pipeline run on data_sample/ with offline weights, shared by tests."""
    from p8utils.pipeline import run

    out = tmp_path_factory.mktemp("sample_run") / "run"
    return run(str(sample_dir), str(out), weights="offline", variance=0.95, spark=spark)
