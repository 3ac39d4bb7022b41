"""The restore bundle of one embassy: every secret a restore there needs, and nothing of another embassy.

Gathered on the controller while home still exists (its secrets folder, and each vault as the target reaches it:
`target.vault(embassy)`, its read-only identity's credentials read where the target says); opened at the embassy
on the day home is gone, from K officials' shares.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from embassy import model, vaultaccess
from embassy.errors import CredentialsUnavailable, UserError
from embassy.replication import dataplane, freshness, secrets
from embassy.replication import verify as vault_verify
from embassy.targets import Target

FORMAT = "embassy-custody-bundle/2"  # 2: the envelope carries home's signature (seal.py)
PGBACKREST_REPO_PATH = dataplane.PGBACKREST_PATH  # key generation 1's repo path


class VaultAccess(BaseModel):
    """The embassy's vault with its read-only identity: what `restore` needs to read it."""

    embassy: str
    endpoint: str
    dns_name: str
    bucket: str
    region: str = "us-east-1"
    ca_pem: str
    access_key_id: str  # "" on AWS: no static key exists, the restore role is assumed instead
    secret_access_key: str
    # AWS: the stack's restore role (stack output restore_role_arn): what a fresh controller with only the custody
    # sheets assumes (STS, its own identity) to read this vault. None outside AWS.
    restore_role_arn: str | None = None


class Passphrase(BaseModel):
    """One passphrase of a repository and the time from which backups use it (history after a rotation)."""

    value: str
    repo_path: str = PGBACKREST_REPO_PATH
    since: str  # ISO 8601: the first backup it encrypts


class Bundle(BaseModel):
    format: str = FORMAT
    stack: str
    embassy: str
    version: int
    created: str
    manifest_public_key: str  # PEM: what a restore trusts the manifests with (never from the vault)
    vault: VaultAccess
    pgbackrest: list[Passphrase] = Field(default_factory=list)  # newest last; the history restores older backups
    restic: list[Passphrase] = Field(default_factory=list)
    outputs: dict[str, Any] = Field(default_factory=dict)  # the stack facts the embassy needs (mode, registers)
    # The newest round home had signed for this embassy, as the controller could prove it at sealing: inside the
    # sealed content (AES-GCM), so no host can lower it; freshness.bundle_round() reads it. None: anchors nothing.
    sealed_round: int | None = Field(default=None, ge=1)

    def secrets(self) -> list[str]:
        """Every secret value in the bundle (tests search stored objects, sheets and logs for each)."""
        return [v for v in (self.vault.access_key_id, self.vault.secret_access_key,
                            *(p.value for p in self.pgbackrest), *(p.value for p in self.restic)) if v]


def _read_secret(folder: Path, name: str) -> tuple[str, str]:
    path = folder / name
    try:
        value = path.read_text().strip()
        since = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC).isoformat()
    except OSError:
        raise UserError(f"no restore secret {path} on this controller",
                        "run `embassy deploy` first: custody gathers the secrets the deploy made") from None
    if not value:
        raise UserError(f"restore secret {path} is empty", "run `embassy deploy` again, or restore the file")
    return value, since


def _earlier(made: str, then: str | None) -> str:
    return then if then and dt.datetime.fromisoformat(then) < dt.datetime.fromisoformat(made) else made


def holds_kind(dep: model.Deployment, embassy: str, kind: model.RegisterKind) -> bool:
    return any(r.kind is kind and any(e.name == embassy for e in dep.holders(r)) for r in dep.registers)


def vault_access(target: Target, embassy: str) -> VaultAccess:
    """The embassy's vault with its read-only identity, as the target reaches it (its credentials and CA read where
    the target says: a file or the environment)."""
    access = target.vault(embassy)
    role = target.vault_role(embassy)
    # AWS: no key exists to seal; the bundle names the restore role a controller with only the sheets assumes.
    keys = ({"access_key_id": "", "secret_access_key": ""} if role else
            vaultaccess.read(access.identity("reader").as_spec(), f"vault of {embassy}, identity reader"))
    try:
        ca_pem = Path(access.ca_file).read_text() if access.ca_file != vaultaccess.SYSTEM_CA else ""
    except OSError as exc:
        raise CredentialsUnavailable(f"vault of {embassy}: cannot read its CA {access.ca_file}: {exc.strerror or exc}",
                                     "bring the lab up again (`embassy lab up`), or fix vault.ca_file in the site "
                                     "inventory") from None
    return VaultAccess(embassy=embassy, endpoint=access.endpoint, dns_name=urlsplit(access.endpoint).hostname or "",
                       bucket=access.bucket, region=access.region, ca_pem=ca_pem,
                       access_key_id=keys["access_key_id"], secret_access_key=keys["secret_access_key"],
                       restore_role_arn=role)


def sealed_round(folder: Path, embassy: str) -> int | None:
    """The embassy's round to seal: its high-water mark in the controller's secrets folder, or None.

    Why the mark and not a fresh read of the embassy's vault: the mark is the newest head this controller
    verified with home's public key (verify raises it, from this vault or any other that holds the embassy's
    manifests), kept in a 0600 file the hosts never touch; a read at sealing would take whatever round the
    vault's host chooses to serve at that moment (at best what verify already recorded) and would make
    `custody init` depend on every vault being reachable. A controller that never verified the embassy seals
    no round: that bundle anchors nothing rather than a guessed round."""
    mark = freshness.read_mark(folder, embassy)
    return mark.round if mark is not None and mark.round > 0 else None


def gather(dep: model.Deployment, target: Target, folder: Path, version: int, now: dt.datetime) -> dict[str, Bundle]:
    """One bundle per embassy, from the controller's secrets folder and the vaults as the target reaches them."""
    public = vault_verify.public_key_pem(dep, target)
    bundles = {}
    for emb in dep.embassies:
        bundle = Bundle(
            stack=dep.stack, embassy=emb.name, version=version, created=now.isoformat(), manifest_public_key=public,
            vault=vault_access(target, emb.name), sealed_round=sealed_round(folder, emb.name),
            outputs={"mode": emb.mode.value, "region": emb.region, "retention_days": emb.retention_days,
                     "registers": [r.name for r in dep.registers_in_restore_order()
                                   if any(e.name == emb.name for e in dep.holders(r))]})
        # Every key generation, oldest first: a restore to before a rotation reads the older repositories.
        generations = secrets.generations(folder, emb.name)
        for i, (g, switched) in enumerate(generations):
            # Generation 1 took over at the deploy: its secret's time, but never after the switch to the next one
            # (a secret file put back from a copy has the time it was put back).
            then = generations[i + 1][1] if i + 1 < len(generations) else None
            if holds_kind(dep, emb.name, model.RegisterKind.POSTGRES):
                value, made = _read_secret(folder, secrets.pgbackrest_secret(emb.name, g))
                bundle.pgbackrest.append(Passphrase(value=value, repo_path=dataplane.pgbackrest_path(g),
                                                    since=switched or _earlier(made, then)))
            if holds_kind(dep, emb.name, model.RegisterKind.FILES):
                value, made = _read_secret(folder, secrets.restic_secret(emb.name, g))
                bundle.restic.append(Passphrase(value=value, repo_path="/" + dataplane.restic_base(g),
                                                since=switched or _earlier(made, then)))
        bundles[emb.name] = bundle
    return bundles
