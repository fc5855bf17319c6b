"""`StandaloneSlapOS`: a whole SlapOS node (its own master included) in one directory, driven
from Python. This is the API the test suites of software releases use (`slapos.testing`): start,
format partitions, supply and build a software release, request instances, deploy them, stop.

It runs this project's own commands as child processes (`slapos proxy start`, `slapos node
format|software|instance|report`, `slapos node supervisorctl shutdown`) against a
`slapos.cfg` written in `base_directory`:

    standalone = StandaloneSlapOS("/tmp/sa", "127.0.0.1", 4000)
    standalone.start()
    standalone.format(3, "127.0.0.1", "::1")
    standalone.supply(software_url)
    standalone.waitForSoftware(max_retry=2)
    partition = standalone.request(software_url, "test")
    standalone.waitForInstance(max_retry=3)
    ...
    standalone.stop()

Limits (each raises `NotImplementedError` at once, naming what to do, rather than doing something
else): `partition_forward_configuration` (requests forwarded to another master), `instance_only`,
`public_directory_path`, `system_supervisor_rpc`. `shared_part_root` is, as in the reference, the
last (writable) entry of the shared part list, and `shared_directory` names it. Partitions share this
machine's loopback addresses: `format()`'s addresses are not assigned to partitions. When root runs
it, the software and partitions are given to `owner` (default `nobody`): builds and services never
run as root.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .objects import slap as Slap

__all__ = ["SlapOSNodeCommandError", "SlapOSNodeInstanceError", "SlapOSNodeReportError",
           "SlapOSNodeSoftwareError", "StandaloneSlapOS"]


class SlapOSNodeCommandError(Exception):
    """A `slapos node` command kept failing; the message ends with the last lines of its output."""


class SlapOSNodeSoftwareError(SlapOSNodeCommandError):
    pass


class SlapOSNodeInstanceError(SlapOSNodeCommandError):
    pass


class SlapOSNodeReportError(SlapOSNodeCommandError):
    pass


def _unsupported(what: str) -> NotImplementedError:
    return NotImplementedError(
        f"StandaloneSlapOS of slapnode does not support {what}: drop it, or run this suite with the "
        "reference's StandaloneSlapOS (slapos.core in the release's own eggs); see docs/community.md"
    )


class StandaloneSlapOS:
    """A node and its master (a local proxy) below `base_directory` (see the module docs)."""

    def __init__(self, base_directory, server_ip, server_port, computer_id="local", shared_part_list=(),
                 software_root=None, instance_root=None, shared_part_root=None,
                 partition_forward_configuration=(), slapos_bin=None, local_software_release_root=os.sep,
                 public_directory_path="", instance_only=False, owner: str = "nobody"):
        if partition_forward_configuration:
            raise _unsupported("partition_forward_configuration")
        if instance_only:
            raise _unsupported("instance_only")
        if public_directory_path:
            raise _unsupported("public_directory_path")
        self._base = Path(base_directory).absolute()
        self._server_ip, self._server_port = str(server_ip), int(server_port)
        self._computer_id = computer_id
        self._shared_part_list = [str(p) for p in shared_part_list]
        self._shared_part_root = Path(shared_part_root).absolute() if shared_part_root else None
        if self._shared_part_root is not None:  # buildout installs new shared parts in the list's last entry
            self._shared_part_list.append(str(self._shared_part_root))
        self._software_root = Path(software_root or self._base / "soft").absolute()
        self._instance_root = Path(instance_root or self._base / "inst").absolute()
        self._local_root = str(local_software_release_root)
        self._slapos = [slapos_bin] if slapos_bin else [sys.executable, "-m", "slapos.cli.main"]
        self._owner = owner
        self._proxy: subprocess.Popen | None = None
        self._partition_count = 0
        self._partition_base_name = "slappart"
        self._slap = Slap()
        self._base.mkdir(parents=True, exist_ok=True)
        for name in ("var", "log"):
            (self._base / name).mkdir(exist_ok=True)
        if self._shared_part_root is not None:
            self._shared_part_root.mkdir(parents=True, exist_ok=True)
        self._config = self._base / "slapos.cfg"
        self._write_config()

    # -- layout ------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host = f"[{self._server_ip}]" if ":" in self._server_ip else self._server_ip
        return f"http://{host}:{self._server_port}/"

    @property
    def computer(self):
        return self._slap.registerComputer(self._computer_id)

    @property
    def software_directory(self) -> str:
        return str(self._software_root)

    @property
    def shared_directory(self) -> str:
        """Where new shared parts are installed: the last entry of the shared part list."""
        if not self._shared_part_list:
            raise ValueError("this StandaloneSlapOS has no shared part directory: give shared_part_root")
        return self._shared_part_list[-1]

    @property
    def instance_directory(self) -> str:
        return str(self._instance_root)

    @property
    def system_supervisor_rpc(self):
        raise _unsupported("system_supervisor_rpc (`slapos node supervisorctl --cfg <base>/slapos.cfg` "
                           "drives the node's supervisord)")

    def _write_config(self) -> None:
        var, log = self._base / "var", self._base / "log"
        shared = "".join(f"\n  {p}" for p in self._shared_part_list)
        text = (
            "# Written by slapos.slap.standalone.StandaloneSlapOS\n"
            "[slapos]\n"
            f"computer_id = {self._computer_id}\n"
            f"master_url = {self.url}\n"
            f"software_root = {self._software_root}\n"
            f"instance_root = {self._instance_root}\n"
            "root_check = false\n"
            f"shared_part_list = {shared}\n"
            f"pidfile_software = {var / 'slapgrid-sr.pid'}\n"
            f"pidfile_instance = {var / 'slapgrid-cp.pid'}\n"
            f"pidfile_report = {var / 'slapgrid-ur.pid'}\n"
            "\n[slapformat]\n"
            "interface_name = lo\n"
            f"partition_amount = {self._partition_count}\n"
            f"partition_base_name = {self._partition_base_name}\n"
            "user_base_name = slapuser\n"
            "tap_base_name = slaptap\n"
            f"computer_xml = {var / 'slapos.xml'}\n"
            "alter_user = false\nalter_network = false\ncreate_tap = false\ncreate_tun = false\n"
            "random_delay = 0\n"
            "\n[slapproxy]\n"
            f"host = {self._server_ip}\nport = {self._server_port}\n"
            f"database_uri = {var / 'proxy.db'}\n"
            f"log_file = {log / 'slapos-proxy.log'}\n"
        )
        self._config.write_text(text)

    # -- master --------------------------------------------------------------------------------------
    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # something speaks HTTP there
        except OSError:
            return False

    def start(self) -> None:
        """Start the master (a local proxy) unless it already answers."""
        self._slap.initializeConnection(self.url)
        if os.geteuid() == 0:
            self._give_to_owner()
        if self._proxy is not None and self._proxy.poll() is None:
            return
        if self._answers():
            return
        with open(self._base / "log" / "slapos-proxy.out", "ab") as out:
            self._proxy = subprocess.Popen([*self._slapos, "proxy", "start", "--cfg", str(self._config)],
                                           stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           cwd=str(self._base))
        deadline = time.monotonic() + 30
        while not self._answers():
            if self._proxy.poll() is not None or time.monotonic() > deadline:
                raise SlapOSNodeCommandError(f"the local proxy did not start (see {self._base / 'log'})")
            time.sleep(0.05)

    def stop(self, timeout: float = 300) -> None:
        """Stop the partitions' services (supervisord) and the master."""
        if (self._instance_root / "etc").exists() or (self._base / "var").exists():
            subprocess.run([*self._slapos, "node", "supervisorctl", "--cfg", str(self._config), "shutdown"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                           timeout=timeout, check=False)
        if self._proxy is not None and self._proxy.poll() is None:
            self._proxy.terminate()
            try:
                self._proxy.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proxy.kill()
                self._proxy.wait()
        self._proxy = None

    # -- computer ------------------------------------------------------------------------------------
    def format(self, partition_count: int, ipv4_address: str, ipv6_address: str,
               partition_base_name: str = "slappart") -> None:
        """Have `partition_count` partitions (the addresses are the loopback's, see the module docs)."""
        self._partition_count, self._partition_base_name = int(partition_count), partition_base_name
        self._write_config()
        self._run("format", SlapOSNodeCommandError, 0, 30)
        if os.geteuid() == 0:
            self._give_to_owner()

    def _give_to_owner(self) -> None:
        """As root: builds and services run as the owner of their directory, never root."""
        entry = pwd.getpwnam(self._owner)
        self._software_root.mkdir(parents=True, exist_ok=True)
        for path in (self._base, self._software_root.parent, self._instance_root.parent):
            path.chmod(path.stat().st_mode | 0o711)
        paths = [self._software_root, *([self._shared_part_root] if self._shared_part_root else [])]
        if self._instance_root.is_dir():
            paths += [p for p in self._instance_root.iterdir() if p.name.startswith(self._partition_base_name)]
        for path in paths:
            if path.stat().st_uid == 0:
                shutil.chown(path, entry.pw_uid, entry.pw_gid)

    # -- requests ------------------------------------------------------------------------------------
    def supply(self, software_url: str, computer_guid: str | None = None, state: str = "available") -> None:
        if computer_guid not in (None, self._computer_id):
            raise ValueError("Can only supply on the embedded computer")
        self._slap.registerSupply().supply(software_url, self._computer_id, state)

    def request(self, software_release: str, partition_reference: str, software_type: str | None = None,
                shared: bool = False, partition_parameter_kw: dict | None = None, filter_kw: dict | None = None,
                state: str | None = None):
        if (filter_kw or {}).get("computer_guid", self._computer_id) != self._computer_id:
            raise ValueError("Can only request on the embedded computer")
        return self._slap.registerOpenOrder().request(
            software_release, partition_reference, partition_parameter_kw=partition_parameter_kw,
            software_type=software_type, filter_kw=filter_kw, state=state, shared=shared)

    # -- node runs -----------------------------------------------------------------------------------
    def _run(self, command: str, error: type[SlapOSNodeCommandError], max_retry: int, error_lines: int,
             *extra: str) -> None:
        output = ""
        for _attempt in range(max(0, int(max_retry)) + 1):
            proc = subprocess.run([*self._slapos, "node", command, "--cfg", str(self._config), "--now", *extra],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  text=True, cwd=str(self._base), check=False)
            if proc.returncode == 0:
                return
            output = proc.stdout
        tail = "\n".join(output.splitlines()[-error_lines:])
        raise error(f"slapos node {command} failed {max_retry + 1} time(s); last output:\n{tail}")

    def waitForSoftware(self, max_retry=0, debug=False, error_lines=50, install_all=False):  # noqa: N802
        """Build the supplied software releases, trying `max_retry` more times on failure."""
        self._run("software", SlapOSNodeSoftwareError, max_retry, error_lines, *(["--all"] if install_all else []))

    def waitForInstance(self, max_retry=0, debug=False, error_lines=30):  # noqa: N802
        """Deploy the requested instances (promises included), retrying on failure."""
        self._run("instance", SlapOSNodeInstanceError, max_retry, error_lines)

    def waitForReport(self, max_retry=0, debug=False, error_lines=30):  # noqa: N802
        """Report usage and destroy what was destroyed, retrying on failure."""
        self._run("report", SlapOSNodeReportError, max_retry, error_lines)
