"""Key custody on the lab: the real vaults (SeaweedFS, Object Lock), pgBackRest, restic and hosts.

One kit per module: `custody init` (3 officials, any 2), then `custody rotate`. With every restore
secret gone from the controller's folder and from the embassy host, `restore --shares` with two
version-2 sheets restores the cold embassy ie to a point in time from before the rotation; one
sheet is refused, a version-1 sheet is named as such. No secret is in plaintext in a vault or in
the commands' output. The lab is left as found: the controller's secrets are put back, the host's
files are the ones the bundle wrote (those of the deploy), the scratch cluster is stopped.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from embassy.custody import hostsecrets
from embassy.custody import kit as custody_kit
from embassy.drill.restore import SCRATCH_PORT, stop_restored
from embassy.home.generator import Spec
from embassy.lab.state import LabState
from embassy.model import load_stack
from embassy.replication.dataplane import PGBACKREST_CONF, RESTIC_DIR
from embassy.targets import LabTarget
from tests.lab.conftest import ROOT, STACK, ssh
from tests.lab.test_replication import embassy_cli, replicate_once

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def kit(lab: LabState, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Deployed, replicated, and a version-1 kit issued (its sheets in a temporary folder)."""
    done = embassy_cli(lab, "deploy", "--target", "lab", "--stack", STACK, "--json", "--size-mb", f"{Spec.size_mb:g}",
                       timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    replicate_once(lab)
    out = tmp_path_factory.mktemp("custody") / "v1"
    # A lab reused from an earlier session keeps its kits (Object Lock): then this module's first kit is a rotation.
    earlier, _ = custody_kit.current_version(custody_kit.LabVaults(lab, load_stack(STACK, ROOT)), load_stack(STACK, ROOT))
    start = time.monotonic()
    done = embassy_cli(lab, "custody", "rotate" if earlier else "init", "--stack", STACK, "--officials", "3",
                       "--threshold", "2", "--out", str(out))
    seconds = time.monotonic() - start
    assert done.returncode == 0, done.stderr[-3000:]
    print(f"custody {'rotate' if earlier else 'init'}: {seconds:.1f} s")
    return {"v1": out, "version": earlier + 1, "init_seconds": seconds, "init_output": done.stdout + done.stderr}


def secrets_of(lab: LabState) -> list[str]:
    return [p.read_text().strip() for p in sorted((Path(lab.dir) / "secrets").glob("*.pass"))] + \
        [json.loads(Path(v.reader_credentials).read_text())["secret_access_key"] for v in lab.vaults]


def test_init_stores_a_locked_bundle_in_every_vault_and_a_second_init_is_refused(lab: LabState, kit: dict[str, Any]) -> None:
    stored = [line for line in kit["init_output"].splitlines() if line.startswith("stored: ")]
    assert sorted(line.split("/")[0] for line in stored) == [f"stored: vault:{v.embassy}" for v in sorted(
        lab.vaults, key=lambda v: v.embassy)]
    assert all("lock COMPLIANCE" in line for line in stored), stored
    assert sorted(p.name for p in kit["v1"].iterdir()) == sorted(f"official-{i}.{s}" for i in (1, 2, 3) for s in ("txt", "html"))
    again = embassy_cli(lab, "custody", "init", "--stack", STACK, "-n", "3", "-k", "2", "--out", str(kit["v1"].parent / "x"))
    assert again.returncode == 2 and f"already has a custody kit (bundle version {kit['version']}" in again.stderr, \
        again.stderr
    assert "HINT: run `embassy custody rotate" in again.stderr
    # No secret in plaintext in any vault's storage (the bundles are ciphertext), nor in what init printed.
    for value in secrets_of(lab):
        assert value not in kit["init_output"]
        for vault in lab.vaults:
            found = subprocess.run(["grep", "-rlaF", "-e", value, "--", vault.data_dir], capture_output=True, text=True)
            assert found.returncode == 1, f"vault {vault.embassy} stores a secret in plaintext: {found.stdout}"


def _psql(lab: LabState, host: str, sql: str, port: int = 5432) -> str:
    return ssh(lab, host, f"sudo runuser -u postgres -- psql -X -Atq -p {port} -d embassy_monitor -c \"{sql}\"").stdout.strip()


@pytest.fixture
def withdrawn(lab: LabState) -> Iterator[dict[str, str]]:
    """The controller's restore secrets (name -> content), put back after the test whatever it removed;
    enclave-ie's are the bundle's after a restore, else the deploy writes them again."""
    folder = Path(lab.dir) / "secrets"
    original = {p.name: p.read_text() for p in folder.glob("*.pass")}
    target = LabTarget(load_stack(STACK, ROOT), lab)
    try:
        yield original
    finally:
        for name, text in original.items():
            (folder / name).write_text(text)
            (folder / name).chmod(0o600)
        stop_restored(target, "ie")
        conf = ssh(lab, "enclave-ie", f"sudo cat {PGBACKREST_CONF}").stdout
        if "repo1-cipher-pass=" not in conf or ssh(lab, "enclave-ie", f"sudo test -f {RESTIC_DIR}/ie.pass",
                                                   check=False).returncode:
            done = embassy_cli(lab, "deploy", "--target", "lab", "--stack", STACK, "--size-mb", f"{Spec.size_mb:g}",
                               timeout=1800)
            assert done.returncode == 0, done.stderr[-3000:]


def test_rotation_then_a_restore_from_shares_alone_to_before_it(lab: LabState, kit: dict[str, Any],
                                                               tmp_path: Path, withdrawn: dict[str, str]) -> None:
    # The state before the rotation: five rows, then the moment, then five more and the rotation.
    _psql(lab, "home", "DROP TABLE IF EXISTS custody_probe; CREATE TABLE custody_probe (id int PRIMARY KEY)")
    replicate_once(lab)
    time.sleep(1)
    for i in range(1, 6):
        _psql(lab, "home", f"INSERT INTO custody_probe VALUES ({i})")
    time.sleep(0.5)
    epoch = float(_psql(lab, "home", "SELECT extract(epoch FROM clock_timestamp())"))
    moment = dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    time.sleep(0.5)
    for i in range(6, 11):
        _psql(lab, "home", f"INSERT INTO custody_probe VALUES ({i})")
    v2 = tmp_path / "v2"
    rotated = embassy_cli(lab, "custody", "rotate", "--stack", STACK, "-n", "3", "-k", "2", "--out", str(v2))
    assert rotated.returncode == 0, rotated.stderr[-3000:]
    version = kit["version"] + 1
    assert f"bundle version {version}" in rotated.stdout
    assert f"# bundle version: {version}" in (v2 / "official-1.txt").read_text()
    replicate_once(lab)  # archives the WAL of all ten rows
    # The day home is gone: no restore secret on the controller, none on the embassy host.
    folder = Path(lab.dir) / "secrets"
    target = LabTarget(load_stack(STACK, ROOT), lab)
    hostsecrets.withdraw(target, target.host("ie"), "ie", folder)
    assert not list(folder.glob("pgbackrest-*.pass")) and not list(folder.glob("restic-*.pass"))
    conf = ssh(lab, "enclave-ie", f"sudo cat {PGBACKREST_CONF}").stdout
    assert "cipher-pass" not in conf

    # K-1 sheets: refused, naming what is missing; nothing is restored.
    one = embassy_cli(lab, "restore", "--stack", STACK, "--embassy", "ie", "--shares", str(v2 / "official-2.txt"))
    assert one.returncode == 2, one.stderr
    assert "1 distinct share(s) given (official 2), 2 needed" in one.stderr and "HINT: " in one.stderr
    # A version-1 sheet beside a version-2 one: named as a share of the earlier version.
    old = embassy_cli(lab, "restore", "--stack", STACK, "--embassy", "ie", "--shares", str(v2 / "official-1.txt"),
                      str(kit["v1"] / "official-3.txt"))
    assert old.returncode == 2
    assert f"{kit['v1'] / 'official-3.txt'}: a share of the earlier bundle version {kit['version']}; the vault's bundle " \
           f"is version {version}" in old.stderr, old.stderr

    # Two version-2 sheets, one typed on stdin: the restore to the moment before the rotation works.
    start = time.monotonic()
    done = subprocess.run(
        [str(ROOT / ".venv/bin/embassy"), "restore", "--stack", STACK, "--embassy", "ie", "--json", "--target-time",
         moment, "--shares", str(v2 / "official-3.txt"), "-"], input=(v2 / "official-1.txt").read_text(),
        cwd=ROOT, env={**os.environ, "EMBASSY_LAB_ID": str(lab.lab_id)}, capture_output=True, text=True,
        timeout=900)
    seconds = time.monotonic() - start
    print(f"restore with shares (point in time): {seconds:.1f} s")
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    out = json.loads(done.stdout)
    assert out["ok"] and out["verify"]["intact"] and all(r["verified"] and r["restored"] for r in out["registers"])
    rows = _psql(lab, "enclave-ie", "SELECT string_agg(id::text, ',' ORDER BY id) FROM custody_probe", port=SCRATCH_PORT)
    assert rows == "1,2,3,4,5"
    # The controller still holds no restore secret; the host's come from the bundle and equal the deploy's.
    assert not list(folder.glob("pgbackrest-*.pass")) and not list(folder.glob("restic-*.pass"))
    conf = ssh(lab, "enclave-ie", f"sudo cat {PGBACKREST_CONF}").stdout
    assert f"repo1-cipher-pass={withdrawn['pgbackrest-ie.pass'].strip()}" in conf
    assert ssh(lab, "enclave-ie", f"sudo cat {RESTIC_DIR}/ie.pass").stdout.strip() == withdrawn["restic-ie.pass"].strip()
    for value in [v.strip() for v in withdrawn.values()]:
        assert value not in done.stdout and value not in done.stderr, "a secret in the restore's output"
