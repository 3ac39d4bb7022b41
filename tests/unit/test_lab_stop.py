"""`system.stop` sends one SIGTERM in all: `lab down` signals every container first, then waits for each.

A second SIGTERM is not harmless: systemd-nspawn takes it as "terminate now" and kills the container's processes
instead of letting it power off. The child here counts the SIGTERMs it gets and, like a container powering off,
takes a moment to exit after the first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from embassy.lab import system

CHILD = """
import signal, sys, time
seen = []
def on_term(signum, frame):
    seen.append(signum)
    with open(sys.argv[1], "a") as log:
        log.write("TERM\\n")
signal.signal(signal.SIGTERM, on_term)
open(sys.argv[1], "w").close()
while not seen:
    time.sleep(0.01)
time.sleep(0.5)  # powering off
"""


def _started(log: Path) -> subprocess.Popen[bytes]:
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(log)])
    while not log.exists():
        time.sleep(0.01)
    return child


def test_a_signalled_process_gets_no_second_sigterm_and_exits_on_its_own(tmp_path: Path) -> None:
    log = tmp_path / "signals"
    child = _started(log)
    proc = system.proc_of(child.pid)
    os.kill(child.pid, signal.SIGTERM)
    system.stop(proc, grace=10, signalled=True)
    assert child.wait(timeout=10) == 0  # it exited by itself, not by SIGKILL
    assert log.read_text().splitlines() == ["TERM"]


def test_stop_signals_once_itself_when_the_caller_did_not(tmp_path: Path) -> None:
    log = tmp_path / "signals"
    child = _started(log)
    system.stop(system.proc_of(child.pid), grace=10)
    assert child.wait(timeout=10) == 0
    assert log.read_text().splitlines() == ["TERM"]
