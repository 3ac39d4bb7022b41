"""Secrets in transit to a host: the commands pyinfra would run for a secret file, against pyinfra's own upload.

pyinfra prepares an operation by reading facts and collecting its commands; here against `@local` (the
facts are read from a temporary folder standing for the host), so each command can be inspected before
anything runs. The lab shows the same on real hosts (tests/lab/test_custody.py: a re-key's deploy with
/tmp closed to the SSH user on enclave-ie).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api import Config, FileUploadCommand, Inventory, State
from pyinfra.api.connect import connect_all
from pyinfra.api.operation import add_op
from pyinfra.context import ctx_host, ctx_state
from pyinfra.operations import files

from embassy.replication import secretfile
from embassy.replication.secretfile import secret_file

SECRET = "cipher-pass-4f1d9a7e"


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[State, Any]:
    # The deploys run with sudo; this machine's tests run as a user without it: a sudo that drops its options.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sudo").write_text('#!/bin/sh\nwhile [ "${1#-}" != "$1" ]; do shift; done\nexec "$@"\n')
    (bin_dir / "sudo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the SSH user's home, as the Home fact reads it
    (tmp_path / "home").mkdir()
    inventory = Inventory((["@local"], {}))
    state = State(inventory, Config())
    connect_all(state)
    return state, inventory.get_host("@local")


def commands(state: State, host: Any, op: Any, **kwargs: Any) -> list[Any]:
    meta = add_op(state, op, **kwargs)[host]
    with ctx_state.use(state), ctx_host.use(host):  # as pyinfra runs an operation: facts read at execution time
        return list(state.get_op_data_for_host(host, meta._hash).command_generator())


def test_a_secret_travels_through_a_private_folder_of_the_run_never_tmp(local: tuple[State, Any], tmp_path: Path) -> None:
    state, host = local
    dest = tmp_path / "etc" / "pgbackrest.conf"
    dest.parent.mkdir()
    got = commands(state, host, secret_file, content=SECRET, dest=str(dest), user="root", group="root", mode="600",
                   _sudo=True)
    shell = [c.get_raw_value() if hasattr(c, "get_raw_value") else c for c in got]
    uploads = [c for c in got if isinstance(c, FileUploadCommand)]
    assert len(uploads) == 1
    folder = secretfile.upload_folder(str(tmp_path / "home"), str(dest))
    assert uploads[0].remote_temp_filename == f"{folder}/upload"
    assert folder.startswith(f"{tmp_path / 'home'}/.embassy-upload-{secretfile.RUN}-") and "/tmp/" not in folder.replace(
        str(tmp_path), "")
    # Created empty with its mode before any content, the private folder made 0700 by the SSH user (no sudo) before
    # the upload and removed after it; no command line carries the secret.
    i = got.index(uploads[0])
    assert shell[0] == f"install -m 600 -o root -g root /dev/null {dest}"
    assert shell[i - 1] == f"mkdir -m 700 {folder}" and got[i - 1].connector_arguments == {"_sudo": False}
    assert shell[i + 1] == f"rm -rf {folder}" and got[i + 1].connector_arguments == {"_sudo": False}
    assert not any(SECRET in str(c) for c in shell)
    # The run's name is random: another run (or a local user guessing) never meets this folder.
    assert len(secretfile.RUN) == 24


def test_pyinfras_own_put_would_use_a_predictable_name_in_tmp(local: tuple[State, Any], tmp_path: Path) -> None:
    # What the deploys did before: the secret waits for `sudo cp` at /tmp/pyinfra-<sha1 of dest>.
    state, host = local
    got = commands(state, host, files.put, src=io.StringIO(SECRET), dest=str(tmp_path / "x.pass"), mode="600",
                   _sudo=True, _temp_dir="/tmp")
    upload = next(c for c in got if isinstance(c, FileUploadCommand))
    assert upload.remote_temp_filename.startswith("/tmp/pyinfra-")


def test_an_unchanged_secret_is_not_sent_again_and_a_changed_mode_is_fixed_first(local: tuple[State, Any],
                                                                                 tmp_path: Path) -> None:
    state, host = local
    me = Path("/proc/self").owner(), Path("/proc/self").group()
    dest = tmp_path / "restic.pass"
    dest.write_text(SECRET)
    dest.chmod(0o600)
    assert commands(state, host, secret_file, content=SECRET, dest=str(dest), user=me[0], group=me[1], mode="600") == []
    dest.chmod(0o644)
    got = [str(c) for c in commands(state, host, secret_file, content=SECRET + "2", dest=str(dest), user=me[0],
                                    group=me[1], mode="600")]
    assert got[:2] == [f"chown {me[0]}:{me[1]} {dest}", f"chmod 600 {dest}"]  # before the new content arrives
