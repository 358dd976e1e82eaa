#!/usr/bin/env bash
# Run tests/sparkmagic/demo.ipynb headless on the sparkmagic PySpark kernel with papermill,
# against tests/harness/livy_test_server.py, and check the results. See tests/sparkmagic/NOTES.md.
#
# Usage: tests/sparkmagic/run_demo.sh [VENV] [--no-install]
#   VENV          virtualenv to create/use for sparkmagic + papermill (default /tmp/livyvenv)
#   --no-install  skip apt/pip/kernelspec steps (they are idempotent but cost ~10 s)
# Environment:
#   WORKER_PYTHON  Python of the Livy session workers (needs pyspark); default VENV/bin/python
#   OUT_DIR        where executed notebooks, config and logs go; default a new temp dir (kept)
#
# Exit code 0 only if: the good run succeeds with the count and an image/png in its outputs,
# the failing run (-p fail True) makes papermill exit non-zero, and no process is left behind.
set -euo pipefail

VENV=/tmp/livyvenv
INSTALL=1
for arg in "$@"; do
    case "$arg" in
        --no-install) INSTALL=0 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) VENV=$arg ;;
    esac
done
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/sparkmagic-demo.XXXXXX)}
mkdir -p "$OUT_DIR"
VENV=$(mkdir -p "$(dirname "$VENV")" && cd "$(dirname "$VENV")" && pwd)/$(basename "$VENV")
PY=$VENV/bin/python

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---- isolation: nothing written under ~ ---------------------------------------------------------
export SPARKMAGIC_CONF_DIR=$OUT_DIR/sparkmagic      # config.json + sparkmagic logs/
export JUPYTER_RUNTIME_DIR=$OUT_DIR/jupyter-runtime # kernel connection files
export IPYTHONDIR=$OUT_DIR/ipython                  # the kernel is an IPython kernel
export MPLCONFIGDIR=$OUT_DIR/matplotlib             # font cache (kernel and Spark workers)
export JUPYTER_CONFIG_DIR=$OUT_DIR/jupyter-config   # jupyter_core writes a "migrated" marker there
export JUPYTER_DATA_DIR=$OUT_DIR/jupyter-data       # else ~/.local/share/jupyter (and its kernels) is used
mkdir -p "$SPARKMAGIC_CONF_DIR" "$JUPYTER_RUNTIME_DIR" "$IPYTHONDIR" "$MPLCONFIGDIR" "$JUPYTER_CONFIG_DIR" \
    "$JUPYTER_DATA_DIR"

# ---- step 2: install ---------------------------------------------------------------------------
if [ "$INSTALL" = 1 ]; then
    t=$(now)
    # gssapi (a sparkmagic dependency via requests-kerberos/pyspnego) has no Linux wheel: it
    # builds from source and needs krb5-config + Kerberos headers (Debian: libkrb5-dev).
    if ! command -v krb5-config >/dev/null 2>&1; then
        SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends libkrb5-dev gcc
    fi
    [ -x "$PY" ] || python3 -m venv "$VENV"
    "$PY" -m pip install -q --upgrade pip
    CONSTRAINTS=()
    [ -f "$ROOT/constraints.txt" ] && CONSTRAINTS=(-c "$ROOT/constraints.txt")
    "$PY" -m pip install -q ${CONSTRAINTS[@]+"${CONSTRAINTS[@]}"} \
        "pyspark==3.5.8" "pandas>=2.2,<3" matplotlib \
        "sparkmagic==0.23.0" "papermill==2.7.0" "ipykernel==7.4.0"
    # Kernelspec inside the venv (VENV/share/jupyter/kernels), found by that venv's jupyter/papermill.
    SM_DIR=$("$PY" -c 'import os, sparkmagic; print(os.path.dirname(sparkmagic.__file__))')
    "$VENV/bin/jupyter-kernelspec" install "$SM_DIR/kernels/pysparkkernel" --sys-prefix >/dev/null
    echo "install: $(since "$t") s"
fi
"$VENV/bin/jupyter-kernelspec" list | grep pysparkkernel >/dev/null || { echo "pysparkkernel not installed in $VENV" >&2; exit 1; }

