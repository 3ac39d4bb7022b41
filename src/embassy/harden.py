"""`embassy harden`: the Ansible roles of roles/ applied through ansible-runner, measured by Lynis.

For each run: write the inventory (a file, per run: ansible-runner would otherwise keep an old
inventory in its private data folder), measure the Lynis hardening index of every host, run
roles/site.yml, measure again, and report per host what changed.

The hosts and how Ansible reaches them come from the target (src/embassy/targets.py). The whole
run (ansible-runner, the ansible-playbook it spawns, its connections, the Lynis probes) happens in a
child process started with the target's `client_argv`: for the lab, `ip netns exec <controller ns>
python -m embassy.harden …`, one process tree inside the namespace where lab addresses exist, rather
than wrapping only ssh and keeping a controller in the root namespace. The parent builds the play
(inventory, environment) and checks every precondition first, so bad input fails before anything
starts; the child runs it and writes its result as JSON to a file.

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
from rich.console import Console

from embassy import model, progress
from embassy.choosetarget import target_for
from embassy.errors import UserError
from embassy.replication.privatefile import create_private
from embassy.targets import AwsTarget, Host, Role, Target
from embassy.targets import aws_collection_path as aws_collection_path  # where `harden --target aws` looks

PLAYBOOK = "site.yml"
EXIT_FAILED = 1
# Lynis from the hosts' own package source; the index is read from its report, not its screen output.
LYNIS_PROBE = r"""
if ! command -v lynis >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null 2>&1
  apt-get install -y -qq --no-install-recommends lynis >/dev/null 2>&1 || { echo "lynis: cannot install" >&2; exit 3; }
