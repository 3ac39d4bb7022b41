"""The lab image's dpkg shortcuts (no docs, no fsync per file) stay in the lab image and out of the roles.

Adversaries: a change that copies the shortcuts into roles/ (real enclaves would then unpack security updates
without fsync, or lose the copyright notices a distribution must keep); a recipe change that keeps the old
cache key (every lab would go on booting the image built without it); a path-exclude that drops what a host
needs at run time (the copyright files, locale.alias) or what the deploys and roles read.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from embassy.lab import image

ROOT = Path(__file__).resolve().parents[2]
SHORTCUTS = ("force-unsafe-io", "path-exclude", "man-db/auto-update")


def test_the_shortcuts_are_written_into_the_image_before_any_package(tmp_path: Path) -> None:
    image.write_dpkg_settings(tmp_path)
    folder = tmp_path / "etc/dpkg/dpkg.cfg.d"
    texts = {p.name: p.read_text() for p in folder.iterdir()}
    assert set(texts) == set(image.DPKG_LAB_SETTINGS)
    joined = "\n".join(texts.values())
    assert "force-unsafe-io" in joined.splitlines()
    for text in texts.values():
        assert "lab image only" in text and "not on real enclaves" in text
    excluded = [line.split("=", 1)[1] for line in joined.splitlines() if line.startswith("path-exclude=")]
    included = [line.split("=", 1)[1] for line in joined.splitlines() if line.startswith("path-include=")]
    assert all(p.startswith(("/usr/share/doc/", "/usr/share/man/", "/usr/share/info/", "/usr/share/locale/",
                             "/usr/share/lintian/", "/usr/share/linda/")) for p in excluded), excluded
    assert "/usr/share/doc/*/copyright" in included and "/usr/share/locale/locale.alias" in included


def test_the_recipe_cleans_what_debootstrap_unpacked_and_keeps_the_copyrights() -> None:
    recipe = image._CONFIGURE
    assert "! -name copyright -delete" in recipe and "! -name locale.alias" in recipe
    assert "man-db man-db/auto-update boolean false" in recipe
    # the packages the image installs come after the settings are in place (written before the chroot runs)
    assert recipe.index("apt-get update") > recipe.index("debconf-set-selections")


def test_the_recipe_version_is_in_the_cache_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image, "debian_mirrors", lambda: ("http://deb.example/debian", None))
    key = image.image_key("bookworm")
    monkeypatch.setattr(image, "RECIPE_VERSION", image.RECIPE_VERSION + 1)
    assert image.image_key("bookworm") != key
    assert image.RECIPE_VERSION >= 4  # 4: the dpkg shortcuts and Lynis in the image


def test_lynis_is_in_the_image_and_in_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image, "debian_mirrors", lambda: ("http://deb.example/debian", None))
    assert "lynis" in image.LAB_TOOLS
    key = image.image_key("bookworm")
    monkeypatch.setattr(image, "LAB_TOOLS", ())
    assert image.image_key("bookworm") != key


def test_no_role_carries_a_lab_shortcut() -> None:
    for path in (ROOT / "roles").rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            found = [s for s in SHORTCUTS if s in text]
            assert not found, f"{path.relative_to(ROOT)} carries the lab image's {found}: real enclaves must not"
