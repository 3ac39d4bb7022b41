"""The drill's watch of home on the lab itself, without a drill (seconds, on the session's shared lab): the
counters set up on the lab bridge, a connection home opened to a vault closed at its cause (home's process
killed with its link up, the vault closing its side) so that nothing is left to call home, then frames toward
home sent from a vault's namespace and from an enclave's (a real connection attempt, and raw ARP, IPv6
neighbour solicitation and MAC frames): each is counted under its sender, and the count fails the drill.

Home stays up here (the drill's own test, test_zz_drill, cuts it): only the vault and the enclave, which
have no traffic with home on a lab without a drill running, are asserted, and only kinds no ordinary
traffic to home would produce are asserted exactly."""

from __future__ import annotations

import ipaddress
import struct
import subprocess
import sys
from collections.abc import Iterator

import pytest

from embassy.drill import rehearsal
from embassy.drill import watch as w
from embassy.drill.report import WATCH_OBJECT, Report
from embassy.lab.state import LabState
from embassy.model import Mode, load_stack
from embassy.replication.standby import RECEIVER_UNIT
from tests.lab.conftest import ROOT, STACK, ssh
from tests.unit.test_drill_report import sample_fields

pytestmark = pytest.mark.lab

SEND = ("import socket, sys\ns = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\ns.bind(('eth0', 0))\n"
        "for f in sys.argv[1:]:\n    s.send(bytes.fromhex(f))\n")
CONNECT = ("import socket, sys\ntry:\n    socket.create_connection((sys.argv[1], 9), timeout=2).close()\n"
           "except OSError as e:\n    print(e)\n")


@pytest.fixture
def watch(lab: LabState) -> Iterator[w.Watch]:
    started = w.Watch.start(lab)
    try:
        yield started
    finally:
        started.remove()


@pytest.fixture
def receivers_stopped(lab: LabState) -> Iterator[None]:
    """The warm embassies' WAL receivers stopped, as the incident stops them before home's processes die (their
    connections to home are the only others on a deployed lab); started again afterwards for the later tests."""
    dep = load_stack(STACK, ROOT)
    rehearsal.detach_standbys(lab, dep)
    try:
        yield
    finally:
        for emb in dep.embassies:
            if emb.mode is Mode.WARM:
                ssh(lab, lab.host(emb.name).name, f"sudo systemctl start {RECEIVER_UNIT}", check=False)


def in_netns(netns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=30, check=False)


def frames_toward(home: w.Home) -> list[bytes]:
    """Raw frames a process with CAP_NET_RAW could send toward home: ARP for it, a neighbour solicitation for its
    link-local address, a frame of an unknown type to its MAC."""
    src = bytes.fromhex("02000000aaaa")
    arp = b"\xff" * 6 + src + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + src + bytes(4) + bytes(6) \
        + bytes(int(x) for x in home.ipv4.split("."))
    target = ipaddress.IPv6Address(w.eui64_link_local(home.mac)).packed
    icmp = bytes([135, 0, 0, 0]) + bytes(4) + target
    ip6 = struct.pack("!IHBB", 0x60000000, len(icmp), 58, 255) + ipaddress.IPv6Address("fe80::aa").packed \
        + ipaddress.IPv6Address("ff02::1:ff00:0").packed[:13] + target[13:]
    nd = b"\x33\x33\xff" + target[13:] + src + b"\x86\xdd" + ip6 + icmp
    mac = bytes.fromhex(home.mac.replace(":", "")) + src + b"\x88\xb5" + b"x" * 46
    return [arp, nd, mac]


def test_home_connections_close_at_their_cause_and_every_frame_toward_home_is_counted(
        lab: LabState, receivers_stopped: None, watch: w.Watch) -> None:
    home, vault, enclave = lab.host("home"), lab.vault("de"), lab.host("de")
    # A connection home opened to a vault, as its replication agent does; then home's process dies, link up.
    holder = subprocess.Popen(["ip", "netns", "exec", home.netns, sys.executable, "-c",
                               "import socket, sys, time\ns = socket.create_connection((sys.argv[1], int(sys.argv[2])))\n"
                               "print('up', flush=True)\ntime.sleep(120)\n", vault.address, vault.endpoint.rsplit(":", 1)[1]],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "up"
        assert vault.netns in rehearsal.peers_of(lab, home.address)  # the vault's side of home's connection
    finally:
        holder.kill()
        holder.wait(timeout=10)
    closing = rehearsal.close_home_connections(lab, home.address, bound=5)
    assert rehearsal.peers_of(lab, home.address) == {} and "destroyed" not in closing, closing  # closed by the peers
    watch.mark_cut()
    # The positive control: from a vault and from an enclave, a real connection attempt and raw frames.
    for netns in (vault.netns, enclave.netns):
        in_netns(netns, sys.executable, "-c", CONNECT, home.address)
        sent = in_netns(netns, sys.executable, "-c", SEND, *(f.hex() for f in frames_toward(watch.home)))
        assert sent.returncode == 0, sent.stderr
    seen = watch.result()
    assert seen["dropped"] == 0 and seen["frames_on_bridge"] > 0
    for who in (f"vault-{vault.embassy}", enclave.name):
        kinds = seen["sources"].get(who, {})
        assert kinds.get("ipv6_nd") == 1 and kinds.get("mac") == 1, (who, seen["sources"])
        assert kinds.get("arp", 0) >= 1 and kinds.get("ipv4", 0) >= 1, (who, seen["sources"])  # the SYN, at least
    report = Report.build(**{**sample_fields(), "watch": seen})
    assert not report.passed and any(f.object == WATCH_OBJECT for f in report.failures)
