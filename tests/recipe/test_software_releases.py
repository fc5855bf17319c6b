"""The example software releases of software-release/, built and instantiated for real.

Each is built the way the node builds a software release (a directory named after the md5 of
the URL, a `buildout.cfg` extending the URL, the node's buildout runner) and each instance the
way the node runs a partition (`instance.cfg` of the release + the node's tail), against a real
proxy; the services are then started from their etc/service wrappers (what supervisord runs) and
checked through their promises and published URLs. No network beyond the loopback.
"""
from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO

from .conftest import Instance, allocated, run_buildout

SOFTWARE_RELEASES = REPO / "software-release"

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_software(url: str | Path, software_root: Path) -> Path:
    """Build a software release as the node does; return its directory."""
    directory = software_root / hashlib.md5(str(url).encode()).hexdigest()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "buildout.cfg").write_text(f"[buildout]\nextends = {url}\n")
    run_buildout(directory)
    assert (directory / "instance.cfg").is_file()
    return directory


def write_instance_profile(software: Path, instance: Instance, directory: Path) -> None:
    """The partition's buildout.cfg as the node writes it: the release's instance.cfg + a tail."""
    directory.mkdir(parents=True, exist_ok=True)
    tail = "".join(f"{k} = {v}\n" for k, v in instance.connection.items())
    (directory / "buildout.cfg").write_text(
        (software / "instance.cfg").read_text()
        + "\n\n[buildout]\nbin-directory = ${buildout:directory}/sbin\noffline = true\n"
        + "\n[slap-connection]\n" + tail
    )


def instantiate(software: Path, instance: Instance, directory: Path, check: bool = True):
    """Run the release's instance profile for `instance` in `directory`."""
    write_instance_profile(software, instance, directory)
    return run_buildout(directory, check=check)


