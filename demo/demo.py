#!/usr/bin/env python3
"""`make demo`: a standalone SlapOS node, end to end, in one command.

It drives the real `slapos` command (.venv/bin/slapos) the way a user would, printing each command
and its output like a tutorial:

    configure a node in demo/run (proxy, format, supervisord) -> supply hello-web -> build it ->
    request an instance -> deploy it (`slapos node instance`) -> fetch its URL -> show the node

Everything lives in the run directory (default demo/run, or --run-dir): configuration, proxy
database, software, partitions, logs, and the HOME of the commands (so ~/.slapos is left alone).
Running it again reuses what runs and skips what is done. `--stop` (`make demo-stop`) stops what
it started — supervisord with its programs (`slapos node supervisorctl shutdown`: all at once; a
signal by pid if that fails), then the proxy by pid — and leaves the directory.

As root it runs the node as an ordinary user: buildout never runs as root. The whole demo is
re-executed as that user (`nobody`, or the owner of an existing run directory) with the run
directory given to it; that is exactly the unprivileged standalone node any user gets.

Until every piece of slapnode exists it runs the longest path that does and says what is missing.
Only the standard library and psutil (a slapnode dependency) are used here, no slapos internals.
"""
from __future__ import annotations

import argparse
import configparser
import json
import os
import pwd
import shlex
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOFTWARE_RELEASE = REPO / "software-release" / "hello-web" / "software.cfg"
DEFAULT_RUN_DIR = REPO / "demo" / "run"
INSTANCE = "hello"
MESSAGE = "Hello from the slapnode demo!"
PARTITIONS = 2
DEFAULT_USER = "nobody"  # who runs the node when the demo is started as root

STEP_TIMEOUT = 300.0  # a single slapos command; software builds of hello-web take about a second
DEPLOY_ATTEMPTS = 3  # `slapos node instance` runs before the demo gives up on the deployment
DEPLOY_PAUSE = 2.0  # seconds between two of them
STOP_WAIT = 30.0  # supervisord stops its programs before exiting


class DemoError(Exception):
    """Stops the demo with one clear line (and exit code 1)."""


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def shown(path: Path) -> str:
    """A path as the transcript shows it: relative to the repository when inside it."""
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def slapos_executable() -> Path:
    candidate = Path(sys.executable).parent / "slapos"
    return candidate if candidate.exists() else REPO / ".venv" / "bin" / "slapos"


# ------------------------------------------------------------------------------------------------
# ports and processes


def free_port(exclude: set[int] = frozenset()) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in exclude:
            return port


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def listener(port: int) -> int | None:
    """pid listening on a local TCP port, when we may see it (our own processes)."""
    import psutil

    try:
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return conn.pid
    except psutil.Error:
        pass
    return None


