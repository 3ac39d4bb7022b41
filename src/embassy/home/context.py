"""What the deploys need from an inventory's host data: the stack model, the seed, vaults and secrets.

Both inventories (lab.py from the lab state, aws.py from stack outputs) give every host: role, embassy,
mode, stack, vaults (list of {embassy, dns_name, endpoint, bucket, ca_file, agent_credentials}) and,
for the lab, lab_id and lab_dir (its state folder). Everything here runs on the controller.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

from embassy import model
from embassy.errors import UserError
from embassy.home import generator
from embassy.home.generator import RegisterRef, Spec
from embassy.replication import dataplane, secrets
from embassy.replication.dataplane import Repo

SEED_ENV = "EMBASSY_HOME_SEED"
SIZE_ENV = "EMBASSY_HOME_SIZE_MB"


@cache
def deployment(stack: str) -> model.Deployment:
    try:
        return model.load_stack(stack)
    except model.ConfigInvalid as exc:
        raise UserError(f"stack '{stack}' is invalid: {exc.issues[0].path}: {exc.issues[0].message}",
                        f"run `embassy validate --stack {stack}`") from None


def spec(data: Any) -> Spec:
    seed = getattr(data, "home_seed", None) or os.environ.get(SEED_ENV) or Spec.seed
    size = getattr(data, "home_size_mb", None) or os.environ.get(SIZE_ENV) or Spec.size_mb
    try:
        result = Spec(seed=int(seed), size_mb=float(size))
    except ValueError:
        raise UserError(f"bad seed or size: seed={seed!r} size_mb={size!r}",
                        f"set {SEED_ENV} to an integer and {SIZE_ENV} to a number of MB") from None
    if not 0.1 <= result.size_mb <= 100_000:
        raise UserError(f"size {result.size_mb} MB is out of range", f"set {SIZE_ENV} between 0.1 and 100000")
    return result


def seed_folder(data: Any, s: Spec) -> Path:
    """Where the controller keeps generated data (deterministic, so a cache is safe)."""
    own = getattr(data, "lab_dir", None)  # the lab's state folder, named by inventories/lab.py
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "embassy"
    base = Path(own) / "seed" if own else cache / "seed"
    return base / s.key


@cache
def _generated(stack: str, seed: int, size_mb: float, folder: str) -> dict[str, Any]:
    dep = deployment(stack)
    refs = [RegisterRef(r.name, r.kind.value) for r in dep.registers]
    return generator.generate(refs, Spec(seed, size_mb), Path(folder))


def generated(data: Any) -> tuple[Path, dict[str, Any]]:
    """The seed folder and its manifest, generating it on first use."""
    s = spec(data)
    folder = seed_folder(data, s)
    return folder, _generated(data.stack, s.seed, s.size_mb, str(folder))


def vaults(data: Any, identity: str = "agent") -> list[secrets.Vault]:
    """The inventory's vaults with the credentials of `identity`: `agent` (home writes) or `reader` (embassies)."""
    entries = getattr(data, "vaults", None) or []
    if not entries:
        raise UserError("the inventory gives no vaults", "use inventories/lab.py (lab up first) or inventories/aws.py")
    return [secrets.vault_from_data(e, identity) for e in entries]


def holds(dep: model.Deployment, register: model.Register, embassy: str) -> bool:
    return any(e.name == embassy for e in dep.holders(register))


def home_repos(data: Any) -> list[Repo]:
    """Home's pgBackRest repos: one per embassy holding any postgres register, in stack order."""
    dep = deployment(data.stack)
    folder = secrets.secrets_dir(data)
    by_name = {v.embassy: v for v in vaults(data)}
    pg = [r for r in dep.registers if r.kind is model.RegisterKind.POSTGRES]
    names = [e.name for e in dep.embassies if any(holds(dep, r, e.name) for r in pg)]
    missing = [n for n in names if n not in by_name]
    if missing:
        raise UserError(f"no vault for embassies {', '.join(missing)} in the inventory",
                        "bring the lab up with the same stack, or check the stack outputs")
    return [repo(i + 1, by_name[n], folder) for i, n in enumerate(names)]


def repo(index: int, vault: secrets.Vault, folder: Path) -> Repo:
    """repoN for the vault's embassy: its current key generation's repo path and passphrase."""
    g = secrets.generation(folder, vault.embassy)
    return Repo(index, vault, secrets.secret(folder, secrets.pgbackrest_secret(vault.embassy, g)),
                dataplane.pgbackrest_path(g))


def generation(data: Any, embassy: str) -> int:
    """The embassy's current key generation (the controller's record; 1 until a `custody rotate`)."""
    return secrets.generation(secrets.secrets_dir(data), embassy)


def embassy_repo(data: Any) -> Repo:
    """An embassy host's only repo: its own vault with the read-only identity, its own passphrase (as repo1)."""
    own = [v for v in vaults(data, "reader") if v.embassy == data.embassy]
    if not own:
        raise UserError(f"no vault for embassy '{data.embassy}' in the inventory", "bring the lab up again")
    return repo(1, own[0], secrets.secrets_dir(data))


def restic_password(data: Any, embassy: str) -> str:
    """The restic key of the embassy's current key generation."""
    folder = secrets.secrets_dir(data)
    return secrets.secret(folder, secrets.restic_secret(embassy, secrets.generation(folder, embassy)))


def replication_password(data: Any) -> str:
    return secrets.secret(secrets.secrets_dir(data), "replication.pass", nbytes=24)


def archive_timeout(dep: model.Deployment) -> int:
    """Cold embassies only see archived WAL: close a segment at least as often as the tightest RPO allows."""
    pg = [r.rpo_seconds for r in dep.registers if r.kind is model.RegisterKind.POSTGRES]
    # ...and never later than what a cold embassy promises (cold_rpo_seconds).
    return min(dep.cold_rpo_seconds, max(model.COLD_MIN_RPO_SECONDS, min(pg))) if pg else dep.cold_rpo_seconds
