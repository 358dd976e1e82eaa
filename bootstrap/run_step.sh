#!/usr/bin/env bash
# Add p8utils work to a running EMR cluster as EMR steps (or print the steps JSON for create_cluster.sh).
#
# Usage:
#   bootstrap/run_step.sh pipeline --cluster-id j-XXXX --input s3://B/data/ --output s3://B/runs/r1/ \
#       [--deploy-mode client|cluster] [--spark-conf KEY=VALUE]... [--core-type TYPE ...] [options]
#       [-- EXTRA p8utils run ARGS]
#   bootstrap/run_step.sh notebook --cluster-id j-XXXX --runner s3://B/.../run_notebook_on_master.sh \
#       --notebook s3://B/.../02_emr_full_run.ipynb --input s3://B/data/ --output s3://B/runs/r1/ \
#       [--executed s3://B/runs/r1/notebooks/02_emr_full_run.executed.ipynb] [-p NAME VALUE]...
#       [--core-type TYPE --core-count N | --session-config JSON] [options]
#   bootstrap/run_step.sh notebook --engine studio --cluster-id j-XXXX \
#       --notebook s3://B/.../02_emr_full_run.ipynb --input s3://B/data/ --output s3://B/runs/r1/ [...]
#   bootstrap/run_step.sh session-config [--core-type m5.2xlarge] [--core-count 2]
#       [--yarn-memory-mb MB --vcpus N]          # prints the %%configure JSON sized for that cluster
#
# Options for both:
#   --cluster-id ID            the cluster (j-...) to add the step to
#   --print-json               print the --steps JSON only (no AWS call; used by create_cluster.sh)
#   --dry-run                  print the aws command instead of running it (no AWS credentials needed)
#   --region REGION            passed to the aws CLI
#   --name NAME                step name (default: "p8utils pipeline" / "p8utils notebook 02")
#   --action-on-failure A      CONTINUE (default), CANCEL_AND_WAIT or TERMINATE_CLUSTER
#   --prefix DIR               where the bootstrap installed p8utils on the nodes (default /opt/p8utils)
#   --wait                     wait until the step (or the notebook execution) completes
#
# Options for pipeline:
#   --core-type TYPE, --core-count N, --yarn-memory-mb MB, --vcpus N
#                              shape the executors (cores, memory, memoryOverhead) for these core nodes by
#                              the arithmetic below [2 x m5.2xlarge, the kit's default cluster]
#   --spark-conf KEY=VALUE     passed to spark-submit after the executor shape (so it wins)
#
# Options for notebook:
#   --engine runner|studio     runner (default): an EMR step runs run_notebook_on_master.sh, papermill
#                              inside the primary node's jupyterhub container (needs JupyterHub: every
#                              kit cluster has it). studio: `aws emr start-notebook-execution`, EMR's own
#                              headless notebook runs (no step, no SSH, no docker; the cluster needs
#                              Jupyter Enterprise Gateway: create_cluster.sh --studio) - see the README
#   --core-type TYPE, --core-count N, --yarn-memory-mb MB, --vcpus N
#                              size the Livy session (the notebook's %%configure -f cell) for these core
#                              nodes, see `session-config`; [the notebook's own cell, made for the kit's
#                              default cluster: 2 x m5.2xlarge]
#   --session-config JSON      the %%configure body itself
#   --service-role ROLE        studio: the notebook execution's service role [EMR_Notebooks_DefaultRole]
#   --poll-seconds N           studio --wait: seconds between status checks [30]
#   --python PY                studio with a session size: Python that rewrites the %%configure cell [python3]
#   --input-param NAME, --output-param NAME
#                              the notebook parameters that receive --input / --output [input, output]
#
# The pipeline step is `spark-submit PREFIX/p8utils_main.py run --input ... --output ...` through
# command-runner.jar on the primary node. p8utils_main.py is written by emr_bootstrap.sh and is
# `python -m p8utils`; the Python that runs it is the one configurations.json gives PySpark
# (PREFIX/venv/bin/python); the launcher prints that interpreter, its version and the pin set the
# bootstrap installed (from PREFIX/venv/p8utils-python.json) to the step's stderr log before the run.
# Default deploy mode is client: the driver runs on the primary node and
# its output (the p8utils summary) lands in the step's stdout log; `--deploy-mode cluster` runs the
# driver in YARN instead (the launcher exists on every node).
#
# The notebook step downloads run_notebook_on_master.sh and sparkmagic_config.py (from the runner's S3
# folder, where create_cluster.sh uploads both) and runs the runner on the primary node, which
# executes the notebook headless with papermill and the sparkmagic `pysparkkernel` inside the
# jupyterhub container. The studio engine instead asks EMR to run the notebook (StartNotebookExecution):
# NotebookParams fill the notebook's `parameters` cell like papermill's -p; the executed notebook goes
# to OUTPUT/notebooks/ as HTML (OutputNotebookFormat's one value in EMR's API), not as an .ipynb.
#
# Session size (session-config): sparkmagic reads %%configure literally, so the size is written into
# the notebook's cell before the run (the runner does it on the node; studio uploads a rewritten copy
# to OUTPUT/notebooks/). The arithmetic, per core node (EMR runs no YARN containers on the primary):
#   Y = yarn.nodemanager.resource.memory-mb, EMR's default for the instance's RAM (16 GiB: 12288,
#       32 GiB: 24576, 64 GiB: 57344, 128 GiB: 122880; --yarn-memory-mb for other types), V = vCPUs;
#   H = 1 GiB of headroom per node (NodeManager, OS); U = Y - H;
#   D = driver container = 2g heap + 2g overhead = 4096 MB and 1 vCPU (Livy on the kit's clusters runs the
#       driver in YARN, livy.spark.deploy-mode=cluster; its Python builds the model/TFLite payload);
#   c = executor cores (<= 4), S = executor container, rounded down to 1 GiB;
#   O = executor memoryOverhead = c x 1.5 GiB (one Python worker per core, TensorFlow + a batch of 64:
#       about 1.5 GB RSS measured), rounded up to 1 GiB; heap = S - O (at least 1 GiB);
#   a node without the driver holds e = min(U / S, V / c) executors, the node with the driver
#   min((U - D) / S, (V - 1) / c): never more memory than U, never more vCPUs than V;
#   numExecutors = e x (core nodes - 1) + the driver node's. The shape with the most task slots c x e on
#   a node without the driver wins (ties: larger executors, then more slots in all, then a larger heap);
#   on m and r types every vCPU of those nodes gets a slot with c = 4; memory-poor types (c family:
#   2 GiB per vCPU) get fewer slots or smaller executors.
# Default cluster (2 x m5.2xlarge: 8 vCPU, 32 GiB, Y = 24576, U = 23552): c = 4, S = 11264, O = 6144,
# heap 5g; the other node holds 2 executors (22528 MB, 8 vCPUs), the driver's node 1 (4096 + 11264 =
# 15360 MB, 1 + 4 vCPUs): 3 executors, 12 task slots.
set -Eeuo pipefail

