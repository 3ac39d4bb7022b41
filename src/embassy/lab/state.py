"""The lab's state: every name, address, key and endpoint of one lab, saved as JSON.

One machine can run several labs at once (one per helper, CI, a test session). Each has an integer
id (env EMBASSY_LAB_ID, default 0) from which every name derives: namespaces, bridge ports, the
/24 range, the state folder, cgroup folders, overlay folders. The state file is written while the
lab is being built (PIDs recorded as soon as they exist), so that `lab down` can remove a half-built
lab too. Clients of lab addresses (ssh, pyinfra, ansible-runner, boto3 scripts) must run inside the
controller namespace: `in_controller(argv)`.
"""

from __future__ import annotations

import ipaddress
import json
import os
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field

from embassy.errors import UserError
from embassy.hostroles import Role  # re-exported: lab hosts, inventories/lab.py

LAB_ID_ENV = "EMBASSY_LAB_ID"
LAB_ROOT_ENV = "EMBASSY_LAB_ROOT"  # where lab state folders live; default /var/lib/embassy
DEFAULT_LAB_ROOT = Path("/var/lib/embassy")
MAX_LAB_ID = 99
DOMAIN = "lab.internal"  # `.internal` is reserved for private use: it can never resolve outside
SSH_USER = "admin"  # as on Debian's cloud images; root logins are left to the hardening to forbid
# Lab hosts' sshd listens here from first boot (not 22: off the port every scanner tries first);
# every lab client (ssh_config, known_hosts, pyinfra, ansible, the firewall role) follows the state.
SSH_PORT = 2222
VAULT_PORT = 8443
MIRROR_PORT = 8080
SYSLOG_PORT = 514  # plain TCP syslog, as rsyslog forwards it


# --------------------------------------------------------------------------- names from the lab id


def lab_id_from_env() -> int:
    raw = os.environ.get(LAB_ID_ENV, "0")
    try:
        lab_id = int(raw)
    except ValueError:
        raise UserError(f"{LAB_ID_ENV}={raw!r} is not an integer",
                        f"set {LAB_ID_ENV} to a lab id between 0 and {MAX_LAB_ID}") from None
    if not 0 <= lab_id <= MAX_LAB_ID:
        raise UserError(f"{LAB_ID_ENV}={lab_id} is out of range",
                        f"set {LAB_ID_ENV} to a lab id between 0 and {MAX_LAB_ID}")
    return lab_id


def resolve_id(lab_id: int | None) -> int:
    return lab_id_from_env() if lab_id is None else lab_id


def lab_range(lab_id: int) -> ipaddress.IPv4Network:
    """The lab's private /24: 10.87.<id>.0/24 (blackholed in the root namespace)."""
    return ipaddress.IPv4Network(f"10.87.{lab_id}.0/24")


def netns_prefix(lab_id: int) -> str:
    return f"emb{lab_id}-"


def controller_netns(lab_id: int | None = None) -> str:
    return f"{netns_prefix(resolve_id(lab_id))}ctl"


def switch_netns(lab_id: int) -> str:
    """The namespace holding the lab's bridge (so nothing attaches to the root namespace)."""
    return f"{netns_prefix(lab_id)}sw"


def host_netns(lab_id: int, host: str) -> str:
    return f"{netns_prefix(lab_id)}{host}"


def vault_netns(lab_id: int, embassy: str) -> str:
    return f"{netns_prefix(lab_id)}vault-{embassy}"


def lab_dir(lab_id: int | None = None) -> Path:
    root = Path(os.environ.get(LAB_ROOT_ENV) or DEFAULT_LAB_ROOT)
    return root / f"lab-{resolve_id(lab_id)}"


def state_file(lab_id: int | None = None) -> Path:
    return lab_dir(lab_id) / "state.json"


def cgroup_name(lab_id: int) -> str:
    return f"embassy-lab{lab_id}"


def in_controller(argv: list[str], lab_id: int | None = None) -> list[str]:
    """`argv` prefixed so it runs in the lab's controller namespace (the only place lab clients run)."""
    return ["ip", "netns", "exec", controller_netns(lab_id), *argv]


# --------------------------------------------------------------------------- the state model


class Phase(StrEnum):
    BUILDING = "building"  # `lab up` is running or failed half-way: `lab down` cleans it
    UP = "up"


class Proc(BaseModel):
    """A process the lab started: PID plus its start time, so a recycled PID is never signalled."""

    pid: int
    start_time: int  # field 22 of /proc/<pid>/stat (clock ticks since boot)


