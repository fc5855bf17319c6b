"""`slapos node run` reads one thing of its own in the builds' trees: the `.completed` stamp of
each release (a software pass that built one starts an instance pass). The software user plays
dirty there; root only lstat()s: no link followed, no FIFO opened, the victim untouched."""
from __future__ import annotations

import os
import threading
from pathlib import Path

from slapos.grid.daemon_support import completed_stamps
from tests.conftest import make_traversable

from .conftest import as_user, give_tree


def testcompleted_stamps_follow_nothing_and_never_block(tmp_path, tenant_users, victim):
    builder = tenant_users[1]
    software_root = tmp_path / "soft"
    for name in ("linked", "fifo", "honest"):
        (software_root / name).mkdir(parents=True)
    make_traversable(tmp_path)
    os.chmod(tmp_path, 0o755)
    give_tree(software_root, builder)
    as_user(builder, f"""
        import os
        root = {str(software_root)!r}
        os.symlink({str(victim.path)!r}, os.path.join(root, "linked", ".completed"))
        os.mkfifo(os.path.join(root, "fifo", ".completed"))
        open(os.path.join(root, "honest", ".completed"), "w").close()
        os.symlink({str(victim.directory)!r}, os.path.join(root, "elsewhere"))  # a release dir that is a link
    """)
    result: dict = {}
    reader = threading.Thread(target=lambda: result.update(completed_stamps(software_root)), daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "reading the stamps blocked (a FIFO was opened)"
    link = software_root / "linked" / ".completed"
    assert result["linked"] == os.lstat(link).st_mtime_ns  # the link's own date, not the victim's
    assert set(result) == {"linked", "fifo", "honest"}  # the linked directory is not a release
    victim.check()
    assert Path(victim.directory).stat().st_uid == 0
