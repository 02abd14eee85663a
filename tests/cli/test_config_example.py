"""deploy/fedgate.example.toml documents every key and loads as it is."""

from __future__ import annotations

import re
from pathlib import Path

from shared.config import GatewayConfig, NatsConfig, WorkerConfig, build, load_file

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "fedgate.example.toml"


def test_example_loads_into_the_config_structs() -> None:
    file = load_file(EXAMPLE)
    build(NatsConfig, file.get("nats", {}))
    build(GatewayConfig, file["gateway"])
    build(WorkerConfig, {"node_id": "example"}, file["worker"])


def test_example_mentions_every_gateway_and_worker_key() -> None:
    text = EXAMPLE.read_text()
    for struct in (GatewayConfig, WorkerConfig):
        missing = [
            key
            for key in struct.__struct_fields__
            # "key = ...", "# key = ..." (commented default) or a "[table.key]" header
            if not re.search(rf"^#?\s*(\[\w+\.)?{key}\b", text, re.M)
        ]
        assert not missing, f"{struct.__name__} keys absent from {EXAMPLE.name}: {missing}"
