"""A local AWS API emulator for the EMR kit's tests: moto's server (EMR + S3), in a subprocess.

The kit's scripts (``bootstrap/create_cluster.sh``, ``run_step.sh``) run for real against it: the real aws
CLI, pointed at it with ``AWS_ENDPOINT_URL`` and throw-away credentials, uploads to its S3, creates clusters
and adds steps in its EMR. Every request it receives is recorded (moto's recorder) so a test can assert
what the scripts sent, and the emulator's state can be read back through the same API.

moto (5.2) does not implement EMR's notebook executions (``StartNotebookExecution``,
``DescribeNotebookExecution``, ``ListNotebookExecutions``, ``StopNotebookExecution``). This module adds them to
moto's EMR responses, in moto's own request parsing and response serialization (botocore's service model),
with the checks EMR makes that matter here: the cluster exists and is not terminated, the notebook object
exists in (emulated) S3, ``NotebookParams`` is a JSON object. An execution moves START_PENDING → RUNNING →
FINISHED, one step per ``DescribeNotebookExecution`` call (``P8_EMULATOR_NOTEBOOK_FINAL=FAILED`` ends it in
FAILED instead); nothing is executed.

It refuses what AWS refuses: every EMR request is validated against its operation's input shape in botocore's
EMR service model (``botocore/data/emr/2009-03-31/service-2.json``): unknown and missing required members, types
(botocore's ``ParamValidator``) and what botocore leaves to the service (enum values, maximum lengths and
values, patterns); a request that fails gets EMR's answer, HTTP 400 ``ValidationException`` with AWS's wording
("1 validation error detected: Value 'IPYNB' at 'outputNotebookFormat' failed to satisfy constraint: ...").
S3 requests are parsed into their operation's members (moto's router and rest-xml parser) and validated against
botocore's S3 model the same way, answered with S3's XML error (``InvalidStorageClass``,
``InvalidLocationConstraint``, else ``InvalidArgument``); virtual-host style S3 requests are not checked.
``P8_EMULATOR_VALIDATE=0`` in the emulator's environment turns both checks off.

Command line (prints the URL on one line, serves until SIGTERM/SIGINT)::

    python -m tests.harness.aws_emulator --port 0 --recording requests.jsonl

From a fixture: :func:`start` (returns an :class:`Emulator`: ``.url``, ``.env()``, ``.requests()``, ``.stop()``).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[2]
# us-east-1: the aws CLI v1 replaces the endpoint of `aws emr ...` commands by the regional
# elasticmapreduce.amazonaws.com name for most regions (awscli/customizations/overridesslcommonname.py),
# ignoring AWS_ENDPOINT_URL; us-east-1 is not in that table, so AWS_ENDPOINT_URL applies.
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account


# ------------------------------------------------------------------------------------------------
# Request validation: what AWS refuses, the emulator refuses (runs inside the emulator process)
# ------------------------------------------------------------------------------------------------
def _aws_path(name: str) -> str:
    """botocore's parameter path (``ExecutionEngine.Id``, ``Tags[0].Key``) in AWS's wording (``executionEngine.id``,
    ``tags.1.member.key``)."""
    out = []
    for part in name.split("."):
        base, _, index = part.partition("[")
        out.append(base.lower() if base.isupper() else base[:1].lower() + base[1:])
        if index:
            out.append(f"{int(index.rstrip(']')) + 1}.member")
    return ".".join(p for p in out if p)


def validation_errors(params: Any, shape: Any) -> List[str]:
    """Everything ``params`` (a parsed request) breaks in ``shape`` (an operation's input shape, botocore's service
    model), as AWS words it: unknown and missing members, types (botocore's ParamValidator), plus what botocore's
    client-side validator leaves to the service: enum values, maximum lengths and sizes, patterns."""
    import re

    from botocore.validate import ParamValidator, ValidationErrors

    class Validator(ParamValidator):
        def _validate_string(self, param: Any, shape: Any, errors: Any, name: str) -> None:
            super()._validate_string(param, shape, errors, name)
            if not isinstance(param, str):
                return
            if shape.enum and param not in shape.enum:
                errors.report(name, "enum", param=param, allowed=shape.enum)
            if "max" in shape.metadata and len(param) > shape.metadata["max"]:
                errors.report(name, "max length", param=param, limit=shape.metadata["max"])
            pattern = shape.metadata.get("pattern")
            if pattern:
                try:
                    ok = re.search(pattern, param) is not None  # Smithy: patterns are not implicitly anchored
                except re.error:
                    ok = True  # a Java-only construct: not checked here
                if not ok:
                    errors.report(name, "pattern", param=param, pattern=pattern)

        def _validate_list(self, param: Any, shape: Any, errors: Any, name: str) -> None:
            super()._validate_list(param, shape, errors, name)
            if isinstance(param, (list, tuple)) and "max" in shape.metadata and len(param) > shape.metadata["max"]:
                errors.report(name, "max length", param=param, limit=shape.metadata["max"])

        def _validate_map(self, param: Any, shape: Any, errors: Any, name: str) -> None:
            super()._validate_map(param, shape, errors, name)
            if isinstance(param, dict) and "max" in shape.metadata and len(param) > shape.metadata["max"]:
                errors.report(name, "max length", param=param, limit=shape.metadata["max"])

        def _check_max(self, param: Any, shape: Any, errors: Any, name: str) -> None:
            if isinstance(param, (int, float)) and "max" in shape.metadata and param > shape.metadata["max"]:
                errors.report(name, "max value", param=param, limit=shape.metadata["max"])

        def _validate_integer(self, param: Any, shape: Any, errors: Any, name: str) -> None:
            super()._validate_integer(param, shape, errors, name)
            self._check_max(param, shape, errors, name)

        def _validate_long(self, param: Any, shape: Any, errors: Any, name: str) -> None:
            super()._validate_long(param, shape, errors, name)
            self._check_max(param, shape, errors, name)

        def _validate_double(self, param: Any, shape: Any, errors: Any, name: str) -> None:
            super()._validate_double(param, shape, errors, name)
            self._check_max(param, shape, errors, name)

    errors = ValidationErrors()
    Validator()._validate(params, shape, errors, "")
    messages = []
    for reason, name, extra in errors._errors:
        where = _aws_path(name)
        value = extra.get("param")
        shown = "null" if value is None else f"'{value}'"
        if reason == "missing required field":
            where = _aws_path(f"{name}.{extra['required_name']}" if name else extra["required_name"])
            messages.append(f"Value null at '{where}' failed to satisfy constraint: Member must not be null")
        elif reason == "unknown field":
            messages.append(f"Unknown member '{extra['unknown_param']}' at '{where or '(request)'}': valid members "
                            f"are {', '.join(extra['valid_names'])}")
        elif reason == "enum":
            messages.append(f"Value {shown} at '{where}' failed to satisfy constraint: Member must satisfy enum "
                            f"value set: [{', '.join(extra['allowed'])}]")
        elif reason == "max length":
            messages.append(f"Value at '{where}' failed to satisfy constraint: Member must have length less than "
                            f"or equal to {extra['limit']}")
        elif reason == "invalid length":
            messages.append(f"Value {shown} at '{where}' failed to satisfy constraint: Member must have length "
                            f"greater than or equal to {extra['min_allowed']}")
        elif reason == "max value":
            messages.append(f"Value {shown} at '{where}' failed to satisfy constraint: Member must have value less "
                            f"than or equal to {extra['limit']}")
        elif reason == "invalid range":
            messages.append(f"Value {shown} at '{where}' failed to satisfy constraint: Member must have value "
                            f"greater than or equal to {extra['min_allowed']}")
        elif reason == "pattern":
            messages.append(f"Value {shown} at '{where}' failed to satisfy constraint: Member must satisfy regular "
                            f"expression pattern: {extra['pattern']}")
        else:  # invalid type and the rest: botocore's own wording
            messages.append(errors._format_error((reason, name, extra)))
    return messages


def validation_message(messages: List[str]) -> str:
    count = len(messages)
    return f"{count} validation error{'s' if count > 1 else ''} detected: " + "; ".join(messages)


def _install_emr_validation() -> None:
    """Every EMR (JSON protocol) request is checked against its operation's input shape before moto sees it;
    a request AWS would refuse gets EMR's answer: HTTP 400, ``ValidationException``."""
    from moto.emr.responses import ElasticMapReduceResponse

    model = _service_model("emr")
    moto_call_action = ElasticMapReduceResponse.call_action

    def refuse(error_type: str, message: str) -> Any:
        headers = {"Content-Type": "application/x-amz-json-1.1", "x-amzn-ErrorType": error_type,
                   "x-amzn-RequestId": str(uuid.uuid4())}
        return 400, headers, json.dumps({"__type": error_type, "message": message})

    def call_action(self: Any) -> Any:
        action = self._get_action()
        if action in model.operation_names:
            body = self.body.decode() if isinstance(self.body, bytes) else (self.body or "")
            try:
                params = json.loads(body) if body.strip() else {}
            except ValueError:
                return refuse("SerializationException", "the request body is not JSON")
            if not isinstance(params, dict):
                return refuse("SerializationException", "the request body is not a JSON object")
            shape = model.operation_model(action).input_shape
            messages = validation_errors(params, shape) if shape is not None else []
            if messages:
                return refuse("ValidationException", validation_message(messages))
        return moto_call_action(self)

    ElasticMapReduceResponse.call_action = call_action


# S3's error code for a member whose value S3 does not know (S3 answers no ValidationException).
S3_ERROR_CODES = {"StorageClass": "InvalidStorageClass", "LocationConstraint": "InvalidLocationConstraint"}


@functools.cache
def _service_model(name: str) -> Any:
    import botocore.session

    return botocore.session.get_session().get_service_model(name)


def s3_validation_errors(request: Any) -> List[tuple]:
    """``(error code, message)`` for what an S3 request breaks in its operation's input shape (botocore's S3
    model): the operation is found from the method, path and query (moto's router), the request is parsed into
    the operation's members (moto's rest-xml parser: URI labels, query, headers, XML body) and validated.
    Nothing for a request no operation matches (moto answers it as before)."""
    from moto.core.parse import RestXMLParser
    from moto.core.routing import NotFound, get_service_router

    host = (request.host or "").rsplit(":", 1)[0]
    if host != "localhost" and not host.replace(".", "").isdigit():
        return []  # virtual-host style (the bucket in the host name): the model's paths do not apply as they are
    try:
        operation, uri_params = get_service_router("s3").match(request)
    except (NotFound, NotImplementedError):
        return []
    try:
        parsed = RestXMLParser(operation, map_type=dict).parse({
            "method": request.method, "values": request.values, "headers": request.headers, "body": request.data,
            "url_path": request.path, "url_params": uri_params})
    except Exception as error:  # noqa: BLE001 - moto's own handler decides (and logs why the check did not run)
        print(f"aws_emulator: {operation.name} not validated: {error!r}", file=sys.stderr, flush=True)
        return []
    shape = _service_model("s3").operation_model(operation.name).input_shape
    if shape is None:
        return []
    found = []
    for message in validation_errors(_plain(parsed), shape):
        member = next((m for m in S3_ERROR_CODES if f"'{m[:1].lower()}{m[1:]}'" in message or
                       f".{m[:1].lower()}{m[1:]}'" in message), None)
        found.append((S3_ERROR_CODES.get(member, "InvalidArgument"), f"{operation.name}: {message}"))
    return found


def _install_s3_validation() -> None:
    """Every S3 request moto routes to a bucket or key handler is checked first (:func:`s3_validation_errors`);
    a refused one gets S3's XML error, HTTP 400."""
    from xml.sax.saxutils import escape

    from moto.s3.responses import S3Response

    def checked(original: Any) -> Any:
        def handler(self: Any, request: Any, full_url: str, headers: Any) -> Any:
            errors = s3_validation_errors(request)
            if errors:
                code = errors[0][0]
                message = "; ".join(m for _, m in errors)
                body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                        f"<Message>{escape(message)}</Message><RequestId>{uuid.uuid4()}</RequestId></Error>")
                return 400, {"Content-Type": "application/xml"}, body
            return original(self, request, full_url, headers)

        handler.__name__ = original.__name__
        return handler

    S3Response.bucket_response = checked(S3Response.bucket_response)
    S3Response.key_response = checked(S3Response.key_response)