# ---- server --------------------------------------------------------------------------------------
WORKER_PYTHON=${WORKER_PYTHON:-$PY}
t=$(now)
"$PY" "$ROOT/tests/harness/livy_test_server.py" --host 127.0.0.1 --port 0 --python "$WORKER_PYTHON" \
    --log-dir "$OUT_DIR/livy-logs" >"$OUT_DIR/server.url" 2>"$OUT_DIR/server.err" &
SERVER_PID=$!
cleanup() {
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
for _ in $(seq 1 100); do [ -s "$OUT_DIR/server.url" ] && break; sleep 0.05; done
LIVY_URL=$(head -n 1 "$OUT_DIR/server.url")
[ -n "$LIVY_URL" ] || { echo "server did not start:" >&2; cat "$OUT_DIR/server.err" >&2; exit 1; }
echo "server: $LIVY_URL (up in $(since "$t") s)"
# The config EMR's headless runs use (bootstrap/run_notebook_on_master.sh makes it the same way).
"$PY" "$ROOT/bootstrap/sparkmagic_config.py" headless --base "$HERE/base_config.json" --livy-url "$LIVY_URL" \
    --startup-timeout 180 --out "$SPARKMAGIC_CONF_DIR/config.json"

# ---- step 3a: good run -------------------------------------------------------------------------
t=$(now)
"$VENV/bin/papermill" -k pysparkkernel --no-progress-bar \
    "$HERE/demo.ipynb" "$OUT_DIR/demo.out.ipynb" -p n 5 >"$OUT_DIR/papermill-ok.log" 2>&1 \
    || { echo "papermill failed on the good run:" >&2; tail -n 30 "$OUT_DIR/papermill-ok.log" >&2; exit 1; }
echo "good run: $(since "$t") s"
"$PY" - "$OUT_DIR/demo.out.ipynb" <<'EOF'
import json
import sys

nb = json.load(open(sys.argv[1]))
texts, mimes = [], set()
for cell in nb["cells"]:
    for out in cell.get("outputs", []):
        texts.append("".join(out.get("text", "")))
        mimes.update(out.get("data", {}))
        texts.append("".join(out.get("data", {}).get("text/plain", "")))
blob = "\n".join(texts)
injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
checks = {
    "parameters injected as Python": bool(injected) and "n = 5" in "".join(injected[0]["source"]),
    "count printed (100)": "\n100" in blob,
    "conf applied (arrow batch = 64)": "arrow batch = 64" in blob,
    "image/png from %matplot": "image/png" in mimes,
    "%%sql -o + %%local": "rows on the notebook host: 5" in blob,
}
for name, ok in checks.items():
    print(f"  {'ok ' if ok else 'FAIL'} {name}")
sys.exit(0 if all(checks.values()) else 1)
EOF

# ---- step 3b: failing run must fail --------------------------------------------------------------
t=$(now)
if "$VENV/bin/papermill" -k pysparkkernel --no-progress-bar \
    "$HERE/demo.ipynb" "$OUT_DIR/demo.fail.ipynb" -p fail True >"$OUT_DIR/papermill-fail.log" 2>&1; then
    echo "FAIL: papermill exited 0 although a cell raised" >&2
    exit 1
fi
grep -q "ValueError: boom" "$OUT_DIR/papermill-fail.log" || { echo "FAIL: no 'ValueError: boom' in the log" >&2; exit 1; }
echo "failing run: exit non-zero as expected ($(since "$t") s)"

# ---- stop: every process of the server must be gone -----------------------------------------------
descendants() {  # all descendants of $1
    local kids
    kids=$(ps -o pid= --ppid "$1" 2>/dev/null || true)
    for k in $kids; do echo "$k"; descendants "$k"; done
}
TREE=$(descendants "$SERVER_PID")
t=$(now)
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || true
echo "server stop: $(since "$t") s"
LEFT=""
for p in $TREE; do kill -0 "$p" 2>/dev/null && LEFT="$LEFT $p"; done
if [ -n "$LEFT" ]; then
    echo "FAIL: processes left behind:$LEFT" >&2
    LEFT=${LEFT# }
    ps -o pid,cmd -p "${LEFT// /,}" >&2 || true
    exit 1
fi
grep -h "Spark ready" "$OUT_DIR"/livy-logs/*.log | sed 's/^/  session: /'
echo "all good; outputs in $OUT_DIR"
