"""One notion of a target: where the stack's hosts are and how the controller reaches them.

Every operation (harden, deploy, and next replicate, verify, restore, drill) takes a `Target` from
`choosetarget.target_for(kind, dep)` instead of branching on lab/aws itself. A target knows:
- its hosts: name, role (home/embassy), embassy name, mode (warm/cold), address;
- the pyinfra inventory that describes them (inventories/lab.py or inventories/aws.py) and the
  environment that inventory reads;
- how to run a client (pyinfra, ansible-runner, a probe) so that it can reach the hosts: in the lab,
  inside the controller's network namespace (lab addresses exist nowhere else); on AWS, as it is;
- how to run a shell command on one host: in the lab, SSH from the controller namespace; on AWS,
  SSH tunnelled through SSM Session Manager (the enclaves have no inbound SSH), as inventories/aws.py
  documents it;
- how Ansible connects (the connection variables of its inventory);
- each embassy's vault as the data plane reaches it (`vault(embassy)`: a vaultaccess.VaultAccess with endpoint,
  bucket, addressing, CA, the namespace its clients run in, and where each identity's credentials come from);
- home's manifest public key, the trust anchor of verify and restore (`manifest_public_key()`): the stack
  config's `data-embassy:manifest_public_key`; only the lab (and a site inventory that is the lab's own) may
  fall back to the key its deploy recorded on this controller;
- where the controller keeps what it learnt of the vaults (`controller_folder`: the high-water marks).

The site target (`--target site --inventory FILE`, src/embassy/sites.py) is a host nation's own data centre:
SSH hosts and an S3-compatible vault per embassy. `embassy lab up` writes the lab's own site inventory, so the
generic path is run against the lab too.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar

from embassy import model
from embassy.errors import (
    EmbassyUnknown,
    HostUnknown,
    InventoryInvalid,
    ManifestKeyMissing,
    RootRequired,
    ToolMissing,
    UserError,
)
from embassy.hostroles import Role
from embassy.vaultaccess import CredentialSource, VaultAccess

if TYPE_CHECKING:
    from embassy.lab.state import LabState

__all__ = ["KINDS", "AwsTarget", "Host", "LabTarget", "Role", "SiteTarget", "Target", "aws_hosts", "lab_vault",
           "stack_outputs"]

KINDS = ("lab", "site", "aws")
MANIFEST_KEY_FILE = "manifest_public_key.pem"  # in a lab's state folder, written by the agent deploy
AWS_SSH_CONFIG_ENV = "EMBASSY_SSH_CONFIG"  # the ssh_config with the SSM ProxyCommand (inventories/aws.py)
SSM_BUCKET_ENV = "EMBASSY_SSM_BUCKET"  # Ansible's SSM connection moves files through an S3 bucket
SITE_INVENTORY_ENV = "EMBASSY_SITE_INVENTORY"  # the site inventory inventories/site.py reads


@dataclass(frozen=True)
class Host:
    """One host of a target, as every operation sees it."""

    name: str  # inventory name: home, enclave-<embassy>[-<n>]
    role: Role
    embassy: str | None = None  # the embassy it serves (None for home)
    mode: model.Mode | None = None  # warm | cold for embassy hosts
    address: str | None = None  # where the controller reaches it (lab address; private IP on AWS)
    instance_id: str | None = None  # AWS: the EC2 instance, the SSM target
    region: str | None = None  # AWS: the instance's region

    @property
    def group(self) -> str:
        """home, warm or cold: the inventories' groups."""
        return "home" if self.role is Role.HOME else (self.mode.value if self.mode else model.Mode.COLD.value)


# The root shell on a host that reads a data-plane command's script on its input (`env_script`).
HOST_SHELL = "sudo sh -s"
SAFE_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
# `sudo` inside a data-plane command would reset the environment (sudoers' env_reset) and drop what was handed over:
# the script already runs as root, so `sudo ARGS` runs ARGS as they are (anything with an option goes to the real sudo).
SUDO_AS_ROOT = 'sudo() { case "$1" in -*) command sudo "$@" ;; *) "$@" ;; esac; }'


