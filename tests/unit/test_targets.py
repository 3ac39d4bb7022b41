"""One notion of a target: the lab's and AWS's hosts, how clients and shell commands reach them,
and harden/deploy running through it, without a lab or a cloud account (a lab state file in tmp)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from embassy import deploy, harden, model
from embassy.choosetarget import target_for
from embassy.errors import EXIT_USAGE, EmbassyUnknown, HostUnknown, RootRequired, TargetUnknown, ToolMissing, UserError
from embassy.lab.state import HostState, LabState, Phase
from embassy.targets import AwsTarget, Host, LabTarget, Role, Target, aws_hosts, stack_outputs

ROOT = Path(__file__).resolve().parents[2]
LAB_ID = 97


@pytest.fixture
def dep() -> model.Deployment:
    return model.load_stack("rehearsal", ROOT)


def write_lab(root: Path, dep: model.Deployment, *, stack: str | None = None, phase: Phase = Phase.UP) -> LabState:
    """A lab state as `embassy lab up` writes it, for lab LAB_ID under `root` (no host behind it)."""
    base = f"10.87.{LAB_ID}"

    def host(name: str, role: Role, address: str, emb: model.Embassy | None = None) -> HostState:
        return HostState(name=name, fqdn=f"{name}.lab.internal", role=role, embassy=emb.name if emb else None,
                         mode=emb.mode.value if emb else None, address=address, netns=f"emb{LAB_ID}-{name}",
                         machine=f"emb{LAB_ID}-{name}", root_dir="/r", upper_dir="/u", work_dir="/w", cgroup="c",
                         console_log="/c.log")

    hosts = [host("home", Role.HOME, f"{base}.10")]
    hosts += [host(f"enclave-{e.name}", Role.EMBASSY, f"{base}.{20 + i}", e) for i, e in enumerate(dep.embassies)]
    folder = root / f"lab-{LAB_ID}"
    lab = LabState(lab_id=LAB_ID, stack=stack or dep.stack, phase=phase, range=f"{base}.0/24", dir=str(folder),
                   switch_netns=f"emb{LAB_ID}-sw", controller_netns=f"emb{LAB_ID}-ctl", controller_address=f"{base}.2",
                   mirror_url=f"http://{base}.2:8080/debian", ssh_key=str(folder / "ssh/id_ed25519"),
                   ssh_known_hosts=str(folder / "ssh/known_hosts"), ssh_config=str(folder / "ssh/config"),
                   ca_file=str(folder / "ca.crt"), hosts=hosts)
    lab.save()
    return lab


@pytest.fixture
def lab_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EMBASSY_LAB_ROOT", str(tmp_path))
    monkeypatch.setenv("EMBASSY_LAB_ID", str(LAB_ID))
    return tmp_path


def as_root(monkeypatch: pytest.MonkeyPatch, root: bool = True) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0 if root else 1000)


def outputs(dep: model.Deployment, hosts_per_embassy: int = 1) -> dict[str, Any]:
    """Stack outputs shaped as stacks/__main__.py exports them."""
    return {"stack": dep.stack, "embassies": {
        e.name: {"region": e.region, "mode": e.mode.value,
                 "host_instance_ids": [f"i-0{n}{e.name}" for n in range(hosts_per_embassy)],
                 "host_private_ips": [f"10.64.1.{10 + n}" for n in range(hosts_per_embassy)]}
        for e in dep.embassies}}


def fake_tool(folder: Path, name: str, script: str = "exit 0") -> None:
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


# --------------------------------------------------------------------------- the lab


def test_lab_target_has_the_lab_hosts_and_reaches_them_from_the_controller_namespace(
        lab_env: Path, dep: model.Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    lab = write_lab(lab_env, dep)
    target = target_for("lab", dep)
    assert isinstance(target, LabTarget) and target.kind == "lab" and target.inventory == "inventories/lab.py"
    assert [(h.name, h.role, h.embassy, h.mode, h.group) for h in target.hosts] == [
        ("home", Role.HOME, None, None, "home"),
        ("enclave-de", Role.EMBASSY, "de", model.Mode.WARM, "warm"),
        ("enclave-se", Role.EMBASSY, "se", model.Mode.WARM, "warm"),
        ("enclave-ie", Role.EMBASSY, "ie", model.Mode.COLD, "cold")]
    assert target.host("enclave-ie").address == f"10.87.{LAB_ID}.22" and target.host("de").name == "enclave-de"
    assert [h.name for h in target.embassy_hosts("se")] == ["enclave-se"]
    assert target.workdir == lab_env / f"lab-{LAB_ID}"
    assert target.client_env() == {"EMBASSY_STACK": "rehearsal", "EMBASSY_LAB_ID": str(LAB_ID)}
    as_root(monkeypatch)
    assert target.client_argv(["pyinfra", "-y"]) == ["ip", "netns", "exec", f"emb{LAB_ID}-ctl", "pyinfra", "-y"]
    assert target.host_argv("enclave-de", "id -u") == lab.ssh_argv("enclave-de", "id -u") == [
        "ip", "netns", "exec", f"emb{LAB_ID}-ctl", "ssh", "-F", lab.ssh_config, "enclave-de", "id -u"]
    assert target.host_argv(target.host("home"), "true")[-2:] == ["home", "true"]


def test_lab_clients_need_root_and_say_so(lab_env: Path, dep: model.Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    write_lab(lab_env, dep)
    target = target_for("lab", dep)  # reading the lab's hosts needs no root
    as_root(monkeypatch, False)
    for attempt in (lambda: target.client_argv(["true"]), lambda: target.host_argv("home", "true")):
        with pytest.raises(RootRequired) as caught:
            attempt()
        assert caught.value.code == EXIT_USAGE
        assert caught.value.render().startswith(f"error: [103]: reaching the lab's hosts needs root: its clients run in "
                                                f"the namespace emb{LAB_ID}-ctl\nHINT: run it as root")


def test_no_lab_a_half_built_lab_or_another_stack_is_a_clear_error(lab_env: Path, dep: model.Deployment) -> None:
    with pytest.raises(UserError) as caught:
        target_for("lab", dep)
    assert caught.value.render() == (f"error: lab {LAB_ID} is not up\n"
                                     f"HINT: run `embassy lab up --stack rehearsal` (as root, EMBASSY_LAB_ID={LAB_ID})")
    write_lab(lab_env, dep, phase=Phase.BUILDING)
    with pytest.raises(UserError, match="half-built"):
        target_for("lab", dep)
    write_lab(lab_env, dep, stack="production")
    with pytest.raises(UserError, match="runs stack 'production', not 'rehearsal'"):
        target_for("lab", dep)


def test_unknown_names_are_refused_with_the_names_there_are(lab_env: Path, dep: model.Deployment) -> None:
    write_lab(lab_env, dep)
    target = target_for("lab", dep)
    with pytest.raises(HostUnknown, match="no host 'enclave-fr'") as host:
        target.host("enclave-fr")
    assert "home, enclave-de, enclave-se, enclave-ie" in host.value.hint
    with pytest.raises(EmbassyUnknown, match="no embassy 'fr'") as emb:
        target.embassy_hosts("fr")
    assert emb.value.hint == "use one of: de, se, ie"
    with pytest.raises(TargetUnknown) as kind:
        target_for("gcp", dep)
    assert kind.value.code == EXIT_USAGE and "use --target lab or --target site or --target aws" in kind.value.render()


def test_harden_inventory_of_the_lab(lab_env: Path, dep: model.Deployment) -> None:
    """What roles/ receive for the lab: SSH from the controller, and the lab's network facts."""
    lab = write_lab(lab_env, dep)
    play = harden.play_for(target_for("lab", dep))
    assert play.kind == "lab" and play.hosts == ["home", "enclave-de", "enclave-se", "enclave-ie"]
    assert play.workdir == Path(lab.dir) / "harden"
    assert play.env["ANSIBLE_SSH_CONTROL_PATH_DIR"] == str(Path(lab.dir) / "harden/ansible/cp")
    allvars = play.inventory["all"]["vars"]
    base = f"10.87.{LAB_ID}"
    assert allvars == {
        "ansible_user": "admin", "ansible_ssh_private_key_file": lab.ssh_key, "ansible_ssh_common_args": f"-F {lab.ssh_config}",
        "ansible_port": 2222, "ansible_become": True, "ansible_python_interpreter": "/usr/bin/python3",
        "embassy_ssh_port": 2222, "embassy_syslog_target": f"{base}.2:514", "embassy_controller_address": f"{base}.2",
        "embassy_warm_addresses": [f"{base}.20", f"{base}.21"], "embassy_mirror_url": f"http://{base}.2:8080/debian",
        "embassy_state_name": "Estonia", "embassy_admin_users": ["admin"], "embassy_permit_root_login": "no",
        "embassy_firewall_extra_rules": [{"proto": "tcp", "port": harden.STATE_SERVICE_PORT, "sources": [f"{base}.2"],
                                          "comment": "state service: the controller's queries and smoke checks"}]}
    groups = play.inventory["all"]["children"]
    assert groups["home_state"]["hosts"] == {"home": {"ansible_host": f"{base}.10", "embassy_name": None, "embassy_mode": None}}
    warm = groups["embassies"]["children"]["warm_embassies"]["hosts"]
    assert warm["enclave-se"] == {"ansible_host": f"{base}.21", "embassy_name": "se", "embassy_mode": "warm"}
    assert list(groups["embassies"]["children"]["cold_embassies"]["hosts"]) == ["enclave-ie"]


