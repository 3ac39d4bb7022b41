"""The AWS target without an emulator: the stack outputs it accepts and refuses, and the SSM command lines as argv.

Adversaries: outputs handed over from elsewhere that smuggle shell or ssh syntax into an instance id or a region,
or point at another stack's roles; a remote argv whose elements a shell would split or expand; credentials that
would show in an argv (readable by any local user in /proc, on the controller and on the host).
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest

from embassy import aws_target as at
from embassy.aws_outputs import parse
from embassy.choosetarget import target_for
from embassy.errors import EXIT_USAGE, OptionInvalid, OutputsInvalid, ToolMissing
from embassy.hostroles import Role
from embassy.model import load_stack
from embassy.targets import env_script

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = ["; rm -rf /", "$(touch /tmp/pwned)", "`id`", "a b", "it's", '"q"', "\\", "*", "~root", "-oProxyCommand=x",
           "line\nbreak", ""]


@pytest.fixture(scope="module")
def dep() -> Any:
    return load_stack("rehearsal", ROOT)


@pytest.fixture
def outputs(rehearsal_plan: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(rehearsal_plan["outputs"])


def test_the_plans_outputs_are_what_the_target_reads(dep: Any, outputs: dict[str, Any]) -> None:
    parsed = parse(outputs, dep, "plan")
    target = at.AwsDataTarget(dep, outputs)
    assert sorted(parsed.embassies) == sorted(e.name for e in dep.embassies)
    de = target.host("de")
    assert (de.name, de.instance_id, de.region) == ("enclave-de", outputs["embassies"]["de"]["host_instance_ids"][0],
                                                    "eu-central-1")
    vault = target.vault("de")
    assert vault.bucket == outputs["embassies"]["de"]["vault_bucket"]
    assert vault.endpoint in ("https://s3.eu-central-1.amazonaws.com", os.environ.get("AWS_ENDPOINT_URL"))
    roles = {name: src.role_arn for name, src in vault.identities.items()}  # type: ignore[attr-defined]
    assert roles == {"reader": outputs["embassies"]["de"]["restore_role_arn"],
                     "agent": outputs["embassies"]["de"]["agent_role_arn"],
                     "custody": outputs["embassies"]["de"]["custody_role_arn"]}
    # Never a file or an environment of static keys: every identity is a role of the stack.
    assert all(isinstance(src, at.AssumedRole) and src.file is None for src in vault.identities.values())


BAD = [
    (lambda o: o["embassies"]["de"].pop("restore_role_arn"), "embassies.de.restore_role_arn"),
    (lambda o: o["embassies"]["de"].update(host_instance_ids=["i-0123456789abcdef0; id"]), "host_instance_ids[0]"),
    (lambda o: o["embassies"]["de"].update(region="eu-central-1 --profile x"), "embassies.de.region"),
    (lambda o: o["embassies"]["de"].update(region="eu-west-1"), "the stack config says eu-central-1"),
    (lambda o: o["embassies"]["de"].update(mode="cold"), "embassies.de.mode"),
    (lambda o: o["embassies"]["de"].update(agent_role_arn="arn:aws:iam::123:role/x"), "embassies.de.agent_role_arn"),
    (lambda o: o["embassies"]["de"].update(vault_arn="arn:aws:s3:::another-bucket"), "not the ARN of vault_bucket"),
    (lambda o: o["embassies"].pop("ie"), "embassies.ie: missing"),
    (lambda o: o["embassies"].update(xx=o["embassies"]["de"]), "embassies.xx: stack 'rehearsal' declares no such"),
    (lambda o: o.update(stack="production"), "outputs of stack 'production'"),
]


@pytest.mark.parametrize(("spoil", "named"), BAD)
def test_bad_outputs_are_refused_naming_the_key(dep: Any, outputs: dict[str, Any], spoil: Any, named: str) -> None:
    spoil(outputs)
    with pytest.raises(OutputsInvalid) as exc:
        at.AwsDataTarget(dep, outputs).vault("de")
    assert named in exc.value.message
    assert exc.value.code == EXIT_USAGE and exc.value.hint


def test_the_cli_refuses_bad_outputs_with_exit_2_and_a_hint(dep: Any, tmp_path: Path, outputs: dict[str, Any]) -> None:
    outputs["embassies"]["de"]["host_instance_ids"] = ["$(reboot)"]
    bad = tmp_path / "outputs.json"
    bad.write_text(json.dumps(outputs))
    done = subprocess.run([str(ROOT / ".venv/bin/embassy"), "verify", "--stack", "rehearsal", "--embassy", "de",
                           "--target", "aws", "--outputs", str(bad)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "host_instance_ids[0]" in done.stderr and "HINT:" in done.stderr
    # The file itself unreadable or not JSON: refused when the target is made, before anything is reached.
    for path, named in ((tmp_path / "absent.json", "cannot read it"), (ROOT / "Pulumi.yaml", "not JSON")):
        with pytest.raises(OutputsInvalid, match=named):
            target_for("aws", dep, outputs=path)


def test_outputs_belong_to_the_aws_target_only(dep: Any, tmp_path: Path) -> None:
    with pytest.raises(OptionInvalid):
        target_for("site", dep, tmp_path / "inventory.yaml", tmp_path / "outputs.json")


# --------------------------------------------------------------------------- SSM command lines


def test_the_ssm_command_line_is_an_argv(dep: Any, outputs: dict[str, Any], tmp_path: Path) -> None:
    target = at.AwsDataTarget(dep, outputs)
    host = target.host("de")
    remote = ["sudo", "runuser", "-u", "postgres", "--", "pgbackrest", "--stanza=home", *HOSTILE]
    argv = at.ssh_argv(host, remote, known_hosts=tmp_path / "kh")
    assert argv == [
        "ssh", "-o", "ProxyCommand=aws ssm start-session --region eu-central-1 --document-name AWS-StartSSHSession "
                     "--target %h --parameters portNumber=%p",
        "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-o", "StrictHostKeyChecking=accept-new",
        "-o", f"UserKnownHostsFile={tmp_path / 'kh'}", "-o", "GlobalKnownHostsFile=/dev/null",
        "-l", "admin", "--", host.instance_id, shlex.join(remote)]
    # The remote shell splits the last element back into exactly the argv that was meant: nothing expands.
    assert shlex.split(argv[-1]) == remote


def test_a_remote_argv_reaches_the_program_unchanged() -> None:
    """The remote side's shell run for real on what the SSM session would carry (sh -c stands in for sshd's shell)."""
    remote = ["printf", "%s\\0", *HOSTILE]
    done = subprocess.run(["sh", "-c", shlex.join(remote)], capture_output=True, timeout=10, check=True)
    assert done.stdout.split(b"\0")[:-1] == [h.encode() for h in HOSTILE]


def test_credentials_travel_on_stdin_never_in_an_argv(dep: Any, outputs: dict[str, Any], monkeypatch: Any) -> None:
    session = at.Session("ASIAEXAMPLEEXAMPLE01", "se'cr$(et)`x`\n;", "tok en\"'", at.dt.datetime.now(at.dt.UTC))
    env = at.host_env(session, pgbackrest_repos=[2])
    assert env["PGBACKREST_REPO2_S3_KEY_SECRET"] == session.secret_access_key
    assert env["PGBACKREST_REPO2_S3_KEY_TYPE"] == "shared" and env["AWS_SESSION_TOKEN"] == session.session_token
    probe = ["sh", "-c", 'printf "%s|%s|%s" "$AWS_SECRET_ACCESS_KEY" "$PGBACKREST_REPO2_S3_TOKEN" "$1"', "-", *HOSTILE[:3]]
    script = at.credentials_script(env, probe)
    done = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True, timeout=10, check=True,
                          env={"PATH": os.environ["PATH"]})
    assert done.stdout == f"{session.secret_access_key}|{session.session_token}|{HOSTILE[0]}"
    with pytest.raises(ValueError):
        at.credentials_script({"A=B; id": "x"}, ["true"])

    # What runs on the controller: the session's secrets are in the input, in no element of the argv.
    target = at.AwsDataTarget(dep, outputs)
    monkeypatch.setattr(target, "session", lambda embassy, identity, valid_for=0: session)
    monkeypatch.setattr(at.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    seen: dict[str, Any] = {}

    def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen.update(argv=argv, input=kwargs["input"])
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(at.subprocess, "run", run)
    target.run_with_credentials("de", ["pgbackrest", "--stanza=home", "verify"], embassy="de")
    assert seen["argv"][-1] == "sudo runuser -u postgres -- sh -s"
    assert not any(secret in part for part in seen["argv"]
                   for secret in (session.secret_access_key, session.session_token, session.access_key_id))
    assert f"export AWS_SESSION_TOKEN={shlex.quote(session.session_token)}" in seen["input"]


def test_without_the_ssm_tools_a_host_command_is_refused_with_a_hint(dep: Any, outputs: dict[str, Any],
                                                                      monkeypatch: Any) -> None:
    monkeypatch.setattr(at.shutil, "which", lambda tool: None if tool == "session-manager-plugin" else "/bin/x")
    with pytest.raises(ToolMissing) as exc:
        at.AwsDataTarget(dep, outputs).host_argv("de", "true")
    assert "session-manager-plugin" in exc.value.message


def test_emulator_endpoints_must_be_https(monkeypatch: Any) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    with pytest.raises(OptionInvalid):
        at.endpoint("s3", "eu-central-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert at.endpoint("sts", "cn-north-1") == "https://sts.cn-north-1.amazonaws.com.cn"


# --------------------------------------------------------------------------- the data plane's commands on a host


def test_a_data_plane_command_gets_the_session_and_keeps_it_through_sudo(tmp_path: Path) -> None:
    """The script `sudo sh -s` reads on the host, run by a real shell here: the session reaches the command through
    its `sudo` (which would reset the environment), the command reads nothing of the script, and what follows the
    command in the script is never taken as input."""
    session = at.Session("ASIAEXAMPLEEXAMPLE01", "se'cr$(et)`x`\n;", "tok en\"'", at.dt.datetime.now(at.dt.UTC))
    env = at.host_env(session, pgbackrest_repos=[at.EMBASSY_REPO])
    command = ("sudo sh -c 'printf \"%s|%s|\" \"$PGBACKREST_REPO1_S3_KEY_SECRET\" \"$AWS_SESSION_TOKEN\"'; "
               "cat; echo done-$?")
    script = env_script(env, command)
    done = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True, timeout=10,
                          env={"PATH": os.environ["PATH"]})
    assert done.stdout == f"{session.secret_access_key}|{session.session_token}|done-0\n", done.stderr
    assert session.secret_access_key not in command and "export PGBACKREST_REPO1_S3_KEY_TYPE=shared" in script
    with pytest.raises(ValueError):
        env_script({"X=1; id": "x"}, "true")


def _restic_wrapper(tmp_path: Path, env_file: str, printed: str) -> tuple[Path, dict[str, str]]:
    """The host's embassy-restic wrapper reading its env file (de.env) from tmp_path, and a PATH whose restic is a
    stand-in printing `printed` (three shell words, joined by |): the wrapper's shell is what is tested."""
    from embassy.replication import dataplane

    (tmp_path / "de.env").write_text(env_file + "AWS_DEFAULT_REGION=eu-central-1\n")
    wrapper = tmp_path / "embassy-restic"
    wrapper.write_text(dataplane.script("embassy-restic").replace("/etc/embassy/restic/", f"{tmp_path}/"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "restic").write_text(f'#!/bin/sh\nprintf "%s|%s|%s" {printed}\n')
    (bin_dir / "restic").chmod(0o755)
    return wrapper, {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_restic_on_the_host_takes_the_session_over_its_files_keys(tmp_path: Path) -> None:
    """embassy-restic (the host's wrapper) sources static keys from its env file: a session handed over (a session
    token set) must win, and without one the file's keys are used as before (lab, site). restic is a stand-in
    printing the credentials it was given: the wrapper's shell is what is tested."""
    wrapper, path = _restic_wrapper(tmp_path, "RESTIC_BASE=s3:https://vault/b/restic\nRESTIC_CACERT=/ca\n"
                                    "AWS_ACCESS_KEY_ID=FILEKEY\nAWS_SECRET_ACCESS_KEY=FILESECRET\n",
                                    '"$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" "${AWS_SESSION_TOKEN:-none}"')
    plain = subprocess.run(["sh", str(wrapper), "de", "population", "snapshots"], capture_output=True, text=True,
                           timeout=10, env=path)
    assert plain.stdout == "FILEKEY|FILESECRET|none", plain.stderr
    session = subprocess.run(["sh", str(wrapper), "de", "population", "snapshots"], capture_output=True, text=True,
                             timeout=10, env={**path, "AWS_ACCESS_KEY_ID": "ASIA1", "AWS_SECRET_ACCESS_KEY": "s",
                                              "AWS_SESSION_TOKEN": "t"})
    assert session.stdout == "ASIA1|s|t", session.stderr


def test_run_on_an_embassy_host_hands_over_a_session_on_stdin(dep: Any, outputs: dict[str, Any],
                                                              monkeypatch: Any) -> None:
    """verify's and restore's host commands (Target.run_on) on AWS: `sudo sh -s` over SSM, the restore role's
    session on the input; a command that brings its own input (secrets written to the host) goes as it is."""
    session = at.Session("ASIAEXAMPLEEXAMPLE02", "secret-2", "token-2", at.dt.datetime.now(at.dt.UTC))
    target = at.AwsDataTarget(dep, outputs)
    asked: list[tuple[str, str]] = []
    monkeypatch.setattr(target, "session", lambda embassy, identity, valid_for=0: asked.append((embassy, identity, valid_for))
                        or session)
    monkeypatch.setattr(at.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    seen: list[dict[str, Any]] = []

    def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen.append({"argv": argv, "input": kwargs.get("input")})
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(at.subprocess, "run", run)
    import embassy.targets as targets_module

    monkeypatch.setattr(targets_module.subprocess, "run", run)
    command = "sudo runuser -u postgres -- pgbackrest --stanza=home verify"
    target.run_on(target.host("de"), command, timeout=5)
    assert asked == [("de", "reader", 5)]  # a session that outlasts the command's timeout
    assert seen[0]["argv"][-2:] == [target.host("de").instance_id, "sudo sh -s"]
    assert f"{{\n{command}\n}} </dev/null" in seen[0]["input"]
    assert not any("secret-2" in a or "token-2" in a for a in seen[0]["argv"])
    target.run_on("de", "sudo install -m 600 /dev/stdin /etc/x", stdin="the file")
    assert seen[1]["input"] == "the file" and seen[1]["argv"][-1] == "sh -c 'sudo install -m 600 /dev/stdin /etc/x'"
    assert asked == [("de", "reader", 5)]  # no session for a command that brings its own input


def test_the_custody_bundles_vault_record_names_the_restore_role(dep: Any, outputs: dict[str, Any]) -> None:
    """A fresh controller with only the custody sheets must know which role reads the vault: the record carries
    the stack's restore role ARN and no key (none exists on AWS); an older bundle without it still reads."""
    from embassy.custody.bundle import Bundle

    record = at.bundle_vault_record(at.AwsDataTarget(dep, outputs), "de")
    de = outputs["embassies"]["de"]
    assert record.restore_role_arn == de["restore_role_arn"] and record.bucket == de["vault_bucket"]
    assert (record.access_key_id, record.secret_access_key, record.region) == ("", "", "eu-central-1")
    bundle = Bundle(stack="rehearsal", embassy="de", version=1, created="2026-12-07T00:00:00+00:00",
                    manifest_public_key="pem", vault=record)
    assert "" not in bundle.secrets()  # an empty "secret" would be found in every text a test searches
    assert Bundle.model_validate_json(bundle.model_dump_json()).vault.restore_role_arn == de["restore_role_arn"]
    old = json.loads(bundle.model_dump_json())
    del old["vault"]["restore_role_arn"]
    assert Bundle.model_validate(old).vault.restore_role_arn is None


def test_home_on_aws_is_the_operators_ssh_address_never_an_option(dep: Any, outputs: dict[str, Any],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """custody init on AWS signs the headers on home (on premises) at EMBASSY_HOME_HOST: reached with ssh, its host
    key checked (never learnt), batch mode, `--` before the address; an address that would be an ssh option or a
    shell word is refused (exit 2, HINT); unset, the target names no home (custody init says how to set it)."""
    target = at.AwsDataTarget(dep, outputs)
    monkeypatch.delenv(at.HOME_HOST_ENV, raising=False)
    assert target.home_host() is None
    monkeypatch.setenv(at.HOME_HOST_ENV, "admin@home.example.ee")
    home = target.home_host()
    assert home is not None and home.role is Role.HOME and home.embassy is None
    assert target.host_argv(home, "true") == ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o",
                                              "ConnectTimeout=20", "--", "admin@home.example.ee", "true"]
    for hostile in ("-oProxyCommand=reboot", "home;reboot", "home $(reboot)", "a@b@c", "home\nx"):
        monkeypatch.setenv(at.HOME_HOST_ENV, hostile)
        with pytest.raises(OptionInvalid) as refused:
            target.home_host()
        assert refused.value.code == EXIT_USAGE and "HINT" in refused.value.render()


def test_restic_on_the_host_takes_a_handed_password_and_folder_over_its_files(tmp_path: Path) -> None:
    """A key generation handed over in the environment (custody.hostsecrets.restore_env): the wrapper's password
    file is dropped (restic reads a password file before RESTIC_PASSWORD) and the folder is the generation's;
    without them, the env file's as before. restic is a stand-in printing what it was given."""
    wrapper, path = _restic_wrapper(tmp_path, f"RESTIC_BASE=s3:https://vault/b/restic-g2\n"
                                    f"RESTIC_PASSWORD_FILE={tmp_path}/de.pass\nRESTIC_CACERT=/ca\n"
                                    "AWS_ACCESS_KEY_ID=K\nAWS_SECRET_ACCESS_KEY=S\n",
                                    '"${RESTIC_PASSWORD_FILE:-nofile}" "${RESTIC_PASSWORD:-none}" "$2"')
    plain = subprocess.run(["sh", str(wrapper), "de", "court-files", "snapshots"], capture_output=True, text=True,
                           timeout=10, env=path)
    assert plain.stdout == f"{tmp_path}/de.pass|none|s3:https://vault/b/restic-g2/court-files", plain.stderr
    handed = subprocess.run(["sh", str(wrapper), "de", "court-files", "snapshots"], capture_output=True, text=True,
                            timeout=10, env={**path, "RESTIC_PASSWORD": "generation-1-password",
                                             "EMBASSY_RESTIC_FOLDER": "restic"})
    assert handed.stdout == "nofile|generation-1-password|s3:https://vault/b/restic/court-files", handed.stderr
