"""The watch of home's address: every frame toward home, counted in the kernel on the lab's bridge.

After the incident nothing may reach home. Every attempt shows on the lab's bridge first: as an ARP
request for home's IPv4 address (once a neighbour entry has expired, a connection attempt is only
that), an IPv4 packet to it, an IPv6 neighbour solicitation for one of home's IPv6 addresses or a
packet to one, or any frame addressed to home's MAC. An nftables table of the bridge family, in the
lab switch's namespace, counts each of them per bridge port (who sent it) and per kind, at the
bridge's prerouting hook: in the kernel's forwarding path, for every frame that enters the bridge, so
no frame can pass uncounted (a capture read by a process can drop frames; a counter cannot). What the
watch may still miss is a frame a port dropped on receipt, before the bridge saw it (a full backlog):
`dropped` is the rise of the ports' own receive-drop statistics after the cut, read from the kernel,
and any fails the drill. A frame is counted once, under the first kind it matches, in the order of KINDS.

The counters are put in place at the first step of the incident, snapshotted just before home's link
is cut (`Watch.mark_cut`), and read last just before the report is written (`Watch.read`): the
frames after the cut are the verdict. Home's own port is not counted (its frames are from home).
A counter `seen` counts every frame entering the bridge: a watch that saw nothing at all after the
cut was not live, and the table is checked to be the one installed (same handle, same rules).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from embassy.errors import DrillFailed
from embassy.lab.network import BRIDGE
from embassy.lab.state import LabState
from embassy.lab.system import run

TABLE = "embassy_watch_home"
CHAIN = "toward_home"
KINDS = ("arp", "ipv4", "ipv6_nd", "ipv6", "mac")
OTHER = "other"  # a port that was not on the bridge when the watch began
METHOD = ("nftables counters in the kernel, in the lab switch's namespace: a bridge-family table at the prerouting "
          "hook counts every frame entering the lab bridge from any port toward home: ARP for its IPv4 address, "
          "IPv4 to it, IPv6 neighbour solicitations for and packets to its IPv6 addresses, any frame to its MAC; "
          "per port and kind, from the incident's first step until the report was written; dropped: frames the "
          "bridge's ports dropped on receipt after home was cut (their kernel statistics), before the counters could "
          "see them")


@dataclass(frozen=True)
class Home:
    """What a frame toward home carries: its IPv4 address, MAC, IPv6 addresses; and its own bridge port."""

    ipv4: str
    mac: str
    ipv6: tuple[str, ...]
    port: str


def eui64_link_local(mac: str) -> str:
    """The IPv6 link-local address a neighbour derives from `mac` (modified EUI-64)."""
    octets = bytearray(bytes.fromhex(mac.replace(":", "")))
    octets[0] ^= 0x02
    eui = bytes(octets[:3]) + b"\xff\xfe" + bytes(octets[3:])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + b"\x00" * 6 + eui))


def counter_name(port: str, kind: str) -> str:
    return f"{port}_{kind}".replace("-", "_")


def ruleset(home: Home, ports: list[str]) -> str:
    """The nftables table (nft -f syntax): per port other than home's, per kind, one named counter."""
    sources = [p for p in ports if p != home.port] + [OTHER]
    counters = "\n".join(f"  counter {counter_name(p, k)} {{}}" for p in sources for k in KINDS)
    ipv6 = sorted(set(home.ipv6) | {eui64_link_local(home.mac)})
    rules = ["    counter name \"seen\"", f"    iifname \"{home.port}\" accept"]
    for port in sources:
        match = "" if port == OTHER else f"iifname \"{port}\" "
        for kind, test in (("arp", f"arp daddr ip {home.ipv4}"), ("ipv4", f"ip daddr {home.ipv4}")):
            rules.append(f"    {match}{test} counter name \"{counter_name(port, kind)}\" accept")
        for address in ipv6:  # the solicitation's target field: 16 bytes, 8 bytes into the ICMPv6 header
            target = f"0x{int(ipaddress.IPv6Address(address)):032x}"
            rules.append(f"    {match}icmpv6 type nd-neighbor-solicit @th,64,128 {target} "
                         f"counter name \"{counter_name(port, 'ipv6_nd')}\" accept")
        rules.append(f"    {match}ip6 daddr {{ {', '.join(ipv6)} }} counter name \"{counter_name(port, 'ipv6')}\" accept")
        rules.append(f"    {match}ether daddr {home.mac} counter name \"{counter_name(port, 'mac')}\" accept")
    return (f"table bridge {TABLE} {{\n  counter seen {{}}\n{counters}\n  chain {CHAIN} {{\n"
            f"    type filter hook prerouting priority -300; policy accept;\n" + "\n".join(rules) + "\n  }\n}\n")


