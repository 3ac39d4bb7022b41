"""The pyinfra host data of a site target (inventories/site.py): the deploys over SSH to the inventory's hosts.

Every host is reached exactly as the site inventory says: its address, port and user, its key, its host keys pinned
(StrictHostKeyChecking), and a jump host only where the inventory names one. pyinfra (paramiko) reads an
ssh_config file: it gets one written here (`Host <address>` with the jump host's ProxyCommand, the same command
`SiteTarget.ssh_options` builds), or /dev/null, never the user's ~/.ssh/config or the lab's: no ssh_config adds a
host, a key or a jump host the inventory does not name.

The deploys read the same data as from inventories/lab.py (role, embassy, mode, stack, vaults); `lab_dir` only for
the lab's own inventory (`lab_id`), so that its secrets, seed and recorded manifest key are that lab's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from embassy import model, sites
from embassy.errors import UserError
from embassy.replication.privatefile import create_private
from embassy.targets import MANIFEST_KEY_FILE, SITE_INVENTORY_ENV, Host, SiteTarget
from embassy.vaultaccess import SYSTEM_CA

# `ca_file: system`: the agents on the hosts get the controller's OS trust store (as inventories/aws.py does).
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
NO_SSH_CONFIG = "/dev/null"  # an existing, empty ssh_config: pyinfra then reads no other
Groups = dict[str, list[tuple[str, dict[str, Any]]]]


def ssh_config(target: SiteTarget) -> str:
    """`Host <address>` with its ProxyCommand for each host behind a jump host; '' if none is."""
    blocks = []
    for host in target.hosts:
        options = target.ssh_options(host)
        proxy = next((o for o in options if o.startswith("ProxyCommand=")), None)
        if proxy is not None:
            address = target._site_host(host).address
            blocks.append(f"Host {address}\n  ProxyCommand {proxy.removeprefix('ProxyCommand=')}\n")
    return "".join(blocks)


def write_ssh_config(target: SiteTarget) -> str:
    """The ssh_config pyinfra reads: written (0600) into the controller's folder, or /dev/null."""
    text = ssh_config(target)
    if not text:
        return NO_SSH_CONFIG
    path = target.workdir / "site-ssh_config"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    create_private(path, text.encode(), how="replace")
    return str(path)


def vaults(target: SiteTarget) -> list[dict[str, Any]]:
    """Each embassy's vault as the deploys read it (replication/secrets.vault_from_data): where, never a secret."""
    found = []
    for name in target.site.embassies:
        access = target.vault(name)  # path-style: SiteTarget.require_pyinfra refused any other
        found.append({"embassy": name, "endpoint": access.endpoint, "dns_name": urlsplit(access.endpoint).hostname,
                      "bucket": access.bucket,
                      "ca_file": SYSTEM_CA_BUNDLE if access.ca_file == SYSTEM_CA else access.ca_file, "region": access.region,
                      "credentials": {k: c.as_spec() for k, c in access.identities.items()}})
    return found


def groups(target: SiteTarget) -> Groups:
    """pyinfra's groups (home, embassies, warm, cold) of the target's hosts, each with its host data."""
    target.require_pyinfra()
    config = write_ssh_config(target)
    every = vaults(target)
    lab_dir = None
    if target.site.lab_id is not None:
        from embassy.lab.state import lab_dir as _lab_dir  # the lab's own inventory: that lab's folders

        lab_dir = str(_lab_dir(target.site.lab_id))

    def entry(host: Host) -> tuple[str, dict[str, Any]]:
        s = target._site_host(host)
        vault = next((v for v in every if v["embassy"] == host.embassy), None)
        data: dict[str, Any] = {
            "ssh_hostname": s.address, "ssh_port": s.port, "ssh_user": s.user,
            "ssh_known_hosts_file": s.known_hosts, "ssh_strict_host_key_checking": "yes", "ssh_config_file": config,
            **({"ssh_key": s.identity_file} if s.identity_file else {}),
            "_sudo": True, "_temp_dir": "/tmp",  # as inventories/lab.py: uploads land in /tmp, sudo moves them
            "role": host.role.value, "embassy": host.embassy, "mode": host.mode.value if host.mode else None,
            "vault_endpoint": vault["endpoint"] if vault else None, "vault": vault, "vaults": every,
            "stack": target.stack,
        }
        if lab_dir is not None:
            data.update({"lab_id": target.site.lab_id, "lab_dir": lab_dir,
                         "manifest_public_key_file": os.path.join(lab_dir, MANIFEST_KEY_FILE)})
        return host.name, data

    hosts = [entry(h) for h in target.hosts]
    return {
        "home": [(n, d) for n, d in hosts if d["role"] == "home"],
        "embassies": [(n, d) for n, d in hosts if d["role"] == "embassy"],
        "warm": [(n, d) for n, d in hosts if d["role"] == "embassy" and d["mode"] == model.Mode.WARM.value],
        "cold": [(n, d) for n, d in hosts if d["role"] == "embassy" and d["mode"] == model.Mode.COLD.value],
    }


def from_env() -> Groups:
    """The groups for inventories/site.py, from EMBASSY_STACK and EMBASSY_SITE_INVENTORY (set by `embassy deploy`)."""
    stack, path = os.environ.get("EMBASSY_STACK"), os.environ.get(SITE_INVENTORY_ENV)
    try:
        if not stack or not path:
            raise UserError(f"EMBASSY_STACK and {SITE_INVENTORY_ENV} must name the stack and its site inventory",
                            "run `embassy deploy --target site --inventory FILE --stack S`")
        dep = model.load_stack(stack)
        return groups(SiteTarget(dep, sites.load(Path(path), dep), Path(path)))
    except UserError as exc:  # a stack config or an inventory that changed since the command checked it
        raise SystemExit(f"error: {exc.message}\nHINT: {exc.hint}") from None


