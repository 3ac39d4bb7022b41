"""Restore-test records, as read from an embassy's vault, checked before anything is shown of them.

The adversary is the host nation: it wants a failed or missing restore test to look passed. It controls the
vault's storage below S3 (it can edit, remove, hide or replay objects) and, with the host, the embassy's own
signing key only for the records of its own embassy. So a record counts only when:
- its bytes are canonical JSON of exactly {"record", "signature"}, bounded, with unique keys;
- it is signed by THIS embassy's restore-test key (the controller's copy, never one the vault names);
- it names this stack and this embassy, and sits under the name of its own time (a replay sits elsewhere);
- it is locked (COMPLIANCE) until at least its write time plus the embassy's retention;
- its signed point is a manifest of the chain the controller verified (same round, same sha256);
- if it says passed: it names every register that manifest names, each within its RTO, with the digest the host
  computed equal to the one home signed in that manifest (a host that restored something else, or skipped a
  register, and still signed "passed" is caught here; a host that copies home's digests into a false "passed"
  is not: it holds its own signing key, see the README).
Anything else in restore-tests/ is a failure of that embassy's restore tests, naming the object: one forged or
edited record makes the whole history "not established". A record seen before (the controller's high-water mark)
and missing now is a removal; no record, or none newer than the schedule allows, is "overdue".
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, load_pem_private_key

from embassy.assurance import schedule as schedule_lib
from embassy.replication import manifest
from embassy.replication.digest import differences
from embassy.replication.privatefile import create_private
from embassy.replication.restoretest import RECORD_FORMAT, RECORD_PREFIX, record_key

TREND = 10  # records shown as the trend
CLOCK_SLACK = dt.timedelta(minutes=10)
RUN_SLACK = dt.timedelta(hours=6)  # a test takes a while after its scheduled time
MARK = "restore-tests-{embassy}.json"  # the controller's high-water mark: the newest record it has seen


# --------------------------------------------------------------------------- keys


def key_path(folder: Path, embassy: str) -> Path:
    return folder / f"restore-test-{embassy}.pem"


def signing_key(folder: Path, embassy: str) -> Ed25519PrivateKey:
    """The embassy's restore-test key, made on first use in the controller's secrets folder (0600)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = key_path(folder, embassy)
    create_private(path, Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    key = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 key")
    return key


def private_pem(folder: Path, embassy: str) -> str:
    signing_key(folder, embassy)
    return key_path(folder, embassy).read_text()


def public_key(folder: Path, embassy: str) -> Ed25519PublicKey | None:
    """The embassy's public key, when the controller has its key (else nothing can be checked)."""
    path = key_path(folder, embassy)
    if not path.is_file():
        return None
    key = load_pem_private_key(path.read_bytes(), password=None)
    return key.public_key() if isinstance(key, Ed25519PrivateKey) else None


# --------------------------------------------------------------------------- one record


class RecordInvalid(Exception):
    pass


@dataclass(frozen=True)
class Record:
    key: str
    body: dict[str, Any]

    @property
    def time(self) -> dt.datetime:
        return manifest.parse_time(self.body["time"])

    def summary(self) -> dict[str, Any]:
        b = self.body
        point = b.get("point") or {}
        return {"time": b["time"], "key": self.key, "point": {"round": point.get("round"), "time": point.get("time")},
                "passed": b["passed"], "seconds": b["milliseconds"] / 1000, "trigger": b.get("trigger"),
                "registers": [{"name": r.get("name"), "kind": r.get("kind"), "digest_ok": r.get("digest_ok"),
                               "seconds": r["milliseconds"] / 1000 if isinstance(r.get("milliseconds"), int) else None,
                               "rto_seconds": r.get("rto_seconds")} for r in b.get("registers", [])],
                "failure": b.get("failure")}


REQUIRED: dict[str, type] = {"format": str, "stack": str, "embassy": str, "time": str, "passed": bool,
                             "milliseconds": int, "registers": list}


def check_record(key: str, data: bytes, public: Ed25519PublicKey, *, stack: str, embassy: str,
                 now: dt.datetime) -> Record:
    """One stored record, checked as the module says; RecordInvalid(reason) for anything else."""
    try:
        doc = manifest.parse_json(data, max_depth=8)
    except ValueError as exc:
        raise RecordInvalid(f"not JSON of a record ({exc})") from None
    if not isinstance(doc, dict) or set(doc) != {"record", "signature"}:
        raise RecordInvalid("not a restore-test record (expected exactly 'record' and 'signature')")
    body, sig = doc["record"], doc["signature"]
    if not isinstance(body, dict) or not isinstance(sig, dict):
        raise RecordInvalid("'record' and 'signature' must be objects")
    try:
        if manifest.canonical(doc) != data:
            raise RecordInvalid("bytes are not canonical JSON (the record was rewritten)")
    except ValueError as exc:  # floats: never written by a signer
        raise RecordInvalid(str(exc)) from None
    if sig.get("alg") != "ed25519" or not isinstance(sig.get("value"), str):
        raise RecordInvalid("signature is not an Ed25519 signature")
    if sig.get("key_id") != manifest.key_id(public):
        raise RecordInvalid(f"signed by another key ({sig.get('key_id')}, expected embassy {embassy}'s "
                            f"{manifest.key_id(public)})")
    try:
        public.verify(base64.b64decode(sig["value"], validate=True), manifest.canonical(body))
    except (InvalidSignature, ValueError, binascii.Error):
        raise RecordInvalid("signature does not verify (the record was altered or forged)") from None
    return _check_body(key, body, stack=stack, embassy=embassy, now=now)


def _check_body(key: str, body: dict[str, Any], *, stack: str, embassy: str, now: dt.datetime) -> Record:
    if body.get("format") != RECORD_FORMAT:
        raise RecordInvalid(f"unknown format {body.get('format')!r} (expected {RECORD_FORMAT})")
    for name, kind in REQUIRED.items():
        value = body.get(name)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise RecordInvalid(f"field '{name}' missing or of the wrong type")
    if body["stack"] != stack or body["embassy"] != embassy:
        raise RecordInvalid(f"belongs to stack '{body['stack']}', embassy '{body['embassy']}' "
                            f"(expected '{stack}', '{embassy}')")
    try:
        when = manifest.parse_time(body["time"])
    except (ValueError, TypeError):
        raise RecordInvalid("its time is not an ISO 8601 time") from None
    if key != record_key(when):
        raise RecordInvalid(f"stored under the wrong name (a record of {body['time']} belongs at {record_key(when)}): "
                            "a replayed record")
    if when > now + CLOCK_SLACK:
        raise RecordInvalid(f"dated {body['time']}, in the future")
    point = body.get("point")
    if body["passed"] and (not isinstance(point, dict) or not isinstance(point.get("round"), int)
                           or not body["registers"] or body.get("failure") is not None
                           or not all(isinstance(r, dict) and r.get("digest_ok") is True for r in body["registers"])):
        raise RecordInvalid("says passed without a signed point, registers all verified and no failure")
    return Record(key, body)


def check_lock(lock_mode: str | None, retain_until: str | None, written: str | None, days: int) -> str | None:
    """What is wrong with a record's lock, or None: COMPLIANCE until its write time plus the retention."""
    if lock_mode != "COMPLIANCE":
        return f"not locked in COMPLIANCE mode (lock: {lock_mode or 'none'}): it could be edited or removed"
    try:
        until = dt.datetime.fromisoformat(str(retain_until))
        at = dt.datetime.fromisoformat(str(written))
    except ValueError:
        return "its retention or write time is unreadable"
    if until + CLOCK_SLACK < at + dt.timedelta(days=days):
        return f"retained until {until.isoformat()}, less than {days} days after it was written"
    return None


# --------------------------------------------------------------------------- an embassy's history


@dataclass
class History:
    """An embassy's restore tests as the vault holds them, after every check."""

    embassy: str
    records: list[Record] = field(default_factory=list)  # valid, oldest first
    problem: dict[str, str] | None = None  # {"object", "reason"}: the first thing that failed
    overdue: bool = False
    next_due: dt.datetime | None = None  # the run the schedule called for after the last record

    @property
    def established(self) -> bool:
        return self.problem is None and bool(self.records)

    @property
    def last(self) -> Record | None:
        return self.records[-1] if self.records else None

    def as_json(self) -> dict[str, Any]:
        last = self.last
        return {"established": self.established, "overdue": self.overdue, "problem": self.problem,
                "next_due": self.next_due.isoformat() if self.next_due else None,
                "last_restore_test": ({**{k: v for k, v in last.summary().items()
                                          if k in ("time", "point", "passed", "seconds")},
                                       "registers": last.summary()["registers"]}
                                      if last and self.problem is None else None),
                "restore_tests": [r.summary() for r in self.records[-TREND:]]}


@dataclass(frozen=True)
class Stored:
    key: str
    data: bytes | None
    lock_mode: str | None = None
    retain_until: str | None = None
    last_modified: str | None = None


def check_point(body: dict[str, Any], chain: dict[int, manifest.Verified]) -> str | None:
    """What is wrong with a record's point against the verified chain, or None: the point must be a manifest of
    the chain, and a passed record must show, register by register, the digests home signed in that manifest."""
    point = body.get("point")
    if not isinstance(point, dict) or point.get("round") is None:
        return None
    signed = chain.get(point["round"]) if isinstance(point["round"], int) else None
    if signed is None or signed.sha256 != point.get("sha256"):
        return f"its point, round {point['round']}, is not a manifest of the verified chain (or has another sha256)"
    if not body["passed"]:
        return None
    want = {r.get("name"): r for r in signed.body.get("registers", []) if isinstance(r, dict)}
    got = {r.get("name"): r for r in body["registers"] if isinstance(r, dict)}
    if set(got) != set(want):
        return (f"says passed for registers {sorted(map(str, got))}, but round {point['round']} signs "
                f"{sorted(map(str, want))}")
    for name in sorted(want, key=str):
        entry, reg = want[name], got[name]
        if not isinstance(reg.get("digest"), dict) or not isinstance(entry.get("digest"), dict):
            return f"says passed without a digest of register {name} to compare with round {point['round']}'s"
        try:  # the record's digest is the host's: its shape is checked here, never trusted to crash status
            diff = differences(entry["digest"], reg["digest"])
        except (TypeError, KeyError, AttributeError, ValueError):
            return f"says passed, but its digest of register {name} is not a digest"
        if diff:
            return (f"says passed, but its digest of register {name} differs from the one signed in round "
                    f"{point['round']}: {'; '.join(diff)[:300]}")
        ms, rto = reg.get("milliseconds"), reg.get("rto_seconds")
        if not isinstance(ms, int) or not isinstance(rto, int) or ms > rto * 1000 or reg.get("within_rto") is not True:
            return f"says passed, but register {name} took {ms} ms against its RTO of {rto} s"
    return None


def history(embassy: str, stored: list[Stored], public: Ed25519PublicKey | None, *, stack: str, days: int,
            chain: dict[int, manifest.Verified] | None, mark: dict[str, Any] | None, schedule: str,
            now: dt.datetime) -> History:
    """Every record checked; the first failure names its object. `chain`: round -> manifest of the verified chain
    (None: the chain did not verify, so no record's point can be checked); `mark`: the newest record seen before;
    `schedule`: the timer's calendar expression (overdue: a run it called for after the last record is late)."""
    out = History(embassy)

    def fail(obj: str, reason: str) -> History:
        out.problem = out.problem or {"object": f"vault:{embassy}/{obj}", "reason": reason}
        return out

    if public is None:
        return fail(RECORD_PREFIX, "the controller holds no restore-test key of this embassy: nothing can be checked "
                                   "(deploy the embassy first)")
    for s in sorted(stored, key=lambda o: o.key):
        if not s.key.startswith(RECORD_PREFIX):
            continue
        if s.data is None:
            return fail(s.key, "larger than a record can be")
        try:
            rec = check_record(s.key, s.data, public, stack=stack, embassy=embassy, now=now)
        except RecordInvalid as exc:
            return fail(s.key, str(exc))
        lock = check_lock(s.lock_mode, s.retain_until, s.last_modified, days)
        if lock:
            return fail(s.key, lock)
        point = rec.body.get("point")
        if isinstance(point, dict) and point.get("round") is not None:
            if chain is None:
                return fail(s.key, "its signed point cannot be checked: the manifest chain did not verify")
            wrong = check_point(rec.body, chain)
            if wrong:
                return fail(s.key, wrong)
        out.records.append(rec)
    out.records.sort(key=lambda r: r.time)
    if mark and mark.get("key") and mark["key"] not in {r.key for r in out.records}:
        return fail(str(mark["key"]), f"seen by this controller on {mark.get('seen')}, missing from the vault now "
                                      "(removed or hidden)")
    if not out.records:
        out.overdue = True
        return fail(RECORD_PREFIX, "no restore test recorded: not established")
    try:
        out.next_due, out.overdue = schedule_lib.standing(schedule, out.records[-1].time, now, RUN_SLACK)
    except schedule_lib.ScheduleInvalid:  # the schedule cannot be read here: on time cannot be established
        out.overdue = True
    return out


def read_mark(folder: Path, embassy: str) -> dict[str, Any] | None:
    path = folder / MARK.format(embassy=embassy)
    try:
        got = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return got if isinstance(got, dict) else None


def raise_mark(folder: Path, embassy: str, hist: History, now: dt.datetime) -> None:
    """Remember the newest valid record: if it disappears later, that is a removal, never 'no record yet'."""
    if hist.problem is not None or not hist.last:
        return
    old = read_mark(folder, embassy)
    if old and str(old.get("key", "")) >= hist.last.key:
        return
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / MARK.format(embassy=embassy)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": hist.last.key, "seen": now.isoformat()}) + "\n")
    tmp.replace(path)
