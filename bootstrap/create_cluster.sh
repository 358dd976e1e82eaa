#!/usr/bin/env bash
# Build the p8utils wheel, upload the EMR kit to S3 and create an EMR 7.x cluster that runs it.
#
# Usage:
#   bootstrap/create_cluster.sh --s3-prefix s3://BUCKET/PREFIX [options]
#
# What it does (each AWS command is printed before it runs; --dry-run only prints them):
#   1. builds the wheel: PYTHON -m pip wheel --no-deps --wheel-dir dist .   (skipped with --wheel)
#   2. uploads emr_bootstrap.sh, requirements-emr.txt and requirements-emr-py39.txt, the wheel,
#      configurations.json, run_notebook_on_master.sh, sparkmagic_config.py and
#      notebooks/02_emr_full_run.ipynb (if present) to
#      S3_PREFIX/deploy/DEPLOY_ID/ (a new folder per deployment: nodes added later to an older
#      cluster keep bootstrapping with the files that cluster was created with);
#      local --weights files go to S3_PREFIX/deploy/DEPLOY_ID/weights/;
#   3. aws emr create-cluster with Spark, Livy and JupyterHub (+ Jupyter Enterprise Gateway with
#      --studio), the bootstrap action, the configurations (configurations.json + jupyter-s3-conf, so
#      notebooks saved in JupyterHub outlive the cluster), the tag the v2 managed policies require
#      and an idle auto-termination policy; optionally with the pipeline and/or notebook 02 as steps
#      (--run-pipeline / --run-notebook, with --input and --output).
#
# Options (default in brackets):
#   --s3-prefix URI          S3 folder for artefacts and logs (required), e.g. s3://my-bucket/p8
#   --name NAME              cluster name [p8utils]
#   --release-label LABEL    EMR release [emr-7.13.0] (must be emr-7.x: Spark 3.5, Amazon Linux 2023)
#   --region REGION          AWS region of the cluster [the aws CLI's default: AWS_REGION,
#                            AWS_DEFAULT_REGION, then the profile's]; it must be the region of the
#                            --s3-prefix bucket (read with s3api get-bucket-location before anything
#                            is uploaded), so that data stays where it is kept (data residency)
#   --allow-cross-region     create the cluster even if its region is not its bucket's (data then
#                            leaves the bucket's region: transfer costs, and GDPR residency for EU data)
#   --master-type TYPE       primary node instance type [m5.xlarge]
#   --core-type TYPE         core node instance type [m5.2xlarge]
#   --core-count N           number of core nodes [2]
#   --key-name NAME          EC2 key pair, for SSH / the JupyterHub tunnel [none: then use Session Manager
#                            port forwarding, bootstrap/README.md section 4]
#   --subnet-id ID           subnet (private subnets: see --wheelhouse) [EMR default]
#   --log-uri URI            cluster logs [S3_PREFIX/emr-logs/]
#   --service-role ROLE      EMR service role [EMR_DefaultRole_V2: AWS's default role with the
#                            AmazonEMRServicePolicy_v2 managed policy]
#   --legacy-roles           use the v1 service role EMR_DefaultRole (AmazonElasticMapReduceRole,
#                            deprecated) for accounts that have not moved to the v2 policies
#   --instance-profile NAME  EC2 instance profile of the nodes [EMR_EC2_DefaultRole]
#   --idle-timeout SECONDS   terminate after this long idle, 60..604800; 0 = never [3600]
#   --ebs-root-volume-size GB  root volume size [EMR default]
#   --weights PATH|URI       Keras weights file to preload on every node (repeatable); keep the
#                            Keras file name, e.g. mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5
#   --wheel FILE             use this p8utils wheel instead of building one
#   --build-python PY        Python that builds the wheel [REPO/.venv/bin/python, else python3]
#   --cluster-python PY      Python the bootstrap builds the venv from: auto (/usr/bin/python3.11; the
#                            bootstrap FAILS, and the cluster with it, where the nodes lack it: no silent
#                            fallback to 3.9), 3.11 (installs the AL2023 package python3.11 if missing),
#                            3.9 (the 3.9 pin set, explicitly) or a path [auto]. The nodes record the
#                            choice in /opt/p8utils/venv/p8utils-python.json; each run prints it
#   --pip-index URL          package index for the nodes (e.g. a CodeArtifact/Artifactory mirror)
#   --wheelhouse             download every wheel the nodes need now and install them offline from
#                            S3 (for private subnets without a package mirror); needs a local
#                            Python of the cluster's version, see --wheelhouse-python
#   --wheelhouse-python PY   that Python [python3.11, or python3.9 with --cluster-python 3.9]
#   --configurations FILE    [bootstrap/configurations.json]
#   --notebook-bucket BUCKET S3 bucket where JupyterHub keeps the users' notebooks (jupyter-s3-conf:
#                            s3://BUCKET/jupyter/<user>/); "none" keeps them on the primary node's disk,
#                            lost with the cluster [the bucket of --s3-prefix]
#   --studio                 also install Jupyter Enterprise Gateway, which EMR's notebook executions
#                            (run_step.sh notebook --engine studio) and EMR Studio need
#   --deploy-id ID           name of the deploy folder [UTC timestamp]
#   --run-pipeline           add a step running `p8utils run` on --input / --output
#   --run-notebook           add a step running notebooks/02_emr_full_run.ipynb headless (papermill)
#   --input URI --output URI images to read / run folder to write, for the steps above
#   --pipeline-arg ARG       extra argument for `p8utils run` (repeatable), e.g. --pipeline-arg --k --pipeline-arg 50
#   --notebook FILE          notebook for --run-notebook [notebooks/02_emr_full_run.ipynb]
#   --auto-terminate         terminate the cluster when its steps are done
#   --dry-run                print the commands (one per line, shell-quoted) and run nothing;
#                            needs neither the aws CLI nor AWS credentials
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

