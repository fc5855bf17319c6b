"""HTTP transport against a real loopback server: status mapping, timeouts, headers, TLS."""
from __future__ import annotations

import socket
import time

import pytest

from slapos.base.errors import ConfigError, SlapOSError
from slapos.slap import (
    AuthenticationError,
    BadRequestError,
    ConnectionError,
    NotFoundError,
    ResourceNotReady,
    ServerError,
    SlapException,
    slap,
)
from slapos.slap.connection import Connection, normalize_master_url

PROXY_404 = (
    "<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n"
    "<p>No free computer partition found for: extra2</p>\n"
)


@pytest.mark.parametrize(
    "status,exception",
    [
        (404, NotFoundError),
        (408, ResourceNotReady),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (400, BadRequestError),
        (409, BadRequestError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (520, ServerError),
        (523, ServerError),
    ],
)
def test_status_codes_map_to_one_hierarchy(master, status, exception):
    master.answer("getComputerStatus", "<p>reason from the server</p>", status=status)
    connection = Connection(master.url, timeout=5)
    with pytest.raises(exception) as info:
        connection.get("getComputerStatus", {"computer_id": "COMP-1"})
    error = info.value
    assert isinstance(error, SlapException) and isinstance(error, SlapOSError)
    assert error.status == status
    assert error.url == master.url + "getComputerStatus"
    message = str(error)
    assert master.url + "getComputerStatus" in message
    assert "computer_id=COMP-1" in message
    assert "\n" not in message
    if status not in (408,):
        assert "reason from the server" in message


def test_not_found_message_carries_the_proxy_reason(master):
    master.answer("requestComputerPartition", PROXY_404, status=404)
    with pytest.raises(NotFoundError, match="No free computer partition found for: extra2"):
        Connection(master.url).post("requestComputerPartition", {"partition_reference": "extra2"})


def test_success_returns_the_body_bytes_whatever_the_content_type(master):
    master.answer("useComputer", "Ignored")
    assert Connection(master.url).post("useComputer", {"computer_id": "C"}) == b"Ignored"


def test_timeout_is_a_connection_error_naming_url_and_timeout(master):
    master.answer("getFullComputerInformation", "late", delay=2.0)
    connection = Connection(master.url, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=r"no answer within 0\.3 s") as info:
        connection.get("getFullComputerInformation", {"computer_id": "C"})
    assert time.monotonic() - started < 1.9
    assert master.url + "getFullComputerInformation" in str(info.value)


def test_refused_connection_is_a_connection_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # nothing listens on `port` any more
    with pytest.raises(ConnectionError, match="cannot connect to the master") as info:
        Connection(f"http://127.0.0.1:{port}", timeout=2).get("getHateoasUrl")
    assert f"127.0.0.1:{port}/getHateoasUrl" in str(info.value)
    assert "check master_url" in str(info.value)


def test_form_encoding_none_values_and_partition_header(master):
    master.answer("startedComputerPartition", "Ignored")
    master.answer("registerComputerPartition", "<marshal><none/></marshal>")
    connection = Connection(master.url)
    connection.post(
        "startedComputerPartition",
        {"computer_id": "COMP-1", "computer_partition_id": "slappart0", "slave_reference": None, "n": 3},
        partition=("COMP-1", "slappart0"),
    )
    connection.get("registerComputerPartition", {"computer_reference": "COMP-1", "computer_partition_reference": "slappart0"})
    post, get = master.requests
    assert post.method == "POST"
    assert post.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert post.form == {"computer_id": "COMP-1", "computer_partition_id": "slappart0", "slave_reference": "None", "n": "3"}
    assert post.headers["Authorization"] == "X-SlapPartition computer_id=COMP-1, computer_partition_id=slappart0"
    assert get.method == "GET"
    assert "Authorization" not in get.headers
    assert get.query == {"computer_reference": "COMP-1", "computer_partition_reference": "slappart0"}


def test_post_without_partition_has_no_authorization(master):
    master.answer("supplySupply", "Supplied")
    Connection(master.url).post("supplySupply", {"url": "u", "computer_id": "c", "state": "available"})
    assert "Authorization" not in master.requests[0].headers


def test_one_connection_is_reused_across_calls(master):
    master.answer("getHateoasUrl", "x")
    connection = Connection(master.url)
    for _ in range(5):
        connection.get("getHateoasUrl")
    ports = {r.client_port for r in master.requests}
    assert len(master.requests) == 5
    assert len(ports) == 1, "each call opened a new TCP connection: keep-alive is not used"


def test_master_url_under_a_path_prefix(master):
    master.answer("getHateoasUrl", "x")
    Connection(master.url + "some/prefix").get("getHateoasUrl")
    assert master.requests[0].path == "/some/prefix/getHateoasUrl"


@pytest.mark.parametrize(
    "given,expected",
    [
        ("http://127.0.0.1:4000", "http://127.0.0.1:4000/"),
        ("http://127.0.0.1:4000/", "http://127.0.0.1:4000/"),
        ("https://master.example/erp5/web_site_module/hateoas", "https://master.example/erp5/web_site_module/hateoas/"),
        ("http://fd00::1/", "http://[fd00::1]/"),
        ("http://[fd00::1]:4000", "http://[fd00::1]:4000/"),
    ],
)
def test_normalize_master_url(given, expected):
    assert normalize_master_url(given) == expected


@pytest.mark.parametrize("bad", ["127.0.0.1:4000", "ftp://x/", "http://", ""])
def test_bad_master_url_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="master_url"):
        Connection(bad)


