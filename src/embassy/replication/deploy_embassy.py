"""Every embassy host, as an importable pyinfra @deploy (entry point: deploys/standby.py).

PostgreSQL (the major of the host's Debian release), pgBackRest, restic and the restore tooling, reading
only that embassy's vault with its read-only identity (one repo, that embassy's passphrase: never another's).
Warm embassies also run a standby of home (pg_basebackup), held at a signed point, and a WAL receiver (pg_receivewal) that streams
home's WAL to the embassy's disk meanwhile (embassy.replication.standby says why both).
"""

from __future__ import annotations

import io
import json
import shlex
from pathlib import Path
from typing import Any

from pyinfra import host, inventory
from pyinfra.api import deploy
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from embassy import model
from embassy.home import context
from embassy.home.ops import as_user, ensure
from embassy.replication import dataplane, digest, restoretest, standby
from embassy.replication.deploy_home import ca_bundle, host_postgres, put, upload_modules
from embassy.replication.secretfile import secret_file  # secrets never pass through /tmp
from embassy.replication.secrets import secrets_dir


@deploy("Embassy host: restore tooling and, when warm, a standby of home")
def embassy_host() -> None:
    dep = context.deployment(host.data.stack)
    embassy = host.data.embassy
    repo = context.embassy_repo(host.data)
    held_files = [r.name for r in dep.registers
                  if r.kind is model.RegisterKind.FILES and context.holds(dep, r, embassy)]
    warm = host.data.get("mode") == model.Mode.WARM.value
    pg = host_postgres()  # the major the host's Debian release carries

    apt.packages(name=f"Install PostgreSQL {pg.major}, pgBackRest, restic",
                 packages=[*pg.packages, "pgbackrest", "restic", "python3-psycopg",
                           "python3-cryptography", "python3-boto3", "python3-prometheus-client"],
                 update=True, cache_time=86400, no_recommends=True)

    # ---------------------------------------------------------------- this embassy's vault only, read-only
    files.directory(name="pgBackRest config folder", path=dataplane.PGBACKREST_DIR, user="postgres", group="postgres",
                    mode="750")
    put(name="pgBackRest: the vault's CA", src=io.StringIO(ca_bundle([repo.vault])), dest=dataplane.PGBACKREST_CA,
              user="postgres", group="postgres", mode="644")
    secret_file(name=f"pgBackRest: the vault of {embassy} (its own repo and passphrase only; read-only identity)",
                content=dataplane.pgbackrest_conf([repo], archive_async=False, pg_data=pg.data),
                dest=dataplane.PGBACKREST_CONF, user="postgres", group="postgres", mode="600")
    for folder in ("/var/log/pgbackrest", "/var/lib/pgbackrest", dataplane.SPOOL):
        files.directory(name=f"pgBackRest folder {folder}", path=folder, user="postgres", group="postgres", mode="750")
    files.directory(name="restic config folder", path=dataplane.RESTIC_DIR, user="root", group="root", mode="700")
    files.directory(name="restic cache", path="/var/cache/restic", user="root", group="root", mode="700")
    put(name="restic: the vault's CA", src=io.StringIO(ca_bundle([repo.vault])),
              dest=f"{dataplane.RESTIC_DIR}/vault-ca.crt", user="root", group="root", mode="644")
    secret_file(name=f"restic: key of embassy {embassy}", content=context.restic_password(host.data, embassy) + "\n",
                dest=f"{dataplane.RESTIC_DIR}/{embassy}.pass", user="root", group="root", mode="600")
    restic_env = dataplane.restic_env(repo.vault, context.generation(host.data, embassy))  # its key generation's
    secret_file(name=f"restic: vault of embassy {embassy}", content=restic_env,
                dest=f"{dataplane.RESTIC_DIR}/{embassy}.env", user="root", group="root", mode="600")
    put(name=f"restic: registers held by {embassy}", src=io.StringIO("".join(f"{r}\n" for r in held_files)),
              dest=f"{dataplane.RESTIC_DIR}/{embassy}.registers", user="root", group="root", mode="600")

    # ---------------------------------------------------------------- restore and verification tooling
    for tool in ("embassy-restic", "embassy-restore-files", "embassy-restore-postgres"):
        put(name=f"Tool {tool}", src=io.StringIO(dataplane.script(tool)), dest=f"/usr/local/sbin/{tool}",
                  user="root", group="root", mode="755")
    upload_modules()  # the digests a restore recomputes are the ones home computed
    # A restore digests as this OS user: peer authentication maps it to the read-only role that the
    # standby and a scratch cluster hold as restored copies of home.
    server.user(name=f"Digest OS user {digest.ROLE} (no login)", user=digest.ROLE, system=True,
                shell="/usr/sbin/nologin", home="/nonexistent", create_home=False)

    restore_tests(dep, embassy, repo)

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
        put(name=f"Tool {standby.FETCH_TOOL}", src=io.StringIO(standby.fetch_script(pg)),
                  dest=f"/usr/local/sbin/{standby.FETCH_TOOL}", user="root", group="root", mode="755")
        files.directory(name="Standby: the received WAL's folder", path=standby.receive_dir(pg), user="postgres",
                        group="postgres", mode="700")
        conf = put(name="Standby: held at a signed point; WAL from the receiver, then this embassy's vault",
                         src=io.StringIO(standby.standby_conf(pg)),
                         dest=f"{pg.conf_d}/30-embassy-standby.conf", user="postgres", group="postgres",
                         mode="644")
        receiver = put(name="Standby: WAL receiver unit (pg_receivewal)", src=io.StringIO(
                             standby.receiver_unit(pg, primary, embassy)),
                             dest=f"/etc/systemd/system/{standby.RECEIVER_UNIT}.service", user="root", group="root",
                             mode="644")
        text = standby.hold_conf(None, "Just after the clone: no signed point verified yet.")
        hold = f"printf %s {shlex.quote(text)} | install -o postgres -g postgres -m 600 /dev/stdin {standby.hold_file(pg)} && "
        cloned = ensure(
            name="Standby: clone home (pg_basebackup), held just after the clone",
            check=f"test -f {pg.data}/standby.signal",
            command=(f"systemctl stop {standby.RECEIVER_UNIT} {pg.service}; "
                     f"rm -rf {pg.data} && find {standby.receive_dir(pg)} -mindepth 1 -delete && "
                     + as_user("postgres", f"PGPASSFILE=/var/lib/postgresql/.pgpass pg_basebackup -w -X stream -c fast "
                                           f"-d 'host={primary} user={dataplane.REPLICATION_USER} application_name={embassy}' "
                                           f"-D {pg.data}")
                     + f" && install -o postgres -g postgres -m 600 /dev/null {pg.data}/standby.signal && "
                     + hold + f"systemctl start {pg.service}"))
        ensure(name="Standby: a hold in place (just after the clone, when none was ever set)",
               check=f"test -f {standby.hold_file(pg)}", command=hold + f"systemctl restart {pg.service}")
        systemd.service(name="Standby: running and enabled", service=pg.service, running=True, enabled=True)
        systemd.service(name="Standby: restart for new settings", service=pg.service, restarted=True,
                        _if=lambda: conf.did_change() and not cloned.did_change())
        systemd.daemon_reload(name="systemd: reload units (WAL receiver)", _if=receiver.did_change)
        systemd.service(name="Standby: WAL receiver running and enabled", service=standby.RECEIVER_UNIT, running=True,
                        enabled=True)
        systemd.service(name="Standby: WAL receiver restarted for a new unit", service=standby.RECEIVER_UNIT,
                        restarted=True, _if=lambda: receiver.did_change() and not cloned.did_change())


