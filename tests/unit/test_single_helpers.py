"""Each job done in one place (issue 24, item 4): private files (replication/privatefile), S3 clients, the bounded
listing and the TCP probe (replication/vaultnet), commands on hosts (targets.run_host).

The adversary here is a later change that writes the job again beside the helper: a copy that opens a secret with
the umask's mode, or a client that trusts AWS_CA_BUNDLE, or a probe with another timeout. The source (AST) is read,
so a copy anywhere in the package fails; each test is first shown to catch a planted copy."""

from __future__ import annotations

import ast
import os
import socket
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from embassy.replication import dataplane, hostcmd, privatefile, vaultnet, vaultread
from embassy.replication import round as replication_round

SRC = Path(__file__).resolve().parents[2] / "src" / "embassy"
REPLICATION = SRC / "replication"

# What is left on purpose, with why: aws_target's SSM runners belong to the AWS target's owner (h29-aws changes
# them); the lab's status (lab/lifecycle) is the lab's own lifecycle, which reaches its hosts through lab/system.
SSH_EXCEPTIONS = {"aws_target.py", "lab/lifecycle.py"}


def _calls(tree: ast.AST) -> Iterator[ast.Call]:
    return (node for node in ast.walk(tree) if isinstance(node, ast.Call))


def _name(node: ast.AST) -> str:
    """a.b.c of a call's function (the last parts only where the head is not a plain name)."""
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Call):
        return _name(node.func) + "()"
    return "?"


