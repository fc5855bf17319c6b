"""How long `slapos node format` takes: a first run and a no-change re-run, 10/100/500 partitions.

Each run is measured twice:
* `command`: wall time of the whole `slapos node format --now` process (interpreter start-up and
  imports included), which is what cron pays;
* `in-process`: the format itself (`run_format`), definition load → plan → save → report.
Every run reports the computer to a real proxy (`slapos proxy start`) on loopback: re-posting an
unchanged description is the one round trip a no-change run keeps (the master needs it).

Unprivileged mode (directories only, loopback addresses) always; when root, also the privileged
mode (users, taps, IPv6/IPv4 addresses, routes) inside a network namespace of its own, with the
proxy started inside that namespace. Target: a no-change re-run with 100 partitions ≤ 0.15 s
(reference slapos.core 1.26.1: 0.59 s, unprivileged).

    .venv/bin/python bench/format.py [--sizes 10,100,500] [--no-privileged]
"""
from __future__ import annotations

import argparse
import atexit
import grp
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PYTHON = sys.executable
# Measure what an installed node runs: compiled modules. Our development shells set
# PYTHONDONTWRITEBYTECODE, which would make every run recompile every module from source;
# keep the bytecode in a temporary cache directory instead of the source tree.
PYCACHE = tempfile.mkdtemp(prefix="bench-format-pycache-")
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
ENV["PYTHONPYCACHEPREFIX"] = PYCACHE
atexit.register(shutil.rmtree, PYCACHE, True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(root: Path, partitions: int, port: int, privileged: dict[str, str] | None = None) -> Path:
    lines = [
        "[slapos]",
        "computer_id = local_computer",
        f"master_url = http://127.0.0.1:{port}/",
        f"software_root = {root / 'soft'}",
        f"instance_root = {root / 'inst'}",
        "root_check = false",
        "",
        "[slapproxy]",
        "host = 127.0.0.1",
        f"port = {port}",
        f"database_uri = {root / 'proxy.db'}",
        "",
        "[slapformat]",
        f"partition_amount = {partitions}",
        f"computer_xml = {root / 'slapos.xml'}",
        "random_delay = 0",
    ]
    keys = privileged or {"interface_name": "lo", "alter_user": "false", "alter_network": "false",
                          "create_tap": "false"}
    lines += [f"{k} = {v}" for k, v in keys.items()]
    path = root / "slapos.cfg"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_proxy(config: Path, port: int, prefix: list[str]) -> subprocess.Popen:
    log = open(config.parent / "proxy.log", "wb")
    proc = subprocess.Popen([*prefix, PYTHON, "-m", "slapos.cli.main", "proxy", "start", "--cfg", str(config)],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=ENV)
    deadline = time.monotonic() + 20
    probe = [*prefix, PYTHON, "-c",
             f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=0.2).close()"]
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"proxy did not start: {(config.parent / 'proxy.log').read_text()}")
        if not prefix:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return proc
            except OSError:
                pass
        elif subprocess.run(probe, capture_output=True).returncode == 0:
            return proc
        time.sleep(0.05)
    proc.terminate()
    raise SystemExit("proxy did not listen within 20 s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def command_time(config: Path, prefix: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([*prefix, PYTHON, "-m", "slapos.cli.main", "node", "format", "--cfg", str(config),
                           "--now", "-q"], cwd=REPO, capture_output=True, text=True, env=ENV)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"format failed ({done.returncode}): {done.stderr}")
    return elapsed


def in_process_time(config: Path) -> float:
    import logging

    from slapos.base.config import Config
    from slapos.format.formatter import run_format
    from slapos.format.options import FormatOptions

    logging.getLogger("slapos").setLevel(logging.WARNING)
    options = FormatOptions.from_config(Config(config))
    options.resolve_privileges()
    start = time.perf_counter()
    result = run_format(options)
    elapsed = time.perf_counter() - start
    if not result.reported:
        raise SystemExit(f"format did not reach the proxy: {result.report_error}")
    return elapsed


def best(times: list[float]) -> str:
    return f"{min(times):7.3f}"


def bench_unprivileged(size: int, repeat: int) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="bench-format-") as tmp:
        rows = []
        for mode in ("command", "in-process"):
            root = Path(tmp) / mode
            root.mkdir()
            port = free_port()
            config = write_config(root, size, port)
            proxy = start_proxy(config, port, [])
            try:
                measure = (lambda c=config: command_time(c, [])) if mode == "command" else (
                    lambda c=config: in_process_time(c))
                first = measure()
                again = [measure() for _ in range(repeat)]
            finally:
                stop(proxy)
            rows.append(f"unprivileged  {mode:10s} {size:5d}  {first:9.3f}  {best(again)}")
        return rows


def bench_privileged(size: int, repeat: int) -> list[str]:
    tag = "b" + secrets.token_hex(3)
    ns = f"bench-format-{tag}"
    ip = ["ip", "-n", ns]
    prefix = ["ip", "netns", "exec", ns]
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-format-") as tmp:
            root = Path(tmp)
            os.chmod(root, 0o755)
            for argv in (["link", "set", "lo", "up"], ["link", "add", "fa0", "type", "veth", "peer", "name", "fb0"],
                         ["link", "set", "fa0", "up"], ["link", "set", "fb0", "up"],
                         ["-6", "addr", "add", "fd00:b::1/64", "dev", "fa0", "nodad"]):
                subprocess.run(ip + argv, check=True)
            port = 4000
            config = write_config(root, size, port, {
                "interface_name": "fa0", "ipv4_local_network": "10.210.0.0/16", "alter_user": "true",
                "alter_network": "true", "create_tap": "true", "ipv6_dad": "false",
                "user_base_name": f"{tag}u", "software_user": f"{tag}s", "tap_base_name": f"{tag}t",
            })
            proxy = start_proxy(config, port, prefix)
            try:
                first = command_time(config, prefix)
                again = [command_time(config, prefix) for _ in range(repeat)]
            finally:
                stop(proxy)
            return [f"privileged    {'command':10s} {size:5d}  {first:9.3f}  {best(again)}"]
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        for user in [u.pw_name for u in pwd.getpwall() if u.pw_name.startswith(tag)]:
            subprocess.run(["userdel", user], capture_output=True, check=False)
        for group in [g.gr_name for g in grp.getgrall() if g.gr_name.startswith(tag)]:
            subprocess.run(["groupdel", group], capture_output=True, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,500", help="partition amounts (default 10,100,500)")
    parser.add_argument("--repeat", type=int, default=5, help="no-change re-runs per size (best is shown)")
    parser.add_argument("--no-privileged", action="store_true", help="skip the namespace runs even as root")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    # compile every module once, so the first measured run is not a compilation run
    subprocess.run([PYTHON, "-c", "import slapos.cli.main as m, slapos.format.formatter, slapos.slap.objects, "
                    "slapos.slap.connection, lxml.etree, requests; m.build_parser(m.load_commands())"],
                   cwd=REPO, env=ENV, check=True)
    print(f"slapos node format: seconds (re-run = best of {args.repeat} no-change runs)")
    print("mode          measure    parts  first run  re-run")
    for size in sizes:
        for row in bench_unprivileged(size, args.repeat):
            print(row, flush=True)
    if os.geteuid() == 0 and not args.no_privileged:
        for size in sizes:
            for row in bench_privileged(size, args.repeat):
                print(row, flush=True)
    elif not args.no_privileged:
        print("(privileged runs skipped: not root)")
    print("target: no-change re-run, 100 partitions <= 0.150 s (reference 1.26.1: 0.59 s, unprivileged)")


if __name__ == "__main__":
    main()
