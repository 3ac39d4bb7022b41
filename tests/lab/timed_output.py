"""Run a command as a user would, and time when each of its stderr lines arrived (issue 26: no silent minutes).

A harden or deploy run must never leave its output (a file, a pipe: here a pipe) silent for more than
progress's promise; the gaps are measured from the start, between lines, and to the end.
"""

from __future__ import annotations

import itertools
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from embassy.progress import HEARTBEAT_SECONDS

MAX_SILENCE_SECONDS = 30  # the promise; heartbeats fall due after HEARTBEAT_SECONDS, well inside it
assert HEARTBEAT_SECONDS < MAX_SILENCE_SECONDS


def run_timed(argv: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
              timeout: float = 1800) -> tuple[subprocess.CompletedProcess[str], float]:
    """(the finished process, with all its stdout and stderr; the longest silence on stderr in seconds)."""
    proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    stdout: list[str] = []
    reader = threading.Thread(target=lambda: stdout.append(proc.stdout.read() if proc.stdout else ""), daemon=True)
    reader.start()
    started = time.monotonic()
    times, lines = [started], []
    for line in proc.stderr:
        times.append(time.monotonic())
        lines.append(line)
    try:
        proc.wait(timeout=max(1.0, timeout - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    times.append(time.monotonic())
    reader.join(timeout=30)
    gap = max(b - a for a, b in itertools.pairwise(times))
    return subprocess.CompletedProcess(list(argv), proc.returncode, "".join(stdout), "".join(lines)), gap
