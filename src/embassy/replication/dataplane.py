"""The replication data plane's configuration, rendered for one host: pgBackRest, restic, systemd.

Home gets one pgBackRest repo per embassy (repo1…repoN, each with its own cipher passphrase) and one
restic repository per file register and embassy. An embassy host gets only its own vault: one repo,
one passphrase; it never sees another embassy's secrets.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from embassy import model
from embassy.errors import RestoreFailed
from embassy.replication import pgmajor
from embassy.replication.secrets import Vault

if TYPE_CHECKING:
    from embassy.targets import Host, Target

STANZA = "home"  # one PostgreSQL cluster at home holds every postgres register
# PostgreSQL's major (and so its paths and service) is the host's: embassy.replication.pgmajor
PGBACKREST_DIR = "/etc/pgbackrest"
PGBACKREST_CONF = f"{PGBACKREST_DIR}/pgbackrest.conf"
PGBACKREST_CA = f"{PGBACKREST_DIR}/vault-ca.crt"
SPOOL = "/var/spool/pgbackrest"
RESTIC_DIR = "/etc/embassy/restic"
REGISTERS_ROOT = "/srv/registers"
REPLICATION_USER = "replicator"


def host_postgres(target: Target, host: Host) -> pgmajor.Postgres:
    """The one PostgreSQL major installed on a deployed `host`, read there (hosts of either Debian release, one
    command); none or several (a host not deployed, or halfway through an upgrade): RestoreFailed naming the host."""
    done = target.run_on(host, pgmajor.LIST_INSTALLED, timeout=30)
    try:
        return pgmajor.installed(done.stdout if done.returncode == 0 else "")
    except pgmajor.UnknownMajor as exc:
        raise RestoreFailed(f"{host.name}:{pgmajor.LIB}: {exc}",
                            "deploy the host (`embassy deploy`): it installs the PostgreSQL of the host's Debian "
                            "release; restore from another embassy meanwhile") from None


PGBACKREST_PATH = "/pgbackrest"  # key generation 1; generation g >= 2: /pgbackrest-g<g>
RESTIC_BASE = "restic"  # key generation 1; generation g >= 2: restic-g<g> (in the vault's bucket)


def pgbackrest_path(generation: int) -> str:
    """The pgBackRest repo path of a key generation: a re-key is a new repo (its cipher pass cannot change)."""
    return PGBACKREST_PATH if generation == 1 else f"{PGBACKREST_PATH}-g{generation}"


def restic_base(generation: int) -> str:
    """The folder of a key generation's restic repositories (restic only rewraps the same master key)."""
    return RESTIC_BASE if generation == 1 else f"{RESTIC_BASE}-g{generation}"


def generation_of(path: str | None) -> int:
    """The key generation a manifest's repository names (`/pgbackrest-g2`, `restic-g2/court-files`); none: 1."""
    match = re.fullmatch(r"/?(?:pgbackrest|restic)(?:-g(\d+))?(?:/[^/]+)?", path or "")
    if path and not match:
        raise ValueError(f"not a repository of embassy's naming: {path!r}")
    return int(match.group(1)) if match and match.group(1) else 1


def manifest_generation(body: dict[str, Any]) -> int:
    """The key generation whose repositories hold what a manifest names (every register of it: one generation)."""
    found = set()
    for reg in body.get("registers") or []:
        found.add(generation_of(reg.get("repo_path") if reg.get("kind") == "postgres" else reg.get("repository")))
    if len(found) > 1:
        raise ValueError(f"round {body.get('round')} names repositories of key generations {sorted(found)}")
    return found.pop() if found else 1


@dataclass(frozen=True)
class Repo:
    index: int  # repoN
    vault: Vault
    cipher_pass: str
    path: str = PGBACKREST_PATH  # the key generation's repo path


def pgbackrest_conf(repos: Sequence[Repo], *, archive_async: bool, pg_data: str) -> str:
    """`pg_data`: the cluster's folder on that host (its PostgreSQL major's: pgmajor.Postgres.data)."""
    lines = ["# Managed by embassy (deploys/agent.py or deploys/standby.py). Holds secrets: mode 0600, owner postgres.",
             "[global]"]
    for r in repos:
        n = f"repo{r.index}"
        lines += [
            f"# embassy '{r.vault.embassy}'",
            f"{n}-type=s3",
            f"{n}-path={r.path}",
            f"{n}-s3-bucket={r.vault.bucket}",
            f"{n}-s3-endpoint={r.vault.dns_name}",
            f"{n}-storage-port={r.vault.port}",
            f"{n}-storage-ca-file={PGBACKREST_CA}",
            f"{n}-s3-uri-style=path",
            f"{n}-s3-region={r.vault.region}",
            f"{n}-s3-key={r.vault.access_key}",
            f"{n}-s3-key-secret={r.vault.secret_key}",
            f"{n}-cipher-type=aes-256-cbc",
            f"{n}-cipher-pass={r.cipher_pass}",
            f"{n}-retention-full=2",
        ]
    lines += ["compress-type=zst", "process-max=2", "start-fast=y", "log-level-console=warn", "log-level-file=info",
              "io-timeout=30"]
    if archive_async:
        lines += ["archive-async=y", f"spool-path={SPOOL}"]
    lines += ["", f"[{STANZA}]", f"pg1-path={pg_data}", "pg1-port=5432", ""]
    if archive_async:
        # pgBackRest pushes a segment to the repos one after the other: a vault that does not answer
        # must time out soon, or every other embassy waits behind it (measured: 161 s at io-timeout=30).
        lines += ["[global:archive-push]", "io-timeout=5", ""]
    return "\n".join(lines)


