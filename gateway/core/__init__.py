"""The request lifecycle as a pure core: state and decisions, no I/O, no clock of its own.

    flight.py     Flight (one request at this gateway), Attempt (one dispatch), Phase
    lifecycle.py  what a request does after each event: steps, timers
    verdicts.py   final errors, a node's error judged, tokens to report, refusals
    cooldown.py   nodes inside a Retry-After (a busy node's own estimate)

The engine (``gateway/engine.py``) carries the decisions out; everything here is
unit-tested with a fake clock and no NATS (``tests/core/test_lifecycle.py``).
"""
