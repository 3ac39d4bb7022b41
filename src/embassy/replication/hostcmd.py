"""Commands the host-side modules run: as postgres (psql, pgBackRest) and restic, with their output.

Runs on the hosts (stdlib only, and this package's vaultnet). Everything the agent decides from is read from the
tools' JSON.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from . import vaultnet

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


PGBACKREST_CONF = "/etc/pgbackrest/pgbackrest.conf"  # dataplane.PGBACKREST_CONF (this module runs on the hosts)
PROBE_SECONDS = vaultnet.PROBE_SECONDS  # a vault that does not accept a TCP connection within this is unreachable


def repo_endpoints(conf: str) -> dict[int, tuple[str, int]]:
    """repoN -> (host, port) of its S3 endpoint, from pgbackrest.conf's text (S3 repos only)."""
    hosts: dict[int, str] = {}
    ports: dict[int, int] = {}
    for line in conf.splitlines():
        key, _, value = line.strip().partition("=")
        m = re.fullmatch(r"repo(\d+)-(s3-endpoint|storage-port)", key)
        if m and value:
            if m.group(2) == "s3-endpoint":
                hosts[int(m.group(1))] = value.strip()
            elif value.strip().isdigit():
                ports[int(m.group(1))] = int(value.strip())
    return {n: (host, ports.get(n, 443)) for n, host in hosts.items()}


def answers(endpoint: tuple[str, int] | None, timeout: float = PROBE_SECONDS) -> bool:
    """Does the endpoint accept a TCP connection within `timeout`? (None: unknown, so let pgBackRest try.)"""
    return endpoint is None or vaultnet.refusal(endpoint, timeout) is None


def _unreachable(repo: int, why: str, refused: bool = False) -> dict[str, Any]:
    # refused: the vault accepted no connection at all (the probe), not an error pgBackRest reported
    return {"repo": [{"key": repo, "status": {"code": 99, "message": why}, **({"unreachable": True} if refused else {})}]}


def _repo_info(repo: int, timeout: float, endpoint: tuple[str, int] | None = None) -> dict[str, Any]:
    # One repo per call, with a short I/O timeout: an unreachable vault must not hold up the others. A vault
    # that does not even accept a connection is named unreachable after the probe: pgBackRest's own attempt
    # costs about five times its io-timeout (a request per info file, each retried until io-timeout): measured
    # 24 to 38 s at io-timeout=5 against a cut-off vault, on every poll of a round's wait for the archive.
    if not answers(endpoint):
        host, port = endpoint or ("", 0)
        return _unreachable(repo, f"vault unreachable: {host}:{port} accepts no connection within {PROBE_SECONDS:g} s",
                            refused=True)
    try:
        res = run(["pgbackrest", f"--stanza={STANZA}", f"--repo={repo}", "--io-timeout=5", "--output=json", "info"],
                  user="postgres", timeout=timeout)
        data = json.loads(res.stdout)
    except (subprocess.TimeoutExpired, ValueError):
        data = None
    if not isinstance(data, list) or not data:
        return _unreachable(repo, "vault unreachable or unreadable")
    return data[0] if isinstance(data[0], dict) else {}


def _endpoints() -> dict[int, tuple[str, int]]:
    try:
        return repo_endpoints(Path(PGBACKREST_CONF).read_text())
    except OSError:
        return {}


def pgbackrest_info(repos: list[int], timeout: float = 30) -> dict[str, Any]:
    """`pgbackrest info --output=json` of the stanza, read repo by repo in parallel and merged into one
    stanza document (archive, backup and repo entries keep their repo key)."""
    from concurrent.futures import ThreadPoolExecutor

    endpoints = _endpoints()
    merged: dict[str, Any] = {"archive": [], "backup": [], "repo": []}
    with ThreadPoolExecutor(max_workers=max(1, len(repos))) as pool:
        for info in pool.map(lambda r: _repo_info(r, timeout, endpoints.get(r)), repos):
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


def unreachable_repos(info: dict[str, Any]) -> set[int]:
    """Repos whose vault accepted no connection (the probe in pgbackrest_info)."""
    return {int(r.get("key", 0)) for r in info.get("repo", []) or [] if r.get("unreachable")}


def repo_status(info: dict[str, Any]) -> dict[int, tuple[int, str]]:
    return {int(r.get("key", 0)): (int(r["status"]["code"]), str(r["status"].get("message", "")))
            for r in info.get("repo", []) or [] if isinstance(r.get("status"), dict)}