# ------------------------------------------------------------------------------------------------
# Notebook executions, added to moto's EMR responses (runs inside the emulator process)
# ------------------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """moto's parsed parameters (case-insensitive dicts) as plain Python values."""
    if hasattr(value, "original_dict"):
        value = value.original_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _install_notebook_executions() -> None:
    from moto.core.responses import ActionResult
    from moto.emr.exceptions import InvalidRequestException, ResourceNotFoundException
    from moto.emr.responses import ElasticMapReduceResponse
    from moto.s3.models import s3_backends

    executions: Dict[str, Dict[str, Any]] = {}
    lock = threading.Lock()
    progression = ["START_PENDING", "RUNNING", os.environ.get("P8_EMULATOR_NOTEBOOK_FINAL", "FINISHED")]

    def start_notebook_execution(self: Any) -> ActionResult:
        engine = _plain(self._get_param("ExecutionEngine")) or {}
        cluster_id = engine.get("Id")
        cluster = self.backend.clusters.get(cluster_id)
        if cluster is None:
            raise InvalidRequestException(f"Cluster id '{cluster_id}' is not valid.")
        if str(getattr(cluster, "state", "")).startswith("TERMINAT"):
            raise InvalidRequestException(f"Cluster {cluster_id} is {cluster.state}.")
        if not self._get_param("ServiceRole"):
            raise InvalidRequestException("ServiceRole is required.")
        source = _plain(self._get_param("NotebookS3Location")) or {}
        relative = self._get_param("RelativePath")
        if not source and not (self._get_param("EditorId") and relative):
            raise InvalidRequestException("Specify NotebookS3Location (or EditorId and RelativePath).")
        if source:
            s3 = s3_backends[self.current_account]["global"]
            if s3.get_object(source.get("Bucket", ""), source.get("Key", "")) is None:
                raise InvalidRequestException(f"Notebook s3://{source.get('Bucket')}/{source.get('Key')} not found.")
        params = self._get_param("NotebookParams")
        if params is not None:
            try:
                ok = isinstance(json.loads(params), dict)
            except ValueError:
                ok = False
            if not ok:
                raise InvalidRequestException("NotebookParams must be a JSON object.")
        execution_id = "ex-" + uuid.uuid4().hex[:25].upper()
        output = _plain(self._get_param("OutputNotebookS3Location")) or {}
        record = {
            "NotebookExecutionId": execution_id,
            "ExecutionEngine": {"Id": cluster_id, "Type": engine.get("Type", "EMR")},
            "NotebookExecutionName": self._get_param("NotebookExecutionName") or "",
            "NotebookParams": params or "",
            "Status": progression[0],
            "StartTime": datetime.datetime.now(datetime.timezone.utc),
            "Arn": f"arn:aws:elasticmapreduce:{self.region}:{self.current_account}:notebook-execution/{execution_id}",
            "LastStateChangeReason": "",
            "NotebookS3Location": source,
            "OutputNotebookS3Location": output,
            "Tags": _plain(self._get_param("Tags")) or [],
        }
        # OutputNotebookFormat's one value (botocore's emr service-2.json) is HTML; without it, the notebook.
        output_format = self._get_param("OutputNotebookFormat")
        if output_format:
            record["OutputNotebookFormat"] = output_format
        if output:
            suffix = ".html" if output_format == "HTML" else ".ipynb"
            record["OutputNotebookURI"] = f"s3://{output.get('Bucket')}/{output.get('Key', '')}{execution_id}{suffix}"
        with lock:
            executions[execution_id] = {"record": record, "step": 0}
        return ActionResult({"NotebookExecutionId": execution_id})

    def describe_notebook_execution(self: Any) -> ActionResult:
        execution_id = self._get_param("NotebookExecutionId")
        with lock:
            entry = executions.get(execution_id)
            if entry is None:
                raise ResourceNotFoundException(f"Notebook execution {execution_id} not found.")
            record = dict(entry["record"])
            entry["step"] = min(entry["step"] + 1, len(progression) - 1)
            entry["record"]["Status"] = progression[entry["step"]]
            if entry["record"]["Status"] == "FAILED":
                entry["record"]["LastStateChangeReason"] = "Execution failed (emulator: P8_EMULATOR_NOTEBOOK_FINAL)"
        return ActionResult({"NotebookExecution": record})

    def list_notebook_executions(self: Any) -> ActionResult:
        with lock:
            summaries = [{k: e["record"][k] for k in ("NotebookExecutionId", "NotebookExecutionName", "Status",
                                                       "StartTime", "NotebookS3Location")}
                         for e in executions.values()]
        return ActionResult({"NotebookExecutions": summaries})

    def stop_notebook_execution(self: Any) -> ActionResult:
        from moto.core.responses import EmptyResult

        execution_id = self._get_param("NotebookExecutionId")
        with lock:
            if execution_id not in executions:
                raise ResourceNotFoundException(f"Notebook execution {execution_id} not found.")
            executions[execution_id]["record"]["Status"] = "STOPPED"
            executions[execution_id]["step"] = len(progression) - 1
        return EmptyResult()

    for func in (start_notebook_execution, describe_notebook_execution, list_notebook_executions,
                 stop_notebook_execution):
        setattr(ElasticMapReduceResponse, func.__name__, func)


