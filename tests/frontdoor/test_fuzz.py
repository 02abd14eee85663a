"""Fuzzing the front door from its own OpenAPI document (schemathesis).

Real processes: a nats-server, ``fedgate gateway --http-port`` and one synthetic worker.
Schemathesis reads ``/openapi.json`` and sends well over a thousand generated requests,
valid ones and broken ones (wrong types, missing fields, extra fields, out-of-range
values) to every endpoint. Every answer must be JSON (or an event stream for a valid
``stream: true``), an error must be OpenAI-shaped with a meaningful status (never a
500 for a caller's mistake), a 200 must match the documented answer, and the gateway
must still serve a normal request at the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shared.natsserver import NatsServer
from tests.helpers import Proc, processes
from tests.llm.conftest import free_port, models_at, wait_until

schemathesis = pytest.importorskip("schemathesis")
requests = pytest.importorskip("requests")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

MODEL = "synth"
EXAMPLES = {"POST": 170, "GET": 20}
"""Examples per operation and generation mode (3 POSTs x 2 modes x 170 + GET = 1,040+)."""
ALLOWED = {200, 400, 403, 404, 405, 413, 429, 503, 504}
"""Statuses a generated request may get: 403/404 for a QoS or model no node satisfies,
503/504 for a capability nobody serves or a deadline of a few milliseconds."""


GATEWAY: list[Proc] = []
"""The gateway process (its log explains a failure)."""


@pytest.fixture(scope="module")
def door(module_nats: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    url = module_nats.url
    log = str(tmp_path_factory.mktemp("fuzz") / "gateway.log")
    with processes() as procs:
        gw = Proc(
            "gateway", "--nats", url, "--http-port", str(port), "--request-timeout", "5",
            log_path=log, log_level="info",
        )  # fmt: skip
        GATEWAY[:] = [gw]
        procs.append(gw)
        procs.append(
            Proc(
                "worker", "--nats", url, "--node-id", "fz1", "--model", MODEL,
                "--capability", "generate", "--capability", "embed",
                "--heartbeat-interval", "0.2", "--capacity", "64",
            )
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: MODEL in models_at(base), 30, "the front door lists", gw.proc)
        yield base


def _tame(case: Any) -> None:
    """Keep valid-but-huge work bounded: the synthetic worker produces every token asked."""
    body = case.body
    if not isinstance(body, dict):
        return
    for key in ("max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 32:
            body[key] = 32
    if isinstance(body.get("input"), list) and len(body["input"]) > 8:
        body["input"] = body["input"][:8]


TRUNCATED: list[str] = []
"""Streams answered 200 that ended without ``data: [DONE]``."""


def _check(case: Any, response: Any) -> None:
    status = response.status_code
    kind = (response.headers.get("content-type") or [""])[0]
    where = (
        f"{case.method} {case.path} {json.dumps(case.body, default=str)[:300]} "
        f"headers={case.headers} media_type={case.media_type} -> {status} {response.text[:200]!r}"
    )
    assert status in ALLOWED, f"{status} {response.text[:300]} for {where}"
    if status == 200 and kind.startswith("text/event-stream"):
        if not response.text.rstrip().endswith("data: [DONE]"):
            # reported at the end, with the whole body and the gateway's log
            rid = response.headers.get("X-Fed-Request-Id")
            TRUNCATED.append(f"{where} REQUEST-ID {rid} BODY {response.text!r}")
        return
    assert kind.startswith("application/json"), f"{kind} for {where}"
    body = response.json()
    if status >= 400:
        error = body["error"]
        assert isinstance(error["message"], str) and error["message"], where
        assert isinstance(error["type"], str) and isinstance(error["code"], str), where
        assert "param" in error, where
    else:
        case.validate_response(response, checks=[response_schema_conformance])


@pytest.mark.timeout(600)  # about 1 min on a quiet 2-core machine; far slower under load
def test_front_door_fuzz(door: str) -> None:
    schema = schemathesis.openapi.from_url(f"{door}/openapi.json")
    session = requests.Session()
    sent = 0
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        modes = [GenerationMode.POSITIVE]
        if operation.method.upper() == "POST":
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:

            @settings(
                max_examples=EXAMPLES[operation.method.upper()],
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                nonlocal sent
                _tame(case)
                response = case.call(base_url=door, session=session, timeout=15)
                sent += 1
                _check(case, response)

            run()
    elapsed = time.monotonic() - started
    assert sent >= 1000, sent
    # and the gateway still serves a normal request
    answer = session.post(
        f"{door}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]
    print(f"fuzz: {sent} requests in {elapsed:.1f}s")
    log = GATEWAY[0].log_tail(60) if GATEWAY else ""
    assert not TRUNCATED, f"{len(TRUNCATED)} stream(s) cut without [DONE]: {TRUNCATED}\n{log}"
