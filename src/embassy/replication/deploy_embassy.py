"""Every embassy host, as an importable pyinfra @deploy (entry point: deploys/standby.py).

PostgreSQL 15, pgBackRest, restic and the restore tooling, reading only that embassy's vault with its
read-only identity (one repo, that embassy's passphrase: never another's). Warm embassies also run a
standby of home (pg_basebackup), held at a signed point, and a WAL receiver (pg_receivewal) that streams
home's WAL to the embassy's disk meanwhile (embassy.replication.standby says why both).
"""

from __future__ import annotations

import io
import shlex

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd

from embassy import model
from embassy.home import context
from embassy.home.ops import as_user, ensure
from embassy.replication import dataplane, digest, standby
from embassy.replication.deploy_home import ca_bundle, upload_modules
from embassy.replication.secretfile import secret_file  # secrets never pass through /tmp


@deploy("Embassy host: restore tooling and, when warm, a standby of home")
def embassy_host() -> None:
    dep = context.deployment(host.data.stack)
    embassy = host.data.embassy
    repo = context.embassy_repo(host.data)
    held_files = [r.name for r in dep.registers
                  if r.kind is model.RegisterKind.FILES and context.holds(dep, r, embassy)]
    warm = host.data.get("mode") == model.Mode.WARM.value

    apt.packages(name="Install PostgreSQL 15, pgBackRest, restic",
                 packages=["postgresql-15", "postgresql-client-15", "pgbackrest", "restic", "python3-psycopg",
                           "python3-cryptography"],
                 update=True, cache_time=86400, no_recommends=True)

    # ---------------------------------------------------------------- this embassy's vault only, read-only
    files.directory(name="pgBackRest config folder", path=dataplane.PGBACKREST_DIR, user="postgres", group="postgres",
                    mode="750")
    files.put(name="pgBackRest: the vault's CA", src=io.StringIO(ca_bundle([repo.vault])), dest=dataplane.PGBACKREST_CA,
              user="postgres", group="postgres", mode="644")
    secret_file(name=f"pgBackRest: the vault of {embassy} (its own repo and passphrase only; read-only identity)",
                content=dataplane.pgbackrest_conf([repo], archive_async=False),
                dest=dataplane.PGBACKREST_CONF, user="postgres", group="postgres", mode="600")
    for folder in ("/var/log/pgbackrest", "/var/lib/pgbackrest", dataplane.SPOOL):
        files.directory(name=f"pgBackRest folder {folder}", path=folder, user="postgres", group="postgres", mode="750")
    files.directory(name="restic config folder", path=dataplane.RESTIC_DIR, user="root", group="root", mode="700")
    files.directory(name="restic cache", path="/var/cache/restic", user="root", group="root", mode="700")
    files.put(name="restic: the vault's CA", src=io.StringIO(ca_bundle([repo.vault])),
              dest=f"{dataplane.RESTIC_DIR}/vault-ca.crt", user="root", group="root", mode="644")
    secret_file(name=f"restic: key of embassy {embassy}", content=context.restic_password(host.data, embassy) + "\n",
                dest=f"{dataplane.RESTIC_DIR}/{embassy}.pass", user="root", group="root", mode="600")
    restic_env = dataplane.restic_env(repo.vault, context.generation(host.data, embassy))  # its key generation's
    secret_file(name=f"restic: vault of embassy {embassy}", content=restic_env,
                dest=f"{dataplane.RESTIC_DIR}/{embassy}.env", user="root", group="root", mode="600")
    files.put(name=f"restic: registers held by {embassy}", src=io.StringIO("".join(f"{r}\n" for r in held_files)),
              dest=f"{dataplane.RESTIC_DIR}/{embassy}.registers", user="root", group="root", mode="600")

    # ---------------------------------------------------------------- restore and verification tooling
    for tool in ("embassy-restic", "embassy-restore-files", "embassy-restore-postgres"):
        files.put(name=f"Tool {tool}", src=io.StringIO(dataplane.script(tool)), dest=f"/usr/local/sbin/{tool}",
                  user="root", group="root", mode="755")
    upload_modules()  # the digests a restore recomputes are the ones home computed
    # A restore digests as this OS user: peer authentication maps it to the read-only role that the
    # standby and a scratch cluster hold as restored copies of home.
    server.user(name=f"Digest OS user {digest.ROLE} (no login)", user=digest.ROLE, system=True,
                shell="/usr/sbin/nologin", home="/nonexistent", create_home=False)

    # ---------------------------------------------------------------- warm: a streaming standby of home
    if warm:
        homes = inventory.get_group("home", [])
        if not homes:
            raise SystemExit("error: a warm standby needs the home host in the inventory\nHINT: use inventories/lab.py")
        primary = homes[0].data.get("private_address") or homes[0].data.ssh_hostname
        password = context.replication_password(host.data)
        secret_file(name="Standby: replication password", dest="/var/lib/postgresql/.pgpass",
                    content=f"{primary}:5432:replication:{dataplane.REPLICATION_USER}:{password}\n",
                    user="postgres", group="postgres", mode="600")
        files.put(name=f"Tool {standby.FETCH_TOOL}", src=io.StringIO(standby.fetch_script()),
                  dest=f"/usr/local/sbin/{standby.FETCH_TOOL}", user="root", group="root", mode="755")
        files.directory(name="Standby: the received WAL's folder", path=standby.RECEIVE_DIR, user="postgres",
                        group="postgres", mode="700")
        conf = files.put(name="Standby: held at a signed point; WAL from the receiver, then this embassy's vault",
                         src=io.StringIO(standby.standby_conf()),
                         dest=f"{dataplane.PG_CONF_D}/30-embassy-standby.conf", user="postgres", group="postgres",
                         mode="644")
        receiver = files.put(name="Standby: WAL receiver unit (pg_receivewal)", src=io.StringIO(
                             standby.receiver_unit(primary, embassy)),
                             dest=f"/etc/systemd/system/{standby.RECEIVER_UNIT}.service", user="root", group="root",
                             mode="644")
        text = standby.hold_conf(None, "Just after the clone: no signed point verified yet.")
        hold = f"printf %s {shlex.quote(text)} | install -o postgres -g postgres -m 600 /dev/stdin {standby.HOLD_CONF} && "
        cloned = ensure(
            name="Standby: clone home (pg_basebackup), held just after the clone",
            check=f"test -f {dataplane.PG_DATA}/standby.signal",
            command=(f"systemctl stop {standby.RECEIVER_UNIT} {dataplane.PG_SERVICE}; "
                     f"rm -rf {dataplane.PG_DATA} && find {standby.RECEIVE_DIR} -mindepth 1 -delete && "
                     + as_user("postgres", f"PGPASSFILE=/var/lib/postgresql/.pgpass pg_basebackup -w -X stream -c fast "
                                           f"-d 'host={primary} user={dataplane.REPLICATION_USER} application_name={embassy}' "
                                           f"-D {dataplane.PG_DATA}")
                     + f" && install -o postgres -g postgres -m 600 /dev/null {dataplane.PG_DATA}/standby.signal && "
                     + hold + f"systemctl start {dataplane.PG_SERVICE}"))
        ensure(name="Standby: a hold in place (just after the clone, when none was ever set)",
               check=f"test -f {standby.HOLD_CONF}", command=hold + f"systemctl restart {dataplane.PG_SERVICE}")
        systemd.service(name="Standby: running and enabled", service=dataplane.PG_SERVICE, running=True, enabled=True)
        systemd.service(name="Standby: restart for new settings", service=dataplane.PG_SERVICE, restarted=True,
                        _if=lambda: conf.did_change() and not cloned.did_change())
        systemd.daemon_reload(name="systemd: reload units (WAL receiver)", _if=receiver.did_change)
        systemd.service(name="Standby: WAL receiver running and enabled", service=standby.RECEIVER_UNIT, running=True,
                        enabled=True)
        systemd.service(name="Standby: WAL receiver restarted for a new unit", service=standby.RECEIVER_UNIT,
                        restarted=True, _if=lambda: receiver.did_change() and not cloned.did_change())
