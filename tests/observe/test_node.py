"""The node's side of observability (slapos/grid/observe.py): metrics files after each run, the
status report posted to the master only when it changed, and a master that does not take it."""
from __future__ import annotations

import http.server
import json
import threading

from slapos.grid import observe
from slapos.grid.status import all_statuses, status_document
from tests.fixtures.proxy import free_port
from tests.instance.conftest import instance_node  # noqa: F401 - the fixture


def proxy_requests(node, endpoint: str) -> int:
    for line in node.proxy.connect()._connection.get("metrics").decode().splitlines():
        if line.startswith(f'slapproxy_requests_total{{endpoint="{endpoint}",method="POST",code="200"}}'):
            return int(float(line.rpartition(" ")[2]))
    return 0


def test_runs_write_metrics_and_post_status_only_when_it_changed(instance_node):  # noqa: F811
    node = instance_node(partitions=2)
    url = node.install("promise")
    sick = node.request(url, "sick", {"promise": "fail"})
    assert node.instance() == 2
    directory = node.root / "var" / "metrics"
    text = (directory / "slapos-node-instance.prom").read_text()
    assert 'slapos_node_run_exit_code{kind="instance"} 2' in text
    assert f'slapos_node_partition_promise_failures{{partition="{sick}"}} 1' in text
    assert not [p for p in directory.iterdir() if p.name.startswith(".slapos-node-")]  # no temporary left
    assert proxy_requests(node, "reportNodeStatus") == 1

    # nothing changed: no second report (the no-change run makes no request for it)
    assert node.instance() in (0, 2)
    posted = proxy_requests(node, "reportNodeStatus")
    again = node.instance()
    assert again in (0, 2) and proxy_requests(node, "reportNodeStatus") == posted

    # what the proxy keeps is what `node status` says
    status = json.loads(node.proxy.connect()._connection.get("status.json"))
    record = next(p for p in status["partitions"] if p["partition"] == sick)
    mine = status_document(node.computer_id, all_statuses(node.settings()))
    assert record["status"] == next(p for p in mine["partitions"] if p["partition"] == sick)["status"]

    # `slapos node metrics` prints the files
    result = node.slapos("node", "metrics")
    assert result.returncode == 0 and "slapos_node_run_duration_seconds" in result.stdout


class _NotServed(http.server.BaseHTTPRequestHandler):
    calls: list[str] = []

    def do_POST(self):  # noqa: N802
        type(self).calls.append(self.path)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"unknown endpoint"
        self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_master_without_the_call_is_not_asked_again(instance_node, tmp_path):  # noqa: F811
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _NotServed)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        node = instance_node(partitions=1)
        settings = node.settings(master_url=f"http://127.0.0.1:{port}/")
        document = status_document(node.computer_id, all_statuses(settings))
        assert observe.post_status(settings, document) is False
        document["partitions"].append({"partition": "changed"})
        assert observe.post_status(settings, document) is False
        assert _NotServed.calls == ["/reportNodeStatus"]  # asked once, remembered for a day
    finally:
        server.shutdown()
        server.server_close()


def test_metrics_directory_can_be_turned_off(instance_node):  # noqa: F811
    node = instance_node(partitions=1, extra_config={"slapos": {"metrics_directory": "off", "report_status": "no"}})
    assert node.instance() == 0
    assert not (node.root / "var" / "metrics").exists()
    result = node.slapos("node", "metrics")
    assert result.returncode == 1 and "metrics are off" in result.stderr
