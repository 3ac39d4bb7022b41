"""The restore test, on the embassy host itself: no controller, no home (crisis independence).

    python3 -m replication.restoretest run [--point latest|random] [--window-days N] [--trigger timer|cli]
    python3 -m replication.restoretest metrics --bind ADDR [--port 9751]

Runs as root from the systemd timer the embassy deploy installs (or from `embassy restore-test` over SSH):
1. read every manifest of this embassy's vault (read-only identity, bounded) and verify the chain with home's
   public key (from the deploy's config, never from the vault); a round below the host's own high-water mark
   is a replayed (stale) vault;
2. pick a signed point: the newest, or a random one within the window (AWS Backup's LATEST_WITHIN_WINDOW /
   RANDOM_WITHIN_WINDOW);
3. restore every register this embassy holds into scratch space that nothing serves: a PostgreSQL cluster on
   port 5434 (the standby is 5432, a restore 5433) paused at each register's signed LSN, a scratch folder for
   files; recompute the digests and compare them with the manifest's; smoke queries; time per register;
4. remove the scratch data, sign the result with this embassy's own key and write it to the vault under
   Object Lock COMPLIANCE as restore-tests/<time>.json; keep the last result for the metrics exporter.
stdlib, cryptography, boto3, prometheus_client (Debian packages).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import fcntl
import hashlib
import json
import os
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import manifest, pgmajor, privatefile, vaultnet
from .digest import differences

CONFIG = "/etc/embassy/restore-test.json"
STATE_DIR = "/var/lib/embassy/restore-test"
PORT = 5434
SCRATCH_NAME = "embassy-restore-test"  # the scratch cluster, in the installed major's tree (host_postgres())
FILES_DIR = "/srv/embassy-restore-test"
REGISTERS_ROOT = "/srv/registers"
DIGEST_ROLE = "embassy_digest"
# /2: each register's entry carries the digest the host computed, and the result its steps' times
RECORD_FORMAT = "embassy-restore-test/2"
RECORD_PREFIX = "restore-tests/"
SOCKET = "/var/run/postgresql"


class Steps:
    """How long each step of the test took (whole milliseconds, in the signed result): what dominates."""

    def __init__(self) -> None:
        self.done: list[dict[str, Any]] = []

    def step(self, name: str, since: float) -> float:
        now = time.monotonic()
        self.done.append({"step": name, "milliseconds": int((now - since) * 1000)})
        return now


class Failed(Exception):
    """The restore test failed: the object and the reason, as `embassy verify` names them."""

    def __init__(self, obj: str, reason: str) -> None:
        super().__init__(f"{obj}: {reason}")
        self.object, self.reason = obj, reason


# --------------------------------------------------------------------------- pure parts (unit-tested)


def record_key(when: dt.datetime) -> str:
    """restore-tests/<time>.json: the name is the record's own time (a replayed record sits under another)."""
    return f"{RECORD_PREFIX}{when.astimezone(dt.UTC).strftime('%Y%m%dT%H%M%S.%fZ')}.json"


def iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def sign_record(body: dict[str, Any], private: Any) -> bytes:
    """The stored bytes: the body and an Ed25519 signature over its canonical bytes (as a manifest is signed)."""
    signature = private.sign(manifest.canonical(body))
    return manifest.canonical({"record": body, "signature": {
        "alg": "ed25519", "key_id": manifest.key_id(private.public_key()),
        "value": base64.b64encode(signature).decode()}})


def choose_point(chain: list[manifest.Verified], point: str, window_days: int, now: dt.datetime,
                 rng: random.Random | None = None,
                 restorable: Callable[[manifest.Verified], bool] = lambda _m: True) -> manifest.Verified:
    """The newest signed point, or a random one whose round started within the window and that the vault can
    restore (a base backup ends before its signed points: pgBackRest's recovery points, as AWS Backup's)."""
    if not chain:
        raise Failed("manifests/", "no signed manifest in this vault")
    if point == "latest":
        return chain[-1]
    since = now - dt.timedelta(days=window_days)
    within = [m for m in chain if manifest.parse_time(m.body["time"]) >= since]
    if not within:
        raise Failed(chain[-1].key, f"no signed point within the last {window_days} days (newest: "
                                    f"{chain[-1].body['time']})")
    candidates = [m for m in within if restorable(m)]
    if not candidates:
        raise Failed(chain[-1].key, f"no signed point within the last {window_days} days has a base backup in this "
                                    "vault that ends before it")
    return (rng or random.SystemRandom()).choice(candidates)


