"""One replication round on home, run by the agent (systemd timer) or on demand (`embassy replicate`).

    python3 -m replication.round run [--config /etc/embassy/replication.json]
    python3 -m replication.round keygen KEYFILE PUBFILE

A round: digest every postgres register in one snapshot each (exact: a temporary logical slot's
snapshot at its consistent point, read by the read-only role embassy_digest), close the current WAL
segment and wait (bounded) until every embassy's repo holds it, copy every file register once and
snapshot that copy with restic into every embassy that holds it (its digest is of the copy: exactly
what each snapshot holds), then write one signed manifest per embassy, chained to that embassy's
previous one, into its vault (Object Lock applies the bucket's COMPLIANCE retention). An embassy whose
vault is unreachable or refuses writes is reported and skipped; the others are not held back, and it
catches up at a later round (its chain links to the last manifest it did receive).

Runs on home as root: stdlib, cryptography, boto3 (Debian packages).
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from . import digest, hostcmd, manifest, privatefile, roundstate, vaultnet

CONFIG = "/etc/embassy/replication.json"
LOCK = "/run/embassy-replication-round.lock"


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_json(path: Path, value: Any, mode: int = 0o640) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        json.dump(value, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


def load_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


# --------------------------------------------------------------------------- vault uploads


def s3_client(vault: dict[str, Any], ca_file: str) -> Any:
    creds = json.loads(Path(vault["credentials_file"]).read_text())
    return vaultnet.client(vault["endpoint"], ca_file, creds, region=vault.get("region", "us-east-1"), read_timeout=20)


VAULT_PROBE_SECONDS = vaultnet.PROBE_SECONDS


def vault_answers(vault: dict[str, Any], timeout: float = VAULT_PROBE_SECONDS) -> bool:
    """Does the vault's endpoint accept a TCP connection within `timeout`? (A quick probe, not a check of it.)"""
    return vaultnet.refusal(vaultnet.address(vault["endpoint"]), timeout) is None


class VaultSilent(Exception):
    """The vault's endpoint accepted no TCP connection within the probe's timeout."""


def answering(vault: dict[str, Any]) -> None:
    """VaultSilent unless the vault accepts a connection now: a dead vault costs the probe's 5 s, where boto's
    own attempt costs its connect timeout per attempt and read (about 13 s per upload, measured)."""
    if not vault_answers(vault):
        raise VaultSilent(f"{vault['endpoint']} accepts no connection within {VAULT_PROBE_SECONDS:g} s")


def upload(vault: dict[str, Any], ca_file: str, key: str, data: bytes) -> None:
    answering(vault)
    s3 = s3_client(vault, ca_file)
    if _exists(s3, vault["bucket"], key):
        # A round key already written (the state is behind this vault): never a second history under one name.
        raise KeyExists(key)
    s3.put_object(Bucket=vault["bucket"], Key=key, Body=data, ContentType="application/json")


class KeyExists(Exception):
    """The vault already holds an object under the manifest key this round would write."""


