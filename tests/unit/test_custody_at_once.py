"""Issuing a kit reads, seals and stores the embassies' bundles at once (each vault and home's SSH answer on their
own: seconds each), and still decides in the stack's order: the first vault that failed is the one named, as when
they were asked one after another; a header that is not home's is still named and ignored."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from embassy import model
from embassy.custody import kit
from embassy.errors import VaultRefusedWrite, VaultUnreachable
from tests.unit.custody_fixtures import MemoryVaults, controller, home_sign, issue, lab_target

STACK = "rehearsal"


@pytest.fixture
def dep() -> model.Deployment:
    return model.load_stack(STACK)


class AtOnce(MemoryVaults):
    """Vaults whose listings and writes each wait until every embassy's is under way (a barrier: broken, an error,
    when they come one after another); `refuse` names embassies whose write fails."""

    def __init__(self, embassies: int, refuse: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.listing = threading.Barrier(embassies, timeout=10)
        self.writing = threading.Barrier(embassies, timeout=10)
        self.refuse = refuse

    def envelopes(self, embassy: str, stack: str) -> list[tuple[str, kit.Stored]]:
        self.listing.wait()
        return super().envelopes(embassy, stack)

    def put(self, embassy: str, key: str, envelope: dict[str, Any]) -> dict[str, Any]:
        self.writing.wait()
        if embassy in self.refuse:
            raise VaultRefusedWrite(f"vault:{embassy}/{key}: refused")
        return super().put(embassy, key, envelope)


def test_listing_sealing_and_storing_run_at_once(dep: model.Deployment, tmp_path: Path) -> None:
    lab, folder, _ = controller(tmp_path, dep)
    n = len(dep.embassies)
    store = AtOnce(n)
    signing = threading.Barrier(n, timeout=10)

    def sign(data: bytes) -> bytes:  # home signs each embassy's header over its own SSH call
        signing.wait()
        return home_sign(data)

    got = kit.issue(dep, lab_target(dep, lab), store, folder, tmp_path / "kit", officials=3, threshold=2, rotate=False,
                    signer=sign)
    assert [s["embassy"] for s in got.stored] == [e.name for e in dep.embassies]  # reported in the stack's order
    assert all(s["lock_mode"] == "COMPLIANCE" for s in got.stored)
    assert sorted(store.objects) == sorted(e.name for e in dep.embassies)


def test_the_first_refused_write_in_the_stacks_order_is_named(dep: model.Deployment, tmp_path: Path) -> None:
    lab, folder, _ = controller(tmp_path, dep)
    names = [e.name for e in dep.embassies]
    store = AtOnce(len(names), refuse=(names[2], names[1]))
    with pytest.raises(VaultRefusedWrite) as err:
        issue(dep, lab, store, folder, tmp_path / "kit")
    assert err.value.message.startswith(f"vault:{names[1]}/"), err.value.message


def test_an_unreachable_vault_stops_the_issue_before_anything_is_sealed(dep: model.Deployment, tmp_path: Path) -> None:
    lab, folder, _ = controller(tmp_path, dep)
    names = [e.name for e in dep.embassies]

    class Unreachable(MemoryVaults):
        def envelopes(self, embassy: str, stack: str) -> list[tuple[str, kit.Stored]]:
            if embassy == names[-1]:
                raise VaultUnreachable(f"vault:{embassy}: no answer")
            return super().envelopes(embassy, stack)

    store = Unreachable()
    with pytest.raises(VaultUnreachable, match=f"vault:{names[-1]}: no answer"):
        issue(dep, lab, store, folder, tmp_path / "kit")
    assert store.objects == {} and not (tmp_path / "kit").exists()  # no sheet, no bundle
