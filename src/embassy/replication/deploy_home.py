"""The replication agent on home, as an importable pyinfra @deploy (entry point: deploys/agent.py).

pgBackRest (one encrypted repo per embassy, async WAL archiving to all of them), restic (one
repository per file register and embassy), the manifest key, the heartbeat, the replication rounds
(systemd timer) and the Prometheus metrics of lag.
"""

from __future__ import annotations

import io
import json
from collections.abc import Generator
from importlib import resources
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import deploy, operation
from pyinfra.facts.server import LinuxDistribution
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from embassy import model
from embassy.home import context
from embassy.home.ops import as_user, ensure
from embassy.replication import dataplane, digest, facts, pgmajor
from embassy.replication.secretfile import secret_file  # secrets never pass through /tmp

MODULES_DIR = "/opt/embassy/replication"
CONFIG_DIR = "/etc/embassy/replication"
KEY_FILE = "/etc/embassy/manifest.key"  # the home state's private manifest key: 0600 root, never leaves home
PUB_FILE = "/etc/embassy/manifest.pub"
STATE_DIR = "/var/lib/embassy/replication"
METRICS_PORT = 9750
PGBR = f"pgbackrest --stanza={dataplane.STANZA}"


def host_postgres() -> pgmajor.Postgres:
    """The PostgreSQL this host's Debian release carries, the release read from the host's own os-release (not the
    stack's setting: a lab built on another release, or a host not yet replaced, runs what it is)."""
    distro = host.get_fact(LinuxDistribution)
    name, major = distro.get("name"), distro.get("major")
    if name != "Debian" or not isinstance(major, int):
        raise pgmajor.UnknownMajor(f"{host.name}: not a Debian host the deploys know (os-release: {name!r} {major!r})")
    return pgmajor.for_release(major)


def put(**kwargs: Any) -> Any:
    """files.put into a folder that is there: the system's, or one an earlier operation of the deploy made. Else
    pyinfra asks the host for the parent folder on every run (one more SSH round trip per file)."""
    return files.put(create_remote_dir=False, **kwargs)


def agent_packages(pg: pgmajor.Postgres) -> list[str]:
    """What home's agent needs installed (the home state's deploy installs them in its own apt run: one apt
    transaction on a fresh home, measured 33 s + 19 s as two)."""
    return ["pgbackrest", "restic", pg.packages[0], "python3-psycopg", "python3-cryptography", "python3-boto3",
            "python3-prometheus-client"]


def ca_bundle(vaults: list[Any]) -> str:
    """The CA(s) the vaults' certificates chain to (one lab CA; several if the inventory says so)."""
    seen: list[str] = []
    for vault in vaults:
        if vault.ca_file and vault.ca_file not in seen:
            seen.append(vault.ca_file)
    return "".join(Path(p).read_text() for p in seen)


def digest_role_sql() -> str:
    """The read-only role the digests run as (idempotent): it reads every table, bypasses row security (a
    policy can neither hide rows nor run code in a digest), opens the replication connection of an exact
    digest's temporary slot; it owns nothing, writes nothing, creates no role. Restored copies of home
    (standbys, scratch clusters) carry it."""
    role = digest.ROLE
    return (f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = '{role}') THEN "
            f"CREATE ROLE {role}; END IF; END $$; "
            f"ALTER ROLE {role} LOGIN REPLICATION BYPASSRLS NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT; "
            f"GRANT pg_read_all_data TO {role};")


def digest_role_check() -> str:
    role = digest.ROLE
    return (f"SELECT rolcanlogin AND rolreplication AND rolbypassrls AND NOT rolsuper AND NOT rolcreaterole "
            f"AND NOT rolcreatedb AND pg_has_role('{role}', 'pg_read_all_data', 'USAGE') FROM pg_catalog.pg_roles "
            f"WHERE rolname = '{role}'")


def digest_role() -> None:
    """The OS user and the PostgreSQL role of the digests (peer authentication maps one to the other)."""
    server.user(name=f"Digest OS user {digest.ROLE} (no login)", user=digest.ROLE, system=True,
                shell="/usr/sbin/nologin", home="/nonexistent", create_home=False)
    ensure(name=f"PostgreSQL: read-only digest role {digest.ROLE}",
           check=as_user("postgres", f"psql -XAtc \"{digest_role_check()}\" | grep -qx t"),
           command=as_user("postgres", f"psql -X -v ON_ERROR_STOP=1 -q <<'SQL'\n{digest_role_sql()}\nSQL"))


