"""`lab up`, `lab down`, `lab status`: build the federation of a stack on this machine, and remove it."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from embassy.errors import UserError
from embassy.lab import hosts as hostlib
from embassy.lab import image, mirror, network, pki, site_inventory, syslog, system, vaults
from embassy.lab.state import (
    DOMAIN,
    MIRROR_PORT,
    SSH_USER,
    SYSLOG_PORT,
    VAULT_PORT,
    HostState,
    LabState,
    Phase,
    Proc,
    Role,
    VaultState,
    cgroup_name,
    controller_netns,
    host_netns,
    lab_dir,
    lab_range,
    load_state,
    netns_prefix,
    resolve_id,
    switch_netns,
    vault_netns,
)
from embassy.lab.system import LabError, alive, locked, require_root, require_tools, run, start_time, stop
from embassy.model import Deployment

Say = Callable[[str], None]
MAX_EMBASSIES = 20  # addresses .20-.39 for enclaves, .40-.59 for vaults
WEED_GRACE = 10.0  # SeaweedFS shutdown hung in 2 of 6 runs: SIGKILL after this (notes/dataplane.md)


def _quiet(_: str) -> None:
    pass


# --------------------------------------------------------------------------- the plan of a lab


def plan(dep: Deployment, lab_id: int) -> LabState:
    """Every name, address and path of the lab of `dep`, derived from the lab id alone."""
    if len(dep.embassies) > MAX_EMBASSIES:
        raise UserError(f"the lab holds at most {MAX_EMBASSIES} embassies, stack '{dep.stack}' has {len(dep.embassies)}",
                        "rehearse with a smaller stack")
    net = lab_range(lab_id)
    folder = lab_dir(lab_id)

    def addr(n: int) -> str:
        return str(net.network_address + n)

    group = cgroup_name(lab_id)

    def host(name: str, role: Role, n: int, embassy: str | None = None, mode: str | None = None) -> HostState:
        d = folder / "hosts" / name
        return HostState(name=name, fqdn=f"{name}.{DOMAIN}", role=role, embassy=embassy, mode=mode, address=addr(n),
                         netns=host_netns(lab_id, name), machine=f"emb{lab_id}-{name}", root_dir=str(d / "root"),
                         upper_dir=str(d / "upper"), work_dir=str(d / "work"), cgroup=f"{group}/{name}",
                         console_log=str(d / "console.log"))

    ca = folder / "pki" / "ca.crt"
    hosts = [host("home", Role.HOME, 10)]
    vault_list = []
    for i, emb in enumerate(dep.embassies):
        hosts.append(host(f"enclave-{emb.name}", Role.EMBASSY, 20 + i, emb.name, emb.mode.value))
        v = folder / "vaults" / emb.name
        dns = f"vault-{emb.name}.{DOMAIN}"
        vault_list.append(VaultState(
            embassy=emb.name, dns_name=dns, address=addr(40 + i), netns=vault_netns(lab_id, emb.name),
            endpoint=f"https://{dns}:{VAULT_PORT}", bucket=f"{dep.stack}-{emb.name}-vault", retention_days=emb.retention_days,
            ca_file=str(ca), agent_credentials=str(v / "agent.json"), admin_credentials=str(v / "admin.json"),
            reader_credentials=str(v / "reader.json"),
            data_dir=str(v / "data"), log_file=str(v / "weed.log")))
    ctl = addr(2)
    return LabState(
        lab_id=lab_id, stack=dep.stack, range=str(net), dir=str(folder), switch_netns=switch_netns(lab_id),
        controller_netns=controller_netns(lab_id), controller_address=ctl, mirror_url=f"http://{ctl}:{MIRROR_PORT}",
        ssh_user=SSH_USER, ssh_key=str(folder / "ssh" / "id_ed25519"), ssh_known_hosts=str(folder / "ssh" / "known_hosts"),
        ssh_config=str(folder / "ssh" / "config"), ca_file=str(ca), hosts=hosts, vaults=vault_list,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), suite=image.lab_suite(dep.debian_release))


def hosts_file(lab: LabState) -> str:
    """/etc/hosts of every lab host and of the controller: every lab name, vaults included."""
    lines = ["127.0.0.1\tlocalhost", f"{lab.controller_address}\tcontroller.{DOMAIN} controller mirror.{DOMAIN} mirror"]
    lines += [f"{h.address}\t{h.fqdn} {h.name}" for h in lab.hosts]
    lines += [f"{v.address}\t{v.dns_name} {v.dns_name.split('.')[0]}" for v in lab.vaults]
    return "\n".join(lines) + "\n"


def ssh_config(lab: LabState) -> str:
    return (f"Host *\n  User {lab.ssh_user}\n  Port {lab.ssh_port}\n  IdentityFile {lab.ssh_key}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {lab.ssh_known_hosts}\n  StrictHostKeyChecking yes\n  GlobalKnownHostsFile /dev/null\n"
            "  PasswordAuthentication no\n  BatchMode yes\n  ConnectTimeout 5\n  LogLevel ERROR\n")


def _lock(lab_id: int) -> Path:
    return lab_dir(lab_id).parent / f"lab-{lab_id}.lock"


def leftovers(lab_id: int) -> list[str]:
    """What of lab `lab_id` exists on this machine (namespaces, route, mounts, cgroups, folder)."""
    found = [f"namespace {ns}" for ns in network.lab_namespaces(netns_prefix(lab_id))]
    if network.has_blackhole(str(lab_range(lab_id))):
        found.append(f"route blackhole {lab_range(lab_id)}")
    found += [f"mount {m}" for m in _mounts_under(lab_dir(lab_id))]
    found += [f"cgroup {d}" for d in hostlib.cgroup_dirs(cgroup_name(lab_id)) if d.exists()]
    found += [f"folder {p}" for p in (network.ETC_NETNS.glob(f"{netns_prefix(lab_id)}*") if network.ETC_NETNS.is_dir() else [])]
    if lab_dir(lab_id).exists():
        found.append(f"folder {lab_dir(lab_id)}")
    return found


def _mounts_under(folder: Path) -> list[str]:
    prefix = os.path.realpath(folder) + "/"
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    return sorted({p for p in points if p.startswith(prefix)}, key=len, reverse=True)


def is_up(lab: LabState) -> bool:
    procs = [lab.mirror, lab.syslog] + [h.nspawn for h in lab.hosts] + [v.weed for v in lab.vaults]
    return lab.phase is Phase.UP and all(alive(p) for p in procs)


# --------------------------------------------------------------------------- up


def up(dep: Deployment, lab_id: int | None = None, say: Say = _quiet) -> tuple[LabState, bool]:
    """Build the lab of `dep`. Returns (state, built): built is False when it was already up."""
    require_root()
    require_tools()
    lab_id = resolve_id(lab_id)
    with locked(_lock(lab_id)):
        current = load_state(lab_id)
        if current is not None:
            if current.stack != dep.stack:
                raise UserError(f"lab {lab_id} runs stack '{current.stack}', not '{dep.stack}'",
                                f"run `embassy lab down --stack {current.stack}` first, or use another EMBASSY_LAB_ID")
            if is_up(current):
                site_inventory.write(current)  # paths only, cheap: a lab built by an older embassy gets today's
                return current, False
            raise LabError(f"lab {lab_id} is half-built or broken (a previous `lab up` failed, or a process died)",
                           f"run `embassy lab down --stack {dep.stack}`, then `embassy lab up --stack {dep.stack}`")
        rest = leftovers(lab_id)
        if rest:
            raise LabError(f"lab {lab_id} left things behind: {', '.join(rest)}",
                           f"run `embassy lab down --stack {dep.stack}` (EMBASSY_LAB_ID={lab_id}) to remove them")
        lab = plan(dep, lab_id)
        Path(lab.dir).mkdir(parents=True, mode=0o700)
        lab.save()  # from here on, `lab down` knows this lab even if `up` fails half-way
        _build(lab, say)
        lab.phase = Phase.UP
        lab.save()
        site_inventory.write(lab)
        return lab, True


def _build(lab: LabState, say: Say) -> None:
    prefixlen = int(lab.range.split("/")[1])
    say(f"route blackhole {lab.range} in the root namespace (before any lab address exists)")
    network.blackhole(lab.range)

    say(f"image: Debian {lab.suite} + systemd + sshd (cached)")
    image_root = image.ensure_image(say, lab.suite)
    lab.image = str(image_root)
    say("mirror: the packages the deploys install (cached)")
    repo = mirror.ensure_mirror(image_root, say)
    lab.save()

    say("lab CA, controller SSH key")
    folder = Path(lab.dir)
    ca_crt, _ = pki.make_ca(folder / "pki", lab.lab_id)
    assert str(ca_crt) == lab.ca_file
    Path(lab.ssh_key).parent.mkdir(mode=0o700, exist_ok=True)
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"controller@embassy-lab-{lab.lab_id}", "-f", lab.ssh_key])
    public_key = Path(lab.ssh_key + ".pub").read_text()
    Path(lab.ssh_config).write_text(ssh_config(lab))

    system.ensure_inotify_instances(say)
    say(f"network: bridge in {lab.switch_netns}, controller {lab.controller_address}, "
        f"{len(lab.hosts)} hosts, {len(lab.vaults)} vaults")
    network.make_switch(lab.switch_netns)
    names = hosts_file(lab)
    network.attach(lab.switch_netns, lab.controller_netns, f"l{lab.lab_id}c", lab.controller_address, prefixlen)
    network.write_name_files(lab.controller_netns, names)
    for i, h in enumerate(lab.hosts):
        network.attach(lab.switch_netns, h.netns, f"l{lab.lab_id}h{i}", h.address, prefixlen)
        network.set_sysctls(h.netns)
    for i, v in enumerate(lab.vaults):
        network.attach(lab.switch_netns, v.netns, f"l{lab.lab_id}v{i}", v.address, prefixlen)
        network.write_name_files(v.netns, names)

    say(f"mirror: serving {repo} on {lab.mirror_url} (controller namespace)")
    lab.mirror = mirror.serve(repo, lab.controller_netns, lab.controller_address, folder / "mirror.log")
    lab.mirror_repo = str(repo)
    lab.save()

    lab.syslog_dir = str(folder / "syslog")
    say(f"syslog: collector on {lab.syslog_target} (controller namespace), one log per host in {lab.syslog_dir}")
    lab.syslog = syslog.start(lab.controller_netns, lab.controller_address, SYSLOG_PORT, Path(lab.syslog_dir),
                              folder / "syslog.log")
    lab.save()

    for v in lab.vaults:
        say(f"vault {v.embassy}: SeaweedFS on {v.endpoint} ({v.address})")
        vaults.configure(v, lab)
        v.weed = vaults.start(v)
        lab.save()

    known = []
    for h in lab.hosts:
        say(f"host {h.name}: overlay, identity, systemd-nspawn --boot ({h.address})")
        hostlib.mount_overlay(image_root, h)
        known.append(hostlib.personalise(lab, h, names, public_key))
        Path(lab.ssh_known_hosts).write_text("".join(known))
        h.nspawn = hostlib.start(h, cgroup_name(lab.lab_id))
        lab.save()

    for v in lab.vaults:
        vaults.wait_ready(lab, v)
    say(f"vaults: buckets with Object Lock COMPLIANCE ({', '.join(v.bucket for v in lab.vaults)})")
    vaults.create_buckets(lab)
    for h in lab.hosts:
        word = hostlib.wait_ready(lab, h)
        if word != "running":
            failed = run(lab.ssh_argv(h.name, "systemctl", "--failed", "--no-legend", "--plain"), check=False).stdout.strip()
            raise LabError(f"host {h.name} booted {word}: {failed}", f"see {h.console_log}")
        say(f"host {h.name}: ssh ok, systemd {word}")


def mirror_outdated(lab: LabState) -> bool:
    """True when mirror-packages.txt (or the image) changed since the lab's mirror was built."""
    served = served_repo(lab)
    if not lab.image or not served:
        return False
    return Path(served).parent.name != f"mirror-{mirror.mirror_key(Path(lab.image))}"


