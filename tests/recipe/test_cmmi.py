"""slapnode:cmmi: checksummed tarball, configure / make / make install, refusals."""
from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile

from tests.conftest import REPO

from .conftest import run_buildout, write_profile

HELLO_C = REPO / "software-release" / "hello-c" / "hello-c-1.0.tar.gz"


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_tarball(path, files: dict[str, str], top: str = "pkg-1.0", extra: list[tarfile.TarInfo] = ()) -> None:
    """A small source tarball; `configure` and files ending in .sh are executable."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size, info.mode = len(data), 0o755 if name in ("configure",) else 0o644
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)


TINY = {
    "configure": "#!/bin/sh\nfor a; do case $a in --prefix=*) echo \"PREFIX=${a#*=}\" > config.mk;; "
                 "--greeting=*) echo \"GREETING=${a#*=}\" >> config.mk;; esac; done\n",
    "Makefile": "include config.mk\nall:\n\techo \"$(GREETING) $(WHO)\" > greeting.txt\n"
                "install:\n\tmkdir -p $(PREFIX)/share\n\tcp greeting.txt $(PREFIX)/share/\n"
                "fail:\n\texit 3\n",
}


def cmmi_profile(url, checksum_line: str, extra: str = "") -> str:
    return f"""
        [buildout]
        parts = pkg
        [pkg]
        recipe = slapnode:cmmi
        url = {url}
        {checksum_line}
        {extra}
        """


def test_builds_shipped_hello_c_once(tmp_path):
    """The compiled example's tarball, made tiny: configure, make, make install, then no rebuild."""
    write_profile(tmp_path, cmmi_profile(
        HELLO_C, f"sha256 = {sha256(HELLO_C)}", "configure-options = --units=2 --statements=20"))
    result = run_buildout(tmp_path)
    assert "configure: ./configure --prefix=" in result.stdout and "make install" in result.stdout
    program = tmp_path / "parts" / "pkg" / "bin" / "hello-c"
    selftest = subprocess.run([str(program), "--selftest"], capture_output=True, text=True, check=True)
    assert selftest.stdout.startswith("hello-c 1.0: 2 units, checksum ")
    assert not list((tmp_path / "parts").glob("pkg__build__*")), "the build directory is removed"

    built = program.stat().st_mtime_ns
    result = run_buildout(tmp_path)  # unchanged options: nothing is rebuilt
    assert "Updating pkg." in result.stdout and "make" not in result.stdout
    assert program.stat().st_mtime_ns == built


def test_md5_options_environment(tmp_path):
    tarball = tmp_path / "pkg-1.0.tar.gz"
    make_tarball(tarball, TINY)
    md5 = hashlib.md5(tarball.read_bytes()).hexdigest()
    write_profile(tmp_path / "b", cmmi_profile(tarball, f"md5sum = {md5}", """
        configure-options = --greeting=Bonjour
        environment = WHO=le monde
        location = ${buildout:directory}/opt/pkg
        """))
    run_buildout(tmp_path / "b")
    assert (tmp_path / "b" / "opt" / "pkg" / "share" / "greeting.txt").read_text() == "Bonjour le monde\n"


def test_checksum_mismatch_refused_before_extracting(tmp_path):
    tarball = tmp_path / "pkg-1.0.tar.gz"
    make_tarball(tarball, TINY)
    wrong = "0" * 64
    write_profile(tmp_path / "b", cmmi_profile(tarball, f"sha256 = {wrong}"))
    result = run_buildout(tmp_path / "b", check=False)
    assert result.returncode != 0
    assert (f"[pkg] checksum mismatch for {tarball}: its sha256 is {sha256(tarball)}, "
            f"the profile expects {wrong}") in result.stdout
    assert "configure: " not in result.stdout  # no build step was started
    assert not (tmp_path / "b" / "parts" / "pkg").exists()
    assert not list((tmp_path / "b" / "parts").glob("pkg__build__*"))


def test_missing_checksum_refused(tmp_path):
    tarball = tmp_path / "pkg-1.0.tar.gz"
    make_tarball(tarball, TINY)
    write_profile(tmp_path / "b", cmmi_profile(tarball, ""))
    result = run_buildout(tmp_path / "b", check=False)
    assert result.returncode != 0
    assert "[pkg] give the tarball's sha256 (or md5sum): an unverified download is never built" in result.stdout


def test_member_escaping_the_build_directory_refused(tmp_path):
    tarball = tmp_path / "evil.tar.gz"
    escape = tarfile.TarInfo("pkg-1.0/../../escaped")
    escape.size = 1
    make_tarball(tarball, TINY, extra=[escape])
    write_profile(tmp_path / "b", cmmi_profile(tarball, f"sha256 = {sha256(tarball)}"))
    result = run_buildout(tmp_path / "b", check=False)
    assert result.returncode != 0
    assert "refusing member 'pkg-1.0/../../escaped' of the archive: its path leaves the build directory" in result.stdout
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "b" / "escaped").exists()

    link = tarfile.TarInfo("pkg-1.0/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc"
    make_tarball(tarball, TINY, extra=[link])
    write_profile(tmp_path / "b", cmmi_profile(tarball, f"sha256 = {sha256(tarball)}"))
    result = run_buildout(tmp_path / "b", check=False)
    assert result.returncode != 0 and "it links outside the build directory (/etc)" in result.stdout


def test_failing_step_names_it_and_leaves_nothing(tmp_path):
    tarball = tmp_path / "pkg-1.0.tar.gz"
    make_tarball(tarball, TINY)
    write_profile(tmp_path / "b", cmmi_profile(tarball, f"sha256 = {sha256(tarball)}", "make-targets = fail"))
    result = run_buildout(tmp_path / "b", check=False)
    assert result.returncode != 0
    assert "[pkg] make install failed (exit code 2) in pkg-1.0: the output above says why" in result.stdout
    assert not (tmp_path / "b" / "parts" / "pkg").exists()
