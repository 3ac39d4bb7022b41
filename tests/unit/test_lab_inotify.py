"""The lab raises the machine's inotify instance limit when its hosts would not boot under it, never lowers it."""

from __future__ import annotations

from pathlib import Path

import pytest

from embassy.lab import system


@pytest.mark.parametrize(("before", "after", "said"), [("128\n", "1024\n", 1), ("8192\n", "8192\n", 0),
                                                         ("1024\n", "1024\n", 0)])
def test_the_limit_is_raised_to_the_minimum_and_never_lowered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              before: str, after: str, said: int) -> None:
    limit = tmp_path / "max_user_instances"
    limit.write_text(before)
    monkeypatch.setattr(system, "INOTIFY_INSTANCES", limit)
    messages: list[str] = []
    system.ensure_inotify_instances(messages.append)
    assert limit.read_text() == after and len(messages) == said
    assert not said or "128 -> 1024" in messages[0]