def served_repo(lab: LabState) -> str:
    """The folder the lab's mirror serves (read from the server's command line for labs made before
    the state recorded it)."""
    if lab.mirror_repo:
        return lab.mirror_repo
    if lab.mirror is not None and alive(lab.mirror):
        argv = Path(f"/proc/{lab.mirror.pid}/cmdline").read_bytes().decode().split("\0")
        if "--directory" in argv:
            return argv[argv.index("--directory") + 1]
    return ""


def refresh_mirror(lab_id: int | None = None, stack: str | None = None, say: Say = _quiet) -> bool:
    """Rebuild the mirror of a running lab after mirror-packages.txt changed, and serve the new one.
    Returns False when it was up to date (nothing changed)."""
    require_root()
    lab_id = resolve_id(lab_id)
    with locked(_lock(lab_id)):
        lab = load_state(lab_id)
        if lab is None or not is_up(lab) or (stack is not None and lab.stack != stack):
            raise UserError(f"lab {lab_id} is not up" + (f" with stack '{stack}'" if stack else ""),
                            f"run `embassy lab up --stack {stack or 'rehearsal'}` first")
        if not mirror_outdated(lab):
            return False
        repo = mirror.ensure_mirror(Path(lab.image), say)
        say(f"mirror: serving {repo} on {lab.mirror_url}")
        stop(lab.mirror, grace=5)
        lab.mirror = mirror.serve(repo, lab.controller_netns, lab.controller_address, Path(lab.dir) / "mirror.log")
        lab.mirror_repo = str(repo)
        lab.save()
        return True


