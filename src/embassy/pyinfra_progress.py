"""pyinfra's progress as events: a state callback handler, installed by running this file as a deploy.

`embassy deploy` runs `pyinfra -y --json INVENTORY …/pyinfra_progress.py DEPLOYS` with a pipe's fd in
EMBASSY_PROGRESS_FD (src/embassy/progress.py). pyinfra executes deploy files (for each host) after it has
initialised its state and before any operation runs; this one adds no operation, only the handler
(`state.add_callback_handler`, once), whose methods pyinfra then calls as each operation starts and ends.
(Not a --config file: pyinfra runs that before `State.init`, which resets the handlers.) Without the fd
(someone's own pyinfra run of this file) the handler writes nothing. Nothing here may fail a deploy:
every callback swallows its own errors.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from pyinfra.api.state import BaseStateCallback

from embassy.progress import Event, emitter

TIMINGS_ENV = "EMBASSY_PYINFRA_TIMINGS"  # a file: each operation's and fact's seconds (profiling), see TimingCallback


class ProgressCallback(BaseStateCallback):
    """Connections, each operation's start (with the planned totals), and each host's result."""

    embassy_progress = True  # the mark install() looks for

    def __init__(self, emit: Callable[[Event], None]) -> None:
        self.emit = emit
        self.totals_sent = False

    def host_connect_error(self, state: Any, host: Any, error: Any) -> None:  # type: ignore[override]
        self._safe(lambda: self.emit({"kind": "host", "host": host.name, "status": "unreachable",
                                      "task": "connect"}))

    def operation_start(self, state: Any, op_hash: Any) -> None:  # type: ignore[override]
        self._safe(lambda: self._start(state, op_hash))

    def operation_end(self, state: Any, op_hash: Any) -> None:  # type: ignore[override]
        self._safe(lambda: self._end(state, op_hash))

    def _start(self, state: Any, op_hash: str) -> None:
        event: dict[str, Any] = {"kind": "task", "name": _op_name(state, op_hash)}
        if not self.totals_sent:  # planned before the first operation runs: every host's operations
            self.totals_sent = True
            event["total"] = len(state.get_op_order())
            event["totals"] = {host.name: len(host.op_hash_order) for host in state.inventory}
        self.emit(event)

    def _end(self, state: Any, op_hash: str) -> None:
        name = _op_name(state, op_hash)
        for host in state.inventory:
            data = state.ops.get(host, {}).get(op_hash)
            if data is None:
                continue  # not an operation of this host
            meta = data.operation_meta
            if not meta.is_complete():
                continue
            status = ("changed" if meta.did_change() else "ok") if meta.did_succeed() else "failed"
            self.emit({"kind": "host", "host": host.name, "status": status, "task": name})

    @staticmethod
    def _safe(call: Callable[[], None]) -> None:
        with suppress(Exception):  # progress is never a reason for a deploy to fail
            call()


def _op_name(state: Any, op_hash: str) -> str:
    return ", ".join(sorted(state.get_op_meta(op_hash).names)) or "operation"


class TimingCallback(BaseStateCallback):
    """Where a deploy's seconds go (EMBASSY_PYINFRA_TIMINGS names a file): each operation on each host, and
    each fact pyinfra gathers (host, fact, seconds), as JSON lines. For profiling; off by default."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.started: dict[tuple[str, str], float] = {}
        self.write({"kind": "prepare", "at": time.time()})

    def write(self, record: dict[str, Any]) -> None:
        with suppress(Exception), open(self.path, "a") as fh:
            fh.write(json.dumps({"pid": os.getpid(), **record}, default=str) + "\n")

    def operation_start(self, state: Any, op_hash: Any) -> None:  # type: ignore[override]
        self.write({"kind": "op_start", "op": _op_name(state, op_hash), "at": time.time()})

    def operation_host_start(self, state: Any, host: Any, op_hash: Any) -> None:  # type: ignore[override]
        self.started[(host.name, op_hash)] = time.time()

    def operation_host_success(self, state: Any, host: Any, op_hash: Any, retry_count: int = 0) -> None:  # type: ignore[override]
        self._host_end(state, host, op_hash)

    def operation_host_error(self, state: Any, host: Any, op_hash: Any, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        self._host_end(state, host, op_hash)

    def _host_end(self, state: Any, host: Any, op_hash: str) -> None:
        with suppress(Exception):  # called before pyinfra marks the operation complete: whether it changed is not known
            start = self.started.pop((host.name, op_hash))
            self.write({"kind": "op", "host": host.name, "op": _op_name(state, op_hash), "start": start,
                        "seconds": round(time.time() - start, 3)})

    def fact(self, host: str, name: str, start: float) -> None:
        self.write({"kind": "fact", "host": host, "fact": name, "start": start, "seconds": round(time.time() - start, 3)})


def _time_facts(timing: TimingCallback) -> None:
    """Wrap pyinfra's one fact-gathering function (every fact of every host goes through it)."""
    from pyinfra.api import facts

    original = facts._get_fact
    if getattr(original, "embassy_timed", False):
        return

    def timed(state: Any, host: Any, cls: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.time()
        try:
            return original(state, host, cls, *args, **kwargs)
        finally:
            timing.fact(host.name, f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}", start)

    timed.embassy_timed = True  # type: ignore[attr-defined]
    facts._get_fact = timed


def install() -> None:
    """Add the handler to the state of the pyinfra run executing this file, once (it runs for each host)."""
    try:
        from pyinfra import state

        # pyinfra executes this file once per host, each time defining the classes anew: isinstance would not
        # recognise the handler an earlier host's run added (measured: every event sent once per host).
        if not any(getattr(h, "embassy_progress", False) for h in state.callback_handlers):
            state.add_callback_handler(ProgressCallback(emitter()))
            path = os.environ.get(TIMINGS_ENV)
            if path:
                timing = TimingCallback(path)
                state.add_callback_handler(timing)
                _time_facts(timing)
    except Exception:  # no pyinfra run (imported, not executed as a deploy): nothing to do
        pass


if __name__ != "embassy.pyinfra_progress":  # executed by pyinfra as a deploy file, not imported
    install()