def home_postgresql_conf(listen: str) -> str:
    return "\n".join([
        "# Managed by embassy (deploys/home_state.py): the home cluster, primary of the warm standbys.",
        f"listen_addresses = 'localhost,{listen}'",
        "wal_level = logical",  # an exact digest: a temporary logical slot's exported snapshot (replication.digest)
        "max_wal_senders = 10",
        "max_replication_slots = 10",
        "wal_keep_size = '512MB'",
        # Full-page images compressed (lz4): a third of the WAL bytes under pgbench (11 KB -> 3.4 KB a transaction),
        # so less for the walsenders, archive-push (compress, encrypt, upload to every vault) and the vaults,
        # for ~0.07 CPU ms more in the backends (zstd: 1.9 KB for ~0.19 ms). tests/bench/test_bench_dataplane.py.
        "wal_compression = lz4",
        "hot_standby = on",
        "",
    ])


def archive_conf(archive_timeout: int) -> str:
    return "\n".join([
        "# Managed by embassy (deploys/agent.py): every WAL segment goes to every embassy's repo.",
        "archive_mode = on",
        f"archive_command = 'pgbackrest --stanza={STANZA} archive-push %p'",
        f"archive_timeout = {archive_timeout}",
        "",
    ])


def home_pg_hba(standbys: Sequence[str]) -> str:
    lines = [
        "# Managed by embassy (deploys/home_state.py). TYPE DATABASE USER ADDRESS METHOD",
        "local   all             postgres                                peer",
        "local   all             all                                     peer",
        "host    all             all             127.0.0.1/32            scram-sha-256",
        "host    all             all             ::1/128                 scram-sha-256",
        "local   replication     all                                     peer",
        "host    replication     all             127.0.0.1/32            scram-sha-256",
    ]
    lines += [f"host    replication     {REPLICATION_USER:<15} {addr + '/32':<23} scram-sha-256" for addr in standbys]
    return "\n".join(lines) + "\n"


def standby_conf(primary: str, application_name: str) -> str:
    return "\n".join([
        "# Managed by embassy (deploys/standby.py): a streaming standby of home; falls back to this embassy's vault.",
        f"primary_conninfo = 'host={primary} port=5432 user={REPLICATION_USER} "
        f"passfile=/var/lib/postgresql/.pgpass application_name={application_name}'",
        f"restore_command = 'pgbackrest --stanza={STANZA} archive-get %f \"%p\"'",
        "hot_standby = on",
        "",
    ])


def restic_repository(vault: Vault, register: str, generation: int = 1) -> str:
    return f"s3:{vault.url}/{vault.bucket}/{restic_base(generation)}/{register}"


def restic_env(vault: Vault, generation: int = 1) -> str:
    """Per-embassy environment of the restic wrappers (credentials: mode 0600, owner root)."""
    return "\n".join([
        f"# embassy '{vault.embassy}' (managed by embassy)",
        f"EMBASSY={vault.embassy}",
        f"RESTIC_BASE=s3:{vault.url}/{vault.bucket}/{restic_base(generation)}",
        f"RESTIC_PASSWORD_FILE={RESTIC_DIR}/{vault.embassy}.pass",
        f"RESTIC_CACERT={RESTIC_DIR}/vault-ca.crt",
        f"AWS_ACCESS_KEY_ID={vault.access_key}",
        f"AWS_SECRET_ACCESS_KEY={vault.secret_key}",
        f"AWS_DEFAULT_REGION={vault.region}",
        "RESTIC_CACHE_DIR=/var/cache/restic",
        "",
    ])


def unit(description: str, exec_start: str, *, user: str = "root", oneshot: bool = True, after: str = "network-online.target",
         extra: Sequence[str] = ()) -> str:
    lines = ["[Unit]", f"Description={description}", f"After={after}", f"Wants={after}", "", "[Service]"]
    lines += ["Type=oneshot" if oneshot else "Type=simple", f"User={user}", f"ExecStart={exec_start}", *extra, ""]
    if not oneshot:
        lines += ["[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def timer(description: str, unit_name: str, *, calendar: str | None = None, every_seconds: int | None = None) -> str:
    lines = ["[Unit]", f"Description={description}", "", "[Timer]", f"Unit={unit_name}"]
    if calendar:
        lines += [f"OnCalendar={calendar}", "Persistent=true"]
    if every_seconds:
        lines += ["OnBootSec=60", f"OnUnitActiveSec={every_seconds}"]
    lines += ["RandomizedDelaySec=10", "", "[Install]", "WantedBy=timers.target", ""]
    return "\n".join(lines)


def script(name: str) -> str:
    """A shell tool installed on the hosts (src/embassy/replication/files/NAME, installed as /usr/local/sbin/NAME)."""
    return resources.files("embassy.replication").joinpath("files", name).read_text()


def host_module_files() -> list[str]:
    """The modules of this package that run on the hosts (uploaded to /opt/embassy/replication/)."""
    return ["__init__.py", "manifest.py", "privatefile.py", "digest.py", "hostcmd.py", "round.py", "roundstate.py",
            "heartbeat.py", "lag.py", "monitor.py", "restoretest.py", "pgmajor.py", "vaultnet.py"]


def backup_timers(dep: model.Deployment) -> dict[str, tuple[str, str]]:
    """Base backups on a schedule derived from the objectives: a full weekly, a differential often enough
    that a restore replays at most a few hours of WAL (hourly per 5 minutes of the tightest RTO, 1-24 h)."""
    rtos = [r.rto_seconds for r in dep.registers if r.kind is model.RegisterKind.POSTGRES]
    hours = max(1, min(24, min(rtos) // 300)) if rtos else 24
    return {"embassy-pgbackrest-full": ("full", "Sun *-*-* 01:30:00"),
            "embassy-pgbackrest-diff": ("diff", f"*-*-* 00/{hours}:15:00")}
