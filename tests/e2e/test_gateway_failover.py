"""Failover, both runtimes: two upstreams serve the same model; when the first refuses
connections, answers 500 / 429 / 529, or times out before the first byte, the second serves
and the mocks' records show both attempts. No failover once the first byte reached the client,
nor on a client error (400). A failing upstream's circuit opens, and closes again later.

Each test starts its own gate (fresh circuit state) with the upstreams written in preference
order: `a_primary` first, `b_backup` second (file order and name order agree).
"""

from __future__ import annotations

import time

import anthropic
import openai
import pytest

import checks
from conftest import anthropic_for, openai_for
from e2e_support import (
    ANTHROPIC_UPSTREAM_KEY,
    OPENAI_UPSTREAM_KEY,
    SHORT_TIMEOUTS,
    anthropic_upstream,
    free_port,
    make_jwt,
    wait_until,
)

MODEL = "failover-model"


@pytest.fixture
def primary(mock_factory):
    return mock_factory(
        "primary", "--expect-key", OPENAI_UPSTREAM_KEY, "--expect-anthropic-key", ANTHROPIC_UPSTREAM_KEY
    )


def openai_pair(primary_url: str, backup_url: str, **primary_extra):
    return {
        "a_primary": {"provider": "custom", "base_url": f"{primary_url}/v1", "api_key": OPENAI_UPSTREAM_KEY,
                      "models": [MODEL], **primary_extra},
        "b_backup": {"provider": "custom", "base_url": f"{backup_url}/v1", "api_key": OPENAI_UPSTREAM_KEY,
                     "models": [MODEL]},
    }


def chat_ok(gate, model: str = MODEL) -> str:
    client = openai_for(f"{gate.url}/v1", make_jwt())
    prompt = checks.unique_prompt("failover")
    completion = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}])
    assert completion.choices[0].message.content == checks.expected_reply(prompt)
    return prompt


@pytest.mark.parametrize("status", [500, 503, 429])
def test_failover_on_status(gate_factory, primary, mock, status):
    primary.behave(status=status)
    gate = gate_factory(openai_pair(primary.url, mock.url))
    prompt = chat_ok(gate)
    tried = primary.requests("/v1/chat/completions")
    served = mock.requests("/v1/chat/completions")
    assert len(tried) == 1, "the first upstream should have been tried first"
    assert len(served) == 1
    assert served[0].json()["messages"][0]["content"] == prompt
    assert tried[0].received_at <= served[0].received_at


def test_failover_on_connection_refused(gate_factory, mock):
    dead = f"http://127.0.0.1:{free_port()}"
    gate = gate_factory(openai_pair(dead, mock.url))
    chat_ok(gate)
    assert len(mock.requests("/v1/chat/completions")) == 1


def test_failover_on_connection_reset(gate_factory, primary, mock):
    primary.behave(reset=True)
    gate = gate_factory(openai_pair(primary.url, mock.url))
    chat_ok(gate)
    assert len(primary.requests("/v1/chat/completions")) >= 1
    assert len(mock.requests("/v1/chat/completions")) == 1


def test_failover_on_timeout(gate_factory, primary, mock):
    # The primary holds the response head for a minute; gate's upstream timeout is 1 s.
    primary.behave(delay_ms=60_000)
    gate = gate_factory(openai_pair(primary.url, mock.url), SHORT_TIMEOUTS)
    chat_ok(gate)
    assert len(primary.requests("/v1/chat/completions")) == 1
    assert len(mock.requests("/v1/chat/completions")) == 1


def test_failover_streaming_before_first_byte(gate_factory, primary, mock):
    primary.behave(status=500)
    gate = gate_factory(openai_pair(primary.url, mock.url))
    client = openai_for(f"{gate.url}/v1", make_jwt())
    prompt = checks.unique_prompt("stream failover")
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}], stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == checks.expected_reply(prompt)
    assert len(primary.requests()) == 1
    assert len(mock.requests()) == 1


def test_anthropic_failover_on_overloaded(gate_factory, primary, mock):
    primary.behave(status=529)
    gate = gate_factory({
        "a_primary": anthropic_upstream(primary.url, [MODEL]),
        "b_backup": anthropic_upstream(mock.url, [MODEL]),
    })
    client = anthropic_for(gate.url, make_jwt())
    checks.anthropic_messages(client, model=MODEL)
    assert [r.path for r in primary.requests()] == ["/v1/messages"]
    assert [r.path for r in mock.requests()] == ["/v1/messages"]


def test_no_failover_after_first_byte(gate_factory, primary, mock):
    # The primary starts streaming, then the connection is cut: the client has bytes already, so
    # gate must not retry elsewhere; the SDK sees an error instead of a silently short answer.
    primary.behave(break_after=3)
    gate = gate_factory(openai_pair(primary.url, mock.url))
    client = openai_for(f"{gate.url}/v1", make_jwt())
    with pytest.raises(openai.APIError):
        for _chunk in client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "one two three four five"}], stream=True
        ):
            pass
    assert len(primary.requests()) == 1
    assert mock.requests() == []


def test_no_failover_on_client_error(gate_factory, primary, mock):
    primary.behave(status=400)
    gate = gate_factory(openai_pair(primary.url, mock.url))
    client = openai_for(f"{gate.url}/v1", make_jwt())
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 400
    assert len(primary.requests()) == 1
    assert mock.requests() == []


def test_circuit_opens_and_later_closes(gate_factory, primary, mock):
    primary.behave(status=500)
    gate = gate_factory(openai_pair(primary.url, mock.url))
    attempts = 30
    for _ in range(attempts):
        chat_ok(gate)
    failures_seen = len(primary.requests())
    assert len(mock.requests()) == attempts, "every request must still be served by the backup"
    assert 1 <= failures_seen < attempts, (
        f"the primary failed every time yet was tried {failures_seen} of {attempts} times: no circuit breaker"
    )
    # The primary recovers; after the breaker's cool-down gate tries it again and it serves.
    primary.clear()

    def primary_serves_again() -> bool:
        chat_ok(gate)
        return any(r.behaviour is None for r in primary.requests())

    wait_until(primary_serves_again, deadline_s=180, what="the primary's circuit to close", interval_s=0.5)
