"""`embassy ARGS` in this process (Typer's CliRunner), answered as a finished process would be (exit code, stdout,
stderr apart): what the CLI prints and exits with, without a new interpreter's imports for each call (about 0.7 s
of CPU each, measured). For tests of the CLI's behaviour; a test about the process itself (signals, pipes, a
fresh interpreter's imports) still starts one."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def embassy(*args: str, cwd: Path = ROOT, env: Mapping[str, str | None] | None = None,
            drop: tuple[str, ...] = (), stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI run in `cwd` with `env` over this process's environment (None removes a variable), the variables
    whose names start with one of `drop` removed; the environment and the working folder are restored after,
    whatever the command exported. An exception the CLI let escape is raised here (a process would have shown
    a traceback and exit 1), so a crash never passes as an exit code."""
    from typer.testing import CliRunner

    from embassy.cli import app

    kept = dict(os.environ)
    changes: dict[str, str | None] = {k: None for k in os.environ if drop and k.startswith(drop)}
    changes.update(env or {})
    try:
        with contextlib.chdir(cwd):
            got = CliRunner().invoke(app, list(args), env=changes, input=stdin)
    finally:
        os.environ.clear()
        os.environ.update(kept)
    if got.exception is not None and not isinstance(got.exception, SystemExit):
        raise got.exception
    return subprocess.CompletedProcess(["embassy", *args], got.exit_code, got.stdout, got.stderr)
