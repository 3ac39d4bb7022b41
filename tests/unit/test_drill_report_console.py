"""The drill's console table is never cut: printed to a file (or CI's log) at its natural width, and on a terminal
too narrow for it as one line per register."""

from __future__ import annotations

import io

from rich.console import Console

from embassy.commands.drill import print_registers
from tests.unit.test_drill_report import failed_report

VALUES = ("population", "land-register", "court-files", "300.00", "600.00", "900.00", "0.40", "605.00")


def printed(width: int, terminal: bool) -> str:
    buf = io.StringIO()
    print_registers(Console(file=buf, width=width, force_terminal=terminal, color_system=None), failed_report())
    return buf.getvalue()


def test_printed_to_a_file_the_table_is_whole_whatever_the_width() -> None:
    for width in (40, 80):
        text = printed(width, terminal=False)
        assert "…" not in text, text
        for value in VALUES:
            assert value in text, (width, value, text)
        lines = [line for line in text.splitlines() if "land-register" in line]
        assert len(lines) == 1 and "605.00" in lines[0], text  # one register, one row: nothing wrapped inside it


def test_a_narrow_terminal_gets_one_line_per_register_and_a_wide_one_the_table() -> None:
    narrow = printed(40, terminal=True)
    assert "…" not in narrow
    for value in VALUES:
        assert value in narrow.replace("\n", ""), (value, narrow)
    assert "land-register: verified True, restored True, RTO 605.00 s (objective 600.00)" in narrow.replace("\n", "")
    wide = printed(200, terminal=True)
    assert "lost tx" in wide and "┃ register" in wide, wide  # the table itself
    assert "…" not in wide and all(v in wide for v in VALUES)
