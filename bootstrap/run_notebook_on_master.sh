#!/usr/bin/env bash
# Run a notebook headless on the EMR primary node with papermill and the sparkmagic PySpark kernel.
#
# Usage (on the primary node, as hadoop -- by SSH, or as an EMR step: bootstrap/run_step.sh notebook):
#   run_notebook_on_master.sh --notebook s3://B/.../02_emr_full_run.ipynb \
#       --output s3://B/runs/r1/notebooks/02_emr_full_run.executed.ipynb \
#       -p input_uri s3://B/data/ -p output_uri s3://B/runs/r1/ [-p NAME VALUE]... [options]
#
# Options (default in brackets):
#   --notebook URI|PATH      notebook to run (required)
#   --output URI|PATH        where to write the executed notebook (required); written even when a
#                            cell fails, so the error is visible in it
#   -p NAME VALUE            papermill parameter (repeatable; injected after the `parameters` cell)
#   --kernel NAME            Jupyter kernel [pysparkkernel] (sparkmagic PySpark, talks to Livy)
#   --container NAME         Docker container of EMR's JupyterHub [jupyterhub]
#   --no-docker              run papermill on this host instead of inside the container
#   --python PATH            Python that runs papermill [container: /opt/conda/bin/python if
#                            present, else python3; --no-docker: python3]
#   --papermill SPEC         pip requirement installed if papermill is missing [papermill==2.6.0]
#   --pip-index URL          package index for that install (private subnets)
#   --livy-url URL           Livy endpoint if no sparkmagic config exists [http://<this host>:8998]
#   --startup-timeout SEC    Livy session start timeout for this run [600]
#   --dry-run                print the commands instead of running them
#
# Why a separate sparkmagic config: papermill only sees a failure if sparkmagic raises it, which
# it does with all_errors_are_fatal and shutdown_session_on_spark_statement_errors set to true.
# The script copies the existing sparkmagic config (JupyterHub's /etc/jupyter/conf/config.json on
# EMR, or ~/.sparkmagic/config.json), forces those two settings and a longer Livy start timeout,
# and points SPARKMAGIC_CONF_DIR at the copy for this run only: interactive users are unaffected.
# Exit status: papermill's (0 = every cell ran).
set -Eeuo pipefail

log() { printf '%s [run-notebook] %s\n' "$(date -u '+%Y-%m-%dT%H:%M:%SZ')" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}
usage() { sed -n '2,/^set -Eeuo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }
shquote() {
    local s=$1
    if [[ -n $s && $s =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
        printf '%s' "$s"
    elif [[ $s == *[$'\n\t']* ]]; then # bash $'...' keeps a multi-line word on one line
        s=${s//\\/\\\\}
        s=${s//\'/\\\'}
        s=${s//$'\n'/\\n}
        s=${s//$'\t'/\\t}
        printf "\$'%s'" "$s"
    else
        printf "'%s'" "${s//\'/\'\\\'\'}"
    fi
}
print_cmd() {
    local out="" word
    for word in "$@"; do out+="${out:+ }$(shquote "$word")"; done
    printf '%s\n' "$out"
}

NOTEBOOK="" OUTPUT="" PARAMS=() KERNEL=pysparkkernel CONTAINER=jupyterhub USE_DOCKER=1 PY=""
PAPERMILL_SPEC=papermill==2.6.0 PIP_INDEX="" LIVY_URL="" STARTUP_TIMEOUT=600 DRY_RUN=0

need_value() { [[ $# -ge 2 && -n $2 ]] || die "option $1 needs a value (see --help)"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --notebook) need_value "$@"; NOTEBOOK=$2; shift 2 ;;
        --output) need_value "$@"; OUTPUT=$2; shift 2 ;;
        -p | --parameter)
            [[ $# -ge 3 && -n $2 ]] || die "$1 needs NAME VALUE"
            PARAMS+=(-p "$2" "$3")
            shift 3
            ;;
        --kernel) need_value "$@"; KERNEL=$2; shift 2 ;;
        --container) need_value "$@"; CONTAINER=$2; shift 2 ;;
        --no-docker) USE_DOCKER=0; shift ;;
        --python) need_value "$@"; PY=$2; shift 2 ;;
        --papermill) need_value "$@"; PAPERMILL_SPEC=$2; shift 2 ;;
        --pip-index) need_value "$@"; PIP_INDEX=$2; shift 2 ;;
        --livy-url) need_value "$@"; LIVY_URL=$2; shift 2 ;;
        --startup-timeout) need_value "$@"; STARTUP_TIMEOUT=$2; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ -n $NOTEBOOK ]] || die "--notebook URI|PATH is required"
