"""Watch a lab address on the lab's bridge: every frame that tries to reach it, counted.

    ip netns exec <switch netns> python -m embassy.drill.watch ADDRESS OUT_JSON

After the incident, nothing may contact home. Any attempt shows on the bridge first as an ARP
request for home's address (or, while a neighbour entry is still cached, as an IPv4 frame to it,
flooded since home's port is gone): this reads every frame on the bridge (promiscuous, AF_PACKET)
until SIGTERM, then writes {"address", "frames", "sources", "seconds"} to OUT_JSON. Linux only, stdlib.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import sys
import time
from pathlib import Path

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1


def touches(frame: bytes, address: bytes) -> str | None:
    """The sender's IPv4 address if `frame` is an ARP request for, or an IPv4 packet to, `address`."""
    if len(frame) < 14:
        return None
    kind = struct.unpack("!H", frame[12:14])[0]
    if kind == ETH_P_ARP and len(frame) >= 42 and frame[38:42] == address:
        return socket.inet_ntoa(frame[28:32])
    if kind == ETH_P_IP and len(frame) >= 34 and frame[30:34] == address:
        return socket.inet_ntoa(frame[26:30])
    return None


def watch(interface: str, address: str, out: Path) -> None:
    target = socket.inet_aton(address)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((interface, 0))
    index = socket.if_nametoindex(interface)
    sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b""))
    sock.settimeout(0.5)
    frames, start = 0, time.monotonic()
    sources: dict[str, int] = {}
    stop = False

    def finish(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGINT, finish)
    out.write_text(json.dumps({"address": address, "frames": 0, "sources": {}, "seconds": 0, "watching": True}))
    while not stop:
        try:
            frame = sock.recv(65535)
        except TimeoutError:
            continue
        except InterruptedError:
            continue
        source = touches(frame, target)
        if source is not None:
            frames += 1
            sources[source] = sources.get(source, 0) + 1
    out.write_text(json.dumps({"address": address, "frames": frames, "sources": sources,
                               "seconds": round(time.monotonic() - start, 3), "watching": False}))


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m embassy.drill.watch INTERFACE ADDRESS OUT_JSON", file=sys.stderr)
        return 2
    watch(argv[0], argv[1], Path(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