def _exists(s3: Any, bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def read_manifests(vault: dict[str, Any], ca_file: str) -> list[tuple[str, bytes]]:
    """Every object under manifests/ in a vault, each bounded in size (a larger one is kept as a stub: junk)."""
    answering(vault)
    s3 = s3_client(vault, ca_file)
    out = []
    items = vaultnet.listed(s3, vault["bucket"], manifest.PREFIX)
    for item, _, data in vaultnet.read_bounded(s3, vault["bucket"], items, roundstate.MAX_MANIFEST_BYTES):
        out.append((item["Key"], b"\0" * (roundstate.MAX_MANIFEST_BYTES + 1) if data is None else data))
    return out


def read_vaults(cfg: dict[str, Any], names: list[str]) -> list[roundstate.VaultView]:
    """The manifests of these embassies' vaults, read at once (an unreachable vault costs its timeout once)."""
    from concurrent.futures import ThreadPoolExecutor

    vaults = {e["name"]: e["vault"] for e in cfg["embassies"]}

    def one(name: str) -> roundstate.VaultView:
        try:
            return roundstate.VaultView(name, read_manifests(vaults[name], cfg["ca_file"]))
        except Exception as exc:  # any failure to read is "unreachable": that vault's head stays unknown
            return roundstate.VaultView(name, None, f"{type(exc).__name__}: {str(exc)[:200]}")

    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        return list(pool.map(one, names))


# --------------------------------------------------------------------------- the round state


def start_state(cfg: dict[str, Any], private: Any, *, new_chain: bool = False,
                say: Any = None) -> roundstate.Recovery:
    """The round state to continue from: state.json, and the vaults for every head it does not hold.

    Unreadable state is set aside (state.json.unreadable-<time>) and recovered like a lost one, never read as
    round 0; RecoveryRefused when the vaults cannot say where the chain stands.
    """
    path = Path(cfg["state_dir"]) / "state.json"
    why = "missing"
    try:
        state = roundstate.load(path)
    except roundstate.StateUnreadable as exc:
        why = f"unreadable ({exc})"
        os.replace(path, path.with_name(f"state.json.unreadable-{now_utc().strftime('%Y%m%dT%H%M%S')}"))
        state = None
    names = roundstate.missing_heads(state, [e["name"] for e in cfg["embassies"]])
    if not names and state is not None:
        return roundstate.Recovery(state, [], {}, new_chain=new_chain)
    if say:
        say(f"round state {why if state is None else 'lacks ' + ', '.join(names)}: reading the chain heads from the vaults")
    public = private.public_key()
    return roundstate.recover(state, why, read_vaults(cfg, names), public, stack=cfg["stack"], new_chain=new_chain)


# --------------------------------------------------------------------------- what a round ships


def wait_archived(segment: str, repos: list[int], timeout: float) -> dict[str, Any]:
    """Poll pgBackRest (bounded) until every repo's archive reaches `segment`; the last info read.

    A repo whose vault accepted no connection is not asked again in this wait (it cannot receive the
    segment meanwhile; each ask costs the probe's timeout) and not waited for: the wait ends when every
    other repo holds the segment. Its entry (status 99, unreachable) stays in the info returned."""
    deadline = time.monotonic() + timeout
    asked, gone = list(repos), []
    while True:
        info = hostcmd.pgbackrest_info(asked) if asked else {"archive": [], "backup": [], "repo": []}
        gone += [entry for entry in info.get("repo", []) or [] if entry.get("unreachable")]
        dead = hostcmd.unreachable_repos({"repo": gone})
        asked = [r for r in asked if r not in dead]
        info = {**info, "repo": [e for e in info.get("repo", []) or [] if int(e.get("key", 0)) not in dead] + gone}
        archive = hostcmd.repo_archive(info)
        if all(archive.get(r, {}).get("max", "")[8:] >= segment[8:] for r in asked) or time.monotonic() > deadline:
            return info
        time.sleep(0.5)


def postgres_part(cfg: dict[str, Any], timeout: float) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Digests of every postgres register, then the WAL segment that holds them, archived: (digests, info, segment)."""
    digests: dict[str, Any] = {}
    for reg in cfg["registers"]:
        if reg["kind"] == "postgres":
            # As the read-only role, at a slot's consistent point: the digest is exactly the state at its LSN.
            res = hostcmd.run(["env", "PYTHONPATH=/opt/embassy", "python3", "-m", "replication.digest", "postgres",
                               reg["database"], "--exact"], user=digest.ROLE, timeout=3600)
            if res.returncode != 0:
                raise RuntimeError(f"digest of {reg['name']} failed: {res.stderr.strip()[-500:]}")
            digests[reg["name"]] = json.loads(res.stdout)
    if not digests:
        return digests, {}, ""
    # Close the segment holding the digests' LSNs (pg_walfile_name of a boundary names the closed one).
    segment = hostcmd.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")
    repos = [e["repo"] for e in cfg["embassies"] if e.get("repo")]
    return digests, wait_archived(segment, repos, timeout), segment


def freeze(path: str, into: Path) -> None:
    """A copy of a file register as it is now: every embassy's snapshot is taken of it, and its digest is of
    it, so the digest is exactly what each snapshot holds (the live folder may change between snapshots)."""
    if into.exists():
        shutil.rmtree(into)
    into.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    res = hostcmd.run(["cp", "-a", "--reflink=auto", "--", path, str(into)], timeout=3600)
    if res.returncode != 0:
        raise RuntimeError(f"copy of {path} for its snapshots failed: {res.stderr.strip()[-300:]}")


def seen_at(frozen: Path, path: str, argv: list[str]) -> list[str]:
    """argv run with `frozen` bind-mounted over `path` in a mount namespace of its own (nobody else sees it)."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount --bind "$0" "$1" && shift && exec "$@"',
            str(frozen), path, *argv]


