"""The custody kit end to end on the controller: issue, store, open from K shares; every refusal named;
no secret in plaintext in the stored objects or the sheets' non-share parts."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import pytest

from embassy import model
from embassy.custody import kit, seal, shares
from embassy.errors import EXIT_FINDING, BundleInvalid, ObjectMissing, SharesRefused, UserError
from embassy.replication.verify import PUBLIC_KEY_FILE

from .custody_fixtures import MemoryVaults, controller, home_sign, issue, lab_target


@pytest.fixture(scope="module")
def dep() -> model.Deployment:
    return model.load_stack("rehearsal")


def sheet_texts(folder: Path, officials: list[int]) -> list[shares.ShareText]:
    return kit.read_shares([str(folder / f"official-{i}.txt") for i in officials], lambda: "")


def test_k_of_n_sheets_open_each_embassys_bundle_with_its_own_secrets(dep: model.Deployment, tmp_path: Path) -> None:
    lab, folder, _ = controller(tmp_path, dep)
    store = MemoryVaults()
    issued = issue(dep, lab, store, folder, tmp_path / "kit")
    assert (issued.version, issued.threshold, issued.officials) == (1, 3, 5)
    assert sorted(p.name for p in issued.sheets) == sorted(f"official-{i}.{s}" for i in range(1, 6) for s in ("txt", "html"))
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in issued.sheets)
    assert set(store.objects) == {e.name for e in dep.embassies}  # each bundle in its own embassy's vault only
    for emb in dep.embassies:
        bundle = kit.open_bundle(dep, store, emb.name, sheet_texts(tmp_path / "kit", [5, 2, 4]))
        assert (bundle.stack, bundle.embassy, bundle.version) == ("rehearsal", emb.name, 1)
        if bundle.pgbackrest:
            assert bundle.pgbackrest[-1].value == (folder / f"pgbackrest-{emb.name}.pass").read_text().strip()
        if bundle.restic:
            assert bundle.restic[-1].value == (folder / f"restic-{emb.name}.pass").read_text().strip()
        creds = json.loads(Path(lab.vault(emb.name).reader_credentials).read_text())
        assert bundle.vault.secret_access_key == creds["secret_access_key"]
        assert bundle.manifest_public_key.startswith("-----BEGIN PUBLIC KEY-----")
        assert bundle.outputs["mode"] == emb.mode.value and bundle.outputs["registers"]
    # An embassy's bundle holds no other embassy's passphrase.
    de = kit.open_bundle(dep, store, "de", sheet_texts(tmp_path / "kit", [1, 2, 3]))
    others = [(folder / f"pgbackrest-{e.name}.pass").read_text().strip() for e in dep.embassies if e.name != "de"]
    assert not any(o in de.model_dump_json() for o in others)


def test_k_minus_one_sheets_are_refused(dep: model.Deployment, tmp_path: Path) -> None:
    lab, folder, _ = controller(tmp_path, dep)
    store = MemoryVaults()
    issue(dep, lab, store, folder, tmp_path / "kit")
    with pytest.raises(SharesRefused) as err:
        kit.open_bundle(dep, store, "ie", sheet_texts(tmp_path / "kit", [1, 3]))
    assert "2 distinct share(s) given (official 1, official 3), 3 needed" in err.value.message


def test_a_sheet_of_an_earlier_version_is_named_after_rotation(dep: model.Deployment, tmp_path: Path) -> None:
    lab, folder, _ = controller(tmp_path, dep)
    store = MemoryVaults()
    issue(dep, lab, store, folder, tmp_path / "v1")
    with pytest.raises(UserError, match="already has a custody kit"):
        issue(dep, lab, store, folder, tmp_path / "again")
    rotated = issue(dep, lab, store, folder, tmp_path / "v2", rotate=True, officials=4, threshold=2)
    assert rotated.version == 2
    assert "# bundle version: 2" in (tmp_path / "v2" / "official-1.txt").read_text()
    old = sheet_texts(tmp_path / "v1", [1])
    new = sheet_texts(tmp_path / "v2", [3])
    with pytest.raises(SharesRefused) as err:
        kit.open_bundle(dep, store, "de", [*new, *old])
    assert err.value.message == (f"{tmp_path / 'v1' / 'official-1.txt'}: a share of the earlier bundle version 1; "
                                 "the vault's bundle is version 2")
    # Three old sheets do not open the new bundle either; two new ones do.
    with pytest.raises(SharesRefused, match="earlier bundle version 1"):
        kit.open_bundle(dep, store, "de", sheet_texts(tmp_path / "v1", [1, 2, 3]))
    assert kit.open_bundle(dep, store, "de", sheet_texts(tmp_path / "v2", [2, 4])).version == 2


def test_a_share_of_another_stack_is_named(dep: model.Deployment, tmp_path: Path) -> None:
    lab, folder, _ = controller(tmp_path, dep)
    store = MemoryVaults()
    issue(dep, lab, store, folder, tmp_path / "kit")
    # A sheet whose header names another stack.
    other = tmp_path / "other.txt"
    other.write_text((tmp_path / "kit" / "official-1.txt").read_text().replace("# stack: rehearsal", "# stack: production"))
    with pytest.raises(SharesRefused, match=r"other.txt: a share of stack 'production', not 'rehearsal'"):
        kit.open_bundle(dep, store, "de", [*kit.read_shares([str(other)], lambda: ""), *sheet_texts(tmp_path / "kit", [2, 3])])
    # Typed words of another kit (no header): named by what they match, nothing.
    foreign = shares.split(b"\x01" * 32, 3, 2)[0]
    with pytest.raises(SharesRefused, match=r"stdin share 1: a share of no bundle of stack 'rehearsal' at de"):
        kit.open_bundle(dep, store, "de", kit.read_shares(["-"], lambda: foreign + "\n\n"))


def test_a_mistyped_sheet_is_named_before_any_vault_is_read(dep: model.Deployment, tmp_path: Path) -> None:
    lab, folder, _ = controller(tmp_path, dep)
    issue(dep, lab, MemoryVaults(), folder, tmp_path / "kit")
    sheet = tmp_path / "kit" / "official-2.txt"
    lines = sheet.read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith(" 1 "))
    first = lines[row].split()[1]
    lines[row] = lines[row].replace(first, "academic" if first != "academic" else "acid", 1)
    sheet.write_text("\n".join(lines) + "\n")

    class NoVault(MemoryVaults):
        def envelopes(self, embassy: str, stack: str) -> list:  # type: ignore[type-arg]
            raise AssertionError("a vault was read for a mistyped share")

    with pytest.raises(SharesRefused) as err:
        kit.open_bundle(dep, NoVault(), "de", sheet_texts(tmp_path / "kit", [1, 2, 3]))
    assert err.value.message.startswith(f"{sheet}: mistyped: its checksum fails")


def test_a_tampered_bundle_is_refused_as_an_integrity_failure(dep: model.Deployment, tmp_path: Path) -> None:
    lab, folder, _ = controller(tmp_path, dep)
    store = MemoryVaults()
    issue(dep, lab, store, folder, tmp_path / "kit")
    key = "custody/rehearsal/bundle-v0001.json"
    original = json.loads(store.objects["ie"][key])
    sealed = bytearray(base64.b64decode(original["ciphertext"]))
    sealed[10] ^= 1
    tampered = {"ciphertext": {**original, "ciphertext": base64.b64encode(bytes(sealed)).decode()},
                "header": {**original, "officials": 9},
                "moved": {**original, "embassy": "de"}}
    texts = sheet_texts(tmp_path / "kit", [1, 2, 3])
    for what, envelope in tampered.items():
        store.objects["ie"][key] = json.dumps(envelope).encode()
        with pytest.raises(BundleInvalid) as err:
            kit.open_bundle(dep, store, "ie", texts)
        assert err.value.code == EXIT_FINDING, what
        says = "holds the bundle of embassy 'de'" if what == "moved" else "does not decrypt"
        assert err.value.message.startswith(f"vault:ie/{key}: {says}"), (what, err.value.message)
    store.objects["ie"] = {}
    with pytest.raises(ObjectMissing, match="vault:ie/custody/rehearsal/: no custody bundle"):
        kit.open_bundle(dep, store, "ie", texts)


def test_no_secret_in_plaintext_in_the_vault_objects_the_sheets_or_the_log(dep: model.Deployment, tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    lab, folder, values = controller(tmp_path, dep)
    store = MemoryVaults()
    said: list[str] = []
    caplog.set_level(logging.DEBUG)
    issued = kit.issue(dep, lab_target(dep, lab), store, folder, tmp_path / "kit", officials=3, threshold=2, rotate=False,
                       signer=home_sign, say=said.append)
    opened = kit.open_bundle(dep, store, "de", sheet_texts(tmp_path / "kit", [1, 3]), say=said.append)
    assert set(opened.secrets()) <= set(values)
    words = [shares.parse_text(p.read_text(), "s").words for p in issued.sheets if p.suffix == ".txt"]
    haystacks = {f"vault:{e}/{k}": v.decode() for e, objs in store.objects.items() for k, v in objs.items()}
    for p in issued.sheets:
        text = p.read_text()
        for w in words:  # the share itself is the sheet's purpose: everything else must hold no secret
            text = text.replace(w, "")
        haystacks[p.name] = text
    haystacks["log"] = "\n".join(said) + caplog.text + json.dumps([s for s in issued.stored])
    for value in values:
        for name, text in haystacks.items():
            assert value not in text, f"a secret in plaintext in {name}"
            # nor base64 of it (a careless encoding is still plaintext)
            assert base64.b64encode(value.encode()).decode()[:40] not in text, f"a base64 secret in {name}"


def test_the_header_is_signed_by_home_and_names_identifier_threshold_version(dep: model.Deployment,
                                                                              tmp_path: Path) -> None:
    lab, folder, _ = controller(tmp_path, dep)
    store = MemoryVaults()
    issued = issue(dep, lab, store, folder, tmp_path / "kit")
    env = json.loads(store.objects["se"]["custody/rehearsal/bundle-v0001.json"])
    head = seal.authenticate(env, "x", (Path(lab.dir) / PUBLIC_KEY_FILE).read_text())
    assert (head.identifier, head.threshold, head.version, head.embassy) == (issued.identifier, 3, 1, "se")
    with pytest.raises(BundleInvalid, match="not a custody bundle"):
        seal.header_of({"format": "other"}, "vault:se/x")


def test_sheets_pasted_on_stdin_are_read_share_by_share_with_their_headers(dep: model.Deployment, tmp_path: Path) -> None:
    lab, folder, _ = controller(tmp_path, dep)
    store = MemoryVaults()
    issue(dep, lab, store, folder, tmp_path / "kit")
    pasted = "\n\n".join((tmp_path / "kit" / f"official-{i}.txt").read_text() for i in (2, 3, 5))
    texts = kit.read_shares(["-"], lambda: pasted)
    assert [(t.source, t.stack, t.version) for t in texts] == [(f"stdin share {i}", "rehearsal", 1) for i in (1, 2, 3)]
    assert kit.open_bundle(dep, store, "se", texts).embassy == "se"
