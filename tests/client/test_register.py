"""`slapos node register` against a loopback server answering `Person_requestComputer` as a SlapOS
master does: a form field `title`, the token in `X-Access-Token`, JSON `certificate`/`key` back; a
403 for a bad token; an error page saying "Certificate still active." for a name in use."""
from __future__ import annotations

import datetime
import json
import os
import stat
import subprocess
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .conftest import QuietHandler, client_env, one_line_error, serve_http, slapos_argv

TEMPLATE_PATHS = ("/etc/opt/slapos", "/opt/slapos", "/opt/slapgrid", "/srv/slapgrid")


def make_certificate(common_name: str) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.EMAIL_ADDRESS, "node@example.com")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


class Master:
    """What the fake master saw and what it will answer."""

    def __init__(self):
        self.tokens = {"token-1", "token-2"}
        self.names: set[str] = set()
        self.calls: list[dict] = []
        self.answer: tuple[int, bytes] | None = None  # forced answer
        self.serial = 1233


def master_handler(master: Master):
    class Handler(QuietHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode())
            token = self.headers.get("X-Access-Token")
            master.calls.append({"path": self.path, "form": form, "token": token})
            if self.path != "/Person_requestComputer":
                return self.reply(404, b"Not Found")
            if master.answer is not None:
                return self.reply(*master.answer)
            if token not in master.tokens:
                return self.reply(403, b"<html><body>Forbidden</body></html>")
            title = form["title"][0]
            if title in master.names:  # what the reference's client recognises
                return self.reply(500, b"<html><body>ValueError: Certificate still active.</body></html>")
            master.tokens.discard(token)
            master.names.add(title)
            master.serial += 1
            certificate, key = make_certificate(f"COMP-{master.serial}")
            self.reply(200, json.dumps({"certificate": certificate, "key": key}).encode(), "application/json")

        def reply(self, status: int, body: bytes, content_type: str = "text/html"):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture
def master():
    state = Master()
    with serve_http(master_handler(state)) as url:
        state.url = url
        yield state


