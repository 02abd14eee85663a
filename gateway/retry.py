"""When to try another node, and how long to wait first (tenacity's strategies).

The gateway's relay is callback-driven (no task per request), so it cannot wrap a
call in ``tenacity.AsyncRetrying``; it asks this policy instead, which evaluates
tenacity's stop and wait strategies on a ``RetryCallState`` describing the request.
"""

from __future__ import annotations

import tenacity


class RetryPolicy:
    """Exponential backoff with jitter, bounded by ``max_retries`` and the deadline."""

    def __init__(self, max_retries: int, initial_s: float, max_s: float) -> None:
        self.max_retries = max_retries
        self._stop = tenacity.stop_after_attempt(max_retries + 1)
        # attempt n waits multiplier * 2**n (+ jitter): n=1 gives 2 * initial_s.
        self._wait = tenacity.wait_exponential_jitter(
            multiplier=initial_s / 2, max=max_s, jitter=initial_s
        )

    def next_delay(self, attempts_made: int, remaining_s: float) -> float | None:
        """Seconds to wait before the next dispatch, or None when no retry is allowed."""
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = attempts_made
        if self._stop(state):
            return None
        delay = float(self._wait(state))
        if delay >= remaining_s:
            return None
        return delay
