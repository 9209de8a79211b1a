"""Coding agents' shapes across protocols (issue 12), both runtimes: the openai SDK's
Responses API (`responses.create`, streamed and not, with tools) on an Anthropic upstream and
on a chat-completions-only upstream; the anthropic SDK with Claude Code's newer request shape
(system messages mid-conversation, thinking, effort, images, a beta header) on an
OpenAI-format upstream. The mock refuses what the real APIs refuse (unknown roles and
fields, `max_tokens` on reasoning models)."""

from __future__ import annotations

import base64

import checks
from conftest import openai_for, anthropic_for
from e2e_support import ANTHROPIC_MODEL, OPENAI_CHAT_MODEL, openai_upstream

CHAT_ONLY_MODEL = "gpt-5-mini"
PIXEL_PNG = base64.b64encode(
    bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
    )
).decode()


def paths(mock) -> list[str]:
    return [r.path for r in mock.requests()]


# --- Responses API on an Anthropic upstream -------------------------------------------------


def test_responses_on_anthropic_upstream(openai_client, mock):
    checks.openai_responses(openai_client, stream=False, model=ANTHROPIC_MODEL)
    assert paths(mock) == ["/v1/messages"]


def test_responses_stream_on_anthropic_upstream(openai_client, mock):
    checks.openai_responses(openai_client, stream=True, model=ANTHROPIC_MODEL)
    assert paths(mock) == ["/v1/messages"]
    assert mock.requests()[0].json()["stream"] is True


def test_responses_tools_on_anthropic_upstream(openai_client, mock):
    checks.openai_responses_tools(openai_client, stream=False, model=ANTHROPIC_MODEL)
    checks.openai_responses_tools(openai_client, stream=True, model=ANTHROPIC_MODEL)
    assert paths(mock) == ["/v1/messages", "/v1/messages"]
    assert mock.requests()[0].json()["tools"][0]["name"] == "get_weather"


# --- Responses API on a chat-completions-only upstream --------------------------------------


def chat_only_gate(gate_factory, mock):
    return gate_factory({"chat_only": openai_upstream(mock.url, [CHAT_ONLY_MODEL])})


def test_responses_on_chat_only_upstream(gate_factory, mock, client_token):
    gate = chat_only_gate(gate_factory, mock)
    client = openai_for(f"{gate.url}/v1", client_token)
    checks.openai_responses(client, stream=False, model=CHAT_ONLY_MODEL)
    checks.openai_responses(client, stream=True, model=CHAT_ONLY_MODEL)
    assert paths(mock) == ["/v1/chat/completions", "/v1/chat/completions"]
    streamed = mock.requests()[1].json()
    assert streamed["stream_options"] == {"include_usage": True}


def test_responses_tools_and_history_on_chat_only_upstream(gate_factory, mock, client_token):
    gate = chat_only_gate(gate_factory, mock)
    client = openai_for(f"{gate.url}/v1", client_token)
    checks.openai_responses_tools(client, stream=False, model=CHAT_ONLY_MODEL)
    checks.openai_responses_tools(client, stream=True, model=CHAT_ONLY_MODEL)
    # A second turn as Codex sends it: the call and its output back, store off, reasoning.
    response = client.responses.create(
        model=CHAT_ONLY_MODEL,
        instructions="You are a coding agent.",
        input=[
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        ],
        tools=checks.RESPONSES_TOOLS,
        store=False,
        reasoning={"effort": "low"},
        max_output_tokens=32000,
    )
    assert response.status == "completed"
    assert response.output_text
    sent = mock.requests()[-1].json()
    # gpt-5: the strict mock would refuse max_tokens.
    assert sent["max_completion_tokens"] == 32000 and "max_tokens" not in sent
    assert sent["reasoning_effort"] == "low"
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "tool"]


def test_previous_response_id_is_refused_clearly(gate_factory, mock, client_token):
    import openai

    gate = chat_only_gate(gate_factory, mock)
    client = openai_for(f"{gate.url}/v1", client_token)
    try:
        client.responses.create(model=CHAT_ONLY_MODEL, input="hi", previous_response_id="resp_1")
    except openai.BadRequestError as error:
        assert "previous_response_id" in str(error)
    else:
        raise AssertionError("previous_response_id must be refused toward a chat-only upstream")
    assert paths(mock) == []


# --- Claude Code's request shape on an OpenAI-format upstream -------------------------------


def test_claude_code_shape_on_openai_upstream(gate, mock, client_token):
    client = anthropic_for(gate.url, client_token)
    message = client.messages.create(
        model=OPENAI_CHAT_MODEL,
        max_tokens=32000,
        system=[{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                                              {"type": "text", "text": "hi"}]},
            {"role": "system", "content": "Reminder: be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "what is in this image?", "cache_control": {"type": "ephemeral"}},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL_PNG}},
            ]},
        ],
        thinking={"type": "enabled", "budget_tokens": 2048},
        extra_body={"output_config": {"effort": "high"}},
        extra_headers={"anthropic-beta": "mid-conversation-system-2025-01-01"},
        metadata={"user_id": "user-7"},
        stop_sequences=["</done>"],
    )
    assert message.type == "message"
    assert message.content and message.content[-1].type == "text"
    records = mock.requests()
    assert [r.path for r in records] == ["/v1/chat/completions"]
    assert records[0].header("anthropic-beta") is None
    sent = records[0].json()
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "system", "user"]
    assert sent["messages"][3]["content"] == "Reminder: be brief."
    parts = sent["messages"][4]["content"]
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert sent["user"] == "user-7"
    assert sent["stop"] == ["</done>"]
    assert sent["max_tokens"] == 16384  # gpt-4o-mini's output cap
    assert "reasoning_effort" not in sent  # a non-reasoning model refuses it
    assert "cache_control" not in records[0].body.decode()
