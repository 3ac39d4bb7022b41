"""`embassy restore`: bring the state back at one embassy, proven equal to what home signed.

1. Verify the embassy's vault as `embassy verify` does (manifest chain, signatures, freshness,
   pgBackRest and restic checks): any failure refuses the restore, naming the object.
2. Restore the registers in priority order, with that embassy's host, vault, identity and secrets only:
   - postgres, warm embassy: promote the streaming standby, once it replayed at least the head
     manifest's `archived_lsn` (else, or with --from-vault, as a cold embassy does);
   - postgres from the vault (cold, a point in time, a lagging standby): pgBackRest restore into a
     fresh cluster on port 5433 with archive_mode=off, recovery paused at each register's digest LSN
     to recompute its digest there (the digest is of the state at that LSN), then recovery continues
     to the end of the archive, or to --target-time;
   - files: restic restore of the manifest's snapshot.
3. Recompute every register's digest and compare it with the manifest's. A promoted standby is past
   the digest LSN: its digest equals the manifest's only if the register did not change since that
   round (the drill's write load goes to `embassy_monitor`, never to a register). Any mismatch is a
   DigestMismatch: nothing is served.
4. Start the state service (the code home runs) on the embassy host and smoke-check it.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import shlex
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from typing import Any

from embassy import model
from embassy.custody import hostsecrets
from embassy.custody.hostsecrets import Keyring
from embassy.errors import (
    DigestMismatch,
    EmbassyError,
    HostUnreachable,
    ManifestInvalid,
    RestoreFailed,
    SmokeCheckFailed,
)
from embassy.home import schema
from embassy.replication import dataplane, pgmajor, standby
from embassy.replication import verify as vault_verify
from embassy.replication.dataplane import REGISTERS_ROOT, manifest_generation
from embassy.replication.digest import ROLE as DIGEST_ROLE
from embassy.replication.digest import differences
from embassy.replication.manifest import Verified
from embassy.targets import Host, Target

SCRATCH_PORT = 5433  # a restore from the vault: a fresh cluster beside the embassy's own (5432)
STANDBY_PORT = 5432
SCRATCH_NAME = "embassy-restore"  # the scratch cluster's folder, in the host's PostgreSQL major's tree
FILES_ROOT = "/srv/embassy-restore"  # restic restores <root>/srv/registers/<name>
SERVICE_UNIT = "embassy-state-restored"
SERVICE_PORT = 8088
SERVICE_CONFIG = "/etc/embassy/state-service-restored.json"
SERVICE_USER = "embassy_state"
DIGEST = "env PYTHONPATH=/opt/embassy python3 -m replication.digest"
Say = Callable[[str], None]


@dataclass
class RegisterOutcome:
    name: str
    kind: str
    priority: int
    method: str = ""  # standby | vault | restic
    verified: bool = False
    restored: bool = False
    done_at: float | None = None  # monotonic: verified, restored and readable
    digest: dict[str, Any] | None = None
    manifest_digest: dict[str, Any] | None = None
    detail: str = ""
    # What is proven: {"signed_round", "signed_point", "beyond_signed": {"transactions", "source"}}
    proof: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "priority": self.priority, "method": self.method,
                "verified": self.verified, "restored": self.restored, "digest": self.digest,
                "manifest_digest": self.manifest_digest, "detail": self.detail, "proof": self.proof}


@dataclass
class Step:
    name: str
    start: dt.datetime
    end: dt.datetime
    ok: bool = True


@dataclass
class Outcome:
    stack: str
    embassy: str
    mode: str
    started: float = field(default_factory=time.monotonic)
    verification: vault_verify.Result | None = None
    manifest: Verified | None = None
    manifest_bytes: bytes | None = None  # the manifest object as read and verified: the report re-checks its signature
    chain_head: Verified | None = None
    registers: list[RegisterOutcome] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    port: int | None = None
    service_url: str | None = None
    smoke: dict[str, Any] = field(default_factory=dict)
    service_ok_at: float | None = None  # monotonic: the service answered the smoke queries correctly
    newest_heartbeat: str | None = None  # in the restored cluster: what RPO counts from
    target_time: str | None = None
    error: EmbassyError | None = None
    accept_unanchored: bool = False  # --accept-unanchored: freshness taken as it is (recorded)
    bundle_round: int | None = None  # the custody bundle's round at sealing: an anchor of freshness

    @property
    def manifest_key(self) -> str:
        return self.manifest.key if self.manifest else "(no manifest)"

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.registers) and all(r.verified and r.restored for r in self.registers) \
            and self.service_ok_at is not None

    def as_json(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "stack": self.stack, "embassy": self.embassy, "mode": self.mode, "ok": self.ok,
            "target_time": self.target_time,
            "verify": self.verification.as_json() if self.verification else None,
            "freshness": self.verification.freshness.as_json() if self.verification and self.verification.freshness
            else None,
            "manifest": {"key": m.key, "round": m.round, "sha256": m.sha256,
                         "key_generation": _generation_or_none(m)} if m else None,
            "registers": [r.as_json() for r in self.registers],
            "port": self.port, "service": self.service_url, "smoke": self.smoke,
            "newest_heartbeat": self.newest_heartbeat,
            "seconds": round((self.service_ok_at or time.monotonic()) - self.started, 3),
            "steps": [{"step": s.name, "start": s.start.isoformat(), "end": s.end.isoformat(), "ok": s.ok}
                      for s in self.steps],
            "error": self.error.as_json() if self.error else None,
        }


def _generation_or_none(m: Verified) -> int | None:
    try:
        return manifest_generation(m.body)
    except ValueError:
        return None


def scratch_dir(pg: pgmajor.Postgres) -> str:
    """Where a restore from the vault puts its fresh cluster."""
    return pg.home(SCRATCH_NAME)


class Session:
    """The embassy host, reached through the target: shell commands, each a step with its time.

    keys: the key generation's restore secrets the restore hands over (None: the host's own files hold the
    generation restored). Only the commands that run pgBackRest or restic (`keyed=True`) get them, in their
    environment (`run_on`'s env: exported on the session's input): never in an argv, never written to the host's disk."""

    def __init__(self, target: Target, host: Host, outcome: Outcome, say: Say) -> None:
        self.target, self.host, self.outcome, self.say = target, host, outcome, say
        self.keys: hostsecrets.Keys | None = None

    @property
    def env(self) -> dict[str, str] | None:
        """What a keyed command gets in its environment: the handed generation's restore secrets, if any."""
        return hostsecrets.restore_env(self.keys) if self.keys is not None else None

    def sh(self, command: str, *, timeout: float = 600, stdin: str | None = None,
           keyed: bool = False) -> subprocess.CompletedProcess[str]:
        try:
            return self.target.run_on(self.host, command, timeout=timeout, stdin=stdin,
                                      env=self.env if keyed else None)
        except subprocess.TimeoutExpired:
            raise RestoreFailed(f"{self.host.name}: no answer in {timeout:.0f} s to `{command[:120]}`") from None

    def must(self, command: str, what: str, *, timeout: float = 600, stdin: str | None = None,
             keyed: bool = False) -> str:
        done = self.sh(command, timeout=timeout, stdin=stdin, keyed=keyed)
        if done.returncode != 0:
            raise RestoreFailed(f"{self.host.name}: {what} failed: {(done.stderr or done.stdout).strip()[-600:]}")
        return done.stdout

    @cached_property
    def pg(self) -> pgmajor.Postgres:
        """The PostgreSQL installed on the embassy host, asked once: its major names every path and the service."""
        return dataplane.host_postgres(self.target, self.host)

    @property
    def scratch(self) -> str:
        return scratch_dir(self.pg)

    def psql(self, port: int, db: str, sql: str, timeout: float = 60) -> str:
        return self.must(f"sudo runuser -u postgres -- psql -X -A -t -q -p {port} -d {db} -c {shlex.quote(sql)}",
                         f"psql {db} on port {port}", timeout=timeout).strip()

    def step(self, name: str) -> _StepTimer:
        self.say(name)
        return _StepTimer(self.outcome, name)