def snapshot_files(embassy: str, register: str, path: str, frozen: Path | None = None,
                   started: dt.datetime | None = None) -> dict[str, Any]:
    """restic backup of `path`; with `frozen`, of that copy seen at `path` (a bind mount in a private mount
    namespace: the snapshot names the register's own path, other processes still see the live folder).

    The snapshot's time is when what it holds was taken (the copy's start, else restic's start): a change
    after it may be missing from it."""
    started = started or now_utc()
    backup = ["embassy-restic", embassy, register, "backup", "--json", "--compression", "auto", "--host", "home",
              "--tag", "embassy", path]
    res = hostcmd.run(seen_at(frozen, path, backup) if frozen is not None else backup, timeout=3600)
    summary = {}
    for line in res.stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("message_type") == "summary":
            summary = msg
    if res.returncode != 0 or not summary.get("snapshot_id"):
        raise RuntimeError(f"restic backup of {register} to {embassy} failed: {res.stderr.strip()[-300:]}")
    return {"snapshot_id": summary["snapshot_id"], "time": iso(started)}


def postgres_entry(reg: dict[str, Any], e: dict[str, Any], info: dict[str, Any], dig: dict[str, Any]) -> dict[str, Any]:
    repo = e["repo"]
    archive = hostcmd.repo_archive(info).get(repo, {})
    backups = hostcmd.repo_backups(info).get(repo, [])
    last = backups[-1] if backups else {}
    archived_lsn = hostcmd.lsn_text(hostcmd.segment_end_lsn(archive["max"])) if archive.get("max") else None
    # repo_path: the key generation whose repo holds this backup (a restore takes that generation's passphrase)
    return {"name": reg["name"], "kind": "postgres", "database": reg["database"],
            "repo_path": e.get("repo_path") or "/pgbackrest", "backup_label": last.get("label"), "backup_type": last.get("type"),
            "wal": {"first": archive.get("min"), "last": archive.get("max")},
            "archived_lsn": archived_lsn, "digest": dig}


# --------------------------------------------------------------------------- the round


