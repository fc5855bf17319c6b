"""Filesystem operations inside directories a tenant controls (partition directories).

The node runs as root; everything below a partition directory belongs to the partition user,
who may have planted symlinks (to `/`, to another partition), FIFOs, huge files, mount-point
look-alikes or directories without permissions. These helpers are the only way report,
destroy, usage and the watchdog touch such trees:

* nothing follows a symlink: directories are opened with O_NOFOLLOW relative to their parent's
  file descriptor, so a symlink swapped in during the walk cannot redirect us;
* nothing crosses into another filesystem (a bind mount inside a partition is left alone and
  reported, never emptied);
* small files are read without blocking (a FIFO named `.timestamp` must not hang the watchdog)
  and written by atomic rename (a symlink named like our file is replaced, not followed).

Kept whole: this is every system call root makes in a tenant's tree (reads, writes, the wipe,
the disk usage walk), sharing one way of opening (`_open_dir`: no symlink, same directory as
seen); an auditor of the node's exposure to hostile trees reads these rules and all their
uses in one file.
"""
from __future__ import annotations

import errno
import os
import stat
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def read_small(path: str | Path, limit: int = 64 * 1024, dir_fd: int | None = None) -> bytes | None:
    """The content of a regular file (at most `limit` bytes), or None when it is missing,
    is a symlink, a FIFO, a device or a directory. With `dir_fd`, `path` is a name in it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        size = 0
        while size < limit:
            data = os.read(fd, limit - size)
            if not data:
                break
            chunks.append(data)
            size += len(data)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_float(path: str | Path) -> float | None:
    """A number stored as text (timestamps may be floats: `1795625303.3630798`); None if absent
    or not a number."""
    data = read_small(path, 256)
    if data is None:
        return None
    try:
        return float(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None


def write_small(path: str | Path, data: bytes, mode: int = 0o644, owner: tuple[int, int] | None = None) -> None:
    """Replace `path` atomically with `data`: a temporary file created exclusively next to it,
    then renamed over it (rename replaces a symlink instead of writing through it). The
    temporary name is random, so a tenant cannot plant something there beforehand, and it is
    removed on any failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:  # os.write may write less than asked (a large ledger, a full disk)
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            if owner is not None and os.geteuid() == 0:
                os.fchown(fd, *owner)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class UnsafeFile(OSError):
    """A name in a tenant's tree is not the regular file we expected (a link, a FIFO, a device,
    a hard link to someone else's file) or is larger than we accept."""


_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def read_regular(name: str | Path, limit: int, dir_fd: int | None = None, uid: int | None = None) -> bytes:
    """The whole content of the regular file `name` (in `dir_fd` when given), never following
    a link and never blocking. FileNotFoundError when it is missing, UnsafeFile when it is not
    a regular file or holds more than `limit` bytes: a truncated profile must not be used.
    With `uid`, a file of another user is refused too (UnsafeFile)."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafeFile(errno.ELOOP, f"{name} is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(errno.EINVAL, f"{name} is not a regular file")
        if uid is not None and st.st_uid != uid:
            raise UnsafeFile(errno.EPERM, f"{name} belongs to uid {st.st_uid}, not {uid}")
        if st.st_size > limit:
            raise UnsafeFile(errno.EFBIG, f"{name} is larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:  # read to the end: the file may grow meanwhile
            data = os.read(fd, limit + 1 - size)
            if not data:
                break
            chunks.append(data)
            size += len(data)
        if size > limit:
            raise UnsafeFile(errno.EFBIG, f"{name} is larger than {limit} bytes")
        content = b"".join(chunks)
        return content
    finally:
        os.close(fd)


def open_dir(base: str | Path, *parts: str, create: bool = False, mode: int = 0o755,
             owner: tuple[int, int] | None = None, follow_base: bool = False) -> int:
    """A descriptor of `base/parts...`: `base` is trusted (its parent belongs to root), no
    component below it is followed when it is a link (OSError ELOOP or ENOTDIR). With
    `create`, missing components are made with `mode` and given to `owner`. `follow_base`:
    `base` itself may be a link (a `software_root` the operator configured as one). The caller
    closes the descriptor."""
    fd = os.open(base, _DIR_FLAGS & ~os.O_NOFOLLOW) if follow_base else _open_dir(base)
    try:
        for part in parts:
            try:
                child = _open_dir(part, fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, mode, dir_fd=fd)
                except FileExistsError:
                    pass
                child = _open_dir(part, fd)
                os.fchmod(child, mode)
                if owner is not None and os.geteuid() == 0:
                    os.fchown(child, *owner)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_at(dir_fd: int, name: str, data: bytes | str, mode: int = 0o644,
             owner: tuple[int, int] | None = None) -> None:
    """Atomically replace `name` in the directory `dir_fd`: a fresh temporary file with a random
    name (created exclusively, never through a link), renamed over the target (a link or FIFO
    planted at `name` is replaced, never written through)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = f".{name}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        try:
            os.fchmod(fd, mode)
            if owner is not None and os.geteuid() == 0:
                os.fchown(fd, *owner)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def open_append(name: str, dir_fd: int, mode: int = 0o644, owner: tuple[int, int] | None = None) -> int:
    """A descriptor appending to the regular file `name` of `dir_fd` (created when missing).

    What a tenant may have put at that name is never written through: a link, a FIFO (opening
    one never blocks: O_NONBLOCK), a device, a file hard-linked elsewhere or a file of another
    user is moved out of the way (unlinked) and a fresh file is created exclusively."""
    allowed = {os.geteuid()} | ({owner[0]} if owner else set())
    for _ in range(3):
        try:
            fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dir_fd)
        except FileNotFoundError:
            fd = None
        except OSError as e:  # ELOOP (a link), ENXIO (a FIFO without reader), EISDIR...
            if e.errno == errno.EISDIR:
                raise UnsafeFile(errno.EISDIR, f"{name} is a directory") from None
            _unlink_quiet(name, dir_fd)
            fd = None
        if fd is not None:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid in allowed:
                os.set_blocking(fd, True)
                return fd
            os.close(fd)
            _unlink_quiet(name, dir_fd)
        try:
            fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         mode, dir_fd=dir_fd)
        except FileExistsError:  # planted again between unlink and create: try again
            continue
        try:
            os.fchmod(fd, mode)
            if owner is not None and os.geteuid() == 0:
                os.fchown(fd, *owner)
        except BaseException:
            os.close(fd)
            raise
        return fd
    raise UnsafeFile(errno.EBUSY, f"{name} keeps being replaced: not writing to it")


