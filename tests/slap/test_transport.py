"""The light HTTP transport (`slapos.slap.transport`) against real loopback servers: what goes on the
wire (byte-for-byte what `requests` sent), keep-alive reuse and its failure modes, threads, IPv6,
compressed and hostile answers, TLS details."""
from __future__ import annotations

import base64
import gzip
import select
import socket
import struct
import threading
import zlib

import pytest

from slapos.slap import BadRequestError, ConnectionError, ServerError, slap
from slapos.slap import transport as transport_module
from slapos.slap.connection import USER_AGENT, Connection

from .master import Answer, server_ssl_context, start_master


def _as_sent(fields: dict) -> dict:
    """The form as Connection.post hands it on (None → 'None', numbers → text)."""
    return {k: "None" if v is None else v if isinstance(v, (str, bytes)) else str(v) for k, v in fields.items()}


# -- what goes on the wire -------------------------------------------------------------------------


def test_form_body_is_byte_for_byte_what_requests_sent(master):
    import requests

    master.answer("setComputerPartitionConnectionXml", "ok")
    fields = {"computer_id": "COMP 1", "connection_xml": "<a b='c'>é &amp; +/~=</a>", "slave_reference": None,
              "n": 3, "raw": b"\xff\x00 x"}
    Connection(master.url).post("setComputerPartitionConnectionXml", fields)
    expected = requests.Request("POST", master.url + "x", data=_as_sent(fields)).prepare()
    received = master.requests[0]
    assert received.body == expected.body.encode()
    assert b"COMP+1" in received.body and b"slave_reference=None" in received.body
    assert received.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert received.headers["Content-Length"] == str(len(expected.body))


def test_query_string_is_what_requests_sent(master):
    import requests

    master.answer("registerComputerPartition", "ok")
    params = {"computer_reference": "COMP 1/é", "computer_partition_reference": "slap+part~0&x=y"}
    Connection(master.url).get("registerComputerPartition", {**params, "skipped": None})
    expected = requests.Request("GET", master.url + "registerComputerPartition", params=params).prepare()
    received = master.requests[0]
    assert received.target == expected.path_url
    assert received.query == params
    assert received.body == b"" and "Content-Length" not in received.headers


def test_request_headers(master):
    master.answer("getHateoasUrl", "ok")
    master.answer("registerOpenOrder", "ok")
    connection = Connection(master.url)
    connection.get("getHateoasUrl")
    connection.post("registerOpenOrder", {})
    get, post = master.requests
    host, port = master.server.server_address[:2]
    for received in (get, post):
        assert received.headers["User-Agent"] == USER_AGENT
        assert received.headers["Accept"] == "*/*"
        assert received.headers["Accept-Encoding"] == "gzip, deflate"
        assert received.headers["Host"] == f"{host}:{port}"
        assert "Authorization" not in received.headers
    # a POST without fields: empty body, Content-Length 0 and no Content-Type (as requests did)
    assert post.body == b"" and post.headers["Content-Length"] == "0"
    assert "Content-Type" not in post.headers


def test_partition_header_only_on_partition_posts(master):
    master.answer("availableComputerPartition", "ok")
    master.answer("getComputerPartitionCertificate", "<marshal><dictionary id='i2'/></marshal>")
    connection = Connection(master.url)
    connection.post("availableComputerPartition", {"computer_id": "C", "computer_partition_id": "p"},
                    partition=("C", "p"))
    connection.get("getComputerPartitionCertificate", {"computer_id": "C", "computer_partition_id": "p"})
    post, get = master.requests
    assert post.headers["Authorization"] == "X-SlapPartition computer_id=C, computer_partition_id=p"
    assert "Authorization" not in get.headers


def test_header_injection_is_refused_before_sending(master):
    master.answer("startedComputerPartition", "ok")
    connection = Connection(master.url)
    with pytest.raises(BadRequestError, match="request not sent, it is invalid.*check the computer and partition ids"):
        connection.post("startedComputerPartition", {"computer_id": "C"}, partition=("C\r\nX-Evil: 1", "p"))
    assert master.requests == []
    assert connection.post("startedComputerPartition", {"computer_id": "C"}, partition=("C", "p")) == b"ok"


