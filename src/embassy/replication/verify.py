"""`embassy verify`: an embassy's vault checked from the outside, trusting nothing it holds.

1. the manifest chain, first to newest: canonical bytes, Ed25519 signatures by the home state's key
   (taken from the stack config or the lab state, never from the vault), links, rounds;
2. freshness: the head against the heads of the other reachable embassies (a vault rolled back to an
   older, validly signed chain, or frozen, is behind them by more than its registers' objectives);
3. what the head manifest names, on the embassy's host with its read-only identity: `pgbackrest
   verify` (every WAL segment and backup file against its checksum; it exits 0 on errors, so its
   output is parsed), the backup and WAL the manifest names, `restic check` (`--read-data` under
   --full, a rotating fifth otherwise), the snapshot ids, and under --full the Merkle root of each
   file register's snapshot recomputed from a restore into a scratch folder.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embassy import model
from embassy.errors import UserError
from embassy.lab.state import LabState
from embassy.replication import dataplane, manifest

PUBLIC_KEY_FILE = "manifest_public_key.pem"  # in the lab's state folder (written by the agent deploy)


@dataclass
class Result:
    embassy: str
    checked: list[dict[str, Any]] = field(default_factory=list)
    manifests: int = 0
    head: dict[str, Any] | None = None
    first_failure: dict[str, str] | None = None

    @property
    def intact(self) -> bool:
        return self.first_failure is None

    def check(self, obj: str, ok: bool, reason: str = "") -> bool:
        self.checked.append({"object": obj, "ok": ok, **({"reason": reason} if reason and not ok else {})})
        if not ok and self.first_failure is None:
            self.first_failure = {"object": obj, "reason": reason}
        return ok

    def as_json(self) -> dict[str, Any]:
        return {"embassy": self.embassy, "intact": self.intact, "manifests": self.manifests, "head": self.head,
                "first_failure": self.first_failure, "checked": self.checked}


def public_key_pem(dep: model.Deployment, lab: LabState | None) -> str:
    """The manifest public key: the stack config's, else the one the lab recorded at deploy."""
    configured = getattr(dep, "manifest_public_key", None)
    if configured:
        return str(configured)
    if lab is not None:
        path = Path(lab.dir) / PUBLIC_KEY_FILE
        if path.is_file():
            return path.read_text()
    raise UserError("no manifest public key for this stack",
                    "set data-embassy:manifest_public_key in the stack config, or run `embassy deploy --target lab` "
                    "(it records home's public key in the lab state)")


def fetch_manifests(lab: LabState, embassy: str) -> list[tuple[str, bytes]]:
    """Every manifest object in the embassy's vault, read with its read-only identity; UserError if unreachable."""
    vault = lab.vault(embassy)
    spec = {"endpoint": vault.endpoint, "ca_file": vault.ca_file, "credentials": vault.reader_credentials,
            "bucket": vault.bucket}
    try:
        done = subprocess.run(lab.in_controller([sys.executable, "-m", "embassy.replication.vaultread", json.dumps(spec)]),
                              capture_output=True, text=True, timeout=90)
        got = json.loads(done.stdout)
    except (subprocess.TimeoutExpired, ValueError):
        got = {"ok": False, "error": "no answer in 90 s"}
    if not got.get("ok"):
        raise VaultUnreachable(embassy, str(got.get("error", "unknown error"))[:300])
    return [(o["key"], base64.b64decode(o["data"])) for o in got["objects"]]


