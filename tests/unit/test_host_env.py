"""Variables handed to a command on a host (`Target.run_on(…, env=…)`): the same way on the lab, a site and AWS.

The adversary: the host nation, root on the embassy host (and any local user on the controller), reading argvs
(ps, /proc), files and shell history. A restore secret (a pgBackRest passphrase, a restic password) must reach the
command's environment and nothing else: not an argv on either side, not a file, not the command's text; on the
session's input it stands only on the `export` lines, shell-quoted so that a secret with quotes, `$`, backquotes,
newlines or the script's own closing brace stays data (a secret that broke out would run as root on the host).

Each target runs for real up to its argv: the lab's `ip netns exec … ssh`, a site's `ssh` with its pinned options,
AWS's ssh through SSM. The `ip`, `ssh` (and, for AWS, `aws` and `session-manager-plugin`) on the PATH are stand-ins:
`ssh` records its argv and input and runs the remote command with this machine's `sh`, and `sudo` resets the
environment as the real one does (env_reset), so a variable survives only if the script keeps it.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from embassy import aws_target as at
from embassy import model, sites, targets
from embassy.targets import HOST_SHELL, SUDO_AS_ROOT, Host, Role, Target

from .test_targets import write_lab

ROOT = Path(__file__).resolve().parents[2]

STAND_IN_SSH = r'''#!{python}
import os, subprocess, sys
from pathlib import Path
record = Path(os.environ["HOST_ENV_RECORD"])
n = len(list(record.glob("*.argv")))
(record / f"{{n:04d}}.argv").write_bytes(b"".join(a.encode() + b"\0" for a in ["ssh", *sys.argv[1:]]))
data = sys.stdin.read()
(record / f"{{n:04d}}.input").write_text(data)
# sshd's side: the login shell runs the remote command, reading the session's input; only PATH is inherited.
done = subprocess.run(["sh", "-c", sys.argv[-1]], input=data, capture_output=True, text=True,
                      env={{"PATH": os.environ["PATH"]}}, cwd=os.environ["HOST_ENV_HOME"])
sys.stdout.write(done.stdout)
sys.stderr.write(done.stderr)
sys.exit(done.returncode)
'''


@dataclass
class Stand:
    """The stand-in hosts' side: where argvs and inputs are recorded, where a break-out would leave its mark."""

    record: Path
    home: Path

    def calls(self) -> list[tuple[list[str], str]]:
        return [([a.decode() for a in p.read_bytes().split(b"\0")[:-1]], p.with_suffix(".input").read_text())
                for p in sorted(self.record.glob("*.argv"))]


def hostile_secret(marks: Path) -> str:
    """A secret that tries every way out of a quoted shell word and of the script's brace group."""
    return (f"it's \"q\" $(touch {marks}/dollar) `touch {marks}/backquote` ${{HOME}} \\ *\n"
            f"'; touch {marks}/quote; echo '\n"
            f"}} </dev/null\ntouch {marks}/brace\n{{\n-oProxyCommand=x")


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stand]:
    tools, record, home = tmp_path / "bin", tmp_path / "record", tmp_path / "host"
    for folder in (tools, record, home, tmp_path / "marks", tmp_path / "tmp"):
        folder.mkdir()
    (tools / "ssh").write_text(STAND_IN_SSH.format(python=sys.executable))
    (tools / "ip").write_text('#!/bin/sh\n[ "$1 $2" = "netns exec" ] || exit 99\nshift 3\nexec "$@"\n')
    (tools / "sudo").write_text('#!/bin/sh\nexec env -i PATH="$PATH" "$@"\n')  # env_reset, as sudoers has it
    for tool in ("aws", "session-manager-plugin"):  # never started: the stand-in ssh takes no ProxyCommand
        (tools / tool).write_text("#!/bin/sh\nexit 99\n")
    for path in tools.iterdir():
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}:/usr/bin:/bin")
    monkeypatch.setenv("HOST_ENV_RECORD", str(record))
    monkeypatch.setenv("HOST_ENV_HOME", str(home))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # a controller-side temporary file lands here
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # the lab's clients run as root
    yield Stand(record, home)


def lab_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Target, Host]:
    dep = model.load_stack("rehearsal", ROOT)
    monkeypatch.setenv("EMBASSY_LAB_ROOT", str(tmp_path / "labs"))
    target = targets.LabTarget(dep, write_lab(tmp_path / "labs", dep))
    return target, target.embassy_hosts(dep.embassies[0].name)[0]


def site_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Target, Host]:
    dep = model.load_stack("production", ROOT)
    example = ROOT / "examples" / "sites" / "federation.yaml"
    target = targets.SiteTarget(dep, sites.load(example, dep), example)
    return target, next(h for h in target.hosts if h.role is Role.EMBASSY)


SESSION = at.Session("ASIAEXAMPLEEXAMPLE03", "session-secret-3", "session-token-3", at.dt.datetime.now(at.dt.UTC))


def aws_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outputs: dict[str, Any]) -> tuple[Target, Host]:
    dep = model.load_stack("rehearsal", ROOT)
    target = at.AwsDataTarget(dep, copy.deepcopy(outputs), workdir=tmp_path / "aws")
    monkeypatch.setattr(target, "session", lambda embassy, identity, valid_for=0: SESSION)
    monkeypatch.setattr(targets.AwsTarget, "controller_folder", property(lambda _self: tmp_path / "aws"))
    return target, target.host(dep.embassies[0].name)


