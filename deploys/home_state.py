"""The home state (rehearsals and demos): PostgreSQL (the major of the host's Debian release) with one
database per postgres register, seeded synthetic data, the file registers as document trees, and the read-only state service.

    pyinfra inventories/lab.py deploys/home_state.py     (inside the lab's controller namespace)

Host data read: role (only `home` gets anything), stack, home_seed / home_size_mb (or env
EMBASSY_HOME_SEED / EMBASSY_HOME_SIZE_MB), ssh_hostname (the address the service and PostgreSQL listen on).
"""

from __future__ import annotations

import io
import json
from importlib import resources

from pyinfra import host, inventory
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from embassy import model
from embassy.home import context, schema
from embassy.home.ops import as_user, ensure
from embassy.replication import dataplane
from embassy.replication.deploy_home import agent_packages, host_postgres, put
from embassy.replication.secretfile import secret_file  # secrets never pass through /tmp

SEED_DIR = "/var/lib/embassy/seed"
SERVICE_PORT = 8088
SERVICE_USER = "embassy_state"

if host.data.get("role") == "home":
    dep = context.deployment(host.data.stack)
    pg_registers = [r for r in dep.registers if r.kind is model.RegisterKind.POSTGRES]
    file_registers = [r for r in dep.registers if r.kind is model.RegisterKind.FILES]
    address = host.data.get("service_address") or host.data.ssh_hostname
    warm = [h.data.get("private_address") or h.data.ssh_hostname for h in inventory.get_group("warm", [])]
    pg = host_postgres()  # the major the host's Debian release carries

    # The agent's packages too (deploys/agent.py runs next on this host): one apt transaction, not two.
    apt.packages(
        name=f"Install PostgreSQL {pg.major}, the agents' tools and the state service's driver",
        packages=list(dict.fromkeys([*pg.packages, "pgbackrest", "restic", "python3-psycopg", "gzip", "tar",
                                     *agent_packages(pg)])),
        update=True, cache_time=86400, no_recommends=True,
    )

    folder, manifest = context.generated(host.data)
    wanted = f"{manifest['seed']}|{manifest['size_mb']:g}"
    for reg in pg_registers:
        db = schema.database_name(reg.name)
        # Never reseed over other data (the embassies replicate it): refuse before anything is uploaded.
        ensure(name=f"{reg.name}: no data of another seed or size",
               check=as_user("postgres", f"! psql -d {db} -Atc 'SELECT seed FROM embassy_seed' >/dev/null 2>&1 || "
                                         f"psql -d {db} -Atc \"SELECT seed || '|' || size_mb FROM embassy_seed\" "
                                         f"| grep -qx '{wanted}'"),
               command=f"echo 'error: {db} holds data of another seed or size (wanted {wanted})' >&2; "
                       f"echo 'HINT: deploy with the seed and size it was built with, or drop {db} at home' >&2; exit 2")

    # ---------------------------------------------------------------- the cluster
    conf = put(
        name="PostgreSQL: listen on home's address, WAL for standbys",
        src=io.StringIO(dataplane.home_postgresql_conf(address)),
        dest=f"{pg.conf_d}/10-embassy-home.conf", user="postgres", group="postgres", mode="644",
    )
    hba = put(
        name="PostgreSQL: pg_hba (replication only from the warm embassies)",
        src=io.StringIO(dataplane.home_pg_hba(warm)),
        dest=pg.hba,
        user="postgres", group="postgres", mode="640",
    )
    systemd.service(name="PostgreSQL: running and enabled", service=pg.service, running=True, enabled=True)
    systemd.service(name="PostgreSQL: restart for new settings", service=pg.service, restarted=True,
                    _if=any_changed(conf, hba))
    ensure(name="PostgreSQL: wait until it accepts connections",
           check=as_user("postgres", "pg_isready -q"),
           command="for i in $(seq 60); do runuser -u postgres -- pg_isready -q && exit 0; sleep 1; done; exit 1")

    # Before its first file: secret_file's `mkdir -p` would make it with the shell's umask, 027 on a hardened host
    # (roles/os_hardening), and postgres could not then read the role definition below (psql: Permission denied).
    files.directory(name="Embassy config folder", path="/etc/embassy", user="root", group="root", mode="755")
    # The password travels in a 0600 file, never on a command line (where `ps` would show it).
    role = dataplane.REPLICATION_USER
    role_sql = secret_file(
        name="PostgreSQL: replication role definition (0600)",
        content=(f"SELECT 'CREATE ROLE {role}' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}')\\gexec\n"
                 f"ALTER ROLE {role} WITH LOGIN REPLICATION PASSWORD '{context.replication_password(host.data)}';\n"),
        dest="/etc/embassy/replication-role.sql", user="postgres", group="postgres", mode="600")
    role_psql = as_user("postgres", "psql -X -q -v ON_ERROR_STOP=1 -f /etc/embassy/replication-role.sql")
    created = ensure(name="PostgreSQL: replication role for the warm standbys",
                     check=as_user("postgres", f"psql -Atc \"SELECT 1 FROM pg_roles WHERE rolname = '{role}'\" | grep -qx 1"),
                     command=role_psql)
    server.shell(name="PostgreSQL: new replication password", commands=[role_psql],
                 _if=lambda: role_sql.did_change() and not created.did_change())

    # ---------------------------------------------------------------- seeded registers
    # Its parent first, for the same reason: made by the seed folder's `mkdir -p` under a hardened umask (027) it is
    # 0750 root:root, and postgres cannot reach the seed below it (psql: load.sql: Permission denied).
    files.directory(name="Embassy state folder", path="/var/lib/embassy", user="root", group="root", mode="755")
    files.directory(name="Seed folder", path=SEED_DIR, user="postgres", group="postgres", mode="750")
    for reg in pg_registers:
        db = schema.database_name(reg.name)
        files.directory(name=f"{reg.name}: seed folder", path=f"{SEED_DIR}/{reg.name}", user="postgres", group="postgres",
                        mode="750")
        for name in sorted(manifest["registers"][reg.name]["files"]):
            put(name=f"{reg.name}: upload {name}", src=str(folder / reg.name / name),
                      dest=f"{SEED_DIR}/{reg.name}/{name}", user="postgres", group="postgres", mode="640")
        ensure(name=f"{reg.name}: database {db}",
               check=as_user("postgres", f"psql -Atc \"SELECT 1 FROM pg_database WHERE datname = '{db}'\" | grep -qx 1"),
               command=as_user("postgres", f"createdb {db}"))
        ensure(name=f"{reg.name}: schema and seeded data",
               check=as_user("postgres", f"psql -d {db} -Atc \"SELECT seed || '|' || size_mb FROM embassy_seed\" "
                                         f"| grep -qx '{wanted}'"),
               command=as_user("postgres", f"cd {SEED_DIR}/{reg.name} && psql -X -q -d {db} -f load.sql"))

    server.group(name="State service group", group=SERVICE_USER, system=True)
    server.user(name="State service user", user=SERVICE_USER, group=SERVICE_USER, system=True, shell="/usr/sbin/nologin",
                home="/nonexistent", ensure_home=False)
    files.directory(name="File registers root", path=dataplane.REGISTERS_ROOT, user="root", group=SERVICE_USER, mode="750")
    for reg in file_registers:
        tar = f"{reg.name}.tar.gz"
        digest = manifest["registers"][reg.name]["files"][tar]
        put(name=f"{reg.name}: upload the document tree", src=str(folder / tar), dest=f"{SEED_DIR}/{tar}",
                  user="root", group="root", mode="640")
        marker = f"{dataplane.REGISTERS_ROOT}/{reg.name}/.embassy-seed"
        ensure(name=f"{reg.name}: documents in {dataplane.REGISTERS_ROOT}/{reg.name}",
               check=f"grep -qx {digest} {marker}",
               command=f"tar -xzf {SEED_DIR}/{tar} -C {dataplane.REGISTERS_ROOT} --no-same-owner && echo {digest} > {marker}")

    # ---------------------------------------------------------------- the state service
    for reg in pg_registers:
        db = schema.database_name(reg.name)
        ensure(name=f"State service: read-only access to {db}",
               check=as_user("postgres", f"psql -d {db} -Atc \"SELECT has_table_privilege('{SERVICE_USER}', 'embassy_seed', "
                                         "'SELECT')\" | grep -qx t"),
               command=as_user("postgres", f"psql -v ON_ERROR_STOP=1 -d {db} -qc \"DO \\$\\$BEGIN IF NOT EXISTS (SELECT FROM "
                                           f"pg_roles WHERE rolname = '{SERVICE_USER}') THEN CREATE ROLE {SERVICE_USER} "
                                           f"LOGIN; END IF; END\\$\\$; GRANT CONNECT ON DATABASE {db} TO {SERVICE_USER}; "
                                           f"GRANT USAGE ON SCHEMA public TO {SERVICE_USER}; GRANT SELECT ON ALL TABLES "
                                           f"IN SCHEMA public TO {SERVICE_USER}\""))
    files.directory(name="State service code folder", path="/opt/embassy", user="root", group="root", mode="755")
    code = put(name="State service code", src=str(resources.files("embassy.home").joinpath("service.py")),
                     dest="/opt/embassy/state_service.py", user="root", group="root", mode="644")
    config = {
        "bind": address, "port": SERVICE_PORT, "conninfo": "host=/var/run/postgresql",
        "databases": {r.name: schema.database_name(r.name) for r in pg_registers},
        "files": {r.name: f"{dataplane.REGISTERS_ROOT}/{r.name}" for r in file_registers},
    }
    cfg = put(name="State service config", src=io.StringIO(json.dumps(config, indent=2, sort_keys=True) + "\n"),
                    dest="/etc/embassy/state-service.json", user="root", group=SERVICE_USER, mode="640")
    unit = put(
        name="State service unit",
        src=io.StringIO(dataplane.unit(
            "embassy: read-only state service (register queries, JSON)",
            "/usr/bin/python3 /opt/embassy/state_service.py --config /etc/embassy/state-service.json",
            user=SERVICE_USER, oneshot=False, after=f"{pg.service}.service",
            extra=["Restart=on-failure", "RestartSec=2", "NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectSystem=strict",
                   "ProtectHome=yes"])),
        dest="/etc/systemd/system/embassy-state.service", user="root", group="root", mode="644")
    systemd.daemon_reload(name="systemd: reload units", _if=unit.did_change)
    systemd.service(name="State service: running and enabled", service="embassy-state", running=True, enabled=True)
    systemd.service(name="State service: restart for new code or config", service="embassy-state", restarted=True,
                    _if=any_changed(code, cfg, unit))
