"""The hosts' read-only root: Debian minbase + systemd + sshd, built once and cached.

The release (suite) is the stack's `debian_release` (trixie by default), or EMBASSY_LAB_DEBIAN to try
another one in the lab without changing the stack. The image is keyed by a hash of its inputs
(suite, mirror, packages, this recipe's version) under /var/cache/embassy/image-<hash>/rootfs, built
under a lock so two labs never build it at once, and reused by every lab and every host (each host boots an overlay over it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from embassy.errors import UserError
from embassy.lab.state import SSH_USER
from embassy.lab.system import LabError, locked, run
from embassy.model import DEBIAN_RELEASES, DEFAULT_DEBIAN_RELEASE

CACHE_ENV = "EMBASSY_CACHE"
DEFAULT_CACHE = Path("/var/cache/embassy")
SUITE = DEBIAN_RELEASES[DEFAULT_DEBIAN_RELEASE]  # the default suite
SUITE_ENV = "EMBASSY_LAB_DEBIAN"  # a Debian major version (13) or codename (trixie): overrides the stack's choice
RECIPE_VERSION = 4  # bump when the recipe below changes: the cache key changes with it
IMAGE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "libpam-systemd", "openssh-server", "python3",
                  "iproute2", "sudo", "procps")
# The measuring tool, in the image so that `embassy harden` does not install it on every host of every lab
# (its probe installs it where it is missing, as on AWS: the same package, the same index). Lynis counts
# nothing for being installed itself.
LAB_TOOLS = ("lynis",)

Say = Callable[[str], None]


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def debian_mirrors() -> tuple[str, str | None]:
    """The Debian archive (and security archive) this machine's apt uses: the image comes from there."""
    main: str | None = None
    security: str | None = None
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text()
        uris = re.findall(r"^URIs:\s*(\S+)", text, re.M) + re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", text, re.M)
        for uri in uris:
            uri = uri.rstrip("/")
            if uri.endswith("/debian-security") and security is None:
                security = uri
            elif uri.endswith("/debian") and main is None:
                main = uri
    if main is None:
        raise LabError("no Debian archive found in /etc/apt/sources.list{,.d}",
                       "configure apt with a Debian mirror (the lab image of bookworm or trixie is bootstrapped from it)")
    return main, security


def suite_for(debian_release: int, override: str | None = None) -> str:
    """The lab image's suite: `override` (EMBASSY_LAB_DEBIAN: 13 or trixie) when given, else the stack's release."""
    names = {str(n): name for n, name in DEBIAN_RELEASES.items()}
    if override is None or not override.strip():
        return DEBIAN_RELEASES[debian_release]
    wanted = override.strip().lower()
    if wanted in names:
        return names[wanted]
    if wanted in names.values():
        return wanted
    raise UserError(f"{SUITE_ENV}={override!r} is not a Debian release the lab builds",
                    "use one of " + ", ".join(f"{n} ({name})" for n, name in names.items()) + f", or unset {SUITE_ENV}")


def lab_suite(debian_release: int) -> str:
    return suite_for(debian_release, os.environ.get(SUITE_ENV))


def sources_list(main: str, security: str | None, suite: str = SUITE) -> str:
    lines = [f"deb {main} {suite} main", f"deb {main} {suite}-updates main"]
    if security:
        lines.append(f"deb {security} {suite}-security main")
    return "\n".join(lines) + "\n"


def image_key(suite: str = SUITE) -> str:
    main, security = debian_mirrors()
    inputs = {"suite": suite, "main": main, "security": security, "packages": IMAGE_PACKAGES + LAB_TOOLS,
              "recipe": RECIPE_VERSION, "user": SSH_USER}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def image_dir(key: str | None = None) -> Path:
    return cache_dir() / f"image-{key or image_key()}"


def image_suite(image_root: Path) -> str:
    """The codename of a built image, read from its own os-release (VERSION_CODENAME)."""
    fields = os_release_fields((image_root / "usr/lib/os-release").read_text())
    return fields.get("VERSION_CODENAME") or SUITE


def os_release_fields(text: str) -> dict[str, str]:
    """os-release(5): KEY=value lines, values optionally quoted (shell-style); comments and junk skipped."""
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or key.startswith("#") or not key.replace("_", "").isalnum():
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
            value = re.sub(r"\\(.)", r"\1", value) if "\\" in value else value
        fields[key] = value
    return fields


