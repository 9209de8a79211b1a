"""The Gemini API through gate, both runtimes, with the official `google-genai` SDK: generate
(plain, streamed), function calling with the result sent back, countTokens and models.list, on
an OpenAI-style and an Anthropic upstream; the Gate key as `x-goog-api-key` or `?key=`, errors in
Google's shape, and the key never in gate's log."""

from __future__ import annotations

import httpx
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from e2e_support import (
    ANTHROPIC_MODEL,
    ANTHROPIC_UPSTREAM_KEY,
    CLIENT_TIMEOUT_S,
    OPENAI_CHAT_MODEL,
    OPENAI_UPSTREAM_KEY,
    WEATHER_TOOL_SCHEMA,
)

UPSTREAMS = {
    OPENAI_CHAT_MODEL: ("/v1/chat/completions", "authorization", f"Bearer {OPENAI_UPSTREAM_KEY}"),
    ANTHROPIC_MODEL: ("/v1/messages", "x-api-key", ANTHROPIC_UPSTREAM_KEY),
}


@pytest.fixture
def gemini_client(gate, client_token) -> genai.Client:
    return genai.Client(
        api_key=client_token,
        http_options=types.HttpOptions(base_url=gate.url, api_version="v1beta", timeout=int(CLIENT_TIMEOUT_S * 1000)),
    )


def assert_upstream(mock, model: str, count: int) -> None:
    path, header, value = UPSTREAMS[model]
    records = mock.requests()
    assert [r.path for r in records] == [path] * count
    for record in records:
        assert record.header(header) == value
        assert record.json()["model"] == model


@pytest.mark.parametrize("model", [OPENAI_CHAT_MODEL, ANTHROPIC_MODEL])
def test_generate_content(gemini_client, mock, model):
    response = gemini_client.models.generate_content(
        model=model,
        contents="hello gemini",
        config=types.GenerateContentConfig(system_instruction="be brief", temperature=0.5, max_output_tokens=64),
    )
    assert response.text == "mock reply: hello gemini"
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    usage = response.usage_metadata
    assert usage.prompt_token_count > 0 and usage.candidates_token_count > 0
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count
    assert_upstream(mock, model, 1)
    sent = mock.requests()[0].json()
    if model == OPENAI_CHAT_MODEL:
        assert sent["messages"][0] == {"role": "system", "content": "be brief"}
        assert sent["max_tokens"] == 64
    else:
        assert sent["system"] in ("be brief", [{"type": "text", "text": "be brief"}])
        assert sent["max_tokens"] == 64


@pytest.mark.parametrize("model", [OPENAI_CHAT_MODEL, ANTHROPIC_MODEL])
def test_generate_content_stream(gemini_client, mock, model):
    chunks = list(gemini_client.models.generate_content_stream(model=model, contents="stream these words"))
    assert len(chunks) > 2
    assert "".join(c.text or "" for c in chunks) == "mock reply: stream these words"
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert chunks[-1].usage_metadata.candidates_token_count > 0
    assert_upstream(mock, model, 1)
    assert mock.requests()[0].json()["stream"] is True