die() {
    printf 'create_cluster.sh: ERROR: %s\n' "$*" >&2
    exit 1
}
note() { printf 'create_cluster.sh: %s\n' "$*" >&2; }
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

S3_PREFIX="" NAME=p8utils RELEASE=emr-7.13.0 REGION="" MASTER_TYPE=m5.xlarge CORE_TYPE=m5.2xlarge CORE_COUNT=2
KEY_NAME="" SUBNET_ID="" LOG_URI="" SERVICE_ROLE="" LEGACY_ROLES=0 INSTANCE_PROFILE=EMR_EC2_DefaultRole
IDLE_TIMEOUT=3600 ROOT_GB="" WEIGHTS=() WHEEL="" BUILD_PY="" CLUSTER_PY=auto PIP_INDEX=""
WHEELHOUSE=0 WHEELHOUSE_PY="" CONFIGURATIONS=$HERE/configurations.json DEPLOY_ID="" NOTEBOOK_BUCKET="" STUDIO=0
RUN_PIPELINE=0 RUN_NOTEBOOK=0 INPUT="" OUTPUT="" PIPELINE_ARGS=() NOTEBOOK=$REPO/notebooks/02_emr_full_run.ipynb
AUTO_TERMINATE=0 DRY_RUN=0 ALLOW_CROSS_REGION=0

