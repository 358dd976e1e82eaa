#!/usr/bin/env bash
# EMR bootstrap action for p8utils -- Amazon EMR 7.x (Spark 3.5.x on Amazon Linux 2023).
#
# EMR runs bootstrap actions on every node (primary, core, task; also nodes added later), as user
# `hadoop`, BEFORE Hadoop/Spark are installed; a failing action fails the cluster start. So this
# script only prepares Python and files, with sudo where it writes outside $HOME:
#
#   1. checks the node (Amazon Linux 2023, EMR 7.x if the release label is readable), picks the Python
#      (--python: auto = /usr/bin/python3.11, and FAILS where the node lacks it; or 3.11, 3.9, a path)
#      and the requirements file made for it (each --requirements file names its Python versions in a
#      `# python-versions:` line);
#   2. creates the virtualenv PREFIX/venv (default /opt/p8utils/venv) from that Python and installs
#      the pinned packages, then the p8utils wheel with --no-deps, then runs `pip check` and imports
#      everything once (fails here rather than in a Spark task);
#   3. writes PREFIX/p8utils_main.py, the stable file to spark-submit (= `python -m p8utils`);
#   4. optionally copies model weight files into KERAS_HOME/models (default /opt/keras/models), the
#      Keras download cache, so executors in private subnets never try to download them;
#   5. writes PREFIX/INSTALLED.txt (what was installed, when, from where) and PREFIX/venv/p8utils-python.json,
#      the Python choice (what was asked, the interpreter, its version, the pin file); the launcher prints
#      it at every run, and it lives and goes with the venv it describes.
#
# configurations.json points PySpark (PYSPARK_PYTHON / spark.pyspark.python) at PREFIX/venv/bin/python
# and exports KERAS_HOME to drivers and executors: YARN containers do not run as `hadoop`, so a
# per-user ~/.keras would not be found; KERAS_HOME is shared, world-readable and (sticky) writable
# because Keras ignores a cache folder it cannot write to.
#
# Idempotent: re-running with the same arguments reuses the venv (pip: "already satisfied"),
# reinstalls the p8utils wheel, and skips weight files that are already identical.
#
# Usage (as an EMR bootstrap action; create_cluster.sh builds these arguments):
#   emr_bootstrap.sh --wheel s3://BUCKET/.../p8utils-0.1.0-py3-none-any.whl \
#                    --requirements s3://BUCKET/.../requirements-emr.txt \
#                    [--requirements s3://BUCKET/.../requirements-emr-py39.txt] \
#                    [--weights s3://BUCKET/.../mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5]...
#                    [--python auto|3.11|3.9|PATH] [--prefix /opt/p8utils] [--keras-home /opt/keras]
#                    [--pip-index URL | --wheelhouse s3://BUCKET/.../wheelhouse/]
#
#   --python auto (the default on EMR) takes /usr/bin/python3.11 if the node has it and otherwise FAILS
#   (exit 1, before installing anything) saying to pass --cluster-python 3.9 (or 3.11) explicitly:
#   auto never falls back to 3.9 silently, since 3.9 is another pin set (older TensorFlow/Keras, no
#   ai-edge-litert) than the 3.11 one the README promises. Every node of a cluster runs the same AMI, so
#   every node decides the same way (PySpark refuses a worker Python that differs from the driver's).
#   --python 3.11 installs the AL2023 package python3.11 if it is missing (needs the AL2023 repositories:
#   internet or an S3 gateway endpoint) and fails if it cannot; --python 3.9 takes /usr/bin/python3.9.
#   --requirements is repeatable: the file whose `# python-versions:` line names the chosen Python is
#   installed.
#
# Local test mode (P8_BOOTSTRAP_LOCAL=1): identical steps, except that sources must be local paths
# copied with `cp` (no `aws s3 cp`), nothing runs under sudo, the Amazon Linux/EMR checks are
# skipped, and --prefix and --keras-home are mandatory (so a test never touches /opt); there,
# P8_BOOTSTRAP_PYTHON_DIR replaces /usr/bin as the folder where auto, 3.11 and 3.9 look for
# pythonX.Y (tests put a python3.11 there, or none). Example:
#   P8_BOOTSTRAP_LOCAL=1 bootstrap/emr_bootstrap.sh --prefix /tmp/p8 --keras-home /tmp/p8/keras \
#       --python python3.11 --wheel dist/p8utils-0.1.0-py3-none-any.whl \
#       --requirements bootstrap/requirements-emr.txt
set -Eeuo pipefail
umask 022

