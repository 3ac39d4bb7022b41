"""The HTML drill report in a real browser: Debian's headless chromium renders it, with no console
error; the chart is in the DOM; the screenshots are kept in out/test-artifacts/.

As root, chromium runs in a fresh network namespace (`unshare -n`): nothing it does can reach any
network, whatever the page or the browser's own services would try (elsewhere, the flags that turn
its background services off are all there is). `make test` installs chromium
as root (the Makefile's LAB_APT), so it is missing only for a user who cannot install it: then,
and only then, the test is skipped.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib import image

from embassy.drill.publish import write_report
from embassy.drill.report import Report
from tests.unit.test_drill_report import failed_report, passed_report

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "out" / "test-artifacts"
WIDTH, HEIGHT = 1280, 2400
PASSED_GREEN = (0x1A, 0x7F, 0x37)  # .verdict.passed in the template
FAILED_RED = (0xB4, 0x23, 0x18)  # .verdict.failed


def chromium() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if found:
        return found
    if os.geteuid() == 0:
        pytest.fail("chromium is not installed: run `make test` (it installs the Makefile's LAB_APT as root), "
                    "or `apt-get install -y --no-install-recommends chromium`")
    pytest.skip("chromium is not installed and only root can install it (`make test` does, as root)")


@functools.cache
def isolated_network_available() -> bool:
    """Whether this process may make a network namespace (root, and a container that allows it)."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=30, check=False).returncode == 0


