"""The examples of the documentation run as shown.

Every ```python block of docs/ preceded by the line `<!-- tested -->` runs (in this process, with
the proxy's URL in place of http://127.0.0.1:4000/) against the same kind of proxy, and must not
raise.

Every ```console block of docs/ preceded by the line `<!-- tested -->` is replayed against a real
proxy with three partitions (the client tests' fixture): each `$ ` line is one command (split with
shlex, no shell) run by the installed `slapos`, with the client and node configurations of that
proxy in $SLAPOS_CLIENT_CONFIGURATION and $SLAPOS_CONFIGURATION; its output (stdout then stderr)
must match the lines below it, where `...` stands for any text, and its exit code must be 0, or N
when the last expected line is `[exit code N]`.
"""
from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.client.conftest import client, slapos_argv  # noqa: F401  (the fixture)

DOCS = Path(__file__).resolve().parents[2] / "docs"
MARK = "<!-- tested -->"


def marked_blocks(language: str = "console") -> list[tuple[str, int, list[str]]]:
    """(page, line, block lines) of every marked block of that language."""
    blocks = []
    for page in sorted(DOCS.rglob("*.md")):
        if "generated" in page.parts or "_build" in page.parts:
            continue
        lines = page.read_text(encoding="utf-8").splitlines()
        for index, line in enumerate(lines):
            if line.strip() == MARK:
                fence = lines[index + 1]
                assert fence in ("```console", "```python"), f"{page}:{index + 1}: {MARK} must precede a console or python block"
                if fence != "```" + language:
                    continue
                end = lines.index("```", index + 2)
                blocks.append((str(page.relative_to(DOCS)), index + 2, lines[index + 2:end]))
    return blocks


def steps(block: list[str]) -> list[tuple[str, list[str]]]:
    result: list[tuple[str, list[str]]] = []
    for line in block:
        if line.startswith("$ "):
            result.append((line[2:], []))
        else:
            assert result, f"output before the first command: {line!r}"
            result[-1][1].append(line)
    return result


def matches(expected: list[str], actual: str) -> bool:
    pattern = "\n".join(re.escape(line.rstrip()).replace(re.escape("..."), ".*?") for line in expected)
    text = "\n".join(line.rstrip() for line in actual.rstrip("\n").splitlines())
    return re.fullmatch(pattern, text, re.DOTALL) is not None


def test_the_docs_have_tested_examples():
    assert marked_blocks("console"), f"no console block marked {MARK} in docs/"
    assert marked_blocks("python"), f"no python block marked {MARK} in docs/"


@pytest.mark.parametrize("page,line,block", marked_blocks("python"), ids=lambda v: str(v) if not isinstance(v, list) else "")
def test_python_example(client, page, line, block, capsys):  # noqa: F811
    # the client fixture's proxy has local_computer with 3 partitions; the examples supply their release
    code = "\n".join(block).replace("http://127.0.0.1:4000/", client.proxy.url)
    exec(compile(code, f"{page}:{line}", "exec"), {"__name__": "__docs__"})  # noqa: S102
    out = capsys.readouterr().out
    assert out  # the example prints what it shows
    print(out)


def test_matching_rules():
    assert matches(["a ... c", "..."], "a b c\nmore\nlines")
    assert not matches(["a", "b"], "a\nc")


@pytest.mark.parametrize("page,line,block", marked_blocks(), ids=lambda v: str(v) if not isinstance(v, list) else "")
def test_example(client, page, line, block):  # noqa: F811
    env = {**client.env, "SLAPOS_CLIENT_CONFIGURATION": str(client.config),
           "SLAPOS_CONFIGURATION": str(client.proxy.config_path), "COLUMNS": "200"}
    for command, expected in steps(block):
        argv = shlex.split(command)
        assert argv[0] == "slapos", f"{page}:{line}: only slapos commands are replayed: {command}"
        code = 0
        if expected and (m := re.fullmatch(r"\[exit code (\d+)\]", expected[-1])):
            code, expected = int(m.group(1)), expected[:-1]
        result = subprocess.run(slapos_argv(*argv[1:]), capture_output=True, text=True, timeout=60,
                                env=env, cwd=str(client.home))
        output = result.stdout + result.stderr
        assert result.returncode == code, f"{page}:{line}: `{command}` exited {result.returncode}:\n{output}"
        assert matches(expected, output), f"{page}:{line}: `{command}` printed:\n{output}\nexpected:\n" + "\n".join(expected)
