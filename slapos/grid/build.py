"""Build: everything a partition needs before supervisord — the software release's instance
profile read safely, the certificate, the profile's tail (SLAP-PROTOCOL §6.5, every value
checked by slapos.base.safetext), and the instance buildout, run as the partition's user in its
cgroup: through the fork server (which imports zc.buildout once for the whole run), with the
release's own buildout when it ships one, or as a process of its own (`--buildout-debug`, or a
fork server that cannot run)."""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from slapos.base import tenantfs
from slapos.base.errors import SlapOSError
from slapos.base.safetext import UnsafeValue, buildout_value

from .job import DESTROYED, STARTED, STOPPED, Job, PartitionLog, RunContext, log, partition_log
from .partition import PartitionError, software_directory

# buildout.cfg = the software release's instance profile + this tail (SLAP-PROTOCOL §6.5)
PROFILE_LIMIT = 8 << 20  # bytes of a release's instance.cfg read into a partition's buildout.cfg

PROFILE_TAIL = """

# This is beginning of zc.buildout profile's tail added by slapgrid
[buildout]
# put buildout generated binaries in specific directory
bin-directory = ${{buildout:directory}}/sbin

# protect software and run parts offline
offline = true

[slap-connection]
computer-id = {computer_id}
partition-id = {partition_id}
server-url = {server_url}
software-release-url = {software_release_url}
key-file = {key_file}
cert-file = {cert_file}
master-ca-file = {master_ca_file}
shared-part-list =
  {shared_part_list}
build-time-part-list =
  {build_time_part_list}
requested-state = {requested_state}

[slap_connection]
# Kept for backward compatiblity
computer_id = {computer_id}
partition_id = {partition_id}
server_url = {server_url}
software_release_url = {software_release_url}
key_file = {key_file}
cert_file = {cert_file}
master_ca_file = {master_ca_file}

[storage-configuration]
storage-home = {storage_home}

[network-information]
global-ipv4-network = {ipv4_global_network}
# This is end of zc.buildout profile's tail added by slapgrid
"""


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except OSError:
        return False


def partition_master_url(node_url: str, relative: str | None) -> str:
    """The master URL a partition gets in its [slap-connection]. With a proxy in `access =
    credentials` mode the node's own URL carries the node credential, which must never reach a
    partition: the partition gets the URL of its own credential (`relative` to the node's, from
    the computer document), or nothing at all (docs/security-proxy.md)."""
    from urllib.parse import urljoin

    from slapos.slap.connection import CREDENTIAL_RE, normalize_master_url, url_credential

    if url_credential(node_url) is None:
        return node_url  # a master without credentials in URLs (any SLAP master, an open proxy)
    if relative is None:
        raise PartitionError(
            "the master gave no credential for this partition, and the node's own master_url carries the node "
            "credential: refusing to hand it to the partition (is the proxy older than this node, or not in access = credentials mode?)"
        )
    parts = relative.split("/")
    if len(parts) != 3 or parts[0] != ".." or parts[2] != "" or not CREDENTIAL_RE.match(parts[1]):
        raise PartitionError(f"the master gave a malformed master URL for this partition: {relative[:80]!r}")
    return urljoin(normalize_master_url(node_url), relative)