def test_basic_credentials_in_the_master_url_are_sent_and_never_shown(master):
    master.answer("getHateoasUrl", "ok")
    master.answer("useComputer", "no", status=500)
    url = master.url.replace("http://", "http://node%201:s%3Acret@")
    connection = Connection(url)
    connection.get("getHateoasUrl")
    sent = master.requests[0].headers["Authorization"]
    assert base64.b64decode(sent.split()[1]) == b"node 1:s:cret"
    with pytest.raises(ServerError) as info:
        connection.post("useComputer", {"computer_id": "C"})
    assert "cret" not in str(info.value) and "cret" not in info.value.url
    assert master.url + "useComputer" in str(info.value)


def test_ipv6_literal_master_with_a_path_prefix():
    try:
        master = start_master(host="::1")
    except OSError as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"no IPv6 loopback here: {e}")
    try:
        master.answer("getComputerStatus", "ok")
        port = master.server.server_address[1]
        connection = Connection(f"http://[::1]:{port}/erp5/web site")
        assert connection.get("getComputerStatus", {"computer_id": "C"}) == b"ok"
        received = master.requests[0]
        assert received.target == "/erp5/web%20site/getComputerStatus?computer_id=C"
        assert received.headers["Host"] == f"[::1]:{port}"
    finally:
        master.stop()


# -- answers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding,compress", [
    ("gzip", gzip.compress),
    ("deflate", zlib.compress),  # zlib-wrapped, as the RFC says
    ("deflate", lambda data: zlib.compress(data)[2:-4]),  # raw deflate, as some servers send
])
def test_compressed_answers_are_decoded(master, encoding, compress):
    document = b"<marshal><string>" + b"x" * 100_000 + b"</string></marshal>"
    master.answer("getFullComputerInformation", compress(document), headers={"Content-Encoding": encoding})
    assert Connection(master.url).get("getFullComputerInformation", {"computer_id": "C"}) == document


def test_a_compression_bomb_is_refused(master):
    master.answer("getFullComputerInformation", gzip.compress(b"\0" * 5_000_000),
                  headers={"Content-Encoding": "gzip"})
    connection = Connection(master.url)
    connection.transport.max_body = 1_000_000
    with pytest.raises(ConnectionError, match="answer is too large"):
        connection.get("getFullComputerInformation", {"computer_id": "C"})


def test_an_announced_oversized_answer_is_refused_unread(master):
    master.answer("getFullComputerInformation", b"y" * 3000)
    connection = Connection(master.url)
    connection.transport.max_body = 1000
    with pytest.raises(ConnectionError, match="answer is too large.*3000 bytes"):
        connection.get("getFullComputerInformation", {"computer_id": "C"})


def test_a_corrupt_compressed_answer_is_a_connection_error(master):
    master.answer("getHateoasUrl", b"not gzip at all", headers={"Content-Encoding": "gzip"})
    with pytest.raises(ConnectionError, match="not valid HTTP.*compressed answer is corrupt"):
        Connection(master.url).get("getHateoasUrl")


def test_a_server_that_does_not_speak_http():
    def banner(server, conn, reader, index):
        _read_request(reader)
        conn.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")

    with _RawServer(banner) as server:
        with pytest.raises(ConnectionError) as info:
            Connection(server.url, timeout=5).get("getHateoasUrl")
    message = str(info.value)
    assert "not valid HTTP" in message and server.url + "getHateoasUrl" in message and "\n" not in message


def test_unknown_host_name_is_a_connection_error():
    with pytest.raises(ConnectionError, match="cannot resolve its host name 'master.invalid'.*check master_url"):
        Connection("http://master.invalid:4000/", timeout=5).get("getHateoasUrl")


# -- keep-alive ----------------------------------------------------------------------------------------


