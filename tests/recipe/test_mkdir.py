"""slapnode:mkdir: directories with parents, exact mode, kept on uninstall, recreated."""
from __future__ import annotations

import shutil
import stat

from .conftest import run_buildout, write_profile


def test_creates_directories_with_mode_and_never_removes_them(tmp_path):
    write_profile(tmp_path, """
        [buildout]
        parts = directory
        [directory]
        recipe = slapnode:mkdir
        etc = ${buildout:directory}/etc
        service = ${:etc}/service
        data = srv/data/deep
        mode = 0700
        """)
    run_buildout(tmp_path)
    for relative in ("etc", "etc/service", "srv/data/deep"):
        path = tmp_path / relative
        assert path.is_dir() and stat.S_IMODE(path.stat().st_mode) == 0o700, relative
    (tmp_path / "srv" / "data" / "deep" / "keep").write_text("data")

    shutil.rmtree(tmp_path / "etc")  # deleted by hand: the next run brings it back
    run_buildout(tmp_path)
    assert (tmp_path / "etc" / "service").is_dir()

    # the part disappears from the profile: buildout uninstalls it, the data stays
    write_profile(tmp_path, "[buildout]\nparts =\n")
    run_buildout(tmp_path)
    assert (tmp_path / "srv" / "data" / "deep" / "keep").read_text() == "data"


def test_default_mode_and_file_in_the_way(tmp_path):
    (tmp_path / "afile").write_text("x")
    write_profile(tmp_path, """
        [buildout]
        parts = d
        [d]
        recipe = slapnode:mkdir
        fine = fine
        clash = afile
        """)
    result = run_buildout(tmp_path, check=False)
    assert result.returncode != 0
    assert f"[d] clash = {tmp_path}/afile: exists and is not a directory" in result.stdout

    write_profile(tmp_path, """
        [buildout]
        parts = d
        [d]
        recipe = slapnode:mkdir
        fine = fine
        """)
    run_buildout(tmp_path)
    assert stat.S_IMODE((tmp_path / "fine").stat().st_mode) == 0o750
