"""`embassy harden`: the Ansible roles of roles/ applied through ansible-runner, measured by Lynis.

For each run: write the inventory (a file, per run: ansible-runner would otherwise keep an old
inventory in its private data folder), measure the Lynis hardening index of every host, run
roles/site.yml, measure again, and report per host what changed.

Lab target: every client of a lab address must run inside the lab's controller namespace. The
whole run (ansible-runner, the ansible-playbook it spawns, its SSH connections, the Lynis probes)
therefore happens in a child process started with `ip netns exec <controller ns> python -m
embassy.harden …`: one process tree, all inside the namespace, rather than wrapping only ssh and
keeping a controller in the root namespace. The child writes its result as JSON to a file.

AWS target: hosts are reached over SSM Session Manager (no inbound SSH), which needs the
community.aws collection (`ansible_connection=community.aws.aws_ssm`), the session-manager-plugin
and an S3 bucket for file transfers; ansible-core ships none of them, so `harden --target aws`
checks for the collection first and says how to install it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from embassy import model
from embassy.errors import UserError

PLAYBOOK = "site.yml"
EXIT_FAILED = 1
# Lynis from the hosts' own package source; the index is read from its report, not its screen output.
LYNIS_PROBE = r"""
if ! command -v lynis >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1
  apt-get install -y -qq --no-install-recommends lynis >/dev/null 2>&1 || { echo "lynis: cannot install" >&2; exit 3; }
fi
lynis audit system --quick --no-colors >/dev/null 2>&1
# Kept per phase as evidence (points per test: which control gave what).
install -m 0600 /var/log/lynis.log /var/log/lynis-PHASE.log
install -m 0600 /var/log/lynis-report.dat /var/log/lynis-report-PHASE.dat
sed -n 's/^hardening_index=//p' /var/log/lynis-report.dat
"""
GROUPS = {"home": "home_state", "warm": "warm_embassies", "cold": "cold_embassies"}
# The state service (deploys/home_state.py SERVICE_PORT) answers the controller's smoke checks: on
# home, and on an embassy once the state is rebooted there.
STATE_SERVICE_PORT = 8088

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class HardenFailed(UserError):
    """A role failed or a host was unreachable (exit 1), naming the host and the task."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message, hint, EXIT_FAILED)


@dataclass
class HostResult:
    name: str
    changed: int
    lynis_before: int | None
    lynis_after: int | None


@dataclass
class Target:
    """What one run needs: the inventory, the environment of Ansible, and where its files go."""

    kind: str  # lab | aws
    workdir: Path  # ansible home, control sockets, run artifacts (never the user's home)
    inventory: dict[str, Any]
    hosts: list[str]
    env: dict[str, str] = field(default_factory=dict)


def roles_dir() -> Path:
    return model.project_root() / "roles"


# --------------------------------------------------------------------------- inventories


def _groups(members: dict[str, list[str]], hostvars: dict[str, dict[str, Any]], allvars: dict[str, Any]) -> dict[str, Any]:
    """The inventory: home_state, and warm/cold embassies as children of `embassies`."""
    def group(name: str) -> dict[str, Any]:
        return {"hosts": {h: hostvars[h] for h in members.get(name, [])}}

    return {"all": {"vars": allvars, "children": {
        GROUPS["home"]: group("home"),
        "embassies": {"children": {GROUPS["warm"]: group("warm"), GROUPS["cold"]: group("cold")}},
    }}}


def _ansible_env(workdir: Path) -> dict[str, str]:
    home = workdir / "ansible"
    # ansible-runner starts ansible-playbook by name: the venv's bin first, whoever started us.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")])
    return {
        "PATH": path,
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_ROLES_PATH": str(roles_dir()),
        "ANSIBLE_FORKS": "4",
        "ANSIBLE_PIPELINING": "True",
        # One SSH connection per host for the whole run (Lynis before, the play, Lynis after).
        "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(home / "cp"),
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "1",
    }


