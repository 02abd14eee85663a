"""The in-process llama backend: what it passes to llama.cpp, what it refuses (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from shared import errors
from worker.backends.llama import plain_chat, sampling


def test_supported_parameters_reach_llama_cpp() -> None:
    params = {
        "temperature": 0.2, "top_p": 0.9, "seed": 3, "presence_penalty": 0.5,
        "frequency_penalty": -0.5, "top_k": 40, "min_p": 0.05, "logit_bias": {"42": -100},
        "max_tokens": 8, "stop": ["\n"], "messages": [], "user": "u1", "n": 1,
        "tool_choice": "none", "response_format": {"type": "text"}, "logprobs": False,
        "parallel_tool_calls": True, "temperature_unused": None,
    }  # fmt: skip
    assert sampling(params) == {
        "temperature": 0.2, "top_p": 0.9, "seed": 3, "presence_penalty": 0.5,
        "frequency_penalty": -0.5, "top_k": 40, "min_p": 0.05, "logit_bias": {42: -100.0},
    }  # fmt: skip


@pytest.mark.parametrize(
    "params",
    [
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"tool_choice": "required"},
        {"response_format": {"type": "json_object"}},
        {"logprobs": True},
        {"top_logprobs": 2},
        {"n": 2},
        {"suffix": "!"},
        {"dimensions": 8},
        {"something_new": 1},
    ],
)
def test_what_llama_cannot_honour_is_a_400_naming_it(params: dict[str, Any]) -> None:
    (name,) = params
    with pytest.raises(errors.BadRequest, match=f"`{name}`"):
        sampling(params)


def test_bad_logit_bias_is_a_400() -> None:
    with pytest.raises(errors.BadRequest, match="logit_bias"):
        sampling({"logit_bias": {"the": 1}})


def test_chat_for_the_template() -> None:
    chat = [
        {"role": "system", "content": "be brief", "name": "ops"},
        {"role": "user", "content": [{"type": "text", "text": t} for t in ("hi ", "you")]},
    ]
    assert plain_chat(chat) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi you"},
    ]
    image = {"type": "image_url", "image_url": {"url": "data:,"}}
    with pytest.raises(errors.BadRequest, match="text content only"):
        plain_chat([{"role": "user", "content": [image]}])
    with pytest.raises(errors.BadRequest, match="tool"):
        plain_chat([{"role": "tool", "tool_call_id": "c", "content": "x"}])
