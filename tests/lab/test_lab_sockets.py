"""The network rule, checked on the live lab: every socket of every lab process and namespace stays
inside the lab range or loopback, and nothing of the lab listens on 0.0.0.0 in the root namespace."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from pathlib import Path

from embassy.lab import network
from embassy.lab.hosts import cgroup_pids
from embassy.lab.state import LabState, cgroup_name, netns_prefix

Addr = ipaddress.IPv4Address | ipaddress.IPv6Address


def _addr(text: str) -> Addr | None:
    """The address of an `ss` column such as 10.87.5.2:22, [::ffff:10.0.0.1]:80, *:22, 127.0.0.53%lo:53."""
    host = text.rsplit(":", 1)[0].strip("[]").split("%")[0]
    if host in ("*", ""):
        return None  # any address: only meaningful for a listening socket, judged by its namespace
    addr = ipaddress.ip_address(host)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr


def _allowed_peer(addr: Addr | None, lab_range: ipaddress.IPv4Network) -> bool:
    if addr is None or addr.is_unspecified or addr.is_loopback:
        return True
    return isinstance(addr, ipaddress.IPv4Address) and addr in lab_range


def _ss(prefix: list[str]) -> list[tuple[str, str, str, str, str]]:
    """(netid, state, local, peer, process) of every TCP and UDP socket, via `ss`."""
    out = subprocess.run([*prefix, "ss", "-tuanpH"], capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split()
        rows.append((parts[0], parts[1], parts[4], parts[5], " ".join(parts[6:])))
    return rows


def _proc_net(pid: int) -> list[tuple[str, Addr, Addr]]:
    """(state, local, remote) of the TCP/UDP sockets in /proc/<pid>/net: the process's own namespace."""
    rows = []
    for table, family in (("tcp", 4), ("udp", 4), ("tcp6", 6), ("udp6", 6)):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            rows.append((fields[3], _hex_addr(fields[1], family), _hex_addr(fields[2], family)))
    return rows


def _hex_addr(text: str, family: int) -> Addr:
    raw = bytes.fromhex(text.split(":")[0])
    # /proc/net/tcp prints each 32-bit word in host (little-endian) order.
    fixed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    addr = ipaddress.ip_address(fixed) if family == 4 else ipaddress.IPv6Address(fixed)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr


def _lab_pids(lab: LabState) -> set[int]:
    recorded = [lab.mirror] + [h.nspawn for h in lab.hosts] + [v.weed for v in lab.vaults]
    pids = {p.pid for p in recorded if p is not None}
    pids |= cgroup_pids(cgroup_name(lab.lab_id))
    for ns in network.lab_namespaces(netns_prefix(lab.lab_id)):
        pids |= set(network.pids(ns))
    # and every descendant of those
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    todo = list(pids)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in pids:
                pids.add(child)
                todo.append(child)
    return {p for p in pids if Path(f"/proc/{p}").exists()}


def test_no_lab_socket_leaves_the_lab(lab: LabState) -> None:
    lab_range = ipaddress.IPv4Network(lab.range)
    vault = lab.vaults[0]
    # Hold a connection open from the controller to a vault while looking, so that the check sees
    # established lab traffic (and proves it can see it).
    holder = subprocess.Popen(lab.in_controller(["python3", "-c",
                                                  "import socket,sys,time; s=socket.create_connection((sys.argv[1], 8443)); "
                                                  "print('ok', flush=True); time.sleep(60)", vault.address]),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        problems: list[str] = []
        established = 0

        # 1. `ss` in every namespace of the lab.
        namespaces = network.lab_namespaces(netns_prefix(lab.lab_id))
        assert {lab.controller_netns, lab.switch_netns, *(h.netns for h in lab.hosts), *(v.netns for v in lab.vaults)} \
            <= set(namespaces)
        for ns in namespaces:
            for netid, state, local, peer, proc in _ss(["ip", "netns", "exec", ns]):
                if not _allowed_peer(_addr(local), lab_range):
                    problems.append(f"{ns}: {netid} {state} bound to {local} ({proc})")
                if not _allowed_peer(_addr(peer), lab_range):
                    problems.append(f"{ns}: {netid} {state} {local} -> {peer} ({proc})")
                established += state == "ESTAB" and _addr(peer) in lab_range

        # 2. /proc/<pid>/net of every lab process that lives in a lab namespace; the others (the
        # nspawn supervisors, in the root namespace) must hold no internet socket at all.
        root_ns = os.stat("/proc/self/ns/net").st_ino
        lab_ns = {os.stat(f"/run/netns/{ns}").st_ino for ns in namespaces}
        pids = _lab_pids(lab)
        in_root: set[int] = set()
        for pid in pids:
            try:
                ns_ino = os.stat(f"/proc/{pid}/ns/net").st_ino
            except OSError:
                continue
            if ns_ino == root_ns:
                in_root.add(pid)
                continue
            assert ns_ino in lab_ns, f"pid {pid} is in a namespace the lab did not make"
            for state, local, remote in _proc_net(pid):
                if not _allowed_peer(local, lab_range) or not _allowed_peer(remote, lab_range):
                    problems.append(f"pid {pid}: {local} -> {remote} (state {state})")

        # 3. the root namespace, filtered by the lab's PIDs.
        for netid, state, local, peer, proc in _ss([]):
            owners = {int(p.split(",")[0]) for p in proc.split("pid=")[1:]}
            if owners & pids:
                problems.append(f"root namespace: lab process {sorted(owners & pids)} has {netid} {state} {local} -> {peer}")
            elif _addr(local) is not None and _addr(local) in lab_range:
                problems.append(f"root namespace: a lab address is bound there: {local} ({proc})")

        assert not problems, "\n".join(problems)
        assert established >= 2, "the check saw no established lab connection: it would be vacuous"
        assert {h.nspawn.pid for h in lab.hosts if h.nspawn} <= in_root  # supervisors found and checked
    finally:
        holder.kill()
        holder.wait()