class _StepTimer:
    def __init__(self, outcome: Outcome, name: str) -> None:
        self.outcome, self.name = outcome, name

    def __enter__(self) -> _StepTimer:
        self.start = dt.datetime.now(dt.UTC)
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        self.outcome.steps.append(Step(self.name, self.start, dt.datetime.now(dt.UTC), ok=kind is None))


# --------------------------------------------------------------------------- the plan


def held_registers(dep: model.Deployment, embassy: str) -> list[model.Register]:
    """The registers this embassy holds, in restore (priority) order."""
    return [r for r in dep.registers_in_restore_order() if any(e.name == embassy for e in dep.holders(r))]


def parse_time(text: str) -> dt.datetime:
    """--target-time: ISO 8601; a time without zone is UTC."""
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        from embassy.errors import OptionInvalid

        raise OptionInvalid(f"--target-time '{text}' is not an ISO 8601 time",
                            "give e.g. 2026-12-02T18:30:00Z (UTC if no zone is given)") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _manifest_time(m: Verified) -> dt.datetime:
    return dt.datetime.fromisoformat(str(m.body["time"]).replace("Z", "+00:00"))


def choose_manifest(chain: list[Verified], target_time: dt.datetime | None) -> Verified:
    """The head; for a point in time, the newest manifest whose round started before it."""
    if target_time is None:
        return chain[-1]
    before = [m for m in chain if _manifest_time(m) < target_time]
    if not before:
        raise RestoreFailed(f"no manifest before {target_time.isoformat()}: the oldest, {chain[0].key}, is of "
                            f"{chain[0].body['time']}", "choose a later --target-time")
    return before[-1]


# --------------------------------------------------------------------------- the restore


def restore(dep: model.Deployment, target: Target, embassy: str, *, target_time: dt.datetime | None = None,
            from_vault: bool = False, keyring: Keyring | None = None, accept_unanchored: bool = False,
            bundle_round: int | None = None, say: Say = lambda _m: None) -> Outcome:
    """Verify, restore, compare digests, start and smoke-check the state service at `embassy`.

    keyring: each key generation's restore secrets (the custody bundle's, or the controller's); a manifest
    of an older generation than the head (a point in time before a `custody rotate`) is restored with
    its generation's secrets, handed to pgBackRest and restic in their environment (nothing is written to the
    host: its files keep the head's generation). With `keyring.hand_over` (AWS with the officials' shares), every
    generation's secrets are handed over so, the head's verify included. Without a keyring, the host's are used.
    Never raises for what the restore meets (the Outcome's `error` names it); raises only on bad input.
    """
    hosts = target.embassy_hosts(embassy)  # EmbassyUnknown for a name the stack does not declare
    emb = dep.embassy(embassy)
    out = Outcome(dep.stack, embassy, emb.mode.value, target_time=target_time.isoformat() if target_time else None,
                  accept_unanchored=accept_unanchored, bundle_round=bundle_round)
    out.registers = [RegisterOutcome(r.name, r.kind.value, r.priority) for r in held_registers(dep, embassy)]
    if not hosts:
        out.error = RestoreFailed(f"embassy {embassy} has no host in the target")
        return out
    session = Session(target, hosts[0], out, say)
    try:
        _run(dep, session, emb, target_time, from_vault, keyring)
    except EmbassyError as exc:
        out.error = exc
        for s in out.steps[-1:]:
            s.ok = False
    return out