def command_line(pid: int) -> str:
    import psutil

    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def live_pid(pidfile: Path, must_contain: str) -> int | None:
    """pid of the pidfile when that process lives and is the one we think (its command line names
    `must_contain`): a pid reused by another program is never signalled."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if must_contain in command_line(pid) else None


def describe_user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# ------------------------------------------------------------------------------------------------
# the run directory


@dataclass
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "etc" / "slapos.cfg"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def state_file(self) -> Path:
        return self.root / "demo.json"

    def read_config(self) -> configparser.ConfigParser | None:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with open(self.config, encoding="utf-8") as f:
                parser.read_file(f)
        except (OSError, configparser.Error):
            return None
        return parser

    def proxy_port(self) -> int | None:
        cfg = self.read_config()
        try:
            return int(cfg.get("slapproxy", "port")) if cfg else None
        except (configparser.Error, ValueError):
            return None

    def proxy_pidfile(self) -> Path:
        cfg = self.read_config()
        if cfg and cfg.has_option("slapproxy", "pidfile"):
            return Path(cfg.get("slapproxy", "pidfile"))
        return self.root / "var" / "slapos-proxy.pid"

    def instance_root(self) -> Path:
        cfg = self.read_config()
        if cfg and cfg.has_option("slapos", "instance_root"):
            return Path(cfg.get("slapos", "instance_root"))
        return self.root / "instance"

    def supervisord_pidfile(self) -> Path:
        return self.instance_root() / "var" / "run" / "supervisord.pid"

    def supervisord_config(self) -> Path:
        return self.instance_root() / "etc" / "supervisord.conf"

    def proxy_pid(self) -> int | None:
        return live_pid(self.proxy_pidfile(), str(self.config))

    def supervisord_pid(self) -> int | None:
        return live_pid(self.supervisord_pidfile(), str(self.supervisord_config()))

    def load_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def save_state(self, **values) -> None:
        state = {**self.load_state(), **values}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.state_file)


# ------------------------------------------------------------------------------------------------
# running slapos commands like a tutorial


@dataclass
class Result:
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class Missing(Exception):
    """A `slapos` command this tree does not have yet."""


# words of the commands the demo runs, to name a missing one (`slapos node instance`, not its arguments)
COMMAND_WORDS = {"configure", "local", "supply", "node", "software", "request", "instance", "promise", "info",
                 "status", "proxy", "show"}


@dataclass
class Session:
    run: RunDir
    env: dict[str, str]
    steps: int = 0

    def header(self, title: str) -> None:
        self.steps += 1
        out()
        out(f"=== {self.steps}. {title}")

    def slapos(self, *args: str, show: bool = True, timeout: float = STEP_TIMEOUT) -> Result:
        """Run `slapos ARGS` from the repository, print the command and stream its output.
        Raises Missing when this tree has no such command (yet)."""
        argv = [str(slapos_executable()), *args]
        if show:
            out(f"$ slapos {shlex.join(args)}")
        process = subprocess.Popen(
            argv, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True,
        )
        lines: list[str] = []

        def pump() -> None:
            for line in process.stdout:
                lines.append(line)
                if show:
                    sys.stdout.write(line)
                    sys.stdout.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            reader.join(5)
            raise DemoError(f"`slapos {shlex.join(args)}` did not finish within {timeout:.0f} s") from None
        reader.join(5)
        result = Result(process.returncode, "".join(lines))
        if result.returncode == 5 and "invalid choice" in result.output:  # argparse: no such sub-command
            words = []
            for arg in args:
                if arg not in COMMAND_WORDS:
                    break
                words.append(arg)
            raise Missing("slapos " + " ".join(words or args[:1]))
        if show and result.returncode:
            out(f"[exit code {result.returncode}]")
        return result


# ------------------------------------------------------------------------------------------------
# the demo


def pick_proxy_port(session: Session, wanted: int | None) -> tuple[int, bool]:
    """The proxy's port, and whether slapos.cfg must be rewritten for it."""
    run = session.run
    configured = run.proxy_port()
    port = wanted or configured or free_port()
    rewrite = bool(configured and port != configured)
    if rewrite:
        out(f"The proxy port changes from {configured} to {port}: stopping the demo node first.")
        stop(run)
    elif run.proxy_pid() is not None:
        return port, False  # our proxy: configure local reuses it
    if port_in_use(port):
        pid = listener(port)
        who = f" by pid {pid} ({command_line(pid)[:80]})" if pid else ""
        raise DemoError(
            f"port {port} (the proxy's) is already in use{who}; choose another one: "
            f"make demo SLAPNODE_DEMO_PROXY_PORT=<free port>"
        )
    return port, rewrite


def pick_web_port(session: Session, wanted: int | None, proxy_port: int) -> int:
    run = session.run
    port = wanted or run.load_state().get("web_port") or free_port({proxy_port})
    if port == proxy_port:
        raise DemoError(f"hello-web cannot use port {port}: the proxy listens there")
    if port_in_use(port):
        pid = listener(port)
        if pid is None or str(run.root) not in command_line(pid):
            who = f" by pid {pid} ({command_line(pid)[:80]})" if pid else " by another program"
            raise DemoError(
                f"port {port} (for hello-web) is already in use{who}; choose another one: "
                f"make demo SLAPNODE_DEMO_WEB_PORT=<free port>"
            )
    return port


def fetch(url: str, deadline: float = 15.0) -> tuple[int, str]:
    """GET the instance's URL, retrying while the service starts."""
    end = time.monotonic() + deadline
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own loopback URL
                return response.status, response.read(4096).decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read(4096).decode("utf-8", "replace")
        except OSError as e:
            if time.monotonic() > end:
                raise DemoError(f"{url} does not answer: {getattr(e, 'reason', e)}") from None
            time.sleep(0.5)


def connection_url(session: Session, info_output: str) -> str | None:
    """The `url` connection parameter: from what `slapos info` printed, else from its JSON form."""
    for line in info_output.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "url" and words[1].startswith("http"):
            return words[1]
    result = session.slapos("info", INSTANCE, "--format", "json", show=False)
    try:
        return json.loads(result.output[result.output.index("{"):])["connection_parameters"]["url"]
    except (ValueError, KeyError, TypeError):
        return None


