"""The hosts' Debian release as one choice: the stack's `debian_release` picks the AMI name filter and the
lab image's suite; `lab status` reports what each host itself says it runs (os-release's PRETTY_NAME).

Adversaries: a stack that asks for a release the roles were never run on (refused, exit 2 with a HINT, not
an AMI filter that matches nothing or something unexpected); a host whose os-release is odd or missing (the
status says None, never a made-up name); a mirror list that serves one release's packages to another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
import pytest

from embassy import model
from embassy.errors import UserError
from embassy.infra import Embassy, EmbassyArgs
from embassy.infra.enclave import ami_name_filter
from embassy.lab import image, lifecycle, mirror
from embassy.plan import _digest

ROOT = Path(__file__).resolve().parents[2]

TRIXIE_OS_RELEASE = """PRETTY_NAME="Debian GNU/Linux 13 (trixie)"
NAME="Debian GNU/Linux"
VERSION_ID="13"
VERSION="13 (trixie)"
VERSION_CODENAME=trixie
DEBIAN_VERSION_FULL=13.8
ID=debian
HOME_URL="https://www.debian.org/"
"""


# --------------------------------------------------------------------------- os-release and lab status


def test_os_release_fields_follow_the_format() -> None:
    fields = image.os_release_fields(TRIXIE_OS_RELEASE)
    assert fields["PRETTY_NAME"] == "Debian GNU/Linux 13 (trixie)"
    assert fields["VERSION_CODENAME"] == "trixie" and fields["ID"] == "debian"
    # single quotes, escapes inside double quotes, comments and junk lines
    odd = "# PRETTY_NAME=\"commented\"\nPRETTY_NAME='My OS 1'\nNAME=\"A \\\"quoted\\\" name\"\nnot a field\n=x\n"
    assert image.os_release_fields(odd) == {"PRETTY_NAME": "My OS 1", "NAME": 'A "quoted" name'}


def test_status_output_splits_into_systemd_word_and_pretty_name() -> None:
    out = f"running\n{lifecycle.OS_RELEASE_MARK}\n{TRIXIE_OS_RELEASE}"
    assert lifecycle.split_status(out) == ("running", "Debian GNU/Linux 13 (trixie)")
    # degraded systemd, os-release present
    assert lifecycle.split_status(f"degraded\n{lifecycle.OS_RELEASE_MARK}\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n") \
        == ("degraded", "Debian GNU/Linux 12 (bookworm)")
    # no os-release on the host (cat failed): no name is invented
    assert lifecycle.split_status(f"running\n{lifecycle.OS_RELEASE_MARK}\n") == ("running", None)
    # the marker never came back (the command was cut short): nothing from systemd's word is taken for a name
    assert lifecycle.split_status("PRETTY_NAME=\"Fake\"\n") == ('PRETTY_NAME="Fake"', None)
    assert lifecycle.split_status("") == ("unknown", None)


# --------------------------------------------------------------------------- the stack's choice


def _with(dep: model.Deployment, **values: Any) -> dict[str, Any]:
    raw = dep.model_dump(mode="json", exclude={"stack"}, exclude_none=True)
    raw.update(values)
    return raw


def test_rehearsal_stack_defaults_to_trixie_and_still_accepts_12() -> None:
    dep = model.load_stack("rehearsal", ROOT)
    assert dep.debian_release == model.DEFAULT_DEBIAN_RELEASE == 13
    assert image.SUITE == "trixie"
    # A stack that still says 12 validates, boots bookworm AMIs and builds a bookworm lab.
    dep12 = model._from_values("rehearsal", _with(dep, debian_release=12), source="test")
    assert dep12.debian_release == 12
    assert image.suite_for(dep12.debian_release) == "bookworm"
    assert ami_name_filter(dep12.debian_release, "amd64") == "debian-12-amd64-*"


def test_no_stack_config_pins_an_older_release() -> None:
    # The default moved to 13: a stack file that still pins 12 would keep a supported-release stack on LTS.
    for config in sorted(ROOT.glob("Pulumi.*.yaml")):
        assert "debian_release: 12" not in config.read_text(), config.name


@pytest.mark.parametrize("value", [11, 14, "13", True, 13.0])
def test_an_unsupported_release_is_refused_with_a_hint(value: object) -> None:
    dep = model.load_stack("rehearsal", ROOT)
    with pytest.raises(model.ConfigInvalid) as caught:
        model._from_values("rehearsal", _with(dep, debian_release=value), source="test")
    err = caught.value
    assert err.code == 2
    assert [i.path for i in err.issues] == ["data-embassy:debian_release"]


def test_the_hint_names_the_supported_releases() -> None:
    dep = model.load_stack("rehearsal", ROOT)
    with pytest.raises(model.ConfigInvalid) as caught:
        model._from_values("rehearsal", _with(dep, debian_release=14), source="test")
    assert "12 (bookworm), 13 (trixie)" in caught.value.issues[0].hint


def test_ami_name_filter_is_the_debian_cloud_teams_naming() -> None:
    assert ami_name_filter(13, "amd64") == "debian-13-amd64-*"
    assert ami_name_filter(12, "arm64") == "debian-12-arm64-*"
    with pytest.raises(ValueError):
        ami_name_filter(14, "amd64")


def _hosts_ami(update: dict[str, Any]) -> tuple[pulumi.Output[str], str, str]:
    """(the first host's AMI, the trixie AMI's id, the bookworm AMI's id) for the rehearsal stack with `update`."""
    # The mocks answer getAmi with an id derived from the name filter: the instance's AMI tells which was asked.
    dep = model.load_stack("rehearsal", ROOT).model_copy(update=update)
    emb = dep.embassy("se")
    built = Embassy("se", EmbassyArgs(deployment=dep, embassy=emb, break_glass_external_id=pulumi.Output.secret("x")))
    trixie = "ami-" + _digest(emb.region, "debian-13-amd64-20260101-0000")[:17]
    bookworm = "ami-" + _digest(emb.region, "debian-12-amd64-20260101-0000")[:17]
    return built.enclave.hosts[0].ami, trixie, bookworm


@pytest.mark.usefixtures("pulumi_mocks")
@pulumi.runtime.test
def test_the_hosts_boot_trixie_by_default() -> pulumi.Output[Any]:
    ami, trixie, bookworm = _hosts_ami({})

    def check(got: str) -> None:
        assert got == trixie and got != bookworm

    return ami.apply(check)


@pytest.mark.usefixtures("pulumi_mocks")
@pulumi.runtime.test
def test_a_stack_that_says_12_boots_bookworm() -> pulumi.Output[Any]:
    ami, trixie, bookworm = _hosts_ami({"debian_release": 12})

    def check(got: str) -> None:
        assert got == bookworm and got != trixie

    return ami.apply(check)


# --------------------------------------------------------------------------- the lab image's suite


def test_lab_suite_follows_the_stack_unless_overridden() -> None:
    assert image.suite_for(12) == "bookworm"
    assert image.suite_for(13) == "trixie"
    assert image.suite_for(12, "13") == "trixie"
    assert image.suite_for(12, " Trixie ") == "trixie"
    assert image.suite_for(13, "") == "trixie"
    with pytest.raises(UserError) as caught:
        image.suite_for(12, "sid")
    assert caught.value.code == 2 and "EMBASSY_LAB_DEBIAN" in str(caught.value)


def test_image_sources_name_the_suite() -> None:
    text = image.sources_list("http://deb.example/debian", "http://deb.example/debian-security", "trixie")
    assert text.splitlines() == ["deb http://deb.example/debian trixie main",
                                 "deb http://deb.example/debian trixie-updates main",
                                 "deb http://deb.example/debian-security trixie-security main"]


def test_mirror_list_is_per_suite() -> None:
    bookworm, trixie = mirror.packages("bookworm"), mirror.packages("trixie")
    assert "postgresql-15" in bookworm and "postgresql-17" not in bookworm
    assert "postgresql-17" in trixie and "postgresql-15" not in trixie
    assert {"pgbackrest", "restic", "lynis"} <= set(bookworm) & set(trixie)
    text = "a\nb [trixie]  # only there\nc [bookworm trixie]\n"
    assert mirror.packages("bookworm", text) == ["a", "c"]
    assert mirror.packages("trixie", text) == ["a", "b", "c"]
    with pytest.raises(mirror.LabError):
        mirror.packages("trixie", "d [trixie\n")
    with pytest.raises(mirror.LabError):
        mirror.packages("trixie", "d []\n")


def test_image_suite_is_read_from_the_image(tmp_path: Path) -> None:
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/os-release").write_text(TRIXIE_OS_RELEASE)
    assert image.image_suite(tmp_path) == "trixie"