def test_deploy_runs_pyinfra_with_the_lab_inventory_in_the_controller_namespace(
        lab_env: Path, dep: model.Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    write_lab(lab_env, dep)
    as_root(monkeypatch)
    argv, env = deploy.command(target_for("lab", dep))
    assert argv[:4] == ["ip", "netns", "exec", f"emb{LAB_ID}-ctl"]
    assert argv[5:] == ["-y", "--json", "inventories/lab.py", str(deploy.progress_deploy()),
                        *deploy.DEPLOYS] and argv[4].endswith("pyinfra")
    assert env["EMBASSY_STACK"] == "rehearsal" and env["EMBASSY_LAB_ID"] == str(LAB_ID) and env["PYINFRA_PROGRESS"] == "off"


# --------------------------------------------------------------------------- AWS


def test_aws_hosts_come_from_the_stack_outputs(dep: model.Deployment) -> None:
    hosts = aws_hosts(dep, outputs(dep, hosts_per_embassy=2))
    assert [h.name for h in hosts] == ["enclave-de-0", "enclave-de-1", "enclave-se-0", "enclave-se-1",
                                       "enclave-ie-0", "enclave-ie-1"]
    de1 = hosts[1]
    assert (de1.role, de1.embassy, de1.mode, de1.instance_id, de1.address, de1.region) == (
        Role.EMBASSY, "de", model.Mode.WARM, "i-01de", "10.64.1.11", "eu-central-1")
    assert all(h.role is Role.EMBASSY for h in hosts)  # home runs on premises, not in the stack
    target = AwsTarget(dep, outputs(dep))
    assert [h.name for h in target.hosts] == ["enclave-de", "enclave-se", "enclave-ie"]
    assert target.inventory == "inventories/aws.py" and target.client_env() == {"EMBASSY_STACK": "rehearsal"}


def test_aws_target_without_pulumi_says_what_to_install(dep: model.Deployment, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    target = target_for("aws", dep)  # choosing it reads nothing yet
    for attempt in (lambda: target.hosts, lambda: target.client_argv(["pyinfra"])):
        with pytest.raises(UserError) as caught:
            attempt()
        assert caught.value.render().startswith("error: the pulumi CLI is not installed")
        assert "HINT: install Pulumi" in caught.value.render() and caught.value.code == EXIT_USAGE


def test_aws_stack_outputs_are_read_with_pulumi(dep: model.Deployment, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    (tmp_path / "outputs.json").write_text(json.dumps(outputs(dep)))
    fake_tool(bin_dir, "pulumi", f'[ "$1 $2 $3" = "stack output --json" ] && cat {tmp_path}/outputs.json')
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    assert stack_outputs("rehearsal") == outputs(dep)
    target = target_for("aws", dep)
    assert target.client_argv(["pyinfra", "-y"]) == ["pyinfra", "-y"]  # clients run here; SSM reaches the hosts
    assert target.host("ie").instance_id == "i-00ie"
    fake_tool(bin_dir, "pulumi", "echo 'error: no stack named rehearsal' >&2; exit 255")
    with pytest.raises(UserError, match="cannot read the outputs of stack 'rehearsal': error: no stack named"):
        stack_outputs("rehearsal")


def test_aws_shell_commands_go_over_ssm(dep: model.Deployment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = AwsTarget(dep, outputs(dep))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(ToolMissing, match="needs aws, session-manager-plugin, ssh") as caught:
        target.host_argv("enclave-de", "id -u")
    assert caught.value.render().startswith("error: [104]: reaching AWS hosts over SSM") and "ProxyCommand" in caught.value.hint
    for tool in ("aws", "session-manager-plugin", "ssh"):
        fake_tool(tmp_path / "bin", tool)
    monkeypatch.delenv("EMBASSY_SSH_CONFIG", raising=False)
    assert target.host_argv("de", "id -u") == ["ssh", "-o", "BatchMode=yes", "i-00de", "id -u"]
    monkeypatch.setenv("EMBASSY_SSH_CONFIG", "/etc/embassy/ssm_config")
    assert target.host_argv("enclave-ie", "true") == ["ssh", "-F", "/etc/embassy/ssm_config", "-o", "BatchMode=yes",
                                                      "i-00ie", "true"]


def test_aws_ansible_connection_needs_a_transfer_bucket(dep: model.Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBASSY_SSM_BUCKET", raising=False)
    with pytest.raises(UserError, match="EMBASSY_SSM_BUCKET is not set"):
        AwsTarget(dep, outputs(dep)).ansible_vars()
    monkeypatch.setenv("EMBASSY_SSM_BUCKET", "transfer")
    assert AwsTarget(dep, outputs(dep)).ansible_vars() == {"ansible_connection": "community.aws.aws_ssm",
                                                          "ansible_aws_ssm_bucket_name": "transfer"}


# --------------------------------------------------------------------------- running through a target


class LocalTarget(Target):
    """A target whose clients and commands run right here: for the plumbing, never for a real host."""

    kind = "local"
    inventory = "inventories/none.py"

    def __init__(self, dep: model.Deployment, workdir: Path, wrap: list[str] | None = None) -> None:
        super().__init__(dep)
        self._workdir, self.wrap = workdir, wrap or []

    @property
    def hosts(self) -> list[Host]:
        return [Host("here", Role.HOME, address="127.0.0.1")]

    @property
    def workdir(self) -> Path:
        return self._workdir

    def client_argv(self, argv: Any) -> list[str]:
        return [*self.wrap, *argv]

    def host_argv(self, host: Host | str, command: str) -> list[str]:
        return ["sh", "-c", command]

    def require_ansible(self) -> None:
        return None

    def ansible_vars(self) -> dict[str, Any]:
        return {"ansible_connection": "local"}

    def ansible_host_vars(self, host: Host) -> dict[str, Any]:
        return {}


def test_run_client_and_run_on_use_the_targets_wrapping(dep: model.Deployment, tmp_path: Path) -> None:
    target = LocalTarget(dep, tmp_path, wrap=["env"])
    done = target.run_client([sys.executable, "-c", "import os; print(os.environ['EMBASSY_STACK'])"])
    assert done.returncode == 0 and done.stdout.strip() == "rehearsal"
    on = target.run_on("here", "echo out; echo err >&2; exit 3")
    assert (on.returncode, on.stdout, on.stderr) == (3, "out\n", "err\n")


def test_harden_runs_its_play_in_a_child_started_by_the_target(dep: model.Deployment, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The parent writes the play (0600) and starts `python -m embassy.harden --play …` as the target
    starts clients; the child runs Ansible and hands back its result. No host: an empty play."""
    monkeypatch.setattr(LocalTarget, "hosts", property(lambda self: []))
    lines: list[str] = []
    assert harden.harden_target(LocalTarget(dep, tmp_path), lines.append, measure=False) == []
    play = tmp_path / "harden" / "play.json"
    assert play.stat().st_mode & 0o777 == 0o600
    assert json.loads(play.read_text())["inventory"]["all"]["vars"]["ansible_connection"] == "local"
    assert any("ansible-runner: roles/site.yml on 0 hosts" in line for line in lines)
    assert json.loads((tmp_path / "harden" / "result.json").read_text()) == {"hosts": []}
    # A child that never runs (here: the target's wrapper fails) is a failure naming where it ran.
    with pytest.raises(harden.HardenFailed, match=r"the hardening run \(on this machine\) ended \(exit 1\) without a result"):
        harden.harden_target(LocalTarget(dep, tmp_path, wrap=["false"]), measure=False)


def test_harden_skips_only_the_lynis_run_before_when_asked(dep: model.Deployment, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """--no-lynis-before reaches the child: Lynis runs after the roles only (no host: an empty play)."""
    monkeypatch.setattr(LocalTarget, "hosts", property(lambda self: []))
    lines: list[str] = []
    harden.harden_target(LocalTarget(dep, tmp_path), lines.append, before_too=False)
    assert any("lynis (lynis-after)" in line for line in lines), lines
    assert not any("lynis-before" in line for line in lines), lines
    lines.clear()
    harden.harden_target(LocalTarget(dep, tmp_path), lines.append)
    assert any("lynis (lynis-before)" in line for line in lines), lines


class HomeTarget(LocalTarget):
    """Home's side of a round as a script: records what the data plane asks of which host through the target."""

    def __init__(self, dep: model.Deployment, workdir: Path, report: dict[str, Any]) -> None:
        super().__init__(dep, workdir)
        self.report, self.asked = report, []  # type: list[tuple[str, str]]

    def host_argv(self, host: Host | str, command: str) -> list[str]:
        self.asked.append((self._host(host).name, command))
        return ["sh", "-c", f"printf %s '{json.dumps(self.report)}'" if "last-round.json" in command else "true"]


def test_a_round_runs_on_home_through_the_target_and_a_target_without_home_says_so(
        dep: model.Deployment, tmp_path: Path) -> None:
    from embassy.errors import RoundRefused
    from embassy.replication import replicate

    home = HomeTarget(dep, tmp_path, {"round": 7, "embassies": []})
    assert replicate.run_round(home)["round"] == 7
    assert home.asked == [("here", f"sudo systemctl start {replicate.ROUND_UNIT}"),
                          ("here", f"sudo cat {replicate.STATE_DIR}/last-round.json")]
    refused = HomeTarget(dep, tmp_path, {"refused": {"reason": "round state lost", "hint": "see the vaults"}})
    with pytest.raises(RoundRefused, match="round refused on home: round state lost"):
        replicate.run_round(refused)
    # AWS's hosts are the embassies': home is on premises, not in the stack outputs. Named, not an SSH error.
    with pytest.raises(HostUnknown, match="target aws of stack 'rehearsal' has no home host") as err:
        replicate.run_round(AwsTarget(dep, outputs(dep)))
    assert "--target site" in (err.value.hint or "")
    from embassy.custody import kit  # custody signs its headers on home the same way: refused before anything is sealed

    with pytest.raises(HostUnknown, match="has no home host: the custody headers are signed on home"):
        kit.home_signer(AwsTarget(dep, outputs(dep)), "unused")