need_value() { [[ $# -ge 2 && -n $2 ]] || die "option $1 needs a value (see --help)"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --s3-prefix) need_value "$@"; S3_PREFIX=${2%/}; shift 2 ;;
        --name) need_value "$@"; NAME=$2; shift 2 ;;
        --release-label) need_value "$@"; RELEASE=$2; shift 2 ;;
        --region) need_value "$@"; REGION=$2; shift 2 ;;
        --allow-cross-region) ALLOW_CROSS_REGION=1; shift ;;
        --master-type) need_value "$@"; MASTER_TYPE=$2; shift 2 ;;
        --core-type) need_value "$@"; CORE_TYPE=$2; shift 2 ;;
        --core-count) need_value "$@"; CORE_COUNT=$2; shift 2 ;;
        --key-name) need_value "$@"; KEY_NAME=$2; shift 2 ;;
        --subnet-id) need_value "$@"; SUBNET_ID=$2; shift 2 ;;
        --log-uri) need_value "$@"; LOG_URI=$2; shift 2 ;;
        --service-role) need_value "$@"; SERVICE_ROLE=$2; shift 2 ;;
        --legacy-roles) LEGACY_ROLES=1; shift ;;
        --notebook-bucket) need_value "$@"; NOTEBOOK_BUCKET=$2; shift 2 ;;
        --studio) STUDIO=1; shift ;;
        --instance-profile) need_value "$@"; INSTANCE_PROFILE=$2; shift 2 ;;
        --idle-timeout) need_value "$@"; IDLE_TIMEOUT=$2; shift 2 ;;
        --ebs-root-volume-size) need_value "$@"; ROOT_GB=$2; shift 2 ;;
        --weights) need_value "$@"; WEIGHTS+=("$2"); shift 2 ;;
        --wheel) need_value "$@"; WHEEL=$2; shift 2 ;;
        --build-python) need_value "$@"; BUILD_PY=$2; shift 2 ;;
        --cluster-python) need_value "$@"; CLUSTER_PY=$2; shift 2 ;;
        --pip-index) need_value "$@"; PIP_INDEX=$2; shift 2 ;;
        --wheelhouse) WHEELHOUSE=1; shift ;;
        --wheelhouse-python) need_value "$@"; WHEELHOUSE_PY=$2; shift 2 ;;
        --configurations) need_value "$@"; CONFIGURATIONS=$2; shift 2 ;;
        --deploy-id) need_value "$@"; DEPLOY_ID=$2; shift 2 ;;
        --run-pipeline) RUN_PIPELINE=1; shift ;;
        --run-notebook) RUN_NOTEBOOK=1; shift ;;
        --input) need_value "$@"; INPUT=$2; shift 2 ;;
        --output) need_value "$@"; OUTPUT=$2; shift 2 ;;
        --pipeline-arg) [[ $# -ge 2 ]] || die "--pipeline-arg needs a value"; PIPELINE_ARGS+=("$2"); shift 2 ;;
        --notebook) need_value "$@"; NOTEBOOK=$2; shift 2 ;;
        --auto-terminate) AUTO_TERMINATE=1; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

# ---- validation: fail before touching anything ------------------------------------------------
[[ -n $S3_PREFIX ]] || die "--s3-prefix s3://BUCKET/PREFIX is required (artefacts and logs go there)"
[[ $S3_PREFIX == s3://?* ]] || die "--s3-prefix must be an s3:// URI, got '$S3_PREFIX'"
[[ $RELEASE == emr-7.* ]] || die "--release-label must be an EMR 7.x release (Spark 3.5 on Amazon Linux 2023): the bootstrap pins are for it; got '$RELEASE'"
[[ $CORE_COUNT =~ ^[0-9]+$ ]] || die "--core-count must be a whole number, got '$CORE_COUNT'"
[[ $IDLE_TIMEOUT =~ ^[0-9]+$ ]] || die "--idle-timeout must be seconds (a whole number), got '$IDLE_TIMEOUT'"
if [[ $IDLE_TIMEOUT != 0 ]] && ((IDLE_TIMEOUT < 60 || IDLE_TIMEOUT > 604800)); then
    die "--idle-timeout must be 0 (off) or 60..604800 seconds (EMR's limits), got $IDLE_TIMEOUT"
fi
[[ -z $ROOT_GB || $ROOT_GB =~ ^[0-9]+$ ]] || die "--ebs-root-volume-size must be GiB (a whole number)"
[[ -f $CONFIGURATIONS ]] || die "configurations file not found: $CONFIGURATIONS"
[[ -z $PIP_INDEX || $WHEELHOUSE == 0 ]] || die "give --pip-index or --wheelhouse, not both"
LOG_URI=${LOG_URI:-$S3_PREFIX/emr-logs/}
[[ -z $SERVICE_ROLE || $LEGACY_ROLES == 0 ]] || die "give --service-role or --legacy-roles, not both"
if [[ -z $SERVICE_ROLE ]]; then
    if [[ $LEGACY_ROLES == 1 ]]; then SERVICE_ROLE=EMR_DefaultRole; else SERVICE_ROLE=EMR_DefaultRole_V2; fi
fi
# Requirements file of each Python the bootstrap may pick (its `# python-versions:` line decides).
REQ311=$HERE/requirements-emr.txt REQ39=$HERE/requirements-emr-py39.txt
case "$CLUSTER_PY" in
    auto | 3.11 | */python3.11) py_version=3.11 ;;
    3.9 | */python3.9 | /usr/bin/python3) py_version=3.9 ;;
    *) py_version="" ;;