fi
profile=$(mktemp /var/tmp/embassy-lynis.XXXXXX)
trap 'rm -f "$profile"' EXIT
printf '%s\n' 'LYNIS_PROFILE' > "$profile"
lynis audit system --quick --no-colors --profile "$profile" >/dev/null 2>&1
# Kept per phase as evidence (points per test: which control gave what).
install -m 0600 /var/log/lynis.log /var/log/lynis-PHASE.log
install -m 0600 /var/log/lynis-report.dat /var/log/lynis-report-PHASE.dat
sed -n 's/^hardening_index=//p' /var/log/lynis-report.dat
"""
# Added to Lynis's default profile (it still reads default.prf and any custom.prf). Why: CRYP-7902 (certificate
# expiry, no hardening points) asks dpkg, one process per file, whether each certificate in its paths is packaged,
# and checks only those that are not (ssl-certificate-include-packages=no). Every file of the CA store
# /usr/share/ca-certificates belongs to the ca-certificates package: on a deployed host the 148 lookups were a
# fifth of the audit (CRYP-7902 32 s of 155, 4 hosts at once) to check nothing; with this profile 5 s. The other
# paths, /usr/local/share/ca-certificates and /etc/ssl (where a local certificate goes) among them, are still
# scanned. Same index, same points per test, the same report but for its slow_test lines (README, "Hardening").
LYNIS_PROFILE = "ssl-certificate-paths-to-ignore=/etc/letsencrypt/archive:/usr/share/ca-certificates"
GROUPS = {"home": "home_state", "warm": "warm_embassies", "cold": "cold_embassies"}
# The state service (deploys/home_state.py SERVICE_PORT) answers the controller's smoke checks: on
# home, and on an embassy once the state is rebooted there.
STATE_SERVICE_PORT = 8088

Say = Callable[[str], None]
Emit = Callable[[progress.Event], None]


def _quiet(_: str) -> None:
    pass


def _no_events(_: progress.Event) -> None:
    pass


def _events_to(emit: Emit) -> Callable[[dict[str, Any]], bool]:
    """ansible-runner's event_handler: each play, task and host result on to the parent; every event kept."""
    def handle(event: dict[str, Any]) -> bool:
        found = progress.from_ansible(event)
        if found is not None:
            emit(found)
        return True  # ansible-runner writes the event to the artifacts only when the handler says so

    return handle


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
class Play:
    """What one run needs: the inventory, the environment of Ansible, and where its files go."""

    kind: str  # lab | aws
    workdir: Path  # ansible home, control sockets, run artifacts (never the user's home)
    inventory: dict[str, Any]
    hosts: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        """As JSON for the child process (paths to keys, never their content); 0600 all the same."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        create_private(path, json.dumps({**asdict(self), "workdir": str(self.workdir)}).encode())

    @classmethod
    def load(cls, path: Path) -> Play:
        data = json.loads(path.read_text())
        return cls(**{**data, "workdir": Path(data["workdir"])})


def roles_dir() -> Path:
    return model.project_root() / "roles"


# --------------------------------------------------------------------------- inventories


def ansible_inventory(target: Target) -> dict[str, Any]:
    """The inventory: home_state, and warm/cold embassies as children of `embassies`.

    Connection variables come from the target; the roles' variables from the stack and the target's
    network (the controller, the syslog collector and the mirror exist only where the target has them).
    """
    hosts = target.hosts

    def hostvars(h: Host) -> dict[str, Any]:
        return {**target.ansible_host_vars(h), "embassy_name": h.embassy, "embassy_mode": h.mode.value if h.mode else None}

    def group(name: str) -> dict[str, Any]:
        return {"hosts": {h.name: hostvars(h) for h in hosts if h.group == name}}

    # Home's firewall admits its warm standbys; where home is not among the hosts (AWS: it runs on
    # premises) the standbys connect out to it and there is nothing to admit here.
    has_home = any(h.role is Role.HOME for h in hosts)
    warm = [h.address for h in hosts if has_home and h.role is Role.EMBASSY and h.mode is model.Mode.WARM]
    allvars: dict[str, Any] = {
        **target.ansible_vars(),
        "ansible_become": True,
        "ansible_python_interpreter": "/usr/bin/python3",
        **({"embassy_ssh_port": target.ssh_port} if target.ssh_port else {}),
        **({"embassy_syslog_target": target.syslog_target} if target.syslog_target else {}),
        **({"embassy_controller_address": target.controller_address} if target.controller_address else {}),
        "embassy_warm_addresses": warm,
        **({"embassy_mirror_url": target.mirror_url} if target.mirror_url else {}),
        "embassy_state_name": target.dep.state.name,
        "embassy_admin_users": [target.admin_user],
        "embassy_permit_root_login": "no",
    }
    if target.controller_address:
        allvars["embassy_firewall_extra_rules"] = [{
            "proto": "tcp", "port": STATE_SERVICE_PORT, "sources": [target.controller_address],
            "comment": "state service: the controller's queries and smoke checks"}]
    return {"all": {"vars": allvars, "children": {
        GROUPS["home"]: group("home"),
        "embassies": {"children": {GROUPS["warm"]: group("warm"), GROUPS["cold"]: group("cold")}},
    }}}


# Targets whose hosts Ansible reaches over its own ssh connection: there Mitogen drives the play (below).
SSH_KINDS = ("lab", "site")


def _mitogen_env() -> dict[str, str]:
    """Mitogen's strategy (mitogen_linear): one Python interpreter per host (and one for sudo in it) for the
    whole run, each module sent once and run in it, instead of Ansible's worker, ssh and Python per task and
    host (about 1 s per task quiet, 3 s loaded, whatever the task does). The same tasks, results and events:
    only how they reach the host changes. Its connection is ssh, so not for AWS (aws_ssm)."""
    import ansible_mitogen

    return {"ANSIBLE_STRATEGY_PLUGINS": str(Path(ansible_mitogen.__file__).parent / "plugins" / "strategy"),
            "ANSIBLE_STRATEGY": "mitogen_linear"}


def _ansible_env(workdir: Path, kind: str) -> dict[str, str]:
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
        **(_mitogen_env() if kind in SSH_KINDS and os.environ.get("EMBASSY_HARDEN_MITOGEN", "1") != "0" else {}),
    }


def aws_inventory(dep: model.Deployment, outputs: dict[str, Any], ssm_bucket: str) -> tuple[dict[str, Any], list[str]]:
    """Inventory of the embassies' hosts from the stack outputs, reached over SSM (no SSH)."""
    target = AwsTarget(dep, outputs, ssm_bucket=ssm_bucket)
    return ansible_inventory(target), [h.name for h in target.hosts]


