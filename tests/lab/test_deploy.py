"""The pyinfra deploys on the lab: idempotent, the state service answers from the registers, every
embassy's repo takes the WAL, warm standbys replay, and each embassy holds only its own secrets."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from embassy.home.generator import Spec
from embassy.lab.state import LabState
from embassy.replication import secrets as embassy_secrets
from embassy.replication.dataplane import PGBACKREST_CONF, STANZA
from tests.lab.conftest import EMBASSY, ROOT, SHARED, STACK, in_controller_python, record_deploy, ssh
from tests.lab.lab_site import site_target
from tests.lab.timed_output import MAX_SILENCE_SECONDS, run_timed
from tests.lab.vault_storage import archive_id

# Small (the tests check behaviour, not volume) and the default, so a developer's lab deployed with the
# defaults is reused as it is rather than refused for holding data of another size.
SIZE_MB = f"{Spec.size_mb:g}"
WAIT_SECONDS = 90  # bounded waits for asynchronous replication (not a timing assertion)


def _deploy(lab: LabState, *extra: str) -> subprocess.CompletedProcess[str]:
    return _deploy_timed(lab, *extra)[0]


def _deploy_timed(lab: LabState, *extra: str, site: bool = False) -> tuple[subprocess.CompletedProcess[str], float]:
    """The run, and the longest silence of its output (stderr, into a pipe) in seconds."""
    env = {**os.environ, "EMBASSY_LAB_ID": str(lab.lab_id)}
    where = site_target(lab) if site else ["--target", "lab"]
    return run_timed([EMBASSY, "deploy", *where, "--stack", STACK, *extra], cwd=ROOT, env=env, timeout=1800)


@pytest.fixture(scope="module")
def deployed(lab: LabState) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two deploys, one after the other. The first is the session's last deploy when the hosts are still as it
    left them (conftest.KEEPS_DEPLOY: no module since changed them, no test failed): running it again here would
    be a second run already (30 to 45 s). Its progress is then not re-checked here; the second run's always is."""
    runs: list[dict[str, Any]] = []
    if SHARED.intact and SHARED.result is not None:
        print(f"lab {lab.lab_id}: the first run is the session's last deploy (the hosts are as it left them)")
        runs.append({**SHARED.result, "stderr": None})
    while len(runs) < 2:  # the second through the lab's own site inventory (the generic SSH path)
        done, silence = _deploy_timed(lab, "--json", "--size-mb", SIZE_MB, site=len(runs) == 1)
        assert done.returncode == 0, done.stderr[-4000:]
        # No silent minutes (issue 26): into a pipe, a line at least every 30 s, whatever pyinfra is doing.
        assert silence <= MAX_SILENCE_SECONDS, f"deploy's output was silent for {silence:.0f} s:\n{done.stderr[-3000:]}"
        runs.append({**json.loads(done.stdout), "stderr": done.stderr})
        print(f"deploy run {len(runs)}: {runs[-1]['seconds']} s, changed "
              f"{ {h['name']: h['changed'] for h in runs[-1]['hosts']} }")
    record_deploy(json.loads(done.stdout))  # later modules share it (conftest.KEEPS_DEPLOY)
    return runs[0], runs[1]


def _poll(check: Callable[[], bool]) -> bool:
    """Ask again (bounded) until replication catches up; the answer, not the time, is asserted."""
    for _ in range(WAIT_SECONDS):
        if check():
            return True
        subprocess.run(["sleep", "1"], check=True)
    return check()


def _psql(lab: LabState, host: str, db: str, sql: str) -> str:
    return ssh(lab, host, f"sudo -u postgres psql -X -Atq -d {db} -c \"{sql}\"").stdout.strip()


