"""A software release test suite written the way slapos.git's `test/` folders are written
(unittest, `slapos.testing.testcase.makeModuleSetUpAndTestCaseClass`) runs against our
`slapos.slap.standalone.StandaloneSlapOS`: build, deploy, check the published URL, destroy."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, make_traversable
from tests.fixtures.proxy import free_port

pytestmark = pytest.mark.slow

SUITE = '''
import os
import urllib.request

from slapos.testing.testcase import makeModuleSetUpAndTestCaseClass

setUpModule, SlapOSInstanceTestCase = makeModuleSetUpAndTestCaseClass(
    os.path.abspath(os.path.join({release!r}, "software.cfg")))


class TestHelloWeb(SlapOSInstanceTestCase):
    partition_count = 2

    @classmethod
    def getInstanceParameterDict(cls):
        return {{"port": "{port}", "message": "hello from a test suite"}}

    def test_published_url_answers(self):
        url = self.computer_partition.getConnectionParameterDict()["url"]
        with urllib.request.urlopen(url, timeout=10) as response:
            self.assertIn(b"hello from a test suite", response.read())

    def test_partition_directory(self):
        self.assertTrue(os.path.isdir(os.path.join(self.computer_partition_root_path, "etc", "service")))


def tearDownModule():
    SlapOSInstanceTestCase.tearDownModule()
'''


def test_a_slapos_git_style_test_suite_runs_on_our_standalone_node(tmp_path):
    suite = tmp_path / "test_hello.py"
    suite.write_text(SUITE.format(release=str(REPO / "software-release" / "hello-web"), port=free_port()))
    work = tmp_path / "sa"
    make_traversable(tmp_path)
    env = dict(os.environ, SLAPOS_TEST_WORKING_DIR=str(work), PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "unittest", "-v", "test_hello"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Ran 2 tests" in proc.stderr and "OK" in proc.stderr
    # destroyed in tearDownClass, stopped in tearDownModule: no partition left in use
    assert not any((work / "inst").glob("slappart*/etc/service/*"))
