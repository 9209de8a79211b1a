"""Bad input, both runtimes: malformed JSON, unknown model, oversized body, wrong content type
get the right 4xx in the client protocol's error shape with a message saying what was wrong,
nothing reaches the upstream, and gate keeps serving afterwards."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

import checks
from e2e_support import ANTHROPIC_MODEL, OPENAI_CHAT_MODEL, MockUpstream

# Far above any sane request-body limit and below the mock's own (256 MiB), so a 413 can only
# come from gate.
OVERSIZED_BYTES = 80 * 1024 * 1024


def openai_headers(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", "content-type": "application/json"}


def anthropic_headers(token: str) -> dict[str, str]:
    return {"x-api-key": token, "anthropic-version": "2023-06-01", "content-type": "application/json"}


def openai_error_message(response: httpx.Response) -> str:
    body = response.json()
    message = body["error"]["message"]
    assert isinstance(message, str) and message.strip()
    return message


def anthropic_error_message(response: httpx.Response) -> str:
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"]
    message = body["error"]["message"]
    assert isinstance(message, str) and message.strip()
    return message


def assert_still_serving(gate, openai_client, anthropic_client) -> None:
    assert gate.alive(), f"gate died:\n{gate.log()[-4000:]}"
    checks.openai_chat_plain(openai_client)
    checks.anthropic_messages(anthropic_client)


def test_malformed_json_openai(gate, gate_http, client_token, mock: MockUpstream, openai_client, anthropic_client):
    response = gate_http.post(
        "/v1/chat/completions", content=b'{"model": "gpt-4o-mini", "messages": [', headers=openai_headers(client_token)
    )
    assert response.status_code == 400, response.text
    assert "json" in openai_error_message(response).lower()
    assert mock.requests() == []
    assert_still_serving(gate, openai_client, anthropic_client)


def test_malformed_json_anthropic(gate, gate_http, client_token, mock: MockUpstream, openai_client, anthropic_client):
    response = gate_http.post("/v1/messages", content=b"{not json at all", headers=anthropic_headers(client_token))
    assert response.status_code == 400, response.text
    assert "json" in anthropic_error_message(response).lower()
    assert mock.requests() == []
    assert_still_serving(gate, openai_client, anthropic_client)


def test_unknown_model_openai(gate, openai_client, anthropic_client, mock: MockUpstream):
    with pytest.raises(openai.NotFoundError) as raised:
        openai_client.chat.completions.create(model="no-such-model-xyz", messages=[{"role": "user", "content": "hi"}])
    assert raised.value.status_code == 404
    assert "no-such-model-xyz" in raised.value.body["message"]
    assert mock.requests() == []
    assert_still_serving(gate, openai_client, anthropic_client)


def test_unknown_model_anthropic(gate, openai_client, anthropic_client, mock: MockUpstream):
    with pytest.raises(anthropic.NotFoundError) as raised:
        anthropic_client.messages.create(
            model="no-such-model-xyz", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )
    assert raised.value.status_code == 404
    assert raised.value.body["type"] == "error"
    assert raised.value.body["error"]["type"] == "not_found_error"
    assert "no-such-model-xyz" in raised.value.body["error"]["message"]
    assert mock.requests() == []
    assert_still_serving(gate, openai_client, anthropic_client)


def oversized_body(model: str, anthropic_shape: bool) -> bytes:
    filler = "x" * OVERSIZED_BYTES
    if anthropic_shape:
        return ('{"model":"%s","max_tokens":8,"messages":[{"role":"user","content":"%s"}]}' % (model, filler)).encode()
    return ('{"model":"%s","messages":[{"role":"user","content":"%s"}]}' % (model, filler)).encode()


def test_oversized_body_openai(gate, gate_http, client_token, mock: MockUpstream, openai_client, anthropic_client):
    response = gate_http.post(
        "/v1/chat/completions", content=oversized_body(OPENAI_CHAT_MODEL, False), headers=openai_headers(client_token)
    )
    assert response.status_code == 413, response.text[:500]
    assert openai_error_message(response)
    assert mock.requests() == []
    assert_still_serving(gate, openai_client, anthropic_client)


def test_oversized_body_anthropic(gate, gate_http, client_token, mock: MockUpstream, openai_client, anthropic_client):
    response = gate_http.post(
        "/v1/messages", content=oversized_body(ANTHROPIC_MODEL, True), headers=anthropic_headers(client_token)
    )
    assert response.status_code == 413, response.text[:500]
    assert anthropic_error_message(response)
    assert mock.requests() == []
    assert_still_serving(gate, openai_client, anthropic_client)


def test_oversized_chunked_body(gate, gate_http, client_token, mock: MockUpstream, openai_client, anthropic_client):
    # No Content-Length: gate must count while reading, not trust the header.
    body = oversized_body(OPENAI_CHAT_MODEL, False)

    def chunks():
        for start in range(0, len(body), 1 << 20):
            yield body[start : start + (1 << 20)]

    response = gate_http.post("/v1/chat/completions", content=chunks(), headers=openai_headers(client_token))
    assert response.status_code == 413, response.text[:500]
    assert mock.requests() == []
    assert_still_serving(gate, openai_client, anthropic_client)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_wrong_content_type(gate, gate_http, client_token, mock: MockUpstream, openai_client, anthropic_client, content_type):
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    headers = {"authorization": f"Bearer {client_token}", "content-type": content_type}
    response = gate_http.post("/v1/chat/completions", content=body, headers=headers)
    assert response.status_code in (400, 415), response.text
    assert "content-type" in openai_error_message(response).lower() or "json" in openai_error_message(response).lower()
    assert mock.requests() == []
    assert_still_serving(gate, openai_client, anthropic_client)


def test_wrong_content_type_anthropic(gate, gate_http, client_token, mock: MockUpstream, openai_client, anthropic_client):
    body = b'{"model":"claude-mock-1","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}'
    headers = {**anthropic_headers(client_token), "content-type": "text/plain"}
    response = gate_http.post("/v1/messages", content=body, headers=headers)
    assert response.status_code in (400, 415), response.text
    assert anthropic_error_message(response)
    assert mock.requests() == []
    assert_still_serving(gate, openai_client, anthropic_client)


def test_unknown_path_is_404_and_gate_keeps_serving(gate, gate_http, client_token, openai_client, anthropic_client):
    response = gate_http.post("/v1/nope", json={}, headers={"authorization": f"Bearer {client_token}"})
    assert response.status_code == 404
    assert_still_serving(gate, openai_client, anthropic_client)
