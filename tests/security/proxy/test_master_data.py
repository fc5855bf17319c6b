"""Master data cannot inject: control characters never reach a generated profile or supervisord
configuration, and a document of nested <reference> aliases is refused before it expands."""
from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from slapos.base.safetext import UnsafeValue, buildout_value, buildout_word, line_value, supervisor_value
from slapos.slap import wire
from tests.fixtures.proxy import REPO
from tests.security.proxy.conftest import call, dump

UNSAFE = ["\n", "\r", "\x00", "\x0b", "\x0c", "\x1b", "\x1c", "\x7f", "\x85", "\x9f", "\u2028", "\u2029"]


@pytest.mark.parametrize("char", UNSAFE)
def test_every_control_character_is_refused_with_the_key_named(char):
    for encode in (line_value, buildout_value, supervisor_value, buildout_word):
        with pytest.raises(UnsafeValue) as e:
            encode("software_release_url", f"http://x/{char}[buildout]", "the instance profile of slappart0")
        assert "software_release_url" in str(e.value) and "\n" not in str(e.value)


def test_values_are_encoded_for_their_format():
    assert buildout_value("k", "http://x/${slap-connection:partition-id}") == "http://x/$${slap-connection:partition-id}"
    assert supervisor_value("k", "50%(here)s") == "50%%(here)s"
    with pytest.raises(UnsafeValue):
        buildout_word("url", "http://a/software.cfg http://evil/extra.cfg")  # would extend a second profile


def laughs(levels: int = 40, width: int = 10) -> str:
    """~9 KB of xml_marshaller whose aliases expand to 64 × 10**40 characters."""
    body = ['<marshal><list><list id="i1"><string>' + "A" * 64 + "</string></list>"]
    for level in range(2, levels + 2):
        body.append(f'<list id="i{level}">' + f'<reference id="i{level - 1}"/>' * width + "</list>")
    body.append("</list></marshal>")
    return "".join(body)


def test_the_decoder_counts_aliases_each_time_they_are_used():
    document = laughs()
    assert len(document) < 10_000
    start = time.monotonic()
    with pytest.raises(wire.WireError, match="expands to more than"):
        wire.loads(document)
    assert time.monotonic() - start < 5  # refused while parsing, not after expanding
    shared = [1, 2]
    assert wire.loads(wire.dumps([shared, shared])) == [[1, 2], [1, 2]]  # legitimate aliases still decode
    with pytest.raises(wire.WireError):
        wire.loads(laughs(levels=3), max_expanded=1000)


def _hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_the_proxy_refuses_reference_bombs_quickly_with_bounded_memory(proxy):
    slap = proxy.connect()
    url = "https://example.org/tsecnet/bomb.cfg"
    before = dump(proxy.database)
    peak = _hwm_kb(proxy.process.pid)
    start = time.monotonic()
    for field in ("partition_parameter_xml", "filter_xml"):
        status, body = call(proxy.port, "POST", "/requestComputerPartition",
                            {"software_release": url, "partition_reference": "bomb", field: laughs()})
        assert status == 400 and "expands to more than" in body, body
    status, body = call(proxy.port, "POST", "/loadComputerConfigurationFromXML", {"xml": laughs()})
    assert status == 400 and "expands to more than" in body
    assert time.monotonic() - start < 10
    assert _hwm_kb(proxy.process.pid) - peak < 100 * 1024  # far from the gigabytes of the expansion
    assert dump(proxy.database) == before
    assert slap.registerComputer(proxy.computer_id).getSoftwareReleaseList() == []  # still serving


