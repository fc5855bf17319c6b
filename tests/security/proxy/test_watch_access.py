"""Who may watch a computer (`/watchComputer`, docs/watch.md): exactly who may read its document
(`getFullComputerInformation`), in each access mode. A partition's credential or certificate,
another computer's certificate, or none where one is needed get the same refusal; the node's own
identity watches and is woken. Also: a `slapos proxy start` stopped by SIGTERM answers its
waiting watches instead of hanging on them."""
from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from slapos.proxy import ca
from slapos.proxy.config import ProxyConfig
from slapos.proxy.server import create_server, url_of
from slapos.slap import AuthenticationError, slap
from slapos.slap.watch import Change, watch_computer
from tests.fixtures.node import build_node
from tests.fixtures.proxy import start_proxy
from tests.security.proxy.conftest import call

SR = "https://example.org/twatch/software.cfg"
LONG = 50.0


def watch_in_thread(connection, computer_id: str, cursor: str, timeout: float = LONG) -> tuple[threading.Thread, list]:
    out: list = []

    def run() -> None:
        started = time.monotonic()
        try:
            out.append(watch_computer(connection, computer_id, cursor, timeout))
        except Exception as e:  # noqa: BLE001 - handed to the test
            out.append(e)
        out.append(time.monotonic() - started)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_credentials_mode_the_node_watches_a_partition_or_nobody_is_refused_alike(cproxy, tmp_path):
    node = build_node(tmp_path / "node", cproxy, partitions=3)
    cid = node.computer_id
    owner = cproxy.connect()  # the node credential
    owner.registerSupply().supply(SR, cid)
    owner.registerOpenOrder().request(SR, "alpha")
    relative = [getattr(p, "_slapnode_master_url", None) for p in owner.registerComputer(cid).getComputerPartitionList()]
    partition_prefix = urlsplit(urljoin(cproxy.url, next(r for r in relative if r))).path
    port = urlsplit(cproxy.url).port
    node_prefix = urlsplit(cproxy.url).path
    for prefix, expected in ((node_prefix, 200), (partition_prefix, 403), ("/", 403), ("/c/" + "A" * 43 + "/", 403)):
        full = call(port, "GET", prefix + "getFullComputerInformation", {"computer_id": cid})
        watched = call(port, "GET", prefix + "watchComputer", {"computer_id": cid})
        assert (watched[0], full[0]) == (expected, expected), (prefix, watched, full)
    # the partition's own client gets the client's refusal, and the node is woken by a change
    tenant = slap()
    tenant.initializeConnection(urljoin(cproxy.url, next(r for r in relative if r)))
    with pytest.raises(AuthenticationError):
        watch_computer(tenant.connection, cid, None, 5)
    cursor = watch_computer(owner.connection, cid, None, 5).cursor
    thread, out = watch_in_thread(owner.connection, cid, cursor)
    time.sleep(0.2)  # (if the change comes before the watch waits, the log answers it just the same)
    owner.registerOpenOrder().request(SR, "alpha", partition_parameter_kw={"p": "2"})
    thread.join(LONG + 20)
    assert out[0].changes == [Change("partition", reference="slappart0")] and out[1] < LONG


