"""The buildout fork server: buildout runs in forked children, as the directory owner, killable."""
from __future__ import annotations

import os
import shutil
import sys
import time

import pytest

from slapos.grid import process
from slapos.grid.buildout import RUNNER_MODULE, buildout_argv, buildout_environment
from slapos.grid.forkserver import ForkServer, ForkServerGone
from tests.conftest import make_traversable
from tests.instance.conftest import DATA, chown_tree

PROFILE = """
[buildout]
parts = {part}
eggs-directory = ${{buildout:directory}}/eggs
eggs-directory-version =
offline = true
bin-directory = ${{buildout:directory}}/sbin

[hello]
recipe = slapnodetest:file
path = ${{buildout:directory}}/hello.txt
content = hello from buildout

[slow]
recipe = slapnodetest:sleep
flag = ${{buildout:directory}}/flag
seconds = 60
"""


@pytest.fixture
def server():
    fork_server = ForkServer()
    yield fork_server
    fork_server.close()


def workdir(root, part):
    directory = root / part
    directory.mkdir(mode=0o750)
    egg = directory / "eggs" / f"slapnodetest-1.0-py{sys.version_info[0]}.{sys.version_info[1]}.egg"
    shutil.copytree(DATA / "recipe", egg, ignore=shutil.ignore_patterns("__pycache__"))
    (directory / "buildout.cfg").write_text(PROFILE.format(part=part))
    chown_tree(directory)
    return directory


def run(server, directory, **kw):
    argv = buildout_argv(directory)
    return server.run(argv[argv.index(RUNNER_MODULE) + 1:], cwd=directory, env=buildout_environment(directory),
                      identity=process.identity_for(directory, "buildout"), **kw)


def test_buildout_runs_as_the_owner(server, tmp_path):
    make_traversable(tmp_path)
    directory = workdir(tmp_path, "hello")
    lines = []
    result = run(server, directory, on_line=lines.append, log_file=tmp_path / "log")
    assert result.ok, result.output
    assert "Installing hello." in lines
    assert (directory / "hello.txt").read_text() == "hello from buildout\n"
    assert (directory / "hello.txt").stat().st_uid == directory.stat().st_uid
    assert "Installing hello." in (tmp_path / "log").read_text()
    assert run(server, directory).ok  # the same server serves many runs


def test_timeout_kills_the_buildout(server, tmp_path):
    make_traversable(tmp_path)
    directory = workdir(tmp_path, "slow")
    begin = time.monotonic()
    with pytest.raises(process.ProcessTimeout):
        run(server, directory, timeout=2)
    assert time.monotonic() - begin < 10
    pid = int((directory / "flag").read_text())
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z":
        assert time.monotonic() < deadline, "the buildout survived its timeout"
        time.sleep(0.05)


def test_a_dead_server_is_reported(server, tmp_path):
    make_traversable(tmp_path)
    directory = workdir(tmp_path, "hello")
    server.start()
    server._proc.kill()
    server._proc.wait()
    with pytest.raises(ForkServerGone):
        run(server, directory, timeout=10)
