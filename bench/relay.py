"""The bare relay: the leanest one-hop Python forwarder, the yardstick of the gateway.

No routing, health, retries or stats: a request on ``<root>.generate`` (queue group) is
sent to one node's inbox as a dispatch (what a gateway sends), its reply subject taken
from ONE wildcard inbox subscription; every reply of the node (a result, or chunks then
the empty terminal message) is published to the caller unchanged, headers included.

Run: ``python -m bench.relay --nats URL --node-id bench-1 [--root relay]`` (uvloop).
"""

from __future__ import annotations

import argparse

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from shared.runtime import run, stop_event
from shared.subjects import Subjects

DISPATCH = b'{"request":%b,"attempt":1,"resume":null,"capability":"generate","request_id":"r%b"}'
"""A dispatch as the gateway sends it, for attempt 1 (request body, relay key)."""


class Relay:
    """The relay's two callbacks and its in-flight table (no I/O of its own)."""

    def __init__(self, nc: Client, node_id: str) -> None:
        self.publish = nc.publish
        self.node_inbox = Subjects().node_infer(node_id)
        self.inbox = nc.new_inbox() + "."
        self.cut = len(self.inbox)
        self.pending: dict[str, tuple[str, bool]] = {}  # key -> (caller's reply, stream)
        self.count = 0

    async def on_request(self, msg: Msg) -> None:
        """A caller's request: forward it to the node as a dispatch."""
        if not msg.reply:
            return
        self.count += 1
        key = f"{self.count:x}"
        data = msg.data or b"{}"
        # A byte test, not a decode: the benchmark client writes compact JSON.
        self.pending[key] = (msg.reply, b'"stream":true' in data)
        await self.publish(self.node_inbox, DISPATCH % (data, key.encode()), reply=self.inbox + key)

    async def on_reply(self, msg: Msg) -> None:
        """A node's message: publish it to the caller unchanged."""
        key = msg.subject[self.cut :]
        entry = self.pending.get(key)
        if entry is None:
            return
        if not entry[1] or not msg.data:  # a result, an error, or a stream's terminal
            del self.pending[key]
        await self.publish(entry[0], msg.data, headers=msg.headers)


async def serve(url: str, node_id: str, root: str) -> int:
    """Relay ``<root>.generate`` to ``node_id`` until SIGINT/SIGTERM."""
    stop = stop_event()
    nc = await nats.connect(url)
    relay = Relay(nc, node_id)
    await nc.subscribe(relay.inbox + "*", cb=relay.on_reply)
    await nc.subscribe(Subjects(public=root).infer("generate"), queue="relay", cb=relay.on_request)
    await nc.flush()
    await stop.wait()
    await nc.drain()
    return 0


def main() -> int:
    """Parse the command line and relay until stopped."""
    p = argparse.ArgumentParser(description="bare one-hop NATS relay (benchmark yardstick)")
    p.add_argument("--nats", default="nats://127.0.0.1:4222")
    p.add_argument("--node-id", required=True)
    p.add_argument("--root", default="relay", help="serve <root>.generate")
    args = p.parse_args()
    return run(serve(args.nats, args.node_id, args.root))


if __name__ == "__main__":
    raise SystemExit(main())
