"""PostgreSQL's major version on a host, and where Debian's packaging puts it: the one place that knows.

Debian ships one PostgreSQL major per release: 12 (bookworm) carries 15, 13 (trixie) carries 17. Nothing else
in the project names a major. Two questions, two sources, both read on the host itself:
- a deploy, before PostgreSQL is installed, asks which major the host's Debian release carries
  (`for_release`, fed with the release the host's own /etc/os-release names);
- code that works on an installed host (a restore, the restore test, the standby's hold, a re-key) uses the
  major installed there (`installed_major` of /usr/lib/postgresql): exactly one, or it refuses to guess.
Neither comes from the stack's setting: a lab built with EMBASSY_LAB_DEBIAN, or a host not yet replaced after
the stack moved to another release, runs what its own disk says.

Host-side too (uploaded to /opt/embassy/replication/ with the restore test): stdlib only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

PG_MAJOR_OF_DEBIAN = {12: 15, 13: 17}  # the PostgreSQL each Debian release's archive carries
LIB = "/usr/lib/postgresql"  # Debian's per-major binaries: /usr/lib/postgresql/<major>/bin
LIST_INSTALLED = f"ls -1 {LIB}"  # what `installed_major` reads, run on the host
CLUSTER = "main"


class UnknownMajor(ValueError):
    """No single PostgreSQL major can be named: the message says what was found."""


def pg_major(debian_release: int) -> int:
    """The PostgreSQL major Debian `debian_release` carries (12 → 15, 13 → 17)."""
    if type(debian_release) is not int or debian_release not in PG_MAJOR_OF_DEBIAN:  # not True, 13.0, "13"
        raise UnknownMajor(f"Debian {debian_release!r} is not a release the deploys support "
                           f"(known: {', '.join(f'{d} → PostgreSQL {m}' for d, m in PG_MAJOR_OF_DEBIAN.items())})")
    return PG_MAJOR_OF_DEBIAN[debian_release]


def installed_major(names: Iterable[str]) -> int:
    """The one major installed, from the entries of /usr/lib/postgresql; none or several: UnknownMajor
    (several would be a host halfway through an upgrade: which cluster is meant is not for this code to guess)."""
    majors = sorted({int(n.strip()) for n in names if n.strip().isdigit()})
    if len(majors) != 1:
        found = ", ".join(map(str, majors)) or "none"
        raise UnknownMajor(f"{'no PostgreSQL installed' if not majors else 'several PostgreSQL majors installed'} "
                           f"(found: {found}); expected exactly one")
    return majors[0]


def local_major(lib: str | None = None) -> int:
    """The major installed on this machine (host-side code), from `lib` (LIB); UnknownMajor says what it found."""
    try:
        return installed_major(os.listdir(lib or LIB))
    except FileNotFoundError:
        return installed_major([])


@dataclass(frozen=True)
class Postgres:
    """One major's cluster `main` as Debian's postgresql-common lays it out."""

    major: int

    @property
    def packages(self) -> list[str]:
        return [f"postgresql-{self.major}", f"postgresql-client-{self.major}"]

    @property
    def bin(self) -> str:
        return f"{LIB}/{self.major}/bin"

    @property
    def data(self) -> str:
        return self.home(CLUSTER)

    @property
    def conf_dir(self) -> str:
        return f"/etc/postgresql/{self.major}/{CLUSTER}"

    @property
    def conf_d(self) -> str:
        return f"{self.conf_dir}/conf.d"

    @property
    def hba(self) -> str:
        return f"{self.conf_dir}/pg_hba.conf"

    @property
    def service(self) -> str:
        return f"postgresql@{self.major}-{CLUSTER}"

    def home(self, name: str) -> str:
        """A folder beside the cluster's data, in the major's own tree (scratch clusters, received WAL)."""
        return f"/var/lib/postgresql/{self.major}/{name}"


def for_release(debian_release: int) -> Postgres:
    return Postgres(pg_major(debian_release))


def installed(listing: str) -> Postgres:
    """The Postgres of a host, from the output of LIST_INSTALLED run there."""
    return Postgres(installed_major(listing.split()))
