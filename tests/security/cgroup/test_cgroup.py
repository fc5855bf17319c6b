"""Nothing of a tenant survives its partition; a tenant stays in its cgroup and within its limits.

Every test plays the tenant for real: services deployed by `slapos node instance` from a release
profile, processes switched to the partition's own user, then the node's real commands."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.conftest import wait_for

from .conftest import as_user, processes_of

pytestmark = pytest.mark.root

HEAD = """
[buildout]
parts = daemon-code service destroy-hook {extra_parts}

[slap-configuration]
configuration.evidence = /nonexistent
configuration.escape = /nonexistent

[daemon-code]
recipe = slapnodetest:file
path = ${{buildout:directory}}/bin/daemon.py
content =
  import os, sys, time
  if os.fork(): os._exit(0)
  os.setsid()
  if os.fork(): os._exit(0)
  fd = os.open(os.devnull, os.O_RDWR)
  for n in (0, 1, 2): os.dup2(fd, n)
  open("/proc/self/comm", "w").write(sys.argv[2])
  with open(sys.argv[1], "w") as f: f.write(str(os.getpid()))
  while True: time.sleep(60)

# a service that double-forks a daemon (setsid, renamed) away from supervisord, then idles
[service]
recipe = slapnodetest:file
path = ${{buildout:directory}}/etc/service/daemonizer
mode = 755
content =
  #!/bin/sh
  /usr/bin/python3 ${{buildout:directory}}/bin/daemon.py ${{slap-configuration:configuration.evidence}}/service-daemon.pid kworker-svc
  exec sleep 100000

# the release's own destroy hook leaves a daemon behind too
[destroy-hook]
recipe = slapnodetest:file
path = ${{buildout:directory}}/sbin/destroy
mode = 755
content =
  #!/bin/sh
  /usr/bin/python3 ${{buildout:directory}}/bin/daemon.py ${{slap-configuration:configuration.evidence}}/hook-daemon.pid kworker-hook
  while [ ! -s ${{slap-configuration:configuration.evidence}}/hook-daemon.pid ]; do sleep 0.05; done
"""

ESCAPE = """
# a service that tries to move itself out of its cgroup, and says what happened
[escape]
recipe = slapnodetest:file
path = ${buildout:directory}/etc/service/escape
mode = 755
content =
  #!/bin/sh
  for f in ${slap-configuration:configuration.escape}; do
  if echo $$ > $f 2>/dev/null; then echo "escaped $f"; else echo "refused $f"; fi
  done > ${slap-configuration:configuration.evidence}/escape.txt
  cat /proc/$$/cgroup >> ${slap-configuration:configuration.evidence}/escape.txt
  exec sleep 100000
"""

LIMITS = """
# the release asks for limits: lower than the node's for memory and processes, higher for CPU
[cgroup-request]
recipe = slapnodetest:file
path = ${buildout:directory}/.slapos-cgroup
content =
  memory_limit = 64M
  pids_limit = 40
  cpu_quota = 400
