"""`embassy custody init|rotate` and `embassy restore --shares` in process (Typer's CliRunner): bad input
exits 2 with an error naming what is wrong and a HINT, before any lab or vault is reached."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from embassy.cli import app
from embassy.custody import shares
from embassy.lab.state import LAB_ID_ENV

runner = CliRunner()


@pytest.fixture(autouse=True)
def no_lab(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A lab id with no lab: a command that got past its input checks would say so (and exit 2 too),
    # so each test also asserts on the message.
    monkeypatch.setenv(LAB_ID_ENV, "97")
    monkeypatch.setenv("EMBASSY_LAB_ROOT", str(tmp_path / "labs"))


def run(*args: str, stdin: str | None = None) -> tuple[int, str]:
    result = runner.invoke(app, list(args), input=stdin)
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


@pytest.mark.parametrize(("officials", "threshold", "says"), [
    ("3", "4", "--threshold 4 with --officials 3"), ("5", "1", "any one official alone"), ("20", "3", "--officials 20")])
def test_init_refuses_impossible_counts(officials: str, threshold: str, says: str, tmp_path: Path) -> None:
    code, out = run("custody", "init", "--stack", "rehearsal", "--officials", officials, "--threshold", threshold,
                    "--out", str(tmp_path / "kit"))
    assert code == 2, out
    assert says in out and "\nHINT: " in out and "Traceback" not in out
    assert not (tmp_path / "kit").exists()


def test_init_and_rotate_need_the_lab_and_say_how(tmp_path: Path) -> None:
    for verb in ("init", "rotate"):
        code, out = run("custody", verb, "--stack", "rehearsal", "-n", "3", "-k", "2", "--out", str(tmp_path / "kit"))
        assert code == 2 and "lab 97 is not up" in out and "HINT: run `embassy lab up" in out, out
    assert not (tmp_path / "kit").exists()


def test_restore_names_a_mistyped_share_file(tmp_path: Path) -> None:
    words = shares.split(os.urandom(32), 3, 2)
    good, bad = tmp_path / "official-1.txt", tmp_path / "official-2.txt"
    good.write_text(f"# stack: rehearsal\n{words[0]}\n")
    changed = words[1].split()
    changed[-1] = "academic" if changed[-1] != "academic" else "acid"
    bad.write_text(f"# stack: rehearsal\n{' '.join(changed)}\n")
    code, out = run("restore", "--stack", "rehearsal", "--embassy", "ie", "--shares", str(good), str(bad))
    assert code == 2, out
    assert f"error: [110]: {bad}: mistyped: its checksum fails" in out and "HINT: type the share again" in out


def test_restore_names_a_share_of_another_stack_and_a_missing_file(tmp_path: Path) -> None:
    sheet = tmp_path / "official-1.txt"
    sheet.write_text(f"# stack: production\n# bundle version: 1\n{shares.split(os.urandom(32), 2, 2)[0]}\n")
    code, out = run("restore", "-s", "rehearsal", "-e", "ie", "--shares", str(sheet))
    assert code == 2 and f"{sheet}: a share of stack 'production', not 'rehearsal'" in out, out
    code, out = run("restore", "-s", "rehearsal", "-e", "ie", "--shares", str(tmp_path / "nope.txt"))
    assert code == 2 and f"cannot read share file {tmp_path / 'nope.txt'}" in out, out


def test_restore_reads_typed_shares_from_stdin(tmp_path: Path) -> None:
    words = shares.split(os.urandom(32), 3, 2)
    mistyped = " ".join("embasy" if i == 3 else w for i, w in enumerate(words[1].split()))
    code, out = run("restore", "-s", "rehearsal", "-e", "ie", "--shares", "-", stdin=f"{words[0]}\n\n{mistyped}\n")
    assert code == 2 and "stdin share 2: mistyped: word 4 'embasy' is not a SLIP-39 word" in out, out
    # Well-typed shares pass their own checks: what stops the command next is the missing lab, said as such.
    code, out = run("restore", "-s", "rehearsal", "-e", "ie", "--shares", "-", stdin=f"{words[0]}\n\n{words[1]}\n")
    assert code == 2 and "lab 97 is not up" in out, out


def test_share_files_without_the_flag_are_refused() -> None:
    code, out = run("restore", "-s", "rehearsal", "-e", "ie", "official-1.txt")
    assert code == 2 and "share files given without --shares: official-1.txt" in out, out


def test_drill_refuses_custody_and_no_custody_together(tmp_path: Path) -> None:
    code, out = run("drill", "-s", "rehearsal", "--report", str(tmp_path / "r"), "--custody", str(tmp_path / "k"),
                    "--no-custody")
    assert code == 2 and "--custody and --no-custody together" in out, out
    assert not (tmp_path / "r").exists()


SITE = str(Path(__file__).resolve().parents[2] / "examples" / "sites" / "federation.yaml")


@pytest.mark.parametrize(("args", "says"), [
    (("custody", "init", "--target", "moon"),
     "custody init reaches hosts and vaults through --target lab or site or aws, not 'moon'"),
    (("custody", "rotate", "--target", "aws"), "custody rotate --target aws is not built: its re-key runs replication"),
    (("custody", "init", "--target", "site"), "--target site needs --inventory FILE"),
    (("custody", "init", "--inventory", SITE), "--inventory is for --target site, not --target lab"),
    (("replicate", "--once", "--target", "aws"), "replicate reaches hosts and vaults through --target lab or site"),
    (("replicate", "--once", "--target", "site"), "--target site needs --inventory FILE"),
    (("restore-test", "-e", "se", "--target", "moon"),
     "restore-test reaches hosts and vaults through --target lab or site or aws, not 'moon'"),
    (("status", "--target", "moon"), "status reaches hosts and vaults through --target lab or site or aws, not 'moon'"),
])
def test_each_command_takes_only_the_targets_it_reaches(args: tuple[str, ...], says: str, tmp_path: Path) -> None:
    """The adversary: a mistyped or unsupported target that silently falls back to the lab (or reaches a host): refused
    before anything is reached, exit 2 with a HINT."""
    extra = ("-n", "3", "-k", "2", "--out", str(tmp_path / "kit")) if args[0] == "custody" else ()
    code, out = run(*args, "--stack", "production", *extra)
    assert code == 2 and says in out and "\nHINT: " in out and "Traceback" not in out, out
    assert not (tmp_path / "kit").exists()


def test_custody_init_through_a_site_trusts_only_the_stack_configs_key(tmp_path: Path) -> None:
    """custody init through a site inventory is that site's (not the lab's): a stack that names no manifest key has
    nothing a site may sign bundles for (never a key a vault or host serves), refused before any vault is read."""
    code, out = run("custody", "init", "--stack", "production", "--target", "site", "--inventory", SITE,
                    "-n", "3", "-k", "2", "--out", str(tmp_path / "kit"))
    assert code == 2 and "lab 97" not in out and "\nHINT: " in out, out
    assert "stack 'production' sets no data-embassy:manifest_public_key: target site has nothing else to trust" in out
    assert not (tmp_path / "kit").exists()
