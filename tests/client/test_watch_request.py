"""A node watching its computer (`/watchComputer`, docs/watch.md) is woken by the real `slapos
request`, `slapos supply` and a parameter change made with the `slapos` command, each with
exactly the change it made; a repeated identical request wakes nobody."""
from __future__ import annotations

import threading
import time

from slapos.slap.watch import Change, WatchResult, watch_computer

from .conftest import Client

SR = "/srv/demo/software.cfg"
LONG = 50.0


def woken(client: Client, connection, cursor: str, *args: str) -> WatchResult:
    out: list = []

    def run() -> None:
        started = time.monotonic()
        out.append(watch_computer(connection, client.proxy.computer_id, cursor, LONG))
        out.append(time.monotonic() - started)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    result = client.run(*args)
    assert result.returncode == 0, result.stderr
    thread.join(LONG + 20)
    assert out and out[1] < LONG, "the command did not wake the watch"
    return out[0]


def test_slapos_commands_wake_the_watching_node(client: Client):
    node = client.proxy.connect().connection
    cursor = watch_computer(node, client.proxy.computer_id, None, 5).cursor
    answer = woken(client, node, cursor, "supply", SR)
    assert answer.changes == [Change("software", url=SR)]
    answer = woken(client, node, answer.cursor, "request", "web", SR, "--parameters", "title=one")
    assert answer.changes == [Change("partition", reference="slappart0")]
    answer = woken(client, node, answer.cursor, "request", "web", SR, "--parameters", "title=two")
    assert answer.changes == [Change("partition", reference="slappart0")]
    again = client.run("request", "web", SR, "--parameters", "title=two")
    assert again.returncode == 0, again.stderr
    quiet = watch_computer(node, client.proxy.computer_id, answer.cursor, 1)
    assert quiet.changes == [] and not quiet.reset
