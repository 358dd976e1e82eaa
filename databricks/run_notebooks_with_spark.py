"""Run notebooks 01 and 03's code cells as a Databricks notebook does: `spark` exists before them; magics dropped.

    python run_notebooks_with_spark.py NOTEBOOKS_DIR INPUT OUTPUT    (databricks/emulate_runtime.sh)

01 runs on INPUT with weights offline into OUTPUT; 03 analyses OUTPUT. Parameters cells are kept, then overridden.
"""
import json
import sys
import time

import matplotlib
from pyspark.sql import SparkSession

matplotlib.use("Agg")
spark = SparkSession.builder.master("local[2]").appName("databricks-like").getOrCreate()
overrides = {
    "01_local_sample.ipynb": {"input": sys.argv[2], "output": sys.argv[3], "weights": "offline"},
    "03_pca_analysis.ipynb": {"features_path": sys.argv[3]},
}
for name in ("01_local_sample.ipynb", "03_pca_analysis.ipynb"):
    cells = json.load(open(f"{sys.argv[1]}/{name}"))["cells"]
    ns = {"spark": spark, "__name__": "__main__"}
    t = time.time()
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        src = "".join(line for line in "".join(cell["source"]).splitlines(True) if not line.lstrip().startswith("%"))
        exec(compile(src, name, "exec"), ns)
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            ns.update(overrides[name])
    assert ns["spark"] is spark
    print(f"== {name}: ok in {time.time() - t:.0f} s")
