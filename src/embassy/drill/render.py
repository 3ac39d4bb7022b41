"""report.md and report.html from a Report, through the Jinja2 templates beside this module."""

from __future__ import annotations

from datetime import datetime
from functools import cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from embassy.drill.chart import recovery_svg, timeline_svg
from embassy.drill.report import RegisterResult, Report

TEMPLATES = Path(__file__).parent / "templates"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def timestamp(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def md_cell(value: object) -> str:
    """Text safe in a Markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


@cache
def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(("html.j2",)),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(seconds=seconds, timestamp=timestamp, yes_no=yes_no, cell=md_cell, proof=proof_text,
                       kinds=kinds_text)
    return env


def _context(report: Report) -> dict[str, object]:
    recovery = [s for s in report.timeline if s.end > report.incident_at]
    return {"r": report, "since": lambda t: (t - report.incident_at).total_seconds(), "recovery": recovery}


def proof_text(register: RegisterResult) -> str:
    """What is proven of a restored register, in words: the signed point, and what it serves beyond it."""
    p = register.proof
    if p is None:
        return "-"
    if p.signed_round is None:
        return "not proven up to any signed point"
    text = f"round {p.signed_round}" + (f", at {p.signed_point}" if p.signed_point else "")
    beyond = p.beyond_signed
    if beyond.transactions:
        text += f"; {beyond.transactions} transactions beyond it" + (f", {beyond.source}" if beyond.source else "") \
            + " (no signature covers them)"
    elif beyond.transactions == 0:
        text += "; nothing beyond it"
    else:
        text += "; beyond it: not counted" + (f" ({beyond.read})" if beyond.read else "")
    return text


def kinds_text(kinds: dict[str, int]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in kinds.items())


def render_markdown(report: Report) -> str:
    return environment().get_template("report.md.j2").render(_context(report))


def render_html(report: Report) -> str:
    """One self-contained page: styles inline, the chart as inline SVG, no script, nothing fetched."""
    return environment().get_template("report.html.j2").render(**_context(report), chart=timeline_svg(report),
                                                                recovery_chart=recovery_svg(report))