def first_lsn(m: manifest.Verified, registers: list[dict[str, Any]]) -> int | None:
    """The earliest signed LSN of the postgres registers held here (None: none held, or none named)."""
    body = {r.get("name"): r for r in m.body.get("registers", []) if isinstance(r, dict)}
    lsns = [(body.get(r["name"], {}).get("digest") or {}).get("lsn") for r in registers if r["kind"] == "postgres"]
    try:
        return min(lsn_value(str(x)) for x in lsns) if lsns and all(lsns) else None
    except (ValueError, AttributeError):
        return None


def result(config: dict[str, Any], chosen: manifest.Verified | None, started: dt.datetime, seconds: float,
           registers: list[dict[str, Any]], failure: Failed | None, trigger: str,
           steps: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The restore-test result, the body of its signed record: times in whole milliseconds (a signed document
    holds no floats); `public` turns it into the JSON `embassy restore-test --json` prints."""
    return {"format": RECORD_FORMAT, "stack": config["stack"], "embassy": config["embassy"], "trigger": trigger,
            "time": iso(started), "point": {"round": chosen.round, "time": chosen.body["time"], "manifest": chosen.key,
                                            "sha256": chosen.sha256} if chosen else None,
            "passed": failure is None and bool(registers) and all(r["digest_ok"] and r["within_rto"] for r in registers),
            "milliseconds": int(seconds * 1000), "registers": registers,
            "failure": {"object": failure.object, "reason": failure.reason} if failure else None,
            "steps": steps or []}


def public(body: dict[str, Any]) -> dict[str, Any]:
    """The issue's JSON of a result: {"embassy", "point": {"round", "time"}, "passed", "seconds", "registers":
    [{"name", "kind", "digest_ok", "seconds", "rto_seconds"}], "failure"}, and a few more fields."""
    point = body.get("point") or None
    return {"embassy": body["embassy"], "stack": body["stack"], "time": body["time"], "trigger": body.get("trigger"),
            "point": {"round": point["round"], "time": point["time"], "manifest": point.get("manifest")} if point else None,
            "passed": body["passed"], "seconds": body["milliseconds"] / 1000,
            "registers": [{"name": r["name"], "kind": r["kind"], "digest_ok": r["digest_ok"],
                           "seconds": r["milliseconds"] / 1000, "rto_seconds": r["rto_seconds"],
                           "within_rto": r.get("within_rto")} for r in body["registers"]],
            "failure": body["failure"],
            "steps": [{"step": x["step"], "seconds": x["milliseconds"] / 1000} for x in body.get("steps") or []]}


def lsn_value(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def backup_set_before(info_json: str, lsn: int) -> str | None:
    """The newest pgBackRest backup that ended at or before `lsn` (recovery cannot stop before a backup's end)."""
    try:
        sets = json.loads(info_json)[0].get("backup", [])
        before = [b["label"] for b in sets if lsn_value(b["lsn"]["stop"]) <= lsn]
    except (ValueError, IndexError, KeyError, TypeError, AttributeError):
        return None
    return before[-1] if before else None


# --------------------------------------------------------------------------- the host


def sh(command: str, what: str, timeout: float = 3600) -> str:
    try:
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise Failed(what, f"no answer in {timeout:.0f} s") from None
    if done.returncode != 0:
        raise Failed(what, (done.stderr or done.stdout).strip()[-400:] or f"exit {done.returncode}")
    return done.stdout


def psql(db: str, sql: str, user: str = "postgres") -> str:
    return sh(f"runuser -u {user} -- psql -X -A -t -q -h {SOCKET} -p {PORT} -d {shlex.quote(db)} "
              f"-c {shlex.quote(sql)}", f"psql {db} on port {PORT}", timeout=120).strip()


SESSION_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def handed_session() -> dict[str, str] | None:
    """A role's session handed over on this shell's input (`embassy restore-test --target aws`: the restore role's,
    exported before this runs), or None: then the deploy's file is read, as embassy-restic does."""
    got = [os.environ.get(name, "") for name in SESSION_ENV]
    return dict(zip(("access_key_id", "secret_access_key", "session_token"), got, strict=True)) if all(got) else None


def s3(vault: dict[str, Any], credentials_file: str, session: dict[str, str] | None = None) -> Any:
    creds = session or json.loads(Path(credentials_file).read_text())  # a role's session (AWS), or the deploy's keys
    return vaultnet.client(vault["endpoint"], vault["ca_file"], creds, region=vault.get("region", "us-east-1"))


MAX_MANIFESTS = 200_000


def read_chain(config: dict[str, Any]) -> list[manifest.Verified]:
    """The vault's manifest chain, verified with home's public key; any failure names its object."""
    vault = config["vault"]
    try:
        client = s3(vault, vault["reader_credentials"], handed_session())  # read-only: a handed session wins
        objects: list[tuple[str, bytes]] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=vault["bucket"], Prefix=manifest.PREFIX):
            for item in page.get("Contents", []) or []:
                if len(objects) >= MAX_MANIFESTS:
                    raise Failed(f"vault:{config['embassy']}/{manifest.PREFIX}", f"more than {MAX_MANIFESTS} objects")
                if int(item.get("Size") or 0) > manifest.MAX_BYTES:
                    raise Failed(f"vault:{config['embassy']}/{item['Key']}", "larger than a manifest can be")
                body = client.get_object(Bucket=vault["bucket"], Key=item["Key"])["Body"].read(manifest.MAX_BYTES + 1)
                objects.append((item["Key"], body))
    except Failed:
        raise
    except Exception as exc:  # botocore's errors, TLS, DNS: the vault did not answer as a vault
        raise Failed(f"vault:{config['embassy']}", f"unreachable: {type(exc).__name__}: {str(exc)[:200]}") from None
    public = manifest.load_public_key(config["public_key"])
    chain, failure = manifest.verify_chain(objects, public, stack=config["stack"], embassy=config["embassy"])
    if failure:
        raise Failed(f"vault:{config['embassy']}/{failure[0]}", failure[1])
    if not chain:
        raise Failed(f"vault:{config['embassy']}/{manifest.PREFIX}", "no signed manifest in this vault")
    mark = Path(STATE_DIR) / "mark.json"
    seen = json.loads(mark.read_text()).get("round", 0) if mark.is_file() else 0
    if chain[-1].round < seen:
        raise Failed(f"vault:{config['embassy']}/{chain[-1].key}",
                     f"head round {chain[-1].round} is below round {seen}, seen here before (a replayed vault)")
    mark.write_text(json.dumps({"round": chain[-1].round}) + "\n")
    return chain


