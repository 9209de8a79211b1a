"""Fixtures of the agents suite: the real coding agents from npm against the real `gate` binary
and the suite's mock upstream (tests/e2e), under both runtimes.

- `mock` (session): the mock upstream checking the OpenAI, Anthropic and Gemini upstream keys;
  records and rules cleared before each test.
- `runtime` (session, tokio/smol); `gate_factory(upstreams)`: a `gate serve` on that runtime.
- `workspace`: a fresh directory holding `notes.txt` with a unique canary line, the file the
  scripted tool call reads.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from e2e_support import ANTHROPIC_UPSTREAM_KEY, OPENAI_UPSTREAM_KEY, Gate, MockUpstream  # noqa: E402

from agents_support import ALL_MODELS, GEMINI_UPSTREAM_KEY, Workspace  # noqa: E402

RUNTIMES = ["tokio", "smol"]


@pytest.fixture(scope="session")
def work_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gate-agents")


@pytest.fixture(scope="session")
def mock(work_root: Path):
    server = MockUpstream.start(
        work_root,
        "mock",
        "--expect-key",
        OPENAI_UPSTREAM_KEY,
        "--expect-anthropic-key",
        ANTHROPIC_UPSTREAM_KEY,
        "--expect-gemini-key",
        GEMINI_UPSTREAM_KEY,
        "--models",
        ",".join(ALL_MODELS),
    )
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def clean_mock(mock: MockUpstream):
    mock.clear()
    yield


@pytest.fixture(scope="session", params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def gate_factory(runtime: str, tmp_path: Path):
    started: list[Gate] = []

    def start(upstreams) -> Gate:
        server = Gate.start(tmp_path / f"gate-{len(started)}", runtime, upstreams)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    root = tmp_path / "workspace"
    root.mkdir()
    canary = f"gate-agent-canary-{uuid.uuid4().hex[:12]}"
    (root / "notes.txt").write_text(f"{canary}\n")
    home = tmp_path / "home"
    home.mkdir()
    return Workspace(root=root, home=home, canary=canary)