def _private_mode(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value == 0o600


def private_writes(tree: ast.AST) -> list[int]:
    """Lines that open or chmod a file to 0600 themselves."""
    return [c.lineno for c in _calls(tree) if (_name(c.func) == "os.open" or _name(c.func).endswith("chmod"))
            and any(_private_mode(a) for a in c.args)]


def s3_clients(tree: ast.AST) -> list[int]:
    """Lines that make a boto3 client for S3 themselves."""
    return [c.lineno for c in _calls(tree) if _name(c.func).endswith(".client")
            and c.args and isinstance(c.args[0], ast.Constant) and c.args[0].value == "s3"]


def tcp_probes(tree: ast.AST) -> list[int]:
    return [c.lineno for c in _calls(tree) if _name(c.func).endswith("create_connection")]


def ssh_runs(tree: ast.AST) -> list[int]:
    """Lines that run a host's argv (ssh_argv, host_argv, host_command_argv) with subprocess themselves."""
    out = []
    for c in _calls(tree):
        if _name(c.func) in ("subprocess.run", "subprocess.Popen") and c.args:
            inner = c.args[0]
            if isinstance(inner, ast.Call) and _name(inner.func).rsplit(".", 1)[-1].endswith(
                    ("ssh_argv", "host_argv", "host_command_argv")):
                out.append(c.lineno)
    return out


def offenders(find: Callable[[ast.AST], list[int]], allowed: set[str]) -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = str(path.relative_to(SRC))
        if rel not in allowed:
            found += [f"{rel}:{line}" for line in find(ast.parse(path.read_text()))]
    return found


CASES = [
    (private_writes, {"replication/privatefile.py"},
     "fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)\nos.chmod(p, 0o600)\nPath(p).chmod(0o600)\n"),
    (s3_clients, {"replication/vaultnet.py"},
     "import boto3\ns3 = boto3.session.Session().client('s3', endpoint_url=e)\n"),
    (tcp_probes, {"replication/vaultnet.py"}, "import socket\nsocket.create_connection((h, 1), timeout=5).close()\n"),
    (ssh_runs, SSH_EXCEPTIONS,
     "import subprocess\nsubprocess.run(lab.ssh_argv(h, c), capture_output=True)\n"),
]


@pytest.mark.parametrize(("find", "allowed", "planted"), CASES, ids=lambda v: getattr(v, "__name__", ""))
def test_each_job_has_one_helper_and_a_planted_copy_is_found(find: Callable[[ast.AST], list[int]], allowed: set[str],
                                                            planted: str) -> None:
    assert offenders(find, allowed) == []
    assert find(ast.parse(planted)), "the scan must see the copy it exists to catch"


def test_the_helpers_are_where_the_scans_say() -> None:
    assert private_writes(ast.parse((REPLICATION / "privatefile.py").read_text()))
    assert s3_clients(ast.parse((REPLICATION / "vaultnet.py").read_text()))
    assert tcp_probes(ast.parse((REPLICATION / "vaultnet.py").read_text()))


def test_every_host_module_ships_what_it_imports_relatively() -> None:
    """The hosts get only host_module_files(): a relative import of a module left out fails there alone (on home,
    at the round's first run), so it is checked here."""
    shipped = set(dataplane.host_module_files())
    assert "vaultnet.py" in shipped and "privatefile.py" in shipped
    for name in shipped - {"__init__.py"}:
        for node in ast.walk(ast.parse((REPLICATION / name).read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    wanted = [f"{a.name}.py" for a in node.names] if not node.module else [f"{node.module}.py"]
                    assert set(wanted) <= shipped, f"{name} imports {wanted}, not shipped to the hosts"
                else:
                    assert not (node.module or "").startswith("embassy"), f"{name}: embassy is not on the hosts"


@pytest.mark.parametrize("how", ["new", "replace", "append"])
def test_a_private_file_is_0600_whatever_the_umask(tmp_path: Path, how: str) -> None:
    path = tmp_path / "secret"
    old = os.umask(0)
    try:
        if how != "new":
            path.write_text("before\n")
            path.chmod(0o644)  # a file another tool left readable: replace and append take it back to 0600
        assert privatefile.create_private(path, b"secret\n", how=how)  # type: ignore[arg-type]
    finally:
        os.umask(old)
    want = {"new": "secret\n", "replace": "secret\n", "append": "before\nsecret\n"}[how]
    assert path.read_text() == want
    if how != "append":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_new_private_file_is_never_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "key"
    assert privatefile.create_private(path, b"first")
    assert not privatefile.create_private(path, b"second")
    assert path.read_bytes() == b"first"


def test_the_three_probes_are_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """hostcmd's repo probe and the round's (home), vaultread's (controller): each asks vaultnet.refusal, with the
    one timeout, the endpoint's host and port."""
    asked: list[tuple[tuple[str, int], float]] = []

    def refusal(where: tuple[str, int], timeout: float = vaultnet.PROBE_SECONDS) -> OSError | None:
        asked.append((where, timeout))
        return OSError("refused")

    for var in vaultread.PROXY_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(vaultnet, "refusal", refusal)
    assert hostcmd.answers(("vault-de.lab", 8443)) is False
    assert replication_round.vault_answers({"endpoint": "https://vault-se.lab:8443"}) is False
    with pytest.raises(vaultread.Silent, match=r"vault-ie.lab:443 accepts no connection within 5 s \(OSError: refused"):
        vaultread.probe("https://vault-ie.lab")
    assert asked == [(("vault-de.lab", 8443), 5.0), (("vault-se.lab", 8443), 5.0), (("vault-ie.lab", 443), 5.0)]
    assert hostcmd.PROBE_SECONDS == replication_round.VAULT_PROBE_SECONDS == vaultread.PROBE_SECONDS == 5.0


def test_the_probe_on_a_real_socket() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert vaultnet.refusal(("127.0.0.1", port), timeout=2) is None
    assert isinstance(vaultnet.refusal(("127.0.0.1", port), timeout=2), OSError)
    assert vaultnet.address("https://vault-de.lab:8443/x") == ("vault-de.lab", 8443)


def test_the_client_verifies_against_the_given_ca_never_the_environment(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tmp_path / "other.pem"))
    s3 = vaultnet.client("https://vault-de.lab:8443", str(tmp_path / "ca.pem"),
                         {"access_key_id": "AK", "secret_access_key": "SK"}, read_timeout=20)
    assert s3._endpoint.host == "https://vault-de.lab:8443"
    assert s3.meta.config.s3 == {"addressing_style": "path"} and s3.meta.config.read_timeout == 20
    assert s3.meta.config.connect_timeout == 5 and s3.meta.config.retries["total_max_attempts"] == 3  # 2 retries
    assert s3._endpoint.http_session._verify == str(tmp_path / "ca.pem")


class Listing:
    """What a vault's host chooses to serve: a listing (one page) and the objects' bytes, sizes as it claims them."""

    def __init__(self, objects: dict[str, bytes], claimed: dict[str, int]) -> None:
        self.objects, self.claimed = objects, claimed
        self.gets: list[str] = []

    def get_paginator(self, _name: str) -> Listing:
        return self

    def paginate(self, **_kw: object) -> list[dict[str, object]]:
        return [{"Contents": [{"Key": k, "Size": self.claimed.get(k, len(v))} for k, v in self.objects.items()]}]

    def get_object(self, Bucket: str, Key: str) -> dict[str, object]:
        import io

        self.gets.append(Key)
        return {"Body": io.BytesIO(self.objects[Key])}


def test_home_and_the_controller_read_manifests_through_one_bounded_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """The adversary is the vault's host: an object it lists as larger than a manifest is never fetched, and one
    that is larger than its listing claims is read one byte past the bound, never whole, by either reader."""
    bound = replication_round.roundstate.MAX_MANIFEST_BYTES
    assert bound == vaultread.MAX_BYTES
    objects = {"manifests/0000000001.json": b"{}", "manifests/0000000002.json": b"x" * (bound + 5),
               "manifests/0000000003.json": b"y" * (bound + 9)}
    claimed = {"manifests/0000000002.json": 2}  # lies small: read, but only bound + 1 bytes
    home, ctl = Listing(objects, claimed), Listing(objects, claimed)
    monkeypatch.setattr(replication_round, "answering", lambda vault: None)
    monkeypatch.setattr(replication_round, "s3_client", lambda *a: home)
    got = dict(replication_round.read_manifests({"endpoint": "https://v:1", "bucket": "b"}, "ca.pem"))
    assert got == {"manifests/0000000001.json": b"{}", "manifests/0000000002.json": b"x" * (bound + 1),
                   "manifests/0000000003.json": b"\0" * (bound + 1)}
    monkeypatch.setattr(vaultread, "s3_client", lambda spec: ctl)
    monkeypatch.setattr(vaultread, "_next_unlisted", lambda *a: None)
    out = {o["key"]: o for o in vaultread.read_manifests({"bucket": "b"})["objects"]}
    assert out["manifests/0000000001.json"]["data"] == "e30="  # base64 of {}
    assert out["manifests/0000000002.json"]["size"] == bound + 1 and "data" not in out["manifests/0000000002.json"]
    assert out["manifests/0000000003.json"]["size"] == bound + 9 and "data" not in out["manifests/0000000003.json"]
    assert home.gets == ctl.gets == ["manifests/0000000001.json", "manifests/0000000002.json"]


def test_the_shipped_modules_import_as_the_hosts_import_them(tmp_path: Path) -> None:
    """As on the hosts: only host_module_files() under /opt/embassy/replication, imported as the package
    `replication` (PYTHONPATH=/opt/embassy), with nothing of embassy's on the path."""
    import shutil
    import subprocess
    import sys

    package = tmp_path / "replication"
    package.mkdir()
    for name in dataplane.host_module_files():
        shutil.copy(REPLICATION / name, package / name)
    names = [n.removesuffix(".py") for n in dataplane.host_module_files() if n != "__init__.py"]
    code = ("import importlib, sys\n"
            f"for n in {names!r}:\n"
            "    importlib.import_module('replication.' + n)\n"
            "print(sorted(m for m in sys.modules if m == 'embassy' or m.startswith('embassy.')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
