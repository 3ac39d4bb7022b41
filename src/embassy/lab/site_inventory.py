"""The lab's own site inventory: the lab described as a host nation's data centre would be.

`embassy lab up` writes it (site-inventory.yaml in the lab's folder) and `embassy lab status --json` names it,
so that `--target site --inventory PATH` runs the generic site path against the lab. Lab addresses exist only
inside lab namespaces: the inventory says so with `netns` (the controller namespace, for every host and vault),
and `lab_id` marks it as this lab's own (the only site that may trust the manifest key the lab recorded).
"""

from __future__ import annotations

from pathlib import Path

from embassy import sites
from embassy.lab.state import HostState, LabState, Role

FILE = "site-inventory.yaml"


def inventory_path(lab: LabState) -> Path:
    return Path(lab.dir) / FILE


def build(lab: LabState) -> sites.Inventory:
    def host(h: HostState) -> dict[str, object]:
        return {"name": h.name, "address": h.address, "port": lab.ssh_port, "user": lab.ssh_user,
                "identity_file": lab.ssh_key, "known_hosts": lab.ssh_known_hosts}

    embassies = {}
    for v in lab.vaults:
        embassies[v.embassy] = {
            "hosts": [host(h) for h in lab.hosts if h.role is Role.EMBASSY and h.embassy == v.embassy],
            "vault": {"endpoint": v.endpoint, "bucket": v.bucket, "ca_file": v.ca_file, "addressing": "path"},
            "credentials": {"reader": {"file": v.reader_credentials}, "agent": {"file": v.agent_credentials}}}
    home = [host(h) for h in lab.hosts if h.role is Role.HOME]
    return sites.Inventory.model_validate({
        "version": sites.VERSION, "stack": lab.stack, "lab_id": lab.lab_id, "netns": lab.controller_netns,
        # What `harden --target lab` gives the roles: the same hardening through either target.
        "network": {"controller_address": lab.controller_address, "syslog_target": lab.syslog_target,
                    "mirror_url": lab.mirror_url},
        **({"home": {"hosts": home}} if home else {}), "embassies": embassies})


def write(lab: LabState) -> Path:
    """Write (or rewrite) the lab's site inventory; it holds paths, never a secret."""
    path = inventory_path(lab)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("# Written by `embassy lab up`: this lab as a site (--target site --inventory THIS).\n"
                   + sites.dump(build(lab)))
    tmp.replace(path)
    return path
