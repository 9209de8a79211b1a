"""Loopback trust (`auth.allow_loopback = true`), both runtimes: programs on this machine
need no key, but what a web page in a browser on this machine can send is refused before
any upstream sees it: a body without `Content-Type: application/json` (a no-cors `fetch`),
a foreign `Origin`, a `Host` that is not loopback (DNS rebinding)."""

from __future__ import annotations

import httpx
import openai
import pytest

from e2e_support import OPENAI_CHAT_MODEL, OPENAI_UPSTREAM_KEY, default_upstreams

BODY = f'{{"model": "{OPENAI_CHAT_MODEL}", "messages": [{{"role": "user", "content": "hi"}}]}}'


@pytest.fixture
def trusting_gate(gate_factory, mock):
    return gate_factory(default_upstreams(mock), {"auth": {"allow_loopback": True}})


def test_local_programs_need_no_key(trusting_gate, mock):
    # What curl or a script sends: JSON, loopback Host, no Origin, no key.
    with httpx.Client(base_url=trusting_gate.url, timeout=10) as http:
        answer = http.post("/v1/chat/completions", content=BODY, headers={"content-type": "application/json"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"]
        assert http.get("/v1/models").json()["data"]
    # The web UI's own origin is loopback too.
    with httpx.Client(base_url=trusting_gate.url, timeout=10) as http:
        headers = {"content-type": "application/json", "origin": trusting_gate.url}
        assert http.post("/v1/chat/completions", content=BODY, headers=headers).status_code == 200
    # An SDK with a wrong key is not trusted: the key is checked.
    client = openai.OpenAI(base_url=f"{trusting_gate.url}/v1", api_key="gk_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    assert len(mock.requests()) == 2


@pytest.mark.parametrize(
    "headers, says",
    [
        ({"content-type": "text/plain;charset=UTF-8"}, "application/json"),
        ({}, "application/json"),  # a Blob without a type: no Content-Type at all
        ({"content-type": "application/json", "origin": "https://evil.example"}, "origin"),
        ({"content-type": "application/json", "origin": "null"}, "origin"),
        ({"content-type": "application/json", "host": "evil.example"}, "Host"),
    ],
)
def test_what_a_web_page_can_send_is_refused(trusting_gate, mock, headers, says):
    with httpx.Client(base_url=trusting_gate.url, timeout=10) as http:
        request = http.build_request("POST", "/v1/chat/completions", content=BODY.encode())
        if "content-type" not in headers:
            request.headers.pop("content-type", None)
        request.headers.update(headers)
        response = http.send(request)
    assert response.status_code == 401, response.text
    message = response.json()["error"]["message"]
    assert says in message and "API key" in message, message
    assert OPENAI_UPSTREAM_KEY not in response.text
    assert mock.requests() == []


def test_rebinding_cannot_read_the_model_list(trusting_gate):
    with httpx.Client(base_url=trusting_gate.url, timeout=10) as http:
        assert http.get("/v1/models").status_code == 200
        response = http.get("/v1/models", headers={"host": "attacker.example:3000"})
        assert response.status_code == 401, response.text
        response = http.get("/v1/models", headers={"origin": "https://attacker.example"})
        assert response.status_code == 401, response.text
