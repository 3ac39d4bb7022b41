"""`embassy verify`: an embassy's vault checked from the outside, trusting nothing it holds.

The adversary is the host nation: it controls this vault's storage below S3 and its locks, the network
path to it and what it serves when, but holds no signing key. So:
1. every object is read bounded (size, count) and parsed so that it can only fail this vault, naming
   itself (manifest.parse_json); another vault's bad object makes that vault "not comparable", nothing more;
2. the manifest chain, first to newest: canonical bytes, Ed25519 signatures by the home state's key
   (the target's trust anchor: the stack config's data-embassy:manifest_public_key, or in the lab only the key
   its deploy recorded; never one from the vault), links, rounds; every object
   under manifests/ must be a manifest of this chain; and so must the round after the newest listed one if the
   vault serves it although its listing leaves it out (vaultread: SeaweedFS does so for an object written below
   S3 once a read "healed" it): named as a listed one is, and a hidden manifest, even home's, is a failure;
3. freshness, anchored outside the vault (freshness.py): the controller's high-water mark, the custody
   bundle's round, and any manifest home signed in any reachable vault. No anchor: "freshness not
   established", a failure unless the operator accepts it (recorded);
4. what the head manifest names, on the embassy's host with its read-only identity: `pgbackrest
   verify` (every WAL segment and backup file against its checksum; it exits 0 on errors, so its
   output is parsed), the backup and WAL the manifest names, `restic check` (`--read-data` under
   --full, a rotating fifth otherwise), the snapshot ids, and under --full the Merkle root of each
   file register's snapshot recomputed from a restore into a fresh private scratch folder;
5. locks: every manifest, and every object a restore relies on (the head's pgBackRest backup, its WAL,
   the restic repositories, the custody bundles), under COMPLIANCE until at least its write time plus the
   embassy's retention (HEAD with the read-only identity).
The verified chain is kept (Result.chain): a restore uses exactly it, never a second read.

Everything is reached through a target (embassy.targets): `target.vault(embassy)` for the S3 reads (run where
the vault is reachable, with its read-only identity), `target.run_on(host, …)` for the checks on the embassy's
host. Callers that still hand over the lab's state get the lab's vault and SSH, as before.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from embassy import errors, model, targets
from embassy.errors import ManifestKeyMissing, UserError
from embassy.replication import dataplane, freshness, manifest
from embassy.replication.secrets import secrets_dir
from embassy.targets import Target, run_host
from embassy.vaultaccess import VaultAccess

PUBLIC_KEY_FILE = targets.MANIFEST_KEY_FILE  # in the lab's state folder (written by the agent deploy)
# Where verify reaches hosts and vaults: a Target, or (callers not yet moved to one) the lab's state.
Where = Any
# Variables handed to every check on the embassy's host (a key generation's restore secrets,
# custody.hostsecrets.restore_env), as Target.run_on hands them: None where the host's own files hold them.
HostEnv = Mapping[str, str] | None
READ_TIMEOUT = 90  # seconds for one vault's manifests; a host that serves slower is unreachable
LOCK_SLACK = dt.timedelta(minutes=10)  # home's clock and the vault's differ by less than this


# What kind of failure a check names: a restore raises the matching registry error.
KINDS: dict[str, type[errors.EmbassyError]] = {
    "integrity": errors.ManifestInvalid, "unreachable": errors.VaultUnreachable, "stale": errors.VaultStale,
    "unanchored": errors.FreshnessNotEstablished, "lock": errors.LockInsufficient, "data": errors.VaultDataInvalid}


@dataclass
class Result:
    embassy: str
    checked: list[dict[str, Any]] = field(default_factory=list)
    manifests: int = 0
    head: dict[str, Any] | None = None
    first_failure: dict[str, str] | None = None
    failure_kind: str = ""
    chain: list[manifest.Verified] = field(default_factory=list)  # exactly what verified, kept for the restore
    freshness: freshness.Freshness | None = None

    @property
    def intact(self) -> bool:
        return self.first_failure is None

    def check(self, obj: str, ok: bool, reason: str = "", kind: str = "integrity", detail: str = "") -> bool:
        self.checked.append({"object": obj, "ok": ok, **({"reason": reason} if reason and not ok else {}),
                             **({"detail": detail} if detail else {})})
        if not ok and self.first_failure is None:
            self.first_failure = {"object": obj, "reason": reason}
            self.failure_kind = kind
        return ok

    def error(self, hint: str) -> errors.EmbassyError:
        """The registry error a refused restore raises: the first failure's object and reason."""
        failure = self.first_failure or {}
        return KINDS.get(self.failure_kind, errors.ManifestInvalid)(
            f"{failure.get('object', '?')}: {failure.get('reason', '')}", hint)

    def as_json(self) -> dict[str, Any]:
        return {"embassy": self.embassy, "intact": self.intact, "manifests": self.manifests, "head": self.head,
                "first_failure": self.first_failure, "checked": self.checked,
                "freshness": self.freshness.as_json() if self.freshness else None}


