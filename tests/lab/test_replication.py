"""Replication on the lab: signed, hash-chained manifests in every vault, digests equal to home's,
`embassy verify` naming every tampering a host nation could do below S3, identities that cannot do
more than they should, lag and metrics, and faults that lose nothing.

Tampering goes through SeaweedFS's filer (tests/lab/vault_storage.py) and is undone by each test.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from embassy.lab.state import LabState
from embassy.replication import dataplane, manifest
from embassy.replication import secrets as controller_secrets
from tests.lab.conftest import EMBASSY, ROOT, STACK, deploy_once, in_controller_python, ssh
from tests.lab.vault_storage import Filer, flip_byte_at, flip_middle_byte

pytestmark = pytest.mark.lab
EMBASSIES = ("de", "se", "ie")


def embassy_cli(lab: LabState, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EMBASSY_LAB_ID": str(lab.lab_id)}
    return subprocess.run([EMBASSY, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def replicate_once(lab: LabState) -> dict[str, Any]:
    done = embassy_cli(lab, "replicate", "--stack", STACK, "--once", "--json")
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def verify(lab: LabState, embassy: str, *extra: str) -> tuple[int, dict[str, Any]]:
    done = embassy_cli(lab, "verify", "--stack", STACK, "--embassy", embassy, "--json", *extra)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    return done.returncode, json.loads(done.stdout)


def verify_at_once(lab: LabState, *calls: tuple[str, ...]) -> list[tuple[int, dict[str, Any]]]:
    """Several `embassy verify` runs at the same time, each (embassy, *extra), of DIFFERENT embassies (restic
    check locks its repository exclusively): independent vaults and hosts, so their waits on SSH, the vaults and
    each host's pgBackRest and restic overlap. Results in the order of the calls."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: verify(lab, *call), calls))


ROUND_GAP_SECONDS = 6  # rounds further apart than the tightest RPO (5 s): a vault one round behind is stale


def _newest_gaps(lab: LabState) -> list[float | None]:
    """Per vault, the seconds between its newest two manifests' round times (None: it holds fewer than two)."""
    gaps: list[float | None] = []
    for e in EMBASSIES:
        items = manifests_in_vault(lab, e)
        times = [manifest.parse_time(json.loads(base64.b64decode(i["data"]))["manifest"]["time"]) for i in items[-2:]]
        gaps.append((times[1] - times[0]).total_seconds() if len(times) == 2 else None)
    return gaps


@pytest.fixture(scope="module")
def replicated(lab: LabState) -> dict[str, Any]:
    """A round just made, and in every vault at least two manifests whose rounds are more than the tightest RPO
    apart (what the rollback case needs). In a whole run the vaults hold the earlier modules' rounds, minutes
    apart: one round does. Otherwise (a fresh lab, or home's timer ran a round just before ours) a second one,
    the gap waited out first, as this fixture always did."""
    deploy_once(lab)  # the session's last deploy when the modules since left it intact (conftest.KEEPS_DEPLOY)
    doc = replicate_once(lab)
    if all(gap is not None and gap > ROUND_GAP_SECONDS for gap in _newest_gaps(lab)):
        return doc
    time.sleep(ROUND_GAP_SECONDS)
    return replicate_once(lab)


READ_MANIFESTS = r"""
import base64, json, sys
from embassy.lab.buckets import client
spec = json.loads(sys.argv[1])
s3 = client(spec["endpoint"], spec["ca_file"], spec["credentials"])
out = []
for item in s3.list_objects_v2(Bucket=spec["bucket"], Prefix="manifests/").get("Contents", []):
    got = s3.get_object(Bucket=spec["bucket"], Key=item["Key"])
    out.append({"key": item["Key"], "data": base64.b64encode(got["Body"].read()).decode(),
                "lock": got.get("ObjectLockMode"), "until": str(got.get("ObjectLockRetainUntilDate"))})
print(json.dumps(out))
"""


def manifests_in_vault(lab: LabState, embassy: str) -> list[dict[str, Any]]:
    v = lab.vault(embassy)
    spec = {"endpoint": v.endpoint, "ca_file": v.ca_file, "credentials": v.reader_credentials, "bucket": v.bucket}
    done = in_controller_python(lab, READ_MANIFESTS, json.dumps(spec))
    assert done.returncode == 0, done.stderr[-2000:]
    items: list[dict[str, Any]] = json.loads(done.stdout)
    return items