def test_missing_certificate_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="cert_file .*missing.crt does not exist"):
        Connection("https://127.0.0.1/", key_file=__file__, cert_file=str(tmp_path / "missing.crt"))
    with pytest.raises(ConfigError, match="go together"):
        Connection("https://127.0.0.1/", key_file=__file__)


def test_http_client_is_not_imported_before_the_first_call(master):
    """Importing and connecting stay cheap; and `requests`/`urllib3` are never imported, even by calls."""
    import subprocess
    import sys

    master.answer("getHateoasUrl", "ok")
    code = (
        "import sys\n"
        "from slapos.slap import slap\n"
        f"s = slap(); s.initializeConnection({master.url!r})\n"
        "c = s.registerComputer('C'); p = s.registerComputerPartition('C', 'slappart0')\n"
        "print('http.client' in sys.modules, 'lxml.etree' in sys.modules)\n"
        "assert s.getHateoasUrl() == 'ok'\n"
        "print('http.client' in sys.modules, 'requests' in sys.modules, 'urllib3' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, after = out.splitlines()
    assert before.split() == ["False", "False"]
    assert after.split() == ["True", "False", "False"]


# -- TLS ----------------------------------------------------------------------------------------


def test_https_verification_fails_by_default_with_a_clear_error(https_master, pki):
    https_master.answer("getHateoasUrl", "x")
    connection = Connection(https_master.url, key_file=pki.client_key, cert_file=pki.client_cert, timeout=5)
    with pytest.raises(ConnectionError) as info:
        connection.get("getHateoasUrl")
    message = str(info.value)
    assert https_master.url in message
    assert "could not be verified" in message and "master_ca_file" in message
    assert https_master.requests == []


def test_https_with_the_wrong_ca_fails(https_master, pki):
    connection = Connection(https_master.url, key_file=pki.client_key, cert_file=pki.client_cert,
                            master_ca_file=pki.other_ca_cert, timeout=5)
    with pytest.raises(ConnectionError, match="could not be verified against the CA in master_ca_file"):
        connection.get("getHateoasUrl")


def test_https_with_master_ca_file_succeeds_and_sends_the_client_certificate(https_master, pki):
    https_master.answer("getHateoasUrl", "https://rest.example/")
    connection = slap()
    connection.initializeConnection(https_master.url, key_file=str(pki.client_key), cert_file=str(pki.client_cert),
                                    master_ca_file=str(pki.ca_cert), timeout=5)
    assert connection.getHateoasUrl() == "https://rest.example/"
    peer = https_master.requests[0].peer_certificate
    assert peer is not None
    assert dict(x[0] for x in peer["subject"])["commonName"] == "COMP-TEST"


def test_https_without_client_certificate_is_refused_by_the_master(https_master, pki):
    connection = Connection(https_master.url, master_ca_file=pki.ca_cert, timeout=5)
    with pytest.raises(ConnectionError) as info:
        connection.get("getHateoasUrl")
    assert https_master.url in str(info.value)


def test_insecure_opt_out_skips_verification(https_master, pki):
    https_master.answer("getHateoasUrl", "ok")
    connection = Connection(https_master.url, key_file=pki.client_key, cert_file=pki.client_cert,
                            insecure=True, timeout=5)
    assert connection.get("getHateoasUrl") == b"ok"


def test_client_certificate_is_not_sent_over_plain_http(master, pki):
    master.answer("getHateoasUrl", "ok")
    connection = Connection(master.url, key_file=pki.client_key, cert_file=pki.client_cert)
    assert connection.get("getHateoasUrl") == b"ok"
    assert connection.transport.ssl_context is None  # no TLS at all, so no certificate either
    assert master.requests[0].peer_certificate is None
