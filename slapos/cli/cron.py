"""Installing the node's periodic runs: `/etc/cron.d/slapos-node` as root, the user's own crontab
(through `crontab -`) otherwise.

Our lines live between two marker lines; installing again replaces that block only, so the
operation is idempotent and never touches the other lines of the file or crontab.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from slapos.base.errors import SlapOSError

SYSTEM_CRON_FILE = Path("/etc/cron.d/slapos-node")
BEGIN = "# BEGIN slapos node (written by slapos configure local --install-cron; edit outside this block)"
END = "# END slapos node"


def merge(existing: str, lines: list[str]) -> str:
    """`existing` with our block replaced by `lines` (appended when absent)."""
    kept: list[str] = []
    inside = False
    position = None
    for line in existing.splitlines():
        if line.strip() == BEGIN:
            inside = True
            position = len(kept)
            continue
        if inside:
            if line.strip() == END:
                inside = False
            continue
        kept.append(line)
    block = [BEGIN, *lines, END]
    if position is None:
        if kept and kept[-1].strip():
            kept.append("")
        position = len(kept)
    return "\n".join(kept[:position] + block + kept[position:]) + "\n"


def system_lines(lines: list[str], user: str = "root") -> list[str]:
    """/etc/cron.d lines carry the user between the schedule and the command."""
    result = []
    for line in lines:
        if "=" in line.split()[0] or line.startswith("#"):
            result.append(line)  # an environment assignment or a comment
            continue
        fields = line.split()
        count = 1 if fields[0].startswith("@") else 5
        result.append(" ".join(fields[:count]) + f" {user} " + " ".join(fields[count:]))
    return result


def install_system(lines: list[str], path: Path = SYSTEM_CRON_FILE) -> Path:
    """Write (or update) the cron.d file: root-owned, 0644 (cron ignores group/other-writable files)."""
    try:
        existing = path.read_text(encoding="utf-8") if path.is_file() and not path.is_symlink() else ""
    except OSError as e:
        raise SlapOSError(f"cannot read {path}: {e.strerror}") from None
    if path.is_symlink():
        raise SlapOSError(f"{path} is a symbolic link: remove it, then install again")
    text = merge(existing, system_lines(lines))
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        raise SlapOSError(f"cannot write {path}: {e.strerror}") from None
    return path


def install_user(lines: list[str], crontab: str = "crontab") -> str:
    """Merge our block into the caller's crontab (`crontab -l`, then `crontab -`)."""
    try:
        current = subprocess.run([crontab, "-l"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise SlapOSError("the crontab command is not installed: install cron, or add the lines by hand") from None
    existing = current.stdout if current.returncode == 0 else ""  # 1: "no crontab for <user>"
    text = merge(existing, lines)
    done = subprocess.run([crontab, "-"], input=text, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise SlapOSError(f"crontab refused the new table: {done.stderr.strip() or done.returncode}")
    return "your crontab"


def install(lines: list[str], system_file: Path | None = None) -> str:
    """As root: the cron.d file; otherwise the user's crontab. Returns where it went."""
    if os.geteuid() == 0:
        return str(install_system(lines, system_file or SYSTEM_CRON_FILE))
    return install_user(lines)