die() {
    printf 'run_step.sh: ERROR: %s\n' "$*" >&2
    exit 1
}
usage() { sed -n '2,/^set -Eeuo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

# Quote one word for a POSIX shell only when needed, so printed commands stay readable.
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
# Minimal JSON string/array encoding (no python needed on the operator's machine).
json_str() {
    local s=$1
    [[ $s != *[$'\x01'-$'\x08\x0b\x0c\x0e'-$'\x1f']* ]] || die "control character in argument '$s'"
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\t'/\\t}
    s=${s//$'\r'/\\r}
    printf '"%s"' "$s"
}
json_array() {
    local out="" word
    for word in "$@"; do out+="${out:+,}$(json_str "$word")"; done
    printf '[%s]' "$out"
}

[[ $# -gt 0 ]] || {
    usage
    exit 1
}
case "$1" in
    pipeline | notebook | session-config) KIND=$1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "first argument must be 'pipeline', 'notebook' or 'session-config' (got '$1'; see --help)" ;;
esac

CLUSTER_ID="" PRINT_JSON=0 DRY_RUN=0 REGION="" NAME="" ACTION=CONTINUE PREFIX=/opt/p8utils WAIT=0
INPUT="" OUTPUT="" DEPLOY_MODE=client SPARK_CONFS=() EXTRA=()
RUNNER="" NOTEBOOK="" EXECUTED="" NB_PARAMS=() ENGINE=runner CORE_TYPE="" CORE_COUNT="" YARN_MB="" VCPUS=""
SESSION_CONFIG="" STUDIO_ROLE=EMR_Notebooks_DefaultRole POLL_SECONDS=30 PYTHON=python3 INPUT_PARAM=input
OUTPUT_PARAM=output
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

need_value() { [[ $# -ge 2 && -n $2 ]] || die "option $1 needs a value"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cluster-id) need_value "$@"; CLUSTER_ID=$2; shift 2 ;;
        --print-json) PRINT_JSON=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        --region) need_value "$@"; REGION=$2; shift 2 ;;
        --name) need_value "$@"; NAME=$2; shift 2 ;;
        --action-on-failure) need_value "$@"; ACTION=$2; shift 2 ;;
        --prefix) need_value "$@"; PREFIX=$2; shift 2 ;;
        --wait) WAIT=1; shift ;;
        --input) need_value "$@"; INPUT=$2; shift 2 ;;
        --output) need_value "$@"; OUTPUT=$2; shift 2 ;;
        --deploy-mode) need_value "$@"; DEPLOY_MODE=$2; shift 2 ;;
        --spark-conf) need_value "$@"; SPARK_CONFS+=("$2"); shift 2 ;;
        --runner) need_value "$@"; RUNNER=$2; shift 2 ;;
        --notebook) need_value "$@"; NOTEBOOK=$2; shift 2 ;;
        --executed) need_value "$@"; EXECUTED=$2; shift 2 ;;
        -p | --parameter)
            [[ $# -ge 3 && -n $2 ]] || die "$1 needs NAME VALUE"
            NB_PARAMS+=(-p "$2" "$3")
            shift 3
            ;;
        --engine) need_value "$@"; ENGINE=$2; shift 2 ;;
        --core-type) need_value "$@"; CORE_TYPE=$2; shift 2 ;;
        --core-count) need_value "$@"; CORE_COUNT=$2; shift 2 ;;
        --yarn-memory-mb) need_value "$@"; YARN_MB=$2; shift 2 ;;
        --vcpus) need_value "$@"; VCPUS=$2; shift 2 ;;
        --session-config) need_value "$@"; SESSION_CONFIG=$2; shift 2 ;;
        --service-role) need_value "$@"; STUDIO_ROLE=$2; shift 2 ;;
        --poll-seconds) need_value "$@"; POLL_SECONDS=$2; shift 2 ;;
        --python) need_value "$@"; PYTHON=$2; shift 2 ;;
        --input-param) need_value "$@"; INPUT_PARAM=$2; shift 2 ;;
        --output-param) need_value "$@"; OUTPUT_PARAM=$2; shift 2 ;;
        --) shift; EXTRA=("$@"); break ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