class Builder:
    """Builds partitions, side by side (one thread each); owns the run's fork server."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self._forkserver = None
        self._forkserver_lock = threading.Lock()

    def build(self, job: Job) -> None:
        """Everything before supervisord: software release, certificate, profile, buildout."""
        d, partition, settings = job.desired, job.partition, self.ctx.settings
        partition_log(job, f"processing (requested state: {d.requested_state})")
        partition.remove_request_transaction()
        partition.remove_error_log()
        if d.requested_state not in (STARTED, STOPPED, DESTROYED):
            raise PartitionError(f"unknown requested state {d.requested_state!r}")
        if d.requested_state == DESTROYED:
            return  # only stopped here; `slapos node report` destroys
        if not d.software_release_url:
            raise PartitionError("the master gave no software release for this partition")
        software = software_directory(settings.software_root, d.software_release_url)
        template = self.instance_profile(software, d.software_release_url)
        self.refresh_certificate(job)
        partition.link_software_release(software)
        partition.write_buildout_cfg(self.render_profile(job, template))
        self.run_buildout(job)
        job.built = True
        partition.write_retention_delay(d.retention_delay)  # once: `node report` reads it
        from .supervisor import collect_programs

        job.programs = collect_programs(partition.path, PartitionLog(job.id))
        self.ctx.cgroups.ready(job.id, partition.path, deploy=True)  # limits the profile may have asked for

    def instance_profile(self, software: Path, url: str) -> str:
        """The text of the release's `instance.cfg` (or `template.cfg`). The software user owns
        the release: the file is read through a descriptor of its directory, as a regular file
        (a link to a file of root, a FIFO, a device are refused), of bounded size."""
        fd = tenantfs.open_below(self.ctx.settings.software_root, software.name, follow_base=True)
        try:
            if fd is None or not _exists(".completed", fd):
                raise PartitionError(
                    f"software release {url} is not installed on this node yet ({software} has no .completed): "
                    "it is built by 'slapos node software'"
                )
            builder = os.fstat(fd).st_uid  # a file of anyone else (root's, hard-linked) is refused
            for name in ("instance.cfg", "template.cfg"):
                try:
                    data = tenantfs.read_regular(name, PROFILE_LIMIT, dir_fd=fd, uid=builder)
                except FileNotFoundError:
                    continue
                except OSError as e:
                    raise PartitionError(f"refusing {software / name}: {e.strerror or e}") from None
                try:
                    return data.decode("utf-8")
                except UnicodeDecodeError:
                    raise PartitionError(f"{software / name} is not UTF-8 text") from None
        finally:
            if fd is not None:
                os.close(fd)
        raise PartitionError(f"software release {url} has no instance.cfg (nor template.cfg) in {software}")

    def refresh_certificate(self, job: Job) -> None:
        if not self.ctx.settings.certificate_repository_path:
            return
        certificate = job.desired.handle.getCertificate() or {}
        if job.partition.write_certificate(certificate.get("certificate"), certificate.get("key")):
            partition_log(job, "certificate written")

    def render_profile(self, job: Job, template: str) -> str:
        s, d = self.ctx.settings, job.desired
        certs = job.partition.certificate_files()  # empty when the master gave none (reference)
        values = {
            "computer_id": s.computer_id,
            "partition_id": job.id,
            "server_url": partition_master_url(s.master_url, d.master_url),
            "software_release_url": d.software_release_url,
            "key_file": str(certs[1]) if certs else "",
            "cert_file": str(certs[0]) if certs else "",
            # the CA verifying the master (a proxy's own CA, docs/join.md): empty for the system CAs
            "master_ca_file": str(s.master_ca_file) if s.master_ca_file else "",
            "requested_state": d.requested_state,
            "storage_home": s.instance_storage_home or "",
            "ipv4_global_network": s.ipv4_global_network or "",
        }
        where = f"the instance profile of {job.id}"
        try:
            values = {key: buildout_value(key, value, where) for key, value in values.items()}
            for key, items in (("shared_part_list", s.shared_part_list), ("build_time_part_list", s.build_time_part_list)):
                values[key] = "\n  ".join(buildout_value(key, item, where) for item in items)
        except UnsafeValue as e:
            raise PartitionError(str(e)) from None
        return template + PROFILE_TAIL.format(**values)

    def run_buildout(self, job: Job) -> None:
        from . import process
        from .buildout import (
            RUNNER_MODULE,
            buildout_argv,
            buildout_environment,
            release_buildout,
            run_buildout,
        )

        settings = self.ctx.settings
        path = job.partition.path
        identity = process.identity_for(path, f"the buildout of partition {job.id}")
        identity = self.ctx.cgroups.place(identity, job.id, path)
        env = buildout_environment(path, settings, SLAPGRID_INSTANCE_ROOT=str(settings.instance_root))
        timeout = settings.partition_timeout
        progress = PartitionLog(job.id)

        def on_line(line: str) -> None:
            progress.debug("%s", line)

        partition_log(job, "running buildout")
        argv = buildout_argv(path)
        args = argv[argv.index(RUNNER_MODULE) + 1:]
        url = job.desired.software_release_url
        assert url is not None  # `build` refused a partition without a software release
        own = release_buildout(software_directory(settings.software_root, url))
        if self.ctx.options.buildout_debug:
            result = run_buildout(path, settings, identity, timeout=timeout, debug=True, env=env)
        else:
            from .forkserver import ForkServerGone

            result = None
            with job.partition.open_log() as log_file:  # opened safely here, appended by the run
                if own is not None:
                    # the release brought its own buildout (as on the reference): it runs the profile
                    partition_log(job, f"running the software release's own {own}")
                    result = process.run([str(own), *args], cwd=path, env=env, identity=identity, umask=0o027,
                                         timeout=timeout, log_file=log_file, on_line=on_line)
                else:
                    server = self.forkserver()
                    if server is not None:
                        try:
                            result = server.run(args, cwd=path, env=env, identity=identity, timeout=timeout,
                                                log_file=log_file, on_line=on_line)
                        except ForkServerGone as e:
                            partition_log(job, f"{e}: running buildout as a process of its own", logging.WARNING)
                    if result is None:
                        result = run_buildout(path, settings, identity, timeout=timeout, log_file=log_file,
                                              on_line=on_line, env=env)
        assert result is not None  # every branch above ran buildout one way or another
        if not result.ok:
            lines = [line.strip() for line in result.output.splitlines() if line.strip()]
            reason = next((line for line in reversed(lines) if line.startswith("Error:")), lines[-1] if lines else "")
            reason = reason.removeprefix("Error:").strip() or "no output"
            raise PartitionError(f"buildout failed: {reason} (exit {result.returncode})\n{result.tail(40)}")
        partition_log(job, f"buildout done in {result.duration:.2f} s")

    def forkserver(self):
        """The buildout fork server, started on first use; None if it cannot run (then each
        buildout is a process of its own)."""
        with self._forkserver_lock:
            if self._forkserver is None:
                from .forkserver import ForkServer

                server = ForkServer()
                try:
                    server.start()
                except SlapOSError as e:
                    log.warning("%s: running each buildout as a process of its own", e)
                    server = False
                self._forkserver = server
            return self._forkserver or None

    def close(self) -> None:
        if self._forkserver:
            self._forkserver.close()
        self._forkserver = None
