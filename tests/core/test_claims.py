"""The claims of request identity across gateways, pure (gateway/claims.py)."""

from __future__ import annotations

import re

import pytest

from gateway.claims import (
    MAX_ANSWER_BYTES,
    Answer,
    Claim,
    State,
    Verdict,
    answer_of,
    claim_decoder,
    claim_encoder,
    decide,
    key_of,
    refusal,
    replay_headers,
)

DIGEST = b"\x01" * 16
OTHER = b"\x02" * 16
RUNNING = Claim(owner="gw-a", digest=DIGEST, job_id="j1")
DONE = Claim(owner="gw-a", digest=DIGEST, state=State.DONE, answer=Answer(data=b"{}"))
UNKEPT = Claim(owner="gw-a", digest=DIGEST, state=State.DONE, unreplayable="too large")


def test_keys_are_kv_safe_and_scoped_to_the_tenant() -> None:
    key = key_of("acme", "r-1")
    assert re.fullmatch(r"[0-9a-f]{32}", key)
    assert key == key_of("acme", "r-1")
    assert len({key, key_of("", "r-1"), key_of("other", "r-1"), key_of("acme", "r-2")}) == 4
    # the tenant is length-prefixed: no two identities meet
    assert key_of("ab", "c") != key_of("a", "bc")


@pytest.mark.parametrize(
    ("claim", "digest", "acked", "verdict"),
    [
        (RUNNING, DIGEST, True, Verdict.ASK_OWNER),  # the same caller resending
        (RUNNING, OTHER, True, Verdict.REFUSE),  # another prompt under that id
        (RUNNING, DIGEST, False, Verdict.REFUSE),  # no Fed-Ack: not a resend
        (DONE, DIGEST, True, Verdict.REPLAY),
        (DONE, OTHER, True, Verdict.REFUSE),
        (DONE, DIGEST, False, Verdict.REFUSE),
        (UNKEPT, DIGEST, True, Verdict.UNREPLAYABLE),
        (UNKEPT, OTHER, True, Verdict.REFUSE),
    ],
)
def test_only_the_same_bytes_resent_meet_the_request(
    claim: Claim, digest: bytes, acked: bool, verdict: Verdict
) -> None:
    assert decide(claim, digest, acked) is verdict


def test_refusals_say_what_happened() -> None:
    assert (
        refusal(RUNNING, "r", True, 600)
        == "request_id r is already in flight with a different body"
    )
    assert refusal(RUNNING, "r", False, 600) == "request_id r is already in flight"
    done = refusal(DONE, "r", True, 600)
    assert "already answered with a different body" in done and "600 s" in done
    unkept = refusal(UNKEPT, "r", True, 600)
    assert "cannot be replayed (too large)" in unkept and "new request_id" in unkept


def test_an_answer_is_kept_without_trace_context_and_replayed_with_the_resenders() -> None:
    hdrs = {"Fed-Served-By": "w1", "traceparent": "00-old-01"}
    answer, why = answer_of(False, b'{"output":"x"}', [], hdrs, gapped=False)
    assert why == "" and answer == Answer(data=b'{"output":"x"}', headers={"Fed-Served-By": "w1"})
    assert replay_headers(answer, {"traceparent": "00-new-01"}) == {
        "Fed-Served-By": "w1",
        "traceparent": "00-new-01",
    }
    chunks = [b'{"seq":1,"text":"a","tokens":1}', b'{"seq":2,"text":"b","tokens":1}']
    streamed, _ = answer_of(True, b"", chunks, {"Fed-Status": "ok"}, gapped=False)
    assert streamed is not None and streamed.chunks == chunks and streamed.data == b""


def test_an_answer_too_large_or_with_a_gap_is_not_kept() -> None:
    big = [b"x" * 1024] * (MAX_ANSWER_BYTES // 1024 + 1)
    answer, why = answer_of(True, b"", big, {}, gapped=False)
    assert answer is None and "over the" in why
    answer, why = answer_of(True, b"", [b"{}"], {}, gapped=True)
    assert answer is None and "missed" in why


def test_a_claim_survives_the_bucket() -> None:
    claim = Claim(
        owner="gw-a", digest=DIGEST, state=State.DONE, job_id="j",
        answer=Answer(chunks=[b"\x00\xff"], headers={"a": "b"}), at_s=1.5,
    )  # fmt: skip
    assert claim_decoder.decode(claim_encoder.encode(claim)) == claim
