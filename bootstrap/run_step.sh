#!/usr/bin/env bash
# Add p8utils work to a running EMR cluster as EMR steps (or print the steps JSON for create_cluster.sh).
#
# Usage:
#   bootstrap/run_step.sh pipeline --cluster-id j-XXXX --input s3://B/data/ --output s3://B/runs/r1/ \
#       [--deploy-mode client|cluster] [--spark-conf KEY=VALUE]... [options] [-- EXTRA p8utils run ARGS]
#   bootstrap/run_step.sh notebook --cluster-id j-XXXX --runner s3://B/.../run_notebook_on_master.sh \
#       --notebook s3://B/.../02_emr_full_run.ipynb --input s3://B/data/ --output s3://B/runs/r1/ \
#       [--executed s3://B/runs/r1/notebooks/02_emr_full_run.executed.ipynb] [-p NAME VALUE]... [options]
#
# Options for both:
#   --cluster-id ID            the cluster (j-...) to add the step to
#   --print-json               print the --steps JSON only (no AWS call; used by create_cluster.sh)
#   --dry-run                  print the aws command instead of running it (no AWS credentials needed)
#   --region REGION            passed to the aws CLI
#   --name NAME                step name (default: "p8utils pipeline" / "p8utils notebook 02")
#   --action-on-failure A      CONTINUE (default), CANCEL_AND_WAIT or TERMINATE_CLUSTER
#   --prefix DIR               where the bootstrap installed p8utils on the nodes (default /opt/p8utils)
#   --wait                     wait until the step completes (aws emr wait step-complete)
#
# The pipeline step is `spark-submit PREFIX/p8utils_main.py run --input ... --output ...` through
# command-runner.jar on the primary node. p8utils_main.py is written by emr_bootstrap.sh and is
# `python -m p8utils`; the Python that runs it is the one configurations.json gives PySpark
# (PREFIX/venv/bin/python). Default deploy mode is client: the driver runs on the primary node and
# its output (the p8utils summary) lands in the step's stdout log; `--deploy-mode cluster` runs the
# driver in YARN instead (the launcher exists on every node).
#
# The notebook step downloads run_notebook_on_master.sh from S3 and runs it on the primary node,
# which executes the notebook headless with papermill and the sparkmagic `pysparkkernel`.
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
    pipeline | notebook) KIND=$1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "first argument must be 'pipeline' or 'notebook' (got '$1'; see --help)" ;;
esac

CLUSTER_ID="" PRINT_JSON=0 DRY_RUN=0 REGION="" NAME="" ACTION=CONTINUE PREFIX=/opt/p8utils WAIT=0
INPUT="" OUTPUT="" DEPLOY_MODE=client SPARK_CONFS=() EXTRA=()
RUNNER="" NOTEBOOK="" EXECUTED="" NB_PARAMS=()

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
        --) shift; EXTRA=("$@"); break ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

case "$ACTION" in CONTINUE | CANCEL_AND_WAIT | TERMINATE_CLUSTER) ;; *) die "--action-on-failure must be CONTINUE, CANCEL_AND_WAIT or TERMINATE_CLUSTER" ;; esac
[[ -n $INPUT ]] || die "--input URI is required (the images: s3://bucket/prefix/)"
[[ -n $OUTPUT ]] || die "--output URI is required (the run folder: s3://bucket/prefix/runs/NAME/)"
[[ $PRINT_JSON == 1 || -n $CLUSTER_ID ]] || die "--cluster-id is required (or --print-json)"