@pytest.mark.parametrize("model", [OPENAI_CHAT_MODEL, ANTHROPIC_MODEL])
@pytest.mark.parametrize("stream", [False, True])
def test_function_calling(gemini_client, mock, model, stream):
    tool = types.Tool(
        function_declarations=[
            types.FunctionDeclaration(name="get_weather", description="Weather in a city", parameters_json_schema=WEATHER_TOOL_SCHEMA)
        ]
    )
    config = types.GenerateContentConfig(tools=[tool], automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    question = types.Content(role="user", parts=[types.Part.from_text(text="weather in Paris?")])
    if stream:
        chunks = list(gemini_client.models.generate_content_stream(model=model, contents=[question], config=config))
        calls = [c for chunk in chunks for c in (chunk.function_calls or [])]
        model_turn = types.Content(role="model", parts=[types.Part(function_call=c) for c in calls])
    else:
        response = gemini_client.models.generate_content(model=model, contents=[question], config=config)
        calls = response.function_calls
        model_turn = response.candidates[0].content
    assert [c.name for c in calls] == ["get_weather"]
    assert calls[0].args == {"city": "mock", "unit": "celsius"}
    answer = types.Content(
        role="user", parts=[types.Part.from_function_response(name="get_weather", response={"output": "sunny and 21C"})]
    )
    final = gemini_client.models.generate_content(model=model, contents=[question, model_turn, answer], config=config)
    assert final.text == "mock reply: sunny and 21C"
    assert_upstream(mock, model, 2)
    second = mock.requests()[1].json()
    if model == OPENAI_CHAT_MODEL:
        tool_message = second["messages"][-1]
        assert tool_message["role"] == "tool" and tool_message["content"] == "sunny and 21C"
        assert tool_message["tool_call_id"] == second["messages"][-2]["tool_calls"][0]["id"]
    else:
        blocks = second["messages"][-1]["content"]
        assert blocks[0]["type"] == "tool_result"


def test_count_tokens_and_models(gemini_client, mock):
    counted = gemini_client.models.count_tokens(model=OPENAI_CHAT_MODEL, contents="one two three four")
    assert counted.total_tokens > 0
    names = [m.name for m in gemini_client.models.list()]
    assert f"models/{OPENAI_CHAT_MODEL}" in names and f"models/{ANTHROPIC_MODEL}" in names
    assert gemini_client.models.get(model=ANTHROPIC_MODEL).name == f"models/{ANTHROPIC_MODEL}"
    assert mock.requests() == []


def test_key_in_query_and_errors_in_google_shape(gate, client_token, mock):
    body = {"contents": [{"role": "user", "parts": [{"text": "via query key"}]}]}
    url = f"{gate.url}/v1beta/models/{OPENAI_CHAT_MODEL}:generateContent"
    ok = httpx.post(url, params={"key": client_token}, json=body, timeout=CLIENT_TIMEOUT_S)
    assert ok.status_code == 200, ok.text
    assert ok.json()["candidates"][0]["content"]["parts"][0]["text"] == "mock reply: via query key"
    # The JSON-array stream (no alt=sse).
    streamed = httpx.post(
        f"{gate.url}/v1beta/models/{OPENAI_CHAT_MODEL}:streamGenerateContent",
        params={"key": client_token}, json=body, timeout=CLIENT_TIMEOUT_S,
    )
    assert streamed.status_code == 200, streamed.text
    elements = streamed.json()
    assert isinstance(elements, list) and len(elements) > 1
    assert "".join(p.get("text", "") for e in elements for p in e["candidates"][0]["content"]["parts"]) == "mock reply: via query key"
    # Errors: bad key, unknown model, bad body, all in Google's shape.
    bad_key = httpx.post(url, params={"key": "not-a-gate-key"}, json=body, timeout=CLIENT_TIMEOUT_S)
    assert bad_key.status_code == 401
    assert bad_key.json()["error"]["status"] == "UNAUTHENTICATED"
    unknown = httpx.post(
        f"{gate.url}/v1beta/models/no-such-model:generateContent",
        headers={"x-goog-api-key": client_token}, json=body, timeout=CLIENT_TIMEOUT_S,
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"] == {"code": 404, "message": unknown.json()["error"]["message"], "status": "NOT_FOUND"}
    broken = httpx.post(url, headers={"x-goog-api-key": client_token}, content=b"{not json", timeout=CLIENT_TIMEOUT_S)
    assert broken.status_code == 400 and broken.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert client_token not in gate.log()


def test_sdk_error_is_raised_as_client_error(gemini_client):
    with pytest.raises(genai_errors.ClientError) as raised:
        gemini_client.models.generate_content(model="no-such-model", contents="x")
    assert raised.value.code == 404


def test_broken_upstream_stream_ends_with_a_google_error(gate, client_token, mock):
    mock.behave(path="/v1/chat/completions", break_after=3)
    body = {"contents": [{"role": "user", "parts": [{"text": "a stream that breaks off early"}]}]}
    response = httpx.post(
        f"{gate.url}/v1beta/models/{OPENAI_CHAT_MODEL}:streamGenerateContent",
        params={"alt": "sse"}, headers={"x-goog-api-key": client_token}, json=body, timeout=CLIENT_TIMEOUT_S,
    )
    assert response.status_code == 200
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    last = __import__("json").loads(events[-1])
    assert last["error"]["status"] == "INTERNAL" or last["error"]["code"] == 502, last
    assert all("finishReason" not in e for e in events), events


@pytest.mark.parametrize("stream", [False, True])
def test_google_upstream_through_its_openai_compatible_url(gate_factory, client_token, mock, stream):
    # The google provider as configured today: Google's OpenAI-compatible endpoint.
    gate = gate_factory(
        {"google_mock": {"provider": "google", "base_url": f"{mock.url}/v1beta/openai",
                         "api_key": OPENAI_UPSTREAM_KEY, "models": ["gemini-2.5-flash"]}}
    )
    client = genai.Client(api_key=client_token, http_options=types.HttpOptions(base_url=gate.url, api_version="v1beta"))
    tool = types.Tool(function_declarations=[types.FunctionDeclaration(name="get_weather", parameters_json_schema=WEATHER_TOOL_SCHEMA)])
    config = types.GenerateContentConfig(tools=[tool], automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    if stream:
        calls = [c for chunk in client.models.generate_content_stream(model="gemini-2.5-flash", contents="weather?", config=config) for c in (chunk.function_calls or [])]
    else:
        calls = client.models.generate_content(model="gemini-2.5-flash", contents="weather?", config=config).function_calls
    assert [(c.name, c.args) for c in calls] == [("get_weather", {"city": "mock", "unit": "celsius"})]
    [record] = mock.requests()
    assert record.path == "/v1beta/openai/chat/completions"
    assert record.header("authorization") == f"Bearer {OPENAI_UPSTREAM_KEY}"


# The google provider speaking the Gemini API natively (base_url not ending in /openai):
# every client protocol reaches `/v1beta/models/{model}:generateContent` (or
# `:streamGenerateContent?alt=sse`) with the upstream key in `x-goog-api-key`.

NATIVE_MODEL = "gemini-2.5-flash"


@pytest.fixture
def native_gate(gate_factory, mock):
    return gate_factory(
        {"google_native": {"provider": "google", "base_url": f"{mock.url}/v1beta",
                           "api_key": OPENAI_UPSTREAM_KEY, "models": [NATIVE_MODEL]}}
    )


def assert_native_upstream(mock, count: int, stream: bool) -> None:
    records = mock.requests()
    method = "streamGenerateContent" if stream else "generateContent"
    assert [r.path for r in records] == [f"/v1beta/models/{NATIVE_MODEL}:{method}"] * count, [r.path for r in records]
    for record in records:
        assert record.header("x-goog-api-key") == OPENAI_UPSTREAM_KEY
        assert record.header("authorization") is None
        assert "model" not in record.json()


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_client_on_native_upstream(native_gate, client_token, mock, stream):
    client = genai.Client(api_key=client_token, http_options=types.HttpOptions(base_url=native_gate.url, api_version="v1beta"))
    if stream:
        chunks = list(client.models.generate_content_stream(model=NATIVE_MODEL, contents="native words"))
        assert "".join(c.text or "" for c in chunks) == "mock reply: native words"
        assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    else:
        response = client.models.generate_content(model=NATIVE_MODEL, contents="native words")
        assert response.text == "mock reply: native words"
        assert response.usage_metadata.prompt_token_count > 0
    assert_native_upstream(mock, 1, stream)
    assert OPENAI_UPSTREAM_KEY not in native_gate.log()


@pytest.mark.parametrize("stream", [False, True])
def test_openai_sdk_chat_on_native_upstream(native_gate, client_token, mock, stream):
    import openai

    client = openai.OpenAI(api_key=client_token, base_url=f"{native_gate.url}/v1", timeout=CLIENT_TIMEOUT_S)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello native"}]
    if stream:
        chunks = list(client.chat.completions.create(model=NATIVE_MODEL, messages=messages, stream=True,
                                                     stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "mock reply: hello native"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    else:
        completion = client.chat.completions.create(model=NATIVE_MODEL, messages=messages, max_tokens=32)
        assert completion.choices[0].message.content == "mock reply: hello native"
        assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
        assert completion.choices[0].finish_reason == "stop"
    assert_native_upstream(mock, 1, stream)
    sent = mock.requests()[0].json()
    assert sent["systemInstruction"]["parts"][0]["text"] == "be brief"
    if not stream:
        assert sent["generationConfig"]["maxOutputTokens"] == 32


@pytest.mark.parametrize("stream", [False, True])
def test_openai_sdk_tool_call_on_native_upstream(native_gate, client_token, mock, stream):
    import openai

    client = openai.OpenAI(api_key=client_token, base_url=f"{native_gate.url}/v1", timeout=CLIENT_TIMEOUT_S)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_TOOL_SCHEMA}}]
    question = {"role": "user", "content": "weather in Paris?"}
    if stream:
        chunks = list(client.chat.completions.create(model=NATIVE_MODEL, messages=[question], tools=tools, stream=True))
        parts = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        name = "".join(p.function.name or "" for p in parts if p.function)
        arguments = "".join(p.function.arguments or "" for p in parts if p.function)
        call_id = next(p.id for p in parts if p.id)
    else:
        message = client.chat.completions.create(model=NATIVE_MODEL, messages=[question], tools=tools).choices[0].message
        [call] = message.tool_calls
        name, arguments, call_id = call.function.name, call.function.arguments, call.id
    assert name == "get_weather"
    assert __import__("json").loads(arguments) == {"city": "mock", "unit": "celsius"}
    final = client.chat.completions.create(
        model=NATIVE_MODEL, tools=tools,
        messages=[question,
                  {"role": "assistant", "content": None,
                   "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
                  {"role": "tool", "tool_call_id": call_id, "content": "sunny and 21C"}],
    )
    assert final.choices[0].message.content == "mock reply: sunny and 21C"
    second = mock.requests()[-1].json()
    assert second["contents"][-1]["parts"][0]["functionResponse"]["name"] == "get_weather"


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_sdk_on_native_upstream(native_gate, client_token, mock, stream):
    import anthropic

    client = anthropic.Anthropic(api_key=client_token, base_url=native_gate.url, timeout=CLIENT_TIMEOUT_S)
    args = dict(model=NATIVE_MODEL, max_tokens=64, system="be brief", messages=[{"role": "user", "content": "hi from claude"}])
    if stream:
        with client.messages.stream(**args) as events:
            text = "".join(events.text_stream)
            message = events.get_final_message()
    else:
        message = client.messages.create(**args)
        text = message.content[0].text
    assert text == "mock reply: hi from claude"
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens > 0
    assert_native_upstream(mock, 1, stream)


def test_responses_sdk_on_native_upstream(native_gate, client_token, mock):
    import openai

    client = openai.OpenAI(api_key=client_token, base_url=f"{native_gate.url}/v1", timeout=CLIENT_TIMEOUT_S)
    response = client.responses.create(model=NATIVE_MODEL, input="hello responses", store=False)
    assert response.output_text == "mock reply: hello responses"
    assert_native_upstream(mock, 1, False)


def test_gemini_client_passes_through_to_native_upstream(native_gate, client_token, mock):
    """What the Chat Completions hub cannot carry (topK, safety settings, a thinking budget,
    a Google server tool) reaches a native upstream as the SDK sent it; countTokens is
    Google's own count, not Gate's estimate."""
    client = genai.Client(api_key=client_token, http_options=types.HttpOptions(base_url=native_gate.url, api_version="v1beta"))
    config = types.GenerateContentConfig(
        top_k=3,
        safety_settings=[types.SafetySetting(category=types.HarmCategory.HARM_CATEGORY_HARASSMENT,
                                             threshold=types.HarmBlockThreshold.BLOCK_NONE)],
        thinking_config=types.ThinkingConfig(thinking_budget=256),
        tools=[types.Tool(google_search=types.GoogleSearch())],
    )
    response = client.models.generate_content(model=NATIVE_MODEL, contents="keep my fields", config=config)
    assert response.text == "mock reply: keep my fields"
    chunks = list(client.models.generate_content_stream(model=NATIVE_MODEL, contents="keep my fields", config=config))
    assert "".join(c.text or "" for c in chunks) == "mock reply: keep my fields"
    generate, stream = mock.requests()
    assert generate.path == f"/v1beta/models/{NATIVE_MODEL}:generateContent"
    assert stream.path == f"/v1beta/models/{NATIVE_MODEL}:streamGenerateContent"
    for record in (generate, stream):
        sent = record.json()
        assert sent["generationConfig"]["topK"] == 3
        thinking = sent["generationConfig"]["thinkingConfig"]  # Google takes both spellings
        assert thinking.get("thinkingBudget", thinking.get("thinking_budget")) == 256
        assert sent["safetySettings"] == [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}]
        assert sent["tools"] == [{"googleSearch": {}}]
        assert record.header("x-goog-api-key") == OPENAI_UPSTREAM_KEY
    assert chunks[-1].usage_metadata.candidates_token_count > 0

    counted = client.models.count_tokens(model=NATIVE_MODEL, contents="one two three four five")
    record = mock.requests()[-1]
    assert record.path == f"/v1beta/models/{NATIVE_MODEL}:countTokens"
    # The upstream's own count: what it answers when asked directly.
    direct = httpx.post(f"{mock.url}{record.path}", content=record.body,
                        headers={"x-goog-api-key": OPENAI_UPSTREAM_KEY, "content-type": "application/json"})
    assert counted.total_tokens == direct.json()["totalTokens"]
    assert OPENAI_UPSTREAM_KEY not in native_gate.log()


def test_google_server_tool_needs_a_native_upstream(gemini_client, mock):
    """A Google server tool toward a converted upstream: a 400 in Google's shape naming it."""
    config = types.GenerateContentConfig(tools=[types.Tool(code_execution=types.ToolCodeExecution())])
    with pytest.raises(genai_errors.ClientError) as raised:
        gemini_client.models.generate_content(model=OPENAI_CHAT_MODEL, contents="run code", config=config)
    assert raised.value.code == 400
    assert "codeExecution" in raised.value.message
    assert mock.requests() == []
