"""How `embassy harden` drives Ansible: Mitogen's strategy over SSH, Ansible's own for AWS (aws_ssm).

The adversary is a faster run that proves less: a strategy that loads but reports a changed task as unchanged
would let the second run's "changed 0" (idempotence) pass on hosts it changed. So the play below runs for real
through ansible-runner under the very environment a lab run gets (local connection, this machine): a task that
changes something must be counted changed, the same task again must not, and the events must still arrive.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from embassy import harden

PLAY = [{"hosts": "all", "gather_facts": False, "tasks": [
    {"name": "write a file", "ansible.builtin.copy": {"dest": "{{ target_file }}", "content": "x\n", "mode": "0600"}},
    {"name": "a script that reports its change", "ansible.builtin.shell": "test -e {{ target_file }}.s || "
     "{ touch {{ target_file }}.s && echo CHANGED; }", "register": "out",
     "changed_when": "'CHANGED' in out.stdout"},
    # Who ran the shell: under Mitogen its parent is the host's one interpreter, named python(mitogen:…).
    {"name": "the runner", "ansible.builtin.shell": "tr '\\0' ' ' < /proc/$PPID/cmdline", "changed_when": False},
]}]


def test_ssh_targets_run_under_mitogen_and_aws_under_ansibles_own(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBASSY_HARDEN_MITOGEN", raising=False)
    for kind in harden.SSH_KINDS:
        env = harden._ansible_env(tmp_path, kind)
        assert env["ANSIBLE_STRATEGY"] == "mitogen_linear"
        assert (Path(env["ANSIBLE_STRATEGY_PLUGINS"]) / "mitogen_linear.py").is_file()
    # aws_ssm is a connection Mitogen does not drive: nothing of it reaches the AWS run.
    assert not any(k.startswith("ANSIBLE_STRATEGY") for k in harden._ansible_env(tmp_path, "aws"))
    monkeypatch.setenv("EMBASSY_HARDEN_MITOGEN", "0")  # the way back to Ansible's linear strategy
    assert "ANSIBLE_STRATEGY" not in harden._ansible_env(tmp_path, "lab")


def run(tmp_path: Path, env: dict[str, str], phase: str) -> tuple[Any, list[dict[str, Any]]]:
    import ansible_runner

    folder = tmp_path / phase
    (folder / "project").mkdir(parents=True)
    (folder / "project" / "play.yml").write_text(yaml.safe_dump(PLAY, sort_keys=False))
    inventory = {"all": {"hosts": {"here": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                                            "target_file": str(tmp_path / "target")}}}}
    (folder / "hosts.yml").write_text(yaml.safe_dump(inventory))
    seen: list[dict[str, Any]] = []

    def keep(event: dict[str, Any]) -> bool:
        seen.append(event)
        return True

    runner = ansible_runner.run(private_data_dir=str(folder), project_dir=str(folder / "project"), playbook="play.yml",
                                inventory=str(folder / "hosts.yml"), envvars=env, quiet=True,
                                event_handler=keep)
    return runner, seen


def test_mitogen_counts_changes_as_ansible_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBASSY_HARDEN_MITOGEN", raising=False)
    env = harden._ansible_env(tmp_path / "work", "lab")
    first, events = run(tmp_path, env, "first")
    assert first.status == "successful", first.stdout.read()[-3000:]
    ok = {ev["event_data"]["task"]: ev["event_data"]["res"] for ev in events if ev.get("event") == "runner_on_ok"}
    assert list(ok) == ["write a file", "a script that reports its change", "the runner"]
    assert "(mitogen:" in ok["the runner"]["stdout"], ok["the runner"]  # it really ran under Mitogen
    assert (first.stats or {}).get("changed") == {"here": 2}
    second, _ = run(tmp_path, env, "second")
    assert second.status == "successful"
    assert not (second.stats or {}).get("changed"), second.stats