@contextmanager
def forged_next_round(lab: LabState, embassy: str) -> Iterator[str]:
    """The host nation's forgery, planted for the block and moved aside after it: the next round, the right shape
    and chain link, signed by another key. Yields its key. Planted for real: an S3 object the read-only identity
    lists and reads, not only a filer entry. That read makes SeaweedFS "heal" the version folder, after which its
    listing leaves the key out while GET still serves it: what the block's checks meet is the hidden forgery.
    Hold home's rounds around it: one landing on the forgery's key would be refused by home and hide nothing."""
    f = Filer(lab, embassy)
    items = manifests_in_vault(lab, embassy)
    head = json.loads(base64.b64decode(items[-1]["data"]))["manifest"]
    forged_key = manifest.object_key(head["round"] + 1)
    forged = {**head, "round": head["round"] + 1, "previous_sha256": manifest.sha256(base64.b64decode(items[-1]["data"]))}
    f.write(f"{f.root}/{forged_key}.versions/v_forged", manifest.sign(forged, Ed25519PrivateKey.generate()))
    try:
        assert forged_key in [i["key"] for i in manifests_in_vault(lab, embassy)]  # an S3 object, not only a file
        yield forged_key
    finally:
        f.move(f"{f.root}/{forged_key}.versions", f"{f.root}/aside-{secrets.token_hex(4)}")


def public_key(lab: LabState) -> Ed25519PublicKey:
    key = load_pem_public_key((Path(lab.dir) / "manifest_public_key.pem").read_bytes())
    assert isinstance(key, Ed25519PublicKey)
    return key


def test_every_vault_holds_signed_chained_locked_manifests(lab: LabState, replicated: dict[str, Any]) -> None:
    key = public_key(lab)
    assert {e["name"] for e in replicated["embassies"]} == set(EMBASSIES)
    for entry in replicated["embassies"]:
        assert entry["errors"] == [] and entry["manifest"]["round"] == replicated["round"]
        items = manifests_in_vault(lab, entry["name"])
        assert len(items) >= 2
        previous = None
        for item in items:
            data = base64.b64decode(item["data"])
            doc = json.loads(data)
            body = doc["manifest"]
            # Checked with `cryptography` and the JSON module directly, not with embassy's own verifier.
            canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
            key.verify(base64.b64decode(doc["signature"]["value"]), canonical)
            assert body["embassy"] == entry["name"] and body["stack"] == STACK
            assert body["previous_sha256"] == previous
            previous = manifest.sha256(data)
        assert previous == entry["manifest"]["sha256"]  # the newest is the one the round reported
        # Locked by the bucket's default retention. (Only the newest is asserted: the tampering tests put
        # bytes back through the filer, which keeps the content but not the lock metadata of a version.)
        assert items[-1]["lock"] == "COMPLIANCE", items[-1]["key"]


def test_manifest_digests_equal_what_home_computes(lab: LabState, replicated: dict[str, Any]) -> None:
    head = json.loads(base64.b64decode(manifests_in_vault(lab, "de")[-1]["data"]))["manifest"]
    by_name = {r["name"]: r for r in head["registers"]}
    digest = "sudo env PYTHONPATH=/opt/embassy python3 -m replication.digest"
    for name, db in (("population", "population"), ("land-register", "land_register")):
        now = json.loads(ssh(lab, "home", f"sudo runuser -u embassy_digest -- env PYTHONPATH=/opt/embassy python3 -m "
                                          f"replication.digest postgres {db}").stdout)
        assert now["tables"] == by_name[name]["digest"]["tables"] and now["tables"]
        assert by_name[name]["backup_label"] and by_name[name]["wal"]["last"]
    files = json.loads(ssh(lab, "home", f"{digest} files /srv/registers/court-files").stdout)
    assert files == by_name["court-files"]["digest"] and files["files"] > 0


def test_verify_finds_every_vault_intact(lab: LabState, replicated: dict[str, Any]) -> None:
    results = verify_at_once(lab, *((e, *(["--full"] if e == "ie" else [])) for e in EMBASSIES))
    for embassy, (code, result) in zip(EMBASSIES, results, strict=True):
        assert code == 0 and result["intact"], (embassy, result["first_failure"])
        assert result["head"]["round"] >= replicated["round"]  # home's round timer may have added one meanwhile
        objects = {c["object"] for c in result["checked"]}
        assert "pgbackrest:repo" in objects and f"vault:{embassy}/freshness" in objects
        assert any(o.startswith("restic:court-files") for o in objects)


ROUND_TIMER = "embassy-replication-round.timer"


