"""Custody against a hostile vault host: what it plants, swaps or forges below S3 never opens elsewhere, never
decides a version, an identifier or a threshold, and never crashes a reader.

The adversary holds one vault's storage (any bytes at any key) and no signing key; the officials hand in
their own sheets. Each test is that adversary's move and asserts the refusal, by object and reason.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from embassy import model
from embassy.custody import hostsecrets, kit, restore, seal, shares
from embassy.custody.vaultio import object_key
from embassy.errors import EXIT_FINDING, BundleInvalid, SharesRefused, UserError, VaultRefusedWrite
from embassy.replication.manifest import canonical
from embassy.replication.verify import PUBLIC_KEY_FILE

from .custody_fixtures import MemoryVaults, controller, home_sign, issue, lab_target

V1 = object_key("rehearsal", 1)


@pytest.fixture(scope="module")
def dep() -> model.Deployment:
    return model.load_stack("rehearsal")


def sheets_of(folder: Path, officials: list[int]) -> list[shares.ShareText]:
    return kit.read_shares([str(folder / f"official-{i}.txt") for i in officials], lambda: "")


FORGER = Ed25519PrivateKey.generate()  # the host's own key: it has none of home's


def forged(envelope: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The envelope with header fields changed and re-signed by a key that is not home's (the host has none)."""
    out = {**envelope, **changes}
    header = {f: out[f] for f in seal.HEADER_FIELDS}
    signature = FORGER.sign(seal.signed_bytes(header, out["ciphertext"]))
    return {**out, "signature": {"alg": "ed25519", "value": base64.b64encode(signature).decode()}}


def stored(store: MemoryVaults, embassy: str, key: str = V1) -> dict[str, Any]:
    got: dict[str, Any] = json.loads(store.objects[embassy][key])
    return got


@pytest.fixture
def kit1(dep: model.Deployment, tmp_path: Path) -> SimpleNamespace:
    lab, folder, _ = controller(tmp_path, dep)
    store = MemoryVaults()
    issued = issue(dep, lab, store, folder, tmp_path / "v1")
    return SimpleNamespace(lab=lab, folder=folder, store=store, issued=issued, sheets=tmp_path / "v1",
                           public=(Path(lab.dir) / PUBLIC_KEY_FILE).read_text(), tmp=tmp_path)


# --------------------------------------------------------------------------- item 5: one embassy's bundle, one embassy


def test_se_bundle_in_de_vault_is_refused_naming_the_object(dep: model.Deployment, kit1: SimpleNamespace) -> None:
    # Before the fix, the key was derived with the header's embassy: se's envelope opened at de and se's
    # credentials went onto de's host. The shares are right (they open se's bundle at se):
    texts = sheets_of(kit1.sheets, [1, 2, 3])
    assert kit.open_bundle(dep, kit1.store, "se", texts).embassy == "se"
    de, se = kit1.store.objects["de"][V1], kit1.store.objects["se"][V1]
    kit1.store.plant("de", V1, se)  # swapped envelopes: each vault holds the other's
    kit1.store.plant("se", V1, de)
    for at, other in (("de", "se"), ("se", "de")):
        with pytest.raises(BundleInvalid) as err:
            kit.open_bundle(dep, kit1.store, at, texts)
        assert err.value.code == EXIT_FINDING
        assert err.value.message.startswith(f"vault:{at}/{V1}: holds the bundle of embassy '{other}' (stack rehearsal), "
                                            f"not {at}'s"), err.value.message
    # The same envelope with its header rewritten to say de (the host re-signs with a key it has): the key is
    # derived for de, and se's ciphertext does not decrypt under it.
    kit1.store.plant("de", V1, forged(json.loads(se), embassy="de"))
    with pytest.raises(BundleInvalid, match=rf"vault:de/{V1}: does not decrypt \(AES-GCM tag\)"):
        kit.open_bundle(dep, kit1.store, "de", texts)
    # Even unsigned-looking but otherwise intact (home's signature kept, only the embassy edited): same refusal.
    kit1.store.plant("de", V1, {**json.loads(se), "embassy": "de"})
    with pytest.raises(BundleInvalid, match="does not decrypt"):
        kit.open_bundle(dep, kit1.store, "de", texts)