# --------------------------------------------------------------------------- down


def down(lab_id: int | None = None, say: Say = _quiet) -> list[str]:
    """Remove everything of lab `lab_id`, built or half-built; returns what was removed."""
    require_root()
    lab_id = resolve_id(lab_id)
    removed: list[str] = []
    with locked(_lock(lab_id)):
        lab = load_state(lab_id)
        group = cgroup_name(lab_id)
        if lab is not None:
            # Containers and vaults: one SIGTERM each, all first, then wait for each (they stop in parallel). SIGTERM
            # powers a container off cleanly; a second one would make systemd-nspawn kill it instead.
            running = [(f"container {h.name}", h.nspawn, 15.0) for h in lab.hosts if alive(h.nspawn)]
            running += [(f"vault {v.embassy}", v.weed, WEED_GRACE) for v in lab.vaults if alive(v.weed)]
            for _, proc, _ in running:
                assert proc is not None
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
            for what, proc, grace in running:
                assert proc is not None
                stop(proc, grace=grace, signalled=True)
                removed.append(f"{what} (pid {proc.pid})")
            if alive(lab.mirror):
                stop(lab.mirror, grace=5)
                removed.append("mirror server")
            if alive(lab.syslog):
                stop(lab.syslog, grace=5)
                removed.append("syslog collector")
        # Whatever still runs in the lab's cgroup folders was started by a lab container.
        removed += _kill_all(hostlib.cgroup_pids(group), "container process")
        # And whatever still runs in a lab namespace is a lab client (e.g. an ssh ControlMaster):
        # it would keep the namespace alive after its name is gone.
        prefix = netns_prefix(lab_id)
        in_ns = {pid for ns in network.lab_namespaces(prefix) for pid in network.pids(ns)}
        removed += _kill_all(in_ns, "process in a lab namespace")
        for m in _mounts_under(lab_dir(lab_id)):
            hostlib.umount(m)
            removed.append(f"mount {m}")
        for ns in network.lab_namespaces(prefix):
            network.delete(ns)
            removed.append(f"namespace {ns}")
        for folder in network.ETC_NETNS.glob(f"{prefix}*") if network.ETC_NETNS.is_dir() else []:
            shutil.rmtree(folder, ignore_errors=True)
        existing = [d for d in hostlib.cgroup_dirs(group) if d.exists()]
        hostlib.remove_cgroups(group)
        removed += [f"cgroup {d}" for d in existing]
        for leftover in Path("/run/systemd/nspawn").glob(f"*/emb{lab_id}-*"):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
        if network.has_blackhole(str(lab_range(lab_id))):
            network.remove_blackhole(str(lab_range(lab_id)))
            removed.append(f"route blackhole {lab_range(lab_id)}")
        still = _mounts_under(lab_dir(lab_id))
        if still:  # never delete a folder through a live mount
            raise LabError(f"mounts remain under {lab_dir(lab_id)}: {', '.join(still)}", "unmount them, then `lab down` again")
        if lab_dir(lab_id).exists():
            shutil.rmtree(lab_dir(lab_id))
            removed.append(f"folder {lab_dir(lab_id)}")
    rest = leftovers(lab_id)
    if rest:
        raise LabError(f"lab {lab_id} not fully removed: {', '.join(rest)}",
                       "run `embassy lab down` again; see the messages above")
    return removed


