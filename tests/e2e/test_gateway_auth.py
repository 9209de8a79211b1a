"""Client auth, both runtimes: missing, malformed, wrongly signed, expired, not-yet-valid
(`nbf`), too-long-lived (over `auth.jwt.expiration_hours`), foreign-audience, `crit`-bearing,
wrong-issuer, other-algorithm and `alg: none` tokens get 401 in the error shape of the protocol the client
spoke, reach no upstream, and no secret ever shows up in a response or in gate's log."""

from __future__ import annotations

import time

import anthropic
import openai
import pytest

from conftest import anthropic_for, openai_for
from e2e_support import (
    ANTHROPIC_MODEL,
    ANTHROPIC_UPSTREAM_KEY,
    JWT_SECRET,
    OPENAI_CHAT_MODEL,
    OPENAI_UPSTREAM_KEY,
    make_jwt,
    make_unsigned_jwt,
)

BAD_TOKENS = {
    "garbage": lambda: "not-a-token",
    "wrong_secret": lambda: make_jwt(secret="some-other-secret-of-enough-length"),
    "expired": lambda: make_jwt(expires_in_s=-3600),
    "wrong_issuer": lambda: make_jwt(issuer="someone-else"),
    "no_issuer": lambda: make_jwt(issuer=None),
    "other_algorithm": lambda: make_jwt(algorithm="HS512"),
    "alg_none": make_unsigned_jwt,
    "truncated_signature": lambda: make_jwt()[:-6],
    "not_yet_valid": lambda: make_jwt(extra={"nbf": int(time.time()) + 3600}),
    "too_long_lived": lambda: make_jwt(expires_in_s=48 * 3600),
    "foreign_audience": lambda: make_jwt(extra={"aud": "some-other-service"}),
    "critical_extension": lambda: make_jwt(headers={"crit": ["exp"]}),
    "bad_policy_claim": lambda: make_jwt(extra={"gate": {"rmp": 5}}),
}

OPENAI_BODY = {"model": OPENAI_CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
ANTHROPIC_BODY = {"model": ANTHROPIC_MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


def assert_openai_401(response, secrets: list[str]) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert isinstance(body["error"], dict)
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "type" in body["error"]
    for secret in secrets:
        assert secret not in response.text


def assert_anthropic_401(response, secrets: list[str]) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "authentication_error"
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    for secret in secrets:
        assert secret not in response.text


def test_missing_token_openai(gate_http, mock):
    assert_openai_401(gate_http.post("/v1/chat/completions", json=OPENAI_BODY), [JWT_SECRET])
    assert mock.requests() == []


def test_missing_token_anthropic(gate_http, mock):
    response = gate_http.post("/v1/messages", json=ANTHROPIC_BODY, headers={"anthropic-version": "2023-06-01"})
    assert_anthropic_401(response, [JWT_SECRET])
    assert mock.requests() == []


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
def test_bad_token_openai(gate, gate_http, mock, kind):
    token = BAD_TOKENS[kind]()
    secrets = [JWT_SECRET, OPENAI_UPSTREAM_KEY, ANTHROPIC_UPSTREAM_KEY]
    assert_openai_401(
        gate_http.post("/v1/chat/completions", json=OPENAI_BODY, headers={"authorization": f"Bearer {token}"}), secrets
    )
    assert_openai_401(gate_http.post("/v1/chat/completions", json=OPENAI_BODY, headers={"x-api-key": token}), secrets)
    with pytest.raises(openai.AuthenticationError):
        openai_for(f"{gate.url}/v1", token).chat.completions.create(**OPENAI_BODY)
    with pytest.raises(openai.AuthenticationError):
        openai_for(f"{gate.url}/v1", token).models.list()
    assert mock.requests() == []


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
def test_bad_token_anthropic(gate, gate_http, mock, kind):
    token = BAD_TOKENS[kind]()
    secrets = [JWT_SECRET, OPENAI_UPSTREAM_KEY, ANTHROPIC_UPSTREAM_KEY]
    headers = {"anthropic-version": "2023-06-01"}
    assert_anthropic_401(gate_http.post("/v1/messages", json=ANTHROPIC_BODY, headers={**headers, "x-api-key": token}), secrets)
    assert_anthropic_401(
        gate_http.post("/v1/messages", json=ANTHROPIC_BODY, headers={**headers, "authorization": f"Bearer {token}"}),
        secrets,
    )
    assert_anthropic_401(
        gate_http.post("/v1/messages/count_tokens", json=ANTHROPIC_BODY, headers={**headers, "x-api-key": token}), secrets
    )
    with pytest.raises(anthropic.AuthenticationError):
        anthropic_for(gate.url, token).messages.create(**ANTHROPIC_BODY)
    assert mock.requests() == []


def test_valid_token_either_header(gate_http, client_token, mock):
    headers = {"anthropic-version": "2023-06-01"}
    for auth in ({"x-api-key": client_token}, {"authorization": f"Bearer {client_token}"}):
        response = gate_http.post("/v1/messages", json=ANTHROPIC_BODY, headers={**headers, **auth})
        assert response.status_code == 200, response.text
        response = gate_http.post("/v1/chat/completions", json=OPENAI_BODY, headers=auth)
        assert response.status_code == 200, response.text
    assert len(mock.requests()) == 4


def test_health_needs_no_token(gate_http):
    response = gate_http.get("/health")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_no_secret_in_gate_log(gate, gate_http, client_token, mock):
    # Traffic of every kind first (good and bad tokens, both protocols, a failing upstream),
    # then grep everything gate logged since it started (RUST_LOG=debug).
    headers = {"anthropic-version": "2023-06-01"}
    bad_tokens = [make() for make in BAD_TOKENS.values()]
    assert gate_http.post("/v1/chat/completions", json=OPENAI_BODY, headers={"authorization": f"Bearer {client_token}"}).status_code == 200
    assert gate_http.post("/v1/messages", json=ANTHROPIC_BODY, headers={**headers, "x-api-key": client_token}).status_code == 200
    for token in bad_tokens:
        gate_http.post("/v1/chat/completions", json=OPENAI_BODY, headers={"authorization": f"Bearer {token}"})
        gate_http.post("/v1/messages", json=ANTHROPIC_BODY, headers={**headers, "x-api-key": token})
    mock.behave(status=500, times=2)
    gate_http.post("/v1/chat/completions", json=OPENAI_BODY, headers={"authorization": f"Bearer {client_token}"})
    gate_http.post("/v1/messages", json=ANTHROPIC_BODY, headers={**headers, "x-api-key": client_token})

    log = gate.log()
    assert log.strip(), "gate logged nothing at all; the grep would prove nothing"
    secrets = {
        "the JWT secret": JWT_SECRET,
        "the OpenAI upstream key": OPENAI_UPSTREAM_KEY,
        "the Anthropic upstream key": ANTHROPIC_UPSTREAM_KEY,
        "a client token": client_token,
        "a client token's signature": client_token.rsplit(".", 1)[1],
    }
    for i, token in enumerate(bad_tokens):
        if len(token) >= 8:
            secrets[f"bad token {i}"] = token
    leaked = [name for name, secret in secrets.items() if secret in log]
    assert not leaked, f"gate's log contains {leaked} ({gate.log_path})"