def make(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plan: dict[str, Any]) -> tuple[Target, Host]:
    if kind == "lab":
        return lab_target(tmp_path, monkeypatch)
    if kind == "site":
        return site_target(tmp_path, monkeypatch)
    return aws_target(tmp_path, monkeypatch, plan["outputs"])


def exports(script: str) -> tuple[dict[str, str], str]:
    """The variables the script's `export` lines set, as a shell reads them, and the script after them."""
    head, sep, rest = script.partition(f"\n{SUDO_AS_ROOT}\n")
    assert sep, script
    words = shlex.split(head)
    assert words[0::2] == ["export"] * (len(words) // 2), words  # nothing but export lines before the command
    return dict(w.split("=", 1) for w in words[1::2]), rest


@pytest.mark.parametrize("kind", ["lab", "site", "aws"])
def test_a_secret_reaches_only_the_commands_environment(kind: str, stand_in: Stand, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        rehearsal_plan: dict[str, Any]) -> None:
    target, host = make(kind, tmp_path, monkeypatch, rehearsal_plan)
    secret = hostile_secret(tmp_path / "marks")
    # As the restore runs it: `sudo` for root (which would reset the environment), then runuser as postgres.
    command = 'sudo sh -c \'printf "%s|%s" "$RESTIC_PASSWORD" "$PGBACKREST_REPO1_CIPHER_PASS"\''
    done = target.run_on(host, command, timeout=30, env={"RESTIC_PASSWORD": secret,
                                                         "PGBACKREST_REPO1_CIPHER_PASS": "plain"})
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{secret}|plain"  # the command's environment holds it, byte for byte
    assert list((tmp_path / "marks").iterdir()) == []  # nothing of it ran as shell

    [(argv, script)] = stand_in.calls()
    assert argv[-1] == HOST_SHELL  # the remote command is the shell alone; its script comes on the input
    lines = [line for line in secret.splitlines() if "marks" in line or "ProxyCommand" in line]  # its own lines
    assert not any(line in part for part in argv for line in lines), argv  # no argv, on either side, shows it
    handed, rest = exports(script)
    assert handed["RESTIC_PASSWORD"] == secret  # on the export lines, quoted so that the shell reads it back whole
    assert rest == f"{{\n{command}\n}} </dev/null\n"  # the command's text as the caller gave it, and no secret
    assert not any(line in rest for line in lines)
    if kind == "aws":  # the restore role's session beside it, the same way
        assert handed["AWS_SESSION_TOKEN"] == SESSION.session_token
    else:
        assert set(handed) == {"RESTIC_PASSWORD", "PGBACKREST_REPO1_CIPHER_PASS"}
    # No file on the controller's or the host's side holds it (the stand-in's own record of the input aside).
    for path in tmp_path.rglob("*"):
        if path.is_file() and stand_in.record not in path.parents:
            assert lines[0].encode() not in path.read_bytes(), path


@pytest.mark.parametrize("kind", ["lab", "site", "aws"])
def test_a_command_without_variables_runs_as_it_is_and_one_with_its_own_input_takes_none(
        kind: str, stand_in: Stand, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        rehearsal_plan: dict[str, Any]) -> None:
    target, host = make(kind, tmp_path, monkeypatch, rehearsal_plan)
    written = target.run_on(host, "cat", stdin="the file", timeout=30)
    assert written.stdout == "the file"
    argv, data = stand_in.calls()[-1]
    assert data == "the file" and argv[-1] == ("sh -c cat" if kind == "aws" else "cat")  # no session, no export
    with pytest.raises(ValueError):  # its input is the command's own: nothing can be handed on it
        target.run_on(host, "cat", stdin="the file", env={"RESTIC_PASSWORD": "x"})
    with pytest.raises(ValueError):  # a name that is shell syntax is refused, not quoted into the script
        target.run_on(host, "true", env={"X=1; id #": "x"})
    plain = target.run_on(host, "echo plain", timeout=30)
    assert plain.stdout == "plain\n"
    argv, data = stand_in.calls()[-1]
    if kind == "aws":  # every data-plane command on an embassy host gets the restore role's session
        assert argv[-1] == HOST_SHELL and exports(data)[0]["AWS_SECRET_ACCESS_KEY"] == SESSION.secret_access_key
    else:
        assert argv[-1] == "echo plain" and data == ""


def test_the_old_twin_of_a_target_is_gone() -> None:
    """The restore's secrets are passed by the caller (`env=`), never by a copy of the target whose run_on was
    replaced: nothing in the package builds one."""
    from embassy.custody import hostsecrets

    assert not hasattr(hostsecrets, "keyed") and not hasattr(hostsecrets, "run_with_env")
    src = ROOT / "src" / "embassy"
    offenders = [str(p.relative_to(src)) for p in src.rglob("*.py")
                 if "run_on = " in p.read_text() or "copy.copy(target)" in p.read_text()]
    assert offenders == []


def test_every_character_a_secret_may_hold_comes_back_whole(stand_in: Stand, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Every printable ASCII character and a few others, each in a secret of its own, through the lab's path."""
    target, host = lab_target(tmp_path, monkeypatch)
    secrets = [chr(c) * 3 for c in range(32, 127)] + ["\t", "\n\n", "é€", "-n", "--", "\\n"]
    env = {f"S{i}": s for i, s in enumerate(secrets)}
    names = " ".join(f'"${name}"' for name in env)
    done = target.run_on(host, f"python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' {names}", env=env,
                         timeout=30)
    assert json.loads(done.stdout) == secrets, done.stderr