@contextmanager
def rounds_held(lab: LabState) -> Iterator[None]:
    """Home's round timer stopped, and any round it had started finished: no round lands on a key a test plants."""
    ssh(lab, "home", f"sudo systemctl stop {ROUND_TIMER}; for _ in $(seq 120); do "
                     "systemctl is-active -q embassy-replication-round.service || exit 0; sleep 1; done; exit 1")
    try:
        yield
    finally:
        ssh(lab, "home", f"sudo systemctl start {ROUND_TIMER}")


def test_verify_through_the_labs_site_inventory_agrees_with_the_lab_target(lab: LabState,
                                                                         replicated: dict[str, Any]) -> None:
    """`--target site --inventory <the lab's own>` takes the generic path (inventory, SSH argv, vault access) and
    gives the lab target's verdicts, intact and tampered (a manifest signed by another key) alike: same exit,
    head, first failure and objects checked. A replication round through it (home reached over the inventory's
    SSH, the warm standbys' holds moved through its vault access) reports what a round through the lab does."""
    done = embassy_cli(lab, "lab", "status", "--stack", STACK, "--json", timeout=120)
    inventory = json.loads(done.stdout)["site_inventory"]
    assert Path(inventory).is_file(), done.stdout[-2000:]
    site = ("--target", "site", "--inventory", inventory)

    def round_through(*target: str) -> dict[str, Any]:
        done = embassy_cli(lab, "replicate", "--stack", STACK, "--once", "--json", *target)
        assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
        doc: dict[str, Any] = json.loads(done.stdout)
        return doc

    def verdict(doc: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Per embassy: errors, whether its manifest is the round's, the registers the lag names, and for a warm
        one that its head was verified through the target (a hold moved to this round, or a standby-side reason)."""
        holds = {h["embassy"]: h for h in doc["holds"]}
        checked = {name: h["round"] == doc["round"] if h["moved"] else
                   not h["reason"].startswith(("vault unreachable", "chain not verified")) for name, h in holds.items()}
        return [(e["name"], e["errors"], e["manifest"]["round"] == doc["round"], [r["name"] for r in e["registers"]],
                 checked.get(e["name"])) for e in doc["embassies"]]

    def same() -> tuple[int, dict[str, Any]]:
        (code_lab, by_lab), (code_site, by_site) = verify(lab, "se"), verify(lab, "se", *site)
        assert (code_site, by_site["intact"], by_site["head"], by_site["first_failure"]) == \
            (code_lab, by_lab["intact"], by_lab["head"], by_lab["first_failure"])
        assert [c["object"] for c in by_site["checked"]] == [c["object"] for c in by_lab["checked"]]
        return code_site, by_site

    # Held: a round of home's timer between the two reads would be another vault.
    with rounds_held(lab):
        by_site = round_through(*site)
        by_lab = round_through()
        assert by_lab["round"] == by_site["round"] + 1 and verdict(by_site) == verdict(by_lab), (by_site, by_lab)
        assert all(errors == [] and own and held is not False for _name, errors, own, _regs, held in verdict(by_site))
        assert any(held for *_, held in verdict(by_site))  # the stack has a warm embassy: its hold was checked
        code, result = same()
        assert code == 0 and result["intact"] and "pgbackrest:repo" in {c["object"] for c in result["checked"]}
        with forged_next_round(lab, "se") as forged_key:  # hidden from listings: verify reads round n+1 unlisted
            code, result = same()
    assert code == 1 and result["first_failure"]["object"] == forged_key
    assert "signed by another key" in result["first_failure"]["reason"]


def wal_key(f: Filer, pg: str, _rs: str, index: int = 0) -> str:
    """The key of a WAL segment of the repo `pg` (first timeline, first log): by default the first of its archive."""
    folder = f"{pg}/archive/home/{f.archive_id}/0000000100000000"
    names = sorted(e["FullPath"].rsplit("/", 1)[1] for e in f.entries(folder) if e["FullPath"].endswith(".zst.versions"))
    return f"{folder}/{names[min(index, len(names) - 1)].removesuffix('.versions')}"


def _backup_key(f: Filer, pg: str, _rs: str) -> str:
    label = sorted(e["FullPath"].rsplit("/", 1)[1] for e in f.entries(f"{pg}/backup/home")
                   if e["FullPath"].rsplit("/", 1)[1][:8].isdigit())[-1]
    folder = f"{pg}/backup/home/{label}/pg_data/global"
    name = sorted(e["FullPath"].rsplit("/", 1)[1] for e in f.entries(folder) if e["FullPath"].endswith(".versions"))[0]
    return f"{folder}/{name.removesuffix('.versions')}"


def _pack_key(f: Filer, _pg: str, rs: str) -> str:
    sub = sorted(e["FullPath"].rsplit("/", 1)[1] for e in f.entries(f"{rs}/court-files/data"))[0]
    name = sorted(e["FullPath"].rsplit("/", 1)[1] for e in f.entries(f"{rs}/court-files/data/{sub}"))[0]
    return f"{rs}/court-files/data/{sub}/{name.removesuffix('.versions')}"


def _manifest_key(f: Filer, _pg: str, _rs: str) -> str:
    names = sorted(e["FullPath"].rsplit("/", 1)[1] for e in f.entries("manifests"))
    return f"manifests/{names[0].removesuffix('.versions')}"


def named_object(key: str, pg: str, rs: str) -> str:
    """The object `embassy verify` must name for a tampered vault key: the very file, as pgBackRest or restic holds it."""
    for prefix, name in ((f"{pg}/archive/home/", "pgbackrest:"), (f"{pg}/backup/home/", "pgbackrest:"),
                         (f"{rs}/", "restic:")):
        if key.startswith(prefix):
            return name + key.removeprefix(prefix)
    return key  # a manifest: its own key


def _what_pgbackrest_says(lab: LabState, embassy: str) -> str:
    """pgBackRest's own words on the tampered repo (shown only when a test fails to find the object named)."""
    pgbr = "sudo runuser -u postgres -- pgbackrest"
    done = ssh(lab, f"enclave-{embassy}", f"{pgbr} --stanza=home --log-level-console=info verify 2>&1 | tail -c 3000; "
                                           f"{pgbr} --output=json --recurse repo-ls archive/home 2>&1 | head -c 1500",
               check=False, timeout=300)
    return done.stdout + done.stderr


# The WAL segment is the first of its archive, damaged near its start: pgBackRest verify reads that segment's header
# in its main process before any per-file check, and aborts there without naming it (verify.py names the one segment
# that read can be). A segment damaged elsewhere is named by verify's per-file check (test_restore's warm case).
@pytest.mark.parametrize(("what", "locate", "flip", "full"), [
    ("WAL segment", wal_key, lambda data: flip_byte_at(data, 64), False),
    ("backup file", _backup_key, flip_middle_byte, False),
    ("restic pack", _pack_key, flip_middle_byte, True),  # restic reads every pack only under --full
    ("manifest", _manifest_key, flip_middle_byte, False),
])
def test_storage_tampering_is_named(lab: LabState, replicated: dict[str, Any], what: str, locate: Any, flip: Any,
                                    full: bool) -> None:
    f = Filer(lab, "se")
    generation = controller_secrets.generation(Path(lab.dir) / "secrets", "se")  # what verify checks: the head's key generation
    pg, rs = dataplane.pgbackrest_path(generation).lstrip("/"), dataplane.restic_base(generation)
    key = locate(f, pg, rs)
    path = f.latest_version_file(key)
    original = f.read(path)
    f.write(path, flip(original))
    try:
        code, result = verify(lab, "se", *(["--full"] if full else []))
        named = (result["first_failure"] or {}).get("object") == named_object(key, pg, rs)
        seen = "" if named or not key.startswith(pg) else _what_pgbackrest_says(lab, "se")
    finally:
        f.write(path, original)
    assert code == 1 and not result["intact"], f"tampered {what} {key} not detected"
    assert named, f"{key}\n{json.dumps(result['first_failure'])}\n{seen}"
    # Put back byte for byte (a second verify per case proved no more than this, at 8-10 s each): the exact object
    # named above is the proof that this change, and nothing left by another case, made verify fail.
    assert f.read(path) == original


def test_forged_removed_and_rolled_back_manifests_are_named(lab: LabState, replicated: dict[str, Any]) -> None:
    f = Filer(lab, "de")
    items = manifests_in_vault(lab, "de")
    head = json.loads(base64.b64decode(items[-1]["data"]))["manifest"]
    n = head["round"]

    # A forged manifest: valid JSON, the right shape and chain link, signed with another key.
    forged_body = {**head, "round": n + 1, "previous_sha256": manifest.sha256(base64.b64decode(items[-1]["data"]))}
    forged_key = manifest.object_key(n + 1)
    f.write(f"{f.root}/{forged_key}.versions/v_forged", manifest.sign(forged_body, Ed25519PrivateKey.generate()))
    try:
        code, result = verify(lab, "de")
    finally:
        f.move(f"{f.root}/{forged_key}.versions", f"{f.root}/aside-{secrets.token_hex(4)}")
    assert code == 1 and result["first_failure"]["object"] == forged_key
    assert "signed by another key" in result["first_failure"]["reason"]

    # A manifest removed from the middle of the chain: the next one names the broken link.
    middle = manifest.object_key(n - 1)
    aside = f"{f.root}/aside-{secrets.token_hex(4)}"
    f.move(f"{f.root}/{middle}.versions", aside)
    try:
        code, result = verify(lab, "de")
    finally:
        f.move(aside, f"{f.root}/{middle}.versions")
    assert code == 1 and result["first_failure"]["object"] == manifest.object_key(n)
    assert "chain broken" in result["first_failure"]["reason"]

    # Rolled back to an older, validly signed chain: behind the other embassies by more than an objective.
    newest = f"{f.root}/{manifest.object_key(n)}.versions"
    f.move(newest, aside)
    try:
        code, result = verify(lab, "de")
    finally:
        f.move(aside, newest)
    assert code == 1 and "stale" in result["first_failure"]["reason"], result["first_failure"]
    assert result["first_failure"]["object"] == f"vault:de/{manifest.object_key(n - 1)}"
    assert verify(lab, "de")[0] == 0


def test_no_plaintext_reaches_a_vault(lab: LabState, replicated: dict[str, Any]) -> None:
    marker = f"embassy-marker-{secrets.token_hex(8)}"
    ssh(lab, "home", f"sudo runuser -u postgres -- psql -X -q -d population -c \"UPDATE persons SET first_name = "
                     f"'{marker}' WHERE id = (SELECT min(id) FROM persons)\"")
    ssh(lab, "home", f"echo {marker} | sudo tee /srv/registers/court-files/{marker}.txt >/dev/null")
    try:
        replicate_once(lab)
        for v in lab.vaults:
            found = subprocess.run(["grep", "-rlaF", "-e", marker, v.data_dir], capture_output=True, text=True, check=False)
            assert found.returncode == 1, f"plaintext marker in vault {v.embassy}: {found.stdout[:300]}"
    finally:
        ssh(lab, "home", f"sudo rm -f /srv/registers/court-files/{marker}.txt")


IDENTITY_PROBE = r"""
import json, sys
from botocore.exceptions import ClientError
from embassy.lab.buckets import client
spec = json.loads(sys.argv[1])
agent = client(spec["endpoint"], spec["ca_file"], spec["agent"])
reader = client(spec["endpoint"], spec["ca_file"], spec["reader"])
b = spec["bucket"]
out = {}
def attempt(name, call):
    try:
        call()
        out[name] = "allowed"
    except ClientError as exc:
        out[name] = exc.response["Error"]["Code"]
versions = agent.list_object_versions(Bucket=b, Prefix="manifests/")["Versions"]
v = versions[0]
attempt("agent_delete_version", lambda: agent.delete_object(Bucket=b, Key=v["Key"], VersionId=v["VersionId"]))
attempt("agent_shorten_lock", lambda: agent.put_object_retention(Bucket=b, Key=v["Key"], VersionId=v["VersionId"],
        Retention={"Mode": "GOVERNANCE", "RetainUntilDate": "2027-01-01T00:00:00Z"}))
attempt("reader_write", lambda: reader.put_object(Bucket=b, Key="manifests/9999999999.json", Body=b"x"))
attempt("reader_read", lambda: reader.get_object(Bucket=b, Key=v["Key"])["Body"].read())
still = [x["VersionId"] for x in agent.list_object_versions(Bucket=b, Prefix=v["Key"])["Versions"]]
out["version_still_there"] = v["VersionId"] in still
print(json.dumps(out))
"""


def test_agent_cannot_delete_or_unlock_and_reader_cannot_write(lab: LabState, replicated: dict[str, Any]) -> None:
    v = lab.vault("ie")
    spec = {"endpoint": v.endpoint, "ca_file": v.ca_file, "agent": v.agent_credentials, "reader": v.reader_credentials,
            "bucket": v.bucket}
    done = in_controller_python(lab, IDENTITY_PROBE, json.dumps(spec))
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["agent_delete_version"] != "allowed" and out["agent_shorten_lock"] != "allowed", out
    assert out["reader_write"] == "AccessDenied" and out["reader_read"] == "allowed", out
    assert out["version_still_there"] is True


def home_metrics(lab: LabState) -> str:
    """The Prometheus metrics page of home's exporter, read on home (its firewall admits no one else)."""
    url = f"http://{lab.host('home').address}:9750/metrics"
    return ssh(lab, "home", f"python3 -c \"import urllib.request; print(urllib.request.urlopen('{url}', timeout=10)"
                            ".read().decode())\"").stdout


def _metrics_when(lab: LabState, line: str, within: float = 30) -> str:
    """Home's metrics page once it shows `line` (the exporter reads the lag every 5 s), or at `within` s."""
    deadline = time.monotonic() + within
    while True:
        metrics = home_metrics(lab)
        if line in metrics or time.monotonic() > deadline:
            return metrics
        time.sleep(0.5)


def test_lag_is_measured_per_embassy_and_exposed_as_metrics(lab: LabState, replicated: dict[str, Any]) -> None:
    done = embassy_cli(lab, "replicate", "--stack", STACK, "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(done.stdout)
    for e in doc["embassies"]:
        for r in e["registers"]:
            assert r["lag_seconds"] is not None and r["lag_seconds"] >= 0, (e["name"], r)
            assert r["alert"] is (r["lag_seconds"] > r["rpo_bound_seconds"])
        if e["mode"] == "warm":
            assert e["flush_lag_ms"] is not None
    metrics = home_metrics(lab)
    assert 'embassy_replication_lag_seconds{embassy="de",register="population"}' in metrics
    assert 'embassy_replication_alert{embassy="ie"}' in metrics
    assert 'embassy_replication_flush_lag_milliseconds{embassy="se"}' in metrics


def test_deploy_left_no_error_in_agent_or_standby_logs(lab: LabState, replicated: dict[str, Any]) -> None:
    for host in ("enclave-de", "enclave-se"):
        log = ssh(lab, host, "sudo sh -c 'cat /var/log/postgresql/*.log'").stdout
        assert "ERROR" not in log, f"{host}: " + "\n".join(x for x in log.splitlines() if "ERROR" in x)[:1000]
    agent = ssh(lab, "home", "sudo sh -c 'cat /var/log/pgbackrest/*.log; journalctl -q -u embassy-replication-round "
                             "-u embassy-heartbeat -u embassy-replication-monitor --no-pager'").stdout
    assert "ERROR" not in agent and "Traceback" not in agent, agent[-2000:]


@pytest.fixture
def vault_link_down(lab: LabState) -> Iterator[str]:
    """The de vault's link to the lab switch, cut for the test and always restored after it."""
    port = _vault_port(lab, "de")
    subprocess.run(["ip", "-n", lab.switch_netns, "link", "set", port, "down"], check=True)
    try:
        yield port
    finally:
        subprocess.run(["ip", "-n", lab.switch_netns, "link", "set", port, "up"], check=True)


def _vault_port(lab: LabState, embassy: str) -> str:
    """The switch-side veth of a vault's namespace (its peer is eth0 in the vault's namespace)."""
    peer = subprocess.run(["ip", "-n", lab.vault(embassy).netns, "-o", "link", "show", "eth0"], capture_output=True,
                          text=True, check=True).stdout
    index = peer.split("@if", 1)[1].split(":", 1)[0]
    links = subprocess.run(["ip", "-n", lab.switch_netns, "-o", "link"], capture_output=True, text=True, check=True).stdout
    for line in links.splitlines():
        if line.startswith(f"{index}:"):
            return line.split(":")[1].strip().split("@")[0]
    raise AssertionError(f"no switch port for vault {embassy}")


OUTAGE_SECONDS = 30  # bounded: the vault is cut off for this long while home takes writes


def _write_probe_rows(lab: LabState, n: int) -> str:
    """Commit n rows at home (a table of the heartbeat database: same cluster, same WAL); the segment holding them."""
    sql = ("CREATE TABLE IF NOT EXISTS fault_probe (id serial PRIMARY KEY, note text); "
           f"INSERT INTO fault_probe (note) SELECT 'row ' || g FROM generate_series(1, {n}) g; "
           "SELECT pg_walfile_name(pg_current_wal_lsn());")
    out = ssh(lab, "home", f"sudo runuser -u postgres -- psql -X -Atq -d embassy_monitor -c \"{sql}\"").stdout.split()
    return out[-1]


def _archived_max(lab: LabState) -> dict[int, str]:
    info = json.loads(ssh(lab, "home", "sudo runuser -u postgres -- pgbackrest --stanza=home --output=json info").stdout)
    return {int(a["database"]["repo-key"]): a["max"] for a in info[0]["archive"]}


def test_an_agent_killed_mid_backup_or_snapshot_leaves_the_vault_consistent(lab: LabState,
                                                                           replicated: dict[str, Any]) -> None:
    big = "/srv/registers/court-files/fault-probe.bin"
    ssh(lab, "home", f"sudo head -c 64000000 /dev/urandom | sudo tee {big} >/dev/null")
    try:
        for unit, command in (
            ("embassy-test-backup", "runuser -u postgres -- pgbackrest --stanza=home --repo=2 --type=full backup"),
            ("embassy-test-snapshot", "embassy-restic se court-files backup --host home /srv/registers/court-files"),
        ):
            ssh(lab, "home", f"sudo systemd-run --quiet --unit={unit} {command}")
            time.sleep(2)
            # Only what this test started: the transient unit's own processes.
            ssh(lab, "home", f"sudo systemctl kill -s KILL {unit}; sudo systemctl reset-failed {unit}", check=False)
        replicate_once(lab)
        code, result = verify(lab, "se")
        assert code == 0, result["first_failure"]
    finally:
        ssh(lab, "home", f"sudo rm -f {big}")


def _restart_vault_with(lab: LabState, embassy: str, agent_actions: list[str]) -> None:
    """Rewrite the vault's identities (the agent's allowed actions) and restart it: SeaweedFS reads them at start."""
    from embassy.lab import system, vaults

    v = lab.vault(embassy)
    path = Path(v.data_dir).parent / "identities.json"
    doc = json.loads(path.read_text())
    for identity in doc["identities"]:
        if identity["name"] == "agent":
            identity["actions"] = agent_actions
    system.write_private(path, json.dumps(doc, indent=2) + "\n")
    system.stop(v.weed)
    v.weed = vaults.start(v)
    lab.save()
    vaults.wait_ready(lab, v)


def test_a_vault_cut_off_and_one_refusing_writes_alert_hold_nobody_back_and_catch_up(
        lab: LabState, replicated: dict[str, Any], vault_link_down: str) -> None:
    """Two independent faults in ONE round (each case made its own round and catch-up before: the round with a
    faulty vault is the slowest there is, its archive wait runs to the deadline): de's vault cut off at the switch,
    ie's refusing the agent's writes (its credentials revoked for writing). Each is reported on its own embassy
    with its own cause and alerted; se, healthy, is held back by neither; home keeps serving; both catch up, with
    no gap in any repo, and verify intact."""
    cut_at = time.monotonic()  # de's link went down just before (the fixture): the outage is at least as long
    _restart_vault_with(lab, "ie", ["Read", "List"])
    try:
        segment = _write_probe_rows(lab, 200)
        done = embassy_cli(lab, "replicate", "--stack", STACK, "--once", "--json")
        doc = json.loads(done.stdout)
        by_name = {e["name"]: e for e in doc["embassies"]}
        de, ie, se = by_name["de"], by_name["ie"], by_name["se"]
        assert done.returncode == 1 and de["errors"] and de["alert"] and de["manifest"] is None, de
        assert any("vault-de" in err for err in de["errors"]) and not any("AccessDenied" in err for err in de["errors"])
        assert ie["alert"] and ie["manifest"] is None, ie
        assert any("manifest upload failed" in err and "AccessDenied" in err for err in ie["errors"]), ie["errors"]
        assert not any("vault-de" in err for err in ie["errors"]), ie["errors"]  # de's outage is de's alone
        assert se["errors"] == [] and se["manifest"]["round"] == doc["round"], se
        assert ssh(lab, "home", "sudo runuser -u postgres -- psql -X -Atq -d embassy_monitor -c 'SELECT count(*) > 0 "
                                "FROM fault_probe'").stdout.strip() == "t"  # home keeps serving
        metrics = _metrics_when(lab, 'embassy_replication_vault_ok{embassy="ie"} 0.0')  # read every 5 s
        for line in ('embassy_replication_vault_ok{embassy="ie"} 0.0', 'embassy_replication_alert{embassy="ie"} 1.0',
                     'embassy_replication_vault_ok{embassy="de"} 0.0', 'embassy_replication_alert{embassy="de"} 1.0',
                     'embassy_replication_vault_ok{embassy="se"} 1.0'):
            assert line in metrics, (line, metrics[-2000:])
    finally:
        _restart_vault_with(lab, "ie", ["Read", "Write", "List"])
    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - cut_at)))  # the round alone usually lasts longer
    subprocess.run(["ip", "-n", lab.switch_netns, "link", "set", vault_link_down, "up"], check=True)
    for _ in range(3):  # bounded: the archiver retries with back-off
        done = embassy_cli(lab, "replicate", "--stack", STACK, "--once", "--json")
        if done.returncode == 0:
            break
    assert done.returncode == 0, done.stdout[-2000:]
    archived = _archived_max(lab)
    assert all(m[8:] >= segment[8:] for m in archived.values()), (segment, archived)  # no gap in any repo
    assert ssh(lab, "home", "sudo runuser -u postgres -- pgbackrest --stanza=home check", check=False).returncode == 0
    results = verify_at_once(lab, ("de",), ("ie",))  # different vaults and hosts: at once
    assert [code for code, _ in results] == [0, 0], [r["first_failure"] for _, r in results]


