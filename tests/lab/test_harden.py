"""`embassy harden`: the roles on real hosts, twice (the second through `--target site` with the lab's own
inventory); then what they must have done.

One hardening run per module (the first, measured with Lynis after it: the index before it only shows
the gain and costs a whole audit of every host; `embassy harden` measures both by default), then a second run
that must change nothing. Each test checks a control on the running hosts, from the controller
namespace, as an operator would: sshd's effective settings, a refused password login, a port the
firewall must drop, the audit rules, the monitoring daemons, the mounts, the Lynis index.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from embassy.lab.state import LabState
from tests.lab.conftest import EMBASSY, ROOT, STACK, in_controller_python, ssh
from tests.lab.lab_site import site_target
from tests.lab.timed_output import MAX_SILENCE_SECONDS, run_timed

# The target, measured in this lab (README, "Hardening"): Lynis 3.0.8 in a systemd-nspawn
# container gives 90 with what the lab does as the platform (per-namespace network sysctls,
# CAP_SYS_PACCT, /var and /home mounts, a mirror with the security archive apart, sshd on the lab's
# port, a syslog collector) and what the roles do. Not counted: 9 kernel-wide sysctls (only a VM's
# kernel takes them), auditd (no audit socket), MaxSessions 2 (pyinfra needs 3 sessions at once).
LYNIS_TARGET = 90
PROBE_PORT = 8099

pytestmark = pytest.mark.lab


def harden(lab: LabState, *extra: str, site: bool = False) -> dict[str, Any]:
    where = site_target(lab) if site else ["--target", "lab"]
    res, silence = run_timed([EMBASSY, "harden", *where, "--stack", STACK, "--json", *extra], timeout=1800)
    assert res.returncode == 0, f"harden exited {res.returncode}:\n{res.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(res.stdout)
    assert [h["name"] for h in result["hosts"]] == [h.name for h in lab.hosts]
    # No silent minutes (issue 26): into a pipe, a line at least every 30 s, whatever Ansible is doing.
    assert silence <= MAX_SILENCE_SECONDS, f"harden's output was silent for {silence:.0f} s:\n{res.stderr[-3000:]}"
    result["stderr"] = res.stderr
    return result


@pytest.fixture(scope="module")
def first_run(lab: LabState) -> dict[str, Any]:
    return harden(lab, "--no-lynis-before")


@pytest.fixture(scope="module")
def second_run(lab: LabState, first_run: dict[str, Any]) -> dict[str, Any]:
    # Through the lab's own site inventory (the generic SSH path): it must find nothing to change either.
    return harden(lab, "--no-lynis", site=True)


def connects(lab: LabState, source: str, address: str, port: int) -> bool:
    """Can `source` (a lab host, or 'controller') open a TCP connection to address:port within 3 s?"""
    code = textwrap.dedent("""
        import socket, sys
        try:
            socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
            print("open")
        except OSError as exc:
            print(type(exc).__name__)
    """)
    if source == "controller":
        out = in_controller_python(lab, code, address, str(port)).stdout
    else:
        out = ssh(lab, source, f"python3 -c {quote(code)} {address} {port}").stdout
    return out.strip() == "open"


def quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def test_first_run_hardens_every_host(first_run: dict[str, Any]) -> None:
    for host in first_run["hosts"]:
        assert host["changed"] > 0, host
        assert host["lynis_before"] is None and isinstance(host["lynis_after"], int), host
    # Its progress came from ansible-runner's events: each phase ends with every host's counts.
    done = [line for line in first_run["stderr"].splitlines() if "harden: roles/site.yml: done in" in line]
    assert len(done) == 1 and all(f" {h['name']} " in done[0] for h in first_run["hosts"]), first_run["stderr"][-3000:]


def test_lynis_index_reaches_the_target_on_every_host(first_run: dict[str, Any]) -> None:
    low = {h["name"]: h["lynis_after"] for h in first_run["hosts"] if h["lynis_after"] < LYNIS_TARGET}
    assert not low, f"Lynis hardening index below {LYNIS_TARGET}: {low}"


def test_second_run_changes_nothing(second_run: dict[str, Any]) -> None:
    changed = {h["name"]: h["changed"] for h in second_run["hosts"] if h["changed"] != 0}
    assert not changed, f"the second run changed something: {changed}"


EXPECTED_SSHD = {
    "passwordauthentication": "no",
    "kbdinteractiveauthentication": "no",
    "permitrootlogin": "no",
    "pubkeyauthentication": "yes",
    "authenticationmethods": "publickey",
    "x11forwarding": "no",
    "allowagentforwarding": "no",
    "allowtcpforwarding": "no",
    "permittunnel": "no",
    "maxauthtries": "3",
    "clientaliveinterval": "300",
    "clientalivecountmax": "2",
    "allowgroups": "embassy-ssh",
    "ciphers": "chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-gcm@openssh.com,aes256-ctr,aes192-ctr,aes128-ctr",
    "macs": "hmac-sha2-512-etm@openssh.com,hmac-sha2-256-etm@openssh.com,umac-128-etm@openssh.com",
}


def test_sshd_effective_settings(lab: LabState, first_run: dict[str, Any]) -> None:
    for host in lab.hosts:
        out = ssh(lab, host.name, f"sudo sshd -T -C user={lab.ssh_user},host=controller,addr={lab.controller_address}").stdout
        effective = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
        wrong = {k: effective.get(k) for k, v in EXPECTED_SSHD.items() if effective.get(k) != v}
        assert not wrong, f"{host.name}: sshd -T differs: {wrong}"
        assert effective["port"] == str(lab.ssh_port), f"{host.name}: sshd listens on {effective['port']}"
        kex = effective["kexalgorithms"].split(",")
        modern = ("mlkem768x25519", "sntrup761", "curve25519", "diffie-hellman-group16", "diffie-hellman-group18")
        assert all(k.startswith(modern) for k in kex), kex
        # OpenSSH 10 (Debian 13) offers the post-quantum hybrid: it comes first; OpenSSH 9.2 does not have it.
        offered = ssh(lab, host.name, "ssh -Q kex").stdout.split()
        assert (kex[0] == "mlkem768x25519-sha256") == ("mlkem768x25519-sha256" in offered), (host.name, kex)


def test_password_login_is_refused(lab: LabState, first_run: dict[str, Any]) -> None:
    home = lab.host("home")
    # The ssh client, asking for the password method only: the server offers publickey alone.
    res = subprocess.run(lab.in_controller(["ssh", "-F", lab.ssh_config, "-o", "PreferredAuthentications=password",
                                            "-o", "PubkeyAuthentication=no", "-o", "LogLevel=INFO", home.name, "true"]),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 255
    assert "Permission denied (publickey)" in res.stderr, res.stderr
    # And at the protocol level: a password attempt is rejected as a method, before any password check.
    code = textwrap.dedent("""
        import socket, sys, paramiko
        sock = socket.create_connection((sys.argv[1], int(sys.argv[3])), timeout=10)
        t = paramiko.Transport(sock)
        t.start_client(timeout=10)
        try:
            t.auth_password(sys.argv[2], "not-the-password")
            print("accepted")
        except paramiko.BadAuthenticationType as exc:
            print("refused", ",".join(exc.allowed_types))
        except paramiko.AuthenticationException as exc:
            print("failed", exc)
        finally:
            t.close()
    """)
    out = in_controller_python(lab, code, home.address, lab.ssh_user, str(lab.ssh_port)).stdout.strip()
    assert out == "refused publickey", out


def test_firewall_drops_a_port_that_must_be_closed(lab: LabState, first_run: dict[str, Any]) -> None:
    target = lab.host("de")
    unit = "embassy-test-probe"
    ssh(lab, target.name, f"sudo systemd-run --unit={unit} --collect python3 -m http.server {PROBE_PORT} --bind {target.address}")
    try:
        ssh(lab, target.name, f"for i in $(seq 50); do ss -ltn | grep -q ':{PROBE_PORT} ' && exit 0; sleep 0.1; done; exit 1")
        assert connects(lab, target.name, target.address, PROBE_PORT), "the listener is not up on the host itself"
        assert not connects(lab, "home", target.address, PROBE_PORT), "another host reached a closed port"
        assert not connects(lab, "controller", target.address, PROBE_PORT), "the controller reached a closed port"
        assert connects(lab, "controller", target.address, lab.ssh_port), "SSH from the controller must stay open"
    finally:
        ssh(lab, target.name, f"sudo systemctl stop {unit}", check=False)
    rules = ssh(lab, target.name, "sudo nft list chain inet embassy input").stdout
    assert "policy drop;" in rules


def test_postgres_at_home_is_open_to_warm_embassies_only(lab: LabState, first_run: dict[str, Any]) -> None:
    home = lab.host("home")
    unit = "embassy-test-pg-probe"
    # The deploys may already run PostgreSQL on home; otherwise a listener stands in for it.
    listening = ssh(lab, home.name, "ss -ltn | grep -q ':5432 '", check=False).returncode == 0
    if not listening:
        ssh(lab, home.name, f"sudo systemd-run --unit={unit} --collect python3 -m http.server 5432 --bind {home.address}")
        ssh(lab, home.name, "for i in $(seq 50); do ss -ltn | grep -q ':5432 ' && exit 0; sleep 0.1; done; exit 1")
    try:
        for h in lab.hosts:
            if h.role.value != "embassy":
                continue
            assert connects(lab, h.name, home.address, 5432) == (h.mode == "warm"), f"{h.name} ({h.mode}) to home:5432"
        assert not connects(lab, "controller", home.address, 5432)
        for h in lab.hosts:  # no embassy takes PostgreSQL connections from another embassy
            if h.mode == "warm":
                assert not connects(lab, "home", h.address, 5432)
    finally:
        if not listening:
            ssh(lab, home.name, f"sudo systemctl stop {unit}", check=False)


def test_audit_rules_are_valid_and_auditd_waits_for_a_kernel_that_allows_it(lab: LabState, first_run: dict[str, Any]) -> None:
    rules = "/etc/audit/rules.d/50-embassy.rules"
    for host in lab.hosts:
        ssh(lab, host.name, f"sudo /usr/local/sbin/embassy-audit-rules-check {rules}")
        text = ssh(lab, host.name, f"sudo cat {rules}").stdout
        for path in ("/etc/shadow", "/etc/sudoers", "/etc/ssh/sshd_config.d", "/var/lib/pgbackrest", "/etc/pgbackrest",
                     "/var/lib/postgresql", "/etc/embassy"):
            assert f"-w {path} -p wa" in text, f"{host.name}: no watch on {path}"
        assert "-S init_module,finit_module,delete_module" in text and "clock_settime" in text
    # The checker does catch a bad rule (an unknown syscall).
    bad = ssh(lab, "home", f"sudo sed 's/clock_settime/clock_settimex/' {rules} | sudo tee /tmp/bad.rules >/dev/null; "
                           "sudo /usr/local/sbin/embassy-audit-rules-check /tmp/bad.rules", check=False)
    assert bad.returncode == 1 and "clock_settimex" in bad.stdout
    # In a container the kernel refuses the audit socket: auditd is not started (nor left failing).
    for host in lab.hosts:
        refused = ssh(lab, host.name, "sudo auditctl -s", check=False).returncode != 0
        state = ssh(lab, host.name, "systemctl is-active auditd", check=False).stdout.strip()
        assert state == ("inactive" if refused else "active"), f"{host.name}: auditd {state}"
        # Nothing the roles installed is left failing: systemd reports the host as running.
        assert ssh(lab, host.name, "systemctl is-system-running", check=False).stdout.strip() == "running", \
            ssh(lab, host.name, "systemctl --failed --no-legend --plain", check=False).stdout


def test_monitoring_controls_run(lab: LabState, first_run: dict[str, Any]) -> None:
    for host in lab.hosts:
        for unit in ("fail2ban", "sysstat", "cron", "nftables", "acct", "embassy-aide-check.timer",
                     "embassy-mount-hardening", "apt-daily-upgrade.timer"):
            state = ssh(lab, host.name, f"systemctl is-active {unit}", check=False).stdout.strip()
            assert state == "active", f"{host.name}: {unit} is {state}"
        jail = ssh(lab, host.name, "sudo fail2ban-client status sshd").stdout
        assert "Journal matches:" in jail and "ssh.service" in jail, jail
        ban_port = ssh(lab, host.name, "sudo fail2ban-client get sshd action nftables-multiport port").stdout.strip()
        assert ban_port == str(lab.ssh_port), f"{host.name}: fail2ban bans port {ban_port}, sshd is on {lab.ssh_port}"
        # Process accounting really records: a command run now is in the accounting file.
        ssh(lab, host.name, "/bin/true")
        assert "true" in ssh(lab, host.name, "sudo lastcomm --user admin 2>/dev/null | head -50").stdout


def test_aide_sees_a_changed_file(lab: LabState, first_run: dict[str, Any]) -> None:
    home = "home"
    res = ssh(lab, home, "sudo touch /etc/embassy-aide-probe; sudo aide --check --config /etc/aide/aide.conf", check=False)
    try:
        assert res.returncode in range(1, 8), f"aide --check exited {res.returncode}: {res.stderr[-500:]}"
        assert "/etc/embassy-aide-probe" in res.stdout
    finally:
        ssh(lab, home, "sudo rm -f /etc/embassy-aide-probe")


def test_mounts_are_hardened(lab: LabState, first_run: dict[str, Any]) -> None:
    for host in lab.hosts:
        opts = {m: ssh(lab, host.name, f"findmnt -no OPTIONS {m}").stdout.strip().split(",") for m in
                ("/proc", "/tmp", "/dev/shm", "/dev")}
        assert "hidepid=invisible" in opts["/proc"], opts["/proc"]
        for m in ("/tmp", "/dev/shm", "/dev"):
            assert "noexec" in opts[m] and "nosuid" in opts[m], (host.name, m, opts[m])
        # hidepid: the admin sees only its own processes, not sshd's or PostgreSQL's.
        others = ssh(lab, host.name, "ps -eo user= | sort -u").stdout.split()
        assert others == [lab.ssh_user], others


def test_pyinfra_and_ansible_still_connect(lab: LabState, second_run: dict[str, Any], tmp_path: Path) -> None:
    """No role breaks SSH for the other tools: pyinfra (paramiko) runs a sudo command on every host
    through the hardened sshd (its key exchange, ciphers, MACs, AllowGroups, MaxSessions), and
    uploads a root-owned file (SFTP as the admin, then sudo, with libpam-tmpdir's private TMPDIRs)."""
    pyinfra = str(Path(EMBASSY).parent / "pyinfra")
    inventory = str(ROOT / "inventories" / "lab.py")
    res = subprocess.run(lab.in_controller([pyinfra, "-y", "-v", "--sudo", inventory, "exec", "--", "id", "-u"]),
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    for host in lab.hosts:
        assert re.search(rf"^\[{host.name}\]\s+0$", res.stdout + res.stderr, re.M), f"{host.name}: no root shell through pyinfra"
    # libpam-tmpdir is on: every session, sudo's included, gets its own TMPDIR that others cannot enter.
    for host in lab.hosts:
        assert ssh(lab, host.name, "sudo sh -c 'echo $TMPDIR; stat -c %a /tmp/user'").stdout.split() == ["/tmp/user/0", "711"]
    probe = tmp_path / "upload-probe"
    probe.write_text("uploaded through pyinfra\n")
    dest = "/root/embassy-upload-probe"
    try:
        res = subprocess.run(lab.in_controller([pyinfra, "-y", inventory, "files.put", f"src={probe}", f"dest={dest}",
                                                "mode=600", "_sudo=True"]),
                             capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        for host in lab.hosts:
            assert ssh(lab, host.name, f"sudo cat {dest}").stdout == probe.read_text(), host.name
    finally:
        for host in lab.hosts:
            ssh(lab, host.name, f"sudo rm -f {dest}", check=False)


def test_every_host_forwards_its_log_to_the_collector(lab: LabState, first_run: dict[str, Any]) -> None:
    token = secrets.token_hex(8)
    for host in lab.hosts:
        ssh(lab, host.name, f"logger -t embassy-test forwarded-{token}")
    folder = Path(lab.syslog_dir)
    missing = [h.name for h in lab.hosts]
    for _ in range(100):  # bounded: 10 s at most
        missing = [h.name for h in lab.hosts if f"forwarded-{token}" not in _read(folder / f"{h.address}.log")]
        if not missing:
            break
        time.sleep(0.1)
    assert not missing, f"no forwarded message from {missing} in {folder}"


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
