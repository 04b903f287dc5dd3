"""Start, probe and stop the processes the gateway benchmarks measure.

Each server runs as a subprocess in its own process group on a free loopback port, with its output
in a log file of the run's work folder: the mock upstream, wattwise (``wattwise serve`` on a TOML
config with an SQLite trace store) and LiteLLM's proxy (from its own hash-pinned virtual environment,
which :func:`ensure_litellm_env` builds the first time).

Example::

    with tempfile.TemporaryDirectory() as tmp:
        mock = start_mock(Path(tmp))
        gateway = start_wattwise(Path(tmp), upstream_port=mock.port)
        ...
        gateway.stop()
        mock.stop()
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
LITELLM_VENV = BENCH_DIR / ".venv-litellm"
LITELLM_REQUIREMENTS = BENCH_DIR / "litellm-requirements.txt"
LITELLM_FORBIDDEN = ("1.82.7", "1.82.8")  # compromised releases: never install these
LITELLM_PIN_RE = re.compile(r"^litellm(?:\[[^\]]*\])?==([^\s;\\]+)", re.MULTILINE)
READY_TIMEOUT_S = 120.0
LOG_TAIL_CHARS = 3000

LITELLM_CONFIG = """\
model_list:
  - model_name: mock
    litellm_params:
      model: openai/mock-model
      api_base: http://127.0.0.1:{port}/v1
      api_key: x
litellm_settings:
  telemetry: false
  set_verbose: false
  json_logs: false
  turn_off_message_logging: true
  disable_end_user_cost_tracking: true
  request_timeout: 30
general_settings:
  disable_spend_logs: true
  disable_error_logs: true
  disable_reset_budget: true
  background_health_checks: false
"""
# Silences uvicorn's access log (one line per request); errors still reach stderr.
UVICORN_QUIET_LOG = (
    '{"version": 1, "disable_existing_loggers": false, "loggers": {"uvicorn.access": {"level": "WARNING"}}}'
)
LITELLM_ENV = {
    "LITELLM_LOG": "ERROR",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_TELEMETRY": "False",
    "DISABLE_SCHEMA_UPDATE": "True",
}

WATTWISE_CONFIG = """\
[store]
url = "sqlite:///{db}"
store_content = true

[models.mock]
backend = "openai_http"
base_url = "http://127.0.0.1:{port}/v1"
upstream_model = "mock-model"
timeout_s = 30
price = {{ input = 0.15, cached_input = 0.075, output = 0.6 }}
energy = {{ joules_per_input_token = 0.01, joules_per_output_token = 0.2 }}
"""

# Access control for the wattwise-access and wattwise-redis legs (start_wattwise's state_url).
ACCESS_CONFIG = """
[auth]
mode = "keys"

[state]
url = "{state_url}"
"""
BENCH_MASTER_KEY = "ww-bench-master-key-not-secret"
BENCH_KEY_SPEC = {
    "name": "bench", "budget_usd": "1000000/month", "budget_j": "1000000000/month",
    "rpm": 100_000_000, "tpm": 10_000_000_000,
}  # fmt: skip


class ServerError(RuntimeError):
    """A server under test could not be started or died."""


@dataclass
class Server:
    """A running server process: its name, port, log file and the path of its health check."""

    name: str
    proc: subprocess.Popen
    port: int
    log: Path
    chat_path: str
    api_key: str = "bench"  # what the load generators send as the bearer key
    key_id: str | None = None  # the id of that key when access control is on

    @property
    def pid(self) -> int:
        """Return the process id."""
        return self.proc.pid

    def log_tail(self) -> str:
        """Return the end of the server's log."""
        return self.log.read_text(errors="replace")[-LOG_TAIL_CHARS:] if self.log.exists() else ""

    def stop(self) -> None:
        """Stop the server's process group: SIGTERM, then SIGKILL after 10 s."""
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def free_port() -> int:
    """Return a loopback TCP port that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """Return the status of a ``GET`` on ``url``, or None when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (OSError, ValueError):
        return None


def launch(
    name: str, cmd: list[str], *, workdir: Path, port: int, ready_path: str, chat_path: str,
    env: dict[str, str | None] | None = None,
) -> Server:  # fmt: skip
    """Start ``cmd`` in its own process group and wait until ``ready_path`` answers 200.

    ``env`` adds variables to this process's environment; a None value removes one.
    """
    child_env = {**os.environ, **(env or {})}
    environ = {key: value for key, value in child_env.items() if value is not None}
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=environ, cwd=workdir, start_new_session=True,
        )  # fmt: skip
    server = Server(name=name, proc=proc, port=port, log=log, chat_path=chat_path)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError(f"{name} exited with {proc.returncode}:\n{server.log_tail()}")
        if http_status(f"http://127.0.0.1:{port}{ready_path}") == 200:
            return server
        time.sleep(0.2)
    server.stop()
    raise ServerError(f"{name} was not ready after {READY_TIMEOUT_S:.0f} s:\n{server.log_tail()}")


def start_mock(workdir: Path) -> Server:
    """Start the mock upstream (bench/mock_upstream.py) under this interpreter."""
    port = free_port()
    cmd = [sys.executable, str(BENCH_DIR / "mock_upstream.py"), "--port", str(port)]
    return launch("mock", cmd, workdir=workdir, port=port, ready_path="/v1/models", chat_path="/v1/chat/completions")


