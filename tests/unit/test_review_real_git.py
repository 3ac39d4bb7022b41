"""Reviews of git refs as a cancelled CI job meets them: SIGTERM leaves no worktree, errors name `REF:path`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Planning a git ref runs the ref's code in the review's sandbox, which only root can make (CI runs as root);
# elsewhere the review refuses refs (tests/unit/test_review_sandbox.py::test_refuses_without_root_or_says_why).
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="planning a git ref needs the sandbox: root only (CI is root)")

ROOT = Path(__file__).resolve().parents[2]
EMBASSY = str(Path(sys.executable).parent / "embassy")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean clone of this repository with one more commit that breaks the rehearsal stack's config."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to clone")
    repo = tmp_path_factory.mktemp("review-real") / "repo"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(repo)], check=True)
    git(repo, "config", "user.email", "reviewer@example.invalid")
    git(repo, "config", "user.name", "reviewer")
    stack = repo / "Pulumi.rehearsal.yaml"
    stack.write_text(stack.read_text().replace("retention_days: 3650", "retention_days: -5", 1))
    git(repo, "commit", "--quiet", "-am", "an invalid retention")
    return repo


@needs_root
def test_sigterm_leaves_no_worktree(clone: Path, tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.Popen([EMBASSY, "review", "HEAD~1", "HEAD~1", "--format", "json"], cwd=clone,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(scratch)})
    deadline = time.monotonic() + 60
    while git(clone, "worktree", "list").count("\n") < 2:  # the review's worktree is there
        assert proc.poll() is None and time.monotonic() < deadline, "the review never checked out its ref"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "interrupted (SIGTERM)" in err and "Traceback" not in err
    assert git(clone, "worktree", "list").count("\n") == 1  # only the clone itself
    assert list(scratch.iterdir()) == []  # the temporary folder is gone too


@needs_root
def test_error_at_a_ref_names_the_ref_not_a_deleted_folder(clone: Path) -> None:
    proc = subprocess.run([EMBASSY, "review", "HEAD~1", "HEAD"], cwd=clone, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "HINT:" in proc.stderr and "Traceback" not in proc.stderr
    assert "embassy-review-" not in proc.stderr, proc.stderr  # the worktree folder no longer exists
    assert "retention_days" in proc.stderr


@needs_root
def test_error_hint_says_how_to_see_it_at_the_ref(clone: Path) -> None:
    proc = subprocess.run([EMBASSY, "review", "HEAD~1", "HEAD"], cwd=clone, capture_output=True, text=True,
                          timeout=600, check=False)
    hint = proc.stderr.split("HINT:", 1)[1]
    assert "check out HEAD and run `embassy validate --stack rehearsal`" in hint and "ROOT" not in hint
