"""Offline token estimates and default context windows.

The reference counts below were computed with the o200k_base encoding (GPT-4o and later; the same ids tiktoken
gives) and are hardcoded: the tests run offline.
"""

from __future__ import annotations

import time
from types import MappingProxyType

import pytest

from proxy.tokens import (
    IMAGE_TOKENS_DEFAULT,
    IMAGE_TOKENS_LOW,
    REPLY_PRIMING_TOKENS,
    TOKENS_PER_MESSAGE,
    context_window_for,
    estimate_prompt_tokens,
    estimate_request_tokens,
    estimate_text_tokens,
)
from proxy.types import ChatRequest, ImagePart, Message, TextPart, ToolCall, ToolDef

PARAGRAPH = (
    "Rate limits protect a shared service from any single client. A token bucket holds a fixed number of "
    "tokens and refills them at a steady rate, so a client may send a short burst of requests and then settle "
    "into an even pace. When the bucket is empty, the proxy can wait briefly, try another provider, or refuse the "
    "request with a clear error that says when to retry. Estimating the size of a prompt before sending it lets the "
    "proxy charge its token budget in advance, and the real usage reported by the provider corrects the estimate "
    "afterwards, in either direction."
)
CODE = '''def spacing(limit_per_minute: float) -> float:
    """Seconds between requests once the burst is spent."""
    if limit_per_minute <= 0:
        raise ValueError("the limit must be positive")
    return 60.0 / limit_per_minute
'''
CHINESE = "令牌桶算法允许短时间的突发请求，然后以固定的速率补充令牌。当桶为空时，请求需要等待或者被拒绝。"
JSON_SCHEMA = (
    '{"type":"object","properties":{"city":{"type":"string","description":"The city, e.g. Paris"},'
    '"days":{"type":"integer","minimum":1}},"required":["city"]}'
)


@pytest.mark.parametrize(
    ("text", "o200k_tokens"),
    [
        ("hello world", 2),
        (PARAGRAPH, 116),  # 102 words
        (CODE, 56),
        (CHINESE, 34),
        (JSON_SCHEMA, 40),
    ],
    ids=["hello-world", "english-paragraph", "python", "chinese", "json"],
)
def test_estimate_is_within_25_percent_of_the_real_o200k_count(text, o200k_tokens):
    assert abs(estimate_text_tokens(text) - o200k_tokens) <= 0.25 * o200k_tokens


def test_empty_text_is_zero_and_any_text_at_least_one():
    assert estimate_text_tokens("") == 0
    assert estimate_text_tokens("a") == 1
    assert estimate_text_tokens(" ") == 1


def test_estimate_grows_with_the_text():
    counts = [estimate_text_tokens(PARAGRAPH[:length]) for length in range(0, len(PARAGRAPH) + 1, 7)]
    assert counts == sorted(counts)
    assert estimate_text_tokens(PARAGRAPH * 10) == pytest.approx(10 * estimate_text_tokens(PARAGRAPH), rel=0.01)


def test_cjk_costs_more_per_character_than_ascii():
    cjk = estimate_text_tokens(CHINESE) / len(CHINESE)
    ascii_ = estimate_text_tokens(PARAGRAPH) / len(PARAGRAPH)
    assert cjk > 2.5 * ascii_
    assert estimate_text_tokens("中" * 100) >= 50


def test_long_numbers_and_emoji_are_counted():
    assert estimate_text_tokens("1234567890" * 10) == pytest.approx(34, rel=0.25)  # digits go in threes
    assert estimate_text_tokens("🎉" * 10) == pytest.approx(20, rel=0.25)


def test_odd_text_does_not_raise():
    assert estimate_text_tokens("\ud800 lone surrogate") > 0
    assert estimate_text_tokens("\x00\x01\x7f") > 0


def test_estimate_is_cheap():
    text = (PARAGRAPH + CODE + CHINESE) * 200  # ~170,000 characters
    started = time.perf_counter()
    estimate_text_tokens(text)
    assert time.perf_counter() - started < 0.05


def _request(*messages: Message, **kwargs) -> ChatRequest:
    return ChatRequest(messages=messages, **kwargs)


