"""Reviewing a git ref never runs its code as the reviewer. The adversary wrote the ref: its `python -m embassy.plan`
(src/embassy/plan.py of the ref, which the review runs to plan it) tries to read the reviewer's environment and home,
write into the home and outside its scratch, reach the network, loop forever, eat memory, flood the output. Each
attempt is shown contained, and the review of such a ref still completes.

The sandbox needs root (a network and mount namespace, a switch to an unprivileged user): CI runs as root; elsewhere
these tests skip, and the review refuses to plan refs (test_refuses_without_root_or_says_why).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from embassy.cli import app
from embassy.errors import RefPlanFailed, SandboxUnavailable
from embassy.review.sandbox import Limits, plan_ref, unavailable

ROOT = Path(__file__).resolve().parents[2]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox is made with namespaces and a user switch: "
                                                             "root only (CI runs as root)")
SECRET = "AKIA-reviewer-secret-7f3a"
PLAN_HEAD = '''
import json, os, socket, sys
observed = {}
'''
PLAN_TAIL = '''
print(json.dumps({"stack": "rehearsal", "project": "data-embassy", "outputs": {"observed": observed},
                  "resources": [{"urn": "urn:pulumi:rehearsal::data-embassy::pulumi:pulumi:Stack::data-embassy-rehearsal",
                                 "type": "pulumi:pulumi:Stack", "name": "data-embassy-rehearsal", "custom": False,
                                 "inputs": {}, "dependencies": [], "parent": None, "provider": None}]}))
'''


def tree_with(folder: Path, body: str) -> Path:
    """A checkout whose src/embassy/plan.py is the adversary's."""
    pkg = folder / "src" / "embassy"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "plan.py").write_text(PLAN_HEAD + textwrap.dedent(body) + PLAN_TAIL)
    (folder / "Pulumi.yaml").write_text("name: data-embassy\nruntime: python\n")
    return folder


def attempt(code: str) -> str:
    """One attack as a statement list that records what it got into observed[name]."""
    return textwrap.dedent(code)


@pytest.fixture
def reviewer_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The reviewer's home with a signing key and a secrets folder, outside /tmp (so /tmp's scratch is not what
    hides it), and a cloud credential in the reviewer's environment."""
    out = ROOT / "out"
    out.mkdir(exist_ok=True)
    home = out / f"sandbox-home-{os.getpid()}"
    (home / "secrets").mkdir(parents=True)
    (home / "report-signing.key").write_text(SECRET)
    (home / "secrets" / "vault.txt").write_text(SECRET)
    home.chmod(0o755)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    yield home
    subprocess.run(["rm", "-rf", str(home)], check=False)


