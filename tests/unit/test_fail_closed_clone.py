"""The project works wherever it is cloned: a clone under /tmp still starts its vaults (whose /tmp is private)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from embassy.lab import vaults
from embassy.lab.state import VaultState
from embassy.lab.system import LabError


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path/tmp plays /tmp (what a vault's private /tmp hides); a fake `weed` lives in a clone there."""
    hidden = tmp_path / "tmp"
    weed = hidden / "clone" / ".venv" / "bin" / "weed"
    weed.parent.mkdir(parents=True)
    weed.write_bytes(b"\x7fELF not really weed")
    weed.chmod(0o755)
    monkeypatch.setattr(vaults, "PRIVATE_TMP", hidden)
    monkeypatch.setattr(vaults, "weed_binary", lambda: str(weed))
    return weed


def test_a_weed_under_tmp_runs_from_the_labs_own_folder(private_tmp: Path, tmp_path: Path) -> None:
    vaults_dir = tmp_path / "var" / "lab-7" / "vaults"
    runnable = Path(vaults.runnable_weed(vaults_dir))
    assert runnable == vaults_dir / ".bin" / "weed"
    assert not runnable.is_relative_to(vaults.PRIVATE_TMP)
    assert runnable.read_bytes() == private_tmp.read_bytes() and os.access(runnable, os.X_OK)
    inode = runnable.stat().st_ino
    assert vaults.runnable_weed(vaults_dir) == str(runnable) and runnable.stat().st_ino == inode  # reused
    assert sorted(p.name for p in runnable.parent.iterdir()) == ["weed"]  # no .part left


def test_a_weed_outside_tmp_runs_where_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weed = tmp_path / "venv" / "weed"
    weed.parent.mkdir()
    weed.write_bytes(b"weed")
    monkeypatch.setattr(vaults, "PRIVATE_TMP", tmp_path / "tmp")
    monkeypatch.setattr(vaults, "weed_binary", lambda: str(weed))
    assert vaults.runnable_weed(tmp_path / "lab" / "vaults") == str(weed)
    assert not (tmp_path / "lab").exists()


def test_a_vault_folder_under_tmp_is_refused_with_a_hint(private_tmp: Path) -> None:
    folder = vaults.PRIVATE_TMP / "lab-7" / "vaults" / "de"
    vault = VaultState(embassy="de", dns_name="vault-de.lab", address="10.1.0.40", netns="emb7-vault-de",
                       endpoint="https://vault-de.lab:8443", bucket="b", retention_days=1, ca_file="ca.crt",
                       agent_credentials="a.json", admin_credentials="b.json", data_dir=str(folder / "data"),
                       log_file=str(folder / "weed.log"))
    with pytest.raises(LabError) as exc:
        vaults.start(vault)
    assert "EMBASSY_LAB_ROOT" in exc.value.hint
    assert not folder.exists()
