"""The launcher supervisord runs for each partition program (standard library only: it is run as
`python -I -S launch.py`, without site-packages, so it starts in a few milliseconds):

    launch.py --join /sys/fs/cgroup/pids/.../cgroup.procs [--join ...] [--uid N --gid G] -- COMMAND...

1. as root, write its own pid into each `cgroup.procs`: from now on it and everything it forks
   (daemons that double-fork and setsid away from supervisord included) are in the partition's
   cgroup; there is no window in which a tenant process runs outside it;
2. drop to the partition user (its groups, gid, uid) and check the drop held;
3. exec COMMAND: same pid, so supervisord's signals and process-group kills still reach it.

Any failure exits 127 with one line on stderr, before anything of the tenant runs: a program that
cannot be placed in its cgroup does not run at all (supervisord reports it FATAL).
"""
from __future__ import annotations

import os
import pwd
import sys

TYPE_CHECKING = False  # not `from typing import ...`: importing typing would cost ~20 ms per program start
if TYPE_CHECKING:
    from typing import NoReturn


def fail(message: str) -> NoReturn:
    sys.stderr.write(f"slapos launch: {message}\n")
    sys.stderr.flush()
    os._exit(127)


def main(argv: list[str]) -> None:
    joins: list[str] = []
    uid: int | None = None
    gid: int | None = None
    try:
        split = argv.index("--")
    except ValueError:
        fail("usage: launch.py --join FILE ... [--uid N] -- COMMAND ARGS...")
    options, command = argv[:split], argv[split + 1:]
    if not command:
        fail("no command given")
    it = iter(options)
    for option in it:
        value = next(it, None)
        if value is None:
            fail(f"{option} needs a value")
        if option == "--join":
            joins.append(value)
        elif option == "--uid" and value.isdigit():
            uid = int(value)
        elif option == "--gid" and value.isdigit():
            gid = int(value)
        else:
            fail(f"unknown option {option} {value}")
    pid = str(os.getpid()).encode()
    for name in joins:
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)
        except OSError as e:
            fail(f"cannot join the partition's cgroup {os.path.dirname(name)}: {e.strerror}; "
                 "'slapos node instance' creates it")
    if uid is not None:
        if gid is None:
            fail("--uid needs --gid")
        try:
            try:
                os.initgroups(pwd.getpwuid(uid).pw_name, gid)
            except KeyError:  # a uid without a name: its group only
                os.setgroups([gid])
        except OSError as e:
            fail(f"cannot set the groups of uid {uid}: {e.strerror}")
        try:
            os.setgid(gid)
            os.setuid(uid)
        except OSError as e:
            fail(f"cannot switch to uid {uid}: {e.strerror}")
        if os.getuid() == 0 or os.geteuid() == 0:
            fail("privilege drop failed")
    try:
        os.execv(command[0], command)
    except OSError as e:
        fail(f"cannot run {command[0]}: {e.strerror}")


if __name__ == "__main__":
    main(sys.argv[1:])
