"""`slapos service list|info`, `slapos computer list|info|token`: against our proxy (the caller's own
records only; as root, a second real user sees nothing of the first) and against a loopback
server speaking the reference master's HATEOAS protocol."""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
from urllib.parse import parse_qs, urlsplit

import pytest

from slapos.proxy import ownership
from tests.conftest import make_traversable

from .conftest import QuietHandler, client_env, serve_http, slapos_argv, throwaway_user, write_client_config

SR = "http://sr.example/service.cfg"


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr
    return result


def test_service_and_computer_commands_against_the_proxy(client):
    computer = client.proxy.computer_id
    ok(client.run("supply", SR, computer))
    ok(client.run("request", "mine", SR, "--parameters", "size=3"))
    connection = client.proxy.connect()
    partition = connection.registerOpenOrder().request(SR, "mine", {"size": "3"})
    connection.registerComputerPartition(computer, partition.getId()).setConnectionDict({"url": "http://x/"})
    connection.close()

    assert json.loads(ok(client.run("service", "list", "--format", "json")).stdout) == {"mine": SR}
    assert "mine" in ok(client.run("service", "list")).stdout
    info = json.loads(ok(client.run("service", "info", "mine", "--format", "json")).stdout)
    assert info == {"software-url": SR, "software-type": "default", "shared": False, "requested-state": "started",
                    "instance-parameters": {"size": "3"}, "connection-parameters": {"url": "http://x/"}}
    news = json.loads(ok(client.run("service", "info", "mine", "--news", "--format", "json")).stdout)
    assert news["status"] == "unsupported"
    missing = client.run("service", "info", "nothere")
    assert missing.returncode == 2 and "does not exist" in missing.stderr

    assert json.loads(ok(client.run("computer", "list", "--format", "json")).stdout) == {computer: computer}
    details = json.loads(ok(client.run("computer", "info", computer, "--format", "json")).stdout)
    assert details["reference"] == computer and details["partition_count"] == 3
    assert client.run("computer", "info", "COMP-NONE").returncode == 2

    token = ok(client.run("computer", "token", computer)).stdout.strip()
    assert len(token) >= 40
    db = sqlite3.connect(str(client.proxy.database))
    rows = db.execute("SELECT digest, computer_reference, used FROM computer_token").fetchall()
    db.close()
    assert rows == [(hashlib.sha256(token.encode()).hexdigest(), computer, None)]
    assert token.encode() not in client.proxy.database.read_bytes()  # only its hash is stored


def test_tokens_are_single_use_and_expire(tmp_path):
    conn = sqlite3.connect(str(tmp_path / "t.db"))
    ownership.ensure_tables(conn)
    token = ownership.issue_token(conn, "uid:1000", "COMP-9", lifetime=60, now=1000.0)
    grant = ownership.consume_token(conn, token, now=1010.0)
    assert (grant.computer_reference, grant.identity) == ("COMP-9", "uid:1000")
    with pytest.raises(ownership.TokenRefused, match="already used"):
        ownership.consume_token(conn, token, now=1011.0)
    late = ownership.issue_token(conn, "uid:1000", None, lifetime=60, now=1000.0)
    with pytest.raises(ownership.TokenRefused, match="expired"):
        ownership.consume_token(conn, late, now=1061.0)
    with pytest.raises(ownership.TokenRefused, match="unknown"):
        ownership.consume_token(conn, "forged", now=1000.0)


def test_tokens_can_follow_an_option_on_a_command_line():
    # a token starting with "-" is read as an option by `--token TOKEN` (CI met one): with the
    # old generator, 3000 tokens without one would happen about once in 10**20 tries
    tokens = [ownership.new_token() for _ in range(3000)]
    assert not [token for token in tokens if token.startswith("-")]
    assert len(set(tokens)) == 3000 and all(len(token) == 43 for token in tokens)


@pytest.fixture
def second_user(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to create a second user")
    with throwaway_user(tmp_path) as (account, home):
        yield account, home


def other_user_client(client, account, home, tmp_path):
    """Runs `slapos ...` as the second user, with a client configuration of their own."""
    config = write_client_config(tmp_path / "other.cfg", client.proxy.url, client.proxy.computer_id)
    os.chmod(config, 0o644)
    make_traversable(config.parent)

    def as_other(*args: str) -> subprocess.CompletedProcess:
        argv = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups",
                *slapos_argv(*args, "--cfg", str(config))]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=client_env(home), cwd=str(home))

    return as_other


