"""The host nation as adversary (issue 21, items 1-4): it controls one vault's storage below S3 and its
locks, the network path to it and what it serves when, and holds no signing key. Each case is done as that
adversary does it, through SeaweedFS's filer (tests/lab/vault_storage.py) and the lab's switch, and undone
afterwards; each asserts exit 1, the named object and reason, and (for a restore) that nothing was restored
or started. Verifies prove most points; one refused restore per verdict kind shows the restore stops too.

Cheap by design: one deploy (reused when the lab already has one), no full restore, short outages.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from embassy.drill.restore import SCRATCH_PORT, SERVICE_UNIT
from embassy.lab.state import LabState
from embassy.replication import dataplane, freshness, manifest
from embassy.replication import secrets as controller_secrets
from tests.lab.conftest import STACK, deploy_once, ssh
from tests.lab.test_replication import _vault_port, embassy_cli, replicate_once, verify
from tests.lab.vault_storage import Filer

pytestmark = pytest.mark.lab


ROUND_TIMER = "embassy-replication-round.timer"


@pytest.fixture(scope="module")
def chains(lab: LabState) -> Iterator[int]:
    """A deployed lab with at least three rounds in every vault; the newest round. Home's round timer is held
    for the module: a background round landing while a vault is rolled back would make another case."""
    deploy_once(lab)  # the session's last deploy when the modules since left it intact
    ssh(lab, "home", f"sudo systemctl stop {ROUND_TIMER}")
    try:
        newest = int(replicate_once(lab)["round"])  # one round at least: the head every case starts from
        # Three rounds were made in every case; a lab an earlier module replicated holds them already (each
        # round costs about 15 s). Bounded: three rounds as before at most.
        for _ in range(2):
            if min(_manifests_held(lab, e) for e in ("de", "se", "ie")) >= 3:
                break
            newest = int(replicate_once(lab)["round"])
        yield newest
    finally:
        ssh(lab, "home", f"sudo systemctl start {ROUND_TIMER}")


def _manifests_held(lab: LabState, embassy: str) -> int:
    """How many manifests the embassy's vault holds (listed below S3, as the adversary sees them)."""
    return sum(1 for e in Filer(lab, embassy).entries("manifests") if e["FullPath"].endswith(".versions"))


def restore_refused(lab: LabState, embassy: str, *extra: str) -> dict[str, Any]:
    """`embassy restore` refused: exit 1, nothing restored, no service or scratch cluster, a warm standby not promoted."""
    done = embassy_cli(lab, "restore", "--stack", STACK, "--embassy", embassy, "--json", *extra, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:] + done.stdout[-2000:]
    out: dict[str, Any] = json.loads(done.stdout)
    assert not out["ok"] and not any(r["restored"] for r in out["registers"]), out["registers"]
    host = f"enclave-{embassy}"
    active = ssh(lab, host, f"systemctl is-active {SERVICE_UNIT}; sudo ss -Htln", check=False).stdout
    assert active.splitlines()[0] != "active" and ":8088" not in active and f":{SCRATCH_PORT}" not in active
    if embassy in ("de", "se"):
        recovery = ssh(lab, host, "sudo runuser -u postgres -- psql -X -Atq -c 'SELECT pg_is_in_recovery()'").stdout
        assert recovery.strip() == "t"  # the standby still follows home
    return out


def mark(lab: LabState, embassy: str) -> Path:
    return freshness.mark_path(Path(lab.dir) / "secrets", embassy)


@contextmanager
def no_mark(lab: LabState, embassy: str) -> Iterator[None]:
    """A controller that never verified `embassy` (its high-water mark aside), put back after."""
    path, aside = mark(lab, embassy), mark(lab, embassy).with_suffix(".aside")
    shutil.move(path, aside)
    try:
        yield
    finally:
        shutil.move(aside, path)


@contextmanager
def rolled_back(lab: LabState, embassy: str, rounds: int = 1) -> Iterator[str]:
    """The embassy's vault serving an older, validly signed chain (its newest manifests moved aside below S3);
    the key of the head it then serves."""
    f = Filer(lab, embassy)
    names = sorted(e["FullPath"].rsplit("/", 1)[1].removesuffix(".versions") for e in f.entries("manifests"))
    moved = [(f"{f.root}/manifests/{n}.versions", f"{f.root}/aside-rollback-{n}") for n in names[-rounds:]]
    for src, dst in moved:
        f.move(src, dst)
    try:
        yield f"manifests/{names[-rounds - 1]}"
    finally:
        for src, dst in moved:
            f.move(dst, src)


