"""The stack model: every validation rule, with its key path and a HINT, on real stack files."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from embassy import model

ROOT = Path(__file__).resolve().parents[2]


def rehearsal_values() -> dict[str, Any]:
    return model.read_stack_values(ROOT / "Pulumi.rehearsal.yaml")


def issues_of(values: dict[str, Any]) -> list[model.ConfigIssue]:
    with pytest.raises(model.ConfigInvalid) as exc:
        model._from_values("t", values, source="t")
    return exc.value.issues


def paths(values: dict[str, Any]) -> set[str]:
    return {i.path for i in issues_of(values)}


@pytest.mark.parametrize("stack", ["rehearsal", "production"])
def test_shipped_stacks_are_valid(stack: str) -> None:
    dep = model.load_stack(stack, ROOT)
    assert dep.state.code == "EE"
    assert len({e.nation for e in dep.embassies}) == len(dep.embassies) >= 3


def test_rehearsal_has_the_documented_shape() -> None:
    dep = model.load_stack("rehearsal", ROOT)
    assert [e.mode for e in dep.embassies].count(model.Mode.COLD) == 1
    assert {(r.name, r.kind) for r in dep.registers} == {
        ("population", "postgres"), ("land-register", "postgres"), ("court-files", "files")}
    assert next(r.name for r in dep.registers_in_restore_order()) == "population"


def test_production_reaches_outside_europe() -> None:
    dep = model.load_stack("production", ROOT)
    europe = {"DE", "SE", "IE", "FR", "IT", "ES", "CH", "GB"}
    assert any(e.nation not in europe for e in dep.embassies)


def test_region_outside_the_nation_is_rejected_with_path_and_hint() -> None:
    values = rehearsal_values()
    values["embassies"][1]["region"] = "eu-west-1"  # Ireland, not Sweden
    (issue,) = issues_of(values)
    assert issue.path == "data-embassy:embassies[1].region"
    assert "Ireland" in issue.message and "SE" in issue.message
    assert "eu-north-1" in issue.hint


def test_unknown_nation() -> None:
    values = rehearsal_values()
    values["embassies"][0]["nation"] = "XX"
    assert paths(values) == {"data-embassy:embassies[0].nation"}


def test_unknown_region() -> None:
    values = rehearsal_values()
    values["embassies"][0]["region"] = "mars-north-1"
    (issue,) = issues_of(values)
    assert "not a known AWS region" in issue.message


def test_duplicate_embassy_and_register_names() -> None:
    values = rehearsal_values()
    values["embassies"][2]["name"] = "de"
    values["registers"][1]["name"] = "population"
    assert paths(values) == {"data-embassy:embassies[2].name", "data-embassy:registers[1].name"}


@pytest.mark.parametrize("days", [0, -1])
def test_retention_below_one_day(days: int) -> None:
    values = rehearsal_values()
    values["embassies"][0]["retention_days"] = days
    assert paths(values) == {"data-embassy:embassies[0].retention_days"}


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0", "10.0.0.300/24", "10.0.0.1/24", "not-a-cidr"])
def test_open_or_invalid_admin_cidr(cidr: str) -> None:
    values = rehearsal_values()
    values["embassies"][0]["admin_cidrs"] = [cidr]
    (issue,) = issues_of(values)
    assert issue.path == "data-embassy:embassies[0].admin_cidrs"
    assert "0.0.0.0/0" in issue.hint


def test_unknown_register_kind() -> None:
    values = rehearsal_values()
    values["registers"][2]["kind"] = "tape"
    assert paths(values) == {"data-embassy:registers[2].kind"}


def test_register_with_no_embassy_able_to_hold_it() -> None:
    values = rehearsal_values()
    values["registers"][0]["embassies"] = ["ie"]  # cold, cannot meet rpo 5 s
    (issue,) = issues_of(values)
    assert issue.path == "data-embassy:registers[0]"
    assert "cold" in issue.message


def test_register_held_by_an_unknown_embassy() -> None:
    values = rehearsal_values()
    values["registers"][2]["embassies"] = ["lu"]
    assert paths(values) == {"data-embassy:registers[2].embassies[0]", "data-embassy:registers[2]"}


def test_priority_clash() -> None:
    values = rehearsal_values()
    values["registers"][2]["priority"] = 1
    (issue,) = issues_of(values)
    assert issue.path == "data-embassy:registers[2].priority"
    assert "population" in issue.message


def test_embassy_in_the_home_states_own_nation() -> None:
    values = rehearsal_values()
    values["state"]["code"] = "DE"
    (issue,) = issues_of(values)
    assert issue.path == "data-embassy:embassies[0].nation"


def test_unknown_key_is_named() -> None:
    values = rehearsal_values()
    values["embassies"][0]["retention"] = 30
    assert paths(values) == {"data-embassy:embassies[0].retention"}


def test_every_catalog_region_maps_back_to_its_nation() -> None:
    for code, nation in model.nations().items():
        for region in nation.all_regions:
            found = model.region_nation(region)
            assert found is not None and found.code == code


def test_sovereign_cloud_is_its_own_partition() -> None:
    de = model.nations()["DE"]
    assert de.partition_of("eusc-de-east-1") == "aws-eusc"
    assert de.partition_of("eu-central-1") == "aws"


REGIONS = sorted({r for n in model.nations().values() for r in n.all_regions})


@settings(max_examples=60, deadline=None)
@given(nation=st.sampled_from(sorted(c for c in model.nations() if c != "EE")), region=st.sampled_from(REGIONS))
def test_placement_is_law_for_any_pair(nation: str, region: str) -> None:
    values = copy.deepcopy(rehearsal_values())
    values["embassies"][0].update(nation=nation, region=region)
    located = model.region_nation(region)
    try:
        model._from_values("t", values, source="t")
        accepted = True
    except model.ConfigInvalid as exc:
        accepted = False
        # A nation with no AWS region is itself the error (no region could fix it); else the region is.
        where = "region" if model.nations()[nation].all_regions else "nation"
        assert {i.path for i in exc.issues} == {f"data-embassy:embassies[0].{where}"}
    assert accepted == (located is not None and located.code == nation)


def test_cli_validate_exit_codes(tmp_path: Path) -> None:
    values = rehearsal_values()
    values["embassies"][0]["region"] = "us-east-1"
    doc = {"config": {f"data-embassy:{k}": v for k, v in values.items()}}
    (tmp_path / "Pulumi.yaml").write_text("name: data-embassy\nruntime: python\n")
    (tmp_path / "Pulumi.broken.yaml").write_text(yaml.safe_dump(doc))
    exe = [sys.executable, "-m", "embassy.cli"]
    bad = subprocess.run([*exe, "validate", "--stack", "broken"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2
    assert "data-embassy:embassies[0].region" in bad.stderr and "HINT:" in bad.stderr
    good = subprocess.run([*exe, "validate", "--stack", "rehearsal"], cwd=ROOT, capture_output=True, text=True)
    assert good.returncode == 0, good.stderr


@pytest.mark.parametrize("key", ["key_admins", "break_glass"])
def test_missing_home_principals(key: str) -> None:
    values = rehearsal_values()
    values["principals"][key] = []
    (issue,) = issues_of(values)
    assert issue.path == f"data-embassy:principals.{key}"


def test_principal_must_be_an_iam_arn() -> None:
    values = rehearsal_values()
    values["principals"]["key_admins"] = ["admin@example.org"]
    (issue,) = issues_of(values)
    assert issue.path == "data-embassy:principals.key_admins"
    assert "arn:aws:iam::" in issue.hint
