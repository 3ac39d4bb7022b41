"""A secret file onto a host (a passphrase, a password, vault credentials): never through a shared temporary folder.

pyinfra's `files.put` with sudo uploads to `<_temp_dir>/pyinfra-<sha1 of the destination>` (the inventories say
/tmp): a name anyone can predict, in a folder anyone can write, holding the secret with the SSH user's umask
until `sudo cp` moves it; and `--diff` prints the new content. `secret_file` instead:
- creates the destination first, empty, with its owner and mode (a new file is never readable by others, not
  even between the copy and a chmod), or fixes the owner and mode of the one there;
- uploads through a folder of this run alone: `mkdir -m 700` (which fails rather than reuse anything already
  there) in the SSH user's home, a random name per run and destination; `sudo cp` onto the destination (its owner
  and mode stay), then the upload and the folder are removed;
- compares by SHA-1 first (a fact), so an unchanged secret is not sent again and a second run changes nothing;
  it logs names, never content.
"""

from __future__ import annotations

import hashlib
import io
import secrets
from collections.abc import Generator

from pyinfra import host
from pyinfra.api import FileUploadCommand, QuoteString, StringCommand, operation
from pyinfra.facts.files import Directory, File, Sha1File
from pyinfra.facts.server import Home

RUN = secrets.token_hex(12)  # one per pyinfra process: the run
FOLDER_PREFIX = ".embassy-upload-"


def upload_folder(home: str, dest: str) -> str:
    """This run's private upload folder for `dest` under the SSH user's home (never /tmp, never reused)."""
    return f"{home.rstrip('/')}/{FOLDER_PREFIX}{RUN}-{hashlib.sha1(dest.encode()).hexdigest()[:12]}"


def _mode(value: object) -> int:
    return int(str(value), 8) if value is not None else -1


@operation()
def secret_file(content: str, dest: str, user: str, group: str, mode: str = "600") -> Generator[object, None, None]:
    """`dest` holds `content`, owned by user:group with `mode` (octal string); the content travels as described above."""
    remote = host.get_fact(File, path=dest) or None  # False: something else (a folder) is there; cp then fails, named
    attrs_ok = remote is not None and remote.get("user") == user and remote.get("group") == group \
        and _mode(remote.get("mode")) == int(mode, 8)
    same = remote is not None and host.get_fact(Sha1File, path=dest) == hashlib.sha1(content.encode()).hexdigest()
    if same and attrs_ok:
        host.noop(f"secret {dest} is up to date")
        return
    if remote is None:
        parent = dest.rsplit("/", 1)[0] or "/"
        if not host.get_fact(Directory, path=parent):
            yield StringCommand("mkdir", "-p", QuoteString(parent))  # as files.put would (the deploy sets modes itself)
        yield StringCommand("install", "-m", mode, "-o", user, "-g", group, "/dev/null", QuoteString(dest))
    elif not attrs_ok:
        yield StringCommand("chown", f"{user}:{group}", QuoteString(dest))
        yield StringCommand("chmod", mode, QuoteString(dest))
    if same:
        return
    home = host.get_fact(Home, _sudo=False)  # the SSH user's own, not root's
    if not home or not str(home).startswith("/") or str(home) == "/":
        raise ValueError(f"{host.name}: the SSH user has no home folder to upload {dest} through")
    folder = upload_folder(str(home), dest)
    yield StringCommand("mkdir", "-m", "700", QuoteString(folder), _sudo=False)
    yield FileUploadCommand(io.BytesIO(content.encode()), dest, remote_temp_filename=f"{folder}/upload")
    yield StringCommand("rm", "-rf", QuoteString(folder), _sudo=False)