def public_key_pem(dep: model.Deployment, where: Where | None) -> str:
    """The manifest public key: the stack config's, else (in the lab only) the one the lab recorded at deploy."""
    if isinstance(where, Target):
        return where.manifest_public_key()
    configured = getattr(dep, "manifest_public_key", None)
    if configured:
        return str(configured)
    if where is not None:
        path = Path(where.dir) / PUBLIC_KEY_FILE
        if path.is_file():
            return path.read_text()
    raise ManifestKeyMissing("no manifest public key for this stack",
                             "set data-embassy:manifest_public_key in the stack config, or run `embassy deploy --target "
                             "lab` (it records home's public key in the lab state)")


def vault_of(where: Where, embassy: str) -> VaultAccess:
    """The embassy's vault as the target reaches it."""
    return where.vault(embassy) if isinstance(where, Target) else targets.lab_vault(where, embassy)


class VaultUnreachable(Exception):
    def __init__(self, embassy: str, reason: str) -> None:
        super().__init__(f"vault of {embassy} unreachable: {reason}")
        self.embassy, self.reason = embassy, reason


class VaultGarbled(Exception):
    """What a vault served cannot be taken as objects at all: that vault's finding, naming the object."""

    def __init__(self, obj: str, reason: str) -> None:
        super().__init__(f"{obj}: {reason}")
        self.object, self.reason = obj, reason


@dataclass(frozen=True)
class Stored:
    """One object as the vault served it (everything here is the host's word until checked)."""

    key: str
    data: bytes | None  # None: not read (over the bound)
    size: int
    lock_mode: str | None = None
    retain_until: str | None = None
    last_modified: str | None = None
    missing: str | None = None
    unlisted: bool = False  # served on GET although the vault's listing leaves it out


def _text(value: Any, what: str, obj: str) -> str | None:
    if value is None or (isinstance(value, str) and len(value) <= 1024):
        return value
    raise VaultGarbled(obj, f"{what} is not a string")


def parse_reader_output(embassy: str, stdout: str) -> list[Stored]:
    """The reader's JSON, each object checked for shape: VaultUnreachable or VaultGarbled, nothing else."""
    try:
        got = manifest.parse_json(stdout.encode(), max_bytes=1 << 31, max_depth=4)
    except ValueError as exc:
        raise VaultUnreachable(embassy, f"the reader gave no answer ({exc})") from None
    if not isinstance(got, dict) or not got.get("ok"):
        error = got.get("error", "unknown error") if isinstance(got, dict) else "unknown error"
        raise VaultUnreachable(embassy, str(error)[:300])
    items = got.get("objects")
    if not isinstance(items, list):
        raise VaultGarbled(f"vault:{embassy}", "the listing is not a list of objects")
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str) or len(item["key"]) > 1024:
            raise VaultGarbled(f"vault:{embassy}", "an object without a key of at most 1024 characters")
        obj = f"vault:{embassy}/{item['key']}"
        size = item.get("size", 0)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise VaultGarbled(obj, "its size is not a count of bytes")
        data = None
        if item.get("data") is not None:
            try:
                data = base64.b64decode(str(item["data"]), validate=True)
            except (binascii.Error, ValueError):
                raise VaultGarbled(obj, "its content did not come back as base64") from None
        out.append(Stored(item["key"], data, size, _text(item.get("lock_mode"), "lock mode", obj),
                          _text(item.get("retain_until"), "retain-until", obj),
                          _text(item.get("last_modified"), "last-modified", obj),
                          _text(item.get("missing"), "missing", obj), item.get("unlisted") is True))
    return out


