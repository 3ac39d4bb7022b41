"""The lab network: a blackhole route first, then namespaces on a bridge that lives in its own namespace.

Nothing of the lab attaches to the root namespace: the bridge sits in `emb<id>-sw`, every host,
vault and the controller get their own namespace with one veth port on it. Names are resolved by
/etc/hosts (in the containers) and /etc/netns/<ns>/hosts (for clients run with `ip netns exec`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from embassy.lab.system import run

BRIDGE = "br0"
ETC_NETNS = Path("/etc/netns")
NETNS_RUN = Path("/run/netns")

# Per-namespace network sysctls a hardened host wants (Lynis KRNL-6000). Kernel-wide ones can only
# be set by the VM; these belong to the namespace, so the lab (the "host" of the containers) sets them.
HOST_SYSCTLS = {
    "net.ipv4.conf.all.accept_redirects": "0",
    "net.ipv4.conf.default.accept_redirects": "0",
    "net.ipv4.conf.all.accept_source_route": "0",
    "net.ipv4.conf.default.accept_source_route": "0",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.default.send_redirects": "0",
    "net.ipv4.conf.all.log_martians": "1",
    "net.ipv4.conf.default.log_martians": "1",
    "net.ipv4.conf.all.rp_filter": "1",
    "net.ipv4.conf.default.rp_filter": "1",
    "net.ipv4.conf.all.bootp_relay": "0",
    "net.ipv4.conf.all.proxy_arp": "0",
    "net.ipv4.conf.all.forwarding": "0",
    "net.ipv4.icmp_echo_ignore_broadcasts": "1",
    "net.ipv4.icmp_ignore_bogus_error_responses": "1",
    "net.ipv4.tcp_syncookies": "1",
    "net.ipv4.tcp_timestamps": "0",
    "net.ipv6.conf.all.accept_redirects": "0",
    "net.ipv6.conf.default.accept_redirects": "0",
    "net.ipv6.conf.all.accept_source_route": "0",
    "net.ipv6.conf.default.accept_source_route": "0",
}


def blackhole(lab_range: str) -> None:
    """In the root namespace, before any lab address exists: nothing can leave towards the lab range."""
    run(["ip", "route", "replace", "blackhole", lab_range])


def remove_blackhole(lab_range: str) -> None:
    run(["ip", "route", "del", "blackhole", lab_range], check=False)


def has_blackhole(lab_range: str) -> bool:
    out = run(["ip", "route", "show", "type", "blackhole"], check=False).stdout
    return any(line.split()[1:2] == [lab_range] for line in out.splitlines())


def exists(netns: str) -> bool:
    return (NETNS_RUN / netns).exists()


def lab_namespaces(prefix: str) -> list[str]:
    if not NETNS_RUN.is_dir():
        return []
    return sorted(p.name for p in NETNS_RUN.iterdir() if p.name.startswith(prefix))


def make_switch(netns: str) -> None:
    run(["ip", "netns", "add", netns])
    run(["ip", "-n", netns, "link", "set", "lo", "up"])
    run(["ip", "-n", netns, "link", "add", BRIDGE, "type", "bridge"])
    run(["ip", "-n", netns, "link", "set", BRIDGE, "up"])


def attach(switch: str, netns: str, port: str, address: str, prefixlen: int) -> None:
    """A namespace with one interface (eth0, ADDR/prefix) plugged into the lab bridge via port `port`."""
    run(["ip", "netns", "add", netns])
    run(["ip", "-n", netns, "link", "set", "lo", "up"])
    # Created directly in their namespaces: the veth pair never appears in the root namespace.
    run(["ip", "link", "add", port, "netns", switch, "type", "veth", "peer", "name", "eth0", "netns", netns])
    run(["ip", "-n", switch, "link", "set", port, "master", BRIDGE, "up"])
    run(["ip", "-n", netns, "addr", "add", f"{address}/{prefixlen}", "dev", "eth0"])
    run(["ip", "-n", netns, "link", "set", "eth0", "up"])


def set_sysctls(netns: str, values: dict[str, str] = HOST_SYSCTLS) -> None:
    args = [f"{k}={v}" for k, v in values.items()]
    run(["ip", "netns", "exec", netns, "sysctl", "-q", "-w", *args])


def delete(netns: str) -> None:
    run(["ip", "netns", "del", netns], check=False)
    path = NETNS_RUN / netns
    if path.exists():  # a half-made namespace: the bind mount may be gone and the file left
        run(["umount", "-l", str(path)], check=False)
        path.unlink(missing_ok=True)


def pids(netns: str) -> list[int]:
    out = run(["ip", "netns", "pids", netns], check=False).stdout
    return [int(p) for p in out.split()]


def write_name_files(netns: str, hosts_text: str) -> None:
    """/etc/netns/<ns>/{hosts,resolv.conf}: what `ip netns exec` binds over /etc for the lab's clients.
    An empty resolv.conf: no DNS server is reachable from the lab, and none is tried."""
    folder = ETC_NETNS / netns
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hosts").write_text(hosts_text)
    (folder / "resolv.conf").write_text("")


def remove_name_files(netns: str) -> None:
    shutil.rmtree(ETC_NETNS / netns, ignore_errors=True)
