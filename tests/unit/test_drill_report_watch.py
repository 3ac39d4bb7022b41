"""The watch of home, in the real kernel: the nftables counters of drill/watch.py on a bridge in a throwaway
network namespace (no address anywhere, no link out), frames sent into it through veth ports as a vault, an
enclave, home itself and a port added later would send them. Each kind of frame toward home is counted once,
under its sender and kind; frames toward anyone else are not; the count fails the report; a replaced table is
refused. Root (network namespaces, nftables) is what `make test` runs as."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from embassy.drill import watch as w
from embassy.drill.report import WATCH_OBJECT, Report
from embassy.errors import DrillFailed, ReportInvalid
from tests.unit.test_drill_report import sample_fields

NS = f"embwatch-unit-{os.getpid()}"
HOME = w.Home(ipv4="192.0.2.10", mac="02:00:00:00:00:10", ipv6=("fd00::10",), port="wh0")
NAMES = {"wh0": "home", "wv0": "vault-de", "wh1": "enclave-de", w.OTHER: "a port added after the watch began"}
OTHER_MAC, BROADCAST = bytes.fromhex("020000000011"), b"\xff" * 6


def ns(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", NS, *argv], input=stdin, capture_output=True, text=True, check=True,
                          timeout=30)


@pytest.fixture
def bridge() -> Iterator[str]:
    """A bridge in its own namespace with ports wh0 (home), wv0, wh1 and, added later, wx9; each port's peer
    (p<port>) stays in the namespace, up, without an address: what is written to a peer enters the bridge."""
    if os.geteuid() != 0:
        pytest.fail("the watch is counted by the kernel: run the unit tests as root, as `make test` does")
    subprocess.run(["ip", "netns", "add", NS], check=True, timeout=30)
    try:
        ns("ip", "link", "add", "br0", "type", "bridge")
        ns("ip", "link", "set", "br0", "up")
        for port in ("wh0", "wv0", "wh1", "wx9"):
            ns("ip", "link", "add", port, "type", "veth", "peer", "name", f"p{port}")
            ns("ip", "link", "set", port, "master", "br0", "up")
            ns("ip", "link", "set", f"p{port}", "up")
        yield NS
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False, timeout=30)


def send(port: str, *frames: bytes) -> None:
    """Write raw frames to the peer of `port`: they enter the bridge through that port."""
    code = ("import socket, sys\ns = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\ns.bind((sys.argv[1], 0))\n"
            "for f in sys.argv[2:]:\n    s.send(bytes.fromhex(f))\n")
    ns(sys.executable, "-c", code, f"p{port}", *(f.hex() for f in frames))


def eth(dst: bytes, ethertype: int, payload: bytes) -> bytes:
    return dst + bytes.fromhex("02000000aaaa") + struct.pack("!H", ethertype) + payload


def arp_request(target: str) -> bytes:
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + bytes.fromhex("02000000aaaa") + socket.inet_aton("192.0.2.40") \
        + b"\x00" * 6 + socket.inet_aton(target)
    return eth(BROADCAST, 0x0806, body)


def ipv4_udp(dst_mac: bytes, dst: str) -> bytes:
    ip = bytes([0x45, 0]) + struct.pack("!H", 28) + b"\x00" * 4 + bytes([64, 17]) + b"\x00\x00" \
        + socket.inet_aton("192.0.2.40") + socket.inet_aton(dst)
    return eth(dst_mac, 0x0800, ip + struct.pack("!HHHH", 40000, 9, 8, 0))


def ipv6(dst_mac: bytes, dst: str, next_header: int, payload: bytes) -> bytes:
    header = struct.pack("!IHBB", 0x60000000, len(payload), next_header, 255) \
        + socket.inet_pton(socket.AF_INET6, "fe80::40") + socket.inet_pton(socket.AF_INET6, dst)
    return eth(dst_mac, 0x86DD, header + payload)


def solicitation(target: str) -> bytes:
    """An IPv6 neighbour solicitation for `target`, to its solicited-node multicast group."""
    packed = socket.inet_pton(socket.AF_INET6, target)
    group = "ff02::1:ff" + packed[13:14].hex() + ":" + packed[14:16].hex()
    mac = b"\x33\x33\xff" + packed[13:16]
    return ipv6(mac, group, 58, bytes([135, 0, 0, 0]) + b"\x00" * 4 + packed)


HOME_MAC = bytes.fromhex(HOME.mac.replace(":", ""))
TOWARD_HOME = {  # kind -> a frame of that kind toward home
    "arp": arp_request(HOME.ipv4),
    "ipv4": ipv4_udp(BROADCAST, HOME.ipv4),
    "ipv6_nd": solicitation(w.eui64_link_local(HOME.mac)),
    "ipv6": ipv6(OTHER_MAC, "fd00::10", 17, struct.pack("!HHHH", 40000, 9, 8, 0)),
    "mac": eth(HOME_MAC, 0x88B5, b"x" * 46),
}
TOWARD_OTHERS = [arp_request("192.0.2.11"), ipv4_udp(OTHER_MAC, "192.0.2.11"), solicitation("fe80::11"),
                 ipv6(OTHER_MAC, "fd00::11", 17, b"\x00" * 8), eth(OTHER_MAC, 0x88B5, b"x" * 46)]


def started(switch: str) -> w.Watch:
    watch = w.Watch(switch, HOME, NAMES, ["wh0", "wh1", "wv0"])  # wx9 was not on the bridge when the watch began
    watch.install()
    return watch


def test_every_kind_of_frame_toward_home_is_counted_once_under_its_sender(bridge: str) -> None:
    watch = started(bridge)
    send("wv0", TOWARD_HOME["arp"])  # before the cut: reported, not held against the drill
    watch.mark_cut()
    for port in ("wv0", "wh1"):
        send(port, *TOWARD_HOME.values(), *TOWARD_OTHERS)
    send("wh0", TOWARD_HOME["arp"], TOWARD_HOME["mac"])  # home's own port: not toward home from outside
    send("wx9", TOWARD_HOME["ipv4"])  # a port that was not there when the watch began
    seen = watch.result()
    every_kind = dict.fromkeys(w.KINDS, 1)
    assert seen["sources"] == {"vault-de": every_kind, "enclave-de": every_kind,
                               "a port added after the watch began": {"ipv4": 1}}
    assert seen["frames_toward_home"] == 2 * len(w.KINDS) + 1 and seen["frames_before_cut"] == 1
    assert seen["dropped"] == 0 and seen["frames_on_bridge"] >= 2 * (len(TOWARD_HOME) + len(TOWARD_OTHERS)) + 3
    # The positive control: those frames fail the drill, naming who sent them.
    report = Report.build(**{**sample_fields(), "watch": seen})
    assert not report.passed
    failure = next(f for f in report.failures if f.object == WATCH_OBJECT)
    assert failure.reason.startswith(f"{seen['frames_toward_home']} frames tried to reach home after it was cut")
    assert "vault-de: 1 arp, 1 ipv4, 1 ipv6_nd, 1 ipv6, 1 mac" in failure.reason and "enclave-de" in failure.reason


def test_frames_toward_others_leave_the_watch_at_zero_and_the_drill_passes(bridge: str) -> None:
    watch = started(bridge)
    watch.mark_cut()
    send("wv0", *TOWARD_OTHERS)
    send("wh1", *TOWARD_OTHERS)
    seen = watch.result()
    assert seen["frames_toward_home"] == 0 and seen["sources"] == {}
    assert seen["frames_on_bridge"] >= 2 * len(TOWARD_OTHERS)  # the hook saw them: it was live
    assert Report.build(**{**sample_fields(), "watch": seen}).passed


def test_a_replaced_or_missing_table_is_refused(bridge: str) -> None:
    """The adversary: whoever resets the counters during the drill (a new table reads zero)."""
    watch = started(bridge)
    watch.mark_cut()
    send("wv0", TOWARD_HOME["ipv4"])
    started(bridge)  # a fresh table in its place: zeros
    with pytest.raises(DrillFailed, match="replaced or edited"):
        watch.result()
    watch.remove()
    with pytest.raises(DrillFailed, match="gone or unreadable"):
        watch.snapshot()
    # Not watched at all: the report cannot pass.
    assert not Report.build(**{**sample_fields(), "watch": None}).passed


def test_the_ruleset_names_every_port_kind_and_home_address() -> None:
    text = w.ruleset(HOME, ["wh0", "wv0"])
    assert 'iifname "wh0" accept' in text  # home's own port first: its frames are not toward home
    for kind in w.KINDS:
        assert f"counter wv0_{kind} {{}}" in text and f"counter other_{kind} {{}}" in text
    assert "fe80::ff:fe00:10" in text and "fd00::10" in text  # the EUI-64 link-local a neighbour would solicit
    assert w.eui64_link_local("02:00:00:00:00:10") == "fe80::ff:fe00:10"


def test_a_watch_count_that_is_not_its_sources_is_refused() -> None:
    fields = sample_fields()
    fields["watch"] = {**fields["watch"], "frames_toward_home": 0, "sources": {"vault-de": {"arp": 2}}}
    with pytest.raises(ReportInvalid, match="not the sum of its sources"):
        Report.build(**fields)


def test_frames_the_ports_dropped_are_read_from_the_kernel_and_fail_the_drill() -> None:
    """`dropped` is measured: the ports' receive drops (not home's port), and any makes the watch prove nothing."""
    links: list[dict[str, Any]] = [{"ifname": "wh0", "stats64": {"rx": {"dropped": 50}}},
                                   {"ifname": "wv0", "stats64": {"rx": {"dropped": 2}}},
             {"ifname": "wh1", "stats64": {"rx": {"dropped": 1}, "tx": {"dropped": 9}}}, {"ifname": "wx9"}]
    assert w.port_drops(links, home_port="wh0") == 3
    fields = sample_fields()
    fields["watch"] = {**fields["watch"], "dropped": 3}
    report = Report.build(**fields)
    assert not report.passed and any("may have missed 3 frames" in f.reason for f in report.failures)


def test_the_drop_count_is_read_live(bridge: str) -> None:
    watch = started(bridge)
    watch.mark_cut()
    send("wv0", *TOWARD_OTHERS)
    assert watch.result()["dropped"] == 0 and watch.since is not None and watch.since.drops >= 0