@contextmanager
def vaults_cut_off(lab: LabState, *embassies: str) -> Iterator[None]:
    """The vaults' links to the lab switch down (the network path is the adversary's), up again after."""
    ports = [_vault_port(lab, e) for e in embassies]
    for port in ports:
        subprocess.run(["ip", "-n", lab.switch_netns, "link", "set", port, "down"], check=True)
    try:
        yield
    finally:
        for port in ports:
            subprocess.run(["ip", "-n", lab.switch_netns, "link", "set", port, "up"], check=True)


@contextmanager
def middle_manifest_flipped(lab: LabState, embassy: str) -> Iterator[None]:
    """A byte of a manifest in the middle of the embassy's chain flipped: its chain fails from there on."""
    f = Filer(lab, embassy)
    names = sorted(e["FullPath"].rsplit("/", 1)[1].removesuffix(".versions") for e in f.entries("manifests"))
    path = f.latest_version_file(f"manifests/{names[len(names) // 2]}")
    original = f.read(path)
    f.write(path, original.replace(b'"round":', b'"round" :', 1))
    try:
        yield
    finally:
        f.write(path, original)


# --------------------------------------------------------------------------- item 1: freshness


def test_a_rollback_is_stale_by_the_other_vaults_and_the_restore_is_refused(lab: LabState, chains: int) -> None:
    assert verify(lab, "de")[0] == 0  # the controller's high-water mark for de is the head now
    with rolled_back(lab, "de") as head, no_mark(lab, "de"):  # stale by the other vaults alone
        code, result = verify(lab, "de")
        assert code == 1 and result["first_failure"]["object"] == f"vault:de/{head}", result["first_failure"]
        assert "stale" in result["first_failure"]["reason"] and "behind" in result["first_failure"]["reason"]
        assert {a["source"] for a in result["freshness"]["anchors"]} == {"vault:se", "vault:ie"}
        out = restore_refused(lab, "de")
        assert out["error"]["error"] == "VaultStale" and head in out["error"]["message"], out["error"]
        assert out["freshness"]["stale"]["object"] == f"vault:de/{head}"


def test_a_rollback_with_the_other_vaults_unreachable_is_stale_by_the_high_water_mark(lab: LabState,
                                                                                      chains: int) -> None:
    assert verify(lab, "ie")[0] == 0
    with rolled_back(lab, "ie") as head, vaults_cut_off(lab, "de", "se"):
        code, result = verify(lab, "ie")
        assert code == 1 and result["first_failure"]["object"] == f"vault:ie/{head}", result["first_failure"]
        assert "stale" in result["first_failure"]["reason"] and "high-water mark" in result["first_failure"]["reason"]
        assert {n["embassy"] for n in result["freshness"]["not_comparable"]} == {"de", "se"}
        with no_mark(lab, "ie"):  # nothing anchors it now: never "intact"
            code, result = verify(lab, "ie")
            assert code == 1 and result["first_failure"]["object"] == "vault:ie/freshness"
            assert "freshness not established" in result["first_failure"]["reason"]
            out = restore_refused(lab, "ie")
            assert out["error"]["error"] == "FreshnessNotEstablished", out["error"]
            assert out["freshness"]["established"] is False and out["freshness"]["accepted_unanchored"] is False
            assert not mark(lab, "ie").exists()  # a refused verify raises no mark
    # Put back, vaults unreachable, no mark: only the operator's explicit acceptance passes, and it is recorded.
    with vaults_cut_off(lab, "de", "se"), no_mark(lab, "ie"):
        assert verify(lab, "ie")[0] == 1
        code, result = verify(lab, "ie", "--accept-unanchored")
        assert code == 0 and result["freshness"]["accepted_unanchored"] is True, result["first_failure"]
        mark(lab, "ie").unlink()  # what the accepted verify recorded: the aside mark goes back in its place


def test_a_rollback_is_stale_when_the_other_vaults_hold_broken_chains(lab: LabState, chains: int) -> None:
    with middle_manifest_flipped(lab, "se"), middle_manifest_flipped(lab, "ie"):
        for other in ("se", "ie"):
            code, result = verify(lab, other)
            assert code == 1 and "not canonical" in result["first_failure"]["reason"], result["first_failure"]
        with rolled_back(lab, "de") as head, no_mark(lab, "de"):
            # Their chains fail in the middle, yet their newer manifests bear home's signature: evidence.
            code, result = verify(lab, "de")
            assert code == 1 and result["first_failure"]["object"] == f"vault:de/{head}", result["first_failure"]
            assert "stale" in result["first_failure"]["reason"]
            assert {a["source"] for a in result["freshness"]["anchors"]} == {"vault:se", "vault:ie"}


