"""The proxy's dashboard, /status.json, /metrics and reportNodeStatus against a real proxy
(`slapos proxy start` in a subprocess), without a browser: what the HTML says, what it masks and
escapes, strict HTML parsing, the status vocabulary and the metric values after a scenario.
tests/dashboard/ drives the same pages in a real headless Chromium."""
from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request

import html5lib
import pytest

from tests.client.conftest import register_partitions

SR = "http://example.invalid/hello-web/software.cfg"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(proxy, path: str, accept: str | None = None) -> tuple[int, dict, str]:
    request = urllib.request.Request(proxy.url + path.lstrip("/"), headers={"Accept": accept} if accept else {})
    try:
        with OPENER.open(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode("utf-8")


def post(proxy, endpoint: str, fields: dict) -> tuple[int, str]:
    data = urllib.parse.urlencode(fields).encode()
    try:
        with OPENER.open(proxy.url + endpoint, data=data, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def strict_html(text: str) -> None:
    """html5lib in strict mode raises on any parse error of the HTML5 algorithm."""
    html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(text)


@pytest.fixture
def scenario(proxy):
    """3 partitions: a started instance with a URL and a password published, a shared instance
    on it, a stopped one with a hostile title; one software release in error; a node report."""
    register_partitions(proxy, 3)
    slap = proxy.connect()
    slap.registerSupply().supply(SR, proxy.computer_id)
    order = slap.registerOpenOrder()
    web = order.request(SR, "web", partition_parameter_kw={"message": "hi", "admin-password": "s3cret-param"})
    evil = order.request(SR, "<script>alert(1)</script>", state="stopped")
    order.request(SR, "visitor", shared=True, partition_parameter_kw={"message": "shared hi"})
    computer_id, web_id = proxy.computer_id, web.getId()
    cp = slap.registerComputerPartition(computer_id, web_id)
    cp.setConnectionDict({"url": "http://127.0.0.1:8180/", "password": "s3cret-conn",
                          "backend": "https://admin:hunter2@127.0.0.1:9/", "trap": "javascript:alert(1)"})
    cp.started()
    slap.registerComputerPartition(computer_id, evil.getId()).error("buildout failed\nlast line of the error")
    software = slap.registerComputer(computer_id)
    slap.registerSoftwareRelease(SR, computer_id).error("the build broke: missing gcc")
    report = {
        "schema": "slapnode.status/1",
        "partitions": [
            {"partition": web_id, "status": "promise-error", "requested_state": "started",
             "backoff": {"failures": 2, "next_retry": "2030-01-01T00:00:00+00:00"},
             "promises": [{"title": "hello-web-url", "failed": True, "message": "port 8180 does not answer",
                           "date": "2026-12-03T06:00:00+00:00"},
                          {"title": "disk", "failed": False, "message": "ok", "date": None}],
             "invented": "dropped"},
            {"no": "partition"},
        ],
    }
    status, body = post(proxy, "reportNodeStatus", {"computer_id": computer_id, "status_json": json.dumps(report)})
    assert (status, body) == (200, "OK 1")
    software.reportUsage(
        "<?xml version='1.0' encoding='utf-8'?><journal><transaction><movement><resource>CPU</resource>"
        f"<reference>{web_id}</reference><quantity>12.5</quantity></movement><movement><resource>memory</resource>"
        f"<reference>{web_id}</reference><quantity>2097152</quantity></movement></transaction></journal>"
    )
    return {"web": web_id, "evil": evil.getId()}


def test_pages_show_the_scenario_and_mask_secrets(proxy, scenario):
    web, evil = scenario["web"], scenario["evil"]
    status, headers, page = get(proxy, "dashboard")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in headers["Content-Security-Policy"] and headers["X-Content-Type-Options"] == "nosniff"
    strict_html(page)
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert f"/dashboard/instance?computer={proxy.computer_id}&amp;partition={web}" in page
    assert "the build broke: missing gcc" in page  # software release error
    assert re.search(r"visitor</a>\s*<span class=\"badge shared\">shared</span>|visitor\s*<span class=\"badge shared\">",
                     page), page

    status, _, page = get(proxy, f"dashboard/computer?id={proxy.computer_id}")
    assert status == 200
    strict_html(page)
    assert "1/2 failing" in page and "promise-error" in page and "2 failures" in page
    assert "CPU: 12.5" in page and "memory: 2.0 MiB" in page
    assert "last line of the error" in page and evil in page

    status, headers, page = get(proxy, f"dashboard/instance?computer={proxy.computer_id}&partition={web}")
    assert status == 200 and headers["Cache-Control"] == "no-store"
    strict_html(page)
    assert '<a href="http://127.0.0.1:8180/" rel="noopener noreferrer">http://127.0.0.1:8180/</a>' in page
    for secret in ("s3cret-conn", "s3cret-param", "hunter2"):
        assert secret not in page
    assert "https://admin:••••••@127.0.0.1:9/" in page
    assert 'href="javascript' not in page and "javascript:alert(1)" in page  # shown as text, never a link
    assert "port 8180 does not answer" in page and "failing" in page
    assert "shared hi" in page  # the shared instance it hosts, with its parameters

    _, _, revealed = get(proxy, f"dashboard/instance?computer={proxy.computer_id}&partition={web}&secrets=1")
    for secret in ("s3cret-conn", "s3cret-param", "hunter2"):
        assert secret in revealed
    assert "Hide secrets" in revealed


def test_missing_pages_static_files_and_index(proxy, scenario):
    status, _, page = get(proxy, "dashboard/instance?computer=nope&partition=<b>x</b>")
    assert status == 404 and "&lt;b&gt;x&lt;/b&gt;" in page
    strict_html(page)
    assert get(proxy, "dashboard/computer?id=nope")[0] == 404
    status, headers, css = get(proxy, "dashboard/static/dashboard.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css") and "prefers-color-scheme" in css
    assert get(proxy, "dashboard/static/../db.py")[0] == 404
    assert get(proxy, "dashboard/static/dashboard.js")[1]["Content-Type"].startswith("text/javascript")
    # a browser asking for / is sent to the dashboard; a script still gets the one text line
    request = urllib.request.Request(proxy.url, headers={"Accept": "text/html"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        assert response.url.endswith("/dashboard")
    assert get(proxy, "")[2].startswith("slapproxy (slapnode)")
    # read-only: the pages refuse a POST
    assert post(proxy, "dashboard", {"x": "1"})[0] == 405


def test_status_json_speaks_the_vocabulary(proxy, scenario):
    status, headers, body = get(proxy, "status.json")
    assert status == 200 and headers["Content-Type"] == "application/json"
    document = json.loads(body)
    assert document["schema"] == "slapnode.status/1" and document["source"] == "proxy"
    partitions = {p["partition"]: p for p in document["partitions"]}
    web = partitions[scenario["web"]]
    from slapos.base.statusdoc import partition_record

    assert list(web) == list(partition_record("c", "p"))  # every field, in the documented order
    assert web["slap_state"] == "busy" and web["title"] == "web" and web["reported_state"] == "started"
    assert web["status"] == "promise-error" and web["backoff"]["failures"] == 2
    assert [(p["title"], p["failed"]) for p in web["promises"]] == [("hello-web-url", True), ("disk", False)]
    assert web["usage"] == {"CPU": 12.5, "memory": 2097152.0}
    assert partitions[scenario["evil"]]["reported_state"] == "error"
    assert "invented" not in json.dumps(document)
    assert "s3cret" not in body and "hunter2" not in body  # no parameters, no connection
    assert document["software"][0]["error"] == "the build broke: missing gcc"
    assert [s["title"] for s in document["shared"]] == ["visitor"]
    assert document["computers"][0]["status_reported_at"] is not None


def _samples(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics_after_the_scenario(proxy, scenario):
    for _ in range(3):
        get(proxy, "dashboard")
    get(proxy, "no-such-endpoint")
    status, headers, text = get(proxy, "metrics")
    assert status == 200 and headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = _samples(text)
    c = proxy.computer_id
    assert samples['slapproxy_requests_total{endpoint="dashboard",method="GET",code="200"}'] == 3
    assert samples['slapproxy_requests_total{endpoint="other",method="GET",code="404"}'] == 1
    assert samples['slapproxy_requests_total{endpoint="reportNodeStatus",method="POST",code="200"}'] == 1
    assert samples['slapproxy_request_duration_seconds_count{endpoint="dashboard"}'] == 3
    assert samples['slapproxy_request_duration_seconds_bucket{endpoint="dashboard",le="+Inf"}'] == 3
    assert samples[f'slapproxy_partitions{{computer="{c}",slap_state="busy",reported_state="started"}}'] == 1
    assert samples[f'slapproxy_partitions{{computer="{c}",slap_state="busy",reported_state="error"}}'] == 1
    assert samples[f'slapproxy_partitions{{computer="{c}",slap_state="free",reported_state="none"}}'] == 1
    assert samples[f'slapproxy_software_releases{{computer="{c}",requested_state="available",reported_state="error"}}'] == 1
    assert samples[f'slapproxy_node_promise_failures{{computer="{c}",partition="{scenario["web"]}"}}'] == 1
    assert samples[f'slapproxy_node_partitions{{computer="{c}",status="promise-error"}}'] == 1
    assert samples['slapproxy_shared_instances{requested_state="started",hosted="yes"}'] == 1
    # every line is a comment or `name{labels} value`: the exposition format
    for line in text.splitlines():
        assert line.startswith("# ") or re.fullmatch(r'[a-z_]+(\{[^}]*\})? (-?[0-9.e+-]+|[+-]Inf|NaN)', line), line


@pytest.mark.parametrize("fields, reason", [
    ({"computer_id": "local_computer", "status_json": "{not json"}, "not JSON"),
    ({"computer_id": "local_computer", "status_json": "[1, 2]"}, "must be a JSON object"),
    ({"computer_id": "local_computer", "status_json": '{"partitions": 3}'}, "needs a 'partitions' list"),
    ({"computer_id": "local_computer", "status_json": '{"schema": "other/9", "partitions": []}'}, "unknown status schema"),
    ({"computer_id": "local_computer"}, "missing field 'status_json'"),
])
def test_bad_status_reports_are_one_line_400(proxy, fields, reason):
    register_partitions(proxy, 1)
    status, body = post(proxy, "reportNodeStatus", fields)
    assert status == 400 and reason in body and "\n" not in body.strip()


def test_status_report_of_an_unknown_computer_is_refused(proxy):
    register_partitions(proxy, 1)
    status, body = post(proxy, "reportNodeStatus", {"computer_id": "nobody-knows", "status_json": '{"partitions": []}'})
    assert status == 404 and "nobody-knows" in body
