"""Plan a git ref without trusting its code: its program runs in a sandbox, the judging stays the reviewer's.

The adversary is whoever wrote the change under review: the ref's `stacks/` and `src/embassy` run (that is what
makes its plan), so they must not reach what the reviewer holds. As root, the reviewer's process starts
`unshare --net --mount --pid` (a fresh network namespace with only a loopback that is down, a private mount table,
a pid namespace that dies with its first process); inside it, `python -m embassy.review.sandbox` (the reviewer's
own code, run with -I) makes every mount read-only, mounts an empty scratch tmpfs on /tmp (HOME is /tmp/home),
/var/tmp and /dev/shm, hides the reviewer's home and /root under empty read-only tmpfs, binds the checkout and the
reviewer's virtualenv read-only into the scratch, sets resource limits (address space, CPU seconds, file size,
processes), drops to the unprivileged user (nobody, no groups, no_new_privs) and only then runs the ref's
`python -m embassy.plan` with a scrubbed environment. The parent bounds wall time and the size of what it prints,
and reads the plan as data.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pwd
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from embassy.errors import RefPlanFailed, SandboxUnavailable

USER = "nobody"
INNER_TREE = "/tmp/.checkout"
INNER_VENV = "/tmp/.venv"
INNER_HOME = "/tmp/home"
MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    seconds: float = 300.0  # wall clock; CPU seconds get the same bound
    memory: int = 2048 * MiB  # address space (RLIMIT_AS); the rehearsal plan needs 400-512 MiB of it (measured)
    output: int = 64 * MiB  # what the plan may print
    scratch: int = 256 * MiB  # the tmpfs on /tmp
    processes: int = 1024  # RLIMIT_NPROC of the sandbox user (threads count; so do its other processes)


def unavailable() -> str | None:
    """Why the sandbox cannot be made here, or None."""
    if os.geteuid() != 0:
        return "reviewing a git ref runs its code, and only root can make the sandbox it runs in (this user is not root)"
    missing = [t for t in ("unshare", "mount") if shutil.which(t) is None]
    if missing:
        return f"{', '.join(missing)} (util-linux) not found: the ref's code cannot be sandboxed"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return f"no user '{USER}' on this machine to run the ref's code as"
    return None


def describe(limits: Limits) -> str:
    return (f"run as user {USER} in a sandbox: no network, scrubbed environment, scratch home, read-only checkout, "
            f"{limits.seconds:.0f} s and {limits.memory // MiB} MiB of address space at most")


def plan_ref(tree: Path, stack: str, limits: Limits | None = None) -> dict[str, Any]:
    """The plan the program of the checkout at TREE makes for STACK, computed in the sandbox."""
    limits = limits or Limits()
    why = unavailable()
    if why:
        raise SandboxUnavailable(why)
    tree_path = str(Path(tree).resolve())
    spec: dict[str, Any] = {"tree": tree_path, "stack": stack, "venv": sys.prefix, "base": sys.base_prefix,
            "limits": asdict(limits),
            "hide": sorted({str(Path.home()), "/root"})}
    argv = [shutil.which("unshare") or "unshare", "--net", "--mount", "--pid", "--fork", "--kill-child",
            "--mount-proc", "--", sys.executable, "-I", "-m", "embassy.review.sandbox", json.dumps(spec)]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}, start_new_session=True)
    try:
        out, err, why_stopped = _collect(proc, limits, started)
    finally:  # SIGTERM (Terminated) or any error on our side: the sandbox goes too, before its checkout does
        if proc.poll() is None:
            _kill(proc)
            proc.wait()
    text = err.decode(errors="replace").replace(INNER_TREE, tree_path)
    if why_stopped:
        raise RefPlanFailed(f"planning stack '{stack}' of {tree_path} in the sandbox: {why_stopped}")
    if proc.returncode != 0:
        lines = text.strip().splitlines()
        errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
        detail = "; ".join(errors) if errors else (lines[-1] if lines else f"exit {proc.returncode}")
        raise RefPlanFailed(f"planning stack '{stack}' of {tree_path} failed in the sandbox: {detail}")
    try:
        plan = json.loads(out)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise RefPlanFailed(f"planning stack '{stack}' of {tree_path}: the program printed no plan") from None
    if not isinstance(plan, dict):
        raise RefPlanFailed(f"planning stack '{stack}' of {tree_path}: the program printed no plan")
    return plan


def _collect(proc: subprocess.Popen[bytes], limits: Limits, started: float) -> tuple[bytes, bytes, str]:
    """Read stdout (bounded) and stderr (its end) until exit or the deadline; kill the whole sandbox past either."""
    import selectors

    out, err = bytearray(), bytearray()
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    stopped = ""
    while sel.get_map():
        left = started + limits.seconds - time.monotonic()
        if left <= 0:
            stopped = f"still running after {limits.seconds:.0f} s: stopped"
            break
        for key, _ in sel.select(timeout=min(left, 1.0)):
            chunk = os.read(key.fd, 1 << 16)
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            buf: bytearray = key.data
            buf += chunk
            if buf is err and len(err) > 1 << 20:
                del err[: len(err) - (1 << 16)]  # keep the end: that is where the error is
        if len(out) > limits.output:
            stopped = f"printed more than {limits.output // MiB} MiB: stopped"
            break
    if stopped:
        _kill(proc)
    proc.wait()
    sel.close()
    if not stopped and proc.returncode < 0:
        stopped = f"killed by signal {-proc.returncode} (memory or CPU limit)"
    return bytes(out), bytes(err), stopped


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL unshare: --kill-child takes its child, the pid namespace's init, and with it every process inside."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 9)


# --------------------------------------------------------------------------- inside the namespaces (as root)

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
PR_SET_NO_NEW_PRIVS = 38
_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None,
           required: bool = True) -> None:
    rc = _libc.mount(source.encode() if source else None, target.encode(), fstype.encode() if fstype else None,
                     ctypes.c_ulong(flags), data.encode() if data else None)
    if rc != 0 and required:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def _mount_points() -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        points.append(point)
    return points


def _everything_read_only() -> None:
    for point in _mount_points():
        if point.startswith("/proc"):
            continue
        _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID, required=False)  # devices stay usable
    if os.statvfs("/").f_flag & os.ST_RDONLY == 0:
        raise OSError("the root filesystem stayed writable in the sandbox")


def _tmpfs(target: str, size: int, mode: str) -> None:
    _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode={mode}")


def _bind_read_only(fd: int, target: str) -> None:
    os.makedirs(target, exist_ok=True)
    _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
    _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _limits(limits: dict[str, Any]) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory"], limits["memory"]))
    cpu = int(limits["seconds"]) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["scratch"], limits["scratch"]))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"], limits["processes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _drop(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if os.getuid() != uid or os.geteuid() != uid:
        raise OSError("could not drop to the sandbox user")


def inside(spec: dict[str, Any]) -> None:
    """Runs as root in the fresh namespaces; never returns (execs the ref's planner as the sandbox user)."""
    user = pwd.getpwnam(USER)
    tree_fd = os.open(spec["tree"], os.O_RDONLY | os.O_DIRECTORY)
    venv_fd = os.open(spec["venv"], os.O_RDONLY | os.O_DIRECTORY)
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _everything_read_only()
    _tmpfs("/tmp", spec["limits"]["scratch"], "1777")
    for scratch in ("/var/tmp", "/dev/shm"):
        if os.path.isdir(scratch):
            _tmpfs(scratch, 16 * MiB, "1777")
    base = spec["base"]
    base_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    for hidden in spec["hide"]:
        if os.path.isdir(hidden) and hidden not in ("/", "/tmp"):
            _tmpfs(hidden, MiB, "0755")
            if base.startswith(hidden.rstrip("/") + "/"):  # the interpreter (pyenv under /root): back, read-only
                _bind_read_only(base_fd, base)
            _mount(None, hidden, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.close(base_fd)
    _bind_read_only(tree_fd, INNER_TREE)
    _bind_read_only(venv_fd, INNER_VENV)
    os.close(tree_fd)
    os.close(venv_fd)
    os.makedirs(INNER_HOME, mode=0o700)
    os.chown(INNER_HOME, user.pw_uid, user.pw_gid)
    os.chdir(INNER_TREE)
    _limits(spec["limits"])
    _drop(user.pw_uid, user.pw_gid)
    python = f"{INNER_VENV}/bin/python"
    env = {"PATH": f"{INNER_VENV}/bin:/usr/bin:/bin", "HOME": INNER_HOME, "TMPDIR": "/tmp", "LANG": "C.UTF-8",
           "PYTHONPATH": f"{INNER_TREE}/src", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
           "MPLCONFIGDIR": f"{INNER_HOME}/.mpl", "USER": USER, "LOGNAME": USER}
    os.execve(python, [python, "-m", "embassy.plan", "--root", INNER_TREE, "--stack", spec["stack"]], env)


def main() -> int:
    try:
        inside(json.loads(sys.argv[1]))
    except OSError as exc:
        print(f"error: the sandbox could not be made: {exc}", file=sys.stderr)
        return 2
    return 2  # not reached: inside() execs


if __name__ == "__main__":
    sys.exit(main())