def round_interval(dep: model.Deployment) -> int:
    """Rounds often enough for the file registers' RPO (two tries inside it), at least a minute apart."""
    rpos = [r.rpo_seconds for r in dep.registers if r.kind is model.RegisterKind.FILES]
    return max(60, min(rpos) // 2) if rpos else 300


def upload_modules() -> list[Any]:
    """This package's host-side modules, as the package `replication` under /opt/embassy."""
    files.directory(name="Replication modules folder", path=MODULES_DIR, user="root", group="root", mode="755")
    return [put(name=f"Replication module {name}",
                      src=str(resources.files("embassy.replication").joinpath(name)),
                      dest=f"{MODULES_DIR}/{name}", user="root", group="root", mode="644")
            for name in dataplane.host_module_files()]


def round_config(dep: model.Deployment, vaults: dict[str, Any], repos: dict[str, dataplane.Repo],
                 generations: dict[str, int]) -> dict[str, Any]:
    registers = []
    for reg in dep.registers:
        entry: dict[str, Any] = {"name": reg.name, "kind": reg.kind.value, "rpo_seconds": reg.rpo_seconds,
                                 "rpo_bound": {e.name: dep.rpo_bound(reg, e) for e in dep.holders(reg)}}
        if reg.kind is model.RegisterKind.POSTGRES:
            from embassy.home import schema

            entry["database"] = schema.database_name(reg.name)
        else:
            entry["path"] = f"{dataplane.REGISTERS_ROOT}/{reg.name}"
        registers.append(entry)
    embassies = []
    for e in dep.embassies:
        held = [r for r in dep.registers if context.holds(dep, r, e.name)]
        v = vaults[e.name]
        embassies.append({
            "name": e.name, "mode": e.mode.value, "repo": repos[e.name].index if e.name in repos else None,
            # the key generation's repositories, named in each manifest (a restore picks its secrets by them)
            "repo_path": repos[e.name].path if e.name in repos else None,
            "restic_base": dataplane.restic_base(generations.get(e.name, 1)),
            "postgres": [r.name for r in held if r.kind is model.RegisterKind.POSTGRES],
            "files": [r.name for r in held if r.kind is model.RegisterKind.FILES],
            "vault": {"endpoint": v.url, "bucket": v.bucket, "region": v.region,
                      "credentials_file": f"{CONFIG_DIR}/{e.name}.s3.json"}})
    return {"stack": dep.stack, "state": {"name": dep.state.name, "code": dep.state.code}, "key_file": KEY_FILE,
            "state_dir": STATE_DIR, "ca_file": f"{CONFIG_DIR}/vault-ca.crt", "archive_wait_seconds": 30,
            "embassies": embassies, "registers": registers}


# Each fact below asks the vaults (pgBackRest's `info` reads every repo; restic lists a repository's snapshots) and
# pyinfra 3 caches no fact: one operation per question, never one per repo asking the same question again.
@operation()
def first_full_backups(repos: list[int], paths: tuple[str, ...] = ()) -> Generator[str, None, None]:
    """A full backup in each repo that holds none (after the stanza; one `info` over every repo)."""
    got = host.get_fact(facts.PgBackRestRepos, stanza=dataplane.STANZA, paths=paths)
    missing = [n for n in repos if got.get(n, {}).get("backups", 0) == 0]
    if not missing:
        host.noop(f"repos {repos} hold a backup")
        return
    for n in missing:
        yield as_user("postgres", f"{PGBR} --repo={n} --type=full backup")


@operation()
def restic_repository_with_snapshot(embassy: str, register: str, path: str,
                                    folder: str = "restic") -> Generator[str, None, None]:
    """The register's restic repository at the embassy, with a first snapshot (one listing of its snapshots)."""
    snapshots = host.get_fact(facts.ResticSnapshots, embassy=embassy, register=register, folder=folder)
    if snapshots:
        host.noop(f"{folder}/{register} at {embassy} holds a snapshot")
        return
    if snapshots is None:
        yield f"embassy-restic {embassy} {register} init --repository-version 2"
    yield f"embassy-restic {embassy} {register} backup --compression auto --host home --tag embassy {path}"


@deploy("Replication agent on home")
def home_agent() -> None:
    dep = context.deployment(host.data.stack)
    repos = context.home_repos(host.data)
    vaults = context.vaults(host.data)
    file_registers = [r for r in dep.registers if r.kind is model.RegisterKind.FILES]
    address = host.data.get("service_address") or host.data.ssh_hostname
    pg = host_postgres()

    apt.packages(name="Install pgBackRest, restic and the agent's Python libraries", packages=agent_packages(pg),
                 update=True, cache_time=86400, no_recommends=True)

    # ---------------------------------------------------------------- pgBackRest
    files.directory(name="pgBackRest config folder", path=dataplane.PGBACKREST_DIR, user="postgres", group="postgres",
                    mode="750")
    ca = put(name="pgBackRest: the vaults' CA", src=io.StringIO(ca_bundle(vaults)), dest=dataplane.PGBACKREST_CA,
                   user="postgres", group="postgres", mode="644")
    conf = secret_file(name="pgBackRest: one encrypted repo per embassy",
                       content=dataplane.pgbackrest_conf(repos, archive_async=True, pg_data=pg.data),
                       dest=dataplane.PGBACKREST_CONF, user="postgres", group="postgres", mode="600")
    for folder in (dataplane.SPOOL, "/var/log/pgbackrest", "/var/lib/pgbackrest"):
        files.directory(name=f"pgBackRest folder {folder}", path=folder, user="postgres", group="postgres", mode="750")

    # Archiving starts with a restart; the stanza is created right after it, before WAL piles up in back-off.
    archive = put(name="PostgreSQL: archive every WAL segment to every embassy",
                        src=io.StringIO(dataplane.archive_conf(context.archive_timeout(dep))),
                        dest=f"{pg.conf_d}/20-embassy-archive.conf", user="postgres", group="postgres",
                        mode="644")
    systemd.service(name="PostgreSQL: restart with archiving", service=pg.service, restarted=True,
                    _if=archive.did_change)
    ensure(name="PostgreSQL: accepting connections",
           check=as_user("postgres", "pg_isready -q"),
           command="for i in $(seq 60); do runuser -u postgres -- pg_isready -q && exit 0; sleep 1; done; exit 1")
    digest_role()  # before the first backup: every restored copy of home holds it
    paths = tuple(r.path for r in repos)  # each embassy's key generation: a re-key is a new repo, a new stanza
    stanza = facts.pgbackrest_stanza(name="pgBackRest: stanza in every embassy's repo", repos=[r.index for r in repos],
                                     paths=paths)
    ensure(name="pgBackRest: check archiving into every repo", check="false",
           command=as_user("postgres", f"{PGBR} check"), _if=any_changed(conf, archive, ca, stanza))
    first_full_backups(name="pgBackRest: a first full backup in every embassy's repo", repos=[r.index for r in repos],
                       paths=paths)

    put(name="pgBackRest: backup wrapper", src=io.StringIO(dataplane.script("embassy-pgbackrest-backup")),
              dest="/usr/local/sbin/embassy-pgbackrest-backup", user="root", group="root", mode="755")
    units = [put(
        name="pgBackRest: backup unit",
        src=io.StringIO(dataplane.unit("embassy: pgBackRest %i backup into every embassy's repo",
                                       "/usr/local/sbin/embassy-pgbackrest-backup %i", user="postgres",
                                       after=f"{pg.service}.service")),
        dest="/etc/systemd/system/embassy-pgbackrest-backup@.service", user="root", group="root", mode="644")]
    timers = dataplane.backup_timers(dep)
    for name, (kind, calendar) in timers.items():
        units.append(put(
            name=f"pgBackRest: {kind} backup timer",
            src=io.StringIO(dataplane.timer(f"embassy: pgBackRest {kind} backup", f"embassy-pgbackrest-backup@{kind}.service",
                                            calendar=calendar)),
            dest=f"/etc/systemd/system/{name}.timer", user="root", group="root", mode="644"))

    # ---------------------------------------------------------------- restic
    files.directory(name="restic config folder", path=dataplane.RESTIC_DIR, user="root", group="root", mode="700")
    files.directory(name="restic cache", path="/var/cache/restic", user="root", group="root", mode="700")
    put(name="restic: the vaults' CA", src=io.StringIO(ca_bundle(vaults)), dest=f"{dataplane.RESTIC_DIR}/vault-ca.crt",
              user="root", group="root", mode="644")
    put(name="restic: wrapper", src=io.StringIO(dataplane.script("embassy-restic")),
              dest="/usr/local/sbin/embassy-restic", user="root", group="root", mode="755")
    for vault in vaults:
        held = [r.name for r in file_registers if context.holds(dep, r, vault.embassy)]
        secret_file(name=f"restic: key of embassy {vault.embassy}",
                    content=context.restic_password(host.data, vault.embassy) + "\n",
                    dest=f"{dataplane.RESTIC_DIR}/{vault.embassy}.pass", user="root", group="root", mode="600")
        generation = context.generation(host.data, vault.embassy)  # a re-key: new repositories, a new key
        folder = dataplane.restic_base(generation)
        secret_file(name=f"restic: vault of embassy {vault.embassy}", content=dataplane.restic_env(vault, generation),
                    dest=f"{dataplane.RESTIC_DIR}/{vault.embassy}.env", user="root", group="root", mode="600")
        for register in held:
            restic_repository_with_snapshot(name=f"restic: repository {register} at {vault.embassy}, a first snapshot",
                                            embassy=vault.embassy, register=register,
                                            path=f"{dataplane.REGISTERS_ROOT}/{register}", folder=folder)

    # ---------------------------------------------------------------- manifests: key, config, rounds
    modules = upload_modules()
    files.directory(name="Replication config folder", path=CONFIG_DIR, user="root", group="root", mode="700")
    files.directory(name="Replication state folder", path=STATE_DIR, user="root", group="root", mode="755")
    ensure(name="Manifest key of the home state (created here, never leaves home)", check=f"test -s {KEY_FILE}",
           command=f"PYTHONPATH=/opt/embassy python3 -m replication.round keygen {KEY_FILE} {PUB_FILE} >/dev/null")
    record = host.data.get("manifest_public_key_file")
    if record:
        facts.record_public_key(name="Manifest public key recorded on the controller", path_on_host=PUB_FILE,
                                dest=record)
    put(name="Replication: the vaults' CA", src=io.StringIO(ca_bundle(vaults)), dest=f"{CONFIG_DIR}/vault-ca.crt",
              user="root", group="root", mode="644")
    by_name = {v.embassy: v for v in vaults}
    for vault in vaults:
        secret_file(name=f"Replication: manifest writer of {vault.embassy} (agent identity)",
                    content=json.dumps({"access_key_id": vault.access_key, "secret_access_key": vault.secret_key}) + "\n",
                    dest=f"{CONFIG_DIR}/{vault.embassy}.s3.json", user="root", group="root", mode="600")
    config = put(name="Replication: rounds config",
                       src=io.StringIO(json.dumps(round_config(dep, by_name, {r.vault.embassy: r for r in repos},
                                                               {v.embassy: context.generation(host.data, v.embassy)
                                                                for v in vaults}),
                                                  indent=2, sort_keys=True) + "\n"),
                       dest="/etc/embassy/replication.json", user="root", group="root", mode="644")
    ensure(name="Heartbeat database", check=as_user("postgres", "psql -Atc \"SELECT 1 FROM pg_database WHERE datname = "
                                                                  "'embassy_monitor'\" | grep -qx 1"),
           command=as_user("postgres", "createdb embassy_monitor"))
    py = "/usr/bin/env PYTHONPATH=/opt/embassy /usr/bin/python3 -m"
    units.append(put(
        name="Heartbeat unit", dest="/etc/systemd/system/embassy-heartbeat.service", user="root", group="root", mode="644",
        src=io.StringIO(dataplane.unit("embassy: heartbeat row every second (lag and RPO)", f"{py} replication.heartbeat",
                                       user="postgres", oneshot=False, after=f"{pg.service}.service",
                                       extra=["Restart=always", "RestartSec=2"]))))
    units.append(put(
        name="Replication round unit", dest="/etc/systemd/system/embassy-replication-round.service", user="root",
        group="root", mode="644",
        src=io.StringIO(dataplane.unit("embassy: one replication round (restic snapshots, signed manifests)",
                                       f"{py} replication.round run", after=f"{pg.service}.service",
                                       extra=["TimeoutStartSec=3600"]))))
    units.append(put(
        name="Replication round timer", dest="/etc/systemd/system/embassy-replication-round.timer", user="root",
        group="root", mode="644",
        src=io.StringIO(dataplane.timer("embassy: replication rounds", "embassy-replication-round.service",
                                        every_seconds=round_interval(dep)))))
    units.append(put(
        name="Replication metrics unit", dest="/etc/systemd/system/embassy-replication-monitor.service", user="root",
        group="root", mode="644",
        src=io.StringIO(dataplane.unit("embassy: Prometheus metrics of replication lag",
                                       f"{py} replication.monitor --bind {address} --port {METRICS_PORT}",
                                       oneshot=False, after=f"{pg.service}.service",
                                       extra=["Restart=always", "RestartSec=5"]))))

    reload = systemd.daemon_reload(name="systemd: reload units", _if=any_changed(*units))
    for name in [*timers, "embassy-replication-round"]:
        systemd.service(name=f"Timer {name}: enabled and running", service=f"{name}.timer", running=True, enabled=True)
    for name in ("embassy-heartbeat", "embassy-replication-monitor"):
        systemd.service(name=f"Service {name}: enabled and running", service=name, running=True, enabled=True)
        systemd.service(name=f"Service {name}: restarted for new code", service=name, restarted=True,
                        _if=any_changed(reload, config, *modules))
