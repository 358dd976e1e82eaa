#!/usr/bin/env python3
"""The one place where the kit's sparkmagic settings are written (standard library only, Python >= 3.6).

sparkmagic reads ``$SPARKMAGIC_CONF_DIR/config.json`` (default ``~/.sparkmagic``). Two uses, one source:

* **headless** (papermill): every run of ``run_notebook_on_master.sh`` on EMR, and every sparkmagic
  run of the tests (``tests/harness/livy_test_server.py`` → ``sparkmagic_env``), write their config with
  :func:`headless_config`: a base config (EMR's ``/etc/jupyter/conf/config.json``, or the tests'
  ``tests/sparkmagic/base_config.json``) with :data:`HEADLESS` laid over it. Without
  ``all_errors_are_fatal`` and ``shutdown_session_on_spark_statement_errors`` a failing cell does not
  fail papermill; without ``cleanup_all_sessions_on_exit`` and a heartbeat, a killed papermill or a
  cancelled EMR step leaves its Livy session (a YARN application) running, and a running YARN
  application keeps the cluster from ever counting as idle.
* **interactive** (JupyterHub users): :data:`EMR_INTERACTIVE_PROPERTIES`, the
  ``jupyter-sparkmagic-conf`` classification of ``bootstrap/configurations.json`` (a test checks that
  the two are equal). It does NOT end the session on a statement error: an interactive user keeps the
  session, and the model loaded in it, after a typo.

Commands::

    sparkmagic_config.py headless --out DIR/config.json [--base FILE]... [--livy-url URL | --default-livy-url URL]
                                  [--startup-timeout SECONDS]
    sparkmagic_config.py emr-properties            # the jupyter-sparkmagic-conf Properties, as JSON
    sparkmagic_config.py configure-cell --notebook IN.ipynb --session-config JSON --out OUT.ipynb

``configure-cell`` replaces the body of the notebook's ``%%configure`` cell: sparkmagic reads that cell
literally (no variables, no papermill parameters), so a session sized for another cluster needs another
cell, written before papermill (or EMR's notebook execution) runs the notebook.
"""

import argparse
import copy
import json
import os
import sys

# Laid over the base config for every headless (papermill) run. Values are JSON types, as sparkmagic's
# configuration functions return them (a string "60" would break its `heartbeat_timeout > 0`).
HEADLESS = {
    # a failed cell raises in the kernel, so papermill stops and exits non-zero
    "all_errors_are_fatal": True,
    # ... and the session (its YARN application) is deleted at once rather than left idle
    "shutdown_session_on_spark_statement_errors": True,
    # the kernel deletes its sessions when it exits (papermill stopping it, SIGTERM)
    "cleanup_all_sessions_on_exit": True,
    # Livy deletes a session whose client stopped calling for this long (a SIGKILLed kernel, a cancelled
    # step): sparkmagic sends it as heartbeatTimeoutInSecond when it creates the session, then GETs the
    # session every heartbeat_refresh_seconds (Livy's SessionHeartbeatWatchdog, checked every minute).
    "livy_server_heartbeat_timeout_seconds": 60,
    "heartbeat_refresh_seconds": 10,
    "heartbeat_retry_seconds": 5,
    # sparkmagic waits for `idle` before each statement; its 15 s default is short after a cancel
    "wait_for_idle_timeout_seconds": 60,
}
# Lower bound for the Livy session start (YARN containers, the venv's imports); sparkmagic's default is 60 s.
DEFAULT_STARTUP_TIMEOUT = 600

# jupyter-sparkmagic-conf for JupyterHub's users (configurations.json holds a copy; a test keeps them equal).
# EMR classification values are strings; only settings whose string form sparkmagic reads correctly
# ("true" is truthy) are given. Numbers (a heartbeat) and the headless-only switches are left out: a
# forgotten interactive session ends with Livy's idle timeout (livy.server.session.timeout, 1 h).
EMR_INTERACTIVE_PROPERTIES = {
    "cleanup_all_sessions_on_exit": "true",
}

# The %%configure fields Livy's POST /sessions accepts (Livy's CreateInteractiveRequest); anything else is
# refused by Livy with 400, so it is refused here, before a cluster is involved.
LIVY_SESSION_FIELDS = {
    "kind", "proxyUser", "jars", "pyFiles", "files", "driverMemory", "driverCores", "executorMemory",
    "executorCores", "numExecutors", "archives", "queue", "name", "conf", "heartbeatTimeoutInSecond", "ttl",
}


