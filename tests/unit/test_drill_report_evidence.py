"""The report's evidence is computed, never set: the manifest's signature checked again on the bytes the restore
used (a bad signature shows false and fails the drill), and the vault's checks as rows that each say what they
checked, without repeats."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from embassy.drill import rehearsal, restore
from embassy.drill.report import Report
from embassy.model import load_stack
from embassy.replication import manifest
from embassy.replication.verify import Result
from tests.unit.test_drill_report import sample_fields

ROOT = Path(__file__).resolve().parents[2]
HOME_KEY = Ed25519PrivateKey.generate()


def signed_manifest(round_number: int = 7, key: Ed25519PrivateKey = HOME_KEY) -> bytes:
    body = {"format": manifest.FORMAT, "stack": "rehearsal", "embassy": "de", "round": round_number,
            "time": "2026-12-02T18:00:00.000000Z", "registers": []}
    return manifest.sign(body, key)


def outcome(data: bytes, trusted: bytes | None = None) -> restore.Outcome:
    """A restore that trusted the manifest `trusted` (default: `data`) and kept `data` as the bytes it read."""
    good = manifest.verify(manifest.object_key(7), trusted or data, HOME_KEY.public_key())
    out = restore.Outcome("rehearsal", "de", "warm")
    out.manifest = out.chain_head = good
    out.manifest_bytes = data
    return out


def forged_signature(data: bytes) -> bytes:
    doc = json.loads(data)
    raw = bytearray(base64.b64decode(doc["signature"]["value"]))
    raw[0] ^= 1
    doc["signature"]["value"] = base64.b64encode(bytes(raw)).decode()
    return manifest.canonical(doc)


def test_signature_ok_is_computed_from_the_signature() -> None:
    dep = load_stack("rehearsal", ROOT)
    good = signed_manifest()
    _, found = rehearsal.evidence(outcome(good), dep, None, public=HOME_KEY.public_key())
    assert found is not None and found.signature_ok is True
    assert found.public_key_fingerprint == manifest.key_id(HOME_KEY.public_key())
    # The adversary: a report that says "signature valid" whatever the manifest holds. Each of these is false.
    bad = {
        "a flipped bit in the signature": forged_signature(good),
        "signed by another key": signed_manifest(key=Ed25519PrivateKey.generate()),
        "another manifest's bytes than the one trusted": signed_manifest(round_number=8),
    }
    for name, data in bad.items():
        checks, found = rehearsal.evidence(outcome(data, trusted=good), dep, None, public=HOME_KEY.public_key())
        assert found is not None and found.signature_ok is False, name
        assert any(not c.ok and c.object == manifest.object_key(7) for c in checks), name
    out = outcome(good)
    out.manifest_bytes = None  # nothing to check: not "ok"
    assert rehearsal.evidence(out, dep, None, public=HOME_KEY.public_key())[1].signature_ok is False  # type: ignore[union-attr]


def test_a_bad_signature_fails_the_drill() -> None:
    dep = load_stack("rehearsal", ROOT)
    checks, found = rehearsal.evidence(outcome(forged_signature(signed_manifest()), trusted=signed_manifest()), dep,
                                       None, public=HOME_KEY.public_key())
    assert found is not None
    fields = sample_fields()
    fields.update(manifest=found.model_dump(), verifications=[c.model_dump() for c in checks])
    report = Report.build(**fields)
    assert not report.passed and report.manifest is not None and report.manifest.signature_ok is False
    assert [f.object for f in report.failures] == [manifest.object_key(7)]


def test_vault_checks_are_one_row_each_saying_what_was_checked() -> None:
    result = Result("de")
    for n in range(1, 5):
        result.check(manifest.object_key(n), True)
    result.check("vault:de/freshness", True)
    result.check("host:de/key-generation", True)
    result.check("pgbackrest:repo", True)
    for _register in ("population", "land-register"):  # both registers live in one cluster: checked twice
        result.check("pgbackrest:backup/20261202-223357F", True)
        result.check("pgbackrest:archive/000000010000000000000007", True)
    result.check("restic:court-files", True)
    result.check("restic:court-files/snapshots/6117eaa6", True)
    rows = rehearsal.vault_checks(result.checked)
    objects = [r.object for r in rows]
    assert len(objects) == len(set(objects)), objects
    assert objects[0] == "manifests/0000000001.json .. 0000000004.json" and "4 manifests" in rows[0].detail
    assert all(r.ok and r.detail for r in rows), [r for r in rows if not r.detail]
    details = {r.object: r.detail for r in rows}
    assert "pgbackrest verify" in details["pgbackrest:repo"]
    assert "WAL up to the segment" in details["pgbackrest:archive/000000010000000000000007"]
    assert "snapshot the manifest names" in details["restic:court-files/snapshots/6117eaa6"]
    # A failed check stays a row of its own, with its reason, even when the same object also passed.
    result.check("pgbackrest:archive/000000010000000000000007", False, "the repo holds only up to …06")
    result.check(manifest.object_key(5), False, "signature does not verify")
    by_object = {r.object: r for r in rehearsal.vault_checks(result.checked)}
    assert not by_object["pgbackrest:archive/000000010000000000000007"].ok
    assert by_object["pgbackrest:archive/000000010000000000000007"].detail.endswith("the repo holds only up to …06")
    assert not by_object[manifest.object_key(5)].ok and by_object[manifest.object_key(5)].detail == "signature does not verify"
