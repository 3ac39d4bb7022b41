"""Manifests, digests and LSN arithmetic of the data plane, without hosts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from embassy.model import load_stack
from embassy.replication import digest, hostcmd, manifest
from embassy.replication.dataplane import Repo, pgbackrest_path
from embassy.replication.deploy_home import round_config, round_interval
from embassy.replication.secrets import Vault

from .manifest_chains import signed_chain

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key()


def _body(n: int, previous: str | None, embassy: str = "de") -> dict:
    return {"format": manifest.FORMAT, "stack": "rehearsal", "state": {"name": "Estonia", "code": "EE"},
            "embassy": embassy, "mode": "warm", "round": n, "time": f"2026-12-02T10:00:{n:02d}.000000Z",
            "previous_sha256": previous,
            "registers": [{"name": "population", "kind": "postgres", "archived_lsn": "0/3000000",
                           "digest": {"lsn": "0/2FFFFF0", "tables": {"persons": {"rows": 3, "sha256": "ab" * 32}}}}]}


def _chain(n: int, embassy: str = "de", key: Ed25519PrivateKey = KEY) -> list[tuple[str, bytes]]:
    return signed_chain(n, _body, key, embassy)


def test_a_signed_manifest_verifies_and_its_bytes_are_canonical() -> None:
    key, data = _chain(1)[0]
    assert data == manifest.canonical(json.loads(data))
    m = manifest.verify(key, data, PUBLIC)
    assert m.round == 1 and m.sha256 == manifest.sha256(data) and m.body["embassy"] == "de"
    # The signature is over the body's canonical bytes: a verifier with only `cryptography` agrees.
    doc = json.loads(data)
    import base64
    PUBLIC.verify(base64.b64decode(doc["signature"]["value"]), manifest.canonical(doc["manifest"]))


@pytest.mark.parametrize(("mutate", "reason"), [
    (lambda d: d.replace(b'"rows":3', b'"rows":4'), "signature does not verify"),
    (lambda d: d.replace(b'"round":1', b'"round":2'), "signature does not verify"),
    (lambda d: json.dumps(json.loads(d), indent=1).encode(), "not canonical"),
    (lambda d: d[:-5], "not JSON"),
    (lambda d: b'{"manifest": {}}', "not a manifest"),
])
def test_any_change_to_a_manifest_is_named(mutate, reason: str) -> None:
    key, data = _chain(1)[0]
    with pytest.raises(manifest.ManifestError, match=reason):
        manifest.verify(key, mutate(data), PUBLIC)


def test_a_manifest_signed_with_another_key_is_refused() -> None:
    key, forged = _chain(1, key=Ed25519PrivateKey.generate())[0]
    with pytest.raises(manifest.ManifestError, match="signed by another key"):
        manifest.verify(key, forged, PUBLIC)
    # Claiming our key id does not help: the signature itself fails.
    doc = json.loads(forged)
    doc["signature"]["key_id"] = manifest.key_id(PUBLIC)
    with pytest.raises(manifest.ManifestError, match="signature does not verify"):
        manifest.verify(key, manifest.canonical(doc), PUBLIC)


def test_a_manifest_under_another_round_name_is_refused() -> None:
    _, data = _chain(1)[0]
    with pytest.raises(manifest.ManifestError, match="wrong name"):
        manifest.verify(manifest.object_key(7), data, PUBLIC)


def test_the_chain_verifies_and_a_removed_manifest_is_named() -> None:
    objects = _chain(4)
    chain, failure = manifest.verify_chain(objects, PUBLIC, stack="rehearsal", embassy="de")
    assert failure is None and [m.round for m in chain] == [1, 2, 3, 4]
    chain, failure = manifest.verify_chain(objects[:1] + objects[2:], PUBLIC, stack="rehearsal", embassy="de")
    assert failure is not None and failure[0] == manifest.object_key(3) and "chain broken" in failure[1]
    assert [m.round for m in chain] == [1]


def test_a_manifest_of_another_embassy_or_stack_is_refused() -> None:
    objects = _chain(2, embassy="se")
    _, failure = manifest.verify_chain(objects, PUBLIC, stack="rehearsal", embassy="de")
    assert failure is not None and failure[0] == manifest.object_key(1) and "embassy 'se'" in failure[1]


def test_canonical_json_refuses_floats() -> None:
    with pytest.raises(ValueError, match="no floats"):
        manifest.canonical({"lag": 0.5})


def test_row_digest_is_order_independent_and_sees_every_change() -> None:
    rows = ["(1,Mari)", "(2,Jaan)", "(3,Kati)"]
    assert digest.combine_rows(rows) == digest.combine_rows(reversed(rows))
    assert digest.combine_rows(rows)[0] == 3
    assert digest.combine_rows(rows)[1] != digest.combine_rows(["(1,Mari)", "(2,Jaan)", "(3,Katt)"])[1]
    assert digest.combine_rows(rows)[1] != digest.combine_rows([*rows, "(2,Jaan)"])[1]  # a duplicated row counts


def test_merkle_root_of_files_names_what_changed(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.txt").write_text("one")
    (tmp_path / "two.txt").write_text("two")
    first = digest.files(tmp_path)
    assert first["files"] == 2 and first["bytes"] == 6
    assert digest.files(tmp_path) == first
    (tmp_path / "two.txt").write_text("twO")
    changed = digest.files(tmp_path)
    assert changed["merkle_root"] != first["merkle_root"]
    assert digest.differences(first, changed) == [f"merkle_root: {changed['merkle_root']} (manifest: {first['merkle_root']})"]
    (tmp_path / "two.txt").rename(tmp_path / "a" / "two.txt")  # same bytes, another place
    assert digest.files(tmp_path)["merkle_root"] not in (first["merkle_root"], changed["merkle_root"])


def test_table_differences_are_named() -> None:
    want = {"tables": {"persons": {"rows": 3, "sha256": "a" * 64}, "deeds": {"rows": 1, "sha256": "b" * 64}}}
    got = {"tables": {"persons": {"rows": 2, "sha256": "c" * 64}}}
    diff = digest.differences(want, got)
    assert diff[0] == "table deeds missing" and diff[1].startswith("table persons: 2 rows")
    assert digest.differences(want, want) == []


def test_wal_segment_names_and_lsns() -> None:
    assert hostcmd.segment_end_lsn("000000010000000000000003") == 0x4000000
    assert hostcmd.segment_end_lsn("0000000100000001000000FF") == (2 << 32)
    assert hostcmd.lsn_text(hostcmd.lsn_int("1/A2B3C4")) == "1/A2B3C4"


def test_objectives_per_embassy_and_round_schedule() -> None:
    dep = load_stack("rehearsal")
    embassies = {e.name: e for e in dep.embassies}
    regs = {r.name: r for r in dep.registers}
    assert dep.rpo_bound(regs["population"], embassies["de"]) == 5  # warm: the register's own
    assert dep.rpo_bound(regs["population"], embassies["ie"]) == 60  # cold: whole WAL segments only
    assert dep.rpo_bound(regs["court-files"], embassies["ie"]) == 300
    assert round_interval(dep) == 150  # two rounds inside court-files' 300 s
    vaults = {n: Vault(n, f"vault-{n}", 8443, f"b-{n}", "/ca", "AK", "SK") for n in embassies}
    repos = {n: Repo(i, vaults[n], "CIPHER", pgbackrest_path(2 if n == "ie" else 1)) for i, n in ((1, "de"), (2, "se"),
                                                                                           (3, "ie"))}
    cfg = round_config(dep, vaults, repos, {"ie": 2})
    assert [e["repo"] for e in cfg["embassies"]] == [1, 2, 3]
    # each embassy's key generation: the repositories its manifests name
    assert [(e["repo_path"], e["restic_base"]) for e in cfg["embassies"]] == [
        ("/pgbackrest", "restic"), ("/pgbackrest", "restic"), ("/pgbackrest-g2", "restic-g2")]
    assert "CIPHER" not in json.dumps(cfg)
    assert "AK" not in json.dumps(cfg) and "SK" not in json.dumps(cfg)  # credentials travel in their own 0600 files
    assert {r["name"]: r.get("database") or r.get("path") for r in cfg["registers"]} == {
        "population": "population", "land-register": "land_register", "court-files": "/srv/registers/court-files"}
