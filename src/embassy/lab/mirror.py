"""The lab's Debian package mirror: what the deploys install, with dependencies, served in the lab.

Built once per (image, package list) into /var/cache/embassy/mirror-<hash>/ under a lock: the
packages are resolved by apt inside a throw-away overlay of the image itself, so the mirror holds
exactly what a lab host's apt will ask for. Served by `python3 -m http.server` bound to the
controller's address inside the controller namespace; hosts use `deb [trusted=yes] <url> ./`.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from embassy.lab import image
from embassy.lab.state import MIRROR_PORT, Proc
from embassy.lab.system import LabError, locked, proc_of, run

PACKAGES_FILE = Path(__file__).with_name("mirror-packages.txt")
LAYOUT = "2"  # 2: debian/ and debian-security/ apart (1 was one flat folder); part of the cache key
ARCHIVES = ("debian", "debian-security")


def apt_sources(mirror_url: str) -> str:
    """A lab host's /etc/apt/sources.list: the mirror's main and security archives (flat repos)."""
    return "".join(f"deb [trusted=yes] {mirror_url}/{archive}/ ./\n" for archive in ARCHIVES)


def archive_of_downloads(print_uris: str) -> dict[str, str]:
    """File name -> archive folder, from `apt-get --print-uris` ('URI' file size hash per line)."""
    where = {}
    for line in print_uris.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith("'"):
            uri, name = parts[0].strip("'"), parts[1].replace(":", "%3a")
            where[name] = "debian-security" if "/debian-security/" in uri else "debian"
    return where


def packages(suite: str = image.SUITE, text: str | None = None) -> list[str]:
    """The package list for one Debian suite: one package per line, `#` starts a comment, and a line
    `name [suite ...]` holds only for the suites named (release-specific names: each release's PostgreSQL major)."""
    names = []
    for line in (PACKAGES_FILE.read_text() if text is None else text).splitlines():
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        name, _, only = entry.partition("[")
        suites = only.rstrip("]").split() if only else []
        if only and (not only.endswith("]") or not suites):
            raise LabError(f"{PACKAGES_FILE.name}: bad line {line!r}", "write `package` or `package [suite ...]`")
        if not suites or suite in suites:
            names.append(name.strip())
    return sorted(set(names))


def mirror_key(image_root: Path) -> str:
    image_key = image_root.parent.name
    main, security = image.debian_mirrors()
    text = "\n".join([f"layout {LAYOUT}", image_key, main, security or "", *packages(image.image_suite(image_root))])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_DOWNLOAD = r"""
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
apt-get update -qq
mkdir -p /var/cache/embassy-mirror/partial
apt-get install -y -qq --print-uris -o Dir::Cache::archives=/var/cache/embassy-mirror {packages} \
  > /var/cache/embassy-mirror/uris.txt
apt-get install -y -qq --download-only -o Dir::Cache::archives=/var/cache/embassy-mirror {packages} >/dev/null
"""


def ensure_mirror(image_root: Path, say: image.Say) -> Path:
    """The folder holding the mirror's .debs and Packages index, built if missing."""
    key = mirror_key(image_root)
    final = image.cache_dir() / f"mirror-{key}"
    if (final / ".complete").exists():
        return final / "repo"
    with locked(image.cache_dir() / "mirror.lock"):
        if (final / ".complete").exists():
            return final / "repo"
        tmp = image.cache_dir() / f"mirror-{key}.tmp"
        if tmp.exists():
            _umount_quiet(tmp / "root")
            shutil.rmtree(tmp)
        upper, work, root = tmp / "upper", tmp / "work", tmp / "root"
        for d in (upper, work, root):
            d.mkdir(parents=True)
        suite = image.image_suite(image_root)
        pkgs = packages(suite)
        say(f"resolving and downloading {len(pkgs)} packages (with dependencies) for the lab mirror ({suite})")
        main, security = image.debian_mirrors()
        run(["mount", "-t", "overlay", "embassy-mirror-build", "-o",
             f"lowerdir={image_root},upperdir={upper},workdir={work}", str(root)])
        try:
            (root / "etc/apt/sources.list").write_text(image.sources_list(main, security, suite))
            image.chroot_script(root, _DOWNLOAD.format(packages=" ".join(pkgs)))
            cache = root / "var/cache/embassy-mirror"
            where = archive_of_downloads((cache / "uris.txt").read_text())
            repo = tmp / "repo"
            for archive in ARCHIVES:
                (repo / archive).mkdir(parents=True)
            for deb in cache.glob("*.deb"):
                name = deb.name.replace(":", "%3a")
                shutil.copy2(deb, repo / where.get(name, "debian") / name)
        finally:
            _umount_quiet(root)
        count = len(list(repo.glob("*/*.deb")))
        if count == 0:
            raise LabError("the mirror build downloaded no package", f"check {PACKAGES_FILE} and the machine's apt sources")
        for archive in ARCHIVES:
            (repo / archive / "Packages").write_text(_scan(repo / archive))
        shutil.rmtree(upper)
        shutil.rmtree(work)
        root.rmdir()
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        (final / ".complete").write_text(f"{key}\n{count} packages\n")
        return final / "repo"


def _scan(repo: Path) -> str:
    res = subprocess.run(["dpkg-scanpackages", "--multiversion", "."], cwd=repo, capture_output=True, text=True)
    if res.returncode != 0:
        raise LabError(f"dpkg-scanpackages failed: {res.stderr.strip()}", "run `make lab-deps` (dpkg-dev)")
    return res.stdout


def _umount_quiet(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)


def serve(repo: Path, netns: str, address: str, log: Path) -> Proc:
    """Serve the mirror from the controller namespace, bound to the controller's address only."""
    with log.open("ab") as out:
        child = subprocess.Popen(
            ["ip", "netns", "exec", netns, "python3", "-m", "http.server", str(MIRROR_PORT), "--bind", address,
             "--directory", str(repo)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    return proc_of(child.pid)