def _run(dep: model.Deployment, s: Session, emb: model.Embassy, target_time: dt.datetime | None,
         from_vault: bool, keyring: Keyring | None) -> None:
    out = s.outcome
    # On AWS the vault is read from the controller with the restore role before any host is reached: a forged or
    # stale chain is refused without an SSM session (and without the SSM tools on this machine).
    vault_first = s.target.kind == "aws"
    if not vault_first:
        _reach(s)
    # The host holds no key of its own (AWS with the officials' shares): the head's verify gets the bundle's.
    hand_over = keyring.hand_over if keyring is not None else None
    s.keys = keyring(hand_over) if keyring is not None and hand_over is not None else None
    # The host's PostgreSQL major (a read-only query every path depends on), asked while the vault is verified.
    # A failure there is not cached: asked again where it is first needed, its error is raised there.
    with ThreadPoolExecutor(1) as pool:
        if not vault_first:
            pool.submit(lambda: s.pg)
        _verify_vault(dep, s, emb, target_time, vault_first)
    assert out.manifest is not None and out.chain_head is not None
    try:
        generation, newest = manifest_generation(out.manifest.body), manifest_generation(out.chain_head.body)
    except ValueError as exc:
        raise ManifestInvalid(f"{out.manifest.key}: {exc}") from None
    if generation == newest and hand_over is None:
        _restore(dep, s, emb, target_time, from_vault)
        return
    if keyring is None:
        raise RestoreFailed(f"{out.manifest.key} names key generation {generation}; {s.host.name} holds generation "
                            f"{newest}'s secrets", "restore with the custody bundle (--shares) or with the controller's "
                                                   "secrets (`embassy restore` without --shares)")
    if generation != (hand_over if hand_over is not None else newest):
        use_generation(s, keyring(generation), out.manifest)
    # Every pgBackRest and restic command of the restore gets that generation's secrets in its environment only.
    s.keys = keyring(generation)
    _restore(dep, s, emb, target_time, from_vault)


def _verify_vault(dep: model.Deployment, s: Session, emb: model.Embassy, target_time: dt.datetime | None,
                  vault_first: bool) -> None:
    out = s.outcome
    with s.step(f"verify the vault of {emb.name}: manifest chain, signatures, freshness, backups, locks"):
        result = vault_verify.verify(dep, s.target, emb.name, say=s.say, accept_unanchored=out.accept_unanchored,
                                     bundle_round=out.bundle_round, before_host=(lambda: _reach(s)) if vault_first
                                     else None, env=s.env)
        out.verification = result
        if not result.intact:
            raise result.error("nothing was restored; restore from another embassy and investigate this vault")
        # Exactly the chain that verified, kept in memory: a second read would let the host serve the whole
        # chain while it is verified and another one now (vault_verify.same_chain compares any later read).
        out.chain_head = result.chain[-1]
        out.manifest = choose_manifest(result.chain, target_time)
        out.manifest_bytes = out.manifest.data or None


def _reach(s: Session) -> None:
    """The embassy host answers (over SSH, or ssh through SSM on AWS), else HostUnreachable."""
    timeout = 60 if s.target.kind == "aws" else 15  # an SSM session takes a few seconds to open
    with s.step(f"reach {s.host.name}"):
        try:
            done = s.target.run_on(s.host, "true", timeout=timeout)
        except subprocess.TimeoutExpired:
            done = None
        if done is None or done.returncode != 0:
            raise HostUnreachable(f"embassy host {s.host.name} does not answer over SSH within {timeout} s"
                                  + (f": {done.stderr.strip()[-200:]}" if done else ""))


def use_generation(s: Session, keys: hostsecrets.Keys, chosen: Verified) -> None:
    """The chosen manifest's key generation: its repositories verified with its secrets, handed to pgBackRest and
    restic in their environment (nothing written to the host)."""
    with s.step(f"key generation {keys.generation}: its secrets handed to {s.host.name}'s pgBackRest and restic "
                "(environment only), verify its repositories"):
        env = hostsecrets.restore_env(keys)
        result = vault_verify.Result(s.outcome.embassy)
        vault_verify.check_pgbackrest(s.target, s.outcome.embassy, chosen, result, env=env)
        if result.intact:
            vault_verify.check_restic(s.target, s.outcome.embassy, chosen, result, full=False, env=env)
        if s.outcome.verification:
            s.outcome.verification.checked += result.checked
        if not result.intact:
            failure = result.first_failure or {}
            raise ManifestInvalid(f"{failure.get('object')}: {failure.get('reason')}",
                                  "nothing was restored; restore from another embassy and investigate this vault")


def _at_once(job: Callable[[Any], None], items: list[Any]) -> None:
    """`job` for each item in its own thread (each an independent command on the host); the first error is raised
    once every job ended."""
    if len(items) <= 1:
        for item in items:
            job(item)
        return
    with ThreadPoolExecutor(len(items)) as pool:
        for f in [pool.submit(job, item) for item in items]:
            f.result()


def _restore(dep: model.Deployment, s: Session, emb: model.Embassy, target_time: dt.datetime | None,
             from_vault: bool) -> None:
    out = s.outcome
    assert out.manifest is not None
    body = {r["name"]: r for r in out.manifest.body["registers"]}
    for reg in out.registers:
        if reg.name not in body:
            raise RestoreFailed(f"register {reg.name}: not in {out.manifest.key}")
        reg.manifest_digest = body[reg.name].get("digest")
    postgres = [r for r in out.registers if r.kind == model.RegisterKind.POSTGRES.value]
    files = [r for r in out.registers if r.kind == model.RegisterKind.FILES.value]
    s.sh(stop_command(), timeout=60)  # a previous restore's scratch cluster and service
    # The file registers (restic, then their digest) are restored beside the postgres ones: other data, other tools.
    with ThreadPoolExecutor(1) as pool:  # leaving it waits for the files, whatever the postgres path raised
        pending = pool.submit(_restore_all_files, s, files, body) if files else None
        _restore_postgres(s, emb, postgres, target_time, from_vault)
    if pending is not None:
        pending.result()
    for reg in out.registers:
        if reg.proof is None and reg.verified:
            reg.proof = signed_proof(reg, body[reg.name], out.manifest.round)
    if out.port:
        out.newest_heartbeat = s.psql(out.port, "embassy_monitor", "SELECT max(ts) FROM heartbeat") or None
    start_service(s, dep)