def wattwise_command() -> list[str]:
    """Return the ``wattwise`` command: the console script beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "wattwise"
    found = str(beside) if beside.exists() else shutil.which("wattwise")
    if not found:
        raise ServerError("no `wattwise` command: install the project first (pip install -e .)")
    return [found]


def start_wattwise(
    workdir: Path, *, upstream_port: int, tag: str = "wattwise", journal: bool = True, state_url: str | None = None,
) -> Server:  # fmt: skip
    """Start ``wattwise serve`` with tracing on an SQLite store in ``workdir`` (``journal``: the
    write-ahead trace journal that keeps answered rows through a crash; on by default, as shipped).

    ``state_url`` turns access control on: keys required, one key with a dollar budget, a joule
    budget and request and token rate limits (all far above what the run spends, so every request
    is checked and none refused), budgets and windows in this process (``""``) or in Redis
    (``redis://…``). The server's :attr:`Server.api_key` is then that key.
    """
    port = free_port()
    store = workdir / tag
    store.mkdir(exist_ok=True)
    config = store / "wattwise.toml"
    text = WATTWISE_CONFIG.format(db=store / "traces.db", port=upstream_port)
    if not journal:
        text = text.replace("store_content = true\n", 'store_content = true\njournal_dir = ""\n')
    env: dict[str, str | None] = {}
    api_key, key_id = "bench", None
    if state_url is not None:
        text += ACCESS_CONFIG.format(state_url=state_url)
        env["WATTWISE_MASTER_KEY"] = BENCH_MASTER_KEY
        api_key, key_id = bench_key(f"sqlite:///{store / 'traces.db'}")
    config.write_text(text)
    cmd = [*wattwise_command(), "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    server = launch(tag, cmd, workdir=workdir, port=port, ready_path="/healthz", chat_path="/v1/chat/completions",
                    env=env)
    server.api_key = api_key
    server.key_id = key_id if state_url is not None else None
    return server


def bench_key(store_url: str) -> tuple[str, str]:
    """Create the benchmark's API key in the store at ``store_url`` (made if new): ``(key, key id)``."""
    import time as clock

    from wattwise.access.admin import create_key
    from wattwise.store.access import AccessStore
    from wattwise.store.sql import opened

    with opened(store_url) as store:
        record, key = create_key(AccessStore(store=store), dict(BENCH_KEY_SPEC),
                                 secret=BENCH_MASTER_KEY.encode(), actor="bench", now=clock.time())
    return str(key), str(record.id)


def forget_redis_keys(url: str, key_id: str) -> int:
    """Delete what a run left in Redis for the benchmark's key (its budget buckets and windows)."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        found = list(client.scan_iter(match=f"wattwise:*{key_id}*", count=1000))
        return int(client.delete(*found)) if found else 0
    finally:
        client.close()


def redis_reachable(url: str) -> bool:
    """Whether a Redis answers at ``url``."""
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def litellm_pin(requirements: Path = LITELLM_REQUIREMENTS) -> str:
    """Return the litellm version the requirements file pins, refusing the forbidden releases."""
    match = LITELLM_PIN_RE.search(requirements.read_text())
    if not match:
        raise ServerError(f"{requirements} pins no litellm version")
    if match.group(1) in LITELLM_FORBIDDEN:
        raise ServerError(f"litellm {match.group(1)} must never be installed")
    return match.group(1)


def ensure_litellm_env(log: Path) -> Path:
    """Build LiteLLM's own venv from the hash-pinned requirements unless it is already current.

    Returns the ``litellm`` command. The venv is rebuilt whenever the requirements file changes.
    """
    litellm_pin()
    digest = hashlib.sha256(LITELLM_REQUIREMENTS.read_bytes()).hexdigest()
    stamp = LITELLM_VENV / "requirements.sha256"
    command = LITELLM_VENV / "bin" / "litellm"
    if command.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return command
    print(f"installing LiteLLM {litellm_pin()} into {LITELLM_VENV} (first run only)...", file=sys.stderr)
    base = getattr(sys, "_base_executable", sys.executable)
    pip = str(LITELLM_VENV / "bin" / "python")
    steps = [
        [base, "-m", "venv", "--clear", str(LITELLM_VENV)],
        [pip, "-m", "pip", "install", "--require-hashes", "--no-deps", "-r", str(LITELLM_REQUIREMENTS)],
    ]
    with log.open("ab") as out:
        for step in steps:
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, check=False).returncode:
                raise ServerError(f"`{' '.join(step)}` failed; see {log}")
    stamp.write_text(digest + "\n")
    return command


def start_litellm(workdir: Path, *, upstream_port: int, command: Path) -> Server:
    """Start LiteLLM's proxy (one uvicorn worker, no database) in front of the mock upstream."""
    port = free_port()
    config = workdir / "litellm.yaml"
    config.write_text(LITELLM_CONFIG.format(port=upstream_port))
    log_config = workdir / "litellm-log.json"
    log_config.write_text(UVICORN_QUIET_LOG)
    cmd = [
        str(command), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
        "--num_workers", "1", "--telemetry", "False", "--log_config", str(log_config),
    ]  # fmt: skip
    env: dict[str, str | None] = {**LITELLM_ENV, "DATABASE_URL": None}
    return launch(
        "litellm", cmd, workdir=workdir, port=port, ready_path="/health/liveliness",
        chat_path="/v1/chat/completions", env=env,
    )  # fmt: skip


def _children(pid: int) -> list[int]:
    """Return the ids of a process's direct children (all its threads' children)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(k) for k in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids


def rss_kib(pid: int) -> int:
    """Return the resident memory (VmRSS, KiB) of a process and all its descendants."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+)\s+kB", status, re.MULTILINE)
        total += int(match.group(1)) if match else 0
        stack += _children(current)
    return total
