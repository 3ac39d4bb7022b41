"""The drill's timeline as a chart: each step a bar on a time axis, the incident marked.

Rendered with matplotlib's object API (no pyplot: no global state, no display) to SVG, which the
HTML report embeds inline: one self-contained page. Text stays text (svg.fonttype none), so the
step names can be searched and read by a browser's accessibility tools; ids are salted with a
constant so that the same report renders the same bytes.
"""

from __future__ import annotations

import io
import re
from typing import TYPE_CHECKING

import matplotlib
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from embassy.drill.report import Report

OK_COLOUR = "#2f6f9f"
FAILED_COLOUR = "#b42318"
INCIDENT_COLOUR = "#b42318"


def timeline_svg(report: Report) -> str:
    """An inline <svg> element: seconds since the incident on x, one bar per step."""
    steps = report.timeline
    zero = report.incident_at
    height = 1.2 + 0.38 * max(len(steps), 1)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "embassy-drill", "font.size": 9}):
        fig = Figure(figsize=(9, height), layout="constrained")
        ax = fig.add_subplot()
        for row, step in enumerate(steps):
            start = (step.start - zero).total_seconds()
            ax.barh(row, max(step.seconds, 0.05), left=start, height=0.6,
                    color=OK_COLOUR if step.ok else FAILED_COLOUR)
            ax.text(start + max(step.seconds, 0.05), row, f" {step.seconds:.1f} s", va="center", fontsize=8)
        ax.set_yticks(range(len(steps)), [s.step for s in steps])
        ax.invert_yaxis()  # first step on top
        ax.axvline(0, color=INCIDENT_COLOUR, linestyle="--", linewidth=1.5)
        ax.annotate("incident", xy=(0, 1), xycoords=("data", "axes fraction"), xytext=(3, -2),
                    textcoords="offset points", color=INCIDENT_COLOUR, va="top", fontweight="bold")
        if report.rto_seconds is not None:
            ax.axvline(report.rto_seconds, color="#1a7f37", linestyle=":", linewidth=1.5)
            ax.annotate(f"service back ({report.rto_seconds:.1f} s)", xy=(report.rto_seconds, 1),
                        xycoords=("data", "axes fraction"), xytext=(3, -2), textcoords="offset points",
                        color="#1a7f37", va="top")
        ax.set_xlabel("seconds since the incident")
        ax.grid(axis="x", linestyle=":", linewidth=0.5)
        ax.spines[["top", "right"]].set_visible(False)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    svg = buf.getvalue()
    # Inline in HTML: no XML prolog, no DOCTYPE (its DTD address is a reference to the outside).
    return re.sub(r"^.*?(?=<svg)", "", svg, flags=re.S).strip()
