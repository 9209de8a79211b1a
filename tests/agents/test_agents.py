"""The real coding agents through gate, under both runtimes, each through a scripted tool turn.

The mock upstream answers the agent's first request with a call to the agent's own file or shell
tool (reading notes.txt, whose only line is a fresh canary), and the request that carries the
tool's output with text that echoes it (`mock reply: ...`). A test passes when the agent exits 0,
its final answer holds the canary (so the tool really ran and its output made the round trip),
and the upstream saw only its own protocol with gate's upstream key.

Gemini CLI on a native Gemini upstream (the google provider) is passed through: the upstream
sees the CLI's own request, fields the Chat Completions hub cannot carry (topK, thinkingConfig)
included.
"""

from __future__ import annotations

import pytest

from agents_support import (
    CLAUDE_MODEL,
    GEMINI_MODEL,
    GEMINI_UPSTREAM_KEY,
    OPENAI_CHAT_ONLY_MODEL,
    OPENAI_REASONING_MODEL,
    run_claude,
    run_codex,
    run_gemini,
    script_tool_call,
    tool_results_with,
)
from e2e_support import (
    ANTHROPIC_UPSTREAM_KEY,
    OPENAI_UPSTREAM_KEY,
    MockUpstream,
    anthropic_upstream,
    make_jwt,
    openai_upstream,
)

PROMPT = "Read the file notes.txt in the current directory and tell me exactly what it says."


def upstreams(mock: MockUpstream) -> dict:
    return {
        "anthropic_mock": anthropic_upstream(mock.url, [CLAUDE_MODEL]),
        # Serves /v1/responses itself, as OpenAI does (`custom` upstreams default to no).
        "openai_mock": openai_upstream(mock.url, [OPENAI_REASONING_MODEL], responses=True),
        # An OpenAI-compatible server without the Responses API (Groq, vLLM, Ollama).
        "chat_only_mock": openai_upstream(mock.url, [OPENAI_CHAT_ONLY_MODEL], responses=False),
        # The google provider on Google's OpenAI-compatible endpoint (what it speaks today).
        "gemini_mock": {
            "provider": "google",
            "base_url": f"{mock.url}/v1beta/openai",
            "api_key": GEMINI_UPSTREAM_KEY,
            "models": [GEMINI_MODEL],
        },
    }


def assert_tool_round_trip(run, mock: MockUpstream, ws, path_prefix: str) -> None:
    assert run.returncode == 0, run.describe()
    assert ws.canary in run.stdout, run.describe()
    records = mock.requests()
    assert records, "the agent reached no upstream"
    assert all(r.path.startswith(path_prefix) for r in records), [r.path for r in records]
    assert tool_results_with(records, ws.canary), "no upstream request carried the tool's output"


# Each agent straight at the mock: the mock's shapes are what the real agent parses.


def test_claude_code_direct_to_mock(mock, workspace):
    script_tool_call(mock, "Read", {"file_path": str(workspace.notes)})
    run = run_claude(workspace, mock.url, ANTHROPIC_UPSTREAM_KEY, CLAUDE_MODEL, PROMPT)
    assert_tool_round_trip(run, mock, workspace, "/v1/messages")


def test_codex_direct_to_mock(mock, workspace):
    script_tool_call(mock, "exec_command", codex_shell_call(workspace))
    run = run_codex(workspace, f"{mock.url}/v1", OPENAI_UPSTREAM_KEY, OPENAI_REASONING_MODEL, PROMPT)
    assert_tool_round_trip(run, mock, workspace, "/v1/responses")


def test_gemini_cli_direct_to_mock(mock, workspace):
    script_tool_call(mock, "read_file", gemini_read_call(workspace))
    run = run_gemini(workspace, mock.url, GEMINI_UPSTREAM_KEY, GEMINI_MODEL, PROMPT)
    assert_tool_round_trip(run, mock, workspace, "/v1beta/models/")


# Claude Code through gate


def test_claude_code_anthropic_upstream(mock, gate_factory, workspace):
    gate = gate_factory(upstreams(mock))
    script_tool_call(mock, "Read", {"file_path": str(workspace.notes)})
    run = run_claude(workspace, gate.url, make_jwt(), CLAUDE_MODEL, PROMPT)
    assert_tool_round_trip(run, mock, workspace, "/v1/messages")
    for record in mock.requests():
        assert record.header("x-api-key") == ANTHROPIC_UPSTREAM_KEY


