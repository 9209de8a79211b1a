"""Processes and helpers for the end-to-end suite: the mock upstream, the gate daemon, JWTs.

Owns starting and stopping the real binaries on loopback (never another address) and waiting
for them with deadlines (never fixed sleeps). It builds nothing: the binaries come from
GATE_BIN / MOCK_BIN (defaults: target/debug/gate, target/debug/examples/mock_upstream).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
import jwt

REPO_ROOT = Path(__file__).resolve().parents[2]

# Secrets used by the suite. The log-grep test checks that none of them ever appears.
JWT_SECRET = "e2e-jwt-secret-7f3a9c1d0b5e4a2f8c6d"
JWT_ISSUER = "gate-daemon"
OPENAI_UPSTREAM_KEY = "sk-upstream-test"
ANTHROPIC_UPSTREAM_KEY = "sk-ant-upstream-test"

# Models each upstream serves in the default gate config.
OPENAI_CHAT_MODEL = "gpt-4o-mini"
OPENAI_COMPLETION_MODEL = "gpt-3.5-turbo-instruct"
OPENAI_EMBEDDING_MODEL = "text-embedding-3-small"
ANTHROPIC_MODEL = "claude-mock-1"
OPENAI_MOCK_MODELS = [OPENAI_CHAT_MODEL, OPENAI_COMPLETION_MODEL, OPENAI_EMBEDDING_MODEL]
ANTHROPIC_MOCK_MODELS = [ANTHROPIC_MODEL]

STARTUP_DEADLINE_S = 20.0
CLIENT_TIMEOUT_S = 60.0

WEATHER_TOOL_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city"],
}
# What the mock answers for a call to the weather tool (its arguments are made from the schema).
WEATHER_TOOL_ARGS = {"city": "mock", "unit": "celsius"}


def binary(env_var: str, default: str) -> Path:
    path = Path(os.environ.get(env_var, default))
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


def gate_bin() -> Path:
    return binary("GATE_BIN", "target/debug/gate")


def mock_bin() -> Path:
    return binary("MOCK_BIN", "target/debug/examples/mock_upstream")


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], Any], deadline_s: float, what: str, interval_s: float = 0.02) -> Any:
    """Polls `condition` until it returns something truthy, or fails after `deadline_s`."""
    end = time.monotonic() + deadline_s
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - the condition may fail while a process starts
            last_error = e
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {deadline_s}s waiting for {what} (last error: {last_error!r})")
        time.sleep(interval_s)


def _drain_to_file(stream, path: Path) -> threading.Thread:
    def pump() -> None:
        with open(path, "ab") as out:
            for line in iter(stream.readline, b""):
                out.write(line)
                out.flush()

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def _stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@dataclass
class MockRecord:
    """One request the mock received."""

    id: int
    method: str
    path: str
    query: str | None
    headers: list[tuple[str, str]]
    body: bytes
    received_at: float
    events_sent_at: list[float]
    behaviour: dict | None

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class MockUpstream:
    """A running mock_upstream process and its control API."""

    process: subprocess.Popen
    url: str  # http://127.0.0.1:PORT
    log_path: Path
    control: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10.0))

    @classmethod
    def start(cls, log_dir: Path, name: str, *args: str) -> "MockUpstream":
        exe = mock_bin()
        if not exe.exists():
            raise FileNotFoundError(
                f"{exe} not found: build it with `cargo build -p gate-daemon --example mock_upstream` or set MOCK_BIN"
            )
        log_path = log_dir / f"{name}.log"
        process = subprocess.Popen(
            [str(exe), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=open(log_path, "ab"),  # noqa: SIM115 - owned by the child
            stdin=subprocess.DEVNULL,
        )
        # The first stdout line is `listening http://127.0.0.1:PORT`; read it with a deadline.
        line_box: list[bytes] = []
        reader = threading.Thread(target=lambda: line_box.append(process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(STARTUP_DEADLINE_S)
        line = line_box[0].decode().strip() if line_box else ""
        if not line.startswith("listening http://127.0.0.1:"):
            _stop(process)
            raise RuntimeError(f"mock_upstream did not announce its address (got {line!r}); log: {log_path}")
        _drain_to_file(process.stdout, log_path)
        mock = cls(process=process, url=line.removeprefix("listening "), log_path=log_path)
        wait_until(lambda: mock.control.get(f"{mock.url}/_mock/requests").status_code == 200, STARTUP_DEADLINE_S, "mock")
        return mock

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def requests(self, path: str | None = None) -> list[MockRecord]:
        response = self.control.get(f"{self.url}/_mock/requests")
        response.raise_for_status()
        records = [
            MockRecord(
                id=r["id"],
                method=r["method"],
                path=r["path"],
                query=r["query"],
                headers=[tuple(h) for h in r["headers"]],
                body=base64.b64decode(r["body_b64"]),
                received_at=r["received_at"],
                events_sent_at=r["events_sent_at"],
                behaviour=r["behaviour"],
            )
            for r in response.json()
        ]
        return [r for r in records if path is None or r.path == path]

    def clear(self) -> None:
        self.control.delete(f"{self.url}/_mock/requests").raise_for_status()
        self.control.delete(f"{self.url}/_mock/behaviour").raise_for_status()

    def behave(self, **rule: Any) -> int:
        """Registers a fault-injection rule (see the top of daemon/examples/mock_upstream.rs)."""
        response = self.control.post(f"{self.url}/_mock/behaviour", json=rule)
        response.raise_for_status()
        return response.json()["id"]

    def stop(self) -> None:
        self.control.close()
        _stop(self.process)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def render_config(port: int, upstreams: dict[str, dict[str, Any]], extra_top: dict[str, Any] | None = None) -> str:
    """The gate config TOML (DESIGN.md §6). Upstreams are written in the given order."""
    lines = ['host = "127.0.0.1"', f"port = {port}"]
    tables = {}
    for key, value in (extra_top or {}).items():
        if isinstance(value, dict):
            tables[key] = value
        else:
            lines.append(f"{key} = {toml_value(value)}")
    lines.append("")
    for table, fields in tables.items():
        lines.append(f"[{table}]")
        for key, value in fields.items():
            lines.append(f"{key} = {toml_value(value)}")
        lines.append("")
    for name, fields in upstreams.items():
        lines.append(f"[upstreams.{name}]")
        for key, value in fields.items():
            lines.append(f"{key} = {toml_value(value)}")
        lines.append("")
    lines.append("[auth.jwt]")
    lines.append(f"secret = {toml_value(JWT_SECRET)}")
    lines.append(f"issuer = {toml_value(JWT_ISSUER)}")
    lines.append("")
    return "\n".join(lines)


def openai_upstream(mock_url: str, models: list[str], key: str = OPENAI_UPSTREAM_KEY, **extra: Any) -> dict[str, Any]:
    return {"provider": "custom", "base_url": f"{mock_url}/v1", "api_key": key, "models": models, **extra}


def anthropic_upstream(mock_url: str, models: list[str], key: str = ANTHROPIC_UPSTREAM_KEY, **extra: Any) -> dict[str, Any]:
    return {"provider": "anthropic", "base_url": mock_url, "api_key": key, "models": models, **extra}


def default_upstreams(mock: MockUpstream) -> dict[str, dict[str, Any]]:
    return {
        # Serves /v1/responses itself (pass-through); `custom` upstreams otherwise get it
        # converted to Chat Completions.
        "openai_mock": openai_upstream(mock.url, OPENAI_MOCK_MODELS, responses=True),
        "anthropic_mock": anthropic_upstream(mock.url, ANTHROPIC_MOCK_MODELS),
    }


@dataclass
class Gate:
    """A running `gate serve`."""

    process: subprocess.Popen
    url: str  # http://127.0.0.1:PORT
    runtime: str
    log_path: Path
    config_path: Path
    state_dir: Path

    @classmethod
    def start(
        cls,
        work_dir: Path,
        runtime: str,
        upstreams: dict[str, dict[str, Any]],
        extra_top: dict[str, Any] | None = None,
        rust_log: str = "debug",
    ) -> "Gate":
        exe = gate_bin()
        if not exe.exists():
            raise FileNotFoundError(f"{exe} not found: build it with `cargo build -p gate-daemon` or set GATE_BIN")
        work_dir.mkdir(parents=True, exist_ok=True)
        state_dir = work_dir / "state"
        state_dir.mkdir(exist_ok=True)
        port = free_port()
        config_path = work_dir / "gate.toml"
        config_path.write_text(render_config(port, upstreams, extra_top))
        log_path = work_dir / "gate.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATE_")}
        env["RUST_LOG"] = rust_log
        env["NO_COLOR"] = "1"
        env["XDG_STATE_HOME"] = str(work_dir / "xdg-state")
        env["HOME"] = str(work_dir)
        log_file = open(log_path, "ab")  # noqa: SIM115 - owned by the child
        process = subprocess.Popen(
            [
                str(exe),
                "serve",
                "--config",
                str(config_path),
                "--state-dir",
                str(state_dir),
                "--runtime",
                runtime,
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        log_file.close()
        gate = cls(process, f"http://127.0.0.1:{port}", runtime, log_path, config_path, state_dir)

        def healthy() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"gate exited with {process.returncode}:\n{gate.log()}")
            return httpx.get(f"{gate.url}/health", timeout=2.0).status_code == 200

        try:
            wait_until(healthy, STARTUP_DEADLINE_S, f"gate ({runtime}) /health")
        except Exception:
            gate.stop()
            raise
        return gate

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        _stop(self.process)


def make_jwt(
    secret: str = JWT_SECRET,
    issuer: str | None = JWT_ISSUER,
    expires_in_s: int = 3600,
    algorithm: str = "HS256",
    subject: str = "e2e-client",
    extra: dict[str, Any] | None = None,
    headers: dict[str, Any] | None = None,
) -> str:
    """A signed token; `extra` adds or replaces claims (`nbf`, `aud`, the `gate` policy claim),
    `headers` header members (`crit`)."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "iat": now, "exp": now + expires_in_s}
    if issuer is not None:
        claims["iss"] = issuer
    claims.update(extra or {})
    return jwt.encode(claims, secret, algorithm=algorithm, headers=headers)


def make_unsigned_jwt() -> str:
    """An `alg: none` token with otherwise valid claims (and no signature)."""

    def b64(data: dict) -> str:
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    now = int(time.time())
    return b64({"alg": "none", "typ": "JWT"}) + "." + b64({"sub": "e2e", "iss": JWT_ISSUER, "iat": now, "exp": now + 3600}) + "."


# Gate's upstream timeouts (`[server]` in the config): the connect timeout, and the idle
# timeout that also bounds the wait for the response head.
SHORT_TIMEOUTS = {"server": {"connect_timeout_secs": 1, "idle_timeout_secs": 1}}
