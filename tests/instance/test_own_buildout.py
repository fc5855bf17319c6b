"""A software release that brought its own `bin/buildout` (as releases pinning the SlapOS fork
of buildout do on the reference) gets its instance profiles run by that buildout; the script the
node writes itself is not "the release's own": those run in the fork server."""
from __future__ import annotations

import os
import sys

from slapos.grid.buildout import release_buildout, write_runner_script
from slapos.grid.partition import software_directory

OWN = """#!{python} -I
# a software release's own buildout (here: it records that it ran, then runs buildout)
import pathlib, sys
pathlib.Path("own-buildout-ran").write_text(" ".join(sys.argv[1:]))
from slapos.grid.buildout_extension import main
sys.exit(main())
"""


def test_the_release_own_buildout_runs_its_instances(instance_node):
    node = instance_node(partitions=1)
    url = node.install("cheap")
    software = software_directory(node.software_root, url)
    own = software / "bin" / "buildout"
    own.parent.mkdir(exist_ok=True)
    own.write_text(OWN.format(python=sys.executable))
    os.chmod(own.parent, 0o755)
    os.chmod(own, 0o755)
    partition = node.request(url, "own")
    assert node.instance() == 0
    path = node.partition_path(partition)
    assert "buildout:directory=" in (path / "own-buildout-ran").read_text()
    assert "running the software release's own" in node.partition(partition).log_path.read_text()


def test_the_node_runner_script_is_not_the_release_own(tmp_path):
    write_runner_script(tmp_path / "bin" / "buildout")
    assert release_buildout(tmp_path) is None
    (tmp_path / "bin" / "buildout").unlink()
    (tmp_path / "bin" / "buildout").symlink_to("/bin/true")  # a link is never followed as root
    assert release_buildout(tmp_path) is None
    (tmp_path / "bin" / "buildout").unlink()
    (tmp_path / "bin" / "buildout").write_text("#!/bin/sh\nexit 0\n")
    assert release_buildout(tmp_path) == tmp_path / "bin" / "buildout"
