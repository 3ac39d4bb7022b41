"""What a hostile host can serve, without a lab: parsers fed hostile bytes, freshness against every anchor,
lock verdicts, and the restore taking exactly the chain that verified (issue 21, items 1-4).

The adversary: a host nation with full control of one vault's storage, locks, network path and timing, and
no signing key. Each test names what it would want to pass wrongly.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import random
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from embassy import errors
from embassy.custody import kit
from embassy.drill import restore
from embassy.errors import UserError
from embassy.model import load_stack
from embassy.replication import freshness, manifest
from embassy.replication import verify as v

from .custody_fixtures import MemoryVaults, controller, issue
from .manifest_chains import signed_chain

ROOT = Path(__file__).resolve().parents[2]
KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key()
T0 = dt.datetime(2026, 12, 2, 10, 0, 0, tzinfo=dt.UTC)


def _body(n: int, previous: str | None, embassy: str = "de", minutes: int = 10) -> dict[str, Any]:
    return {"format": manifest.FORMAT, "stack": "rehearsal", "state": {"name": "Estonia", "code": "EE"},
            "embassy": embassy, "mode": "warm", "round": n,
            "time": (T0 + dt.timedelta(minutes=minutes * n)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "previous_sha256": previous,
            "registers": [{"name": "population", "kind": "postgres", "repo_path": "/pgbackrest",
                           "backup_label": "20261202-100000F_20261202-110000D",
                           "wal": {"first": "000000010000000000000002", "last": "000000010000000000000009"},
                           "digest": {"lsn": "0/2FFFFF0"}},
                          {"name": "court-files", "kind": "files", "repository": "restic/court-files",
                           "snapshot_id": "ab" * 32}]}


def _chain(n: int, embassy: str = "de") -> list[tuple[str, bytes]]:
    return signed_chain(n, _body, KEY, embassy)


def _stored(objects: list[tuple[str, bytes]], **lock: Any) -> list[v.Stored]:
    return [v.Stored(k, d, len(d), **lock) for k, d in objects]


# --------------------------------------------------------------------------- item 3: parsers


HOSTILE = [
    (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),  # RecursionError in the C decoder, once
    (b'{"a":' * 20 + b"1" + b"}" * 20, "nested deeper"),  # not deep enough to recurse out, still too deep
    (b" " * (manifest.MAX_BYTES + 1), "more than"),
    (b'{"manifest":{},"manifest":{}}', "duplicate key"),
    (b'{"manifest":"\xff\xfe"}', "not UTF-8"),
    ("{}".encode("utf-16"), "not UTF-8"),  # json.loads(bytes) would sniff UTF-16: not here
    (b'{"round":' + b"9" * 5000 + b"}", "not JSON of a manifest"),  # int longer than Python takes
    (b'{"manifest":NaN,"signature":{}}', "not a manifest"),
    (b"", "not JSON of a manifest"),
    (b'"\\ud800"', "not a manifest"),
    (b'{"manifest":[],"signature":{}}', "must be objects"),
]


@pytest.mark.parametrize(("data", "reason"), HOSTILE)
def test_hostile_bytes_under_manifests_raise_only_a_named_manifest_error(data: bytes, reason: str) -> None:
    # Adversary: wants a crash (no verdict) in every embassy's verify, or a parse two readers disagree on.
    with pytest.raises(manifest.ManifestError, match=reason):
        manifest.verify("manifests/0000000001.json", data, PUBLIC)


def test_random_damage_to_a_manifest_raises_nothing_but_manifest_error() -> None:
    key, data = _chain(1)[0]
    rng = random.Random(21)
    for _ in range(3000):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        cut = bytes(damaged[: rng.randint(0, len(damaged))]) if rng.random() < 0.2 else bytes(damaged)
        try:
            manifest.verify(key, cut, PUBLIC)
        except manifest.ManifestError:
            continue


@pytest.mark.parametrize(("registers", "reason"), [
    (["population"], r"registers\[0\] is not a register"),
    ([{"name": "population", "kind": "postgres", "wal": "all of it"}], r"registers\[0\].wal is not a dict"),
    ([{"name": "population", "kind": "postgres", "wal": {"last": 7}}], "names no segment"),
    ([{"name": "population", "kind": "tape"}], "is not a register"),
])
def test_a_signed_body_of_the_wrong_shape_is_refused_not_crashed_on(registers: list[Any], reason: str) -> None:
    # Adversary: none can sign; this guards the verifier against a home bug turning into a KeyError later.
    body = {**_body(1, None), "registers": registers}
    with pytest.raises(manifest.ManifestError, match=reason):
        manifest.verify(manifest.object_key(1), manifest.sign(body, KEY), PUBLIC)
    with pytest.raises(manifest.ManifestError, match="'time' is not"):
        manifest.verify(manifest.object_key(1), manifest.sign({**_body(1, None), "time": "noon"}, KEY), PUBLIC)


def test_an_object_under_manifests_that_is_not_of_the_chain_is_its_vaults_finding() -> None:
    objects = [*_chain(3), ("manifests/notes.txt", b"hello")]
    chain, failure = manifest.verify_chain(objects, PUBLIC, stack="rehearsal", embassy="de")
    assert [m.round for m in chain] == [1, 2, 3] and failure is not None and failure[0] == "manifests/notes.txt"
    _, failure = manifest.verify_chain([*_chain(2), _chain(2)[1]], PUBLIC, stack="rehearsal", embassy="de")
    assert failure is not None and "listed twice" in failure[1]


def test_an_oversized_object_fails_where_it_stands_in_the_chain() -> None:
    objects = [*_stored(_chain(2)), v.Stored("manifests/0000000003.json", None, manifest.MAX_BYTES + 1)]
    chain, failure = v.walk(objects, PUBLIC, stack="rehearsal", embassy="de")
    assert [m.round for m in chain] == [1, 2]
    assert failure is not None and failure[0] == "manifests/0000000003.json" and "not read" in failure[1]


def _reader_json(objects: list[dict[str, Any]]) -> str:
    return json.dumps({"ok": True, "objects": objects})


@pytest.mark.parametrize(("stdout", "error", "named"), [
    (_reader_json([{"key": "manifests/1", "data": "%%%not base64", "size": 3}]), v.VaultGarbled, "vault:se/manifests/1"),
    (_reader_json([{"key": "manifests/1", "data": "aGk=", "size": -1}]), v.VaultGarbled, "vault:se/manifests/1"),
    (_reader_json([{"key": 7}]), v.VaultGarbled, "vault:se"),
    (_reader_json([{"key": "manifests/1", "lock_mode": ["COMPLIANCE"]}]), v.VaultGarbled, "vault:se/manifests/1"),
    (json.dumps({"ok": True, "objects": {"a": 1}}), v.VaultGarbled, "vault:se"),
    ("Traceback (most recent call last):", v.VaultUnreachable, "se"),
    (json.dumps({"ok": False, "error": "ReadTimeout"}), v.VaultUnreachable, "se"),
    ("[" * 100_000, v.VaultUnreachable, "se"),
])
def test_what_the_reader_brings_back_is_checked_too(stdout: str, error: type[Exception], named: str) -> None:
    with pytest.raises(error) as caught:
        v.parse_reader_output("se", stdout)
    assert named in str(caught.value)


def test_the_reader_output_round_trips() -> None:
    got = v.parse_reader_output("se", _reader_json([{"key": "manifests/1", "data": base64.b64encode(b"hi").decode(),
                                                      "size": 2, "lock_mode": "COMPLIANCE",
                                                      "retain_until": "2036-12-01T00:00:00+00:00"}]))
    assert got == [v.Stored("manifests/1", b"hi", 2, "COMPLIANCE", "2036-12-01T00:00:00+00:00")]


# --------------------------------------------------------------------------- item 1: freshness


def test_the_high_water_mark_is_private_only_rises_and_refuses_damage(tmp_path: Path) -> None:
    chain, _ = manifest.verify_chain(_chain(3), PUBLIC, stack="rehearsal", embassy="de")
    folder = tmp_path / "secrets"
    assert freshness.read_mark(folder, "de") is None
    assert freshness.raise_mark(folder, "de", chain[2])
    assert not freshness.raise_mark(folder, "de", chain[1])  # an older head never lowers it
    mark = freshness.read_mark(folder, "de")
    assert mark is not None and (mark.round, mark.sha256) == (3, chain[2].sha256)
    path = freshness.mark_path(folder, "de")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert [p.name for p in folder.iterdir()] == [path.name]  # no temporary file left behind
    os.chmod(path, 0o644)
    with pytest.raises(UserError, match="readable or writable by others"):
        freshness.read_mark(folder, "de")
    os.chmod(path, 0o600)
    path.write_text('{"embassy": "de", "round": "many"}')
    with pytest.raises(UserError, match="damaged"):
        freshness.read_mark(folder, "de")
    path.write_text('{"embassy": "se", "round": 9}')  # another embassy's mark copied in
    with pytest.raises(UserError, match="damaged"):
        freshness.read_mark(folder, "de")


def _verified(n: int, embassy: str = "de") -> list[manifest.Verified]:
    chain, failure = manifest.verify_chain(_chain(n, embassy), PUBLIC, stack="rehearsal", embassy=embassy)
    assert failure is None
    return chain


def test_a_head_older_than_a_strict_anchor_is_stale_whatever_the_time() -> None:
    # Adversary: rolls the vault back one round, within any objective's time.
    head = _verified(4)[2]
    fresh = freshness.Freshness(anchors=[freshness.Anchor(freshness.HIGH_WATER, 4)])
    assert "older than round 4 known from the high-water mark" in str(freshness.judge(head, fresh, 10**9))
    fresh = freshness.Freshness(anchors=[freshness.Anchor(freshness.BUNDLE, 4)])
    assert "custody bundle" in str(freshness.judge(head, fresh, 10**9))
    fresh = freshness.Freshness(anchors=[freshness.Anchor(freshness.HIGH_WATER, 3)])
    assert freshness.judge(head, fresh, 0) is None


def test_another_vault_is_compared_within_the_objective() -> None:
    head, theirs = _verified(4)[1], _verified(4, "se")[3]  # rounds 2 and 4, 20 minutes apart
    fresh = freshness.Freshness(anchors=[freshness.evidence("se", theirs)])
    assert "1200 s behind se's round 4" in str(freshness.judge(head, fresh, 300))
    assert freshness.judge(head, fresh, 3600) is None  # a vault that missed rounds while unreachable: lag


def test_a_second_history_at_or_past_the_mark_is_named() -> None:
    # Adversary: serves a validly signed history that is not the one verified before (a restarted chain).
    chain = _verified(3)
    assert freshness.second_history(chain, freshness.Anchor(freshness.HIGH_WATER, 2, chain[1].sha256)) is None
    assert "second history" in str(freshness.second_history(chain, freshness.Anchor(freshness.HIGH_WATER, 2, "00" * 32)))
    assert "not in the chain" in str(freshness.second_history(chain[:1] + chain[2:],
                                                              freshness.Anchor(freshness.HIGH_WATER, 2, "x")))


def test_the_bundle_round_is_read_in_one_place() -> None:
    assert freshness.bundle_round(SimpleNamespace(sealed_round=7, outputs={})) == 7
    assert freshness.bundle_round(SimpleNamespace(outputs={"mode": "warm"})) is None  # a bundle sealed before rounds
    assert freshness.bundle_round(SimpleNamespace(outputs={"sealed_round": 5})) == 5
    assert freshness.bundle_round(SimpleNamespace(sealed_round=True, outputs={})) is None


def test_a_signed_prefix_of_a_broken_chain_is_still_evidence() -> None:
    objects = _chain(5, "se")
    broken = objects[:2] + objects[3:]  # round 3 removed: the chain breaks at 4, yet 4 and 5 bear home's signature
    chain, failure = manifest.verify_chain(broken, PUBLIC, stack="rehearsal", embassy="se")
    assert failure is not None and [m.round for m in chain] == [1, 2]
    newest = manifest.newest_signed([*broken, ("manifests/junk", b"[" * 5000)], PUBLIC, stack="rehearsal")
    assert newest is not None and newest.round == 5
    assert manifest.newest_signed(_chain(2, "se"), PUBLIC, stack="production") is None


# verify() end to end, the vault reads replaced by what a host serves (the lab tests read real vaults).


class _Lab:
    def __init__(self, folder: Path) -> None:
        self.dir, self.lab_id = str(folder), 99


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """What each vault serves (a list of Stored, or an exception to raise), and the host checks passing."""
    (tmp_path / v.PUBLIC_KEY_FILE).write_text(manifest.public_key_pem(KEY))
    monkeypatch.setenv("EMBASSY_SECRETS_DIR", str(tmp_path / "secrets"))
    vaults: dict[str, Any] = {"lab": _Lab(tmp_path)}
    lock = {"lock_mode": "COMPLIANCE", "retain_until": "2046-01-01T00:00:00+00:00"}
    for e in ("de", "se", "ie"):
        vaults[e] = _stored(_chain(4, e), **lock)

    def fetch(_lab: Any, embassy: str) -> list[v.Stored]:
        got = vaults[embassy]
        if isinstance(got, Exception):
            raise got
        return list(got)

    monkeypatch.setattr(v, "fetch_manifests", fetch)
    for name in ("check_generation", "check_pgbackrest", "check_restic", "check_locks"):
        monkeypatch.setattr(v, name, lambda *a, **k: None)
    return vaults


DEP = load_stack("rehearsal", ROOT)


def test_a_rollback_with_no_anchor_is_not_established_and_acceptance_is_recorded(served: dict[str, Any]) -> None:
    served["de"] = served["de"][:3]
    served["se"] = v.VaultUnreachable("se", "connect timeout")
    served["ie"] = v.VaultGarbled("vault:ie/manifests/x", "its content did not come back as base64")
    result = v.verify(DEP, served["lab"], "de")
    failure = result.first_failure or {}
    assert failure.get("object") == "vault:de/freshness" and "freshness not established" in failure["reason"]
    assert isinstance(result.error("x"), errors.FreshnessNotEstablished) and result.chain == []
    doc = result.as_json()["freshness"]
    assert doc["established"] is False and {n["embassy"] for n in doc["not_comparable"]} == {"se", "ie"}
    accepted = v.verify(DEP, served["lab"], "de", accept_unanchored=True)
    assert accepted.intact and accepted.as_json()["freshness"]["accepted_unanchored"] is True
    # Now verified once: the next rollback (one more round gone) is stale by the high-water mark alone.
    served["de"] = served["de"][:2]
    again = v.verify(DEP, served["lab"], "de")
    assert again.first_failure is not None and "high-water mark" in again.first_failure["reason"]
    assert again.first_failure["object"] == "vault:de/manifests/0000000002.json"
    assert isinstance(again.error("x"), errors.VaultStale)


def test_a_bundle_round_anchors_freshness_alone(served: dict[str, Any]) -> None:
    served["de"] = served["de"][:3]
    served["se"] = served["ie"] = v.VaultUnreachable("x", "down")
    result = v.verify(DEP, served["lab"], "de", bundle_round=4)
    assert result.first_failure is not None and "custody bundle" in result.first_failure["reason"]
    assert v.verify(DEP, served["lab"], "de", bundle_round=3).intact


def test_a_bundle_sealed_after_round_4_refuses_a_head_rolled_back_to_3(served: dict[str, Any], tmp_path: Path) -> None:
    # The whole path: verify raises the controller's mark to 4, `custody init` seals it into de's bundle, and
    # on the day home (and its controller's marks) is gone, the opened bundle alone anchors freshness.
    assert v.verify(DEP, served["lab"], "de").intact
    (tmp_path / "custody").mkdir()
    lab, folder, _ = controller(tmp_path / "custody", DEP)
    mark = freshness.mark_path(v.controller_folder(DEP, served["lab"]), "de")
    os.replace(mark, freshness.mark_path(folder, "de"))  # the controller's secrets folder; gone from verify's
    store = MemoryVaults()
    issue(DEP, lab, store, folder, tmp_path / "sheets")
    opened = kit.open_bundle(DEP, store, "de", kit.read_shares(
        [str(tmp_path / "sheets" / f"official-{i}.txt") for i in (1, 2, 3)], lambda: ""))
    anchor = freshness.bundle_round(opened)
    assert anchor == 4
    served["de"] = served["de"][:3]  # the host rolls de back; nothing else can be compared
    served["se"] = served["ie"] = v.VaultUnreachable("x", "down")
    result = v.verify(DEP, served["lab"], "de", bundle_round=anchor)
    assert result.first_failure is not None and result.first_failure["object"] == "vault:de/manifests/0000000003.json"
    assert "older than round 4 known from the custody bundle" in result.first_failure["reason"]
    assert isinstance(result.error("x"), errors.VaultStale)
    # A bundle without a sealed round anchors nothing: not stale, but never intact either.
    unanchored = v.verify(DEP, served["lab"], "de", bundle_round=freshness.bundle_round(opened.model_copy(
        update={"sealed_round": None})))
    assert unanchored.first_failure is not None and "freshness not established" in unanchored.first_failure["reason"]


def test_another_vaults_hostile_object_makes_it_not_comparable_never_a_crash(served: dict[str, Any]) -> None:
    served["se"] = [*served["se"], v.Stored("manifests/0000000000.json", b"[" * 200_000, 200_000)]
    served["ie"] = v.VaultGarbled("vault:ie", "the listing is not a list of objects")
    result = v.verify(DEP, served["lab"], "de")
    assert result.intact, result.first_failure
    assert [a.source for a in result.freshness.anchors] == ["vault:se"]  # type: ignore[union-attr]
    own = v.verify(DEP, served["lab"], "se")
    assert own.first_failure is not None and own.first_failure["object"] == "manifests/0000000000.json"
    assert "nested deeper" in own.first_failure["reason"]


# --------------------------------------------------------------------------- item 4: locks


@pytest.mark.parametrize(("mode", "until", "problem"), [
    (None, None, "not under a COMPLIANCE lock (lock mode none)"),
    ("GOVERNANCE", "2046-01-01T00:00:00+00:00", "lock mode GOVERNANCE"),
    ("COMPLIANCE", None, "without a retain-until"),
    ("COMPLIANCE", "2027-01-01T00:00:00+00:00", "less than its write time"),
    ("COMPLIANCE", "2036-11-29T10:00:00+00:00", None),  # written + 3650 days exactly
    ("COMPLIANCE", "2036-11-29T09:55:00+00:00", None),  # within the clocks' slack
])
def test_a_lock_less_than_compliance_until_write_plus_retention_is_named(mode: str | None, until: str | None,
                                                                        problem: str | None) -> None:
    o = v.Stored("pgbackrest/archive/home/15-1/x", None, 1, mode, until, "2026-12-02T10:00:00+00:00")
    got = v.lock_problem(o, None, 3650)
    assert (got is None) if problem is None else (problem in str(got)), got


def test_a_manifests_lock_counts_from_its_signed_time_not_the_vaults_word() -> None:
    # Adversary: reports an old LastModified so that a short lock looks long enough.
    signed = dt.datetime(2026, 12, 2, 10, 0, tzinfo=dt.UTC)
    o = v.Stored("manifests/0000000001.json", b"", 0, "COMPLIANCE", "2027-12-02T10:00:00+00:00",
                 "2017-12-04T10:00:00+00:00")
    assert "less than its write time 2026-12-02" in str(v.lock_problem(o, signed, 3650))
    assert "listed, but" in str(v.lock_problem(v.Stored("k", None, 0, missing="404"), None, 1))


def test_every_manifest_of_the_chain_is_lock_checked(served: dict[str, Any]) -> None:
    first = served["de"][0]
    served["de"][0] = v.Stored(first.key, first.data, first.size, None, None)
    result = v.verify(DEP, served["lab"], "de")
    assert result.first_failure == {"object": "vault:de/manifests/0000000001.json",
                                    "reason": "lock: not under a COMPLIANCE lock (lock mode none)"}
    assert isinstance(result.error("x"), errors.LockInsufficient)


def test_what_a_restore_relies_on_is_named_for_the_lock_check() -> None:
    head = _verified(1)[0]
    prefixes, keys, wal = v.relied_on(DEP, head)
    assert prefixes == ["custody/rehearsal/", "pgbackrest/backup/home/20261202-100000F_20261202-110000D/",
                        "pgbackrest/backup/home/20261202-100000F/", "restic/court-files/"]
    assert "pgbackrest/archive/home/archive.info" in keys and "pgbackrest/backup/home/backup.info.copy" in keys
    assert wal == [("pgbackrest/archive/home/", "000000010000000000000002", "000000010000000000000009")]
    found = v.SEGMENT.search("pgbackrest/archive/home/15-1/0000000100000000/000000010000000000000003-" + "a" * 40 + ".zst")
    assert found is not None and found.group(1) == "000000010000000000000003"


# --------------------------------------------------------------------------- item 2: the restore's chain


def test_a_later_read_is_compared_with_the_verified_chain() -> None:
    # Adversary: serves the whole chain during verify, a truncated or different one afterwards.
    chain = _verified(3)
    later = _stored(_chain(3))
    assert v.same_chain(chain, later) is None
    assert v.same_chain(chain, later[:2]) == ("manifests/0000000003.json",
                                              "verified before, missing from a later read of the vault")
    other = _stored(_chain(3, "se"))
    assert "sha256" in v.same_chain(chain, other)[1]  # type: ignore[index]


class _Target:
    """A target whose vault reads are the `served` fixture's (verify takes it as it takes the lab's state)."""

    kind = "lab"  # as a Target names itself: the restore reaches the host first (not AWS)

    def __init__(self, lab: Any) -> None:
        self.lab = lab
        self.dir, self.lab_id = lab.dir, lab.lab_id

    def embassy_hosts(self, _embassy: str) -> list[Any]:
        from embassy.targets import Host, Role

        return [Host(name="enclave-de", role=Role.EMBASSY, embassy="de", address="10.0.0.20")]

    def run_on(self, _host: Any, _command: str, timeout: float = 0) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], 0, "", "")


def test_the_restore_uses_exactly_the_chain_that_verified(served: dict[str, Any],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[manifest.Verified] = []
    real_verify = v.verify

    def verify_then_truncate(*args: Any, **kwargs: Any) -> v.Result:
        result = real_verify(*args, **kwargs)
        served["de"] = served["de"][:1]  # what the host serves from now on
        return result

    monkeypatch.setattr(v, "verify", verify_then_truncate)
    monkeypatch.setattr(restore, "_restore", lambda _d, s, *_a: used.append(s.outcome.manifest))
    out = restore.restore(DEP, _Target(served["lab"]), "de")  # type: ignore[arg-type]
    assert out.error is None, out.error
    assert [m.round for m in used] == [4] and out.chain_head is not None and out.chain_head.round == 4
    assert out.as_json()["freshness"]["established"] is True


def test_a_refused_restore_raises_the_failures_kind(served: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(restore, "_restore", lambda *_a: None)
    served["de"] = served["de"][:3]
    served["se"] = served["ie"] = v.VaultUnreachable("x", "down")
    out = restore.restore(DEP, _Target(served["lab"]), "de")  # type: ignore[arg-type]
    assert isinstance(out.error, errors.FreshnessNotEstablished) and "vault:de/freshness" in out.error.message
    assert out.manifest is None and out.as_json()["freshness"]["established"] is False
    ok = restore.restore(DEP, _Target(served["lab"]), "de", accept_unanchored=True)  # type: ignore[arg-type]
    assert ok.as_json()["freshness"]["accepted_unanchored"] is True


def test_the_drill_report_records_the_freshness_verdict() -> None:
    from embassy.drill import report as rpt

    at = dt.datetime(2026, 12, 2, 18, 1, 0, tzinfo=dt.UTC)
    doc = {"established": False, "accepted_unanchored": True, "anchors": [], "not_comparable": [], "stale": None}
    report = rpt.Report.build(stack="rehearsal", embassy="de", mode="warm", incident_at=at, started_at=at,
                              finished_at=at, rto_seconds=None, rpo_seconds=None, registers=[], timeline=[],
                              freshness=doc)
    assert report.to_json()["freshness"] == doc


def test_the_lock_sweep_names_what_the_head_relies_on_and_only_that(monkeypatch: pytest.MonkeyPatch) -> None:
    head = _verified(1)[0]
    locked = {"lock_mode": "COMPLIANCE", "retain_until": "2046-01-01T00:00:00+00:00",
              "last_modified": "2026-12-02T10:00:00+00:00"}
    seg = "pgbackrest/archive/home/15-1/0000000100000000/"
    served = [v.Stored("pgbackrest/backup/home/backup.info", None, 1, **locked),
              v.Stored("restic/court-files/locks/" + "c" * 64, None, 1),  # restic's own, transient: not relied on
              v.Stored("restic/court-files/data/ab/" + "a" * 64, None, 1, missing="404"),  # pruned meanwhile
              v.Stored(seg + "000000010000000000000001-" + "b" * 40 + ".zst", None, 1),  # before wal.first
              v.Stored(seg + "00000001000000000000000A-" + "b" * 40 + ".zst", None, 1),  # after wal.last
              v.Stored(seg + "000000010000000000000005-" + "b" * 40 + ".zst", None, 1, **locked)]
    monkeypatch.setattr(v, "fetch_locks", lambda *_a: list(served))
    result = v.Result("de")
    v.check_locks(DEP, None, "de", head, result)  # type: ignore[arg-type]
    assert result.intact, result.first_failure
    assert result.checked[-1]["detail"].startswith("2 objects under COMPLIANCE until their write time + 3650 days")
    served.append(v.Stored(seg + "000000010000000000000009-" + "b" * 40 + ".zst", None, 1,
                           "COMPLIANCE", "2026-12-03T10:00:00+00:00", "2026-12-02T10:00:00+00:00"))
    served.append(v.Stored("pgbackrest/backup/home/backup.info.copy", None, 0, missing="404"))
    result = v.Result("de")
    v.check_locks(DEP, None, "de", head, result)  # type: ignore[arg-type]
    assert result.first_failure is not None and result.first_failure["object"].endswith("000000010000000000000009-"
                                                                                        + "b" * 40 + ".zst")
    assert "less than its write time" in result.first_failure["reason"]
    served.pop(-2)
    result = v.Result("de")
    v.check_locks(DEP, None, "de", head, result)  # type: ignore[arg-type]
    assert result.first_failure == {"object": "vault:de/pgbackrest/backup/home/backup.info.copy",
                                    "reason": "lock: listed, but the vault answers 404 for it"}


def test_verify_full_restores_into_a_fresh_private_folder_per_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # Adversary (item 8): whoever can write /var/tmp on the host prepares a fixed path (a symlink) that root
    # then restores into. Each run makes its own folder (mktemp -d: 0700, unpredictable) and removes it.
    commands: list[str] = []

    def ssh(_lab: Any, _embassy: str, command: str, timeout: float = 0,
            env: Any = None) -> subprocess.CompletedProcess[str]:
        commands.append(command)
        out = f"no errors were found\n{v.RESTIC_MARK}0\n" + json.dumps([{"id": "ab" * 32}]) \
            if "snapshots --json" in command else "{}"
        return subprocess.CompletedProcess([], 0, out, "")

    monkeypatch.setattr(v, "ssh", ssh)
    head = _verified(1)[0]
    head.body["registers"][1]["digest"] = {"files": 0}
    v.check_restic(None, "de", head, v.Result("de"), full=True)  # type: ignore[arg-type]
    restore_cmd = next(c for c in commands if " restore " in c)
    assert "scratch=$(sudo mktemp -d -p /var/tmp embassy-verify.XXXXXXXXXX)" in restore_cmd
    assert '--target "$scratch"' in restore_cmd and 'sudo rm -rf "$scratch"' in restore_cmd
    assert "/var/tmp/embassy-verify-" not in restore_cmd


# --------------------------------------------------------------------------- a manifest served but not listed


def test_a_forgery_the_listing_hides_is_named_as_if_listed(served: dict[str, Any]) -> None:
    """The host nation's forgery of the next round, served on GET but left out of the vault's listing (what SeaweedFS
    does once a read "healed" an object written below S3): named as a listed one is, by its key and signature."""
    chain = _chain(5)
    head = manifest.verify(*chain[3], PUBLIC)
    forged = manifest.sign({**head.body, "round": 5, "previous_sha256": head.sha256}, Ed25519PrivateKey.generate())
    lock = {"lock_mode": "COMPLIANCE", "retain_until": "2046-01-01T00:00:00+00:00"}
    listed = _stored(chain[:4], **lock)
    for unlisted in (False, True):
        served["de"] = [*listed, v.Stored(manifest.object_key(5), forged, len(forged), unlisted=unlisted, **lock)]
        failure = v.verify(DEP, served["lab"], "de").first_failure or {}
        assert failure.get("object") == manifest.object_key(5) and "signed by another key" in failure["reason"]


def test_a_signed_round_the_listing_hides_is_a_failure(served: dict[str, Any]) -> None:
    """Home's own next round, served but hidden from the listing: the vault is not intact (home cannot write there,
    and what the listing shows is not what the vault holds)."""
    chain = _chain(5)
    lock = {"lock_mode": "COMPLIANCE", "retain_until": "2046-01-01T00:00:00+00:00"}
    served["de"] = [*_stored(chain[:4], **lock), v.Stored(*chain[4], len(chain[4][1]), unlisted=True, **lock)]
    failure = v.verify(DEP, served["lab"], "de").first_failure or {}
    assert failure.get("object") == manifest.object_key(5) and "left out of its listing" in failure["reason"]


def test_the_reader_output_carries_unlisted_and_nothing_else_makes_it() -> None:
    out = v.parse_reader_output("de", json.dumps({"ok": True, "objects": [
        {"key": "manifests/0000000001.json", "size": 0, "unlisted": True},
        {"key": "manifests/0000000002.json", "size": 0, "unlisted": "yes"}]}))
    assert [o.unlisted for o in out] == [True, False]
