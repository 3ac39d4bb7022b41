"""One sheet per official: DIR/official-<i>.txt (the words) and DIR/official-<i>.html (printable, with a QR code).

Besides the share, a sheet carries nothing secret: the stack, the bundle version it opens, the
threshold, the date and the share's fingerprint (a digest an official compares, not the share).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

import segno
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from embassy.custody.shares import fingerprint, normal
from embassy.replication.privatefile import create_private


@dataclass(frozen=True)
class Sheet:
    official: int  # 1-based
    officials: int
    threshold: int
    stack: str
    version: int
    embassies: list[str]
    date: dt.date
    words: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.words)

    @property
    def numbered(self) -> list[tuple[int, str]]:
        return list(enumerate(normal(self.words).split(), start=1))

    @property
    def rows(self) -> list[str]:
        """The numbered words, four to a line, as the .txt sheet prints them."""
        cells = [f"{i:2d} {w:<12}" for i, w in self.numbered]
        return ["".join(cells[k:k + 4]).rstrip() for k in range(0, len(cells), 4)]

    def qr_svg(self) -> str:
        return str(segno.make(normal(self.words), error="m").svg_inline(scale=5, border=4, dark="#000", light="#fff"))


_env = Environment(loader=PackageLoader("embassy.custody", "templates"), autoescape=select_autoescape(["html"]),
                   undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def render_txt(sheet: Sheet) -> str:
    return _env.get_template("sheet.txt.j2").render(s=sheet)


def render_html(sheet: Sheet) -> str:
    return _env.get_template("sheet.html.j2").render(s=sheet)


def _write_private(path: Path, text: str) -> None:
    """A new 0600 file; an existing sheet is replaced only through a fresh file (never left half-written)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    create_private(tmp, text.encode())
    tmp.replace(path)


def write(sheets: list[Sheet], folder: Path) -> list[Path]:
    """Every sheet into `folder` (0700): official-<i>.txt and .html, each 0600. Returns the paths written."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    written = []
    for sheet in sheets:
        for suffix, text in (("txt", render_txt(sheet)), ("html", render_html(sheet))):
            path = folder / f"official-{sheet.official}.{suffix}"
            _write_private(path, text)
            written.append(path)
    return written