class VaultUnreachable(Exception):
    def __init__(self, embassy: str, reason: str) -> None:
        super().__init__(f"vault of {embassy} unreachable: {reason}")
        self.embassy, self.reason = embassy, reason


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def ssh(lab: LabState, embassy: str, command: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(lab.ssh_argv(lab.host(embassy).name, command), capture_output=True, text=True, timeout=timeout)


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


def _pgbackrest_failure(lab: LabState, embassy: str, text: str) -> tuple[str, str]:
    """The object and reason of a failed `pgbackrest verify`: the file it names, else the one it aborted on."""
    summary = f"pgbackrest verify: {' '.join(text.split())[:400]}"
    named = bad_file(text)
    if named:
        return f"pgbackrest:{named}", summary
    abort = VERIFY_ABORT.search(text)
    if abort and "Results:" not in text and abort.group("code") in CONTENT_ERRORS:
        # Aborted on a file's content before any result: the one file its main process reads is that first segment.
        listing = ssh(lab, embassy, "sudo runuser -u postgres -- pgbackrest --output=json --recurse repo-ls archive/home")
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


def check_pgbackrest(lab: LabState, embassy: str, head: manifest.Verified, result: Result) -> None:
    done = ssh(lab, embassy, f"{PGBR} --log-level-console=info --output=text --verbose verify 2>&1; echo; "
                             f"{PGBR} --output=json info")
    text, _, info_json = done.stdout.rpartition("\n[")
    status = re.search(r"status:\s*(\w+)", text)
    invalid = re.search(r"(missing|checksum invalid|size invalid|other): [1-9]", text)
    if status is None or status.group(1) != "ok" or invalid or "error" in text.lower():
        obj, reason = _pgbackrest_failure(lab, embassy, text)
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


def check_generation(lab: LabState, embassy: str, head: manifest.Verified, result: Result) -> None:
    """The host reads the repositories (key generation) the head names, else its checks would prove another repo."""
    want = dataplane.manifest_generation(head.body)
    done = ssh(lab, embassy, f"sudo sed -n 's/^repo1-path=//p' {dataplane.PGBACKREST_CONF}; "
                             f"sudo sed -n 's/^RESTIC_BASE=.*\\///p' {dataplane.RESTIC_DIR}/{embassy}.env", timeout=60)
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


def check_restic(lab: LabState, embassy: str, head: manifest.Verified, result: Result, full: bool) -> None:
    subset = "--read-data" if full else f"--read-data-subset={head.round % 5 + 1}/5"
    for reg in head.body["registers"]:
        if reg["kind"] != "files":
            continue
        name = reg["name"]
        restic = f"sudo embassy-restic {embassy} {name} --no-lock"
        done = ssh(lab, embassy, f"{restic} check {subset} 2>&1")
        if done.returncode != 0:
            listing = f"{restic} list packs"
            pack = bad_pack(done.stdout, lambda: ssh(lab, embassy, listing, timeout=300).stdout.split())  # noqa: B023
            result.check(f"restic:{name}" + (f"/data/{pack[:2]}/{pack}" if pack else ""), False,
                         f"restic check {subset}: {' '.join(done.stdout.split())[-400:]}")
            return
        result.check(f"restic:{name}", True)
        snaps = ssh(lab, embassy, f"{restic} snapshots --json")
        ids = [s.get("id", "") for s in json.loads(snaps.stdout or "[]")] if snaps.returncode == 0 else []
        want = reg.get("snapshot_id") or ""
        if not result.check(f"restic:{name}/snapshots/{want[:8]}", bool(want) and any(i.startswith(want) or
                            want.startswith(i) for i in ids), f"snapshot {want[:8]} named by {head.key} is not in the repo"):
            return
        if full and reg.get("digest"):
            scratch = f"/var/tmp/embassy-verify-{name}"
            got = ssh(lab, embassy, f"sudo rm -rf {scratch} && {restic} restore {want} --target {scratch} >/dev/null && "
                                    f"sudo env PYTHONPATH=/opt/embassy python3 -m replication.digest files "
                                    f"{scratch}/srv/registers/{name}; sudo rm -rf {scratch}")
            try:
                actual = json.loads(got.stdout)
            except ValueError:
                result.check(f"restic:{name}/snapshots/{want[:8]}/content", False, f"restore failed: {got.stderr[-300:]}")
                return
            from embassy.replication.digest import differences

            diff = differences(reg["digest"], actual)
            result.check(f"restic:{name}/snapshots/{want[:8]}/content", not diff,
                         f"content differs from {head.key}: {'; '.join(diff)}")


def check_freshness(dep: model.Deployment, lab: LabState, embassy: str, head: manifest.Verified, public: Any,
                    result: Result, say: Callable[[str], None]) -> None:
    """Compare the head with the other reachable embassies' heads: behind by more than an objective is stale."""
    me = next(e for e in dep.embassies if e.name == embassy)
    held = [r for r in dep.registers if any(h.name == embassy for h in dep.holders(r))]
    for other in dep.embassies:
        if other.name == embassy:
            continue
        try:
            chain, failure = manifest.verify_chain(fetch_manifests(lab, other.name), public, stack=dep.stack,
                                                   embassy=other.name)
        except VaultUnreachable:
            say(f"freshness: vault of {other.name} unreachable, not compared")
            continue
        if failure or not chain:
            say(f"freshness: {other.name}'s chain does not verify, not compared")
            continue
        theirs = chain[-1]
        behind = (_time(theirs.body["time"]) - _time(head.body["time"])).total_seconds()
        for reg in held:
            if any(h.name == other.name for h in dep.holders(reg)) and theirs.round > head.round:
                bound = dep.rpo_bound(reg, me)
                if behind > bound:
                    result.check(f"vault:{embassy}/{head.key}", False,
                                 f"stale: head is round {head.round}, {behind:.0f} s behind {other.name}'s round "
                                 f"{theirs.round}, more than {reg.name}'s objective of {bound} s (rolled back or frozen)")
                    return
    result.check(f"vault:{embassy}/freshness", True)


def verify(dep: model.Deployment, lab: LabState, embassy: str, *, full: bool = False,
           say: Callable[[str], None] = lambda _m: None) -> Result:
    if embassy not in {e.name for e in dep.embassies}:
        raise UserError(f"no embassy '{embassy}' in stack '{dep.stack}'",
                        f"use one of: {', '.join(e.name for e in dep.embassies)}")
    public = manifest.load_public_key(public_key_pem(dep, lab))
    result = Result(embassy)
    say(f"reading the manifests of {embassy} (read-only identity)")
    try:
        objects = fetch_manifests(lab, embassy)
    except VaultUnreachable as exc:
        result.check(f"vault:{embassy}", False, f"unreachable: {exc.reason}")
        return result
    say(f"checking {len(objects)} manifests: signatures and links")
    chain, failure = manifest.verify_chain(objects, public, stack=dep.stack, embassy=embassy)
    result.manifests = len(objects)
    for m in chain:
        result.check(m.key, True)
    if failure:
        result.check(failure[0], False, failure[1])
        return result
    if not chain:
        result.check(f"vault:{embassy}/{manifest.PREFIX}", False, "no manifest: nothing here can be proven")
        return result
    head = chain[-1]
    result.head = {"round": head.round, "sha256": head.sha256, "key": head.key, "time": head.body["time"]}
    say("freshness against the other embassies")
    check_freshness(dep, lab, embassy, head, public, result, say)
    if not result.intact:
        return result
    say("the host's repositories: the key generation the head manifest names")
    check_generation(lab, embassy, head, result)
    if not result.intact:
        return result
    say("pgBackRest: verify every WAL segment and backup file")
    check_pgbackrest(lab, embassy, head, result)
    if result.intact:
        say(f"restic: check {'all data' if full else 'a rotating fifth of the data'}")
        check_restic(lab, embassy, head, result, full)
    return result