def test_a_bundle_that_opens_but_names_another_embassy_inside_is_refused(dep: model.Deployment,
                                                                        kit1: SimpleNamespace) -> None:
    # Whoever holds the key (never a host) seals se's content under de's header: the content's identity is
    # compared after opening, before anything is used.
    key = os.urandom(32)
    se = kit.open_bundle(dep, kit1.store, "se", sheets_of(kit1.sheets, [1, 2, 3]))
    envelope = seal.seal(se.model_copy(update={"embassy": "de"}), key, identifier=1, threshold=1, officials=1,
                         sign=home_sign)
    header = {f: envelope[f] for f in seal.HEADER_FIELDS}
    salt, nonce = base64.b64decode(header["salt"]), base64.b64decode(header["nonce"])
    inner = AESGCM(seal._derive(key, salt, "rehearsal", "de", 1)).encrypt(nonce, canonical(se.model_dump()),
                                                                         canonical(header))
    envelope["ciphertext"] = base64.b64encode(inner).decode()
    with pytest.raises(BundleInvalid) as err:
        seal.unseal(envelope, key, "vault:de/x", stack="rehearsal", embassy="de")
    assert "sealed content names rehearsal/se v1, not rehearsal/de v1: refused before any of it is used" in \
        err.value.message
    with pytest.raises(BundleInvalid, match=r"holds the bundle of embassy 'de' .*not se's"):
        seal.unseal(envelope, key, "vault:se/x", stack="rehearsal", embassy="se")
    with pytest.raises(BundleInvalid, match=r"holds the bundle of embassy 'de' \(stack rehearsal\), not de's"):
        seal.unseal(envelope, key, "vault:de/x", stack="production", embassy="de")


