"""`slapos node software` against a hostile build: the software user owns software_root and every
release directory, so anything it planted there before (or while) root prepares a build must not
be written through, chowned, read or followed."""
from __future__ import annotations

import os
import stat

import pytest

from slapos.grid.process import Identity
from slapos.grid.software import SoftwareAgent, software_key
from tests.conftest import make_traversable
from tests.software.conftest import HELLO, copy_release, supply

from .conftest import SECRET, give_tree, plant, slapos

pytestmark = pytest.mark.root


def software_node(make_node, tmp_path, tenant_users):
    builder = tenant_users[1]
    node = make_node(partitions=1)
    give_tree(node.software_root, builder)
    url = copy_release(HELLO, tmp_path / "release")
    supply(node, url)
    make_traversable(node.root)
    return node, url, node.software_root / software_key(url)


def run_software(node) -> str:
    make_traversable(node.root)
    done = slapos("node", "software", "--cfg", str(node.config_path), "--now")
    return f"exit {done.returncode}\n{done.stdout}{done.stderr}"


@pytest.mark.parametrize("name,kind", [
    (".slapgrid/log/software.log", "symlink"), (".slapgrid/log/software.log", "fifo"),
    (".slapgrid/log/software.log", "hardlink"), ("bin/buildout", "symlink"), ("buildout.cfg", "fifo"),
    ("extends-cache", "symlink"),
])
def test_release_files(make_node, tmp_path, tenant_users, victim, name, kind):
    """What root writes into a release before the build: the build log, the `bin/buildout`
    runner script, the profile, the extends cache (chowned to the builder)."""
    node, _url, release = software_node(make_node, tmp_path, tenant_users)
    builder = tenant_users[1]
    plant(builder, release / ".keep", "directory", victim)  # the release directory, made by the builder
    if name == "extends-cache":
        plant(builder, release / name, "symlink", victim)
        os.unlink(release / name)
        os.symlink(victim.directory, release / name)
        os.lchown(release / name, builder.uid, builder.gid)
    else:
        plant(builder, release / name, kind, victim)
    output = run_software(node)
    victim.check()
    st = os.stat(victim.directory)
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700, "root gave the victim's directory away"
    if name == "extends-cache":
        assert output.startswith("exit 1") and "refusing" in output, output
        return
    if name == "buildout.cfg":  # the builder's own profile: buildout (as the builder) fails on it
        return
    assert output.startswith("exit 0"), output
    written = os.lstat(release / name)
    assert stat.S_ISREG(written.st_mode) and written.st_nlink == 1 and written.st_uid in (0, builder.uid)


def test_release_directory_is_a_link(make_node, tmp_path, tenant_users, victim):
    """`<software_root>/<md5>` itself a link to a directory of root: no build there, nothing of
    it chowned, no process under it killed."""
    node, _url, release = software_node(make_node, tmp_path, tenant_users)
    os.symlink(victim.directory, release)
    os.lchown(release, tenant_users[1].uid, tenant_users[1].gid)
    output = run_software(node)
    assert output.startswith("exit 1") and "refusing" in output, output
    victim.check()
    st = os.stat(victim.directory)
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700


def test_builder_netrc_link_is_not_copied(tmp_path, tenant_users, victim):
    """The builder's `~/.netrc` is copied into the release for buildout's downloads: a link
    there to root's file must not make root copy that file into the release."""
    builder = tenant_users[1]
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, builder.uid, builder.gid)
    make_traversable(home)
    plant(builder, home / ".netrc", "symlink", victim)
    owner = Identity(builder.uid, builder.gid, builder.name, str(home))
    assert SoftwareAgent._home_netrc(owner) is None
    plant(builder, home / ".netrc", "hardlink", victim)  # root's file under the builder's name
    assert SoftwareAgent._home_netrc(owner) is None
    os.unlink(home / ".netrc")
    (home / ".netrc").write_text("machine example.org login me password mine\n")
    os.chown(home / ".netrc", builder.uid, builder.gid)
    assert SoftwareAgent._home_netrc(owner) == b"machine example.org login me password mine\n"
    victim.check()


def test_publish_reads_the_release_as_the_builder(tmp_path, tenant_users, victim):
    """Publishing to the binary cache archives the release tree: as the builder, never as root,
    so a file of root's in that tree (here hard-linked, as a racing builder could also do with
    a link swapped in during the walk) is not readable and never uploaded."""
    import gzip

    from tests.software.conftest import start_cache_node

    builder = tenant_users[1]
    root = tmp_path / "cache"
    root.mkdir()
    make_traversable(root)
    os.chmod(root, 0o755)
    proxy, node, content, _metadata = start_cache_node(root)
    try:
        give_tree(node.software_root, builder)
        url = copy_release(HELLO, tmp_path / "release")
        supply(node, url)
        release = node.software_root / software_key(url)
        plant(builder, release / "stolen", "hardlink", victim)
        output = run_software(node)
        assert output.startswith("exit 0"), output
        assert "upload to the binary cache failed" in output and "Permission denied" in output, output
        for stored in content.iterdir():
            data = stored.read_bytes()
            assert SECRET.strip() not in data and SECRET.strip() not in gzip.decompress(data)
        victim.check()
    finally:
        proxy.stop()
