"""Run zc.buildout in a directory, as that directory's owner: used for software releases and for
partitions alike.

Buildout is upstream zc.buildout from the node's own Python environment, run as a child process
(`python -I -u -m slapos.grid.buildout_extension`): no bootstrap, no second copy of buildout, and
`${:_profile_base_location_}` works (see buildout_extension). `-I` keeps the working directory
and the caller's PYTHON* variables out of the child's `sys.path`; `-u` makes progress visible
line by line. `-U` ignores the owner's `~/.buildout/default.cfg`.

The instance agent calls:

    result = run_buildout(partition_path, settings, identity, timeout=settings.partition_timeout,
                          log_file=partition_path / ".slapgrid/log/instance.log", on_line=progress)
    if not result.ok: report result.tail()

It raises `ProcessTimeout` when the timeout expires (the process tree is killed first) and
`SlapOSError` when the interpreter cannot be started.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from slapos.base import tenantfs
from slapos.base.errors import SlapOSError

from . import process
from .process import Identity, Result

# The module the child runs: upstream buildout's main with our parse hook installed.
RUNNER_MODULE = "slapos.grid.buildout_extension"


def buildout_argv(
    directory: str | Path,
    *,
    config: str = "buildout.cfg",
    newest: bool = False,
    debug: bool = False,
    assignments: Sequence[str] = (),
    python: str | None = None,
) -> list[str]:
    """The command line of a buildout run in `directory` (assignments are `section:option=value`)."""
    directory = Path(directory)
    argv = [python or sys.executable, "-I", "-u", "-m", RUNNER_MODULE, "-U"]
    if not newest:
        argv.append("-N")
    if debug:
        argv.append("-D")
    argv.append(f"buildout:directory={directory}")
    argv.extend(assignments)
    argv += ["-c", str(directory / config)]
    return argv


def buildout_environment(directory: str | Path, settings=None, **extra: str) -> dict[str, str]:
    """Sanitised environment of a build: HOME is the directory itself (pip caches, ~/.netrc),
    PATH is the system one plus `[slapos] path` entries; no PYTHONPATH or locale leaks in."""
    extra_path = list(getattr(settings, "extra_path", None) or [])
    return process.clean_environment(directory, extra_path=extra_path, **extra)


def run_buildout(
    directory: str | Path,
    settings,
    identity: Identity | None,
    timeout: float | None = None,
    log_file: str | Path | BinaryIO | None = None,
    on_line: Callable[[str], None] | None = None,
    newest: bool = False,
    debug: bool = False,
    *,
    config: str = "buildout.cfg",
    assignments: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Result:
    """Run buildout in `directory` (cwd and `buildout:directory`) as `identity` (None: as we are).

    `settings` (NodeSettings or None) contributes `[slapos] path` to PATH. Output goes to `log_file`
    (appended; an open binary file is written to and left open: how callers hand a log they
    opened safely in a tenant's tree) and, line by line, to `on_line`. With `debug` (`-D`), buildout's output goes to the
    terminal and its post-mortem debugger can be used: nothing is captured.
    """
    directory = Path(directory)
    argv = buildout_argv(directory, config=config, newest=newest, debug=debug, assignments=assignments)
    environment = env if env is not None else buildout_environment(directory, settings)
    if debug:
        return _run_in_terminal(argv, directory, environment, identity, timeout)
    if isinstance(log_file, (str, Path)):
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    return process.run(
        argv,
        cwd=directory,
        env=environment,
        identity=identity,
        umask=0o027,
        timeout=timeout,
        log_file=log_file,
        on_line=on_line,
    )


def _run_in_terminal(
    argv: list[str], cwd: Path, env: dict[str, str], identity: Identity | None, timeout: float | None
) -> Result:
    """`--buildout-debug`: the child shares our terminal (stdin included, for pdb)."""
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            cwd=str(cwd),
            env=env,
            preexec_fn=process._demote(identity, 0o027),  # same privilege drop as process.run
            close_fds=True,
        )
    except OSError as e:
        raise SlapOSError(f"cannot run {argv[0]}: {e.strerror}") from None
    try:
        returncode = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill_tree(proc.pid)
        proc.wait()
        raise process.ProcessTimeout(f"buildout timed out after {timeout:g} s and was killed") from None
    except BaseException:
        process.kill_tree(proc.pid)
        proc.wait()
        raise
    return Result(returncode, "(buildout output went to the terminal: --buildout-debug)", time.monotonic() - start)


RUNNER_MARK = "# Written by slapos node software"


def release_buildout(software: str | Path) -> Path | None:
    """The software release's own `bin/buildout` (one its build made, e.g. a pinned buildout of
    the SlapOS fork), or None when it has none or it is the script the node writes: instance
    buildouts then run with the node's buildout (fork server). Read without following links,
    a bounded read: the software directory belongs to the (untrusted) software user."""
    fd = tenantfs.open_below(software, "bin")
    if fd is None:
        return None
    try:
        head = tenantfs.read_small("buildout", 4096, dir_fd=fd)
    finally:
        os.close(fd)
    if not head or not head.startswith(b"#!") or RUNNER_MARK.encode() in head:
        return None
    return Path(software) / "bin" / "buildout"


def write_runner_script(path: str | Path, python: str | None = None, *, dir_fd: int | None = None,
                        owner: tuple[int, int] | None = None) -> bool:
    """Write a `bin/buildout` that re-runs the same buildout by hand (`cd <dir> && bin/buildout`).

    Its shebang names the Python that builds (the node's), which is also the Python plugin
    promises use. Returns True when the file was (re)written. With `dir_fd` (the `bin`
    directory of a release, owned by the software user), only `path.name` is used, relative to
    it, and nothing that user put there is followed.
    """
    path = Path(path)
    text = (
        f"#!{python or sys.executable} -I\n"
        f"{RUNNER_MARK}: runs upstream zc.buildout with ${{:_profile_base_location_}}\n"
        "# support, exactly as the node does. Re-run a build by hand with:  bin/buildout -N\n"
        "import sys\n"
        f"from {RUNNER_MODULE} import main\n"
        "sys.exit(main())\n"
    )
    if dir_fd is not None:
        if tenantfs.read_small(path.name, 1 << 16, dir_fd=dir_fd) == text.encode():
            return False
        tenantfs.write_at(dir_fd, path.name, text, 0o755, owner)
        return True
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tenantfs.write_small(path, text.encode(), mode=0o755)
    return True
