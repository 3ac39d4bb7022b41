"""Home's PostgreSQL settings that the replication cost bench (tests/bench/test_bench_dataplane.py) chose, and the
ones it must not touch. The adversary: a tuning change that buys home's tps by weakening what the README promises
(commits waiting on, or not waiting for, an embassy; WAL not archived) or quietly drops the compression."""

from __future__ import annotations

from embassy.replication import dataplane


def _settings(conf: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in conf.splitlines() if "=" in line and not line.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def test_home_compresses_full_page_images_with_lz4() -> None:
    assert _settings(dataplane.home_postgresql_conf("10.0.0.2"))["wal_compression"] == "lz4"


def test_replication_stays_asynchronous_and_every_segment_archived() -> None:
    home = _settings(dataplane.home_postgresql_conf("10.0.0.2"))
    assert not {"synchronous_commit", "synchronous_standby_names", "fsync", "full_page_writes"} & home.keys()
    archive = _settings(dataplane.archive_conf(60))
    assert archive["archive_mode"] == "on" and archive["archive_timeout"] == "60"
    assert archive["archive_command"] == "'pgbackrest --stanza=home archive-push %p'"


def test_archive_push_stays_asynchronous_and_zstd_compressed() -> None:
    conf = dataplane.pgbackrest_conf([], archive_async=True, pg_data="/var/lib/postgresql/15/main")
    assert "compress-type=zst" in conf.splitlines() and "archive-async=y" in conf.splitlines()
