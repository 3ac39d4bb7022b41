"""The restore-time pgBackRest check: `verify --set` of the backup set the head manifest names, where the host's
pgBackRest has it (2.55 on), else the whole repo (2.45 on Debian 12); what it proves, and what it refuses.

The adversary is the host nation that holds the vault: it alters or removes a WAL segment or a backup file the
chosen manifest needs, and wants the restore to go ahead (or to be told "verified" for less than it reads)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from embassy.drill import rehearsal
from embassy.replication import manifest
from embassy.replication import verify as v

LABEL = "20261202-100000F"
INCR = "20261202-100000F_20261202-110000I"
HEAD = manifest.Verified("manifests/0000000007.json", {"round": 7, "registers": [
    {"name": "population", "kind": "postgres", "backup_label": LABEL,
     "wal": {"first": "000000010000000000000002", "last": "000000010000000000000009"}},
    {"name": "land-register", "kind": "postgres", "backup_label": LABEL,
     "wal": {"first": "000000010000000000000002", "last": "000000010000000000000009"}},
    {"name": "court-files", "kind": "files", "snapshot_id": "ab" * 32}]}, "cd" * 32)


def info(*backups: dict[str, Any], archive_max: str = "000000010000000000000009") -> str:
    return json.dumps([{"name": "home", "archive": [{"id": "17-1", "min": "000000010000000000000001",
                                                       "max": archive_max}], "backup": list(backups)}])


FULL = {"label": LABEL, "prior": None, "archive": {"start": "000000010000000000000004",
                                                   "stop": "000000010000000000000004"}}


def set_output(*, wal: tuple[str, str] = ("000000010000000000000004", "000000010000000000000009"),
               backups: tuple[tuple[str, str, int, int], ...] = ((LABEL, "valid", 980, 980),),
               invalid: str = "") -> str:
    lines = [v.SET_MARK, "P00   INFO: verify command begin 2.55.1: --set=... --stanza=home"]
    lines.append(f"P00 DETAIL: archiveId: 17-1, wal start: {wal[0]}, wal stop: {wal[1]}")
    lines += [invalid] if invalid else []
    lines += ["stanza: home", "status: " + ("error" if invalid else "ok"), "  Results:",
              f"  archiveId: 17-1, total WAL checked: 6, total valid WAL: {5 if invalid else 6}",
              f"    missing: 0, checksum invalid: {1 if invalid else 0}, size invalid: 0, other: 0"]
    for label, status, checked, valid in backups:
        lines += [f"  backup: {label}, status: {status}, total files checked: {checked}, total valid files: {valid}",
                  f"    missing: 0, checksum invalid: {checked - valid}, size invalid: 0, other: 0"]
    return "\n".join(lines) + "\n"


WHOLE = ("stanza: home\nstatus: ok\n  Results:\n  archiveId: 17-1, total WAL checked: 9, total valid WAL: 9\n"
         "    missing: 0, checksum invalid: 0, size invalid: 0, other: 0\n"
         f"  backup: {LABEL}, status: valid, total files checked: 980, total valid files: 980\n")


class Host:
    """The embassy host's answers: the set-scoped command's, then (if asked) the whole repo's."""

    def __init__(self, first: str, *, whole: str = WHOLE, backups: tuple[dict[str, Any], ...] = (FULL,)) -> None:
        self.first, self.whole, self.backups, self.sent = first, whole, backups, []  # type: ignore[var-annotated]

    def __call__(self, _where: Any, _embassy: str, command: str, timeout: float = 0) -> subprocess.CompletedProcess[str]:
        self.sent.append(command)
        text = self.first if "--set=" in command else self.whole
        return subprocess.CompletedProcess([], 0, text + "\n" + info(*self.backups), "")


def check(monkeypatch: pytest.MonkeyPatch, host: Host, scope: str = "set") -> v.Result:
    monkeypatch.setattr(v, "ssh", host)
    result = v.Result("de")
    v.check_pgbackrest(None, "de", HEAD, result, scope=scope)
    return result


def test_the_set_and_its_wal_to_the_manifests_last_segment_are_what_a_restore_is_told_is_verified(
        monkeypatch: pytest.MonkeyPatch) -> None:
    host = Host(set_output())
    result = check(monkeypatch, host)
    assert result.intact and len(host.sent) == 1 and f"verify --set={LABEL}" in host.sent[0]
    ok = next(c for c in result.checked if c["object"].startswith("pgbackrest:set/"))
    assert ok["object"] == f"pgbackrest:set/{LABEL}"
    assert ok["detail"] == f"backups {LABEL} and WAL 000000010000000000000004 to 000000010000000000000009"
    assert "pgbackrest:repo" not in {c["object"] for c in result.checked}
    assert "what a restore reads" in rehearsal.checked_what(ok["object"])