readonly PROG="p8-bootstrap"
START_SECONDS=$SECONDS

log() { printf '%s [%s] %s\n' "$(date -u '+%Y-%m-%dT%H:%M:%SZ')" "$PROG" "$*"; }
die() {
    log "ERROR: $*" >&2
    exit 1
}
on_err() {
    # Report once, from the main shell (errtrace also runs this trap inside $(...) subshells).
    if [[ $BASH_SUBSHELL -eq 0 ]]; then
        log "ERROR: command failed with exit code $1 at line $2: $3" >&2
        log "ERROR: bootstrap FAILED; the EMR cluster will not start. See the messages above." >&2
    fi
    exit "$1"
}
trap 'on_err $? $LINENO "$BASH_COMMAND"' ERR

usage() {
    sed -n '/^# Usage/,/^set -Eeuo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------
LOCAL_MODE=${P8_BOOTSTRAP_LOCAL:-0}
SYSTEM_PY_DIR=/usr/bin
WHEEL=""
REQUIREMENTS=()
WEIGHTS=()
PYTHON_BIN=""
PREFIX=""
KERAS_HOME_DIR=""
PIP_INDEX=""
WHEELHOUSE=""

need_value() { [[ $# -ge 2 && -n $2 ]] || die "option $1 needs a value (see --help)"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --wheel) need_value "$@"; WHEEL=$2; shift 2 ;;
        --requirements) need_value "$@"; REQUIREMENTS+=("$2"); shift 2 ;;
        --weights) need_value "$@"; WEIGHTS+=("$2"); shift 2 ;;
        --python) need_value "$@"; PYTHON_BIN=$2; shift 2 ;;
        --prefix) need_value "$@"; PREFIX=$2; shift 2 ;;
        --keras-home) need_value "$@"; KERAS_HOME_DIR=$2; shift 2 ;;
        --pip-index) need_value "$@"; PIP_INDEX=$2; shift 2 ;;
        --wheelhouse) need_value "$@"; WHEELHOUSE=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

