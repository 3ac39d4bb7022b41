"""`embassy restore` on the lab: verified restores at a cold and a warm embassy (digests equal to the
manifest's, the state service answering as home does), a point in time, a tampered vault refused
with nothing started, an unreachable embassy failing fast while another one works, and a bad WAL
segment refusing a warm restore before its standby is promoted.

The lab is shared with the other lab tests: restores from a vault go into a scratch cluster (port
5433) that each test stops; only the unreachable-embassy test promotes a standby (se's), and the
drill's deploy, which runs after this module, clones it again.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from embassy.drill.restore import SCRATCH_PORT, SERVICE_UNIT, stop_restored
from embassy.lab.state import LabState
from embassy.model import load_stack
from embassy.replication import dataplane
from embassy.replication import secrets as controller_secrets
from embassy.targets import LabTarget
from tests.lab.conftest import ROOT, STACK, deploy_once, in_controller_python, ssh
from tests.lab.lab_site import site_target
from tests.lab.test_deploy import SERVICE_QUERY
from tests.lab.test_replication import (
    embassy_cli,
    forged_next_round,
    named_object,
    replicate_once,
    rounds_held,
    wal_key,
)
from tests.lab.vault_storage import Filer, flip_middle_byte

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def deployed(lab: LabState) -> dict[str, Any]:
    deploy_once(lab)  # the session's last deploy when the modules since left it intact (conftest.KEEPS_DEPLOY)
    return replicate_once(lab)


@pytest.fixture
def cleanup(lab: LabState) -> Iterator[list[str]]:
    """Embassies whose restored service and scratch cluster are stopped after the test."""
    used: list[str] = []
    yield used
    target = LabTarget(load_stack(STACK, ROOT), lab)
    for embassy in used:
        stop_restored(target, embassy)


def restore(lab: LabState, embassy: str, *extra: str, timeout: float = 600) -> tuple[int, dict[str, Any], float]:
    start = time.monotonic()
    done = embassy_cli(lab, "restore", "--stack", STACK, "--embassy", embassy, "--json", *extra, timeout=timeout)
    seconds = time.monotonic() - start
    assert done.returncode in (0, 1), done.stderr[-3000:] + done.stdout[-2000:]
    return done.returncode, json.loads(done.stdout), seconds


def service_answers(lab: LabState, address: str, paths: list[str]) -> dict[str, Any]:
    done = in_controller_python(lab, SERVICE_QUERY, f"http://{address}:8088", *paths)
    assert done.returncode == 0, done.stderr
    answers: dict[str, Any] = json.loads(done.stdout)
    return answers


def assert_restored_like_home(lab: LabState, out: dict[str, Any]) -> None:
    assert out["ok"] and out["error"] is None, out["error"]
    assert out["verify"]["intact"]
    assert {r["name"] for r in out["registers"]} == {"population", "land-register", "court-files"}
    for reg in out["registers"]:
        assert reg["verified"] and reg["restored"], reg
        if reg["kind"] == "postgres":
            assert reg["digest"]["tables"] == reg["manifest_digest"]["tables"], reg["name"]
        else:
            assert reg["digest"] == reg["manifest_digest"], reg["name"]
    # The smoke queries, asked again from the controller, answered by the embassy exactly as home answers them.
    paths = [p for p in out["smoke"] if p != "/health"]
    at_embassy = service_answers(lab, out["service"].split("//")[1].split(":")[0], paths)
    at_home = service_answers(lab, lab.host("home").address, paths)
    assert at_embassy == at_home
    assert sum(1 for status, _ in at_embassy.values() if status == 200) >= 3


def proof_of(out: dict[str, Any]) -> dict[str, Any]:
    """What a restore proved: the manifest, each register's method, digests and signed point, the objects verified.
    (Not what it serves beyond the signed point: home's monitor writes on between two restores.)"""
    return {"manifest": out["manifest"], "verified": [c["object"] for c in out["verify"]["checked"]],
            "registers": [{**{k: r[k] for k in ("name", "method", "verified", "restored", "manifest_digest")},
                           "digest": (r["digest"] or {}).get("tables", r["digest"]),
                           "proof": {k: v for k, v in (r["proof"] or {}).items() if k != "beyond_signed"}}
                          for r in out["registers"]]}


def test_cold_embassy_restores_every_register_from_its_vault(lab: LabState, deployed: dict[str, Any],
                                                             cleanup: list[str]) -> None:
    """And through the lab's own site inventory (the generic path: the inventory's SSH, the vault access it
    describes, the controller's secrets for that vault): the same manifest, methods, digests and proof."""
    cleanup.append("ie")
    with rounds_held(lab):  # both restores from one head
        code, out, seconds = restore(lab, "ie")
        assert code == 0, out
        assert_restored_like_home(lab, out)
        assert out["port"] == SCRATCH_PORT and {r["method"] for r in out["registers"]} == {"vault", "restic"}
        assert_proven_at_the_signed_point(out, "archived WAL replayed from this embassy's vault")
        assert seconds < tightest_rto(), seconds  # the stack's promise; how fast it is, the bench measures
        code, by_site, _ = restore(lab, "ie", *site_target(lab))
    assert code == 0, by_site
    assert_restored_like_home(lab, by_site)
    assert_proven_at_the_signed_point(by_site, "archived WAL replayed from this embassy's vault")
    assert proof_of(by_site) == proof_of(out)


def test_a_forged_head_refuses_the_restore_through_either_target(lab: LabState, deployed: dict[str, Any],
                                                                 cleanup: list[str]) -> None:
    """The host nation plants the next round, signed by another key, where the read-only identity lists it: the
    restore is refused through --target lab and through the lab's site inventory alike, naming it; nothing runs."""
    cleanup.append("ie")
    with rounds_held(lab), forged_next_round(lab, "ie") as forged_key:
        refused = [restore(lab, "ie", timeout=300), restore(lab, "ie", *site_target(lab), timeout=300)]
    for code, out, _ in refused:
        assert code == 1 and out["error"]["error"] == "ManifestInvalid", out["error"]
        assert forged_key in out["error"]["message"] and "signed by another key" in out["error"]["message"]
        assert not any(r["restored"] for r in out["registers"]) and out["service"] is None
    assert refused[0][1]["verify"] == refused[1][1]["verify"]


def _psql(lab: LabState, host: str, sql: str, port: int = 5432) -> str:
    return ssh(lab, host, f"sudo runuser -u postgres -- psql -X -Atq -p {port} -d embassy_monitor -c \"{sql}\"").stdout.strip()


def test_point_in_time_restore_brings_back_exactly_the_rows_before_it(lab: LabState, deployed: dict[str, Any],
                                                                       cleanup: list[str]) -> None:
    cleanup.append("ie")
    # The manifest the restore verifies against is the newest before the moment: the module's round (or a later
    # one), from before any probe row; no round of this test's own is needed before the rows.
    _psql(lab, "home", "DROP TABLE IF EXISTS pit_probe; CREATE TABLE pit_probe (id int PRIMARY KEY)")
    time.sleep(1)
    for i in range(1, 6):  # five transactions before T
        _psql(lab, "home", f"INSERT INTO pit_probe VALUES ({i})")
    time.sleep(0.5)
    epoch = float(_psql(lab, "home", "SELECT extract(epoch FROM clock_timestamp())"))  # home's clock
    moment = dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    time.sleep(0.5)
    for i in range(6, 11):  # five after
        _psql(lab, "home", f"INSERT INTO pit_probe VALUES ({i})")
    replicate_once(lab)  # closes and archives the WAL holding all ten
    code, out, _ = restore(lab, "ie", "--target-time", moment)
    assert code == 0, out
    assert out["target_time"].startswith(moment[:19])
    assert all(r["verified"] and r["restored"] for r in out["registers"])
    rows = _psql(lab, "enclave-ie", "SELECT string_agg(id::text, ',' ORDER BY id) FROM pit_probe", port=SCRATCH_PORT)
    assert rows == "1,2,3,4,5"
    newest = dt.datetime.fromisoformat(out["newest_heartbeat"].replace(" ", "T") + ("" if "+" in out["newest_heartbeat"]
                                                                                   else "+00:00"))
    assert newest <= dt.datetime.fromisoformat(moment.replace("Z", "+00:00"))


def refused_with_a_byte_flipped(lab: LabState, embassy: str, f: Filer, key: str) -> dict[str, Any]:
    """`embassy restore` at a warm embassy with a byte of its vault's object `key` (f: that vault) flipped,
    then put back: refused as ManifestInvalid, nothing restored, started or listening, the standby not promoted."""
    path = f.latest_version_file(key)
    original = f.read(path)
    f.write(path, flip_middle_byte(original))
    try:
        code, out, _ = restore(lab, embassy)
    finally:
        f.write(path, original)
    assert code == 1 and not out["ok"]
    assert out["error"]["error"] == "ManifestInvalid", out["error"]
    assert not any(r["restored"] for r in out["registers"])
    host = f"enclave-{embassy}"
    active = ssh(lab, host, f"systemctl is-active {SERVICE_UNIT}; sudo ss -Htln", check=False).stdout
    assert active.splitlines()[0] != "active" and ":8088" not in active and f":{SCRATCH_PORT}" not in active
    assert _psql(lab, host, "SELECT pg_is_in_recovery()") == "t"  # the standby was not promoted
    return out


def test_a_tampered_vault_is_refused_and_nothing_is_started(lab: LabState, deployed: dict[str, Any],
                                                            cleanup: list[str]) -> None:
    cleanup.append("de")
    f = Filer(lab, "de")
    names = sorted(e["FullPath"].rsplit("/", 1)[1] for e in f.entries("manifests"))
    key = f"manifests/{names[-1].removesuffix('.versions')}"
    out = refused_with_a_byte_flipped(lab, "de", f, key)
    assert key in out["error"]["message"], out["error"]


@pytest.fixture
def ie_cut_off(lab: LabState) -> Iterator[None]:
    """enclave-ie and its vault unreachable (their interfaces down), put back after the test."""
    namespaces = [lab.host("ie").netns, lab.vault("ie").netns]
    for ns in namespaces:
        subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "down"], check=True)
    try:
        yield
    finally:
        for ns in namespaces:
            subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)