def test_a_second_user_sees_nothing_of_the_first(client, second_user, tmp_path):
    account, home = second_user
    computer = client.proxy.computer_id
    ok(client.run("supply", SR, computer))
    ok(client.run("request", "mine", SR))
    as_other = other_user_client(client, account, home, tmp_path)

    ok(as_other("request", "theirs", SR))
    assert json.loads(ok(as_other("service", "list", "--format", "json")).stdout) == {"theirs": SR}
    assert json.loads(ok(client.run("service", "list", "--format", "json")).stdout) == {"mine": SR}
    assert as_other("service", "info", "mine").returncode == 2
    assert client.run("service", "info", "theirs").returncode == 2
    # the computer was described by root (the test process): not theirs
    assert json.loads(ok(as_other("computer", "list", "--format", "json")).stdout) == {}
    assert as_other("computer", "info", computer).returncode == 2
    refused = as_other("computer", "token", computer)
    assert refused.returncode == 1 and "not yours" in refused.stderr
    # a token for a computer that does not exist yet: theirs to register
    assert ok(as_other("computer", "token", "COMP-NEW")).stdout.strip()
    assert client.run("computer", "token", "COMP-NEW").returncode == 1  # reserved by them now


def test_an_operator_reusing_a_users_destroyed_title_owns_the_new_tree(client, second_user, tmp_path):
    """The other user's tree is destroyed and freed; root (an operator of this open proxy)
    requests that title again, with a secret: the new tree is root's, the other user reads
    nothing of it (it stayed recorded as theirs before)."""
    account, home = second_user
    computer = client.proxy.computer_id
    ok(client.run("supply", SR, computer))
    as_other = other_user_client(client, account, home, tmp_path)

    ok(as_other("request", "reused", SR))
    ok(as_other("request", "reused", SR, "--state", "destroyed"))
    db = sqlite3.connect(str(client.proxy.database))
    (partition,) = db.execute("SELECT reference FROM partition WHERE title = 'reused'").fetchone()
    db.close()
    connection = client.proxy.connect()
    connection.registerComputerPartition(computer, partition).destroyed()  # the node frees it
    connection.close()
    ok(client.run("request", "reused", SR, "--parameters", "password=s3cret"))
    assert json.loads(ok(client.run("service", "list", "--format", "json")).stdout) == {"reused": SR}
    assert json.loads(ok(as_other("service", "list", "--format", "json")).stdout) == {}
    info = as_other("service", "info", "reused")
    assert info.returncode == 2 and "s3cret" not in info.stdout + info.stderr


# -- another master: the reference's HATEOAS protocol -----------------------------------------------

