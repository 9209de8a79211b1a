"""Anthropic-format clients through gate to an Anthropic upstream (pass-through), both runtimes:
messages (plain, stream, tool use) and count_tokens."""

from __future__ import annotations

import checks
from e2e_support import ANTHROPIC_UPSTREAM_KEY, MockUpstream


def assert_upstream_saw(mock: MockUpstream, path: str, count: int = 1) -> None:
    records = mock.requests(path)
    assert len(records) == count, f"expected {count} request(s) on {path}, mock saw {[r.path for r in mock.requests()]}"
    for record in records:
        assert record.header("x-api-key") == ANTHROPIC_UPSTREAM_KEY
        assert record.header("anthropic-version")


def test_messages(anthropic_client, mock):
    prompt = checks.anthropic_messages(anthropic_client)
    assert_upstream_saw(mock, "/v1/messages")
    assert mock.requests()[0].json()["messages"][0]["content"] == prompt


def test_messages_stream(anthropic_client, mock):
    checks.anthropic_stream(anthropic_client)
    assert_upstream_saw(mock, "/v1/messages", count=2)  # raw events, then the stream helper


def test_tool_use(anthropic_client, mock):
    checks.anthropic_tools(anthropic_client, stream=False)
    assert_upstream_saw(mock, "/v1/messages", count=2)


def test_tool_use_stream(anthropic_client, mock):
    checks.anthropic_tools(anthropic_client, stream=True)
    assert_upstream_saw(mock, "/v1/messages", count=2)


def test_count_tokens(anthropic_client, mock):
    checks.anthropic_count_tokens(anthropic_client)
    assert_upstream_saw(mock, "/v1/messages/count_tokens", count=2)