if [[ $KIND == pipeline ]]; then
    [[ $DEPLOY_MODE == client || $DEPLOY_MODE == cluster ]] || die "--deploy-mode must be client or cluster"
    [[ ${#NB_PARAMS[@]} -eq 0 && -z $NOTEBOOK && -z $RUNNER ]] || die "-p/--notebook/--runner belong to 'notebook' steps"
    NAME=${NAME:-p8utils pipeline}
    args=(spark-submit --deploy-mode "$DEPLOY_MODE")
    for conf in "${SPARK_CONFS[@]}"; do
        [[ $conf == *=* ]] || die "--spark-conf wants KEY=VALUE, got '$conf'"
        args+=(--conf "$conf")
    done
    args+=("${PREFIX%/}/p8utils_main.py" run --input "$INPUT" --output "$OUTPUT" "${EXTRA[@]}")
else
    [[ -n $RUNNER ]] || die "--runner is required: the S3 URI of run_notebook_on_master.sh (create_cluster.sh uploads it)"
    [[ -n $NOTEBOOK ]] || die "--notebook is required: the S3 URI of the .ipynb to run"
    [[ ${#EXTRA[@]} -eq 0 ]] || die "extra arguments after -- belong to 'pipeline' steps"
    NAME=${NAME:-p8utils notebook $(basename "$NOTEBOOK" .ipynb)}
    EXECUTED=${EXECUTED:-${OUTPUT%/}/notebooks/$(basename "$NOTEBOOK" .ipynb).executed.ipynb}
    # bash -c SCRIPT ARG0 ARGS...: the runner URI is $0, the runner's arguments are "$@" (no quoting games).
    # shellcheck disable=SC2016  # expanded on the node by bash -c, not here
    script='set -euo pipefail; runner=$(mktemp /tmp/run_notebook_on_master.XXXXXX.sh); aws s3 cp --only-show-errors "$0" "$runner"; exec bash "$runner" "$@"'
    args=(bash -c "$script" "$RUNNER" --notebook "$NOTEBOOK" --output "$EXECUTED"
        -p input_uri "$INPUT" -p output_uri "$OUTPUT" "${NB_PARAMS[@]}")
fi

steps="[{\"Type\":\"CUSTOM_JAR\",\"Name\":$(json_str "$NAME"),\"ActionOnFailure\":$(json_str "$ACTION"),\"Jar\":\"command-runner.jar\",\"Args\":$(json_array "${args[@]}")}]"

if [[ $PRINT_JSON == 1 ]]; then
    printf '%s\n' "$steps"
    exit 0
fi

aws_cmd=(aws emr add-steps --cluster-id "$CLUSTER_ID" --steps "$steps" --query 'StepIds[0]' --output text)
[[ -z $REGION ]] || aws_cmd+=(--region "$REGION")

if [[ $DRY_RUN == 1 ]]; then
    print_cmd "${aws_cmd[@]}"
    if [[ $WAIT == 1 ]]; then
        wait_cmd=(aws emr wait step-complete --cluster-id "$CLUSTER_ID" --step-id STEP_ID_PRINTED_ABOVE)
        [[ -z $REGION ]] || wait_cmd+=(--region "$REGION")
        print_cmd "${wait_cmd[@]}"
    fi
    exit 0
fi

command -v aws >/dev/null || die "the aws CLI is not installed (https://docs.aws.amazon.com/cli/)"
printf '+ %s\n' "$(print_cmd "${aws_cmd[@]}")" >&2
step_id=$("${aws_cmd[@]}") || die "aws emr add-steps failed (see the message above)"
printf 'step %s added to %s\n' "$step_id" "$CLUSTER_ID" >&2
printf '%s\n' "$step_id"
if [[ $WAIT == 1 ]]; then
    wait_cmd=(aws emr wait step-complete --cluster-id "$CLUSTER_ID" --step-id "$step_id")
    [[ -z $REGION ]] || wait_cmd+=(--region "$REGION")
    printf '+ %s\n' "$(print_cmd "${wait_cmd[@]}")" >&2
    "${wait_cmd[@]}" || die "step $step_id did not complete successfully: aws emr describe-step --cluster-id $CLUSTER_ID --step-id $step_id; logs under the cluster's log URI, steps/$step_id/"
    printf 'step %s completed\n' "$step_id" >&2
fi
