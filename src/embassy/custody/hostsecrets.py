"""Restore secrets for an embassy host, from an opened bundle or, for a plain restore, the controller's folder.

Two ways they reach the host's tools:
- `restore_env(keys)`: in the environment of each pgBackRest or restic command that needs them, and nowhere
  else. The caller hands the variables (PGBACKREST_REPO1_PATH/_CIPHER_TYPE/_CIPHER_PASS, RESTIC_PASSWORD and
  EMBASSY_RESTIC_FOLDER for the embassy-restic wrapper) to `target.run_on(host, command, env=…)`, which every target
  sends on the SSH (or SSM) session's standard input as `export` lines read by `sudo sh -s` (targets.env_script),
  never in an argv, never in a file on the host: pgBackRest and restic take them over their configuration files.
  A restore to a point of another key generation than the host's files hold uses this on every target; on AWS, a
  restore with the officials' shares uses it for every generation (the host's disk is the host nation's: no key
  is written there).
- `write`/`apply`: files as the deploy makes them (pgBackRest's config, restic's password and environment).
  Only `--shares` on the lab or a site writes them, the bundle's newest generation, putting the host back
  as its deploy left it (there the deploy keeps the vault identity and the passphrase on the host's disk anyway).
`withdraw` removes them from the host and the controller: a drill then proves that a restore needs nothing but
the officials' shares.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from embassy import model, vaultaccess
from embassy.custody.bundle import Bundle, Passphrase, VaultAccess, holds_kind
from embassy.errors import CredentialsUnavailable, RestoreFailed
from embassy.replication import dataplane, secrets
from embassy.replication.dataplane import Repo
from embassy.replication.secrets import Vault
from embassy.targets import Host, Target

# Every generation's files: pgbackrest-<e>.pass, pgbackrest-<e>.g<g>.pass, restic-<e>.pass, restic-<e>.g<g>.pass
RESTORE_SECRET_GLOBS = ("pgbackrest-*.pass", "restic-*.pass")


@dataclass(frozen=True)
class Keys:
    """One key generation's restore secrets of one embassy (None: it holds no register of that kind)."""

    generation: int
    vault: Vault
    ca_pem: str
    pgbackrest: str | None
    restic: str | None


@dataclass(frozen=True)
class Keyring:
    """Each key generation's restore secrets of one embassy (`keyring(generation)`).

    hand_over: the generation whose secrets every command of the restore gets in its environment, the head's
    verify included, because the host's files hold none (AWS with the officials' shares: the bundle's newest
    generation); None where the host's files hold the head's generation (its deploy, or `apply`)."""

    keys: Callable[[int], Keys]
    hand_over: int | None = None

    def __call__(self, generation: int) -> Keys:
        return self.keys(generation)


def restore_env(keys: Keys, repo: int = 1) -> dict[str, str]:
    """The environment in which pgBackRest (repo `repo`) and restic read one key generation's repositories with its
    secrets, over what the host's files say (pgBackRest: environment over its config file; embassy-restic: a
    handed RESTIC_PASSWORD over its env file's password file, EMBASSY_RESTIC_FOLDER over its repository folder)."""
    env: dict[str, str] = {}
    if keys.pgbackrest is not None:
        env[f"PGBACKREST_REPO{repo}_PATH"] = dataplane.pgbackrest_path(keys.generation)
        env[f"PGBACKREST_REPO{repo}_CIPHER_TYPE"] = "aes-256-cbc"
        env[f"PGBACKREST_REPO{repo}_CIPHER_PASS"] = keys.pgbackrest
    if keys.restic is not None:
        env["EMBASSY_RESTIC_FOLDER"] = dataplane.restic_base(keys.generation)
        env["RESTIC_PASSWORD"] = keys.restic
    return env


def vault_of(bundle: Bundle) -> Vault:
    return _vault(bundle.vault)


def _vault(v: VaultAccess) -> Vault:
    port = int(v.endpoint.rsplit(":", 1)[1]) if v.endpoint.count(":") == 2 else 443
    return Vault(embassy=v.embassy, dns_name=v.dns_name, port=port, bucket=v.bucket, ca_file="", access_key=v.access_key_id,
                 secret_key=v.secret_access_key, region=v.region)


def bundle_generation(bundle: Bundle) -> int:
    """The newest key generation the bundle holds (new backups go there)."""
    paths = [p.repo_path for p in bundle.pgbackrest[-1:]] + [p.repo_path for p in bundle.restic[-1:]]
    return max((dataplane.generation_of(p) for p in paths), default=1)


def bundle_keys(bundle: Bundle, generation: int) -> Keys:
    """The bundle's secrets of one key generation, found by the repositories that generation names."""
    def pick(history: list[Passphrase], path: str, what: str) -> str | None:
        if not history:
            return None
        for p in history:
            if p.repo_path == path:
                return str(p.value)
        raise RestoreFailed(f"bundle version {bundle.version} of {bundle.embassy} holds no {what} for {path} "
                            f"(key generation {generation}; it holds {', '.join(p.repo_path for p in history)})",
                            "the manifest names a generation issued after this bundle: run `embassy custody rotate` "
                            "while home exists, or restore to an earlier point in time")
    return Keys(generation, vault_of(bundle), bundle.vault.ca_pem,
                pick(bundle.pgbackrest, dataplane.pgbackrest_path(generation), "pgBackRest passphrase"),
                pick(bundle.restic, "/" + dataplane.restic_base(generation), "restic password"))


