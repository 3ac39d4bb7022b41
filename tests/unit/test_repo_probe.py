"""pgBackRest info of a repo whose vault accepts no connection: named unreachable after a quick probe, not after
pgBackRest's own attempt (about five times its io-timeout: 24 to 38 s measured at io-timeout=5), and a round's
wait for the archive neither asks it again nor waits for it."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from embassy.replication import hostcmd
from embassy.replication import round as replication_round

CONF = """[global]
# embassy 'de'
repo1-type=s3
repo1-s3-endpoint=vault-de.lab.internal
repo1-storage-port=8443
# embassy 'se'
repo2-s3-endpoint=vault-se.lab.internal
repo2-cipher-pass=repo3-s3-endpoint=not-a-key
repo3-s3-endpoint=vault-ie.example
[home]
pg1-path=/var/lib/postgresql/15/main
"""


def test_endpoints_are_read_from_the_config() -> None:
    # repo3 has no storage-port: pgBackRest's default 443; a value that merely contains a key is not one
    assert hostcmd.repo_endpoints(CONF) == {1: ("vault-de.lab.internal", 8443), 2: ("vault-se.lab.internal", 443),
                                            3: ("vault-ie.example", 443)}


def test_a_closed_port_is_unreachable_without_running_pgbackrest(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]  # bound, not listening: refused at once
        ran: list[list[str]] = []
        monkeypatch.setattr(hostcmd, "run", lambda argv, **kw: ran.append(argv))
        info = hostcmd._repo_info(1, 30, ("127.0.0.1", port))
    assert ran == []  # pgBackRest never asked
    assert info["repo"][0]["status"]["code"] == 99 and info["repo"][0]["unreachable"]
    assert f"127.0.0.1:{port}" in info["repo"][0]["status"]["message"]
    assert hostcmd.unreachable_repos(info) == {1}


def test_a_listening_vault_is_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        out = '[{"repo": [{"key": 2, "status": {"code": 0, "message": "ok"}}], "archive": []}]'
        monkeypatch.setattr(hostcmd, "run", lambda argv, **kw: subprocess.CompletedProcess(argv, 0, out, ""))
        info = hostcmd._repo_info(2, 30, ("127.0.0.1", port))
    assert info["repo"][0]["status"]["code"] == 0 and hostcmd.unreachable_repos(info) == set()


def _info(repo: int, top: str | None, unreachable: bool = False) -> dict[str, Any]:
    if unreachable:
        return {"repo": [{"key": repo, "status": {"code": 99, "message": "gone"}, "unreachable": True}], "archive": []}
    archive = [{"database": {"repo-key": repo}, "min": "000000010000000000000001", "max": top}] if top else []
    return {"repo": [{"key": repo, "status": {"code": 0, "message": "ok"}}], "archive": archive, "backup": []}


def test_the_wait_stops_asking_a_dead_repo_and_ends_when_the_others_hold_the_segment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[list[int]] = []
    polls = iter([{2: "000000010000000000000004", 3: "000000010000000000000005"},
                  {2: "000000010000000000000005", 3: "000000010000000000000005"}])

    def info(repos: list[int]) -> dict[str, Any]:
        asked.append(list(repos))
        tops = next(polls)
        parts = [_info(r, None, unreachable=True) if r == 1 else _info(r, tops[r]) for r in repos]
        return {k: [x for p in parts for x in p.get(k, [])] for k in ("archive", "backup", "repo")}

    monkeypatch.setattr(hostcmd, "pgbackrest_info", info)
    monkeypatch.setattr(replication_round.time, "sleep", lambda s: None)
    got = replication_round.wait_archived("000000010000000000000005", [1, 2, 3], timeout=600)
    assert asked == [[1, 2, 3], [2, 3]]  # the dead repo asked once; the wait ended without the deadline
    assert hostcmd.repo_status(got)[1][0] == 99 and hostcmd.unreachable_repos(got) == {1}
    assert hostcmd.repo_archive(got) == {2: {"min": "000000010000000000000001", "max": "000000010000000000000005"},
                                         3: {"min": "000000010000000000000001", "max": "000000010000000000000005"}}


def test_a_repo_that_answers_but_lags_is_waited_for_until_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    # The adversary: a vault that answers but never takes the segment must not be dropped from the wait.
    asked: list[list[int]] = []

    def info(repos: list[int]) -> dict[str, Any]:
        asked.append(list(repos))
        parts = [_info(r, "000000010000000000000004") for r in repos]
        return {k: [x for p in parts for x in p.get(k, [])] for k in ("archive", "backup", "repo")}

    monkeypatch.setattr(hostcmd, "pgbackrest_info", info)
    monkeypatch.setattr(replication_round.time, "sleep", lambda s: None)
    replication_round.wait_archived("000000010000000000000005", [1, 2], timeout=0.05)
    assert len(asked) >= 1 and all(a == [1, 2] for a in asked)
