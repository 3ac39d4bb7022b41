"""The custody bundle carries the newest round home had signed for its embassy at sealing (issue 21 item 1):
inside the sealed content, so a host cannot change it; a bundle without it anchors nothing.

The adversary holds the embassy's vault (any bytes at any key, no signing key, not the officials' key) and
wants the bundle to name a lower round, so that a rolled-back chain passes `verify` anchored on the bundle.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from embassy import model
from embassy.custody import kit, shares
from embassy.custody.vaultio import object_key
from embassy.errors import EXIT_FINDING, BundleInvalid, UserError
from embassy.replication import freshness, manifest
from embassy.replication.manifest import canonical

from .custody_fixtures import MemoryVaults, controller, issue

V1 = object_key("rehearsal", 1)


@pytest.fixture(scope="module")
def dep() -> model.Deployment:
    return model.load_stack("rehearsal")


def texts(folder: Path) -> list[shares.ShareText]:
    return kit.read_shares([str(folder / f"official-{i}.txt") for i in (1, 2, 3)], lambda: "")


def verified(embassy: str, round_: int) -> manifest.Verified:
    """A head verify accepted (what raises the controller's high-water mark)."""
    return manifest.Verified(manifest.object_key(round_), {"embassy": embassy, "round": round_,
                                                           "time": "2026-12-02T21:00:00+00:00"}, "ab" * 32)


def test_a_bundle_sealed_at_round_n_opens_with_sealed_round_n(dep: model.Deployment, tmp_path: Path) -> None:
    lab, folder, _ = controller(tmp_path, dep)
    assert freshness.raise_mark(folder, "de", verified("de", 7))
    store = MemoryVaults()
    issue(dep, lab, store, folder, tmp_path / "v1")
    de = kit.open_bundle(dep, store, "de", texts(tmp_path / "v1"))
    assert de.sealed_round == 7 and freshness.bundle_round(de) == 7
    # An embassy this controller never verified: no round is guessed, the bundle anchors nothing.
    se = kit.open_bundle(dep, store, "se", texts(tmp_path / "v1"))
    assert se.sealed_round is None and freshness.bundle_round(se) is None
    # Rotate seals the round known then.
    assert freshness.raise_mark(folder, "de", verified("de", 9))
    issue(dep, lab, store, folder, tmp_path / "v2", rotate=True)
    assert kit.open_bundle(dep, store, "de", texts(tmp_path / "v2")).sealed_round == 9


def test_the_sealed_round_is_in_the_ciphertext_and_flipping_it_does_not_open(dep: model.Deployment,
                                                                            tmp_path: Path) -> None:
    lab, folder, _ = controller(tmp_path, dep)
    freshness.raise_mark(folder, "de", verified("de", 7))
    store = MemoryVaults()
    issue(dep, lab, store, folder, tmp_path / "v1")
    envelope = json.loads(store.objects["de"][V1])
    assert "sealed_round" not in envelope  # not in the header: only the sealed content carries it
    bundle = kit.open_bundle(dep, store, "de", texts(tmp_path / "v1"))
    # Adversary: knows the plaintext's layout (canonical JSON) and AES-GCM's counter mode, so it flips the
    # ciphertext's bytes where "7" is to make it "1" (a round below its rolled-back head). Only the tag stops it.
    plain = canonical(bundle.model_dump())
    at = plain.index(b'"sealed_round":7') + len(b'"sealed_round":')
    sealed = bytearray(base64.b64decode(envelope["ciphertext"]))
    sealed[at] ^= ord("7") ^ ord("1")
    store.plant("de", V1, {**envelope, "ciphertext": base64.b64encode(bytes(sealed)).decode()})
    with pytest.raises(BundleInvalid) as err:
        kit.open_bundle(dep, store, "de", texts(tmp_path / "v1"))
    assert err.value.code == EXIT_FINDING
    assert err.value.message.startswith(f"vault:de/{V1}: does not decrypt"), err.value.message


def test_a_damaged_high_water_mark_stops_sealing(dep: model.Deployment, tmp_path: Path) -> None:
    # A mark others can write could have been lowered: never sealed as the bundle's round.
    lab, folder, _ = controller(tmp_path, dep)
    freshness.raise_mark(folder, "de", verified("de", 7))
    os.chmod(freshness.mark_path(folder, "de"), 0o644)
    with pytest.raises(UserError, match="readable or writable by others"):
        issue(dep, lab, MemoryVaults(), folder, tmp_path / "v1")
    assert not (tmp_path / "v1").exists() or not any((tmp_path / "v1").iterdir())
