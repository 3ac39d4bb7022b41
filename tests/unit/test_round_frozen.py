"""A file register is copied once per round and every embassy's snapshot reads that copy at the register's
own path (a bind mount in a private mount namespace): what a snapshot holds is what was digested, even
when the live folder changes between the snapshots, and nobody else sees the copy."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from embassy.replication import digest
from embassy.replication import round as rnd

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a mount namespace needs root (the round runs as root)")


def test_every_snapshot_reads_the_frozen_copy_at_the_live_path(tmp_path: Path) -> None:
    live = tmp_path / "srv" / "registers" / "court-files"
    (live / "a").mkdir(parents=True)
    (live / "a" / "deed.txt").write_text("deed 1")
    (live / "index.txt").write_text("one")
    frozen = tmp_path / "state" / "frozen" / "court-files"
    rnd.freeze(str(live), frozen)
    frozen_digest = digest.files(frozen)
    assert frozen_digest == digest.files(live)
    (live / "index.txt").write_text("changed after the digest")  # a writer between two embassies' snapshots
    (live / "new.txt").write_text("new")
    # What a snapshot (here: a digest run the way restic is run) reads at the register's path is the copy.
    seen = subprocess.run(rnd.seen_at(frozen, str(live), ["python3", "-c",
                          "import json, sys; sys.path.insert(0, sys.argv[2]); from replication import digest; "
                          "print(json.dumps(digest.files(sys.argv[1])))", str(live),
                          str(Path(digest.__file__).parent.parent)]), capture_output=True, text=True, check=False)
    assert seen.returncode == 0, seen.stderr
    assert json.loads(seen.stdout) == frozen_digest
    assert digest.files(live) != frozen_digest and (live / "new.txt").exists()  # outside: the live folder
    rnd.freeze(str(live), frozen)  # the next round's copy replaces the last
    assert digest.files(frozen) == digest.files(live)