def deploy(session: Session) -> None:
    """`slapos node instance` until it exits 0, as cron would run it (a few attempts, not forever).

    The node waits for the services it starts before checking their promises, and starts the
    services of deployed partitions when supervisord was started again (e.g. by `configure local`
    after `make demo-stop`): one run normally does it all."""
    for attempt in range(1, DEPLOY_ATTEMPTS + 1):
        result = session.slapos("node", "instance", "--now")
        if result.ok:
            if not result.output.strip():
                out("(nothing printed: the partition is up to date, there was nothing to do)")
            return
        if attempt < DEPLOY_ATTEMPTS:
            out(f"Exit code {result.returncode}: once more in {DEPLOY_PAUSE:.0f} s, as cron would "
                f"(attempt {attempt + 1} of {DEPLOY_ATTEMPTS}):")
            time.sleep(DEPLOY_PAUSE)
    session.slapos("node", "status", "--partitions")
    raise DemoError(f"`slapos node instance` did not deploy {INSTANCE} in {DEPLOY_ATTEMPTS} attempts (last exit "
                    f"code {result.returncode}); see the output above and "
                    f"{shown(session.run.instance_root())}/slappart*/.slapgrid/log/")


def walk(session: Session, proxy_port: int, web_port: int, rewrite_config: bool) -> str:
    """The end-to-end path; returns the URL hello-web answered on. Raises Missing at a missing piece."""
    run = session.run

    session.header("Configure a standalone node: local proxy, partitions, supervisord")
    result = session.slapos(
        "configure", "local", "--root", shown(run.root), "--partition-number", str(PARTITIONS),
        "--daemon-listen-port", str(proxy_port), *(["--force"] if rewrite_config else []),
    )
    if not result.ok:
        raise DemoError(f"`slapos configure local` failed (exit {result.returncode})")
    if not SOFTWARE_RELEASE.exists():
        raise Missing(f"the software release {shown(SOFTWARE_RELEASE)}")

    session.header("Supply the hello-web software release to this computer")
    cfg = run.read_config()
    computer = cfg.get("slapos", "computer_id", fallback="local_computer") if cfg else "local_computer"
    if not session.slapos("supply", str(SOFTWARE_RELEASE), computer).ok:
        raise DemoError("`slapos supply` failed")

    session.header("Build it (zc.buildout, offline; nothing to do when already built)")
    result = session.slapos("node", "software", "--now")
    if not result.ok:
        raise DemoError(f"building hello-web failed (exit {result.returncode}); its log is in "
                        f"{shown(run.root)}/software/*/.slapgrid/log/software.log")

    session.header("Request an instance of it")
    result = session.slapos(
        "request", INSTANCE, str(SOFTWARE_RELEASE), "--parameters", f"port={web_port}", f"message={MESSAGE}",
    )
    if result.returncode not in (0, 2):  # 2: not ready yet, which is expected before deployment
        raise DemoError(f"`slapos request` failed (exit {result.returncode})")

    session.header("Deploy it: instance buildout, supervisord programs, promises")
    deploy(session)

    session.header("Its connection parameters")
    url = connection_url(session, session.slapos("info", INSTANCE).output)
    if not url:
        raise DemoError(f"{INSTANCE} published no `url` connection parameter")

    session.header("Fetch the URL it published")
    status, body = fetch(url)
    out(f"GET {url}  ->  HTTP {status}")
    out(body.rstrip("\n"))
    if status != 200 or MESSAGE not in body:
        raise DemoError(f"{url} answered HTTP {status} without the expected message {MESSAGE!r}")
    return url