def _restore_all_files(s: Session, files: list[RegisterOutcome], body: dict[str, Any]) -> None:
    for reg in files:
        restore_files(s, reg, body[reg.name])


def _restore_postgres(s: Session, emb: model.Embassy, postgres: list[RegisterOutcome],
                      target_time: dt.datetime | None, from_vault: bool) -> None:
    out = s.outcome
    assert out.manifest is not None
    body = {r["name"]: r for r in out.manifest.body["registers"]}
    if postgres:
        use_standby = emb.mode is model.Mode.WARM and not from_vault and target_time is None and \
            _standby_caught_up(s, out.manifest.body, postgres)
        if use_standby:
            promote_standby(s, postgres, out.manifest.body)
            out.port = STANDBY_PORT
        else:
            restore_from_vault(s, postgres, body, target_time)
            out.port = SCRATCH_PORT
            count_from_vault(s, postgres, out.manifest.body)


VAULT_SOURCE = ("archived WAL replayed from this embassy's vault (each segment checked by pgBackRest) to the end of "
                "its archive or --target-time, not covered by a signature; not counted")
FILES_SOURCE = "none: the restic snapshot the manifest signs, restored as it is"


def signed_proof(reg: RegisterOutcome, entry: dict[str, Any], signed_round: int) -> dict[str, Any]:
    """What a register restored from the vault is proven at: its signed point, and what it holds beyond it."""
    if reg.kind == model.RegisterKind.FILES.value:
        return {"signed_round": signed_round, "signed_point": f"restic snapshot {entry.get('snapshot_id')}",
                "beyond_signed": {"transactions": 0, "source": FILES_SOURCE}}
    return {"signed_round": signed_round, "signed_point": (entry.get("digest") or {}).get("lsn"),
            "beyond_signed": {"transactions": None, "source": VAULT_SOURCE}}


MAX_COUNTED_SEGMENTS = 64  # 1 GB of WAL: beyond, the count would cost more than the restore


def segment_name(timeline: int, lsn: int) -> str:
    return f"{timeline:08X}{lsn >> 32:08X}{(lsn & 0xFFFFFFFF) >> 24:08X}"


def count_from_vault(s: Session, postgres: list[RegisterOutcome], body: dict[str, Any]) -> None:
    """What a cluster restored from the vault holds beyond each register's signed point: the archived WAL from the
    earliest point to where recovery ended (the new timeline's switch point), fetched again with pgBackRest into
    a scratch folder and read with pg_waldump; each register's proof gets the commits in its database."""
    points = standby.signed_points(body, [r.name for r in postgres])
    if not points:
        return
    with s.step("count the archived transactions beyond the signed points (pg_waldump)"):
        history = s.sh(f"sudo sh -c 'cat $(ls {s.scratch}/pg_wal/*.history | sort | tail -1)'", timeout=30).stdout
        switch = standby.timeline_switch(history)
        first = min(_lsn(p) for p in points.values())
        parent = [line.split() for line in history.splitlines() if line.strip() and not line.startswith("#")]
        timeline = int(parent[-1][0]) if switch is not None else 1  # the timeline the archive holds
        segments = [] if switch is None else \
            [segment_name(timeline, n << 24) for n in range(first >> 24, ((switch - 1) >> 24) + 1)]
        if switch is None or not segments or len(segments) > MAX_COUNTED_SEGMENTS:
            why = ("recovery did not end on a new timeline" if switch is None else
                   f"{len(segments)} archived segments lie beyond the signed point, more than {MAX_COUNTED_SEGMENTS}")
            s.say(f"transactions beyond the signed point not counted: {why}")
            for reg in postgres:
                if reg.name in points:
                    reg.proof = {"signed_round": s.outcome.manifest.round if s.outcome.manifest else None,
                                 "signed_point": points[reg.name],
                                 "beyond_signed": {"transactions": None, "source": VAULT_SOURCE, "read": why}}
            return
        scratch = f"{s.scratch}.wal"
        fetch = " && ".join(f"pgbackrest --stanza=home archive-get {seg} {scratch}/{seg}" for seg in segments)
        s.sh(f"sudo rm -rf {scratch} && sudo install -d -o postgres -g postgres -m 700 {scratch} && "
             f"sudo runuser -u postgres -- sh -c {shlex.quote(fetch)}", timeout=600, keyed=True)
        done = s.sh(f"sudo runuser -u postgres -- {s.pg.bin}/pg_waldump -p {scratch} -t {timeline} "
                    f"-s {standby.lsn_text(first)}; sudo rm -rf {scratch}", timeout=600)
        found = standby.commits(done.stdout)
        names = s.psql(SCRATCH_PORT, "postgres", "SELECT datname || '|' || oid FROM pg_database").splitlines()
        oids = {name: oid for name, _, oid in (line.partition("|") for line in names)}
    source = (f"archived WAL replayed from this embassy's vault (each segment checked by pgBackRest), not covered by "
              f"a signature; recovery ended at {standby.lsn_text(switch)}")
    for reg in postgres:
        oid = int(oids.get(schema.database_name(reg.name)) or 0)
        if reg.name in points and oid:
            reg.proof = {"signed_round": s.outcome.manifest.round if s.outcome.manifest else None,
                         "signed_point": points[reg.name],
                         "beyond_signed": {"transactions": standby.count_beyond(found, oid, _lsn(points[reg.name]),
                                                                                switch), "source": source,
                                           "read": f"pg_waldump of {len(segments)} archived segments fetched again "
                                                   f"from the vault by pgBackRest ({segments[0]} to {segments[-1]})"}}


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def _standby_caught_up(s: Session, body: dict[str, Any], postgres: list[RegisterOutcome]) -> bool:
    """The standby can prove the head: in recovery, and held at or before every signed point it names."""
    with s.step("check the standby: held at or before the head manifest's signed points"):
        points = standby.signed_points(body, [r.name for r in postgres])
        if len(points) != len(postgres):
            s.say(f"{s.outcome.manifest_key} names no digest LSN for every register: restoring from the vault")
            return False
        done = s.sh(f"sudo runuser -u postgres -- psql -X -A -t -p {STANDBY_PORT} -d postgres -c "
                    "\"SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()\"", timeout=30)
        fields = done.stdout.strip().split("|")
        if done.returncode != 0 or len(fields) != 2 or fields[0] != "t" or not fields[1]:
            s.say(f"no standby in recovery on {s.host.name} ({(done.stderr or done.stdout).strip()[-120:]}): "
                  "restoring from the vault")
            return False
        first = min(points.values(), key=_lsn)
        if _lsn(fields[1]) > _lsn(first):
            s.say(f"the standby replayed {fields[1]}, past the signed point {first}: it cannot be proven there; "
                  "restoring from the vault")
            return False
        return True


