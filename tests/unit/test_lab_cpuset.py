"""CPU pinning with cgroup v1 cpusets (embassy.lab.cpuset): on the machine's real cpuset hierarchy, with
processes of the test's own; everything is moved back and removed at the end."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from embassy.lab import cpuset
from embassy.lab.system import LabError


def test_without_a_cpuset_hierarchy_it_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(LabError) as err, cpuset.pinned(tmp_path / "top", {"a": ("0", set)}, root=tmp_path):
        pass
    assert str(tmp_path) in err.value.message and "cpuset" in err.value.message
    assert not (tmp_path / "top").exists()  # nothing changed


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(p) for p in (task / "children").read_text().split()}
    return found


def _affinities_of_later_children(pid: int, wait: float = 5.0) -> list[set[int]]:
    """The CPUs of the shell's children seen within `wait` s: a loaded machine may catch the shell between two
    sleeps (no child) or a child between the listing and the look (gone); both are waited past, not failed."""
    seen: list[set[int]] = []
    deadline = time.monotonic() + wait
    time.sleep(0.2)
    while not seen and time.monotonic() < deadline:
        for child in _children(pid):
            with contextlib.suppress(ProcessLookupError):
                seen.append(os.sched_getaffinity(child))
        time.sleep(0.05)
    return seen


@pytest.mark.skipif(os.geteuid() != 0 or not cpuset.available() or (os.cpu_count() or 1) < 2,
                    reason="needs root, a cgroup v1 cpuset hierarchy at /sys/fs/cgroup/cpuset and 2 CPUs")
def test_pinned_processes_and_their_later_children_keep_to_their_cpu_until_released() -> None:
    everything = set(range(os.cpu_count() or 1))
    # A shell that keeps forking: its children started after the pinning must inherit the CPU.
    shell = subprocess.Popen(["sh", "-c", "while :; do sleep 0.05; done"])
    top = cpuset.CPUSET_ROOT / f"embassy-unit-test-{os.getpid()}"
    try:
        with cpuset.pinned(top, {"only": ("0", lambda: {shell.pid})}) as folders:
            assert os.sched_getaffinity(shell.pid) == {0}
            assert shell.pid in cpuset.pids_of(folders["only"])
            later = _affinities_of_later_children(shell.pid)
            assert later and all(cpus == {0} for cpus in later)
        assert os.sched_getaffinity(shell.pid) == everything
        assert not top.exists()
    finally:
        shell.kill()
        shell.wait()
        cpuset.release(top)


def test_cpu_lists_parse_as_the_kernel_writes_them() -> None:
    assert cpuset.parse_cpus("1") == {1}
    assert cpuset.parse_cpus("0-1\n") == {0, 1}
    assert cpuset.parse_cpus("0-2,5,7-8") == {0, 1, 2, 5, 7, 8}
    with pytest.raises(ValueError):
        cpuset.parse_cpus("one")