def host_postgres() -> pgmajor.Postgres:
    """This host's PostgreSQL: the one major installed here (hosts of either Debian release run this code)."""
    try:
        return pgmajor.Postgres(pgmajor.local_major())
    except pgmajor.UnknownMajor as exc:
        raise Failed(pgmajor.LIB, str(exc)) from None


def scratch_dir() -> str:
    return host_postgres().home(SCRATCH_NAME)


def stop_scratch() -> None:
    pg_dir = scratch_dir()
    lock = f"{SOCKET}/.s.PGSQL.{PORT}.lock"
    sh(f"pid=$(head -1 {lock} 2>/dev/null); if [ -n \"$pid\" ]; then kill -QUIT \"$pid\" 2>/dev/null; "
       f"for i in $(seq 100); do kill -0 \"$pid\" 2>/dev/null || break; sleep 0.1; done; fi; "
       f"rm -rf {pg_dir} {pg_dir}.log {FILES_DIR}", "remove the scratch data", timeout=60)


def _write(path: str, text: str) -> None:
    privatefile.create_private(path, text.encode(), how="replace")
    sh(f"chown postgres:postgres {shlex.quote(path)}", f"own {path}")


def scratch_conf(pg_dir: str) -> str:
    return "\n".join([
        "# embassy restore test: a scratch cluster from this embassy's vault (never archives, local socket only)",
        f"port = {PORT}", "listen_addresses = ''", f"unix_socket_directories = '{SOCKET}'", "archive_mode = off",
        "hot_standby = on", f"hba_file = '{pg_dir}/pg_hba.conf'", f"ident_file = '{pg_dir}/pg_ident.conf'",
        "shared_buffers = 32MB", "logging_collector = off", "include_if_exists = 'embassy-target.conf'", ""])


