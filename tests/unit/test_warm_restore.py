"""A warm restore's decisions, against a scripted embassy host: it uses the standby only when it is held at or
before every signed point of the head (else the vault, saying why), refuses a standby that paused past the
point it was told, and reports per register what it proved and what it serves beyond (the real PostgreSQL
side of this is tests/unit/test_standby_hold.py; the whole path runs in tests/lab/test_restore.py)."""

from __future__ import annotations

import json
import subprocess
import typing
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from embassy.drill import restore
from embassy.errors import RestoreFailed
from embassy.replication import standby
from embassy.replication.manifest import Verified
from embassy.replication.pgmajor import Postgres

BODY: dict[str, Any] = {"round": 7, "registers": [
    {"name": "population", "kind": "postgres", "digest": {"lsn": "0/5000CE8", "tables": {}}},
    {"name": "land-register", "kind": "postgres", "digest": {"lsn": "0/5001030", "tables": {}}},
    {"name": "court-files", "kind": "files", "snapshot_id": "abcd1234", "digest": {"merkle_root": "00"}}]}


class Host:
    """Answers the commands a warm restore sends, from a script of (substring, stdout); records them."""

    def __init__(self, answers: list[tuple[str, str]]) -> None:
        self.answers, self.sent, self.said = answers, [], []  # type: ignore[var-annotated]
        self.host = SimpleNamespace(name="enclave-de")
        self.pg = Postgres(17)  # a trixie host: every path and the service are 17's
        self.scratch = restore.scratch_dir(self.pg)
        self.outcome = restore.Outcome("rehearsal", "de", "warm")
        self.outcome.manifest = Verified("manifests/0000000007.json", BODY, "ab" * 32)

    def sh(self, command: str, *, timeout: float = 600, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        self.sent.append(command)
        for key, out in self.answers:
            if key in command:
                return subprocess.CompletedProcess(command, 0, out, "")
        return subprocess.CompletedProcess(command, 0, "", "")

    def must(self, command: str, what: str, *, timeout: float = 600, stdin: str | None = None) -> str:
        return self.sh(command).stdout

    def psql(self, port: int, db: str, sql: str, timeout: float = 60) -> str:
        return self.sh(f"psql -p {port} -d {db} -c {sql}").stdout.strip()

    def step(self, name: str) -> Any:
        return nullcontext()

    def say(self, text: str) -> None:
        self.said.append(text)


PG = Postgres(17)


def _postgres() -> list[restore.RegisterOutcome]:
    return [restore.RegisterOutcome("population", "postgres", 1), restore.RegisterOutcome("land-register", "postgres", 2)]


@pytest.mark.parametrize(("replayed", "usable"), [("0/4000100", True), ("0/5000CE8", True), ("0/5000D00", False)])
def test_the_standby_is_used_only_when_held_at_or_before_every_signed_point(replayed: str, usable: bool) -> None:
    # The adversary: a standby that replayed past the signed point (its hold removed, or never set) would serve
    # a state no signature covers; the restore then goes to the vault and says why.
    host = Host([("pg_is_in_recovery", f"t|{replayed}\n")])
    assert restore._standby_caught_up(typing.cast(restore.Session, host), BODY, _postgres()) is usable
    assert usable or any("past the signed point 0/5000CE8" in s for s in host.said)


def test_a_promoted_standby_or_a_manifest_without_points_goes_to_the_vault() -> None:
    host = Host([("pg_is_in_recovery", "f|\n")])
    assert not restore._standby_caught_up(typing.cast(restore.Session, host), BODY, _postgres())
    host = Host([("pg_is_in_recovery", "t|0/1000000\n")])
    body = {"round": 7, "registers": [{"name": "population", "kind": "postgres", "digest": {"tables": {}}}]}
    assert not restore._standby_caught_up(typing.cast(restore.Session, host), body, _postgres()[:1])


def _held(conf: str, state: str) -> str:
    """What the host answers to the restore's one read of the hold file and the replay state."""
    return f"{conf}{restore.HOLD_MARK}\n{state}\n"


def test_a_standby_that_pauses_past_the_point_it_was_told_is_refused() -> None:
    host = Host([(f"cat {standby.hold_file(PG)}", _held(standby.hold_conf("0/5000CE8"), "paused|0/5000D90"))])
    with pytest.raises(RestoreFailed, match="past the signed point 0/5000CE8"):
        restore.hold_standby_at(typing.cast(restore.Session, host), "0/5000CE8", "round 7", timeout=1)
    assert not any("systemctl restart" in c for c in host.sent)  # already held there: no restart


def test_a_hold_elsewhere_is_moved_with_a_restart() -> None:
    host = Host([(f"cat {standby.hold_file(PG)}", _held(standby.hold_conf("0/4000000"), "paused|0/4000000")),
                 ("pg_get_wal_replay_pause_state", "paused|0/5000CE8\n")])
    restore.hold_standby_at(typing.cast(restore.Session, host), "0/5000CE8", "round 7", timeout=1)
    moved = [c for c in host.sent if "systemctl restart" in c]
    assert moved and "0/5000CE8" in moved[0] and standby.hold_file(PG) in moved[0]
    assert "/var/lib/postgresql/17/main/embassy-hold.conf" in moved[0] and "systemctl restart postgresql@17-main" in moved[0]
    polled = host.sent[host.sent.index(moved[0]) + 1:]
    assert len(polled) == 1 and "sleep 0.1" in polled[0]  # the wait polled on the host: one round trip


def test_a_standby_that_never_pauses_is_refused_naming_it() -> None:
    # The host nation withholds the WAL up to the signed point: the standby never pauses there; refused, bounded.
    host = Host([(f"cat {standby.hold_file(PG)}", _held(standby.hold_conf("0/4000000"), "paused|0/4000000")),
                 ("pg_get_wal_replay_pause_state", "not paused|0/4800000\n")])
    with pytest.raises(RestoreFailed, match="did not reach the signed point 0/5000CE8"):
        restore.hold_standby_at(typing.cast(restore.Session, host), "0/5000CE8", "round 7", timeout=1)


def test_registers_from_the_vault_or_restic_say_what_their_proof_covers() -> None:
    files = restore.RegisterOutcome("court-files", "files", 3)
    proof = restore.signed_proof(files, BODY["registers"][2], 7)
    assert proof == {"signed_round": 7, "signed_point": "restic snapshot abcd1234",
                     "beyond_signed": {"transactions": 0, "source": restore.FILES_SOURCE}}
    cold = restore.signed_proof(_postgres()[0], BODY["registers"][0], 7)
    assert cold["signed_point"] == "0/5000CE8" and cold["beyond_signed"]["transactions"] is None
    assert "not counted" in cold["beyond_signed"]["source"]


def test_wal_segments_are_named_as_postgresql_names_them() -> None:
    assert restore.segment_name(1, standby.lsn_int("0/5000CE8")) == "000000010000000000000005"
    assert restore.segment_name(2, standby.lsn_int("1/FF000000")) == "0000000200000001000000FF"


def test_the_service_starts_in_one_round_trip_with_its_config_intact() -> None:
    # One command: the user, the code (stdin), the config (carried in the command, decoded on the host), the files'
    # group, the unit. The config must arrive byte for byte: it names what the service serves.
    import base64
    import re

    config = {"bind": "10.0.0.20", "port": 8088, "conninfo": "host=/var/run/postgresql port=5432",
              "databases": {"population": "population"}, "files": {"court-files": "/srv/embassy-restore/x"}}
    command = restore.service_command(config)
    carried = re.search(r"echo ([A-Za-z0-9+/=]+) \| base64 -d", command)
    assert carried and json.loads(base64.b64decode(carried.group(1))) == config
    for part in ("useradd --system", "install -m 644 /dev/stdin /opt/embassy/state_service.py",
                 f"chgrp -R {restore.SERVICE_USER} {restore.FILES_ROOT}", f"systemd-run --unit {restore.SERVICE_UNIT}"):
        assert part in command
    assert "chgrp" not in restore.service_command({**config, "files": {}})
    assert subprocess.run(["sh", "-n", "-c", command], check=False).returncode == 0  # parses as one shell command


def test_the_smoke_queries_read_their_keys_on_the_host_in_the_same_round_trip(tmp_path: Path) -> None:
    host = Host([])
    host.outcome.port = 5432
    config = {"bind": "10.0.0.20", "databases": {"population": "population", "land-register": "land_register"},
              "files": {"court-files": "/srv/embassy-restore/srv/registers/court-files"}}
    paths = restore.smoke_paths(typing.cast(restore.Session, host), config)
    assert host.sent == []  # nothing asked before the smoke command itself
    assert paths[0] == "/health" and "/registers/population/persons/37605030299" in paths
    assert any("SELECT isikukood FROM persons ORDER BY id LIMIT 1" in p and p.startswith('"/registers/population/')
               for p in paths)
    assert any("-d land_register" in p and "</dev/null" in p for p in paths)  # never reads the smoke program's stdin
    # The words, expanded by a real shell on real case files (psql stood in for, sudo dropped), give the paths the
    # checks expect; the smoke program's stdin is left to it. (A redirect on the pipeline's reader once cut the pipe.)
    folder = tmp_path / "court-files"
    for number, name in (("2-24-1002", "b"), ("2-24-1001", "a")):
        (folder / name).mkdir(parents=True)
        (folder / name / "case.json").write_text(json.dumps({"number": number}))
    words = " ".join(paths).replace("sudo runuser -u postgres -- psql", "echo").replace("sudo ", "") \
        .replace("/srv/embassy-restore/srv/registers/court-files", str(folder))
    shown = subprocess.run(["sh", "-c", f"for w in {words}; do echo \"$w\"; done; cat"], input="the smoke program",
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert shown[0] == "/health" and shown[1].startswith("/registers/population/persons/-X -A -t -q -p 5432")
    assert shown[-2:] == ["/registers/court-files/files/2-24-1001", "the smoke program"]