def test_second_run_changes_nothing(lab: LabState, deployed: tuple[dict[str, Any], dict[str, Any]]) -> None:
    first, second = deployed
    names = {h.name for h in lab.hosts}
    assert {h["name"] for h in first["hosts"]} == names == {h["name"] for h in second["hosts"]}
    assert all(h["errors"] == [] for h in first["hosts"] + second["hosts"])
    assert {h["name"]: h["changed"] for h in second["hosts"]} == dict.fromkeys(names, 0)
    assert all(h["unchanged"] > 0 for h in second["hosts"])
    # Progress came from pyinfra's callbacks: each phase ends with its operations and every host's counts,
    # and the second run's counts say what its JSON says (nothing changed).
    for run in (r for r in (first, second) if r["stderr"] is not None):
        done = [line for line in run["stderr"].splitlines() if ": done in " in line and " operation" in line]
        assert len(done) == 2, run["stderr"][-3000:]
    ends = [line for line in second["stderr"].splitlines() if ": done in " in line and "; per host: " in line]
    assert ends and not any(re.search(r"\((?!0 changed)\d+ changed", line) for line in ends), ends


def test_other_seed_is_refused_and_nothing_changes(lab: LabState, deployed: tuple[dict[str, Any], dict[str, Any]]) -> None:
    done = _deploy(lab, "--size-mb", f"{Spec.size_mb + 1:g}")
    assert done.returncode == 2
    assert "holds data of another seed or size" in done.stderr and "HINT:" in done.stderr
    again = _deploy(lab, "--json", "--size-mb", SIZE_MB)
    assert again.returncode == 0, again.stderr[-2000:]
    assert all(h["changed"] == 0 for h in json.loads(again.stdout)["hosts"])


SERVICE_QUERY = r"""
import json, sys, urllib.error, urllib.request
out = {}
for path in sys.argv[2:]:
    try:
        with urllib.request.urlopen(sys.argv[1] + path, timeout=10) as resp:
            out[path] = [resp.status, json.loads(resp.read())]
    except urllib.error.HTTPError as err:
        out[path] = [err.code, json.loads(err.read())]
print(json.dumps(out))
"""


def test_state_service_answers_from_the_registers(lab: LabState, deployed: tuple[dict[str, Any], dict[str, Any]]) -> None:
    code, last_name = _psql(lab, "home", "population",
                            "SELECT isikukood || '|' || last_name FROM persons WHERE id = 7").split("|")
    parcel, deeds = _psql(lab, "home", "land_register", "SELECT parcel || '|' || count(*) FROM deeds GROUP BY parcel "
                          "ORDER BY parcel LIMIT 1").split("|")
    case = ssh(lab, "home", "sudo find /srv/registers/court-files -name case.json | sort | head -1 | xargs sudo cat").stdout
    number = json.loads(case)["number"]
    paths = ["/health", f"/registers/population/persons/{code}", f"/registers/land-register/parcels/{parcel}",
             f"/registers/court-files/files/{number}", "/registers/population/persons/37605030299"]
    home = lab.host("home").address
    done = in_controller_python(lab, SERVICE_QUERY, f"http://{home}:8088", *paths)
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    assert answers["/health"][0] == 200 and answers["/health"][1]["status"] == "ok"
    status, person = answers[paths[1]]
    assert status == 200 and person["isikukood"] == code and person["last_name"] == last_name
    assert person["addresses"], "every person has an address"
    status, land = answers[paths[2]]
    assert status == 200 and len(land["deeds"]) == int(deeds)
    status, court = answers[paths[3]]
    assert status == 200 and court["number"] == number and court["stored"]
    assert answers[paths[4]][0] == 404


def test_services_listen_only_on_home_addresses(lab: LabState, deployed: tuple[dict[str, Any], dict[str, Any]]) -> None:
    home = lab.host("home").address
    listening = ssh(lab, "home", "sudo ss -Htlnp").stdout.splitlines()
    service = [line.split()[3] for line in listening if ":8088 " in line + " "]
    assert service == [f"{home}:8088"], listening
    postgres = sorted(line.split()[3] for line in listening if '"postgres"' in line)
    assert postgres == sorted([f"{home}:5432", "127.0.0.1:5432", "[::1]:5432"]) or \
        postgres == sorted([f"{home}:5432", "127.0.0.1:5432"]), postgres
    user = ssh(lab, "home", "systemctl show -p User --value embassy-state").stdout.strip()
    assert user == "embassy_state"


