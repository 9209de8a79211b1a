"""Protocol checks shared by the direct-to-mock tests and the through-gate tests.

Each check drives one official SDK call and asserts what a real client relies on: the reply
carries the prompt (proof it went through), finish reasons, usage, tool calls with parsable
JSON arguments, the streamed event sequence. Run against the mock directly they prove the
mock is faithful to the SDKs; run through gate they prove gate behaves like the provider.
"""

from __future__ import annotations

import json
import math
import uuid

import anthropic
import openai

from e2e_support import (
    ANTHROPIC_MODEL,
    OPENAI_CHAT_MODEL,
    OPENAI_COMPLETION_MODEL,
    OPENAI_EMBEDDING_MODEL,
    WEATHER_TOOL_ARGS,
    WEATHER_TOOL_SCHEMA,
)

OPENAI_TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather for a city", "parameters": WEATHER_TOOL_SCHEMA},
    }
]
RESPONSES_TOOLS = [
    {"type": "function", "name": "get_weather", "description": "Weather for a city", "parameters": WEATHER_TOOL_SCHEMA}
]
ANTHROPIC_TOOLS = [{"name": "get_weather", "description": "Weather for a city", "input_schema": WEATHER_TOOL_SCHEMA}]


def unique_prompt(label: str) -> str:
    return f"{label} {uuid.uuid4().hex[:12]}"


def expected_reply(prompt: str) -> str:
    return f"mock reply: {prompt}"


# --- OpenAI ---------------------------------------------------------------------------------


def openai_chat_plain(client: openai.OpenAI, model: str = OPENAI_CHAT_MODEL) -> str:
    prompt = unique_prompt("chat plain")
    completion = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}])
    assert completion.object == "chat.completion"
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected_reply(prompt)
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    return prompt


def openai_chat_stream(client: openai.OpenAI, model: str = OPENAI_CHAT_MODEL) -> str:
    prompt = unique_prompt("chat stream")
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish_reasons, usage, content_chunks = "", [], None, 0
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                text += choice.delta.content
                content_chunks += 1
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
    assert text == expected_reply(prompt)
    assert content_chunks >= 2, "the reply should arrive in several deltas"
    assert finish_reasons == ["stop"]
    assert usage is not None and usage.completion_tokens > 0 and usage.prompt_tokens > 0
    return prompt


def openai_chat_tools(client: openai.OpenAI, stream: bool, model: str = OPENAI_CHAT_MODEL) -> None:
    messages = [{"role": "user", "content": unique_prompt("what is the weather in Paris?")}]
    if not stream:
        completion = client.chat.completions.create(model=model, messages=messages, tools=OPENAI_TOOLS)
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls"
        calls = choice.message.tool_calls
        assert calls is not None and len(calls) == 1
        call = calls[0]
        assert call.type == "function"
        assert call.id
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == WEATHER_TOOL_ARGS
        call_id, arguments = call.id, call.function.arguments
    else:
        chunks = list(client.chat.completions.create(model=model, messages=messages, tools=OPENAI_TOOLS, stream=True))
        name, call_id, arguments, finish, fragments = None, None, "", None, 0
        for chunk in chunks:
            for choice in chunk.choices:
                for tc in choice.delta.tool_calls or []:
                    assert tc.index == 0
                    if tc.id:
                        call_id = tc.id
                    if tc.function and tc.function.name:
                        name = tc.function.name
                    if tc.function and tc.function.arguments:
                        arguments += tc.function.arguments
                        fragments += 1
                if choice.finish_reason:
                    finish = choice.finish_reason
        assert name == "get_weather"
        assert call_id
        assert fragments >= 2, "arguments should stream as fragments"
        assert json.loads(arguments) == WEATHER_TOOL_ARGS
        assert finish == "tool_calls"
    # Second turn: the tool result goes back and the model answers with text.
    followup = messages + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "sunny 21C"},
    ]
    answer = client.chat.completions.create(model=model, messages=followup, tools=OPENAI_TOOLS)
    assert answer.choices[0].finish_reason == "stop"
    assert "sunny 21C" in (answer.choices[0].message.content or "")


def openai_completions(client: openai.OpenAI, stream: bool) -> None:
    prompt = unique_prompt("complete this")
    if not stream:
        completion = client.completions.create(model=OPENAI_COMPLETION_MODEL, prompt=prompt, max_tokens=16)
        assert completion.object == "text_completion"
        assert completion.choices[0].text == expected_reply(prompt)
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage is not None and completion.usage.total_tokens > 0
    else:
        text, finish = "", None
        for chunk in client.completions.create(model=OPENAI_COMPLETION_MODEL, prompt=prompt, stream=True):
            for choice in chunk.choices:
                text += choice.text
                finish = choice.finish_reason or finish
        assert text == expected_reply(prompt)
        assert finish == "stop"


def openai_embeddings(client: openai.OpenAI) -> None:
    # The SDK asks for base64 by default and decodes it; also ask for floats explicitly.
    result = client.embeddings.create(model=OPENAI_EMBEDDING_MODEL, input=["alpha text", "beta text", "alpha text"])
    assert result.object == "list"
    assert [d.index for d in result.data] == [0, 1, 2]
    vectors = [d.embedding for d in result.data]
    assert all(len(v) == 16 for v in vectors)
    for v in vectors:
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-4)
    assert vectors[0] == vectors[2], "same input, same vector"
    assert vectors[0] != vectors[1]
    assert result.usage.prompt_tokens > 0
    floats = client.embeddings.create(
        model=OPENAI_EMBEDDING_MODEL, input="alpha text", encoding_format="float", dimensions=8
    )
    assert len(floats.data[0].embedding) == 8