def _pg_ctl(pg: pgmajor.Postgres, action: str) -> None:
    pg_dir = pg.home(SCRATCH_NAME)
    sh(f"runuser -u postgres -- {pg.bin}/pg_ctl -D {pg_dir} -l {pg_dir}.log -w -t 600 -m fast {action}",
       f"pg_ctl {action} (log: {pg_dir}.log)", timeout=630)


def _wait_paused(pg_dir: str, lsn: str, timeout: float = 600) -> None:
    deadline, got = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        try:
            got = psql("postgres", "SELECT pg_get_wal_replay_pause_state()")
        except Failed:
            got = ""
        if got == "paused":
            return
        time.sleep(0.3)
    raise Failed(f"{pg_dir}.log", f"recovery did not pause at {lsn} in {timeout:.0f} s (last: {got or 'no answer'})")


def compare(reg: dict[str, Any], entry: dict[str, Any], actual: dict[str, Any], chosen: manifest.Verified) -> None:
    diff = differences(entry.get("digest") or {}, actual) if entry.get("digest") else ["the manifest names no digest"]
    if diff:
        raise Failed(f"register {reg['name']}", f"differs from {chosen.key}: {'; '.join(diff)[:400]}")


SMOKE_SQL = {  # the lookups the state service answers, on the restored copy
    "population": ("SELECT count(*) FROM persons WHERE isikukood = (SELECT isikukood FROM persons ORDER BY id LIMIT 1)",
                   "1"),
    "land_register": ("SELECT count(*) > 0 FROM deeds WHERE parcel = (SELECT parcel FROM deeds ORDER BY parcel LIMIT 1)",
                      "t"),
}


def smoke_postgres(reg: dict[str, Any]) -> None:
    sql, want = SMOKE_SQL.get(reg["database"], ("SELECT count(*) > 0 FROM pg_class WHERE relkind = 'r' AND "
                                                "relnamespace = 'public'::regnamespace", "t"))
    got = psql(reg["database"], sql)
    if got != want:
        raise Failed(f"register {reg['name']}", f"smoke query answered {got!r} (expected {want!r})")


def smoke_files(reg: dict[str, Any], folder: str) -> None:
    cases = sh(f"find {shlex.quote(folder)} -name case.json | sort | head -1", f"register {reg['name']}").strip()
    if reg["name"] == "court-files":
        if not cases or "number" not in json.loads(Path(cases).read_text()):
            raise Failed(f"register {reg['name']}", "smoke: no readable court file (case.json with a number)")
    elif not sh(f"find {shlex.quote(folder)} -type f | head -1", f"register {reg['name']}").strip():
        raise Failed(f"register {reg['name']}", "smoke: no file restored")


