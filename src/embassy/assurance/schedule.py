"""The restore tests' schedule: a systemd calendar expression (the timer's OnCalendar=), read by systemd itself.

The embassy host's timer fires by systemd's reading of the expression, so the controller asks the same
parser (`systemd-analyze calendar`) rather than a parser of its own that could disagree with it: when the
next run after a given time is due (for "overdue"), and whether an expression is one at all (for config
validation). Times are read in UTC, as the embassy hosts keep their clocks; an expression may name its own
timezone (`Mon *-*-* 03:00 Europe/Tallinn`). The shorthands (`hourly` … `yearly`) need no systemd-analyze.

The adversary here is whoever wants a missing restore test to go unnoticed: with the schedule approximated as
weekly, a daily schedule could skip six days unseen. Now a test is overdue when the schedule's next run after
the last record is more than the slack ago.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import re
import shutil
import subprocess

ANALYZE = "systemd-analyze"
TIMEOUT = 10.0
# systemd's calendar shorthands, and the longest wait each allows between two runs
SHORTHANDS = {"minutely": 60, "hourly": 3600, "daily": 86400, "weekly": 7 * 86400, "monthly": 31 * 86400,
              "quarterly": 92 * 86400, "semiannually": 183 * 86400, "yearly": 366 * 86400, "annually": 366 * 86400}
_ELAPSE = re.compile(r"^\s*(?:Next elapse|Iter\. #\d+):\s*(?:\w{3} )?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:\.\d+)? UTC\s*$")
_NEVER = re.compile(r"^\s*Next elapse:\s*never\s*$")


class ScheduleInvalid(ValueError):
    """Not a schedule systemd would run: the reason, and what to do."""

    def __init__(self, reason: str, hint: str) -> None:
        super().__init__(reason)
        self.reason, self.hint = reason, hint


def shorthand(expression: str) -> int | None:
    """The period of a shorthand (case as systemd reads it: lowercase only), else None."""
    return SHORTHANDS.get(expression.strip())


def elapses(expression: str, after: dt.datetime, count: int = 2) -> list[dt.datetime]:
    """The next `count` times the expression fires after `after` (UTC), as systemd computes them; fewer when it
    stops firing (a date in the past, `*-02-30`). ScheduleInvalid when systemd refuses it or is not there."""
    base = int(after.astimezone(dt.UTC).timestamp())
    return list(_elapses(expression.strip(), base, count))


@functools.lru_cache(maxsize=256)
def _elapses(expression: str, base: int, count: int) -> tuple[dt.datetime, ...]:
    tool = shutil.which(ANALYZE)
    if tool is None:
        raise ScheduleInvalid(f"'{expression}' cannot be checked: {ANALYZE} is not installed on this machine",
                              f"install systemd's {ANALYZE} here (Debian: systemd), or use a shorthand: "
                              + ", ".join(s for s in SHORTHANDS if s != "annually"))
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TZ": "UTC", "LC_ALL": "C", "SYSTEMD_COLORS": "0",
           "SYSTEMD_PAGER": ""}
    try:
        done = subprocess.run([tool, "calendar", f"--iterations={count}", f"--base-time=@{base}", "--", expression],
                              capture_output=True, text=True, timeout=TIMEOUT, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ScheduleInvalid(f"'{expression}' could not be checked: {ANALYZE}: {exc}",
                              f"run `{ANALYZE} calendar '{expression}'` to see why") from None
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()
        raise ScheduleInvalid(f"'{expression}' is not a systemd calendar expression ({reason[-1] if reason else ''})",
                              "give an OnCalendar= expression such as weekly, daily, 'Mon *-*-* 03:00' or "
                              "'*-*-* 00/6:00' (man systemd.time; check it with `systemd-analyze calendar EXPR`)")
    found: list[dt.datetime] = []
    for line in done.stdout.splitlines():
        if _NEVER.match(line):
            break
        got = _ELAPSE.match(line)
        if got:
            found.append(dt.datetime.strptime(got.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.UTC))
    return tuple(found)


def check(expression: str, now: dt.datetime | None = None) -> None:
    """Config validation: systemd reads it, and it fires again and again from now (a schedule, not a date)."""
    if shorthand(expression) is not None:
        return
    if len(elapses(expression, now or dt.datetime.now(dt.UTC), 2)) < 2:
        raise ScheduleInvalid(f"'{expression}' does not repeat: systemd would run it at most once more",
                              "give a repeating expression such as weekly or 'Sun *-*-* 02:00'")


def due_after(expression: str, last: dt.datetime) -> dt.datetime | None:
    """The run the schedule calls for next after `last` (None: it never fires again)."""
    period = shorthand(expression)
    if period is not None and shutil.which(ANALYZE) is None:  # a shorthand's period, at most
        return last + dt.timedelta(seconds=period)
    nxt = elapses(expression, last, 1)
    return nxt[0] if nxt else None


def standing(expression: str, last: dt.datetime, now: dt.datetime,
             slack: dt.timedelta) -> tuple[dt.datetime | None, bool]:
    """The run the schedule calls for next after `last`, and whether it is more than `slack` late at `now`
    (overdue). A schedule that never fires again after `last` has ended: overdue, as nothing will test this
    embassy any more."""
    due = due_after(expression, last)
    return due, due is None or now > due + slack
