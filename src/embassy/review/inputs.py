"""What `embassy review` is given, read: a file of any supported format or, failing that, a git ref."""

from __future__ import annotations

from pathlib import Path

from embassy.errors import UserError
from embassy.review.gitrefs import in_repository, is_git_ref, read_ref
from embassy.review.sources import FORMATS_HINT, Source, read_file


def read(arg: str, root: Path, stack: str) -> Source:
    """A file (any supported format) or, failing that, a git ref of the repository at `root`."""
    path = Path(arg)
    if path.is_file():
        return read_file(path, root)
    if path.exists():
        raise UserError(f"{arg} is not a file", FORMATS_HINT)
    if in_repository(root) and is_git_ref(root, arg):
        return read_ref(root, arg, stack)
    raise UserError(f"{arg}: no such file or git ref", FORMATS_HINT)
