"""`embassy verify` names the very object pgBackRest verify or restic check found damaged.

The adversary: a host that damages a stored object and hopes the check stays vague ("the repo") or
names another object, so that auditors look in the wrong place, or that the first WAL segment's abort
(pgBackRest names no file there) passes for something else. The lines below follow pgBackRest 2.45's and
restic 0.14's output formats (src/command/verify/verify.c; restic's checker), as seen on the lab.
"""

from __future__ import annotations

import json

from embassy.replication import verify

SEG1 = "000000010000000000000001-2f0a8c5b7d3e41f69a0b1c2d3e4f5a6b7c8d9e0f.zst"
SEG2 = "000000010000000000000002-8e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b.zst"
PACK = "3c5b2e1f" + "0123456789abcdef" * 3 + "01234567"


def test_a_bad_wal_segment_or_backup_file_is_named_from_verify_output() -> None:
    wal = (f"P00   INFO: verify command begin 2.45: --exec-id=1-ab --log-level-console=info --stanza=home\n"
           f"P01  ERROR: [028]: invalid result 15-1/0000000100000000/{SEG2}: [29] zst error: Data corruption detected\n"
           "P00   INFO: Results:\n  archiveId: 15-1, total WAL checked: 9, total valid WAL: 8\n"
           "    missing: 0, checksum invalid: 0, size invalid: 0, other: 1\n")
    assert verify.bad_file(wal) == f"15-1/0000000100000000/{SEG2}"
    backup = ("P01  ERROR: [028]: invalid checksum '20261207-014512F/pg_data/global/1260.zst'\n"
              "  backup: 20261207-014512F, status: invalid, total files checked: 980, total valid files: 979\n")
    assert verify.bad_file(backup) == "20261207-014512F/pg_data/global/1260.zst"
    diff = "P01  ERROR: [028]: invalid size 20261207-014512F_20261207-020000D/pg_data/base/1/1259.zst\n"
    assert verify.bad_file(diff) == "20261207-014512F_20261207-020000D/pg_data/base/1/1259.zst"
    assert verify.bad_file("P00   INFO: verify command end: completed successfully\n") is None


def test_restic_names_the_damaged_pack_by_its_id() -> None:
    out = ("using temporary cache in /tmp/restic-check-cache-1\ncreate exclusive lock for repository\n"
           "load indexes\ncheck all packs\ncheck snapshots, trees and blobs\nread all data\n"
           f"pack {PACK}: Pack ID does not match, want 3c5b2e1f, got 9ab1c2d3\n"
           "Fatal: repository contains errors\n")
    assert verify.bad_pack(out) == PACK
    assert verify.bad_pack("Fatal: repository contains errors\n") is None
    got = "9b06d040aa238297e697cac24dfd6b2245be3474c90519295dae62127" + "0" * 7
    seen = f"read all data\nPack ID does not match, want {PACK}, got {got}\n[0:00] 100.00%  2 / 2 packs\n"
    assert verify.bad_pack(seen) == PACK  # restic 0.14 on the lab: the wanted id, never the hash it got
    assert verify.bad_pack(f"snapshot {PACK[:8]} not found\n") is None  # a short id is not a pack name


def test_a_short_pack_id_is_resolved_only_when_unique() -> None:
    out = "read all data\nPack ID does not match, want 3c5b2e1f, got 9ab1c2d3\nFatal: repository contains errors\n"
    other = "3c5b2e1e" + "f" * 56
    assert verify.bad_pack(out, lambda: [other, PACK, "junk"]) == PACK
    assert verify.bad_pack(out, lambda: [PACK, "3c5b2e1f" + "0" * 56]) is None  # ambiguous: named no further
    assert verify.bad_pack(out) is None


def test_the_segment_whose_header_verify_reads_is_the_first_of_the_only_archive() -> None:
    listing = {".": {"type": "path"}, "15-1": {"type": "path"}, "15-1/0000000100000000": {"type": "path"},
               f"15-1/0000000100000000/{SEG2}": {"type": "file"}, f"15-1/0000000100000000/{SEG1}": {"type": "file"},
               "15-1/0000000100000000/000000010000000000000002.00000028.backup": {"type": "file"},
               "15-1/0000000100000001": {"type": "path"},
               "15-1/0000000100000001/000000010000000100000000-" + "a" * 40 + ".zst": {"type": "file"}}
    assert verify.header_read_segment(json.dumps(listing)) == f"15-1/0000000100000000/{SEG1}"
    two = {**listing, "15-2/0000000200000000/000000020000000000000009-" + "b" * 40 + ".zst": {"type": "file"}}
    assert verify.header_read_segment(json.dumps(two)) is None  # two archives: which one failed is not known
    for junk in ("", "[1]", "{\"15-1\": 1}", "[" * 50_000):
        assert verify.header_read_segment(junk) is None