def _kill_all(pids: set[int], what: str) -> list[str]:
    pids.discard(os.getpid())
    done = []
    for pid in sorted(pids):
        st = start_time(pid)
        if st is None:
            continue
        stop(Proc(pid=pid, start_time=st), grace=5)  # by (pid, start time): never a recycled PID
        done.append(f"{what} {pid}")
    return done


# --------------------------------------------------------------------------- status


def memory_kib(pids: set[int], field: str = "Rss") -> int:
    """Sum of a /proc/<pid>/smaps_rollup field: Rss counts shared pages once per process, Pss shares them out."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


# systemctl's word, a separator, then os-release(5) as the host reads it (/etc/os-release, else /usr/lib/os-release).
OS_RELEASE_MARK = "--- os-release ---"
STATUS_COMMAND = (f"systemctl is-system-running; echo '{OS_RELEASE_MARK}'; "
                  "cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release")


def split_status(stdout: str) -> tuple[str, str | None]:
    """(systemd's word, the host's PRETTY_NAME or None) from STATUS_COMMAND's output."""
    head, sep, release = stdout.partition(OS_RELEASE_MARK)
    word = head.strip() or "unknown"
    pretty = image.os_release_fields(release).get("PRETTY_NAME") if sep else None
    return word, pretty or None


