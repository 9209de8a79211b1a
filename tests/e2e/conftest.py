"""Fixtures of the end-to-end suite: the real `gate` binary and the mock upstream on loopback.

Builds nothing: set GATE_BIN / MOCK_BIN or build `target/debug/gate` and
`target/debug/examples/mock_upstream` first (`cargo build --workspace --bins --examples`).

Fixtures
- `mock` (session): the shared mock upstream, checking both upstream keys. Its records and
  behaviour rules are cleared before every test (autouse `clean_mock`).
- `runtime` (session, params tokio/smol) and `gate` (session per runtime): `gate serve` with the
  default config (`openai_mock` and `anthropic_mock` upstreams on `mock`, `[auth.jwt]`). Every
  test that uses `gate` runs under both runtimes.
- `gate_factory` (function): `gate_factory(upstreams, extra_top=None)` starts another gate on the
  current `runtime` with a custom config (failover tests); stopped after the test.
- `mock_factory` (function): `mock_factory(name, *args)` starts another mock; stopped after the test.
- `client_token`: a valid client JWT. `openai_client` / `anthropic_client`: official SDK clients
  pointed at `gate` with that token. `openai_direct` / `anthropic_direct`: SDK clients pointed
  straight at `mock` with the upstream keys. `gate_http`: an httpx client for raw requests.
"""

from __future__ import annotations

from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from e2e_support import (
    ANTHROPIC_MOCK_MODELS,
    ANTHROPIC_UPSTREAM_KEY,
    CLIENT_TIMEOUT_S,
    OPENAI_MOCK_MODELS,
    OPENAI_UPSTREAM_KEY,
    Gate,
    MockUpstream,
    default_upstreams,
    make_jwt,
)

RUNTIMES = ["tokio", "smol"]


@pytest.fixture(scope="session")
def work_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gate-e2e")


@pytest.fixture(scope="session")
def mock(work_root: Path):
    server = MockUpstream.start(
        work_root,
        "mock",
        "--expect-key",
        OPENAI_UPSTREAM_KEY,
        "--expect-anthropic-key",
        ANTHROPIC_UPSTREAM_KEY,
        "--models",
        ",".join(OPENAI_MOCK_MODELS + ANTHROPIC_MOCK_MODELS),
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


@pytest.fixture(scope="session")
def gate(runtime: str, mock: MockUpstream, work_root: Path):
    server = Gate.start(work_root / f"gate-{runtime}", runtime, default_upstreams(mock))
    yield server
    server.stop()


@pytest.fixture
def gate_factory(runtime: str, tmp_path: Path):
    started: list[Gate] = []

    def start(upstreams, extra_top=None) -> Gate:
        server = Gate.start(tmp_path / f"gate-{len(started)}", runtime, upstreams, extra_top)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def mock_factory(tmp_path: Path):
    started: list[MockUpstream] = []

    def start(name: str, *args: str) -> MockUpstream:
        server = MockUpstream.start(tmp_path, name, *args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def client_token() -> str:
    return make_jwt()


def openai_for(base_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=CLIENT_TIMEOUT_S)


def anthropic_for(base_url: str, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base_url, api_key=key, max_retries=0, timeout=CLIENT_TIMEOUT_S)


@pytest.fixture
def openai_client(gate: Gate, client_token: str) -> openai.OpenAI:
    return openai_for(f"{gate.url}/v1", client_token)


@pytest.fixture
def anthropic_client(gate: Gate, client_token: str) -> anthropic.Anthropic:
    return anthropic_for(gate.url, client_token)


@pytest.fixture
def openai_direct(mock: MockUpstream) -> openai.OpenAI:
    return openai_for(f"{mock.url}/v1", OPENAI_UPSTREAM_KEY)


@pytest.fixture
def anthropic_direct(mock: MockUpstream) -> anthropic.Anthropic:
    return anthropic_for(mock.url, ANTHROPIC_UPSTREAM_KEY)


@pytest.fixture
def gate_http(gate: Gate):
    with httpx.Client(base_url=gate.url, timeout=CLIENT_TIMEOUT_S) as client:
        yield client
