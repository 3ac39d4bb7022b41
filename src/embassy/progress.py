"""Progress of the long runs (`embassy harden`, `embassy deploy`, and the drill's phases that run them).

No silent minutes: on a terminal a live Rich display (one row per host: tasks or operations done, changed,
failed, the current one, elapsed time); when the output is a file or a pipe, plain lines, and never more
than HEARTBEAT_SECONDS without one (a heartbeat naming what runs, for how long, and each host's counts).

Events come from the tools' own hooks, never from their text: ansible-runner's `event_handler` (in
harden's child) and pyinfra's state callbacks (`pyinfra --config` with src/embassy/pyinfra_progress.py).
Both children run inside the target's namespace; they write events as JSON lines to a pipe the parent
opened and handed down by number (EMBASSY_PROGRESS_FD). The parent folds them into a Board and shows it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape

Say = Callable[[str], None]
Clock = Callable[[], float]
Event = Mapping[str, Any]

# The promise is a line at least every 30 s; a heartbeat falls due 20 s after the last line, and the
# ticker looks every TICK_SECONDS, so a loaded machine has 10 s of slack before the promise breaks.
HEARTBEAT_SECONDS = 20.0
TICK_SECONDS = 1.0
FD_ENV = "EMBASSY_PROGRESS_FD"
# Ansible's per-host results (loop items and async polls are parts of one task, not tasks).
ANSIBLE_STATUS = {"runner_on_ok": "ok", "runner_on_failed": "failed", "runner_on_skipped": "skipped",
                  "runner_on_unreachable": "unreachable"}


def clock_text(seconds: float) -> str:
    """1m05s, 42s: how long something has run, for a human."""
    whole = int(seconds)
    return f"{whole // 60}m{whole % 60:02d}s" if whole >= 60 else f"{whole}s"


# --------------------------------------------------------------------------- the board (pure, no I/O)


@dataclass
class HostCount:
    done: int = 0
    changed: int = 0
    failed: int = 0
    total: int | None = None  # known for pyinfra (its operations are planned first), not for Ansible

    def text(self) -> str:
        done = f"{self.done}/{self.total}" if self.total else str(self.done)
        return f"{done} ({self.changed} changed{f', {self.failed} failed' if self.failed else ''})"


@dataclass
class Board:
    """What runs now: the phase, the current play and task (or operation), and each host's counts."""

    unit: str = "tasks"  # tasks (Ansible) | operations (pyinfra)
    phase: str = ""
    started: float = 0.0
    play: str = ""
    task: str = ""
    tasks: int = 0  # tasks or operations started in this phase
    total_tasks: int | None = None
    hosts: dict[str, HostCount] = field(default_factory=dict)

    def begin(self, phase: str, hosts: list[str], now: float, unit: str = "tasks") -> None:
        self.unit, self.phase, self.started = unit, phase, now
        self.play, self.task, self.tasks, self.total_tasks = "", "", 0, None
        self.hosts = {h: HostCount() for h in hosts}

    def host(self, name: str) -> HostCount:
        return self.hosts.setdefault(name, HostCount())

    def apply(self, event: Event) -> str | None:
        """Fold one event in; return a line worth printing at once (a play starts, a host fails), else None."""
        kind = event.get("kind")
        if kind == "play":
            self.play = str(event.get("name") or "")
            return f"play '{self.play}'" if self.play else None
        if kind == "task":
            self.task, self.tasks = str(event.get("name") or "?"), self.tasks + 1
            if isinstance(event.get("total"), int):
                self.total_tasks = event["total"]
            for name, total in (event.get("totals") or {}).items():
                self.host(str(name)).total = int(total)
            return None
        if kind == "host":
            return self._result(str(event.get("host")), str(event.get("status")), str(event.get("task") or self.task))
        return None

    def _result(self, name: str, status: str, task: str) -> str | None:
        count = self.host(name)
        count.done += 1
        count.changed += status == "changed"
        if status in ("failed", "unreachable"):
            count.failed += 1
            return f"{name}: {status} at '{task}'"
        return None

    def summary(self, now: float, *, ended: bool = False) -> str:
        """One line: what runs, for how long, where it is, and each host's counts (or how it ended)."""
        where = f"{self.unit[:-1]} {self.tasks}{f'/{self.total_tasks}' if self.total_tasks else ''}"
        if ended:
            state = f"done in {clock_text(now - self.started)}, {self.tasks} {self.unit[:-1] if self.tasks == 1 else self.unit}"
        else:
            state = clock_text(now - self.started) + (f", {where} '{self.task}'" if self.task else ", starting")
        hosts = "; ".join(f"{name} {count.text()}" for name, count in self.hosts.items())
        return f"{self.phase or 'running'}: {state}" + (f"; per host: {hosts}" if hosts else "")