def test_an_older_pgbackrest_is_detected_by_trying_and_the_whole_repo_is_verified(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 2.45 parses --set (internal there) but does not list it among verify's options: the shell runs the whole verify.
    command = v.verify_command(LABEL)
    assert command.startswith(f"if {v.SET_LISTED}; then echo '{v.SET_MARK}'; ") and command.count(" verify 2>&1") == 1
    assert subprocess.run(["sh", "-n", "-c", command], check=False).returncode == 0
    host = Host(WHOLE)  # what the shell prints then: no marker
    result = check(monkeypatch, host)
    assert result.intact and result.checked[0]["object"] == "pgbackrest:repo"


def test_the_scheduled_check_verifies_the_whole_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    host = Host(set_output())
    result = check(monkeypatch, host, scope="repo")
    assert "--set=" not in host.sent[0] and result.checked[0]["object"] == "pgbackrest:repo"


@pytest.mark.parametrize("bad", [
    "P01   INFO: invalid result 17-1/0000000100000000/000000010000000000000006-" + "a" * 40 + ".zst: checksum",
    "P01   INFO: invalid checksum " + LABEL + "/pg_data/base/16384/16390.zst",
])
def test_an_altered_wal_segment_or_backup_file_of_the_set_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch,
                                                                             bad: str) -> None:
    result = check(monkeypatch, Host(set_output(invalid=bad)))
    failure = result.first_failure or {}
    assert not result.intact and failure["object"] == "pgbackrest:" + v.bad_file(bad)  # type: ignore[operator]


def test_a_backup_of_the_set_not_valid_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    result = check(monkeypatch, Host(set_output(backups=((LABEL, "invalid", 980, 979),))))
    assert not result.intact and (result.first_failure or {})["object"].startswith("pgbackrest:")


@pytest.mark.parametrize(("output", "why"), [
    # The host nation hides the WAL after segment 7 from the check (removed, or pgBackRest stops early): the set's
    # verify proves less than the restore reads.
    (set_output(wal=("000000010000000000000004", "000000010000000000000007")), "no contiguous range"),
    # A gap: two ranges around a missing segment.
    (set_output(wal=("000000010000000000000005", "000000010000000000000009")), "no contiguous range"),
    # The set's verify did not list the set at all.
    (set_output(backups=(("20261201-100000F", "valid", 10, 10),)), "not among those it verified"),
])
def test_a_set_check_that_proves_less_than_a_restore_reads_falls_back_to_the_whole_repo(
        monkeypatch: pytest.MonkeyPatch, output: str, why: str) -> None:
    host = Host(output)
    result = check(monkeypatch, host)
    assert len(host.sent) == 2 and "--set=" not in host.sent[1]
    first = result.checked[0]
    assert first["object"] == "pgbackrest:repo" and why in first["detail"] and "the whole repository" in first["detail"]


def test_a_fallback_whole_verify_still_refuses_what_it_finds(monkeypatch: pytest.MonkeyPatch) -> None:
    bad = "P01   INFO: invalid result 17-1/0000000100000000/000000010000000000000002-" + "b" * 40 + ".zst: checksum"
    host = Host(set_output(wal=("000000010000000000000004", "000000010000000000000007")),
                whole=WHOLE.replace("status: ok", "status: error") + bad + "\n")
    result = check(monkeypatch, host)
    assert not result.intact and "000000010000000000000002" in (result.first_failure or {})["object"]


def test_an_incremental_set_needs_every_backup_it_references_verified(monkeypatch: pytest.MonkeyPatch) -> None:
    head = manifest.Verified(HEAD.key, {**HEAD.body, "registers": [
        {**r, "backup_label": INCR} if r["kind"] == "postgres" else r for r in HEAD.body["registers"]]}, HEAD.sha256)
    incr = {"label": INCR, "prior": LABEL, "archive": {"start": "000000010000000000000006"}}
    only_incr = Host(set_output(wal=("000000010000000000000006", "000000010000000000000009"),
                                backups=((INCR, "valid", 20, 20),)), backups=(FULL, incr))
    monkeypatch.setattr(v, "ssh", only_incr)
    result = v.Result("de")
    v.check_pgbackrest(None, "de", head, result, scope="set")
    assert len(only_incr.sent) == 2 and f"backup {LABEL} is not among those it verified" in result.checked[0]["detail"]
    both = Host(set_output(wal=("000000010000000000000006", "000000010000000000000009"),
                           backups=((LABEL, "valid", 980, 980), (INCR, "valid", 20, 20))), backups=(FULL, incr))
    monkeypatch.setattr(v, "ssh", both)
    result = v.Result("de")
    v.check_pgbackrest(None, "de", head, result, scope="set")
    assert len(both.sent) == 1 and result.checked[0]["object"] == f"pgbackrest:set/{INCR}"


def test_two_backup_sets_named_by_one_manifest_are_checked_as_the_whole_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    # One cluster has one set; a manifest naming two cannot be proven by one `--set`.
    head = manifest.Verified(HEAD.key, {**HEAD.body, "registers": [
        {**HEAD.body["registers"][0]}, {**HEAD.body["registers"][1], "backup_label": "20261203-100000F"}]}, HEAD.sha256)
    host = Host(set_output())
    monkeypatch.setattr(v, "ssh", host)
    v.check_pgbackrest(None, "de", head, v.Result("de"), scope="set")
    assert "--set=" not in host.sent[0]
