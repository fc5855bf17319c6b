"""`slapos node software`: build, once, each software release the master wants on this computer.

One call to the master gives the computer's software list. For each release:

* wanted `available`: `software_root/<md5 of URL>/.completed` present (and no `--develop`) → nothing
  to do, which costs one `stat`; otherwise report *building*, fetch a signed archive from the
  binary cache or run buildout, report *available*, then write `.completed`; on failure report
  *error* with the tail of the build log and go on with the next release;
* wanted `destroyed`: remove the directory unless a partition still links to it
  (`instance_root/*/software_release`), then report *destroyed*.

The no-op path imports neither buildout nor the cache client nor psutil (see bench/software.py).
Builds may run side by side (`--jobs N`); every console line names its release.

Cut into software_release (names, files), software_progress (console), software_processes.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from slapos.base import tenantfs
from slapos.base.errors import ConfigError, SlapOSError

from . import observe
from .software_processes import (  # noqa: F401 - these names are part of our API
    _install_termination_handler,
    _restore_termination_handler,
    kill_leftover_builds,
    terminate_children,
)
from .software_progress import HEARTBEAT_SECONDS, BuildProgress, _duration, _size  # noqa: F401 - our API
from .software_release import buildout_profile, partitions_using, short_name, software_key  # noqa: F401 - our API

logger = logging.getLogger("slapos.software")

COMPLETED = ".completed"
LOG_DIRECTORY = ".slapgrid/log"
LOG_NAME = "software.log"
MAX_LOG_SIZE = 8 << 20  # then the previous log is kept as software.log.1
ERROR_TAIL_LINES = 60


def parse_size(text: str) -> int:
    """`1000M`, `2G`, `512k`, `0` → bytes (binary units, as the reference's human sizes)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)[bB]?\s*", text)
    if not match:
        raise ConfigError(f"[slapos] software_min_free_space {text!r} is not a size like 1000M or 2G")
    number, unit = float(match.group(1)), match.group(2).upper()
    return int(number * (1024 ** " KMGT".index(unit or " ")))


@dataclass
class SoftwareOptions:
    only: list[str] = field(default_factory=list)  # URLs or md5s; empty = all
    develop: bool = False
    jobs: int = 1
    buildout_debug: bool = False
    now: bool = False
    maximal_delay: int = 0


@dataclass
class Outcome:
    url: str
    key: str
    status: str  # up-to-date | built | fetched | destroyed | kept | failed
    detail: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status == "failed"


def fetch_software_list(settings) -> list:
    """The computer's software releases: the run's one call to the master."""
    from slapos.slap import WireError, connect_as
    from slapos.slap.exceptions import SlapException

    try:
        computer = connect_as(settings).registerComputer(settings.computer_id)
        return computer.getSoftwareReleaseList()
    except (SlapException, WireError) as e:
        raise SlapOSError(f"cannot get the software list of computer {settings.computer_id}: {e}") from None


class SoftwareAgent:
    """One run of `slapos node software` once the list is known."""

    def __init__(self, settings, options: SoftwareOptions):
        self.settings = settings
        self.options = options
        self.software_root = Path(settings.software_root)
        self._master_lock = threading.Lock()
        self._cache_lock = threading.Lock()  # build threads must not see a half-made cache client
        self._cache = None
        self._cache_loaded = False
        self._owner = None
        self._owner_loaded = False
        # a malformed size is a configuration error of the whole run, not of each release
        self.min_free_space = parse_size(settings.config.get("slapos", "software_min_free_space", "1000M"))

    # -- selection ----------------------------------------------------------------------------
    def select(self, releases: list) -> list:
        if not self.options.only:
            return list(releases)
        wanted = set(self.options.only)
        chosen = [r for r in releases if r.getURI() in wanted or software_key(r.getURI()) in wanted]
        known = {r.getURI() for r in releases} | {software_key(r.getURI()) for r in releases}
        for item in sorted(wanted - known):
            logger.warning("--only-sr %s matches no software release of computer %s", item, self.settings.computer_id)
        return chosen

    def run(self, releases: list) -> list[Outcome]:
        outcomes: list[Outcome] = []
        to_build = []
        for release in self.select(releases):
            url = release.getURI()
            key = software_key(url)
            state = release.getState()
            if state == "destroyed":
                outcomes.append(self.destroy(release, url, key))
            elif state == "available":
                if not self.options.develop and os.path.exists(self.software_root / key / COMPLETED):
                    outcomes.append(Outcome(url, key, "up-to-date"))
                else:
                    to_build.append(release)
            else:
                logger.warning("[%s] unknown requested state %r: left alone", short_name(url, key), state)
        if to_build:
            outcomes.extend(self.install_all(to_build))
        return outcomes

    def install_all(self, releases: list) -> list[Outcome]:
        jobs = 1 if self.options.buildout_debug else max(1, self.options.jobs)
        if jobs == 1 or len(releases) == 1:
            return [self.install(release) for release in releases]
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="build") as pool:
            return list(pool.map(self.install, releases))

    # -- master -------------------------------------------------------------------------------
    def _report(self, label: str, what: str, call: Callable[[], object], must: bool) -> str | None:
        """Tell the master; None on success, else the reason. `building` is best effort."""
        from slapos.slap.exceptions import NotFoundError, SlapException

        try:
            with self._master_lock:  # one HTTP session shared by the build threads
                call()
            return None
        except NotFoundError as e:
            if not must:
                return None
            reason = str(e)
        except SlapException as e:
            reason = str(e)
        (logger.error if must else logger.warning)("[%s] could not report %s to the master: %s", label, what, reason)
        return reason

    def _report_error(self, release, text: str) -> None:
        with self._master_lock:
            release.error(text, logger=logger)

    # -- build --------------------------------------------------------------------------------
    def install(self, release) -> Outcome:
        url = release.getURI()
        key = software_key(url)
        label = short_name(url, key)
        path = self.software_root / key
        start = time.monotonic()
        logger.info("[%s] installing %s", label, url)
        self._report(label, "building", release.building, must=False)
        try:
            status = self._install(url, key, label, path)
        except SlapOSError as e:
            return self._failed(release, url, key, label, str(e), start)
        except Exception as e:  # a bug or an unexpected system error: still only this release fails
            logger.debug("[%s] unexpected error", label, exc_info=True)
            return self._failed(release, url, key, label, f"{type(e).__name__}: {e}", start)
        reason = self._report(label, "available", release.available, must=True)
        if reason is not None:
            # no .completed: the next run reports again (re-running a finished buildout is cheap)
            return Outcome(url, key, "failed", f"built, but reporting it failed: {reason}", time.monotonic() - start)
        fd = self._release_dir(key)
        try:
            tenantfs.write_at(fd, COMPLETED, time.asctime() + "\n", 0o644)
        finally:
            os.close(fd)
        seconds = time.monotonic() - start
        logger.info("[%s] %s in %s", label, "fetched from the binary cache" if status == "fetched" else "built",
                    _duration(seconds))
        return Outcome(url, key, status, seconds=seconds)

    def _failed(self, release, url: str, key: str, label: str, text: str, start: float) -> Outcome:
        log_file = self.software_root / key / LOG_DIRECTORY / LOG_NAME
        first = text.strip().splitlines()[-1] if text.strip() else "unknown error"
        where = f" (full log: {log_file})" if log_file.exists() else ""
        logger.error("[%s] failed: %s%s", label, first[:300], where)
        self._report_error(release, text)
        return Outcome(url, key, "failed", first, time.monotonic() - start)

    def _install(self, url: str, key: str, label: str, path: Path) -> str:
        if path.exists():
            kill_leftover_builds(path)
        self._check_free_space()
        if not path.exists() and self._fetch(url, key, label, path):
            return "fetched"
        cache = self.cache
        if cache is not None and cache.config.forced(url):
            raise SlapOSError(
                f"{url} must come from the binary cache (download-from-binary-cache-force-url-list) "
                "and no usable archive was found"
            )
        self._build(url, key, label, path)
        self._publish(url, key, label, path)
        return "built"

    def _check_free_space(self) -> None:
        import shutil

        wanted = self.min_free_space
        free = shutil.disk_usage(self.software_root).free
        if free < wanted:
            raise SlapOSError(
                f"only {free >> 20} MiB free in {self.software_root}, {wanted >> 20} MiB required "
                "([slapos] software_min_free_space): free some space"
            )

    @property
    def owner(self):
        """Who builds: the owner of software_root when we are root (never root), else None."""
        if not self._owner_loaded:
            from .process import identity_for

            self._owner = identity_for(self.software_root, "buildout for software releases")
            self._owner_loaded = True
        return self._owner

    def _release_dir(self, key: str, *parts: str, create: bool = False) -> int:
        """A descriptor of `<software_root>/<key>/parts...`, reached without following a link
        (the software user owns software_root and could plant one anywhere below it); missing
        directories are created for that user when `create`."""
        owner = self.owner
        try:
            return tenantfs.open_dir(self.software_root, key, *parts, create=create, mode=0o755,
                                     owner=(owner.uid, owner.gid) if owner else None, follow_base=True)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise SlapOSError(f"{Path(self.software_root, key, *parts)} is a symbolic link or not a "
                                  "directory: refusing to build there") from None
            raise

    def _prepare(self, url: str, path: Path) -> None:
        """The files the build starts from, written for the software user without following
        anything that user put in the release directory."""
        owner = self.owner
        own = (owner.uid, owner.gid) if owner else None
        key = path.name
        fd = self._release_dir(key, create=True)
        try:
            try:
                regular = stat.S_ISREG(os.stat("buildout.cfg", dir_fd=fd, follow_symlinks=False).st_mode)
            except FileNotFoundError:
                regular = False
            if not regular:  # missing, or a link or FIFO that would hang the build: ours again
                tenantfs.write_at(fd, "buildout.cfg", buildout_profile(url, self.settings), 0o644, own)
            # buildout needs the extends cache before it reads a remote profile (it creates it later)
            os.close(self._release_dir(key, "extends-cache", create=True))
            from .buildout import write_runner_script

            bin_fd = self._release_dir(key, "bin", create=True)
            try:
                write_runner_script(path / "bin" / "buildout", dir_fd=bin_fd, owner=own)
            finally:
                os.close(bin_fd)
            netrc = self._home_netrc(owner)
            if netrc is not None:
                tenantfs.write_at(fd, ".netrc", netrc, 0o600, own)
        finally:
            os.close(fd)

    @staticmethod
    def _home_netrc(owner) -> bytes | None:
        """The builder's `~/.netrc`, copied into the release for buildout's downloads: only a
        regular file of the builder itself (its home is its own: a link there to root's files
        must not make us copy them into a directory it reads)."""
        home = Path(owner.home if owner else os.path.expanduser("~"))
        try:
            return tenantfs.read_regular(home / ".netrc", 1 << 20, uid=owner.uid if owner else os.geteuid())
        except OSError:
            return None

    def _open_log(self, path: Path, url: str) -> tuple[Path, BinaryIO]:
        """`<release>/.slapgrid/log/software.log` (the previous one kept as `.1` past 8 MiB),
        opened for appending through directory descriptors: a link or FIFO the software user put
        there is replaced, never written through."""
        owner = self.owner
        fd = self._release_dir(path.name, *LOG_DIRECTORY.split("/"), create=True)
        try:
            try:
                if os.stat(LOG_NAME, dir_fd=fd, follow_symlinks=False).st_size > MAX_LOG_SIZE:
                    os.replace(LOG_NAME, LOG_NAME + ".1", src_dir_fd=fd, dst_dir_fd=fd)
            except FileNotFoundError:
                pass
            log_fd = tenantfs.open_append(LOG_NAME, fd, 0o644, (owner.uid, owner.gid) if owner else None)
        finally:
            os.close(fd)
        log = os.fdopen(log_fd, "ab")
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} slapos node software: building {url}\n".encode())
        log.flush()
        return path / LOG_DIRECTORY / LOG_NAME, log

    def _build(self, url: str, key: str, label: str, path: Path) -> None:
        self._prepare(url, path)
        # the owner of software_root, not of `path`: a link put there must not choose who builds
        identity = self.owner
        log_file, log = self._open_log(path, url)
        with log:
            self._run_build(url, label, path, identity, log_file, log)

    def _run_build(self, url: str, label: str, path: Path, identity, log_file: Path, log: BinaryIO) -> None:
        from .buildout import run_buildout
        from .process import ProcessTimeout

        logger.info("[%s] running buildout in %s (log: %s)", label, path, log_file)
        timeout = self.settings.buildout_timeout
        try:
            result = run_buildout(
                path,
                self.settings,
                identity,
                timeout=timeout,
                log_file=log,
                on_line=BuildProgress(label),
                newest=self.options.develop,
                debug=self.options.buildout_debug,
                assignments=[f"buildout:extends-cache={path / 'extends-cache'}"],
            )
        except ProcessTimeout:
            log.write(f"=== buildout killed after {timeout:g} s (buildout_timeout)\n".encode())
            raise SlapOSError(
                f"buildout ran longer than {timeout:g} s and was killed (buildout_timeout in [slapos] or "
                f"--buildout-timeout; log: {log_file})"
            ) from None
        log.write(f"=== buildout exited with code {result.returncode} after {result.duration:.1f} s\n".encode())
        if result.ok:
            logger.info("[%s] buildout succeeded in %s", label, _duration(result.duration))
        else:
            raise SlapOSError(
                f"buildout failed with exit code {result.returncode} (log: {log_file}); last lines:\n"
                f"{result.tail(ERROR_TAIL_LINES)}"
            )

    # -- binary cache -------------------------------------------------------------------------
    @property
    def cache(self):
        """The binary cache client, or None when [networkcache] configures none."""
        with self._cache_lock:
            if not self._cache_loaded:
                self._cache_loaded = True
                if self.settings.networkcache:
                    from .cache import BinaryCache, CacheConfig

                    config = CacheConfig.from_options(self.settings.networkcache)
                    if config is not None:
                        if config.download_dir_url and not (config.trusted_keys or config.legacy_sha1_keys):
                            logger.warning(
                                "binary cache downloads disabled: [networkcache] signature-certificate-list "
                                "is empty, so no archive could be trusted"
                            )
                        self._cache = BinaryCache(config, self.software_root)
        return self._cache

    def _fetch(self, url: str, key: str, label: str, path: Path) -> bool:
        cache = self.cache
        if cache is None or not cache.config.can_download(url):
            return False
        from .cache import CacheError

        try:
            entry = cache.lookup(url, key)
            if entry is None:
                logger.info("[%s] not in the binary cache: building", label)
                return False
            logger.info("[%s] downloading from the binary cache (%s)", label, _size(entry.size))
            cache.fetch(entry, key, path, self.owner)
            return True
        except CacheError as e:
            logger.warning("[%s] binary cache refused: %s; building instead", label, e)
        except SlapOSError:
            raise
        except Exception as e:
            logger.warning("[%s] binary cache failed: %s: %s; building instead", label, type(e).__name__, e)
        return False

    def _publish(self, url: str, key: str, label: str, path: Path) -> None:
        cache = self.cache
        if cache is None or not cache.config.can_upload(url) or (path / ".shared").exists():
            return
        start = time.monotonic()
        try:
            sha512 = cache.publish(url, key, path, self.owner)
            logger.info("[%s] uploaded to the binary cache in %s (%s…)", label,
                        _duration(time.monotonic() - start), sha512[:16])
        except Exception as e:  # an upload problem never fails a good build
            logger.warning("[%s] upload to the binary cache failed: %s", label, e)

    # -- destruction --------------------------------------------------------------------------
    def destroy(self, release, url: str, key: str) -> Outcome:
        label = short_name(url, key)
        path = self.software_root / key
        start = time.monotonic()
        users = partitions_using(Path(self.settings.instance_root), path)
        if users:
            logger.warning(
                "[%s] not destroyed: still used by partition%s %s; retried at the next run",
                label, "s" if len(users) > 1 else "", ", ".join(users),
            )
            return Outcome(url, key, "kept", "used by " + ", ".join(users))
        try:
            if path.exists() or path.is_symlink():
                import secrets

                kill_leftover_builds(path)
                from .cache import remove_tree

                # rename first: nobody sees a half-removed release
                doomed = self.software_root / f".{key}.destroy-{secrets.token_hex(4)}"
                os.rename(path, doomed)
                remove_tree(doomed)
                logger.info("[%s] removed %s", label, path)
        except OSError as e:
            text = f"cannot remove {path}: {e}"
            logger.error("[%s] %s", label, text)
            self._report_error(release, text)
            return Outcome(url, key, "failed", text, time.monotonic() - start)
        reason = self._report(label, "destroyed", release.destroyed, must=True)
        if reason is not None:
            return Outcome(url, key, "failed", f"removed, but reporting it failed: {reason}")
        return Outcome(url, key, "destroyed", seconds=time.monotonic() - start)

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()


