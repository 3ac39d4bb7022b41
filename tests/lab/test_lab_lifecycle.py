"""`embassy lab up|down|status`: idempotent up, clear refusals, full teardown (also half-way), second up.

The session lab (fixture `lab`) stays up for the other tests; the teardown tests use a second lab id.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from embassy.lab import image, lifecycle, network
from embassy.lab.hosts import cgroup_dirs
from embassy.lab.state import MAX_LAB_ID, LabState, Phase, cgroup_name, lab_dir, lab_range, load_state, netns_prefix
from embassy.lab.system import alive
from embassy.model import load_stack
from tests.lab.conftest import EMBASSY, ROOT, STACK, TEST_LAB_ID, skip_unless_lab_possible
from tests.lab.test_lab_hosts import pretty_name_of_image

DEVELOPER_LABS = range(0, 3)  # the developers' own labs (EMBASSY_LAB_ID 0, 1, 2): never taken as a second lab


@pytest.fixture(scope="module")
def other_lab_id() -> Iterator[int]:
    """A second lab id for the teardown tests: free now, and held for this module.

    Not derived from the session's id (an offset overflows the id range or lands on a lab of another run):
    the highest id in range that no lab uses (no folder, no namespaces) and whose test-session lock this
    module can take. Holding that lock keeps any other test session off it until the module ends (the
    session fixture takes the same lock for its own lab)."""
    skip_unless_lab_possible()
    lab_dir(TEST_LAB_ID).parent.mkdir(parents=True, exist_ok=True)
    for candidate in range(MAX_LAB_ID, DEVELOPER_LABS.stop - 1, -1):
        if candidate == TEST_LAB_ID:
            continue
        lock = (lab_dir(candidate).parent / f"lab-{candidate}.tests.lock").open("a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        if lab_dir(candidate).exists() or network.lab_namespaces(netns_prefix(candidate)):
            lock.close()  # a lab (a developer's, or one a crashed run left) that is not ours to take down
            continue
        try:
            yield candidate
        finally:
            lock.close()
        return
    pytest.fail(f"no free lab id between {DEVELOPER_LABS.stop} and {MAX_LAB_ID} for a second lab")


def cli(*args: str, lab_id: int, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "EMBASSY_LAB_ID": str(lab_id), **(env or {})}
    argv = [sys.executable, EMBASSY, *args]  # the console script, run by the venv's interpreter
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=environ, timeout=900)


def test_up_on_a_lab_that_is_up_says_so_and_changes_nothing(lab: LabState) -> None:
    state_path = Path(lab.dir) / "state.json"
    before = (state_path.read_text(), state_path.stat().st_mtime_ns, sorted(network.lab_namespaces(netns_prefix(lab.lab_id))))
    res = cli("lab", "up", "--stack", STACK, lab_id=lab.lab_id)
    assert res.returncode == 0, res.stderr
    assert "already up" in res.stderr and "nothing changed" in res.stderr
    after = (state_path.read_text(), state_path.stat().st_mtime_ns, sorted(network.lab_namespaces(netns_prefix(lab.lab_id))))
    assert after == before


def test_status_json_reports_hosts_and_vaults(lab: LabState) -> None:
    res = cli("lab", "status", "--stack", STACK, "--json", lab_id=lab.lab_id)
    assert res.returncode == 0, res.stderr
    status = json.loads(res.stdout)
    assert status["up"] is True
    assert [(h["name"], h["address"], h["ssh"], h["systemd"]) for h in status["hosts"]] == \
        [(h.name, h.address, True, "running") for h in lab.hosts]
    assert [(v["embassy"], v["endpoint"], v["reachable"]) for v in status["vaults"]] == \
        [(v.embassy, v.endpoint, True) for v in lab.vaults]
    assert all(h["rss_kib"] > 1024 for h in status["hosts"])
    assert {h["os"] for h in status["hosts"]} == {pretty_name_of_image(lab)}  # each host's own os-release
    if not os.environ.get(image.SUITE_ENV):  # the stack's default release: every host runs Debian 13
        assert {h["os"] for h in status["hosts"]} == {"Debian GNU/Linux 13 (trixie)"}


def test_status_of_another_stack_says_down(lab: LabState) -> None:
    res = cli("lab", "status", "--stack", "production", "--json", lab_id=lab.lab_id)
    assert res.returncode == 1
    assert json.loads(res.stdout)["up"] is False


def test_up_of_another_stack_on_the_same_lab_is_refused(lab: LabState) -> None:
    res = cli("lab", "up", "--stack", "production", lab_id=lab.lab_id)
    assert res.returncode == 2
    assert "runs stack 'rehearsal'" in res.stderr and "HINT:" in res.stderr
    assert load_state(lab.lab_id) == lab


def test_not_root_is_refused_with_a_hint(monkeypatch: pytest.MonkeyPatch, other_lab_id: int) -> None:
    """A real unprivileged user runs `lab up` and is refused (exit 2, a HINT), wherever the clone lies.

    Running the console script as that user needs the clone (and the interpreter) to be readable by it,
    which a clone under /root (0700) is not. So a child of this test process drops to nobody and calls
    the CLI in process, with the stack file copied to a folder nobody can read. The same call is made
    once before, as root but told it is not, so that every module it needs is imported already."""
    skip_unless_lab_possible()  # needs root to switch to an unprivileged user
    import shutil
    import tempfile

    from typer.testing import CliRunner

    from embassy.cli import app

    def lab_up() -> Any:
        return CliRunner().invoke(app, ["lab", "up", "--stack", STACK], env={"EMBASSY_LAB_ID": str(other_lab_id)})

    project = Path(tempfile.mkdtemp(prefix="embassy-not-root-"))
    try:
        project.chmod(0o755)
        for name in ("Pulumi.yaml", f"Pulumi.{STACK}.yaml"):
            (project / name).write_text((ROOT / name).read_text())
        with monkeypatch.context() as patch:  # the rehearsal: imports everything the refusal needs
            patch.chdir(project)
            patch.setattr(os, "geteuid", lambda: 65534)
            assert lab_up().exit_code == 2
        report = _as_nobody(lab_up, project)
    finally:
        shutil.rmtree(project)
    assert report["uid"] == 65534
    assert report["code"] == 2, report
    assert report["stderr"].startswith("error: the lab needs root") and "HINT:" in report["stderr"], report
    assert not lab_dir(other_lab_id).exists()


def _as_nobody(invoke: Callable[[], Any], cwd: Path) -> dict[str, Any]:
    """Run `invoke` (a CliRunner call) in a forked child that became nobody (uid/gid 65534, no groups)."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe and never returns to pytest
        code = 1
        try:
            os.close(read_end)
            os.chdir(cwd)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            result = invoke()
            os.write(write_end, json.dumps({"uid": os.geteuid(), "code": result.exit_code,
                                            "stderr": result.stderr, "exception": repr(result.exception)}).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report: dict[str, Any] = json.loads(pipe.read() or b"{}")
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and report, report
    return report


def test_missing_host_tools_point_to_make_lab_deps(other_lab_id: int) -> None:
    skip_unless_lab_possible()
    res = cli("lab", "up", "--stack", STACK, lab_id=other_lab_id, env={"PATH": str(Path(EMBASSY).parent)})
    assert res.returncode == 2
    assert "missing host tools" in res.stderr and "HINT: run `make lab-deps`" in res.stderr
    assert not lab_dir(other_lab_id).exists()


def test_bad_lab_id_is_refused() -> None:
    res = cli("lab", "status", "--stack", STACK, lab_id=0, env={"EMBASSY_LAB_ID": "seven"})
    assert res.returncode == 2
    assert "EMBASSY_LAB_ID" in res.stderr and "HINT:" in res.stderr


def _traces(lab_id: int) -> dict[str, object]:
    """Everything of a lab that can be seen on the machine."""
    prefix = netns_prefix(lab_id)
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    routes = subprocess.run(["ip", "route", "show", "type", "blackhole"], capture_output=True, text=True).stdout
    return {
        "namespaces": network.lab_namespaces(prefix),
        "etc_netns": sorted(p.name for p in network.ETC_NETNS.glob(f"{prefix}*")) if network.ETC_NETNS.is_dir() else [],
        "mounts": [m for m in mounts if m.startswith(str(lab_dir(lab_id)) + "/") or f"/{prefix}" in m],
        "cgroups": [str(d) for d in cgroup_dirs(cgroup_name(lab_id)) if d.exists()],
        "route": str(lab_range(lab_id)) in routes,
        "folder": lab_dir(lab_id).exists(),
        "nspawn": sorted(str(p) for p in Path("/run/systemd/nspawn").glob(f"*/emb{lab_id}-*")),
    }


NOTHING = {"namespaces": [], "etc_netns": [], "mounts": [], "cgroups": [], "route": False, "folder": False, "nspawn": []}


def _processes(state: LabState) -> list[object]:
    return [p for p in [state.mirror, *(h.nspawn for h in state.hosts), *(v.weed for v in state.vaults)] if p is not None]


def test_down_removes_everything_and_a_second_up_works(lab: LabState, other_lab_id: int) -> None:
    # A second lab beside the session's: two labs run at once without touching each other.
    lifecycle.down(other_lab_id)
    assert _traces(other_lab_id) == NOTHING
    try:
        for _ in range(2):
            res = cli("lab", "up", "--stack", STACK, lab_id=other_lab_id)
            assert res.returncode == 0, res.stderr
            state = load_state(other_lab_id)
            assert state is not None and state.phase is Phase.UP and lifecycle.is_up(state)
            status = json.loads(cli("lab", "status", "--stack", STACK, "--json", lab_id=other_lab_id).stdout)
            assert status["up"] and all(h["systemd"] == "running" for h in status["hosts"])
            assert all(v["reachable"] for v in status["vaults"])
            traces = _traces(other_lab_id)
            assert traces["route"] and len(traces["namespaces"]) == 2 + len(state.hosts) + len(state.vaults)  # type: ignore[arg-type]
            procs = _processes(state)
            assert len(procs) == 1 + len(state.hosts) + len(state.vaults) and all(alive(p) for p in procs)

            res = cli("lab", "down", "--stack", STACK, lab_id=other_lab_id)
            assert res.returncode == 0, res.stderr
            assert _traces(other_lab_id) == NOTHING
            assert not any(alive(p) for p in procs)
        # The session's lab was not touched by any of it.
        assert lifecycle.is_up(lab)
    finally:
        lifecycle.down(other_lab_id)


class Boom(Exception):
    pass


def test_half_built_lab_is_refused_then_fully_removed(lab: LabState, other_lab_id: int) -> None:
    lifecycle.down(other_lab_id)
    dep = load_stack(STACK, ROOT)

    def fail_at_second_host(message: str) -> None:
        if message.startswith("host enclave-de:"):
            raise Boom(message)

    try:
        with pytest.raises(Boom):
            lifecycle.up(dep, other_lab_id, say=fail_at_second_host)
        state = load_state(other_lab_id)
        assert state is not None and state.phase is Phase.BUILDING
        started = _processes(state)
        assert len(started) >= 1 + len(state.vaults) + 1  # the mirror, every vault and the home host run
        assert all(alive(p) for p in started)

        res = cli("lab", "up", "--stack", STACK, lab_id=other_lab_id)
        assert res.returncode == 1 and "half-built" in res.stderr and "lab down" in res.stderr
        assert json.loads(cli("lab", "status", "--stack", STACK, "--json", lab_id=other_lab_id).stdout)["up"] is False

        res = cli("lab", "down", "--stack", STACK, lab_id=other_lab_id)
        assert res.returncode == 0, res.stderr
        assert _traces(other_lab_id) == NOTHING
        assert not any(alive(p) for p in started)
        assert lifecycle.is_up(lab)
    finally:
        lifecycle.down(other_lab_id)


def test_mirror_is_refreshed_when_its_package_list_grows(lab: LabState, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from embassy.lab import mirror
    from tests.lab.conftest import ssh

    res = cli("lab", "mirror", "--stack", STACK, lab_id=lab.lab_id)
    assert res.returncode == 0 and "up to date" in res.stderr, res.stderr
    # The same list plus one package (jq): the running lab gets a new mirror, served at the same URL.
    grown = tmp_path / "mirror-packages.txt"
    grown.write_text(mirror.PACKAGES_FILE.read_text() + "jq\n")
    monkeypatch.setattr(mirror, "PACKAGES_FILE", grown)
    current = load_state(lab.lab_id)
    assert current is not None and lifecycle.mirror_outdated(current)
    assert lifecycle.refresh_mirror(lab.lab_id, STACK) is True
    assert lifecycle.refresh_mirror(lab.lab_id, STACK) is False  # a second run changes nothing
    after = load_state(lab.lab_id)
    assert after is not None and lifecycle.is_up(after) and after.mirror != current.mirror
    host = lab.hosts[0].name
    ssh(lab, host, "sudo apt-get update -qq")
    assert after.mirror_url in ssh(lab, host, "apt-cache policy jq").stdout
