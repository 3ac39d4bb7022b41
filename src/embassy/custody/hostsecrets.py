"""Restore secrets on an embassy host, from an opened bundle (never from the controller's folder).

What the embassy deploy (replication/deploy_embassy.py) writes there, rendered by the same functions
from the bundle's values: pgBackRest's config (its vault, read-only identity, cipher passphrase) and
restic's password and environment. `withdraw` removes them from the host and the controller: a drill
then proves that a restore needs nothing but the officials' shares.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from embassy.custody.bundle import Bundle
from embassy.errors import RestoreFailed
from embassy.replication import dataplane
from embassy.replication.dataplane import Repo
from embassy.replication.secrets import Vault
from embassy.targets import Host, Target

RESTORE_SECRET_GLOBS = ("pgbackrest-*.pass", "restic-*.pass")


def vault_of(bundle: Bundle) -> Vault:
    v = bundle.vault
    port = int(v.endpoint.rsplit(":", 1)[1]) if v.endpoint.count(":") == 2 else 443
    return Vault(embassy=v.embassy, dns_name=v.dns_name, port=port, bucket=v.bucket, ca_file="", access_key=v.access_key_id,
                 secret_key=v.secret_access_key, region=v.region)


def _install(target: Target, host: Host, path: str, text: str, owner: str, mode: str) -> None:
    done = subprocess.run(target.host_argv(host, f"sudo install -o {owner} -g {owner} -m {mode} /dev/stdin {path}"),
                          input=text, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RestoreFailed(f"{host.name}: writing {path} from the custody bundle failed: {done.stderr.strip()[-300:]}")


def apply(target: Target, host: Host, bundle: Bundle) -> None:
    """Write the bundle's restore secrets where the restore tools read them (files as the deploy makes them)."""
    vault = vault_of(bundle)
    if bundle.pgbackrest:
        _install(target, host, dataplane.PGBACKREST_CA, bundle.vault.ca_pem, "postgres", "644")
        repo = Repo(1, vault, bundle.pgbackrest[-1].value)  # new backups' passphrase; the repo keeps its own
        _install(target, host, dataplane.PGBACKREST_CONF, dataplane.pgbackrest_conf([repo], archive_async=False),
                 "postgres", "600")
    if bundle.restic:
        base = f"{dataplane.RESTIC_DIR}/{bundle.embassy}"
        _install(target, host, f"{dataplane.RESTIC_DIR}/vault-ca.crt", bundle.vault.ca_pem, "root", "644")
        _install(target, host, f"{base}.pass", bundle.restic[-1].value + "\n", "root", "600")
        _install(target, host, f"{base}.env", dataplane.restic_env(vault), "root", "600")


def withdraw(target: Target, host: Host, embassy: str, controller_folder: Path) -> list[str]:
    """Remove the restore secrets from the controller's folder and from the embassy host; returns what was removed.

    On the host, pgBackRest's config stays (its vault, without a passphrase): a restore without the bundle fails."""
    removed = []
    for pattern in RESTORE_SECRET_GLOBS:
        for path in sorted(controller_folder.glob(pattern)):
            path.unlink()
            removed.append(str(path))
    command = (f"sudo sed -i '/-cipher-pass=/d' {dataplane.PGBACKREST_CONF} 2>/dev/null; "
               f"sudo rm -f {dataplane.RESTIC_DIR}/{embassy}.pass; true")
    done = subprocess.run(target.host_argv(host, command), capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RestoreFailed(f"{host.name}: removing the restore secrets failed: {done.stderr.strip()[-300:]}")
    removed += [f"{host.name}:{dataplane.PGBACKREST_CONF} (cipher-pass)", f"{host.name}:{dataplane.RESTIC_DIR}/{embassy}.pass"]
    return removed
