"""Keys with policies (issue 14), both runtimes, through the official SDKs: a model the key may
not use, a rate limit, a budget and a model without a price each raise the SDK's own exception
class with a readable message; `/v1/models` lists only what the key may use; the key's
rate-limit headers come back on successes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from e2e_support import (
    ANTHROPIC_MODEL,
    CLIENT_TIMEOUT_S,
    OPENAI_CHAT_MODEL,
    OPENAI_COMPLETION_MODEL,
    Gate,
    MockUpstream,
    anthropic_upstream,
    gate_bin,
    openai_upstream,
    OPENAI_MOCK_MODELS,
)

# One key per policy, made with `gate token create` and its policy flags. The openai upstream is
# declared `provider = "openai"` so the built-in price table applies to its models
# (gpt-4o-mini: $0.15 / $0.60 per million tokens).
POLICIES = {
    "chat-only": ["--models", OPENAI_CHAT_MODEL],
    "one-a-minute": ["--rpm", "1"],
    "one-a-minute-anthropic": ["--rpm", "1"],
    "one-a-minute-gemini": ["--rpm", "1"],
    "tenth-of-a-cent": ["--budget", "0.001", "--period", "day", "--owner", "e2e"],
}


def create_keys(state_dir: Path) -> dict[str, str]:
    """Keys made with `gate token create` in the state directory gate then starts on."""
    state_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATE_")}
    env["HOME"] = str(state_dir.parent)
    keys = {}
    for name, flags in POLICIES.items():
        out = subprocess.run(
            [str(gate_bin()), "token", "create", "--name", name, *flags, "--state-dir", str(state_dir)],
            capture_output=True,
            text=True,
            env=env,
        )
        assert out.returncode == 0, out.stderr
        keys[name] = out.stdout.strip()
    return keys


@pytest.fixture
def policy_gate(runtime: str, mock: MockUpstream, tmp_path: Path):
    work = tmp_path / "policy-gate"
    keys = create_keys(work / "state")
    upstreams = {
        "openai_mock": openai_upstream(mock.url, OPENAI_MOCK_MODELS, provider="openai"),
        "anthropic_mock": anthropic_upstream(mock.url, [ANTHROPIC_MODEL]),
    }
    server = Gate.start(work, runtime, upstreams)
    yield server, keys
    server.stop()


def oai(gate: Gate, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gate.url}/v1", api_key=key, max_retries=0, timeout=CLIENT_TIMEOUT_S)


def ant(gate: Gate, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gate.url, api_key=key, max_retries=0, timeout=CLIENT_TIMEOUT_S)


def gem(gate: Gate, key: str) -> genai.Client:
    return genai.Client(
        api_key=key,
        http_options=types.HttpOptions(base_url=gate.url, api_version="v1beta", timeout=int(CLIENT_TIMEOUT_S * 1000)),
    )


def say_hi(model: str, **extra):
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def test_model_not_allowed_raises_permission_denied(policy_gate, mock):
    gate, keys = policy_gate
    key = keys["chat-only"]
    with pytest.raises(openai.PermissionDeniedError) as raised:
        oai(gate, key).chat.completions.create(**say_hi(OPENAI_COMPLETION_MODEL))
    assert OPENAI_COMPLETION_MODEL in str(raised.value) and OPENAI_CHAT_MODEL in str(raised.value)
    assert raised.value.status_code == 403
    with pytest.raises(anthropic.PermissionDeniedError) as raised:
        ant(gate, key).messages.create(**say_hi(ANTHROPIC_MODEL, max_tokens=16))
    assert f"may not use the model `{ANTHROPIC_MODEL}`" in str(raised.value)
    google = gem(gate, key)  # kept: the SDK closes its connection pool with the client
    with pytest.raises(genai_errors.ClientError) as raised:
        google.models.generate_content(model=ANTHROPIC_MODEL, contents="hi")
    assert raised.value.code == 403 and raised.value.status == "PERMISSION_DENIED"
    assert mock.requests("/v1/chat/completions") == [] and mock.requests("/v1/messages") == []
    # What the key may use, and only that, is listed.
    assert [m.id for m in oai(gate, key).models.list()] == [OPENAI_CHAT_MODEL]
    reply = oai(gate, key).chat.completions.create(**say_hi(OPENAI_CHAT_MODEL))
    assert reply.choices[0].message.content


def test_rate_limit_raises_rate_limit_error_with_headers(policy_gate):
    gate, keys = policy_gate
    client = oai(gate, keys["one-a-minute"])
    raw = client.chat.completions.with_raw_response.create(**say_hi(OPENAI_CHAT_MODEL))
    assert raw.headers["x-ratelimit-limit-requests"] == "1"
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError) as raised:
        client.chat.completions.create(**say_hi(OPENAI_CHAT_MODEL))
    assert "1 requests per minute" in str(raised.value)
    assert int(raised.value.response.headers["retry-after"]) >= 1
    assert raised.value.response.headers["x-ratelimit-remaining-requests"] == "0"

    client = ant(gate, keys["one-a-minute-anthropic"])
    raw = client.messages.with_raw_response.create(**say_hi(ANTHROPIC_MODEL, max_tokens=16))
    assert raw.headers["anthropic-ratelimit-requests-limit"] == "1"
    with pytest.raises(anthropic.RateLimitError) as raised:
        client.messages.create(**say_hi(ANTHROPIC_MODEL, max_tokens=16))
    assert raised.value.response.headers["anthropic-ratelimit-requests-remaining"] == "0"

    client = gem(gate, keys["one-a-minute-gemini"])
    client.models.generate_content(model=OPENAI_CHAT_MODEL, contents="hi")
    with pytest.raises(genai_errors.ClientError) as raised:
        client.models.generate_content(model=OPENAI_CHAT_MODEL, contents="hi")
    assert raised.value.code == 429 and raised.value.status == "RESOURCE_EXHAUSTED"


def test_budget_and_unknown_price_raise_402(policy_gate, mock):
    gate, keys = policy_gate
    key = keys["tenth-of-a-cent"]
    # 10,000 output tokens of gpt-4o-mini could cost $0.006: more than the $0.001 budget.
    with pytest.raises(openai.APIStatusError) as raised:
        oai(gate, key).chat.completions.create(**say_hi(OPENAI_CHAT_MODEL, max_tokens=10_000))
    assert raised.value.status_code == 402
    message = str(raised.value)
    assert "has spent $0.00 of its daily budget of $0.001" in message, message
    assert "starts again at" in message
    with pytest.raises(anthropic.APIStatusError) as raised:
        ant(gate, key).messages.create(**say_hi(OPENAI_CHAT_MODEL, max_tokens=10_000))
    assert raised.value.status_code == 402
    assert "budget" in str(raised.value)
    google = gem(gate, key)
    with pytest.raises(genai_errors.ClientError) as raised:
        google.models.generate_content(
            model=OPENAI_CHAT_MODEL, contents="hi", config=types.GenerateContentConfig(max_output_tokens=10_000)
        )
    assert raised.value.code == 402
    # A small request fits, and is served.
    reply = oai(gate, key).chat.completions.create(**say_hi(OPENAI_CHAT_MODEL, max_tokens=50))
    assert reply.choices[0].message.content
    # The mock's Anthropic model has no price: a budgeted key is told how to add one.
    with pytest.raises(anthropic.APIStatusError) as raised:
        ant(gate, key).messages.create(**say_hi(ANTHROPIC_MODEL, max_tokens=16))
    assert raised.value.status_code == 402
    assert f'[upstreams.anthropic_mock.prices."{ANTHROPIC_MODEL}"]' in str(raised.value)
    assert mock.requests("/v1/messages") == []
