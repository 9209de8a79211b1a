"""Cross-protocol, both runtimes: an Anthropic-format client on an OpenAI-style upstream and an
OpenAI-format client on an Anthropic upstream, plain, streaming and tool calls (with the tool
result sent back)."""

from __future__ import annotations

import checks
from e2e_support import (
    ANTHROPIC_MODEL,
    ANTHROPIC_UPSTREAM_KEY,
    OPENAI_CHAT_MODEL,
    OPENAI_UPSTREAM_KEY,
    MockUpstream,
)


def assert_only_openai_upstream(mock: MockUpstream, count: int) -> None:
    records = mock.requests()
    assert [r.path for r in records] == ["/v1/chat/completions"] * count
    for record in records:
        assert record.header("authorization") == f"Bearer {OPENAI_UPSTREAM_KEY}"
        body = record.json()
        assert body["model"] == OPENAI_CHAT_MODEL
        assert isinstance(body["messages"], list)


def assert_only_anthropic_upstream(mock: MockUpstream, count: int) -> None:
    records = mock.requests()
    assert [r.path for r in records] == ["/v1/messages"] * count
    for record in records:
        assert record.header("x-api-key") == ANTHROPIC_UPSTREAM_KEY
        assert record.header("anthropic-version")
        body = record.json()
        assert body["model"] == ANTHROPIC_MODEL
        assert isinstance(body["max_tokens"], int) and body["max_tokens"] > 0


# Anthropic client -> OpenAI-style upstream


def test_anthropic_client_openai_upstream_plain(anthropic_client, mock):
    checks.anthropic_messages(anthropic_client, model=OPENAI_CHAT_MODEL)
    assert_only_openai_upstream(mock, 1)


def test_anthropic_client_openai_upstream_stream(anthropic_client, mock):
    checks.anthropic_stream(anthropic_client, model=OPENAI_CHAT_MODEL)
    assert_only_openai_upstream(mock, 2)
    assert all(r.json().get("stream") is True for r in mock.requests())


def test_anthropic_client_openai_upstream_tools(anthropic_client, mock):
    checks.anthropic_tools(anthropic_client, stream=False, model=OPENAI_CHAT_MODEL)
    assert_only_openai_upstream(mock, 2)
    first = mock.requests()[0].json()
    assert first["tools"][0]["type"] == "function"
    assert first["tools"][0]["function"]["name"] == "get_weather"
    # The tool result went back as an OpenAI tool message.
    second = mock.requests()[1].json()
    assert any(m.get("role") == "tool" for m in second["messages"])


def test_anthropic_client_openai_upstream_tools_stream(anthropic_client, mock):
    checks.anthropic_tools(anthropic_client, stream=True, model=OPENAI_CHAT_MODEL)
    assert_only_openai_upstream(mock, 2)


# OpenAI client -> Anthropic upstream


def test_openai_client_anthropic_upstream_plain(openai_client, mock):
    checks.openai_chat_plain(openai_client, model=ANTHROPIC_MODEL)
    assert_only_anthropic_upstream(mock, 1)


def test_openai_client_anthropic_upstream_stream(openai_client, mock):
    checks.openai_chat_stream(openai_client, model=ANTHROPIC_MODEL)
    assert_only_anthropic_upstream(mock, 1)
    assert mock.requests()[0].json().get("stream") is True


def test_openai_client_anthropic_upstream_tools(openai_client, mock):
    checks.openai_chat_tools(openai_client, stream=False, model=ANTHROPIC_MODEL)
    assert_only_anthropic_upstream(mock, 2)
    first = mock.requests()[0].json()
    assert first["tools"][0]["name"] == "get_weather"
    assert first["tools"][0]["input_schema"]["properties"]["city"]["type"] == "string"
    # The tool result went back as an Anthropic tool_result block.
    second = mock.requests()[1].json()
    blocks = [b for m in second["messages"] if isinstance(m.get("content"), list) for b in m["content"]]
    assert any(b.get("type") == "tool_result" for b in blocks)


def test_openai_client_anthropic_upstream_tools_stream(openai_client, mock):
    checks.openai_chat_tools(openai_client, stream=True, model=ANTHROPIC_MODEL)
    assert_only_anthropic_upstream(mock, 2)