# --------------------------------------------------------------------------- item 3: hostile objects


def test_a_hostile_object_fails_only_its_own_vault(lab: LabState, chains: int) -> None:
    f = Filer(lab, "se")
    nested = f"{f.root}/manifests/0000000000.json"  # sorts first: se's chain fails at it
    huge = f"{f.root}/manifests/9999999999.json"
    f.write(nested, b"[" * 200_000 + b"]" * 200_000)
    f.write(huge, b'{"manifest":' + b" " * (manifest.MAX_BYTES + 10) + b"}")
    try:
        code, result = verify(lab, "se")
        assert code == 1 and result["first_failure"]["object"] == "manifests/0000000000.json", result["first_failure"]
        assert "nested deeper" in result["first_failure"]["reason"]
        for embassy in ("de", "ie"):  # they read se's vault for freshness: no crash, se's other manifests count
            code, result = verify(lab, embassy)
            assert code == 0, result["first_failure"]
            assert "vault:se" in {a["source"] for a in result["freshness"]["anchors"]}
        f.delete(nested)
        code, result = verify(lab, "se")
        assert code == 1 and result["first_failure"]["object"] == "manifests/9999999999.json"
        assert "not read" in result["first_failure"]["reason"], result["first_failure"]
    finally:
        for path in (nested, huge):
            subprocess.run(["ip", "netns", "exec", f.vault.netns, "curl", "-sS", "-X", "DELETE", f"{f.base}{path}"],
                           capture_output=True, check=False, timeout=30)
    assert verify(lab, "se")[0] == 0


# --------------------------------------------------------------------------- item 4: locks


def _wal_key(f: Filer, repo: str) -> str:
    folder = f"{repo}/archive/home/{f.archive_id}/0000000100000000"
    entries = [e["FullPath"].rsplit("/", 1)[1].removesuffix(".versions") for e in f.entries(folder)]
    names = sorted(n for n in entries if re.fullmatch(r"[0-9A-F]{24}-[0-9a-f]{40}\.zst", n))
    return f"{folder}/{names[0]}"  # the repo's first segment: the head's wal.first


def _pack_key(f: Filer, restic: str) -> str:
    sub = sorted(e["FullPath"].rsplit("/", 1)[1] for e in f.entries(f"{restic}/court-files/data"))[0]
    name = sorted(e["FullPath"].rsplit("/", 1)[1] for e in f.entries(f"{restic}/court-files/data/{sub}"))[0]
    return f"{restic}/court-files/data/{sub}/{name.removesuffix('.versions')}"


def test_an_object_that_lost_its_lock_is_named(lab: LabState, chains: int) -> None:
    # The same bytes written again below S3: content intact, every checksum passes, the Object Lock is gone.
    f = Filer(lab, "ie")
    generation = controller_secrets.generation(Path(lab.dir) / "secrets", "ie")
    pg, rs = dataplane.pgbackrest_path(generation).lstrip("/"), dataplane.restic_base(generation)
    names = sorted(e["FullPath"].rsplit("/", 1)[1].removesuffix(".versions") for e in f.entries("manifests"))
    for key in (f"manifests/{names[0]}", _wal_key(f, pg), _pack_key(f, rs)):
        path = f.latest_version_file(key)
        original = f.read(path)
        f.write(path, original)  # the original entry (and its lock) kept aside
        try:
            code, result = verify(lab, "ie")
            out = restore_refused(lab, "ie") if key.startswith("manifests/") else None
        finally:
            f.write(path, original)  # the original entry back, lock included
        assert code == 1 and result["first_failure"]["object"] == f"vault:ie/{key}", (key, result["first_failure"])
        assert "not under a COMPLIANCE lock" in result["first_failure"]["reason"]
        if out is not None:
            assert out["error"]["error"] == "LockInsufficient" and key in out["error"]["message"], out["error"]
    code, result = verify(lab, "ie")
    assert code == 0, result["first_failure"]
    locks = next(c for c in result["checked"] if c["object"] == "vault:ie/locks")
    assert locks["ok"]