def run_round(cfg: dict[str, Any], *, say: Any = None, new_chain: bool = False) -> dict[str, Any]:
    state_dir = Path(cfg["state_dir"])
    state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    private = manifest.load_private_key(Path(cfg["key_file"]).read_bytes())
    try:  # before anything is shipped: a round that cannot link its manifests does not start
        recovery = start_state(cfg, private, new_chain=new_chain, say=say)
    except roundstate.RecoveryRefused as exc:
        refused: dict[str, Any] = {
            "round": None, "started": iso(now_utc()), "finished": iso(now_utc()), "embassies": [],
            "refused": {"object": f"{cfg['state_dir']}/state.json", "reason": exc.reason, "hint": exc.hint}}
        write_json(state_dir / "last-round.json", refused, mode=0o644)
        return refused
    state = recovery.state
    number = int(state["round"]) + 1
    started = now_utc()
    errors: dict[str, list[str]] = {e["name"]: [] for e in cfg["embassies"]}
    for name in recovery.unknown:
        errors[name].append("no manifest this round: its chain head is unknown (vault unreachable or holding no "
                            "manifest of home's); the next round reads it again")

    clock = time.monotonic()
    digests, info, segment = postgres_part(cfg, float(cfg.get("archive_wait_seconds", 30)))
    if say:
        say(f"digests and WAL segment {segment or '-'} archived (or waited for): {time.monotonic() - clock:.1f} s")
    archive = hostcmd.repo_archive(info)
    statuses = hostcmd.repo_status(info)
    notes: dict[str, list[str]] = {e["name"]: list(recovery.notes.get(e["name"], [])) for e in cfg["embassies"]}
    for e in cfg["embassies"]:
        repo = e.get("repo")
        if repo and segment and archive.get(repo, {}).get("max", "")[8:] < segment[8:]:
            code, message = statuses.get(repo, (-1, "no status"))
            # A vault that answers but is behind (pgBackRest pushes a segment to the repos in turn, so one
            # dead vault delays the others by its timeout) is lag, not a failure: its manifest says what it holds.
            (notes if code == 0 else errors)[e["name"]].append(
                f"WAL segment {segment} not archived in repo{repo} yet ({message or code})")

    shipped: dict[str, dict[str, Any]] = {}
    silent: set[str] = set()
    for e in cfg["embassies"]:
        if e["files"] and not vault_answers(e["vault"]):
            # restic retries a dead vault with back-off for minutes, and the round waits for every embassy's
            # snapshot: one vault cut off would hold every other embassy's manifest back by that long.
            silent.add(e["name"])
            errors[e["name"]].append(f"restic snapshots to {e['name']} not taken: its vault {e['vault']['endpoint']} "
                                     f"does not answer within {VAULT_PROBE_SECONDS:g} s")
    for reg in cfg["registers"]:
        holders = [e for e in cfg["embassies"] if reg["kind"] == "files" and reg["name"] in e["files"]
                   and e["name"] not in silent]
        if not holders:
            continue
        frozen = state_dir / "frozen" / reg["name"]
        try:
            frozen_at = now_utc()
            freeze(reg["path"], frozen)
            file_digest = digest.files(frozen)  # of what every snapshot below holds, byte for byte

            def snapshot(e: dict[str, Any], reg: dict[str, Any] = reg, frozen: Path = frozen,
                         frozen_at: dt.datetime = frozen_at, file_digest: dict[str, Any] = file_digest) -> None:
                try:
                    clock = time.monotonic()
                    snap = {**snapshot_files(e["name"], reg["name"], reg["path"], frozen, frozen_at),
                            "repository": f"{e.get('restic_base') or 'restic'}/{reg['name']}"}
                    shipped[f"{e['name']}/{reg['name']}"] = {**snap, "digest": file_digest}
                    if say:
                        say(f"{e['name']}: snapshot of {reg['name']}: {time.monotonic() - clock:.1f} s")
                except RuntimeError as exc:
                    errors[e["name"]].append(str(exc))

            # The embassies' snapshots at once: each its own repository in its own vault, of the same frozen copy,
            # so a round (and with it the RPO) is as long as the slowest vault's snapshot, not their sum.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=max(1, len(holders))) as pool:
                list(pool.map(snapshot, holders))  # an exception snapshot() does not catch is the round's, as before
        except RuntimeError as exc:
            for e in holders:
                errors[e["name"]].append(str(exc))
        finally:
            shutil.rmtree(frozen, ignore_errors=True)

    results = []
    for e in cfg["embassies"]:
        name = e["name"]
        prev = state["embassies"].get(name, {})
        files_state = prev.get("files", {})
        registers = []
        for reg in cfg["registers"]:
            if reg["kind"] == "postgres" and reg["name"] in e["postgres"] and e.get("repo"):
                registers.append(postgres_entry(reg, e, info, digests[reg["name"]]))
            elif reg["kind"] == "files" and reg["name"] in e["files"]:
                snap = shipped.get(f"{name}/{reg['name']}") or files_state.get(reg["name"])
                if snap:
                    files_state[reg["name"]] = snap
                # A snapshot carried from an earlier round keeps the digest it was taken with.
                registers.append({"name": reg["name"], "kind": "files",
                                  "repository": snap.get("repository", f"restic/{reg['name']}") if snap else None,
                                  "snapshot_id": snap["snapshot_id"] if snap else None,
                                  "snapshot_time": snap["time"] if snap else None,
                                  "digest": snap["digest"] if snap else None})
        body = {"format": manifest.FORMAT, "stack": cfg["stack"], "state": cfg["state"], "embassy": name,
                "mode": e["mode"], "round": number, "time": iso(started), "previous_sha256": prev.get("sha256"),
                "registers": registers}
        if recovery.new_chain:
            body["new_chain"] = True  # the operator started a new chain beside whatever a vault may hold: signed, on record
        data = manifest.sign(body, private)
        key = manifest.object_key(number)
        entry: dict[str, Any] = {"name": name, "mode": e["mode"], "errors": errors[name], "notes": notes[name],
                                 "registers": registers}
        clock = time.monotonic()
        try:
            if name in recovery.unknown:
                raise LookupError("chain head unknown")
            upload(e["vault"], cfg["ca_file"], key, data)
        except KeyExists:
            entry["errors"].append(f"manifest not written: the vault already holds {key} (home's round state is behind "
                                   "this vault); the next round reads its chain head from the vault")
            entry["manifest"] = None
            state["embassies"].pop(name, None)
        except LookupError:
            entry["manifest"] = None
        except Exception as exc:  # any vault failure: this embassy waits, the others go on
            entry["errors"].append(f"manifest upload failed: {type(exc).__name__}: {str(exc)[:300]}")
            entry["manifest"] = None
        else:
            sha = manifest.sha256(data)
            state["embassies"][name] = {"sha256": sha, "round": number, "key": key, "time": iso(started),
                                        "files": files_state}
            entry["manifest"] = {"key": key, "sha256": sha, "round": number}
        if say:
            say(f"{name}: {'manifest ' + key if entry['manifest'] else 'no manifest'} ({time.monotonic() - clock:.1f} s)"
                f"{' (' + '; '.join(entry['errors']) + ')' if entry['errors'] else ''}")
        results.append(entry)
    state["round"] = number
    write_json(state_dir / "state.json", state)
    report: dict[str, Any] = {"round": number, "started": iso(started), "finished": iso(now_utc()),
                              "embassies": results}
    if recovery.recovered:
        report["recovered"] = True  # heads read from the vaults (state lost, unreadable, or missing embassies)
    if recovery.new_chain:
        report["new_chain"] = True
    write_json(state_dir / "last-round.json", report, mode=0o644)
    return report


