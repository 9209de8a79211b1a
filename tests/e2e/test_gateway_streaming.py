"""Streaming, both runtimes: gate forwards each event as it arrives (no buffering), and a stream
that breaks mid-way ends with an error the SDKs surface.

No buffering is measured by ordering, not speed: the mock pauses between events and records the
wall-clock time it hands each event to the socket; the client notes when it receives each event.
Every event must reach the client before the mock sends the next one.
"""

from __future__ import annotations

import time

import anthropic
import openai
import pytest

from e2e_support import ANTHROPIC_MODEL, OPENAI_CHAT_MODEL, MockUpstream

PAUSE_MS = 400


def test_openai_stream_is_not_buffered(openai_client, mock: MockUpstream):
    mock.behave(model=OPENAI_CHAT_MODEL, pause_ms=PAUSE_MS, times=1)
    arrivals = []
    for _chunk in openai_client.chat.completions.create(
        model=OPENAI_CHAT_MODEL, messages=[{"role": "user", "content": "one two three"}], stream=True
    ):
        arrivals.append(time.time())
    [record] = mock.requests("/v1/chat/completions")
    sent = record.events_sent_at
    assert len(arrivals) >= 3
    assert len(sent) >= len(arrivals) + 1  # the final [DONE] is not yielded by the SDK
    for i, arrived in enumerate(arrivals):
        assert arrived < sent[i + 1], f"event {i} reached the client only after the mock sent event {i + 1}"


def test_anthropic_stream_is_not_buffered(anthropic_client, mock: MockUpstream):
    mock.behave(model=ANTHROPIC_MODEL, pause_ms=PAUSE_MS, times=1)
    first_arrival = None
    with anthropic_client.messages.stream(
        model=ANTHROPIC_MODEL, max_tokens=32, messages=[{"role": "user", "content": "one two three"}]
    ) as stream:
        for _event in stream:
            if first_arrival is None:
                first_arrival = time.time()
    [record] = mock.requests("/v1/messages")
    sent = record.events_sent_at
    assert first_arrival is not None and len(sent) >= 3
    assert first_arrival < sent[1], "the first event reached the client only after the mock sent the second"


def test_cross_protocol_stream_is_not_buffered(anthropic_client, mock: MockUpstream):
    # Anthropic client, OpenAI-style upstream: conversion must stream too.
    mock.behave(model=OPENAI_CHAT_MODEL, pause_ms=PAUSE_MS, times=1)
    text_arrivals = []
    with anthropic_client.messages.stream(
        model=OPENAI_CHAT_MODEL, max_tokens=32, messages=[{"role": "user", "content": "one two three"}]
    ) as stream:
        for _text in stream.text_stream:
            text_arrivals.append(time.time())
    [record] = mock.requests("/v1/chat/completions")
    sent = record.events_sent_at
    # Upstream event 0 is the role chunk, 1.. are the text deltas: the first text reaches the
    # client before the mock sends the second text delta.
    assert len(text_arrivals) >= 2 and len(sent) >= 4
    assert text_arrivals[0] < sent[2]


def test_openai_broken_stream_surfaces_an_error(openai_client, mock: MockUpstream):
    mock.behave(model=OPENAI_CHAT_MODEL, break_after=3, times=1)
    received = 0
    with pytest.raises(openai.APIError):
        for _chunk in openai_client.chat.completions.create(
            model=OPENAI_CHAT_MODEL, messages=[{"role": "user", "content": "a b c d e f"}], stream=True
        ):
            received += 1
    assert received >= 1, "the events sent before the break must reach the client"


def test_anthropic_broken_stream_surfaces_an_error(anthropic_client, mock: MockUpstream):
    mock.behave(model=ANTHROPIC_MODEL, break_after=3, times=1)
    with pytest.raises(anthropic.APIError):
        for _event in anthropic_client.messages.create(
            model=ANTHROPIC_MODEL, max_tokens=32, messages=[{"role": "user", "content": "a b c d e f"}], stream=True
        ):
            pass
