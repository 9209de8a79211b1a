"""The official SDKs pointed straight at the mock: proves the mock is faithful to the real APIs
(shapes the SDKs parse, streaming, tools) and that its control API (recording, fault injection,
key checks) does what the gateway tests rely on. Needs only MOCK_BIN."""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import openai
import pytest

import checks
from conftest import anthropic_for, openai_for
from e2e_support import (
    ANTHROPIC_MOCK_MODELS,
    ANTHROPIC_UPSTREAM_KEY,
    OPENAI_CHAT_MODEL,
    OPENAI_MOCK_MODELS,
    OPENAI_UPSTREAM_KEY,
    MockUpstream,
    free_port,
)


def test_openai_chat_plain(openai_direct, mock: MockUpstream):
    prompt = checks.openai_chat_plain(openai_direct)
    [record] = mock.requests("/v1/chat/completions")
    assert record.method == "POST"
    assert record.header("authorization") == f"Bearer {OPENAI_UPSTREAM_KEY}"
    assert record.json()["messages"][0]["content"] == prompt


def test_openai_chat_stream(openai_direct):
    checks.openai_chat_stream(openai_direct)


def test_openai_chat_tools(openai_direct):
    checks.openai_chat_tools(openai_direct, stream=False)


def test_openai_chat_tools_stream(openai_direct):
    checks.openai_chat_tools(openai_direct, stream=True)


def test_openai_completions(openai_direct):
    checks.openai_completions(openai_direct, stream=False)


def test_openai_completions_stream(openai_direct):
    checks.openai_completions(openai_direct, stream=True)


def test_openai_embeddings(openai_direct):
    checks.openai_embeddings(openai_direct)


def test_openai_models(openai_direct):
    checks.openai_models(openai_direct, OPENAI_MOCK_MODELS)


def test_openai_responses(openai_direct):
    checks.openai_responses(openai_direct, stream=False)


def test_openai_responses_stream(openai_direct):
    checks.openai_responses(openai_direct, stream=True)


def test_openai_responses_tools(openai_direct):
    checks.openai_responses_tools(openai_direct, stream=False)


def test_openai_responses_tools_stream(openai_direct):
    checks.openai_responses_tools(openai_direct, stream=True)


def test_anthropic_messages(anthropic_direct, mock: MockUpstream):
    checks.anthropic_messages(anthropic_direct)
    [record] = mock.requests("/v1/messages")
    # The current SDK sends its key as a Bearer token; older ones used x-api-key.
    assert ANTHROPIC_UPSTREAM_KEY in (record.header("x-api-key"), (record.header("authorization") or "").removeprefix("Bearer "))
    assert record.header("anthropic-version")


def test_anthropic_stream(anthropic_direct):
    checks.anthropic_stream(anthropic_direct)


def test_anthropic_tools(anthropic_direct):
    checks.anthropic_tools(anthropic_direct, stream=False)


def test_anthropic_tools_stream(anthropic_direct):
    checks.anthropic_tools(anthropic_direct, stream=True)


def test_anthropic_count_tokens(anthropic_direct):
    checks.anthropic_count_tokens(anthropic_direct)


def test_anthropic_models(anthropic_direct):
    ids = [m.id for m in anthropic_direct.models.list()]
    assert set(ANTHROPIC_MOCK_MODELS) <= set(ids)


