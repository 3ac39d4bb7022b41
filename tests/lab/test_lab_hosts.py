"""Lab hosts: real systemd over SSH, separate file systems, no way out, names and the mirror."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from embassy.lab import lifecycle
from embassy.lab.image import os_release_fields
from embassy.lab.mirror import packages
from embassy.lab.state import LabState, Role
from tests.lab.conftest import ssh


def pretty_name_of_image(lab: LabState) -> str:
    """What the lab's image says it is (its os-release), e.g. Debian GNU/Linux 13 (trixie)."""
    name = os_release_fields((Path(lab.image) / "usr/lib/os-release").read_text())["PRETTY_NAME"]
    assert f"({lab.suite})" in name, (name, lab.suite)  # the image is of the release the lab chose
    return name


def postgresql_of(lab: LabState) -> str:
    """The PostgreSQL server package the lab's release serves (postgresql-15 on bookworm, -17 on trixie)."""
    return next(p for p in packages(lab.suite) if p.startswith("postgresql-") and "client" not in p)


def test_every_host_answers_ssh_and_systemd_is_running(lab: LabState) -> None:
    assert [h.role for h in lab.hosts].count(Role.HOME) == 1
    assert {h.embassy for h in lab.hosts if h.role is Role.EMBASSY} == {"de", "se", "ie"}
    for host in lab.hosts:
        res = ssh(lab, host.name, "hostname; systemctl is-system-running", check=False)
        assert res.stdout.split() == [host.name, "running"], (host.name, res.stdout, res.stderr)


def test_status_reports_the_os_each_host_says_it_runs(lab: LabState) -> None:
    # Adversary: a status that names the OS from the lab's state or the image instead of asking the host.
    # One host's os-release is swapped for a name no other source holds; the status must report it.
    host, marker = lab.hosts[-1].name, f"Embassy Probe OS {secrets.token_hex(4)}"
    # mode 644 as the image's: a hardened host's umask (027) would make it unreadable to the status's SSH user
    ssh(lab, host, f"sudo rm /etc/os-release && echo 'PRETTY_NAME=\"{marker}\"' | "
                   "sudo install -m 644 /dev/stdin /etc/os-release")
    try:
        reported = {h["name"]: h["os"] for h in lifecycle.status(lab.lab_id)["hosts"]}
    finally:
        ssh(lab, host, "sudo sh -c 'rm -f /etc/os-release && ln -s ../usr/lib/os-release /etc/os-release'")
    assert reported[host] == marker
    assert {reported[h.name] for h in lab.hosts if h.name != host} == {pretty_name_of_image(lab)}


def test_ssh_checks_the_host_key(lab: LabState) -> None:
    # Each host has its own key, known to the controller; a wrong known_hosts entry is refused.
    keys = {line.split()[2] for line in Path(lab.ssh_known_hosts).read_text().splitlines()}
    assert len(keys) == len(lab.hosts)
    bad = Path(lab.dir) / "ssh" / "known_hosts.wrong"
    first, second = Path(lab.ssh_known_hosts).read_text().splitlines()[:2]
    bad.write_text(f"{first.split()[0]} {second.split(' ', 1)[1]}\n")  # home's names with another host's key
    try:
        res = subprocess.run(lab.in_controller(["ssh", "-F", lab.ssh_config, "-o", f"UserKnownHostsFile={bad}",
                                                lab.hosts[0].name, "true"]), capture_output=True, text=True, timeout=30)
        assert res.returncode == 255
        assert "host key" in res.stderr.lower()
    finally:
        bad.unlink()


def test_hosts_file_systems_are_separate(lab: LabState) -> None:
    token = secrets.token_hex(8)
    path = f"/var/tmp/embassy-lab-probe-{token}"
    first, *others = lab.hosts
    ssh(lab, first.name, f"echo {token} | sudo install -m 644 /dev/stdin {path}")  # readable under a hardened umask
    try:
        assert ssh(lab, first.name, f"cat {path}").stdout.strip() == token
        for host in others:
            res = ssh(lab, host.name, f"test -e {path} && echo present || echo absent")
            assert res.stdout.strip() == "absent", host.name
        # The write went to the host's own /var layer, never into the shared image.
        assert (Path(f"{first.upper_dir}-var") / path.removeprefix("/var/")).read_text().strip() == token
        assert not (Path(lab.image) / path.lstrip("/")).exists()
    finally:
        ssh(lab, first.name, f"sudo rm -f {path}")


def test_var_and_home_are_file_systems_of_their_own(lab: LabState) -> None:
    for host in lab.hosts:
        mounts = {}
        for point in ("/", "/var", "/home"):
            target, options = ssh(lab, host.name, f"findmnt -no TARGET,OPTIONS {point}").stdout.split()
            mounts[point] = options.split(",")
            assert target == point, (host.name, point, target)
        for point in ("/var", "/home"):
            assert "nodev" in mounts[point] and "nosuid" in mounts[point], (host.name, point, mounts[point])
        # What the image put there is still there (each is an overlay of the image's own folder).
        seeded = ssh(lab, host.name, f"test -s /var/lib/dpkg/status && test -d /home/{lab.ssh_user}/.ssh && echo ok")
        assert seeded.stdout.strip() == "ok", host.name


