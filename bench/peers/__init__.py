"""fedgate side by side with other LLM routers (sglang-router, LiteLLM) over the same fake
upstreams: ``python -m bench.peers`` (see ``bench/peers/__main__.py``)."""
