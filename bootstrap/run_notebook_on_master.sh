#!/usr/bin/env bash
# Run a notebook headless on the EMR primary node with papermill and the sparkmagic PySpark kernel,
# both of which live inside EMR's `jupyterhub` Docker container (not on the host): the script runs
# them there with `sudo docker exec`.
#
# Usage (on the primary node, as hadoop -- by SSH, or as an EMR step: bootstrap/run_step.sh notebook):
#   run_notebook_on_master.sh --notebook s3://B/.../02_emr_full_run.ipynb \
#       --output s3://B/runs/r1/notebooks/02_emr_full_run.executed.ipynb \
#       -p input s3://B/data/ -p output s3://B/runs/r1/ [-p NAME VALUE]... [options]
#
# Options (default in brackets):
#   --notebook URI|PATH      notebook to run (required)
#   --output URI|PATH        where to write the executed notebook (required); written even when a
#                            cell fails, so the error is visible in it
#   -p NAME VALUE            papermill parameter (repeatable; injected after the `parameters` cell)
#   --session-config JSON    body of the notebook's `%%configure -f` cell for this run (Livy session:
#                            driverMemory, executorMemory, executorCores, numExecutors, conf); sparkmagic
#                            reads that cell literally, so the script rewrites it in its copy of the
#                            notebook. run_step.sh session-config prints one sized for a cluster.
#                            [the notebook's own cell, sized for the kit's default cluster]
#   --kernel NAME            Jupyter kernel [pysparkkernel] (sparkmagic PySpark, talks to Livy)
#   --container NAME         Docker container of EMR's JupyterHub [jupyterhub]
#   --no-docker              run papermill on this host instead of inside the container
#   --python PATH            Python that runs papermill [container: /opt/conda/bin/python if
#                            present, else python3; --no-docker: python3]
#   --papermill SPEC         pip requirement installed if papermill is missing [papermill==2.6.0]
#   --pip-index URL          package index for that install (private subnets)
#   --livy-url URL           Livy endpoint for this run [JupyterHub's, else http://<this host>:8998]
#   --startup-timeout SEC    Livy session start timeout for this run [600]
#   --config-generator PATH  the kit's sparkmagic_config.py [next to this script]
#   --python-record PATH     the bootstrap's record of the Python that PySpark (the Livy session's driver
#                            and executors) runs with, printed at the start of the run
#                            [/opt/p8utils/venv/p8utils-python.json]
#   --dry-run                print the commands instead of running them
#
# The sparkmagic config of the run comes from sparkmagic_config.py (`headless`), the kit's one
# generator (the Livy tests use it too): JupyterHub's /etc/jupyter/conf/config.json (or
# $P8_BASE_SPARKMAGIC_DIR/config.json, else ~/.sparkmagic/config.json) with the headless settings laid
# over it: all_errors_are_fatal and shutdown_session_on_spark_statement_errors (else a failing cell
# does not fail papermill), cleanup_all_sessions_on_exit and a 60 s Livy heartbeat (else a killed run
# leaves its Livy session, a YARN application, running and the cluster never goes idle). It goes to a
# folder of its own (SPARKMAGIC_CONF_DIR) for this run only: interactive users are unaffected.
#
# A killed or cancelled run (SIGTERM, SIGKILL, a cancelled step) ends papermill too: papermill runs under
# a watcher that stops it when this script's keep-alive stream ends (a `docker exec`ed process would
# otherwise outlive its client); the kernel then exits and Livy deletes the session when its heartbeat
# stops (60 s).
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

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NOTEBOOK="" OUTPUT="" PARAMS=() KERNEL=pysparkkernel CONTAINER=jupyterhub USE_DOCKER=1 PY=""
PAPERMILL_SPEC=papermill==2.6.0 PIP_INDEX="" LIVY_URL="" STARTUP_TIMEOUT=600 DRY_RUN=0 SESSION_CONFIG=""
GENERATOR=$HERE/sparkmagic_config.py PYTHON_RECORD=/opt/p8utils/venv/p8utils-python.json

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
        --session-config) need_value "$@"; SESSION_CONFIG=$2; shift 2 ;;
        --config-generator) need_value "$@"; GENERATOR=$2; shift 2 ;;
        --python-record) need_value "$@"; PYTHON_RECORD=$2; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ -n $NOTEBOOK ]] || die "--notebook URI|PATH is required"
[[ -n $OUTPUT ]] || die "--output URI|PATH is required (where the executed notebook goes)"
[[ $STARTUP_TIMEOUT =~ ^[0-9]+$ ]] || die "--startup-timeout must be seconds"
[[ -f $GENERATOR ]] || die "sparkmagic_config.py not found at $GENERATOR: keep it next to this script (run_step.sh's step downloads both) or give --config-generator PATH"
[[ -z $SESSION_CONFIG || $SESSION_CONFIG == "{"*"}" ]] || die "--session-config must be a JSON object ({...}), got '$SESSION_CONFIG'"
DEFAULT_LIVY_URL=http://$(hostname -f 2>/dev/null || hostname):8998
BASE_DIR=${P8_BASE_SPARKMAGIC_DIR:-/etc/jupyter/conf}

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
# $PY only runs papermill and the kernel; the notebook's code runs in the Livy session, on the Python the
# bootstrap installed (PYSPARK_PYTHON): print the bootstrap's record of it (interpreter, version, pin set).
if [[ -r $PYTHON_RECORD ]]; then
    log "PySpark's Python (bootstrap record $PYTHON_RECORD): $(tr -d '\n' <"$PYTHON_RECORD" | tr -s ' ')"