def test_mirror_serves_the_security_archive_apart(lab: LabState) -> None:
    from embassy.lab import image

    repo = Path(lab.mirror_repo)
    indexes = {archive: (repo / archive / "Packages").read_text() for archive in ("debian", "debian-security")}
    assert f"Package: {postgresql_of(lab)}\n" in indexes["debian"] + indexes["debian-security"]
    if image.debian_mirrors()[1] is None:
        pytest.skip("this machine's apt has no security archive: the mirror's security folder stays empty")
    security = [line.split()[1] for line in indexes["debian-security"].splitlines() if line.startswith("Package:")]
    assert security, "the security archive of the lab mirror is empty"
    # A host's apt sees that package's candidate from the mirror's security archive.
    host = lab.hosts[0].name
    ssh(lab, host, "sudo apt-get update -qq")
    policy = ssh(lab, host, f"apt-cache policy {security[0]}").stdout
    assert f"{lab.mirror_url}/debian-security" in policy, policy


@pytest.mark.parametrize("outside", ["192.0.2.1", "1.1.1.1", "10.87.250.1"])
def test_host_has_no_route_out_of_the_lab(lab: LabState, outside: str) -> None:
    # A route lookup sends nothing: the host's only route is the lab /24.
    for host in lab.hosts:
        res = ssh(lab, host.name, f"ip route get {outside}", check=False)
        assert res.returncode != 0 and "unreachable" in res.stderr.lower(), (host.name, res.stdout, res.stderr)
        routes = ssh(lab, host.name, "ip -4 route show table all type unicast").stdout
        assert "default" not in routes, routes


def test_root_namespace_blackholes_the_lab_range(lab: LabState) -> None:
    res = subprocess.run(["ip", "route", "get", lab.hosts[0].address], capture_output=True, text=True)
    assert res.returncode != 0 or res.stdout.startswith("blackhole"), res.stdout


def test_every_lab_name_resolves_on_every_host(lab: LabState) -> None:
    names = [h.fqdn for h in lab.hosts] + [v.dns_name for v in lab.vaults]
    for host in lab.hosts:
        out = ssh(lab, host.name, "getent hosts " + " ".join(names)).stdout
        resolved = {line.split()[1]: line.split()[0] for line in out.splitlines()}
        expected = {h.fqdn: h.address for h in lab.hosts} | {v.dns_name: v.address for v in lab.vaults}
        assert resolved == expected, host.name


def test_network_sysctls_are_set_in_every_host_namespace(lab: LabState) -> None:
    for host in lab.hosts:
        out = ssh(lab, host.name, "cat /proc/sys/net/ipv4/conf/all/accept_redirects /proc/sys/net/ipv4/tcp_syncookies "
                                  "/proc/sys/net/ipv4/conf/all/log_martians").stdout.split()
        assert out == ["0", "1", "1"], host.name


def test_hosts_install_packages_from_the_lab_mirror(lab: LabState) -> None:
    host = lab.hosts[-1].name
    ssh(lab, host, "sudo apt-get update -qq")
    policy = ssh(lab, host, f"apt-cache policy restic pgbackrest {postgresql_of(lab)}").stdout
    assert policy.count(lab.mirror_url) >= 3, policy
    assert "Candidate: (none)" not in policy


def test_every_mirror_package_installs_from_the_mirror_alone(lab: LabState) -> None:
    # apt resolves every listed package with its dependencies from the lab mirror (a dry run: the
    # host has no other source, so a missing dependency fails here).
    host = lab.hosts[0].name
    ssh(lab, host, "sudo apt-get update -qq")
    sources = ssh(lab, host, "cat /etc/apt/sources.list; ls /etc/apt/sources.list.d").stdout.split("\n")
    assert [line for line in sources if line.strip()] == [f"deb [trusted=yes] {lab.mirror_url}/debian/ ./",
                                                          f"deb [trusted=yes] {lab.mirror_url}/debian-security/ ./"]
    res = ssh(lab, host, "sudo apt-get install -s -y " + " ".join(packages(lab.suite)), check=False)
    assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-1500:]


def test_pyinfra_inventory_reaches_every_host_as_root_through_sudo(lab: LabState) -> None:
    root = Path(__file__).resolve().parents[2]
    pyinfra = str(Path(sys.executable).parent / "pyinfra")
    res = subprocess.run(lab.in_controller([pyinfra, "-y", "inventories/lab.py", "exec", "--", "echo $(hostname) $(id -u)"]),
                         capture_output=True, text=True, cwd=root, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout + res.stderr  # pyinfra prints host output on either, depending on the version
    seen = {line.split()[1]: line.split()[2] for line in out.splitlines() if line.startswith("[") and len(line.split()) == 3}
    assert seen == {h.name: "0" for h in lab.hosts}
    res = subprocess.run(lab.in_controller([pyinfra, "inventories/lab.py", "debug-inventory"]),
                         capture_output=True, text=True, cwd=root, timeout=300)
    groups = [line.split(":", 1)[1].strip() for line in (res.stdout + res.stderr).splitlines() if line.startswith("--> Groups:")]
    expected = ["home, lab"] + [f"embassies, {h.mode}, lab" for h in lab.hosts if h.embassy]
    assert sorted(groups) == sorted(expected)