def export_lines(env: Mapping[str, str]) -> list[str]:
    """`export NAME=VALUE` lines, each value shell-quoted (quotes, `$`, backquotes and newlines stay data)."""
    lines = []
    for name, value in env.items():
        if not SAFE_ENV_NAME.match(name):
            raise ValueError(f"not an environment variable name: {name!r}")
        lines.append(f"export {name}={shlex.quote(value)}")
    return lines


def env_script(env: Mapping[str, str], command: str) -> str:
    """What HOST_SHELL reads for one data-plane shell command (a fixed string of the suite's): `env` exported (shell
    builtins: no argv shows the values, no file holds them), `sudo` kept from dropping them, then the command, reading
    nothing more from the session's input (the rest of this script). runuser (as postgres) keeps the environment."""
    return "\n".join([*export_lines(env), SUDO_AS_ROOT, "{", command, "} </dev/null"]) + "\n"


def run_host(argv: Sequence[str], *, stdin: str | None = None,
             timeout: float | None = 120) -> subprocess.CompletedProcess[str]:
    """The one way a command reaches a host: `argv` as a target builds it (ssh, ssh through a jump host or SSM), its
    output captured as text; never raises on the exit code (the caller reads it)."""
    return subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False)


class Target(ABC):
    """Where a stack's hosts are and how the controller reaches them (lab or aws)."""

    kind: ClassVar[str]
    inventory: ClassVar[str]  # the pyinfra inventory, relative to the project root

    def __init__(self, dep: model.Deployment) -> None:
        self.dep = dep

    @property
    def stack(self) -> str:
        return self.dep.stack

    @property
    @abstractmethod
    def hosts(self) -> list[Host]:
        """Every host of the target, home first if it has one."""

    @property
    @abstractmethod
    def workdir(self) -> Path:
        """Where runs against this target keep their files (never the user's home, never the repo for the lab)."""

    # Facts of the target's network, for roles that must admit the controller; None where it has none.
    controller_address: str | None = None
    syslog_target: str | None = None
    mirror_url: str | None = None
    ssh_port: int | None = None
    admin_user: str = "admin"

    def host(self, name: str) -> Host:
        """The host named `name`, or the (first) host of embassy `name`."""
        for h in self.hosts:
            if h.name == name:
                return h
        for h in self.hosts:
            if h.embassy == name:
                return h
        raise HostUnknown(f"target {self.kind} of stack '{self.stack}' has no host '{name}'",
                          f"use one of: {', '.join(h.name for h in self.hosts) or '(none)'}")

    def embassy_hosts(self, embassy: str) -> list[Host]:
        """The hosts of one embassy of the stack (refuses a name the stack does not declare)."""
        if embassy not in {e.name for e in self.dep.embassies}:
            raise EmbassyUnknown(f"stack '{self.stack}' has no embassy '{embassy}'",
                                 f"use one of: {', '.join(e.name for e in self.dep.embassies)}")
        return [h for h in self.hosts if h.embassy == embassy]

    def client_env(self) -> dict[str, str]:
        """What a client's inventory reads from the environment (added to the caller's)."""
        return {"EMBASSY_STACK": self.stack}

    @abstractmethod
    def client_argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` wrapped so that it runs where the hosts are reachable."""

    @abstractmethod
    def host_argv(self, host: Host | str, command: str) -> list[str]:
        """The argv that runs the shell `command` on `host` (as the admin user; sudo for root)."""

    @property
    def client_place(self) -> str:
        """Where clients run, for messages."""
        return "on this machine"

    @abstractmethod
    def require_ansible(self) -> None:
        """Raise a UserError if Ansible cannot connect to these hosts from here (a plugin missing)."""

    def require_pyinfra(self) -> None:
        """Raise a UserError if the deploys cannot run against these hosts (checked before pyinfra starts)."""
        return None

    @abstractmethod
    def ansible_vars(self) -> dict[str, Any]:
        """Ansible connection variables for every host."""

    @abstractmethod
    def ansible_host_vars(self, host: Host) -> dict[str, Any]:
        """Ansible connection variables of one host."""

    def vault(self, embassy: str) -> VaultAccess:
        """How the data plane reaches the embassy's vault (endpoint, bucket, CA, identities)."""
        raise UserError(f"target {self.kind} cannot reach vaults yet", "use --target lab or --target site")

    def vault_role(self, embassy: str) -> str | None:
        """The role a controller assumes to read the embassy's vault (AWS: the stack's restore role); None where the
        vault is read with keys (lab, site): a custody bundle records the one or the other."""
        return None

    def home_host(self) -> Host | None:
        """Home, where its manifest key signs the custody headers: the target's home host, if it names one."""
        return next((h for h in self.hosts if h.role is Role.HOME), None)

    def recorded_manifest_key(self) -> str | None:
        """A manifest key recorded on this controller by a lab deploy: only a lab target has one."""
        return None

    def manifest_public_key(self) -> str:
        """Home's manifest public key (PEM): the stack config's; outside the lab, nothing else is trusted."""
        if self.dep.manifest_public_key:
            return self.dep.manifest_public_key
        recorded = self.recorded_manifest_key()
        if recorded:
            return recorded
        raise ManifestKeyMissing(f"stack '{self.stack}' sets no data-embassy:manifest_public_key: target {self.kind} "
                                 "has nothing else to trust (never a key a vault or a host serves)")

    @property
    def controller_folder(self) -> Path:
        """Where this controller keeps the vaults' high-water marks (0700)."""
        from embassy.replication.secrets import secrets_dir

        return secrets_dir(SimpleNamespace(stack=self.stack))

    def run_client(self, argv: Sequence[str], *, timeout: float | None = None, cwd: Path | None = None,
                   env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a client where the hosts are reachable; its output is captured as text."""
        return subprocess.run(self.client_argv(argv), capture_output=True, text=True, timeout=timeout, check=False,
                              cwd=cwd or model.project_root(), env={**os.environ, **self.client_env(), **(env or {})})

    def run_on(self, host: Host | str, command: str, *, timeout: float = 120, stdin: str | None = None,
               env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a shell command on one host; never raises on its exit code (the caller reads it).

        stdin: the command's input (a file written to the host). env: variables for the command only (restore
        secrets): the same on every target, exported on the session's input that HOST_SHELL reads (`env_script`),
        never in an argv (every local user reads argvs in /proc, on the controller and on the host), never in a file,
        never in the command's text. A command with its own input cannot have them (its input carries them)."""
        h = self._host(host)
        if stdin is not None:
            if env:
                raise ValueError(f"{h.name}: a command with its own input cannot be handed variables on it")
            return run_host(self.host_argv(h, command), stdin=stdin, timeout=timeout)
        if not env and not self.hands_session(h):
            return run_host(self.host_argv(h, command), timeout=timeout)
        argv = self.shell_argv(h)  # a tool missing here stops the command before any session is made
        handed = {**self.session_env(h, timeout), **(env or {})}
        return run_host(argv, stdin=env_script(handed, command), timeout=timeout)

    def shell_argv(self, host: Host) -> list[str]:
        """The argv of HOST_SHELL on the host: a root shell that reads its script on its input."""
        return self.host_argv(host, HOST_SHELL)

    def hands_session(self, host: Host) -> bool:
        """Whether every command on the host (without its own input) gets a vault session (`session_env`): AWS's."""
        return False

    def session_env(self, host: Host, valid_for: float) -> dict[str, str]:
        """The vault session a command on the host gets beside its `env`, lasting `valid_for` seconds: none here."""
        return {}

    def _host(self, host: Host | str) -> Host:
        return host if isinstance(host, Host) else self.host(host)


# --------------------------------------------------------------------------- the lab


class LabTarget(Target):
    """The lab on this machine (src/embassy/lab/): hosts from its state, clients in its controller namespace."""

    kind = "lab"
    inventory = "inventories/lab.py"

    def __init__(self, dep: model.Deployment, lab: LabState) -> None:
        super().__init__(dep)
        self.lab = lab
        self.controller_address = lab.controller_address
        self.syslog_target = lab.syslog_target
        self.mirror_url = lab.mirror_url
        self.ssh_port = lab.ssh_port
        self.admin_user = lab.ssh_user

    @cached_property
    def hosts(self) -> list[Host]:
        return [Host(h.name, h.role, h.embassy, model.Mode(h.mode) if h.mode else None, h.address) for h in self.lab.hosts]

    @property
    def workdir(self) -> Path:
        return Path(self.lab.dir)

    def client_env(self) -> dict[str, str]:
        return {**super().client_env(), "EMBASSY_LAB_ID": str(self.lab.lab_id)}

    @property
    def client_place(self) -> str:
        return f"in {self.lab.controller_netns}"

    def _require_root(self) -> None:
        if os.geteuid() != 0:
            raise RootRequired(f"reaching the lab's hosts needs root: its clients run in the namespace "
                               f"{self.lab.controller_netns}",
                               f"run it as root, e.g. `sudo .venv/bin/embassy … --stack {self.stack}`")

    def client_argv(self, argv: Sequence[str]) -> list[str]:
        self._require_root()
        return self.lab.in_controller(list(argv))

    def host_argv(self, host: Host | str, command: str) -> list[str]:
        self._require_root()
        return self.lab.ssh_argv(self._host(host).name, command)

    def require_ansible(self) -> None:
        return None  # SSH: ansible-core's own connection

    def ansible_vars(self) -> dict[str, Any]:
        # SSH as the lab's admin user with the controller's key and ssh_config (its known_hosts).
        return {"ansible_user": self.lab.ssh_user, "ansible_ssh_private_key_file": self.lab.ssh_key,
                "ansible_ssh_common_args": f"-F {self.lab.ssh_config}", "ansible_port": self.lab.ssh_port}

    def ansible_host_vars(self, host: Host) -> dict[str, Any]:
        return {"ansible_host": host.address}

    def vault(self, embassy: str) -> VaultAccess:
        self.embassy_hosts(embassy)  # refuses an embassy the stack does not declare
        return lab_vault(self.lab, embassy)

    def recorded_manifest_key(self) -> str | None:
        return _recorded_key(Path(self.lab.dir))

    @property
    def controller_folder(self) -> Path:
        from embassy.replication.secrets import secrets_dir

        return secrets_dir(SimpleNamespace(lab_dir=self.lab.dir, stack=self.stack))


def _recorded_key(lab_folder: Path) -> str | None:
    path = lab_folder / MANIFEST_KEY_FILE
    return path.read_text() if path.is_file() else None


def lab_vault(lab: LabState, embassy: str) -> VaultAccess:
    """A lab vault: reachable from the controller namespace only, the lab CA, path-style, credentials files."""
    v = lab.vault(embassy)
    identities = {"reader": CredentialSource(file=v.reader_credentials), "agent": CredentialSource(file=v.agent_credentials)}
    return VaultAccess(embassy=embassy, endpoint=v.endpoint, bucket=v.bucket, ca_file=v.ca_file, addressing="path",
                       netns=lab.controller_netns, identities=identities)


# --------------------------------------------------------------------------- a site: a host nation's data centre


class SiteTarget(Target):
    """A host nation's own data centre, from a site inventory (src/embassy/sites.py): SSH hosts, S3 vaults."""

    kind = "site"
    inventory = "inventories/site.py"

    def __init__(self, dep: model.Deployment, inventory: Any, path: Path | None = None) -> None:
        super().__init__(dep)
        self.site = inventory  # sites.Inventory, already bound to the stack
        self.path = path
        net = inventory.network
        if net is not None:  # the roles' facts of the site's network (None where the inventory names none)
            self.controller_address = net.controller_address
            self.syslog_target = net.syslog_target
            self.mirror_url = net.mirror_url

    @cached_property
    def hosts(self) -> list[Host]:
        found = [Host(h.name, Role.HOME, None, None, h.address) for h in (self.site.home.hosts if self.site.home else ())]
        for emb in self.dep.embassies:
            site = self.site.embassies.get(emb.name)
            found += [Host(h.name, Role.EMBASSY, emb.name, emb.mode, h.address) for h in (site.hosts if site else ())]
        return found

    def _site_host(self, host: Host | str) -> Any:
        h = self._host(host)
        groups = [self.site.home.hosts if self.site.home else (), *(e.hosts for e in self.site.embassies.values())]
        return next(s for group in groups for s in group if s.name == h.name)

    @property
    def workdir(self) -> Path:
        return self.controller_folder.parent

    def recorded_manifest_key(self) -> str | None:
        """Only the lab's own inventory (lab_id, written by `embassy lab up`) is that lab: its recorded key."""
        if self.site.lab_id is None:
            return None
        from embassy.lab.state import load_state

        lab = load_state(self.site.lab_id)
        return _recorded_key(Path(lab.dir)) if lab is not None and lab.stack == self.stack else None

    @property
    def controller_folder(self) -> Path:
        from embassy.replication.secrets import secrets_dir

        if self.site.lab_id is None:
            return secrets_dir(SimpleNamespace(stack=self.stack))
        from embassy.lab.state import lab_dir  # the lab's own inventory: that lab's controller folder

        return secrets_dir(SimpleNamespace(lab_dir=lab_dir(self.site.lab_id), stack=self.stack))

    def _in_netns(self, netns: str | None, argv: list[str]) -> list[str]:
        if netns is None:
            return argv
        if os.geteuid() != 0:
            raise RootRequired(f"the site inventory runs these clients in the network namespace {netns}",
                               f"run it as root, e.g. `sudo .venv/bin/embassy … --stack {self.stack}`")
        return ["ip", "netns", "exec", netns, *argv]

    def client_argv(self, argv: Sequence[str]) -> list[str]:
        """One client (ansible-runner, pyinfra) for every host: all of them must be reachable from one place."""
        apart = sorted({f"{h.name} ({self.site.host_netns(h)})" for h in self._site_hosts()
                        if self.site.host_netns(h) != self.site.netns})
        if apart:
            raise InventoryInvalid(f"the site inventory {self.path or ''} puts hosts in another network namespace than "
                                   f"its own ({self.site.netns or 'none'}): {', '.join(apart)}",
                                   "harden and deploy run one client for every host: give the hosts the inventory's "
                                   "netns (or none)")
        return self._in_netns(self.site.netns, list(argv))

    def client_env(self) -> dict[str, str]:
        """inventories/site.py reads the inventory this target validated, never the lab's state."""
        if self.path is None:
            raise InventoryInvalid("this site target has no inventory file for its clients",
                                   "run the command with --target site --inventory FILE")
        return {**super().client_env(), SITE_INVENTORY_ENV: str(self.path.resolve())}

    def _site_hosts(self) -> list[Any]:
        return [self._site_host(h) for h in self.hosts]

    def require_pyinfra(self) -> None:
        """inventories/site.py reads this inventory's file, in one place for every host; the agents (pgBackRest,
        restic) address each vault path-style."""
        self.client_env()
        self.client_argv([])
        for name, site in self.site.embassies.items():
            if site.vault.addressing != "path":
                raise InventoryInvalid(f"embassies.{name}.vault: the agents (pgBackRest, restic) address the vault "
                                       f"path-style; the inventory says {site.vault.addressing}",
                                       "give a vault endpoint that takes path-style requests, with addressing: path")

    def ssh_options(self, host: Host | str) -> list[str]:
        """ssh options for one host: keys pinned in its known_hosts, batch mode, the jump host checked the same way."""
        s = self._site_host(host)
        pinned = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={s.known_hosts}",
                  "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10"]
        key = ["-o", "IdentitiesOnly=yes", "-i", s.identity_file] if s.identity_file else []
        jump = []
        if s.jump is not None:
            inner = ["ssh", "-F", "none", *pinned, *key, "-p", str(s.jump.port), "-l", s.jump.user, "-W", "%h:%p", "--",
                     s.jump.address]
            jump = ["-o", "ProxyCommand=" + " ".join(shlex.quote(a) for a in inner)]
        return ["-F", "none", *pinned, *key, *jump, "-p", str(s.port), "-l", s.user]

    def host_argv(self, host: Host | str, command: str) -> list[str]:
        s = self._site_host(host)
        return self._in_netns(self.site.host_netns(s), ["ssh", *self.ssh_options(host), "--", s.address, command])

    def require_ansible(self) -> None:
        """SSH: ansible-core's own connection. The roles' firewall admits SSH only from the sources the inventory
        names: without them the hardening would lock the operator out, so it is refused before anything runs."""
        net = self.site.network
        if net is None or not (net.ssh_sources or net.controller_address):
            raise InventoryInvalid(f"the site inventory {self.path or ''} names no SSH source for the hosts' firewall",
                                   "add network: {ssh_sources: [<the controller's or the bastion's address>]} (or "
                                   "network.controller_address); see examples/sites/federation.yaml")

    def ansible_vars(self) -> dict[str, Any]:
        net = self.site.network
        return {"embassy_ssh_sources": list(net.ssh_sources)} if net is not None and net.ssh_sources else {}

    def ansible_host_vars(self, host: Host) -> dict[str, Any]:
        # Every ssh option of host_argv, -F none first: no ssh_config (the user's, the lab's) adds a host, a key or a
        # jump host the inventory does not name. sshd's port and the admin login are each host's own.
        s = self._site_host(host)
        return {"ansible_host": s.address, "ansible_port": s.port, "ansible_user": s.user,
                "ansible_ssh_common_args": " ".join(shlex.quote(o) for o in self.ssh_options(host)),
                "embassy_ssh_port": s.port, "embassy_admin_users": [s.user]}

    def vault(self, embassy: str) -> VaultAccess:
        self.embassy_hosts(embassy)
        if embassy not in self.site.embassies:
            raise EmbassyUnknown(f"the site inventory {self.path or ''} describes no embassy '{embassy}'",
                                 f"add embassies.{embassy} (hosts, vault, credentials) to the inventory")
        return self.site.vault_access(embassy)


# --------------------------------------------------------------------------- AWS


def require_pulumi(stack: str) -> None:
    if shutil.which("pulumi") is None:
        raise UserError("the pulumi CLI is not installed: the AWS target's hosts come from `pulumi stack output --json`",
                        f"install Pulumi (https://www.pulumi.com/docs/install/), `pulumi login`, and "
                        f"`pulumi up --stack {stack}` first")


def stack_outputs(stack: str) -> dict[str, Any]:
    """`pulumi stack output --json` of the stack, or a UserError saying what is missing."""
    require_pulumi(stack)
    res = subprocess.run(["pulumi", "stack", "output", "--json", "--stack", stack], capture_output=True, text=True,
                         cwd=model.project_root(), timeout=120, check=False)
    if res.returncode != 0:
        raise UserError(f"cannot read the outputs of stack '{stack}': {res.stderr.strip()}",
                        f"run `pulumi up --stack {stack}` first (and `pulumi login`)")
    outputs: dict[str, Any] = json.loads(res.stdout or "{}")
    return outputs


def aws_hosts(dep: model.Deployment, outputs: dict[str, Any]) -> list[Host]:
    """The embassies' hosts from the stack outputs (stacks/__main__.py exports them per embassy)."""
    embassies = outputs.get("embassies") or {}
    if not embassies:
        raise UserError(f"stack '{dep.stack}' has no `embassies` output", f"run `pulumi up --stack {dep.stack}` first")
    hosts = []
    for emb in dep.embassies:
        out = embassies.get(emb.name)
        if out is None:
            raise UserError(f"stack output has no embassy '{emb.name}'", f"run `pulumi up --stack {dep.stack}`")
        ids = list(out.get("host_instance_ids") or [])
        ips = list(out.get("host_private_ips") or [])
        for i, instance in enumerate(ids):
            name = f"enclave-{emb.name}" if len(ids) == 1 else f"enclave-{emb.name}-{i}"
            hosts.append(Host(name, Role.EMBASSY, emb.name, emb.mode, ips[i] if i < len(ips) else None, instance,
                              out.get("region", emb.region)))
    return hosts


def aws_collection_path() -> Path | None:
    """Where the community.aws collection is installed, if anywhere Ansible looks."""
    bases = [p for p in os.environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(os.pathsep) if p]
    if os.environ.get("ANSIBLE_HOME"):
        bases.append(str(Path(os.environ["ANSIBLE_HOME"]) / "collections"))
    bases += [str(Path.home() / ".ansible" / "collections"), "/usr/share/ansible/collections", *sys.path]
    for base in bases:
        candidate = Path(base) / "ansible_collections" / "community" / "aws"
        if candidate.is_dir():
            return candidate
    return None


class AwsTarget(Target):
    """A stack deployed with `pulumi up`: hosts from its outputs, reached over SSM Session Manager.

    The home state runs on premises, outside the stack: it is not among these hosts (inventories/aws.py
    adds it from EMBASSY_HOME_HOST for the deploys).
    """

    kind = "aws"
    inventory = "inventories/aws.py"

    def __init__(self, dep: model.Deployment, outputs: dict[str, Any] | None = None, workdir: Path | None = None,
                 ssm_bucket: str | None = None) -> None:
        super().__init__(dep)
        self._outputs = outputs
        self._workdir = workdir
        self.ssm_bucket = ssm_bucket if ssm_bucket is not None else os.environ.get(SSM_BUCKET_ENV, "")

    @property
    def outputs(self) -> dict[str, Any]:
        if self._outputs is None:
            self._outputs = stack_outputs(self.stack)
        return self._outputs

    @cached_property
    def hosts(self) -> list[Host]:
        return aws_hosts(self.dep, self.outputs)

    @property
    def workdir(self) -> Path:
        return self._workdir or model.project_root() / ".embassy" / self.stack

    def client_argv(self, argv: Sequence[str]) -> list[str]:
        require_pulumi(self.stack)  # every client's inventory (inventories/aws.py) reads the stack outputs
        return list(argv)

    def host_argv(self, host: Host | str, command: str) -> list[str]:
        """SSH through SSM: `ssh <instance-id> …` with the ProxyCommand of inventories/aws.py's docstring."""
        h = self._host(host)
        missing = [tool for tool in ("aws", "session-manager-plugin", "ssh") if shutil.which(tool) is None]
        if missing:
            raise ToolMissing(f"reaching AWS hosts over SSM needs {', '.join(missing)}, not installed here",
                              "install the AWS CLI and its session-manager-plugin, and put the SSM ProxyCommand of "
                              "inventories/aws.py in ~/.ssh/config or in the file named by " + AWS_SSH_CONFIG_ENV)
        if h.instance_id is None:
            raise HostUnknown(f"host '{h.name}' has no instance id in the outputs of stack '{self.stack}'",
                              f"run `pulumi up --stack {self.stack}`")
        config = os.environ.get(AWS_SSH_CONFIG_ENV)
        return ["ssh", *(["-F", config] if config else []), "-o", "BatchMode=yes", h.instance_id, command]

    def require_ansible(self) -> None:
        if aws_collection_path() is None:
            raise UserError("the community.aws collection is not installed: AWS hosts are reached over SSM "
                            "(ansible_connection=community.aws.aws_ssm), which ansible-core does not ship",
                            "ansible-galaxy collection install community.aws amazon.aws; install the AWS "
                            "session-manager-plugin; then run the command again")

    def ansible_vars(self) -> dict[str, Any]:
        """Ansible reaches the hosts with community.aws's SSM connection, which moves files through S3."""
        if not self.ssm_bucket:
            raise UserError(f"{SSM_BUCKET_ENV} is not set: the SSM connection moves files through an S3 bucket",
                            "create a transfer bucket in the embassies' account (not a vault: vaults are Object-Locked) "
                            f"and export {SSM_BUCKET_ENV}=<its name>")
        return {"ansible_connection": "community.aws.aws_ssm", "ansible_aws_ssm_bucket_name": self.ssm_bucket}

    def ansible_host_vars(self, host: Host) -> dict[str, Any]:
        emb = next(e for e in self.dep.embassies if e.name == host.embassy)
        return {"ansible_aws_ssm_instance_id": host.instance_id, "ansible_aws_ssm_region": host.region,
                # SSM needs no inbound SSH: only the embassy's admin networks, if any, reach port 22.
                "embassy_ssh_sources": list(emb.admin_cidrs), "embassy_require_ssh": bool(emb.admin_cidrs)}