def test_wrong_upstream_keys_get_401_in_provider_shape(mock: MockUpstream):
    with pytest.raises(openai.AuthenticationError) as openai_error:
        openai_for(f"{mock.url}/v1", "sk-wrong").chat.completions.create(
            model=OPENAI_CHAT_MODEL, messages=[{"role": "user", "content": "hi"}]
        )
    assert openai_error.value.status_code == 401
    assert openai_error.value.body["code"] == "invalid_api_key"
    with pytest.raises(anthropic.AuthenticationError) as anthropic_error:
        anthropic_for(mock.url, "sk-ant-wrong").messages.create(
            model="claude-mock-1", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    assert anthropic_error.value.status_code == 401
    assert anthropic_error.value.body["error"]["type"] == "authentication_error"
    # The OpenAI key is not accepted on the Anthropic side and vice versa.
    with pytest.raises(anthropic.AuthenticationError):
        anthropic_for(mock.url, OPENAI_UPSTREAM_KEY).messages.create(
            model="claude-mock-1", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )


def test_records_body_bytes_exactly(mock: MockUpstream):
    raw = b'{  "model":"gpt-4o-mini" ,\n\t"messages":[{"content":"bytes \\u00e9","role":"user"}]   }\n'
    response = httpx.post(
        f"{mock.url}/v1/chat/completions",
        content=raw,
        headers={"authorization": f"Bearer {OPENAI_UPSTREAM_KEY}", "content-type": "application/json"},
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "mock reply: bytes é"
    [record] = mock.requests()
    assert record.body == raw
    assert record.header("content-type") == "application/json"


@pytest.mark.parametrize("status,error", [(500, openai.InternalServerError), (429, openai.RateLimitError), (503, openai.InternalServerError)])
def test_behaviour_status(openai_direct, mock: MockUpstream, status, error):
    mock.behave(model=OPENAI_CHAT_MODEL, status=status, times=1)
    with pytest.raises(error) as raised:
        checks.openai_chat_plain(openai_direct)
    assert raised.value.status_code == status
    # `times: 1` is used up: the next request is served.
    checks.openai_chat_plain(openai_direct)
    assert len(mock.requests("/v1/chat/completions")) == 2


def test_behaviour_status_anthropic_shape(anthropic_direct, mock: MockUpstream):
    mock.behave(path="/v1/messages", status=529, times=1)
    with pytest.raises(anthropic.APIStatusError) as raised:
        checks.anthropic_messages(anthropic_direct)
    assert raised.value.status_code == 529
    assert raised.value.body["type"] == "error"
    assert raised.value.body["error"]["type"] == "overloaded_error"


def test_behaviour_rules_match_model_and_path(openai_direct, mock: MockUpstream):
    mock.behave(model="some-other-model", status=500)
    mock.behave(path="/v1/embeddings", status=500)
    checks.openai_chat_plain(openai_direct)  # neither rule matches


def test_behaviour_reset(openai_direct, mock: MockUpstream):
    mock.behave(reset=True, times=1)
    with pytest.raises(openai.APIConnectionError):
        checks.openai_chat_plain(openai_direct)
    checks.openai_chat_plain(openai_direct)


def test_behaviour_delay_before_headers(mock: MockUpstream):
    mock.behave(delay_ms=2000, times=1)
    client = openai.OpenAI(base_url=f"{mock.url}/v1", api_key=OPENAI_UPSTREAM_KEY, max_retries=0, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        checks.openai_chat_plain(client)


def test_behaviour_pause_between_events(openai_direct, mock: MockUpstream):
    mock.behave(pause_ms=150, times=1)
    arrivals = []
    stream = openai_direct.chat.completions.create(
        model=OPENAI_CHAT_MODEL, messages=[{"role": "user", "content": "one two three"}], stream=True
    )
    for _chunk in stream:
        arrivals.append(time.time())
    [record] = mock.requests()
    sent = record.events_sent_at
    assert len(sent) == len(arrivals) + 1  # + the [DONE] event, which the SDK does not yield
    gaps = [b - a for a, b in zip(sent, sent[1:])]
    assert all(gap >= 0.14 for gap in gaps), gaps
    # The client saw the first chunk before the mock sent the second.
    assert arrivals[0] < sent[1]


def test_behaviour_break_after(openai_direct, anthropic_direct, mock: MockUpstream):
    mock.behave(break_after=2, times=2)
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for _chunk in openai_direct.chat.completions.create(
            model=OPENAI_CHAT_MODEL, messages=[{"role": "user", "content": "a b c d e"}], stream=True
        ):
            pass
    with pytest.raises((anthropic.APIError, httpx.HTTPError)):
        for _event in anthropic_direct.messages.create(
            model="claude-mock-1", max_tokens=8, messages=[{"role": "user", "content": "a b c d e"}], stream=True
        ):
            pass


def test_behaviour_per_request_header(mock: MockUpstream):
    response = httpx.post(
        f"{mock.url}/v1/chat/completions",
        json={"model": OPENAI_CHAT_MODEL, "messages": [{"role": "user", "content": "x"}]},
        headers={"authorization": f"Bearer {OPENAI_UPSTREAM_KEY}", "x-mock-behaviour": json.dumps({"status": 503})},
    )
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "server_error"


def test_control_api_rejects_unknown_rule_fields(mock: MockUpstream):
    response = httpx.post(f"{mock.url}/_mock/behaviour", json={"statuss": 500})
    assert response.status_code == 400
    assert "statuss" in response.json()["error"]


def test_refused_port_is_refused():
    # The failover tests rely on a freshly freed port refusing connections.
    port = free_port()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
