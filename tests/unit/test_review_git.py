"""Review of two git refs: each ref's plan is computed in a temporary worktree of a clean clone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .incli import embassy

# Planning a git ref runs the ref's code in the review's sandbox, which only root can make (CI runs as root);
# elsewhere the review refuses refs (tests/unit/test_review_sandbox.py::test_refuses_without_root_or_says_why).
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="planning a git ref needs the sandbox: root only (CI is root)")

ROOT = Path(__file__).resolve().parents[2]
EMBASSY = str(Path(sys.executable).parent / "embassy")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean clone of this repository with one more commit that shortens the de vault's retention."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to clone")
    repo = tmp_path_factory.mktemp("review") / "repo"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(repo)], check=True)
    git(repo, "config", "user.email", "reviewer@example.invalid")
    git(repo, "config", "user.name", "reviewer")
    stack = repo / "Pulumi.rehearsal.yaml"
    text = stack.read_text()
    assert text.count("retention_days: 3650") >= 1
    stack.write_text(text.replace("retention_days: 3650", "retention_days: 30", 1))
    git(repo, "commit", "--quiet", "-am", "shorten the de vault's retention")
    return repo


def review(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EMBASSY, "review", *args], cwd=repo, capture_output=True, text=True, check=False, timeout=600)


@needs_root
def test_weakening_commit_is_flagged(clone: Path) -> None:
    proc = review(clone, "HEAD~1", "HEAD", "--format", "json")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    weak = {(w["control"], w["urn"].rsplit("::", 1)[-1]): w for w in out["weakening"]}
    vault = weak[("EMB-S3-02", "de-vault")]
    assert (vault["before"], vault["after"], vault["embassy"], vault["mandatory"]) == \
        ("vault retention 3650 days", "30 days", "de", True)
    assert {c["embassy"] for c in out["changes"]} == {"de"}
    assert out["base"].startswith("HEAD~1 (") and out["head"].startswith("HEAD (")
    assert all(c["op"] == "update" for c in out["changes"])
    # both plans came from the refs' own programs, in the sandbox; the commit changes no code, so no warning of it
    assert len(out["provenance"]) == 2 and all("run as user nobody in a sandbox" in p for p in out["provenance"])
    assert not any("changes code under" in p for p in out["provenance"])
    # the worktrees are gone
    assert git(clone, "worktree", "list").strip().count("\n") == 0


@needs_root
def test_same_ref_twice_says_no_changes(clone: Path) -> None:
    proc = review(clone, "HEAD", "HEAD")
    assert proc.returncode == 0, proc.stderr
    assert "No changes" in proc.stdout


def test_bad_ref_exits_2(clone: Path) -> None:
    proc = embassy("review", "HEAD~1", "no-such-branch", cwd=clone)  # refused before any plan: in this process
    assert proc.returncode == 2
    assert "error: no-such-branch: no such file or git ref" in proc.stderr and "HINT:" in proc.stderr