class _BombMaster(http.server.BaseHTTPRequestHandler):
    """A master on loopback whose computer document is a reference bomb."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = (laughs() if "getFullComputerInformation" in self.path else "run").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_node_instance_refuses_a_bomb_from_the_master_with_one_line(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BombMaster)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        config = tmp_path / "slapos.cfg"
        config.write_text(
            "[slapos]\n"
            f"master_url = http://127.0.0.1:{server.server_address[1]}/\n"
            "computer_id = COMP-bomb\n"
            f"software_root = {tmp_path / 'soft'}\ninstance_root = {tmp_path / 'inst'}\n"
            "root_check = false\n"
            f"pidfile_instance = {tmp_path / 'cp.pid'}\n"
        )
        (tmp_path / "inst").mkdir()
        code = (
            "import resource, sys\n"
            "from slapos.cli.main import main\n"
            "rc = main(sys.argv[1:])\n"
            "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
            "sys.exit(rc)\n"
        )
        start = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-c", code, "node", "instance", "--cfg", str(config), "--now"],
            capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        elapsed = time.monotonic() - start
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "expands to more than" in result.stderr
    maxrss_kb = int(result.stderr.rsplit("MAXRSS", 1)[1].split()[0])
    assert maxrss_kb < 400 * 1024, result.stderr
    assert elapsed < 60


@pytest.mark.parametrize("char", ["\x0c", "\x1b", "\x00"])
def test_the_proxy_refuses_identifiers_xml_cannot_carry(proxy, char):
    """Stored, they would make every later computer document fail to encode (a 500 for the node)."""
    before = dump(proxy.database)
    for path, fields in (("/supplySupply", {"url": f"http://x/{char}", "computer_id": proxy.computer_id,
                                            "state": "available"}),
                         ("/requestComputerPartition", {"software_release": "http://x/", "partition_reference": char})):
        status, body = call(proxy.port, "POST", path, fields)
        assert status == 400 and "\n" not in body.strip()
    assert dump(proxy.database) == before


@pytest.mark.parametrize("char", ["\r", "\u2028", "\x85", "\t"])
def test_node_instance_refuses_a_control_character_in_the_software_url(proxy, tmp_path, char):
    """The real proxy carries the URL; the real `node instance` refuses the partition, writes
    no profile and says which value, in one line."""
    from tests.conftest import make_traversable
    from tests.fixtures.node import build_node
    from tests.fixtures.supervisor import stop_supervisor
    from tests.instance.conftest import install_software

    node = build_node(tmp_path / "node", proxy, partitions=1)
    evil = f"{tmp_path}/software.cfg{char}[buildout]{char}parts = pwned{char}[pwned]{char}recipe = x"
    install_software(node.software_root, "cheap", url=evil)
    slap = proxy.connect()
    slap.registerSupply().supply(evil, node.computer_id)
    partition_id = slap.registerOpenOrder().request(evil, "victim").getId()
    from slapos.base.config import Config
    from slapos.base.settings import NodeSettings

    settings = NodeSettings.from_config(Config(node.config_path))
    try:
        make_traversable(node.root)
        result = subprocess.run([sys.executable, "-m", "slapos.cli.main", "node", "instance", "--cfg",
                                 str(node.config_path), "--now"], capture_output=True, text=True, timeout=300,
                                env=dict(os.environ, PYTHONPATH=str(REPO)))
    finally:
        stop_supervisor(settings)
    assert result.returncode == 1, result.stderr
    profile = node.instance_root / partition_id / "buildout.cfg"
    assert not profile.exists() or "pwned" not in profile.read_text()
    err = result.stderr
    assert "Traceback" not in err, err
    assert "software_release_url" in err and f"U+{ord(char):04X}" in err
    error_log = (node.instance_root / partition_id / ".slapgrid" / "error.log")
    reported = slap.registerComputerPartition(node.computer_id, partition_id)
    assert reported is not None and (not error_log.exists() or "software_release_url" in error_log.read_text())


def test_node_software_refuses_a_url_that_would_inject_into_its_profile(proxy, tmp_path):
    from tests.conftest import make_traversable
    from tests.fixtures.node import build_node

    node = build_node(tmp_path / "node", proxy, partitions=1)
    slap = proxy.connect()
    for evil in (f"{tmp_path}/a.cfg\r[buildout]\rextends = /etc/evil.cfg", f"{tmp_path}/a.cfg {tmp_path}/evil.cfg"):
        slap.registerSupply().supply(evil, node.computer_id)
    make_traversable(node.root)
    result = subprocess.run([sys.executable, "-m", "slapos.cli.main", "node", "software", "--cfg",
                             str(node.config_path), "--now"], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 1
    err = result.stderr
    assert "software release URL" in err and "Traceback" not in err
    for profile in node.software_root.glob("*/buildout.cfg"):
        assert "evil" not in profile.read_text()
