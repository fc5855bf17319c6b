"""No module longer than one sitting (500 lines) unless it says at its top why it is kept whole
(a line starting `Kept whole:` in its docstring). The modules below were longer when this test
came; each is to be cut, or to say why not, and then leaves the list."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "slapos"
LIMIT = 500
DEBT: set[str] = set()


def test_long_modules_say_why():
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        name = str(path.relative_to(ROOT))
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) <= LIMIT or name in DEBT:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if not any(line.startswith("Kept whole:") for line in doc.splitlines()):
            offenders.append(f"{name}: {len(text.splitlines())} lines")
    assert not offenders, "cut these modules, or say at their top why they are kept whole:\n" + "\n".join(offenders)


def test_the_debt_list_is_current():
    """A module cut below the limit leaves the list (so it cannot grow back unnoticed)."""
    short = [name for name in DEBT if (ROOT / name).is_file()
             and len((ROOT / name).read_text(encoding="utf-8").splitlines()) <= LIMIT]
    assert not short, f"remove from DEBT (now short enough): {short}"
