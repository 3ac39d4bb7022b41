"""Small pyinfra operations the deploys share: a command guarded by a check read when the op runs.

pyinfra 3 runs an operation's generator at execution time, so the check sees the host as the earlier
operations left it; when the check passes the op yields nothing and counts as "no change".
"""

from __future__ import annotations

import shlex
from collections.abc import Generator

from pyinfra import host
from pyinfra.api import operation
from pyinfra.facts.server import Command


def _holds(check: str) -> bool:
    # The fact must never fail (a missing binary on the first run means "not yet"): fold it into yes/no.
    return host.get_fact(Command, f"if ( {check} ) >/dev/null 2>&1; then echo yes; else echo no; fi") == "yes"


@operation()
def ensure(check: str, command: str) -> Generator[str, None, None]:
    """Run `command` unless `check` succeeds on the host."""
    if _holds(check):
        host.noop(f"already done: {check}")
        return
    yield command


def as_user(user: str, argv: str) -> str:
    """A shell command run as `user` (runuser: no sudo needed, no password, no login shell)."""
    return f"runuser -u {user} -- sh -c {shlex.quote(argv)}"