def from_ansible(event: Event) -> dict[str, Any] | None:
    """One ansible-runner event as a progress event (a play, a task, a host's result), else None."""
    name, data = event.get("event"), event.get("event_data") or {}
    if name == "playbook_on_play_start":
        return {"kind": "play", "name": data.get("play") or data.get("name") or ""}
    if name == "playbook_on_task_start":
        return {"kind": "task", "name": data.get("task") or data.get("name") or "?"}
    if name in ANSIBLE_STATUS and data.get("host"):
        res: dict[str, Any] = data["res"] if isinstance(data.get("res"), dict) else {}
        status = ANSIBLE_STATUS[str(name)]
        if status == "ok" and res.get("changed"):
            status = "changed"
        if status == "failed" and data.get("ignore_errors"):
            status = "ok"
        return {"kind": "host", "host": data["host"], "status": status, "task": data.get("task") or ""}
    return None


# --------------------------------------------------------------------------- the heartbeat (pure)


class Heartbeat:
    """When a plain line falls due: `interval` seconds after the last line printed (any line)."""

    def __init__(self, clock: Clock, interval: float = HEARTBEAT_SECONDS) -> None:
        self.clock, self.interval = clock, interval
        self.last = clock()

    def printed(self) -> None:
        self.last = self.clock()

    def due(self) -> bool:
        return self.clock() - self.last >= self.interval

    def wait(self) -> float:
        """Seconds until the next heartbeat falls due (0 when due)."""
        return max(0.0, self.last + self.interval - self.clock())


# --------------------------------------------------------------------------- showing it


class Progress:
    """Plain lines through `say`: what the run says, failures at once, and a heartbeat when silent.

    Thread-safe: events arrive on a reader thread, heartbeats on a ticker thread, messages on the caller's."""

    def __init__(self, say: Say, *, clock: Clock = time.monotonic, interval: float = HEARTBEAT_SECONDS) -> None:
        self._say, self.clock = say, clock
        self.board = Board()
        self.heartbeat = Heartbeat(clock, interval)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> Progress:
        self.heartbeat.printed()  # the caller has just said what starts
        self._ticker = threading.Thread(target=self._tick_loop, name="progress-heartbeat", daemon=True)
        self._ticker.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)

    def say(self, message: str) -> None:
        with self._lock:
            self._say(message)
            self.heartbeat.printed()

    def begin(self, phase: str, hosts: list[str], unit: str = "tasks") -> None:
        with self._lock:
            self.board.begin(phase, hosts, self.clock(), unit)
            self.shown()

    def end(self) -> None:
        """The phase is over: one line of its outcome per host."""
        with self._lock:
            if self.board.phase:
                self.say(self.board.summary(self.clock(), ended=True))
                self.board.phase = ""

    def event(self, event: Event) -> None:
        with self._lock:
            if event.get("kind") == "phase":
                self.end()
                self.begin(str(event.get("name") or "?"), [str(h) for h in event.get("hosts") or []],
                           str(event.get("unit") or "tasks"))
                return
            line = self.board.apply(event)
            if line:
                self.say(line)
            self.shown()

    def tick(self) -> str | None:
        """Print a heartbeat when one is due; returns it (for tests: no sleeping, the clock is given)."""
        with self._lock:
            if not self.heartbeat.due():
                return None
            line = "… " + self.board.summary(self.clock()) if self.board.phase else "… still running"
            self.say(line)
            return line

    def shown(self) -> None:
        """Refresh a live display (none here)."""

    def _tick_loop(self) -> None:
        while not self._stop.wait(min(TICK_SECONDS, self.heartbeat.wait() or TICK_SECONDS)):
            self.tick()


