"""The lab's pieces that need no root: the mirror's archive split and the syslog collector (on 127.0.0.1)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from embassy.lab import mirror

# As `apt-get install --print-uris` prints it ('URI' file size hash), one line per package.
_SEC = "http://deb.debian.org/debian-security/pool/updates/main/p/postgresql-15"
PRINT_URIS = (
    "'http://deb.debian.org/debian/pool/main/r/restic/restic_0.14.0-1%2bb5_amd64.deb' "
    "restic_0.14.0-1+b5_amd64.deb 8155680 SHA256:aa\n"
    f"'{_SEC}/postgresql-15_15.20-0%2bdeb12u1_amd64.deb' postgresql-15_15.20-0+deb12u1_amd64.deb 16 SHA256:bb\n"
    "'http://deb.debian.org/debian/pool/main/a/acct/acct_6.6.4-5%2bb1_amd64.deb' acct_1:6.6.4-5+b1_amd64.deb 80 SHA256:cc\n"
)


def test_downloads_are_sorted_by_the_archive_apt_fetched_them_from() -> None:
    assert mirror.archive_of_downloads(PRINT_URIS) == {
        "restic_0.14.0-1+b5_amd64.deb": "debian",
        "postgresql-15_15.20-0+deb12u1_amd64.deb": "debian-security",
        "acct_1%3a6.6.4-5+b1_amd64.deb": "debian",  # an epoch's colon, as the mirror names the file
    }
    assert mirror.archive_of_downloads("Reading package lists...\n") == {}


def test_hosts_apt_sources_name_both_archives() -> None:
    # Lynis (PKGS-7388) and unattended-upgrades both look for the security archive in the sources.
    assert mirror.apt_sources("http://10.87.3.2:8080").splitlines() == [
        "deb [trusted=yes] http://10.87.3.2:8080/debian/ ./",
        "deb [trusted=yes] http://10.87.3.2:8080/debian-security/ ./",
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_syslog_collector_keeps_each_peers_messages(tmp_path: Path) -> None:
    port, folder = _free_port(), tmp_path / "syslog"
    server = subprocess.Popen([sys.executable, "-m", "embassy.lab.syslog", "--bind", "127.0.0.1", "--port", str(port),
                               "--dir", str(folder)], stderr=subprocess.PIPE)
    try:
        for _ in range(100):  # bounded: 10 s for the server to listen
            try:
                sender = socket.create_connection(("127.0.0.1", port), timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("the collector did not listen within 10 s")
        long = "<13>Nov 28 10:00:01 home app: " + "x" * 100_000  # beyond the reader's buffer: kept whole
        sent = ["<13>Nov 28 10:00:00 home app: first", long, "<13>Nov 28 10:00:02 home app: last, unterminated"]
        with sender:
            sender.sendall("\n".join(sent).encode())
        log = folder / "127.0.0.1.log"
        for _ in range(100):
            if log.exists() and log.read_bytes().count(b"\n") == 3:
                break
            time.sleep(0.1)
        assert log.read_text().splitlines() == sent
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_syslog_collector_refuses_the_unspecified_address(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "embassy.lab.syslog", "--bind", "0.0.0.0", "--port", "5514",
                          "--dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "not the unspecified address" in res.stderr
