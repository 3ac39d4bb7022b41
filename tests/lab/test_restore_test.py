"""Restore tests on the lab (issue 25), in one module over the session's shared lab (no new bring-up).

A restore test at a cold (ie) and a warm (de) embassy passes and leaves home serving, the standby held and
streaming, and no scratch data behind; a tampered vault makes it fail naming the object; a run of the timer's
unit on the embassy host (`systemctl start`) writes a signed, locked record that `status` reads (its signature
checked with `cryptography` directly); a record edited in the vault's storage makes `status --json` show the
restore tests as not established, naming it, within one call. That a second deploy changes nothing on any host
(the restore-test timer, units, keys and config included) is tests/lab/test_deploy.py's
test_second_run_changes_nothing: not run twice here.
"""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from embassy.home.generator import Spec
from embassy.lab.state import LabState
from embassy.replication import restoretest
from embassy.replication.standby import RECEIVER_UNIT
from tests.lab.conftest import STACK, ssh
from tests.lab.test_replication import embassy_cli, replicate_once
from tests.lab.vault_storage import Filer, flip_middle_byte

pytestmark = pytest.mark.lab

# in any major's tree: the host's (15 on bookworm, 17 on trixie) and none other
SCRATCH_GONE = (f"! sudo sh -c 'ls -d /var/lib/postgresql/*/{restoretest.SCRATCH_NAME}' 2>/dev/null && "
                f"test ! -e {restoretest.FILES_DIR} && "
                f"! sudo ss -Htln | grep -q ':{restoretest.PORT} '")