class InProcessTLS:
    """A mutual-TLS proxy (tls.py) served from a thread, with certificates issued by its CA."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True)
        self.directory = directory
        self.server, self.app = create_server(ProxyConfig(database=directory / "proxy.db", port=0, tls=True,
                                                          threads=4, computer_id="edge-a"))
        self.url = url_of("127.0.0.1", self.server.effective_port, tls=True)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def identity(self, name: str, kind: str, computer: str, partition: str | None = None) -> tuple[Path, Path]:
        issued = self.app.ca.issue(name, kind)
        with self.app.db.write(documents=False) as conn:
            ca.record(conn, issued, kind, computer, partition)
        cert, key = self.directory / f"{name.replace('/', '_')}.crt", self.directory / f"{name.replace('/', '_')}.key"
        cert.write_text(issued.certificate)
        key.write_text(issued.key)
        key.chmod(0o600)
        return cert, key

    def connect(self, identity: tuple[Path, Path] | None):
        connection = slap()
        cert, key = identity or (None, None)
        connection.initializeConnection(self.url, cert_file=str(cert) if cert else None,
                                        key_file=str(key) if key else None,
                                        master_ca_file=str(self.app.ca.cert_path), timeout=10)
        return connection

    def status(self, path: str, identity: tuple[Path, Path] | None) -> int:
        context = ssl.create_default_context(cafile=str(self.app.ca.cert_path))
        if identity:
            context.load_cert_chain(str(identity[0]), str(identity[1]))
        conn = http.client.HTTPSConnection("127.0.0.1", self.server.effective_port, timeout=10, context=context)
        try:
            conn.request("GET", path)
            return conn.getresponse().status
        finally:
            conn.close()

    def stop(self) -> None:
        self.app.watch.close()
        self.server.shutdown()
        self.server.server_close()
        self.app.close()


@pytest.fixture
def tls_proxy(tmp_path):
    proxy = InProcessTLS(tmp_path / "tls")
    try:
        yield proxy
    finally:
        proxy.stop()


def test_tls_a_computer_certificate_watches_its_own_computer_only(tls_proxy):
    from tests.security.proxy.test_join import computer_document

    a = tls_proxy.identity("edge-a", "computer", "edge-a")
    b = tls_proxy.identity("edge-b", "computer", "edge-b")
    node_a, node_b = tls_proxy.connect(a), tls_proxy.connect(b)
    node_a.registerComputer("edge-a").updateConfiguration(computer_document("edge-a", 2))
    node_b.registerComputer("edge-b").updateConfiguration(computer_document("edge-b", 2))
    node_a.registerSupply().supply(SR, "edge-a")
    instance = node_a.registerOpenOrder().request(SR, "tree-a", filter_kw={"computer_guid": "edge-a"})
    partition = tls_proxy.identity("edge-a/" + instance.getId(), "partition", "edge-a", instance.getId())
    for identity, computer, expected in ((a, "edge-a", 200), (b, "edge-b", 200), (a, "edge-b", 403),
                                         (b, "edge-a", 403), (partition, "edge-a", 403), (None, "edge-a", 403)):
        full = tls_proxy.status(f"/getFullComputerInformation?computer_id={computer}", identity)
        watched = tls_proxy.status(f"/watchComputer?computer_id={computer}", identity)
        assert (watched, full) == (expected, expected), (identity, computer)
    with pytest.raises(AuthenticationError):
        watch_computer(node_b.connection, "edge-a", None, 5)
    # node A waits on TLS while other calls keep being answered; B's change does not wake it,
    # A's does
    cursor = watch_computer(node_a.connection, "edge-a", None, 5).cursor
    thread, out = watch_in_thread(node_a.connection, "edge-a", cursor)
    deadline = time.monotonic() + 20
    while tls_proxy.app.watch.waiting < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    node_b.registerSupply().supply(SR, "edge-b")  # answered while A's watch holds its thread
    assert [p.getId() for p in node_b.registerComputer("edge-b").getComputerPartitionList()] == ["slappart0",
                                                                                                  "slappart1"]
    assert thread.is_alive()
    node_a.registerOpenOrder().request(SR, "tree-a", {"x": "1"}, filter_kw={"computer_guid": "edge-a"})
    thread.join(LONG + 20)
    assert out[0].changes == [Change("partition", reference=instance.getId())] and out[1] < LONG


def test_sigterm_does_not_wait_for_waiting_watches(tmp_path):
    running = start_proxy(tmp_path / "proxy", "COMP-0", {"slapproxy": {"threads": "4"}})
    try:
        connection = running.connect()
        cursor = watch_computer(connection.connection, "COMP-0", None, 5).cursor
        threads = [watch_in_thread(connection.connection, "COMP-0", cursor) for _ in range(2)]
        time.sleep(0.5)  # let them reach the proxy and wait there
        started = time.monotonic()
        assert running.stop(timeout=LONG) == 0
        for thread, out in threads:
            thread.join(LONG + 20)
            assert out and out[-1] < LONG, "a watch waited for its timeout although the proxy stopped"
        assert time.monotonic() - started < LONG
    finally:
        running.stop()


def test_an_open_proxy_answers_a_watch_of_an_unknown_computer_at_once(tmp_path):
    """On an open proxy any local process may watch: watches of made-up computer ids would take
    every waiting place (threads // 2, two per id) and turn the nodes to polling. A computer the
    proxy does not know is answered at once (404, one line); the proxy's own computer, known
    before it is formatted, and a described one are watched as before; the node's client retries
    (back-off) instead of falling back to polling."""
    from slapos.slap.exceptions import NotFoundError
    from slapos.slap.watch import WatchResult, WatchUnsupported

    running = start_proxy(tmp_path / "proxy")
    try:
        port = urlsplit(running.url).port
        status, body = call(port, "GET", "/watchComputer", {"computer_id": "local_computer"})
        assert status == 200, body
        cursor = json.loads(body)["cursor"]
        for n in range(12):  # more than the waiting places: none of them waits 55 s
            status, body = call(port, "GET", "/watchComputer",
                                {"computer_id": f"made-up-{n}", "cursor": cursor, "timeout": "55"})
            assert status == 404 and "unknown computer" in body and len(body.strip().splitlines()) == 1, body
        # the node's own watch still finds a place and waits (answered here by a change)
        connection = running.connect()
        thread, out = watch_in_thread(connection, "local_computer", cursor)
        connection.registerSupply().supply(SR, "local_computer")  # (a change before it waits is kept too)
        thread.join(LONG + 10)
        assert isinstance(out[0], WatchResult), out
        assert [c.url for c in out[0].changes] == [SR]
        with pytest.raises(NotFoundError) as raised:
            watch_computer(connection, "made-up", cursor, 5)
        assert not isinstance(raised.value, WatchUnsupported)
    finally:
        running.stop()
