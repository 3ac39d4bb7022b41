"""Watch a lab address on the lab's bridge: every frame that tries to reach it, counted.

    ip netns exec <switch netns> python -m embassy.drill.watch ADDRESS OUT_JSON

After the incident, nothing may contact home. Any attempt shows on the bridge first as an ARP
request for home's address (or, while a neighbour entry is still cached, as an IPv4 frame to it,
flooded since home's port is gone): this reads every frame on the bridge (promiscuous, AF_PACKET)
until SIGTERM, then writes {"address", "frames", "sources", "kinds", "seconds"} to OUT_JSON (kinds: per
source, how many frames of each kind: arp, tcp-syn, tcp, udp, icmp, ip). Linux only, stdlib.

`attempts` judges them: a vault is a server and never opens a connection, so an ARP request or a TCP
segment without SYN from a vault can only be its TCP answering, retransmitting to or closing a
connection that home opened before the incident (which first needs an ARP request for home). A warm
drill at 1 GB saw 7 such frames from the three vaults within 24 s of the incident, and failed on them
before this rule. Everything else is an attempt to reach home.
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


IP_KINDS = {1: "icmp", 6: "tcp", 17: "udp"}
TCP_SYN, TCP_ACK = 0x02, 0x10
# What a server may send to home's address after the incident without home's restore depending on it.
SERVER_LEFTOVERS = frozenset({"arp", "tcp"})


def classify(frame: bytes, address: bytes) -> tuple[str, str] | None:
    """(sender, kind) if `frame` is an ARP request for, or an IPv4 packet to, `address`; kind `tcp-syn` is a
    TCP segment opening a connection (SYN without ACK)."""
    if len(frame) < 14:
        return None
    ethertype = struct.unpack("!H", frame[12:14])[0]
    if ethertype == ETH_P_ARP and len(frame) >= 42 and frame[38:42] == address:
        return socket.inet_ntoa(frame[28:32]), "arp"
    if ethertype != ETH_P_IP or len(frame) < 34 or frame[30:34] != address:
        return None
    kind = IP_KINDS.get(frame[23], "ip")
    tcp = 14 + (frame[14] & 0x0F) * 4
    if kind == "tcp" and len(frame) > tcp + 13 and frame[tcp + 13] & (TCP_SYN | TCP_ACK) == TCP_SYN:
        kind = "tcp-syn"
    return socket.inet_ntoa(frame[26:30]), kind


def attempts(kinds: dict[str, dict[str, int]], servers: set[str]) -> tuple[int, int]:
    """(frames that tried to reach home, frames of servers answering or closing home's earlier connections)."""
    tried = leftover = 0
    for source, counts in kinds.items():
        for kind, count in counts.items():
            if source in servers and kind in SERVER_LEFTOVERS:
                leftover += count
            else:
                tried += count
    return tried, leftover


def watch(interface: str, address: str, out: Path) -> None:
    target = socket.inet_aton(address)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((interface, 0))
    index = socket.if_nametoindex(interface)
    sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("iHH8s", index, PACKET_MR_PROMISC, 0, b""))
    sock.settimeout(0.5)
    start = time.monotonic()
    kinds: dict[str, dict[str, int]] = {}  # the frames and sources written out are its sums
    stop = False

    def finish(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGINT, finish)
    out.write_text(json.dumps({"address": address, "frames": 0, "sources": {}, "kinds": {}, "seconds": 0,
                               "watching": True}))
    while not stop:
        try:
            frame = sock.recv(65535)
        except TimeoutError:
            continue
        except InterruptedError:
            continue
        seen = classify(frame, target)
        if seen is not None:
            source, kind = seen
            per_kind = kinds.setdefault(source, {})
            per_kind[kind] = per_kind.get(kind, 0) + 1
    sources = {source: sum(per_kind.values()) for source, per_kind in kinds.items()}
    out.write_text(json.dumps({"address": address, "frames": sum(sources.values()), "sources": sources,
                               "kinds": kinds, "seconds": round(time.monotonic() - start, 3), "watching": False}))


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m embassy.drill.watch INTERFACE ADDRESS OUT_JSON", file=sys.stderr)
        return 2
    watch(argv[0], argv[1], Path(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