def lab_target(dep: model.Deployment) -> Target:
    """The lab's hosts, from its state: SSH as the lab's admin user (sudo), from the controller."""
    from embassy.lab.state import Role, lab_state

    lab = lab_state(dep.stack)
    members: dict[str, list[str]] = {}
    hostvars: dict[str, dict[str, Any]] = {}
    for h in lab.hosts:
        kind = "home" if h.role is Role.HOME else (h.mode or "cold")
        members.setdefault(kind, []).append(h.name)
        hostvars[h.name] = {"ansible_host": h.address, "embassy_name": h.embassy, "embassy_mode": h.mode}
    warm = [h.address for h in lab.hosts if h.role is Role.EMBASSY and h.mode == model.Mode.WARM.value]
    allvars = {
        "ansible_user": lab.ssh_user,
        "ansible_become": True,
        "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_ssh_private_key_file": lab.ssh_key,
        "ansible_ssh_common_args": f"-F {lab.ssh_config}",
        "ansible_port": lab.ssh_port,
        "embassy_ssh_port": lab.ssh_port,
        "embassy_syslog_target": lab.syslog_target,
        "embassy_controller_address": lab.controller_address,
        "embassy_warm_addresses": warm,
        "embassy_mirror_url": lab.mirror_url,
        "embassy_state_name": dep.state.name,
        "embassy_admin_users": [lab.ssh_user],
        "embassy_permit_root_login": "no",
        "embassy_firewall_extra_rules": [{"proto": "tcp", "port": STATE_SERVICE_PORT, "sources": [lab.controller_address],
                                          "comment": "state service: the controller's queries and smoke checks"}],
    }
    workdir = Path(lab.dir) / "harden"
    return Target("lab", workdir, _groups(members, hostvars, allvars), [h.name for h in lab.hosts], _ansible_env(workdir))


def aws_collection_path() -> Path | None:
    """Where the community.aws collection is installed, if anywhere Ansible looks."""
    bases = [p for p in os.environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(os.pathsep) if p]
    if os.environ.get("ANSIBLE_HOME"):
        bases.append(str(Path(os.environ["ANSIBLE_HOME"]) / "collections"))
    bases += [str(Path.home() / ".ansible" / "collections"), "/usr/share/ansible/collections", *sys.path]
    for base in bases:
        candidate = Path(base) / "ansible_collections" / "community" / "aws"
        if candidate.is_dir():
            return candidate
    return None


def stack_outputs(stack: str) -> dict[str, Any]:
    """`pulumi stack output --json` of the stack, or a UserError saying what is missing."""
    if shutil.which("pulumi") is None:
        raise UserError("the pulumi CLI is not installed: the AWS inventory comes from the stack's outputs",
                        "install the Pulumi CLI, `pulumi login`, then `pulumi up --stack " + stack + "`")
    res = subprocess.run(["pulumi", "stack", "output", "--json", "--stack", stack], capture_output=True, text=True,
                         cwd=model.project_root(), timeout=120)
    if res.returncode != 0:
        raise UserError(f"cannot read the outputs of stack '{stack}': {res.stderr.strip()}",
                        f"run `pulumi up --stack {stack}` first (and `pulumi login`)")
    outputs: dict[str, Any] = json.loads(res.stdout or "{}")
    return outputs


def aws_inventory(dep: model.Deployment, outputs: dict[str, Any], ssm_bucket: str) -> tuple[dict[str, Any], list[str]]:
    """Inventory of the embassies' hosts from the stack outputs, reached over SSM (no SSH)."""
    embassies = outputs.get("embassies") or {}
    if not embassies:
        raise UserError(f"stack '{dep.stack}' has no `embassies` output", f"run `pulumi up --stack {dep.stack}` first")
    members: dict[str, list[str]] = {}
    hostvars: dict[str, dict[str, Any]] = {}
    for emb in dep.embassies:
        out = embassies.get(emb.name)
        if out is None:
            raise UserError(f"stack output has no embassy '{emb.name}'", f"run `pulumi up --stack {dep.stack}`")
        ids = list(out.get("host_instance_ids") or [])
        for i, instance in enumerate(ids):
            name = f"enclave-{emb.name}" if len(ids) == 1 else f"enclave-{emb.name}-{i}"
            members.setdefault(emb.mode.value, []).append(name)
            hostvars[name] = {
                "ansible_aws_ssm_instance_id": instance, "ansible_aws_ssm_region": out.get("region", emb.region),
                "embassy_name": emb.name, "embassy_mode": emb.mode.value,
                # SSM needs no inbound SSH: only the embassy's admin networks, if any, reach port 22.
                "embassy_ssh_sources": list(emb.admin_cidrs), "embassy_require_ssh": bool(emb.admin_cidrs),
            }
    allvars = {
        "ansible_connection": "community.aws.aws_ssm",
        "ansible_aws_ssm_bucket_name": ssm_bucket,
        "ansible_become": True,
        "ansible_python_interpreter": "/usr/bin/python3",
        "embassy_state_name": dep.state.name,
        "embassy_admin_users": ["admin"],
        "embassy_permit_root_login": "no",
        # The home state runs outside AWS: the embassies' standbys connect out to it.
        "embassy_warm_addresses": [],
    }
    return _groups(members, hostvars, allvars), list(hostvars)


