"""A host nation's hands on a lab vault's storage: SeaweedFS's filer, below the S3 layer and its locks.

The filer HTTP port has no authentication and ignores Object Lock (notes/dataplane.md): what a nation
holding the disks can do. Every request runs inside the vault's own lab namespace, and every change
made here is undone by the same test (bytes put back, entries moved back), so the lab stays usable.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

from embassy.lab.state import LabState, VaultState
from embassy.model import DEBIAN_RELEASES
from embassy.replication import pgmajor


def archive_id(lab: LabState) -> str:
    """pgBackRest's archive id of home's cluster: its PostgreSQL major, then 1 (15-1 on bookworm, 17-1 on trixie)."""
    release = {suite: n for n, suite in DEBIAN_RELEASES.items()}[lab.suite]
    return f"{pgmajor.pg_major(release)}-1"


class Filer:
    def __init__(self, lab: LabState, embassy: str) -> None:
        self.vault: VaultState = lab.vault(embassy)
        self.base = f"http://{self.vault.address}:8888"
        self.root = f"/buckets/{self.vault.bucket}"
        self.archive_id = archive_id(lab)  # where home's WAL lies in a pgBackRest repo
        self._aside: dict[str, tuple[str, bytes]] = {}  # path -> (where its original entry is kept, its bytes)

    def _curl(self, *args: str, data: bytes | None = None) -> bytes:
        done = subprocess.run(["ip", "netns", "exec", self.vault.netns, "curl", "-sS", "--max-time", "30", "--fail", *args],
                              input=data, capture_output=True, timeout=60, check=False)
        if done.returncode != 0:
            raise AssertionError(f"filer {args}: {done.stderr.decode()[-300:]}")
        return done.stdout

    def entries(self, folder: str) -> list[dict]:
        """The entries of a folder (paths relative to the bucket)."""
        got = json.loads(self._curl("-H", "Accept: application/json", f"{self.base}{self.root}/{folder.strip('/')}/?limit=10000"))
        return got.get("Entries") or []

    def latest_version_file(self, key: str) -> str:
        """The filer path of the newest stored version of an S3 object (versioned bucket: KEY.versions/v_<id>)."""
        versions = self.entries(f"{key}.versions")
        assert versions, f"no versions of {key}"
        return max(versions, key=lambda e: e["Mtime"])["FullPath"]

    def read(self, path: str) -> bytes:
        return self._curl(f"{self.base}{path}")

    def write(self, path: str, data: bytes) -> None:
        """Put `data` at `path`. A filer write drops the entry's S3 metadata (its Object Lock among it), so the
        first write over an existing entry moves that entry aside, whole; writing its own bytes back later
        puts the entry itself back, lock included, and the lab is as it was."""
        kept = self._aside.get(path)
        if kept is not None and data == kept[1]:
            self._curl("-X", "DELETE", f"{self.base}{path}")
            self.move(kept[0], path)
            del self._aside[path]
            return
        if kept is None:
            try:
                original = self.read(path)
            except AssertionError:  # a new entry: nothing to keep
                original = None
            if original is not None:
                spot = f"{self.root}/aside-{secrets.token_hex(6)}"
                self.move(path, spot)
                self._aside[path] = (spot, original)
        self._curl("-X", "PUT", "--data-binary", "@-", f"{self.base}{path}", data=data)

    def delete(self, path: str) -> None:
        self._curl("-X", "DELETE", f"{self.base}{path}")

    def move(self, src: str, dst: str) -> None:
        self._curl("-X", "POST", f"{self.base}{dst}?mv.from={src}")

    def data_dir(self) -> Path:
        return Path(self.vault.data_dir)


def flip_middle_byte(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0xFF
    return bytes(out)


def flip_byte_at(data: bytes, offset: int) -> bytes:
    """The bytes with the one at `offset` (counted from the end when negative) inverted."""
    out = bytearray(data)
    out[offset] ^= 0xFF
    return bytes(out)