def run_demo(args: argparse.Namespace, run: RunDir) -> int:
    started = time.monotonic()
    slapos = slapos_executable()
    if not slapos.exists():
        raise DemoError(f"{slapos} is missing: run `make install` first (or `make demo`, which installs)")
    try:
        run.root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DemoError(f"cannot create {shown(run.root)}: {e.strerror}; choose another --run-dir") from None
    if not os.access(run.root, os.W_OK | os.X_OK):
        owner = describe_user(run.root.stat().st_uid)
        raise DemoError(
            f"{shown(run.root)} belongs to {owner} and is not writable here: run the demo as root "
            f"(it then runs the node as {owner}), or remove that directory"
        )
    run.home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLAPOS_")}
    env.update(
        HOME=str(run.home),  # ~/.slapos of the commands (client config link, instance records) stays here
        SLAPOS_CONFIGURATION=str(run.config),
        SLAPOS_CLIENT_CONFIGURATION=str(run.config),
        PYTHONUNBUFFERED="1",
        PATH=os.pathsep.join([str(slapos.parent), env.get("PATH", "/usr/bin:/bin")]),
        # a tutorial: the commands' lines as a terminal shows them (captured, they would carry timestamps)
        SLAPNODE_LOG_FORMAT="plain",
    )
    session = Session(run, env)

    out(f"slapnode demo: a standalone node in {shown(run.root)}, run by {describe_user(os.geteuid())}")
    out(f"(`slapos` below is {shown(slapos)}; the software release is {shown(SOFTWARE_RELEASE)})")
    proxy_port, rewrite = pick_proxy_port(session, args.proxy_port)
    web_port = pick_web_port(session, args.web_port, proxy_port)
    run.save_state(web_port=web_port, instance=INSTANCE, software_release=str(SOFTWARE_RELEASE))

    out()
    out("Every command below finds the node's configuration through these variables:")
    out(f"$ export SLAPOS_CONFIGURATION={run.config}")
    out(f"$ export SLAPOS_CLIENT_CONFIGURATION={run.config}")
    missing: list[str] = []
    url = None
    try:
        url = walk(session, proxy_port, web_port, rewrite)
    except Missing as e:
        missing.append(str(e))
        out(f"(not built yet: {e}; the end-to-end path stops here)")

    if run.config.exists():
        for title, commands in (("What runs on the node", [("node", "status"), ("node", "status", "--partitions")]),
                                ("What the master (the proxy) knows", [("proxy", "show")])):
            session.header(title)
            for command in commands:
                try:
                    session.slapos(*command)
                except Missing as e:
                    missing.append(str(e))

    elapsed = time.monotonic() - started
    out()
    if url and not missing:
        out(f"Done in {elapsed:.1f} s: the instance {INSTANCE} of hello-web answers on {url}")
    else:
        out(f"The demo ran as far as slapnode goes today ({elapsed:.1f} s). Still missing:")
        for item in missing:
            out(f"  - {item}")
    print_next(run, web_port)
    return 0 if url and not missing else 1


def print_next(run: RunDir, web_port: int) -> None:
    as_user = os.environ.get("SLAPNODE_DEMO_AS_USER")
    command = ["env", f"HOME={run.home}", f"SLAPOS_CONFIGURATION={run.config}",
               f"SLAPOS_CLIENT_CONFIGURATION={run.config}", str(slapos_executable())]
    if as_user:
        command = ["runuser", "-u", as_user, "--", *command]
    out()
    out("Try it yourself: this alias runs `slapos` as the demo did" + (f" (as {as_user})" if as_user else ""))
    out(f"  alias slapos={shlex.quote(shlex.join(command))}")
    out(f"  slapos request {INSTANCE} {shlex.quote(str(SOFTWARE_RELEASE))} "
        f"--parameters port={web_port} message='Bonjour !'")
    out(f"  slapos node instance --now && curl http://127.0.0.1:{web_port}/")
    out("  slapos node status --partitions; slapos proxy show; slapos node tail slappart0:hello-web-on-watch")
    out(f"Logs: {shown(run.root)}/log/, {shown(run.instance_root())}/var/log/, "
        f"{shown(run.instance_root())}/slappart0/.slapgrid/log/")
    stop_command = "make demo-stop" if run.root == DEFAULT_RUN_DIR else \
        f".venv/bin/python {shown(Path(__file__).resolve())} --stop --run-dir {run.root}"
    out(f"Stop everything: {stop_command}")


# ------------------------------------------------------------------------------------------------
# stop


def _short_name(process) -> str:
    """hello-web-server, slapos-watchdog, ...: the program, not its interpreter."""
    import psutil

    try:
        parts = process.cmdline()
    except psutil.Error:
        return str(process.pid)
    for part in parts[:2]:
        name = os.path.basename(part)
        if name and not name.startswith("python"):
            return name
    return os.path.basename(parts[0]) if parts else str(process.pid)