def status(lab_id: int | None = None, stack: str | None = None) -> dict[str, Any]:
    lab_id = resolve_id(lab_id)
    lab = load_state(lab_id)
    if lab is None or (stack is not None and lab.stack != stack):
        return {"up": False, "lab_id": lab_id, "stack": lab.stack if lab else None, "hosts": [], "vaults": [],
                "leftovers": leftovers(lab_id) if os.geteuid() == 0 else []}
    hosts_out = []
    for h in lab.hosts:
        ssh_ok, word = False, "unreachable"
        pids = hostlib.cgroup_pids(cgroup_name(lab_id), h.name)
        os_name: str | None = None
        if alive(h.nspawn):
            # One connection for both answers: systemd's state, then the host's own os-release.
            res = subprocess.run(lab.ssh_argv(h.name, STATUS_COMMAND), capture_output=True, text=True, timeout=30)
            ssh_ok = res.returncode != 255  # 255: ssh itself failed; otherwise the remote command ran
            word, os_name = split_status(res.stdout) if ssh_ok else ("unreachable", None)
        hosts_out.append({"name": h.name, "address": h.address, "role": h.role.value, "embassy": h.embassy,
                          "mode": h.mode, "ssh": ssh_ok, "systemd": word, "os": os_name,
                          "processes": len(pids), "rss_kib": memory_kib(pids), "pss_kib": memory_kib(pids, "Pss")})
    vaults_out = [{"embassy": v.embassy, "endpoint": v.endpoint, "address": v.address, "bucket": v.bucket,
                   "reachable": alive(v.weed) and vaults.reachable(lab, v)} for v in lab.vaults]
    return {"up": is_up(lab), "lab_id": lab_id, "stack": lab.stack, "phase": lab.phase.value, "range": lab.range,
            "controller_netns": lab.controller_netns, "mirror_url": lab.mirror_url,
            "syslog_target": lab.syslog_target, "state_file": str(Path(lab.dir) / "state.json"),
            "site_inventory": str(site_inventory.inventory_path(lab)),
            "hosts": hosts_out, "vaults": vaults_out}

