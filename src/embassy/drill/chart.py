"""The drill's two charts: the recovery (incident to the service answering, what the RTO measures) at its own
scale, and the whole drill, its restore folded into one bar.

Rendered with matplotlib's object API (no pyplot: no global state, no display) to SVG, which the HTML
report embeds inline: one self-contained page. Text stays text (svg.fonttype none), so the step names
can be searched and read by a browser's accessibility tools; ids are salted with a constant so that the
same report renders the same bytes.

Layout, so that no label is ever cut: each step's name is written above its bar, inside the plot, from
its left edge, wrapped to the figure's width (no tick labels in a left margin, which is where long step
names were clipped and where matplotlib's layout collapsed); the figure's height follows the rows; the
markers' labels sit above the plot, one at each end.
"""

from __future__ import annotations

import io
import re
import textwrap
from dataclasses import dataclass
from typing import TYPE_CHECKING

import matplotlib
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from embassy.drill.report import Report

OK_COLOUR = "#2f6f9f"
FAILED_COLOUR = "#b42318"
INCIDENT_COLOUR = "#b42318"
SERVICE_COLOUR = "#1a7f37"
WIDTH_IN = 9.0
FONT_PT = 9.0
WRAP = 100  # characters per label line: at 9 pt, a 9-inch figure holds about 115
LINE_IN = 0.19  # one label line
BAR_IN = 0.2
GAP_IN = 0.1
TOP_IN, BOTTOM_IN = 0.45, 0.55  # room for the markers' labels above, the axis below


@dataclass(frozen=True)
class Row:
    label: str
    start: float  # seconds since the incident
    end: float
    ok: bool


def recovery_rows(report: Report) -> list[Row]:
    """The steps from the incident on (the incident's own step from 0), in order."""
    zero = report.incident_at
    rows = []
    for step in report.timeline:
        start, end = (step.start - zero).total_seconds(), (step.end - zero).total_seconds()
        if end > 0:
            rows.append(Row(step.step, max(start, 0.0), end, step.ok))
    return rows


def drill_rows(report: Report) -> list[Row]:
    """Every step of the drill; the restore's steps as one bar (the recovery chart shows them)."""
    zero = report.incident_at
    rows: list[Row] = []
    restore = [s for s in report.timeline if s.step.startswith("restore: ")]
    for step in report.timeline:
        if step in restore:
            continue
        rows.append(Row(step.step, (step.start - zero).total_seconds(), (step.end - zero).total_seconds(), step.ok))
    if restore:
        rows.append(Row(f"restore at {report.embassy}: {len(restore)} steps (the recovery chart shows each)",
                        (min(s.start for s in restore) - zero).total_seconds(),
                        (max(s.end for s in restore) - zero).total_seconds(), all(s.ok for s in restore)))
    return sorted(rows, key=lambda r: r.start)


def _svg(rows: list[Row], report: Report, *, recovery: bool) -> str:
    labels = [textwrap.wrap(f"{r.label} ({r.end - r.start:.1f} s)", WRAP) or [""] for r in rows]
    heights = [len(lines) * LINE_IN + BAR_IN + GAP_IN for lines in labels]
    plot_in = sum(heights) or 1.0
    total_in = plot_in + TOP_IN + BOTTOM_IN
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "embassy-drill", "font.size": FONT_PT}):
        fig = Figure(figsize=(WIDTH_IN, total_in))
        fig.subplots_adjust(left=0.02, right=0.98, top=1 - TOP_IN / total_in, bottom=BOTTOM_IN / total_in)
        ax = fig.add_subplot()
        ax.set_ylim(plot_in, 0)  # inches from the top: the first step on top
        ends = [r.end for r in rows] + [report.rto_seconds or 0.0]
        low = 0.0 if recovery else min([r.start for r in rows] + [0.0])
        high = max(ends) if ends else 1.0
        pad = (high - low) * 0.02 or 1.0
        ax.set_xlim(low - (0 if recovery else pad), high + pad)
        left = ax.get_yaxis_transform()  # x in axes fraction, y in data
        y = 0.0
        for row, lines, height in zip(rows, labels, heights, strict=True):
            ax.text(0.005, y + 0.02, "\n".join(lines), transform=left, va="top", ha="left", linespacing=1.15,
                    color="#1f2328" if row.ok else FAILED_COLOUR)
            bar_y = y + len(lines) * LINE_IN + BAR_IN / 2
            ax.barh(bar_y, max(row.end - row.start, (high - low) * 0.002), left=row.start, height=BAR_IN * 0.8,
                    color=OK_COLOUR if row.ok else FAILED_COLOUR)
            y += height
        _markers(ax, report, recovery)
        ax.set_yticks([])
        ax.set_xlabel("seconds since the incident" if recovery else "seconds since the incident (setup before it)")
        ax.grid(axis="x", linestyle=":", linewidth=0.5)
        ax.spines[["top", "right", "left"]].set_visible(False)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    # Inline in HTML: no XML prolog, no DOCTYPE (its DTD address is a reference to the outside).
    return re.sub(r"^.*?(?=<svg)", "", buf.getvalue(), flags=re.S).strip()


def _markers(ax: Axes, report: Report, recovery: bool) -> None:
    """The incident at 0 and the service answering at the RTO: one line each; their labels above the plot, the
    incident's to the right of its line, the service's to the left of its own, so that they cannot meet."""
    top = ax.get_xaxis_transform()  # x in data, y in axes fraction
    rto = report.rto_seconds
    ax.axvline(0, color=INCIDENT_COLOUR, linestyle="--", linewidth=1.2)
    if rto is not None:
        ax.axvline(rto, color=SERVICE_COLOUR, linestyle=":", linewidth=1.5)
    if recovery:
        ax.text(0, 1.02, " incident: home lost", transform=top, ha="left", va="bottom", color=INCIDENT_COLOUR,
                fontweight="bold")
        if rto is not None:
            ax.text(rto, 1.02, f"service answering: RTO {rto:.1f} s ", transform=top, ha="right", va="bottom",
                    color=SERVICE_COLOUR, fontweight="bold")
        return
    if rto is not None:
        ax.axvspan(0, rto, color=SERVICE_COLOUR, alpha=0.12, linewidth=0)
    text = f"incident, then recovery: service answering after {rto:.1f} s " if rto is not None else "incident "
    ax.text(max(rto or 0.0, 0.0), 1.02, text, transform=top, ha="right", va="bottom", color=INCIDENT_COLOUR,
            fontweight="bold")


def recovery_svg(report: Report) -> str:
    """An inline <svg>: the recovery, from the incident (0 s) to the service answering, each step a bar."""
    return _svg(recovery_rows(report), report, recovery=True)


def timeline_svg(report: Report) -> str:
    """An inline <svg>: the whole drill on one axis, the restore as one bar, the recovery shaded."""
    return _svg(drill_rows(report), report, recovery=False)
