"""Keys and passphrases are created once, private from their first byte, and never rewritten."""

from __future__ import annotations

from pathlib import Path

from embassy.replication.privatefile import create_private


def test_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "key"
    assert create_private(path, b"first") is True
    assert path.stat().st_mode & 0o777 == 0o600
    assert create_private(path, b"second") is False  # a racing writer keeps the first value
    assert path.read_bytes() == b"first"