def _compare(s: Session, reg: RegisterOutcome, actual: dict[str, Any], where: str) -> None:
    reg.digest = actual
    diff = differences(reg.manifest_digest or {}, actual) if reg.manifest_digest else ["the manifest names no digest"]
    if diff:
        raise DigestMismatch(f"register {reg.name} ({where}) differs from {s.outcome.manifest_key}: "
                             f"{'; '.join(diff)[:500]}", "nothing is served from it; restore from another embassy")
    reg.verified = True


def _pg_digest(s: Session, reg: RegisterOutcome, port: int) -> dict[str, Any]:
    db = schema.database_name(reg.name)
    text = s.must(f"sudo runuser -u {DIGEST_ROLE} -- {DIGEST} postgres {db} --conninfo "
                  f"{shlex.quote(f'host=/var/run/postgresql port={port}')}", f"digest of {reg.name}", timeout=3600)
    got: dict[str, Any] = json.loads(text)
    return got


def _standby_sql(s: Session, sql: str, timeout: float = 30) -> str:
    return s.psql(STANDBY_PORT, "postgres", sql, timeout=timeout)


HOLD_MARK = "embassy-restore:state"
PAUSE_STATE = (f"sudo runuser -u postgres -- psql -X -A -t -q -p {STANDBY_PORT} -d postgres -c "
               "\"SELECT pg_get_wal_replay_pause_state() || '|' || pg_last_wal_replay_lsn()\"")


def hold_standby_at(s: Session, lsn: str, note: str, timeout: float = 300) -> None:
    """Replay to just before `lsn` and pause there (a restart with the hold moved; none if already paused there)."""
    # The hold file and the replay state in one round trip (the drill's rounds usually left it held right there).
    done = s.sh(f"sudo cat {standby.hold_file(s.pg)}; echo {HOLD_MARK}; {PAUSE_STATE}", timeout=30)
    conf, _, state = done.stdout.partition(f"{HOLD_MARK}\n")
    state = state.strip()
    if standby.held_lsn(conf) != lsn or not state.startswith("paused|"):
        s.must(f"printf %s {shlex.quote(standby.hold_conf(lsn, note))} | sudo install -o postgres -g postgres -m 600 "
               f"/dev/stdin {standby.hold_file(s.pg)} && sudo systemctl restart {s.pg.service}", f"hold the standby at {lsn}",
               timeout=300)
        # Polled on the host (every 0.1 s, bounded): one round trip, not one per poll.
        polls = max(1, int(timeout / 0.1))
        done = s.sh(f"for i in $(seq {polls}); do st=$({PAUSE_STATE}); case \"$st\" in paused\\|*) break;; esac; "
                    f"sleep 0.1; done; echo \"$st\"", timeout=timeout + 30)
        state = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    if not state.startswith("paused|"):
        raise RestoreFailed(f"standby:{s.host.name}: did not reach the signed point {lsn} in {timeout:.0f} s "
                            f"(last: {state or done.stderr.strip()[-200:]})",
                            "the WAL up to it is neither in the received WAL nor in the vault; restore from the vault "
                            "(--from-vault) or another embassy")
    replayed = state.split("|", 1)[1]
    if _lsn(replayed) > _lsn(lsn):
        raise RestoreFailed(f"standby:{s.host.name}: paused at {replayed}, past the signed point {lsn}",
                            "restore from the vault (--from-vault) or another embassy")


NEWEST_MARK = "embassy-restore:newest="


def read_beyond(s: Session, start: str) -> tuple[list[standby.Commit], str]:
    """Stop the receiver (home is gone), make its last partial segment readable, and read the WAL it holds from
    `start` on with pg_waldump: every commit, with the databases it wrote in. Returns (commits, how read)."""
    d = standby.receive_dir(s.pg)
    # One round trip: stop, rename, find the newest segment, read from `start` on its timeline (its first 8 digits).
    done = s.sh(f"sudo systemctl stop {standby.RECEIVER_UNIT} 2>/dev/null; for f in $(sudo ls {d} | grep '\\.partial$'); "
                f"do sudo mv {d}/$f {d}/${{f%.partial}}; done; "
                f"newest=$(sudo ls {d} | grep -E '^[0-9A-F]{{24}}$' | sort | tail -1); echo \"{NEWEST_MARK}$newest\"; "
                f"[ -z \"$newest\" ] || sudo runuser -u postgres -- {s.pg.bin}/pg_waldump -p {d} "
                f"-t $(printf %d 0x$(echo $newest | cut -c1-8)) -s {start}", timeout=600)
    head, _, dump = done.stdout.partition("\n")
    if not head.startswith(NEWEST_MARK):
        raise RestoreFailed(f"{s.host.name}: stop the WAL receiver and read its WAL failed: "
                            f"{(done.stderr or done.stdout).strip()[-600:]}")
    if not head.removeprefix(NEWEST_MARK).strip():
        return [], "no WAL received"
    found = standby.commits(dump)
    tail = (done.stderr.strip().splitlines() or [""])[-1]
    return found, f"pg_waldump of the received WAL from {start} ({tail[-160:] or 'to its end'})"


HISTORY_MARK = "embassy-restore:history"


