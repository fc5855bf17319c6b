"""`slapos node prune` and `node software --garbage-collect` against a real proxy: what a
partition, a supplied release or a kept shared part names stays; the rest goes; --dry-run
removes nothing; a planted link is never followed."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

USED = "http://sr.example/used.cfg"  # supplied to the computer
ASSIGNED = "http://sr.example/assigned.cfg"  # not supplied, but a partition runs it
OLD = "http://sr.example/old.cfg"  # nothing uses it any more


def md5(url: str) -> str:
    return hashlib.md5(url.encode()).hexdigest()


def slapos(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "slapos.cli.main", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def put(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def pruned_node(make_node, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    node = make_node(partitions=2, extra_config={"slapos": {"shared_part_list": str(shared)}})
    slap = node.proxy.connect()
    slap.registerSupply().supply(USED, node.computer_id)
    slap.registerSupply().supply(ASSIGNED, node.computer_id)
    partition = slap.registerOpenOrder().request(ASSIGNED, "runner").getId()
    # no longer supplied, but its partition still runs it
    slap.registerSupply().supply(ASSIGNED, node.computer_id, state="destroyed")
    slap.close()
    soft = node.software_root
    # shared parts: gcc (used by USED), zlib (named by gcc's signature), oldlib (only OLD),
    # olddep (only oldlib's signature), tenantlib (only a partition's instance profile)
    gcc = put(shared / "gcc" / ("a" * 32) / ".slapos.recipe.cmmi.signature", f"uses {shared}/zlib/{'b' * 32}")
    put(shared / "zlib" / ("b" * 32) / "lib" / "libz.so", "z" * 5000)
    put(shared / "oldlib" / ("c" * 32) / ".slapos.recipe.cmmi.signature", f"{shared}/olddep/{'d' * 32}")
    put(shared / "olddep" / ("d" * 32) / "data", "d" * 20000)
    put(shared / "tenantlib" / ("e" * 32) / "bin" / "tool")
    put(soft / md5(USED) / ".installed.cfg", f"[gcc]\nlocation = {gcc.parent}\n")
    put(soft / md5(ASSIGNED) / "buildout.cfg", "[buildout]\n")
    for url in (USED, ASSIGNED):  # built already: `node software` has nothing to do
        put(soft / md5(url) / ".completed", "built")
    put(soft / md5(OLD) / ".installed.cfg", f"location = {shared}/oldlib/{'c' * 32}\n")
    put(soft / md5(OLD) / "parts" / "big", "o" * 50000)
    put(node.partition_path(partition) / ".installed.cfg", f"[tool]\npath = {shared}/tenantlib/{'e' * 32}\n")
    return node, shared


def test_dry_run_then_prune(pruned_node, tmp_path):
    node, shared = pruned_node
    soft = node.software_root
    # a planted link inside the unused release points at a victim: removal must not follow it
    victim = tmp_path / "victim"
    put(victim / "precious", "keep me")
    (soft / md5(OLD) / "parts" / "evil").symlink_to(victim)

    dry = slapos("node", "prune", "--cfg", str(node.config_path), "--dry-run", "--format", "json")
    assert dry.returncode == 0, dry.stderr
    shown = json.loads(dry.stdout)
    paths = {Path(entry["path"]) for entry in shown["would_remove"]}
    assert paths == {soft / md5(OLD), shared / "oldlib" / ("c" * 32), shared / "olddep" / ("d" * 32)}
    assert shown["bytes"] >= 70000
    for path in paths:
        assert path.exists()  # the dry run removed nothing

    done = slapos("node", "prune", "--cfg", str(node.config_path))
    assert done.returncode == 0, done.stderr
    assert "removed 3 directories" in done.stdout and "KiB freed" in done.stdout
    for path in paths:
        assert not path.exists()
    for kept in (soft / md5(USED), soft / md5(ASSIGNED), shared / "gcc" / ("a" * 32),
                 shared / "zlib" / ("b" * 32), shared / "tenantlib" / ("e" * 32)):
        assert kept.is_dir(), kept
    assert (victim / "precious").read_text() == "keep me"
    again = slapos("node", "prune", "--cfg", str(node.config_path))
    assert again.returncode == 0 and "nothing to prune" in again.stdout


def test_a_running_process_keeps_its_release(pruned_node):
    node, _shared = pruned_node
    old = node.software_root / md5(OLD)
    sleeper = subprocess.Popen(["sleep", "60"], cwd=old)
    try:
        dry = slapos("node", "prune", "--cfg", str(node.config_path), "--dry-run", "--format", "json")
        shown = json.loads(dry.stdout)
        assert str(old) not in {entry["path"] for entry in shown["would_remove"]}
        assert any(entry["path"] == str(old) and "running process" in entry["because"] for entry in shown["kept"])
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_tenant_link_to_a_root_file_is_not_read(pruned_node, tmp_path):
    """A partition's .installed.cfg that is a link to a file naming every release: not followed,
    so it keeps nothing (and root never opened the target)."""
    node, _shared = pruned_node
    secret = tmp_path / "root-only"
    secret.write_text(md5(OLD))
    os.chmod(secret, 0o600)
    link = node.partition_path("slappart1") / ".installed.cfg"
    link.symlink_to(secret)
    dry = slapos("node", "prune", "--cfg", str(node.config_path), "--dry-run", "--format", "json")
    assert dry.returncode == 0, dry.stderr
    assert str(node.software_root / md5(OLD)) in {e["path"] for e in json.loads(dry.stdout)["would_remove"]}


def test_prune_waits_for_no_build(pruned_node):
    node, _shared = pruned_node
    pidfile = node.root / "var" / "slapgrid-sr.pid"
    hold = ("import fcntl, os, sys, time\nfd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(pidfile)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"  # a software run is building
        done = slapos("node", "prune", "--cfg", str(node.config_path))
        assert done.returncode == 10, done.stderr
        assert (node.software_root / md5(OLD)).is_dir()
    finally:
        holder.kill()
        holder.wait()


def test_software_garbage_collect(pruned_node):
    node, shared = pruned_node
    done = slapos("node", "software", "--cfg", str(node.config_path), "--now", "--garbage-collect")
    assert done.returncode == 0, done.stderr
    assert "removed 3 directories" in done.stdout, done.stderr
    assert not (node.software_root / md5(OLD)).exists()
    assert (node.software_root / md5(USED)).is_dir()


def test_an_unreachable_master_prunes_nothing(pruned_node):
    node, _shared = pruned_node
    node.proxy.stop()
    done = slapos("node", "prune", "--cfg", str(node.config_path))
    assert done.returncode == 3 and "nothing pruned" in done.stderr
    assert (node.software_root / md5(OLD)).is_dir()


def test_links_planted_by_a_build_are_never_followed(pruned_node, tmp_path):
    """A build (which owns software_root and the shared root) plants links where releases and
    shared parts live: they are no candidates, and a parent swapped for a link stops removal."""
    from slapos.grid import prune

    node, shared = pruned_node
    victim = tmp_path / "victim-tree"
    put(victim / "important", "keep")
    (node.software_root / ("f" * 32)).symlink_to(victim)
    (shared / "planted").symlink_to(victim)
    dry = slapos("node", "prune", "--cfg", str(node.config_path), "--dry-run", "--format", "json")
    paths = {e["path"] for e in json.loads(dry.stdout)["would_remove"]}
    assert paths == {str(node.software_root / md5(OLD)), str(shared / "oldlib" / ("c" * 32)),
                     str(shared / "olddep" / ("d" * 32))}
    # the parent of a candidate replaced by a link between plan and removal
    put(victim / "h" / "x")
    candidate = prune.Candidate("shared part", shared / "planted" / "h", shared / "planted", "h", "h")
    with pytest.raises(prune.PruneError, match="not a real directory"):
        prune.remove(candidate)
    assert (victim / "h" / "x").exists() and (victim / "important").read_text() == "keep"
