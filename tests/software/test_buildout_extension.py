"""`${:_profile_base_location_}` with upstream zc.buildout: our runner and our extension, real runs.

Profiles chain across three directories and a URL served on loopback; `+=` adds values from two
files; each value must get the location of the file it was written in.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from slapos.grid.buildout import run_buildout
from slapos.grid.buildout_extension import MARKER, profile_base, substitute_sections

from .conftest import serve_directory

LOCAL = """\
[buildout]
extends = ../b/base.cfg
parts = show
[show]
recipe = zc.buildout:debug
from-a = ${:_profile_base_location_}/a.txt
list += ${:_profile_base_location_}/added-by-a
"""
BASE = """\
[buildout]
extends = c/deep.cfg {remote}/remote.cfg
[show]
from-b = ${{:_profile_base_location_}}/b.txt
list = ${{:_profile_base_location_}}/set-by-b
deep = ${{deep:where}}
remote = ${{remote:where}}
"""
DEEP = """\
[deep]
where = ${:_profile_base_location_}
"""
REMOTE = """\
[remote]
where = ${:_profile_base_location_}/data
"""


def test_profile_base_of_files_urls_and_downloaded_urls():
    assert profile_base("/srv/sr/software.cfg") == "/srv/sr"
    assert profile_base("https://lab.example/sr/software.cfg") == "https://lab.example/sr"
    assert profile_base("http://h/x/y.cfg (downloaded as /tmp/abc)") == "http://h/x"
    sections = {"s": {"a": f"{MARKER}/f", "b": "plain", "c": f"{MARKER}:{MARKER}"}}
    substitute_sections(sections, "/base")
    assert sections == {"s": {"a": "/base/f", "b": "plain", "c": "/base:/base"}}


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    """a/software.cfg → b/base.cfg → (b/c/deep.cfg, http://127.0.0.1:<port>/remote/remote.cfg)."""
    root = tmp_path_factory.mktemp("profiles")
    (root / "www" / "remote").mkdir(parents=True)
    (root / "www" / "remote" / "remote.cfg").write_text(REMOTE)
    with serve_directory(root / "www") as base_url:
        remote = f"{base_url}/remote"
        (root / "a").mkdir()
        (root / "b" / "c").mkdir(parents=True)
        (root / "a" / "software.cfg").write_text(LOCAL)
        (root / "b" / "base.cfg").write_text(BASE.format(remote=remote))
        (root / "b" / "c" / "deep.cfg").write_text(DEEP)
        yield root, remote


def _shown(output: str) -> dict[str, str]:
    """The options zc.buildout:debug printed, as `  key='value'` lines."""
    shown = {}
    for line in output.splitlines():
        if line.startswith("  ") and "=" in line:
            key, _, value = line.strip().partition("=")
            shown[key] = ast.literal_eval(value)
    return shown


def _expected(root: Path, remote: str) -> dict[str, str]:
    return {
        "from-a": f"{root}/a/a.txt",
        "from-b": f"{root}/b/b.txt",
        "list": f"{root}/b/set-by-b\n{root}/a/added-by-a",
        "deep": f"{root}/b/c",
        "remote": f"{remote}/data",
    }


def _directory(tmp_path: Path, root: Path, extra: str = "") -> Path:
    work = tmp_path / "work"
    work.mkdir()
    (work / "buildout.cfg").write_text(f"[buildout]\nextends = {root}/a/software.cfg\n{extra}")
    return work


def test_runner_resolves_each_value_to_its_own_file(profiles, tmp_path):
    root, remote = profiles
    work = _directory(tmp_path, root, "mine = ${:_profile_base_location_}\n[show]\nmine = ${buildout:mine}\n")
    (work / "cache").mkdir()  # buildout needs it before it reads the first remote profile
    result = run_buildout(work, None, None, timeout=120, assignments=[f"buildout:extends-cache={work}/cache"])
    assert result.ok, result.output
    shown = _shown(result.output)
    assert {k: shown[k] for k in _expected(root, remote)} == _expected(root, remote)
    # the [buildout] section works too with the runner (substituted before buildout reads it)
    assert shown["mine"] == str(work)


def test_extension_gives_the_same_result_to_a_stock_buildout(profiles, tmp_path):
    root, remote = profiles
    work = _directory(tmp_path, root, "extensions = slapnode\n")
    proc = subprocess.run(
        [sys.executable, "-I", "-c", "import sys; from zc.buildout.buildout import main; sys.exit(main())",
         "-U", "-N", f"buildout:directory={work}", "-c", str(work / "buildout.cfg")],
        cwd=str(work), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout
    shown = _shown(proc.stdout)
    assert {k: shown[k] for k in _expected(root, remote)} == _expected(root, remote)


def test_history_fallback_without_runner_hook():
    """The extension's own logic on buildout's annotations: SET in one file, ADD in another."""
    from zc.buildout.buildout import SectionKey

    from slapos.grid.buildout_extension import _rebuild_from_history

    key = SectionKey(f"{MARKER}/x", "/one/a.cfg")
    key.addToValue(f"{MARKER}/y", "/two/b.cfg")
    assert _rebuild_from_history(key) == "/one/x\n/two/y"
    # like a parse-time substitution: "-=" in /three removes /three/x, which /one never added
    key.removeFromValue(f"{MARKER}/x", "/three/c.cfg")
    assert _rebuild_from_history(key) == "/one/x\n/two/y"
    key.removeFromValue("/two/y", "/three/c.cfg")
    assert _rebuild_from_history(key) == "/one/x"
