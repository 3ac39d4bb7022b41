"""The lab tests' shared fixture: ONE lab per test session, brought up once and down at the end.

Lab id: EMBASSY_TEST_LAB_ID (default 5), so that a developer's own lab (EMBASSY_LAB_ID, e.g. 0, 1,
2) is never touched by a test run. A lab already up with the rehearsal stack is reused and left up;
a lab this session built is taken down at the end. Tests skip, saying why, when not root or when a
host tool is missing (`make lab-deps` installs them).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import pytest

from embassy.home.generator import Spec
from embassy.lab import lifecycle
from embassy.lab.state import LAB_ID_ENV, LabState, lab_dir, load_state
from embassy.lab.system import missing_tools
from embassy.model import load_stack

ROOT = Path(__file__).resolve().parents[2]
STACK = "rehearsal"


def _worker_number() -> int:
    """0, or pytest-xdist's worker number (PYTEST_XDIST_WORKER gw0, gw1): `make test` runs two workers."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(worker[2:]) if worker.startswith("gw") else 0


# Each worker of a parallel run has a lab of its own: the next id after the base's for each worker.
TEST_LAB_ID = int(os.environ.get("EMBASSY_TEST_LAB_ID", "5")) + _worker_number()
EMBASSY = str(Path(sys.executable).parent / "embassy")


# `make test` runs the lab modules on two labs at once (two pytest-xdist workers): each group goes to one worker,
# which runs its modules in file order on its own lab, brought up once for them. One lab is deployed, hardened
# (the roles on deployed hosts, as the whole suite in one lab did), then put through the hostile vaults,
# replication, the restore tests and the drill, so that these run on hardened hosts as a real embassy's do; the
# drill destroys home and is last in its group. The other takes the custody kit, the digest points, the restores
# and the lab's own checks. The two groups are about as long as each other (the README's test timings). A run
# without xdist runs every module in file order on one lab, as before. A new module must be placed here, or
# collection stops and says so.
LAB_GROUPS: dict[str, tuple[str, ...]] = {
    "hardened": ("test_deploy", "test_harden", "test_hostile_vault", "test_replication", "test_restore_test",
                 "test_zz_drill"),
    "deployed": ("test_custody", "test_digest_points", "test_drill_watch", "test_lab_hosts", "test_lab_lifecycle",
                 "test_lab_sockets", "test_lab_state", "test_lab_vaults", "test_restore"),
}
LAB_DIR = Path(__file__).resolve().parent


def lab_group_of(module: str) -> str | None:
    return next((group for group, modules in LAB_GROUPS.items() if module in modules), None)