def _repos(lab: LabState) -> list[int]:
    conf = ssh(lab, "home", f"sudo cat {PGBACKREST_CONF}").stdout
    return sorted(int(m.group(1)) for m in re.finditer(r"^repo(\d+)-type=", conf, re.MULTILINE))


def test_pgbackrest_check_passes_for_every_repo(lab: LabState, deployed: tuple[dict[str, Any], dict[str, Any]]) -> None:
    repos = _repos(lab)
    assert len(repos) == len(lab.vaults)
    ssh(lab, "home", f"sudo -u postgres pgbackrest --stanza={STANZA} check")
    info = json.loads(ssh(lab, "home", f"sudo -u postgres pgbackrest --stanza={STANZA} --output=json info").stdout)
    assert sorted(r["key"] for r in info[0]["repo"]) == repos
    assert all(r["status"]["code"] == 0 for r in info[0]["repo"]), info[0]["repo"]  # each has a full backup


def test_wal_switch_reaches_every_embassy(lab: LabState, deployed: tuple[dict[str, Any], dict[str, Any]]) -> None:
    token = secrets.token_hex(8)
    _psql(lab, "home", "population", f"CREATE TABLE IF NOT EXISTS embassy_probe (token text); "
                                     f"INSERT INTO embassy_probe VALUES ('{token}')")
    wal = _psql(lab, "home", "population", "SELECT pg_walfile_name(pg_switch_wal())")
    assert len(wal) == 24
    archive = f"archive/{STANZA}/{archive_id(lab)}/{wal[:16]}"
    pgbr = f"sudo -u postgres pgbackrest --stanza={STANZA}"
    for host in (h for h in lab.hosts if h.embassy):
        # Each embassy reads its own vault, with its own passphrase (its pgBackRest has only that repo);
        # a cold embassy has no clone of home, so it lists and fetches from the repo rather than `archive-get`.
        def listed(name: str = host.name) -> str:
            res = ssh(lab, name, f"{pgbr} repo-ls {archive}", check=False)
            return next((f for f in res.stdout.split() if f.startswith(wal) and f.endswith(".zst")), "")
        assert _poll(lambda: bool(listed())), f"{wal} never reached the vault of {host.embassy}"
        # Decrypted with this embassy's passphrase, the segment is a zstd frame (magic 28 b5 2f fd).
        magic = ssh(lab, host.name, f"{pgbr} repo-get {archive}/{listed()} | head -c 4 | od -An -tx1").stdout.split()
        assert magic == ["28", "b5", "2f", "fd"], (host.name, magic)


def test_warm_embassies_flush_homes_wal_while_their_standby_is_held(
        lab: LabState, deployed: tuple[dict[str, Any], dict[str, Any]]) -> None:
    # The receiver streams and flushes home's WAL to the embassy's disk; the standby replays only to a signed
    # point (just after the clone until a verified round moves it): the new row is received, not replayed.
    token = secrets.token_hex(8)
    lsn = _psql(lab, "home", "population", f"CREATE TABLE IF NOT EXISTS embassy_probe (token text); "
                                           f"INSERT INTO embassy_probe VALUES ('{token}'); SELECT pg_current_wal_lsn()")
    warm = [h for h in lab.hosts if h.mode == "warm"]
    assert warm
    for host in warm:
        assert _poll(lambda name=host.embassy: _psql(lab, "home", "postgres", "SELECT count(*) FROM pg_stat_replication "
                                                     f"WHERE application_name = '{name}' AND state = 'streaming' "
                                                     f"AND flush_lsn >= '{lsn.splitlines()[-1]}'") == "1"), \
            f"{host.name} never flushed {lsn}"
        held = _psql(lab, host.name, "postgres", "SELECT pg_is_in_recovery(), pg_get_wal_replay_pause_state(), "
                                                 f"pg_last_wal_replay_lsn() < '{lsn.splitlines()[-1]}'")
        assert held == "t|paused|t", (host.name, held)


