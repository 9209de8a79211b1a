"""OpenAI-format clients through gate to an OpenAI-style upstream (pass-through), both runtimes:
chat (plain, stream, tools), completions, embeddings, models, responses."""

from __future__ import annotations

import checks
from e2e_support import ANTHROPIC_MOCK_MODELS, OPENAI_MOCK_MODELS, OPENAI_UPSTREAM_KEY, MockUpstream


def assert_upstream_saw(mock: MockUpstream, path: str, count: int = 1) -> None:
    records = mock.requests(path)
    assert len(records) == count, f"expected {count} request(s) on {path}, mock saw {[r.path for r in mock.requests()]}"
    for record in records:
        assert record.header("authorization") == f"Bearer {OPENAI_UPSTREAM_KEY}"


def test_chat_plain(openai_client, mock):
    prompt = checks.openai_chat_plain(openai_client)
    assert_upstream_saw(mock, "/v1/chat/completions")
    assert mock.requests()[0].json()["messages"][0]["content"] == prompt


def test_chat_stream(openai_client, mock):
    checks.openai_chat_stream(openai_client)
    assert_upstream_saw(mock, "/v1/chat/completions")
    assert mock.requests()[0].json()["stream"] is True


def test_chat_tools(openai_client, mock):
    checks.openai_chat_tools(openai_client, stream=False)
    assert_upstream_saw(mock, "/v1/chat/completions", count=2)  # the call, then the tool result


def test_chat_tools_stream(openai_client, mock):
    checks.openai_chat_tools(openai_client, stream=True)
    assert_upstream_saw(mock, "/v1/chat/completions", count=2)


def test_completions(openai_client, mock):
    checks.openai_completions(openai_client, stream=False)
    assert_upstream_saw(mock, "/v1/completions")


def test_completions_stream(openai_client, mock):
    checks.openai_completions(openai_client, stream=True)
    assert_upstream_saw(mock, "/v1/completions")


def test_embeddings(openai_client, mock):
    checks.openai_embeddings(openai_client)
    assert_upstream_saw(mock, "/v1/embeddings", count=2)


def test_models(openai_client):
    checks.openai_models(openai_client, OPENAI_MOCK_MODELS + ANTHROPIC_MOCK_MODELS)


def test_responses(openai_client, mock):
    checks.openai_responses(openai_client, stream=False)
    assert_upstream_saw(mock, "/v1/responses")


def test_responses_stream(openai_client, mock):
    checks.openai_responses(openai_client, stream=True)
    assert_upstream_saw(mock, "/v1/responses")


def test_responses_tools(openai_client, mock):
    checks.openai_responses_tools(openai_client, stream=False)
    assert_upstream_saw(mock, "/v1/responses")


def test_responses_tools_stream(openai_client, mock):
    checks.openai_responses_tools(openai_client, stream=True)
    assert_upstream_saw(mock, "/v1/responses")
