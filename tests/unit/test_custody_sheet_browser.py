"""An official's printable sheet in a real browser: headless chromium renders it without a console error,
and the QR code in its screenshot decodes (zxing-cpp) back to the very share, which opens the key."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import zxingcpp
from PIL import Image

from embassy.custody import shares, sheets
from tests.unit.test_drill_report_browser import ARTIFACTS, browse, console_messages


def test_the_sheet_renders_and_its_qr_code_decodes_to_the_share(tmp_path: Path) -> None:
    key = os.urandom(32)
    words = shares.split(key, 3, 2)
    written = sheets.write([sheets.Sheet(i + 1, 3, 2, "rehearsal", 4, ["de", "ie", "se"], dt.date(2026, 12, 2), w)
                            for i, w in enumerate(words)], tmp_path / "kit")
    page = tmp_path / "kit" / "official-2.html"
    assert page in written
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "custody-sheet.png"
    shot.unlink(missing_ok=True)
    # One load gives the DOM (stdout), the screenshot and the console: chromium does both on the same page.
    dom = browse(page.as_uri(), "--dump-dom", f"--screenshot={shot}", "--hide-scrollbars")
    assert dom.returncode == 0 and shot.is_file(), dom.stderr[-2000:]
    assert not console_messages(dom.stderr), console_messages(dom.stderr)
    # What the page shows: the share's facts and all 33 words, in order.
    assert f'<td id="fingerprint">{shares.fingerprint(words[1])}</td>' in dom.stdout
    assert '<td id="version">4</td>' in dom.stdout and "official 2 of 3" in dom.stdout
    shown = [line.split("</span>")[1].split("<")[0] for line in dom.stdout.splitlines() if '<span class="n">' in line]
    assert shown == words[1].split()

    found = zxingcpp.read_barcodes(Image.open(shot).convert("L"))
    qr = [b for b in found if b.format == zxingcpp.BarcodeFormat.QRCode]
    assert len(qr) == 1, f"{len(found)} codes found in {shot}"
    assert qr[0].text == words[1]
    # The decoded text is a share that, with another official's, gives the key back.
    decoded = shares.parse(shares.ShareText(qr[0].text, "qr"))
    assert shares.combine([decoded, shares.parse(shares.ShareText(words[2], "official-3"))], 2) == key