def target_vault(access: vaultaccess.VaultAccess) -> tuple[Vault, str]:
    """The embassy's vault as its host reads it (the read-only identity, as the deploy writes it) and its CA (PEM),
    from the target's vault access: the credentials are read where the target says (a file or the environment)."""
    url = urlsplit(access.endpoint)
    keys = vaultaccess.read(access.identity("reader").as_spec(), f"vault of {access.embassy}, identity reader")
    ca_file = access.ca_file if access.ca_file != vaultaccess.SYSTEM_CA else ""
    try:
        ca_pem = Path(ca_file).read_text() if ca_file else ""
    except OSError as exc:
        raise CredentialsUnavailable(f"vault of {access.embassy}: cannot read its CA {ca_file}: {exc.strerror or exc}",
                                     "check vault.ca_file in the site inventory") from None
    vault = Vault(embassy=access.embassy, dns_name=url.hostname or "", port=url.port or 443, bucket=access.bucket,
                  ca_file="", access_key=keys["access_key_id"], secret_key=keys["secret_access_key"],
                  region=access.region)
    return vault, ca_pem


def controller_keys(dep: model.Deployment, access: vaultaccess.VaultAccess, embassy: str, folder: Path,
                    generation: int) -> Keys:
    """A key generation's secrets from the controller's folder (a plain restore, while it exists); the vault as the
    target reaches it (`target.vault(embassy)`)."""

    def read(name: str, kind: model.RegisterKind) -> str | None:
        if not holds_kind(dep, embassy, kind):
            return None
        path = folder / name
        try:
            return path.read_text().strip()
        except OSError:
            raise RestoreFailed(f"no restore secret {path} (key generation {generation} of {embassy})",
                                "restore with the officials' shares: `embassy restore … --shares`") from None

    pgbackrest = read(secrets.pgbackrest_secret(embassy, generation), model.RegisterKind.POSTGRES)
    restic = read(secrets.restic_secret(embassy, generation), model.RegisterKind.FILES)
    vault, ca_pem = target_vault(access)
    return Keys(generation, vault, ca_pem, pgbackrest, restic)


def _install(target: Target, host: Host, path: str, text: str, owner: str, mode: str) -> None:
    done = target.run_on(host, f"sudo install -o {owner} -g {owner} -m {mode} /dev/stdin {path}", timeout=60, stdin=text)
    if done.returncode != 0:
        raise RestoreFailed(f"{host.name}: writing {path} failed: {done.stderr.strip()[-300:]}")


def write(target: Target, host: Host, keys: Keys) -> None:
    """Write one key generation's restore secrets where the restore tools read them (files as the deploy makes them).

    Only for the lab and a site (`apply`): on AWS no key is written to the host's disk (`restore_env` in run_on's
    env instead)."""
    if target.kind == "aws":
        raise RestoreFailed(f"{host.name}: restore secrets are never written to an AWS enclave's disk",
                            "this is a bug of the caller: hand them over in run_on's env (restore_env)")
    if keys.pgbackrest is not None:
        _install(target, host, dataplane.PGBACKREST_CA, keys.ca_pem, "postgres", "644")
        repo = Repo(1, keys.vault, keys.pgbackrest, dataplane.pgbackrest_path(keys.generation))
        _install(target, host, dataplane.PGBACKREST_CONF, dataplane.pgbackrest_conf(
            [repo], archive_async=False, pg_data=dataplane.host_postgres(target, host).data),
                 "postgres", "600")
    if keys.restic is not None:
        base = f"{dataplane.RESTIC_DIR}/{keys.vault.embassy}"
        _install(target, host, f"{dataplane.RESTIC_DIR}/vault-ca.crt", keys.ca_pem, "root", "644")
        _install(target, host, f"{base}.pass", keys.restic + "\n", "root", "600")
        _install(target, host, f"{base}.env", dataplane.restic_env(keys.vault, keys.generation), "root", "600")


def apply(target: Target, host: Host, bundle: Bundle) -> None:
    """The bundle's newest key generation onto the host (what new backups use; a restore may switch)."""
    write(target, host, bundle_keys(bundle, bundle_generation(bundle)))


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
    done = target.run_on(host, command, timeout=60)
    if done.returncode != 0:
        raise RestoreFailed(f"{host.name}: removing the restore secrets failed: {done.stderr.strip()[-300:]}")
    removed += [f"{host.name}:{dataplane.PGBACKREST_CONF} (cipher-pass)", f"{host.name}:{dataplane.RESTIC_DIR}/{embassy}.pass"]
    return removed