class HostState(BaseModel):
    name: str  # short host name: `home`, `enclave-<embassy>`
    fqdn: str
    role: Role
    embassy: str | None = None  # the embassy this host serves (None for home)
    mode: str | None = None  # warm | cold for embassy hosts
    address: str
    netns: str
    machine: str  # systemd-nspawn machine name (unique on the machine: carries the lab id)
    root_dir: str  # the overlay mount the container boots from
    upper_dir: str
    work_dir: str
    cgroup: str  # folder name under /sys/fs/cgroup/{systemd,unified}
    nspawn: Proc | None = None
    console_log: str


class VaultState(BaseModel):
    embassy: str
    dns_name: str
    address: str
    netns: str
    endpoint: str  # https://<dns_name>:8443
    bucket: str
    retention_days: int
    ca_file: str
    agent_credentials: str  # JSON {"access_key_id", "secret_access_key"}, mode 0600, never in git
    admin_credentials: str
    # Read and List only: what verify and restore use (the stack's restore role on AWS)
    reader_credentials: str = ""
    data_dir: str
    log_file: str
    weed: Proc | None = None


class LabState(BaseModel):
    lab_id: int
    stack: str
    phase: Phase = Phase.BUILDING
    range: str
    dir: str
    switch_netns: str
    controller_netns: str
    controller_address: str
    mirror_url: str  # served from the controller namespace on the controller's address
    mirror: Proc | None = None
    mirror_repo: str = ""  # the cached folder being served (changes when mirror-packages.txt does)
    image: str = ""  # the cached read-only root the overlays sit on
    suite: str = "bookworm"  # the image's Debian release (the stack's debian_release, or EMBASSY_LAB_DEBIAN)
    syslog: Proc | None = None  # the central collector every host forwards its log to
    syslog_dir: str = ""  # one <host address>.log per host
    ssh_user: str = SSH_USER
    ssh_port: int = SSH_PORT
    ssh_key: str  # the controller's private key (0600)
    ssh_known_hosts: str
    ssh_config: str
    ca_file: str
    hosts: list[HostState] = Field(default_factory=list)
    vaults: list[VaultState] = Field(default_factory=list)
    created: str = ""

    def in_controller(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.controller_netns, *argv]

    @property
    def syslog_target(self) -> str:
        """host:port of the syslog collector, as the monitoring role takes it."""
        return f"{self.controller_address}:{SYSLOG_PORT}"

    def host(self, name: str) -> HostState:
        for host in self.hosts:
            if host.name == name or host.embassy == name:
                return host
        raise KeyError(name)

    def vault(self, embassy: str) -> VaultState:
        for vault in self.vaults:
            if vault.embassy == embassy:
                return vault
        raise KeyError(embassy)

    def ssh_argv(self, host: str, *command: str) -> list[str]:
        """An ssh command to a lab host, already wrapped to run in the controller namespace."""
        return self.in_controller(["ssh", "-F", self.ssh_config, host, *command])

    def save(self) -> None:
        path = Path(self.dir) / "state.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2) + "\n")
        tmp.replace(path)  # atomic: a reader never sees half a file


def load_state(lab_id: int | None = None) -> LabState | None:
    """The state of lab `lab_id` (default: EMBASSY_LAB_ID), or None when that lab does not exist."""
    path = state_file(lab_id)
    if not path.is_file():
        return None
    return LabState.model_validate(json.loads(path.read_text()))


def lab_state(stack: str, lab_id: int | None = None) -> LabState:
    """The state of the running lab of `stack`, or a UserError saying how to get one."""
    lab_id = resolve_id(lab_id)
    state = load_state(lab_id)
    if state is None:
        raise UserError(f"lab {lab_id} is not up", f"run `embassy lab up --stack {stack}` (as root, {LAB_ID_ENV}={lab_id})")
    if state.stack != stack:
        raise UserError(f"lab {lab_id} runs stack '{state.stack}', not '{stack}'",
                        f"use --stack {state.stack}, or another lab id ({LAB_ID_ENV}), "
                        f"or `embassy lab down --stack {state.stack}` first")
    if state.phase is not Phase.UP:
        raise UserError(f"lab {lab_id} is half-built (a previous `lab up` failed)",
                        f"run `embassy lab down --stack {stack}` then `embassy lab up --stack {stack}`")
    return state