def keygen(key_file: Path, pub_file: Path) -> str:
    """Create the home state's manifest key once (0600); print its public key (idempotent)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if not key_file.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        privatefile.create_private(key_file, pem)
    public = manifest.public_key_pem(manifest.load_private_key(key_file.read_bytes()))
    if not pub_file.exists() or pub_file.read_text() != public:
        pub_file.write_text(public)
    return public


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m replication.round")
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--config", default=CONFIG)
    r.add_argument("--new-chain", action="store_true",
                   help="start a new chain where no head can be recovered (the signed manifests record it)")
    k = sub.add_parser("keygen")
    k.add_argument("key_file")
    k.add_argument("pub_file")
    args = parser.parse_args(argv)
    if args.cmd == "keygen":
        print(keygen(Path(args.key_file), Path(args.pub_file)), end="")
        return 0
    cfg = json.loads(Path(args.config).read_text())
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one round at a time (timer and `embassy replicate` may meet)
        report = run_round(cfg, say=lambda m: print(m, file=sys.stderr), new_chain=args.new_chain)
    print(json.dumps(report, sort_keys=True))
    if report.get("refused"):
        print(f"error: {report['refused']['reason']}\nHINT: {report['refused']['hint']}", file=sys.stderr)
        return 1
    failed = [e["name"] for e in report["embassies"] if e["errors"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