def openai_models(client: openai.OpenAI, expected: list[str]) -> None:
    ids = [m.id for m in client.models.list()]
    missing = set(expected) - set(ids)
    assert not missing, f"models missing from /v1/models: {missing} (got {ids})"


def openai_responses(client: openai.OpenAI, stream: bool, model: str = OPENAI_CHAT_MODEL) -> None:
    prompt = unique_prompt("responses")
    if not stream:
        response = client.responses.create(model=model, input=prompt)
        assert response.object == "response"
        assert response.status == "completed"
        assert response.output_text == expected_reply(prompt)
        assert response.usage is not None and response.usage.output_tokens > 0
        return
    events = list(client.responses.create(model=model, input=[{"role": "user", "content": prompt}], stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    for expected_type in (
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ):
        assert expected_type in types, f"{expected_type} missing from {types}"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == expected_reply(prompt)
    assert events[-1].response.output_text == expected_reply(prompt)


def openai_responses_tools(client: openai.OpenAI, stream: bool, model: str = OPENAI_CHAT_MODEL) -> None:
    prompt = unique_prompt("weather please")
    if not stream:
        response = client.responses.create(model=model, input=prompt, tools=RESPONSES_TOOLS)
        calls = [item for item in response.output if item.type == "function_call"]
    else:
        events = list(client.responses.create(model=model, input=prompt, tools=RESPONSES_TOOLS, stream=True))
        types = [e.type for e in events]
        assert "response.function_call_arguments.delta" in types
        assert "response.function_call_arguments.done" in types
        streamed = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
        assert json.loads(streamed) == WEATHER_TOOL_ARGS
        calls = [item for item in events[-1].response.output if item.type == "function_call"]
    assert len(calls) == 1
    assert calls[0].name == "get_weather"
    assert calls[0].call_id
    assert json.loads(calls[0].arguments) == WEATHER_TOOL_ARGS


# --- Anthropic ------------------------------------------------------------------------------

ANTHROPIC_STREAM_SEQUENCE_HEAD = ["message_start", "content_block_start"]
ANTHROPIC_STREAM_SEQUENCE_TAIL = ["content_block_stop", "message_delta", "message_stop"]


def anthropic_messages(client: anthropic.Anthropic, model: str = ANTHROPIC_MODEL) -> str:
    prompt = unique_prompt("messages plain")
    message = client.messages.create(model=model, max_tokens=64, messages=[{"role": "user", "content": prompt}])
    assert message.type == "message"
    assert message.role == "assistant"
    assert len(message.content) == 1
    assert message.content[0].type == "text"
    assert message.content[0].text == expected_reply(prompt)
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    return prompt


def anthropic_stream(client: anthropic.Anthropic, model: str = ANTHROPIC_MODEL) -> str:
    prompt = unique_prompt("messages stream")
    # Raw events: the exact sequence the SDK's stream helpers rely on.
    events = list(
        client.messages.create(model=model, max_tokens=64, messages=[{"role": "user", "content": prompt}], stream=True)
    )
    types = [e.type for e in events if e.type != "ping"]
    assert types[:2] == ANTHROPIC_STREAM_SEQUENCE_HEAD
    assert types[-3:] == ANTHROPIC_STREAM_SEQUENCE_TAIL
    middle = types[2:-3]
    assert middle and all(t == "content_block_delta" for t in middle)
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == expected_reply(prompt)
    delta = next(e for e in events if e.type == "message_delta")
    assert delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens > 0
    # The helper: text_stream and the accumulated final message.
    prompt2 = unique_prompt("messages stream helper")
    with client.messages.stream(model=model, max_tokens=64, messages=[{"role": "user", "content": prompt2}]) as s:
        streamed = "".join(s.text_stream)
        final = s.get_final_message()
    assert streamed == expected_reply(prompt2)
    assert final.content[0].text == expected_reply(prompt2)
    assert final.stop_reason == "end_turn"
    return prompt


def anthropic_tools(client: anthropic.Anthropic, stream: bool, model: str = ANTHROPIC_MODEL) -> None:
    messages = [{"role": "user", "content": unique_prompt("weather in Paris?")}]
    if not stream:
        message = client.messages.create(model=model, max_tokens=256, messages=messages, tools=ANTHROPIC_TOOLS)
    else:
        with client.messages.stream(model=model, max_tokens=256, messages=messages, tools=ANTHROPIC_TOOLS) as s:
            partials = [e.partial_json for e in s if e.type == "input_json"]
            message = s.get_final_message()
        assert len([p for p in partials if p]) >= 2, "tool input should stream as input_json_delta fragments"
        assert json.loads("".join(partials)) == WEATHER_TOOL_ARGS
    assert message.stop_reason == "tool_use"
    uses = [b for b in message.content if b.type == "tool_use"]
    assert len(uses) == 1
    use = uses[0]
    assert use.name == "get_weather"
    assert use.id
    assert use.input == WEATHER_TOOL_ARGS
    # Second turn with the tool result.
    followup = messages + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny 21C"}]},
    ]
    answer = client.messages.create(model=model, max_tokens=256, messages=followup, tools=ANTHROPIC_TOOLS)
    assert answer.stop_reason == "end_turn"
    text = "".join(b.text for b in answer.content if b.type == "text")
    assert "sunny 21C" in text


def anthropic_count_tokens(client: anthropic.Anthropic, model: str = ANTHROPIC_MODEL) -> None:
    short = client.messages.count_tokens(model=model, messages=[{"role": "user", "content": "one two"}])
    long = client.messages.count_tokens(
        model=model, messages=[{"role": "user", "content": "one two three four five six seven eight"}]
    )
    assert short.input_tokens > 0
    assert long.input_tokens > short.input_tokens
