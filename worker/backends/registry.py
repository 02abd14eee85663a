"""Which backends a ``fedgate worker`` can run, and their command-line flags.

The CLI calls ``add_arguments`` on the worker subcommand and ``create`` with the parsed
arguments; each backend owns its flags here, so adding a backend touches one module.
"""

from __future__ import annotations

import argparse

from worker.backends.base import Backend

CHOICES = ["synthetic"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--backend`` and every backend's own flags."""
    parser.add_argument(
        "--backend",
        default="synthetic",
        choices=CHOICES,
        help="inference backend (default synthetic)",
    )
    g = parser.add_argument_group("synthetic backend")
    g.add_argument("--ttft-ms", type=float, default=0.0, help="time to first token")
    g.add_argument("--token-interval-ms", type=float, default=0.0, help="time between tokens")
    g.add_argument("--fail-rate", type=float, default=0.0, help="failure probability")
    g.add_argument(
        "--fail-after-tokens", type=int, default=0, help="fail mid-stream after N tokens"
    )
    g.add_argument("--hang", action="store_true", help="accept and never answer")


def create(args: argparse.Namespace) -> Backend:
    """The backend the parsed arguments ask for."""
    from worker.backends.synthetic import SyntheticBackend, SyntheticOptions

    return SyntheticBackend(
        SyntheticOptions(
            ttft_ms=args.ttft_ms,
            token_interval_ms=args.token_interval_ms,
            fail_rate=args.fail_rate,
            fail_after_tokens=args.fail_after_tokens,
            hang=args.hang,
        )
    )
