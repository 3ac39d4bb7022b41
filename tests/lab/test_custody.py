"""Key custody on the lab: the real vaults (SeaweedFS, Object Lock), pgBackRest, restic and hosts.

One kit per module: `custody init` (3 officials, any 2), then `custody rotate`, which re-keys: a new
key generation whose passphrases differ, which the old ones cannot read, and a bundle whose history
holds every generation's. With every restore secret gone from the controller's folder and from the
embassy host, `restore --shares` with two version-2 sheets restores the cold embassy ie to a point in
time from before the rotation, from the old generation, and to the newest state, from the new one; one
sheet is refused, a version-1 sheet is named as such. No secret is in plaintext in a vault or in
the commands' output. The lab is left as found: the controller's secrets are put back, the host's
files are the ones the bundle wrote (those of the deploy), the scratch cluster is stopped.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets as secrets_random
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
from embassy.replication import dataplane, secrets
from embassy.replication.dataplane import PGBACKREST_CONF, RESTIC_DIR
from embassy.replication.verify import PUBLIC_KEY_FILE
from embassy.targets import LabTarget
from tests.lab.conftest import EMBASSY, ROOT, SHARED, STACK, deploy_once, record_deploy, ssh
from tests.lab.lab_site import site_target
from tests.lab.test_replication import embassy_cli, replicate_once
from tests.lab.timed_output import MAX_SILENCE_SECONDS, run_timed
from tests.lab.vault_storage import Filer

pytestmark = pytest.mark.lab


def deploy_or_share(lab: LabState) -> None:
    """conftest.deploy_once, its output timed: in a whole session this is the first deploy, on fresh hosts (apt
    installs, clones, first backups), and it must not leave its output silent for a minute either (issue 26)."""
    if SHARED.intact and SHARED.result is not None:
        deploy_once(lab)
        return
    env = {**os.environ, "EMBASSY_LAB_ID": str(lab.lab_id)}
    done, silence = run_timed([EMBASSY, "deploy", "--target", "lab", "--stack", STACK, "--json", "--size-mb",
                               f"{Spec.size_mb:g}"], cwd=ROOT, env=env, timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    assert silence <= MAX_SILENCE_SECONDS, f"deploy's output was silent for {silence:.0f} s:\n{done.stderr[-3000:]}"
    result = json.loads(done.stdout)
    record_deploy(result)
    print(f"kit's deploy: {result['seconds']} s, changed {({h['name']: h['changed'] for h in result['hosts']})}")


@pytest.fixture(scope="module")
def kit(lab: LabState, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Deployed (the session's last deploy when the hosts are still as it left them), replicated, and a version-1
    kit issued (its sheets in a temporary folder)."""
    deploy_or_share(lab)
    replicate_once(lab)
    out = tmp_path_factory.mktemp("custody") / "v1"
    # A lab reused from an earlier session keeps its kits (Object Lock): then this module's first kit is a rotation.
    dep = load_stack(STACK, ROOT)
    earlier, _ = custody_kit.current_version(custody_kit.TargetVaults(LabTarget(dep, lab), dep), dep)
    # Through the lab's own site inventory (the generic path: home signs over the inventory's SSH, the bundles go
    # through its vault access, a rotation's re-key deploys over it).
    site = site_target(lab)
    start = time.monotonic()
    done = embassy_cli(lab, "custody", "rotate" if earlier else "init", "--stack", STACK, "--officials", "3",
                       "--threshold", "2", "--out", str(out), *site)
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


def _digests(lab: LabState, host: str) -> str:
    return ssh(lab, host, f"sudo sha256sum {PGBACKREST_CONF} {RESTIC_DIR}/*", check=False).stdout


def test_se_bundle_in_de_vault_is_refused_and_nothing_is_written(lab: LabState, kit: dict[str, Any]) -> None:
    """The host of de's vault puts se's bundle (same version, same shares) in place of de's, below S3: `restore
    --shares` at de refuses it, exit 1, naming the object and the embassy it belongs to; nothing reaches enclave-de."""
    key = custody_kit.object_key(STACK, kit["version"])
    de, se = Filer(lab, "de"), Filer(lab, "se")
    se_bytes = se.read(se.latest_version_file(key))
    before, public = _digests(lab, "enclave-de"), (Path(lab.dir) / PUBLIC_KEY_FILE).read_text()
    original, planted = f"{de.root}/{key}.versions", f"{de.root}/aside-{secrets_random.token_hex(4)}"
    de.move(original, planted + "-original")
    try:
        de.write(f"{original}/v_forged", se_bytes)
        done = embassy_cli(lab, "restore", "--stack", STACK, "--embassy", "de", "--shares",
                           str(kit["v1"] / "official-1.txt"), str(kit["v1"] / "official-3.txt"), timeout=300)
    finally:
        de.move(original, planted)
        de.move(planted + "-original", original)
    assert done.returncode == 1, done.stderr[-2000:] + done.stdout[-1000:]
    assert f"error: [209]: vault:de/{key}: holds the bundle of embassy 'se' (stack {STACK}), not de's" in done.stderr, \
        done.stderr[-2000:]
    assert _digests(lab, "enclave-de") == before and (Path(lab.dir) / PUBLIC_KEY_FILE).read_text() == public
    # Put back: de's own bundle opens again with the same sheets.
    dep = load_stack(STACK, ROOT)
    texts = custody_kit.read_shares([str(kit["v1"] / "official-1.txt"), str(kit["v1"] / "official-3.txt")], lambda: "")
    assert custody_kit.open_bundle(dep, custody_kit.TargetVaults(LabTarget(dep, lab), dep), "de", texts).embassy == "de"


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