def aws_target(dep: model.Deployment, workdir: Path | None = None) -> Target:
    if aws_collection_path() is None:
        raise UserError("the community.aws collection is not installed: AWS hosts are reached over SSM "
                        "(ansible_connection=community.aws.aws_ssm), which ansible-core does not ship",
                        "ansible-galaxy collection install community.aws amazon.aws; install the AWS "
                        "session-manager-plugin; then run `embassy harden --target aws` again")
    bucket = os.environ.get("EMBASSY_SSM_BUCKET", "")
    if not bucket:
        raise UserError("EMBASSY_SSM_BUCKET is not set: the SSM connection moves files through an S3 bucket",
                        "create a transfer bucket in the embassies' account (not a vault: vaults are Object-Locked) "
                        "and export EMBASSY_SSM_BUCKET=<its name>")
    inventory, hosts = aws_inventory(dep, stack_outputs(dep.stack), bucket)
    workdir = workdir or model.project_root() / ".embassy" / f"harden-{dep.stack}"
    return Target("aws", workdir, inventory, hosts, _ansible_env(workdir))


# --------------------------------------------------------------------------- running Ansible


def _run_dir(target: Target, phase: str) -> Path:
    """A fresh private data folder per phase: nothing of an earlier run (inventory, env) leaks in."""
    folder = target.workdir / "runs" / phase
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "inventory").mkdir(parents=True)
    (folder / "inventory" / "hosts.yml").write_text(yaml.safe_dump(target.inventory, sort_keys=False))
    for sub in ("ansible/tmp", "ansible/cp"):
        (target.workdir / sub).mkdir(parents=True, exist_ok=True)
    return folder


def _failures(events: list[dict[str, Any]]) -> list[str]:
    found = []
    for ev in events:
        if ev.get("event") in ("runner_on_failed", "runner_on_unreachable") and not ev.get("event_data", {}).get("ignore_errors"):
            data = ev.get("event_data", {})
            res = data.get("res", {}) or {}
            msg = res.get("msg") or res.get("stderr") or res.get("stdout") or ""
            found.append(f"{data.get('host')}: {data.get('task')}: {str(msg).strip()[:400]}")
    return found


def run_playbook(target: Target, say: Say = _quiet) -> dict[str, int]:
    """Run roles/site.yml on every host; return the number of changed tasks per host."""
    import ansible_runner

    folder = _run_dir(target, "harden")
    say(f"ansible-runner: roles/{PLAYBOOK} on {len(target.hosts)} hosts")
    runner = ansible_runner.run(private_data_dir=str(folder), project_dir=str(roles_dir()), playbook=PLAYBOOK,
                                inventory=str(folder / "inventory" / "hosts.yml"), envvars=target.env, quiet=True)
    events = list(runner.events)
    failures = _failures(events)
    if runner.status != "successful" or failures:
        detail = "\n  ".join(failures) or f"ansible-runner status {runner.status} (rc {runner.rc})"
        raise HardenFailed(f"hardening failed:\n  {detail}", f"see {folder}/artifacts for the full run; fix and run again")
    stats = runner.stats or {}
    changed = stats.get("changed", {}) or {}
    return {h: int(changed.get(h, 0)) for h in target.hosts}


def lynis_indexes(target: Target, say: Say = _quiet, phase: str = "lynis") -> dict[str, int | None]:
    """Run Lynis on every host at once (an ad-hoc shell task, the same connection as the play)."""
    import ansible_runner

    folder = _run_dir(target, phase)
    say(f"lynis ({phase}) on {len(target.hosts)} hosts")
    runner = ansible_runner.run(private_data_dir=str(folder), host_pattern="all", module="ansible.builtin.shell",
                                module_args=LYNIS_PROBE.replace("PHASE", phase.removeprefix("lynis-")),
                                inventory=str(folder / "inventory" / "hosts.yml"), envvars=target.env, quiet=True)
    found: dict[str, int | None] = dict.fromkeys(target.hosts)
    for ev in runner.events:
        if ev.get("event") == "runner_on_ok":
            data = ev["event_data"]
            text = str((data.get("res") or {}).get("stdout", "")).strip()
            found[data["host"]] = int(text) if text.isdigit() else None
    failures = _failures(list(runner.events))
    if failures or runner.status != "successful":
        detail = "\n  ".join(failures) or f"ansible-runner status {runner.status} (rc {runner.rc}), see {folder}/artifacts"
        raise HardenFailed("lynis could not run:\n  " + detail,
                           "lynis must be in the hosts' package source (lab: src/embassy/lab/mirror-packages.txt)")
    return found


