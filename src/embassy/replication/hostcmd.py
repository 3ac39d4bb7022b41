"""Commands the host-side modules run: as postgres (psql, pgBackRest) and restic, with their output.

Runs on the hosts (stdlib only). Everything the agent decides from is read from the tools' JSON.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

STANZA = "home"


def run(argv: list[str], *, timeout: float = 600, user: str | None = None) -> subprocess.CompletedProcess[str]:
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def psql(db: str, sql: str, timeout: float = 60) -> str:
    res = run(["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql], user="postgres",
              timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"psql {db}: {res.stderr.strip()}")
    return res.stdout.strip()


def _repo_info(repo: int, timeout: float) -> dict[str, Any]:
    # One repo per call, with a short I/O timeout: an unreachable vault must not hold up the others.
    try:
        res = run(["pgbackrest", f"--stanza={STANZA}", f"--repo={repo}", "--io-timeout=5", "--output=json", "info"],
                  user="postgres", timeout=timeout)
        data = json.loads(res.stdout)
    except (subprocess.TimeoutExpired, ValueError):
        data = None
    if not isinstance(data, list) or not data:
        return {"repo": [{"key": repo, "status": {"code": 99, "message": "vault unreachable or unreadable"}}]}
    return data[0] if isinstance(data[0], dict) else {}


def pgbackrest_info(repos: list[int], timeout: float = 30) -> dict[str, Any]:
    """`pgbackrest info --output=json` of the stanza, read repo by repo in parallel and merged into one
    stanza document (archive, backup and repo entries keep their repo key)."""
    from concurrent.futures import ThreadPoolExecutor

    merged: dict[str, Any] = {"archive": [], "backup": [], "repo": []}
    with ThreadPoolExecutor(max_workers=max(1, len(repos))) as pool:
        for info in pool.map(lambda r: _repo_info(r, timeout), repos):
            for part in merged:
                merged[part].extend(info.get(part, []) or [])
    return merged


def segment_end_lsn(segment: str) -> int:
    """The LSN just after a 16 MB WAL segment named TTTTTTTTXXXXXXXXYYYYYYYY (default segment size)."""
    log, seg = int(segment[8:16], 16), int(segment[16:24], 16)
    return (log << 32) + (seg + 1) * 0x1000000


def lsn_int(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def lsn_text(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def repo_archive(info: dict[str, Any]) -> dict[int, dict[str, str]]:
    """Per repo key: {"min", "max"} WAL segment names archived there."""
    out: dict[int, dict[str, str]] = {}
    for entry in info.get("archive", []) or []:
        repo = int((entry.get("database") or {}).get("repo-key", 1))
        if entry.get("max"):
            out[repo] = {"min": entry.get("min", ""), "max": entry["max"]}
    return out


def repo_backups(info: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {}
    for backup in info.get("backup", []) or []:
        repo = int((backup.get("database") or {}).get("repo-key", 1))
        out.setdefault(repo, []).append(backup)
    return out


def repo_status(info: dict[str, Any]) -> dict[int, tuple[int, str]]:
    return {int(r.get("key", 0)): (int(r["status"]["code"]), str(r["status"].get("message", "")))
            for r in info.get("repo", []) or [] if isinstance(r.get("status"), dict)}