else
    log "WARNING: no bootstrap record of PySpark's Python at $PYTHON_RECORD (bootstrap older than this runner, or not run on this node)"
fi

# ---- inputs -------------------------------------------------------------------------------------
[[ $DRY_RUN == 1 ]] || mkdir -p "$HOST_DIR"
copy "$NOTEBOOK" "$HOST_DIR/input.ipynb"
if [[ $USE_DOCKER == 1 ]]; then
    run sudo docker exec "$CONTAINER" mkdir -p "$RUN_DIR"
    run sudo docker cp "$HOST_DIR/input.ipynb" "$CONTAINER:$RUN_DIR/input.ipynb"
    run sudo docker cp "$GENERATOR" "$CONTAINER:$RUN_DIR/sparkmagic_config.py"
else
    run cp -- "$GENERATOR" "$RUN_DIR/sparkmagic_config.py"
fi
GEN_IN_ENV=$RUN_DIR/sparkmagic_config.py

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

# ---- sparkmagic config for this run (the kit's one generator) and the session size -----------------
livy_args=(--default-livy-url "$DEFAULT_LIVY_URL")
[[ -z $LIVY_URL ]] || livy_args=(--livy-url "$LIVY_URL")
# shellcheck disable=SC2088  # ~ is expanded by sparkmagic_config.py, as the user papermill runs as
in_env "$PY" "$GEN_IN_ENV" headless --out "$RUN_DIR/config.json" --base "$BASE_DIR/config.json" \
    --base "~/.sparkmagic/config.json" "${livy_args[@]}" --startup-timeout "$STARTUP_TIMEOUT" ||
    die "could not write the sparkmagic config"
if [[ -n $SESSION_CONFIG ]]; then
    in_env "$PY" "$GEN_IN_ENV" configure-cell --notebook "$RUN_DIR/input.ipynb" --session-config "$SESSION_CONFIG" \
        --out "$RUN_DIR/input.ipynb" || die "could not set the %%configure cell (see above)"
fi

# ---- run ----------------------------------------------------------------------------------------
# papermill runs under a watcher (sh): it stops papermill when its stdin ends. Its stdin is a keep-alive
# stream written by this script, so it ends when this script dies, however (SIGKILL included), or when
# the `docker exec` client is killed; a process started by `docker exec` would otherwise run on.
# shellcheck disable=SC2016  # expanded by the watcher's sh
# (The reader is sh's own `read`, so killing it leaves no process holding the stream open; papermill does
# not inherit the stream, fd 3.)
watcher='exec 3<&0; "$@" 3<&- & pid=$!; { while read -r _ <&3; do :; done; kill -TERM "$pid" 2>/dev/null; } & w=$!; exec 3<&-; wait "$pid"; s=$?; kill "$w" 2>/dev/null; exit "$s"'
papermill_cmd=("$PY" -m papermill --kernel "$KERNEL" --log-output --request-save-on-cell-execute
    --cwd "$RUN_DIR" "$RUN_DIR/input.ipynb" "$RUN_DIR/output.ipynb" "${PARAMS[@]}")
if [[ $USE_DOCKER == 1 ]]; then
    run_cmd=(sudo docker exec -i -e "SPARKMAGIC_CONF_DIR=$RUN_DIR" "$CONTAINER" sh -c "$watcher" sh "${papermill_cmd[@]}")
else
    run_cmd=(env "SPARKMAGIC_CONF_DIR=$RUN_DIR" sh -c "$watcher" sh "${papermill_cmd[@]}")
fi
status=0
if [[ $DRY_RUN == 1 ]]; then
    print_cmd "${run_cmd[@]}"
else
    log "+ $(print_cmd "${run_cmd[@]}")"
    me=$$
    keepalive() { while kill -0 "$me" 2>/dev/null; do echo || return 0; sleep 2; done; }
    set +e
    "${run_cmd[@]}" < <(keepalive) &
    run_pid=$!
    # shellcheck disable=SC2317  # called by the traps
    stop_run() {
        log "stopping papermill (signal received)"
        kill -TERM "$run_pid" 2>/dev/null
    }
    trap stop_run TERM INT HUP
    wait "$run_pid"
    status=$?
    if ((status > 128)) && kill -0 "$run_pid" 2>/dev/null; then # wait was interrupted by a trapped signal
        wait "$run_pid"
        status=$?
    fi
    trap - TERM INT HUP
    set -e
fi

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