def close_connections(target: Target) -> None:
    """End the SSH masters the run kept open (ControlPersist), rather than leave them to time out."""
    folder = Path(target.env["ANSIBLE_SSH_CONTROL_PATH_DIR"])
    for socket in sorted(folder.glob("*")) if folder.is_dir() else []:
        if socket.is_socket():
            subprocess.run(["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "embassy-master"],
                           capture_output=True, timeout=30, check=False)


def harden_here(target: Target, say: Say = _quiet, measure: bool = True) -> list[HostResult]:
    """Lynis, the roles, Lynis: run in this process (inside the controller namespace for the lab)."""
    try:
        before = lynis_indexes(target, say, "lynis-before") if measure else dict.fromkeys(target.hosts)
        changed = run_playbook(target, say)
        after = lynis_indexes(target, say, "lynis-after") if measure else dict.fromkeys(target.hosts)
    finally:
        close_connections(target)
    return [HostResult(h, changed[h], before.get(h), after.get(h)) for h in target.hosts]


# --------------------------------------------------------------------------- entry points


def harden(dep: model.Deployment, target: str, say: Say = _quiet, measure: bool = True) -> list[HostResult]:
    """Harden every host of the stack's target and measure it; raises UserError/HardenFailed."""
    if target == "aws":
        return harden_here(aws_target(dep), say, measure)
    if target != "lab":
        raise UserError(f"unknown target '{target}'", "use --target lab or --target aws")
    return _harden_lab(dep, say, measure)


def _harden_lab(dep: model.Deployment, say: Say, measure: bool) -> list[HostResult]:
    from embassy.lab.state import lab_state

    if os.geteuid() != 0:
        raise UserError("hardening the lab needs root (its hosts are reached from the lab's controller namespace)",
                        "run it as root, e.g. `sudo .venv/bin/embassy harden --target lab --stack " + dep.stack + "`")
    lab = lab_state(dep.stack)  # clear error when the lab is not up, before anything starts
    out = Path(lab.dir) / "harden" / "result.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    argv = lab.in_controller([sys.executable, "-m", "embassy.harden", "--stack", dep.stack, "--out", str(out),
                              *([] if measure else ["--no-lynis"])])
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=model.project_root())
    assert proc.stderr is not None
    for line in proc.stderr:  # the child's progress lines
        say(line.rstrip())
    rc = proc.wait()
    result = json.loads(out.read_text()) if out.is_file() else None
    if result is None:
        raise HardenFailed(f"the hardening run in {lab.controller_netns} ended (exit {rc}) without a result",
                           "run it again; its Ansible artifacts are under " + str(Path(lab.dir) / "harden" / "runs"))
    if "error" in result:
        raise HardenFailed(result["error"]["message"], result["error"]["hint"])
    say(f"done in {time.monotonic() - start:.0f}s")
    return [HostResult(**h) for h in result["hosts"]]


def _child(argv: list[str] | None = None) -> int:
    """`python -m embassy.harden`: the lab run, started inside the controller namespace."""
    parser = argparse.ArgumentParser(prog="python -m embassy.harden")
    parser.add_argument("--stack", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--no-lynis", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        dep = model.load_stack(args.stack)
        results = harden_here(lab_target(dep), say, measure=not args.no_lynis)
    except UserError as exc:
        out.write_text(json.dumps({"error": {"message": exc.message, "hint": exc.hint}}))
        return exc.code
    except model.ConfigInvalid as exc:
        out.write_text(json.dumps({"error": {"message": str(exc), "hint": "fix the stack config"}}))
        return 2
    out.write_text(json.dumps({"hosts": [asdict(r) for r in results]}))
    return 0


if __name__ == "__main__":
    sys.exit(_child())