def headless_config(base=None, livy_url=None, default_livy_url=None, startup_timeout=DEFAULT_STARTUP_TIMEOUT):
    """Return the sparkmagic config for a headless run: ``base`` with :data:`HEADLESS` laid over it.

    Parameters
    ----------
    base : dict, optional
        The config to start from (EMR's JupyterHub config, the tests' base); not modified.
    livy_url : str, optional
        Livy endpoint for the PySpark kernel; replaces the base's.
    default_livy_url : str, optional
        Livy endpoint used only when the base names none.
    startup_timeout : int
        Seconds sparkmagic waits for a new session; the base's value is kept when it is larger.
    """
    config = copy.deepcopy(base or {})
    credentials = dict(config.get("kernel_python_credentials") or {})
    if livy_url:
        credentials["url"] = livy_url
    elif not credentials.get("url") and default_livy_url:
        credentials["url"] = default_livy_url
    if not credentials.get("url"):
        raise ValueError("no Livy URL: the base config names none; give --livy-url or --default-livy-url")
    credentials.setdefault("username", "")
    credentials.setdefault("password", "")
    credentials.setdefault("auth", "None")
    config["kernel_python_credentials"] = credentials
    config.update(copy.deepcopy(HEADLESS))
    config["livy_session_startup_timeout_seconds"] = max(
        int(startup_timeout), int(config.get("livy_session_startup_timeout_seconds") or 60))
    return config


def read_base(paths):
    """Return ``(config, path)`` of the first file of ``paths`` that exists, or ``({}, None)``."""
    for path in paths:
        path = os.path.expanduser(path)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                return json.load(handle), path
    return {}, None


def check_session_config(session):
    """Raise ``ValueError`` unless ``session`` is a ``%%configure`` body Livy accepts."""
    if not isinstance(session, dict) or not session:
        raise ValueError(f"the session config must be a non-empty JSON object, got {session!r}")
    unknown = sorted(set(session) - LIVY_SESSION_FIELDS)
    if unknown:
        raise ValueError(f"fields Livy does not accept in a session: {', '.join(unknown)} "
                         f"(allowed: {', '.join(sorted(LIVY_SESSION_FIELDS))})")
    if "conf" in session and not isinstance(session["conf"], dict):
        raise ValueError("'conf' must be a JSON object of Spark properties")


def set_configure_cell(notebook, session):
    """Return a copy of ``notebook`` whose ``%%configure`` cell holds ``session``; exactly one such cell."""
    check_session_config(session)
    nb = copy.deepcopy(notebook)
    found = []
    for index, cell in enumerate(nb.get("cells", [])):
        source = cell.get("source", "")
        text = "".join(source) if isinstance(source, list) else source
        first = text.lstrip().split("\n", 1)[0].split()
        if cell.get("cell_type") == "code" and first and first[0] == "%%configure":
            found.append((index, " ".join(first)))
    if len(found) != 1:
        raise ValueError(f"expected exactly one %%configure cell in the notebook, found {len(found)}")
    index, magic = found[0]
    if "-f" not in magic.split():
        magic += " -f"
    nb["cells"][index]["source"] = magic + "\n" + json.dumps(session, indent=2)
    nb["cells"][index]["outputs"] = []
    nb["cells"][index]["execution_count"] = None
    return nb


def _main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    head = sub.add_parser("headless", help="write the sparkmagic config of a headless (papermill) run")
    head.add_argument("--out", required=True, help="config file to write (its folder is created)")
    head.add_argument("--base", action="append", default=[],
                      help="base config; the first that exists is used (repeatable)")
    head.add_argument("--livy-url", help="Livy endpoint (replaces the base's)")
    head.add_argument("--default-livy-url", help="Livy endpoint if the base names none")
    head.add_argument("--startup-timeout", type=int, default=DEFAULT_STARTUP_TIMEOUT,
                      help="seconds to wait for a new Livy session [%(default)s]")
    sub.add_parser("emr-properties", help="print the jupyter-sparkmagic-conf Properties (JupyterHub users)")
    cell = sub.add_parser("configure-cell", help="write the %%%%configure cell of a notebook")
    cell.add_argument("--notebook", required=True)
    cell.add_argument("--session-config", required=True, help="JSON object: the %%%%configure body")
    cell.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    try:
        if args.command == "headless":
            base, source = read_base(args.base)
            config = headless_config(base, args.livy_url, args.default_livy_url, args.startup_timeout)
            folder = os.path.dirname(os.path.abspath(args.out))
            os.makedirs(folder, exist_ok=True)
            with open(args.out, "w", encoding="utf-8") as handle:
                json.dump(config, handle, indent=2, sort_keys=True)
            print("sparkmagic config {}: based on {}, Livy {}".format(
                args.out, source or "no base config", config["kernel_python_credentials"]["url"]))
        elif args.command == "emr-properties":
            print(json.dumps(EMR_INTERACTIVE_PROPERTIES, indent=2, sort_keys=True))
        elif args.command == "configure-cell":
            with open(args.notebook, encoding="utf-8") as handle:
                notebook = json.load(handle)
            try:
                session = json.loads(args.session_config)
            except ValueError as exc:
                raise ValueError(f"--session-config is not JSON ({exc}): {args.session_config}") from None
            notebook = set_configure_cell(notebook, session)
            with open(args.out, "w", encoding="utf-8") as handle:
                json.dump(notebook, handle, indent=1, ensure_ascii=False)
                handle.write("\n")
            print(f"%%configure of {args.out} set to {json.dumps(session, sort_keys=True)}")
        else:
            parser.print_help()
            return 2
    except (OSError, ValueError) as exc:
        print(f"sparkmagic_config.py: ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
