"""Build the offline word-level tokenizer the peers benchmark gives aiperf.

aiperf's ``builtin`` tokenizer downloads a BPE file, and nothing can be downloaded from a
model hub here. A word-level Hugging Face tokenizer built from aiperf's own prompt corpus
(``aiperf/dataset/generator/assets/shakespeare.txt``) plus the fake upstream's output
words makes one word one token: aiperf's prompts of N tokens are N corpus words, and a
fake upstream emitting one word per chunk yields one output token per chunk.

Run in the aiperf venv (it has ``tokenizers`` and the corpus), from the repository root:
``~/.cache/fedgate-peers/aiperf/bin/python bench/peers/tokenizer/build.py``. Writes
``tokenizer.json`` and ``tokenizer_config.json`` beside this file.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = Path(__file__).resolve().parent
UNK = "[UNK]"


def corpus_path() -> Path:
    """aiperf's prompt corpus, found without importing aiperf."""
    spec = importlib.util.find_spec("aiperf")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("run this with the aiperf venv's python (make peers-setup)")
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "dataset" / "generator" / "assets" / "shakespeare.txt"


def upstream_words() -> list[str]:
    """The fake upstream's output vocabulary (read from its source: no aiohttp needed)."""
    source = (HERE.parent / "upstream.py").read_text()
    block = re.search(r"WORDS = \(\n(.*?)\n\)\.split\(\)", source, re.S)
    assert block is not None, "WORDS not found in upstream.py"
    return " ".join(re.findall(r'"([^"]*)"', block.group(1))).split()


def main() -> None:
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # join with spaces
    trainer = trainers.WordLevelTrainer(min_frequency=1, special_tokens=[UNK])
    lines = corpus_path().read_text(encoding="utf-8").splitlines()
    tokenizer.train_from_iterator([*lines, " ".join(upstream_words())], trainer=trainer)
    tokenizer.save(str(HERE / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": UNK,
        "model_max_length": 1_000_000,
        "clean_up_tokenization_spaces": False,
    }
    (HERE / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"vocabulary: {tokenizer.get_vocab_size()} words -> {HERE}")


if __name__ == "__main__":
    main()