class Services:
    """Programs started from etc/service wrappers, like supervisord would; stopped by pid."""

    def __init__(self):
        self.processes: list[subprocess.Popen] = []

    def start(self, partition: Path) -> None:
        for wrapper in sorted((partition / "etc" / "service").iterdir()):
            log = open(partition / f".{wrapper.name}.log", "ab")  # noqa: SIM115 - closed with the process
            self.processes.append(subprocess.Popen(
                [str(wrapper)], cwd=partition, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={"HOME": str(partition), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                start_new_session=True,
            ))
            log.close()

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(10)
        self.processes.clear()


@pytest.fixture
def services():
    started = Services()
    try:
        yield started
    finally:
        started.stop()


def promises_pass(partition: Path, timeout: float = 20.0) -> list[str]:
    """Run every etc/promise executable until all succeed; return their one-line messages."""
    deadline = time.monotonic() + timeout
    while True:
        results = [subprocess.run([str(p)], capture_output=True, text=True, timeout=30)
                   for p in sorted((partition / "etc" / "promise").iterdir())]
        if all(r.returncode == 0 for r in results) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert all(r.returncode == 0 for r in results), [r.stdout for r in results]
    return [r.stdout.strip() for r in results]


def get(url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        return response.read().decode()


def test_hello_web(request_instance, tmp_path, services):
    url = SOFTWARE_RELEASES / "hello-web" / "software.cfg"
    software = build_software(url, tmp_path / "soft")
    assert os.access(software / "bin" / "hello-web-server", os.X_OK)

    port = free_port()
    message = "Bonjour <web> & $(touch pwned) 'quoted'"
    instance = request_instance("web", {"port": str(port), "message": message}, software_url=str(url))
    order = instance.node.proxy.connect().registerOpenOrder()
    order.request(str(url), "visitor", partition_parameter_kw={"message": "Hello visitor"}, shared=True)

    partition = tmp_path / "partition"
    instantiate(software, instance, partition)
    services.start(partition)
    assert promises_pass(partition) == [f"OK: http://127.0.0.1:{port}/ answered HTTP 200"]

    published = instance.partition().getConnectionParameterDict()
    assert published == {"url": f"http://127.0.0.1:{port}/"}
    assert get(published["url"]) == message + "\n"
    assert not (partition / "pwned").exists()
    shared = order.request(str(url), "visitor", shared=True).getConnectionParameterDict()
    assert shared == {"url": f"http://127.0.0.1:{port}/shared/_visitor"}
    assert get(shared["url"]) == "Hello visitor\n"


def test_hello_tree(request_instance, tmp_path, services):
    url = SOFTWARE_RELEASES / "hello-tree" / "software.cfg"
    software = build_software(url, tmp_path / "soft")
    ports = {name: free_port() for name in ("port", "backend-1-port", "backend-2-port")}
    root = request_instance("tree", {k: str(v) for k, v in ports.items()}, software_url=str(url))

    # run 1 of the root: its backends and the shared instance are requested, nothing published yet
    result = instantiate(software, root, tmp_path / "root", check=False)
    assert result.returncode != 0 and "'backend-1' has not published url yet" in result.stdout
    instances = allocated(root)
    assert sorted(instances) == ["backend-1", "backend-2", "tree"]

    # the backends run (one of them hosts the shared instance) and publish
    for title in ("backend-1", "backend-2"):
        instantiate(software, instances[title], tmp_path / title)
        services.start(tmp_path / title)
        assert promises_pass(tmp_path / title)

    # run 2 of the root: everything is published, the frontend combines the three answers
    instantiate(software, root, tmp_path / "root")
    services.start(tmp_path / "root")
    assert promises_pass(tmp_path / "root") == [f"OK: http://127.0.0.1:{ports['port']}/ answered HTTP 200"]
    published = root.partition().getConnectionParameterDict()
    assert published["url"] == f"http://127.0.0.1:{ports['port']}/"
    assert published["backend-1-url"] == f"http://127.0.0.1:{ports['backend-1-port']}/"
    assert published["backend-2-url"] == f"http://127.0.0.1:{ports['backend-2-port']}/"
    assert published["shared-url"].endswith("/shared/tree_shared-1")
    assert get(published["url"]) == (
        "backend-1: Hello from backend 1!\n"
        "backend-2: Hello from backend 2!\n"
        "shared-1: Hello from the shared instance!\n"
    )


def test_hello_c(request_instance, tmp_path, services):
    """The compiled example, built from its shipped tarball with fewer work units (fast)."""
    profile = tmp_path / "hello-c-quick.cfg"
    profile.write_text(
        f"[buildout]\nextends = {SOFTWARE_RELEASES / 'hello-c' / 'software.cfg'}\n"
        "[hello-c]\nconfigure-options = --units=2 --statements=50\n"
    )
    software = build_software(profile, tmp_path / "soft")
    program = software / "parts" / "hello-c" / "bin" / "hello-c"
    selftest = subprocess.run([str(program), "--selftest"], capture_output=True, text=True, check=True)
    assert selftest.stdout.startswith("hello-c 1.0: 2 units")

    port = free_port()
    instance = request_instance("c", {"port": str(port), "message": "Hello compiled; $(id)"},
                                software_url=str(profile))
    instantiate(software, instance, tmp_path / "partition")
    services.start(tmp_path / "partition")
    assert promises_pass(tmp_path / "partition") == [f"OK: http://127.0.0.1:{port}/ answered HTTP 200"]
    published = instance.partition().getConnectionParameterDict()
    assert get(published["url"]) == "Hello compiled; $(id)\n"


def test_hello_c_tarball_matches_its_sources_and_checksum():
    """The shipped tarball is what make-tarball.py builds from source/, and software.cfg names
    its sha256: a source edit without rebuilding the tarball (or the checksum) is caught here."""
    base = SOFTWARE_RELEASES / "hello-c"
    shipped = base / "hello-c-1.0.tar.gz"
    checksum = re.search(r"^sha256 = (\w+)$", (base / "software.cfg").read_text(), re.M).group(1)
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == checksum

    source = base / "source"
    with tarfile.open(shipped) as tar:
        members = {m.name: m for m in tar.getmembers()}
        files = {name: tar.extractfile(m).read() for name, m in members.items() if m.isfile()}
    expected = {str(p.relative_to(source)): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    assert files == expected
    assert members["hello-c-1.0/configure"].mode == 0o755


@pytest.mark.root
def test_hello_web_as_unprivileged_users(request_instance, tmp_path, services):
    """As the node does when root: the release is built by the owner of software_root and the
    instance deployed by the partition's owner (nobody here), never by root; the service runs as
    that user too, as supervisord would run it."""
    from slapos.grid.buildout import run_buildout as node_buildout
    from slapos.grid.process import Identity

    url = SOFTWARE_RELEASES / "hello-web" / "software.cfg"
    port = free_port()
    instance = request_instance("web", {"port": str(port), "message": "Hello nobody"}, software_url=str(url))
    node = instance.node
    owner = Identity.owner_of(node.software_root)
    assert owner.uid != 0

    software = node.software_root / hashlib.md5(str(url).encode()).hexdigest()
    software.mkdir()
    os.chown(software, owner.uid, owner.gid)
    (software / "buildout.cfg").write_text(f"[buildout]\nextends = {url}\n")
    result = node_buildout(software, None, owner, timeout=300)
    assert result.ok, result.tail()

    partition = node.partition_path(instance.partition_id)
    user = Identity.owner_of(partition)
    assert user.uid != 0
    write_instance_profile(software, instance, partition)
    result = node_buildout(partition, None, user, timeout=300)
    assert result.ok, result.tail()
    wrapper = partition / "etc" / "service" / "hello-web"
    assert wrapper.stat().st_uid == user.uid

    process = subprocess.Popen([str(wrapper)], cwd=partition, user=user.uid, group=user.gid,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    services.processes.append(process)
    assert promises_pass(partition) == [f"OK: http://127.0.0.1:{port}/ answered HTTP 200"]
    assert get(instance.partition().getConnectionParameterDict()["url"]) == "Hello nobody\n"