def _install_serial_recording() -> None:
    """moto's recorder appends each request as two writes from the server's request threads: concurrent
    requests (Spark's S3A tasks) interleaved their lines, so one lock serialises the whole record."""
    from moto.moto_api._internal.recorder.models import Recorder

    record, lock = Recorder._record_request, threading.Lock()

    def serial_record(self: Any, *args: Any, **kwargs: Any) -> None:
        with lock:
            record(self, *args, **kwargs)

    Recorder._record_request = serial_record


def _serve(port: int) -> int:
    _install_serial_recording()
    if os.environ.get("P8_EMULATOR_VALIDATE", "1") != "0":
        _install_emr_validation()
        _install_s3_validation()
    _install_notebook_executions()
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, real_port = server.get_host_and_port()
    print(f"http://{host}:{real_port}", flush=True)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    server.stop()
    return 0


# ------------------------------------------------------------------------------------------------
# The test side
# ------------------------------------------------------------------------------------------------
class Emulator:
    """A running emulator subprocess; ``url``, ``env()``, ``requests()``, ``stop()``."""

    def __init__(self, proc: subprocess.Popen, url: str, recording: Path, home: Path) -> None:
        self.proc, self.url, self.recording, self.home = proc, url, recording, home

    def env(self, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """Environment for the aws CLI (and the kit's scripts): this endpoint, fake credentials, no profile."""
        env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("AWS_")}
        empty = self.home / "aws-empty"
        empty.write_text("")
        env.update(AWS_ENDPOINT_URL=self.url, AWS_ACCESS_KEY_ID="AKIAEMULATOR0000TEST", AWS_SECRET_ACCESS_KEY="test",
                   AWS_DEFAULT_REGION=REGION, AWS_CONFIG_FILE=str(empty), AWS_SHARED_CREDENTIALS_FILE=str(empty),
                   AWS_EC2_METADATA_DISABLED="true", AWS_MAX_ATTEMPTS="1", AWS_PAGER="")
        return env

    def requests(self) -> List[Dict[str, Any]]:
        """Every request received so far: ``method``, ``path``, ``query``, ``target`` (JSON APIs' operation),
        ``headers`` and ``body`` (bytes), in arrival order."""
        out = []
        if not self.recording.exists():
            return out
        for line in self.recording.read_text().splitlines():
            entry = json.loads(line)
            body = entry.get("body") or ""
            body = base64.b64decode(body) if entry.get("body_encoded") else body.encode()
            parts = urlsplit(entry["url"])
            headers = {k.lower(): v for k, v in entry.get("headers", {}).items()}
            out.append({"method": entry["method"], "path": unquote(parts.path), "query": parts.query,
                        "target": headers.get("x-amz-target", "").rpartition(".")[2], "headers": headers,
                        "body": body})
        return out

    def emr_calls(self, operation: Optional[str] = None) -> List[Dict[str, Any]]:
        """The EMR API calls received (``(operation, JSON request)``), optionally of one operation only."""
        calls = [(r["target"], json.loads(r["body"] or b"{}")) for r in self.requests()
                 if r["headers"].get("x-amz-target", "").startswith("ElasticMapReduce.")]
        return [c for c in calls if operation is None or c[0] == operation]

    def s3_puts(self) -> Dict[str, bytes]:
        """``s3://bucket/key`` → body of every S3 PutObject received (path-style or virtual-host style)."""
        puts = {}
        for r in self.requests():
            if r["method"] != "PUT" or r["target"] or "partNumber=" in r["query"]:
                continue
            host = r["headers"].get("host", "").split(":")[0]
            path = r["path"].lstrip("/")
            if host.endswith(".localhost") or (host.count(".") and not host.replace(".", "").isdigit()):
                bucket, key = host.split(".")[0], path
            else:
                bucket, _, key = path.partition("/")
            if key:
                puts[f"s3://{bucket}/{key}"] = r["body"]
        return puts

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(workdir: Path, python: str = sys.executable, timeout: float = 60.0,
          env: Optional[Dict[str, str]] = None) -> Emulator:
    """Start the emulator in a subprocess (its own session); wait until it answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    recording = workdir / "requests.jsonl"
    recording.write_text("")
    server_env = dict(os.environ if env is None else env, MOTO_ENABLE_RECORDING="true",
                      MOTO_RECORDER_FILEPATH=str(recording), PYTHONPATH=str(ROOT))
    log = open(workdir / "emulator.log", "wb")  # noqa: SIM115 - the subprocess writes it while it runs
    proc = subprocess.Popen([python, "-m", "tests.harness.aws_emulator", "--port", "0"], cwd=str(ROOT),
                            env=server_env, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
    log.close()
    url_holder: List[str] = []
    reader = threading.Thread(target=lambda: url_holder.append(proc.stdout.readline().decode().strip()),
                              daemon=True)
    reader.start()
    reader.join(timeout)
    if not url_holder or not url_holder[0].startswith("http"):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"the AWS emulator did not start: {(workdir / 'emulator.log').read_text()[-3000:]}")
    emulator = Emulator(proc, url_holder[0], recording, workdir)
    deadline = time.monotonic() + timeout
    import urllib.request

    while True:  # moto answers /moto-api/ once its Flask app is up
        try:
            with urllib.request.urlopen(emulator.url + "/moto-api/data.json", timeout=5):
                break
        except OSError:
            if time.monotonic() > deadline:
                emulator.stop()
                raise
            time.sleep(0.2)
    return emulator


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="moto server (EMR + S3) with EMR notebook executions, for tests")
    parser.add_argument("--port", type=int, default=0, help="0 = a free port")
    args = parser.parse_args(argv)
    return _serve(args.port)


if __name__ == "__main__":
    sys.exit(main())