esac
if [[ $WHEELHOUSE == 1 ]]; then
    [[ -n $py_version ]] || die "--wheelhouse needs --cluster-python auto, 3.11 or 3.9 (the wheels are resolved for it)"
    # The wheels are for one Python: make the bootstrap use that one (auto could pick the other).
    [[ $CLUSTER_PY != auto ]] || CLUSTER_PY=3.11
    WHEELHOUSE_PY=${WHEELHOUSE_PY:-python$py_version}
fi
[[ $NOTEBOOK_BUCKET != *[/:]* ]] || die "--notebook-bucket must be an S3 bucket name (no s3://, no /) or none, got '$NOTEBOOK_BUCKET'"
NOTEBOOK_BUCKET=${NOTEBOOK_BUCKET:-$(b=${S3_PREFIX#s3://}; printf '%s' "${b%%/*}")}
if [[ $RUN_PIPELINE == 1 || $RUN_NOTEBOOK == 1 ]]; then
    [[ -n $INPUT && -n $OUTPUT ]] || die "--run-pipeline/--run-notebook need --input URI and --output URI"
elif [[ -n $INPUT || -n $OUTPUT || ${#PIPELINE_ARGS[@]} -gt 0 ]]; then
    die "--input/--output/--pipeline-arg only make sense with --run-pipeline or --run-notebook"
fi
if [[ $RUN_NOTEBOOK == 1 ]]; then
    [[ -f $NOTEBOOK ]] || die "notebook not found: $NOTEBOOK (give --notebook FILE)"
fi
if [[ $AUTO_TERMINATE == 1 && $RUN_PIPELINE == 0 && $RUN_NOTEBOOK == 0 ]]; then
    die "--auto-terminate without --run-pipeline/--run-notebook would terminate the cluster right after it starts"
fi
DEPLOY_ID=${DEPLOY_ID:-$(date -u '+%Y%m%dT%H%M%SZ')}
[[ $DEPLOY_ID =~ ^[A-Za-z0-9._-]+$ ]] || die "--deploy-id may only contain letters, digits, '.', '_' and '-'"
DEPLOY=$S3_PREFIX/deploy/$DEPLOY_ID

if [[ $DRY_RUN == 0 ]]; then
    command -v aws >/dev/null || die "the aws CLI is not installed (https://docs.aws.amazon.com/cli/); try --dry-run"
fi

# Print a command, and run it unless --dry-run. In a real run the printed copy goes to stderr.
run() {
    if [[ $DRY_RUN == 1 ]]; then
        print_cmd "$@"
    else
        printf '+ %s\n' "$(print_cmd "$@")" >&2
        "$@"
    fi
}
region_args=()
[[ -z $REGION ]] || region_args=(--region "$REGION")

# ---- data residency: the cluster runs in its bucket's region (before anything is built or uploaded) ----
BUCKET=${S3_PREFIX#s3://} BUCKET=${BUCKET%%/*}
if [[ $DRY_RUN == 1 ]]; then
    [[ $ALLOW_CROSS_REGION == 1 ]] ||
        note "--dry-run: not checking that s3://$BUCKET is in the cluster's region (a real run does)"
else
    cluster_region=${REGION:-${AWS_REGION:-${AWS_DEFAULT_REGION:-$(aws configure get region 2>/dev/null || true)}}}
    [[ -n $cluster_region ]] || die "no AWS region: give --region (the region of s3://$BUCKET)"
    if bucket_region=$(aws s3api get-bucket-location --bucket "$BUCKET" --query LocationConstraint \
        --output text "${region_args[@]}"); then
        # GetBucketLocation: no LocationConstraint (null) is us-east-1, the legacy EU is eu-west-1
        case "$bucket_region" in "" | None | null) bucket_region=us-east-1 ;; EU) bucket_region=eu-west-1 ;; esac
        if [[ $bucket_region != "$cluster_region" ]]; then
            [[ $ALLOW_CROSS_REGION == 1 ]] ||
                die "the cluster's region is $cluster_region but s3://$BUCKET is in $bucket_region: give --region $bucket_region (data stays in its region; see 'Data residency' in bootstrap/README.md), or --allow-cross-region"
            note "cross-region: cluster in $cluster_region, s3://$BUCKET in $bucket_region (--allow-cross-region)"
        fi
    elif [[ $ALLOW_CROSS_REGION == 1 ]]; then
        note "could not read the region of s3://$BUCKET; not checked (--allow-cross-region)"
    else
        die "could not read the region of s3://$BUCKET (aws s3api get-bucket-location, s3:GetBucketLocation; see above): it must be the cluster's ($cluster_region); --allow-cross-region skips the check"
    fi
fi

# ---- 1. the wheel ------------------------------------------------------------------------------
if [[ -n $WHEEL ]]; then
    [[ -f $WHEEL ]] || die "wheel not found: $WHEEL"
    [[ $(basename "$WHEEL") == p8utils-*.whl ]] || die "--wheel must be a p8utils-<version>-...whl file, got '$WHEEL'"
    WHEEL_FILE=$WHEEL
else
    [[ -f $REPO/pyproject.toml ]] || die "no pyproject.toml in $REPO: cannot build the wheel (or give --wheel FILE)"
    version=$(sed -n 's/^version[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$REPO/pyproject.toml" | head -n 1)
    [[ -n $version ]] || die "could not read the version from $REPO/pyproject.toml"
    if [[ -z $BUILD_PY ]]; then
        if [[ -x $REPO/.venv/bin/python ]]; then BUILD_PY=$REPO/.venv/bin/python; else BUILD_PY=python3; fi
    fi
    WHEEL_FILE=$REPO/dist/p8utils-$version-py3-none-any.whl
    run "$BUILD_PY" -m pip wheel --no-deps --wheel-dir "$REPO/dist" "$REPO"
    [[ $DRY_RUN == 1 || -f $WHEEL_FILE ]] || die "the build did not produce $WHEEL_FILE"
fi
WHEEL_NAME=$(basename "$WHEEL_FILE")

# ---- 2. uploads ---------------------------------------------------------------------------------
run aws s3 cp --only-show-errors "$HERE/emr_bootstrap.sh" "$DEPLOY/emr_bootstrap.sh" "${region_args[@]}"
run aws s3 cp --only-show-errors "$REQ311" "$DEPLOY/requirements-emr.txt" "${region_args[@]}"
run aws s3 cp --only-show-errors "$REQ39" "$DEPLOY/requirements-emr-py39.txt" "${region_args[@]}"
run aws s3 cp --only-show-errors "$WHEEL_FILE" "$DEPLOY/$WHEEL_NAME" "${region_args[@]}"
run aws s3 cp --only-show-errors "$CONFIGURATIONS" "$DEPLOY/configurations.json" "${region_args[@]}"
run aws s3 cp --only-show-errors "$HERE/run_notebook_on_master.sh" "$DEPLOY/run_notebook_on_master.sh" "${region_args[@]}"
run aws s3 cp --only-show-errors "$HERE/sparkmagic_config.py" "$DEPLOY/sparkmagic_config.py" "${region_args[@]}"
NOTEBOOK_URI=""
if [[ -f $NOTEBOOK ]]; then
    NOTEBOOK_URI=$DEPLOY/notebooks/$(basename "$NOTEBOOK")
    run aws s3 cp --only-show-errors "$NOTEBOOK" "$NOTEBOOK_URI" "${region_args[@]}"
fi

bootstrap_args=(--wheel "$DEPLOY/$WHEEL_NAME" --requirements "$DEPLOY/requirements-emr.txt"
    --requirements "$DEPLOY/requirements-emr-py39.txt" --python "$CLUSTER_PY")
for w in "${WEIGHTS[@]}"; do
    if [[ $w == s3://* ]]; then
        bootstrap_args+=(--weights "$w")
    else
        [[ -f $w ]] || die "weights file not found: $w"
        run aws s3 cp --only-show-errors "$w" "$DEPLOY/weights/$(basename "$w")" "${region_args[@]}"
        bootstrap_args+=(--weights "$DEPLOY/weights/$(basename "$w")")
    fi
done
[[ -z $PIP_INDEX ]] || bootstrap_args+=(--pip-index "$PIP_INDEX")

if [[ $WHEELHOUSE == 1 ]]; then
    # Resolve with a Python of the cluster's version: pip evaluates markers such as
    # python_version < "3.10" with the interpreter it runs on, whatever --python-version says.
    if [[ $DRY_RUN == 0 ]]; then
        have=$("$WHEELHOUSE_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) ||
            die "--wheelhouse needs Python $py_version locally (--wheelhouse-python; '$WHEELHOUSE_PY' not found)"
        [[ $have == "$py_version" ]] || die "--wheelhouse-python is Python $have but the cluster Python ($CLUSTER_PY) is $py_version"
    fi
    if [[ $py_version == 3.9 ]]; then wheel_reqs=$REQ39; else wheel_reqs=$REQ311; fi
    wheelhouse_dir=$REPO/dist/wheelhouse-py$py_version
    # AL2023 has glibc 2.34: every manylinux tag up to 2_34 installs there (TensorFlow 2.21 is 2_27).
    run "$WHEELHOUSE_PY" -m pip download --only-binary=:all: --platform manylinux2014_x86_64 \
        --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_34_x86_64 \
        -r "$wheel_reqs" -d "$wheelhouse_dir"
    run aws s3 sync --only-show-errors "$wheelhouse_dir" "$DEPLOY/wheelhouse/" "${region_args[@]}"
    bootstrap_args+=(--wheelhouse "$DEPLOY/wheelhouse/")
fi

# ---- 3. the cluster -----------------------------------------------------------------------------
ec2_json="{\"InstanceProfile\":$(json_str "$INSTANCE_PROFILE")"
[[ -z $KEY_NAME ]] || ec2_json+=",\"KeyName\":$(json_str "$KEY_NAME")"
[[ -z $SUBNET_ID ]] || ec2_json+=",\"SubnetId\":$(json_str "$SUBNET_ID")"
ec2_json+="}"
bootstrap_json="[{\"Name\":\"p8utils\",\"Path\":$(json_str "$DEPLOY/emr_bootstrap.sh"),\"Args\":$(json_array "${bootstrap_args[@]}")}]"

# configurations.json, plus JupyterHub's notebook persistence in S3 (jupyter-s3-conf), inline.
# One line: compacted (and checked) by a local python3 when there is one, else blanks for line breaks.
if command -v python3 >/dev/null; then
    configurations=$(python3 -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1])), separators=(",", ":")))' \
        "$CONFIGURATIONS") || die "$CONFIGURATIONS is not valid JSON (see above)"
else
    configurations=$(tr '\n\r\t' '   ' <"$CONFIGURATIONS" | sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//')
fi
[[ $configurations == "["*"]" ]] || die "$CONFIGURATIONS must hold a JSON list of classifications ([...])"
if [[ $NOTEBOOK_BUCKET != none ]]; then
    persistence="{\"Classification\":\"jupyter-s3-conf\",\"Properties\":{\"s3.persistence.enabled\":\"true\",\"s3.persistence.bucket\":$(json_str "$NOTEBOOK_BUCKET")}}"
    configurations=${configurations%]}
    configurations=${configurations%"${configurations##*[![:space:]]}"} # trailing blanks
    if [[ $configurations == "[" ]]; then configurations="[$persistence]"; else configurations+=",$persistence]"; fi
fi
applications=(Name=Spark Name=Livy Name=JupyterHub)
[[ $STUDIO == 0 ]] || applications+=(Name=JupyterEnterpriseGateway)

create=(aws emr create-cluster
    --name "$NAME"
    --release-label "$RELEASE"
    --applications "${applications[@]}"
    --instance-groups "InstanceGroupType=MASTER,InstanceCount=1,InstanceType=$MASTER_TYPE"
    "InstanceGroupType=CORE,InstanceCount=$CORE_COUNT,InstanceType=$CORE_TYPE"
    --service-role "$SERVICE_ROLE"
    --ec2-attributes "$ec2_json"
    --log-uri "$LOG_URI"
    --bootstrap-actions "$bootstrap_json"
    --configurations "$configurations"
    --tags project=p8utils "deploy=$DEPLOY_ID" for-use-with-amazon-emr-managed-policies=true)
[[ $IDLE_TIMEOUT == 0 ]] || create+=(--auto-termination-policy "IdleTimeout=$IDLE_TIMEOUT")
[[ -z $ROOT_GB ]] || create+=(--ebs-root-volume-size "$ROOT_GB")

steps=()
if [[ $RUN_PIPELINE == 1 ]]; then
    json=$("$HERE/run_step.sh" pipeline --print-json --input "$INPUT" --output "$OUTPUT" \
        --core-type "$CORE_TYPE" --core-count "$CORE_COUNT" -- "${PIPELINE_ARGS[@]}")
    steps+=("${json:1:${#json}-2}")
fi
if [[ $RUN_NOTEBOOK == 1 ]]; then
    json=$("$HERE/run_step.sh" notebook --print-json --runner "$DEPLOY/run_notebook_on_master.sh" \
        --notebook "$NOTEBOOK_URI" --input "$INPUT" --output "$OUTPUT" --core-type "$CORE_TYPE" --core-count "$CORE_COUNT")
    steps+=("${json:1:${#json}-2}")
fi
if [[ ${#steps[@]} -gt 0 ]]; then
    joined=$(printf '%s,' "${steps[@]}")
    create+=(--steps "[${joined%,}]")
fi
[[ $AUTO_TERMINATE == 0 ]] || create+=(--auto-terminate)
create+=("${region_args[@]}" --query ClusterId --output text)

if [[ $DRY_RUN == 1 ]]; then
    print_cmd "${create[@]}"
    exit 0
fi

printf '+ %s\n' "$(print_cmd "${create[@]}")" >&2
cluster_id=$("${create[@]}") || die "aws emr create-cluster failed (see the message above)"
printf '%s\n' "$cluster_id"
note "cluster $cluster_id is starting (bootstrap logs: $LOG_URI$cluster_id/node/*/bootstrap-actions/1/)."
note "wait until ready:  aws emr wait cluster-running --cluster-id $cluster_id${REGION:+ --region $REGION}"
note "terminate (it bills while idle): aws emr terminate-clusters --cluster-ids $cluster_id${REGION:+ --region $REGION}"
if [[ -z $KEY_NAME ]]; then
    note "no --key-name: reach JupyterHub (9443) with Session Manager port forwarding (bootstrap/README.md, section 4; the role of instance profile $INSTANCE_PROFILE needs AmazonSSMManagedInstanceCore)"
fi