def home_of(lab: LabState) -> Home:
    """Home's addresses as its interface has them now (before the incident), and its bridge port."""
    host = lab.host("home")
    done = run(["ip", "-n", host.netns, "-j", "addr", "show", "dev", "eth0"], check=False)
    try:
        link = json.loads(done.stdout)[0]
    except (ValueError, IndexError):
        raise DrillFailed(f"home's interface cannot be read in {host.netns}: {done.stderr.strip()[-200:]}") from None
    ipv6 = tuple(a["local"] for a in link.get("addr_info", []) if a.get("family") == "inet6")
    index = next(i for i, h in enumerate(lab.hosts) if h.name == host.name)
    return Home(ipv4=host.address, mac=str(link["address"]), ipv6=ipv6, port=f"l{lab.lab_id}h{index}")


def port_names(lab: LabState) -> dict[str, str]:
    """Bridge port -> who is behind it (the lab's own naming of ports, lab/lifecycle.py)."""
    names = {f"l{lab.lab_id}c": "controller"}
    names.update({f"l{lab.lab_id}h{i}": h.name for i, h in enumerate(lab.hosts)})
    names.update({f"l{lab.lab_id}v{i}": f"vault-{v.embassy}" for i, v in enumerate(lab.vaults)})
    names[OTHER] = "a port added after the watch began"
    return names


def bridge_ports(switch_netns: str) -> list[str]:
    done = run(["ip", "-n", switch_netns, "-j", "link", "show", "master", BRIDGE], check=False)
    try:
        return sorted(str(link["ifname"]) for link in json.loads(done.stdout or "[]"))
    except (ValueError, KeyError) as exc:
        raise DrillFailed(f"the ports of {BRIDGE} in {switch_netns} cannot be read: {exc}") from None


def port_drops(links: list[dict[str, Any]], home_port: str) -> int:
    """Frames the bridge's ports (home's aside) dropped on receipt, before the bridge and its counters saw them
    (a full backlog, in the kernel's own statistics): what the watch may have missed."""
    return sum(int(link.get("stats64", {}).get("rx", {}).get("dropped", 0)) for link in links
               if link.get("ifname") != home_port)


@dataclass
class Counts:
    """One read of the counters: packets per counter name, every frame that entered the bridge, and the frames its
    ports dropped before it could."""

    at: dt.datetime
    packets: dict[str, int]
    seen: int
    drops: int = 0

    def minus(self, earlier: Counts) -> Counts:
        return Counts(self.at, {k: v - earlier.packets.get(k, 0) for k, v in self.packets.items()},
                      self.seen - earlier.seen, self.drops - earlier.drops)


