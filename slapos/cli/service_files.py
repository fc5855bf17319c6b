"""The unit files that run `slapos node run`: a systemd unit and a supervisord program section.

Generated here (with the paths of this installation) by `slapos node run --print-systemd-unit`
and `--print-supervisord-program`; contrib/systemd/slapos-node.service and
contrib/supervisord/slapos-node.conf are the same text for the default paths.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from slapos.base.errors import SlapOSError

SYSTEMD_UNIT = Path("/etc/systemd/system/slapos-node.service")
SYSTEMD_RUNNING = Path("/run/systemd/system")  # present when systemd is the running init
DEFAULT_CFG = Path("/etc/opt/slapos/slapos.cfg")
DEFAULT_EXECUTABLE = "/usr/local/bin/slapos"

SYSTEMD = """\
# `slapos node run` as a systemd service: /etc/systemd/system/slapos-node.service (docs/daemon.md).
# It replaces the cron block (/etc/cron.d/slapos-node) and the slapos-node-*.timer units: remove or
# disable them first (keep its @reboot line); both at once would only make one of them skip its runs.
[Unit]
Description=slapos node run: the node's reconcile loop (software, instance, report, collect, format)
After=network-online.target slapos-proxy.service
Wants=network-online.target
Conflicts=slapos-node-instance.timer slapos-node-software.timer slapos-node-report.timer

[Service]
Type=simple
ExecStart={executable} node run --cfg {cfg}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=5
# 5: usage error or not root; 10: another `slapos node run` holds its lock: a restart would not help
RestartPreventExitStatus=5 10
# SIGTERM: the running instance pass finishes (at most [slapos] run_stop_timeout, default 60 s)
TimeoutStopSec=90
# only the daemon is stopped: the node's supervisord and the partitions' services it started keep
# running (as under cron), and the next start finds them
KillMode=process
# the journal adds the time itself; each line keeps its level, step and partition
Environment=SLAPNODE_LOG_FORMAT=text

[Install]
WantedBy=multi-user.target
"""

SUPERVISORD = """\
; `slapos node run` under supervisord (docs/daemon.md): add to the supervisord that runs the node's
; services of the host (not the node's own supervisord, which the daemon starts itself).
; Remove the cron block first (/etc/cron.d/slapos-node).
[program:slapos-node]
command = {executable} node run --cfg {cfg}
autostart = true
autorestart = unexpected
exitcodes = 0,5,10
; SIGTERM: the running instance pass finishes (at most [slapos] run_stop_timeout, default 60 s)
stopsignal = TERM
stopwaitsecs = 90
; only the daemon: the node's supervisord and the partitions' services keep running
stopasgroup = false
killasgroup = false
redirect_stderr = true
stdout_logfile = /var/log/slapos/slapos-node-run.log
environment = SLAPNODE_LOG_FORMAT="text"
"""


def service_text(kind: str, cfg: Path | None = None, executable: str | None = None) -> str:
    if executable is None:
        from .standalone import slapos_executable

        executable = slapos_executable()
    template = SYSTEMD if kind == "systemd" else SUPERVISORD
    return template.format(executable=executable, cfg=cfg or DEFAULT_CFG)


def install_daemon(cfg: Path, log_dir: Path, start: bool = True) -> list[str]:
    """`slapos configure local --install-daemon` (as root): write the systemd unit, leave only the
    @reboot line in the cron block (the daemon and the periodic cron lines must not both run), then
    enable and start the unit when systemd runs. Returns the lines to print."""
    from . import cron
    from .standalone import crontab_lines

    text = service_text("systemd", cfg)
    tmp = SYSTEMD_UNIT.with_name(f".{SYSTEMD_UNIT.name}.tmp")
    try:
        SYSTEMD_UNIT.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, SYSTEMD_UNIT)
    except OSError as e:
        raise SlapOSError(f"cannot write {SYSTEMD_UNIT}: {e.strerror}") from None
    boot_only = [line for line in crontab_lines(cfg, log_dir) if "=" in line.split()[0] or line.startswith("@reboot")]
    where = cron.install(boot_only)
    lines = [f"\nsystemd unit written: {SYSTEMD_UNIT}", f"cron block in {where}: only the @reboot line kept"]
    commands = [["systemctl", "daemon-reload"], ["systemctl", "enable", *(["--now"] if start else []), SYSTEMD_UNIT.name]]
    if SYSTEMD_RUNNING.is_dir() and shutil.which("systemctl"):
        for command in commands:
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise SlapOSError(f"`{' '.join(command)}` failed: {done.stderr.strip() or done.returncode}")
        lines.append(f"{SYSTEMD_UNIT.name} enabled{' and started' if start else ''}: slapos node status --daemon")
    else:
        lines.append("systemd is not running here; start the daemon with: " + " && ".join(" ".join(c) for c in commands)
                     + f" (or run `slapos node run --cfg {cfg}` under your supervisor)")
    return lines
