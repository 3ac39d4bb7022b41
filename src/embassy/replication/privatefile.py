"""Files only their owner reads (keys, passphrases), created once and never rewritten.

Standard library only: also runs on the hosts (uploaded with the replication modules).
"""

from __future__ import annotations

import os
from pathlib import Path


def create_private(path: Path, data: bytes) -> bool:
    """Write data to a new file, mode 0600 from its first byte; False if the file exists already.

    O_EXCL: two writers racing on a fresh folder agree on one value (the first one's).
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True