# ---------------------------------------------------------------- restore tests, at the embassy, alone (issue 25)

RT_DIR = "/etc/embassy/restore-test"
RT_UNIT = "embassy-restore-test"
RT_METRICS_UNIT = "embassy-restore-test-metrics"
RT_METRICS_PORT = 9751


# Who writes the restore test's record, as the inventory says (host data `restore_test_writer`): the agent identity's
# keys in a file (the lab, a site), or on AWS the host's own instance role, create-only (inventories/aws.py).
WRITERS = (restoretest.WRITER_FILE, restoretest.INSTANCE_ROLE)


def restore_test_config(dep: model.Deployment, embassy: str, vault: Any, public_key: str,
                        writer: str = restoretest.WRITER_FILE) -> dict[str, Any]:
    """/etc/embassy/restore-test.json: what replication.restoretest needs, with no controller and no home.

    writer: the record's writer identity. The instance role writes create-only (If-None-Match: *, which the stack's
    host role requires) and has no file; the file's keys write as the lab's and a site's vaults take them. Both are
    explicit settings here, never guessed on the host from the endpoint's name."""
    if writer not in WRITERS:
        raise ValueError(f"restore_test_writer {writer!r} is not one of {', '.join(WRITERS)}")
    own_role = writer == restoretest.INSTANCE_ROLE
    from embassy.home import schema

    held = [r for r in dep.registers_in_restore_order() if context.holds(dep, r, embassy)]
    rt = dep.restore_tests
    return {"stack": dep.stack, "embassy": embassy, "point": rt.point, "window_days": rt.window_days,
            "retention_days": dep.embassy(embassy).retention_days, "public_key": public_key,
            "signing_key": f"{RT_DIR}/signing.pem",
            "vault": {"endpoint": vault.url, "bucket": vault.bucket, "region": vault.region,
                      "ca_file": f"{dataplane.RESTIC_DIR}/vault-ca.crt",
                      "reader_credentials": f"{RT_DIR}/reader.json", "writer": writer, "create_only": own_role,
                      **({} if own_role else {"writer_credentials": f"{RT_DIR}/writer.json"})},
            "registers": [{"name": r.name, "kind": r.kind.value, "priority": r.priority, "rto_seconds": r.rto_seconds,
                           **({"database": schema.database_name(r.name)} if r.kind is model.RegisterKind.POSTGRES
                              else {})} for r in held]}