# ---- session size (see the arithmetic in the header) ------------------------------------------
# EMR's default yarn.nodemanager.resource.memory-mb for a node's RAM (EMR Release Guide, "Task
# configuration"; the same for the m, r and c families of a given RAM size).
yarn_memory_for_gib() {
    case "$1" in
        8) echo 6144 ;; 16) echo 12288 ;; 32) echo 24576 ;; 64) echo 57344 ;; 128) echo 122880 ;;
        192) echo 188416 ;; 256) echo 253952 ;; 384) echo 385024 ;; *) return 1 ;;
    esac
}
# vCPUs and GiB of RAM of general purpose (m), memory (r) and compute (c) optimized types, by size.
instance_shape() {
    local type=$1 family size vcpus gib_per_vcpu
    family=${type%%.*} size=${type#*.}
    case "$size" in
        xlarge) vcpus=4 ;; 2xlarge) vcpus=8 ;; 4xlarge) vcpus=16 ;; 8xlarge) vcpus=32 ;;
        12xlarge) vcpus=48 ;; 16xlarge) vcpus=64 ;; 24xlarge) vcpus=96 ;; *) return 1 ;;
    esac
    case "$family" in
        m[5-8]* ) gib_per_vcpu=4 ;; r[5-8]* ) gib_per_vcpu=8 ;; c[5-8]* ) gib_per_vcpu=2 ;; *) return 1 ;;
    esac
    printf '%s %s\n' "$vcpus" "$((vcpus * gib_per_vcpu))"
}
size_executors() { # TYPE COUNT [YARN_MB] [VCPUS] -> sets cores, executors, overhead, heap (MB)
    local type=$1 yarn=${3:-} vcpus=${4:-} shape gib driver=4096 driver_cores=1 headroom=1024
    count=$2
    [[ $count =~ ^[1-9][0-9]*$ ]] || die "--core-count must be a positive whole number, got '$count'"
    if [[ -z $yarn || -z $vcpus ]]; then
        shape=$(instance_shape "$type") ||
            die "unknown instance type '$type' for sizing: give --yarn-memory-mb (yarn.nodemanager.resource.memory-mb of a core node) and --vcpus"
        read -r shape gib <<<"$shape"
        vcpus=${vcpus:-$shape}
        if [[ -z $yarn ]]; then
            yarn=$(yarn_memory_for_gib "$gib") ||
                die "no EMR YARN memory default known for $gib GiB ($type): give --yarn-memory-mb"
        fi
    fi
    [[ $yarn =~ ^[0-9]+$ && $vcpus =~ ^[1-9][0-9]*$ ]] || die "--yarn-memory-mb and --vcpus must be whole numbers"
    # U = Y - 1 GiB of headroom per node. Executors of c cores and S MB: a node without the driver holds
    # min(U / S, V / c) of them, the node with the driver min((U - D) / S, (V - 1) / c) (its vCPU counted).
    # S is U / e or (U - D) / e (e executors per node), rounded down to 1 GiB. The most task slots on a node
    # without the driver wins (with one core node: on the driver's node); ties: the larger executors, then the
    # most slots in all, then the larger heap. On m and r types that is c = 4, e = V / 4, one executor less on
    # the driver's node; c types get fewer or smaller executors.
    local usable=$((yarn - headroom)) c e s o h full drv n key best=0 best_total=0 best_heap=0
    cores=0
    if ((usable > driver)); then
        for c in 4 3 2 1; do
            ((c <= vcpus)) || continue
            o=$(((c * 1536 + 1023) / 1024 * 1024))
            for ((e = vcpus / c; e >= 1; e--)); do
                for s in $((usable / e / 1024 * 1024)) $(((usable - driver) / e / 1024 * 1024)); do
                    h=$((s - o))
                    ((h >= 1024)) || continue
                    full=$((usable / s)) drv=$(((usable - driver) / s))
                    ((full <= vcpus / c)) || full=$((vcpus / c))
                    ((drv <= (vcpus - driver_cores) / c)) || drv=$(((vcpus - driver_cores) / c))
                    n=$((full * (count - 1) + drv))
                    ((n >= 1)) || continue
                    key=$((count > 1 ? c * full : c * drv))
                    if ((key > best || (key == best && c == cores && (c * n > best_total ||
                        (c * n == best_total && h > best_heap))))); then
                        best=$key best_total=$((c * n)) best_heap=$h cores=$c
                        executors=$n overhead=$o heap=$h
                    fi
                done
            done
        done
    fi
    ((cores > 0)) ||
        die "core nodes of ${yarn} MB YARN memory are too small for an executor with 1.5 GB per core for TensorFlow and 1 GB of heap (and a ${driver} MB driver, ${headroom} MB of headroom per node): use bigger core nodes or --session-config"
}
session_config() { # TYPE COUNT [YARN_MB] [VCPUS] -> the %%configure JSON on stdout
    local cores executors overhead heap count
    size_executors "$@"
    printf '{"driverMemory":"2g","driverCores":1,"executorMemory":"%dg","executorCores":%d,"numExecutors":%d,' \
        $((heap / 1024)) "$cores" "$executors"
    printf '"conf":{"spark.driver.memoryOverhead":"2g","spark.executor.memoryOverhead":"%dg",' $((overhead / 1024))
    printf '"spark.dynamicAllocation.enabled":"false","spark.sql.execution.arrow.pyspark.enabled":"true",'
    printf '"spark.sql.execution.arrow.maxRecordsPerBatch":"256","spark.python.worker.reuse":"true",'
    printf '"spark.sql.shuffle.partitions":"%d","spark.sql.session.timeZone":"UTC",' $((2 * executors * cores))
    printf '"spark.executorEnv.TF_CPP_MIN_LOG_LEVEL":"2"}}\n'
}
sizing_asked() { [[ -n $CORE_TYPE || -n $CORE_COUNT || -n $YARN_MB || -n $VCPUS ]]; }