def promote_standby(s: Session, postgres: list[RegisterOutcome], body: dict[str, Any]) -> None:
    """Prove each register at its signed point on the held standby, then replay the rest, count it, promote."""
    m = s.outcome.manifest
    assert m is not None
    points = standby.signed_points(body, [r.name for r in postgres])
    for lsn in sorted(set(points.values()), key=_lsn):
        with s.step(f"standby: replay to the signed point {lsn} of round {m.round}, paused there"):
            hold_standby_at(s, lsn, f"Restore: round {m.round} ({m.key}).")
        at = [r for r in postgres if points[r.name] == lsn]
        for reg in at:
            reg.method = "standby"

        def digest(reg: RegisterOutcome, lsn: str = lsn) -> None:
            with s.step(f"{reg.name}: digest of the standby at {lsn} against the manifest"):
                _compare(s, reg, _pg_digest(s, reg, STANDBY_PORT), f"standby held at {lsn}")
        _at_once(digest, at)  # each reads its own database of the held standby
    first = min(points.values(), key=_lsn)
    with s.step("read the WAL received beyond the signed point (pg_waldump)"):
        found, how = read_beyond(s, first)
    with s.step("release the hold, replay the rest, promote the standby"):
        # One round trip: release, restart, promote (waits for it), then the new timeline's history and the
        # databases' oids (fixed for a database's life: read after the promotion as well as before).
        psql = f"sudo runuser -u postgres -- psql -X -A -t -q -p {STANDBY_PORT} -d postgres -c"
        text = s.must(f"printf %s {shlex.quote(standby.released_conf())} | sudo install -o postgres -g postgres -m 600 "
                      f"/dev/stdin {standby.hold_file(s.pg)} && sudo systemctl restart {s.pg.service} && "
                      f"{psql} 'SELECT pg_promote(true, 120)' >/dev/null && "
                      f"{psql} \"SELECT datname || '|' || oid FROM pg_database\" && echo {HISTORY_MARK} && "
                      f"sudo sh -c 'cat $(ls {s.pg.data}/pg_wal/*.history | sort | tail -1)'",
                      "release the hold and promote the standby", timeout=300)
        names, _, history = text.partition(f"{HISTORY_MARK}\n")
        oids = {name: oid for name, _, oid in (line.partition("|") for line in names.strip().splitlines())}
    switch = standby.timeline_switch(history)
    read_to = max((c.lsn for c in found), default=None)
    source = standby.SOURCE + (f"; the old timeline ended at {standby.lsn_text(switch)}" if switch is not None else "")
    if switch is not None and read_to is not None and switch > read_to + 0x1000000:
        source += " (WAL past the received WAL came from this embassy's vault and is not counted)"
    for reg in postgres:
        oid = int(oids.get(schema.database_name(reg.name), "0") or 0)
        reg.proof = {"signed_round": m.round, "signed_point": points[reg.name],
                     "beyond_signed": {"transactions": standby.count_beyond(found, oid, _lsn(points[reg.name]), switch)
                                       if oid else None, "source": source, "read": how}}
        reg.restored = True
        reg.done_at = time.monotonic()


TARGET_CONF = "embassy-target.conf"


def scratch_conf(scratch: str) -> str:
    return "\n".join([
        "# embassy restore: a fresh cluster from this embassy's vault (never archives, local socket only)",
        f"port = {SCRATCH_PORT}", "listen_addresses = ''", "unix_socket_directories = '/var/run/postgresql'",
        "archive_mode = off", "hot_standby = on", f"hba_file = '{scratch}/pg_hba.conf'",
        f"ident_file = '{scratch}/pg_ident.conf'", "shared_buffers = 32MB", "logging_collector = off",
        f"include_if_exists = '{TARGET_CONF}'", ""])


def _write(s: Session, path: str, text: str) -> None:
    s.must(f"sudo install -o postgres -g postgres -m 600 /dev/stdin {path}", f"write {path}", stdin=text)


def _pg_ctl(s: Session, action: str, timeout: int = 600, *, bare: bool = False) -> None:
    """pg_ctl on the scratch cluster. Its postmaster runs pgBackRest's archive-get (restore_command) while it
    recovers, so it starts with the restore's keys in its environment (and, on AWS, the restore role's session);
    `bare`: with neither (a command with its own, empty, input goes without a session)."""
    log = f"{s.scratch}.log"
    s.must(f"sudo runuser -u postgres -- {s.pg.bin}/pg_ctl -D {s.scratch} -l {log} -w -t {timeout} -m fast {action}",
           f"pg_ctl {action} (log: {log})", timeout=timeout + 30, keyed=not bare, stdin="" if bare else None)


