"""Small system helpers of the lab: run a command, know a process, stop it by PID, lock a folder."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from embassy.errors import UserError
from embassy.lab.state import Proc
from embassy.replication.privatefile import create_private

EXIT_FAILED = 1

# Host tools the lab needs, and the Debian package that brings each (Makefile LAB_APT).
REQUIRED_TOOLS = {
    "ip": "iproute2",
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "dpkg-scanpackages": "dpkg-dev",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "curl": "curl",
    "unshare": "util-linux",
    "ss": "iproute2",
    "sysctl": "procps",
}


class LabError(UserError):
    """Something the lab could not do (exit 1), with what to do about it."""

    def __init__(self, message: str, hint: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message, hint, code)


def require_root() -> None:
    if os.geteuid() != 0:
        raise UserError("the lab needs root (network namespaces, mounts, containers)",
                        "run it as root, e.g. `sudo .venv/bin/embassy lab up --stack rehearsal`")


def missing_tools() -> dict[str, str]:
    return {tool: pkg for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None}


def require_tools() -> None:
    missing = missing_tools()
    if missing:
        pkgs = " ".join(sorted(set(missing.values())))
        raise UserError(f"missing host tools: {', '.join(sorted(missing))} (packages: {pkgs})",
                        "run `make lab-deps` as root (installs the lab's host packages)")


def run(argv: Sequence[str], *, check: bool = True, input: str | None = None, timeout: float | None = 600,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise LabError quoting the command and its stderr."""
    try:
        res = subprocess.run(list(argv), capture_output=True, text=True, input=input, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise LabError(f"command timed out after {timeout}s: {' '.join(argv)}",
                       "see the lab's logs; `embassy lab down` removes what was built") from None
    if check and res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-8:]
        raise LabError(f"command failed ({res.returncode}): {' '.join(argv)}\n  " + "\n  ".join(tail),
                       "fix the cause above, then `embassy lab down` and `embassy lab up` again")
    return res


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: with the PID, it names a process uniquely over the boot."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])


def proc_of(pid: int) -> Proc:
    st = start_time(pid)
    if st is None:
        raise LabError(f"process {pid} exited right after it started", "see the lab's logs under the lab folder")
    return Proc(pid=pid, start_time=st)


def alive(proc: Proc | None) -> bool:
    if proc is None:
        return False
    if start_time(proc.pid) != proc.start_time:
        return False
    try:  # a zombie is not alive
        return "State:\tZ" not in Path(f"/proc/{proc.pid}/status").read_text()
    except OSError:
        return False


def stop(proc: Proc | None, grace: float = 10.0, *, signalled: bool = False) -> None:
    """SIGTERM the recorded process (unless the caller already did: `signalled`), wait up to `grace` seconds, then
    SIGKILL. Never another PID. A second SIGTERM is not harmless: systemd-nspawn takes it as "terminate now" and
    kills its container's processes instead of letting the container power off."""
    if not alive(proc):
        return
    assert proc is not None
    if not signalled:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(proc.pid)
        if not alive(proc):
            return
        time.sleep(0.05)
    if alive(proc):
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        for _ in range(100):
            _reap(proc.pid)
            if not alive(proc):
                return
            time.sleep(0.05)


def _reap(pid: int) -> None:
    # Our own children must be waited for, or they stay zombies.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock file: two `lab up` (or two image builds) never run at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_private(path: Path, text: str) -> None:
    """Write a secret readable by its owner only (0600), from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    create_private(path, text.encode(), how="replace")


INOTIFY_INSTANCES = Path("/proc/sys/fs/inotify/max_user_instances")
# Each booted host's systemd takes inotify instances from root's one budget (the containers share root's
# uid): the kernel's default of 128 lets about two labs boot; past it a host boots "degraded" (its
# systemd-ask-password-wall.path fails). 1024 is what container managers (LXD, Incus) recommend.
MIN_INOTIFY_INSTANCES = 1024


def ensure_inotify_instances(say: Callable[[str], None], minimum: int = MIN_INOTIFY_INSTANCES) -> None:
    """Raise the machine's inotify instance limit to `minimum` when it is lower (never lowers it)."""
    current = int(INOTIFY_INSTANCES.read_text())
    if current < minimum:
        INOTIFY_INSTANCES.write_text(f"{minimum}\n")
        say(f"fs.inotify.max_user_instances {current} -> {minimum} (every lab host's systemd needs some)")
