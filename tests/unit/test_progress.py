"""Progress of harden and deploy (src/embassy/progress.py): the heartbeat, the board, the live display,
and the events from the real tools (pyinfra's state callbacks, ansible-runner's event handler) through a
real pipe. No test sleeps: the clock is given.

Adversaries: a run that goes quiet for minutes (a heartbeat must break every silence, whatever the tools
say or do not say); a tool upgrade that stops calling our hooks (the tests run the real pyinfra and the
real ansible-runner); a grandchild (an ssh master) that keeps the pipe open after the run has ended.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from embassy import deploy, harden, progress
from embassy.progress import Board, Heartbeat, LiveProgress, Progress, from_ansible

HOSTS = ["home", "enclave-de", "enclave-ie"]


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def plain(clock: Clock) -> tuple[Progress, list[tuple[float, str]]]:
    lines: list[tuple[float, str]] = []
    return Progress(lambda m: lines.append((clock.now, m)), clock=clock), lines


# --------------------------------------------------------------------------- the heartbeat


def test_heartbeat_falls_due_after_the_interval_since_the_last_line() -> None:
    clock = Clock()
    beat = Heartbeat(clock, interval=20)
    clock.now += 19.9
    assert not beat.due() and beat.wait() == pytest.approx(0.1)
    clock.now += 0.1
    assert beat.due() and beat.wait() == 0
    beat.printed()  # any line resets it
    clock.now += 10
    assert not beat.due() and beat.wait() == pytest.approx(10)


def test_a_silent_four_minutes_never_goes_30_s_without_a_line() -> None:
    """The ticker looks every second: step the clock as it would and count the gaps (from the start too)."""
    clock = Clock()
    shown, lines = plain(clock)
    start = clock.now
    shown.begin("harden: roles/site.yml", HOSTS)
    shown.event({"kind": "task", "name": "ssh : sshd drop-in"})
    for _ in range(240):
        clock.now += progress.TICK_SECONDS
        shown.tick()
    times = [start] + [t for t, _ in lines] + [clock.now]
    assert max(b - a for a, b in itertools.pairwise(times)) <= 30
    assert len(lines) >= 240 // 30
    heartbeat = lines[0][1]
    assert heartbeat.startswith("… harden: roles/site.yml: 20s, task 1 'ssh : sshd drop-in'"), heartbeat
    assert "home 0 (0 changed)" in heartbeat and "enclave-ie" in heartbeat
    assert lines[-1][1].startswith("… harden: roles/site.yml: 4m00s"), lines[-1]


def test_other_lines_put_the_heartbeat_off() -> None:
    """A run that talks needs no heartbeat: lines every 15 s leave nothing to add."""
    clock = Clock()
    shown, lines = plain(clock)
    shown.begin("deploy: home_state agent", HOSTS, unit="operations")
    for i in range(8):
        clock.now += 15
        shown.say(f"message {i}")
        assert shown.tick() is None
    assert [m for _, m in lines] == [f"message {i}" for i in range(8)]


def test_before_any_phase_the_heartbeat_still_says_something() -> None:
    clock = Clock()
    shown, _lines = plain(clock)
    clock.now += 25
    assert shown.tick() == "… still running"


# --------------------------------------------------------------------------- the board


def test_board_counts_per_host_and_names_failures_at_once() -> None:
    clock = Clock()
    shown, lines = plain(clock)
    shown.event({"kind": "phase", "name": "harden: roles/site.yml", "hosts": HOSTS})
    shown.event({"kind": "play", "name": "Harden every host"})
    shown.event({"kind": "task", "name": "os : sysctl"})
    shown.event({"kind": "host", "host": "home", "status": "changed"})
    shown.event({"kind": "host", "host": "enclave-de", "status": "ok"})
    shown.event({"kind": "host", "host": "enclave-ie", "status": "unreachable"})
    assert [m for _, m in lines] == ["play 'Harden every host'", "enclave-ie: unreachable at 'os : sysctl'"]
    assert shown.board.hosts["home"].text() == "1 (1 changed)"
    assert shown.board.hosts["enclave-ie"].text() == "1 (0 changed, 1 failed)"
    clock.now += 65
    shown.event({"kind": "phase", "name": "harden: lynis-after", "hosts": HOSTS})  # ends the play's phase
    assert lines[-1][1] == ("harden: roles/site.yml: done in 1m05s, 1 task; per host: home 1 (1 changed); "
                            "enclave-de 1 (0 changed); enclave-ie 1 (0 changed, 1 failed)")
    assert shown.board.phase == "harden: lynis-after" and shown.board.hosts["home"].done == 0


def test_board_shows_planned_operation_totals() -> None:
    board = Board()
    board.begin("deploy: standby", [], 0.0, unit="operations")
    board.apply({"kind": "task", "name": "Install PostgreSQL", "total": 40, "totals": {"enclave-de": 25, "home": 0}})
    board.apply({"kind": "host", "host": "enclave-de", "status": "changed"})
    assert board.summary(42.0) == ("deploy: standby: 42s, operation 1/40 'Install PostgreSQL'; per host: "
                                   "enclave-de 1/25 (1 changed); home 0 (0 changed)")


def test_ansible_events_become_progress_events() -> None:
    assert from_ansible({"event": "playbook_on_play_start", "event_data": {"play": "Harden"}}) == \
        {"kind": "play", "name": "Harden"}
    assert from_ansible({"event": "playbook_on_task_start", "event_data": {"task": "ssh : drop-in"}}) == \
        {"kind": "task", "name": "ssh : drop-in"}
    ok = {"event": "runner_on_ok", "event_data": {"host": "home", "task": "t", "res": {"changed": True}}}
    assert from_ansible(ok) == {"kind": "host", "host": "home", "status": "changed", "task": "t"}
    ignored = {"event": "runner_on_failed", "event_data": {"host": "home", "task": "t", "ignore_errors": True}}
    assert from_ansible(ignored)["status"] == "ok"  # type: ignore[index]
    assert from_ansible({"event": "runner_item_on_ok", "event_data": {"host": "home"}}) is None  # a loop item
    assert from_ansible({"event": "verbose", "stdout": "TASK [x] ***"}) is None  # text is never read


# --------------------------------------------------------------------------- terminal or file


def test_a_terminal_gets_the_live_display_a_file_gets_lines() -> None:
    terminal = Console(file=io.StringIO(), force_terminal=True, width=120)
    assert isinstance(progress.reporter(print, terminal), LiveProgress)
    for not_a_terminal in (Console(file=io.StringIO()), None):
        shown = progress.reporter(print, not_a_terminal)
        assert type(shown) is Progress


def test_live_display_has_a_row_per_host() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160)
    clock = Clock()
    live = LiveProgress(lambda m: console.print(m), console, clock=clock)
    with live:
        live.begin("deploy: home_state agent", ["home", "enclave-de"], unit="operations")
        live.event({"kind": "task", "name": "Install PostgreSQL", "total": 9, "totals": {"home": 9}})
        live.event({"kind": "host", "host": "home", "status": "changed"})
        assert live.tick() is None  # the display keeps time itself
        live.display.refresh()
        text = out.getvalue()
    assert "deploy: home_state agent" in text and "operation 1/9" in text and "Install PostgreSQL" in text
    assert "home" in text and "1/9 (1 changed)" in text and "enclave-de" in text


# --------------------------------------------------------------------------- the pipe, and the real tools


def collect() -> tuple[Progress, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []

    class Collect(Progress):
        def event(self, event: Any) -> None:
            events.append(dict(event))

    return Collect(lambda _m: None), events


def test_events_cross_the_pipe_and_a_lingering_grandchild_does_not_hold_it() -> None:
    """The child's emitter makes its fd non-inheritable: a grandchild that outlives it (as an ssh master
    does) must not keep the parent waiting for the pipe's end."""
    shown, events = collect()
    code = textwrap.dedent("""
        import subprocess
        from embassy.progress import emitter
        emit = emitter()
        emit({"kind": "task", "name": "one"})
        lingering = subprocess.Popen(["sleep", "30"], close_fds=False, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        print(lingering.pid, flush=True)
        emit({"kind": "host", "host": "home", "status": "ok"})
    """)
    started = time.monotonic()
    with progress.event_pipe(shown) as (fd, env):
        done = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, pass_fds=(fd,),
                              capture_output=True, text=True, timeout=60, check=False)
    os.kill(int(done.stdout), signal.SIGTERM)  # the sleep this test started, by its pid
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 20  # not the grandchild's 30 s
    assert events == [{"kind": "task", "name": "one"}, {"kind": "host", "host": "home", "status": "ok"}]


