"""slapnode:password — a random password, generated once and kept in a 0600 file.

    [admin-password]
    recipe = slapnode:password
    # optional: storage-path (default ${buildout:directory}/.<section>.password), length (default 32)

Other sections use `${admin-password:passwd}` (and `${admin-password:storage-path}` to give a
program the file rather than the value). The first run generates it with `secrets` from letters
and digits and writes it with mode 0600; later runs read the same file, so the value is stable
across runs and across changes of the profile. Removing the file makes a new password.

Note: buildout records the options of the parts it installs in `.installed.cfg`, so a part that
embeds `${...:passwd}` stores the value there too (inside the partition, which is 0750 and
private to the partition user). Prefer passing `storage-path` when the program can read a file.
"""
from __future__ import annotations

import os
import secrets
import string
from pathlib import Path

from .common import Recipe as _Base

ALPHABET = string.ascii_letters + string.digits


def read_or_create(path: Path, length: int) -> str:
    """The password stored at `path`, created (0600, exclusively) when missing or empty."""
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        value = ""
    if value:
        if (path.stat().st_mode & 0o777) != 0o600:
            os.chmod(path, 0o600)
        return value
    value = "".join(secrets.choice(ALPHABET) for _ in range(length))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)  # left by a run that was killed
    # O_EXCL + mode 0600 at creation: the secret is never readable by others, not even briefly
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(value + "\n")
        os.chmod(tmp, 0o600)  # in case the umask removed bits we asked for
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return value


class Recipe(_Base):
    def __init__(self, buildout, name, options):
        super().__init__(buildout, name, options)
        length = self.number("length", 32)
        if length != int(length) or not 8 <= length <= 1024:
            raise self.error(f"option 'length' = {options['length']!r}: give a whole number from 8 to 1024")
        storage = self.path("storage-path", f".{name}.password")
        options["storage-path"] = str(storage)
        # done now, not in install(): other sections read ${<name>:passwd} while buildout
        # is still computing options
        options["passwd"] = read_or_create(storage, int(length))

    def install(self):
        # the file is deliberately not returned: buildout must never delete it on uninstall
        return []