@dataclass
class Watch:
    """The counters of one lab's bridge, from `start` to `remove`."""

    switch_netns: str
    home: Home
    names: dict[str, str]
    ports: list[str]
    handle: int = 0
    rules: int = 0
    since: Counts | None = None
    cut: Counts | None = None
    closing: str | None = None  # how home's connections were closed before the cut
    history: list[Counts] = field(default_factory=list)

    @classmethod
    def start(cls, lab: LabState) -> Watch:
        watch = cls(lab.switch_netns, home_of(lab), port_names(lab), bridge_ports(lab.switch_netns))
        watch.install()
        return watch

    def install(self) -> None:
        run(["ip", "netns", "exec", self.switch_netns, "nft", "delete", "table", "bridge", TABLE], check=False)
        done = run(["ip", "netns", "exec", self.switch_netns, "nft", "-f", "-"], check=False,
                   input=ruleset(self.home, self.ports))
        if done.returncode != 0:
            raise DrillFailed(f"the counters could not be set up in {self.switch_netns}: {done.stderr.strip()[-400:]}")
        listed = self._list()
        self.handle, self.rules = self._shape(listed)
        self.since = self._counts(listed)
        self.since.drops = self._drops()

    def _drops(self) -> int:
        done = run(["ip", "-n", self.switch_netns, "-s", "-j", "link", "show", "master", BRIDGE], check=False)
        try:
            return port_drops(json.loads(done.stdout), self.home.port)
        except ValueError:
            raise DrillFailed(f"the statistics of {BRIDGE}'s ports in {self.switch_netns} cannot be read") from None

    def _list(self) -> list[dict[str, Any]]:
        done = run(["ip", "netns", "exec", self.switch_netns, "nft", "-j", "list", "table", "bridge", TABLE], check=False)
        try:
            items: list[dict[str, Any]] = json.loads(done.stdout)["nftables"]
        except (ValueError, KeyError):
            raise DrillFailed(f"the counters in {self.switch_netns} are gone or unreadable: "
                             f"{done.stderr.strip()[-300:]}") from None
        return items

    @staticmethod
    def _shape(items: list[dict[str, Any]]) -> tuple[int, int]:
        handle = next((int(i["table"]["handle"]) for i in items if "table" in i), 0)
        return handle, sum(1 for i in items if "rule" in i)

    @staticmethod
    def _counts(items: list[dict[str, Any]]) -> Counts:
        packets = {str(i["counter"]["name"]): int(i["counter"]["packets"]) for i in items if "counter" in i}
        return Counts(dt.datetime.now(dt.UTC), packets, packets.pop("seen", 0))

    def snapshot(self) -> Counts:
        """The counters now; DrillFailed if the table is not the one installed (replaced, flushed, edited)."""
        items = self._list()
        if self._shape(items) != (self.handle, self.rules):
            raise DrillFailed(f"the counters in {self.switch_netns} were replaced or edited during the drill")
        counts = self._counts(items)
        counts.drops = self._drops()
        self.history.append(counts)
        return counts

    def mark_cut(self) -> None:
        """Just before home's link is cut: frames counted from here on fail the drill."""
        self.cut = self.snapshot()

    def remove(self) -> None:
        run(["ip", "netns", "exec", self.switch_netns, "nft", "delete", "table", "bridge", TABLE], check=False)

    def by_source(self, counts: Counts) -> dict[str, dict[str, int]]:
        """Non-zero counts as {who (port's owner): {kind: frames}}."""
        found: dict[str, dict[str, int]] = {}
        for port in [p for p in self.ports if p != self.home.port] + [OTHER]:
            for kind in KINDS:
                n = counts.packets.get(counter_name(port, kind), 0)
                if n:
                    found.setdefault(self.names.get(port, port), {})[kind] = n
        return found

    def result(self) -> dict[str, Any]:
        """The report's watch (report.Watch fields), read now: call it last, just before the report is written."""
        assert self.since is not None, "the watch was never installed"
        end = self.snapshot()
        cut = self.cut or self.since  # never cut (the incident did not finish): every frame counts
        after = end.minus(cut)
        before = cut.minus(self.since)
        toward = self.by_source(after)
        return {"method": METHOD, "dropped": max(after.drops, 0),
                "frames_toward_home": sum(sum(k.values()) for k in toward.values()),
                "since": self.since.at, "cut_at": self.cut.at if self.cut else None, "until": end.at,
                "frames_before_cut": sum(sum(k.values()) for k in self.by_source(before).values()),
                "sources": toward, "frames_on_bridge": after.seen, "closing": self.closing}
