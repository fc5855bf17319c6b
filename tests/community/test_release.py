"""A software release written exactly as slapos.git writes them, from PyPI eggs (slapos.cookbook,
slapos.recipe.template, slapos.toolbox, pinned), runs unchanged on our node: software builds,
instance deploys with cookbook recipes (slapconfiguration, mkdirectory, generate.password,
wrapper, promise.plugin, publish), the published URL answers, and the toolbox promise plugin
fails with its own message when the port is closed (exit 2) and passes when it is open (exit 0).
Then: the release's own `slapos.*` modules (its slapos.core egg) win over the node's inside its
instance buildouts and its promise plugins. One file: the tests share one built release (pytest-xdist
`--dist loadfile` keeps them on one worker)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

import pytest

from slapos.grid.buildout import buildout_argv, buildout_environment, run_buildout
from slapos.grid.forkserver import ForkServer
from tests.conftest import make_traversable, wait_for
from tests.fixtures.proxy import free_port

from .conftest import RELEASE

pytestmark = [pytest.mark.registry, pytest.mark.slow]


def connection(node, url: str, title: str, parameters: dict) -> dict:
    """The published parameters (asked the way a user does: the same request again)."""
    cp = node.proxy.connect().registerOpenOrder().request(url, title, partition_parameter_kw=parameters)
    return cp.getConnectionParameterDict()


def test_release_files_carry_no_workaround():
    text = "\n".join(p.read_text() for p in RELEASE.parent.iterdir() if p.is_file())
    for word in ("slapnode", "slapos.grid.buildout_extension", "_slapnode", "sys.path"):
        assert word not in text


def test_community_release_deploys_and_its_toolbox_plugin_judges(community_node):
    node, url, software = community_node
    assert (software / "instance.cfg").is_file()
    port = free_port()
    parameters = {"port": str(port)}
    partition = node.request(url, "hello", parameters)
    assert node.instance() == 0, node.partition(partition).log_path.read_text()[-3000:]
    published = connection(node, url, "hello", parameters)
    assert published["url"] == f"http://127.0.0.1:{port}/"
    assert len(published["password"]) >= 12
    with urllib.request.urlopen(published["url"], timeout=10) as response:
        assert response.status == 200
    path = node.partition_path(partition)
    plugin = path / "etc" / "plugin" / "http-listening.py"
    assert "slapos.promise.plugin.check_socket_listening" in plugin.read_text()
    status = json.loads((path / ".slapgrid/promise/result/http-listening.status.json").read_text())
    assert status["result"]["failed"] is False
    assert "socket connection OK" in status["result"]["message"]
    # the plugin wrote its own log where the monitoring stack reads it
    assert "socket connection OK" in (path / ".slapgrid/promise/log/http-listening.log").read_text()

    # the port closed: `slapos node promise` runs the plugin, which fails with its own message
    node.supervisor().stop_partition(partition)
    result = node.slapos("node", "promise")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "ConnectionRefusedError" in result.stdout + result.stderr
    status = json.loads((path / ".slapgrid/promise/result/http-listening.status.json").read_text())
    assert status["result"]["failed"] is True

    # open again: the plugin passes, `slapos node promise` exits 0
    node.supervisor().start_partition(partition)
    wait_for(lambda: _answers(published["url"]), timeout=30)
    result = node.slapos("node", "promise")
    assert result.returncode == 0, result.stdout + result.stderr
    status = json.loads((path / ".slapgrid/promise/result/http-listening.status.json").read_text())
    assert status["result"]["failed"] is False


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False


PROBE_PLUGIN = '''
from zope.interface import implementer
from slapos.grid.promise import interface
from slapos.grid.promise.generic import GenericPromise
import slapos.grid.svcbackend
import slapos.util


@implementer(interface.IPromise)
class RunPromise(GenericPromise):
    def sense(self):
        self.logger.info("svcbackend=%s util=%s generic=%s", slapos.grid.svcbackend.__file__,
                         slapos.util.__file__, GenericPromise.__module__)
'''

PROBE_PROFILE = """[buildout]
parts = directory probe
eggs-directory = {eggs}
develop-eggs-directory = {directory}/develop-eggs
offline = true

[directory]
recipe = slapos.cookbook:mkdirectory
etc = ${{buildout:directory}}/etc

[probe]
recipe = slapos.recipe.template:jinja2
inline = {{{{ slap.__file__ }}}} {{{{ svc.__file__ }}}}
output = ${{buildout:directory}}/probe.txt
context =
  import slap slapos.slap
  import svc slapos.grid.svcbackend
"""


def prelude(generated: str) -> str:
    """The first lines of a plugin generated by slapos.cookbook:promise.plugin: the release's
    eggs first in sys.path (and its clean-up of already imported `slapos` modules)."""
    return generated.split("\nextra_config_dict")[0] + "\n"


def test_a_plugin_gets_the_release_slapos_grid_modules(community_node):
    node, url, software = community_node
    partition = node.request(url, "probe", {"port": str(free_port())})
    assert node.instance() == 0
    path = node.partition_path(partition)
    generated = (path / "etc/plugin/http-listening.py").read_text()
    probe = path / "etc/plugin/probe.py"
    probe.write_text(prelude(generated) + PROBE_PLUGIN)
    os.chmod(probe, 0o644)
    result = node.slapos("node", "promise")
    assert result.returncode == 0, result.stdout + result.stderr
    message = json.loads((path / ".slapgrid/promise/result/probe.status.json").read_text())["result"]["message"]
    eggs = str(software / "eggs")
    fields = dict(part.split("=", 1) for part in message.split())
    assert fields["svcbackend"].startswith(eggs) and "slapos.core-" in fields["svcbackend"]
    assert fields["util"].startswith(eggs)
    assert fields["generic"] == "slapos.grid.promise.generic"


@pytest.mark.parametrize("launcher", ["forkserver", "process"])
def test_instance_buildout_recipes_get_the_release_slapos_modules(community_node, tmp_path, launcher):
    _node, _url, software = community_node
    directory = tmp_path / "probe"
    directory.mkdir()
    make_traversable(directory)
    (directory / "buildout.cfg").write_text(PROBE_PROFILE.format(eggs=software / "eggs" / "v5", directory=directory))
    env = buildout_environment(directory)
    if launcher == "forkserver":
        server = ForkServer()
        try:
            argv = buildout_argv(directory)
            result = server.run(argv[argv.index("-U"):], cwd=directory, env=env, timeout=120)
        finally:
            server.close()
    else:
        result = run_buildout(directory, None, None, timeout=120)
    assert result.ok, result.output
    slap, svcbackend = (directory / "probe.txt").read_text().split()
    assert slap.startswith(str(software / "eggs")), slap
    assert svcbackend.startswith(str(software / "eggs")), svcbackend


def test_our_promise_plugins_still_get_our_interface(tmp_path):
    """Without a release's eggs first, a plugin of our simpler interface runs with our modules."""
    plugin = tmp_path / "mine.py"
    plugin.write_text("from slapos.grid.promise_plugin import GenericPromise\n\n"
                      "class RunPromise(GenericPromise):\n"
                      "    def sense(self):\n"
                      "        self.logger.info('fine')\n")
    from slapos.grid import promise_plugin

    out = subprocess.run([sys.executable, "-I", promise_plugin.__file__, str(plugin)], capture_output=True,
                         text=True, timeout=60)
    line = [x for x in out.stdout.splitlines() if x.startswith(promise_plugin.RESULT_MARKER)][-1]
    assert json.loads(line[len(promise_plugin.RESULT_MARKER):])["message"] == "fine"