def register(tmp_path: Path, master: Master, *extra: str, token: str = "token-1", name: str = "edge-1",
             umask: int | None = None) -> subprocess.CompletedProcess:
    root = tmp_path / "node"
    args = ["node", "register", name, "--token", token, "--cfg", str(root / "etc" / "slapos.cfg"),
            "--master-url", "https://slap.example.com/", "--master-url-web", master.url,
            "--software-root", str(root / "soft"), "--instance-root", str(root / "srv"),
            "--state-dir", str(root / "var"), "--partition-number", "3", "--interface-name", "eth7", *extra]
    return subprocess.run(slapos_argv(*args), capture_output=True, text=True, timeout=60,
                          env=client_env(tmp_path), preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_register_writes_the_configuration_key_and_certificate(tmp_path, master):
    (tmp_path / "node").mkdir(mode=0o750)
    os.chmod(tmp_path / "node", 0o750)
    result = register(tmp_path, master, umask=0)  # a careless umask changes nothing
    assert result.returncode == 0, result.stderr
    etc = tmp_path / "node" / "etc"
    cfg_text = (etc / "slapos.cfg").read_text()
    assert master.calls == [{"path": "/Person_requestComputer", "form": {"title": ["edge-1"]}, "token": "token-1"}]
    from slapos.base.config import Config

    cfg = Config(etc / "slapos.cfg")
    assert cfg.get("slapos", "computer_id") == "COMP-1234"  # from the certificate's subject
    assert cfg.get("slapos", "master_url") == "https://slap.example.com/"
    assert cfg.get("slapos", "key_file") == str(etc / "ssl" / "computer.key")
    assert cfg.get("slapos", "cert_file") == str(etc / "ssl" / "computer.crt")
    assert cfg.get("slapos", "certificate_repository_path") == str(etc / "ssl" / "partition_pki")
    assert cfg.get("slapos", "software_root") == str(tmp_path / "node" / "soft")
    assert cfg.get("slapos", "instance_root") == str(tmp_path / "node" / "srv")
    assert cfg.get("slapformat", "interface_name") == "eth7"
    assert cfg.get("slapformat", "partition_amount") == "3"
    assert cfg.get("slapformat", "computer_xml") == str(tmp_path / "node" / "var" / "slapos.xml")
    live = [line for line in cfg_text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    leftovers = [line for line in live if any(f"{p}/" in line or line.endswith(p) for p in TEMPLATE_PATHS)]
    assert not leftovers, leftovers  # every path follows the options
    # the key is private from its creation, even with umask 0; the directory above kept its mode
    assert mode(etc / "ssl" / "computer.key") == 0o600
    assert mode(etc / "slapos.cfg") == 0o600
    assert mode(etc / "ssl") == 0o711
    assert mode(tmp_path / "node") == 0o750
    # the state directory and its logs exist: `slapos node format` (printed next) opens its log there
    assert mode(tmp_path / "node" / "var") == 0o755 and mode(tmp_path / "node" / "var" / "log") == 0o750
    key_text = (etc / "ssl" / "computer.key").read_text()
    assert "PRIVATE KEY" in key_text
    assert "slapos node format" in result.stdout


def test_a_second_registration_keeps_the_former_files(tmp_path, master):
    assert register(tmp_path, master).returncode == 0
    etc = tmp_path / "node" / "etc"
    first_key = (etc / "ssl" / "computer.key").read_text()
    result = register(tmp_path, master, token="token-2", name="edge-2")
    assert result.returncode == 0, result.stderr
    kept_cfg = [p for p in etc.iterdir() if p.name.startswith("slapos.cfg.")]
    kept_key = [p for p in (etc / "ssl").iterdir() if p.name.startswith("computer.key.")]
    assert len(kept_cfg) == 1 and len(kept_key) == 1
    assert "COMP-1234" in kept_cfg[0].read_text()
    assert kept_key[0].read_text() == first_key and mode(kept_key[0]) == 0o600
    from slapos.base.config import Config

    assert Config(etc / "slapos.cfg").get("slapos", "computer_id") == "COMP-1235"


def test_a_name_in_use_is_refused_with_one_line(tmp_path, master):
    master.names.add("edge-1")
    result = register(tmp_path, master)
    assert result.returncode == 1
    line = one_line_error(result)
    assert "'edge-1' is already in use" in line and "Certificate still active" in line
    assert not (tmp_path / "node").exists()


@pytest.mark.parametrize("token", ["wrong", "token-1-replayed"])
def test_a_refused_token_writes_nothing(tmp_path, master, token):
    if token == "token-1-replayed":
        assert register(tmp_path / "a", master).returncode == 0
        token = "token-1"
    result = register(tmp_path, master, token=token)
    assert result.returncode == 1
    assert "refused the token (HTTP 403" in one_line_error(result)
    assert not (tmp_path / "node").exists()


@pytest.mark.parametrize(("answer", "message"), [
    ((200, b"<html>login</html>"), "did not answer JSON"),
    ((200, b'{"certificate": "x"}'), "without a certificate and a key"),
    ((502, b"Bad Gateway"), "answered HTTP 502: Bad Gateway"),
])
def test_a_bad_answer_is_one_line(tmp_path, master, answer, message):
    master.answer = answer
    result = register(tmp_path, master)
    assert result.returncode == 1
    assert message in one_line_error(result)
    assert not (tmp_path / "node").exists()


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path, master):
    certificate, _ = make_certificate("COMP-9")
    _, other_key = make_certificate("COMP-9")
    master.answer = (200, json.dumps({"certificate": certificate, "key": other_key}).encode())
    result = register(tmp_path, master)
    assert "does not belong to its certificate" in one_line_error(result)
    assert not (tmp_path / "node").exists()


def test_dry_run_asks_nothing_and_writes_nothing(tmp_path, master):
    result = register(tmp_path, master, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert master.calls == []
    assert not (tmp_path / "node").exists()
    assert "[slapos] software_root = " + str(tmp_path / "node" / "soft") in result.stdout
    assert "slapos node format" in result.stdout


def test_usage_errors(tmp_path, master):
    result = subprocess.run(slapos_argv("node", "register", "edge-1", "--cfg", str(tmp_path / "x.cfg")),
                            capture_output=True, text=True, env=client_env(tmp_path))
    assert result.returncode == 5 and "--token is required" in one_line_error(result)
    result = register(tmp_path, master, "--ipv4-local-network", "nope")
    assert result.returncode == 5 and "is not a network" in one_line_error(result)
    assert master.calls == []


def test_the_token_goes_to_the_master_named_when_no_web_url_is_given(tmp_path, master):
    # a token for our own master must never be posted to the public SlapOS master's web site
    root = tmp_path / "node"
    args = ["node", "register", "edge-9", "--token", "token-1", "--cfg", str(root / "etc" / "slapos.cfg"),
            "--master-url", master.url, "--software-root", str(root / "soft"),
            "--instance-root", str(root / "srv"), "--state-dir", str(root / "var")]
    result = subprocess.run(slapos_argv(*args), capture_output=True, text=True, timeout=60, env=client_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert [call["path"] for call in master.calls] == ["/Person_requestComputer"]
