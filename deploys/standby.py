"""Every embassy host: PostgreSQL 15, pgBackRest, restic and the restore tooling, reading only that
embassy's vault (one repo, that embassy's passphrase: never another's). Warm embassies also run a
streaming standby of home (pg_basebackup, then primary_conninfo to home; the vault is the fallback).

    pyinfra inventories/lab.py deploys/home_state.py deploys/agent.py deploys/standby.py
"""

from __future__ import annotations

import io

from pyinfra import host, inventory
from pyinfra.operations import apt, files, systemd

from embassy import model
from embassy.home import context, dataplane
from embassy.home.ops import as_user, ensure

RESTORE_POSTGRES = f"""#!/bin/sh
# embassy-restore-postgres TARGET_DIR [pgbackrest restore options, e.g. --type=time --target=...]:
# restore home's cluster from this embassy's vault into TARGET_DIR (owned by postgres), ready to start.
set -eu
target="$1"; shift
install -d -o postgres -g postgres -m 700 "$target"
runuser -u postgres -- pgbackrest --stanza={dataplane.STANZA} --pg1-path="$target" restore "$@"
"""

if host.data.get("role") == "embassy":
    dep = context.deployment(host.data.stack)
    embassy = host.data.embassy
    repo = context.embassy_repo(host.data)
    held_files = [r.name for r in dep.registers
                  if r.kind is model.RegisterKind.FILES and context.holds(dep, r, embassy)]
    warm = host.data.get("mode") == model.Mode.WARM.value

    apt.packages(name="Install PostgreSQL 15, pgBackRest, restic",
                 packages=["postgresql-15", "postgresql-client-15", "pgbackrest", "restic", "python3-psycopg"],
                 update=True, cache_time=86400, no_recommends=True)

    # ---------------------------------------------------------------- this embassy's vault only
    files.directory(name="pgBackRest config folder", path=dataplane.PGBACKREST_DIR, user="postgres", group="postgres",
                    mode="750")
    files.put(name="pgBackRest: the vault's CA", src=repo.vault.ca_file, dest=dataplane.PGBACKREST_CA,
              user="postgres", group="postgres", mode="644")
    files.put(name=f"pgBackRest: the vault of {embassy} (its own repo and passphrase only)",
              src=io.StringIO(dataplane.pgbackrest_conf([repo], archive_async=False)),
              dest=dataplane.PGBACKREST_CONF, user="postgres", group="postgres", mode="600")
    for folder in ("/var/log/pgbackrest", "/var/lib/pgbackrest", dataplane.SPOOL):
        files.directory(name=f"pgBackRest folder {folder}", path=folder, user="postgres", group="postgres", mode="750")
    files.directory(name="restic config folder", path=dataplane.RESTIC_DIR, user="root", group="root", mode="700")
    files.directory(name="restic cache", path="/var/cache/restic", user="root", group="root", mode="700")
    files.put(name="restic: the vault's CA", src=repo.vault.ca_file, dest=f"{dataplane.RESTIC_DIR}/vault-ca.crt",
              user="root", group="root", mode="644")
    files.put(name=f"restic: key of embassy {embassy}", src=io.StringIO(context.restic_password(host.data, embassy) + "\n"),
              dest=f"{dataplane.RESTIC_DIR}/{embassy}.pass", user="root", group="root", mode="600")
    files.put(name=f"restic: vault of embassy {embassy}", src=io.StringIO(dataplane.restic_env(repo.vault)),
              dest=f"{dataplane.RESTIC_DIR}/{embassy}.env", user="root", group="root", mode="600")
    files.put(name=f"restic: registers held by {embassy}", src=io.StringIO("".join(f"{r}\n" for r in held_files)),
              dest=f"{dataplane.RESTIC_DIR}/{embassy}.registers", user="root", group="root", mode="600")

    # ---------------------------------------------------------------- restore tooling
    files.put(name="restic: wrapper", src=io.StringIO(dataplane.RESTIC_WRAPPER), dest="/usr/local/sbin/embassy-restic",
              user="root", group="root", mode="755")
    files.put(name="Restore tool: file registers", src=io.StringIO(dataplane.RESTORE_FILES),
              dest="/usr/local/sbin/embassy-restore-files", user="root", group="root", mode="755")
    files.put(name="Restore tool: PostgreSQL registers", src=io.StringIO(RESTORE_POSTGRES),
              dest="/usr/local/sbin/embassy-restore-postgres", user="root", group="root", mode="755")

    # ---------------------------------------------------------------- warm: a streaming standby of home
    if warm:
        homes = inventory.get_group("home", [])
        if not homes:
            raise SystemExit("error: a warm standby needs the home host in the inventory\nHINT: use inventories/lab.py")
        primary = homes[0].data.get("private_address") or homes[0].data.ssh_hostname
        password = context.replication_password(host.data)
        files.put(name="Standby: replication password", dest="/var/lib/postgresql/.pgpass",
                  src=io.StringIO(f"{primary}:5432:replication:{dataplane.REPLICATION_USER}:{password}\n"),
                  user="postgres", group="postgres", mode="600")
        conf = files.put(name="Standby: follow home, fall back to this embassy's vault",
                         src=io.StringIO(dataplane.standby_conf(primary, embassy)),
                         dest=f"{dataplane.PG_CONF_D}/30-embassy-standby.conf", user="postgres", group="postgres",
                         mode="644")
        cloned = ensure(
            name="Standby: clone home (pg_basebackup)",
            check=f"test -f {dataplane.PG_DATA}/standby.signal",
            command=(f"systemctl stop {dataplane.PG_SERVICE} && rm -rf {dataplane.PG_DATA} && "
                     + as_user("postgres", f"PGPASSFILE=/var/lib/postgresql/.pgpass pg_basebackup -w -X stream -c fast "
                                           f"-d 'host={primary} user={dataplane.REPLICATION_USER} application_name={embassy}' "
                                           f"-D {dataplane.PG_DATA}")
                     + f" && install -o postgres -g postgres -m 600 /dev/null {dataplane.PG_DATA}/standby.signal"
                     + f" && systemctl start {dataplane.PG_SERVICE}"))
        systemd.service(name="Standby: running and enabled", service=dataplane.PG_SERVICE, running=True, enabled=True)
        systemd.service(name="Standby: restart for new settings", service=dataplane.PG_SERVICE, restarted=True,
                        _if=lambda: conf.did_change() and not cloned.did_change())