def _wait(s: Session, sql: str, want: str, what: str, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    got = ""
    while time.monotonic() < deadline:
        done = s.sh(f"sudo runuser -u postgres -- psql -X -A -t -q -p {SCRATCH_PORT} -d postgres -c {shlex.quote(sql)}",
                    timeout=60)
        got = done.stdout.strip()
        if done.returncode == 0 and got.startswith(want):
            return got
        time.sleep(0.3)
    raise RestoreFailed(f"{what}: not reached in {timeout:.0f} s (last: {got or 'no answer'}); see {s.scratch}.log")


def _backup_set_before(s: Session, lsn: int) -> str:
    """` --set=LABEL`: the newest backup consistent at or before `lsn`. A backup that ran while a round took
    its digests ends after their LSN, and recovery cannot stop before a backup's end (seen on the lab with a
    5 GB state); pgBackRest would pick it as the newest. Empty (pgBackRest's choice) when none is known."""
    done = s.sh("sudo runuser -u postgres -- pgbackrest --stanza=home --output=json info", timeout=120, keyed=True)
    try:
        sets = json.loads(done.stdout)[0].get("backup", [])
        before = [b["label"] for b in sets if _lsn(b["lsn"]["stop"]) <= lsn]
    except (ValueError, IndexError, KeyError, TypeError, AttributeError):
        return ""
    return f" --set={shlex.quote(before[-1])}" if before and before[-1] != sets[-1]["label"] else ""


def restore_from_vault(s: Session, postgres: list[RegisterOutcome], body: dict[str, Any],
                       target_time: dt.datetime | None) -> None:
    """pgBackRest restore, paused at each register's digest LSN to compare, then on to the end (or T)."""
    utc = target_time.astimezone(dt.UTC) if target_time else None
    when = utc.strftime("%Y-%m-%d %H:%M:%S.%f+00") if utc else None
    with s.step("pgBackRest restore from this embassy's vault into a fresh cluster"):
        # --type=time lets pgBackRest choose a backup set from before T (its format: milliseconds at
        # most); the recovery targets are ours (embassy-target.conf).
        pick = f" --type=time --target={shlex.quote(utc.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3] + '+00')}" if utc else \
            _backup_set_before(s, min(_lsn((body[r.name].get("digest") or {}).get("lsn") or "0/0") for r in postgres))
        s.must(f"sudo rm -rf {s.scratch} && sudo /usr/local/sbin/embassy-restore-postgres {s.scratch} "
               f"--archive-mode=off{pick}", "pgbackrest restore", timeout=3600, keyed=True)
        s.must(f"sudo sed -i '/^recovery_target/d' {s.scratch}/postgresql.auto.conf", "clear pgBackRest's targets")
        _write(s, f"{s.scratch}/postgresql.conf", scratch_conf(s.scratch))
        _write(s, f"{s.scratch}/pg_hba.conf", "local all all peer\n")
        _write(s, f"{s.scratch}/pg_ident.conf", "")
    running, paused_at = False, None
    for reg in sorted(postgres, key=lambda r: _lsn((body[r.name].get("digest") or {}).get("lsn") or "0/0")):
        reg.method = "vault"
        lsn = (body[reg.name].get("digest") or {}).get("lsn")
        if not lsn:
            raise DigestMismatch(f"register {reg.name}: {s.outcome.manifest_key} names no digest LSN")
        with s.step(f"{reg.name}: recover to its digest LSN {lsn}, recompute the digest"):
            if lsn != paused_at:  # registers digested in one snapshot share the pause
                _write(s, f"{s.scratch}/{TARGET_CONF}",
                       # not inclusive: a digest's LSN is a slot's consistent point, the state before it
                       f"recovery_target_lsn = '{lsn}'\nrecovery_target_inclusive = off\n"
                       "recovery_target_action = 'pause'\n")
                _pg_ctl(s, "restart" if running else "start")
                running, paused_at = True, lsn
                _wait(s, "SELECT pg_get_wal_replay_pause_state()", "paused", f"recovery paused at {lsn}")
            _compare(s, reg, _pg_digest(s, reg, SCRATCH_PORT), f"recovered to {lsn}")
    final = f"to {when}" if when else "to the end of the archive"
    with s.step(f"recover {final} and open the cluster"):
        _write(s, f"{s.scratch}/{TARGET_CONF}",
               f"recovery_target_time = '{when}'\nrecovery_target_action = 'promote'\n" if when else "")
        _pg_ctl(s, "restart" if running else "start")
        _wait(s, "SELECT pg_is_in_recovery()", "f", f"recovery {final}", timeout=3600)
    if s.keys is not None or s.target.kind == "aws":
        # Recovery is over: nothing runs archive-get any more. A restart without them, so that the open cluster's
        # postmaster (it serves the state from now on) does not keep the keys or a session in its environment.
        with s.step("restart the restored cluster without the restore's keys in its environment"):
            _pg_ctl(s, "restart", bare=True)
    for reg in postgres:
        reg.restored = True
        reg.done_at = time.monotonic()


def restore_files(s: Session, reg: RegisterOutcome, entry: dict[str, Any]) -> None:
    snapshot = entry.get("snapshot_id")
    reg.method = "restic"
    if not snapshot:
        raise RestoreFailed(f"register {reg.name}: the manifest names no snapshot")
    folder = f"{FILES_ROOT}{REGISTERS_ROOT}/{reg.name}"
    with s.step(f"{reg.name}: restic restore of snapshot {snapshot[:8]}"):
        s.must(f"sudo rm -rf {folder} && sudo install -d -m 755 {FILES_ROOT} && "
               f"sudo /usr/local/sbin/embassy-restore-files {reg.name} {FILES_ROOT} {snapshot} >/dev/null",
               f"restic restore of {reg.name}", timeout=3600, keyed=True)
    with s.step(f"{reg.name}: digest of the restored files against the manifest"):
        got = json.loads(s.must(f"sudo {DIGEST} files {folder}", f"digest of {reg.name}", timeout=3600))
        _compare(s, reg, got, f"snapshot {snapshot[:8]}")
    reg.restored = True
    reg.done_at = time.monotonic()


# --------------------------------------------------------------------------- the state service


def service_config(dep: model.Deployment, address: str, port: int | None) -> dict[str, Any]:
    return {"bind": address, "port": SERVICE_PORT, "conninfo": f"host=/var/run/postgresql port={port or STANDBY_PORT}",
            "databases": {r.name: schema.database_name(r.name) for r in dep.registers
                          if r.kind is model.RegisterKind.POSTGRES},
            "files": {r.name: f"{FILES_ROOT}{REGISTERS_ROOT}/{r.name}" for r in dep.registers
                      if r.kind is model.RegisterKind.FILES}}


SMOKE = r"""
import json, sys, time, urllib.error, urllib.request
base, paths = sys.argv[1], sys.argv[2:]
deadline = time.monotonic() + 30
while True:  # the service starts in well under a second; give it a bounded while
    try:
        urllib.request.urlopen(base + "/health", timeout=5).read(); break
    except urllib.error.HTTPError:
        break
    except OSError:
        if time.monotonic() > deadline: break
        time.sleep(0.2)
out = {}
for path in paths:
    try:
        with urllib.request.urlopen(base + path, timeout=10) as resp:
            out[path] = [resp.status, json.loads(resp.read())]
    except urllib.error.HTTPError as err:
        out[path] = [err.code, json.loads(err.read() or b"null")]
    except OSError as err:
        out[path] = [0, str(err)]
print(json.dumps(out))
"""


def service_command(config: dict[str, Any]) -> str:
    """Shell, one round trip: the service user, the code (stdin), its config, the restored files readable by its
    group (restored with home's numeric owners; content unchanged), and the transient unit started."""
    text = base64.b64encode((json.dumps(config, indent=2, sort_keys=True) + "\n").encode()).decode()
    steps = [f"(id -u {SERVICE_USER} >/dev/null 2>&1 || sudo useradd --system --no-create-home "
             f"--shell /usr/sbin/nologin {SERVICE_USER})",
             "sudo install -d -m 755 /opt/embassy /etc/embassy",
             "sudo install -m 644 /dev/stdin /opt/embassy/state_service.py",
             f"echo {text} | base64 -d | sudo install -m 640 -g {SERVICE_USER} /dev/stdin {SERVICE_CONFIG}"]
    if config["files"]:
        steps.append(f"sudo chgrp -R {SERVICE_USER} {FILES_ROOT} && sudo chmod -R g+rX,o-rwx {FILES_ROOT}")
    steps.append(f"(sudo systemctl reset-failed {SERVICE_UNIT} 2>/dev/null; true)")
    steps.append(f"sudo systemd-run --unit {SERVICE_UNIT} -p User={SERVICE_USER} -p NoNewPrivileges=yes -p PrivateTmp=yes "
                 f"-p ProtectSystem=strict /usr/bin/python3 /opt/embassy/state_service.py --config {SERVICE_CONFIG}")
    return " && ".join(steps)


def start_service(s: Session, dep: model.Deployment) -> None:
    out = s.outcome
    held = {r.name for r in out.registers}
    config = service_config(dep, s.host.address or "127.0.0.1", out.port)
    config["databases"] = {k: v for k, v in config["databases"].items() if k in held}
    config["files"] = {k: v for k, v in config["files"].items() if k in held}
    code = resources.files("embassy.home").joinpath("service.py").read_text()
    with s.step("start the state service on the restored registers"):
        s.must(service_command(config), "start the service", stdin=code)
    with s.step("smoke-check the state service"):
        smoke_check(s, config)


def smoke_paths(s: Session, config: dict[str, Any]) -> list[str]:
    """Shell words: the queries home's tests ask, with keys read on the host from the restored (digest-verified)
    registers as the words are expanded (the smoke program gets them in the same round trip)."""
    paths = ["/health"]
    port = s.outcome.port or STANDBY_PORT

    def sql(db: str, query: str) -> str:
        return f"$(sudo runuser -u postgres -- psql -X -A -t -q -p {port} -d {db} -c {shlex.quote(query)} </dev/null)"

    if "population" in config["databases"]:
        code = sql("population", "SELECT isikukood FROM persons ORDER BY id LIMIT 1")
        paths += [f"\"/registers/population/persons/{code}\"", "/registers/population/persons/37605030299"]
    if "land-register" in config["databases"]:
        parcel = sql("land_register", "SELECT parcel FROM deeds ORDER BY parcel LIMIT 1")
        paths.append(f"\"/registers/land-register/parcels/{parcel}\"")
    folder = config["files"].get("court-files")
    if folder:
        # The first case file's number; its name is an argument (a redirect on a pipeline's reader would cut the pipe).
        case = (f"$(sudo python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[\"number\"])' "
                f"\"$(sudo find {folder} -name case.json | sort | head -1)\" </dev/null)")
        paths.append(f"\"/registers/court-files/files/{case}\"")
    return paths


def smoke_check(s: Session, config: dict[str, Any]) -> None:
    out = s.outcome
    paths = smoke_paths(s, config)
    url = f"http://{config['bind']}:{SERVICE_PORT}"
    answers = json.loads(s.must(f"python3 - {shlex.quote(url)} {' '.join(paths)}", "smoke queries", stdin=SMOKE,
                                timeout=120))
    out.service_url, out.smoke = url, answers
    wrong = []
    for path, (status, body) in answers.items():
        want = 404 if path.endswith("/37605030299") else 200
        if status != want:
            wrong.append(f"{path}: HTTP {status} (expected {want}): {str(body)[:160]}")
        elif path == "/health" and body.get("status") != "ok":
            wrong.append(f"/health: {body}")
        elif "/persons/" in path and want == 200 and body.get("isikukood") != path.rsplit("/", 1)[1]:
            wrong.append(f"{path}: answered another person")
        elif "/parcels/" in path and not body.get("deeds"):
            wrong.append(f"{path}: no deeds")
        elif "/files/" in path and not body.get("stored"):
            wrong.append(f"{path}: no documents")
    if wrong:
        raise SmokeCheckFailed("; ".join(wrong)[:800])
    out.service_ok_at = time.monotonic()


def stop_command() -> str:
    """Shell that stops a restore's service and scratch cluster (idempotent); the data stays for inspection.

    The scratch postmaster is found by its socket's lock file, so that one whose folder is gone is stopped too."""
    lock = f"/var/run/postgresql/.s.PGSQL.{SCRATCH_PORT}.lock"
    return (f"sudo systemctl stop {SERVICE_UNIT} 2>/dev/null; sudo systemctl reset-failed {SERVICE_UNIT} 2>/dev/null; "
            f"pid=$(sudo head -1 {lock} 2>/dev/null); if [ -n \"$pid\" ]; then sudo kill -QUIT \"$pid\" 2>/dev/null; "
            f"for i in $(seq 100); do sudo kill -0 \"$pid\" 2>/dev/null || break; sleep 0.1; done; fi; true")


def stop_restored(target: Target, embassy: str) -> None:
    """Stop what a restore started at `embassy` (the tests share one lab: leave it as the deploy made it)."""
    for host in target.embassy_hosts(embassy):
        target.run_on(host, stop_command(), timeout=90)
