"""Lab hosts: one systemd-nspawn container per host, booting real systemd on an overlay of the image."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from pathlib import Path

from embassy.lab import mirror
from embassy.lab.state import HostState, LabState, Proc
from embassy.lab.system import LabError, proc_of, run, write_private

CGROUP_ROOT = Path("/sys/fs/cgroup")
# Hybrid cgroups (v1 + v2) on these machines: a container needs its own folder in both named
# hierarchies, or two containers share the same payload/supervisor cgroups.
CGROUP_HIERARCHIES = ("systemd", "unified")


def cgroup_dirs(group: str, host: str | None = None) -> list[Path]:
    dirs = [CGROUP_ROOT / h / group for h in CGROUP_HIERARCHIES if (CGROUP_ROOT / h).is_dir()]
    return [d / host for d in dirs] if host else dirs


# Folders that get their own file system on a host, as on a server partitioned for it: logs, spools
# and registers cannot fill the root file system, and home folders carry no devices or set-uid files.
SEPARATE_MOUNTS = ("var", "home")


def mount_overlay(image_root: Path, host: HostState) -> None:
    """The host's root: an overlay of the image, with /var and /home as overlays of their own
    (each its own writable layer beside the root's), mounted nodev,nosuid inside the root."""
    for d in (host.upper_dir, host.work_dir, host.root_dir):
        Path(d).mkdir(parents=True, exist_ok=True)
    run(["mount", "-t", "overlay", f"embassy-{host.machine}", "-o",
         f"lowerdir={image_root},upperdir={host.upper_dir},workdir={host.work_dir}", host.root_dir])
    for sub in SEPARATE_MOUNTS:
        upper, work = f"{host.upper_dir}-{sub}", f"{host.work_dir}-{sub}"
        for d in (upper, work):
            Path(d).mkdir(parents=True, exist_ok=True)
        run(["mount", "-t", "overlay", f"embassy-{host.machine}-{sub}", "-o",
             f"nodev,nosuid,lowerdir={image_root / sub},upperdir={upper},workdir={work}", f"{host.root_dir}/{sub}"])


def is_mounted(path: str) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as fh:
        return any(line.split()[4] == target for line in fh)


def umount(path: str) -> None:
    if is_mounted(path):
        run(["umount", path], check=False)
        if is_mounted(path):
            run(["umount", "-l", path], check=False)


def _owner(root: Path, user: str) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        parts = line.split(":")
        if parts[0] == user:
            return int(parts[2]), int(parts[3])
    raise LabError(f"user {user} missing from the lab image", "remove /var/cache/embassy/image-* and run `lab up` again")


def personalise(lab: LabState, host: HostState, hosts_text: str, public_key: str) -> str:
    """Write the host's own identity into its overlay: name, hosts, machine id, SSH host key,
    authorized_keys, apt source (the lab mirror). Returns the known_hosts line for the controller."""
    root = Path(host.root_dir)
    (root / "etc/hostname").write_text(host.name + "\n")
    (root / "etc/hosts").write_text(hosts_text)
    (root / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
    (root / "etc/resolv.conf").write_text("")
    (root / "etc/apt/sources.list").write_text(mirror.apt_sources(lab.mirror_url))
    # The platform's choice of SSH port, before first boot (ssh_hardening owns every other setting).
    (root / "etc/ssh/sshd_config.d/05-embassy-lab-port.conf").write_text(
        f"# Written by `embassy lab up`: the lab's SSH port (lab state `ssh_port`).\nPort {lab.ssh_port}\n")
    key = root / "etc/ssh/ssh_host_ed25519_key"
    key.unlink(missing_ok=True)
    Path(f"{key}.pub").unlink(missing_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{host.name}", "-f", str(key)])
    uid, gid = _owner(root, lab.ssh_user)
    ssh_dir = root / "home" / lab.ssh_user / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    os.chown(ssh_dir, uid, gid)
    auth = ssh_dir / "authorized_keys"
    write_private(auth, public_key)
    os.chown(auth, uid, gid)
    host_pub = Path(f"{key}.pub").read_text().split()
    names = ",".join(f"[{name}]:{lab.ssh_port}" if lab.ssh_port != 22 else name
                     for name in (host.name, host.fqdn, host.address))
    return f"{names} {host_pub[0]} {host_pub[1]}\n"


def start(host: HostState, group: str) -> Proc:
    """Boot the container in its namespace and its own cgroups. The wrapper shell puts itself into
    the host's cgroup folders, then execs nspawn (same PID), so nothing else is ever moved."""
    procs = []
    for d in cgroup_dirs(group, host.name):
        d.mkdir(parents=True, exist_ok=True)
        procs.append(str(d / "cgroup.procs"))
    wrapper = "".join(f'echo $$ > "{p}" && ' for p in procs) + 'exec "$@"'
    argv = ["systemd-nspawn", "-q", "-D", host.root_dir, "--boot", "--register=no", "--keep-unit",
            "-M", host.machine, f"--hostname={host.name}", f"--network-namespace-path=/run/netns/{host.netns}",
            "--console=read-only", "--resolv-conf=off", "--timezone=off", "--link-journal=no",
            # Process accounting (acct) must really run for the hardening baseline (notes/lynis.md);
            # CAP_NET_ADMIN (in the host's own namespace only) lets the firewall role load nftables rules.
            "--capability=CAP_SYS_PACCT,CAP_NET_ADMIN"]
    with open(host.console_log, "ab") as out:
        child = subprocess.Popen(["sh", "-c", wrapper, "sh", *argv], stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    time.sleep(0.05)
    if child.poll() is not None:
        raise LabError(f"container {host.name} did not start (exit {child.returncode})", f"see {host.console_log}")
    return proc_of(child.pid)


def wait_ready(lab: LabState, host: HostState, timeout: float = 90.0) -> str:
    """Wait until the host answers SSH and systemd finished booting; returns is-system-running's word."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        res = run(lab.ssh_argv(host.name, "-o", "ConnectTimeout=2", "systemctl", "is-system-running", "--wait"),
                  check=False, timeout=timeout)
        word = res.stdout.strip()
        if word in ("running", "degraded"):
            return word
        last = (res.stderr or res.stdout).strip()
        time.sleep(0.2)
    raise LabError(f"host {host.name} not ready after {timeout:.0f}s: {last}", f"see {host.console_log}")


def cgroup_pids(group: str, host: str | None = None) -> set[int]:
    """Every process in the lab's cgroup folders (the containers and all they started)."""
    found: set[int] = set()
    for base in cgroup_dirs(group, host):
        if not base.is_dir():
            continue
        # os.walk skips folders that vanish while it walks (sessions come and go in the containers).
        for folder, _, files in os.walk(base):
            if "cgroup.procs" in files:
                try:
                    found.update(int(p) for p in Path(folder, "cgroup.procs").read_text().split())
                except OSError:
                    continue
    return found


def remove_cgroups(group: str) -> None:
    """rmdir the lab's cgroup folders, deepest first (a cgroup folder is removed with rmdir only)."""
    for base in cgroup_dirs(group):
        if not base.is_dir():
            continue
        for folder, _, _ in sorted(os.walk(base), key=lambda w: len(Path(w[0]).parts), reverse=True):
            with contextlib.suppress(OSError):
                Path(folder).rmdir()
        with contextlib.suppress(OSError):
            base.rmdir()