def restore_all(config: dict[str, Any], chosen: manifest.Verified, out: list[dict[str, Any]],
                steps: Steps | None = None) -> None:
    """Restore each held register into the scratch space, in priority order; one entry each in `out`, with the
    digest computed here (status compares it with the signed manifest's, as this host did)."""
    steps = steps or Steps()
    body = {r["name"]: r for r in chosen.body["registers"]}
    regs = sorted(config["registers"], key=lambda r: r["priority"])
    for reg in regs:
        if reg["name"] not in body:
            raise Failed(chosen.key, f"names no register {reg['name']}")
    start = at = time.monotonic()

    def done(reg: dict[str, Any], actual: dict[str, Any]) -> None:
        ms = int((time.monotonic() - start) * 1000)
        out.append({"name": reg["name"], "kind": reg["kind"], "digest_ok": True, "milliseconds": ms,
                    "rto_seconds": reg["rto_seconds"], "within_rto": ms <= reg["rto_seconds"] * 1000,
                    "digest": actual})

    postgres = sorted((r for r in regs if r["kind"] == "postgres"),
                      key=lambda r: lsn_value((body[r["name"]].get("digest") or {}).get("lsn") or "0/0"))
    if postgres:
        first = min(lsn_value((body[r["name"]].get("digest") or {}).get("lsn") or "0/0") for r in postgres)
        info = sh("runuser -u postgres -- pgbackrest --stanza=home --output=json info", "pgbackrest info", 300)
        label = backup_set_before(info, first)
        if label is None:
            raise Failed(chosen.key, "no backup in the vault ends before its signed points")
        pg = host_postgres()
        pg_dir = pg.home(SCRATCH_NAME)
        sh(f"/usr/local/sbin/embassy-restore-postgres {pg_dir} --archive-mode=off --set={shlex.quote(label)}",
           "pgbackrest restore")
        at = steps.step("pgbackrest restore", at)
        sh(f"sed -i '/^recovery_target/d' {pg_dir}/postgresql.auto.conf", "clear pgBackRest's targets")
        _write(f"{pg_dir}/postgresql.conf", scratch_conf(pg_dir))
        _write(f"{pg_dir}/pg_hba.conf", "local all all peer\n")
        _write(f"{pg_dir}/pg_ident.conf", "")
        running, paused_at = False, None
        for reg in postgres:
            lsn = (body[reg["name"]].get("digest") or {}).get("lsn")
            if not lsn:
                raise Failed(f"register {reg['name']}", f"{chosen.key} names no digest LSN")
            if lsn != paused_at:
                _write(f"{pg_dir}/embassy-target.conf", f"recovery_target_lsn = '{lsn}'\n"
                       "recovery_target_inclusive = off\nrecovery_target_action = 'pause'\n")
                _pg_ctl(pg, "restart" if running else "start")
                running, paused_at = True, lsn
                _wait_paused(pg_dir, lsn)
                at = steps.step(f"recovery to {lsn}", at)
            text = sh(f"runuser -u {DIGEST_ROLE} -- env PYTHONPATH=/opt/embassy python3 -m replication.digest postgres "
                      f"{shlex.quote(reg['database'])} --conninfo 'host={SOCKET} port={PORT}'",
                      f"register {reg['name']}")
            actual = json.loads(text)
            compare(reg, body[reg["name"]], actual, chosen)
            smoke_postgres(reg)
            done(reg, actual)
            at = steps.step(f"{reg['name']}: digest and smoke", at)
    for reg in (r for r in regs if r["kind"] == "files"):
        snapshot = body[reg["name"]].get("snapshot_id")
        if not snapshot:
            raise Failed(f"register {reg['name']}", f"{chosen.key} names no snapshot")
        sh(f"install -d -m 700 {FILES_DIR} && /usr/local/sbin/embassy-restore-files {shlex.quote(reg['name'])} "
           f"{FILES_DIR} {shlex.quote(snapshot)} >/dev/null", f"register {reg['name']}")
        at = steps.step(f"{reg['name']}: restic restore", at)
        folder = f"{FILES_DIR}{REGISTERS_ROOT}/{reg['name']}"
        text = sh(f"env PYTHONPATH=/opt/embassy python3 -m replication.digest files {shlex.quote(folder)}",
                  f"register {reg['name']}")
        actual = json.loads(text)
        compare(reg, body[reg["name"]], actual, chosen)
        smoke_files(reg, folder)
        done(reg, actual)
        at = steps.step(f"{reg['name']}: digest and smoke", at)
    # Registers in `out` passed; order them as the config does for the report.
    out.sort(key=lambda r: [x["name"] for x in regs].index(r["name"]))


def restorable_in(config: dict[str, Any], point: str) -> Callable[[manifest.Verified], bool]:
    """Which signed points this vault can restore: a base backup must end before their signed LSNs."""
    if point != "random" or not any(r["kind"] == "postgres" for r in config["registers"]):
        return lambda _m: True
    info = sh("runuser -u postgres -- pgbackrest --stanza=home --output=json info", "pgbackrest info", 300)

    def restorable(m: manifest.Verified) -> bool:
        lsn = first_lsn(m, config["registers"])
        return lsn is not None and backup_set_before(info, lsn) is not None

    return restorable


def run(config: dict[str, Any], point: str, window_days: int, trigger: str) -> dict[str, Any]:
    started, t0 = dt.datetime.now(dt.UTC), time.monotonic()
    registers: list[dict[str, Any]] = []
    chosen: manifest.Verified | None = None
    failure: Failed | None = None
    steps, at = Steps(), t0
    try:
        chain = read_chain(config)
        at = steps.step("read and verify the manifest chain", at)
        chosen = choose_point(chain, point, window_days, started, restorable=restorable_in(config, point))
        stop_scratch()
        at = steps.step("choose the point, clear the scratch space", at)
        restore_all(config, chosen, registers, steps)
        late = [r for r in registers if not r["within_rto"]]
        if late:
            failure = Failed(f"register {late[0]['name']}", f"restored in {late[0]['milliseconds'] / 1000} s, over "
                                                             f"its RTO of {late[0]['rto_seconds']} s")
    except Failed as exc:
        failure = exc
    finally:
        at = time.monotonic()
        try:
            stop_scratch()
        except Failed as exc:
            failure = failure or exc
        steps.step("remove the scratch data", at)
    return result(config, chosen, started, time.monotonic() - t0, registers, failure, trigger, steps.done)


