"""The lab modules' groups for the two-lab run (`make test`: pytest-xdist, one group per worker and lab).

The adversary is the suite's own author: a module that runs on an unhardened lab where the README says the
drill runs on hardened hosts, a module left out of every group (collection must stop, not run it nowhere), or
the drill moved before a module that needs home alive."""

from __future__ import annotations

import pytest

from tests.lab.conftest import LAB_DIR, LAB_GROUPS, lab_group_of, pytest_collection_modifyitems, pytest_xdist_make_scheduler


def lab_modules() -> list[str]:
    return sorted(p.stem for p in LAB_DIR.glob("test_*.py"))


def test_every_lab_module_is_in_exactly_one_group() -> None:
    placed = [m for modules in LAB_GROUPS.values() for m in modules]
    assert sorted(placed) == lab_modules(), "every tests/lab module in one group, and no group names a missing one"
    assert len(placed) == len(set(placed))


def test_replication_and_the_drill_run_after_the_hardening_on_its_lab() -> None:
    hardened = LAB_GROUPS[lab_group_of("test_harden") or ""]
    assert {"test_hostile_vault", "test_replication", "test_zz_drill"} <= set(hardened)
    # a worker runs its group's modules in file order: a deploy, then the roles on deployed hosts, the drill (which
    # destroys home) last
    assert sorted(hardened)[:2] == ["test_deploy", "test_harden"] and sorted(hardened)[-1] == "test_zz_drill"


def test_a_module_in_no_group_stops_collection() -> None:
    class Item:
        path = LAB_DIR / "test_new_thing.py"

    with pytest.raises(pytest.UsageError, match=r"test_new_thing\.py is in no lab group"):
        pytest_collection_modifyitems(None, [Item()])  # type: ignore[arg-type, list-item]


def test_the_scheduler_keeps_each_group_whole(pytestconfig: pytest.Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """xdist's unit of work is the group: every test of a group goes to the same worker (and lab)."""
    monkeypatch.setattr(pytestconfig.option, "tx", ["2*popen"])  # as `-n 2` sets it
    scheduler = pytest_xdist_make_scheduler(pytestconfig, None)
    scopes = {module: scheduler._split_scope(f"tests/lab/{module}.py::test_x[a::b]") for module in lab_modules()}
    assert scopes == {module: lab_group_of(module) for module in lab_modules()}
    assert set(scopes.values()) == set(LAB_GROUPS)