def play_for(target: Target) -> Play:
    """The play of one run against `target`; every precondition is checked here, before anything runs."""
    target.require_ansible()  # its connection plugin, before anything else
    inventory = ansible_inventory(target)
    workdir = target.workdir / "harden"
    return Play(target.kind, workdir, inventory, [h.name for h in target.hosts],
                _ansible_env(workdir, target.kind))


# --------------------------------------------------------------------------- running Ansible


def _run_dir(target: Play, phase: str) -> Path:
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


def run_playbook(target: Play, say: Say = _quiet, emit: Emit = _no_events) -> dict[str, int]:
    """Run roles/site.yml on every host; return the number of changed tasks per host."""
    import ansible_runner

    folder = _run_dir(target, "harden")
    say(f"ansible-runner: roles/{PLAYBOOK} on {len(target.hosts)} hosts")
    emit({"kind": "phase", "name": f"harden: roles/{PLAYBOOK}", "hosts": target.hosts, "unit": "tasks"})
    runner = ansible_runner.run(private_data_dir=str(folder), project_dir=str(roles_dir()), playbook=PLAYBOOK,
                                inventory=str(folder / "inventory" / "hosts.yml"), envvars=target.env, quiet=True,
                                event_handler=_events_to(emit))
    events = list(runner.events)
    failures = _failures(events)
    if runner.status != "successful" or failures:
        detail = "\n  ".join(failures) or f"ansible-runner status {runner.status} (rc {runner.rc})"
        raise HardenFailed(f"hardening failed:\n  {detail}", f"see {folder}/artifacts for the full run; fix and run again")
    stats = runner.stats or {}
    changed = stats.get("changed", {}) or {}
    return {h: int(changed.get(h, 0)) for h in target.hosts}


def lynis_indexes(target: Play, say: Say = _quiet, phase: str = "lynis", emit: Emit = _no_events) -> dict[str, int | None]:
    """Run Lynis on every host at once (an ad-hoc shell task, the same connection as the play)."""
    import ansible_runner

    folder = _run_dir(target, phase)
    say(f"lynis ({phase}) on {len(target.hosts)} hosts")
    emit({"kind": "phase", "name": f"harden: {phase}", "hosts": target.hosts, "unit": "tasks"})
    emit({"kind": "task", "name": "lynis audit system"})  # an ad-hoc run announces no task of its own
    runner = ansible_runner.run(private_data_dir=str(folder), host_pattern="all", module="ansible.builtin.shell",
                                module_args=lynis_probe(phase),
                                inventory=str(folder / "inventory" / "hosts.yml"), envvars=target.env, quiet=True,
                                event_handler=_events_to(emit))
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


def lynis_probe(phase: str) -> str:
    """The shell of one Lynis run: its log and report kept as /var/log/lynis[-report]-<phase>."""
    return LYNIS_PROBE.replace("PHASE", phase.removeprefix("lynis-")).replace("LYNIS_PROFILE", LYNIS_PROFILE)


