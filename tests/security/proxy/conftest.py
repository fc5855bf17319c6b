"""A real proxy with `access = credentials`, a node formatted against it, and tenants.

    cproxy = credentials_proxy(tmp_path)          # RunningProxy whose url carries the node credential
    with tenant_users(2) as users: ...            # real users tsecnet<N>, deleted afterwards
    run_as(user, script, *args)                   # a Python process switched to that user's uid

Users created here are prefixed `tsecnet` (one prefix per engineer on the shared machine).
"""
from __future__ import annotations

import contextlib
import http.client
import os
import pwd
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from slapos.proxy.access import new_credential
from tests.fixtures.proxy import REPO, RunningProxy, start_proxy

USER_PREFIX = "tsecnet"


def credentials_proxy(directory: Path, computer_id: str = "local_computer", extra: dict | None = None) -> RunningProxy:
    """`slapos proxy start` with access = credentials on a free loopback port; its url carries
    the node credential."""
    return start_proxy(directory, computer_id, {"slapproxy": extra or {}}, credential=new_credential())


@pytest.fixture
def cproxy(tmp_path: Path):
    running = credentials_proxy(tmp_path / "proxy")
    try:
        yield running
    finally:
        running.stop()


def dump(database: Path) -> list[str]:
    """The whole database as SQL: compared before and after an attack."""
    conn = sqlite3.connect(database)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def call(port: int, method: str, path: str, fields: dict | None = None, headers: dict | None = None) -> tuple[int, str]:
    from urllib.parse import urlencode

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        body = urlencode(fields or {}) if method == "POST" else None
        if method == "GET" and fields:
            path += "?" + urlencode(fields)
        all_headers = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}
        all_headers.update(headers or {})
        conn.request(method, path, body=body, headers=all_headers)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


@contextlib.contextmanager
def tenant_users(count: int):
    """`count` real system users (tsecnet<pid>a, …), removed afterwards."""
    names = [f"{USER_PREFIX}{os.getpid() % 100000}{chr(ord('a') + i)}" for i in range(count)]
    made = []
    try:
        for name in names:
            subprocess.run(["userdel", name], capture_output=True)
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                            "--user-group", name], check=True, capture_output=True)
            made.append(name)
        yield [pwd.getpwnam(name) for name in names]
    finally:
        for name in made:
            subprocess.run(["userdel", name], capture_output=True)


def run_as(user: pwd.struct_passwd, code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run Python `code` as `user` (uid, gid, no supplementary groups), with a clean environment."""

    def switch():
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, preexec_fn=switch, cwd="/")