def _stop_all(targets: list[tuple[str, int]]) -> list[str]:
    """SIGTERM each target (supervisord stops its programs), wait for them and what they started,
    then SIGKILL what is still there. All at once: the proxy need not wait for supervisord."""
    import psutil

    family = []
    problems = []
    for name, pid in targets:
        try:
            main = psutil.Process(pid)
            children = main.children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        programs = ", ".join(f"{_short_name(p)} ({p.pid})" for p in children)
        out(f"$ kill {pid}    # {name}" + (f", which stops its programs: {programs}" if programs else ""))
        try:
            main.terminate()
        except psutil.NoSuchProcess:
            continue
        except psutil.AccessDenied:
            problems.append(f"{name} (pid {pid}) belongs to {describe_user(main.uids().real)}: "
                            f"stop it as root or as that user")
            continue
        family += [main, *children]
    _gone, alive = psutil.wait_procs(family, timeout=STOP_WAIT)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
        except psutil.AccessDenied:
            problems.append(f"pid {p.pid} ({_short_name(p)}) could not be killed")
    if alive:
        psutil.wait_procs(alive, timeout=5)
        out(f"  killed {len(alive)} process(es) that did not stop within {STOP_WAIT:.0f} s")
    return problems


def _leftovers(run: RunDir) -> list[int]:
    """Programs of the node still running outside supervisord (a service orphaned by a crash):
    processes whose program file lies in the run directory. Never this process or its parents."""
    import psutil

    mine = {os.getpid()}
    try:
        mine |= {p.pid for p in psutil.Process().parents()}
    except psutil.Error:
        pass
    prefix = str(run.root) + os.sep
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmdline = p.info["cmdline"] or []
        if p.info["pid"] not in mine and any(part.startswith(prefix) for part in cmdline[:2]):
            found.append(p.info["pid"])
    return found


