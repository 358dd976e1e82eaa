from __future__ import annotations

import os
import sys

from p8utils.spark import RECOMMENDED_CONF, get_spark


def test_returns_the_active_session(spark):
    assert get_spark() is spark
    assert get_spark(master="local[1]") is spark, "an existing session is never replaced"


def test_local_session_settings(spark):
    conf = spark.sparkContext.getConf()
    for key, value in RECOMMENDED_CONF.items():
        assert conf.get(key) == value, key
    assert spark.sparkContext.master == "local[2]"
    assert os.environ["PYSPARK_PYTHON"] == sys.executable


def test_workers_run_this_interpreter(spark):
    exe = spark.sparkContext.parallelize([0], 1).map(lambda _: __import__("sys").executable).collect()
    assert exe == [sys.executable]