def close_connections(target: Play) -> None:
    """End the SSH masters the run kept open (ControlPersist), rather than leave them to time out."""
    folder = Path(target.env["ANSIBLE_SSH_CONTROL_PATH_DIR"])
    for socket in sorted(folder.glob("*")) if folder.is_dir() else []:
        if socket.is_socket():
            subprocess.run(["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "embassy-master"],
                           capture_output=True, timeout=30, check=False)


def harden_here(target: Play, say: Say = _quiet, measure: bool = True, before_too: bool = True,
                emit: Emit = _no_events) -> list[HostResult]:
    """Lynis, the roles, Lynis: run in this process (inside the controller namespace for the lab).

    before_too=False skips the first Lynis run (the index after is what the target is judged on; the one
    before only shows the gain, and costs a whole Lynis audit of every host). emit: the progress events."""
    try:
        before = (lynis_indexes(target, say, "lynis-before", emit) if measure and before_too
                  else dict.fromkeys(target.hosts))
        changed = run_playbook(target, say, emit)
        after = lynis_indexes(target, say, "lynis-after", emit) if measure else dict.fromkeys(target.hosts)
    finally:
        close_connections(target)
    return [HostResult(h, changed[h], before.get(h), after.get(h)) for h in target.hosts]


# --------------------------------------------------------------------------- entry points


def harden(dep: model.Deployment, target: str, say: Say = _quiet, measure: bool = True) -> list[HostResult]:
    """Harden every host of the stack's target and measure it; raises UserError/HardenFailed."""
    return harden_target(target_for(target, dep), say, measure)


def harden_target(target: Target, say: Say = _quiet, measure: bool = True, before_too: bool = True,
                  console: Console | None = None) -> list[HostResult]:
    """Build the play here (bad input fails now), run it in a child where the hosts are reachable.

    Progress: a live display on `console` when it is a terminal, else lines through `say` with a heartbeat
    at least every 30 s (src/embassy/progress.py); the child sends ansible-runner's events up a pipe."""
    play = play_for(target)
    out = play.workdir / "result.json"
    play_file = play.workdir / "play.json"
    # The child refuses (root, tools) before any file is written.
    argv = target.client_argv([sys.executable, "-m", "embassy.harden", "--play", str(play_file), "--out", str(out),
                               *([] if measure else ["--no-lynis"]),
                               *([] if before_too else ["--no-lynis-before"])])
    play.save(play_file)
    out.unlink(missing_ok=True)
    start = time.monotonic()
    with progress.reporter(say, console) as shown:
        rc = _run_child(argv, shown)
        shown.end()
    result = json.loads(out.read_text()) if out.is_file() else None
    if result is None:
        raise HardenFailed(f"the hardening run ({target.client_place}) ended (exit {rc}) without a result",
                           "run it again; its Ansible artifacts are under " + str(play.workdir / "runs"))
    if "error" in result:
        raise HardenFailed(result["error"]["message"], result["error"]["hint"])
    say(f"done in {time.monotonic() - start:.0f}s")
    return [HostResult(**h) for h in result["hosts"]]


def _run_child(argv: list[str], shown: progress.Progress) -> int:
    """The child, its messages (stderr) through `shown`, its events (a pipe) into it; returns its exit code."""
    with progress.event_pipe(shown) as (fd, env):
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                cwd=model.project_root(), env={**os.environ, **env}, pass_fds=(fd,))
        assert proc.stderr is not None
        for line in proc.stderr:  # the child's messages
            shown.say(line.rstrip())
        return proc.wait()


def _child(argv: list[str] | None = None) -> int:
    """`python -m embassy.harden --play F --out F`: the run itself, started where the hosts are reachable."""
    parser = argparse.ArgumentParser(prog="python -m embassy.harden")
    parser.add_argument("--play", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--no-lynis", action="store_true")
    parser.add_argument("--no-lynis-before", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        results = harden_here(Play.load(Path(args.play)), say, measure=not args.no_lynis,
                              before_too=not args.no_lynis_before, emit=progress.emitter())
    except UserError as exc:
        out.write_text(json.dumps({"error": {"message": exc.message, "hint": exc.hint}}))
        return exc.code
    out.write_text(json.dumps({"hosts": [asdict(r) for r in results]}))
    return 0


if __name__ == "__main__":
    sys.exit(_child())
