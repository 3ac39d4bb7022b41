"""Home's round state lost or unreadable: the chain continues from the vaults, never restarts at round 1.

The adversary: a host nation that wants home to start a second, validly signed history (so that it can
serve whichever suits it). It controls what its vault answers: nothing, a rolled-back chain, junk under
manifests/ (another key, another embassy, deeply nested JSON, huge objects). Each test gives home such
vaults and checks the decision: the round number past every verified round, each embassy linked to its
own newest verified manifest, and a refusal whenever the vaults cannot say where the chain stands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from embassy.replication import manifest, roundstate
from embassy.replication.roundstate import RecoveryRefused, StateUnreadable, VaultView

STACK = "rehearsal"
KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key()


def chain(embassy: str, rounds: list[int], *, key: Ed25519PrivateKey = KEY, stack: str = STACK,
          snapshot: str | None = None) -> list[tuple[str, bytes]]:
    """Signed, linked manifests of `embassy` at these rounds (as home writes them)."""
    out: list[tuple[str, bytes]] = []
    previous = None
    for n in rounds:
        registers: list[dict[str, Any]] = [{"name": "population", "kind": "postgres"}]
        if snapshot:
            registers.append({"name": "court-files", "kind": "files", "snapshot_id": f"{snapshot}{n}",
                              "snapshot_time": "2026-01-01T00:00:00.000000Z", "repository": "restic/court-files",
                              "digest": {"files": n}})
        body = {"format": manifest.FORMAT, "stack": stack, "state": {"name": "Estonia", "code": "EE"},
                "embassy": embassy, "mode": "cold", "round": n, "time": f"2026-01-01T00:00:{n:02d}.000000Z",
                "previous_sha256": previous, "registers": registers}
        data = manifest.sign(body, key)
        out.append((manifest.object_key(n), data))
        previous = manifest.sha256(data)
    return out


def sha(objects: list[tuple[str, bytes]], n: int) -> str:
    return next(manifest.sha256(d) for k, d in objects if k == manifest.object_key(n))


def recover(views: list[VaultView], state: dict[str, Any] | None = None, **kw: Any) -> roundstate.Recovery:
    return roundstate.recover(state, "missing", views, PUBLIC, stack=STACK, **kw)


# --------------------------------------------------------------------------- state.json read strictly


def write_state(tmp_path: Path, value: Any) -> Path:
    path = tmp_path / "state.json"
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    return path


def test_missing_state_is_none_and_a_good_one_loads(tmp_path: Path) -> None:
    assert roundstate.load(tmp_path / "state.json") is None
    good = {"round": 7, "embassies": {"de": {"sha256": "a" * 64, "round": 7, "key": manifest.object_key(7), "files": {}}}}
    assert roundstate.load(write_state(tmp_path, good)) == good


@pytest.mark.parametrize(("content", "reason"), [
    ("", "not JSON"),
    ("{\"round\": 7, \"embass", "not JSON"),
    ("[" * 100_000 + "]" * 100_000, "not JSON"),  # nesting: RecursionError is not "round 0"
    ({"round": "7", "embassies": {}}, "not a round state"),
    ({"round": True, "embassies": {}}, "not a round state"),
    ({"round": -1, "embassies": {}}, "not a round state"),
    ({"embassies": {}}, "not a round state"),
    ({"round": 7, "embassies": []}, "not a round state"),
    ({"round": 7, "embassies": {"de": "x"}}, "not an object"),
    ({"round": 7, "embassies": {"de": {"sha256": "zz", "round": 7, "key": manifest.object_key(7)}}}, "not a sha256"),
    ({"round": 7, "embassies": {"de": {"sha256": "a" * 64, "round": 7, "key": manifest.object_key(6)}}}, "do not match"),
    ({"round": 7, "embassies": {"de": {"sha256": "a" * 64, "round": 9, "key": manifest.object_key(9)}}}, "after the state"),
])
def test_unreadable_state_is_never_round_zero(tmp_path: Path, content: Any, reason: str) -> None:
    with pytest.raises(StateUnreadable, match=reason):
        roundstate.load(write_state(tmp_path, content))


# --------------------------------------------------------------------------- recovery from the vaults


def test_lost_state_continues_every_chain_from_its_own_newest_head() -> None:
    de, se = chain("de", [1, 2, 3, 4], snapshot="de"), chain("se", [1, 2, 3, 4], snapshot="se")
    got = recover([VaultView("de", de), VaultView("se", se)])
    assert got.state["round"] == 4 and got.unknown == [] and not got.new_chain
    assert got.state["embassies"]["de"]["sha256"] == sha(de, 4) and got.state["embassies"]["se"]["sha256"] == sha(se, 4)
    # The file register's snapshot is carried from the signed head, with the digest it was signed with.
    assert got.state["embassies"]["de"]["files"]["court-files"]["snapshot_id"] == "de4"
    assert got.state["embassies"]["de"]["files"]["court-files"]["digest"] == {"files": 4}


def test_some_vaults_unreachable_the_others_continue_and_theirs_wait() -> None:
    de = chain("de", [1, 2, 3])
    got = recover([VaultView("de", de), VaultView("se", None, "ConnectTimeoutError"), VaultView("ie", None, "refused")])
    assert got.state["round"] == 3 and sorted(got.unknown) == ["ie", "se"]
    assert set(got.state["embassies"]) == {"de"}  # no head invented for se or ie: they get no manifest this round
    assert any("unreachable" in n for n in got.notes["se"])


def test_all_vaults_unreachable_refuses() -> None:
    with pytest.raises(RecoveryRefused, match="no vault answers"):
        recover([VaultView("de", None, "timeout"), VaultView("se", None, "timeout")])


def test_answering_vaults_empty_and_one_silent_refuses_a_new_chain() -> None:
    # The silent one may hold the chain: starting round 1 in the others would begin a second history.
    with pytest.raises(RecoveryRefused, match="se cannot say"):
        recover([VaultView("de", []), VaultView("se", None, "timeout")])


def test_all_vaults_empty_and_answering_is_a_first_round() -> None:
    got = recover([VaultView("de", []), VaultView("se", [])])
    assert got.state == {"round": 0, "embassies": {}} and got.unknown == []


def test_one_vault_rolled_back_does_not_lower_the_round() -> None:
    de, se, ie = chain("de", [1, 2, 3, 4, 5]), chain("se", [1, 2, 3, 4, 5]), chain("ie", [1, 2, 3, 4, 5])
    rolled = se[:2]  # se's host serves rounds 1-2 only
    got = recover([VaultView("de", de), VaultView("se", rolled), VaultView("ie", ie)])
    assert got.state["round"] == 5  # the next round is 6: no key of any vault is written twice
    assert got.state["embassies"]["se"]["round"] == 2  # se links to what it shows; the hidden 3-5 become a fork
    assert any("behind round 5" in n for n in got.notes["se"])


def test_junk_in_a_vault_is_named_never_raises_and_never_counts() -> None:
    de = chain("de", [1, 2, 3])
    other_key = chain("se", [1, 2, 3, 4, 5, 6, 7, 8, 9], key=Ed25519PrivateKey.generate())
    other_embassy = chain("de", [9])  # a genuine manifest of de, placed in se's vault
    other_stack = chain("se", [9], stack="production")
    junk = [*chain("se", [1, 2]), ("manifests/0000000003.json", b"[" * 200_000 + b"]" * 200_000),
            ("manifests/0000000004.json", b"\xff\xfe not json"), ("manifests/0000000005.json", b"{}"),
            ("manifests/0000000006.json", b"x" * (roundstate.MAX_MANIFEST_BYTES + 1)),
            (manifest.object_key(7), other_key[6][1]), (manifest.object_key(8), other_stack[0][1]),
            (manifest.object_key(9), other_embassy[0][1]), ("manifests/9999999999.json", other_key[8][1])]
    got = recover([VaultView("de", de), VaultView("se", junk)])
    assert got.state["round"] == 3 and got.unknown == []
    assert got.state["embassies"]["se"]["round"] == 2 and got.state["embassies"]["se"]["sha256"] == sha(junk, 2)
    named = " ".join(got.notes["se"])
    assert all(k in named for k in ("0000000003", "0000000004", "0000000005", "0000000006"))


def test_a_vault_holding_only_junk_gets_no_manifest_and_alone_refuses() -> None:
    junk = [(manifest.object_key(1), chain("se", [1], key=Ed25519PrivateKey.generate())[0][1])]
    got = recover([VaultView("de", chain("de", [1, 2])), VaultView("se", junk)])
    assert got.unknown == ["se"] and "se" not in got.state["embassies"]
    with pytest.raises(RecoveryRefused):
        recover([VaultView("se", junk)])


def test_a_damaged_middle_manifest_does_not_hide_the_later_rounds() -> None:
    de = chain("de", [1, 2, 3, 4, 5, 6])
    damaged = list(de)
    damaged[2] = (damaged[2][0], damaged[2][1].replace(b'"round":3', b'"round":33'))
    got = recover([VaultView("de", damaged)])
    assert got.state["round"] == 6 and got.state["embassies"]["de"]["sha256"] == sha(de, 6)
    assert any("0000000003" in n for n in got.notes["de"])


def test_new_chain_only_when_asked_and_past_every_round_seen() -> None:
    got = recover([VaultView("de", chain("de", [1, 2, 3])), VaultView("se", None, "timeout")], new_chain=True)
    assert got.new_chain and got.unknown == [] and got.state["round"] == 3
    assert "se" not in got.state["embassies"]  # its first manifest of the new chain links to nothing, at round 4
    got = recover([VaultView("de", None, "timeout")], new_chain=True)
    assert got.new_chain and got.state["round"] == 0


def test_a_readable_state_only_recovers_the_embassies_it_lacks() -> None:
    state = {"round": 9, "embassies": {"de": {"sha256": "a" * 64, "round": 9, "key": manifest.object_key(9), "files": {}}}}
    assert roundstate.missing_heads(state, ["de", "se"]) == ["se"]
    se = chain("se", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])  # se saw rounds home's (restored) state never did
    got = roundstate.recover(state, "", [VaultView("se", se)], PUBLIC, stack=STACK)
    assert got.state["round"] == 11 and got.state["embassies"]["de"]["sha256"] == "a" * 64
    assert got.state["embassies"]["se"]["sha256"] == sha(se, 11)
    # and when se does not answer, the state's embassies go on without it
    got = roundstate.recover(state, "", [VaultView("se", None, "timeout")], PUBLIC, stack=STACK)
    assert got.state["round"] == 9 and got.unknown == ["se"]


# --------------------------------------------------------------------------- the round's start on home


def _cfg(tmp_path: Path) -> dict[str, Any]:
    return {"state_dir": str(tmp_path), "stack": STACK, "ca_file": "ca.crt",
            "embassies": [{"name": "de", "vault": {}}, {"name": "se", "vault": {}}]}


def test_an_unreadable_state_is_set_aside_and_recovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from embassy.replication import round as home_round

    de, se = chain("de", [1, 2, 3]), chain("se", [1, 2, 3])
    monkeypatch.setattr(home_round, "read_vaults",
                        lambda cfg, names: [VaultView(n, {"de": de, "se": se}[n]) for n in names])
    (tmp_path / "state.json").write_text('{"round": 1, "embass')
    got = home_round.start_state(_cfg(tmp_path), KEY)
    assert got.state["round"] == 3 and got.recovered and got.state["embassies"]["se"]["sha256"] == sha(se, 3)
    assert not (tmp_path / "state.json").exists()
    aside = list(tmp_path.glob("state.json.unreadable-*"))
    assert len(aside) == 1 and aside[0].read_text() == '{"round": 1, "embass'


def test_a_readable_state_reads_no_vault(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from embassy.replication import round as home_round

    def no_read(cfg: Any, names: Any) -> Any:
        raise AssertionError("a readable state holding every head reads no vault")

    monkeypatch.setattr(home_round, "read_vaults", no_read)
    head = {"sha256": "a" * 64, "round": 5, "key": manifest.object_key(5), "files": {}}
    (tmp_path / "state.json").write_text(json.dumps({"round": 5, "embassies": {"de": head, "se": head}}))
    got = home_round.start_state(_cfg(tmp_path), KEY)
    assert got.state["round"] == 5 and not got.recovered


def test_a_refused_round_ships_nothing_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from embassy.replication import round as home_round

    monkeypatch.setattr(home_round, "read_vaults", lambda cfg, names: [VaultView(n, None, "timeout") for n in names])
    monkeypatch.setattr(home_round, "postgres_part", lambda *a: pytest.fail("nothing is shipped by a refused round"))
    key_file = tmp_path / "manifest.key"
    home_round.keygen(key_file, tmp_path / "manifest.pub")
    report = home_round.run_round({**_cfg(tmp_path), "key_file": str(key_file)})
    assert report["round"] is None and "no vault answers" in report["refused"]["reason"]
    assert "--new-chain" in report["refused"]["hint"]
    assert json.loads((tmp_path / "last-round.json").read_text()) == report
    assert not (tmp_path / "state.json").exists()