def test_idle_connection_closed_by_the_server_is_replaced_before_sending(master):
    """The common case: the server closed an idle kept-alive connection (its keep-alive timeout);
    the closed socket is noticed before the next call, which goes out on a new connection."""
    master.answer("startedComputerPartition", "ok", hang_up=True)
    connection = Connection(master.url, timeout=5)
    for _ in range(3):  # POSTs too: nothing was sent on the dead connection
        assert connection.post("startedComputerPartition", {"computer_id": "C"}, partition=("C", "p")) == b"ok"
        # the server closes right after answering: wait for it, as a keep-alive timeout would have
        [idle] = connection.transport._idle
        assert select.select([idle.sock], [], [], 5)[0], "the server never closed the connection"
    assert len(master.requests) == 3
    assert len({r.client_port for r in master.requests}) == 3


def test_answer_with_connection_close_is_not_reused(master):
    master.answer("getHateoasUrl", "ok", headers={"Connection": "close"})
    connection = Connection(master.url, timeout=5)
    assert connection.get("getHateoasUrl") == b"ok"
    assert connection.get("getHateoasUrl") == b"ok"
    assert len({r.client_port for r in master.requests}) == 2


def test_get_is_retried_once_when_the_server_drops_a_kept_alive_connection(caplog):
    """The race: the server closes the kept-alive connection when our next request arrives."""
    caplog.set_level("DEBUG", logger="slapos.slap.transport")
    with _RawServer(_answer_first_request_only) as server:
        connection = Connection(server.url, timeout=5)
        assert connection.get("getHateoasUrl") == b"ok"
        assert connection.get("getComputerStatus", {"computer_id": "C"}) == b"ok"
        assert "retrying GET /getComputerStatus?computer_id=C on a new one" in caplog.text
        assert [(c, line.split()[0]) for c, line in server.received] == [(0, "GET"), (0, "GET"), (1, "GET")]


def test_post_is_not_retried_once_it_reached_the_server():
    with _RawServer(_answer_first_request_only) as server:
        connection = Connection(server.url, timeout=5)
        assert connection.get("getHateoasUrl") == b"ok"
        with pytest.raises(ConnectionError) as info:
            connection.post("requestComputerPartition", {"partition_reference": "x"})
        message = str(info.value)
        assert "closed the connection without answering" in message
        assert server.url + "requestComputerPartition" in message
        # received once, on the first connection: never sent a second time
        assert [(c, line.split()[0]) for c, line in server.received] == [(0, "GET"), (0, "POST")]
        # and the connection recovers for the next call
        assert connection.get("getHateoasUrl") == b"ok"


def test_post_is_retried_when_it_could_not_be_sent(monkeypatch, caplog):
    """The server reset the idle connection and the liveness check missed it (the window between
    the check and the send): sending fails, nothing reached the server, so the POST is retried."""
    def answer_then_reset(server, conn, reader, index):
        _answer_first_request_only(server, conn, reader, index, reset=True)

    with _RawServer(answer_then_reset) as server:
        connection = Connection(server.url, timeout=5)
        assert connection.get("getHateoasUrl") == b"ok"
        [idle] = connection.transport._idle
        assert select.select([idle.sock], [], [], 5)[0], "the reset never arrived"
        monkeypatch.setattr(transport_module, "_dropped", lambda sock: False)
        caplog.set_level("DEBUG", logger="slapos.slap.transport")
        assert connection.post("softwareReleaseError", {"url": "u", "error_log": "e"}) == b"ok"
        assert "retrying POST /softwareReleaseError on a new one" in caplog.text
        assert [(c, line.split()[0]) for c, line in server.received] == [(0, "GET"), (1, "POST")]