def _unlink_quiet(name: str, dir_fd: int) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        raise UnsafeFile(errno.EISDIR, f"{name} is a directory") from None


def chown_tree(dir_fd: int, uid: int, gid: int) -> None:
    """Give the tree of the open directory `dir_fd` (itself included) to uid:gid, never
    following a link (links themselves are given, with lchown semantics) and never leaving
    the tree, whatever is renamed meanwhile: each sub-directory is opened relative to its
    parent's descriptor with O_NOFOLLOW."""
    os.fchown(dir_fd, uid, gid)
    stack = [os.dup(dir_fd)]
    try:
        while stack:
            fd = stack.pop()
            try:
                with os.scandir(fd) as entries:
                    names = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
                for name, is_dir in names:
                    if is_dir:
                        try:
                            child = _open_dir(name, fd)
                        except OSError:  # replaced by a link meanwhile: given, not followed
                            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
                            continue
                        os.fchown(child, uid, gid)
                        stack.append(child)
                    else:
                        os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
            finally:
                os.close(fd)
    finally:
        for fd in stack:
            os.close(fd)


def remove_file(path: str | Path) -> bool:
    """Unlink a file or symlink (never what it points to); True if something was removed."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def _open_dir(name: str | Path, dir_fd: int | None = None) -> int:
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def open_below(base: str | Path, *parts: str, follow_base: bool = False) -> int | None:
    """A descriptor of the directory `base/parts...`, reached without following any symlink
    (`base` itself included, unless `follow_base`); None when one of them is missing or is not
    a real directory. The caller closes it."""
    try:
        fd = os.open(base, _DIR_FLAGS & ~os.O_NOFOLLOW) if follow_base else _open_dir(base)
    except OSError:
        return None
    for part in parts:
        try:
            child = _open_dir(part, fd)
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = child
    return fd


@dataclass
class WipeResult:
    removed: int = 0  # entries removed
    errors: list[str] = field(default_factory=list)  # one line per entry left behind, and why

    @property
    def ok(self) -> bool:
        return not self.errors


# Deeper directories are moved up to the top of the tree being wiped and emptied in a later
# pass: recursion and open descriptors stay bounded whatever a tenant nests (a tree deeper than
# PATH_MAX or than Python's recursion limit must not make destruction fail forever).
MAX_DEPTH = 32
_MAX_PASSES = 10_000


@dataclass
class _Wipe:
    top_fd: int
    device: int
    result: WipeResult
    moved: int = 0
    counter: int = 0


def wipe_content(directory: str | Path, keep: Collection[str] = ()) -> WipeResult:
    """Delete everything inside `directory` (not the directory itself), except the top-level
    names in `keep`. Never follows symlinks, never descends into another filesystem.

    `directory` itself must be a real directory (not a symlink). Errors do not stop the wipe:
    each entry that could not be removed is reported, so a later run can finish the job.
    """
    result = WipeResult()
    try:
        fd = _open_dir(directory)
    except OSError as e:
        result.errors.append(f"cannot open {directory}: {_reason(e)}")
        return result
    try:
        state = _Wipe(fd, os.fstat(fd).st_dev, result)
        for _ in range(_MAX_PASSES):
            state.moved = 0
            _wipe_fd(state, fd, str(directory), set(keep), 0)
            if not state.moved:
                break
    finally:
        os.close(fd)
    return result


def _reason(error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "it is a symlink"
    return error.strerror or str(error)


def _same_dir(dir_fd: int, name: str, st: os.stat_result) -> bool:
    try:
        again = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISDIR(again.st_mode) and (again.st_dev, again.st_ino) == (st.st_dev, st.st_ino)


def _open_child(dir_fd: int, name: str, st: os.stat_result) -> int:
    """Open the sub-directory `name` we just lstat'ed, making sure it is still that directory.
    When we are not root, a tenant directory without permissions is given back u+rwx first."""
    try:
        child = _open_dir(name, dir_fd)
    except PermissionError:
        if os.geteuid() == 0 or not _same_dir(dir_fd, name, st):
            raise
        os.chmod(name, stat.S_IMODE(st.st_mode) | 0o700, dir_fd=dir_fd)
        child = _open_dir(name, dir_fd)
    opened = os.fstat(child)
    if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
        os.close(child)
        raise OSError(errno.ESTALE, "it changed while being removed; left for the next run")
    if os.geteuid() != 0 and (opened.st_mode & 0o700) != 0o700:
        os.fchmod(child, stat.S_IMODE(opened.st_mode) | 0o700)
    return child


def _move_up(state: _Wipe, dir_fd: int, name: str) -> bool:
    """Move a too-deep directory to the top of the wiped tree (same filesystem: a rename)."""
    while True:
        state.counter += 1
        target = f".slapos-wipe-{state.counter}"
        try:
            os.stat(target, dir_fd=state.top_fd, follow_symlinks=False)
        except FileNotFoundError:
            break
    try:
        os.rename(name, target, src_dir_fd=dir_fd, dst_dir_fd=state.top_fd)
    except OSError:
        return False
    state.moved += 1
    return True


def _wipe_fd(state: _Wipe, dir_fd: int, where: str, keep: set[str], depth: int) -> None:
    errors = state.result.errors
    try:
        with os.scandir(dir_fd) as entries:
            names = [entry.name for entry in entries]
    except OSError as e:
        errors.append(f"cannot list {where}: {_reason(e)}")
        return
    for name in names:
        if name in keep:
            continue
        path = f"{where}/{name}"
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        except OSError as e:
            errors.append(f"cannot inspect {path}: {_reason(e)}")
            continue
        if not stat.S_ISDIR(st.st_mode):
            _remove(state, os.unlink, dir_fd, name, path)
            continue
        if st.st_dev != state.device:
            # a mount point: emptying it would delete data that is not the partition's
            errors.append(f"{path} is another filesystem mounted in the partition: unmount it first")
            continue
        if depth >= MAX_DEPTH and _move_up(state, dir_fd, name):
            continue
        try:
            child = _open_child(dir_fd, name, st)
        except OSError as e:
            errors.append(f"cannot open {path}: {_reason(e)}")
            continue
        try:
            _wipe_fd(state, child, path, set(), depth + 1)
        finally:
            os.close(child)
        # not empty: either its leftovers were reported already, or a too-deep part of it was
        # moved up and the next pass removes it
        _remove(state, os.rmdir, dir_fd, name, path, tolerate=errno.ENOTEMPTY)


def _remove(state: _Wipe, remove, dir_fd: int, name: str, path: str, tolerate: int | None = None) -> None:
    try:
        remove(name, dir_fd=dir_fd)
        state.result.removed += 1
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno != tolerate:
            state.result.errors.append(f"cannot remove {path}: {_reason(e)}")


def space_used(directory: str | Path, skip: Collection[tuple[int, int]] = ()) -> int:
    """Bytes of disk used below `directory` (allocated blocks, hard links counted once).

    Does not follow symlinks, does not enter another filesystem nor the directories whose
    (st_dev, st_ino) is in `skip` (other partitions, when one is reachable from this one).
    Each directory is opened by path but only listed if it is still the directory seen when
    listing its parent (a symlink swapped in meanwhile is not followed). Unreadable directories
    and paths longer than PATH_MAX are skipped.
    """
    try:
        root = os.stat(directory, follow_symlinks=False)
    except OSError:
        return 0
    if not stat.S_ISDIR(root.st_mode):
        return 0
    skip = set(skip)
    seen_links: set[tuple[int, int]] = set()
    total = root.st_blocks * 512
    stack: list[tuple[str, os.stat_result]] = [(str(directory), root)]
    while stack:
        path, expected = stack.pop()
        for entry_path, st in _list_dir(path, expected):
            if stat.S_ISDIR(st.st_mode):
                if st.st_dev != root.st_dev or (st.st_dev, st.st_ino) in skip:
                    continue
                stack.append((entry_path, st))
            elif st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in seen_links:
                    continue
                seen_links.add(key)
            total += st.st_blocks * 512
    return total


def _list_dir(path: str, expected: os.stat_result) -> list[tuple[str, os.stat_result]]:
    try:
        fd = _open_dir(path)
    except OSError:
        return []
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (expected.st_dev, expected.st_ino):
            return []
        listing = []
        with os.scandir(fd) as entries:
            for entry in entries:
                try:
                    listing.append((f"{path}/{entry.name}", entry.stat(follow_symlinks=False)))
                except OSError:
                    continue
        return listing
    except OSError:
        return []
    finally:
        os.close(fd)
