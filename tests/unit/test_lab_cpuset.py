"""CPU pinning with cgroup v1 cpusets (embassy.lab.cpuset): on the machine's real cpuset hierarchy, with
processes of the test's own; everything is moved back and removed at the end."""

from __future__ import annotations

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
            time.sleep(0.2)
            later = _children(shell.pid)
            assert later and all(os.sched_getaffinity(p) == {0} for p in later)
        assert os.sched_getaffinity(shell.pid) == everything
        assert not top.exists()
    finally:
        shell.kill()
        shell.wait()
        cpuset.release(top)