def test_a_forked_child_does_not_use_the_parent_connections(master):
    import os

    master.answer("getHateoasUrl", "ok")
    connection = Connection(master.url, timeout=5)
    assert connection.get("getHateoasUrl") == b"ok"
    pid = os.fork()
    if pid == 0:  # the child: one call, then leave without running any cleanup
        try:
            os._exit(0 if connection.get("getHateoasUrl") == b"ok" else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert connection.get("getHateoasUrl") == b"ok"  # the parent's connection still works
    parent, child, parent_again = (r.client_port for r in master.requests)
    assert parent == parent_again != child


def test_close_then_use_again(master):
    master.answer("getHateoasUrl", "ok")
    connection = Connection(master.url)
    connection.get("getHateoasUrl")
    assert connection.transport.idle_count == 1
    connection.close()
    assert connection.transport.idle_count == 0
    assert connection.get("getHateoasUrl") == b"ok"
    assert len({r.client_port for r in master.requests}) == 2


# -- threads ------------------------------------------------------------------------------------------


def test_one_connection_shared_by_threads(master):
    """`--jobs N` and the proxy's concurrency tests call one slap object from several threads:
    each call gets its own answer, connections are reused, and at most one per thread is opened."""
    def echo(received):
        return Answer(body=f"{received.query['computer_id']}/{received.query['n']}", delay=0.002)

    master.answer_with("getComputerStatus", echo)
    connection = Connection(master.url, timeout=10)
    threads, calls = 6, 25
    results: dict[int, list[bytes]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def work(index: int) -> None:
        try:
            barrier.wait()
            results[index] = [connection.get("getComputerStatus", {"computer_id": f"T{index}", "n": n})
                              for n in range(calls)]
        except BaseException as e:  # reported below
            errors.append(e)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert errors == []
    for index in range(threads):
        assert results[index] == [f"T{index}/{n}".encode() for n in range(calls)]
    ports = {r.client_port for r in master.requests}
    assert len(master.requests) == threads * calls
    assert len(ports) <= threads, "a connection per call: the pool does not reuse connections"
    assert connection.transport.idle_count <= transport_module.MAX_IDLE


def test_slap_object_over_threads_against_the_loopback_master(master):
    master.answer("getHateoasUrl", "https://rest.example/")
    connection = slap()
    connection.initializeConnection(master.url, timeout=10)
    out: list[str] = []
    workers = [threading.Thread(target=lambda: out.extend(connection.getHateoasUrl() for _ in range(10)))
               for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert out == ["https://rest.example/"] * 40
    connection.close()


# -- TLS ----------------------------------------------------------------------------------------------


def test_https_connection_is_kept_alive(https_master, pki):
    https_master.answer("getHateoasUrl", "ok")
    connection = Connection(https_master.url, key_file=pki.client_key, cert_file=pki.client_cert,
                            master_ca_file=pki.ca_cert, timeout=5)
    for _ in range(4):
        assert connection.get("getHateoasUrl") == b"ok"
    assert len({r.client_port for r in https_master.requests}) == 1


def test_https_host_name_is_checked(pki):
    """The certificate is valid for 127.0.0.1 and localhost, not for 127.0.0.2."""
    server = start_master(server_ssl_context(pki, require_client_cert=False), host="127.0.0.2")
    try:
        server.answer("getHateoasUrl", "ok")
        connection = Connection(server.url, master_ca_file=pki.ca_cert, timeout=5)
        with pytest.raises(ConnectionError, match="could not be verified against the CA in master_ca_file.*"
                                                  "mismatch"):
            connection.get("getHateoasUrl")
        assert server.requests == []
    finally:
        server.stop()


def test_unreadable_client_certificate_is_a_clear_error(https_master, pki, tmp_path):
    bogus = tmp_path / "client.crt"
    bogus.write_text("not a certificate\n")
    connection = Connection(https_master.url, key_file=pki.client_key, cert_file=bogus,
                            master_ca_file=pki.ca_cert, timeout=5)
    with pytest.raises(ConnectionError, match=r"cannot load the client certificate \(cert_file .*client.crt"):
        connection.get("getHateoasUrl")


def test_bad_master_ca_file_is_a_clear_error(https_master, pki, tmp_path):
    bogus = tmp_path / "ca.crt"
    bogus.write_text("garbage\n")
    with pytest.raises(ConnectionError, match="cannot load master_ca_file .*ca.crt"):
        Connection(https_master.url, key_file=pki.client_key, cert_file=pki.client_cert,
                   master_ca_file=bogus, timeout=5).get("getHateoasUrl")


def test_https_without_client_certificate_says_what_to_check(https_master, pki):
    connection = Connection(https_master.url, master_ca_file=pki.ca_cert, timeout=5)
    with pytest.raises(ConnectionError) as info:
        connection.get("getHateoasUrl")
    assert "cert_file" in str(info.value)


# -- a raw TCP server for the keep-alive races ---------------------------------------------------------


class _RawServer:
    """Accepts connections on loopback and hands each to `handle(server, conn, reader, index)` in a
    thread; handlers record `(connection index, request line)` of the requests they read in `received`."""

    def __init__(self, handle):
        self.handle = handle
        self.received: list[tuple[int, str]] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.threads: list[threading.Thread] = []
        self.conns: list[socket.socket] = []
        self.stopping = threading.Event()
        self.sock.settimeout(0.05)  # accept() polls `stopping`: closing the socket would not wake it

    def __enter__(self) -> _RawServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()
        for conn in self.conns:  # wake handlers waiting for a next request
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self.threads:
            thread.join(5)

    def _serve(self) -> None:
        index = 0
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)
            self.conns.append(conn)
            thread = threading.Thread(target=self._run, args=(conn, index), daemon=True)
            self.threads.append(thread)
            thread.start()
            index += 1

    def _run(self, conn: socket.socket, index: int) -> None:
        reader = conn.makefile("rb")
        try:
            self.handle(self, conn, reader, index)
        except OSError:
            pass
        finally:
            reader.close()
            conn.close()


def _read_request(reader) -> str | None:
    line = reader.readline()
    if not line:
        return None
    length = 0
    while True:
        header = reader.readline()
        if header in (b"\r\n", b"\n", b""):
            break
        name, _, value = header.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    if length:
        reader.read(length)
    return line.decode("latin-1").strip()


def _answer_first_request_only(server: _RawServer, conn: socket.socket, reader, index: int,
                               reset: bool = False) -> None:
    """Answer the first request (keep-alive), then close the connection: at once with a reset if
    `reset`, else when the next request has arrived, without answering it."""
    line = _read_request(reader)
    if line is None:
        return
    server.received.append((index, line))
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
    if reset:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return
    line = _read_request(reader)
    if line is not None:
        server.received.append((index, line))


def test_system_cas_are_openssls_and_honour_ssl_cert_file(https_master, pki, monkeypatch):
    """Without master_ca_file the CA store is OpenSSL's (here pointed at the test CA)."""
    https_master.answer("getHateoasUrl", "ok")
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)  # it comes first (slapos.base.http)
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_cert))
    connection = Connection(https_master.url, key_file=pki.client_key, cert_file=pki.client_cert, timeout=5)
    assert connection.get("getHateoasUrl") == b"ok"


def test_certifi_bundle_only_when_the_system_has_no_ca_store(monkeypatch, tmp_path):
    import os
    import ssl

    import certifi

    from slapos.base.http import ca_locations

    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    paths = ssl.get_default_verify_paths()
    if paths.cafile and os.path.isfile(paths.cafile):  # the machine has a CA store: it is used
        assert ca_locations() == (paths.cafile, None)
    nowhere = ssl.DefaultVerifyPaths(str(tmp_path / "none.pem"), str(tmp_path / "none"), "", "", "", "")
    monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: nowhere)
    assert ca_locations() == (certifi.where(), None)


def test_https_url_to_a_plain_http_master_says_so(master):
    with pytest.raises(ConnectionError, match="does not speak TLS on this port; check the scheme of master_url"):
        Connection(master.url.replace("http://", "https://"), timeout=5).get("getHateoasUrl")