ROUND_ON_HOME = "sudo env PYTHONPATH=/opt/embassy python3 -m replication.round run"
ROUND_STATE = "/var/lib/embassy/replication/state.json"


def _round_on_home(lab: LabState) -> tuple[int, dict[str, Any]]:
    """One round run on home directly (as its unit does), its exit code and report."""
    done = ssh(lab, "home", ROUND_ON_HOME, check=False, timeout=600)
    assert done.stdout.strip(), done.stderr[-2000:]
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return done.returncode, report


def _heads(lab: LabState) -> dict[str, list[tuple[str, bytes]]]:
    return {e: [(i["key"], base64.b64decode(i["data"])) for i in manifests_in_vault(lab, e)] for e in EMBASSIES}


def _assert_continued(lab: LabState, before: dict[str, list[tuple[str, bytes]]], n: int) -> dict[str, list[tuple[str, bytes]]]:
    """Every vault: its old chain untouched, one manifest more at round n, linked to its newest head before."""
    after = _heads(lab)
    for e in EMBASSIES:
        assert after[e][:-1] == before[e], f"{e}: a manifest was overwritten or lost"
        chain, failure = manifest.verify_chain(after[e], public_key(lab), stack=STACK, embassy=e)
        assert failure is None and chain[-1].round == n, (e, failure)
        assert chain[-1].body["previous_sha256"] == manifest.sha256(before[e][-1][1]) and "new_chain" not in chain[-1].body
    return after


