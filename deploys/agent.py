"""The replication agents on home: pgBackRest (one encrypted repo per embassy, async WAL archiving to
all of them) and restic (one repository per file register and embassy), with systemd units and timers.

    pyinfra inventories/lab.py deploys/home_state.py deploys/agent.py

Secrets (cipher passphrases, restic keys, vault credentials) come from the controller's secrets folder
and the vault credential files the inventory names; on home they are 0600, owned by postgres or root.
"""

from __future__ import annotations

import io
from pathlib import Path

from pyinfra import host
from pyinfra.operations import apt, files, systemd
from pyinfra.operations.util import any_changed

from embassy import model
from embassy.home import context, dataplane
from embassy.home.ops import as_user, ensure

PGBR = f"pgbackrest --stanza={dataplane.STANZA}"
# Reads `pgbackrest info --output=json` on stdin; succeeds when every repo's status code is one of argv.
REPO_STATUS = ("python3 -c 'import json,sys; s=json.load(sys.stdin); ok={int(a) for a in sys.argv[1:]}; "
               "sys.exit(0 if s and s[0][\"repo\"] and all(r[\"status\"][\"code\"] in ok for r in s[0][\"repo\"]) else 1)'")


def ca_bundle(vaults: list) -> str:
    """The CA(s) the vaults' certificates chain to (one lab CA; several if the inventory says so)."""
    seen: list[str] = []
    for vault in vaults:
        if vault.ca_file and vault.ca_file not in seen:
            seen.append(vault.ca_file)
    return "".join(Path(p).read_text() for p in seen)