def _home_public_key(dep: model.Deployment) -> str:
    configured = getattr(dep, "manifest_public_key", None)
    if configured:
        return str(configured)
    path = host.data.get("manifest_public_key_file")
    try:
        return Path(str(path)).read_text() if path else ""
    except OSError:
        return ""


def restore_tests(dep: model.Deployment, embassy: str, repo: Any) -> None:
    """A timer that restores a signed point into scratch space here, signs the result with this embassy's key and
    writes it to this embassy's vault under Object Lock; a Prometheus exporter of the last results."""
    from embassy.assurance import records

    public = _home_public_key(dep)
    if not public:
        raise SystemExit("error: the embassy's restore test needs home's manifest public key\n"
                         "HINT: deploy home first (deploys/home_state.py, deploys/agent.py record it), or set "
                         "data-embassy:manifest_public_key")
    writer_kind = str(host.data.get("restore_test_writer") or restoretest.WRITER_FILE)
    if writer_kind not in WRITERS:
        raise SystemExit(f"error: host data restore_test_writer={writer_kind!r} is not one of {', '.join(WRITERS)}\n"
                         "HINT: inventories/aws.py sets instance-role; the lab's and a site's leave it out")
    folder = secrets_dir(host.data)
    files.directory(name="Restore test: config folder", path=RT_DIR, user="root", group="root", mode="700")
    files.directory(name="Restore test: state folder", path="/var/lib/embassy/restore-test", user="root",
                    group="root", mode="700")
    secret_file(name=f"Restore test: signing key of embassy {embassy} (its records)",
                content=records.private_pem(folder, embassy), dest=f"{RT_DIR}/signing.pem", user="root", group="root",
                mode="600")
    identities = [("reader", repo.vault)]
    if writer_kind == restoretest.WRITER_FILE:
        identities.append(("writer", next(v for v in context.vaults(host.data, "agent") if v.embassy == embassy)))
    else:  # the instance role writes: no key of the agent's on the host nation's disk
        files.file(name=f"Restore test: no writer keys of {embassy} (the instance role writes)",
                   path=f"{RT_DIR}/writer.json", present=False)
    for name, vault in identities:
        secret_file(name=f"Restore test: {name} identity of the vault of {embassy}",
                    content=json.dumps({"access_key_id": vault.access_key, "secret_access_key": vault.secret_key}) + "\n",
                    dest=f"{RT_DIR}/{name}.json", user="root", group="root", mode="600")
    put(name="Restore test: config", dest="/etc/embassy/restore-test.json", user="root", group="root", mode="600",
              src=io.StringIO(json.dumps(restore_test_config(dep, embassy, repo.vault, public, writer_kind), indent=2,
                                         sort_keys=True) + "\n"))
    py = "/usr/bin/env PYTHONPATH=/opt/embassy /usr/bin/python3 -m"
    address = host.data.get("service_address") or host.data.ssh_hostname
    units = [
        put(name="Restore test: unit", dest=f"/etc/systemd/system/{RT_UNIT}.service", user="root", group="root",
                  mode="644", src=io.StringIO(dataplane.unit(
                      "embassy: restore a signed point into scratch space, record the signed result in the vault",
                      f"{py} replication.restoretest run --trigger timer", extra=["TimeoutStartSec=7200", "Nice=10"]))),
        put(name="Restore test: timer (data-embassy:restore_tests.schedule)",
                  dest=f"/etc/systemd/system/{RT_UNIT}.timer", user="root", group="root", mode="644",
                  src=io.StringIO(dataplane.timer("embassy: restore tests", f"{RT_UNIT}.service",
                                                  calendar=dep.restore_tests.schedule))),
        put(name="Restore test: metrics unit", dest=f"/etc/systemd/system/{RT_METRICS_UNIT}.service", user="root",
                  group="root", mode="644", src=io.StringIO(dataplane.unit(
                      "embassy: Prometheus metrics of the restore tests",
                      f"{py} replication.restoretest metrics --bind {address} --port {RT_METRICS_PORT}", oneshot=False,
                      extra=["Restart=always", "RestartSec=5"]))),
    ]
    reload = systemd.daemon_reload(name="systemd: reload units (restore tests)", _if=any_changed(*units))
    systemd.service(name="Restore test timer: enabled and running", service=f"{RT_UNIT}.timer", running=True,
                    enabled=True)
    systemd.service(name="Restore test metrics: enabled and running", service=RT_METRICS_UNIT, running=True,
                    enabled=True)
    systemd.service(name="Restore test metrics: restarted for a new unit", service=RT_METRICS_UNIT, restarted=True,
                    _if=reload.did_change)
