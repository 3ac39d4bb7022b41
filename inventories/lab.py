"""pyinfra inventory of the lab, built from the lab's state (see src/embassy/lab/state.py).

Run pyinfra inside the lab's controller namespace (lab addresses exist nowhere else):

    ip netns exec emb${EMBASSY_LAB_ID:-0}-ctl .venv/bin/pyinfra inventories/lab.py deploys/<deploy>.py

Groups: home, embassies, warm, cold. Every host gets role, embassy, mode and its vault endpoint;
`vaults` lists every vault (endpoint, bucket, CA file, agent credentials file: paths, not secrets).
Env: EMBASSY_LAB_ID (default 0); EMBASSY_STACK, if set, must match the lab's stack.
"""

from __future__ import annotations

import os as _os

from embassy.lab import state as _state

_lab = (_state.lab_state(_os.environ["EMBASSY_STACK"]) if _os.environ.get("EMBASSY_STACK")
        else _state.load_state())
if _lab is None:
    raise SystemExit(f"lab {_state.lab_id_from_env()} is not up: run `embassy lab up --stack rehearsal` as root")

_vaults = [
    {"embassy": v.embassy, "endpoint": v.endpoint, "dns_name": v.dns_name, "address": v.address,
     "bucket": v.bucket, "retention_days": v.retention_days, "ca_file": v.ca_file,
     "agent_credentials": v.agent_credentials, "reader_credentials": v.reader_credentials}
    for v in _lab.vaults
]


def _entry(h: _state.HostState) -> tuple[str, dict]:
    vault = next((v for v in _vaults if v["embassy"] == h.embassy), None)
    return (h.name, {
        "ssh_hostname": h.address,
        "ssh_port": _lab.ssh_port,
        "ssh_user": _lab.ssh_user,
        "ssh_key": _lab.ssh_key,
        "ssh_known_hosts_file": _lab.ssh_known_hosts,
        "ssh_strict_host_key_checking": "yes",
        "_sudo": True,  # the lab's SSH user is an admin with sudo, as on Debian's cloud images
        # Uploads land in /tmp, then sudo moves them: with libpam-tmpdir (os_hardening) root's own
        # TMPDIR is /tmp/user/0, where the SSH user cannot write.
        "_temp_dir": "/tmp",
        "role": h.role.value,
        "embassy": h.embassy,
        "mode": h.mode,
        "vault_endpoint": vault["endpoint"] if vault else None,
        "vault": vault,
        "vaults": _vaults,
        "lab_id": _lab.lab_id,
        "lab_dir": _lab.dir,  # the controller's secrets and seed folders live under it (replication.secrets)
        "stack": _lab.stack,
        "mirror_url": _lab.mirror_url,
        "ca_file": _lab.ca_file,
        # home's manifest public key, recorded by the agent deploy into the lab state (never the private key)
        "manifest_public_key_file": _os.path.join(_lab.dir, "manifest_public_key.pem"),
    })


home = [_entry(h) for h in _lab.hosts if h.role is _state.Role.HOME]
embassies = [_entry(h) for h in _lab.hosts if h.role is _state.Role.EMBASSY]
warm = [_entry(h) for h in _lab.hosts if h.role is _state.Role.EMBASSY and h.mode == "warm"]
cold = [_entry(h) for h in _lab.hosts if h.role is _state.Role.EMBASSY and h.mode == "cold"]
