"""``python -m llama_cpp.server`` with one more route, ``GET /health``.

sglang-router 0.3.2 registers a worker only after ``GET /health`` answers (its connection
-mode detection asks that path whatever ``--health-check-endpoint`` says), and
llama_cpp.server has no such route. This adds it to the same FastAPI app and runs the
server exactly as its own ``__main__`` does (same arguments): no proxy, no extra hop.
"""

from __future__ import annotations

from typing import Any

import llama_cpp.server.__main__ as server_main
from llama_cpp.server import app as server_app


def create_app(**kwargs: Any) -> Any:
    """llama_cpp.server's app, plus ``GET /health``."""
    app = server_app.create_app(**kwargs)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


if __name__ == "__main__":
    server_main.create_app = create_app  # type: ignore[assignment]  # its main() calls this
    server_main.main()