if host.data.get("role") == "home":
    dep = context.deployment(host.data.stack)
    repos = context.home_repos(host.data)
    vaults = context.vaults(host.data)
    file_registers = [r for r in dep.registers if r.kind is model.RegisterKind.FILES]

    apt.packages(name="Install pgBackRest and restic", packages=["pgbackrest", "restic", "postgresql-15"],
                 update=True, cache_time=86400, no_recommends=True)

    # ---------------------------------------------------------------- pgBackRest
    files.directory(name="pgBackRest config folder", path=dataplane.PGBACKREST_DIR, user="postgres", group="postgres",
                    mode="750")
    ca = files.put(name="pgBackRest: the vaults' CA", src=io.StringIO(ca_bundle(vaults)), dest=dataplane.PGBACKREST_CA,
                   user="postgres", group="postgres", mode="644")
    conf = files.put(name="pgBackRest: one encrypted repo per embassy",
                     src=io.StringIO(dataplane.pgbackrest_conf(repos, archive_async=True)),
                     dest=dataplane.PGBACKREST_CONF, user="postgres", group="postgres", mode="600")
    for folder in (dataplane.SPOOL, "/var/log/pgbackrest", "/var/lib/pgbackrest"):
        files.directory(name=f"pgBackRest folder {folder}", path=folder, user="postgres", group="postgres", mode="750")

    # Archiving starts with a restart; the stanza is created right after it, before WAL piles up in back-off.
    archive = files.put(name="PostgreSQL: archive every WAL segment to every embassy",
                        src=io.StringIO(dataplane.archive_conf(context.archive_timeout(dep))),
                        dest=f"{dataplane.PG_CONF_D}/20-embassy-archive.conf", user="postgres", group="postgres",
                        mode="644")
    systemd.service(name="PostgreSQL: restart with archiving", service=dataplane.PG_SERVICE, restarted=True,
                    _if=archive.did_change)
    ensure(name="PostgreSQL: accepting connections",
           check=as_user("postgres", "pg_isready -q"),
           command="for i in $(seq 60); do runuser -u postgres -- pg_isready -q && exit 0; sleep 1; done; exit 1")
    # `info` status per repo: 0 = backups, 2 = stanza without backup; anything else: no stanza there yet.
    stanza = ensure(name="pgBackRest: stanza in every embassy's repo",
                    check=as_user("postgres", f"{PGBR} --output=json info | {REPO_STATUS} 0 2"),
                    command=as_user("postgres", f"{PGBR} stanza-create"))
    ensure(name="pgBackRest: check archiving into every repo", check="false",
           command=as_user("postgres", f"{PGBR} check"), _if=any_changed(conf, archive, ca, stanza))
    for repo in repos:
        n = repo.index
        ensure(name=f"pgBackRest: first full backup in repo{n} ({repo.vault.embassy})",
               check=as_user("postgres", f"{PGBR} --repo={n} --output=json info | {REPO_STATUS} 0"),
               command=as_user("postgres", f"{PGBR} --repo={n} --type=full backup"))

    files.put(name="pgBackRest: backup wrapper", src=io.StringIO(dataplane.PGBACKREST_BACKUP),
              dest="/usr/local/sbin/embassy-pgbackrest-backup", user="root", group="root", mode="755")
    units = [files.put(
        name="pgBackRest: backup unit",
        src=io.StringIO(dataplane.unit("embassy: pgBackRest %i backup into every embassy's repo",
                                       "/usr/local/sbin/embassy-pgbackrest-backup %i", user="postgres",
                                       after=f"{dataplane.PG_SERVICE}.service")),
        dest="/etc/systemd/system/embassy-pgbackrest-backup@.service", user="root", group="root", mode="644")]
    timers = {"embassy-pgbackrest-full": ("full", "Sun *-*-* 01:30:00"),
              "embassy-pgbackrest-diff": ("diff", "Mon..Sat *-*-* 01:30:00")}
    for name, (kind, calendar) in timers.items():
        units.append(files.put(
            name=f"pgBackRest: {kind} backup timer",
            src=io.StringIO(dataplane.timer(f"embassy: pgBackRest {kind} backup", f"embassy-pgbackrest-backup@{kind}.service",
                                            calendar=calendar)),
            dest=f"/etc/systemd/system/{name}.timer", user="root", group="root", mode="644"))

    # ---------------------------------------------------------------- restic
    files.directory(name="restic config folder", path=dataplane.RESTIC_DIR, user="root", group="root", mode="700")
    files.directory(name="restic cache", path="/var/cache/restic", user="root", group="root", mode="700")
    files.put(name="restic: the vaults' CA", src=io.StringIO(ca_bundle(vaults)), dest=f"{dataplane.RESTIC_DIR}/vault-ca.crt",
              user="root", group="root", mode="644")
    files.put(name="restic: wrapper", src=io.StringIO(dataplane.RESTIC_WRAPPER), dest="/usr/local/sbin/embassy-restic",
              user="root", group="root", mode="755")
    files.put(name="restic: backup wrapper", src=io.StringIO(dataplane.RESTIC_BACKUP),
              dest="/usr/local/sbin/embassy-restic-backup", user="root", group="root", mode="755")
    for vault in vaults:
        held = [r.name for r in file_registers if context.holds(dep, r, vault.embassy)]
        files.put(name=f"restic: key of embassy {vault.embassy}", src=io.StringIO(context.restic_password(host.data,
                  vault.embassy) + "\n"), dest=f"{dataplane.RESTIC_DIR}/{vault.embassy}.pass", user="root", group="root",
                  mode="600")
        files.put(name=f"restic: vault of embassy {vault.embassy}", src=io.StringIO(dataplane.restic_env(vault)),
                  dest=f"{dataplane.RESTIC_DIR}/{vault.embassy}.env", user="root", group="root", mode="600")
        files.put(name=f"restic: registers held by {vault.embassy}", src=io.StringIO("".join(f"{r}\n" for r in held)),
                  dest=f"{dataplane.RESTIC_DIR}/{vault.embassy}.registers", user="root", group="root", mode="600")
        for register in held:
            restic = f"embassy-restic {vault.embassy} {register}"
            ensure(name=f"restic: repository {register} at {vault.embassy}", check=f"{restic} cat config",
                   command=f"{restic} init --repository-version 2")
            ensure(name=f"restic: first snapshot of {register} at {vault.embassy}",
                   check=f"{restic} snapshots --json | grep -q '\"id\"'",
                   command=f"{restic} backup --compression auto --host home --tag embassy "
                           f"{dataplane.REGISTERS_ROOT}/{register}")
    for reg in file_registers:
        every = max(60, reg.rpo_seconds // 2)  # two tries inside the register's RPO
        units.append(files.put(
            name=f"restic: {reg.name} backup unit",
            src=io.StringIO(dataplane.unit(f"embassy: restic backup of {reg.name} to every embassy holding it",
                                           f"/usr/local/sbin/embassy-restic-backup {reg.name}")),
            dest=f"/etc/systemd/system/embassy-restic-{reg.name}.service", user="root", group="root", mode="644"))
        units.append(files.put(
            name=f"restic: {reg.name} backup timer",
            src=io.StringIO(dataplane.timer(f"embassy: restic backup of {reg.name}", f"embassy-restic-{reg.name}.service",
                                            every_seconds=every)),
            dest=f"/etc/systemd/system/embassy-restic-{reg.name}.timer", user="root", group="root", mode="644"))

    systemd.daemon_reload(name="systemd: reload units", _if=any_changed(*units))
    for name in [*timers, *(f"embassy-restic-{r.name}" for r in file_registers)]:
        systemd.service(name=f"Timer {name}: enabled and running", service=f"{name}.timer", running=True, enabled=True)