"""

PLAIN = (HEAD.format(extra_parts="escape cgroup-request") + ESCAPE + LIMITS, {})
CAPS = {"partition_memory_limit": "256M", "partition_pids_limit": "200", "partition_cpu_quota": "50"}


def deploy(node, title: str = "tenant", **parameters) -> tuple[str, Path]:
    partition_id = node.request(title, parameters={"evidence": "", **parameters})
    evidence = node.evidence_of(partition_id)
    node.request(title, parameters={"evidence": str(evidence), **parameters})
    done = node.instance()
    assert done.returncode == 0, done.stdout + done.stderr
    return partition_id, evidence


def read_pid(path: Path) -> int:
    return int(wait_for(lambda: path.exists() and path.read_text().strip(), what=f"{path.name}"))


def destroy(node, title: str = "tenant") -> subprocess.CompletedProcess:
    node.request(title, state="destroyed")
    stopped = node.instance()
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    return node.report()


def comm(pid: int) -> str:
    """The name of a living process ("" once dead, zombies included: pid 1 reaps when it likes)."""
    try:
        process = psutil.Process(pid)
        return "" if process.status() == psutil.STATUS_ZOMBIE else process.name()
    except psutil.NoSuchProcess:
        return ""


# -- nothing survives -------------------------------------------------------------------------
@pytest.mark.parametrize("cgroup_node", [
    (HEAD.format(extra_parts=""), {}),
    (HEAD.format(extra_parts=""), {"partition_cgroup": "v2"}),
    (HEAD.format(extra_parts=""), {"partition_cgroup": "off"}),
], indirect=True, ids=["auto", "v2", "off"])
def test_escaped_daemons_and_the_hooks_daemon_die_before_the_partition_is_freed(cgroup_node):
    node = cgroup_node
    from slapos.base.config import Config
    from slapos.grid.cgroup_mounts import choose, mounted_hierarchies

    mode = Config(node.config_path).get("slapos", "partition_cgroup", "auto")
    if mode == "v2" and not any(h.version == 2 for h in choose("v2", mounted_hierarchies())):
        pytest.skip("no cgroup2 file system mounted")
    partition_id, evidence = deploy(node)
    user = node.users[partition_id]
    daemon = read_pid(evidence / "service-daemon.pid")
    [service] = [i["pid"] for i in node.supervisor().partition_processes(partition_id)]
    assert comm(daemon) == "kworker-svc"
    assert os.getsid(daemon) != os.getsid(service) and psutil.Process(daemon).ppid() != service  # gone away
    cg = node.cgroup(partition_id)
    if mode == "off":
        assert cg is None
    else:  # born in the cgroup: the service joined it before its first instruction
        assert daemon in cg.members()
        for name in cg.procs_files:
            assert str(daemon) in Path(name).read_text().split()
        if not cg.v2:  # no CPU quota: the scheduler's view of it is left as it was
            assert not any("/cpu/" in name for name in cg.procs_files)

    done = destroy(node)
    assert done.returncode == 0, done.stdout + done.stderr
    hook_daemon = int((evidence / "hook-daemon.pid").read_text())  # the hook did run
    assert processes_of(user.pw_uid) == []
    assert comm(daemon) == "" and comm(hook_daemon) == ""
    assert node.is_free(partition_id)
    log = done.stderr + done.stdout
    killing = log.find("killed") if mode != "off" else log.find("ending")
    freed = log.find("destroyed, the master freed it")
    assert 0 <= killing < freed, log  # killed first, reported destroyed after
    if mode == "off":
        assert "no cgroup (partition_cgroup = off): ending the processes of its user" in log
    else:
        assert not any(p.exists() for p in cg.paths)  # its cgroup went with it


@pytest.mark.parametrize("cgroup_node", [
    (HEAD.format(extra_parts=""), {}),
    (HEAD.format(extra_parts=""), {"partition_cgroup": "off"}),
], indirect=True, ids=["auto", "off"])
def test_a_stopped_partition_keeps_no_escaped_daemon(cgroup_node):
    node = cgroup_node
    partition_id, evidence = deploy(node)
    user = node.users[partition_id]
    daemon = read_pid(evidence / "service-daemon.pid")
    assert comm(daemon) == "kworker-svc"
    node.request("tenant", parameters={"evidence": str(evidence)}, state="stopped")
    stopped = node.instance()
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert comm(daemon) == "" and processes_of(user.pw_uid) == []
    # started again: its service (and the daemon it spawns) come back
    (evidence / "service-daemon.pid").unlink()
    node.request("tenant", parameters={"evidence": str(evidence)}, state="started")
    started = node.instance()
    assert started.returncode == 0, started.stdout + started.stderr
    assert comm(read_pid(evidence / "service-daemon.pid")) == "kworker-svc"


@pytest.mark.parametrize("cgroup_node", [PLAIN], indirect=True)
def test_a_failed_wipe_is_not_reported_and_does_not_stop_the_others(cgroup_node, tmp_path):
    node = cgroup_node
    first, _ = deploy(node, "first")
    second, _ = deploy(node, "second")
    stuck = node.partition_path(first) / "srv"
    stuck.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tseccg", str(stuck)], check=True)
    try:
        node.request("first", state="destroyed")
        node.request("second", state="destroyed")
        assert node.instance().returncode == 0
        done = node.report()
        assert done.returncode == 1
        assert "another filesystem mounted in the partition" in done.stderr + done.stdout
        assert not node.is_free(first) and node.is_free(second)
        assert processes_of(node.users[first].pw_uid) == []  # killed all the same
    finally:
        subprocess.run(["umount", str(stuck)], check=False)
    again = node.report()
    assert again.returncode == 0, again.stdout + again.stderr
    assert node.is_free(first)


@pytest.mark.parametrize("cgroup_node", [PLAIN], indirect=True)
def test_acl_xattr_and_mode_set_by_the_tenant_do_not_survive(cgroup_node):
    if not (Path("/usr/bin/setfacl").exists() and Path("/usr/bin/setfattr").exists()):
        pytest.skip("needs setfacl and setfattr (Debian packages acl, attr: make test-deps)")
    node = cgroup_node
    partition_id, _ = deploy(node)
    path = node.partition_path(partition_id)
    user = node.users[partition_id]
    (path / "srv").mkdir(exist_ok=True)
    os.chown(path / "srv", user.pw_uid, user.pw_gid)
    for target in (path, path / "srv"):
        as_user(user, "setfacl", "-m", "u:nobody:rwx", "-d", "-m", "u:nobody:rwx", str(target))
        as_user(user, "setfattr", "-n", "user.tenant", "-v", "mine", str(target))
    as_user(user, "sh", "-c", f"echo x > {path}/srv/file && setfacl -m u:nobody:rw {path}/srv/file "
                              f"&& setfattr -n user.tenant -v mine {path}/srv/file")
    as_user(user, "chmod", "0777", str(path))
    assert "system.posix_acl_access" in os.listxattr(path) and "user.tenant" in os.listxattr(path)

    done = destroy(node)
    assert done.returncode == 0, done.stdout + done.stderr
    st = os.lstat(path)
    assert os.listxattr(path) == []
    assert stat.S_IMODE(st.st_mode) == 0o750 and (st.st_uid, st.st_gid) == (user.pw_uid, user.pw_gid)
    assert os.listdir(path) in ([], [".slapos-resource"])

    # reused by a new tenant: the directory is the node's, not the previous tenant's
    again, _ = deploy(node, "next")
    assert again == partition_id
    assert os.listxattr(path) == [] and stat.S_IMODE(os.lstat(path).st_mode) == 0o750


# -- a tenant stays in its cgroup, within its limits --------------------------------------------------
@pytest.mark.parametrize("cgroup_node", [PLAIN], indirect=True)
def test_a_tenant_cannot_move_itself_out_of_its_cgroup(cgroup_node):
    node = cgroup_node
    partition_id = node.request("tenant", parameters={"evidence": ""})
    cg = node.cgroup(partition_id)
    targets = []
    for path in cg.paths:  # its node's cgroup, and the hierarchy's root
        targets += [str(path.parent / "cgroup.procs"), str(path.parent.parent.parent.parent / "cgroup.procs")]
    partition_id, evidence = deploy(node, escape=" ".join(targets))
    report = wait_for(lambda: (evidence / "escape.txt").exists() and "pids:" in (evidence / "escape.txt").read_text()
                      and (evidence / "escape.txt").read_text(), what="the escape attempt")
    assert "escaped" not in report
    assert report.count("refused") == len(targets)
    assert f"pids:/{cg.relative}" in report or f"0::/{cg.relative}" in report  # still inside
    # and a tenant process cannot put itself in its parent cgroup by any other name
    done = as_user(node.users[partition_id], "sh", "-c", f"echo $$ > {cg.paths[0].parent}/cgroup.procs", check=False)
    assert done.returncode != 0


def run_in_partition(node, partition_id: str, code: str) -> subprocess.CompletedProcess:
    """A tenant process started by the node (as the node starts promises and hooks: in the
    partition's cgroup, as its user)."""
    from slapos.grid import process

    path = node.partition_path(partition_id)
    identity = process.identity_for(path, "a test")
    identity = node.cgroups().place(identity, partition_id, path)
    assert identity.cgroup
    return process.run([sys.executable, "-I", "-S", "-c", code], cwd=path, env={"PATH": "/usr/bin:/bin"},
                       identity=identity, timeout=60)


@pytest.mark.parametrize("cgroup_node", [(PLAIN[0], CAPS)], indirect=True)
def test_limits_asked_by_the_release_within_the_nodes_caps_are_enforced(cgroup_node):
    node = cgroup_node
    partition_id, _ = deploy(node)
    usage = node.cgroup(partition_id).usage()
    # the release asked 64M / 40 processes / 400 %; the node caps at 256M / 200 / 50 %
    assert (usage.memory_max, usage.pids_max, usage.cpu_quota) == (64 << 20, 40, 50)
    assert any("/cpu/" in name for name in node.cgroup(partition_id).procs_files)  # a quota: it joins cpu

    eat = run_in_partition(node, partition_id, "b = b'x' * (200 << 20)\nprint('survived')")
    assert eat.returncode == -9 and "survived" not in eat.output  # OOM-killed in its cgroup

    forks = run_in_partition(node, partition_id, "\n".join([
        "import os, time",
        "n = 0",
        "try:",
        "    for _ in range(200):",
        "        if os.fork() == 0:",
        "            os.close(1); time.sleep(2); os._exit(0)",
        "        n += 1",
        "except OSError as e:",
        "    print('refused after', n, e.errno)",
    ]))
    assert "refused after" in forks.output, forks.output
    assert int(forks.output.split()[2]) < 40

    status = subprocess.run([sys.executable, "-m", "slapos.cli.main", "node", "status", "--partitions",
                             "--format", "json", "--cfg", str(node.config_path)],
                            capture_output=True, text=True, timeout=60)
    document = json.loads(status.stdout)  # the shared status vocabulary (slapos/base/statusdoc.py)
    [mine] = [s for s in document["partitions"] if s["partition"] == partition_id]
    resources = mine["resources"]
    assert resources["memory_max"] == 64 << 20 and resources["pids_max"] == 40 and resources["cpu_quota"] == 50
    assert resources["pids_current"] >= 2 and resources["memory_current"] > 0  # the service and its daemon
    assert resources["cpu_usage_seconds"] > 0
    table = subprocess.run([sys.executable, "-m", "slapos.cli.main", "node", "status", "--partitions",
                            "--cfg", str(node.config_path)], capture_output=True, text=True, timeout=60).stdout
    assert "RESOURCES (USED/LIMIT)" in table and "/64.0M" in table and "/40 " in table


@pytest.mark.parametrize("cgroup_node", [(HEAD.format(extra_parts=""), CAPS)], indirect=True)
def test_a_hostile_request_file_gets_the_nodes_caps(cgroup_node):
    node = cgroup_node
    partition_id, _ = deploy(node)
    path = node.partition_path(partition_id)
    user = node.users[partition_id]
    cg = node.cgroup(partition_id)
    secret = node.evidence / "root-only"
    secret.write_text("memory_limit = 8M\n")
    os.chmod(secret, 0o600)
    for plant in (f"ln -sf {secret} {path}/.slapos-cgroup",  # a link to a file it cannot read
                  f"rm -f {path}/.slapos-cgroup && mkfifo {path}/.slapos-cgroup",  # a FIFO: must not block
                  f"head -c 10000 /dev/zero | tr '\\0' '#' > {path}/.slapos-cgroup",  # oversized
                  f"printf 'memory_limit = lots\\n' > {path}/.slapos-cgroup"):  # nonsense
        as_user(user, "sh", "-c", f"rm -f {path}/.slapos-cgroup; {plant}")
        done = node.instance("--force")
        assert done.returncode == 0, done.stdout + done.stderr
        usage = cg.usage()
        assert (usage.memory_max, usage.pids_max, usage.cpu_quota) == (256 << 20, 200, 50), plant