[[ $LOCAL_MODE == 0 || $LOCAL_MODE == 1 ]] || die "P8_BOOTSTRAP_LOCAL must be 0 or 1 (got '$LOCAL_MODE')"
[[ -n $WHEEL ]] || die "--wheel is required: the S3 URI (or local path in local mode) of the p8utils wheel"
[[ ${#REQUIREMENTS[@]} -gt 0 ]] || die "--requirements is required: the S3 URI (or local path) of requirements-emr.txt (repeatable)"
[[ $(basename "$WHEEL") == p8utils-*.whl ]] ||
    die "--wheel must name a p8utils wheel file (p8utils-<version>-<tags>.whl), got '$WHEEL'"
[[ -z $PIP_INDEX || -z $WHEELHOUSE ]] || die "give --pip-index or --wheelhouse, not both"

if [[ $LOCAL_MODE == 1 ]]; then
    [[ -n $PREFIX ]] || die "local mode (P8_BOOTSTRAP_LOCAL=1) needs --prefix DIR (refusing to write to /opt)"
    [[ -n $KERAS_HOME_DIR ]] || die "local mode (P8_BOOTSTRAP_LOCAL=1) needs --keras-home DIR (refusing to write to /opt)"
    PYTHON_BIN=${PYTHON_BIN:-python3}
    SYSTEM_PY_DIR=${P8_BOOTSTRAP_PYTHON_DIR:-$SYSTEM_PY_DIR}
else
    PREFIX=${PREFIX:-/opt/p8utils}
    KERAS_HOME_DIR=${KERAS_HOME_DIR:-/opt/keras}
    PYTHON_BIN=${PYTHON_BIN:-auto}
fi
[[ $PREFIX == /* && $KERAS_HOME_DIR == /* ]] || die "--prefix and --keras-home must be absolute paths"
VENV=$PREFIX/venv
LAUNCHER=$PREFIX/p8utils_main.py
# The record of the Python choice, inside the venv: recreating the venv removes the record of the old one.
PYTHON_RECORD=$VENV/p8utils-python.json
PYTHON_ASKED=$PYTHON_BIN

# Run a command as root on EMR (the action runs as `hadoop`), as the current user in local mode.
as_root() {
    if [[ $LOCAL_MODE == 1 || $EUID -eq 0 ]]; then
        "$@"
    else
        sudo -n "$@"
    fi
}

# Copy one file from S3 (EMR) or a local path to DEST.
fetch() {
    local src=$1 dest=$2
    case "$src" in
        s3://*)
            [[ $LOCAL_MODE == 0 ]] || die "local mode copies local files only; got S3 URI '$src'"
            log "aws s3 cp $src -> $dest"
            aws s3 cp --only-show-errors "$src" "$dest" || die "could not download '$src' (does it exist? may the instance profile read it?)"
            ;;
        *)
            src=${src#file://}
            [[ -f $src ]] || die "file not found: '$src'"
            log "cp $src -> $dest"
            cp -- "$src" "$dest"
            ;;
    esac
    [[ -s $dest ]] || die "'$src' is empty"
}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/p8-bootstrap.XXXXXX")
trap 'rm -rf -- "$WORK"' EXIT

log "starting (mode: $([[ $LOCAL_MODE == 1 ]] && echo local-test || echo emr), user: $(id -un), host: $(hostname))"
log "prefix=$PREFIX keras_home=$KERAS_HOME_DIR python=$PYTHON_BIN wheel=$WHEEL requirements=${REQUIREMENTS[*]}"

# ---------------------------------------------------------------------------------------------
# 1. Node and Python checks
# ---------------------------------------------------------------------------------------------
if [[ $LOCAL_MODE == 0 ]]; then
    [[ -r /etc/os-release ]] || die "/etc/os-release missing: this does not look like an EMR node"
    # shellcheck source=/dev/null
    os=$(. /etc/os-release && printf '%s %s' "${ID:-unknown}" "${VERSION_ID:-unknown}")
    [[ $os == "amzn 2023" ]] ||
        die "this node runs '$os', expected 'amzn 2023' (Amazon Linux 2023 = EMR 7.x). The pins in requirements-emr.txt are for EMR 7.x; use --release-label emr-7.x"
    label=""
    for info in /mnt/var/lib/info/extraInstanceData.json /emr/instance-controller/lib/info/extraInstanceData.json; do
        if [[ -r $info ]]; then
            label=$(grep -o '"releaseLabel"[[:space:]]*:[[:space:]]*"[^"]*"' "$info" | head -n 1 | sed 's/.*"\([^"]*\)"$/\1/' || true)
            [[ -z $label ]] || break
        fi
    done
    if [[ -n $label ]]; then
        [[ $label == emr-7.* ]] || die "EMR release '$label' is not 7.x; the pins target EMR 7.x (Spark 3.5, AL2023)"
        log "EMR release: $label"
    else
        log "EMR release label not readable on this node; relying on the OS and Python checks"
    fi
    command -v sudo >/dev/null || die "sudo not found (EMR bootstrap actions run as hadoop and need sudo)"
    for src in "$WHEEL" "${REQUIREMENTS[@]}" "$WHEELHOUSE" "${WEIGHTS[@]}"; do
        if [[ $src == s3://* ]]; then
            command -v aws >/dev/null || die "the aws CLI is needed to copy '$src' but is not on PATH"
        fi
    done
fi

# --python auto|3.11|3.9 name AL2023's interpreters; anything else is a path or a command name.
case "$PYTHON_BIN" in
    auto)
        # auto promises the 3.11 pin set (bootstrap/README.md): without 3.11, fail rather than fall back.
        [[ -x $SYSTEM_PY_DIR/python3.11 ]] ||
            die "--python auto (create_cluster.sh --cluster-python auto) needs $SYSTEM_PY_DIR/python3.11, which this node does not have; NOT falling back to Python 3.9 silently. Re-create the cluster with --cluster-python 3.9 explicitly (the 3.9 pin set: older TensorFlow/Keras, no ai-edge-litert) or --cluster-python 3.11 (installs the AL2023 package python3.11; needs the AL2023 repositories)"
        PYTHON_BIN=$SYSTEM_PY_DIR/python3.11
        log "--python auto: $PYTHON_BIN found"
        ;;
    3.11 | 3.9)
        version=$PYTHON_BIN
        PYTHON_BIN=$SYSTEM_PY_DIR/python$version
        if [[ ! -x $PYTHON_BIN && $LOCAL_MODE == 0 && $version == 3.11 ]]; then
            log "installing python3.11 (AL2023 package; --python 3.11 asked for it)"
            as_root dnf install -y -q python3.11 python3.11-pip ||
                die "could not install python3.11 with dnf (no access to the AL2023 repositories?); use --python 3.9"
        fi
        ;;
esac
PYTHON_PATH=$(command -v "$PYTHON_BIN") || die "Python interpreter '$PYTHON_BIN' not found"
PY_VERSION=$("$PYTHON_PATH" -c 'import sys; print("%d.%d" % sys.version_info[:2])') ||
    die "'$PYTHON_PATH' does not run"
[[ $PYTHON_ASKED != auto || $PY_VERSION == 3.11 ]] ||
    die "--python auto: $PYTHON_PATH is Python $PY_VERSION, not 3.11; pass --cluster-python 3.9 or a path explicitly"

# The requirements file made for this Python: the one whose python-versions line names PY_VERSION.
REQ_FILE="" REQ_SOURCE="" SUPPORTED=""
for i in "${!REQUIREMENTS[@]}"; do
    candidate=$WORK/requirements-$i.txt
    fetch "${REQUIREMENTS[$i]}" "$candidate"
    versions=$(sed -n 's/^#[[:space:]]*python-versions:[[:space:]]*//p' "$candidate" | head -n 1)
    [[ -n $versions ]] || die "requirements file '${REQUIREMENTS[$i]}' has no '# python-versions: X.Y ...' line"
    SUPPORTED+="${SUPPORTED:+ }$versions"
    for v in $versions; do
        if [[ -z $REQ_FILE && $v == "$PY_VERSION" ]]; then
            REQ_FILE=$candidate
            REQ_SOURCE=${REQUIREMENTS[$i]}
        fi
    done
done
[[ -n $REQ_FILE ]] ||
    die "Python $PY_VERSION ($PYTHON_PATH) is not one the pins were made for ($SUPPORTED). Pass --python with a supported interpreter (3.11 or 3.9 on EMR 7.x) or re-pin the requirements"
log "Python $PY_VERSION at $PYTHON_PATH: installing $(basename "$REQ_SOURCE") (pins made for: $SUPPORTED)"

# ---------------------------------------------------------------------------------------------
# 2. Virtualenv with the pinned packages, then p8utils
# ---------------------------------------------------------------------------------------------
WHEEL_FILE=$WORK/$(basename "$WHEEL")
fetch "$WHEEL" "$WHEEL_FILE"

# Download and check every input before the long install, so a bad URI fails in seconds.
WEIGHT_FILES=()
for src in "${WEIGHTS[@]}"; do
    tmp=$WORK/weights/$(basename "$src")
    mkdir -p -- "$WORK/weights"
    fetch "$src" "$tmp"
    if [[ $tmp == *.h5 || $tmp == *.hdf5 ]]; then
        "$PYTHON_PATH" -c 'import sys; sys.exit(open(sys.argv[1], "rb").read(8) != b"\x89HDF\r\n\x1a\n")' "$tmp" ||
            die "'$src' is not an HDF5 file (wrong object or an error page?)"
    fi
    WEIGHT_FILES+=("$tmp")
done

pip_source=()
if [[ -n $WHEELHOUSE ]]; then
    if [[ $WHEELHOUSE == s3://* ]]; then
        [[ $LOCAL_MODE == 0 ]] || die "local mode copies local files only; got S3 URI '$WHEELHOUSE'"
        log "aws s3 sync ${WHEELHOUSE%/}/ -> $WORK/wheelhouse"
        aws s3 sync --only-show-errors "${WHEELHOUSE%/}/" "$WORK/wheelhouse" || die "could not download the wheelhouse '$WHEELHOUSE'"
        pip_source=(--no-index --find-links "$WORK/wheelhouse")
    else
        [[ -d ${WHEELHOUSE#file://} ]] || die "wheelhouse folder not found: '$WHEELHOUSE'"
        pip_source=(--no-index --find-links "${WHEELHOUSE#file://}")
    fi
    log "installing offline from the wheelhouse (pip --no-index)"
elif [[ -n $PIP_INDEX ]]; then
    pip_source=(--index-url "$PIP_INDEX")
    log "installing from package index $PIP_INDEX"
fi

if [[ -x $VENV/bin/python ]]; then
    venv_version=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' || echo broken)
    if [[ $venv_version != "$PY_VERSION" ]]; then
        log "existing $VENV has Python $venv_version, not $PY_VERSION: recreating it"
        as_root rm -rf -- "$VENV"
    else
        log "reusing existing virtualenv $VENV (Python $venv_version)"
    fi
fi
if [[ ! -x $VENV/bin/python ]]; then
    log "creating virtualenv $VENV"
    as_root mkdir -p -- "$PREFIX"
    if ! as_root "$PYTHON_PATH" -m venv "$VENV"; then
        # AL2023 ships ensurepip's wheels in python3.X-pip; try it once before giving up.
        venv_fixed=0
        if [[ $LOCAL_MODE == 0 ]] && command -v dnf >/dev/null; then
            log "'$PYTHON_PATH -m venv' failed: installing python$PY_VERSION-pip and retrying"
            as_root rm -rf -- "$VENV"
            if as_root dnf install -y -q "python$PY_VERSION-pip" && as_root "$PYTHON_PATH" -m venv "$VENV"; then
                venv_fixed=1
            fi
        fi
        [[ $venv_fixed == 1 ]] ||
            die "'$PYTHON_PATH -m venv' failed (on Amazon Linux install python$PY_VERSION-pip; see the message above)"
    fi
fi

pip_run() {
    local opts=(--quiet --progress-bar off)
    # Root disk space on EMR nodes is small: no pip cache there. Local tests keep the cache.
    [[ $LOCAL_MODE == 1 ]] || opts+=(--no-cache-dir)
    as_root env PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_ROOT_USER_ACTION=ignore \
        "$VENV/bin/python" -m pip "$@" "${opts[@]}"
}

log "pip install -r $(basename "$REQ_SOURCE") (binary wheels only)"
pip_run install --only-binary=:all: "${pip_source[@]}" -r "$REQ_FILE" ||
    die "installing the pinned requirements failed (see pip output above). Private subnet? use --wheelhouse or --pip-index"

log "pip install --no-deps $(basename "$WHEEL_FILE")"
pip_run install --no-deps --force-reinstall "${pip_source[@]}" "$WHEEL_FILE" ||
    die "installing the p8utils wheel failed (see pip output above; 'requires a different Python' means the wheel's requires-python excludes Python $PY_VERSION)"

# The venv holds only our packages: any inconsistency pip reports is ours. PySpark/py4j come from
# EMR's Spark (on PYTHONPATH at run time), so lines about them are expected and ignored.
if ! check_out=$(as_root "$VENV/bin/python" -m pip check 2>&1); then
    problems=$(grep -viE '\b(pyspark|py4j)\b' <<<"$check_out" || true)
    [[ -z $problems ]] || die "pip check: the pins do not satisfy p8utils' requirements:"$'\n'"$problems"
fi
log "pip check: consistent"

# ---------------------------------------------------------------------------------------------
# 3. spark-submit entry point (a stable path, whatever site-packages is called)
# ---------------------------------------------------------------------------------------------
cat >"$WORK/p8utils_main.py" <<'PY'
"""spark-submit entry point for the p8utils CLI (written by bootstrap/emr_bootstrap.sh).

    spark-submit --deploy-mode client /opt/p8utils/p8utils_main.py run --input ... --output ...

behaves exactly like ``python -m p8utils run ...`` with the p8utils of /opt/p8utils/venv.
"""

import json
import os
import runpy
import sys

# The interpreter and pin set of this run, in the step's (or the driver's) log: what the bootstrap chose
# (p8utils-python.json, next to this Python's venv) and what actually runs.
_record = os.path.join(sys.prefix, "p8utils-python.json")
try:
    with open(_record) as _f:
        _chosen = json.load(_f)
except (OSError, ValueError):
    _chosen = {}
sys.stderr.write("p8utils launcher: python %s at %s; pin set %s (bootstrap: --python %s -> %s; %s)\n" % (
    sys.version.split()[0], sys.executable, _chosen.get("requirements", "unknown"), _chosen.get("asked", "?"),
    _chosen.get("interpreter", "?"), _record if _chosen else "no record at " + _record))
sys.stderr.flush()

runpy.run_module("p8utils", run_name="__main__", alter_sys=True)
PY
as_root install -m 0644 "$WORK/p8utils_main.py" "$LAUNCHER"
log "wrote $LAUNCHER"

# ---------------------------------------------------------------------------------------------
# 4. Keras cache with preloaded weights
# ---------------------------------------------------------------------------------------------
as_root mkdir -p -- "$KERAS_HOME_DIR/models"
# Sticky world-writable like /tmp: Keras falls back to /tmp/.keras (and re-downloads) when the
# cache root is not writable by the user running it (yarn, livy, hadoop...).
as_root chmod 1777 -- "$KERAS_HOME_DIR" "$KERAS_HOME_DIR/models"
if [[ ! -e $KERAS_HOME_DIR/keras.json ]]; then
    printf '%s\n' '{"floatx": "float32", "epsilon": 1e-07, "backend": "tensorflow", "image_data_format": "channels_last"}' \
        >"$WORK/keras.json"
    as_root install -m 0644 "$WORK/keras.json" "$KERAS_HOME_DIR/keras.json"
fi
for tmp in "${WEIGHT_FILES[@]}"; do
    name=$(basename "$tmp")
    dest=$KERAS_HOME_DIR/models/$name
    if [[ -f $dest ]] && cmp -s -- "$tmp" "$dest"; then
        log "weights $name already present and identical"
    else
        as_root install -m 0644 "$tmp" "$dest"
        log "weights $name -> $dest ($(wc -c <"$dest" | tr -d ' ') bytes)"
    fi
done
[[ ${#WEIGHT_FILES[@]} -gt 0 ]] || log "no --weights given: models need internet access or --weights offline/PATH"

# ---------------------------------------------------------------------------------------------
# 5. Smoke test as the invoking (non-root) user, and a record of what was installed
# ---------------------------------------------------------------------------------------------
log "import check with $VENV/bin/python"
versions=$(TF_CPP_MIN_LOG_LEVEL=2 KERAS_HOME=$KERAS_HOME_DIR "$VENV/bin/python" - <<'PY'
import importlib
import sys

names = ["numpy", "pandas", "pyarrow", "PIL", "tensorflow", "keras", "h5py", "matplotlib", "p8utils"]
out = ["python=" + sys.version.split()[0]]
for name in names:
    module = importlib.import_module(name)
    out.append("%s=%s" % (name, getattr(module, "__version__", "?")))
print(" ".join(out))
PY
) || die "importing the installed packages failed (see the traceback above)"
log "versions: $versions"

{
    echo "# written by emr_bootstrap.sh on $(date -u '+%Y-%m-%dT%H:%M:%SZ') on $(hostname)"
    echo "wheel: $WHEEL sha256=$(sha256sum "$WHEEL_FILE" | cut -d' ' -f1)"
    echo "requirements: $REQ_SOURCE"
    for src in "${WEIGHTS[@]}"; do echo "weights: $src -> $KERAS_HOME_DIR/models/$(basename "$src")"; done
    echo "python: $PYTHON_PATH ($PY_VERSION) venv: $VENV"
    echo "launcher: $LAUNCHER"
    echo "imports: $versions"
    echo "# pip freeze:"
    "$VENV/bin/python" -m pip freeze --disable-pip-version-check
} >"$WORK/INSTALLED.txt"
as_root install -m 0644 "$WORK/INSTALLED.txt" "$PREFIX/INSTALLED.txt"

# The Python choice, last: its presence means a complete install with that interpreter and pin set.
"$VENV/bin/python" - "$WORK/p8utils-python.json" "$PYTHON_ASKED" "$PYTHON_PATH" "$VENV/bin/python" \
    "$(basename "$REQ_SOURCE")" "$REQ_SOURCE" "$(sha256sum "$REQ_FILE" | cut -d' ' -f1)" \
    "$(date -u '+%Y-%m-%dT%H:%M:%SZ')" <<'PY' || die "could not write the Python record"
import json
import platform
import sys

out, asked, interpreter, venv_python, name, source, sha256, written = sys.argv[1:]
record = {"asked": asked, "interpreter": interpreter, "version": platform.python_version(),
          "venv_python": venv_python, "requirements": name, "requirements_source": source,
          "requirements_sha256": sha256, "written": written}
with open(out, "w") as f:
    json.dump(record, f, indent=1, sort_keys=True)
    f.write("\n")
PY
as_root install -m 0644 "$WORK/p8utils-python.json" "$PYTHON_RECORD"
log "Python choice recorded in $PYTHON_RECORD: --python $PYTHON_ASKED -> $PYTHON_PATH ($PY_VERSION), $(basename "$REQ_SOURCE")"

log "done in $((SECONDS - START_SECONDS)) s: PYSPARK_PYTHON=$VENV/bin/python KERAS_HOME=$KERAS_HOME_DIR"