def _reader(where: Where, embassy: str, extra: dict[str, Any] | None = None) -> list[Stored]:
    vault = vault_of(where, embassy)
    spec = {**vault.client_spec("reader"), **(extra or {})}  # names where the credentials are, never holds them
    try:
        done = subprocess.run(vault.client_argv([sys.executable, "-m", "embassy.replication.vaultread", json.dumps(spec)]),
                              capture_output=True, text=True, errors="replace", timeout=READ_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise VaultUnreachable(embassy, f"no answer in {READ_TIMEOUT} s") from None
    return parse_reader_output(embassy, done.stdout)


def fetch_manifests(where: Where, embassy: str) -> list[Stored]:
    """Every object under manifests/ in the embassy's vault, read with its read-only identity, bounded.

    VaultUnreachable if it does not answer, VaultGarbled if what it serves is not a listing of objects."""
    return _reader(where, embassy)


def fetch_locks(where: Where, embassy: str, prefixes: list[str], keys: list[str]) -> list[Stored]:
    """The lock of every object under the prefixes and of the keys (HEAD, no data)."""
    return _reader(where, embassy, {"heads": {"prefixes": prefixes, "keys": keys}})


def walk(objects: list[Stored], public: Any, *, stack: str,
         embassy: str) -> tuple[list[manifest.Verified], tuple[str, str] | None]:
    """The chain as manifest.verify_chain walks it; an object over the size bound fails where it stands."""
    ordered = sorted(objects, key=lambda o: o.key)
    unread = next((i for i, o in enumerate(ordered) if o.data is None), len(ordered))
    chain, failure = manifest.verify_chain([(o.key, o.data or b"") for o in ordered[:unread]], public, stack=stack,
                                           embassy=embassy)
    if failure is None and unread < len(ordered):
        o = ordered[unread]
        failure = (o.key, f"not read: {o.size} bytes, more than a manifest may have ({manifest.MAX_BYTES})")
    return chain, failure


def same_chain(verified: list[manifest.Verified], objects: list[Stored]) -> tuple[str, str] | None:
    """A later read of the manifests compared with the chain that was verified: (object, reason) if it differs.

    A host may serve the whole chain while it is verified and another one afterwards: whatever is read
    later must be byte for byte (by sha256) what was verified, nothing missing, nothing added."""
    want = {m.key: m.sha256 for m in verified}
    got = {o.key: manifest.sha256(o.data) if o.data is not None else None for o in objects}
    for key in sorted(want.keys() | got.keys()):
        if key not in got:
            return key, "verified before, missing from a later read of the vault"
        if key not in want:
            return key, "not in the chain that was verified, present in a later read of the vault"
        if got[key] != want[key]:
            return key, f"sha256 {str(got[key])[:16]}… in a later read, {want[key][:16]}… when verified"
    return None


def _time(text: str) -> dt.datetime:
    return manifest.parse_time(text)


def ssh(where: Where, embassy: str, command: str, timeout: float = 1800,
        env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `command` on the embassy's (first) host through the target; `env` handed to it as Target.run_on does."""
    if isinstance(where, Target):
        return where.run_on(where.embassy_hosts(embassy)[0], command, timeout=timeout, env=env)
    if env:
        raise ValueError("variables are handed to a host's command only through a Target")
    return run_host(where.ssh_argv(where.host(embassy).name, command), timeout=timeout)


# At log level info, pgBackRest verify names each bad file it checks in a job: "invalid result <archive id>/<dir>/<segment>: …"
# for WAL, "<label>/pg_data/…" for backup files.
BAD_FILE = re.compile(r"invalid (?:result|checksum|size)[^\n]*?(?P<file>\d+-\d+/[0-9A-F]{16}/[0-9A-F]{24}[^\s:,']*|"
                      r"\d{8}-\d{6}F(?:_\d{8}-\d{6}[DI])?/[^\s:,']+)")
# Before those jobs, verify's main process reads the header of the first WAL segment of each archive id (to learn the
# segment size: verifyArchive() in pgBackRest's src/command/verify/verify.c), outside the per-file error handling: a
# segment damaged there (`[029] zst error: Data corruption detected`) aborts verify with an ERROR that names no file.
VERIFY_ABORT = re.compile(r"ERROR: \[(?P<code>\d{3})\]: (?P<message>[^\n]*)")
PGBR = "sudo runuser -u postgres -- pgbackrest --stanza=home"


def bad_file(text: str) -> str | None:
    """The repo file that pgBackRest verify's output names as invalid, if any."""
    bad = BAD_FILE.search(text)
    return bad.group("file") if bad else None


def _pgbackrest_failure(where: Where, embassy: str, text: str, env: HostEnv = None) -> tuple[str, str]:
    """The object and reason of a failed `pgbackrest verify`: the file it names, else the one it aborted on."""
    summary = f"pgbackrest verify: {' '.join(text.split())[:400]}"
    named = bad_file(text)
    if named:
        return f"pgbackrest:{named}", summary
    abort = VERIFY_ABORT.search(text)
    if abort and "Results:" not in text and abort.group("code") in CONTENT_ERRORS:
        # Aborted on a file's content before any result: the one file its main process reads is that first segment.
        listing = ssh(where, embassy, "sudo runuser -u postgres -- pgbackrest --output=json --recurse repo-ls archive/home",
                      env=env)
        first = header_read_segment(listing.stdout)
        if first:
            return (f"pgbackrest:{first}",
                    f"pgbackrest verify aborted reading the header of this WAL segment, the first of its archive, which "
                    f"it reads before its per-file checks: [{abort.group('code')}] "
                    f"{abort.group('message').strip()[:200]}; the segment is damaged or replaced")
    return "pgbackrest:repo", summary


# Errors of reading a file's content (not of reaching the vault): FormatError (zst, WAL header), CryptoError (cipher).
CONTENT_ERRORS = {"029", "095"}
WAL_DIR = re.compile(r"[0-9A-F]{16}")
WAL_FILE = re.compile(r"[0-9A-F]{24}-[0-9a-f]{40}(?:\.[a-z0-9]+)?")


def header_read_segment(repo_ls_json: str) -> str | None:
    """The WAL segment whose header verify's main process reads, from `repo-ls --recurse archive/home` JSON.

    verifyArchive() reads the first WAL file (sorted) of the first WAL folder of each archive id; with one archive
    id that is one file, named here; with several it cannot say which one failed (None).
    """
    try:
        listing = json.loads(repo_ls_json)
    except (ValueError, RecursionError):
        return None
    if not isinstance(listing, dict):
        return None
    firsts: dict[str, str] = {}
    for name in sorted(str(n) for n in listing):
        parts = name.split("/")
        if len(parts) == 3 and re.fullmatch(r"\d+-\d+", parts[0]) and WAL_DIR.fullmatch(parts[1]) \
                and WAL_FILE.fullmatch(parts[2]) and parts[0] not in firsts:
            firsts[parts[0]] = name
    return next(iter(firsts.values())) if len(firsts) == 1 else None


def check_pgbackrest(where: Where, embassy: str, head: manifest.Verified, result: Result, env: HostEnv = None) -> None:
    done = ssh(where, embassy, f"{PGBR} --log-level-console=info --output=text --verbose verify 2>&1; echo; "
                             f"{PGBR} --output=json info", env=env)
    text, _, info_json = done.stdout.rpartition("\n[")
    status = re.search(r"status:\s*(\w+)", text)
    invalid = re.search(r"(missing|checksum invalid|size invalid|other): [1-9]", text)
    if status is None or status.group(1) != "ok" or invalid or "error" in text.lower():
        obj, reason = _pgbackrest_failure(where, embassy, text, env)
        result.check(obj, False, reason)
        return
    result.check("pgbackrest:repo", True)
    try:
        info = json.loads("[" + info_json)[0]
    except (ValueError, IndexError):
        result.check("pgbackrest:info", False, "pgbackrest info gave no JSON")
        return
    labels = {b.get("label") for b in info.get("backup", [])}
    archive_max = max((a.get("max") or "" for a in info.get("archive", [])), default="")
    for reg in head.body["registers"]:
        if reg["kind"] != "postgres":
            continue
        if reg.get("backup_label"):
            result.check(f"pgbackrest:backup/{reg['backup_label']}", reg["backup_label"] in labels,
                         f"backup {reg['backup_label']} named by {head.key} is not in the repo")
        last = (reg.get("wal") or {}).get("last")
        if last:
            result.check(f"pgbackrest:archive/{last}", archive_max[8:] >= last[8:],
                         f"WAL up to {last} named by {head.key}, the repo holds only up to {archive_max or 'nothing'}")


def check_generation(where: Where, embassy: str, head: manifest.Verified, result: Result, env: HostEnv = None) -> None:
    """The host reads the repositories (key generation) the head names, else its checks would prove another repo."""
    want = dataplane.manifest_generation(head.body)
    # A key generation handed over in the environment (`env`: hostsecrets.restore_env) is what pgBackRest and restic read.
    done = ssh(where, embassy, f"echo \"${{PGBACKREST_REPO1_PATH:-$(sudo sed -n 's/^repo1-path=//p' "
                             f"{dataplane.PGBACKREST_CONF})}}\"; echo \"${{EMBASSY_RESTIC_FOLDER:-$(sudo sed -n "
                             f"'s/^RESTIC_BASE=.*\\///p' {dataplane.RESTIC_DIR}/{embassy}.env)}}\"", timeout=60, env=env)
    if done.returncode == 255:
        result.check(f"host:{embassy}", False, f"ssh: {done.stderr.strip()[-300:]}")
        return
    lines = done.stdout.split()
    kinds = {r["kind"] for r in head.body["registers"]}
    have = {dataplane.generation_of(p) for p in lines[:1] if "postgres" in kinds} | \
        {dataplane.generation_of(p) for p in lines[1:2] if "files" in kinds}
    result.check(f"host:{embassy}/key-generation", have == {want},
                 f"the host reads the repositories {' '.join(lines) or '(none)'}, {head.key} names key generation {want}: "
                 "run `embassy deploy` (or restore with --shares)")


# restic check names a damaged pack by its id, which is its object name (data/<first two hex digits>/<id>):
# "Pack ID does not match, want <id>, got <hash of what it read>" (restic 0.14, seen on the lab), "pack <id>: …",
# "pack <id> contains N errors: …" (later versions), or only by the id's first 8 digits (older ones).
BAD_PACK = re.compile(r"\b(?:pack|Pack ID does not match, want) ([0-9a-f]{64})\b")
SHORT_PACK = re.compile(r"\b(?:pack|Pack ID does not match, want) ([0-9a-f]{8,63})(?![0-9a-f])")


def bad_pack(text: str, packs: Callable[[], list[str]] = lambda: []) -> str | None:
    """The id of the first pack restic check names as damaged; a short id is resolved among `packs()` (unique only)."""
    found = BAD_PACK.search(text)
    if found:
        return found.group(1)
    short = SHORT_PACK.search(text)
    if short is None:
        return None
    matches = [p for p in packs() if re.fullmatch(r"[0-9a-f]{64}", p) and p.startswith(short.group(1))]
    return matches[0] if len(matches) == 1 else None


RESTIC_MARK = "embassy: restic check exit "


def check_restic(where: Where, embassy: str, head: manifest.Verified, result: Result, full: bool,
                 env: HostEnv = None) -> None:
    subset = "--read-data" if full else f"--read-data-subset={head.round % 5 + 1}/5"
    for reg in head.body["registers"]:
        if reg["kind"] != "files":
            continue
        name = reg["name"]
        restic = f"sudo embassy-restic {embassy} {name} --no-lock"
        # check, then (only if it passed) the snapshot list, in one SSH round trip; the marker line splits them.
        done = ssh(where, embassy, f"{restic} check {subset} 2>&1; rc=$?; echo '{RESTIC_MARK}'\"$rc\"; "
                                   f"[ $rc = 0 ] && {restic} snapshots --json", env=env)
        text, mark, after = done.stdout.partition(RESTIC_MARK)
        code, _, listed = after.partition("\n")
        if not mark or code.strip() != "0":
            done = subprocess.CompletedProcess(done.args, done.returncode or 1, text, done.stderr)
            listing = f"{restic} list packs"
            pack = bad_pack(done.stdout, lambda: ssh(where, embassy, listing, timeout=300,  # noqa: B023
                                                     env=env).stdout.split())
            result.check(f"restic:{name}" + (f"/data/{pack[:2]}/{pack}" if pack else ""), False,
                         f"restic check {subset}: {' '.join(done.stdout.split())[-400:]}")
            return
        result.check(f"restic:{name}", True)
        try:
            ids = [str(s.get("id", "")) for s in json.loads(listed or "[]") if isinstance(s, dict)] \
                if done.returncode == 0 else []
        except ValueError:
            ids = []
        want = reg.get("snapshot_id") or ""
        if not result.check(f"restic:{name}/snapshots/{want[:8]}", bool(want) and any(i.startswith(want) or
                            want.startswith(i) for i in ids), f"snapshot {want[:8]} named by {head.key} is not in the repo"):
            return
        if full and reg.get("digest"):
            # A fresh 0700 folder per run (mktemp -d), never a fixed path another user could prepare.
            got = ssh(where, embassy, f"scratch=$(sudo mktemp -d -p /var/tmp embassy-verify.XXXXXXXXXX) && "
                                    f"{restic} restore {want} --target \"$scratch\" >/dev/null && "
                                    f"sudo env PYTHONPATH=/opt/embassy python3 -m replication.digest files "
                                    f"\"$scratch\"/srv/registers/{name}; rc=$?; "
                                    f"[ -n \"$scratch\" ] && sudo rm -rf \"$scratch\"; exit $rc", env=env)
            try:
                actual = json.loads(got.stdout)
            except ValueError:
                result.check(f"restic:{name}/snapshots/{want[:8]}/content", False, f"restore failed: {got.stderr[-300:]}")
                return
            from embassy.replication.digest import differences

            diff = differences(reg["digest"], actual)
            result.check(f"restic:{name}/snapshots/{want[:8]}/content", not diff,
                         f"content differs from {head.key}: {'; '.join(diff)}")


def _bound(dep: model.Deployment, embassy: str) -> int:
    """The tightest objective of the registers the embassy holds: how far behind another vault it may lag."""
    me = dep.embassy(embassy)
    held = [r for r in dep.registers if any(h.name == embassy for h in dep.holders(r))]
    return min((dep.rpo_bound(r, me) for r in held), default=0)


def controller_folder(dep: model.Deployment, where: Where) -> Path:
    """Where the high-water marks live: the controller's secrets folder (0700)."""
    if isinstance(where, Target):
        return where.controller_folder
    return secrets_dir(SimpleNamespace(lab_dir=where.dir, stack=dep.stack))


Served = dict[str, list[Stored] | Exception]


def read_others(dep: model.Deployment, where: Where, embassy: str) -> Served:
    """The manifests of every other embassy's vault, read at once; what cannot be read is its exception."""
    others = [e.name for e in dep.embassies if e.name != embassy]

    def read(name: str) -> list[Stored] | Exception:
        try:
            return fetch_manifests(where, name)
        except (VaultUnreachable, VaultGarbled) as exc:
            return exc
        except UserError as exc:  # the target does not describe that vault, or has no credentials for it here
            return VaultUnreachable(name, f"not reachable through target {getattr(where, 'kind', 'lab')}: {exc.message}")

    with ThreadPoolExecutor(max(1, len(others))) as pool:  # an unreachable vault costs its timeout once, not in turn
        return dict(zip(others, pool.map(read, others), strict=True))


def gather_anchors(dep: model.Deployment, where: Where, embassy: str, public: Any, fresh: freshness.Freshness,
                   say: Callable[[str], None], served: Served | None = None) -> None:
    """Every other embassy's vault: its newest manifest home signed is evidence; a vault that cannot be read or
    whose objects are not manifests is "not comparable" (recorded, never a crash, never a pass).
    served: those vaults' manifests when they were already read (verify reads them beside this vault's own)."""
    folder = controller_folder(dep, where)
    others = [e for e in dep.embassies if e.name != embassy]
    if served is None:
        served = read_others(dep, where, embassy)
    for other in others:
        try:
            got = served[other.name]
            if isinstance(got, Exception):
                raise got
            objects = got
        except VaultUnreachable as exc:
            fresh.not_comparable.append({"embassy": other.name, "reason": f"unreachable: {exc.reason}"})
            say(f"freshness: vault of {other.name} unreachable, not compared")
            continue
        except VaultGarbled as exc:
            fresh.not_comparable.append({"embassy": other.name, "reason": f"{exc.object}: {exc.reason}"})
            say(f"freshness: vault of {other.name} serves no listing of objects, not compared")
            continue
        newest = manifest.newest_signed([(o.key, o.data) for o in objects if o.data is not None], public,
                                        stack=dep.stack)
        if newest is None:
            fresh.not_comparable.append({"embassy": other.name, "reason": "no manifest signed by home"})
            say(f"freshness: {other.name}'s vault holds no manifest signed by home, not compared")
            continue
        fresh.anchors.append(freshness.evidence(other.name, newest))
        if newest.body["embassy"] in {e.name for e in dep.embassies}:
            freshness.raise_mark(folder, str(newest.body["embassy"]), newest)


def check_freshness(dep: model.Deployment, where: Where, embassy: str, chain: list[manifest.Verified], public: Any,
                    result: Result, say: Callable[[str], None], *, bundle_round: int | None = None,
                    accept_unanchored: bool = False, others: Callable[[], Served] | None = None) -> None:
    """The head against every anchor (freshness.py): stale, a second history, or not established, each a failure."""
    head = chain[-1]
    fresh = freshness.Freshness(accepted_unanchored=False)
    result.freshness = fresh
    mark = freshness.read_mark(controller_folder(dep, where), embassy)
    if mark is not None:
        fresh.anchors.append(mark)
        fork = freshness.second_history(chain, mark)
        if fork:
            result.check(f"vault:{embassy}/{head.key}", False, fork, kind="stale")
            fresh.stale = result.first_failure
            return
    if bundle_round is not None:
        fresh.anchors.append(freshness.Anchor(freshness.BUNDLE, bundle_round))
    gather_anchors(dep, where, embassy, public, fresh, say, others() if others is not None else None)
    stale = freshness.judge(head, fresh, _bound(dep, embassy))
    if stale:
        result.check(f"vault:{embassy}/{head.key}", False, stale, kind="stale")
        fresh.stale = result.first_failure
        return
    if not fresh.established and not accept_unanchored:
        why = "; ".join(f"{n['embassy']}: {n['reason']}" for n in fresh.not_comparable) or "no other embassy"
        result.check(f"vault:{embassy}/freshness", False,
                     f"freshness not established: no high-water mark on this controller, no custody bundle round, "
                     f"no other vault to compare with ({why[:400]}); --accept-unanchored takes head round "
                     f"{head.round} as it is", kind="unanchored")
        return
    fresh.accepted_unanchored = not fresh.established
    result.check(f"vault:{embassy}/freshness", True)


def _iso(text: str | None) -> dt.datetime | None:
    try:
        return _time(text) if text else None
    except ValueError:
        return None


def lock_problem(o: Stored, written: dt.datetime | None, days: int) -> str | None:
    """Why an object's lock is less than COMPLIANCE until its write time + the retention, or None.

    written: the trusted lower bound of its write time (a manifest's signed time), else the vault's own."""
    if o.missing:
        return f"listed, but the vault answers {o.missing} for it"
    if o.lock_mode != "COMPLIANCE":
        return f"not under a COMPLIANCE lock (lock mode {o.lock_mode or 'none'})"
    until = _iso(o.retain_until)
    when = max(t for t in (written, _iso(o.last_modified), dt.datetime.min.replace(tzinfo=dt.UTC)) if t is not None)
    if until is None:
        return "COMPLIANCE without a retain-until date"
    if when.year == 1:
        return "no write time"
    need = when + dt.timedelta(days=days)
    if until < need - LOCK_SLACK:
        return (f"locked until {until.isoformat()}, less than its write time {when.isoformat()} + the embassy's "
                f"{days} days of retention ({need.isoformat()})")
    return None


def check_manifest_locks(objects: list[Stored], chain: list[manifest.Verified], days: int, embassy: str,
                         result: Result) -> None:
    """Every manifest of the chain: the lock the vault returned with it, from its signed time."""
    by_key = {o.key: o for o in objects}
    for m in chain:
        problem = lock_problem(by_key[m.key], _time(m.body["time"]), days)
        if problem:
            result.check(f"vault:{embassy}/{m.key}", False, f"lock: {problem}", kind="lock")
            return
    result.check(f"vault:{embassy}/manifests/locks", True)


def relied_on(dep: model.Deployment, head: manifest.Verified) -> tuple[list[str], list[str], list[tuple[str, str, str]]]:
    """What a restore from the head reads: (prefixes, keys, WAL ranges (archive prefix, first, last))."""
    prefixes, keys, wal = [f"custody/{dep.stack}/"], [], []
    for reg in head.body["registers"]:
        if reg["kind"] == "postgres":
            repo = str(reg.get("repo_path") or dataplane.PGBACKREST_PATH).strip("/")
            label = str(reg.get("backup_label") or "")
            for name in dict.fromkeys([label, label.split("_")[0]]) if label else []:
                prefixes.append(f"{repo}/backup/home/{name}/")
            keys += [f"{repo}/backup/home/backup.info", f"{repo}/backup/home/backup.info.copy",
                     f"{repo}/archive/home/archive.info", f"{repo}/archive/home/archive.info.copy"]
            ends = reg.get("wal") or {}
            if ends.get("first") and ends.get("last"):
                wal.append((f"{repo}/archive/home/", str(ends["first"]), str(ends["last"])))
        elif reg.get("repository"):
            prefixes.append(f"{str(reg['repository']).strip('/')}/")
    return list(dict.fromkeys(prefixes)), list(dict.fromkeys(keys)), list(dict.fromkeys(wal))


SEGMENT = re.compile(r"(?:^|/)([0-9A-F]{24})(?:-[0-9a-f]{40})?(?:\.[a-z0-9]+)?$")


def check_locks(dep: model.Deployment, where: Where, embassy: str, head: manifest.Verified, result: Result) -> None:
    """Every object a restore from the head relies on: under COMPLIANCE until its write time + retention."""
    days = dep.embassy(embassy).retention_days
    prefixes, keys, wal = relied_on(dep, head)
    started = time.monotonic()
    try:
        objects = fetch_locks(where, embassy, prefixes + [w[0] for w in wal], keys)
    except VaultUnreachable as exc:
        result.check(f"vault:{embassy}", False, f"unreachable: {exc.reason}", kind="unreachable")
        return
    except VaultGarbled as exc:
        result.check(exc.object, False, exc.reason, kind="data")
        return
    wal_prefixes = {w[0] for w in wal} - set(prefixes)
    found = 0
    for o in objects:
        if "/locks/" in o.key or (o.missing and o.key not in keys):
            # restic's lock files come and go with every backup (no restore reads them); a listed object gone
            # by the time of its HEAD was expired or pruned meanwhile (pgbackrest verify and restic check
            # name an object the head needs that is gone).
            continue
        if any(o.key.startswith(p) for p in wal_prefixes):  # of the segments, those the head names; history too
            seg = SEGMENT.search(o.key)
            if seg and not any(o.key.startswith(p_) and first[8:] <= seg.group(1)[8:] <= last[8:]
                               for p_, first, last in wal):
                continue
        found += 1
        problem = lock_problem(o, None, days)
        if problem:
            result.check(f"vault:{embassy}/{o.key}", False, f"lock: {problem}", kind="lock")
            return
    result.check(f"vault:{embassy}/locks", True, detail=f"{found} objects under COMPLIANCE until their write time + "
                                                       f"{days} days (HEAD in {time.monotonic() - started:.1f} s)")


def host_and_lock_checks(dep: model.Deployment, where: Where, embassy: str, head: manifest.Verified, result: Result,
                         *, full: bool, say: Callable[[str], None] = lambda _m: None, env: HostEnv = None) -> None:
    """The key generation the host reads first (the checks after it would prove other repositories), then pgBackRest
    and restic on the host at once; the locks (from the controller) all along. Merged in that order up to the first
    failure, so the failure named is the one a check-by-check run names."""
    parts = {name: Result(embassy) for name in ("generation", "pgbackrest", "restic", "locks")}
    took: dict[str, float] = {}

    def timed(name: str, check: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        start = time.monotonic()
        check(*args, parts[name], **kwargs)
        took[name] = time.monotonic() - start

    with ThreadPoolExecutor(3) as pool:
        locks = pool.submit(timed, "locks", check_locks, dep, where, embassy, head)
        timed("generation", check_generation, where, embassy, head, env=env)
        if parts["generation"].intact:
            on_host = [pool.submit(timed, "pgbackrest", check_pgbackrest, where, embassy, head, env=env),
                       pool.submit(timed, "restic", check_restic, where, embassy, head, full=full, env=env)]
            for job in on_host:
                job.result()
        locks.result()
    say("timing: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in took.items()))
    for part in parts.values():
        result.checked += part.checked
        if part.first_failure is not None:
            result.first_failure, result.failure_kind = part.first_failure, part.failure_kind
            return


def verify(dep: model.Deployment, where: Where, embassy: str, *, full: bool = False,
           accept_unanchored: bool = False, bundle_round: int | None = None,
           say: Callable[[str], None] = lambda _m: None, before_host: Callable[[], None] | None = None,
           env: HostEnv = None) -> Result:
    """Check the embassy's vault (module docstring); the Result names the first failure and keeps the chain.

    bundle_round: the custody bundle's round at sealing, when a bundle is at hand (an anchor of freshness).
    accept_unanchored: take a chain whose freshness nothing anchors (recorded in the Result's freshness).
    before_host: called once the vault's own checks passed, before the first check on the host (a restore on AWS
    reaches its host there, so that a forged chain is refused without a session to the host).
    env: handed to every check on the host (a restore's key generation: custody.hostsecrets.restore_env)."""
    if embassy not in {e.name for e in dep.embassies}:
        raise UserError(f"no embassy '{embassy}' in stack '{dep.stack}'",
                        f"use one of: {', '.join(e.name for e in dep.embassies)}")
    public = manifest.load_public_key(public_key_pem(dep, where))
    result = Result(embassy)
    say(f"reading the manifests of {embassy} (read-only identity), and the other embassies' for freshness")
    started = time.monotonic()
    with ThreadPoolExecutor(1) as pool:  # each read starts a reader process: the others' beside this one's
        others = pool.submit(read_others, dep, where, embassy)
        try:
            objects = fetch_manifests(where, embassy)
        except VaultUnreachable as exc:
            result.check(f"vault:{embassy}", False, f"unreachable: {exc.reason}", kind="unreachable")
            return result
        except VaultGarbled as exc:
            result.check(exc.object, False, exc.reason, kind="data")
            return result
        say(f"timing: this vault's manifests read in {time.monotonic() - started:.1f} s")
        return _verify_read(dep, where, embassy, public, result, objects, others.result, full=full,
                            accept_unanchored=accept_unanchored, bundle_round=bundle_round, say=say,
                            before_host=before_host, env=env)


def _verify_read(dep: model.Deployment, where: Where, embassy: str, public: Any, result: Result,
                 objects: list[Stored], others: Callable[[], Served], *, full: bool, accept_unanchored: bool,
                 bundle_round: int | None, say: Callable[[str], None],
                 before_host: Callable[[], None] | None, env: HostEnv = None) -> Result:
    """verify() once the vault's manifests are read: the chain, its locks, freshness, then the host's checks."""
    say(f"checking {len(objects)} manifests: signatures and links")
    chain, failure = walk(objects, public, stack=dep.stack, embassy=embassy)
    result.manifests = len(objects)
    for m in chain:
        result.check(m.key, True)
    if failure:
        result.check(failure[0], False, failure[1])
        return result
    hidden = next((o for o in objects if o.unlisted), None)
    if hidden is not None:  # even signed by home: a vault that hides what it holds from its listing is not intact
        result.check(hidden.key, False, "served by the vault, but left out of its listing (objects hidden from the "
                                        "listing: home's next round cannot be written there)")
        return result
    if not chain:
        result.check(f"vault:{embassy}/{manifest.PREFIX}", False, "no manifest: nothing here can be proven")
        return result
    head = chain[-1]
    result.head = {"round": head.round, "sha256": head.sha256, "key": head.key, "time": head.body["time"]}
    check_manifest_locks(objects, chain, dep.embassy(embassy).retention_days, embassy, result)
    if not result.intact:
        return result
    say("freshness: the high-water mark, the custody bundle, the other embassies")
    started = time.monotonic()
    check_freshness(dep, where, embassy, chain, public, result, say, bundle_round=bundle_round,
                    accept_unanchored=accept_unanchored, others=others)
    say(f"timing: freshness (the other vaults' reads awaited) {time.monotonic() - started:.1f} s")
    if not result.intact:
        return result
    if before_host is not None:
        before_host()
    say("the key generation the head names, then at once pgBackRest verify of every WAL segment and backup file, "
        f"restic check of {'all data' if full else 'a rotating fifth of the data'}; the locks of every object a "
        "restore from the head relies on all along")
    host_and_lock_checks(dep, where, embassy, head, result, full=full, say=say, env=env)
    if result.intact:
        result.chain = chain
        freshness.raise_mark(controller_folder(dep, where), embassy, head)
    return result