class FakeMaster(QuietHandler):
    """What a SlapOS master answers the reference's client (hateoas.py): links elsewhere than
    ours, ERP5 relative URLs, forms with field types the client must filter."""

    seen: list = []

    def do_GET(self):  # noqa: N802
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        FakeMaster.seen.append((parts.path, query, dict(self.headers)))
        base = f"http://{self.headers['Host']}"
        if parts.path == "/getHateoasUrl":
            return self._send(f"{base}/erp5/web_site_module/hateoas", "text/plain")
        if parts.path == "/erp5/web_site_module/hateoas":
            return self._json({"_links": {
                "self": {"href": f"{base}/erp5/web_site_module/hateoas"},
                "raw_search": {"href": f"{base}/erp5/web_site_module/hateoas/ERP5Document_getHateoas"
                               "?mode=search&query={query}&select_list={select_list}&limit={limit}"},
                "traverse": {"href": f"{base}/erp5/web_site_module/hateoas/ERP5Document_getHateoas"
                             "?mode=traverse&relative_url={relative_url}&view={view}"},
            }})
        if parts.path.endswith("/ERP5Document_getHateoas") and query.get("mode") == "search":
            if "Instance Tree" in query["query"]:
                return self._json({"_embedded": {"contents": [
                    {"title": "remote-db", "url_string": "https://sr/db.cfg",
                     "relative_url": "instance_tree_module/20240101-1"}]}})
            return self._json({"_embedded": {"contents": [
                {"title": "My laptop", "reference": "COMP-42", "relative_url": "compute_node_module/20240101-7"}]}})
        if parts.path.endswith("/ERP5Document_getHateoas") and query.get("mode") == "traverse":
            if query["relative_url"] == "instance_tree_module/20240101-1":
                view = {
                    "form_id": {"key": "form_id", "default": "InstanceTree_viewSlapOSJS"},
                    "my_title": {"type": "StringField", "key": "field_my_title", "default": "remote-db"},
                    "my_url_string": {"type": "StringField", "key": "k", "default": "https://sr/db.cfg"},
                    "my_source_reference": {"type": "StringField", "key": "k", "default": "default"},
                    "my_slap_state": {"type": "StringField", "key": "k", "default": "start_requested"},
                    "my_root_slave": {"type": "IntegerField", "key": "k", "default": 0},
                    "my_text_content": {"type": "TextAreaField", "key": "k",
                                        "default": '<?xml version="1.0" encoding="utf-8"?><instance>'
                                                   '<parameter id="size">3</parameter></instance>'},
                    "my_connection_parameter_list": {"type": "StringField", "key": "k", "default": [
                        {"connection_key": "url", "connection_value": "https://db/"}]},
                    "listbox": {"type": "ListBox", "key": "k", "default": ["ignored"]},
                }
            else:
                view = {"form_id": {"key": "form_id", "default": "ComputeNode_view"},
                        "my_reference": {"type": "StringField", "key": "k", "default": "COMP-42"},
                        "my_title": {"type": "StringField", "key": "k", "default": "My laptop"},
                        "my_secret": {"type": "ListBox", "key": "k", "default": "dropped"}}
            return self._json({"_embedded": {"_view": view}, "_links": {"type": {"name": "Instance Tree"}}})
        if parts.path == "/erp5/web_site_module/hateoas/computer_module/Base_getComputerToken":
            return self._json({"access_token": "REMOTE-TOKEN-1", "computer_reference": None})
        self._send("not found", "text/plain", 404)

    def _json(self, data):
        self._send(json.dumps(data), "application/json")

    def _send(self, body: str, content_type: str, status: int = 200):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_commands_speak_the_reference_protocol_to_another_master(tmp_path):
    FakeMaster.seen = []
    home = tmp_path / "home"
    home.mkdir()
    with serve_http(FakeMaster) as url:
        config = write_client_config(tmp_path / "client.cfg", url, "COMP-42")

        def run(*args):
            return subprocess.run(slapos_argv(*args, "--cfg", str(config)), capture_output=True, text=True,
                                  timeout=60, env=client_env(home))

        assert json.loads(ok(run("service", "list", "--format", "json")).stdout) == {"remote-db": "https://sr/db.cfg"}
        info = json.loads(ok(run("service", "info", "remote-db", "--format", "json")).stdout)
        assert info["connection-parameters"] == {"url": "https://db/"}
        assert info["instance-parameters"] == {"size": "3"}
        assert info["requested-state"] == "start_requested"
        assert json.loads(ok(run("computer", "list", "--format", "json")).stdout) == {"COMP-42": "My laptop"}
        details = json.loads(ok(run("computer", "info", "COMP-42", "--format", "json")).stdout)
        assert details == {"reference": "COMP-42", "title": "My laptop"}  # the ListBox field is dropped
        assert ok(run("computer", "token")).stdout.strip() == "REMOTE-TOKEN-1"
    root_calls = [h for path, _q, h in FakeMaster.seen if path == "/erp5/web_site_module/hateoas"]
    assert root_calls and all(h.get("Cache-Control") == "no-cache" for h in root_calls)
    searches = [q for path, q, _h in FakeMaster.seen if q.get("mode") == "search"]
    assert {q["query"] for q in searches} >= {
        'portal_type:"Instance Tree" AND validation_state:validated',
        'portal_type:"Instance Tree" AND validation_state:validated AND title:="remote-db"',
        'portal_type:"Compute Node" AND validation_state:validated',
        'portal_type:"Compute Node" AND validation_state:validated AND reference:="COMP-42"',
    }
    assert all(q["limit"] == "40" for q in searches)
    traverses = [q for path, q, _h in FakeMaster.seen if q.get("mode") == "traverse"]
    assert {q["view"] for q in traverses} == {"slaposjs_view"}


def test_a_master_without_rest_api_is_one_clear_line(tmp_path):
    class NoRest(QuietHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    home = tmp_path / "home"
    home.mkdir()
    with serve_http(NoRest) as url:
        config = write_client_config(tmp_path / "client.cfg", url, "COMP-1")
        done = subprocess.run(slapos_argv("service", "list", "--cfg", str(config)), capture_output=True, text=True,
                              timeout=60, env=client_env(home))
    assert done.returncode == 1 and "has no REST (HATEOAS) API" in done.stderr and "Traceback" not in done.stderr
