"""One replication round on home, run by the agent (systemd timer) or on demand (`embassy replicate`).

    python3 -m replication.round run [--config /etc/embassy/replication.json]
    python3 -m replication.round keygen KEYFILE PUBFILE

A round: digest every postgres register in one snapshot each, close the current WAL segment and wait
(bounded) until every embassy's repo holds it, snapshot every file register with restic into every
embassy that holds it, then write one signed manifest per embassy, chained to that embassy's previous
one, into its vault (Object Lock applies the bucket's COMPLIANCE retention). An embassy whose vault
is unreachable or refuses writes is reported and skipped; the others are not held back, and it
catches up at a later round (its chain links to the last manifest it did receive).

Runs on home as root: stdlib, cryptography, boto3 (Debian packages).
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import digest, hostcmd, manifest, privatefile

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
    import boto3  # Debian's python3-boto3
    from botocore.config import Config

    creds = json.loads(Path(vault["credentials_file"]).read_text())
    return boto3.session.Session().client(
        "s3", endpoint_url=vault["endpoint"], verify=ca_file, region_name=vault.get("region", "us-east-1"),
        aws_access_key_id=creds["access_key_id"], aws_secret_access_key=creds["secret_access_key"],
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}, connect_timeout=5, read_timeout=20))


def upload(vault: dict[str, Any], ca_file: str, key: str, data: bytes) -> None:
    s3_client(vault, ca_file).put_object(Bucket=vault["bucket"], Key=key, Body=data, ContentType="application/json")


# --------------------------------------------------------------------------- what a round ships


def wait_archived(segment: str, repos: list[int], timeout: float) -> dict[str, Any]:
    """Poll pgBackRest (bounded) until every repo's archive reaches `segment`; the last info read."""
    deadline = time.monotonic() + timeout
    while True:
        info = hostcmd.pgbackrest_info(repos)
        archive = hostcmd.repo_archive(info)
        if all(archive.get(r, {}).get("max", "")[8:] >= segment[8:] for r in repos) or time.monotonic() > deadline:
            return info
        time.sleep(0.5)


def postgres_part(cfg: dict[str, Any], timeout: float) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Digests of every postgres register, then the WAL segment that holds them, archived: (digests, info, segment)."""
    digests: dict[str, Any] = {}
    for reg in cfg["registers"]:
        if reg["kind"] == "postgres":
            res = hostcmd.run(["env", "PYTHONPATH=/opt/embassy", "python3", "-m", "replication.digest", "postgres",
                               reg["database"]], user="postgres", timeout=3600)
            if res.returncode != 0:
                raise RuntimeError(f"digest of {reg['name']} failed: {res.stderr.strip()[-500:]}")
            digests[reg["name"]] = json.loads(res.stdout)
    if not digests:
        return digests, {}, ""
    # Close the segment holding the digests' LSNs (pg_walfile_name of a boundary names the closed one).
    segment = hostcmd.psql("postgres", "SELECT pg_walfile_name(pg_switch_wal())")
    repos = [e["repo"] for e in cfg["embassies"] if e.get("repo")]
    return digests, wait_archived(segment, repos, timeout), segment


def snapshot_files(embassy: str, register: str, path: str) -> dict[str, Any]:
    started = now_utc()  # the snapshot's time is its start: a change after it may be missing from it
    res = hostcmd.run(["embassy-restic", embassy, register, "backup", "--json", "--compression", "auto", "--host", "home",
                       "--tag", "embassy", path], timeout=3600)
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


def run_round(cfg: dict[str, Any], *, say: Any = None) -> dict[str, Any]:
    state_dir = Path(cfg["state_dir"])
    state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    state = load_json(state_dir / "state.json", {"round": 0, "embassies": {}})
    number = int(state["round"]) + 1
    started = now_utc()
    private = manifest.load_private_key(Path(cfg["key_file"]).read_bytes())
    errors: dict[str, list[str]] = {e["name"]: [] for e in cfg["embassies"]}

    digests, info, segment = postgres_part(cfg, float(cfg.get("archive_wait_seconds", 30)))
    archive = hostcmd.repo_archive(info)
    statuses = hostcmd.repo_status(info)
    notes: dict[str, list[str]] = {e["name"]: [] for e in cfg["embassies"]}
    for e in cfg["embassies"]:
        repo = e.get("repo")
        if repo and segment and archive.get(repo, {}).get("max", "")[8:] < segment[8:]:
            code, message = statuses.get(repo, (-1, "no status"))
            # A vault that answers but is behind (pgBackRest pushes a segment to the repos in turn, so one
            # dead vault delays the others by its timeout) is lag, not a failure: its manifest says what it holds.
            (notes if code == 0 else errors)[e["name"]].append(
                f"WAL segment {segment} not archived in repo{repo} yet ({message or code})")

    file_digests = {r["name"]: digest.files(r["path"]) for r in cfg["registers"] if r["kind"] == "files"}
    shipped: dict[str, dict[str, Any]] = {}
    for e in cfg["embassies"]:
        for reg in cfg["registers"]:
            if reg["kind"] == "files" and reg["name"] in e["files"]:
                try:
                    snap = {**snapshot_files(e["name"], reg["name"], reg["path"]),
                            "repository": f"{e.get('restic_base') or 'restic'}/{reg['name']}"}
                    shipped[f"{e['name']}/{reg['name']}"] = {**snap, "digest": file_digests[reg["name"]]}
                except RuntimeError as exc:
                    errors[e["name"]].append(str(exc))

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
        data = manifest.sign(body, private)
        key = manifest.object_key(number)
        entry: dict[str, Any] = {"name": name, "mode": e["mode"], "errors": errors[name], "notes": notes[name],
                                 "registers": registers}
        try:
            upload(e["vault"], cfg["ca_file"], key, data)
        except Exception as exc:  # any vault failure: this embassy waits, the others go on
            entry["errors"].append(f"manifest upload failed: {type(exc).__name__}: {str(exc)[:300]}")
            entry["manifest"] = None
        else:
            sha = manifest.sha256(data)
            state["embassies"][name] = {"sha256": sha, "round": number, "key": key, "time": iso(started),
                                        "files": files_state}
            entry["manifest"] = {"key": key, "sha256": sha, "round": number}
        if say:
            say(f"{name}: {'manifest ' + key if entry['manifest'] else 'no manifest'}"
                f"{' (' + '; '.join(entry['errors']) + ')' if entry['errors'] else ''}")
        results.append(entry)
    state["round"] = number
    write_json(state_dir / "state.json", state)
    report = {"round": number, "started": iso(started), "finished": iso(now_utc()), "embassies": results}
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
        report = run_round(cfg, say=lambda m: print(m, file=sys.stderr))
    failed = [e["name"] for e in report["embassies"] if e["errors"]]
    print(json.dumps(report, sort_keys=True))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
