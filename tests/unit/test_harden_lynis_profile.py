"""The profile `embassy harden` adds to Lynis: it may only narrow where CRYP-7902 looks for certificates.

The adversary is whoever wants a host to pass the hardening target it does not meet: a profile can skip tests
(`skip-test=`), drop plugins, or change what a test expects, and each of those moves the index. The profile the
probe passes holds one setting, the certificate paths to ignore, and those are Lynis's own default plus the packaged
CA store alone: the places where a local certificate goes stay scanned. The lab tests check the index itself.
"""

from __future__ import annotations

import subprocess

from embassy import harden


def _settings() -> dict[str, str]:
    lines = [line for line in harden.LYNIS_PROFILE.splitlines() if line.strip() and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def test_the_profile_only_narrows_the_certificate_scan() -> None:
    settings = _settings()
    assert list(settings) == ["ssl-certificate-paths-to-ignore"], settings
    ignored = settings["ssl-certificate-paths-to-ignore"].split(":")
    # Lynis's default (default.prf) plus the CA store of the ca-certificates package, and nothing else.
    assert ignored == ["/etc/letsencrypt/archive", "/usr/share/ca-certificates"], ignored
    for kept in ("/etc/ssl", "/usr/local/share/ca-certificates", "/etc/pki", "/var/www"):
        assert not any(kept == p or kept.startswith(p + "/") for p in ignored), kept


def test_the_probe_passes_the_profile_and_removes_it() -> None:
    probe = harden.lynis_probe("lynis-after")
    assert "LYNIS_PROFILE" not in probe and "PHASE" not in probe
    assert f"printf '%s\\n' '{harden.LYNIS_PROFILE}' > \"$profile\"" in probe
    assert 'lynis audit system --quick --no-colors --profile "$profile"' in probe
    assert "/var/log/lynis-after.log" in probe and "/var/log/lynis-report-after.dat" in probe
    assert subprocess.run(["sh", "-n"], input=probe, text=True).returncode == 0  # the shell parses it