def browse(url: str, *mode: str, width: int = WIDTH) -> subprocess.CompletedProcess[str]:
    """One headless chromium run on `url`, its console logged to stderr, in a throw-away profile."""
    with tempfile.TemporaryDirectory(prefix="embassy-chromium-") as profile:
        argv = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-default-apps", "--no-pings", f"--user-data-dir={profile}", "--enable-logging=stderr",
                "--v=0", f"--window-size={width},{HEIGHT}", *mode, url]
        if isolated_network_available():
            argv = ["unshare", "--net", *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def console_messages(stderr: str) -> list[str]:
    """What the page wrote to its console (errors, uncaught exceptions), as chromium logs it. Chromium's
    own internal pages (chrome://…, e.g. "Slow network is detected" with no network) are not the report."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line and "source: chrome://" not in line]


def render(report: Report, name: str, tmp_path: Path) -> tuple[Path, str, Path]:
    folder = write_report(report, tmp_path / name, tmp_path / "keys")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"drill-report-{name}.png"
    shot.unlink(missing_ok=True)
    # One load gives the DOM (stdout), the screenshot and the console: chromium does both on the same page.
    done = browse((folder / "report.html").as_uri(), "--dump-dom", f"--screenshot={shot}", "--hide-scrollbars")
    assert done.returncode == 0 and shot.is_file() and "</html>" in done.stdout, done.stderr[-2000:]
    assert not console_messages(done.stderr), console_messages(done.stderr)
    return folder, done.stdout, shot


def share_of(shot: Path, colour: tuple[int, int, int]) -> float:
    """The share of the screenshot's pixels that have `colour` (within rounding)."""
    pixels = (image.imread(shot)[..., :3] * 255).round()
    return float(np.all(np.abs(pixels - np.array(colour)) <= 2, axis=-1).mean())


def test_the_console_capture_sees_errors() -> None:
    """Control: a page that logs an error and throws is caught, so 'no console message' means something."""
    with tempfile.TemporaryDirectory() as folder:
        page = Path(folder) / "broken.html"
        page.write_text('<!DOCTYPE html><p>x</p><script>console.error("control-error"); notDefined();</script>')
        messages = console_messages(browse(page.as_uri(), "--dump-dom").stderr)
    assert any("control-error" in m for m in messages), messages
    assert any("Uncaught ReferenceError: notDefined is not defined" in m for m in messages), messages


def test_a_passed_report_renders_in_chromium(tmp_path: Path) -> None:
    _, dom, shot = render(passed_report(), "passed", tmp_path)
    assert '<header id="verdict" class="verdict passed">' in dom and "Drill passed" in dom
    figure = dom[dom.index('<figure id="timeline-chart"'):]
    figure = figure[:figure.index("</figure>")]
    assert "<svg" in figure and "restore at de" in figure and "incident" in figure
    recovery = dom[dom.index('<figure id="recovery-chart"'):]
    recovery = recovery[:recovery.index("</figure>")]
    assert "<svg" in recovery and "smoke-check the state service" in recovery and "service answering" in recovery
    assert dom.count('class="register"') == 3
    assert image.imread(shot).shape[:2] == (HEIGHT, WIDTH)
    assert share_of(shot, PASSED_GREEN) > 0.01 and share_of(shot, FAILED_RED) < 0.001  # the green verdict is shown


def test_a_failed_report_renders_in_chromium_with_its_failures(tmp_path: Path) -> None:
    _, dom, shot = render(failed_report(), "failed", tmp_path)
    assert '<header id="verdict" class="verdict failed">' in dom and "Drill FAILED" in dom
    assert '<section id="failures">' in dom and "000000010000000000000007" in dom and "[308] ObjectiveMissed" in dom
    assert '<figure id="timeline-chart"' in dom and "<svg" in dom
    assert share_of(shot, FAILED_RED) > 0.01 and share_of(shot, PASSED_GREEN) < 0.01  # the red verdict is shown


# Measures the rendered page (added to a copy of it: the report itself has no script): every text of each chart
# inside its chart's box and inside the viewport, no two chart texts overlapping, no element past the viewport's
# right edge, and the size of each chart.
MEASURE = """<script>
const view = document.documentElement.clientWidth;
const out = {inner: window.innerWidth, view: view, scroll: document.documentElement.scrollWidth,
             clipped: [], overlaps: [], charts: {}};
const inside = (r, b) => r.left >= b.left - 1 && r.right <= b.right + 1 && r.top >= b.top - 1 && r.bottom <= b.bottom + 1;
for (const figure of document.querySelectorAll("figure")) {
  const svg = figure.querySelector("svg");
  const box = svg.getBoundingClientRect();
  out.charts[figure.id] = {width: box.width, height: box.height};
  const texts = [...svg.querySelectorAll("text")].filter(t => t.textContent.trim())
    .map(t => [t.textContent.trim(), t.getBoundingClientRect()]);
  for (const [text, r] of texts) {
    if (!inside(r, box) || r.right > view) out.clipped.push([figure.id, text, r.left, r.right, box.left, box.right]);
  }
  for (let i = 0; i < texts.length; i++) for (let j = i + 1; j < texts.length; j++) {
    const [a, ra] = texts[i], [b, rb] = texts[j];
    const w = Math.min(ra.right, rb.right) - Math.max(ra.left, rb.left);
    const h = Math.min(ra.bottom, rb.bottom) - Math.max(ra.top, rb.top);
    if (w > 1 && h > 1) out.overlaps.push([figure.id, a, b]);
  }
}
for (const el of document.body.querySelectorAll("*")) {
  const r = el.getBoundingClientRect();
  if (r.width && r.right > view + 1) out.clipped.push(["page", el.tagName + "#" + el.id, r.right, view]);
}
for (const el of document.querySelectorAll("table, figure, td, th")) {  // within its container: nothing under another
  const r = el.getBoundingClientRect(), p = el.parentElement.getBoundingClientRect();
  if (r.width && (r.right > p.right + 1 || r.left < p.left - 1)) out.clipped.push(["box", el.tagName, r.right, p.right]);
}
document.body.insertAdjacentHTML("beforeend", "<pre id=measured>" + JSON.stringify(out) + "</pre>");
</script>"""


def measured(folder: Path, width: int) -> dict[str, Any]:
    page = folder.parent / f"measure-{folder.name}-{width}.html"
    page.write_text((folder / "report.html").read_text().replace("</body>", MEASURE + "</body>"))
    dom = browse(page.as_uri(), "--dump-dom", width=width)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert not console_messages(dom.stderr), console_messages(dom.stderr)
    text = dom.stdout[dom.stdout.index("<pre id=\"measured\">") + len("<pre id=\"measured\">"):]
    result: dict[str, Any] = json.loads(text[:text.index("</pre>")].replace("&amp;", "&"))
    return result


@pytest.mark.parametrize("width", [1200, 1366])
def test_no_label_is_clipped_at_the_widths_a_reader_uses(tmp_path: Path, width: int) -> None:
    """The adversary is the layout: long step names cut on the left, the incident's and the service's labels over
    each other, a chart wider than the page. Measured in the rendered page, at each width."""
    for name, report in (("passed", passed_report()), ("failed", failed_report())):
        folder = write_report(report, tmp_path / name, tmp_path / "keys")
        got = measured(folder, width)
        assert got["inner"] == width, got  # the viewport is the width asked for
        assert got["clipped"] == [] and got["overlaps"] == [], (name, got)
        assert got["scroll"] <= got["view"], (name, got)  # nothing wider than the page
        charts = got["charts"]
        assert isinstance(charts, dict) and set(charts) == {"recovery-chart", "timeline-chart"}, charts
        for box in charts.values():
            assert 600 <= box["width"] <= width and box["height"] >= 150, charts  # readable, within the page


def test_the_measure_sees_a_clipped_label(tmp_path: Path) -> None:
    """Control: a chart label pushed out of its chart, and two labels on one spot, are found."""
    folder = write_report(passed_report(), tmp_path / "r", tmp_path / "keys")
    html = (folder / "report.html").read_text()
    html = html.replace("incident: home lost", "incident: home lost" + " and a label far too long to fit" * 8, 1)
    (folder / "report.html").write_text(html)
    got = measured(folder, 1200)
    assert any(c[0] == "recovery-chart" for c in got["clipped"]), got
    assert got["overlaps"], got