class LiveProgress(Progress):
    """On a terminal: a Rich live display, one row per host, refreshed twice a second; no heartbeat lines
    (the display's elapsed time moves by itself). Messages print above it."""

    def __init__(self, say: Say, console: Console, *, clock: Clock = time.monotonic) -> None:
        from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        super().__init__(say, clock=clock)
        self.console = console
        self.display = RichProgress(TextColumn("{task.description}"), BarColumn(bar_width=24),
                                    TextColumn("{task.fields[counts]}"), TimeElapsedColumn(),
                                    TextColumn("[dim]{task.fields[current]}"), console=console, transient=True,
                                    refresh_per_second=2)
        self.rows: dict[str, Any] = {}

    def __enter__(self) -> LiveProgress:
        self.display.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.display.stop()

    def tick(self) -> str | None:
        return None

    def begin(self, phase: str, hosts: list[str], unit: str = "tasks") -> None:
        with self._lock:
            for row in self.rows.values():
                self.display.remove_task(row)
            self.rows = {}
            self.board.begin(phase, hosts, self.clock(), unit)
            self.rows[""] = self.display.add_task(f"[bold]{escape(phase)}", total=None, counts="", current="")
            for host in hosts:
                self.rows[host] = self.display.add_task(f"  {escape(host)}", total=None, counts="", current="")
            self.shown()

    def shown(self) -> None:
        board = self.board
        if "" not in self.rows:
            return
        where = f"{board.unit[:-1]} {board.tasks}{f'/{board.total_tasks}' if board.total_tasks else ''}"
        self.display.update(self.rows[""], total=board.total_tasks, completed=board.tasks, counts=where,
                            current=escape(board.task[:60]))
        for name, count in board.hosts.items():
            if name not in self.rows:
                self.rows[name] = self.display.add_task(f"  {escape(name)}", total=None, counts="", current="")
            self.display.update(self.rows[name], total=count.total, completed=count.done, counts=escape(count.text()),
                                current="")


def reporter(say: Say, console: Console | None = None) -> Progress:
    """A live display when `console` is a terminal, else plain lines and heartbeats through `say`."""
    if console is not None and console.is_terminal and not console.is_dumb_terminal:
        return LiveProgress(say, console)
    return Progress(say)


# --------------------------------------------------------------------------- the pipe between the processes


def emitter(environ: Mapping[str, str] | None = None) -> Callable[[Event], None]:
    """In a child: write events to the fd the parent named (EMBASSY_PROGRESS_FD); a no-op without one.

    The fd is made non-inheritable at once: no grandchild (ssh masters that outlive the run) keeps the
    pipe open, so the parent sees its end when the child ends. A failed write never fails the run."""
    number = (environ if environ is not None else os.environ).get(FD_ENV, "")
    if not number.isdigit():
        return lambda _event: None
    fd = int(number)
    try:
        os.set_inheritable(fd, False)
    except OSError:
        return lambda _event: None
    lock = threading.Lock()

    def emit(event: Event) -> None:
        line = (json.dumps(dict(event), default=str) + "\n").encode()
        with lock, suppress(OSError):
            os.write(fd, line)

    return emit


@contextmanager
def event_pipe(progress: Progress) -> Iterator[tuple[int, dict[str, str]]]:
    """A pipe for a child's events: yields (the fd to pass down, its environment entry); a reader thread
    feeds each JSON line to `progress` until the child's end closes it. Lines that are not an event are
    dropped (the pipe carries nothing else)."""
    read_fd, write_fd = os.pipe()
    reader = threading.Thread(target=_read_events, args=(read_fd, progress), name="progress-events", daemon=True)
    reader.start()
    try:
        yield write_fd, {FD_ENV: str(write_fd)}
    finally:
        os.close(write_fd)  # the child holds its own copy; EOF comes when it ends
        reader.join(timeout=10)


def _read_events(fd: int, progress: Progress) -> None:
    with os.fdopen(fd, "rb") as stream:
        for raw in stream:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if isinstance(event, dict):
                progress.event(event)
