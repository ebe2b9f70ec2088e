"""``medmnist-pipeline ui``: MLflow's own UI server for the project's tracking store, on this machine by default.

The server is ``mlflow server`` from this environment, run as a child process in its own process group, so that
Ctrl-C (or SIGTERM) here stops it and every worker it started, and nothing is left listening. Only the standard
library is imported here: the server pays MLflow's import cost, not this command.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from medmnist_pipeline.config.params import TrackingParams, load_section
from medmnist_pipeline.errors import PipelineError
from medmnist_pipeline.paths import MLRUNS, project_root
from medmnist_pipeline.tracking import default_uri, relocate_local_store, uri_of

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
READY_TIMEOUT_S = 180.0  # a cold start on a busy 2-core machine takes 10-30 s
STOP_TIMEOUT_S = 15.0


def store_uri(params_path: str | Path) -> tuple[str, str]:
    """The tracking URI and experiment name of the project. Only the ``tracking`` section is validated: the UI
    should open even while another section of params.yaml is being edited."""
    tracking = load_section(params_path, "tracking", TrackingParams)
    return uri_of(tracking), tracking.experiment


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def url_host(host: str) -> str:
    """Where a browser on this machine reaches a server bound to ``host``."""
    if host in ("0.0.0.0", ""):  # noqa: S104 - a comparison, not a bind
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def check_port_free(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise PipelineError(f"cannot resolve --host {host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError as exc:
            raise PipelineError(
                f"cannot listen on {host}:{port} ({exc.strerror}); is another server using it? "
                "Choose another port with --port"
            ) from None


def server_command(uri: str, host: str, port: int, artifacts: Path | None = None) -> list[str]:
    """``mlflow server`` for a database store, serving artifacts. Runs keep the artifact location they were logged
    with (the project's ``mlruns/``, as file paths, which the server reads directly); artifacts uploaded through
    this server (``MLFLOW_TRACKING_URI=http://...`` clients, new experiments) go to ``artifacts``, by default the
    same ``mlruns/``. A team's tracking server is the same command with a server database and its own folder."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--serve-artifacts",
        "--artifacts-destination",
        str(artifacts or project_root() / MLRUNS),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",  # a viewer for one person: 1 worker instead of 4
        "--uvicorn-opts",
        "--no-access-log",
    ]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the server gets SIGTERM if this process dies without cleaning up (e.g. SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _get_json(url: str, timeout: float = 2.0) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our own http:// URL
            body = response.read()
    except (OSError, urllib.error.URLError):
        return None
    try:
        return json.loads(body)
    except ValueError:
        return {}


def wait_until_ready(proc: subprocess.Popen, base: str, timeout_s: float = READY_TIMEOUT_S) -> bool:
    """True once ``/health`` answers; False if the server exits first or does not answer in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if _get_json(f"{base}/health", timeout=1.0) is not None:
            return True
        time.sleep(0.25)
    return False


def experiment_url(base: str, experiment: str) -> str | None:
    query = urllib.parse.urlencode({"experiment_name": experiment})
    found = _get_json(f"{base}/ajax-api/2.0/mlflow/experiments/get-by-name?{query}")
    exp_id = (found or {}).get("experiment", {}).get("experiment_id")
    return f"{base}/#/experiments/{exp_id}/runs" if exp_id else None  # the runs table, not the GenAI overview


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's whole process group (MLflow's CLI, uvicorn and its workers), SIGKILL if it
    does not stop in time."""
    for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        with contextlib.suppress(ProcessLookupError):  # stragglers (a worker that outlived uvicorn's supervisor)
            os.killpg(proc.pid, signal.SIGKILL)
        return


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(params_path: str | Path = "params.yaml", host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> int:
    uri, experiment = store_uri(params_path)
    if uri.startswith(("http://", "https://")):
        print(f"MLflow UI: {uri} (the tracking URI is already an MLflow server: nothing to start)")
        return 0
    if not 0 < port < 65536:
        raise PipelineError(f"--port {port}: expected 1-65535")
    if not is_loopback(host):
        print(
            f"medmnist-pipeline ui: warning: --host {host} exposes the MLflow UI and its REST API (read, edit and "
            "delete runs, no authentication) to the network",
            file=sys.stderr,
        )
    check_port_free(host, port)
    if uri == default_uri() and (moved := relocate_local_store()):
        print(f"the project has moved: {moved} artifact locations now point into {project_root() / MLRUNS}")

    base = f"http://{url_host(host)}:{port}"
    print(f"Starting the MLflow UI for {uri} ...", flush=True)
    env = os.environ.copy()
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # no GenAI job runner (7 extra processes)
    env.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")  # MLflow's own starlette deprecation notice
    previous = signal.signal(signal.SIGTERM, _interrupt)
    # A process started in the background by a non-interactive shell (CI, scripts) inherits SIGINT ignored, and
    # Python then never raises KeyboardInterrupt: take SIGINT back, so `kill -INT` / Ctrl-C always stops the UI.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    proc = None
    interrupted = False
    try:
        kwargs = {"preexec_fn": _die_with_parent} if sys.platform.startswith("linux") else {}
        proc = subprocess.Popen(server_command(uri, host, port), env=env, process_group=0, **kwargs)
        if not wait_until_ready(proc, base):
            code = proc.poll()
            why = f"exited with status {code}" if code is not None else f"did not answer in {READY_TIMEOUT_S:.0f} s"
            print(f"medmnist-pipeline ui: error: the MLflow server {why} (see its output above)", file=sys.stderr)
            return code if code and code > 0 else 1
        print(f"MLflow UI: {base}", flush=True)
        if url := experiment_url(base, experiment):
            print(f"Experiment '{experiment}': {url}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        code = proc.wait()
        print(f"medmnist-pipeline ui: error: the MLflow server exited with status {code}", file=sys.stderr)
        return code if code > 0 else 1
    except KeyboardInterrupt:
        interrupted = True
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if proc is not None:
            stop(proc)
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous)
        if interrupted:
            print("medmnist-pipeline ui: stopped", file=sys.stderr)
