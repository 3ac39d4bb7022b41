"""Restore-test records against the host nation that wants a failed or missing test to look passed.

Every record here is built and signed as the embassy host signs it (replication.restoretest.sign_record); each
attack edits, removes, forges, re-signs with another embassy's key or replays one, and status must show the
embassy's restore tests as failed / not established, naming the object. Signatures are also checked with
`cryptography` directly, outside the code under test.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from embassy.assurance import records as rec
from embassy.replication import manifest
from embassy.replication import restoretest as rt

NOW = dt.datetime(2026, 12, 7, 6, 0, tzinfo=dt.UTC)
STACK, EMB = "rehearsal", "de"
# What home signed for the population register in rounds 7 and 8 (a digest as replication.digest computes it).
DIGEST = {"construction": "sorted-row-sha256/1", "lsn": "0/3000000",
          "tables": {"persons": {"rows": 1200, "sha256": "d" * 64}}}
CHAIN = {n: manifest.Verified(manifest.object_key(n), {"round": n, "registers": [
    {"name": "population", "kind": "postgres", "digest": DIGEST}]}, sha) for n, sha in ((7, "a" * 64), (8, "b" * 64))}


def body(when: dt.datetime, *, passed: bool = True, embassy: str = EMB, round_: int = 8) -> dict[str, Any]:
    # The host's digest is of the scratch cluster paused at the signed LSN: its own LSN, the same content.
    regs = [{"name": "population", "kind": "postgres", "digest_ok": True, "milliseconds": 4200, "rto_seconds": 300,
             "within_rto": True, "digest": {**DIGEST, "lsn": "0/3000028"}}]
    return {"format": rt.RECORD_FORMAT, "stack": STACK, "embassy": embassy, "trigger": "timer", "time": rt.iso(when),
            "point": {"round": round_, "time": "2026-12-06T10:00:00Z", "manifest": manifest.object_key(round_),
                      "sha256": CHAIN[round_].sha256},
            "passed": passed, "milliseconds": 5100, "registers": regs if passed else [],
            "failure": None if passed else {"object": "register population", "reason": "differs"}}


def stored(b: dict[str, Any], key: Any, *, data: bytes | None = None, lock: str | None = "COMPLIANCE",
           days: int = 3650) -> rec.Stored:
    when = manifest.parse_time(b["time"])
    return rec.Stored(rt.record_key(when), data if data is not None else rt.sign_record(b, key), lock,
                      (when + dt.timedelta(days=days)).isoformat(), when.isoformat())


def judge(items: list[rec.Stored], public: Any, *, mark: dict[str, Any] | None = None,
          chain: dict[int, manifest.Verified] | None = CHAIN, schedule: str = "weekly") -> rec.History:
    return rec.history(EMB, items, public, stack=STACK, days=3650, chain=chain, mark=mark, schedule=schedule,
                       now=NOW)


@pytest.fixture()
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_a_signed_locked_record_is_the_last_restore_test(key: Ed25519PrivateKey) -> None:
    h = judge([stored(body(NOW - dt.timedelta(days=1)), key)], key.public_key())
    assert h.established and not h.overdue and h.problem is None
    out = h.as_json()
    assert out["last_restore_test"]["passed"] is True and out["last_restore_test"]["seconds"] == 5.1
    assert out["last_restore_test"]["point"] == {"round": 8, "time": "2026-12-06T10:00:00Z"}


def test_the_signature_checks_with_cryptography_directly(key: Ed25519PrivateKey) -> None:
    data = rt.sign_record(body(NOW), key)
    doc = json.loads(data)
    signed = json.dumps(doc["record"], sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    key.public_key().verify(base64.b64decode(doc["signature"]["value"]), signed)  # raises if it does not verify
    assert doc["signature"]["alg"] == "ed25519"


def test_the_trend_keeps_the_last_ten_oldest_first(key: Ed25519PrivateKey) -> None:
    items = [stored(body(NOW - dt.timedelta(days=n), passed=n % 3 != 0), key) for n in range(1, 14)]
    h = judge(items, key.public_key())
    trend = h.as_json()["restore_tests"]
    assert len(trend) == 10 and trend[-1]["time"] == rt.iso(NOW - dt.timedelta(days=1))
    assert [t["passed"] for t in trend] == [n % 3 != 0 for n in range(10, 0, -1)]


# ---------------------------------------------------------------- the host nation's attempts, one per row


def _edited(key: Ed25519PrivateKey) -> list[rec.Stored]:  # a failed test edited to say passed
    b = body(NOW - dt.timedelta(days=1), passed=False)
    doc = json.loads(rt.sign_record(b, key))
    doc["record"] = body(NOW - dt.timedelta(days=1))
    return [stored(b, key, data=manifest.canonical(doc))]


def _forged(key: Ed25519PrivateKey) -> list[rec.Stored]:  # written by someone with another key, naming ours
    other = Ed25519PrivateKey.generate()
    doc = json.loads(rt.sign_record(body(NOW - dt.timedelta(days=1)), other))
    doc["signature"]["key_id"] = manifest.key_id(key.public_key())
    return [stored(body(NOW - dt.timedelta(days=1)), key, data=manifest.canonical(doc))]


def _other_embassy(key: Ed25519PrivateKey) -> list[rec.Stored]:  # a passed record of embassy ie, its own key
    b = body(NOW - dt.timedelta(days=1), embassy="ie")
    return [stored(b, Ed25519PrivateKey.generate())]


def _other_embassy_copied(key: Ed25519PrivateKey) -> list[rec.Stored]:  # a record naming ie, signed with our key
    return [stored(body(NOW - dt.timedelta(days=1), embassy="ie"), key)]


def _replayed(key: Ed25519PrivateKey) -> list[rec.Stored]:  # an old passed record put again under a new name
    old = body(NOW - dt.timedelta(days=40))
    fresh = stored(old, key)
    return [stored(old, key), rec.Stored(rt.record_key(NOW - dt.timedelta(hours=1)), fresh.data, "COMPLIANCE",
                                         (NOW + dt.timedelta(days=3650)).isoformat(), NOW.isoformat())]


def _unlocked(key: Ed25519PrivateKey) -> list[rec.Stored]:
    return [stored(body(NOW - dt.timedelta(days=1)), key, lock=None)]


def _short_lock(key: Ed25519PrivateKey) -> list[rec.Stored]:
    return [stored(body(NOW - dt.timedelta(days=1)), key, days=1)]


def _rewritten_bytes(key: Ed25519PrivateKey) -> list[rec.Stored]:  # same content, pretty-printed
    b = body(NOW - dt.timedelta(days=1))
    return [stored(b, key, data=json.dumps(json.loads(rt.sign_record(b, key)), indent=1).encode())]


def _point_not_in_chain(key: Ed25519PrivateKey) -> list[rec.Stored]:  # a test of a point home never signed
    b = body(NOW - dt.timedelta(days=1))
    b["point"]["sha256"] = "c" * 64
    return [stored(b, key)]


def _passed_without_registers(key: Ed25519PrivateKey) -> list[rec.Stored]:
    b = body(NOW - dt.timedelta(days=1))
    b["registers"] = []
    return [stored(b, key)]


def _digest_differs(key: Ed25519PrivateKey) -> list[rec.Stored]:  # "passed" over a restore of something else
    b = body(NOW - dt.timedelta(days=1))
    b["registers"][0]["digest"] = {**DIGEST, "tables": {"persons": {"rows": 1199, "sha256": "e" * 64}}}
    return [stored(b, key)]


def _digest_malformed(key: Ed25519PrivateKey) -> list[rec.Stored]:  # shaped to crash the comparison
    b = body(NOW - dt.timedelta(days=1))
    b["registers"][0]["digest"] = {**DIGEST, "tables": {"persons": "all rows fine"}}
    return [stored(b, key)]


def _digest_missing(key: Ed25519PrivateKey) -> list[rec.Stored]:  # "passed" with nothing to compare
    b = body(NOW - dt.timedelta(days=1))
    del b["registers"][0]["digest"]
    return [stored(b, key)]


def _register_skipped(key: Ed25519PrivateKey) -> list[rec.Stored]:  # "passed" for one register of two
    CHAIN_TWO[8] = manifest.Verified(CHAIN[8].key, {"round": 8, "registers": [
        *CHAIN[8].body["registers"], {"name": "court-files", "kind": "files", "digest": {"files": 3}}]}, CHAIN[8].sha256)
    return [stored(body(NOW - dt.timedelta(days=1)), key)]


def _passed_over_rto(key: Ed25519PrivateKey) -> list[rec.Stored]:  # "passed" though the register was late
    b = body(NOW - dt.timedelta(days=1))
    b["registers"][0]["milliseconds"] = 301_000
    return [stored(b, key)]


def _garbage(key: Ed25519PrivateKey) -> list[rec.Stored]:
    return [stored(body(NOW - dt.timedelta(days=2)), key),
            rec.Stored(rt.record_key(NOW - dt.timedelta(days=1)), b"\xff{not json", "COMPLIANCE",
                       (NOW + dt.timedelta(days=3650)).isoformat(), NOW.isoformat())]


def _oversized(key: Ed25519PrivateKey) -> list[rec.Stored]:
    return [rec.Stored(rt.record_key(NOW - dt.timedelta(days=1)), None)]


def _future(key: Ed25519PrivateKey) -> list[rec.Stored]:  # a record dated ahead, to stay "newest" for a year
    return [stored(body(NOW + dt.timedelta(days=300)), key)]


ATTACKS = {
    "edited": (_edited, "signature does not verify"),
    "forged": (_forged, "signature does not verify"),
    "other-embassy-key": (_other_embassy, "signed by another key"),
    "other-embassy-record": (_other_embassy_copied, "belongs to stack 'rehearsal', embassy 'ie'"),
    "replayed": (_replayed, "stored under the wrong name"),
    "unlocked": (_unlocked, "not locked in COMPLIANCE"),
    "short-lock": (_short_lock, "less than 3650 days"),
    "rewritten-bytes": (_rewritten_bytes, "not canonical"),
    "point-not-signed": (_point_not_in_chain, "not a manifest of the verified chain"),
    "passed-without-registers": (_passed_without_registers, "says passed without"),
    "garbage": (_garbage, "not JSON of a record"),
    "oversized": (_oversized, "larger than a record can be"),
    "future": (_future, "in the future"),
    "digest-differs": (_digest_differs, "its digest of register population differs from the one signed in round 8"),
    "digest-malformed": (_digest_malformed, "its digest of register population is not a digest"),
    "digest-missing": (_digest_missing, "without a digest of register population"),
    "register-skipped": (_register_skipped, "but round 8 signs ['court-files', 'population']"),
    "passed-over-rto": (_passed_over_rto, "took 301000 ms against its RTO of 300 s"),
}
CHAIN_TWO: dict[int, manifest.Verified] = {}  # an attack's own chain, when it needs home to have signed more


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_each_attack_makes_the_restore_tests_not_established(name: str, key: Ed25519PrivateKey) -> None:
    make, reason = ATTACKS[name]
    CHAIN_TWO.clear()
    items = make(key)
    h = judge(items, key.public_key(), chain={**CHAIN, **CHAIN_TWO})
    assert not h.established, name
    assert h.problem and reason in h.problem["reason"], h.problem
    assert h.problem["object"].startswith(f"vault:{EMB}/restore-tests/")
    assert h.as_json()["last_restore_test"] is None  # nothing of a failed history is shown as the last test


def test_a_removed_record_seen_before_is_a_removal(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    older, newer = body(NOW - dt.timedelta(days=8)), body(NOW - dt.timedelta(days=1), passed=False)
    both = [stored(older, key), stored(newer, key)]
    h = judge(both, key.public_key())
    assert h.established and h.last and h.last.body["passed"] is False
    rec.raise_mark(tmp_path, EMB, h, NOW)
    # The host hides the newer (failed) record: the older passed one must not become "the last test".
    hidden = judge(both[:1], key.public_key(), mark=rec.read_mark(tmp_path, EMB))
    assert not hidden.established and hidden.problem
    assert "missing from the vault" in hidden.problem["reason"] and rt.record_key(NOW - dt.timedelta(days=1)) in \
        hidden.problem["object"]


def test_the_mark_never_moves_back(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    new = judge([stored(body(NOW - dt.timedelta(days=1)), key)], key.public_key())
    rec.raise_mark(tmp_path, EMB, new, NOW)
    old = judge([stored(body(NOW - dt.timedelta(days=9)), key)], key.public_key())
    rec.raise_mark(tmp_path, EMB, old, NOW)
    assert (rec.read_mark(tmp_path, EMB) or {})["key"] == rt.record_key(NOW - dt.timedelta(days=1))


def test_no_record_is_not_established_and_overdue(key: Ed25519PrivateKey) -> None:
    h = judge([], key.public_key())
    assert not h.established and h.overdue and h.problem and "no restore test recorded" in h.problem["reason"]


def test_an_old_last_record_is_overdue(key: Ed25519PrivateKey) -> None:
    h = judge([stored(body(NOW - dt.timedelta(days=9)), key)], key.public_key())
    assert h.established and h.overdue


def test_without_the_embassys_key_nothing_is_established(key: Ed25519PrivateKey) -> None:
    h = judge([stored(body(NOW - dt.timedelta(days=1)), key)], None)
    assert not h.established and h.problem and "no restore-test key" in h.problem["reason"]


def test_a_chain_that_did_not_verify_checks_no_point(key: Ed25519PrivateKey) -> None:
    h = judge([stored(body(NOW - dt.timedelta(days=1)), key)], key.public_key(), chain=None)
    assert not h.established and h.problem and "chain did not verify" in h.problem["reason"]


def test_no_attack_is_left_untried() -> None:
    attacks = {n[1:] for n, v in globals().items() if n.startswith("_") and callable(v) and n != "__builtins__"
               and v.__module__ == __name__}
    assert attacks <= {f.__name__[1:] for f, _ in ATTACKS.values()}


# ---------------------------------------------------------------- the host side's pure parts


def make_chain(times: list[str]) -> list[manifest.Verified]:
    return [manifest.Verified(manifest.object_key(i + 1), {"round": i + 1, "time": t}, f"{i:064x}")
            for i, t in enumerate(times)]


def test_latest_is_the_head_and_random_stays_in_the_window() -> None:
    chain = make_chain(["2026-10-01T00:00:00Z", "2026-11-20T00:00:00Z", "2026-12-01T00:00:00Z", "2026-12-06T00:00:00Z"])
    assert rt.choose_point(chain, "latest", 30, NOW).round == 4
    picked = {rt.choose_point(chain, "random", 30, NOW, random.Random(seed)).round for seed in range(40)}
    assert picked == {2, 3, 4}


def test_random_with_no_point_in_the_window_fails_naming_the_head() -> None:
    chain = make_chain(["2026-01-01T00:00:00Z"])
    with pytest.raises(rt.Failed) as err:
        rt.choose_point(chain, "random", 30, NOW)
    assert err.value.object == manifest.object_key(1) and "within the last 30 days" in err.value.reason
    with pytest.raises(rt.Failed):
        rt.choose_point([], "latest", 30, NOW)


def test_the_backup_before_a_point_is_chosen() -> None:
    info = json.dumps([{"backup": [{"label": "F1", "lsn": {"stop": "0/3000100"}},
                                   {"label": "D2", "lsn": {"stop": "0/9000000"}}]}])
    assert rt.backup_set_before(info, rt.lsn_value("0/5000000")) == "F1"
    assert rt.backup_set_before(info, rt.lsn_value("0/A000000")) == "D2"
    assert rt.backup_set_before(info, rt.lsn_value("0/1000000")) is None
    assert rt.backup_set_before("garbage", 5) is None


def test_the_result_is_the_issues_json_and_fails_on_a_missed_rto() -> None:
    config = {"stack": STACK, "embassy": EMB}
    chain = make_chain(["2026-12-06T00:00:00Z"])
    late = [{"name": "population", "kind": "postgres", "digest_ok": True, "milliseconds": 301_000,
             "rto_seconds": 300, "within_rto": False}]
    b = rt.result(config, chain[0], NOW, 301.5, late, None, "cli")
    assert b["passed"] is False
    out = rt.public(b)
    assert set(out) >= {"embassy", "point", "passed", "seconds", "registers", "failure"}
    assert out["point"]["round"] == 1 and out["seconds"] == 301.5
    assert set(out["registers"][0]) >= {"name", "kind", "digest_ok", "seconds", "rto_seconds"}
    manifest.canonical(b)  # signable: no floats
    failed = rt.result(config, None, NOW, 1.0, [], rt.Failed("vault:de/manifests/x", "broken"), "timer")
    assert failed["passed"] is False and failed["failure"] == {"object": "vault:de/manifests/x", "reason": "broken"}


def test_random_picks_only_points_a_backup_can_reach() -> None:
    chain = [manifest.Verified(manifest.object_key(i), {"round": i, "time": "2026-12-06T00:00:00Z", "registers": [
        {"name": "population", "digest": {"lsn": f"0/{i:X}000000"}}]}, f"{i:064x}") for i in range(1, 6)]
    regs = [{"name": "population", "kind": "postgres"}]
    info = json.dumps([{"backup": [{"label": "F1", "lsn": {"stop": "0/3800000"}}]}])

    def reachable(m: manifest.Verified) -> bool:
        lsn = rt.first_lsn(m, regs)
        return lsn is not None and rt.backup_set_before(info, lsn) is not None

    picked = {rt.choose_point(chain, "random", 30, NOW, random.Random(s), restorable=reachable).round
              for s in range(40)}
    assert picked == {4, 5}  # rounds 1-3 sign points before the only backup ends
    with pytest.raises(rt.Failed) as err:
        rt.choose_point(chain, "random", 30, NOW, restorable=lambda _m: False)
    assert "base backup" in err.value.reason
    assert rt.first_lsn(manifest.Verified("k", {"registers": [{"name": "population"}]}, "x"), regs) is None


def test_one_restore_test_at_a_time_on_a_host(tmp_path: Path) -> None:
    first = rt.exclusive(tmp_path / "run.lock")
    assert first is not None
    assert rt.exclusive(tmp_path / "run.lock") is None  # the timer's run and the CLI's share the scratch space
    first.close()
    again = rt.exclusive(tmp_path / "run.lock")
    assert again is not None
    again.close()