def test_claude_code_openai_upstream_unknown_model(mock, gate_factory, workspace):
    gate = gate_factory(upstreams(mock))
    script_tool_call(mock, "Read", {"file_path": str(workspace.notes)})
    run = run_claude(workspace, gate.url, make_jwt(), OPENAI_REASONING_MODEL, PROMPT)
    assert_tool_round_trip(run, mock, workspace, "/v1/chat/completions")
    for record in mock.requests():
        assert record.header("authorization") == f"Bearer {OPENAI_UPSTREAM_KEY}"
        assert record.header("anthropic-beta") is None


# Codex CLI


def codex_shell_call(ws) -> dict:
    return {"cmd": "cat notes.txt", "workdir": str(ws.root)}


def test_codex_openai_upstream(mock, gate_factory, workspace):
    gate = gate_factory(upstreams(mock))
    script_tool_call(mock, "exec_command", codex_shell_call(workspace))
    run = run_codex(workspace, f"{gate.url}/v1", make_jwt(), OPENAI_REASONING_MODEL, PROMPT)
    assert_tool_round_trip(run, mock, workspace, "/v1/responses")


def test_codex_anthropic_upstream(mock, gate_factory, workspace):
    gate = gate_factory(upstreams(mock))
    script_tool_call(mock, "exec_command", codex_shell_call(workspace))
    run = run_codex(workspace, f"{gate.url}/v1", make_jwt(), CLAUDE_MODEL, PROMPT)
    assert_tool_round_trip(run, mock, workspace, "/v1/messages")


def test_codex_chat_only_upstream(mock, gate_factory, workspace):
    gate = gate_factory(upstreams(mock))
    script_tool_call(mock, "exec_command", codex_shell_call(workspace))
    run = run_codex(workspace, f"{gate.url}/v1", make_jwt(), OPENAI_CHAT_ONLY_MODEL, PROMPT)
    assert_tool_round_trip(run, mock, workspace, "/v1/chat/completions")


# Gemini CLI


def gemini_read_call(ws) -> dict:
    return {"file_path": str(ws.notes)}


def test_gemini_cli_gemini_upstream(mock, gate_factory, workspace):
    gate = gate_factory(upstreams(mock))
    script_tool_call(mock, "read_file", gemini_read_call(workspace))
    run = run_gemini(workspace, gate.url, make_jwt(), GEMINI_MODEL, PROMPT)
    assert_tool_round_trip(run, mock, workspace, "/v1beta/openai/chat/completions")
    for record in mock.requests():
        assert record.header("authorization") == f"Bearer {GEMINI_UPSTREAM_KEY}"


def test_gemini_cli_native_gemini_upstream(mock, gate_factory, workspace):
    ups = upstreams(mock)
    ups["gemini_mock"]["base_url"] = f"{mock.url}/v1beta"
    gate = gate_factory(ups)
    script_tool_call(mock, "read_file", gemini_read_call(workspace))
    run = run_gemini(workspace, gate.url, make_jwt(), GEMINI_MODEL, PROMPT)
    assert_tool_round_trip(run, mock, workspace, "/v1beta/models/")
    for record in mock.requests():
        assert record.header("x-goog-api-key") == GEMINI_UPSTREAM_KEY
        # Passed through: what only the Gemini API says reaches the upstream as the CLI sent it.
        config = record.json().get("generationConfig", {})
        assert "topK" in config and "thinkingConfig" in config, config


def test_gemini_cli_openai_upstream(mock, gate_factory, workspace):
    gate = gate_factory(upstreams(mock))
    script_tool_call(mock, "read_file", gemini_read_call(workspace))
    run = run_gemini(workspace, gate.url, make_jwt(), OPENAI_REASONING_MODEL, PROMPT)
    assert_tool_round_trip(run, mock, workspace, "/v1/chat/completions")


def test_gemini_cli_anthropic_upstream(mock, gate_factory, workspace):
    gate = gate_factory(upstreams(mock))
    script_tool_call(mock, "read_file", gemini_read_call(workspace))
    run = run_gemini(workspace, gate.url, make_jwt(), CLAUDE_MODEL, PROMPT)
    assert_tool_round_trip(run, mock, workspace, "/v1/messages")
