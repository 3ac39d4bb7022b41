"""pyinfra facts and operations of the data plane: read what pgBackRest and restic say (their JSON),
then yield the smallest command, or `host.noop` when nothing needs doing (as pyinfra's own postgres
operations do).
"""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import FactBase, operation
from pyinfra.facts.server import Command

from embassy.home.ops import as_user


def _json(output: list[str]) -> Any:
    try:
        return json.loads("\n".join(output))
    except ValueError:
        return None


class PgBackRestRepos(FactBase):
    """Per repo key of the stanza: {"status": pgBackRest's status code, "backups": count}; {} without a stanza."""

    def command(self, stanza: str = "home", paths: tuple[str, ...] = ()) -> str:
        # `info` exits non-zero when a repo has no stanza yet: its JSON is still what we read. `paths`: the repo
        # paths the deploy is about to configure (facts are read before the new config is written: a re-key).
        where = "".join(f" --repo{i}-path={p}" for i, p in enumerate(paths, 1))
        return as_user("postgres", f"pgbackrest --stanza={stanza}{where} --output=json info 2>/dev/null; true")

    def requires_command(self, *args: Any, **kwargs: Any) -> str:
        return "pgbackrest"

    @staticmethod
    def default() -> dict[int, dict[str, int]]:
        return {}

    def process(self, output: list[str]) -> dict[int, dict[str, int]]:
        data = _json(output)
        if not isinstance(data, list) or not data:
            return {}
        stanza = data[0]
        backups: dict[int, int] = {}
        for b in stanza.get("backup", []) or []:
            key = int((b.get("database") or {}).get("repo-key", 1))
            backups[key] = backups.get(key, 0) + 1
        return {int(r["key"]): {"status": int(r["status"]["code"]), "backups": backups.get(int(r["key"]), 0)}
                for r in stanza.get("repo", []) or []}


class ResticSnapshots(FactBase):
    """The snapshots of one register's repository at one embassy; None when there is no repository."""

    def command(self, embassy: str, register: str, folder: str = "restic") -> str:
        # `folder`: the key generation's repositories, whatever the host's environment file still names.
        return (f"EMBASSY_RESTIC_FOLDER={folder} embassy-restic {embassy} {register} --no-lock snapshots --json "
                "2>/dev/null || echo null")

    def requires_command(self, *args: Any, **kwargs: Any) -> str:
        return "restic"

    def process(self, output: list[str]) -> list[dict[str, Any]] | None:
        data = _json(output)
        return data if isinstance(data, list) else None


# pgBackRest `info` status codes: 0 ok (backups), 2 stanza without backups; anything else: no stanza there.
STANZA_EXISTS = {0, 2}


@operation()
def pgbackrest_stanza(repos: list[int], paths: tuple[str, ...] = (), stanza: str = "home") -> Generator[str, None, None]:
    """The stanza in every repo (created once, right after archiving starts; again in a key generation's new repos)."""
    got = host.get_fact(PgBackRestRepos, stanza=stanza, paths=paths)
    if got and all(got.get(n, {}).get("status") in STANZA_EXISTS for n in repos):
        host.noop(f"stanza {stanza} exists in repos {repos}")
        return
    yield as_user("postgres", f"pgbackrest --stanza={stanza} stanza-create")


@operation()
def record_public_key(path_on_host: str, dest: str) -> Generator[str, None, None]:
    """Copy the manifest public key from home to the controller's record (the lab state): never the private key."""
    pem = host.get_fact(Command, f"cat {path_on_host}")
    if not pem or "PUBLIC KEY" not in pem:
        raise RuntimeError(f"no manifest public key at {path_on_host} on {host.name}")
    target = Path(dest)
    if not target.exists() or target.read_text() != pem + "\n":
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(pem + "\n")
    host.noop(f"manifest public key recorded in {dest}")
    return
    yield  # a generator that changes nothing on the host