def summarize(outcomes: list[Outcome]) -> None:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    if not outcomes:
        logger.info("no software release to process")
        return
    order = ("built", "fetched", "up-to-date", "destroyed", "kept", "failed")
    text = ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s))
    (logger.error if counts.get("failed") else logger.info)("software releases: %s", text)


def run_software(settings, options: SoftwareOptions) -> int:
    """The whole command once configuration and root check are done. Exit code 0/1 (10: locked)."""
    from .lock import RunLock

    if not options.now and options.maximal_delay > 0:
        import random

        delay = random.uniform(1, options.maximal_delay)
        logger.info("sleeping %.0f s (maximal_delay; --now to skip)", delay)
        time.sleep(delay)
    with RunLock(settings.pidfile_software, "slapos node software"):
        started = time.monotonic()
        releases = fetch_software_list(settings)
        if not Path(settings.software_root).is_dir():
            Path(settings.software_root).mkdir(parents=True, mode=0o755)
        agent = SoftwareAgent(settings, options)
        previous = _install_termination_handler()
        try:
            outcomes = agent.run(releases)
        except BaseException:
            terminate_children()
            raise
        finally:
            agent.close()
            _restore_termination_handler(previous)
        code = 1 if any(o.failed for o in outcomes) else 0
        observe.after_software_run(settings, time.monotonic() - started, code, outcomes)
    summarize(outcomes)
    return code


