"""`harden`, `deploy` and `custody rotate` with `--target site --inventory FILE`, without hosts: what the roles and
pyinfra are given, how they reach the hosts, and the option checks (Typer's CliRunner), before anything is reached.

The adversaries: an inventory (or whoever edits it) that points a host at another address or slips in a jump host
the operator did not name; a change that quietly reaches a site's hosts through the lab's ssh_config, the user's
~/.ssh/config or the lab's inventory instead of the site inventory; a hardening that locks the operator out."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

import paramiko
import pytest
import yaml
from typer.testing import CliRunner

from embassy import deploy, harden, model, site_pyinfra, sites, targets
from embassy.cli import app
from embassy.errors import InventoryInvalid
from embassy.lab import lifecycle, site_inventory
from embassy.lab.state import LAB_ID_ENV, LAB_ROOT_ENV, LabState
from embassy.replication import secrets

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "sites" / "federation.yaml"
LAB_ID = 86
# Ansible's own connection variables: the rest is what the roles receive, which the lab and its site must agree on.
CONNECTION = {"ansible_host", "ansible_port", "ansible_user", "ansible_ssh_private_key_file", "ansible_ssh_common_args"}
runner = CliRunner()


@pytest.fixture
def rehearsal() -> model.Deployment:
    return model.load_stack("rehearsal", ROOT)


@pytest.fixture
def production() -> model.Deployment:
    return model.load_stack("production", ROOT)


@pytest.fixture
def lab(rehearsal: model.Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LabState:
    """A lab as `embassy lab up` plans it (no host behind it), its credentials files and its own site inventory."""
    monkeypatch.setenv(LAB_ROOT_ENV, str(tmp_path / "labs"))
    monkeypatch.setenv(LAB_ID_ENV, str(LAB_ID))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    state = lifecycle.plan(rehearsal, LAB_ID)
    Path(state.dir).mkdir(parents=True)
    for v in state.vaults:
        for path in (v.reader_credentials, v.agent_credentials):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(json.dumps({"access_key_id": f"AK-{v.embassy}", "secret_access_key": "s3cr3t"}))
            Path(path).chmod(0o600)
    site_inventory.write(state)
    return state


def lab_site(lab: LabState, dep: model.Deployment) -> targets.SiteTarget:
    path = site_inventory.inventory_path(lab)
    return targets.SiteTarget(dep, sites.load(path, dep), path)


def write(tmp_path: Path, doc: dict[str, Any], name: str = "inventory.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def example(**network: Any) -> dict[str, Any]:
    """The documented example, with `network` as given (none if not given)."""
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    doc.pop("network", None)
    if network:
        doc["network"] = network
    return doc


def roles_vars(play: harden.Play) -> dict[str, dict[str, Any]]:
    """Per host, every variable the roles see (the inventory's `all` vars under its host vars), connection aside."""
    top = play.inventory["all"]["vars"]
    found: dict[str, dict[str, Any]] = {}

    def walk(group: dict[str, Any]) -> None:
        for name, own in (group.get("hosts") or {}).items():
            found[name] = {k: v for k, v in {**top, **own}.items() if k not in CONNECTION}
        for child in (group.get("children") or {}).values():
            walk(child)

    walk(play.inventory["all"])
    return found


def host_vars(play: harden.Play, name: str) -> dict[str, Any]:
    def walk(group: dict[str, Any]) -> dict[str, Any] | None:
        if name in (group.get("hosts") or {}):
            found: dict[str, Any] = group["hosts"][name]
            return found
        return next((f for c in (group.get("children") or {}).values() if (f := walk(c)) is not None), None)

    found = walk(play.inventory["all"])
    assert found is not None, name
    return found


# --------------------------------------------------------------------------- harden


def test_harden_through_the_labs_own_inventory_gives_the_roles_what_the_lab_target_does(
        lab: LabState, rehearsal: model.Deployment) -> None:
    """Why the lab's second hardening run may go through --target site and still change nothing."""
    site, lab_target = harden.play_for(lab_site(lab, rehearsal)), harden.play_for(targets.LabTarget(rehearsal, lab))
    assert roles_vars(site) == roles_vars(lab_target)
    assert site.hosts == lab_target.hosts and site.workdir == lab_target.workdir and site.env == lab_target.env


def test_harden_on_a_site_reaches_each_host_as_its_inventory_says_never_through_the_labs_ssh_config(
        lab: LabState, rehearsal: model.Deployment) -> None:
    play = harden.play_for(lab_site(lab, rehearsal))
    assert play.kind == "site"
    for host in lab.hosts:
        own = host_vars(play, host.name)
        args = shlex.split(own["ansible_ssh_common_args"])
        assert own["ansible_host"] == host.address and own["ansible_port"] == lab.ssh_port
        assert own["ansible_user"] == lab.ssh_user
        assert args[:2] == ["-F", "none"], args  # no ssh_config at all: not the lab's, not ~/.ssh/config
        assert lab.ssh_config not in own["ansible_ssh_common_args"]
        assert f"UserKnownHostsFile={lab.ssh_known_hosts}" in args and "StrictHostKeyChecking=yes" in args
        assert args[args.index("-i"):args.index("-i") + 2] == ["-i", lab.ssh_key]
        assert not any("Proxy" in a for a in args), args  # the lab's inventory names no jump host
    assert "ansible_ssh_private_key_file" not in play.inventory["all"]["vars"]


def test_a_jump_host_is_used_only_where_the_inventory_names_it_and_its_key_is_pinned_too(
        production: model.Deployment, tmp_path: Path) -> None:
    path = write(tmp_path, example(ssh_sources=["10.60.0.5"]))
    target = targets.SiteTarget(production, sites.load(path, production), path)
    play = harden.play_for(target)
    behind = shlex.split(host_vars(play, "enclave-de-sovereign")["ansible_ssh_common_args"])
    direct = shlex.split(host_vars(play, "enclave-se")["ansible_ssh_common_args"])
    assert not any("Proxy" in a for a in direct), direct
    proxy = [a.removeprefix("ProxyCommand=") for a in behind if a.startswith("ProxyCommand=")]
    assert len(proxy) == 1
    jump = shlex.split(proxy[0])
    # Exactly the inventory's bastion, its user and port, with no ssh_config and its key checked against known_hosts.
    assert jump[-2:] == ["--", "bastion.embassy-ee.dc.example.de"] and jump[:3] == ["ssh", "-F", "none"]
    assert jump[jump.index("-p"):jump.index("-p") + 4] == ["-p", "22", "-l", "ee-operator"]
    assert "StrictHostKeyChecking=yes" in jump and f"UserKnownHostsFile={tmp_path / 'known_hosts/de-sovereign'}" in jump
    assert host_vars(play, "enclave-se")["embassy_ssh_port"] == 2222  # sshd's port is each host's own
    assert play.inventory["all"]["vars"]["embassy_ssh_sources"] == ["10.60.0.5"]


def test_harden_refuses_a_site_that_names_no_ssh_source_before_anything_runs(
        production: model.Deployment, tmp_path: Path) -> None:
    """The firewall admits SSH only from the inventory's sources: with none, the operator would be locked out."""
    path = write(tmp_path, example())
    with pytest.raises(InventoryInvalid) as exc:
        harden.play_for(targets.SiteTarget(production, sites.load(path, production), path))
    assert exc.value.code == 2 and "ssh_sources" in exc.value.hint
    code, out = run("harden", "--stack", "production", "--target", "site", "--inventory", str(path))
    assert code == 2 and "[140]" in out and "no SSH source" in out and "HINT:" in out, out
    assert not (tmp_path / "harden").exists()


@pytest.mark.parametrize(("network", "says"), [
    ({"ssh_sources": ["0.0.0.0/0"]}, "every address"), ({"ssh_sources": ["bastion.example"]}, "not an address"),
    ({"controller_address": "controller"}, "not an IP address"), ({"mirror_url": "ftp://m/debian"}, "apt mirror"),
    ({"syslog_target": "-oProxyCommand=x:514"}, "syslog_target"), ({"controller": "10.0.0.1"}, "controller")])
def test_a_network_the_roles_cannot_take_is_refused(network: dict[str, Any], says: str, production: model.Deployment,
                                                    tmp_path: Path) -> None:
    with pytest.raises(InventoryInvalid) as exc:
        sites.load(write(tmp_path, example(**network)), production)
    assert says in exc.value.message, exc.value.message


# --------------------------------------------------------------------------- deploy


def test_deploy_runs_pyinfra_with_the_site_inventory_never_the_labs(lab: LabState, rehearsal: model.Deployment,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBASSY_LAB_ID", "5")  # whatever lab the environment names, the site's clients ignore it
    argv, env = deploy.command(lab_site(lab, rehearsal))
    assert argv[:4] == lab.in_controller([])[:4]  # the inventory's netns: the lab's controller namespace
    assert argv[5:8] == ["-y", "--json", "inventories/site.py"], argv
    assert env[targets.SITE_INVENTORY_ENV] == str(site_inventory.inventory_path(lab).resolve())
    assert env["EMBASSY_STACK"] == "rehearsal"


def test_pyinfra_reaches_the_labs_hosts_as_inventories_lab_does_and_reads_no_ssh_config(
        lab: LabState, rehearsal: model.Deployment) -> None:
    """The host data the deploys read equals what inventories/lab.py gives (the second deploy changes nothing)."""
    groups = site_pyinfra.groups(lab_site(lab, rehearsal))
    assert [n for n, _ in groups["home"]] == ["home"]
    assert {n for n, _ in groups["warm"]} | {n for n, _ in groups["cold"]} == {n for n, _ in groups["embassies"]}
    for name, data in groups["home"] + groups["embassies"]:
        host = lab.host(name)
        assert (data["ssh_hostname"], data["ssh_port"], data["ssh_user"], data["ssh_key"]) == \
            (host.address, lab.ssh_port, lab.ssh_user, lab.ssh_key)
        assert data["ssh_known_hosts_file"] == lab.ssh_known_hosts and data["ssh_strict_host_key_checking"] == "yes"
        # Never None (pyinfra then reads ~/.ssh/config), never the lab's: an empty config, as no host has a jump.
        assert data["ssh_config_file"] == site_pyinfra.NO_SSH_CONFIG
        assert (data["role"], data["embassy"], data["mode"], data["stack"]) == \
            (host.role.value, host.embassy, host.mode, lab.stack)
        assert data["lab_dir"] == lab.dir and secrets.secrets_dir(_Data(data)) == Path(lab.dir) / "secrets"
        for v in lab.vaults:  # each vault with the lab's own credentials, for either identity
            entry = next(e for e in data["vaults"] if e["embassy"] == v.embassy)
            lab_entry = {"embassy": v.embassy, "endpoint": v.endpoint, "dns_name": v.dns_name, "bucket": v.bucket,
                         "ca_file": v.ca_file, "agent_credentials": v.agent_credentials,
                         "reader_credentials": v.reader_credentials}
            for identity in ("agent", "reader"):
                assert secrets.vault_from_data(entry, identity) == secrets.vault_from_data(lab_entry, identity)


class _Data:
    def __init__(self, data: dict[str, Any]) -> None:
        self.__dict__.update(data)


def test_pyinfra_goes_through_a_jump_host_only_for_the_host_behind_it(production: model.Deployment, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("EMBASSY_DE_AGENT_ACCESS_KEY_ID", "AK")
    monkeypatch.setenv("EMBASSY_DE_AGENT_SECRET_ACCESS_KEY", "from-env")
    doc = example()
    doc["embassies"]["se"]["vault"]["addressing"] = "path"
    path = write(tmp_path, doc)
    target = targets.SiteTarget(production, sites.load(path, production), path)
    groups = site_pyinfra.groups(target)
    data = dict(groups["embassies"])
    config_file = data["enclave-de-sovereign"]["ssh_config_file"]
    assert config_file == data["enclave-se"]["ssh_config_file"] and Path(config_file).parent == target.workdir
    assert Path(config_file).stat().st_mode & 0o077 == 0
    config = paramiko.SSHConfig.from_path(config_file)
    assert "proxycommand" not in config.lookup(data["enclave-se"]["ssh_hostname"])
    assert "proxycommand" not in config.lookup("10.60.4.22")  # a neighbour's address: no jump of the inventory's
    proxy = shlex.split(config.lookup("10.60.4.21")["proxycommand"])
    assert proxy[-2:] == ["--", "bastion.embassy-ee.dc.example.de"] and "StrictHostKeyChecking=yes" in proxy
    assert proxy[proxy.index("-W") + 1] == "10.60.4.21:22"  # paramiko expands %h:%p to the host's own
    # Credentials from the environment prefix the inventory names, never written into the host data.
    entry = next(e for e in data["enclave-de-sovereign"]["vaults"] if e["embassy"] == "de-sovereign")
    assert secrets.vault_from_data(entry, "agent").secret_key == "from-env" and "from-env" not in json.dumps(groups)
    assert "lab_dir" not in data["enclave-se"] and "manifest_public_key_file" not in data["enclave-se"]


def test_deploy_refuses_what_the_agents_cannot_use_before_pyinfra_starts(production: model.Deployment, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pyinfra was started")

    monkeypatch.setattr(deploy, "_pyinfra", never)
    path = write(tmp_path, example())  # enclave-se's vault is addressed virtual-host style
    code, out = run("deploy", "--stack", "production", "--target", "site", "--inventory", str(path))
    assert code == 2 and "path-style" in out and "HINT:" in out, out
    doc = example()
    doc["embassies"]["se"]["vault"]["addressing"] = "path"
    doc["embassies"]["se"]["hosts"][0]["netns"] = "elsewhere"  # one client cannot reach hosts in two places
    code, out = run("deploy", "--stack", "production", "--target", "site", "--inventory", str(write(tmp_path, doc)))
    assert code == 2 and "another network namespace" in out and "HINT:" in out, out
    with pytest.raises(InventoryInvalid):  # a target without its file: pyinfra would have nothing to read
        deploy.command(targets.SiteTarget(production, sites.load(path, production)))


# --------------------------------------------------------------------------- the option checks


def run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


@pytest.mark.parametrize("command", ["harden", "deploy", "custody rotate"])
def test_target_options_are_checked_before_anything_is_reached(command: str, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LAB_ROOT_ENV, str(tmp_path / "labs"))  # no lab: a command that got past the checks says so
    monkeypatch.setenv(LAB_ID_ENV, str(LAB_ID))
    kit = ["-n", "3", "-k", "2", "--out", str(tmp_path / "x")] if command.startswith("custody") else []
    base = [*command.split(), "--stack", "production", *kit]
    for extra, says in ((["--target", "site"], "needs --inventory"),
                        (["--target", "lab", "--inventory", str(EXAMPLE)], "for --target site"),
                        (["--target", "aws", "--inventory", str(EXAMPLE)],
                         "--target aws is not built" if kit else "for --target site"),
                        (["--target", "site", "--inventory", str(tmp_path / "missing.yaml")], "cannot read it")):
        code, out = run(*base, *extra)
        assert code == 2 and says in out and "HINT:" in out and "Traceback" not in out, (extra, out)
    assert not (tmp_path / "x").exists() and not (tmp_path / "labs").exists()


def test_custody_rotate_takes_the_site_and_still_refuses_aws(tmp_path: Path) -> None:
    code, out = run("custody", "rotate", "--stack", "production", "-n", "3", "-k", "2", "--out", str(tmp_path / "x"),
                    "--target", "aws")
    assert code == 2 and "custody rotate --target aws is not built" in out and "HINT:" in out, out
    # The site is taken: with the example inventory it gets as far as the site target's own check (the production
    # stack names no manifest key, the only trust anchor outside the lab), never to the lab.
    code, out = run("custody", "rotate", "--stack", "production", "-n", "3", "-k", "2", "--out", str(tmp_path / "x"),
                    "--target", "site", "--inventory", str(EXAMPLE))
    assert code == 2 and "[142]" in out and "target site" in out, out
