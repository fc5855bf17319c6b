"""Our compatible modules for releases that do not bring slapos.core: `slapos.util` and
`slapos.grid.promise.generic` / `interface`, run by the node's plugin runner."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from slapos import util
from slapos.grid import promise_plugin
from slapos.grid.promise.generic import AnomalyResult, GenericPromise, PromiseQueueResult, TestResult


def test_util_ipv6_helpers():
    assert util.binFromIpv6("2001:db8::").startswith("0010000000000001")
    assert len(util.binFromIpv6("::1")) == 128
    assert util.ipv6FromBin(util.binFromIpv6("2001:db8::42")) == "2001:db8::42"
    assert util.ipv6FromBin("1" * 16, "1") == "ffff::1"
    assert util.getPartitionIpv6Addr({"addr": "2001:db8::", "prefixlen": 64}, 0) == \
        {"addr": "2001:db8::2", "prefixlen": 64}
    assert util.getPartitionIpv6Range({"addr": "2001:db8::", "prefixlen": 48}, 0, 16) == \
        {"addr": "2001:db8:0:4001::", "prefixlen": 64}
    assert util.getIpv6RangeFirstAddr("2001:db8::", 64) == "2001:db8::1"
    assert util.lenNetmaskIpv6("ffff:ffff:ffff:ffff::") == 64
    assert util.netmaskFromLenIPv6(64) == "ffff:ffff:ffff:ffff::"


def test_util_misc(tmp_path):
    assert util.string_to_boolean("True") is True and util.string_to_boolean("false") is False
    try:
        util.string_to_boolean("yes")
    except ValueError:
        pass
    else:
        raise AssertionError("'yes' must be refused")
    assert util.xml2dict(util.dict2xml({"a": "1", "b": 2})) == {"a": "1", "b": "2"}
    util.mkdir_p(str(tmp_path / "x" / "y"))
    util.mkdir_p(str(tmp_path / "x" / "y"))
    assert util.listifdir(str(tmp_path / "missing")) == ()
    assert util.str2bytes(util.bytes2str(b"abc")) == b"abc"
    assert util.calculate_dict_hash({"a": 1}) == util.calculate_dict_hash({"a": 1})


class _Queue:
    def __init__(self):
        self.items = []

    def put_nowait(self, item):
        self.items.append(item)


def _promise(cls, tmp_path, **extra):
    queue = _Queue()
    config = {"queue": queue, "name": "p.py", "path": str(tmp_path / "p.py"),
              "partition-folder": str(tmp_path), "log-folder": str(tmp_path / "log"), **extra}
    return cls(config), queue


def test_generic_promise_validates_its_configuration(tmp_path):
    class P(GenericPromise):
        def sense(self):
            pass

    try:
        P({"name": "p.py", "path": "x", "partition-folder": "y"})
    except ValueError as e:
        assert "Queue" in str(e)
    else:
        raise AssertionError("a promise without queue must be refused")


def test_generic_promise_anomaly_counts_failing_runs(tmp_path):
    class P(GenericPromise):
        def sense(self):
            self.logger.error("down")

        def anomaly(self):
            return self._anomaly(result_count=3, failure_amount=3)

    for run in range(3):
        promise, queue = _promise(P, tmp_path)
        promise._GenericPromise__run_id = f"1-{100 + run}"  # distinct runs in one second
        promise._configureLogger()
        promise.run(check_anomaly=True, can_bang=False)
        result = queue.items[-1]
        assert isinstance(result, PromiseQueueResult) and isinstance(result.item, AnomalyResult)
        assert result.item.hasFailed() is (run == 2), run  # failed only after 3 failing runs
        assert result.item.message == "down"
    lines = (tmp_path / "log" / "p.log").read_text().splitlines()
    assert len(lines) == 3 and " - ERROR - " in lines[0]
    assert result.serialize()["result"]["type"] == "Anomaly Result"


def test_generic_promise_test_less_sends_an_empty_result(tmp_path):
    class P(GenericPromise):
        def __init__(self, config):
            super().__init__(config)
            self.setTestLess()

        def sense(self):
            self.logger.info("fine")

    promise, queue = _promise(P, tmp_path)
    promise.run(check_anomaly=False)
    assert queue.items[-1].item.type() == "Empty Result"
    assert not promise.isTested() and promise.isAnomalyDetected()


def test_runner_drives_an_ecosystem_plugin_on_our_generic(tmp_path):
    plugin = tmp_path / "check.py"
    plugin.write_text(
        "from zope.interface import implementer\n"
        "from slapos.grid.promise import interface\n"
        "from slapos.grid.promise.generic import GenericPromise\n\n"
        "extra_config_dict = {'expected': 'yes'}\n\n"
        "@implementer(interface.IPromise)\n"
        "class RunPromise(GenericPromise):\n"
        "    def __init__(self, config):\n"
        "        super().__init__(config)\n"
        "        self.setPeriodicity(7)\n"
        "    def sense(self):\n"
        "        if self.getConfig('expected') == 'yes':\n"
        "            self.logger.error('it failed, on purpose')\n")
    (tmp_path / "log").mkdir()
    out = subprocess.run([sys.executable, "-I", promise_plugin.__file__, str(plugin), "--config",
                          f"log-folder={tmp_path / 'log'}", "--config", f"partition-folder={tmp_path}"],
                         capture_output=True, text=True, timeout=60, env={**os.environ})
    line = [x for x in out.stdout.splitlines() if x.startswith(promise_plugin.RESULT_MARKER)][-1]
    result = json.loads(line[len(promise_plugin.RESULT_MARKER):])
    assert result["failed"] is True and result["message"] == "it failed, on purpose"
    assert result["periodicity"] == 7 and result["own_log"] is True
    assert "it failed, on purpose" in (tmp_path / "log" / "check.log").read_text()
    assert TestResult(problem=True, message="x" * 6000).message.startswith("...")


def test_runner_gives_a_plugin_its_release_modules_even_after_ours(tmp_path):
    """A fake release egg brings `slapos.grid.svcbackend` and its own `slapos.grid.promise`; the
    plugin puts the node's own package *before* it in sys.path (as generated plugins may put the
    node's site-packages among the release's eggs): the release's modules still win, and ours
    answer what the release lacks (`slapos.util` here)."""
    from tests.conftest import REPO

    egg = tmp_path / "fake-release.egg"
    grid = egg / "slapos" / "grid"
    (grid / "promise").mkdir(parents=True)
    (grid / "__init__.py").write_text("")
    (grid / "svcbackend.py").write_text("WHO = 'release'\n")
    (grid / "promise" / "__init__.py").write_text("")
    (grid / "promise" / "interface.py").write_text("from zope.interface import Interface\n"
                                                   "class IPromise(Interface):\n    pass\n")
    (grid / "promise" / "generic.py").write_text(
        (REPO / "slapos" / "grid" / "promise" / "generic.py").read_text() + "\nWHO = 'release'\n")
    plugin = tmp_path / "probe.py"
    plugin.write_text(
        "import sys\n"
        f"sys.path[0:0] = [{str(REPO)!r}, {str(egg)!r}]\n"
        "for module in list(sys.modules):\n"
        "    if 'slapos' in module:\n"
        "        del sys.modules[module]\n"
        "from slapos.grid.promise.generic import GenericPromise, WHO as GENERIC\n"
        "import slapos.grid.svcbackend, slapos.util\n\n"
        "class RunPromise(GenericPromise):\n"
        "    def sense(self):\n"
        "        self.logger.info('%s %s %s', GENERIC, slapos.grid.svcbackend.WHO, slapos.util.__file__)\n")
    out = subprocess.run([sys.executable, "-I", promise_plugin.__file__, str(plugin), "--config",
                          f"partition-folder={tmp_path}"], capture_output=True, text=True, timeout=60)
    line = [x for x in out.stdout.splitlines() if x.startswith(promise_plugin.RESULT_MARKER)][-1]
    result = json.loads(line[len(promise_plugin.RESULT_MARKER):])
    assert len(result["message"].split()) == 3, (result, out.stderr[-2000:])
    generic, svcbackend, util_file = result["message"].split()
    assert (generic, svcbackend) == ("release", "release"), out.stderr
    assert util_file == str(REPO / "slapos" / "util.py")


def test_legacy_sha1_signatures_need_an_rsa_certificate_opted_in(tmp_path):
    import pytest
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    from slapos.base.errors import ConfigError
    from slapos.grid.cache import CacheConfig, load_private_key, verify, verify_legacy_sha1
    from tests.software.conftest import make_signer

    key_file, certificate = make_signer(tmp_path, "rsa", "legacy")
    _, ed_certificate = make_signer(tmp_path, "ed25519", "modern")
    options = {"download-binary-cache-url": "http://127.0.0.1:1/cache",
               "download-binary-dir-url": "http://127.0.0.1:1/dir"}
    with pytest.raises(ConfigError, match="no RSA certificate"):
        CacheConfig.from_options({**options, "legacy-sha1-certificate-list": ed_certificate})
    config = CacheConfig.from_options({**options, "legacy-sha1-certificate-list": certificate})
    assert config.can_download("http://example.invalid/software.cfg") and not config.trusted_keys
    data = b'{"sha512": "..."}'
    signature = load_private_key(key_file).sign(data, padding.PKCS1v15(), hashes.SHA1())
    public = x509.load_pem_x509_certificate(certificate.encode()).public_key()
    assert verify_legacy_sha1(public, signature, data)
    assert not verify_legacy_sha1(public, signature, data + b" ")
    assert not verify(public, signature, data)  # never accepted as a modern signature


def test_a_plugin_cannot_swallow_its_timeout(tmp_path):
    """The reference's GenericPromise.run catches every Exception of sense(): the timeout is not
    one, so a slow ecosystem plugin still ends with the timeout message."""
    plugin = tmp_path / "slow.py"
    plugin.write_text(
        "import time\n"
        "from slapos.grid.promise.generic import GenericPromise\n\n"
        "class RunPromise(GenericPromise):\n"
        "    def sense(self):\n"
        "        try:\n"
        "            time.sleep(30)\n"
        "        except Exception:\n"
        "            self.logger.info('swallowed')\n")
    out = subprocess.run([sys.executable, "-I", promise_plugin.__file__, str(plugin), "--timeout", "0.5",
                          "--config", f"partition-folder={tmp_path}"], capture_output=True, text=True, timeout=60)
    line = [x for x in out.stdout.splitlines() if x.startswith(promise_plugin.RESULT_MARKER)][-1]
    result = json.loads(line[len(promise_plugin.RESULT_MARKER):])
    assert result["failed"] is True and result["message"] == "Error: Promise timed out after 0.5 seconds"


def test_standalone_shared_part_root_and_its_clear_limits(tmp_path):
    """shared_part_root is the last (writable) entry of the shared part list, as in the reference;
    what is not supported fails at once with one line saying what to do."""
    import pytest

    from slapos.slap.standalone import StandaloneSlapOS

    root = tmp_path / "shared"
    node = StandaloneSlapOS(tmp_path / "sa", "127.0.0.1", 4999, shared_part_list=[tmp_path / "ro"],
                            shared_part_root=root)
    assert root.is_dir() and node.shared_directory == str(root)
    config = (tmp_path / "sa" / "slapos.cfg").read_text()
    assert config.index(str(tmp_path / "ro")) < config.index(str(root))
    with pytest.raises(ValueError, match="give shared_part_root"):
        StandaloneSlapOS(tmp_path / "sb", "127.0.0.1", 4999).shared_directory  # noqa: B018
    for kwargs in ({"instance_only": True}, {"public_directory_path": str(tmp_path)},
                   {"partition_forward_configuration": ({"master-url": "http://x/"},)}):
        with pytest.raises(NotImplementedError, match="does not support .*: drop it, or run this suite"):
            StandaloneSlapOS(tmp_path / "sc", "127.0.0.1", 4999, **kwargs)
    with pytest.raises(NotImplementedError, match="slapos node supervisorctl"):
        node.system_supervisor_rpc  # noqa: B018
