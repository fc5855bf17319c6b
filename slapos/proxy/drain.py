"""A 413 the client can read: drain an oversized body instead of resetting the connection.

waitress refuses a body over its `max_request_body_size` from the request's headers: it answers
413 and closes the socket at once. The client is usually still sending, and a socket closed with
unread data answers with a TCP reset, so most clients (http.client, curl, requests) see
"connection reset" instead of the 413 they were sent. After such an answer this channel finishes
the response with a FIN (`shutdown(SHUT_WR)`), then reads and discards what the client still
sends — at most `DRAIN_BYTES`, for at most `DRAIN_SECONDS` — and closes when the client has
finished (or the bound is reached). Nothing is stored while draining.

This plugs into waitress through `channel_class` and `error_task_class`, not a public API: the
dependency on waitress is bounded (<4) in pyproject.toml, and tests/proxy/test_oversized.py
checks the behaviour against the installed version.
"""
from __future__ import annotations

import socket
import time

from waitress.channel import HTTPChannel
from waitress.task import ErrorTask
from waitress.utilities import RequestEntityTooLarge

DRAIN_BYTES = 256 << 20
DRAIN_SECONDS = 30.0


class _DrainingErrorTask(ErrorTask):
    def execute(self):
        if isinstance(self.request.error, RequestEntityTooLarge):
            self.channel.drain_before_close = True
        super().execute()


class DrainingChannel(HTTPChannel):
    error_task_class = _DrainingErrorTask
    drain_before_close = False
    _draining = False
    _drained = 0
    _drain_until = 0.0

    def handle_close(self):
        if self.drain_before_close and not self._draining and self.connected:
            self._draining = True
            self._drain_until = time.monotonic() + DRAIN_SECONDS
            try:
                self.socket.shutdown(socket.SHUT_WR)  # the answer is complete
                return
            except OSError:
                pass
        super().handle_close()

    def writable(self):
        return False if self._draining else super().writable()

    def _finish(self) -> None:
        if self.connected:
            super().handle_close()

    def readable(self):
        if self._draining:
            if time.monotonic() > self._drain_until:
                self._finish()
                return False
            return True
        return super().readable()

    def handle_read(self):
        if not self._draining:
            return super().handle_read()
        try:
            data = self.recv(self.adj.recv_bytes)  # b"" at EOF (recv() then closed the channel)
        except OSError:
            data = b""
        self._drained += len(data)
        if not data or self._drained > DRAIN_BYTES or time.monotonic() > self._drain_until:
            self._finish()
        else:
            self.last_activity = time.time()  # not idle: waitress' channel_timeout waits


def install(server) -> None:
    """Use the draining channel for every listening socket of a waitress server."""
    dispatchers = [server] if hasattr(server, "channel_class") else list(getattr(server, "map", {}).values())
    for dispatcher in dispatchers:
        if hasattr(dispatcher, "channel_class"):
            dispatcher.channel_class = DrainingChannel
