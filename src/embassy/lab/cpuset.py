"""Pin a lab's processes to CPUs (cgroup v1 cpuset), so that a benchmark's parts do not share a core.

The lab's containers run in cgroup folders of their own in the `systemd` and `unified` hierarchies
(hosts.start: there is no systemd on the host, so no scope or service to set `AllowedCPUs=` on). On
these machines the cpuset controller sits alone in a v1 hierarchy (/sys/fs/cgroup/cpuset) that
neither the host nor the containers' systemd manages: a process moved there keeps its CPUs, and
every process it forks later inherits them. Moving every process of a container once pins the whole
container, services it starts afterwards included (e.g. a standby's postgres restarted mid-run).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from embassy.lab.system import LabError

CPUSET_ROOT = Path("/sys/fs/cgroup/cpuset")
PASSES = 10  # a process forked by a not-yet-moved parent while we move is caught by the next pass


def available(root: Path = CPUSET_ROOT) -> bool:
    return (root / "cpuset.cpus").is_file() and (root / "cgroup.procs").is_file()


def _procs(folder: Path) -> set[int]:
    try:
        return {int(p) for p in (folder / "cgroup.procs").read_text().split()}
    except OSError:
        return set()


def _move(pid: int, folder: Path) -> None:
    # A process that exited meanwhile (ESRCH) or a kernel thread (EINVAL) is simply not moved.
    with contextlib.suppress(ProcessLookupError, OSError):
        (folder / "cgroup.procs").write_text(f"{pid}\n")


def _make(folder: Path, cpus: str, mems: str) -> None:
    # v1 cpuset: a folder takes processes only once its cpus and mems are set (its parent's too).
    folder.mkdir(exist_ok=True)
    (folder / "cpuset.mems").write_text(mems)
    (folder / "cpuset.cpus").write_text(cpus)


def release(top: Path, root: Path = CPUSET_ROOT) -> None:
    """Move every process under `top` back to the root cpuset (all CPUs), then remove the folders."""
    if not top.is_dir():
        return
    folders = sorted((Path(d) for d, _, _ in os.walk(top)), key=lambda p: len(p.parts), reverse=True)
    for folder in folders:
        for _ in range(PASSES):
            pids = _procs(folder)
            if not pids:
                break
            for pid in pids:
                _move(pid, root)
        try:
            folder.rmdir()
        except OSError as exc:
            raise LabError(f"cpuset {folder} could not be removed: {exc}",
                           f"move its processes to {root}/cgroup.procs, then rmdir it") from None


@contextlib.contextmanager
def pinned(top: Path, groups: Mapping[str, tuple[str, Callable[[], set[int]]]],
           root: Path = CPUSET_ROOT) -> Iterator[dict[str, Path]]:
    """Pin process groups to CPUs while the block runs: groups maps a name to (cpus, e.g. "1", and a
    function listing the group's PIDs now). Every process goes back to all CPUs afterwards, also on error."""
    if not available(root):
        raise LabError(f"no cgroup v1 cpuset hierarchy at {root}",
                       "mount it (`mount -t cgroup -o cpuset cgroup /sys/fs/cgroup/cpuset`) or run without pinning")
    release(top, root)  # what a crashed earlier run left behind
    mems = (root / "cpuset.mems").read_text().strip()
    _make(top, (root / "cpuset.cpus").read_text().strip(), mems)
    folders = {}
    try:
        for name, (cpus, _) in groups.items():
            folders[name] = top / name
            _make(folders[name], cpus, mems)
        for _ in range(PASSES):
            moved = 0
            for name, (_, list_pids) in groups.items():
                stray = list_pids() - _procs(folders[name])
                for pid in stray:
                    _move(pid, folders[name])
                moved += len(stray)
            if not moved:
                break
        yield folders
    finally:
        release(top, root)


def pids_of(folder: Path) -> set[int]:
    """The processes a cpuset folder holds now."""
    return _procs(folder)


def cpus_allowed(pid: int) -> set[int]:
    return os.sched_getaffinity(pid)


def parse_cpus(text: str) -> set[int]:
    """The CPUs of a cpuset list, e.g. "0-1,3" -> {0, 1, 3}."""
    cpus: set[int] = set()
    for part in filter(None, text.strip().split(",")):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus
