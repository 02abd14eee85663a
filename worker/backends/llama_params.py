"""What a request's parameters become for the in-process llama backend (llama.cpp).

``sampling(params)`` maps OpenAI-style request parameters to ``create_completion``
arguments: ``PASSED`` ones go through (``logit_bias`` keys become token ids),
``IGNORED`` ones are handled elsewhere, ``NEUTRAL`` ones are accepted only with the
values the backend honours anyway; anything else is a ``400`` naming the parameter.
``plain_chat(messages)`` turns a chat into the text-only messages a chat template takes.
``worker.backends.llama`` re-exports every name here.
"""

from __future__ import annotations

from typing import Any

from shared import errors
from worker.backends.base import text_of

PASSED = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repeat_penalty",
    "logit_bias": "logit_bias",
}
"""OpenAI (and llama.cpp) request parameters passed to ``create_completion``."""
IGNORED = frozenset(
    {"messages", "max_tokens", "max_completion_tokens", "stop", "user", "parallel_tool_calls"}
)
"""Parameters handled elsewhere (prompt, budget, stop words) or with nothing to do here
(``user`` is the caller's tag; ``parallel_tool_calls`` without tools)."""
NEUTRAL = {"n": (1,), "tool_choice": ("none", "auto"), "logprobs": (False,)}
"""Parameters accepted only with these values (what this backend does anyway)."""


def sampling(params: dict[str, Any]) -> dict[str, Any]:
    """``create_completion`` arguments for ``params``; a parameter this backend cannot
    honour is a ``400`` naming it (never silently dropped)."""
    kwargs: dict[str, Any] = {}
    for key, value in params.items():
        if value is None or key in IGNORED:
            continue
        if key in PASSED:
            kwargs[PASSED[key]] = value
        elif key in NEUTRAL and value in NEUTRAL[key]:
            continue
        elif key == "response_format" and isinstance(value, dict) and value.get("type") == "text":
            continue
        elif key == "tools" and value == []:
            continue
        else:
            raise errors.BadRequest(
                f"parameter `{key}` is not supported by the in-process llama backend "
                f"(node model served with llama.cpp); leave it out or use another node"
            )
    bias = kwargs.get("logit_bias")
    if bias is not None:
        try:  # OpenAI keys token ids as strings
            kwargs["logit_bias"] = {int(k): float(v) for k, v in dict(bias).items()}
        except (TypeError, ValueError) as exc:
            raise errors.BadRequest(f"logit_bias must map token ids to numbers: {exc}") from exc
    return kwargs


def plain_chat(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages for a chat template: text content only; tool calls and images refused."""
    out = []
    for message in messages:
        if message.get("tool_calls") or message.get("role") == "tool":
            raise errors.BadRequest("the llama backend does not run tool calls (no tools)")
        content = message.get("content")
        if isinstance(content, list) and any(
            isinstance(p, dict) and p.get("type") != "text" for p in content
        ):
            raise errors.BadRequest("the llama backend takes text content only")
        out.append({"role": message.get("role", "user"), "content": text_of(content)})
    return out
