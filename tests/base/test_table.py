"""The one table renderer: full width off a terminal, fitted (wrapped, nothing lost) on one."""
from __future__ import annotations

import io
import os
import pty

from slapos.base.table import render, terminal_width

URL = "https://lab.example.org/software/a-long-name/" + "x" * 80 + "/software.cfg"


def test_full_width_keeps_every_cell_on_one_line():
    text = render(["NAME", "URL"], [["a", URL], ["bb", None]])
    assert text.splitlines() == ["NAME  URL", f"a     {URL}", "bb"]


def test_fitted_table_wraps_the_widest_column_and_loses_nothing():
    text = render(["NAME", "STATE", "URL"], [["hello", "started", URL]], width=60)
    lines = text.splitlines()
    assert all(len(line) <= 60 for line in lines), lines
    assert lines[1].startswith("hello  started  ")
    # the URL is whole once its pieces are put back together
    pieces = [line[len("hello  started  "):].strip() for line in lines[1:]]
    assert "".join(pieces) == URL


def test_narrow_columns_keep_their_header_and_a_minimum():
    text = render(["PARTITION", "LAST ERROR"], [["slappart0", "e" * 300]], width=30)
    first = text.splitlines()[0]
    assert first.startswith("PARTITION  LAST ERROR")
    assert all(len(line) <= 30 for line in text.splitlines())


def test_indent_and_rule_as_proxy_show_prints_them():
    text = render(["id", "size"], [[1, "12 bytes"], [22, "multi\nline"]], indent="  ", rule=True)
    assert text.splitlines() == ["  id  size", "  --  --------", "  1   12 bytes", "  22  multi", "      line"]


def test_terminal_width_is_none_off_a_terminal_and_the_columns_on_one(monkeypatch):
    assert terminal_width(io.StringIO()) is None
    main, secondary = pty.openpty()
    try:
        with os.fdopen(secondary, "w", closefd=False) as tty:
            monkeypatch.setenv("COLUMNS", "77")
            assert terminal_width(tty) == 77
    finally:
        os.close(main)
        os.close(secondary)