if [[ $KIND == session-config ]]; then
    session_config "${CORE_TYPE:-m5.2xlarge}" "${CORE_COUNT:-2}" "$YARN_MB" "$VCPUS"
    exit 0
fi

case "$ACTION" in CONTINUE | CANCEL_AND_WAIT | TERMINATE_CLUSTER) ;; *) die "--action-on-failure must be CONTINUE, CANCEL_AND_WAIT or TERMINATE_CLUSTER" ;; esac
[[ -n $INPUT ]] || die "--input URI is required (the images: s3://bucket/prefix/)"
[[ -n $OUTPUT ]] || die "--output URI is required (the run folder: s3://bucket/prefix/runs/NAME/)"
[[ $PRINT_JSON == 1 || -n $CLUSTER_ID ]] || die "--cluster-id is required (or --print-json)"
[[ $ENGINE == runner || $ENGINE == studio ]] || die "--engine must be runner or studio, got '$ENGINE'"
[[ $POLL_SECONDS =~ ^[1-9][0-9]*$ ]] || die "--poll-seconds must be a positive whole number"
region_args=()
[[ -z $REGION ]] || region_args=(--region "$REGION")

if [[ $KIND == pipeline ]]; then
    [[ ${#NB_PARAMS[@]} -eq 0 && -z $NOTEBOOK && -z $RUNNER ]] || die "-p/--notebook/--runner belong to 'notebook' steps"
    if [[ $ENGINE != runner || -n $SESSION_CONFIG ]]; then
        die "--engine/--session-config belong to 'notebook' runs"
    fi
    [[ $DEPLOY_MODE == client || $DEPLOY_MODE == cluster ]] || die "--deploy-mode must be client or cluster"
    NAME=${NAME:-p8utils pipeline}
    # Executors shaped by the same arithmetic as the notebook's session (memoryOverhead = cores x 1.5 GiB
    # for the Python workers); dynamic allocation decides how many. --spark-conf comes after: it wins.
    size_executors "${CORE_TYPE:-m5.2xlarge}" "${CORE_COUNT:-2}" "$YARN_MB" "$VCPUS"
    args=(spark-submit --deploy-mode "$DEPLOY_MODE" --conf "spark.executor.cores=$cores"
        --conf "spark.executor.memory=$((heap / 1024))g" --conf "spark.executor.memoryOverhead=$((overhead / 1024))g")
    for conf in "${SPARK_CONFS[@]}"; do
        [[ $conf == *=* ]] || die "--spark-conf wants KEY=VALUE, got '$conf'"
        args+=(--conf "$conf")
    done
    args+=("${PREFIX%/}/p8utils_main.py" run --input "$INPUT" --output "$OUTPUT" "${EXTRA[@]}")
else
    [[ -n $NOTEBOOK ]] || die "--notebook is required: the S3 URI of the .ipynb to run"
    [[ ${#EXTRA[@]} -eq 0 ]] || die "extra arguments after -- belong to 'pipeline' steps"
    if sizing_asked; then
        [[ -z $SESSION_CONFIG ]] || die "give --session-config or --core-type/--core-count, not both"
        SESSION_CONFIG=$(session_config "${CORE_TYPE:-m5.2xlarge}" "${CORE_COUNT:-2}" "$YARN_MB" "$VCPUS")
    fi
    [[ -z $SESSION_CONFIG || $SESSION_CONFIG == "{"*"}" ]] || die "--session-config must be a JSON object ({...})"
    NAME=${NAME:-p8utils notebook $(basename "$NOTEBOOK" .ipynb)}
fi

print_run() { printf '+ %s\n' "$(print_cmd "$@")" >&2; }

# ---- notebook --engine studio: EMR's notebook execution (StartNotebookExecution), no step ----------
if [[ $KIND == notebook && $ENGINE == studio ]]; then
    [[ $PRINT_JSON == 0 ]] || die "--print-json makes step JSON; the studio engine runs no step"
    [[ -z $RUNNER ]] || die "--runner belongs to --engine runner"
    [[ $NOTEBOOK == s3://*/*.ipynb ]] || die "--engine studio needs --notebook s3://BUCKET/KEY.ipynb, got '$NOTEBOOK'"
    [[ $OUTPUT == s3://?*/* || $OUTPUT == s3://?* ]] || die "--engine studio needs an s3:// --output, got '$OUTPUT'"
    out=${OUTPUT%/}/notebooks/
    s3_location() { # s3://BUCKET/KEY -> {"Bucket":"BUCKET","Key":"KEY"}
        local rest=${1#s3://}
        printf '{"Bucket":%s,"Key":%s}' "$(json_str "${rest%%/*}")" "$(json_str "${rest#*/}")"
    }
    # NotebookParams: the parameters cell's new values; numbers, booleans and None as JSON, like papermill -p.
    json_value() {
        case "$1" in
            true | True) printf 'true' ;; false | False) printf 'false' ;; None | null) printf 'null' ;;
            *) if [[ $1 =~ ^-?[0-9]+(\.[0-9]+)?$ ]]; then printf '%s' "$1"; else json_str "$1"; fi ;;
        esac
    }
    params="{$(json_str "$INPUT_PARAM"):$(json_str "$INPUT"),$(json_str "$OUTPUT_PARAM"):$(json_str "$OUTPUT")"
    for ((i = 0; i < ${#NB_PARAMS[@]}; i += 3)); do
        params+=",$(json_str "${NB_PARAMS[i + 1]}"):$(json_value "${NB_PARAMS[i + 2]}")"
    done
    params+="}"
    source_nb=$NOTEBOOK
    if [[ -n $SESSION_CONFIG ]]; then
        # EMR runs the notebook as it is in S3: a rewritten copy carries the session size.
        source_nb=${out}$(basename "$NOTEBOOK" .ipynb).input.ipynb
        if [[ $DRY_RUN == 1 ]]; then
            tmp_nb=${TMPDIR:-/tmp}/p8-notebook.ipynb
        else
            tmp_nb=$(mktemp "${TMPDIR:-/tmp}/p8-notebook.XXXXXX")
            trap 'rm -f -- "$tmp_nb"' EXIT
        fi
        for cmd in download rewrite upload; do
            case $cmd in
                download) c=(aws s3 cp --only-show-errors "$NOTEBOOK" "$tmp_nb" "${region_args[@]}") ;;
                rewrite) c=("$PYTHON" "$HERE/sparkmagic_config.py" configure-cell --notebook "$tmp_nb"
                    --session-config "$SESSION_CONFIG" --out "$tmp_nb") ;;
                upload) c=(aws s3 cp --only-show-errors "$tmp_nb" "$source_nb" "${region_args[@]}") ;;
            esac
            if [[ $DRY_RUN == 1 ]]; then
                print_cmd "${c[@]}"
            else
                print_run "${c[@]}"
                "${c[@]}" >&2 || die "could not prepare the notebook with the session size (see above)"
            fi
        done
    fi
    # shellcheck disable=SC2054  # the commas belong to the aws CLI's Key=...,Value=... shorthand
    start=(aws emr start-notebook-execution
        --execution-engine "{\"Id\":$(json_str "$CLUSTER_ID"),\"Type\":\"EMR\"}"
        --service-role "$STUDIO_ROLE"
        --notebook-s3-location "$(s3_location "$source_nb")"
        --output-notebook-s3-location "$(s3_location "$out")"
        --output-notebook-format HTML
        --notebook-params "$params"
        --notebook-execution-name "$NAME"
        --tags Key=project,Value=p8utils Key=for-use-with-amazon-emr-managed-policies,Value=true
        --query NotebookExecutionId --output text "${region_args[@]}")
    status_cmd=(aws emr describe-notebook-execution --notebook-execution-id)
    if [[ $DRY_RUN == 1 ]]; then
        print_cmd "${start[@]}"
        [[ $WAIT == 0 ]] || print_cmd "${status_cmd[@]}" EXECUTION_ID_PRINTED_ABOVE \
            --query NotebookExecution.Status --output text "${region_args[@]}"
        exit 0
    fi
    command -v aws >/dev/null || die "the aws CLI is not installed (https://docs.aws.amazon.com/cli/)"
    print_run "${start[@]}"
    execution_id=$("${start[@]}") || die "aws emr start-notebook-execution failed (see the message above)"
    printf 'notebook execution %s started on %s; executed notebook under %s\n' "$execution_id" "$CLUSTER_ID" "$out" >&2
    printf '%s\n' "$execution_id"
    [[ $WAIT == 1 ]] || exit 0
    while :; do
        state=$("${status_cmd[@]}" "$execution_id" --query NotebookExecution.Status --output text "${region_args[@]}") ||
            die "aws emr describe-notebook-execution failed"
        case "$state" in
            FINISHED)
                printf 'notebook execution %s finished\n' "$execution_id" >&2
                exit 0
                ;;
            FAILED | STOPPED)
                reason=$("${status_cmd[@]}" "$execution_id" --query NotebookExecution.LastStateChangeReason \
                    --output text "${region_args[@]}" 2>/dev/null || true)
                die "notebook execution $execution_id is $state: $reason (the executed notebook, with the error, is under $out)"
                ;;
        esac
        sleep "$POLL_SECONDS"
    done
fi

# ---- EMR steps: the pipeline, or the notebook through run_notebook_on_master.sh ------------------
if [[ $KIND == notebook ]]; then
    [[ -n $RUNNER ]] || die "--runner is required: the S3 URI of run_notebook_on_master.sh (create_cluster.sh uploads it with sparkmagic_config.py)"
    EXECUTED=${EXECUTED:-${OUTPUT%/}/notebooks/$(basename "$NOTEBOOK" .ipynb).executed.ipynb}
    # bash -c SCRIPT ARG0 ARGS...: the runner URI is $0, the runner's arguments are "$@" (no quoting games).
    # The runner's sparkmagic config generator lies next to it in S3 and goes next to it on the node.
    # shellcheck disable=SC2016  # expanded on the node by bash -c, not here
    script='set -euo pipefail; d=$(mktemp -d /tmp/p8-notebook-run.XXXXXX); runner=$d/run_notebook_on_master.sh; aws s3 cp --only-show-errors "$0" "$runner"; aws s3 cp --only-show-errors "${0%/*}/sparkmagic_config.py" "$d/sparkmagic_config.py"; exec bash "$runner" "$@"'
    args=(bash -c "$script" "$RUNNER" --notebook "$NOTEBOOK" --output "$EXECUTED"
        -p "$INPUT_PARAM" "$INPUT" -p "$OUTPUT_PARAM" "$OUTPUT" "${NB_PARAMS[@]}")
    [[ -z $SESSION_CONFIG ]] || args+=(--session-config "$SESSION_CONFIG")
fi

steps="[{\"Type\":\"CUSTOM_JAR\",\"Name\":$(json_str "$NAME"),\"ActionOnFailure\":$(json_str "$ACTION"),\"Jar\":\"command-runner.jar\",\"Args\":$(json_array "${args[@]}")}]"

if [[ $PRINT_JSON == 1 ]]; then
    printf '%s\n' "$steps"
    exit 0
fi

aws_cmd=(aws emr add-steps --cluster-id "$CLUSTER_ID" --steps "$steps" --query 'StepIds[0]' --output text "${region_args[@]}")

if [[ $DRY_RUN == 1 ]]; then
    print_cmd "${aws_cmd[@]}"
    if [[ $WAIT == 1 ]]; then
        wait_cmd=(aws emr wait step-complete --cluster-id "$CLUSTER_ID" --step-id STEP_ID_PRINTED_ABOVE "${region_args[@]}")
        print_cmd "${wait_cmd[@]}"
    fi
    exit 0
fi

command -v aws >/dev/null || die "the aws CLI is not installed (https://docs.aws.amazon.com/cli/)"
print_run "${aws_cmd[@]}"
step_id=$("${aws_cmd[@]}") || die "aws emr add-steps failed (see the message above)"
printf 'step %s added to %s\n' "$step_id" "$CLUSTER_ID" >&2
printf '%s\n' "$step_id"
if [[ $WAIT == 1 ]]; then
    wait_cmd=(aws emr wait step-complete --cluster-id "$CLUSTER_ID" --step-id "$step_id" "${region_args[@]}")
    print_run "${wait_cmd[@]}"
    "${wait_cmd[@]}" || die "step $step_id did not complete successfully: aws emr describe-step --cluster-id $CLUSTER_ID --step-id $step_id; logs under the cluster's log URI, steps/$step_id/"
    printf 'step %s completed\n' "$step_id" >&2
fi