def test_restore_writes_nothing_to_the_host_when_the_bundle_is_another_embassys(
        dep: model.Deployment, kit1: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    kit1.store.plant("de", V1, kit1.store.objects["se"][V1])
    written: list[Any] = []
    monkeypatch.setattr(kit, "TargetVaults", lambda _target, _dep: kit1.store)
    monkeypatch.setattr(hostsecrets, "apply", lambda *a: written.append(a))
    (Path(kit1.lab.dir) / PUBLIC_KEY_FILE).unlink()  # the day home is gone: no key recorded on this controller
    target = SimpleNamespace(kind="lab", workdir=Path(kit1.lab.dir))
    with pytest.raises(BundleInvalid) as err:
        restore.with_shares(dep, target, "de", [SimpleNamespace(name="enclave-de")],  # type: ignore[arg-type,list-item]
                            sheets_of(kit1.sheets, [2, 3, 4]), lambda _m: None)
    assert err.value.code == EXIT_FINDING and f"vault:de/{V1}: holds the bundle of embassy 'se'" in err.value.message
    assert written == [] and not (Path(kit1.lab.dir) / PUBLIC_KEY_FILE).exists()  # no secret, no key trusted


# --------------------------------------------------------------------------- item 6: forged headers decide nothing


def test_a_forged_header_does_not_block_init_and_is_named(dep: model.Deployment, tmp_path: Path) -> None:
    lab, folder, _ = controller(tmp_path, dep)
    store = MemoryVaults()
    (tmp_path / "x").mkdir()
    other = MemoryVaults()  # a real kit of the same stack, elsewhere: its envelopes, re-signed by the host
    lab2, folder2, _ = controller(tmp_path / "x", dep)
    issue(dep, lab2, other, folder2, tmp_path / "x" / "kit")
    store.plant("se", object_key("rehearsal", 7), forged(stored(other, "se"), version=7))
    store.plant("de", V1, forged(stored(other, "de")))  # at the key init writes: signed, but not by home
    said: list[str] = []
    issued = kit.issue(dep, lab_target(dep, lab), store, folder, tmp_path / "kit", officials=3, threshold=2, rotate=False,
                       signer=home_sign, say=said.append)
    assert issued.version == 1
    assert any(f"vault:se/{object_key('rehearsal', 7)}: its header is not signed by home's manifest key" in m
               for m in issued.ignored), issued.ignored
    assert any(f"vault:de/{V1}: its header is not signed" in m for m in issued.ignored)
    assert any(m.startswith("ignored (not home's): vault:se/") for m in said)
    # the kit it issued opens, at de too (the planted object at de's key was replaced by a new version)
    assert kit.open_bundle(dep, store, "de", sheets_of(tmp_path / "kit", [1, 3])).version == 1


def test_a_forged_newest_version_neither_hides_the_real_one_nor_picks_the_next(dep: model.Deployment,
                                                                               kit1: SimpleNamespace) -> None:
    real = stored(kit1.store, "de")
    kit1.store.plant("de", object_key("rehearsal", 99), forged(real, version=99, identifier=(real["identifier"] + 1) % 32768))
    # The restore opens the real newest (version 1) with its sheets; the forged 99 is not "the vault's version".
    for public in (kit1.public, None):
        assert kit.open_bundle(dep, kit1.store, "de", sheets_of(kit1.sheets, [1, 2, 3]), public_pem=public).version == 1
    # rotate reads only home's headers: version 2, not 100
    rotated = issue(dep, kit1.lab, kit1.store, kit1.folder, kit1.tmp / "v2", rotate=True)
    assert rotated.version == 2
    assert kit.open_bundle(dep, kit1.store, "de", sheets_of(kit1.tmp / "v2", [2, 4, 5])).version == 2
    # and the v1 sheets are now named as the earlier version: the proof of version 2 is home's signature
    with pytest.raises(SharesRefused, match="a share of the earlier bundle version 1; the vault's bundle is version 2"):
        kit.open_bundle(dep, kit1.store, "de", sheets_of(kit1.sheets, [1, 2, 3]))


def test_every_identifier_forged_does_not_make_rotate_loop(dep: model.Deployment, kit1: SimpleNamespace) -> None:
    # Every 15-bit identifier in a forged header: before, rotate took them all as used and drew forever. Most sit at
    # keys of no bundle (listed, never read); 2000 at free bundle keys are read and their signatures refused.
    real = forged(stored(kit1.store, "ie"), ciphertext="AAAA")
    for i in range(32768):
        at_bundle_key = i < 2000
        version = i + 2 if at_bundle_key else 2
        key = object_key("rehearsal", version) if at_bundle_key else f"custody/rehearsal/x{i:05d}.json"
        kit1.store.plant("ie", key, forged(real, identifier=i, version=version) if i < 100 else
                         {**real, "identifier": i, "version": version})
    start = time.monotonic()
    rotated = issue(dep, kit1.lab, kit1.store, kit1.folder, kit1.tmp / "v2", rotate=True)
    print(f"rotate beside 32768 forged headers: {time.monotonic() - start:.1f} s")
    assert rotated.version == 2 and time.monotonic() - start < 60
    assert len(rotated.ignored) == 32768 and sum("not a bundle's key" in m for m in rotated.ignored) == 32768 - 2000
    assert sum("its header is not signed by home's manifest key" in m for m in rotated.ignored) == 2000
    # The bound itself: even with every identifier taken, split() gives up after MAX_DRAWS instead of looping.
    with pytest.raises(UserError, match=f"no free share identifier in {shares.MAX_DRAWS} draws"):
        shares.split(os.urandom(32), 3, 2, frozenset(range(32768)))


def test_the_threshold_comes_from_the_shares_not_the_header(dep: model.Deployment, kit1: SimpleNamespace) -> None:
    # A header claiming threshold 1 (so that one share would do) or 16 (so that no one could open): the shares carry
    # their own threshold; the edited header then fails AES-GCM, named.
    real = stored(kit1.store, "de")
    for threshold in (1, 16):
        kit1.store.plant("de", V1, forged(real, threshold=threshold, officials=16))
        with pytest.raises(SharesRefused, match="1 distinct share\\(s\\) given \\(official 2\\), 3 needed"):
            kit.open_bundle(dep, kit1.store, "de", sheets_of(kit1.sheets, [2]))
        with pytest.raises(BundleInvalid, match=f"vault:de/{V1}: does not decrypt"):
            kit.open_bundle(dep, kit1.store, "de", sheets_of(kit1.sheets, [2, 3, 5]))


@pytest.mark.parametrize(("what", "data", "reason"), [
    ("nesting", b"[" * 100_000 + b"]" * 100_000, "more than an envelope's"),
    ("deep but small", b"{\"a\":" * 5000 + b"1" + b"}" * 5000, "nested too deeply"),
    ("duplicate keys", b'{"format": "embassy-custody-bundle/2", "format": "x"}', "duplicate key 'format'"),
    ("not an object", b"[1, 2]", "a JSON list, not an object"),
    ("not JSON", b"\xff\xfe", "not JSON"),
])
def test_hostile_bytes_are_named_never_a_crash(dep: model.Deployment, kit1: SimpleNamespace, what: str, data: bytes,
                                               reason: str) -> None:
    assert reason in str(seal.parse_envelope(data)), what
    kit1.store.plant("de", "custody/rehearsal/bundle-v0002.json", data)
    texts = sheets_of(kit1.sheets, [1, 2, 3])
    assert kit.open_bundle(dep, kit1.store, "de", texts).version == 1  # beside the real bundle: ignored
    kit1.store.plant("de", V1, data)  # instead of it: an integrity failure naming the object
    with pytest.raises(BundleInvalid, match=f"vault:de/custody/rehearsal/bundle-v000[12].json: .*{reason}"):
        kit.open_bundle(dep, kit1.store, "de", texts)


@pytest.mark.parametrize(("field", "value", "says"), [
    ("version", 10**12, "header field version"), ("version", "1", "header field version"),
    ("identifier", 32768, "header field identifier"), ("threshold", 0, "header field threshold"),
    ("officials", True, "header field officials"), ("embassy", "x" * 1000, "header field embassy"),
    ("extra", {"a": 1}, "unknown fields extra"), ("ciphertext", "A" * 70_000, "ciphertext is not a bounded"),
])
def test_out_of_bounds_header_fields_are_refused_by_name(kit1: SimpleNamespace, field: str, value: Any, says: str) -> None:
    with pytest.raises(BundleInvalid, match=says):
        seal.header_of({**stored(kit1.store, "de"), field: value}, "vault:de/x")


def test_too_many_shares_are_refused_before_any_vault_is_read(dep: model.Deployment, kit1: SimpleNamespace) -> None:
    texts = sheets_of(kit1.sheets, [1]) * 17
    with pytest.raises(SharesRefused, match="17 shares given: a kit has at most 16 officials"):
        kit.open_bundle(dep, kit1.store, "de", texts)


# --------------------------------------------------------------------------- item 4: the lock a bundle is stored under


@pytest.mark.parametrize(("lock", "says"), [
    ({"lock_mode": "GOVERNANCE"}, "lock mode GOVERNANCE, not COMPLIANCE"),
    ({"lock_mode": None}, "lock mode none"),
    ({"retain_until": "2027-01-01T00:00:00+00:00"}, "less than 3650 days after its write"),
])
def test_a_bundle_stored_without_its_lock_is_refused(dep: model.Deployment, tmp_path: Path, lock: dict[str, Any],
                                                     says: str) -> None:
    lab, folder, _ = controller(tmp_path, dep)
    store = MemoryVaults()
    store.lock = {**store.lock, **lock}
    with pytest.raises(VaultRefusedWrite) as err:
        issue(dep, lab, store, folder, tmp_path / "kit")
    assert err.value.code == EXIT_FINDING
    assert err.value.message.startswith(f"vault:de/{V1}: stored without the lock a bundle needs: ")
    assert says in err.value.message


def test_bundle_lock_problem_is_what_verify_reads() -> None:
    written = dt.datetime(2026, 12, 3, 22, 0, tzinfo=dt.UTC)
    ok = kit.lock_of("k", {"lock_mode": "COMPLIANCE", "retain_until": (written + dt.timedelta(days=3650)).isoformat(),
                           "last_modified": written.isoformat()})
    assert ok.problem(3650) is None
    assert ok.problem(3651) is None  # a day's slack: the bucket counts retention in whole days
    assert "less than 3652 days after its write" in str(ok.problem(3652))
