"""`embassy deploy`: run the pyinfra deploys (home state, agents, standbys) against a target.

`pyinfra -y --json <the target's inventory> deploys/…`, run as the target runs its clients
(src/embassy/targets.py): for the lab, inventories/lab.py inside its controller namespace (lab
addresses exist nowhere else); for a site, inventories/site.py (the site inventory's hosts over SSH); for AWS,
inventories/aws.py (stack outputs, SSM) on this machine.
What changed is read from pyinfra's own JSON results: per host, the operations that changed something.
Progress comes from pyinfra's own state callbacks (src/embassy/pyinfra_progress.py, given to pyinfra as
a first deploy file that only installs them), sent up a pipe as events (src/embassy/progress.py), never from pyinfra's text.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from embassy import progress
from embassy.errors import EXIT_FINDING, EXIT_USAGE, UserError
from embassy.targets import Target

DEPLOYS = ("deploys/home_state.py", "deploys/agent.py", "deploys/standby.py")
# Two pyinfra runs, one after the other: pyinfra orders the operations of one run across hosts by its own
# rules, and a standby started before home's agent made the stanza in its vault logs `ERROR: [103]` for
# every WAL it asks for. Home first (state and agents), then the embassies.
# Profiling (a file): each phase's wall and CPU seconds here, each operation's and fact's in pyinfra_progress.py.
TIMINGS_ENV = "EMBASSY_PYINFRA_TIMINGS"
PHASES: tuple[tuple[str, ...], ...] = (DEPLOYS[:2], DEPLOYS[2:])
# What a re-key changes (custody rotate): home's agent (pgBackRest repos, restic repositories, the rounds' config)
# and the embassies' config. The home state (PostgreSQL, seeded registers, state service) holds no key.
AGENTS = DEPLOYS[1:]


@dataclass
class HostResult:
    name: str
    changed: int = 0
    unchanged: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class DeployResult:
    hosts: list[HostResult]
    failed_hosts: list[str]
    seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {"hosts": [{"name": h.name, "changed": h.changed, "unchanged": h.unchanged, "errors": h.errors}
                          for h in self.hosts],
                "failed_hosts": self.failed_hosts, "seconds": round(self.seconds, 1)}


def pyinfra_bin() -> str:
    """pyinfra from this interpreter's environment (the project's venv), else from PATH."""
    local = Path(sys.executable).parent / "pyinfra"
    if local.is_file():
        return str(local)
    found = shutil.which("pyinfra")
    if not found:
        raise UserError("pyinfra is not installed", "run `make setup` (pyinfra is a dependency of embassy)")
    return found


def parse_results(payload: dict[str, Any]) -> DeployResult:
    """Per host: how many operations changed something, how many did not, which failed (pyinfra --json)."""
    results = payload.get("results") or {}
    hosts: dict[str, HostResult] = {}
    for op in results.get("operations", []):
        for name in op.get("success", []):
            hosts.setdefault(name, HostResult(name)).changed += 1
        for name in op.get("no_change", []):
            hosts.setdefault(name, HostResult(name)).unchanged += 1
        for name in op.get("error", []):
            hosts.setdefault(name, HostResult(name)).errors.append(op.get("name", "?"))
    failed = list(results.get("failed_hosts", []))
    for name in failed:
        hosts.setdefault(name, HostResult(name))
    return DeployResult(hosts=sorted(hosts.values(), key=lambda h: h.name), failed_hosts=failed)


def progress_deploy() -> Path:
    """The deploy file that installs the progress callbacks (first, before the deploys: it adds no operation)."""
    return Path(progress.__file__).with_name("pyinfra_progress.py")


def command(target: Target, deploys: Sequence[str] = DEPLOYS) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of one pyinfra run against `target`."""
    env = {**os.environ, **target.client_env(), "PYINFRA_PROGRESS": "off"}
    return target.client_argv([pyinfra_bin(), "-y", "--json", target.inventory, str(progress_deploy()),
                               *deploys]), env


def merge(results: Sequence[DeployResult]) -> DeployResult:
    """One result per host over several pyinfra runs: changes and errors added up."""
    hosts: dict[str, HostResult] = {}
    failed: list[str] = []
    for result in results:
        for h in result.hosts:
            into = hosts.setdefault(h.name, HostResult(h.name))
            into.changed += h.changed
            into.unchanged += h.unchanged
            into.errors += h.errors
        failed += [n for n in result.failed_hosts if n not in failed]
    return DeployResult(sorted(hosts.values(), key=lambda h: h.name), failed)