@pytest.fixture
def listener() -> Iterator[tuple[int, list[Any]]]:
    """A server of the test on 127.0.0.1 (root namespace): the ref's code must not reach it."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.2)
    accepted: list[Any] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                accepted.append(srv.accept())
            except OSError:
                continue

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1], accepted
    stop.set()
    t.join(2)
    srv.close()


@needs_root
def test_hostile_ref_is_contained(tmp_path: Path, reviewer_home: Path, listener: tuple[int, list[Any]]) -> None:
    port, accepted = listener
    tree = tree_with(tmp_path / "ref", f'''
        observed["env"] = dict(os.environ)
        observed["uid"] = os.getuid()
        for name, path in (("key", {str(reviewer_home / "report-signing.key")!r}),
                           ("secrets", {str(reviewer_home / "secrets" / "vault.txt")!r}),
                           ("root", "/root/.bash_history")):
            try:
                observed[name] = open(path).read()
            except OSError as exc:
                observed[name] = "denied: " + type(exc).__name__
        for name, path in (("write_home", {str(reviewer_home / "planted")!r}),
                           ("write_tree", os.path.join(os.getcwd(), "planted")),
                           ("write_project", {str(ROOT / "out" / f"planted-{os.getpid()}")!r}),
                           ("write_var_tmp", "/var/tmp/planted"),
                           ("write_scratch", os.path.join(os.environ.get("HOME", "/nonexistent"), "ok"))):
            try:
                with open(path, "w") as f:
                    f.write("x")
                observed[name] = "written"
            except OSError as exc:
                observed[name] = "denied: " + type(exc).__name__
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
            observed["net"] = "connected"
        except OSError as exc:
            observed["net"] = "denied: " + type(exc).__name__
        observed["interfaces"] = sorted(n for _, n in socket.if_nameindex())
    ''')
    started = time.monotonic()
    plan = plan_ref(tree, "rehearsal", Limits(seconds=60))
    seen = plan["outputs"]["observed"]
    assert SECRET not in json.dumps(seen), "a secret of the reviewer reached the ref's code"
    assert set(seen["env"]) <= {"PATH", "HOME", "TMPDIR", "LANG", "PYTHONPATH", "PYTHONHASHSEED",
                                "PYTHONDONTWRITEBYTECODE", "MPLCONFIGDIR", "USER", "LOGNAME"}, seen["env"]
    assert seen["env"]["HOME"] == "/tmp/home" and seen["uid"] != 0
    assert seen["key"].startswith("denied") and seen["secrets"].startswith("denied")
    assert seen["write_home"].startswith("denied") and seen["write_tree"].startswith("denied")
    assert seen["write_project"].startswith("denied")
    assert seen["write_scratch"] == "written"  # the scratch home works, and goes with the sandbox
    assert seen["net"].startswith("denied") and seen["interfaces"] == ["lo"]
    assert accepted == []
    assert not (reviewer_home / "planted").exists() and not (tree / "planted").exists()
    assert not list((ROOT / "out").glob("planted-*")) and not Path("/var/tmp/planted").exists()
    assert time.monotonic() - started < 30


@needs_root
@pytest.mark.parametrize(("body", "limits", "words"), [
    ("while True:\n    pass\n", Limits(seconds=3), "still running after 3 s"),
    ("observed['x'] = len(bytearray(6 << 30))\n", Limits(seconds=30, memory=1024 << 20), "MemoryError"),
    ("sys.stdout.write('x' * (4 << 20))\nsys.stdout.flush()\nimport time\ntime.sleep(60)\n",
     Limits(seconds=30, output=1 << 20), "printed more than 1 MiB"),
    ("import subprocess\nsubprocess.Popen(['sleep', '600'])\nraise SystemExit(3)\n", Limits(seconds=30), "exit 3"),
], ids=["loops-forever", "eats-memory", "floods-output", "leaves-a-child"])
def test_runaway_ref_is_stopped(tmp_path: Path, body: str, limits: Limits, words: str) -> None:
    tree = tree_with(tmp_path / "ref", body)
    started = time.monotonic()
    with pytest.raises(RefPlanFailed) as err:
        plan_ref(tree, "rehearsal", limits)
    assert words in err.value.message, err.value.message
    assert time.monotonic() - started < limits.seconds + 10
    # nothing of the sandbox survives it (the pid namespace dies with its first process)
    left = subprocess.run(["pgrep", "-u", "nobody", "-f", "sleep 600"], capture_output=True, text=True, check=False)
    assert left.stdout.strip() == ""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


@needs_root
def test_review_of_a_hostile_ref_completes_and_says_whose_code_ran(tmp_path: Path, reviewer_home: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tree_with(tmp_path / "repo", 'observed["v"] = 1\n')
    git(repo, "init", "-q")
    git(repo, "-c", "user.email=r@example.invalid", "-c", "user.name=r", "add", "-A")
    git(repo, "-c", "user.email=r@example.invalid", "-c", "user.name=r", "commit", "-qm", "base")
    hostile = repo / "src" / "embassy" / "plan.py"
    hostile.write_text(hostile.read_text().replace('observed["v"] = 1', f'''
try:
    open({str(reviewer_home / "planted")!r}, "w").write("x")
except OSError:
    pass
observed["v"] = os.environ.get("AWS_SECRET_ACCESS_KEY", "none")'''))
    git(repo, "-c", "user.email=r@example.invalid", "-c", "user.name=r", "commit", "-qam", "hostile")
    monkeypatch.chdir(repo)
    result = CliRunner().invoke(app, ["review", "HEAD~1", "HEAD", "--format", "md"])
    assert result.exit_code == 0, result.output
    first = result.stdout.splitlines()[:6]
    assert any("changes code under src/" in line and "src/embassy/plan.py" in line for line in first), first
    assert any("run as user nobody in a sandbox" in line for line in result.stdout.splitlines()[:10])
    assert not (reviewer_home / "planted").exists()
    assert SECRET not in result.stdout


def test_refuses_without_root_or_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not root: the ref's code is never run unsandboxed; the error says what to do instead."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert unavailable() is not None
    with pytest.raises(SandboxUnavailable) as err:
        plan_ref(tree_with(tmp_path / "ref", "raise SystemExit('ran')\n"), "rehearsal")
    assert "root" in err.value.message and "embassy plan --stack S --out F" in err.value.hint
