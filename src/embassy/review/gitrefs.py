"""Review git refs: each ref's plan, computed in a temporary `git worktree` that nothing leaves behind, by the ref's
own program run in a sandbox (review/sandbox.py): never as the reviewer.

A cancelled CI job sends SIGTERM: it unwinds the review (exit 143) and the worktrees go with it.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from embassy.compliance.evaluate import model_for
from embassy.errors import UserError
from embassy.model import Deployment
from embassy.review.sources import Source, state_source


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)


def is_git_ref(root: Path, ref: str) -> bool:
    return _git(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").returncode == 0


class Terminated(BaseException):
    """SIGTERM (a cancelled CI job) while a review checks out git refs: unwinds so the worktrees go."""


_SIGTERM = {"hold": 0, "pending": 0}


def _on_sigterm(signum: int, frame: Any) -> None:
    if _SIGTERM["hold"]:
        _SIGTERM["pending"] = 1  # raised when the step that must not be cut in half is done
        return
    raise Terminated()


@contextmanager
def _uninterrupted() -> Iterator[None]:
    """`git worktree add` runs a checkout in a child of its own: killed half-way, that child keeps writing after
    the cleanup. So a SIGTERM waits for the end of the step, then unwinds."""
    _SIGTERM["hold"] += 1
    try:
        yield
    finally:
        _SIGTERM["hold"] -= 1
        if not _SIGTERM["hold"] and _SIGTERM["pending"]:
            _SIGTERM["pending"] = 0
            raise Terminated()


@contextmanager
def cleanup_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into an exception for the duration, so that every `finally` (worktree removal) runs."""
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def checkout(root: Path, ref: str) -> Iterator[Path]:
    """A temporary `git worktree` of a ref, removed afterwards whatever happens (SIGTERM included)."""
    tmp: Path | None = None
    try:
        with _uninterrupted():
            tmp = Path(tempfile.mkdtemp(prefix="embassy-review-"))
            added = _git(root, "worktree", "add", "--detach", "--quiet", str(tmp / "tree"), ref)
        if added.returncode != 0:
            raise UserError(f"cannot check out {ref}: {added.stderr.strip()}",
                            "give a commit, branch or tag of this repository")
        yield tmp / "tree"
    finally:
        if tmp is not None:
            with _uninterrupted():
                _git(root, "worktree", "remove", "--force", "--force", str(tmp / "tree"))
                shutil.rmtree(tmp, ignore_errors=True)
                _git(root, "worktree", "prune")


_PLANS: dict[tuple[str, str, str], tuple[dict[str, Any], Deployment | None]] = {}


def _at_ref(exc: UserError, tree: Path, ref: str, stack: str) -> UserError:
    """An error raised inside a temporary worktree, naming files as `REF:path`: the folder is gone by then, so the
    hint says how to see the error at the ref itself."""
    message = exc.message.replace(f"{tree}/", f"{ref}:").replace(str(tree), f"the checkout of {ref}")
    return UserError(message, f"check out {ref} and run `embassy validate --stack {stack}` and "
                              f"`embassy plan --stack {stack} --out F` there to see the whole error", exc.code)


def read_ref(root: Path, ref: str, stack: str) -> Source:
    """The plan of `stack` as the code and config at `ref` produce it (once per commit in this process)."""
    from embassy.review.sandbox import Limits, describe, plan_ref

    limits = Limits()
    sha = _git(root, "rev-parse", f"{ref}^{{commit}}").stdout.strip()
    key = (str(root.resolve()), sha, stack)
    if key not in _PLANS:
        with cleanup_on_sigterm(), checkout(root, sha) as tree:
            try:
                _PLANS[key] = (plan_ref(tree, stack, limits), model_for(stack, tree))
            except UserError as exc:
                raise _at_ref(exc, tree, ref, stack) from None
    plan, deployment = _PLANS[key]
    src = state_source(f"{ref} ({sha[:7]})", "git", plan.get("resources"), "resources", stack, root)
    src.model = deployment
    src.provenance = [f"{ref} ({sha[:7]}): its plan comes from its own program (stacks/ and src/ at {sha[:7]}), "
                      f"{describe(limits)}; the judging is this reviewer's own code"]
    return src


def in_repository(root: Path) -> bool:
    return _git(root, "rev-parse", "--git-dir").returncode == 0


def code_changes(root: Path, base: str, head: str) -> list[str]:
    """Files under src/ or stacks/ that differ between two refs: code that made HEAD's plan and that no control reads."""
    out = _git(root, "diff", "--name-only", f"{base}^{{commit}}", f"{head}^{{commit}}", "--", "src", "stacks")
    return [line for line in out.stdout.splitlines() if line.strip()]


def code_note(base: str, head: str, files: list[str]) -> str:
    dirs = " and ".join(d for d in ("src/", "stacks/") if any(f.startswith(d) for f in files))
    shown = ", ".join(files[:5]) + (f" (+{len(files) - 5} more)" if len(files) > 5 else "")
    return (f"HEAD ({head}) changes code under {dirs} against {base}: {len(files)} file(s): {shown}. HEAD's plan came "
            "from HEAD's own program (run in the sandbox): read that code too, the controls judge only what it planned")