def _generation(lab: LabState, embassy: str) -> int:
    return secrets.generation(Path(lab.dir) / "secrets", embassy)


def _ssh_input(lab: LabState, host: str, command: str, text: str) -> None:
    done = subprocess.run(lab.ssh_argv(host, command), input=text, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _pgbackrest_reads(lab: LabState, passphrase: str, path: str) -> tuple[bool, str]:
    """pgBackRest on enclave-ie with a scratch config (its vault, repo `path`, cipher `passphrase`): does `info`
    read the stanza's backups (status ok)? And what it said."""
    conf = ssh(lab, "enclave-ie", f"sudo cat {PGBACKREST_CONF}").stdout
    lines = [line for line in conf.splitlines() if not line.startswith(("repo1-path=", "repo1-cipher-pass="))]
    lines.insert(lines.index("[global]") + 1, f"repo1-path={path}\nrepo1-cipher-pass={passphrase}")
    scratch = "/var/tmp/embassy-test-rekey.conf"
    _ssh_input(lab, "enclave-ie", f"sudo install -o postgres -m 600 /dev/stdin {scratch}", "\n".join(lines) + "\n")
    try:
        # A wrong passphrase decrypts the repo's info files to garbage: not text.
        done = subprocess.run(lab.ssh_argv("enclave-ie", f"sudo runuser -u postgres -- pgbackrest --config={scratch} "
                                                         "--stanza=home --output=json info"),
                              capture_output=True, text=True, errors="replace", timeout=120)
        status = re.search(r'"status":\{"code":(\d+),"message":"(.*?)(?::\\n|")', done.stdout)
        ok = done.returncode == 0 and status is not None and status.group(1) == "0"
        return ok, (f"status {status.group(1)}: {status.group(2)}" if status else done.stderr.strip())[:300]
    finally:
        ssh(lab, "enclave-ie", f"sudo rm -f {scratch}")


def _restic_reads(lab: LabState, password: str, folder: str) -> subprocess.CompletedProcess[str]:
    """restic on enclave-ie with `password` against the court-files repository in `folder` of its vault."""
    scratch = "/var/tmp/embassy-test-rekey.pass"
    _ssh_input(lab, "enclave-ie", f"sudo install -m 600 /dev/stdin {scratch}", password + "\n")
    try:
        return ssh(lab, "enclave-ie", f"sudo env EMBASSY_RESTIC_FOLDER={folder} embassy-restic ie court-files --no-lock "
                                      f"--password-file {scratch} cat config", check=False)
    finally:
        ssh(lab, "enclave-ie", f"sudo rm -f {scratch}")


# Where a restore could leave a key on the host's disk: configuration, the clusters (the scratch one's
# postgresql.auto.conf too), logs, temporary and spool folders, caches, the restored files, homes.
HOST_FOLDERS = "/etc /var/lib/postgresql /var/log /var/tmp /tmp /srv /var/spool /var/cache /var/lib/pgbackrest /root /home"


def _secrets_left_on_host(lab: LabState, host: str, values: list[str]) -> tuple[list[str], str]:
    """The files under HOST_FOLDERS holding any of `values`, and whether the scratch postmaster's environment holds
    one ("0" no, "1" yes, "" no postmaster); the values go on grep's input (-f /dev/stdin), never in an argv."""
    lock = f"/var/run/postgresql/.s.PGSQL.{SCRATCH_PORT}.lock"
    patterns = "\n".join(values) + "\n"
    files = subprocess.run(lab.ssh_argv(host, f"sudo grep -rlF -f /dev/stdin {HOST_FOLDERS} 2>/dev/null; true"),
                           input=patterns, capture_output=True, text=True, timeout=300)
    environ = subprocess.run(lab.ssh_argv(host, f"pid=$(sudo head -1 {lock} 2>/dev/null) && [ -n \"$pid\" ] && "
                                                f"sudo grep -caF -f /dev/stdin /proc/$pid/environ; true"),
                             input=patterns, capture_output=True, text=True, timeout=60)
    return files.stdout.split(), environ.stdout.strip()


def _restore_with_shares(lab: LabState, v2: Path, *extra: str) -> tuple[float, dict[str, Any], str]:
    start = time.monotonic()
    done = subprocess.run(
        [str(ROOT / ".venv/bin/embassy"), "restore", "--stack", STACK, "--embassy", "ie", "--json", *extra,
         "--shares", str(v2 / "official-3.txt"), "-"], input=(v2 / "official-1.txt").read_text(),
        cwd=ROOT, env={**os.environ, "EMBASSY_LAB_ID": str(lab.lab_id)}, capture_output=True, text=True,
        timeout=900)
    seconds = time.monotonic() - start
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    out = json.loads(done.stdout)
    assert out["ok"] and out["verify"]["intact"] and all(r["verified"] and r["restored"] for r in out["registers"])
    return seconds, out, done.stdout + done.stderr


def test_rotation_then_a_restore_from_shares_alone_to_before_it(lab: LabState, kit: dict[str, Any],
                                                               tmp_path: Path, withdrawn: dict[str, str]) -> None:
    # The state before the rotation: five rows, then the moment, then five more and the rotation. No round of
    # the test's own: the restore to the moment verifies the kit's round (the newest manifest before it) and
    # replays from there, and the rotation's first round closes and archives the WAL holding all ten rows.
    _psql(lab, "home", "DROP TABLE IF EXISTS custody_probe; CREATE TABLE custody_probe (id int PRIMARY KEY)")
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
    old_generation = _generation(lab, "ie")
    # The re-key's deploy sends enclave-ie its new passphrase, restic password and vault secret with /tmp closed to
    # the SSH user there: pyinfra's own upload would stop at /tmp/pyinfra-<sha1>; secret_file goes through ~/.
    ssh(lab, "enclave-ie", "sudo chmod 1755 /tmp")
    start = time.monotonic()
    try:
        rotated = embassy_cli(lab, "custody", "rotate", "--stack", STACK, "-n", "3", "-k", "2", "--out", str(v2),
                              *site_target(lab), timeout=1800)
    finally:
        ssh(lab, "enclave-ie", "sudo chmod 1777 /tmp")
    print(f"custody rotate with re-key: {time.monotonic() - start:.1f} s\n{rotated.stdout}\n{rotated.stderr[-6000:]}")
    assert rotated.returncode == 0, rotated.stderr[-3000:] + rotated.stdout[-3000:]
    version = kit["version"] + 1
    assert f"bundle version {version}" in rotated.stdout
    # Nothing of the upload stayed behind: not in /tmp, not in the SSH user's home.
    for host in ("home", "enclave-ie"):
        left = ssh(lab, host, "ls -d /tmp/pyinfra-* ~/.embassy-upload-* 2>/dev/null; true").stdout.strip()
        assert left == "", f"{host}: {left}"
    assert f"# bundle version: {version}" in (v2 / "official-1.txt").read_text()
    folder = Path(lab.dir) / "secrets"
    withdrawn.update({p.name: p.read_text() for p in folder.glob("*.pass")})  # put back after the test, new ones too
    new_generation = _generation(lab, "ie")
    assert new_generation == old_generation + 1 and "new backups use new passphrases" in rotated.stdout
    old_pass = (folder / secrets.pgbackrest_secret("ie", old_generation)).read_text().strip()
    new_pass = (folder / secrets.pgbackrest_secret("ie", new_generation)).read_text().strip()
    old_restic = (folder / secrets.restic_secret("ie", old_generation)).read_text().strip()
    new_restic = (folder / secrets.restic_secret("ie", new_generation)).read_text().strip()
    assert old_pass != new_pass and old_restic != new_restic
    new_path, new_folder = dataplane.pgbackrest_path(new_generation), dataplane.restic_base(new_generation)
    # The embassy reads the new generation; the old passphrase does not open its repo, the new one does.
    assert f"repo1-path={new_path}" in ssh(lab, "enclave-ie", f"sudo cat {PGBACKREST_CONF}").stdout
    refused = _pgbackrest_reads(lab, old_pass, new_path)
    print(f"old passphrase on the new repo {new_path}: {refused[1]}")
    assert not refused[0], refused[1]
    assert _pgbackrest_reads(lab, new_pass, new_path)[0]
    assert _pgbackrest_reads(lab, old_pass, dataplane.pgbackrest_path(old_generation))[0]  # the old stays readable
    wrong = _restic_reads(lab, old_restic, new_folder)
    print(f"old restic password on the new repository {new_folder}/court-files: {wrong.stderr.strip()[-200:]}")
    assert wrong.returncode != 0 and "wrong password" in (wrong.stderr + wrong.stdout), wrong.stderr
    assert _restic_reads(lab, new_restic, new_folder).returncode == 0
    assert _restic_reads(lab, old_restic, dataplane.restic_base(old_generation)).returncode == 0
    # The day home is gone: no restore secret on the controller, none on the embassy host.
    target = LabTarget(load_stack(STACK, ROOT), lab)
    hostsecrets.withdraw(target, target.host("ie"), "ie", folder)
    assert not list(folder.glob("pgbackrest-*.pass")) and not list(folder.glob("restic-*.pass"))
    conf = ssh(lab, "enclave-ie", f"sudo cat {PGBACKREST_CONF}").stdout
    assert "cipher-pass" not in conf

    # Before the restore: where the old generation's keys are on the host's disk (nowhere, unless the rotation left
    # them: then that is printed, and the restore must add none).
    before, _ = _secrets_left_on_host(lab, "enclave-ie", [old_pass, old_restic])
    print(f"old generation's keys on enclave-ie's disk before the restore: {before or 'none'}")

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

    # The bundle's history: every generation's passphrase, each with its own repository and time.
    dep = load_stack(STACK, ROOT)
    texts = custody_kit.read_shares([str(v2 / "official-1.txt"), str(v2 / "official-2.txt")], lambda: "")
    bundle = custody_kit.open_bundle(dep, custody_kit.TargetVaults(LabTarget(dep, lab), dep), "ie", texts)
    for history, first in ((bundle.pgbackrest, "/pgbackrest"), (bundle.restic, "/restic")):
        assert len(history) == new_generation >= 2
        assert len({p.value for p in history}) == len(history) and len({p.repo_path for p in history}) == len(history)
        assert history[0].repo_path == first and [p.since for p in history] == sorted(p.since for p in history)
    assert [p.value for p in bundle.pgbackrest[-2:]] == [old_pass, new_pass]
    assert [p.value for p in bundle.restic[-2:]] == [old_restic, new_restic]

    # Two version-2 sheets, one typed on stdin: the restore to the moment before the rotation works, from the
    # old generation's repositories.
    seconds, out, output = _restore_with_shares(lab, v2, "--target-time", moment)
    print(f"restore with shares (point in time before the rotation, old generation): {seconds:.1f} s")
    assert out["manifest"]["key_generation"] == old_generation, out["manifest"]
    assert any(s["step"].startswith(f"key generation {old_generation}:") for s in out["steps"]), out["steps"]
    rows = _psql(lab, "enclave-ie", "SELECT string_agg(id::text, ',' ORDER BY id) FROM custody_probe", port=SCRATCH_PORT)
    assert rows == "1,2,3,4,5"
    # The old generation's keys reached pgBackRest and restic only in their environment: on no file of the host
    # (the host nation reads its disks), and no longer in the open cluster's postmaster (restarted without them).
    left, in_postmaster = _secrets_left_on_host(lab, "enclave-ie", [old_pass, old_restic])
    assert sorted(set(left) - set(before)) == [], f"the old generation's keys written to enclave-ie's disk: {left}"
    assert in_postmaster == "0", f"the scratch postmaster's environment: {in_postmaster!r}"
    assert any(s["step"].startswith("restart the restored cluster without") for s in out["steps"]), out["steps"]
    assert not any(s["step"].startswith("write key generation") for s in out["steps"]), out["steps"]
    # The controller still holds no restore secret; the host's come from the bundle: the newest generation's again.
    assert not list(folder.glob("pgbackrest-*.pass")) and not list(folder.glob("restic-*.pass"))
    conf = ssh(lab, "enclave-ie", f"sudo cat {PGBACKREST_CONF}").stdout
    assert f"repo1-cipher-pass={new_pass}" in conf and f"repo1-path={new_path}" in conf
    assert ssh(lab, "enclave-ie", f"sudo cat {RESTIC_DIR}/ie.pass").stdout.strip() == new_restic

    # The newest state, from shares only: the new generation's repositories, all ten rows.
    seconds, newest, output2 = _restore_with_shares(lab, v2)
    print(f"restore with shares (newest state, new generation): {seconds:.1f} s")
    assert newest["manifest"]["key_generation"] == new_generation, newest["manifest"]
    assert not any(s["step"].startswith("key generation") for s in newest["steps"])
    rows = _psql(lab, "enclave-ie", "SELECT string_agg(id::text, ',' ORDER BY id) FROM custody_probe", port=SCRATCH_PORT)
    assert rows == "1,2,3,4,5,6,7,8,9,10"
    for value in [v.strip() for v in withdrawn.values()]:
        assert value not in output and value not in output2 and value not in rotated.stdout + rotated.stderr, \
            "a secret in the output"