def shutdown_supervisord(run: RunDir, pid: int) -> bool:
    """`slapos node supervisorctl shutdown`: every program signalled at once, then supervisord
    (a plain SIGTERM makes supervisord stop its groups one after the other, which is slow).
    True when supervisord is gone; False means: fall back to the signal."""
    import psutil

    try:
        main = psutil.Process(pid)
        children = main.children(recursive=True)
    except psutil.NoSuchProcess:
        return True
    programs = ", ".join(f"{_short_name(p)} ({p.pid})" for p in children)
    out(f"$ slapos node supervisorctl shutdown    # supervisord ({pid}) stops its programs at once"
        + (f": {programs}" if programs else ""))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLAPOS_")}
    env["HOME"] = str(run.home) if run.home.is_dir() else env.get("HOME", "/")
    try:
        result = subprocess.run(
            [str(slapos_executable()), "node", "supervisorctl", "--cfg", str(run.config), "shutdown"],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", timeout=STOP_WAIT + 10, check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        out(f"  ({e}: stopping it with a signal instead)")
        return False
    for line in result.stdout.splitlines():
        out(f"  {line}")
    if result.returncode != 0 or not _gone(main):
        out(f"  (exit code {result.returncode}: stopping supervisord with a signal instead)")
        return False
    return True


def _gone(process) -> bool:
    """Exited (a zombie counts: its parent, often init in a container, reaps it when it likes)."""
    import psutil

    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def stop(run: RunDir) -> int:
    if not run.root.is_dir():
        out(f"Nothing to stop: there is no {shown(run.root)}.")
        return 0
    targets = []
    supervisord = run.supervisord_pid()
    if supervisord and not (run.config.is_file() and shutdown_supervisord(run, supervisord)):
        targets.append(("supervisord", supervisord))  # the fast way failed: the signal
    proxy = run.proxy_pid()
    if proxy:
        targets.append(("the proxy", proxy))
    problems = _stop_all(targets)
    leftovers = _leftovers(run)  # after supervisord is gone, so that its programs are not counted
    if leftovers:
        problems += _stop_all([(f"leftover program {command_line(pid)[:70]}", pid) for pid in leftovers])
    for problem in problems:
        out(f"error: {problem}")
    if problems:
        return 1
    if supervisord or targets or leftovers:
        out(f"Stopped; {shown(run.root)} is left for inspection (remove it to start afresh).")
    else:
        out(f"Nothing runs from {shown(run.root)}.")
    return 0


# ------------------------------------------------------------------------------------------------
# root: run the node as an ordinary user


def _reachable(path: Path, uid: int, gid: int) -> Path | None:
    """The first directory on the way to `path` that `uid` cannot traverse, or None."""
    for directory in reversed([path, *path.parents]):
        if not directory.exists():
            break
        st = directory.stat()
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if stat.S_ISDIR(st.st_mode) and not st.st_mode & bit:
            return directory
    return None


def _give(root: Path, uid: int, gid: int) -> None:
    for directory, dirs, files in os.walk(root):
        for name in [directory, *(os.path.join(directory, n) for n in dirs + files)]:
            st = os.lstat(name)
            if st.st_uid != uid or st.st_gid != gid:
                os.chown(name, uid, gid, follow_symlinks=False)


def reexec_as_user(args: argparse.Namespace, run: RunDir) -> int:
    """As root: give the run directory to an ordinary user and run this demo again as that user."""
    existing_owner = run.root.stat().st_uid if run.root.exists() else 0
    name = args.user or (describe_user(existing_owner) if existing_owner else DEFAULT_USER)
    try:
        user = pwd.getpwnam(name)
    except KeyError:
        raise DemoError(f"no user {name!r} to run the node: set SLAPNODE_DEMO_USER to an existing user") from None
    if user.pw_uid == 0:
        raise DemoError("the node cannot run as root (buildout never runs as root): set SLAPNODE_DEMO_USER")
    for needed in (run.root.parent, slapos_executable(), SOFTWARE_RELEASE.parent, Path(__file__)):
        blocked = _reachable(needed, user.pw_uid, user.pw_gid)
        if blocked is not None:
            raise DemoError(
                f"{name} cannot reach {needed}: {blocked} is not traversable by others. The node must not "
                f"run as root, so run `make demo` (it then runs from a copy {name} can reach), put the "
                f"checkout (or --run-dir) where {name} can reach it, or `chmod o+x {blocked}`"
            )
    run.root.mkdir(parents=True, exist_ok=True)
    _give(run.root, user.pw_uid, user.pw_gid)
    out(f"Running as root: the node runs as the ordinary user {name} (buildout never runs as root), "
        f"in {shown(run.root)} which now belongs to {name}.")
    argv = [sys.executable, str(Path(__file__).resolve()), "--run-dir", str(run.root)]
    if args.proxy_port:
        argv += ["--proxy-port", str(args.proxy_port)]
    if args.web_port:
        argv += ["--web-port", str(args.web_port)]
    env = dict(os.environ, USER=name, LOGNAME=name, HOME=str(run.root / "home"), SLAPNODE_DEMO_AS_USER=name)
    sys.stdout.flush()
    try:
        return subprocess.run(argv, cwd=REPO, env=env, user=user.pw_uid, group=user.pw_gid,
                              extra_groups=[], check=False).returncode
    except KeyboardInterrupt:
        return 130


# ------------------------------------------------------------------------------------------------


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"{value!r} is not a TCP port (1-65535)")
    return port


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line, and exit code 5 like `slapos` for a usage error."""
        self.exit(5, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    env = os.environ
    parser = _Parser(
        prog="demo.py", description="A standalone slapnode node, end to end: `make demo`, `make demo-stop`.")
    parser.add_argument("--stop", action="store_true", help="stop what the demo started (by pid) and exit")
    parser.add_argument("--run-dir", type=Path, default=Path(env.get("SLAPNODE_DEMO_RUN_DIR") or DEFAULT_RUN_DIR),
                        help="where the node lives (default demo/run; env SLAPNODE_DEMO_RUN_DIR)")
    parser.add_argument("--proxy-port", type=_port, default=env.get("SLAPNODE_DEMO_PROXY_PORT") or None,
                        help="port of the local proxy (default: a free one, kept; env SLAPNODE_DEMO_PROXY_PORT)")
    parser.add_argument("--web-port", type=_port, default=env.get("SLAPNODE_DEMO_WEB_PORT") or None,
                        help="port of hello-web (default: a free one, kept; env SLAPNODE_DEMO_WEB_PORT)")
    parser.add_argument("--user", default=env.get("SLAPNODE_DEMO_USER") or None,
                        help="as root: the user running the node (default: owner of the run directory, "
                             "else nobody; env SLAPNODE_DEMO_USER)")
    args = parser.parse_args(argv)
    args.run_dir = Path(os.path.abspath(args.run_dir)).resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    run = RunDir(args.run_dir)
    try:
        if args.stop:
            return stop(run)
        if os.geteuid() == 0:
            return reexec_as_user(args, run)
        return run_demo(args, run)
    except DemoError as e:
        out(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        out("interrupted: `make demo-stop` stops what was started")
        return 130


if __name__ == "__main__":
    sys.exit(main())