def module_of(nodeid: str) -> str:
    """test_harden for tests/lab/test_harden.py::test_x[param]."""
    return nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.path))
        if path.parent == LAB_DIR and lab_group_of(path.stem) is None:
            raise pytest.UsageError(f"{path.name} is in no lab group: add it to LAB_GROUPS in tests/lab/conftest.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's scheduler, its unit of work a lab group. (xdist's own `--dist loadgroup` reads groups off node ids,
    which pytest 9 no longer lets a plugin rewrite: it spread one group's tests over both workers and labs.)"""
    from xdist.scheduler import LoadScopeScheduling

    class LabGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return lab_group_of(module_of(nodeid)) or nodeid.split("::", 1)[0]

    return LabGroupScheduling(config, log)


def skip_unless_lab_possible() -> None:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (network namespaces, mounts, systemd-nspawn): run the tests as root")
    missing = missing_tools()
    if missing:
        pytest.skip(f"host tools missing: {', '.join(sorted(missing))}: run `make lab-deps` as root")


@pytest.fixture(scope="session")
def lab() -> Iterator[LabState]:
    """The session's lab (rehearsal stack), as its LabState. EMBASSY_LAB_ID is set to its id meanwhile."""
    skip_unless_lab_possible()
    # One test session per lab id at a time: a second session (another developer's run of the lab
    # tests with the same EMBASSY_TEST_LAB_ID) waits here instead of tearing this lab down.
    lab_dir(TEST_LAB_ID).parent.mkdir(parents=True, exist_ok=True)
    session_lock = (lab_dir(TEST_LAB_ID).parent / f"lab-{TEST_LAB_ID}.tests.lock").open("a")
    if not _try_lock(session_lock):
        print(f"lab {TEST_LAB_ID}: waiting for another test session to finish", file=sys.stderr)
        fcntl.flock(session_lock, fcntl.LOCK_EX)
    previous = os.environ.get(LAB_ID_ENV)
    os.environ[LAB_ID_ENV] = str(TEST_LAB_ID)
    dep = load_stack(STACK, ROOT)
    existing = load_state(TEST_LAB_ID)
    reuse = existing is not None and existing.stack == STACK and lifecycle.is_up(existing)
    try:
        if not reuse:
            lifecycle.down(TEST_LAB_ID)  # whatever a crashed earlier run left behind
            lifecycle.up(dep, TEST_LAB_ID, say=lambda m: print(f"lab {TEST_LAB_ID}: {m}", file=sys.stderr))
        state = load_state(TEST_LAB_ID)
        assert state is not None
        yield state
    finally:
        current = load_state(TEST_LAB_ID)
        if current is not None:
            close_mux(current)
        if not reuse:
            lifecycle.down(TEST_LAB_ID)
        if previous is None:
            os.environ.pop(LAB_ID_ENV, None)
        else:
            os.environ[LAB_ID_ENV] = previous
        session_lock.close()  # releases the lock


def _try_lock(fh: TextIO) -> bool:
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def mux_options(lab: LabState) -> list[str]:
    """SSH options that let the tests' commands share one connection per host (the lab's own ssh_config, which
    the product and the drill use, stays one connection per command). A test makes hundreds of short SSH calls
    (test_digest_points alone about 200): each new connection costs a key exchange and a login session on a
    2-core machine. One session at a time per master (the tests call ssh() in turn), well under the hosts'
    MaxSessions. A master idle for 30 s exits; a dead peer is noticed within 15 s (keepalives); the session
    fixture ends the masters before the lab goes down. Tests that prove how sshd treats a NEW connection
    (password refused, host key pinned) build their own argv and never share."""
    folder = Path(lab.dir) / "ssh-mux"
    folder.mkdir(mode=0o700, exist_ok=True)
    return ["-o", "ControlMaster=auto", "-o", f"ControlPath={folder}/%C", "-o", "ControlPersist=30",
            "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]


def close_mux(lab: LabState) -> None:
    """End the SSH masters the tests' ssh() started (by their control sockets: only ours)."""
    folder = Path(lab.dir) / "ssh-mux"
    for socket in sorted(folder.glob("*")) if folder.is_dir() else []:
        subprocess.run(lab.in_controller(["ssh", "-o", f"ControlPath={socket}", "-O", "exit", "lab-host"]),
                       capture_output=True, timeout=30)


def ssh(lab: LabState, host: str, command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run a shell command on a lab host over SSH, from the controller namespace (a shared connection per host)."""
    argv = lab.in_controller(["ssh", "-F", lab.ssh_config, *mux_options(lab), host, command])
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"ssh {host} {command!r} exited {res.returncode}: {res.stderr.strip()}")
    return res


def in_controller_python(lab: LabState, code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run Python code (the venv's interpreter) inside the lab's controller namespace."""
    return subprocess.run(lab.in_controller([sys.executable, "-c", code, *args]), capture_output=True, text=True,
                          timeout=timeout)


# --------------------------------------------------------------------------- one deploy shared by modules
# A deploy that changes nothing still costs 30 to 45 s (pyinfra on 4 hosts). A module that only needs a
# deployed lab takes the session's last deploy when every module since it left the hosts as a deploy leaves
# them (KEEPS_DEPLOY), and no test failed meanwhile (a failure may have left a case half undone); else it
# deploys. A module not listed (replication's cut-offs and killed agents, restores,
# the drill) is taken to have changed the hosts: the next module that needs a deploy deploys again.
KEEPS_DEPLOY = frozenset({
    "test_custody",  # its re-key deploys, its restores write the bundle's (the deploy's) files: a deploy after it changed 0
    "test_deploy",  # ends with its own deploys (a refused one in between changes nothing)
    "test_digest_points",  # its scratch cluster is removed; a round signs home's last state
    "test_drill_watch",  # the watch's counters removed, the receivers started again
    "test_harden",  # the roles touch nothing a deploy manages (a deploy after them changes nothing)
    "test_hostile_vault",  # every case undone, the round timer started again
    "test_lab_hosts", "test_lab_lifecycle", "test_lab_sockets", "test_lab_state", "test_lab_vaults",  # read only
})


@dataclass
class SharedDeploy:
    intact: bool = False  # the hosts are as the session's last deploy left them
    result: dict[str, Any] | None = None  # that deploy's --json output
    module: str | None = None  # the module running now


SHARED = SharedDeploy()


def record_deploy(result: dict[str, Any]) -> None:
    """A module's own deploy succeeded: the hosts are as it left them."""
    SHARED.intact, SHARED.result = True, result


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    module = module_of(item.nodeid)
    if SHARED.module is not None and module != SHARED.module and SHARED.module not in KEEPS_DEPLOY:
        SHARED.intact = False
    SHARED.module = module


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed:
        SHARED.intact = False


def deploy_once(lab: LabState) -> dict[str, Any]:
    """The lab deployed: the session's last deploy when the hosts are still as it left them, else a new one."""
    if SHARED.intact and SHARED.result is not None:
        print(f"lab {lab.lab_id}: deployed by an earlier module, left intact since: no new deploy", file=sys.stderr)
        return SHARED.result
    env = {**os.environ, "EMBASSY_LAB_ID": str(lab.lab_id)}
    done = subprocess.run([EMBASSY, "deploy", "--target", "lab", "--stack", STACK, "--json", "--size-mb",
                           f"{Spec.size_mb:g}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-4000:]
    record_deploy(json.loads(done.stdout))
    assert SHARED.result is not None
    return SHARED.result
