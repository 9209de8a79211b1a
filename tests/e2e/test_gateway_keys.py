"""Key injection and pass-through fidelity, both runtimes: the upstream sees gate's key in the
provider's own style and never the client's token; a pass-through body arrives byte for byte."""

from __future__ import annotations

import checks
from e2e_support import (
    ANTHROPIC_MODEL,
    ANTHROPIC_UPSTREAM_KEY,
    OPENAI_UPSTREAM_KEY,
    MockUpstream,
)


def assert_token_not_forwarded(mock: MockUpstream, token: str) -> None:
    records = mock.requests()
    assert records, "the mock received nothing"
    for record in records:
        for name, value in record.headers:
            assert token not in value, f"client token forwarded upstream in header {name}"
            assert token.split(".")[-1] not in value, f"client token signature forwarded in header {name}"
        assert token.encode() not in record.body


def test_openai_upstream_gets_gate_key(openai_client, client_token, mock):
    checks.openai_chat_plain(openai_client)
    [record] = mock.requests("/v1/chat/completions")
    assert record.header("authorization") == f"Bearer {OPENAI_UPSTREAM_KEY}"
    assert record.header("x-api-key") is None
    assert_token_not_forwarded(mock, client_token)


def test_anthropic_upstream_gets_gate_key(anthropic_client, client_token, mock):
    checks.anthropic_messages(anthropic_client)
    [record] = mock.requests("/v1/messages")
    assert record.header("x-api-key") == ANTHROPIC_UPSTREAM_KEY
    assert record.header("anthropic-version")
    auth = record.header("authorization")
    assert auth is None or client_token not in auth
    assert_token_not_forwarded(mock, client_token)


def test_client_x_api_key_not_forwarded_to_openai_upstream(gate_http, client_token, mock):
    # A client may authenticate with x-api-key on any endpoint; that header must not leak either.
    response = gate_http.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]},
        headers={"x-api-key": client_token},
    )
    assert response.status_code == 200, response.text
    [record] = mock.requests("/v1/chat/completions")
    assert record.header("authorization") == f"Bearer {OPENAI_UPSTREAM_KEY}"
    assert record.header("x-api-key") is None
    assert_token_not_forwarded(mock, client_token)


OPENAI_RAW_BODY = (
    b'{\n   "temperature" :0.25,\t"messages": [ {"content" : "byte\\u0020for byte \\ud83d\\ude00",'
    b'  "role":"user"} ] ,\r\n "model":"gpt-4o-mini",   "n":1, "logit_bias": {"2":2.50 ,"1":3e0}  }\n\n'
)

ANTHROPIC_RAW_BODY = (
    b'{"messages":[{"role":"user","content":[{"text":"keep   these   spaces","type":"text"}]}],'
    b'\n\n  "max_tokens" : 32 , "metadata":{"user_id":"e2e"},"model" :  "' + ANTHROPIC_MODEL.encode() + b'"   }'
)


def test_openai_pass_through_body_is_byte_for_byte(gate_http, client_token, mock):
    response = gate_http.post(
        "/v1/chat/completions",
        content=OPENAI_RAW_BODY,
        headers={"authorization": f"Bearer {client_token}", "content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "mock reply: byte for byte \U0001f600"
    [record] = mock.requests("/v1/chat/completions")
    assert record.body == OPENAI_RAW_BODY


def test_anthropic_pass_through_body_is_byte_for_byte(gate_http, client_token, mock):
    response = gate_http.post(
        "/v1/messages",
        content=ANTHROPIC_RAW_BODY,
        headers={"x-api-key": client_token, "anthropic-version": "2023-06-01", "content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["text"] == "mock reply: keep   these   spaces"
    [record] = mock.requests("/v1/messages")
    assert record.body == ANTHROPIC_RAW_BODY