@pytest.fixture(scope="module")
def deployed(lab: LabState) -> dict[str, Any]:
    done = embassy_cli(lab, "deploy", "--target", "lab", "--stack", STACK, "--json", "--size-mb", f"{Spec.size_mb:g}",
                       timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    return replicate_once(lab)


def restore_test(lab: LabState, embassy: str, *extra: str) -> tuple[int, dict[str, Any], float]:
    start = time.monotonic()
    done = embassy_cli(lab, "restore-test", "--stack", STACK, "--embassy", embassy, "--json", *extra, timeout=900)
    assert done.returncode in (0, 1), done.stderr[-3000:] + done.stdout[-2000:]
    return done.returncode, json.loads(done.stdout), time.monotonic() - start


def status(lab: LabState) -> tuple[int, dict[str, Any]]:
    done = embassy_cli(lab, "status", "--stack", STACK, "--json", timeout=300)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    return done.returncode, json.loads(done.stdout)


def test_restore_tests_pass_leave_nothing_behind_and_are_recorded(lab: LabState, deployed: dict[str, Any]) -> None:
    times = {}
    # The cold and the warm embassy's restore tests at once, as their hosts' timers may run them: each on its own host
    # from its own vault, home untouched; each is checked below as if it had run alone.
    with ThreadPoolExecutor(2) as pool:
        ran = dict(zip(("ie", "de"), pool.map(lambda e: restore_test(lab, e, "--point", "latest"), ("ie", "de")),
                       strict=True))
    for embassy, (code, out, seconds) in ran.items():
        times[embassy] = (round(seconds, 1), out["seconds"], {r["name"]: r["seconds"] for r in out["registers"]})
        assert code == 0 and out["passed"], (out["failure"], out["registers"])
        assert out["failure"] is None and out["point"]["round"] >= 1 and out["record"].startswith("restore-tests/")
        assert {r["name"] for r in out["registers"]} == {"population", "land-register", "court-files"}
        assert all(r["digest_ok"] and r["seconds"] <= r["rto_seconds"] for r in out["registers"])
        assert ssh(lab, f"enclave-{embassy}", SCRATCH_GONE, check=False).returncode == 0, "scratch data left behind"
    held = ssh(lab, "enclave-de", "sudo runuser -u postgres -- psql -X -Atq -p 5432 -d postgres -c "
                                  f"'SELECT pg_is_in_recovery()'; systemctl is-active {RECEIVER_UNIT}", check=False)
    assert held.stdout.split() == ["t", "active"], held.stdout  # the standby held, its WAL receiver streaming
    home = ssh(lab, "home", "sudo runuser -u postgres -- psql -X -Atq -d postgres -c 'SELECT pg_is_in_recovery()'")
    assert home.stdout.strip() == "f"  # home serving, untouched
    print(f"restore-test seconds (CLI wall, host test, per register): {times}")


def test_the_timer_records_a_signed_locked_result_that_status_reads(lab: LabState, deployed: dict[str, Any]) -> None:
    unit = ssh(lab, "enclave-se", "systemctl show -p OnCalendar --value embassy-restore-test.timer; "
                                  "systemctl is-enabled embassy-restore-test.timer")
    assert "enabled" in unit.stdout, unit.stdout
    ran = ssh(lab, "enclave-se", "sudo systemctl start embassy-restore-test.service", check=False, timeout=900)
    assert ran.returncode == 0, ssh(lab, "enclave-se", "sudo journalctl -u embassy-restore-test -n 30", check=False).stdout
    assert ssh(lab, "enclave-se", SCRATCH_GONE, check=False).returncode == 0
    url = f"http://{lab.host('se').address}:9751/metrics"
    metrics = ""
    for _ in range(30):  # the exporter reads the last result every 15 s
        metrics = ssh(lab, "enclave-se", f"python3 -c \"import urllib.request; print(urllib.request.urlopen('{url}', "
                                         f"timeout=5).read().decode())\"", check=False).stdout
        if 'embassy_restore_test_passed{embassy="se"} 1.0' in metrics:
            break
        time.sleep(1)
    assert 'embassy_restore_test_passed{embassy="se"} 1.0' in metrics, metrics[-1500:]
    _, doc = status(lab)
    se = next(e for e in doc["embassies"] if e["name"] == "se")
    assert se["restore_tests_established"], se
    last = se["last_restore_test"]
    assert last["passed"] and se["restore_tests"][-1]["trigger"] == "timer"
    # The record, read from the vault's storage and checked with cryptography alone, with the controller's key.
    f = Filer(lab, "se")
    key = se["restore_tests"][-1]["key"]
    data = f.read(f.latest_version_file(key))
    doc_ = json.loads(data)
    private = load_pem_private_key((lab_secrets(lab) / "restore-test-se.pem").read_bytes(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    signed = json.dumps(doc_["record"], sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    private.public_key().verify(base64.b64decode(doc_["signature"]["value"]), signed)
    # Format /2: each register's digest as the host computed it, which status compared with the signed manifest's
    # (an established history above means they agreed, the LSN aside).
    assert doc_["record"]["format"] == restoretest.RECORD_FORMAT
    assert all(isinstance(r.get("digest"), dict) for r in doc_["record"]["registers"]), doc_["record"]["registers"]


def lab_secrets(lab: LabState) -> Any:
    from pathlib import Path

    return Path(lab.dir) / "secrets"


def test_an_edited_record_and_a_tampered_vault_fail(lab: LabState, deployed: dict[str, Any]) -> None:
    f = Filer(lab, "ie")
    records = sorted(name for e in f.entries("restore-tests") if (name := e["FullPath"].rsplit("/", 1)[1])[:8].isdigit())
    assert records, "no restore-test record at ie"
    key = f"restore-tests/{records[-1].removesuffix('.versions')}"
    path = f.latest_version_file(key)
    original = f.read(path)
    f.write(path, original.replace(b'"passed":true', b'"passed":false', 1) if b'"passed":true' in original
             else flip_middle_byte(original))
    try:
        code, doc = status(lab)
    finally:
        f.write(path, original)
    ie = next(e for e in doc["embassies"] if e["name"] == "ie")
    assert code == 1 and not ie["restore_tests_established"] and ie["last_restore_test"] is None
    assert key in ie["restore_tests_problem"]["object"], ie["restore_tests_problem"]
    assert any("ie: restore tests NOT ESTABLISHED" in a for a in doc["alerts"])
    # A tampered manifest: the restore test fails, naming it, and nothing is left behind.
    names = sorted(e["FullPath"].rsplit("/", 1)[1] for e in f.entries("manifests"))
    mkey = f"manifests/{names[-1].removesuffix('.versions')}"
    mpath = f.latest_version_file(mkey)
    moriginal = f.read(mpath)
    f.write(mpath, flip_middle_byte(moriginal))
    try:
        code, out, _ = restore_test(lab, "ie")
    finally:
        f.write(mpath, moriginal)
    assert code == 1 and not out["passed"] and mkey in out["failure"]["object"], out
    assert ssh(lab, "enclave-ie", SCRATCH_GONE, check=False).returncode == 0