def test_without_a_pipe_the_emitter_does_nothing() -> None:
    progress.emitter({})({"kind": "task", "name": "x"})
    progress.emitter({progress.FD_ENV: "not-a-number"})({"kind": "task", "name": "x"})


def test_pyinfra_calls_our_callbacks_in_a_real_run(tmp_path: Path) -> None:
    """A real pyinfra run on @local, with the progress deploy first as `embassy deploy` gives it: the planned
    totals, each operation, each host's result (changed, then unchanged on a second run); its JSON results
    name only the deploy's own operations."""
    folder = tmp_path / "made"
    (tmp_path / "d.py").write_text(textwrap.dedent(f"""
        from pyinfra.operations import files, server
        files.directory(name="a folder", path="{folder}")
        server.shell(name="a command", commands=["true"])
    """))
    runs = []
    for _ in range(2):
        shown, events = collect()
        with progress.event_pipe(shown) as (fd, env):
            done = subprocess.run([deploy.pyinfra_bin(), "-y", "--json", "@local", str(deploy.progress_deploy()),
                                   "d.py"], cwd=tmp_path, env={**os.environ, **env, "PYINFRA_PROGRESS": "off"},
                                  pass_fds=(fd,), capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        result = deploy.parse_results(json.loads(done.stdout)).hosts[0]
        assert result.changed + result.unchanged == 2  # the progress deploy adds no operation
        runs.append(events)
    first, second = runs
    assert first[0] == {"kind": "task", "name": "a folder", "total": 2, "totals": {"@local": 2}}
    assert first[1:] == [{"kind": "host", "host": "@local", "status": "changed", "task": "a folder"},
                         {"kind": "task", "name": "a command"},
                         {"kind": "host", "host": "@local", "status": "changed", "task": "a command"}]
    assert second[1] == {"kind": "host", "host": "@local", "status": "ok", "task": "a folder"}


def test_ansible_runner_hands_its_events_to_the_handler(tmp_path: Path) -> None:
    """harden's event handler on a real ansible-runner run (an ad-hoc command on localhost, local connection):
    a task and each host's result arrive, and the events are still written (harden reads them after)."""
    import ansible_runner

    events: list[dict[str, Any]] = []
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "hosts").write_text("localhost ansible_connection=local\n")
    home = tmp_path / "ansible"
    runner = ansible_runner.run(private_data_dir=str(tmp_path), host_pattern="localhost",
                                module="ansible.builtin.command", module_args="true", quiet=True,
                                envvars={"ANSIBLE_HOME": str(home), "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
                                         "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
                                         "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"},
                                event_handler=harden._events_to(lambda e: events.append(dict(e))))
    assert runner.status == "successful", runner.stdout.read()
    assert events == [{"kind": "host", "host": "localhost", "status": "changed", "task": "ansible.builtin.command"}]
    assert any(e.get("event") == "runner_on_ok" for e in runner.events)