def test_a_lost_round_state_continues_the_chain_and_refuses_to_restart_blind(lab: LabState,
                                                                             replicated: dict[str, Any]) -> None:
    """Home's round state corrupted, then deleted with every vault cut off: never a second chain from round 1."""
    ssh(lab, "home", "sudo systemctl stop embassy-replication-round.timer")  # no timer round in between
    ports = [_vault_port(lab, e) for e in EMBASSIES]
    try:
        before = _heads(lab)
        n = max(manifest.verify(*items[-1], public_key(lab)).round for items in before.values())
        # Corrupted: recovered from the vaults (the newest verified head), set aside, never read as round 0.
        ssh(lab, "home", f"echo '{{\"round\": 1, \"embass' | sudo tee {ROUND_STATE} >/dev/null")
        code, report = _round_on_home(lab)
        assert code == 0 and report["round"] == n + 1 and report["recovered"], report
        before = _assert_continued(lab, before, n + 1)
        assert ssh(lab, "home", f"sudo ls {ROUND_STATE}.unreadable-*").stdout.strip()
        # Deleted, and no vault answers: refused before anything is shipped; no state is invented.
        ssh(lab, "home", f"sudo rm {ROUND_STATE}")
        for port in ports:
            subprocess.run(["ip", "-n", lab.switch_netns, "link", "set", port, "down"], check=True)
        started = time.monotonic()
        code, report = _round_on_home(lab)
        assert code == 1 and report["round"] is None and "no vault answers" in report["refused"]["reason"], report
        assert time.monotonic() - started < 60
        assert ssh(lab, "home", f"sudo test -e {ROUND_STATE}", check=False).returncode == 1
        for port in ports:
            subprocess.run(["ip", "-n", lab.switch_netns, "link", "set", port, "up"], check=True)
        # The vaults back: the chain goes on at n + 2, linked to the head written at n + 1.
        code, report = _round_on_home(lab)
        assert code == 0 and report["round"] == n + 2 and report["recovered"], report
        _assert_continued(lab, before, n + 2)
    finally:
        for port in ports:
            subprocess.run(["ip", "-n", lab.switch_netns, "link", "set", port, "up"], check=True)
        ssh(lab, "home", "sudo systemctl start embassy-replication-round.timer")
