"""Base classes for the test suites of software releases, written the way slapos.git's `test/`
folders are written:

    from slapos.testing.testcase import makeModuleSetUpAndTestCaseClass

    setUpModule, SlapOSInstanceTestCase = makeModuleSetUpAndTestCaseClass(
        os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "software.cfg")))

    class TestService(SlapOSInstanceTestCase):
        @classmethod
        def getInstanceParameterDict(cls):
            return {"port": "8190"}

        def test_url(self):
            url = self.computer_partition.getConnectionParameterDict()["url"]
            ...

`setUpModule` starts a `slapos.slap.standalone.StandaloneSlapOS` in `base_directory`
(default: `$SLAPOS_TEST_WORKING_DIR`, else `.slapos` in the current directory; its master
listens on `$SLAPOS_TEST_IPV4` (default 127.0.0.1) and a free port), supplies the software release
and builds it. Each test class formats `partition_count` partitions, requests its default instance
(`getInstanceParameterDict()`, `getInstanceSoftwareType()`), deploys it (`instance_max_retry`
more tries) and, in `tearDownClass`, destroys it (`slapos node report`). The node is stopped by
`tearDownModule` (returned by `makeModuleSetUpAndTestCaseClass` as the attribute
`SlapOSInstanceTestCase.tearDownModule`, and registered with `unittest.addModuleCleanup`).

Not provided here: snapshots of failed tests, SBOM generation and upload, software checks
(`skip_software_check` is accepted and ignored: nothing is checked), managed resources, and
serving the software release over HTTP (it is supplied by path or URL as given).
"""
from __future__ import annotations

import logging
import os
import socket
import unittest
from typing import ClassVar

from slapos.slap.standalone import StandaloneSlapOS

IPV4_ADDRESS_DEFAULT = os.environ.get("SLAPOS_TEST_IPV4", "127.0.0.1")
IPV6_ADDRESS_DEFAULT = os.environ.get("SLAPOS_TEST_IPV6", "::1")


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class SlapOSInstanceTestCase(unittest.TestCase):
    """One instance of the software release, requested for a whole test class (see module docs).

    After `setUpClass`: `computer_partition` (a `slapos.slap` ComputerPartition as the requester
    sees it: `getConnectionParameterDict()`, `getId()`) and `computer_partition_root_path`.
    """

    instance_max_retry: ClassVar[int] = 10
    report_max_retry: ClassVar[int] = 5
    partition_count: ClassVar[int] = 5
    default_partition_reference: ClassVar[str] = "testing partition 0"
    request_instance: ClassVar[bool] = True
    software_id: ClassVar[str] = ""
    logger: ClassVar[logging.Logger] = logging.getLogger(__name__)

    slap: ClassVar[StandaloneSlapOS]
    _software_url: ClassVar[str]
    _ipv4_address: ClassVar[str] = IPV4_ADDRESS_DEFAULT
    _ipv6_address: ClassVar[str] = IPV6_ADDRESS_DEFAULT

    @classmethod
    def getSoftwareURL(cls) -> str:  # noqa: N802
        return cls._software_url

    @classmethod
    def getInstanceParameterDict(cls) -> dict:  # noqa: N802
        return {}

    @classmethod
    def getInstanceSoftwareType(cls) -> str | None:  # noqa: N802
        return None

    @classmethod
    def requestDefaultInstance(cls, state: str = "started"):  # noqa: N802
        return cls.slap.request(
            software_release=cls.getSoftwareURL(), partition_reference=cls.default_partition_reference,
            partition_parameter_kw=cls.getInstanceParameterDict(), software_type=cls.getInstanceSoftwareType(),
            state=state)

    @classmethod
    def formatPartitions(cls) -> None:  # noqa: N802
        cls.slap.format(cls.partition_count, cls._ipv4_address, cls._ipv6_address)

    @classmethod
    def waitForInstance(cls) -> None:  # noqa: N802
        cls.slap.waitForInstance(max_retry=cls.instance_max_retry)

    @classmethod
    def setUpClass(cls) -> None:  # noqa: N802
        cls.slap.start()
        cls.formatPartitions()
        if not cls.request_instance:
            return
        cls.requestDefaultInstance()
        cls.waitForInstance()
        cls.computer_partition = cls.requestDefaultInstance()  # now with its published parameters
        cls.computer_partition_root_path = os.path.join(cls.slap.instance_directory,
                                                        cls.computer_partition.getId())

    @classmethod
    def tearDownClass(cls) -> None:  # noqa: N802
        if cls.request_instance:
            cls.requestDefaultInstance(state="destroyed")
            cls.slap.waitForReport(max_retry=cls.report_max_retry)


def makeModuleSetUpAndTestCaseClass(  # noqa: N802
    software_url, *, base_directory: str | None = None, ipv4_address: str = IPV4_ADDRESS_DEFAULT,
    ipv6_address: str = IPV6_ADDRESS_DEFAULT, debug: bool = False, verbose: bool = False,
    skip_software_check: bool = False, skip_software_rebuild: bool = False, shared_part_list=(),
    snapshot_directory: str | None = None, software_id: str | None = None, software_max_retry: int = 2,
):
    """`(setUpModule, SlapOSInstanceTestCase)` for testing `software_url` (see module docs)."""
    software_url = os.fspath(software_url)
    base_directory = os.path.abspath(base_directory or os.environ.get("SLAPOS_TEST_WORKING_DIR")
                                     or os.path.join(os.getcwd(), ".slapos"))
    port = int(os.environ.get("SLAPOS_TEST_SERVER_PORT") or _free_port(ipv4_address))
    standalone = StandaloneSlapOS(base_directory, ipv4_address, port, shared_part_list=shared_part_list)
    software_id = software_id or os.path.basename(os.path.dirname(software_url.rstrip("/"))) or "software"
    name = "".join(part.capitalize() for part in software_id.replace("_", "-").split("-")) + "TestCase"

    def tearDownModule() -> None:  # noqa: N802
        standalone.stop()

    test_case = type(name, (SlapOSInstanceTestCase,), {
        "slap": standalone, "_software_url": software_url, "software_id": software_id,
        "_ipv4_address": ipv4_address, "_ipv6_address": ipv6_address,
        "tearDownModule": staticmethod(tearDownModule),
    })

    def setUpModule() -> None:  # noqa: N802
        standalone.start()
        unittest.addModuleCleanup(tearDownModule)
        standalone.supply(software_url)
        # skip_software_rebuild: nothing to skip, a built release costs a stat to `node software`
        standalone.waitForSoftware(max_retry=software_max_retry, debug=debug)

    return setUpModule, test_case
