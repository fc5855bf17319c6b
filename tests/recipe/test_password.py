"""slapnode:password: generated once, 0600, stable across runs and profile changes."""
from __future__ import annotations

import re
import stat

from .conftest import run_buildout, write_profile

PROFILE = """
    [buildout]
    parts = show
    [secret]
    recipe = slapnode:password
    {extra}
    [show]
    recipe = slapnode:template
    inline = {{{{ password }}}} {{{{ path }}}}
    output = shown.txt
    context =
        key password secret:passwd
        key path secret:storage-path
    """


def test_password_is_stable_private_and_regenerated_only_when_removed(tmp_path):
    write_profile(tmp_path, PROFILE.format(extra=""))
    run_buildout(tmp_path)
    password, path = (tmp_path / "shown.txt").read_text().split()
    storage = tmp_path / ".secret.password"
    assert path == str(storage)
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password)
    assert storage.read_text().strip() == password
    assert stat.S_IMODE(storage.stat().st_mode) == 0o600

    run_buildout(tmp_path)  # same profile
    assert (tmp_path / "shown.txt").read_text().split()[0] == password
    write_profile(tmp_path, PROFILE.format(extra="length = 12"))  # changed profile: still the same
    run_buildout(tmp_path)
    assert (tmp_path / "shown.txt").read_text().split()[0] == password
    assert stat.S_IMODE(storage.stat().st_mode) == 0o600

    storage.unlink()  # removing the file is how to get a new one
    run_buildout(tmp_path)
    new = (tmp_path / "shown.txt").read_text().split()[0]
    assert re.fullmatch(r"[A-Za-z0-9]{12}", new) and new != password


def test_custom_storage_path_made_private(tmp_path):
    storage = tmp_path / "secrets" / "admin"
    storage.parent.mkdir()
    storage.write_text("kept-from-before\n")
    storage.chmod(0o644)
    write_profile(tmp_path / "b", PROFILE.format(extra=f"storage-path = {storage}"))
    run_buildout(tmp_path / "b")
    assert (tmp_path / "b" / "shown.txt").read_text().split()[0] == "kept-from-before"
    assert stat.S_IMODE(storage.stat().st_mode) == 0o600


def test_bad_length_refused(tmp_path):
    write_profile(tmp_path, PROFILE.format(extra="length = 4"))
    result = run_buildout(tmp_path, check=False)
    assert result.returncode != 0
    assert "[secret] option 'length' = '4': give a whole number from 8 to 1024" in result.stdout
    assert not (tmp_path / ".secret.password").exists()
