#!/usr/bin/env bash
# Run the Databricks job's task and notebooks 01 + 03 on Databricks Runtime 15.4 LTS's Python stack, off Databricks:
# a venv with the runtime's versions (Python 3.11, pyspark 3.5.0, numpy 1.23.5, pandas 1.5.3, pyarrow 14.0.1,
# pillow 10.3.0, matplotlib 3.7.2, scikit-learn 1.3.0, ipywidgets 7.7.2, boto3 1.34.39), then the task's libraries
# of databricks/resources/p8utils_run.job.yml installed over it as the cluster does, then
#   1. the wheel task (entry point p8utils, `run ... --weights offline`) on a /Volumes/...-shaped copy of data_sample/,
#   2. notebooks 01 and 03 with a `spark` that exists before them (as in a Databricks notebook),
#   3. the features compared with those of the project's .venv (same input, same parameters).
# Needs Python 3.11 (PYTHON=...), Java 17, PyPI. About 5 minutes on 2 cores once the packages are cached.
#   databricks/emulate_runtime.sh [WORKDIR]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-$(mktemp -d)}
PYTHON=${PYTHON:-python3.11}
VENV=$WORK/dbr154
SRC=$WORK/Volumes/main/fruits/raw/fruits-360
RUNS=$WORK/Volumes/main/fruits/runs
mkdir -p "$WORK" "$RUNS" "$(dirname "$SRC")"
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version'
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q pyspark==3.5.0 numpy==1.23.5 pandas==1.5.3 pyarrow==14.0.1 pillow==10.3.0 \
    matplotlib==3.7.2 scikit-learn==1.3.0 scipy==1.11.1 ipywidgets==7.7.2 boto3==1.34.39 protobuf==4.24.1
"$VENV/bin/pip" wheel -q --no-deps --wheel-dir "$WORK/dist" "$ROOT"
# the task's libraries, read from the job definition
mapfile -t LIBS < <("$VENV/bin/python" - "$ROOT/databricks/resources/p8utils_run.job.yml" <<'PY'
import re, sys
print("\n".join(re.findall(r"package:\s*(\S+)", open(sys.argv[1]).read())))
PY
)
"$VENV/bin/pip" install -q "$WORK"/dist/p8utils-*.whl "${LIBS[@]}"
"$VENV/bin/pip" list 2>/dev/null | grep -iE '^(pyspark|numpy|pandas|pyarrow|tensorflow-cpu|keras|ai-edge-litert|boto3|protobuf) '
rm -rf "$SRC" "$RUNS/job" "$RUNS/nb" "$RUNS/venv"
cp -r "$ROOT/data_sample" "$SRC"
cd "$WORK"  # not the checkout: the installed wheel is imported, not the sources
export PYSPARK_PYTHON=$VENV/bin/python  # a cluster's workers run the cluster's Python
"$VENV/bin/python" - "$SRC" "$RUNS/job" <<'PY'
import sys
from importlib import metadata
(ep,) = [ep for ep in metadata.distribution("p8utils").entry_points if ep.name == "p8utils"]
src, out = sys.argv[1:]
sys.argv = ["p8utils", "run", "--input", src, "--output", out, "--weights", "offline", "--variance=0.95", "--mode", "error"]
code = ep.load()()
print(f"wheel task: returned {code!r}")
sys.exit(code)
PY
"$VENV/bin/python" "$ROOT/databricks/run_notebooks_with_spark.py" "$ROOT/notebooks" "$SRC" "$RUNS/nb"
cd "$ROOT"
env -u PYSPARK_PYTHON .venv/bin/python -m p8utils run --input "$SRC" --output "$RUNS/venv" --weights offline --no-explorer >/dev/null
.venv/bin/python - "$RUNS/job" "$RUNS/venv" <<'PY'
import sys
import numpy as np
import pandas as pd
a, b = (pd.read_parquet(f"{run}/features").assign(rel=lambda d: d.path.str.split("fruits-360/").str[1])
        .sort_values("rel") for run in sys.argv[1:])
assert list(a.rel) == list(b.rel) and len(a) == 80
diff = float(np.abs(np.stack(a.features.values) - np.stack(b.features.values)).max())
print(f"features, 15.4 stack vs .venv: max |difference| = {diff}")
assert diff < 1e-5
PY
echo "emulate_runtime: ok ($WORK)"
