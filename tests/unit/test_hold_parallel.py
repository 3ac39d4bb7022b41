"""`advance_all` moves the warm embassies' holds at once (each waits seconds on its own vault and host), only the
warm ones that have a host, and reports them in the stack's order."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from embassy import model
from embassy.replication import hold


def test_warm_holds_move_at_once_and_are_reported_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    dep: Any = SimpleNamespace(embassies=[SimpleNamespace(name="de", mode=model.Mode.WARM),
                                          SimpleNamespace(name="ie", mode=model.Mode.COLD),
                                          SimpleNamespace(name="se", mode=model.Mode.WARM),
                                          SimpleNamespace(name="fr", mode=model.Mode.WARM)])
    target: Any = SimpleNamespace(embassy_hosts=lambda name: [] if name == "fr" else [f"enclave-{name}"])
    both = threading.Barrier(2, timeout=10)  # broken (an error) unless de's and se's moves run at the same time

    def advance(_dep: Any, _target: Any, embassy: str) -> hold.Moved:
        both.wait()
        return hold.Moved(embassy, round=7, lsn="0/1000000", moved=embassy == "de", reason="" if embassy == "de" else "x")

    monkeypatch.setattr(hold, "advance", advance)
    said: list[str] = []
    done = hold.advance_all(dep, target, said.append)
    assert [m.embassy for m in done] == ["de", "se"]  # the cold embassy and the warm one without a host: no move
    assert said == ["de: standby held at 0/1000000 (round 7)", "se: standby hold unchanged: x"]


def test_a_move_that_raises_is_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    dep: Any = SimpleNamespace(embassies=[SimpleNamespace(name="de", mode=model.Mode.WARM)])
    target: Any = SimpleNamespace(embassy_hosts=lambda name: [f"enclave-{name}"])

    def advance(_dep: Any, _target: Any, embassy: str) -> hold.Moved:
        raise TimeoutError(embassy)

    monkeypatch.setattr(hold, "advance", advance)
    with pytest.raises(TimeoutError):  # as before: the caller (the drill) decides what an unmoved hold means
        hold.advance_all(dep, target)