def record(config: dict[str, Any], body: dict[str, Any]) -> str:
    """Sign the result with this embassy's key and write it to the vault; its key. The bucket's default retention
    locks it (Object Lock COMPLIANCE, the embassy's retention_days), as it locks the manifests: the agent identity
    may not set a retention itself (the lab's vault refuses it), and `embassy status` checks the lock it got."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    private = load_pem_private_key(Path(config["signing_key"]).read_bytes(), password=None)
    data = sign_record(body, private)
    key = record_key(dt.datetime.fromisoformat(body["time"].replace("Z", "+00:00")))
    vault = config["vault"]
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()  # the vault checks the bytes it stores
    only_new = create_only(config)  # a config without the setting writes nothing
    client = vaultnet.client(vault["endpoint"], vault["ca_file"], writer_keys(config),
                             region=vault.get("region", "us-east-1"))
    if only_new:
        # A new object only (S3 answers 412 if the key exists): the AWS host role may write nothing else there.
        client.meta.events.register("before-sign.s3.PutObject", _if_none_match)
    client.put_object(Bucket=vault["bucket"], Key=key, Body=data, ContentType="application/json", ContentMD5=md5)
    return key


INSTANCE_ROLE = "instance-role"  # vault.writer: the host's own instance role (AWS), read from the metadata service
WRITER_FILE = "file"  # vault.writer: the deploy's writer_credentials file (the lab, a site)
# Where the instance role's credentials are served (the AWS SDKs' own setting names another, e.g. for IPv6).
METADATA_ENDPOINT_ENV = "AWS_EC2_METADATA_SERVICE_ENDPOINT"


def create_only(config: dict[str, Any]) -> bool:
    """Whether the record is written with If-None-Match: * (S3 then writes only a key that does not exist): the
    deploy's explicit setting `vault.create_only`, true on AWS (the stack's host role is denied a put without it,
    infra/enclave.py), false on the lab and a site. Never guessed from the endpoint: a look-alike name can neither
    switch it on nor off. A config without it (not written by this deploy) writes nothing."""
    value = config["vault"].get("create_only")
    if not isinstance(value, bool):
        raise Failed(f"vault:{config.get('embassy')}/{RECORD_PREFIX}",
                     f"{CONFIG} sets no vault.create_only (true or false): run `embassy deploy` for this host again")
    return value


def writer_keys(config: dict[str, Any]) -> dict[str, str]:
    """The identity that writes the record: the deploy's writer file (the lab, a site), or on AWS the host's instance
    role from the instance metadata service, never a session handed to this process (`restore-test --target aws`
    hands the restore role's, which may not write) nor a static key."""
    vault = config["vault"]
    writer = vault.get("writer")
    if writer == WRITER_FILE:
        return dict(json.loads(Path(vault["writer_credentials"]).read_text()))
    if writer == INSTANCE_ROLE:
        return instance_role_keys(config)
    raise Failed(f"vault:{config.get('embassy')}/{RECORD_PREFIX}",
                 f"{CONFIG} names no writer ({WRITER_FILE} or {INSTANCE_ROLE}): run `embassy deploy` for this host again")


def instance_role_keys(config: dict[str, Any]) -> dict[str, str]:
    """The instance role's current session, from the instance metadata service (IMDSv2) only."""
    from botocore.credentials import InstanceMetadataProvider
    from botocore.utils import METADATA_BASE_URL, InstanceMetadataFetcher

    fetcher = InstanceMetadataFetcher(timeout=5, num_attempts=3,
                                      base_url=os.environ.get(METADATA_ENDPOINT_ENV) or METADATA_BASE_URL)
    creds = InstanceMetadataProvider(iam_role_fetcher=fetcher).load()
    if creds is None:
        raise Failed(f"vault:{config.get('embassy')}/{RECORD_PREFIX}",
                     "the instance metadata service gave no instance role credentials: is the stack's host role "
                     "attached to this instance (its instance profile)?")
    frozen = creds.get_frozen_credentials()
    return {"access_key_id": frozen.access_key, "secret_access_key": frozen.secret_key,
            **({"session_token": frozen.token} if frozen.token else {})}


def _if_none_match(request: Any, **_kw: Any) -> None:
    request.headers["If-None-Match"] = "*"  # set before signing (any botocore: Debian's has no IfNoneMatch parameter)


def exclusive(path: Path) -> Any:
    """The run's lock (kept open until the process ends), or None when another run holds it."""
    handle = path.open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def keep_last(body: dict[str, Any]) -> None:
    """The last result and the last success, for the metrics exporter."""
    folder = Path(STATE_DIR)
    last = json.loads((folder / "last.json").read_text()) if (folder / "last.json").is_file() else {}
    last["last"] = body
    if body["passed"]:
        last["last_success"] = body["time"]
    last["failures"] = int(last.get("failures", 0)) + (0 if body["passed"] else 1)
    (folder / "last.json").write_text(json.dumps(last, sort_keys=True) + "\n")


def metrics(bind: str, port: int, every: float = 5.0) -> None:
    from prometheus_client import Gauge, start_http_server

    labels = ["embassy"]
    last_run = Gauge("embassy_restore_test_last_run_timestamp_seconds", "when the last restore test started", labels)
    last_ok = Gauge("embassy_restore_test_last_success_timestamp_seconds", "when the last passed restore test started",
                    labels)
    passed = Gauge("embassy_restore_test_passed", "1 when the last restore test passed", labels)
    failures = Gauge("embassy_restore_test_failures", "restore tests failed since the deploy", labels)
    seconds = Gauge("embassy_restore_test_register_seconds", "restore time of a register in the last test",
                    ["embassy", "register"])
    rto = Gauge("embassy_restore_test_register_rto_seconds", "the register's RTO objective", ["embassy", "register"])
    start_http_server(port, addr=bind)
    while True:
        path = Path(STATE_DIR) / "last.json"
        try:
            got = json.loads(path.read_text()) if path.is_file() else {}
        except ValueError:
            got = {}
        last = got.get("last")
        if last:
            stamp = dt.datetime.fromisoformat(last["time"].replace("Z", "+00:00")).timestamp()
            last_run.labels(last["embassy"]).set(stamp)
            passed.labels(last["embassy"]).set(1 if last["passed"] else 0)
            failures.labels(last["embassy"]).set(got.get("failures", 0))
            if got.get("last_success"):
                last_ok.labels(last["embassy"]).set(
                    dt.datetime.fromisoformat(got["last_success"].replace("Z", "+00:00")).timestamp())
            for r in last["registers"]:
                seconds.labels(last["embassy"], r["name"]).set(r["milliseconds"] / 1000)
                rto.labels(last["embassy"], r["name"]).set(r["rto_seconds"])
        time.sleep(every)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m replication.restoretest")
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run")
    go.add_argument("--config", default=CONFIG)
    go.add_argument("--point", choices=["latest", "random"])
    go.add_argument("--window-days", type=int)
    go.add_argument("--trigger", default="timer", choices=["timer", "cli"])
    mon = sub.add_parser("metrics")
    mon.add_argument("--bind", required=True)
    mon.add_argument("--port", type=int, default=9751)
    args = parser.parse_args(argv)
    Path(STATE_DIR).mkdir(parents=True, exist_ok=True, mode=0o700)
    if args.command == "metrics":
        metrics(args.bind, args.port)
        return 0
    held = exclusive(Path(STATE_DIR) / "run.lock")
    if held is None:  # the timer's run and a `restore-test` from the controller share the scratch port and folders
        print("error: another restore test is running on this host\nHINT: wait for it to end "
              "(systemctl status embassy-restore-test), then run this one again", file=sys.stderr)
        return 2
    config = json.loads(Path(args.config).read_text())
    body = run(config, args.point or config["point"], args.window_days or config["window_days"], args.trigger)
    try:
        body_key = record(config, body)
    except Exception as exc:  # the result stands; the vault refused it: say so, and fail
        print(json.dumps({**body, "record": None}, sort_keys=True))  # the controller reads the body
        print(f"error: the result could not be written to the vault: {type(exc).__name__}: {str(exc)[:300]}",
              file=sys.stderr)
        keep_last({**body, "passed": False})
        return 1
    keep_last(body)
    print(json.dumps({**body, "record": body_key}, sort_keys=True))
    return 0 if body["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
