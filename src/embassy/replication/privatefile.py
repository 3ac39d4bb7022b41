"""Files only their owner reads (keys, passphrases, credentials): the one place such a file is written.

Standard library only: also runs on the hosts (uploaded with the replication modules).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

FLAGS = {"new": os.O_WRONLY | os.O_CREAT | os.O_EXCL,  # created once, never rewritten
         "replace": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,  # rewritten in place (a lab's or a scratch file)
         "append": os.O_WRONLY | os.O_CREAT | os.O_APPEND}  # a log of lines (the key generations)


def create_private(path: Path | str, data: bytes, how: Literal["new", "replace", "append"] = "new") -> bool:
    """Write data with mode 0600 from its first byte; False if `how` is "new" and the file exists already.

    "new" is O_EXCL: two writers racing on a fresh folder agree on one value (the first one's). "replace" also
    takes an existing file's mode back to 0600 (os.open's mode applies to a new file only).
    """
    try:
        fd = os.open(path, FLAGS[how], 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "ab" if how == "append" else "wb") as f:
        if how == "replace":
            os.fchmod(f.fileno(), 0o600)
        f.write(data)
    return True