def test_an_unreachable_embassy_fails_fast_and_a_warm_one_still_restores(lab: LabState, deployed: dict[str, Any],
                                                                         ie_cut_off: None, cleanup: list[str]) -> None:
    code, out, seconds = restore(lab, "ie", timeout=120)
    assert code == 1 and out["error"]["error"] == "HostUnreachable", out["error"]
    assert "enclave-ie" in out["error"]["message"] and seconds < 30, seconds
    # Another embassy still works: se, warm, promotes its standby (the last use of it in this lab; the
    # drill's deploy clones it again).
    cleanup.append("se")
    code, out, seconds = restore(lab, "se")
    assert code == 0, out
    assert_restored_like_home(lab, out)
    assert {r["method"] for r in out["registers"]} == {"standby", "restic"} and out["port"] == 5432
    assert_proven_at_the_signed_point(out, "streamed from home over the replication channel")
    assert seconds < tightest_rto(), seconds


def tightest_rto() -> int:
    """The smallest RTO objective of the stack's registers: what every restore must meet, loaded or not."""
    return min(r.rto_seconds for r in load_stack(STACK, ROOT).registers)


def assert_proven_at_the_signed_point(out: dict[str, Any], source: str) -> None:
    """Each postgres register proven at the head's signed point, with what it serves beyond counted from `source`."""
    for reg in out["registers"]:
        proof = reg["proof"]
        assert proof["signed_round"] == out["manifest"]["round"], reg
        if reg["kind"] == "postgres":
            assert proof["signed_point"] == reg["manifest_digest"]["lsn"], reg
            beyond = proof["beyond_signed"]
            assert beyond["source"].startswith(source), reg
            # Counted from the WAL it read (the received WAL, or the vault's fetched again by pgBackRest), never
            # a number it did not read; how it was read is said beside it.
            assert isinstance(beyond["transactions"], int) and beyond["transactions"] >= 0, reg
            assert beyond["read"] and "pg_waldump" in beyond["read"], reg


def test_a_bad_wal_segment_refuses_a_warm_restore_before_the_standby_is_promoted(
        lab: LabState, deployed: dict[str, Any], cleanup: list[str]) -> None:
    # A warm restore reads the standby, not the repo, yet the repo is proven first: a bad segment in de's
    # vault refuses it, named, with the standby still following home and nothing served.
    cleanup.append("de")
    f = Filer(lab, "de")
    generation = controller_secrets.generation(Path(lab.dir) / "secrets", "de")
    pg, rs = dataplane.pgbackrest_path(generation).lstrip("/"), dataplane.restic_base(generation)
    key = wal_key(f, pg, rs, index=1)  # not the archive's first: its middle is checked by verify's per-file job
    out = refused_with_a_byte_flipped(lab, "de", f, key)
    segment = key.rsplit("/", 1)[1].split("-")[0]
    assert segment in out["error"]["message"], out["error"]
    assert out["verify"]["first_failure"]["object"] == named_object(key, pg, rs), out["verify"]