def chroot_script(root: Path, script: str, resolv: bool = True) -> None:
    """Run a shell script chrooted in `root`, with proc/sys/dev mounted in a private mount namespace
    (so nothing leaks into the machine's mount table) and the machine's resolv.conf for the build only."""
    binds = [f"mount -t proc proc {root}/proc", f"mount --rbind /sys {root}/sys", f"mount --rbind /dev {root}/dev"]
    if resolv:
        binds.append(f"touch {root}/etc/resolv.conf && mount --bind /etc/resolv.conf {root}/etc/resolv.conf")
    wrapper = "set -e\n" + "\n".join(binds) + f"\nexec chroot {root} /bin/sh -ec \"$1\"\n"
    run(["unshare", "--mount", "--propagation", "private", "sh", "-c", wrapper, "sh", script], timeout=1800)


# dpkg settings of the LAB IMAGE ONLY, as in Debian's own minimal container images (never in roles/, never on
# a real enclave): no documentation, manual pages or translations unpacked (nothing on a lab host reads them;
# AIDE's baseline skips them anyway), and no fsync of every unpacked file (a lab host's disk is an overlay that
# is thrown away with the lab: a crash loses the lab, not a register). What the hardening roles install
# (binutils, perl, fail2ban, ...) then unpacks in a fraction of the time. Files kept: the copyright notices
# and locale.alias.
DPKG_LAB_SETTINGS = {
    "90embassy-lab-nodoc": (
        "# embassy lab image only (src/embassy/lab/image.py): not on real enclaves\n"
        "path-exclude=/usr/share/doc/*\npath-include=/usr/share/doc/*/copyright\n"
        "path-exclude=/usr/share/man/*\npath-exclude=/usr/share/info/*\n"
        "path-exclude=/usr/share/locale/*\npath-include=/usr/share/locale/locale.alias\n"
        "path-exclude=/usr/share/lintian/*\npath-exclude=/usr/share/linda/*\n"),
    "90embassy-lab-unsafe-io": "# embassy lab image only (src/embassy/lab/image.py): not on real enclaves\nforce-unsafe-io\n",
}

_CONFIGURE = r"""
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' > /etc/apt/apt.conf.d/90embassy-lab
# What debootstrap unpacked before the dpkg settings above were in place (they are written before this runs).
find /usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
find /usr/share/doc -mindepth 1 -type d -empty -delete
rm -rf /usr/share/man/* /usr/share/info/* /usr/share/lintian/* /usr/share/linda/*
find /usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {{}} +
# No man-db index rebuilt after each package (should a package pull man-db in).
echo 'man-db man-db/auto-update boolean false' | debconf-set-selections
rm -f /var/lib/man-db/auto-update
apt-get update -qq
apt-get install -y -qq {packages} >/dev/null
apt-get -y -qq upgrade >/dev/null
# The SSH user, as on Debian's cloud images: an admin with sudo, no password (keys only).
id {user} >/dev/null 2>&1 || useradd -m -s /bin/bash -G sudo {user}
usermod -p '*' {user}
echo '{user} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/90-embassy-lab; chmod 0440 /etc/sudoers.d/90-embassy-lab
printf 'PasswordAuthentication no\nKbdInteractiveAuthentication no\n' > /etc/ssh/sshd_config.d/00-embassy-lab.conf
# Generic image: every host gets its own host keys and machine id.
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
printf '127.0.0.1\tlocalhost\n' > /etc/hosts
apt-get clean
rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d
"""


def write_dpkg_settings(root: Path) -> None:
    """The lab image's dpkg settings (DPKG_LAB_SETTINGS), before anything else is installed into it."""
    folder = root / "etc/dpkg/dpkg.cfg.d"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in DPKG_LAB_SETTINGS.items():
        (folder / name).write_text(text)


def ensure_image(say: Say, suite: str = SUITE) -> Path:
    """The cached image's root folder, built first if its inputs changed (or it never was)."""
    key = image_key(suite)
    final = image_dir(key)
    if (final / ".complete").exists():
        return final / "rootfs"
    with locked(cache_dir() / "image.lock"):
        if (final / ".complete").exists():  # another lab built it while we waited
            return final / "rootfs"
        main, security = debian_mirrors()
        tmp = cache_dir() / f"image-{key}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        root = tmp / "rootfs"
        root.mkdir(parents=True)
        say(f"debootstrap {suite} minbase from {main} (once; cached in {final})")
        run(["debootstrap", "--variant=minbase", suite, str(root), main], timeout=1800)
        (root / "etc/apt/sources.list").write_text(sources_list(main, security, suite))
        write_dpkg_settings(root)
        say("installing systemd, sshd, python3 into the image")
        chroot_script(root, _CONFIGURE.format(packages=" ".join(IMAGE_PACKAGES + LAB_TOOLS), user=SSH_USER))
        (root / "etc/resolv.conf").write_text("")
        (root / "etc/apt/sources.list").write_text("")  # each host points at the lab mirror
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        (final / ".complete").write_text(key + "\n")
        return final / "rootfs"