def test_prompt_adds_framing_per_message_and_for_the_reply():
    one = estimate_prompt_tokens(_request(Message("user", "hello world")))
    assert one == REPLY_PRIMING_TOKENS + TOKENS_PER_MESSAGE + 2
    two = estimate_prompt_tokens(_request(Message("system", "hello world"), Message("user", "hello world")))
    assert two - one == TOKENS_PER_MESSAGE + 2
    assert estimate_prompt_tokens(_request()) == REPLY_PRIMING_TOKENS


def test_names_tool_calls_and_tool_results_are_counted():
    plain = estimate_prompt_tokens(_request(Message("user", "hi")))
    assert estimate_prompt_tokens(_request(Message("user", "hi", name="alice"))) > plain
    call = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris", "days": 3}')
    with_call = estimate_prompt_tokens(_request(Message("user", "hi"), Message("assistant", None, tool_calls=(call,))))
    assert with_call - plain >= TOKENS_PER_MESSAGE + estimate_text_tokens(call.arguments)
    result = Message("tool", "sunny, 21 degrees", tool_call_id="call_1")
    assert estimate_prompt_tokens(_request(Message("user", "hi"), result)) > plain + TOKENS_PER_MESSAGE


def test_tool_definitions_count_by_their_json():
    base = _request(Message("user", "weather?"))
    small = ToolDef(name="now", description="The time.")
    large = ToolDef(
        name="get_weather",
        description="Weather forecast for a city, day by day, with temperatures and rain.",
        parameters=MappingProxyType(
            {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "The city, e.g. Paris"},
                    "days": {"type": "integer", "minimum": 1},
                },
                "required": ["city"],
            }
        ),
    )
    with_small = estimate_prompt_tokens(_request(Message("user", "weather?"), tools=(small,)))
    with_large = estimate_prompt_tokens(_request(Message("user", "weather?"), tools=(large,)))
    assert estimate_prompt_tokens(base) < with_small < with_large
    assert with_large - estimate_prompt_tokens(base) >= estimate_text_tokens(JSON_SCHEMA)


def test_response_format_schema_is_counted():
    schema = {"type": "json_schema", "json_schema": {"name": "forecast", "schema": {"type": "object"}}}
    plain = estimate_prompt_tokens(_request(Message("user", "hi")))
    assert estimate_prompt_tokens(_request(Message("user", "hi"), response_format=schema)) > plain + 5


def test_images_cost_a_fixed_amount_by_detail():
    text_only = estimate_prompt_tokens(_request(Message("user", (TextPart("what is this?"),))))
    low = Message("user", (TextPart("what is this?"), ImagePart("https://example.com/a.png", detail="low")))
    auto = Message("user", (TextPart("what is this?"), ImagePart("data:image/png;base64," + "A" * 50_000)))
    assert estimate_prompt_tokens(_request(low)) == text_only + IMAGE_TOKENS_LOW
    assert estimate_prompt_tokens(_request(auto)) == text_only + IMAGE_TOKENS_DEFAULT  # not the base64 length


def test_request_charge_adds_max_tokens_or_a_default():
    request = _request(Message("user", "hello world"), max_tokens=500)
    prompt = estimate_prompt_tokens(request, "gpt-4o")
    assert estimate_request_tokens(request, "gpt-4o") == prompt + 500
    unbounded = _request(Message("user", "hello world"))
    assert estimate_request_tokens(unbounded) == prompt
    assert estimate_request_tokens(unbounded, default_output_tokens=1024) == prompt + 1024


@pytest.mark.parametrize(
    ("model", "window"),
    [
        ("gpt-4o", 128_000),
        ("gpt-4o-mini-2024-07-18", 128_000),
        ("gpt-4.1-nano", 1_047_576),
        ("gpt-4-turbo", 128_000),
        ("gpt-4-0613", 8_192),
        ("gpt-3.5-turbo", 16_385),
        ("o3-mini", 200_000),
        ("o4-mini", 200_000),
        ("gpt-5-mini", 400_000),
        ("claude-sonnet-4-5-20250929", 200_000),
        ("claude-3-5-haiku-latest", 200_000),
        ("claude-opus-5", 1_000_000),
        ("llama3.1:8b", 131_072),
        ("meta-llama/Llama-3.3-70B-Instruct", 131_072),
        ("openai/GPT-4o", 128_000),
        ("mistral-large", None),
        ("", None),
    ],
)
def test_context_window_defaults_by_prefix(model, window):
    assert context_window_for(model) == window