[[ -n $OUTPUT ]] || die "--output URI|PATH is required (where the executed notebook goes)"
[[ $STARTUP_TIMEOUT =~ ^[0-9]+$ ]] || die "--startup-timeout must be seconds"
LIVY_URL=${LIVY_URL:-http://$(hostname -f 2>/dev/null || hostname):8998}

RUN_ID=p8nb-$(date -u '+%Y%m%dT%H%M%SZ')-$$
if [[ $DRY_RUN == 1 ]]; then
    HOST_DIR=${TMPDIR:-/tmp}/$RUN_ID                            # on this host
else
    HOST_DIR=$(mktemp -d "${TMPDIR:-/tmp}/$RUN_ID.XXXXXX")
fi
if [[ $USE_DOCKER == 1 ]]; then RUN_DIR=/tmp/$RUN_ID; else RUN_DIR=$HOST_DIR; fi # where papermill runs
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    # The executed notebook has been copied to --output; the working copies go.
    [[ $DRY_RUN == 1 ]] && return 0
    rm -rf -- "$HOST_DIR"
    if [[ $USE_DOCKER == 1 ]]; then sudo docker exec "$CONTAINER" rm -rf -- "$RUN_DIR" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

# run CMD...: print it (dry run) or run it. in_env CMD...: the same, inside the container if any.
run() {
    if [[ $DRY_RUN == 1 ]]; then
        print_cmd "$@"
    else
        log "+ $(print_cmd "$@")"
        "$@"
    fi
}
in_env() {
    if [[ $USE_DOCKER == 1 ]]; then
        run sudo docker exec -e "SPARKMAGIC_CONF_DIR=$RUN_DIR" "$CONTAINER" "$@"
    else
        run env "SPARKMAGIC_CONF_DIR=$RUN_DIR" "$@"
    fi
}
copy() { # copy SRC DEST, either side may be s3://
    if [[ $1 == s3://* || $2 == s3://* ]]; then
        run aws s3 cp --only-show-errors "$1" "$2"
    else
        run cp -- "$1" "$2"
    fi
}

# ---- environment checks -----------------------------------------------------------------------
if [[ $USE_DOCKER == 1 ]]; then
    if [[ $DRY_RUN == 0 ]]; then
        command -v docker >/dev/null || die "docker not found: is this the EMR primary node of a cluster with JupyterHub? (or use --no-docker)"
        state=$(sudo docker inspect -f '{{.State.Running}}' "$CONTAINER" 2>/dev/null) || state=missing
        [[ $state == true ]] || die "container '$CONTAINER' is not running (state: $state); JupyterHub must be among the cluster's applications"
    fi
    if [[ -z $PY ]]; then
        if [[ $DRY_RUN == 1 ]]; then
            PY=/opt/conda/bin/python
        else
            PY=$(sudo docker exec "$CONTAINER" sh -c 'command -v /opt/conda/bin/python || command -v python3') ||
                die "no Python found in container '$CONTAINER'"
        fi
    fi
else
    PY=${PY:-python3}
fi
log "notebook=$NOTEBOOK output=$OUTPUT kernel=$KERNEL python=$PY $([[ $USE_DOCKER == 1 ]] && echo "container=$CONTAINER" || echo "host")"

# ---- inputs -------------------------------------------------------------------------------------
copy "$NOTEBOOK" "$HOST_DIR/input.ipynb"
if [[ $USE_DOCKER == 1 ]]; then
    run sudo docker exec "$CONTAINER" mkdir -p "$RUN_DIR"
    run sudo docker cp "$HOST_DIR/input.ipynb" "$CONTAINER:$RUN_DIR/input.ipynb"
fi

# ---- papermill and the kernel -------------------------------------------------------------------
if [[ $DRY_RUN == 1 ]] || ! in_env "$PY" -c 'import papermill' 2>/dev/null; then
    pip_args=(-m pip install --quiet --disable-pip-version-check)
    [[ -z $PIP_INDEX ]] || pip_args+=(--index-url "$PIP_INDEX")
    in_env "$PY" "${pip_args[@]}" "$PAPERMILL_SPEC" || die "could not install $PAPERMILL_SPEC (no internet? use --pip-index)"
fi
# shellcheck disable=SC2016  # Python code, not shell
kernel_check='import sys
from jupyter_client.kernelspec import KernelSpecManager
names = sorted(KernelSpecManager().find_kernel_specs())
if sys.argv[1] not in names:
    sys.exit("kernel %r not installed; available: %s" % (sys.argv[1], ", ".join(names)))'
in_env "$PY" -c "$kernel_check" "$KERNEL" || die "the '$KERNEL' kernel is missing (see above)"

# ---- sparkmagic config for this run -------------------------------------------------------------
# shellcheck disable=SC2016  # Python code, not shell
config_code='import json, os, sys
run_dir, livy_url, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3])
candidates = [os.path.join(os.environ.get("P8_BASE_SPARKMAGIC_DIR", "/etc/jupyter/conf"), "config.json"),
              os.path.expanduser("~/.sparkmagic/config.json")]
config, source = {}, None
for path in candidates:
    if os.path.isfile(path):
        with open(path) as f:
            config, source = json.load(f), path
        break
if not config.get("kernel_python_credentials"):
    config["kernel_python_credentials"] = {"username": "", "password": "", "url": livy_url, "auth": "None"}
config["all_errors_are_fatal"] = True
config["shutdown_session_on_spark_statement_errors"] = True
config["livy_session_startup_timeout_seconds"] = max(timeout, int(config.get("livy_session_startup_timeout_seconds", 60)))
os.makedirs(run_dir, exist_ok=True)
with open(os.path.join(run_dir, "config.json"), "w") as f:
    json.dump(config, f, indent=2)
print("sparkmagic config for this run: based on %s, Livy %s" % (source or "defaults", config["kernel_python_credentials"].get("url")))'
in_env "$PY" -c "$config_code" "$RUN_DIR" "$LIVY_URL" "$STARTUP_TIMEOUT" || die "could not write the sparkmagic config"

# ---- run ----------------------------------------------------------------------------------------
set +e
in_env "$PY" -m papermill --kernel "$KERNEL" --log-output --request-save-on-cell-execute \
    --cwd "$RUN_DIR" "$RUN_DIR/input.ipynb" "$RUN_DIR/output.ipynb" "${PARAMS[@]}"
status=$?
set -e

# ---- output (also after a failure: the executed notebook shows the error) -----------------------
if [[ $USE_DOCKER == 1 ]]; then
    run sudo docker cp "$CONTAINER:$RUN_DIR/output.ipynb" "$HOST_DIR/output.ipynb" ||
        die "papermill exited with $status and left no output notebook"
fi
copy "$HOST_DIR/output.ipynb" "$OUTPUT" || die "could not write the executed notebook to $OUTPUT"
[[ $DRY_RUN == 0 ]] || exit 0
if [[ $status == 0 ]]; then
    log "notebook ran to the end; executed copy: $OUTPUT"
else
    log "ERROR: papermill exited with $status (a cell failed); the executed notebook with the error: $OUTPUT"
fi
exit "$status"