def test_deploy_run_shows_pyinfras_progress_and_ends_each_phase(tmp_path: Path) -> None:
    """`embassy.deploy.run` end to end on @local (a target whose clients run here): pyinfra's callbacks reach
    the parent through the pipe, and the phase's last line gives every host's counts, as its JSON does."""
    from embassy import model
    from tests.unit.test_targets import LocalTarget

    class Here(LocalTarget):
        inventory = "@local"

    (tmp_path / "d.py").write_text("from pyinfra.operations import server\n"
                                   "server.shell(name='a command', commands=['true'])\n")
    dep = model.load_stack("rehearsal", model.project_root())
    lines: list[str] = []
    result = deploy.run(Here(dep, tmp_path), tmp_path, deploys=["d.py"], say=lines.append)
    assert [(h.name, h.changed) for h in result.hosts] == [("@local", 1)]
    assert lines[0].startswith("pyinfra -y --json @local ") and lines[0].endswith("pyinfra_progress.py d.py")
    assert lines[-1].startswith("deploy: d: done in ") and lines[-1].endswith(
        ", 1 operation; per host: @local 1/1 (1 changed)"), lines


def test_the_progress_handler_is_installed_once_though_pyinfra_runs_the_file_per_host(tmp_path: Path) -> None:
    """pyinfra execs a deploy file once per host, with fresh globals (new classes each time): one handler only,
    else every event is sent once per host."""
    from pyinfra.api import Config, Inventory, State
    from pyinfra.context import ctx_state

    from embassy import pyinfra_progress

    source = Path(pyinfra_progress.__file__)
    code = compile(source.read_text(), str(source), "exec")
    state = State(Inventory((["a", "b", "c"], {})), Config())
    with ctx_state.use(state):
        for _host in range(3):
            exec(code, {"__file__": str(source), "__name__": "pyinfra_deploy"})
    assert sum(getattr(h, "embassy_progress", False) for h in state.callback_handlers) == 1
