"""The lab's plan and state without root: names from the lab id, the state file, the pyinfra inventory."""

from __future__ import annotations

import ipaddress
import runpy
from pathlib import Path

import pytest

from embassy.errors import UserError
from embassy.lab import lifecycle, mirror
from embassy.lab.state import Phase, in_controller, lab_id_from_env, lab_state, load_state
from embassy.model import DEBIAN_RELEASES, load_stack
from embassy.replication.pgmajor import pg_major
from tests.lab.conftest import ROOT, STACK


@pytest.fixture
def lab_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EMBASSY_LAB_ROOT", str(tmp_path))
    return tmp_path


def test_every_name_and_address_derives_from_the_lab_id(lab_root: Path) -> None:
    dep = load_stack(STACK, ROOT)
    a, b = lifecycle.plan(dep, 7), lifecycle.plan(dep, 77)
    for lab in (a, b):
        net = ipaddress.IPv4Network(lab.range)
        addresses = [lab.controller_address] + [h.address for h in lab.hosts] + [v.address for v in lab.vaults]
        assert len(set(addresses)) == len(addresses)
        assert all(ipaddress.IPv4Address(x) in net for x in addresses)
        prefix = f"emb{lab.lab_id}-"
        namespaces = [lab.switch_netns, lab.controller_netns, *(h.netns for h in lab.hosts), *(v.netns for v in lab.vaults)]
        assert all(ns.startswith(prefix) for ns in namespaces) and len(set(namespaces)) == len(namespaces)
        assert Path(lab.dir) == lab_root / f"lab-{lab.lab_id}"
        secrets = (lab.ssh_key, lab.ca_file, *(v.agent_credentials for v in lab.vaults))
        assert all(Path(p).is_relative_to(lab.dir) for p in secrets)
    assert a.range == "10.87.7.0/24" and b.range == "10.87.77.0/24"
    # No name of lab 7 is a prefix-match of lab 77's (teardown selects by prefix).
    assert not any(h.netns.startswith("emb7-") for h in b.hosts)
    assert {h.machine for h in a.hosts}.isdisjoint({h.machine for h in b.hosts})
    assert [(v.embassy, v.endpoint, v.bucket, v.retention_days) for v in a.vaults] == \
        [(e.name, f"https://vault-{e.name}.lab.internal:8443", f"rehearsal-{e.name}-vault", e.retention_days)
         for e in dep.embassies]
    assert [(h.name, h.role.value, h.embassy, h.mode) for h in a.hosts] == \
        [("home", "home", None, None)] + [(f"enclave-{e.name}", "embassy", e.name, e.mode.value) for e in dep.embassies]


def test_hosts_file_names_every_host_and_vault(lab_root: Path) -> None:
    lab = lifecycle.plan(load_stack(STACK, ROOT), 7)
    lines = {line.split()[1]: line.split()[0] for line in lifecycle.hosts_file(lab).splitlines()}
    assert lines["localhost"] == "127.0.0.1"
    assert all(lines[h.fqdn] == h.address for h in lab.hosts)
    assert all(lines[v.dns_name] == v.address for v in lab.vaults)


def test_in_controller_prefixes_the_controller_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    assert in_controller(["ssh", "home"], 3) == ["ip", "netns", "exec", "emb3-ctl", "ssh", "home"]
    monkeypatch.setenv("EMBASSY_LAB_ID", "2")
    assert in_controller(["true"])[:4] == ["ip", "netns", "exec", "emb2-ctl"]


@pytest.mark.parametrize("value", ["x", "-1", "100"])
def test_bad_lab_ids_are_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("EMBASSY_LAB_ID", value)
    with pytest.raises(UserError) as err:
        lab_id_from_env()
    assert "EMBASSY_LAB_ID" in err.value.message and "0 and 99" in err.value.hint


def test_state_round_trip_and_lab_state_refusals(lab_root: Path) -> None:
    with pytest.raises(UserError, match="not up"):
        lab_state(STACK, 7)
    lab = lifecycle.plan(load_stack(STACK, ROOT), 7)
    lab.save()
    assert load_state(7) == lab
    with pytest.raises(UserError, match="half-built"):
        lab_state(STACK, 7)
    lab.phase = Phase.UP
    lab.save()
    assert lab_state(STACK, 7) == lab
    with pytest.raises(UserError, match="runs stack 'rehearsal'"):
        lab_state("production", 7)


def test_pyinfra_inventory_groups_hosts_from_the_state(lab_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lab = lifecycle.plan(load_stack(STACK, ROOT), 7)
    lab.phase = Phase.UP
    lab.save()
    monkeypatch.setenv("EMBASSY_LAB_ID", "7")
    groups = runpy.run_path(str(ROOT / "inventories" / "lab.py"))  # what pyinfra does with an inventory file
    assert [n for n, _ in groups["home"]] == ["home"]
    assert [n for n, _ in groups["embassies"]] == ["enclave-de", "enclave-se", "enclave-ie"]
    assert [n for n, _ in groups["warm"]] == ["enclave-de", "enclave-se"]
    assert [n for n, _ in groups["cold"]] == ["enclave-ie"]
    data = dict(groups["embassies"])["enclave-de"]
    assert data["ssh_hostname"] == "10.87.7.20" and data["ssh_user"] == "admin"
    assert data["ssh_key"] == lab.ssh_key and data["ssh_known_hosts_file"] == lab.ssh_known_hosts
    assert (data["role"], data["embassy"], data["mode"]) == ("embassy", "de", "warm")
    assert data["vault_endpoint"] == "https://vault-de.lab.internal:8443"
    assert "secret" not in repr(groups["embassies"])  # paths to credentials only, never their values
    monkeypatch.setenv("EMBASSY_STACK", "production")
    with pytest.raises(UserError):
        runpy.run_path(str(ROOT / "inventories" / "lab.py"))


def test_mirror_list_holds_what_the_deploys_install() -> None:
    for release, suite in DEBIAN_RELEASES.items():  # each release's own PostgreSQL (15 on bookworm, 17 on trixie)
        names = mirror.packages(suite)
        assert len(names) == len(set(names))
        assert {f"postgresql-{pg_major(release)}", "pgbackrest", "restic", "lynis", "nftables", "auditd"} <= set(names)
