"""tools/stage.py, the Makefile's staging copy: what it copies, updates, removes and refuses."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def stage(monkeypatch):
    spec = importlib.util.spec_from_file_location("slapnode_stage", REPO / "tools" / "stage.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def checkout(tmp_path):
    source = tmp_path / "my checkout"
    (source / "pkg").mkdir(parents=True)
    (source / "pkg" / "a.py").write_text("a = 1\n")
    (source / "run.sh").write_text("#!/bin/sh\n")
    (source / "run.sh").chmod(0o700)
    (source / ".gitignore").write_text("ignored.txt\n.venv/\n")
    (source / "ignored.txt").write_text("local junk\n")
    (source / ".venv").mkdir()
    (source / ".venv" / "big").write_text("not copied\n")
    subprocess.run(["git", "init", "-q", str(source)], check=True)
    subprocess.run(["git", "-C", str(source), "add", "pkg", "run.sh", ".gitignore"], check=True)
    return source


def test_sync_copies_what_git_lists_readable_by_all(stage, checkout, tmp_path):
    base = tmp_path / "stage-base"
    target = base / "abc"
    assert stage.sync(target, checkout) == 3
    assert (target / "pkg" / "a.py").read_text() == "a = 1\n"
    assert (target / "run.sh").stat().st_mode & 0o777 == 0o755  # executable by the node's users
    assert (target / "pkg" / "a.py").stat().st_mode & 0o777 == 0o644
    assert not (target / "ignored.txt").exists() and not (target / ".venv").exists()
    assert (target / ".stage-origin").read_text().strip() == str(checkout)
    assert base.stat().st_mode & 0o777 == 0o755 and target.stat().st_mode & 0o777 == 0o755


def test_sync_updates_and_removes_but_keeps_the_copy_s_own_files(stage, checkout, tmp_path):
    target = tmp_path / "stage-base" / "abc"
    stage.sync(target, checkout)
    (target / ".venv").mkdir()
    (target / "demo" / "run").mkdir(parents=True)
    assert stage.sync(target, checkout) == 0  # nothing changed: nothing copied
    (checkout / "pkg" / "a.py").write_text("a = 2\n")
    os.utime(checkout / "pkg" / "a.py", (1, 1))
    (checkout / "run.sh").unlink()
    assert stage.sync(target, checkout) == 2
    assert (target / "pkg" / "a.py").read_text() == "a = 2\n"
    assert not (target / "run.sh").exists()
    assert (target / ".venv").is_dir() and (target / "demo" / "run").is_dir()


def test_a_base_others_can_write_is_refused(stage, checkout, tmp_path):
    base = tmp_path / "stage-base"
    base.mkdir(mode=0o777)
    base.chmod(0o777)
    with pytest.raises(stage.StageError, match="writable only by its owner"):
        stage.sync(base / "abc", checkout)
    base.chmod(0o755)
    link = tmp_path / "link-base"
    link.symlink_to(base)
    with pytest.raises(stage.StageError):
        stage.sync(link / "abc", checkout)


def test_clean_removes_the_copy_and_an_empty_base(stage, checkout, tmp_path, capsys):
    target = tmp_path / "stage-base" / "abc"
    stage.sync(target, checkout)
    stage.clean(target)
    assert not target.exists() and not target.parent.exists()
    assert f"removed the staging copy {target}" in capsys.readouterr().out


def test_the_stage_directory_depends_on_the_checkout_path(stage):
    one, two = stage.stage_dir(Path("/a/b")), stage.stage_dir(Path("/a/c"))
    assert one != two and one.parent == two.parent
    assert " " not in str(stage.stage_dir(Path("/with space/x")))
    expected = Path("/var/lib/slapnode-stage") if os.geteuid() == 0 else Path(f"/tmp/slapnode-stage-{os.geteuid()}")
    assert one.parent == expected
