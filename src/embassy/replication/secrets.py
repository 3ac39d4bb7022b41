"""Secrets of the home state, generated once on the controller and kept in a 0700 folder of 0600 files.

Never in the repo, never on a vault: the cipher passphrase of each embassy's pgBackRest repo, the
restic repository key of each embassy, the replication password. Vault credentials are read from the
files the lab (or the operator, on AWS) wrote; only their paths travel in the inventory.
"""

from __future__ import annotations

import base64
import json
import os
import secrets as _random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embassy.errors import UserError
from embassy.replication.privatefile import create_private

SECRETS_ENV = "EMBASSY_SECRETS_DIR"


def secrets_dir(data: Any) -> Path:
    """The secrets folder for this inventory: host data `secrets_dir`, env, the `secrets` folder of the target's own
    state folder (`lab_dir`: the lab's, which its inventory and target name), or the user's state folder."""
    explicit = getattr(data, "secrets_dir", None) or os.environ.get(SECRETS_ENV)
    if explicit:
        return Path(explicit)
    own = getattr(data, "lab_dir", None)
    if own:
        return Path(own) / "secrets"
    stack = getattr(data, "stack", None) or "default"
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local/state") / "embassy" / stack / "secrets"


def secret(folder: Path, name: str, nbytes: int = 48) -> str:
    """The secret `name`, created on first use (URL-safe base64 of `nbytes` random bytes)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    path = folder / name
    if not path.exists():
        value = base64.urlsafe_b64encode(_random.token_bytes(nbytes)).decode().rstrip("=")
        create_private(path, (value + "\n").encode())
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise UserError(f"secret {path} is readable by others (mode {mode:o})", f"run `chmod 600 {path}` and rotate it")
    return path.read_text().strip()


# Key generations: a re-key (`embassy custody rotate`) makes a new pgBackRest repo and new restic
# repositories per embassy, with new secrets; the older generations stay readable with theirs.
# `generation-<embassy>` lists each generation from 2 on with the time it took over; absent: generation 1.


def pgbackrest_secret(embassy: str, generation: int = 1) -> str:
    return f"pgbackrest-{embassy}.pass" if generation == 1 else f"pgbackrest-{embassy}.g{generation}.pass"


def restic_secret(embassy: str, generation: int = 1) -> str:
    return f"restic-{embassy}.pass" if generation == 1 else f"restic-{embassy}.g{generation}.pass"


def generations(folder: Path, embassy: str) -> list[tuple[int, str | None]]:
    """Every key generation of the embassy, oldest first, with the time it took over (None: since the deploy)."""
    path = folder / f"generation-{embassy}"
    found: list[tuple[int, str | None]] = [(1, None)]
    try:
        lines = path.read_text().split("\n")
    except FileNotFoundError:
        return found
    for line in filter(None, (x.strip() for x in lines)):
        number, _, since = line.partition(" ")
        if not number.isdigit() or int(number) != found[-1][0] + 1 or not since:
            raise UserError(f"{path}: line {line!r} is not '<next generation> <ISO time>'",
                            "restore the file from its backup; each line names the next key generation and its time")
        found.append((int(number), since))
    return found


def generation(folder: Path, embassy: str) -> int:
    """The embassy's current key generation: its new backups go there."""
    return generations(folder, embassy)[-1][0]


def record_generation(folder: Path, embassy: str, number: int, since: str) -> None:
    """Switch the embassy to key generation `number` (the next one) from `since` on."""
    if number != generation(folder, embassy) + 1:
        raise UserError(f"embassy {embassy} is at key generation {generation(folder, embassy)}, not {number - 1}",
                        "run `embassy custody rotate` again: it resumes a rotation that stopped half-way")
    path = folder / f"generation-{embassy}"
    create_private(path, f"{number} {since}\n".encode(), how="append")  # 0600 like every file of the folder


@dataclass(frozen=True)
class Vault:
    """An embassy's vault as the agents see it: S3 endpoint, bucket, CA and the agents' credentials."""

    embassy: str
    dns_name: str
    port: int
    bucket: str
    ca_file: str  # on the controller
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    @property
    def url(self) -> str:
        return f"https://{self.dns_name}:{self.port}"


def vault_from_data(entry: dict[str, Any], identity: str = "agent") -> Vault:
    """A Vault from one item of the inventory's `vaults` list, with the credentials of `identity`
    (`agent`: read and write; `reader`: read only), read from their file; a site's entry names its identities'
    sources instead (`credentials`: {identity: {"file"} or {"env"}}, inventories/site.py)."""
    sources = entry.get("credentials")
    if sources is not None:
        from embassy.vaultaccess import read

        if identity not in sources:
            raise UserError(f"vault '{entry['embassy']}': the site inventory names no {identity} identity",
                            f"add embassies.{entry['embassy']}.credentials.{identity}: {{file: PATH}} or {{env: PREFIX}}")
        creds: dict[str, str] = read(sources[identity], f"{identity} identity of vault '{entry['embassy']}'")
    else:
        creds_path = Path(entry.get(f"{identity}_credentials") or "")
        try:
            creds = json.loads(creds_path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read the {identity} credentials of vault '{entry['embassy']}': {exc}",
                            "bring the lab up again (`embassy lab up`) or fix the credentials file") from None
    endpoint = str(entry.get("endpoint", ""))
    port = int(endpoint.rsplit(":", 1)[1]) if endpoint.count(":") == 2 else 443
    return Vault(embassy=entry["embassy"], dns_name=entry["dns_name"], port=port, bucket=entry["bucket"],
                 ca_file=entry.get("ca_file", ""), access_key=creds["access_key_id"],
                 secret_key=creds["secret_access_key"], region=entry.get("region", "us-east-1"))