def test_each_embassy_holds_only_its_own_secrets(lab: LabState, deployed: tuple[dict[str, Any], dict[str, Any]]) -> None:
    folder = Path(lab.dir) / "secrets"
    assert folder.stat().st_mode & 0o077 == 0
    # A lab whose custody kit was rotated (tests/lab/test_custody.py) is at a later key generation: each
    # embassy's host holds that generation's passphrase, and none of any generation of another embassy.
    current = {v.embassy: (folder / embassy_secrets.pgbackrest_secret(
        v.embassy, embassy_secrets.generation(folder, v.embassy))).read_text().strip() for v in lab.vaults}
    every = {v.embassy: [p.read_text().strip() for p in sorted(folder.glob(f"pgbackrest-{v.embassy}.*pass"))]
             for v in lab.vaults}
    for path in folder.iterdir():
        assert path.stat().st_mode & 0o077 == 0, path
    for host in (h for h in lab.hosts if h.embassy):
        conf = ssh(lab, host.name, f"sudo cat {PGBACKREST_CONF}").stdout
        assert [line for line in conf.splitlines() if line.endswith("-type=s3")] == ["repo1-type=s3"]
        assert f"repo1-cipher-pass={current[host.embassy]}" in conf
        for other, values in every.items():
            for value in values if other != host.embassy else []:
                found = ssh(lab, host.name, f"sudo grep -rlF -e '{value}' /etc /var/lib/postgresql", check=False)
                assert found.stdout == "", f"{host.name} holds a passphrase of {other}: {found.stdout}"
        modes = ssh(lab, host.name, f"sudo stat -c '%a %U' {PGBACKREST_CONF} /etc/embassy/restic/{host.embassy}.env").stdout
        assert modes.split("\n")[:2] == ["600 postgres", "600 root"]


VAULT_PROBE = r"""
import json, sys
from embassy.lab import buckets
spec = json.loads(sys.argv[1])
s3 = buckets.client(spec["endpoint"], spec["ca_file"], spec["agent_credentials"])
keys = []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=spec["bucket"]):
    keys += [o["Key"] for o in page.get("Contents", [])]
heads = {}
for key in keys:
    if key.split("/")[0].startswith("pgbackrest") and (key.endswith(".info") or "/archive/" in key and key.endswith(".zst")):
        heads[key] = s3.get_object(Bucket=spec["bucket"], Key=key, Range="bytes=0-7")["Body"].read().hex()
print(json.dumps({"keys": keys, "heads": heads}))
"""


def test_vaults_hold_only_ciphertext(lab: LabState, deployed: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """What leaves home is encrypted there: every pgBackRest file in a vault starts with OpenSSL's `Salted__`
    (aes-256-cbc with the embassy's passphrase), and no passphrase is stored in any vault."""
    passes = [p.read_text().strip() for p in (Path(lab.dir) / "secrets").glob("*.pass")]
    for vault in lab.vaults:
        spec = {"endpoint": vault.endpoint, "ca_file": vault.ca_file, "agent_credentials": vault.agent_credentials,
                "bucket": vault.bucket}
        done = in_controller_python(lab, VAULT_PROBE, json.dumps(spec))
        assert done.returncode == 0, done.stderr
        listing = json.loads(done.stdout)
        assert any(k.startswith("restic/court-files/") for k in listing["keys"]), vault.embassy
        heads = listing["heads"]
        assert any(k.endswith("archive.info") for k in heads) and any(k.endswith(".zst") for k in heads)
        assert {bytes.fromhex(h) for h in heads.values()} == {b"Salted__"}, heads
        for value in passes:
            # -e: a URL-safe passphrase may start with '-', which grep would take for an option.
            found = subprocess.run(["grep", "-rlaF", "-e", value, "--", vault.data_dir], capture_output=True, text=True)
            assert found.returncode == 1, f"vault {vault.embassy} stores a passphrase: {found.stdout}"