def _pyinfra(argv: list[str], root: Path, env: dict[str, str], shown: progress.Progress,
             phase: str) -> subprocess.CompletedProcess[str]:
    """One pyinfra run, its operations' progress (pyinfra's callbacks, up a pipe) shown as they end."""
    shown.begin(phase, [], unit="operations")  # before the first event can arrive; hosts come with the totals
    with progress.event_pipe(shown) as (fd, pipe_env):
        proc = subprocess.Popen(argv, cwd=root, env={**env, **pipe_env}, pass_fds=(fd,), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        stdout, stderr = proc.communicate()
    shown.end()
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's ended children: pyinfra's own Python on the controller."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _record_phase(env: dict[str, str], deploys: Sequence[str], seconds: float, cpu: float) -> None:
    """With EMBASSY_PYINFRA_TIMINGS (profiling): the phase's wall and controller CPU seconds, beside its operations'."""
    path = env.get(TIMINGS_ENV)
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"kind": "phase", "deploys": list(deploys), "at": time.time(),
                                 "seconds": round(seconds, 2), "cpu": round(cpu, 2)}) + "\n")


def _run_phase(target: Target, root: Path, deploys: Sequence[str], size_mb: float | None,
               shown: progress.Progress) -> DeployResult:
    argv, env = command(target, deploys)
    if size_mb is not None:
        env["EMBASSY_HOME_SIZE_MB"] = f"{size_mb:g}"
    shown.say(f"pyinfra {' '.join(argv[argv.index('-y'):])}")
    start, cpu = time.monotonic(), _children_cpu()
    done = _pyinfra(argv, root, env, shown, "deploy: " + " ".join(Path(d).stem for d in deploys))
    _record_phase(env, deploys, time.monotonic() - start, _children_cpu() - cpu)
    try:
        payload = json.loads(done.stdout)
    except ValueError:
        payload = None
    if payload is None:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise UserError(f"pyinfra did not run the deploys (exit {done.returncode}):\n{tail}",
                        "fix the error above; the deploys are idempotent, run `embassy deploy` again", EXIT_FINDING)
    result = parse_results(payload)
    if done.returncode != 0 or result.failed_hosts or any(h.errors for h in result.hosts):
        # pyinfra marks every later operation of a failed host as failed too: the first one is the cause.
        failed = [f"{h.name} at '{h.errors[0] if h.errors else '?'}'" for h in result.hosts
                  if h.errors or h.name in result.failed_hosts]
        details = "\n".join(line for line in done.stderr.splitlines() if "rror" in line or "HINT" in line)[-3000:]
        # A deploy that refused bad input (our ops print `error:` + `HINT:` and exit 2) changed nothing: exit 2.
        code = EXIT_USAGE if "HINT: deploy with the seed" in done.stderr else EXIT_FINDING
        raise UserError(f"deploy failed on {'; '.join(failed) or 'the run'}\n{details}",
                        "fix the cause above and run `embassy deploy` again (finished steps are not redone)", code)
    return result


def phases_of(deploys: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """The pyinfra runs for `deploys`, in PHASES' order (home before the embassies); deploys of no phase last."""
    known = [tuple(d for d in deploys if d in phase) for phase in PHASES]
    rest = tuple(d for d in deploys if not any(d in phase for phase in PHASES))
    return tuple(p for p in (*known, rest) if p)


def run(target: Target, root: Path, *, deploys: Sequence[str] = DEPLOYS, size_mb: float | None = None,
        say: Callable[[str], None] = lambda _: None, console: Console | None = None) -> DeployResult:
    """Run the deploys; raise UserError (exit 1) when a host failed, with pyinfra's own words.

    Progress: a live display on `console` when it is a terminal, else lines through `say` with a heartbeat
    at least every 30 s."""
    target.require_pyinfra()  # bad input fails here, before any host is reached
    phases = phases_of(deploys)
    start = time.monotonic()
    with progress.reporter(say, console) as shown:
        results = [_run_phase(target, root, phase, size_mb, shown) for phase in phases]
    result = merge(results)
    result.seconds = time.monotonic() - start
    return result
